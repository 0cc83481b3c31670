//! The five further target types end to end: the real daemon, signed
//! GitHub pushes over HTTP, and one stand-in that serves the GitHub, Gitea
//! (and Forgejo), Buildkite, Jenkins APIs and any HTTP endpoint, checking
//! every call against the published descriptions (`support::targets`).
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use serde_json::Value;
use support::daemon::{Daemon, Workspace};
use support::targets::{
    BUILDKITE_TOKEN, DEPLOY_WHSEC, GITEA_TOKEN, GITHUB_TOKEN, GiteaMode, JENKINS_TOKEN, JENKINS_USER,
    QueueOutcome, Reply, TargetStandIn, verify_standard_webhook,
};
use support::{github_signature, payload, wait_for};

const GITHUB_SECRET: &str = "It's a Secret to Everybody";
/// The `http` target's bearer token.
const DEPLOY_TOKEN: &str = "deploy-bearer-token-0123456789abcdef";

const ENV: &[(&str, &str)] = &[
    ("GITHUB_WEBHOOK_SECRET", GITHUB_SECRET),
    ("GITHUB_TOKEN", GITHUB_TOKEN),
    ("GITEA_TOKEN", GITEA_TOKEN),
    ("BUILDKITE_TOKEN", BUILDKITE_TOKEN),
    ("JENKINS_TOKEN", JENKINS_TOKEN),
    ("DEPLOY_TOKEN", DEPLOY_TOKEN),
    ("DEPLOY_WHSEC", DEPLOY_WHSEC),
];

/// Every secret the daemon holds: none may show anywhere.
const SECRETS: &[&str] = &[
    GITHUB_TOKEN,
    GITEA_TOKEN,
    BUILDKITE_TOKEN,
    JENKINS_TOKEN,
    DEPLOY_TOKEN,
    DEPLOY_WHSEC,
    "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
];

/// One rule per target kind (and two for GitHub's two dispatches); a
/// push's `X-Target` header picks the rules that fire (`all`: every one).
fn config(s: &TargetStandIn) -> String {
    let rule = |name: &str, trigger: &str| {
        format!(
            r#"
[[rules]]
name = "{name}"
source = "github"
events = ["push"]
if = "headers['x-target'] in ['{name}', 'all']"
[rules.trigger]
{trigger}
"#
        )
    };
    let mut out = format!(
        r#"
[server]
listen = "127.0.0.1:0"

[admin]
listen = "127.0.0.1:0"

[store]
url = "@DB@"

[retry]
max_attempts = 4
initial_backoff = "100ms"
max_backoff = "3s"
request_timeout = "5s"

[sources.github]
type = "github"
secrets = ["env:GITHUB_WEBHOOK_SECRET"]

[targets.github]
type = "github-actions"
url = "{github}"
token = "env:GITHUB_TOKEN"

[targets.gitea]
type = "gitea-actions"
url = "{gitea}"
token = "env:GITEA_TOKEN"

[targets.buildkite]
type = "buildkite"
url = "{buildkite}"
token = "env:BUILDKITE_TOKEN"

[targets.jenkins]
type = "jenkins"
url = "{jenkins}"
user = "{user}"
token = "env:JENKINS_TOKEN"

[targets.deploy]
type = "http"
url = "{hook}"
token = "env:DEPLOY_TOKEN"
signing = "standard"
signing_secret = "env:DEPLOY_WHSEC"
"#,
        github = s.github_url(),
        gitea = s.gitea_url(),
        buildkite = s.buildkite_url(),
        jenkins = s.jenkins_url(),
        user = JENKINS_USER,
        hook = s.hook_url(),
    );
    for (name, trigger) in [
        (
            "workflow",
            r#"target = "github"
repository = "{{ event.repository }}"
workflow = "deploy.yml"
inputs = { sha = "{{ event.sha }}", dry_run = false, attempt = 1 }"#,
        ),
        (
            "dispatch",
            r#"target = "github"
repository = "{{ event.repository }}"
event_type = "deploy"
client_payload = { sha = "{{ event.sha }}", branch = "{{ event.branch }}", paths = "{{ event.paths }}" }"#,
        ),
        (
            "gitea",
            r#"target = "gitea"
repository = "{{ event.repository }}"
workflow = "ci.yaml"
inputs = { sha = "{{ event.sha }}" }"#,
        ),
        (
            "buildkite",
            r#"target = "buildkite"
organization = "acme"
pipeline = "app"
commit = "{{ event.sha }}"
message = "push to {{ event.branch }}"
env = { DEPLOY = 1 }
meta_data = { delivery = "{{ event.delivery }}" }"#,
        ),
        (
            "jenkins",
            r#"target = "jenkins"
job = "team/app"
parameters = { SHA = "{{ event.sha }}", BRANCH = "{{ event.branch }}" }"#,
        ),
        (
            "deploy",
            r#"target = "deploy"
path = "/deploy"
headers = { X-Deploy-Env = "staging" }
body = { sha = "{{ event.sha }}", repository = "{{ event.repository }}" }"#,
        ),
    ] {
        out.push_str(&rule(name, trigger));
    }
    out
}

async fn push(client: &reqwest::Client, daemon: &Daemon, delivery: &str, target: &str) -> Value {
    let body = payload("github/push.json");
    let resp = client
        .post(daemon.hook_url("github"))
        .header("X-GitHub-Event", "push")
        .header("X-GitHub-Delivery", delivery)
        .header("X-Hub-Signature-256", github_signature(GITHUB_SECRET, &body))
        .header("X-Target", target)
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let summary: Value = resp.json().await.unwrap();
    assert_eq!(status, 202, "{summary}");
    summary
}

async fn delivery(client: &reqwest::Client, daemon: &Daemon, id: &str) -> Value {
    let url = format!("{}/api/v1/deliveries/{id}", daemon.admin);
    client.get(url).send().await.unwrap().json().await.unwrap()
}

/// The delivery once every job is finished (and Jenkins' build left the queue).
async fn settled(client: &reqwest::Client, daemon: &Daemon, id: &str) -> Value {
    wait_for(
        Duration::from_secs(30),
        &format!("{id}'s jobs to finish"),
        async || {
            let d = delivery(client, daemon, id).await;
            let jobs = d["jobs"].as_array().cloned().unwrap_or_default();
            let finished = !jobs.is_empty()
                && jobs.iter().all(|j| {
                    matches!(j["state"].as_str(), Some("done" | "dead")) && j["result"]["state"] != "queued"
                });
            if finished { Ok(d) } else { Err(d.to_string()) }
        },
    )
    .await
}

fn job<'a>(d: &'a Value, rule: &str) -> &'a Value {
    d["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["rule"] == rule)
        .unwrap_or_else(|| panic!("no job of rule {rule}: {d}"))
}

fn assert_no_secret(what: &str, text: &str) {
    for secret in SECRETS {
        assert!(
            !text.contains(secret),
            "{what} holds a secret ({secret}):\n{text}"
        );
    }
}

/// One push, six rules, five target types: every request passes its
/// schema, and every created run is recorded. No secret shows in the
/// logs, the store, `explain`, `deliveries show` or the admin API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_push_triggers_every_target_type() {
    let s = TargetStandIn::start().await;
    let ws = Workspace::new(&config(&s));
    let daemon = ws.start(ENV);
    let client = reqwest::Client::new();
    let summary = push(&client, &daemon, "push-all", "all").await;
    assert_eq!(summary["matched"].as_array().unwrap().len(), 6, "{summary}");
    let d = settled(&client, &daemon, "push-all").await;
    s.assert_clean();
    let mut apis: Vec<&str> = s.accepted().iter().map(|r| r.api).collect();
    apis.sort_unstable();
    assert_eq!(
        apis,
        [
            "buildkite-build",
            "gitea-dispatch",
            "github-repository-dispatch",
            "github-workflow-dispatch",
            "http",
            "jenkins-build",
            "jenkins-queue",
            "jenkins-queue",
            "jenkins-queue"
        ]
    );
    for j in d["jobs"].as_array().unwrap() {
        assert_eq!(j["state"], "done", "{j}");
    }
    let workflow = &job(&d, "workflow")["result"];
    let run_id = workflow["id"].as_str().unwrap();
    assert!(run_id.parse::<u64>().is_ok(), "{workflow}");
    assert!(
        workflow["url"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/actions/runs/{run_id}")),
        "{workflow}"
    );
    assert_eq!(job(&d, "dispatch")["result"]["state"], "dispatched");
    assert!(job(&d, "gitea")["result"]["id"].is_string(), "{d}");
    let build = &job(&d, "buildkite")["result"];
    assert!(build["number"].as_i64().unwrap() >= 1, "{build}");
    assert!(
        build["url"].as_str().unwrap().contains("/acme/app/builds/"),
        "{build}"
    );
    let jenkins = &job(&d, "jenkins")["result"];
    assert_eq!(jenkins["state"], "running", "{jenkins}");
    assert!(jenkins["number"].as_i64().is_some(), "{jenkins}");
    assert!(
        jenkins["url"].as_str().unwrap().contains("/job/team/job/app/"),
        "{jenkins}"
    );
    assert!(jenkins.get("follow").is_none(), "{jenkins}");
    assert_eq!(job(&d, "deploy")["result"]["state"], "delivered");

    // What the endpoints received, field by field.
    let sha = d["normalized"]["sha"].as_str().unwrap();
    let jenkins_build = s.requests_to("jenkins-build").pop().unwrap();
    assert!(
        jenkins_build.form.contains(&("SHA".to_owned(), sha.to_owned())),
        "{:?}",
        jenkins_build.form
    );
    let kite = s.requests_to("buildkite-build").pop().unwrap();
    assert_eq!(kite.body["commit"], sha);
    assert_eq!(kite.body["env"]["DEPLOY"], "1");
    assert_eq!(kite.body["meta_data"]["delivery"], "push-all");
    let dispatch = s.requests_to("github-workflow-dispatch").pop().unwrap();
    assert_eq!(dispatch.body["inputs"]["dry_run"], false);
    assert_eq!(dispatch.body["return_run_details"], true);
    let hook = s.requests_to("http").pop().unwrap();
    assert_eq!(hook.header("x-deploy-env"), "staging");
    assert_eq!(hook.header("authorization"), format!("Bearer {DEPLOY_TOKEN}"));
    let job_id = job(&d, "deploy")["id"].as_str().unwrap().to_owned();
    assert_eq!(hook.header("webhook-id"), job_id);
    verify_standard_webhook(DEPLOY_WHSEC, &hook.headers, &hook.raw).unwrap();
    let mut tampered = hook.raw.to_vec();
    tampered.push(b' ');
    assert!(verify_standard_webhook(DEPLOY_WHSEC, &hook.headers, &tampered).is_err());

    // Where secrets could leak.
    let (code, show, err) = ws.cli(&["deliveries", "show", "push-all"], ENV);
    assert_eq!(code, 0, "{err}");
    assert!(show.contains("running"), "{show}");
    assert_no_secret("deliveries show", &show);
    let payload_file = ws.dir.path().join("push.json");
    std::fs::write(&payload_file, payload("github/push.json")).unwrap();
    let (code, explained, err) = ws.cli(
        &[
            "explain",
            "--source",
            "github",
            "--event",
            "push",
            "-H",
            "X-Target: all",
            payload_file.to_str().unwrap(),
        ],
        ENV,
    );
    assert_eq!(code, 0, "{err}");
    for shown in [
        "Authorization: Bearer ***",
        "Authorization: token ***",
        "Authorization: Basic ***",
        "webhook-signature: v1,***",
        "/buildWithParameters",
    ] {
        assert!(explained.contains(shown), "{shown} not in:\n{explained}");
    }
    assert_no_secret("explain", &explained);
    assert_no_secret("the admin API", &d.to_string());
    assert_no_secret("the daemon's log", &daemon.logs());
    daemon.stop();
    let store = std::fs::read(ws.db_path()).unwrap();
    for secret in SECRETS {
        let found = store.windows(secret.len()).any(|w| w == secret.as_bytes());
        assert!(!found, "the store holds {secret}");
    }
}

/// Forgejo answers its own shape (201 `{id, run_number}`): recorded too.
/// GitHub Enterprise Server (`/api/v3`), a Gitea under a sub-path and a
/// Jenkins under a context path are addressed below their `url`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forgejo_ghes_and_servers_under_a_path() {
    let s = TargetStandIn::start().await;
    s.set_gitea_mode(GiteaMode::Forgejo);
    s.set_github_prefix("/api/v3");
    s.set_gitea_prefix("/git");
    s.set_jenkins_prefix("/jenkins");
    let ws = Workspace::new(&config(&s));
    let daemon = ws.start(ENV);
    let client = reqwest::Client::new();
    push(&client, &daemon, "push-paths", "all").await;
    let d = settled(&client, &daemon, "push-paths").await;
    let run = &job(&d, "gitea")["result"];
    assert!(run["id"].is_string() && run["number"].is_i64(), "{run}");
    // GHES is not asked for the run (it refuses `return_run_details`): 204.
    let ghes = &job(&d, "workflow")["result"];
    assert_eq!(ghes["state"], "dispatched", "{d}");
    assert!(ghes.get("id").is_none(), "{d}");
    let sent = &s.requests_to("github-workflow-dispatch")[0];
    assert!(sent.body.get("return_run_details").is_none(), "{}", sent.body);
    assert_eq!(job(&d, "jenkins")["result"]["state"], "running", "{d}");
    assert!(
        s.requests_to("github-workflow-dispatch")[0]
            .path
            .starts_with("/api/v3/repos/")
    );
    assert!(
        s.requests_to("jenkins-queue")[0]
            .path
            .starts_with("/jenkins/queue/item/")
    );
    s.assert_clean();
}

/// The attempts of a delivery's one job: (outcome, started_at ms).
fn attempts(d: &Value) -> Vec<(String, i64)> {
    d["jobs"][0]["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["outcome"].as_str().unwrap().to_owned(),
                a["started_at"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// For each target: a 422 (400 for Jenkins) is dead-lettered with the
/// API's message; a 429 with `Retry-After` is retried after it; a 5xx is
/// retried. GitHub's rate limits (a 403 with its secondary-limit message
/// and `retry-after`, or with `x-ratelimit-remaining: 0`) are waited out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_target_dead_letters_4xx_and_retries_what_the_api_asks() {
    let s = TargetStandIn::start().await;
    s.set_waiting_polls(0);
    let ws = Workspace::new(&config(&s));
    let daemon = ws.start(ENV);
    let client = reqwest::Client::new();
    let mut n = 0;
    for rule in ["workflow", "dispatch", "gitea", "buildkite", "jenkins", "deploy"] {
        let refused = if rule == "jenkins" { 400 } else { 422 };
        let message = format!("{rule} refuses this request");
        s.script([Reply::Message(refused, message.clone())]);
        n += 1;
        let id = format!("refused-{n}");
        push(&client, &daemon, &id, rule).await;
        let d = settled(&client, &daemon, &id).await;
        assert_eq!(d["jobs"][0]["state"], "dead", "{rule}: {d}");
        let error = d["jobs"][0]["last_error"].as_str().unwrap();
        assert!(
            error.contains(&message) && error.contains(&refused.to_string()),
            "{rule}: {error}"
        );

        for reply in [Reply::retry_after(429, 1), Reply::Status(503)] {
            let waits = matches!(reply, Reply::Headers(..));
            s.script([reply]);
            n += 1;
            let id = format!("retried-{n}");
            push(&client, &daemon, &id, rule).await;
            let d = settled(&client, &daemon, &id).await;
            assert_eq!(d["jobs"][0]["state"], "done", "{rule}: {d}");
            let tries = attempts(&d);
            assert_eq!(
                tries.iter().map(|(o, _)| o.as_str()).collect::<Vec<_>>(),
                ["retry", "done"],
                "{rule}"
            );
            if waits {
                let gap = tries[1].1 - tries[0].1;
                assert!(gap >= 1000, "{rule}: retried {gap} ms after a Retry-After of 1 s");
            }
        }
    }
    for reply in [
        Reply::github_secondary_rate_limit(Some(1)),
        Reply::github_rate_limit(2),
        Reply::github_secondary_rate_limit(None),
    ] {
        let stated = !matches!(&reply, Reply::Json(_, h, _) if h.is_empty());
        s.script([reply]);
        n += 1;
        let id = format!("limited-{n}");
        push(&client, &daemon, &id, "workflow").await;
        if !stated {
            // Unstated: GitHub asks for a minute; the config caps it at max_backoff (3 s).
            let d = settled(&client, &daemon, &id).await;
            let tries = attempts(&d);
            assert!(tries[1].1 - tries[0].1 >= 2900, "{tries:?}");
            continue;
        }
        let d = settled(&client, &daemon, &id).await;
        let tries = attempts(&d);
        assert_eq!(
            tries.iter().map(|(o, _)| o.as_str()).collect::<Vec<_>>(),
            ["retry", "done"]
        );
        assert!(tries[1].1 - tries[0].1 >= 1000, "{tries:?}");
    }
    s.assert_clean();
    assert_no_secret("the daemon's log", &daemon.logs());
}

/// A Jenkins build still queued when the daemon stops is followed after
/// it starts again (the follow-up is in the store, not in memory), and is
/// never asked for twice; one cancelled in the queue says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_jenkins_build_is_followed_across_a_restart() {
    let s = TargetStandIn::start().await;
    s.set_waiting_polls(1_000);
    let ws = Workspace::new(&config(&s));
    let daemon = ws.start(ENV);
    let client = reqwest::Client::new();
    push(&client, &daemon, "queued", "jenkins").await;
    wait_for(Duration::from_secs(20), "the queue item to be read", async || {
        let polls = s.requests_to("jenkins-queue").len();
        if polls >= 1 {
            Ok(())
        } else {
            Err(format!("{polls} reads"))
        }
    })
    .await;
    let d = delivery(&client, &daemon, "queued").await;
    let queued = &d["jobs"][0];
    assert_eq!(queued["state"], "done", "{queued}");
    assert_eq!(queued["result"]["state"], "queued", "{queued}");
    assert!(queued["result"]["follow"].is_string(), "{queued}");
    daemon.kill();

    s.set_waiting_polls(0);
    let daemon = ws.start(ENV);
    let d = settled(&client, &daemon, "queued").await;
    let result = &d["jobs"][0]["result"];
    assert_eq!(result["state"], "running", "{result}");
    assert!(result["number"].is_i64(), "{result}");
    assert_eq!(
        s.requests_to("jenkins-build").len(),
        1,
        "the build was asked for once"
    );

    s.set_queue_outcome(QueueOutcome::Cancelled);
    push(&client, &daemon, "cancelled", "jenkins").await;
    let d = settled(&client, &daemon, "cancelled").await;
    assert_eq!(d["jobs"][0]["result"]["state"], "cancelled", "{d}");
    let metrics = daemon.metrics().await;
    assert!(
        metrics.contains(r#"hookbridge_follow_ups_total{target="jenkins",outcome="cancelled"} 1"#),
        "{metrics}"
    );
    s.assert_clean();
}

/// A Jenkins job without parameters is built by `/build`; parameters sent
/// to one are dead-lettered at once with Jenkins' reason (not retried as a
/// 500). An `http` target's token goes in the header `token_header` names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_jenkins_jobs_and_a_token_in_its_own_header() {
    let s = TargetStandIn::start().await;
    s.set_waiting_polls(0);
    let extra = format!(
        r#"
[targets.keyed]
type = "http"
url = "{hook}"
token = "env:DEPLOY_TOKEN"
token_header = "X-Api-Key"

[[rules]]
name = "plain"
source = "github"
if = "headers['x-target'] == 'plain'"
[rules.trigger]
target = "jenkins"
job = "team/plain-app"

[[rules]]
name = "plain-with-parameters"
source = "github"
if = "headers['x-target'] == 'plain-with-parameters'"
[rules.trigger]
target = "jenkins"
job = "team/plain-app"
parameters = {{ SHA = "{{{{ event.sha }}}}" }}

[[rules]]
name = "keyed"
source = "github"
if = "headers['x-target'] == 'keyed'"
[rules.trigger]
target = "keyed"
path = "/keyed"
"#,
        hook = s.hook_url()
    );
    let ws = Workspace::new(&format!("{}{extra}", config(&s)));
    let daemon = ws.start(ENV);
    let client = reqwest::Client::new();

    push(&client, &daemon, "plain", "plain").await;
    let d = settled(&client, &daemon, "plain").await;
    assert_eq!(job(&d, "plain")["result"]["state"], "running", "{d}");
    let build = s.requests_to("jenkins-build").pop().unwrap();
    assert!(
        build.path.ends_with("/job/team/job/plain-app/build"),
        "{}",
        build.path
    );

    push(&client, &daemon, "misconfigured", "plain-with-parameters").await;
    let d = settled(&client, &daemon, "misconfigured").await;
    let j = job(&d, "plain-with-parameters");
    assert_eq!(j["state"], "dead", "{j}");
    assert_eq!(j["attempts"], 1, "{j}");
    assert!(
        j["last_error"].as_str().unwrap().contains("takes no parameters"),
        "{j}"
    );

    push(&client, &daemon, "keyed", "keyed").await;
    settled(&client, &daemon, "keyed").await;
    let keyed = s.requests_to("http").pop().unwrap();
    assert_eq!(keyed.header("x-api-key"), DEPLOY_TOKEN);
    assert_eq!(keyed.header("authorization"), "");
    s.assert_clean();
    assert_no_secret("the daemon's log", &daemon.logs());
}
