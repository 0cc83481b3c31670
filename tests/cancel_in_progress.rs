//! `cancel_in_progress` end to end: the real daemon, signed GitHub pushes,
//! and the stand-in CircleCI and GitLab APIs, which hold the pipelines they
//! created and check every list and cancel call against the official API
//! descriptions (and that nothing hookbridge did not create is touched).
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use serde_json::Value;
use support::ci::{CIRCLE_TOKEN, GITLAB_PRIVATE_TOKEN, GITLAB_TRIGGER_TOKEN, StandIn};
use support::daemon::{Daemon, Workspace};
use support::{github_signature, payload, wait_for};

const GITHUB_SECRET: &str = "It's a Secret to Everybody";

const ENV: &[(&str, &str)] = &[
    ("GITHUB_WEBHOOK_SECRET", GITHUB_SECRET),
    ("GITLAB_TRIGGER_TOKEN", GITLAB_TRIGGER_TOKEN),
    ("GITLAB_API_TOKEN", GITLAB_PRIVATE_TOKEN),
    ("CIRCLECI_TOKEN", CIRCLE_TOKEN),
];

/// One rule with `cancel_in_progress`, one group per branch, sending `trigger`.
fn config(ci: &str, trigger: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[admin]
listen = "127.0.0.1:0"

[store]
url = "@DB@"

[retry]
max_attempts = 5
initial_backoff = "100ms"
max_backoff = "200ms"
request_timeout = "5s"

[sources.github]
type = "github"
secrets = ["env:GITHUB_WEBHOOK_SECRET"]

[targets.circleci]
type = "circleci"
url = "{ci}"
token = "env:CIRCLECI_TOKEN"

[targets.gitlab]
type = "gitlab"
url = "{ci}"
token = "env:GITLAB_TRIGGER_TOKEN"
api_token = "env:GITLAB_API_TOKEN"

[[rules]]
name = "build-branch"
source = "github"
events = ["push"]
[rules.concurrency]
group = "{{{{ event.branch }}}}"
cancel_in_progress = true
[rules.trigger]
{trigger}
"#
    )
}

const CIRCLECI_V2: &str = r#"target = "circleci"
project = "gh/acme/app"
branch = "{{ event.branch }}"
parameters = { delivery = "{{ event.delivery }}" }"#;

const CIRCLECI_V1: &str = r#"target = "circleci"
project = "gh/acme/app"
job = "build"
branch = "{{ event.branch }}""#;

const GITLAB: &str = r#"target = "gitlab"
project = "acme/app"
ref = "{{ event.branch }}""#;

async fn push(client: &reqwest::Client, daemon: &Daemon, delivery: &str) {
    let body = payload("github/push.json");
    let resp = client
        .post(daemon.hook_url("github"))
        .header("X-GitHub-Event", "push")
        .header("X-GitHub-Delivery", delivery)
        .header("X-Hub-Signature-256", github_signature(GITHUB_SECRET, &body))
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202, "{}", resp.text().await.unwrap());
}

/// The admin API's view of a delivery's one job.
async fn job(client: &reqwest::Client, daemon: &Daemon, delivery: &str) -> Value {
    let url = format!("{}/api/v1/deliveries/{delivery}", daemon.admin);
    let d: Value = client.get(url).send().await.unwrap().json().await.unwrap();
    d["jobs"][0].clone()
}

async fn wait_state(client: &reqwest::Client, daemon: &Daemon, delivery: &str, state: &str) -> Value {
    wait_for(
        Duration::from_secs(20),
        &format!("{delivery}'s job {state}"),
        async || {
            let j = job(client, daemon, delivery).await;
            if j["state"] == state {
                Ok(j)
            } else {
                Err(j.to_string())
            }
        },
    )
    .await
}

/// Wait until `delivery`'s pipeline cancel reached a final state.
async fn wait_cancel(client: &reqwest::Client, daemon: &Daemon, delivery: &str) -> Value {
    wait_for(
        Duration::from_secs(20),
        &format!("the cancel of {delivery}'s pipeline"),
        async || {
            let j = job(client, daemon, delivery).await;
            match j["cancel"]["state"].as_str() {
                Some("cancelled" | "finished" | "failed") => Ok(j),
                _ => Err(j.to_string()),
            }
        },
    )
    .await
}

fn calls(ci: &StandIn) -> Vec<String> {
    ci.cancel_calls()
        .iter()
        .map(|r| format!("{} {} {}", r.api, r.path, r.status))
        .collect()
}

/// CircleCI v2: once the newer push's pipeline exists, each running
/// workflow of the older pipeline is cancelled, once; a pipeline hookbridge
/// did not create is never touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circleci_v2_workflows_of_the_older_pipeline_are_cancelled_once() {
    let ci = StandIn::start().await;
    let foreign = ci.foreign_pipeline();
    let ws = Workspace::new(&config(&ci.url, CIRCLECI_V2));
    let daemon = ws.start(ENV);
    let client = reqwest::Client::new();
    push(&client, &daemon, "push-1").await;
    let first = wait_state(&client, &daemon, "push-1", "done").await;
    let pipeline = first["result"]["id"].as_str().unwrap().to_owned();
    push(&client, &daemon, "push-2").await;
    let second = wait_state(&client, &daemon, "push-2", "done").await;
    let cancelled = wait_cancel(&client, &daemon, "push-1").await;
    assert_eq!(cancelled["cancel"]["state"], "cancelled", "{cancelled}");
    assert_eq!(cancelled["cancel"]["by_job"], second["id"]);
    assert_eq!(cancelled["state"], "done", "the job keeps its pipeline");
    let outcomes: Vec<&str> = cancelled["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["done", "cancelled"]);
    let base = "7a1f0c2d-0000-4000-8000-0000000000";
    assert_eq!(
        calls(&ci),
        [
            format!("circleci-workflows /api/v2/pipeline/{pipeline}/workflow 200"),
            format!("circleci-workflow-cancel /api/v2/workflow/{base}11/cancel 202"),
            format!("circleci-workflow-cancel /api/v2/workflow/{base}12/cancel 202"),
        ]
    );
    // The cancels came after the newer pipeline was created.
    let created = ci.accepted().iter().map(|r| r.seq).max().unwrap();
    assert!(ci.cancel_calls().iter().all(|c| c.seq > created));
    assert!(calls(&ci).iter().all(|c| !c.contains(&foreign)));
    assert_eq!(job(&client, &daemon, "push-2").await.get("cancel"), None);
    let metrics = daemon.metrics().await;
    assert!(
        metrics.contains(r#"hookbridge_pipelines_cancelled_total{target="circleci",outcome="cancelled"} 1"#),
        "{metrics}"
    );
    let (code, out, _) = ws.cli(&["deliveries", "show", "push-1"], ENV);
    assert_eq!(code, 0);
    assert!(out.contains("cancelled 2 workflows"), "{out}");
    ci.assert_clean();
}

/// A pipeline that had finished is not cancelled: its workflows are read,
/// none runs, and the cancel says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_pipeline_is_left_alone() {
    let ci = StandIn::start().await;
    let ws = Workspace::new(&config(&ci.url, CIRCLECI_V2));
    let daemon = ws.start(ENV);
    let client = reqwest::Client::new();
    push(&client, &daemon, "push-1").await;
    wait_state(&client, &daemon, "push-1", "done").await;
    ci.finish_pipelines("success");
    push(&client, &daemon, "push-2").await;
    let older = wait_cancel(&client, &daemon, "push-1").await;
    assert_eq!(older["cancel"]["state"], "finished", "{older}");
    let calls = calls(&ci);
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert!(calls[0].starts_with("circleci-workflows "), "{calls:?}");
    ci.assert_clean();
}

/// GitLab: the cancel goes with the `api_token`, then the pipeline is read
/// again; a failing cancel is retried and each attempt is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitlab_cancels_with_the_api_token_and_retries_a_failure() {
    let ci = StandIn::start().await;
    let ws = Workspace::new(&config(&ci.url, GITLAB));
    let daemon = ws.start(ENV);
    let client = reqwest::Client::new();
    push(&client, &daemon, "push-1").await;
    let first = wait_state(&client, &daemon, "push-1", "done").await;
    let pipeline = first["result"]["id"].as_str().unwrap().to_owned();
    ci.script_cancels([503]);
    push(&client, &daemon, "push-2").await;
    let older = wait_cancel(&client, &daemon, "push-1").await;
    assert_eq!(older["cancel"]["state"], "cancelled", "{older}");
    assert_eq!(older["cancel"]["attempts"], 2);
    let outcomes: Vec<&str> = older["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["done", "cancel_retry", "cancelled"]);
    let path = format!("/api/v4/projects/acme%2Fapp/pipelines/{pipeline}");
    assert_eq!(
        calls(&ci),
        [
            format!("gitlab-pipeline-cancel {path}/cancel 503"),
            format!("gitlab-pipeline-cancel {path}/cancel 201"),
            format!("gitlab-pipeline {path} 200"),
        ]
    );
    ci.assert_clean();
}

/// CircleCI v1.1: the older build is cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circleci_v1_cancels_the_older_build() {
    let ci = StandIn::start().await;
    let ws = Workspace::new(&config(&ci.url, CIRCLECI_V1));
    let daemon = ws.start(ENV);
    let client = reqwest::Client::new();
    push(&client, &daemon, "push-1").await;
    let first = wait_state(&client, &daemon, "push-1", "done").await;
    let build = first["result"]["number"].as_i64().unwrap();
    push(&client, &daemon, "push-2").await;
    let older = wait_cancel(&client, &daemon, "push-1").await;
    assert_eq!(older["cancel"]["state"], "cancelled", "{older}");
    assert_eq!(
        calls(&ci),
        [format!(
            "circleci-build-cancel /api/v1.1/project/github/acme/app/{build}/cancel 200"
        )]
    );
    ci.assert_clean();
}

/// `check`: a GitLab rule that cancels needs the target's `api_token`.
#[test]
fn check_asks_for_the_api_token_of_a_gitlab_target() {
    let text =
        config("https://gitlab.example.com", GITLAB).replace("api_token = \"env:GITLAB_API_TOKEN\"\n", "");
    let ws = Workspace::new(&text);
    let (code, _, err) = ws.cli(&["check"], ENV);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("cancel_in_progress needs `api_token` on target `gitlab`"),
        "{err}"
    );
    assert!(err.contains("hookbridge.toml:"), "{err}");
    let ws = Workspace::new(&config("https://gitlab.example.com", GITLAB));
    let (code, _, err) = ws.cli(&["check"], ENV);
    assert_eq!(code, 0, "{err}");
}
