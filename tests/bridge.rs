//! End to end: the real daemon, signed webhooks over HTTP, stand-in CI servers.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use hookbridge::store::sqlite::SqliteStore;
use hookbridge::store::{DeliveryDetail, DeliveryFilter, DeliveryKey, JobState, Store};
use serde_json::{Value, json};
use support::ci::{CIRCLE_TOKEN, GITLAB_TRIGGER_TOKEN, Reply, StandIn};
use support::daemon::{Daemon, Workspace};
use support::{eventually, github_signature, payload, wait_for};

const GITHUB_SECRET: &str = "It's a Secret to Everybody";
const GITLAB_TOKEN: &str = "gitlab-webhook-token";

fn env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("GITHUB_WEBHOOK_SECRET", GITHUB_SECRET),
        ("GITLAB_WEBHOOK_TOKEN", GITLAB_TOKEN),
        ("CIRCLECI_TOKEN", CIRCLE_TOKEN),
        ("GITLAB_TRIGGER_TOKEN", GITLAB_TRIGGER_TOKEN),
    ]
}

/// Rules for the fixture push (`Codertocat/Hello-World`, branch `master`, sha 6113728f...).
fn config(ci: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
max_body = "64KiB"

[admin]
listen = "127.0.0.1:0"

[store]
url = "@DB@"

[retry]
max_attempts = 6
initial_backoff = "100ms"
max_backoff = "1s"
request_timeout = "2s"

[dispatch]
lease = "3s"

[sources.github]
type = "github"
secrets = ["env:GITHUB_WEBHOOK_SECRET"]

[sources.gitlab]
type = "gitlab"
secrets = ["env:GITLAB_WEBHOOK_TOKEN"]

[targets.circleci]
type = "circleci"
url = "{ci}"
token = "env:CIRCLECI_TOKEN"

[targets.gitlab]
type = "gitlab"
url = "{ci}"
token = "env:GITLAB_TRIGGER_TOKEN"

[[rules]]
name = "pipeline"
source = "github"
events = ["push"]
branches = ["master", "main"]
[rules.trigger]
target = "circleci"
project = "gh/Codertocat/Hello-World"
branch = "{{{{ event.branch }}}}"
parameters = {{ sha = "{{{{ event.sha }}}}", deploy = true, attempt = 1 }}

[[rules]]
name = "job"
source = "github"
events = ["push"]
[rules.trigger]
target = "circleci"
project = "gh/Codertocat/Hello-World"
job = "build"
branch = "{{{{ event.branch }}}}"
revision = "{{{{ event.sha }}}}"
build_parameters = {{ DEPLOY_ENV = "staging" }}

[[rules]]
name = "gitlab-mirror"
events = ["push"]
repositories = ["Codertocat/*", "mike/diaspora"]
[rules.trigger]
target = "gitlab"
project = "group/sub project"
ref = "{{{{ event.branch or event.tag }}}}"
variables = {{ UPSTREAM_SHA = "{{{{ event.sha }}}}", FROM = "{{{{ event.source }}}}" }}
inputs = {{ environment = "staging", scan = false, level = 3, who = "{{{{ event.sender }}}}" }}

[[rules]]
name = "pr-only"
events = ["pull_request"]
[rules.trigger]
target = "circleci"
project = "gh/Codertocat/Hello-World"
branch = "{{{{ event.branch }}}}"
"#
    )
}

async fn post_github(url: &str, event: &str, delivery: &str, body: &[u8]) -> (u16, Value) {
    post(
        url,
        &[
            ("X-GitHub-Event", event),
            ("X-GitHub-Delivery", delivery),
            ("X-Hub-Signature-256", &github_signature(GITHUB_SECRET, body)),
            ("Content-Type", "application/json"),
            ("User-Agent", "GitHub-Hookshot/test"),
        ],
        body.to_vec(),
    )
    .await
}

async fn post(url: &str, headers: &[(&str, &str)], body: Vec<u8>) -> (u16, Value) {
    let client = reqwest::Client::new();
    let mut req = client.post(url).body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn store(ws: &Workspace) -> SqliteStore {
    SqliteStore::open(&ws.db_path()).unwrap()
}

/// The delivery's detail once every job is in `state` (the CI's answer reaches
/// the stand-in before the attempt's record is committed).
async fn delivery_when_jobs(
    ws: &Workspace,
    key: &DeliveryKey,
    state: &str,
) -> hookbridge::store::DeliveryDetail {
    wait_for(
        Duration::from_secs(10),
        &format!("every job {state}"),
        async || {
            let detail = store(ws).get(key).await.map_err(|e| e.to_string())?;
            if detail.jobs.iter().all(|j| j.state.as_str() == state) {
                Ok(detail)
            } else {
                Err(format!("{detail:#?}"))
            }
        },
    )
    .await
}

async fn delivery_count(ws: &Workspace) -> usize {
    if !ws.db_path().exists() {
        return 0;
    }
    store(ws)
        .list(&DeliveryFilter {
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn github_push_triggers_every_matching_rule_once() {
    let ci = StandIn::start().await;
    let ws = Workspace::new(&config(&ci.url));
    let daemon = ws.start(&env());
    let body = payload("github/push.json");

    let (status, summary) = post_github(&daemon.hook_url("github"), "push", "d-1", &body).await;
    assert_eq!(status, 202, "{summary}");
    assert_eq!(summary["duplicate"], false);
    let matched: Vec<&str> = summary["matched"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["rule"].as_str().unwrap())
        .collect();
    assert_eq!(matched, ["pipeline", "job", "gitlab-mirror"]);
    assert_eq!(
        summary["skipped"],
        json!([{"rule": "pr-only", "reason": "event 'push' not in events [pull_request]"}])
    );

    eventually(Duration::from_secs(10), "three triggers", || {
        ci.accepted().len() == 3
    })
    .await;
    ci.assert_clean();
    let requests = ci.accepted();
    let by_api = |api: &str| requests.iter().find(|r| r.api == api).unwrap().clone();

    let pipeline = by_api("circleci-pipeline");
    assert_eq!(
        pipeline.path,
        "/api/v2/project/gh/Codertocat/Hello-World/pipeline"
    );
    assert_eq!(
        pipeline.body,
        json!({"branch": "master", "parameters": {"sha": "6113728f27ae82c7b1a177c8d03f9e96e0adf246", "deploy": true, "attempt": 1}})
    );
    let job = by_api("circleci-job");
    assert_eq!(
        job.path,
        "/api/v1.1/project/github/Codertocat/Hello-World/tree/master"
    );
    assert_eq!(
        job.body,
        json!({"build_parameters": {"CIRCLE_JOB": "build", "DEPLOY_ENV": "staging"}, "revision": "6113728f27ae82c7b1a177c8d03f9e96e0adf246"})
    );
    let gitlab = by_api("gitlab-trigger");
    assert_eq!(
        gitlab.path,
        "/api/v4/projects/group%2Fsub%20project/trigger/pipeline"
    );
    assert_eq!(
        gitlab.body,
        json!({
            "ref": "master",
            "token": GITLAB_TRIGGER_TOKEN,
            "variables": {"UPSTREAM_SHA": "6113728f27ae82c7b1a177c8d03f9e96e0adf246", "FROM": "github"},
            "inputs": {"environment": "staging", "scan": false, "level": 3, "who": "Codertocat"},
        })
    );

    // The created pipelines are recorded on the jobs.
    let key = DeliveryKey {
        id: "d-1".into(),
        source: Some("github".into()),
    };
    let detail = delivery_when_jobs(&ws, &key, "done").await;
    for job in &detail.jobs {
        let result = job.result.as_ref().unwrap();
        assert!(result.id.is_some() || result.number.is_some(), "{job:?}");
        assert_eq!(job.history.len(), 1);
    }
    let job_result = detail
        .jobs
        .iter()
        .find(|j| j.rule == "job")
        .unwrap()
        .result
        .clone()
        .unwrap();
    assert!(
        job_result
            .url
            .unwrap()
            .starts_with("https://circleci.example/gh/acme/app/")
    );
    let gitlab_result = detail
        .jobs
        .iter()
        .find(|j| j.rule == "gitlab-mirror")
        .unwrap()
        .result
        .clone()
        .unwrap();
    assert!(gitlab_result.url.unwrap().contains("/-/pipelines/"));

    // Secrets never reach the logs or the store.
    let logs = daemon.logs();
    let db = std::fs::read(ws.db_path()).unwrap();
    for secret in [GITHUB_SECRET, GITLAB_TOKEN, CIRCLE_TOKEN, GITLAB_TRIGGER_TOKEN] {
        assert!(!logs.contains(secret), "secret in logs");
        assert!(
            !db.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "secret in the store"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gitlab_push_with_token_triggers_and_wrong_token_is_refused() {
    let ci = StandIn::start().await;
    let ws = Workspace::new(&config(&ci.url));
    let daemon = ws.start(&env());
    let body = payload("gitlab/push-hook.json");
    let headers = |token: &'static str| {
        vec![
            ("X-Gitlab-Event", "Push Hook"),
            ("X-Gitlab-Token", token),
            ("X-Gitlab-Event-UUID", "13792a34-cac6-4fda-95a8-c58e00a3954e"),
            ("Content-Type", "application/json"),
        ]
    };
    let (status, body_out) = post(&daemon.hook_url("gitlab"), &headers("nope"), body.clone()).await;
    assert_eq!(status, 401, "{body_out}");
    let (status, summary) = post(&daemon.hook_url("gitlab"), &headers(GITLAB_TOKEN), body).await;
    assert_eq!(status, 202, "{summary}");
    assert_eq!(summary["event"], "Push Hook");
    assert_eq!(summary["matched"].as_array().unwrap().len(), 1);
    eventually(Duration::from_secs(10), "gitlab trigger", || {
        ci.accepted().len() == 1
    })
    .await;
    ci.assert_clean();
    let req = &ci.accepted()[0];
    assert_eq!(req.api, "gitlab-trigger");
    assert_eq!(req.body["ref"], "master");
    assert_eq!(req.body["variables"]["FROM"], "gitlab");
    assert_eq!(delivery_count(&ws).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_requests_get_the_right_status_and_store_nothing() {
    let ci = StandIn::start().await;
    let ws = Workspace::new(&config(&ci.url));
    let daemon = ws.start(&env());
    let body = payload("github/push.json");
    let url = daemon.hook_url("github");
    let good_sig = github_signature(GITHUB_SECRET, &body);
    type Case<'a> = (&'a str, Vec<(&'a str, String)>, Vec<u8>, u16);
    let cases: Vec<Case> = vec![
        (
            "wrong signature",
            vec![
                ("X-GitHub-Event", "push".into()),
                ("X-Hub-Signature-256", github_signature("other", &body)),
            ],
            body.clone(),
            401,
        ),
        (
            "missing signature",
            vec![("X-GitHub-Event", "push".into())],
            body.clone(),
            401,
        ),
        (
            "signature of other bytes",
            vec![
                ("X-GitHub-Event", "push".into()),
                ("X-Hub-Signature-256", good_sig.clone()),
            ],
            [body.as_slice(), b" "].concat(),
            401,
        ),
        (
            "over max_body",
            vec![
                ("X-GitHub-Event", "push".into()),
                ("X-Hub-Signature-256", good_sig.clone()),
            ],
            vec![b' '; 70 * 1024],
            413,
        ),
        (
            "not JSON, signed",
            vec![
                ("X-GitHub-Event", "push".into()),
                ("X-Hub-Signature-256", github_signature(GITHUB_SECRET, b"{nope")),
            ],
            b"{nope".to_vec(),
            400,
        ),
        (
            "form body without payload",
            vec![
                ("X-GitHub-Event", "push".into()),
                ("Content-Type", "application/x-www-form-urlencoded".into()),
                ("X-Hub-Signature-256", github_signature(GITHUB_SECRET, b"other=1")),
            ],
            b"other=1".to_vec(),
            400,
        ),
        (
            "missing event header",
            vec![("X-Hub-Signature-256", good_sig.clone())],
            body.clone(),
            400,
        ),
    ];
    for (name, headers, body, want) in cases {
        let mut hs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        hs.push(("X-GitHub-Delivery", "bad-1"));
        let (status, answer) = post(&url, &hs, body).await;
        assert_eq!(status, want, "{name}: {answer}");
        assert!(answer["error"].is_string(), "{name}: {answer}");
    }
    let (status, _) = post_github(
        &daemon.hook_url("nosuch"),
        "push",
        "x",
        &payload("github/push.json"),
    )
    .await;
    assert_eq!(status, 404);
    // Chunked body over the limit (no Content-Length).
    let chunks = futures_util::stream::iter(
        (0..80)
            .map(|_| Ok::<_, std::io::Error>(http_body::Frame::data(bytes::Bytes::from(vec![b' '; 1024])))),
    );
    let resp = reqwest::Client::new()
        .post(&url)
        .header("X-GitHub-Event", "push")
        .body(reqwest::Body::wrap(http_body_util::StreamBody::new(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 413);

    assert_eq!(delivery_count(&ws).await, 0);
    assert!(ci.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ping_is_answered_and_not_stored() {
    let ci = StandIn::start().await;
    let ws = Workspace::new(&config(&ci.url));
    let daemon = ws.start(&env());
    let (status, summary) = post_github(
        &daemon.hook_url("github"),
        "ping",
        "p-1",
        &payload("github/ping.json"),
    )
    .await;
    assert_eq!(status, 200, "{summary}");
    assert_eq!(summary["event"], "ping");
    assert_eq!(summary["matched"], json!([]));
    assert_eq!(delivery_count(&ws).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redelivery_triggers_nothing_new() {
    let ci = StandIn::start().await;
    let ws = Workspace::new(&config(&ci.url));
    let daemon = ws.start(&env());
    let body = payload("github/push.json");
    let (first_status, first) = post_github(&daemon.hook_url("github"), "push", "dup-1", &body).await;
    assert_eq!(first_status, 202);
    eventually(Duration::from_secs(10), "three triggers", || {
        ci.accepted().len() == 3
    })
    .await;
    let (status, again) = post_github(&daemon.hook_url("github"), "push", "dup-1", &body).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["duplicate"], true);
    assert_eq!(
        again["matched"], first["matched"],
        "the original summary, same job ids"
    );
    // Nothing new: once every job is final, nothing more can be sent.
    ws.settled().await;
    assert_eq!(ci.requests().len(), 3);
    assert_eq!(delivery_count(&ws).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn outage_is_retried_until_each_job_is_delivered_exactly_once() {
    let ci = StandIn::start().await;
    ci.script([
        Reply::Status(503),
        Reply::RetryAfter(429, 1),
        Reply::Status(502),
        Reply::RetryAfter(429, 1),
        Reply::Status(503),
    ]);
    let ws = Workspace::new(&config(&ci.url));
    let daemon = ws.start(&env());
    let body = payload("github/push.json");
    let (status, _) = post_github(&daemon.hook_url("github"), "push", "out-1", &body).await;
    assert_eq!(status, 202);
    eventually(Duration::from_secs(20), "every job delivered", || {
        ci.accepted().len() == 3
    })
    .await;
    ci.assert_clean();
    let requests = ci.requests();
    assert_eq!(requests.len(), 8, "5 failures then 3 successes");
    let mut apis: Vec<&str> = ci.accepted().iter().map(|r| r.api).collect();
    apis.sort_unstable();
    assert_eq!(apis, ["circleci-job", "circleci-pipeline", "gitlab-trigger"]);

    let key = DeliveryKey {
        id: "out-1".into(),
        source: None,
    };
    let detail = delivery_when_jobs(&ws, &key, "done").await;
    let attempts: usize = detail.jobs.iter().map(|j| j.history.len()).sum();
    assert_eq!(attempts, 8, "every attempt recorded");
    for job in &detail.jobs {
        assert_eq!(job.state, JobState::Done);
        let last = job.history.last().unwrap();
        assert!(last.status.is_some_and(|s| (200..300).contains(&s)));
        for failed in &job.history[..job.history.len() - 1] {
            assert!(matches!(failed.status, Some(429 | 502 | 503)), "{failed:?}");
            assert_eq!(failed.outcome, "retry");
        }
    }
    // Nothing more arrives later: every job is final, so none can be sent again.
    ws.settled().await;
    assert_eq!(ci.requests().len(), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn permanent_errors_are_dead_lettered_and_redelivery_requeues_them() {
    let ci = StandIn::start().await;
    ci.script([Reply::Status(404), Reply::Status(404), Reply::Status(404)]);
    let ws = Workspace::new(&config(&ci.url));
    let daemon = ws.start(&env());
    let body = payload("github/push.json");
    let (status, _) = post_github(&daemon.hook_url("github"), "push", "dead-1", &body).await;
    assert_eq!(status, 202);
    let key = DeliveryKey {
        id: "dead-1".into(),
        source: Some("github".into()),
    };
    let d = delivery_when_jobs(&ws, &key, "dead").await;
    assert!(
        d.jobs.iter().all(|j| j.state == JobState::Dead),
        "jobs dead-lettered after a 404: {d:?}"
    );
    assert!(d.jobs[0].last_error.as_deref().unwrap().contains("404"));
    assert_eq!(ci.requests().len(), 3, "404 is not retried");

    let (status, again) = post_github(&daemon.hook_url("github"), "push", "dead-1", &body).await;
    assert_eq!(status, 202, "{again}");
    assert_eq!(again["duplicate"], true);
    eventually(Duration::from_secs(10), "requeued jobs delivered", || {
        ci.accepted().len() == 3
    })
    .await;
}

/// A daemon whose CI answers each of the fixture push's three matching
/// rules first with `reply`; the push `delivery` is sent and its jobs are
/// done.
async fn push_first_answered_with(
    reply: Reply,
    delivery: &str,
) -> (StandIn, Workspace, Daemon, DeliveryDetail) {
    let ci = StandIn::start().await;
    ci.script([reply.clone(), reply.clone(), reply]);
    let ws = Workspace::new(&config(&ci.url));
    let daemon = ws.start(&env());
    let body = payload("github/push.json");
    let (status, _) = post_github(&daemon.hook_url("github"), "push", delivery, &body).await;
    assert_eq!(status, 202);
    let key = DeliveryKey {
        id: delivery.into(),
        source: Some("github".into()),
    };
    let detail = delivery_when_jobs(&ws, &key, "done").await;
    (ci, ws, daemon, detail)
}

/// `deliveries show` of a GitHub delivery: what it prints, having succeeded.
fn show(ws: &Workspace, delivery: &str) -> String {
    let (code, shown, err) = ws.cli(
        &[
            "deliveries",
            "show",
            delivery,
            "--source",
            "github",
            "--config",
            "hookbridge.toml",
        ],
        &env(),
    );
    assert_eq!(code, 0, "{err}");
    shown
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_ci_that_echoes_the_token_back_puts_it_nowhere() {
    // Each rule's first answer is a 500 that echoes the request (the
    // Circle-Token header, GitLab's body token, "invalid token <token>"):
    // retried and then delivered, with the answers recorded without the
    // token, in the store, the API and the logs.
    let (_ci, ws, daemon, detail) = push_first_answered_with(Reply::Echo(500), "echo-1").await;
    let echoed: Vec<&str> = detail
        .jobs
        .iter()
        .flat_map(|j| &j.history)
        .filter_map(|a| a.error.as_deref())
        .collect();
    assert_eq!(echoed.len(), 3, "{detail:#?}");
    for e in &echoed {
        assert!(e.contains("invalid token ***"), "{e}");
    }
    let api = reqwest::get(format!("{}/api/v1/deliveries/echo-1?source=github", daemon.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(api.contains("invalid token ***"), "{api}");
    let shown = show(&ws, "echo-1");
    assert!(shown.contains("invalid token ***"), "{shown}");
    let stored = stored_bytes(&ws).await;
    for token in [CIRCLE_TOKEN, GITLAB_TRIGGER_TOKEN] {
        assert!(!stored.contains(token), "{token} is in the store");
        assert!(!api.contains(token), "{token} is in the API's answer");
        assert!(!shown.contains(token), "{token} is shown: {shown}");
        assert!(!daemon.logs().contains(token), "{token} is logged");
    }
}

/// Every byte hookbridge keeps of `ws`'s store (the database and its WAL).
async fn stored_bytes(ws: &Workspace) -> String {
    ws.settled().await;
    let mut stored = Vec::new();
    for entry in std::fs::read_dir(ws.dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.to_string_lossy().contains("hookbridge.db") {
            stored.extend(std::fs::read(&path).unwrap());
        }
    }
    String::from_utf8_lossy(&stored).into_owned()
}

/// The forms of `token` an echo in `Reply::EchoEncoded` carries.
fn encoded_forms(token: &str) -> Vec<String> {
    use base64::Engine as _;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{token}:"));
    // The base64 characters of the token's first 15 bytes, whole groups.
    let core = basic[..20].to_owned();
    vec![
        token.to_owned(),
        core,
        token
            .chars()
            .take(4)
            .map(|c| format!("\\u{:04x}", c as u32))
            .collect(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_ci_that_echoes_the_token_encoded_or_in_a_redirect_puts_it_nowhere() {
    // A 500 that writes the token in `\u` escapes and as a Basic
    // credential: the reason decoded from it, the response and the logs
    // hold `***` instead.
    let (_ci, ws, daemon, detail) = push_first_answered_with(Reply::EchoEncoded(500), "enc-1").await;
    let errors: Vec<&str> = detail
        .jobs
        .iter()
        .flat_map(|j| &j.history)
        .filter_map(|a| a.error.as_deref())
        .collect();
    assert_eq!(errors.len(), 3, "{detail:#?}");
    for e in &errors {
        assert!(e.contains("invalid token ***"), "{e}");
    }
    // A redirect whose Location carries it: dead-lettered, with the
    // Location shown without it.
    let ci = StandIn::start().await;
    ci.script([
        Reply::EchoEncoded(302),
        Reply::EchoEncoded(302),
        Reply::EchoEncoded(302),
    ]);
    let ws2 = Workspace::new(&config(&ci.url));
    let daemon2 = ws2.start(&env());
    let (status, _) = post_github(
        &daemon2.hook_url("github"),
        "push",
        "enc-2",
        &payload("github/push.json"),
    )
    .await;
    assert_eq!(status, 202);
    let key = DeliveryKey {
        id: "enc-2".into(),
        source: Some("github".into()),
    };
    let dead = delivery_when_jobs(&ws2, &key, "dead").await;
    for job in &dead.jobs {
        let e = job.last_error.as_deref().unwrap_or_default();
        assert!(
            e.contains("redirect to https://ci.example/login?circle-token=***&auth="),
            "{e}"
        );
    }
    for (ws, daemon, id) in [(&ws, &daemon, "enc-1"), (&ws2, &daemon2, "enc-2")] {
        let api = reqwest::get(format!("{}/api/v1/deliveries/{id}?source=github", daemon.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let shown = show(ws, id);
        let stored = stored_bytes(ws).await;
        for token in [CIRCLE_TOKEN, GITLAB_TRIGGER_TOKEN] {
            for form in encoded_forms(token) {
                assert!(!stored.contains(&form), "{form} is in the store");
                assert!(!api.contains(&form), "{form} is in the API's answer: {api}");
                assert!(!shown.contains(&form), "{form} is shown: {shown}");
                assert!(!daemon.logs().contains(&form), "{form} is logged");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_2xx_that_names_no_pipeline_is_done_and_said_out_loud() {
    // What a wrong `url` gives (a web UI's page): the CI's 2xx stands (no
    // second pipeline), and the log says the answer named none.
    let page = "<html><body>Welcome</body></html>";
    let (ci, ws, daemon, _) = push_first_answered_with(Reply::Body(200, page), "html-1").await;
    eventually(Duration::from_secs(10), "the warning", || {
        daemon.logs().matches("names no pipeline").count() == 3
    })
    .await;
    assert_eq!(ci.requests().len(), 3, "each sent once");
    // `deliveries show` says it too, not an empty "created:".
    let shown = show(&ws, "html-1");
    assert!(
        shown.contains("created: (the CI's answer named no pipeline)"),
        "{shown}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn escape_sequences_in_a_ci_answer_are_shown_not_obeyed_by_deliveries_show() {
    let hostile = "\u{1b}[2J\u{1b}]0;pwned\u{7}";
    let (_ci, ws, _daemon, _) = push_first_answered_with(Reply::Body(500, hostile), "esc-1").await;
    let shown = show(&ws, "esc-1");
    assert!(shown.contains("\\u{1b}[2J"), "{shown}");
    assert!(!shown.contains('\u{1b}') && !shown.contains('\u{7}'), "{shown:?}");
    let (code, listed, err) = ws.cli(&["deliveries", "list", "--config", "hookbridge.toml"], &env());
    assert_eq!(code, 0, "{err}");
    assert!(!listed.contains('\u{1b}'), "{listed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_after_ack_loses_nothing_and_duplicates_nothing() {
    let ci = StandIn::start().await;
    ci.set_hang(true);
    let ws = Workspace::new(&config(&ci.url));
    let daemon = ws.start(&env());
    let body = payload("github/push.json");
    for i in 0..5 {
        let (status, _) = post_github(&daemon.hook_url("github"), "push", &format!("crash-{i}"), &body).await;
        assert_eq!(status, 202);
    }
    // Some attempts are in flight (hanging) when the process dies.
    eventually(Duration::from_secs(10), "attempts in flight", || {
        !ci.requests().is_empty()
    })
    .await;
    daemon.kill();
    assert_eq!(ci.accepted().len(), 0);

    ci.set_hang(false);
    let daemon = ws.start(&env());
    eventually(Duration::from_secs(20), "every job delivered", || {
        ci.accepted().len() == 15
    })
    .await;
    // Every job final: no lease is left for a takeover to send twice.
    ws.settled().await;
    let accepted = ci.accepted();
    assert_eq!(accepted.len(), 15, "none twice");
    ci.assert_clean();
    let rows = store(&ws)
        .list(&DeliveryFilter {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(rows.len(), 5);
    assert!(rows.iter().all(|r| r.status.as_str() == "done"), "{rows:?}");
    assert_eq!(daemon.stop(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_daemon_after_the_lock_file_is_deleted_sends_nothing_twice() {
    // Daemon A has attempts in flight when its lock file is deleted, so a
    // second daemon can start on the same database. It must not take A's
    // live leases back as a crashed process's and send them again.
    let ci = StandIn::start().await;
    ci.set_hang(true);
    // A's attempts hang for the whole test, and are not retried within it.
    let config = config(&ci.url)
        .replace("request_timeout = \"2s\"", "request_timeout = \"60s\"")
        .replace("lease = \"3s\"", "lease = \"130s\"");
    let ws = Workspace::new(&config);
    let first = ws.start(&env());
    let body = payload("github/push.json");
    let (status, _) = post_github(&first.hook_url("github"), "push", "lock-1", &body).await;
    assert_eq!(status, 202);
    eventually(Duration::from_secs(10), "A's three attempts in flight", || {
        ci.requests().len() == 3
    })
    .await;
    let lock = std::fs::read_dir(ws.dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".lock"))
        .unwrap();
    std::fs::remove_file(&lock).unwrap();
    let second = ws.start(&env());
    eventually(Duration::from_secs(10), "B's dispatcher", || {
        second.logs().contains("dispatcher started")
    })
    .await;
    // Before this was fixed, B sent all three again within milliseconds of
    // its start; a second is ample to see it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(ci.requests().len(), 3, "B sent A's attempts in flight again");
    // A refuses deliveries now, and says to stop it: its data is where it
    // was, so nothing is saved aside (a copy put back would undo B's work).
    let (status, _) = post_github(&first.hook_url("github"), "push", "lock-2", &body).await;
    assert_eq!(status, 503);
    assert!(
        first
            .logs()
            .contains("another hookbridge may now serve this store")
    );
    let saved = std::fs::read_dir(ws.dir.path())
        .unwrap()
        .any(|e| e.unwrap().path().to_string_lossy().contains(".rescued-"));
    assert!(!saved, "a copy was saved although no data file was lost");
    second.kill();
    first.kill();
}

/// POST a signed push with `Transfer-Encoding: chunked` (no `Content-Length`)
/// over a raw connection, in 1 KiB chunks; returns the status code.
async fn post_github_chunked(url: &str, delivery: &str, body: &[u8]) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut conn = tokio::net::TcpStream::connect(host).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nX-GitHub-Event: push\r\nX-GitHub-Delivery: {delivery}\r\n\
         X-Hub-Signature-256: {}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\
         Connection: close\r\n\r\n",
        github_signature(GITHUB_SECRET, body)
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    for chunk in body.chunks(1024) {
        conn.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .await
            .unwrap();
        conn.write_all(chunk).await.unwrap();
        conn.write_all(b"\r\n").await.unwrap();
    }
    conn.write_all(b"0\r\n\r\n").await.unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).await.unwrap();
    answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn senders_beyond_body_memory_wait_their_turn_and_every_delivery_is_stored() {
    let ci = StandIn::start().await;
    // Room for two pushes at a time; twenty-six arrive at once, two of them
    // chunked (no declared length).
    let config = config(&ci.url).replace(
        "max_body = \"64KiB\"",
        "max_body = \"64KiB\"\nbody_memory = \"16KiB\"",
    );
    let ws = Workspace::new(&config);
    let daemon = ws.start(&env());
    let url = daemon.hook_url("github");
    let body = payload("github/push.json");
    assert!(
        body.len() > 6 * 1024,
        "the fixture push fills a good part of the budget"
    );
    let mut sends = tokio::task::JoinSet::new();
    for i in 0..24 {
        let (url, body) = (url.clone(), body.clone());
        sends.spawn(async move { post_github(&url, "push", &format!("room-{i}"), &body).await.0 });
    }
    for i in 0..2 {
        let (url, body) = (url.clone(), body.clone());
        sends.spawn(async move { post_github_chunked(&url, &format!("room-chunked-{i}"), &body).await });
    }
    let statuses = sends.join_all().await;
    assert!(statuses.iter().all(|s| *s == 202), "{statuses:?}");
    assert_eq!(delivery_count(&ws).await, 26);
    eventually(Duration::from_secs(20), "every job delivered", || {
        ci.accepted().len() == 26 * 3
    })
    .await;
    ci.assert_clean();
    assert_eq!(daemon.stop(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn form_encoded_github_delivery_is_verified_over_the_raw_body() {
    let ci = StandIn::start().await;
    let ws = Workspace::new(&config(&ci.url));
    let daemon = ws.start(&env());
    let body = payload("github/push.form-urlencoded.txt");
    let (status, summary) = post(
        &daemon.hook_url("github"),
        &[
            ("X-GitHub-Event", "push"),
            ("X-GitHub-Delivery", "form-1"),
            ("X-Hub-Signature-256", &github_signature(GITHUB_SECRET, &body)),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        body,
    )
    .await;
    assert_eq!(status, 202, "{summary}");
    eventually(Duration::from_secs(10), "three triggers", || {
        ci.accepted().len() == 3
    })
    .await;
    ci.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_readiness_and_metrics() {
    let ci = StandIn::start().await;
    let ws = Workspace::new(&config(&ci.url));
    let daemon = ws.start(&env());
    let get = |path: &str| reqwest::get(format!("{}{path}", daemon.admin));
    assert_eq!(get("/healthz").await.unwrap().status(), 200);
    assert_eq!(get("/readyz").await.unwrap().status(), 200);
    post_github(
        &daemon.hook_url("github"),
        "push",
        "m-1",
        &payload("github/push.json"),
    )
    .await;
    let metrics = get("/metrics").await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains(r#"hookbridge_webhooks_received_total{source="github",outcome="accepted"} 1"#),
        "{metrics}"
    );
    assert_eq!(daemon.stop(), 0);
}
