//! Concurrency groups end to end: the real daemon, signed GitHub pushes
//! over HTTP, and the stand-in GitLab API, which validates every trigger
//! and records the delivery each one carries (`DELIVERY`).
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use support::ci::{GITLAB_TRIGGER_TOKEN, StandIn};
use support::daemon::{Daemon, Workspace};
use support::pg::TestDatabase;
use support::{github_signature, payload, wait_for};
use tokio::task::JoinSet;

const GITHUB_SECRET: &str = "It's a Secret to Everybody";

const ENV: &[(&str, &str)] = &[
    ("GITHUB_WEBHOOK_SECRET", GITHUB_SECRET),
    ("GITLAB_TRIGGER_TOKEN", GITLAB_TRIGGER_TOKEN),
];

/// A config with one grouped rule: one group per branch, `debounce`, and
/// `[dispatch] concurrency` attempts at once.
fn config(store: &str, ci: &str, debounce: &str, concurrency: u32) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
shutdown_grace = "2s"

[admin]
listen = "127.0.0.1:0"

[store]
url = "{store}"
tls = "disable"
pool_size = 8

[retry]
max_attempts = 50
initial_backoff = "100ms"
max_backoff = "500ms"
request_timeout = "5s"

[dispatch]
lease = "30s"
concurrency = {concurrency}

[sources.github]
type = "github"
secrets = ["env:GITHUB_WEBHOOK_SECRET"]

[targets.gitlab]
type = "gitlab"
url = "{ci}"
token = "env:GITLAB_TRIGGER_TOKEN"

[[rules]]
name = "build-branch"
source = "github"
events = ["push"]
[rules.concurrency]
group = "{{{{ event.repository }}}}/{{{{ event.branch }}}}"
debounce = "{debounce}"
[rules.trigger]
target = "gitlab"
project = "acme/app"
ref = "{{{{ event.branch }}}}"
variables = {{ DELIVERY = "{{{{ event.delivery }}}}" }}
"#
    )
}

/// GitHub's example push, to `branch`.
fn push_to(branch: &str, n: usize) -> Vec<u8> {
    let mut body: Value = serde_json::from_slice(&payload("github/push.json")).unwrap();
    body["ref"] = Value::String(format!("refs/heads/{branch}"));
    body["after"] = Value::String(format!("{n:040x}"));
    serde_json::to_vec(&body).unwrap()
}

/// POST a signed push; the status and the answer.
async fn post(client: &reqwest::Client, hooks: &str, delivery: &str, body: Vec<u8>) -> (u16, Value) {
    let resp = client
        .post(format!("{hooks}/hooks/github"))
        .header("X-GitHub-Event", "push")
        .header("X-GitHub-Delivery", delivery)
        .header("X-Hub-Signature-256", github_signature(GITHUB_SECRET, &body))
        .header("Content-Type", "application/json")
        .body(body)
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

/// The admin API's view of one delivery.
async fn show(client: &reqwest::Client, daemon: &Daemon, delivery: &str) -> Value {
    let url = format!("{}/api/v1/deliveries/{delivery}", daemon.admin);
    client.get(url).send().await.unwrap().json().await.unwrap()
}

/// The accepted triggers at the CI, by the delivery each one carries.
fn triggers(ci: &StandIn) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for r in ci.accepted() {
        let id = r.body["variables"]["DELIVERY"].as_str().unwrap_or("").to_owned();
        *counts.entry(id).or_insert(0) += 1;
    }
    counts
}

/// Each delivery's one job: (state, the delivery that superseded it).
async fn jobs(
    client: &reqwest::Client,
    daemon: &Daemon,
    ids: &[String],
) -> BTreeMap<String, (String, Option<String>)> {
    let mut out = BTreeMap::new();
    for id in ids {
        let d = show(client, daemon, id).await;
        let job = &d["jobs"][0];
        out.insert(
            id.clone(),
            (
                job["state"].as_str().unwrap().to_owned(),
                job["superseded_by"]["delivery"].as_str().map(str::to_owned),
            ),
        );
    }
    out
}

/// Ten pushes to `main` within a second, and three to `dev` among them,
/// with `debounce = "2s"`: one pipeline per branch, each for the branch's
/// newest push; every other job superseded by the push that came next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_to_one_branch_runs_one_pipeline_for_the_newest_push() {
    let ci = StandIn::start().await;
    let ws = Workspace::new(&config("@DB@", &ci.url, "2s", 16));
    let daemon = ws.start(ENV);
    let client = reqwest::Client::new();
    let (mut main, mut dev) = (Vec::new(), Vec::new());
    for n in 0..13 {
        let (branch, list) = if n % 4 == 1 {
            ("dev", &mut dev)
        } else {
            ("main", &mut main)
        };
        let id = format!("{branch}-{n:02}");
        let (status, answer) = post(&client, &daemon.hooks, &id, push_to(branch, n)).await;
        assert_eq!(status, 202, "{answer}");
        let matched = &answer["matched"][0];
        assert_eq!(
            matched["group"],
            format!("Codertocat/Hello-World/{branch}"),
            "{answer}"
        );
        // Each push supersedes the one before it on its branch, and says so.
        let superseded = matched["superseded"].as_array().cloned().unwrap_or_default();
        assert_eq!(superseded.len(), usize::from(!list.is_empty()), "{answer}");
        list.push(id);
    }
    assert_eq!((main.len(), dev.len()), (10, 3));
    assert!(ci.requests().is_empty(), "nothing is sent during the debounce");
    ws.settled().await;
    let newest = [main.last().unwrap().clone(), dev.last().unwrap().clone()];
    let sent = triggers(&ci);
    assert_eq!(sent, newest.iter().map(|id| (id.clone(), 1)).collect());
    for list in [&main, &dev] {
        let states = jobs(&client, &daemon, list).await;
        for (i, id) in list.iter().enumerate() {
            let want = match list.get(i + 1) {
                Some(next) => ("superseded".to_owned(), Some(next.clone())),
                None => ("done".to_owned(), None),
            };
            assert_eq!(states[id], want, "{id}");
        }
    }
    let (code, out, err) = ws.cli(&["deliveries", "list", "--status", "superseded", "--json"], ENV);
    assert_eq!(code, 0, "{err}");
    let listed: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(listed.len(), 11);
    let (code, out, _) = ws.cli(&["deliveries", "show", &main[3]], ENV);
    assert_eq!(code, 0);
    assert!(out.contains("state superseded"), "{out}");
    assert!(
        out.contains("superseded by job") && out.contains(&main[4]),
        "{out}"
    );
    let metrics = daemon.metrics().await;
    assert!(
        metrics.contains("hookbridge_jobs_superseded_total 11"),
        "{metrics}"
    );
    ci.assert_clean();
}

/// Without a debounce, against a CI that answers slowly and one attempt at
/// a time: the jobs that created a pipeline keep it; every job still
/// waiting when a newer push arrived is superseded; none is sent twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_ci_keeps_created_pipelines_and_the_waiting_jobs_are_superseded() {
    let ci = StandIn::start().await;
    ci.set_delay(Duration::from_millis(400));
    let ws = Workspace::new(&config("@DB@", &ci.url, "0s", 1));
    let daemon = ws.start(ENV);
    let client = reqwest::Client::new();
    let mut ids = Vec::new();
    for n in 0..8 {
        let id = format!("push-{n}");
        let (status, answer) = post(&client, &daemon.hooks, &id, push_to("main", n)).await;
        assert_eq!(status, 202, "{answer}");
        ids.push(id);
        // Pushes arrive while the CI is busy with an earlier one.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    ws.settled().await;
    let sent = triggers(&ci);
    let states = jobs(&client, &daemon, &ids).await;
    for (i, id) in ids.iter().enumerate() {
        match states[id].0.as_str() {
            "done" => assert_eq!(sent.get(id), Some(&1), "{id} is done: its one pipeline"),
            "superseded" => {
                assert_eq!(sent.get(id), None, "{id} was superseded: nothing sent");
                let by = states[id].1.clone().unwrap();
                assert!(
                    ids[i + 1..].contains(&by),
                    "{id} superseded by a newer push, not {by}"
                );
            }
            other => panic!("{id} ended {other}"),
        }
    }
    assert_eq!(states[ids.last().unwrap()].0, "done", "the newest push runs");
    let superseded = states.values().filter(|s| s.0 == "superseded").count();
    assert!(superseded >= 3, "a busy CI leaves pushes waiting: {states:?}");
    assert_eq!(sent.len() + superseded, ids.len());
    ci.assert_clean();
}

/// SIGKILL while jobs wait for their debounce: after a restart the newest
/// job of each group is still triggered, once; the others stay superseded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_during_the_debounce_loses_nothing() {
    let ci = StandIn::start().await;
    let ws = Workspace::new(&config("@DB@", &ci.url, "3s", 16));
    let daemon = ws.start(ENV);
    let client = reqwest::Client::new();
    let mut newest = BTreeMap::new();
    for n in 0..9 {
        let branch = ["main", "dev", "release"][n % 3];
        let id = format!("{branch}-{n}");
        let (status, _) = post(&client, &daemon.hooks, &id, push_to(branch, n)).await;
        assert_eq!(status, 202);
        newest.insert(branch, id);
    }
    daemon.kill();
    assert!(ci.requests().is_empty());
    let daemon = ws.start(ENV);
    ws.settled().await;
    let sent = triggers(&ci);
    assert_eq!(sent, newest.values().map(|id| (id.clone(), 1)).collect());
    drop(daemon);
    ci.assert_clean();
}

/// Three replicas on PostgreSQL, 200 pushes over 10 branches sent to all of
/// them within two seconds, `debounce = "3s"`: exactly ten pipelines, one
/// per branch, each for the branch's newest push, and no job left waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_agree_on_the_newest_push_of_each_branch() {
    let db = TestDatabase::create().await;
    let ci = StandIn::start().await;
    let ws = Workspace::new(&config(&db.url, &ci.url, "3s", 16));
    let (code, out, err) = ws.cli(&["migrate"], ENV);
    assert_eq!(code, 0, "{out}{err}");
    let replicas: Vec<Daemon> = (0..3).map(|_| ws.start(ENV)).collect();
    let hooks: Arc<Vec<String>> = Arc::new(replicas.iter().map(|d| d.hooks.clone()).collect());
    let client = reqwest::Client::new();
    let branches: Vec<String> = (0..10).map(|b| format!("feature-{b}")).collect();
    // 190 pushes at once, over every replica; then the last push of each branch.
    let send = |ids: Vec<(String, String, usize)>| {
        let (client, hooks) = (client.clone(), hooks.clone());
        async move {
            let mut tasks = JoinSet::new();
            for (i, (id, branch, n)) in ids.into_iter().enumerate() {
                let (client, hooks) = (client.clone(), hooks.clone());
                tasks.spawn(async move {
                    let (status, answer) =
                        post(&client, &hooks[i % hooks.len()], &id, push_to(&branch, n)).await;
                    assert_eq!(status, 202, "{id}: {answer}");
                });
            }
            while let Some(r) = tasks.join_next().await {
                r.unwrap();
            }
        }
    };
    let started = std::time::Instant::now();
    let early: Vec<_> = (0..190)
        .map(|n| (format!("early-{n:03}"), branches[n % 10].clone(), n))
        .collect();
    send(early).await;
    let last: Vec<_> = (0..10)
        .map(|b| (format!("last-{b}"), branches[b].clone(), 1000 + b))
        .collect();
    send(last).await;
    let sending = started.elapsed();
    assert!(
        sending < Duration::from_secs(3),
        "the pushes took {sending:?}: the debounce may have run out"
    );
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    wait_for(Duration::from_secs(30), "no job pending or running", async || {
        let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE state IN ('pending', 'running')")
            .fetch_one(&pool)
            .await
            .unwrap();
        if left == 0 {
            Ok(())
        } else {
            Err(format!("{left} left"))
        }
    })
    .await;
    let sent = triggers(&ci);
    let want: BTreeMap<String, usize> = (0..10).map(|b| (format!("last-{b}"), 1)).collect();
    assert_eq!(sent, want);
    let states: Vec<(String, i64)> =
        sqlx::query_as("SELECT state, COUNT(*) FROM jobs GROUP BY state ORDER BY state")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(states, [("done".to_owned(), 10), ("superseded".to_owned(), 190)]);
    ci.assert_clean();
}

/// Two rules whose groups render the same string share the group: a newer
/// job of either supersedes the other's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_that_render_the_same_group_share_it() {
    let ci = StandIn::start().await;
    let one = config("@DB@", &ci.url, "1s", 16);
    let rule = one.split("[[rules]]").nth(1).unwrap().to_owned();
    let main = rule
        .replace(
            "name = \"build-branch\"",
            "name = \"build-main\"\nbranches = [\"main\"]",
        )
        .replace("/{{ event.branch }}\"\ndebounce", "\"\ndebounce");
    let dev = main
        .replace("build-main", "build-dev")
        .replace("[\"main\"]", "[\"dev\"]");
    let text = format!(
        "{}[[rules]]{main}[[rules]]{dev}",
        one.split("[[rules]]").next().unwrap()
    );
    let ws = Workspace::new(&text);
    let daemon = ws.start(ENV);
    let client = reqwest::Client::new();
    let (status, first) = post(&client, &daemon.hooks, "push-main", push_to("main", 1)).await;
    assert_eq!(status, 202, "{first}");
    assert_eq!(first["matched"][0]["rule"], "build-main");
    assert_eq!(first["matched"][0]["group"], "Codertocat/Hello-World");
    let (status, second) = post(&client, &daemon.hooks, "push-dev", push_to("dev", 2)).await;
    assert_eq!(status, 202, "{second}");
    assert_eq!(second["matched"][0]["rule"], "build-dev");
    assert_eq!(
        second["matched"][0]["superseded"],
        serde_json::json!([first["matched"][0]["job"]])
    );
    ws.settled().await;
    assert_eq!(triggers(&ci), [("push-dev".to_owned(), 1)].into());
    ci.assert_clean();
}

/// A v1.1 job pinned to a `revision` in a group is a warning.
#[test]
fn check_warns_of_a_pinned_revision() {
    let ws = Workspace::new(
        r#"
[sources.github]
type = "github"
secrets = ["env:GITHUB_WEBHOOK_SECRET"]

[targets.circleci]
type = "circleci"
token = "env:CIRCLECI_TOKEN"

[[rules]]
name = "job"
source = "github"
[rules.concurrency]
group = "{{ event.branch }}"
[rules.trigger]
target = "circleci"
project = "gh/acme/app"
job = "build"
branch = "{{ event.branch }}"
revision = "{{ event.sha }}"
"#,
    );
    let (code, _, err) = ws.cli(&["check"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("supersedes"), "{err}");
    assert!(err.contains("revision"), "{err}");
}

/// A group rendered from a sender's payload that is empty or too long is
/// the rule's error, with the reason; the other rules still run.
#[test]
fn a_group_the_payload_makes_unusable_is_the_rules_error() {
    let ws = Workspace::new(&config("@DB@", "https://gitlab.example.com", "1s", 1));
    let write = |name: &str, branch: &str| {
        let mut body: Value = serde_json::from_slice(&payload("github/push.json")).unwrap();
        body["ref"] = Value::String(format!("refs/heads/{branch}"));
        let path = ws.dir.path().join(name);
        std::fs::write(&path, serde_json::to_vec(&body).unwrap()).unwrap();
        path.display().to_string()
    };
    let long = write("long.json", &"b".repeat(600));
    let (code, out, err) = ws.cli(&["explain", "--source", "github", "--event", "push", &long], ENV);
    assert_eq!(code, 3, "{out}{err}");
    assert!(
        out.contains("ERROR  build-branch: concurrency.group rendered more than 512 characters"),
        "{out}"
    );
    let fine = write("fine.json", "main");
    let (code, out, err) = ws.cli(&["explain", "--source", "github", "--event", "push", &fine], ENV);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("concurrency group \"Codertocat/Hello-World/main\""),
        "{out}"
    );
}
