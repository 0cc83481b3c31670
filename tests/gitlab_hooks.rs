//! GitLab's system hooks and group hooks, sent to the real daemon as GitLab
//! sends them, are accepted (GitLab disables a hook that keeps failing) and
//! described with the fields their payloads state; a non-UTF-8 payload is 400.
#![allow(clippy::unwrap_used)]

mod support;

use serde_json::{Map, Value, json};
use support::daemon::{Daemon, Workspace};
use support::{github_signature, payload};

const TOKEN: &str = "gitlab-system-hook-token";
const GITHUB_SECRET: &str = "It's a Secret to Everybody";

const CONFIG: &str = r#"
[server]
listen = "127.0.0.1:0"

[admin]
listen = "127.0.0.1:0"

[store]
url = "@DB@"

[sources.gitlab]
type = "gitlab"
secrets = ["env:GITLAB_WEBHOOK_TOKEN"]

[sources.github]
type = "github"
secrets = ["env:GITHUB_WEBHOOK_SECRET"]
"#;

fn start() -> (Workspace, Daemon) {
    let ws = Workspace::new(CONFIG);
    let daemon = ws.start(&[
        ("GITLAB_WEBHOOK_TOKEN", TOKEN),
        ("GITHUB_WEBHOOK_SECRET", GITHUB_SECRET),
    ]);
    (ws, daemon)
}

/// POST `body` with `headers`; the status and the JSON answer.
async fn post(url: &str, headers: &[(&str, &str)], body: Vec<u8>) -> (u16, Value) {
    let mut req = reqwest::Client::new().post(url).body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Deliver a fixture with the headers GitLab attaches (research/sources.md):
/// the hook's token, its event header and a fresh idempotency key.
async fn deliver(daemon: &Daemon, event: &str, file: &str, key: &str) -> (u16, Value) {
    post(
        &daemon.hook_url("gitlab"),
        &[
            ("Content-Type", "application/json"),
            ("User-Agent", "GitLab/17.6.0"),
            ("X-Gitlab-Event", event),
            ("X-Gitlab-Token", TOKEN),
            ("X-Gitlab-Instance", "https://gitlab.example.com"),
            ("X-Gitlab-Webhook-UUID", "0c6f3a8e-5a2d-4e0e-9d49-1b2c3d4e5f60"),
            ("X-Gitlab-Event-UUID", key),
            ("Idempotency-Key", key),
        ],
        payload(file),
    )
    .await
}

/// The normalized event the daemon stored for a delivery, via the admin API.
async fn stored_event(daemon: &Daemon, key: &str) -> Value {
    let url = format!("{}/api/v1/deliveries/{key}?source=gitlab", daemon.admin);
    let resp = reqwest::get(&url).await.unwrap();
    assert_eq!(resp.status().as_u16(), 200, "{url}");
    let detail: Value = resp.json().await.unwrap();
    detail["normalized"].clone()
}

const SYSTEM: &str = "System Hook";

/// (fixture, X-Gitlab-Event, the fields the payload states; every field not
/// named must be null, false or empty).
fn cases() -> Vec<(String, &'static str, Value)> {
    let mut cases: Vec<(String, &'static str, Value)> = [
        (
            "gitlab-system/push.json",
            SYSTEM,
            json!({"kind": "push", "ref": "refs/heads/master", "branch": "master", "sha": "da1560886d4f094c3e6c9ef40349f7d38b5d27d7", "before": "95790bf891e76fee5e1747ab589903a6a1f80f22", "repository": "mike/diaspora", "changes": 1, "paths_unknown": true}),
        ),
        (
            "gitlab-system/tag_push.json",
            SYSTEM,
            json!({"kind": "push", "ref": "refs/tags/v1.0.0", "tag": "v1.0.0", "sha": "5937ac0a7beb003549fc5fd26fc247adbce4a52e", "created": true, "repository": "jsmith/example", "changes": 1, "paths": []}),
        ),
        (
            "gitlab-system/repository_update.json",
            SYSTEM,
            json!({"kind": "push", "ref": "refs/heads/master", "branch": "master", "sha": "4045ea7a3df38697b3730a20fb73c8bed8a3e69e", "before": "8205ea8d81ce0c6b90fbe8280d118cc9fdad6130", "repository": "jsmith/example", "changes": 1, "paths_unknown": true}),
        ),
        (
            "gitlab-system/merge_request.json",
            SYSTEM,
            json!({"kind": "pull_request", "ref": "refs/heads/ms-viewport", "branch": "ms-viewport", "base_branch": "master", "sha": "ba3e0d8ff79c80d5b0bbb4f3e2e343e0aaa662b7", "number": 1, "repository": "jsmith/example", "sender": "root", "paths_unknown": true}),
        ),
        (
            "gitlab-system/project_create.json",
            SYSTEM,
            json!({"kind": "project_create", "repository": "jsmith/storecloud"}),
        ),
        (
            "gitlab-system/project_destroy.json",
            SYSTEM,
            json!({"kind": "project_destroy", "repository": "jsmith/underscore"}),
        ),
        (
            "gitlab-system/project_rename.json",
            SYSTEM,
            json!({"kind": "project_rename", "repository": "jsmith/underscore"}),
        ),
        (
            "gitlab-system/project_transfer.json",
            SYSTEM,
            json!({"kind": "project_transfer", "repository": "scores/underscore"}),
        ),
        (
            "gitlab-system/project_update.json",
            SYSTEM,
            json!({"kind": "project_update", "repository": "jsmith/storecloud"}),
        ),
        // Group hooks name their events in `event_name` too.
        (
            "gitlab/subgroup-hook.json",
            "Subgroup Hook",
            json!({"kind": "subgroup_create"}),
        ),
        (
            "gitlab/member-hook.json",
            "Member Hook",
            json!({"kind": "user_add_to_group"}),
        ),
        // Project hooks whose action reaches `event.action`.
        (
            "gitlab/issue-hook.json",
            "Issue Hook",
            json!({"kind": "issue", "action": "opened", "provider_action": "open", "repository": "gitlabhq/gitlab-test", "sender": "root"}),
        ),
        (
            "gitlab/wiki-page-hook.json",
            "Wiki Page Hook",
            json!({"kind": "wiki_page", "action": "created", "provider_action": "create", "repository": "root/awesome-project", "sender": "user1"}),
        ),
        // A pipeline's state, with the pipeline it is about.
        (
            "gitlab/pipeline-hook.json",
            "Pipeline Hook",
            json!({"kind": "pipeline", "action": "success", "ref": "refs/heads/master", "branch": "master", "sha": "bcbb5ec396a2c0f828686f14fac9b80b780504f2", "repository": "gitlab-org/gitlab-test", "sender": "user1", "pipeline": {"ci": "gitlab", "id": "31", "number": 123, "status": "success", "workflow": null, "workflow_id": null, "url": null}}),
        ),
    ]
    .into_iter()
    .map(|(file, event, want)| (file.to_owned(), event, want))
    .collect();
    // Events about groups, users and keys state nothing the event has fields for.
    for word in [
        "group_create",
        "group_destroy",
        "group_rename",
        "key_create",
        "key_destroy",
        "user_create",
        "user_destroy",
        "user_rename",
        "user_failed_login",
        "user_add_to_group",
        "user_remove_from_group",
        "user_update_for_group",
        "user_add_to_team",
        "user_remove_from_team",
        "user_update_for_team",
    ] {
        cases.push((
            format!("gitlab-system/{word}.json"),
            SYSTEM,
            json!({ "kind": word }),
        ));
    }
    cases
}

/// `want` completed with the empty value of every field it does not name.
fn expected(event: &str, want: &Value) -> Map<String, Value> {
    let mut all: Map<String, Value> = json!({
        "source": "gitlab", "provider": "gitlab", "name": event, "action": null, "provider_action": null,
        "ref": null, "branch": null, "tag": null, "sha": null, "before": null, "base_branch": null,
        "number": null, "repository": null, "sender": null, "created": false, "deleted": false,
        "forced": false, "changes": 0, "paths": null, "paths_unknown": false, "pipeline": null,
    })
    .as_object()
    .unwrap()
    .clone();
    for (k, v) in want.as_object().unwrap() {
        all.insert(k.clone(), v.clone());
    }
    all
}

/// The stored event in the shape of [`expected`]: `changes` counted,
/// `paths_unknown` as whether a reason is given.
fn observed(stored: &Value, keys: &Map<String, Value>) -> Map<String, Value> {
    keys.keys()
        .map(|k| {
            let v = match k.as_str() {
                "changes" => json!(stored["changes"].as_array().unwrap().len()),
                "paths_unknown" => json!(stored["paths_unknown"].is_string()),
                _ => stored[k].clone(),
            };
            (k.clone(), v)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_system_and_group_hook_example_is_accepted_and_described() {
    let (_ws, daemon) = start();
    let cases = cases();
    // Every file of go-gitlab's testdata/systemhooks is covered.
    let system = cases
        .iter()
        .filter(|(f, _, _)| f.starts_with("gitlab-system/"))
        .count();
    assert_eq!(system, 24);
    for (i, (file, event, want)) in cases.iter().enumerate() {
        let key = format!("5e1f0000-0000-4000-8000-{i:012}");
        let (status, answer) = deliver(&daemon, event, file, &key).await;
        assert!(status == 200 || status == 202, "{file}: {status} {answer}");
        assert_eq!(answer["duplicate"], false, "{file}: {answer}");
        let want = expected(event, want);
        let got = observed(&stored_event(&daemon, &key).await, &want);
        assert_eq!(Value::Object(got), Value::Object(want), "{file}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repository_update_lists_every_ref_of_the_push() {
    let (_ws, daemon) = start();
    let key = "5e1f0000-0000-4000-8000-0000000000ff";
    let (status, answer) = deliver(&daemon, SYSTEM, "gitlab-system/repository_update.json", key).await;
    assert!(status == 200 || status == 202, "{status} {answer}");
    let event = stored_event(&daemon, key).await;
    assert_eq!(
        event["changes"],
        json!([{
            "ref": "refs/heads/master", "branch": "master", "tag": null,
            "sha": "4045ea7a3df38697b3730a20fb73c8bed8a3e69e",
            "before": "8205ea8d81ce0c6b90fbe8280d118cc9fdad6130",
            "created": false, "deleted": false, "forced": false
        }])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_payload_that_is_not_utf8_is_answered_400_and_not_stored() {
    let (_ws, daemon) = start();
    let good = payload("github/push.json");
    let open = good.iter().position(|b| *b == b'{').unwrap();
    let mut bad = good[..=open].to_vec();
    bad.extend_from_slice(b"\"note\":\"caf\xe9\",");
    bad.extend_from_slice(&good[open + 1..]);
    let send = |body: Vec<u8>, delivery: &'static str| {
        let sig = github_signature(GITHUB_SECRET, &body);
        let url = daemon.hook_url("github");
        async move {
            post(
                &url,
                &[
                    ("Content-Type", "application/json"),
                    ("X-GitHub-Event", "push"),
                    ("X-GitHub-Delivery", delivery),
                    ("X-Hub-Signature-256", &sig),
                ],
                body,
            )
            .await
        }
    };
    let (status, answer) = send(bad, "bad-1").await;
    assert_eq!(status, 400, "{answer}");
    let message = answer["error"].as_str().unwrap();
    assert!(message.contains("not valid UTF-8"), "{message}");
    assert!(message.contains(&format!("offset {}", open + 12)), "{message}");
    let url = format!("{}/api/v1/deliveries/bad-1?source=github", daemon.admin);
    assert_eq!(reqwest::get(&url).await.unwrap().status().as_u16(), 404);
    // The same delivery in UTF-8 is accepted.
    let (status, answer) = send(good, "good-1").await;
    assert!(status == 200 || status == 202, "{status} {answer}");
}
