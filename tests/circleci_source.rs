//! A `circleci` source on the real daemon: CircleCI's own webhooks
//! (`workflow-completed`, `job-completed`), signed as CircleCI signs them
//! (`circleci-signature: v1=<hex HMAC-SHA256>`), are stored and described as
//! pipeline events that rules match like any other; a wrong signature is 401.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::ci::{CIRCLE_TOKEN, StandIn};
use support::daemon::{Daemon, Workspace};
use support::{eventually, hmac_sha256_hex, payload};

const SECRET: &str = "circleci-webhook-secret";
const PREVIOUS: &str = "circleci-webhook-secret-before-rotation";

/// A `circleci` source, and a rule that runs a pipeline of another project
/// when a CircleCI workflow fails, reading the failed run from `event.pipeline`.
fn config(ci: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[admin]
listen = "127.0.0.1:0"

[store]
url = "@DB@"

[sources.circleci]
type = "circleci"
secrets = ["env:CIRCLECI_WEBHOOK_SECRET", "env:CIRCLECI_WEBHOOK_SECRET_PREVIOUS"]

[targets.circleci]
type = "circleci"
url = "{ci}"
token = "env:CIRCLECI_TOKEN"

[[rules]]
name = "on-failure"
source = "circleci"
events = ["workflow-completed"]
actions = ["failed"]
[rules.trigger]
target = "circleci"
project = "gh/acme/triage"
branch = "{{{{ event.branch }}}}"
parameters = {{ failed_pipeline = "{{{{ event.pipeline.id }}}}", workflow = "{{{{ event.pipeline.workflow }}}}", number = "{{{{ event.pipeline.number }}}}" }}
"#
    )
}

fn start(ci: &StandIn) -> (Workspace, Daemon) {
    let ws = Workspace::new(&config(&ci.url));
    let daemon = ws.start(&[
        ("CIRCLECI_WEBHOOK_SECRET", SECRET),
        ("CIRCLECI_WEBHOOK_SECRET_PREVIOUS", PREVIOUS),
        ("CIRCLECI_TOKEN", CIRCLE_TOKEN),
    ]);
    (ws, daemon)
}

/// POST `body` as CircleCI does, with `signature` as `circleci-signature`
/// (none when `None`); the status and the JSON answer.
async fn deliver(daemon: &Daemon, event: &str, body: &[u8], signature: Option<String>) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(daemon.hook_url("circleci"))
        .header("Content-Type", "application/json")
        .header("User-Agent", "CircleCI-Webhook/1.0")
        .header("circleci-event-type", event)
        .body(body.to_vec());
    if let Some(signature) = signature {
        req = req.header("circleci-signature", signature);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// The `v1=` value CircleCI sends for `body` under `secret`, computed here.
fn signature(secret: &str, body: &[u8]) -> String {
    format!("v1={}", hmac_sha256_hex(secret.as_bytes(), body))
}

/// The normalized event the daemon stored, via the admin API.
async fn stored_event(daemon: &Daemon, delivery: &str) -> Value {
    let url = format!("{}/api/v1/deliveries/{delivery}?source=circleci", daemon.admin);
    let resp = reqwest::get(&url).await.unwrap();
    assert_eq!(resp.status().as_u16(), 200, "{url}");
    let detail: Value = resp.json().await.unwrap();
    detail["normalized"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflow_completions_are_verified_stored_and_matched_by_their_result() {
    let ci = StandIn::start().await;
    let (ws, daemon) = start(&ci);

    // A failed workflow (CircleCI's GitLab-project sample), rightly signed: the rule matches.
    let failed = payload("circleci/workflow-completed-gitlab.json");
    let (status, summary) = deliver(
        &daemon,
        "workflow-completed",
        &failed,
        Some(signature(SECRET, &failed)),
    )
    .await;
    assert_eq!(status, 202, "{summary}");
    assert_eq!(summary["event"], "workflow-completed", "{summary}");
    assert_eq!(summary["delivery"], "cbabbb40-6084-4f91-8311-a326c0f4963a");
    assert_eq!(summary["matched"][0]["rule"], "on-failure", "{summary}");
    let event = stored_event(&daemon, "cbabbb40-6084-4f91-8311-a326c0f4963a").await;
    assert_eq!(
        (&event["kind"], &event["action"], &event["provider"]),
        (&json!("pipeline"), &json!("failed"), &json!("circleci"))
    );
    assert_eq!(event["pipeline"]["id"], "37c74cb7-d64d-4032-8731-1cb95bfef921");
    assert_eq!(event["sha"], "850a1519f25d14e968649cc420d1bd381715c05c");

    // The triggered pipeline carries the failed run, read from `event.pipeline`.
    eventually(Duration::from_secs(10), "the trigger sent", || {
        ci.accepted().len() == 1
    })
    .await;
    let sent = &ci.accepted()[0];
    assert_eq!(sent.path, "/api/v2/project/gh/acme/triage/pipeline");
    assert_eq!(
        sent.body,
        json!({"branch": "main", "parameters": {"failed_pipeline": "37c74cb7-d64d-4032-8731-1cb95bfef921", "workflow": "build", "number": 1}})
    );

    // A successful workflow, signed with the previous secret (rotation): stored
    // and explained, and the rule skips it on its action.
    let succeeded = payload("circleci/workflow-completed-github-oauth.json");
    let (status, summary) = deliver(
        &daemon,
        "workflow-completed",
        &succeeded,
        Some(format!("v2=00,{}", signature(PREVIOUS, &succeeded))),
    )
    .await;
    assert_eq!(status, 200, "{summary}");
    assert_eq!(summary["matched"], json!([]), "{summary}");
    assert_eq!(summary["skipped"][0]["rule"], "on-failure", "{summary}");
    assert!(
        summary["skipped"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("success"),
        "{summary}"
    );
    let event = stored_event(&daemon, "3888f21b-eaa7-38e3-8f3d-75a63bba8895").await;
    assert_eq!(
        (&event["kind"], &event["action"]),
        (&json!("pipeline"), &json!("success"))
    );
    assert_eq!(event["repository"], "circleci/webhook-service");
    assert_eq!(event["pipeline"]["workflow"], "build-test-deploy");

    // A job completion is a `job` event: the `workflow-completed` rule leaves it.
    let job = payload("circleci/job-completed-gitlab.json");
    let (status, summary) = deliver(&daemon, "job-completed", &job, Some(signature(SECRET, &job))).await;
    assert_eq!(status, 200, "{summary}");
    assert_eq!(summary["matched"], json!([]), "{summary}");
    let event = stored_event(&daemon, "47a497be-4498-4da0-a4e8-2dabd889af0f").await;
    assert_eq!(
        (&event["kind"], &event["action"]),
        (&json!("job"), &json!("success"))
    );

    // CircleCI may deliver twice: the second is a duplicate, nothing is sent again.
    let (status, summary) = deliver(
        &daemon,
        "workflow-completed",
        &failed,
        Some(signature(SECRET, &failed)),
    )
    .await;
    assert_eq!((status, &summary["duplicate"]), (200, &json!(true)), "{summary}");

    // `deliveries show` lists it with its kind.
    let (code, shown, err) = ws.cli(
        &["deliveries", "show", "cbabbb40-6084-4f91-8311-a326c0f4963a"],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        shown.contains("source circleci, event workflow-completed, kind pipeline"),
        "{shown}"
    );
    ws.settled().await;
    assert_eq!(ci.accepted().len(), 1);
    ci.assert_clean();
    assert!(!daemon.logs().contains(SECRET));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_or_missing_signature_is_401_and_nothing_is_stored() {
    let ci = StandIn::start().await;
    let (_ws, daemon) = start(&ci);
    let body = payload("circleci/workflow-completed-gitlab.json");
    let mut tampered = body.clone();
    tampered.extend_from_slice(b" ");
    for (what, body, signature, message) in [
        (
            "wrong secret",
            body.clone(),
            Some(signature("not-the-secret", &body)),
            "signature does not match",
        ),
        (
            "tampered body",
            tampered,
            Some(signature(SECRET, &body)),
            "signature does not match",
        ),
        (
            "another version only",
            body.clone(),
            Some(signature(SECRET, &body).replace("v1=", "v2=")),
            "`circleci-signature` header is malformed: no `v1=` signature",
        ),
        (
            "not hex",
            body.clone(),
            Some("v1=zz".to_owned()),
            "`circleci-signature` header is malformed: the `v1` signature is not hexadecimal",
        ),
        (
            "unsigned",
            body.clone(),
            None,
            "missing `circleci-signature` header",
        ),
    ] {
        let (status, answer) = deliver(&daemon, "workflow-completed", &body, signature).await;
        assert_eq!(status, 401, "{what}: {answer}");
        let error = answer["error"].as_str().unwrap();
        assert!(error.starts_with(message), "{what}: {error}");
    }
    let url = format!(
        "{}/api/v1/deliveries/cbabbb40-6084-4f91-8311-a326c0f4963a?source=circleci",
        daemon.admin
    );
    assert_eq!(reqwest::get(&url).await.unwrap().status().as_u16(), 404);
    assert!(ci.requests().is_empty());
}

/// CircleCI's published signature examples verify through a `circleci` source.
#[test]
fn every_published_circleci_vector_verifies() {
    let vectors: Value = serde_json::from_slice(&payload("circleci/signature-vectors.json")).unwrap();
    let vectors = vectors["vectors"].as_array().unwrap();
    assert_eq!(vectors.len(), 4);
    for v in vectors {
        let secret = v["secret"].as_str().unwrap();
        let body = v["body_utf8"].as_str().unwrap().as_bytes();
        let header = v["expected_headers"]["circleci-signature"].as_str().unwrap();
        // The independent signer agrees with CircleCI.
        assert_eq!(header, signature(secret, body));
        let toml = format!(
            "[sources.v]\ntype = \"circleci\"\nsecrets = [{}]\n",
            serde_json::to_string(secret).unwrap()
        );
        let config = hookbridge::config::parse(
            std::path::Path::new("v.toml"),
            &toml,
            hookbridge::config::LoadMode::Check,
        )
        .unwrap()
        .config;
        let mut headers = http::HeaderMap::new();
        headers.insert("circleci-signature", header.parse().unwrap());
        let scheme = &config.sources["v"].scheme;
        assert!(
            scheme
                .verify(&hookbridge::source::Inbound::new(&headers, body))
                .is_ok(),
            "{header}"
        );
        let mut tampered = body.to_vec();
        tampered.push(b'!');
        assert_eq!(
            scheme
                .verify(&hookbridge::source::Inbound::new(&headers, &tampered))
                .err(),
            Some(hookbridge::source::VerifyError::Mismatch)
        );
    }
}
