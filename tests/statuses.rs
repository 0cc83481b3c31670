//! Commit statuses end to end (`[rules.status]`): the real daemon, signed
//! webhooks over HTTP, a SQLite store, the stand-in CIs (GitLab, CircleCI)
//! and the stand-in VCS status APIs, which check every post against the
//! vendor's published schema.
//!
//! A push's job reports on its commit from "queued" to its pipeline's
//! result: the result arrives as a webhook (a GitLab `Pipeline Hook`, a
//! CircleCI `workflow-completed`) or, with `poll`, from the CI's API. Each
//! status is posted once, in order, and a status API that is down, or a
//! restart, loses none.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use hookbridge::store::status::Vcs;
use serde_json::{Value, json};
use support::ci::{CIRCLE_TOKEN, GITLAB_PRIVATE_TOKEN, GITLAB_TRIGGER_TOKEN, StandIn};
use support::daemon::{Daemon, Workspace};
use support::vcs::{Posted, VcsStandIn};
use support::{github_signature, hmac_sha256_hex, payload, wait_for};

const GITHUB_SECRET: &str = "It's a Secret to Everybody";
const GITEA_SECRET: &str = "gitea-webhook-secret";
const GITLAB_SECRET: &str = "gitlab-webhook-token";
const CIRCLE_SECRET: &str = "circleci-webhook-secret";

/// What every daemon here reads from its environment.
fn env(vcs: &VcsStandIn) -> Vec<(&'static str, String)> {
    vec![
        ("GITHUB_WEBHOOK_SECRET", GITHUB_SECRET.into()),
        ("GITEA_WEBHOOK_SECRET", GITEA_SECRET.into()),
        ("GITLAB_WEBHOOK_SECRET", GITLAB_SECRET.into()),
        ("CIRCLECI_WEBHOOK_SECRET", CIRCLE_SECRET.into()),
        ("GITLAB_TRIGGER_TOKEN", GITLAB_TRIGGER_TOKEN.into()),
        ("GITLAB_API_TOKEN", GITLAB_PRIVATE_TOKEN.into()),
        ("CIRCLECI_TOKEN", CIRCLE_TOKEN.into()),
        ("VCS_API_TOKEN", vcs.token().into()),
    ]
}

fn start(ws: &Workspace, vcs: &VcsStandIn) -> Daemon {
    let env = env(vcs);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    ws.start(&env)
}

/// The daemon's config: `source` (a VCS source with its `api` at the
/// stand-in), a `gitlab` and a `circleci` source for completion events,
/// both CI targets, and one rule on pushes to `target` with `status`.
fn config(source: &str, vcs: &VcsStandIn, ci: &StandIn, target: &str, status: &str) -> String {
    let trigger = match target {
        "circleci" => {
            r#"target = "circleci"
project = "gh/acme/app"
branch = "{{ event.branch }}""#
        }
        _ => {
            r#"target = "gitlab"
project = "acme/app"
ref = "{{ event.branch }}""#
        }
    };
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[admin]
listen = "127.0.0.1:0"

[store]
url = "@DB@"

[retry]
max_attempts = 30
initial_backoff = "100ms"
max_backoff = "500ms"
request_timeout = "5s"

[sources.{source}]
type = "{source}"
secrets = ["env:{secret}"]

[sources.{source}.api]
url = "{vcs_url}"
token = "env:VCS_API_TOKEN"

[sources.gitlab-events]
type = "gitlab"
secrets = ["env:GITLAB_WEBHOOK_SECRET"]

[sources.circleci]
type = "circleci"
secrets = ["env:CIRCLECI_WEBHOOK_SECRET"]

[targets.gitlab]
type = "gitlab"
url = "{ci}"
token = "env:GITLAB_TRIGGER_TOKEN"
api_token = "env:GITLAB_API_TOKEN"

[targets.circleci]
type = "circleci"
url = "{ci}"
token = "env:CIRCLECI_TOKEN"

[[rules]]
name = "build"
source = "{source}"
events = ["push"]
[rules.status]
{status}
[rules.trigger]
{trigger}
"#,
        secret = match source {
            "github" => "GITHUB_WEBHOOK_SECRET",
            _ => "GITEA_WEBHOOK_SECRET",
        },
        vcs_url = vcs.url(),
        ci = ci.url,
    )
}

/// A signed GitHub push of `sha` to `main`; its delivery id.
async fn github_push(daemon: &Daemon, sha: &str) -> (String, Value) {
    let mut body: Value = serde_json::from_slice(&payload("github/push.json")).unwrap();
    body["ref"] = json!("refs/heads/main");
    body["after"] = json!(sha);
    let body = serde_json::to_vec(&body).unwrap();
    let delivery = format!("push-{sha}");
    let resp = reqwest::Client::new()
        .post(daemon.hook_url("github"))
        .header("X-GitHub-Event", "push")
        .header("X-GitHub-Delivery", &delivery)
        .header("X-Hub-Signature-256", github_signature(GITHUB_SECRET, &body))
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    (delivery, resp.json().await.unwrap())
}

/// A signed Gitea push of `sha` to `main`; its delivery id.
async fn gitea_push(daemon: &Daemon, sha: &str) -> String {
    let mut body: Value = serde_json::from_slice(&payload("gitea/push.json")).unwrap();
    body["ref"] = json!("refs/heads/main");
    body["after"] = json!(sha);
    let body = serde_json::to_vec(&body).unwrap();
    let delivery = format!("gitea-push-{sha}");
    let resp = reqwest::Client::new()
        .post(daemon.hook_url("gitea"))
        .header("X-Gitea-Event", "push")
        .header("X-Gitea-Delivery", &delivery)
        .header(
            "X-Gitea-Signature",
            hmac_sha256_hex(GITEA_SECRET.as_bytes(), &body),
        )
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    assert_eq!(status, 202, "{}", resp.text().await.unwrap());
    delivery
}

/// GitLab's example `Pipeline Hook`, for pipeline `id` in `status`.
async fn pipeline_hook(daemon: &Daemon, id: u64, sha: &str, status: &str, uuid: &str) -> u16 {
    let mut body: Value = serde_json::from_slice(&payload("gitlab/pipeline-hook.json")).unwrap();
    body["object_attributes"]["id"] = json!(id);
    body["object_attributes"]["status"] = json!(status);
    body["object_attributes"]["sha"] = json!(sha);
    body["object_attributes"]["ref"] = json!("main");
    // The project the rule triggers (`acme/app`): GitLab's events of other
    // projects tell its jobs nothing.
    body["project"]["path_with_namespace"] = json!("acme/app");
    let resp = reqwest::Client::new()
        .post(daemon.hook_url("gitlab-events"))
        .header("X-Gitlab-Event", "Pipeline Hook")
        .header("X-Gitlab-Token", GITLAB_SECRET)
        .header("X-Gitlab-Event-UUID", uuid)
        .header("Content-Type", "application/json")
        .body(serde_json::to_vec(&body).unwrap())
        .send()
        .await
        .unwrap();
    // Stored: 202 when a rule matched the event, 200 when none did.
    let status = resp.status().as_u16();
    assert!(status == 200 || status == 202, "{status}");
    status
}

/// CircleCI's example `workflow-completed`, for `pipeline`'s `workflow` in `status`.
async fn workflow_completed(
    daemon: &Daemon,
    pipeline: &str,
    workflow: &str,
    status: &str,
    secret: &str,
) -> u16 {
    let mut body: Value =
        serde_json::from_slice(&payload("circleci/workflow-completed-github-oauth.json")).unwrap();
    body["id"] = json!(format!("{pipeline}-{workflow}-{status}"));
    body["pipeline"]["id"] = json!(pipeline);
    body["workflow"]["name"] = json!(workflow);
    body["workflow"]["status"] = json!(status);
    // The project the rule triggers (`gh/acme/app`).
    body["project"]["slug"] = json!("gh/acme/app");
    for url in ["origin_repository_url", "target_repository_url"] {
        body["pipeline"]["vcs"][url] = json!("https://github.com/acme/app");
    }
    let body = serde_json::to_vec(&body).unwrap();
    let signature = format!("v1={}", hmac_sha256_hex(secret.as_bytes(), &body));
    let resp = reqwest::Client::new()
        .post(daemon.hook_url("circleci"))
        .header("circleci-event-type", "workflow-completed")
        .header("circleci-signature", signature)
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    resp.status().as_u16()
}

/// The posts for `sha`, as (state, description, target URL).
fn trail(posts: &[Posted], sha: &str) -> Vec<(String, String, Option<String>)> {
    posts
        .iter()
        .filter(|p| p.sha == sha)
        .map(|p| {
            (
                p.state.clone(),
                p.description.clone().unwrap_or_default(),
                p.target_url.clone(),
            )
        })
        .collect()
}

/// The admin API's view of a delivery's one job.
async fn job(daemon: &Daemon, source: &str, delivery: &str) -> Value {
    let url = format!("{}/api/v1/deliveries/{delivery}?source={source}", daemon.admin);
    let d: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
    d["jobs"][0].clone()
}

async fn job_with(
    daemon: &Daemon,
    source: &str,
    delivery: &str,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    wait_for(Duration::from_secs(30), what, async || {
        let j = job(daemon, source, delivery).await;
        if pred(&j) { Ok(j) } else { Err(j.to_string()) }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_push_to_gitlab_reports_queued_running_then_success_once_each() {
    let (ci, vcs) = (StandIn::start().await, VcsStandIn::start(Vcs::Github).await);
    let ws = Workspace::new(&config("github", &vcs, &ci, "gitlab", ""));
    let daemon = start(&ws, &vcs);
    let sha = "9049f1265b7d61be4a8904a9a27120d2064dab3b";
    let (delivery, summary) = github_push(&daemon, sha).await;
    assert_eq!(summary["matched"].as_array().unwrap().len(), 1, "{summary}");
    let j = job_with(&daemon, "github", &delivery, "the job done", |j| {
        j["state"] == "done"
    })
    .await;
    let pipeline = ci.gitlab_pipelines()[0].clone();
    let url = pipeline.web_url.clone();
    vcs.wait_for(|p| p.len() == 2, Duration::from_secs(20)).await;
    assert_eq!(j["pipeline_state"], "created", "{j:#}");

    // GitLab's Pipeline Hook: running, then success, the success twice
    // (GitLab retries a delivery it thinks failed) and once more under
    // another event id.
    assert_eq!(
        pipeline_hook(&daemon, pipeline.id, sha, "running", "u-1").await,
        200
    );
    assert_eq!(
        pipeline_hook(&daemon, pipeline.id, sha, "success", "u-2").await,
        200
    );
    assert_eq!(
        pipeline_hook(&daemon, pipeline.id, sha, "success", "u-2").await,
        200
    );
    assert_eq!(
        pipeline_hook(&daemon, pipeline.id, sha, "success", "u-3").await,
        200
    );
    // A late "running" after the result changes nothing.
    assert_eq!(
        pipeline_hook(&daemon, pipeline.id, sha, "running", "u-4").await,
        200
    );
    let posts = vcs.wait_for(|p| p.len() >= 3, Duration::from_secs(20)).await;
    let j = job_with(&daemon, "github", &delivery, "the pipeline's result", |j| {
        j["pipeline_state"] == "success"
            && j["statuses"]
                .as_array()
                .is_some_and(|s| s.iter().all(|s| s["post"] == "done"))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let posts = if vcs.posts().len() > posts.len() {
        vcs.posts()
    } else {
        posts
    };
    let number = pipeline.iid;
    assert_eq!(
        trail(&posts, sha),
        vec![
            ("pending".into(), "queued".into(), None),
            (
                "pending".into(),
                format!("GitLab pipeline #{number} running"),
                Some(url.clone())
            ),
            (
                "success".into(),
                format!("GitLab pipeline #{number} passed"),
                Some(url.clone())
            ),
        ],
        "{j:#}"
    );
    assert!(
        posts
            .iter()
            .all(|p| p.context == "hookbridge/build" && p.repository == "Codertocat/Hello-World")
    );
    assert!(vcs.problems().is_empty(), "{:#?}", vcs.problems());
    ci.assert_clean();

    // `deliveries show` and the admin API say so.
    let statuses = j["statuses"].as_array().unwrap();
    assert_eq!(statuses.len(), 3, "{j:#}");
    assert_eq!(statuses[2]["state"], "success");
    assert_eq!(statuses[2]["http_status"], 201);
    let (code, out, err) = ws.cli(
        &[
            "deliveries",
            "show",
            &delivery,
            "--source",
            "github",
            "--config",
            "hookbridge.toml",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("pipeline: success"), "{out}");
    assert!(
        out.contains(&format!(
            "status hookbridge/build success \"GitLab pipeline #{number} passed\": posted (201)"
        )),
        "{out}"
    );
    let metrics = daemon.metrics().await;
    assert!(
        metrics.contains(r#"hookbridge_statuses_total{source="github",state="success",outcome="posted"} 1"#),
        "{metrics}"
    );
    // The dashboard's page of the delivery lists them too.
    let d: Value = reqwest::get(format!(
        "{}/api/v1/deliveries/{delivery}?source=github",
        daemon.admin
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let page = reqwest::get(format!(
        "{}/ui/deliveries/{}",
        daemon.admin,
        d["id"].as_str().unwrap()
    ))
    .await
    .unwrap();
    assert_eq!(page.status().as_u16(), 200);
    let page = page.text().await.unwrap();
    assert!(
        page.contains("<caption>Commit statuses</caption>")
            && page.contains("<dt>Pipeline state</dt><dd>success</dd>"),
        "{page}"
    );
    assert!(
        page.contains(&format!(
            r#"<a href="{}" rel="noreferrer noopener">GitLab pipeline #{number} passed</a>"#,
            url.replace('/', "&#x2f;")
        )),
        "{page}"
    );
    // The token of the status API is nowhere in what hookbridge keeps or says.
    let shown = format!("{j}{out}{metrics}{page}{}", daemon.logs());
    assert!(!shown.contains(vcs.token()));
}

/// A job the CI refuses is dead-lettered, and says why on its commit; a
/// job a newer push of its branch superseded says which commit did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_and_superseded_jobs_report_errors_with_their_reason() {
    let (ci, vcs) = (StandIn::start().await, VcsStandIn::start(Vcs::Github).await);
    let status = "";
    let text = config("github", &vcs, &ci, "gitlab", status).replace(
        "[rules.trigger]",
        "[rules.concurrency]\ngroup = \"{{ event.branch }}\"\ndebounce = \"2s\"\n[rules.trigger]",
    );
    let ws = Workspace::new(&text);
    let daemon = start(&ws, &vcs);

    // Two pushes to main within the debounce: the first is superseded.
    let (old, new) = (
        "1111111111111111111111111111111111111111",
        "2222222222222222222222222222222222222222",
    );
    let (first, _) = github_push(&daemon, old).await;
    let (second, _) = github_push(&daemon, new).await;
    job_with(&daemon, "github", &first, "the first job superseded", |j| {
        j["state"] == "superseded"
    })
    .await;
    job_with(&daemon, "github", &second, "the second job done", |j| {
        j["state"] == "done"
    })
    .await;
    let posts = vcs
        .wait_for(
            |p| trail(p, old).len() == 2 && trail(p, new).len() == 2,
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(
        trail(&posts, old),
        vec![
            ("pending".into(), "queued".into(), None),
            ("error".into(), "superseded by 2222222".into(), None),
        ]
    );

    // The CI refuses the next one for good (404: no such project).
    ci.script([support::ci::Reply::Status(404)]);
    let dead = "3333333333333333333333333333333333333333";
    let (third, _) = github_push(&daemon, dead).await;
    let j = job_with(&daemon, "github", &third, "the job dead", |j| {
        j["state"] == "dead"
    })
    .await;
    let posts = vcs
        .wait_for(|p| trail(p, dead).len() == 2, Duration::from_secs(20))
        .await;
    let trail = trail(&posts, dead);
    assert_eq!(trail[1].0, "error", "{j:#}");
    assert!(trail[1].1.starts_with("not triggered: HTTP 404"), "{trail:?}");
    assert!(trail[1].1.chars().count() <= 140);
    assert!(vcs.problems().is_empty(), "{:#?}", vcs.problems());
}

/// A status API that is down for a while (503) gets every status once it
/// is back, in order; a restart meanwhile loses none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_wait_out_a_failing_status_api_and_a_restart() {
    let (ci, vcs) = (StandIn::start().await, VcsStandIn::start(Vcs::Github).await);
    let ws = Workspace::new(&config("github", &vcs, &ci, "gitlab", "follow = false"));
    let daemon = start(&ws, &vcs);
    vcs.fail_next(503, 1000);
    let sha = "4444444444444444444444444444444444444444";
    let (delivery, _) = github_push(&daemon, sha).await;
    job_with(&daemon, "github", &delivery, "the job done", |j| {
        j["state"] == "done"
    })
    .await;
    job_with(&daemon, "github", &delivery, "a post refused", |j| {
        j["statuses"][0]["http_status"] == 503
    })
    .await;
    // SIGKILL while the statuses wait for their retry.
    daemon.kill();
    let daemon = start(&ws, &vcs);
    vcs.recover();
    let posts = vcs
        .wait_for(|p| trail(p, sha).len() == 2, Duration::from_secs(30))
        .await;
    let pipeline = ci.gitlab_pipelines()[0].clone();
    assert_eq!(
        trail(&posts, sha),
        vec![
            ("pending".into(), "queued".into(), None),
            (
                "success".into(),
                format!("GitLab pipeline #{} created", pipeline.iid),
                Some(pipeline.web_url.clone())
            ),
        ]
    );
    let j = job(&daemon, "github", &delivery).await;
    assert!(
        j["statuses"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["post"] == "done"),
        "{j:#}"
    );
    assert!(vcs.problems().is_empty(), "{:#?}", vcs.problems());
}

/// Gitea push → CircleCI pipeline → two `workflow-completed` events, one
/// success and one failed: the commit ends at failure. The Gitea status
/// API fails (503) while the result arrives, and hookbridge is killed
/// meanwhile: the status still arrives once the API recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitea_push_to_circleci_ends_at_failure_through_an_outage_and_a_restart() {
    let (ci, vcs) = (StandIn::start().await, VcsStandIn::start(Vcs::Gitea).await);
    let ws = Workspace::new(&config(
        "gitea",
        &vcs,
        &ci,
        "circleci",
        "context = \"ci/circleci\"",
    ));
    let daemon = start(&ws, &vcs);
    let sha = "5555555555555555555555555555555555555555";
    let delivery = gitea_push(&daemon, sha).await;
    job_with(&daemon, "gitea", &delivery, "the job done", |j| {
        j["state"] == "done"
    })
    .await;
    let pipeline = ci.circle_pipelines()[0].clone();
    vcs.wait_for(|p| trail(p, sha).len() == 2, Duration::from_secs(20))
        .await;

    // The first workflow passes; the other still runs.
    ci.set_workflows(&pipeline.id, [("build", "success"), ("test", "running")]);
    assert_eq!(
        workflow_completed(&daemon, &pipeline.id, "build", "success", CIRCLE_SECRET).await,
        200
    );
    job_with(&daemon, "gitea", &delivery, "the pipeline running", |j| {
        j["pipeline_state"] == "running"
    })
    .await;
    // A wrong signature is refused, and tells nothing.
    assert_eq!(
        workflow_completed(&daemon, &pipeline.id, "test", "success", "wrong").await,
        401
    );

    // The second fails, while Gitea's status API answers 503.
    vcs.fail_next(503, 1000);
    ci.set_workflows(&pipeline.id, [("build", "success"), ("test", "failed")]);
    assert_eq!(
        workflow_completed(&daemon, &pipeline.id, "test", "failed", CIRCLE_SECRET).await,
        200
    );
    job_with(&daemon, "gitea", &delivery, "the failure refused once", |j| {
        j["pipeline_state"] == "failed"
            && j["statuses"].as_array().is_some_and(|s| {
                s.iter()
                    .any(|s| s["state"] == "failure" && s["http_status"] == 503)
            })
    })
    .await;
    daemon.kill();
    let daemon = start(&ws, &vcs);
    vcs.recover();
    let posts = vcs
        .wait_for(|p| trail(p, sha).len() == 3, Duration::from_secs(30))
        .await;
    let number = pipeline.number;
    let trail = trail(&posts, sha);
    assert_eq!(trail[0], ("pending".into(), "queued".into(), None));
    assert_eq!(trail[1].1, format!("CircleCI pipeline #{number} running"));
    assert_eq!(
        (trail[2].0.as_str(), trail[2].1.as_str()),
        ("failure", format!("CircleCI pipeline #{number} failed").as_str())
    );
    assert!(posts.iter().all(|p| p.context == "ci/circleci"));
    let j = job(&daemon, "gitea", &delivery).await;
    assert_eq!(j["pipeline_state"], "failed", "{j:#}");
    assert!(vcs.problems().is_empty(), "{:#?}", vcs.problems());
    ci.assert_clean();
}

/// With `poll` and no completion webhook, the result comes from the CI's
/// API within the poll interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_reads_the_result_when_no_completion_event_comes() {
    let (ci, vcs) = (StandIn::start().await, VcsStandIn::start(Vcs::Github).await);
    let ws = Workspace::new(&config("github", &vcs, &ci, "gitlab", "poll = \"10s\""));
    let daemon = start(&ws, &vcs);
    let sha = "6666666666666666666666666666666666666666";
    let (delivery, _) = github_push(&daemon, sha).await;
    job_with(&daemon, "github", &delivery, "the job done", |j| {
        j["state"] == "done"
    })
    .await;
    let pipeline = ci.gitlab_pipelines()[0].clone();
    vcs.wait_for(|p| trail(p, sha).len() == 2, Duration::from_secs(20))
        .await;
    ci.finish_pipeline(pipeline.id, "success");
    let started = std::time::Instant::now();
    let posts = vcs
        .wait_for(|p| trail(p, sha).len() == 3, Duration::from_secs(25))
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    let last = trail(&posts, sha).pop().unwrap();
    assert_eq!(last.0, "success");
    assert_eq!(last.1, format!("GitLab pipeline #{} passed", pipeline.iid));
    let metrics = daemon.metrics().await;
    assert!(
        metrics.contains(r#"hookbridge_pipeline_reads_total{target="gitlab",outcome="final"} 1"#),
        "{metrics}"
    );
    assert!(vcs.problems().is_empty(), "{:#?}", vcs.problems());
    ci.assert_clean();
}

/// A signed push from `source` (`bitbucket` with a Cloud or a Data Center
/// payload, `gitlab`, `forgejo`), its example payload as it is.
async fn push_from(daemon: &Daemon, source: &str, fixture: &str, event: &str) {
    let body = payload(fixture);
    let hex = hmac_sha256_hex(GITEA_SECRET.as_bytes(), &body);
    let client = reqwest::Client::new().post(daemon.hook_url(source));
    let request = match source {
        "bitbucket" => client
            .header("X-Event-Key", event)
            .header("X-Request-UUID", "9f6b2b5e-0000-4000-8000-00000000b17b")
            .header("X-Request-Id", "b1d0c0de-0000-4000-8000-000000000dc0")
            .header("X-Hub-Signature", format!("sha256={hex}")),
        "gitlab" => client
            .header("X-Gitlab-Event", event)
            .header("X-Gitlab-Token", GITEA_SECRET)
            .header("X-Gitlab-Event-UUID", "13792a34-cac6-4fda-95a8-c58e00a3954e"),
        _ => client
            .header("X-Forgejo-Event", event)
            .header("X-Forgejo-Delivery", "6a5f6c7e-0000-4000-8000-0000000017ea")
            .header("X-Forgejo-Signature", hex),
    };
    let resp = request
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    assert_eq!(status, 202, "{}", resp.text().await.unwrap());
}

/// Bitbucket Cloud and Data Center, GitLab and Forgejo: a push's statuses
/// reach each VCS in its own shape (checked against its schema by the
/// stand-in), in its own vocabulary, on the commit and repository of the
/// push.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_vcs_receives_its_own_status_shape() {
    let cases = [
        (
            Vcs::BitbucketCloud,
            "bitbucket",
            "bitbucket-cloud/repo-push.json",
            "repo:push",
            ["INPROGRESS", "SUCCESSFUL"],
        ),
        (
            Vcs::BitbucketDatacenter,
            "bitbucket",
            "bitbucket-datacenter/repo-refs_changed.json",
            "repo:refs_changed",
            ["INPROGRESS", "SUCCESSFUL"],
        ),
        (
            Vcs::Gitlab,
            "gitlab",
            "gitlab/push-hook.json",
            "Push Hook",
            ["pending", "success"],
        ),
        (
            Vcs::Forgejo,
            "forgejo",
            "gitea/push.json",
            "push",
            ["pending", "success"],
        ),
    ];
    for (kind, source, fixture, event, states) in cases {
        let (ci, vcs) = (StandIn::start().await, VcsStandIn::start(kind).await);
        let ws = Workspace::new(&config(source, &vcs, &ci, "gitlab", "follow = false"));
        let daemon = start(&ws, &vcs);
        push_from(&daemon, source, fixture, event).await;
        let posts = vcs.wait_for(|p| p.len() == 2, Duration::from_secs(20)).await;
        let pipeline = ci.gitlab_pipelines()[0].clone();
        let got: Vec<&str> = posts.iter().map(|p| p.state.as_str()).collect();
        assert_eq!(got, states, "{kind:?}: {posts:#?}");
        assert_eq!(posts[0].description.as_deref(), Some("queued"), "{kind:?}");
        assert_eq!(
            posts[1].target_url.as_deref(),
            Some(pipeline.web_url.as_str()),
            "{kind:?}"
        );
        assert!(
            posts
                .iter()
                .all(|p| p.context == "hookbridge/build" && p.sha == posts[0].sha && p.sha.len() == 40),
            "{kind:?}: {posts:#?}"
        );
        assert!(vcs.problems().is_empty(), "{kind:?}: {:#?}", vcs.problems());
        drop(daemon);
    }
}

/// A CircleCI token that may not read the pipeline's workflows: each
/// workflow is reported under `<context>/<workflow>` from its
/// `workflow-completed` event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflows_are_reported_one_by_one_when_circleci_refuses_the_read() {
    let (ci, vcs) = (StandIn::start().await, VcsStandIn::start(Vcs::Gitea).await);
    let ws = Workspace::new(&config(
        "gitea",
        &vcs,
        &ci,
        "circleci",
        "context = \"ci/circleci\"",
    ));
    let daemon = start(&ws, &vcs);
    let sha = "7777777777777777777777777777777777777777";
    let delivery = gitea_push(&daemon, sha).await;
    job_with(&daemon, "gitea", &delivery, "the job done", |j| {
        j["state"] == "done"
    })
    .await;
    let pipeline = ci.circle_pipelines()[0].clone();
    vcs.wait_for(|p| trail(p, sha).len() == 2, Duration::from_secs(20))
        .await;
    ci.fail_pipeline_reads(Some(401));
    assert_eq!(
        workflow_completed(&daemon, &pipeline.id, "build", "success", CIRCLE_SECRET).await,
        200
    );
    assert_eq!(
        workflow_completed(&daemon, &pipeline.id, "test", "failed", CIRCLE_SECRET).await,
        200
    );
    let posts = vcs
        .wait_for(
            |p| {
                p.iter().any(|p| p.context == "ci/circleci/test")
                    && p.iter().any(|p| p.context == "ci/circleci/build")
            },
            Duration::from_secs(20),
        )
        .await;
    let of = |context: &str| -> Vec<(String, String)> {
        posts
            .iter()
            .filter(|p| p.context == context)
            .map(|p| (p.state.clone(), p.description.clone().unwrap_or_default()))
            .collect()
    };
    assert_eq!(
        of("ci/circleci/build"),
        [("success".to_owned(), "CircleCI workflow build success".to_owned())]
    );
    assert_eq!(
        of("ci/circleci/test"),
        [("failure".to_owned(), "CircleCI workflow test failed".to_owned())]
    );
    // The pipeline's own context still says it runs: its result is not known.
    assert_eq!(of("ci/circleci").last().unwrap().0, "pending");
    let metrics = daemon.metrics().await;
    assert!(
        metrics.contains(r#"hookbridge_pipeline_reads_total{target="circleci",outcome="refused"}"#),
        "{metrics}"
    );
    assert!(vcs.problems().is_empty(), "{:#?}", vcs.problems());
}
