//! Reconcile before retry, end to end: the real daemon, signed GitHub pushes
//! over HTTP, a SQLite store, and the stand-in GitLab and CircleCI APIs,
//! which create a pipeline when a trigger arrives (before they answer, as a
//! real CI does) and serve the reads that find it again.
//!
//! When an attempt's outcome is unknown (it timed out after sending, its
//! connection was cut before the answer, the process was killed while it
//! ran), the next attempt first looks for the pipeline the earlier one may
//! have created, and records it instead of triggering again: GitLab exactly,
//! by the `HOOKBRIDGE_JOB` variable every trigger carries once the target has
//! an `api_token`; CircleCI v2 by the one `api` pipeline of the token's user
//! on the branch since the attempt began.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::Value;
use support::ci::{CIRCLE_TOKEN, GITLAB_PRIVATE_TOKEN, GITLAB_TRIGGER_TOKEN, Reply, StandIn, duplicates};
use support::daemon::{Daemon, Workspace};
use support::{eventually, github_signature, payload, wait_for};

const GITHUB_SECRET: &str = "It's a Secret to Everybody";

const ENV: &[(&str, &str)] = &[
    ("GITHUB_WEBHOOK_SECRET", GITHUB_SECRET),
    ("GITLAB_TRIGGER_TOKEN", GITLAB_TRIGGER_TOKEN),
    ("GITLAB_API_TOKEN", GITLAB_PRIVATE_TOKEN),
    ("CIRCLECI_TOKEN", CIRCLE_TOKEN),
];

/// The GitLab project and the CircleCI project slug the rules trigger.
const GITLAB_PROJECT: &str = "acme/app";
const CIRCLE_PROJECT: &str = "gh/acme/app";
/// A GitHub App project's slug (pipeline run): `circleci/<org id>/<project id>`.
const CIRCLE_RUN_PROJECT: &str =
    "circleci/9d3c0b1e-0000-4000-8000-000000000001/7a1f0c2d-0000-4000-8000-000000000002";

/// How the test's target is set up.
#[derive(Clone, Copy, PartialEq)]
enum Target {
    /// GitLab with `api_token` (the marker variable, and reconcile).
    Gitlab,
    /// GitLab with a trigger token only: at least once, as before.
    GitlabWithoutApiToken,
    /// CircleCI v2 (`POST /api/v2/project/{slug}/pipeline`).
    Circle,
    /// CircleCI pipeline run (`POST /api/v2/project/{provider}/{org}/{project}/pipeline/run`).
    CircleRun,
}

/// One rule on push, for `target`, each delivery's job carrying its
/// delivery id (`DELIVERY` variable, `delivery` parameter).
fn config(ci: &str, target: Target, request_timeout: &str) -> String {
    let api_token = if target == Target::Gitlab {
        "api_token = \"env:GITLAB_API_TOKEN\""
    } else {
        ""
    };
    let trigger = match target {
        Target::Circle => format!(
            r#"target = "circleci"
project = "{CIRCLE_PROJECT}"
branch = "{{{{ event.branch }}}}"
parameters = {{ delivery = "{{{{ event.delivery }}}}" }}"#
        ),
        Target::CircleRun => format!(
            r#"target = "circleci"
project = "{CIRCLE_RUN_PROJECT}"
definition_id = "0f4c7e2a-0000-4000-8000-000000000003"
branch = "{{{{ event.branch }}}}"
parameters = {{ delivery = "{{{{ event.delivery }}}}" }}"#
        ),
        _ => format!(
            r#"target = "gitlab"
project = "{GITLAB_PROJECT}"
ref = "{{{{ event.branch }}}}"
variables = {{ DELIVERY = "{{{{ event.delivery }}}}" }}"#
        ),
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
max_attempts = 10
initial_backoff = "100ms"
max_backoff = "500ms"
request_timeout = "{request_timeout}"

[sources.github]
type = "github"
secrets = ["env:GITHUB_WEBHOOK_SECRET"]

[targets.gitlab]
type = "gitlab"
url = "{ci}"
token = "env:GITLAB_TRIGGER_TOKEN"
{api_token}

[targets.circleci]
type = "circleci"
url = "{ci}"
token = "env:CIRCLECI_TOKEN"

[[rules]]
name = "build"
source = "github"
events = ["push"]
[rules.trigger]
{trigger}
"#
    )
}

/// GitHub's example push, to `branch`, with the `n`th commit.
fn push_to(branch: &str, n: usize) -> Vec<u8> {
    let mut body: Value = serde_json::from_slice(&payload("github/push.json")).unwrap();
    body["ref"] = Value::String(format!("refs/heads/{branch}"));
    body["after"] = Value::String(format!("{:040x}", n + 1));
    serde_json::to_vec(&body).unwrap()
}

async fn post(client: &reqwest::Client, hook_url: &str, delivery: &str, body: Vec<u8>) {
    let resp = client
        .post(hook_url)
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
    assert_eq!(status, 202, "{}", resp.text().await.unwrap());
}

/// The admin API's view of a delivery's one job.
async fn job(client: &reqwest::Client, daemon: &Daemon, delivery: &str) -> Value {
    let url = format!("{}/api/v1/deliveries/{delivery}?source=github", daemon.admin);
    let d: Value = client.get(url).send().await.unwrap().json().await.unwrap();
    assert_eq!(d["jobs"].as_array().map(Vec::len), Some(1), "{d}");
    d["jobs"][0].clone()
}

/// Wait until `delivery`'s job is in a final state; its view.
async fn final_job(client: &reqwest::Client, daemon: &Daemon, delivery: &str) -> Value {
    wait_for(
        Duration::from_secs(30),
        &format!("{delivery}'s job in a final state"),
        async || {
            let j = job(client, daemon, delivery).await;
            match j["state"].as_str() {
                Some("done" | "dead" | "skipped" | "superseded") => Ok(j),
                _ => Err(j.to_string()),
            }
        },
    )
    .await
}

/// The job's attempts (`history`).
fn history(job: &Value) -> Vec<Value> {
    job["history"].as_array().cloned().unwrap_or_default()
}

/// The reconcile decisions recorded on a job's attempts.
fn decisions(job: &Value) -> Vec<String> {
    history(job)
        .iter()
        .filter_map(|a| a["reconcile"].as_str().map(str::to_owned))
        .collect()
}

/// A decision that adopted an existing pipeline: "found pipeline 1012 ...".
/// (Not "not found"; the pipeline named, when `id` is given.)
fn found(decision: &str, id: Option<&str>) -> bool {
    let d = decision.to_lowercase();
    (d.starts_with("found") || d.contains("found pipeline") || d.contains("adopted"))
        && !d.contains("not found")
        && id.is_none_or(|id| d.contains(id))
}

/// The job's recorded pipeline id, as a string.
fn result_id(job: &Value) -> String {
    match &job["result"]["id"] {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        other => panic!("the job records no pipeline id: {other}\n{job:#}"),
    }
}

/// `deliveries show` for a delivery; text, or JSON with `--json`.
fn show(ws: &Workspace, delivery: &str, json: bool) -> String {
    let mut args = vec![
        "deliveries",
        "show",
        delivery,
        "--source",
        "github",
        "--config",
        "hookbridge.toml",
    ];
    if json {
        args.push("--json");
    }
    let (code, out, err) = ws.cli(&args, ENV);
    assert_eq!(code, 0, "{err}");
    out
}

/// The `hookbridge_reconciles_total` samples: `(labels, value)`.
fn reconcile_metrics(metrics: &str) -> Vec<(String, f64)> {
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix("hookbridge_reconciles_total{"))
        .filter_map(|l| {
            let (labels, value) = l.rsplit_once("} ")?;
            Some((labels.to_owned(), value.trim().parse().ok()?))
        })
        .collect()
}

/// The GitLab triggers the stand-in received, answered or not.
fn gitlab_triggers(ci: &StandIn) -> usize {
    ci.requests().iter().filter(|r| r.api == "gitlab-trigger").count()
}

// ---------------------------------------------------------------------------
// SIGKILL under load.

/// What a SIGKILL-under-load run left: each delivery's final job, and the
/// pipelines the stand-in had created when the first daemon died.
struct KillRun {
    ci: StandIn,
    _ws: Workspace,
    daemon: Daemon,
    jobs: BTreeMap<String, Value>,
    /// Ids of the pipelines that existed at the kill (GitLab ids as strings, CircleCI UUIDs).
    before_kill: BTreeSet<String>,
}

/// `n` pushes (on their own branch each when `own_branch`, else all on
/// `main`) to a CI that answers each trigger after 200 ms; SIGKILL while
/// triggers are in flight; restart; wait until every job is final.
async fn kill_under_load(target: Target, n: usize, own_branch: bool) -> KillRun {
    let ci = StandIn::start().await;
    ci.set_delay(Duration::from_millis(200));
    let ws = Workspace::new(&config(&ci.url, target, "5s"));
    let daemon = ws.start(ENV);
    let client = reqwest::Client::new();
    let created = |ci: &StandIn| match target {
        Target::Circle | Target::CircleRun => ci.circle_pipelines().len(),
        _ => ci.gitlab_pipelines().len(),
    };
    let deliveries: Vec<String> = (0..n).map(|i| format!("load-{i}")).collect();
    // All at once, so that the dispatcher has a full queue.
    let mut posts = tokio::task::JoinSet::new();
    for (i, d) in deliveries.iter().enumerate() {
        let branch = if own_branch {
            format!("b{i}")
        } else {
            "main".to_owned()
        };
        let (client, hooks, d) = (client.clone(), daemon.hook_url("github"), d.clone());
        posts.spawn(async move { post(&client, &hooks, &d, push_to(&branch, i)).await });
    }
    while let Some(done) = posts.join_next().await {
        done.unwrap();
    }
    // Kill as soon as some triggers have reached the CI (their pipelines
    // exist): their answers come 200 ms later, so they are in flight.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while created(&ci) < 4 {
        assert!(std::time::Instant::now() < deadline, "no trigger reached the CI");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let at_kill = created(&ci);
    daemon.kill();
    let before_kill: BTreeSet<String> = match target {
        Target::Circle | Target::CircleRun => ci.circle_pipelines().into_iter().map(|p| p.id).collect(),
        _ => ci
            .gitlab_pipelines()
            .into_iter()
            .map(|p| p.id.to_string())
            .collect(),
    };
    assert!(
        at_kill < n,
        "every trigger had reached the CI before the kill: nothing was in flight"
    );
    let daemon = ws.start(ENV);
    ws.settled().await;
    let mut jobs = BTreeMap::new();
    for d in &deliveries {
        jobs.insert(d.clone(), final_job(&client, &daemon, d).await);
    }
    KillRun {
        ci,
        _ws: ws,
        daemon,
        jobs,
        before_kill,
    }
}

/// Print, for the record, how many pipelines each delivery got.
fn report(what: &str, per_delivery: &BTreeMap<String, Vec<String>>, in_flight: usize) {
    let dups = duplicates(per_delivery);
    let extra: Vec<String> = per_delivery
        .iter()
        .filter(|(_, v)| v.len() > 1)
        .map(|(k, v)| format!("{k}: {v:?}"))
        .collect();
    println!(
        "{what}: {} deliveries, {} pipelines, {dups} duplicate(s), {in_flight} job(s) interrupted by the kill{}",
        per_delivery.len(),
        per_delivery.values().map(Vec::len).sum::<usize>(),
        if extra.is_empty() {
            String::new()
        } else {
            format!("; {}", extra.join(", "))
        }
    );
}

/// Jobs whose history holds an `interrupted` attempt (the kill cut it short).
fn interrupted(jobs: &BTreeMap<String, Value>) -> BTreeSet<String> {
    jobs.iter()
        .filter(|(_, j)| history(j).iter().any(|a| a["outcome"] == "interrupted"))
        .map(|(d, _)| d.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gitlab_sigkill_under_load_triggers_each_job_once() {
    let run = kill_under_load(Target::Gitlab, 30, false).await;
    let ci = &run.ci;
    let per_job = ci.gitlab_pipelines_per_job();
    let per_delivery: BTreeMap<String, Vec<String>> = ci
        .gitlab_pipelines_by_variable("DELIVERY")
        .into_iter()
        .map(|(k, v)| (k, v.into_iter().map(|id| id.to_string()).collect()))
        .collect();
    let cut = interrupted(&run.jobs);
    report(
        "GitLab with api_token, SIGKILL under load",
        &per_delivery,
        cut.len(),
    );
    assert!(
        !cut.is_empty(),
        "the kill interrupted no attempt: {:#?}",
        run.jobs
    );
    // Every trigger carried its job's id.
    for r in ci.requests() {
        assert!(
            r.body["variables"]["HOOKBRIDGE_JOB"].is_string(),
            "a trigger without HOOKBRIDGE_JOB: {}",
            r.body
        );
    }
    let mut adopted = 0;
    for (delivery, job) in &run.jobs {
        assert_eq!(job["state"], "done", "{delivery}: {job:#}");
        let id = job["id"].as_str().unwrap();
        let pipelines = per_job.get(id).cloned().unwrap_or_default();
        assert_eq!(
            pipelines.len(),
            1,
            "{delivery} (job {id}) has pipelines {pipelines:?}\n{job:#}"
        );
        assert_eq!(
            result_id(job),
            pipelines[0].to_string(),
            "{delivery}: the job records its pipeline"
        );
        let pipeline = pipelines[0].to_string();
        if cut.contains(delivery) && run.before_kill.contains(&pipeline) {
            // In flight at the kill: the pipeline existed, the answer was lost.
            let d = decisions(job);
            assert!(
                d.iter().any(|d| found(d, Some(&pipeline))),
                "{delivery}: its pipeline {pipeline} existed before the kill, yet no attempt found it: {d:?}\n{job:#}"
            );
            adopted += 1;
        }
    }
    println!("  {adopted} job(s) adopted the pipeline their killed attempt created");
    assert!(
        adopted > 0,
        "no job was in flight with its pipeline created at the kill"
    );
    assert_eq!(
        duplicates(&per_delivery),
        0,
        "duplicate pipelines: {per_delivery:?}"
    );
    assert_eq!(
        per_delivery.len(),
        run.jobs.len(),
        "a delivery without a pipeline"
    );
    let metrics = run.daemon.metrics().await;
    let found_count: f64 = reconcile_metrics(&metrics)
        .iter()
        .filter(|(l, _)| l.contains("outcome=\"found\""))
        .map(|(_, v)| v)
        .sum();
    assert!(found_count >= adopted as f64, "{metrics}");
    ci.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gitlab_without_api_token_sigkill_under_load_loses_nothing() {
    // The at-least-once baseline: no marker variable, no reconcile; a job
    // whose answer the kill lost triggers again.
    let run = kill_under_load(Target::GitlabWithoutApiToken, 30, false).await;
    let ci = &run.ci;
    let per_delivery: BTreeMap<String, Vec<String>> = ci
        .gitlab_pipelines_by_variable("DELIVERY")
        .into_iter()
        .map(|(k, v)| (k, v.into_iter().map(|id| id.to_string()).collect()))
        .collect();
    let cut = interrupted(&run.jobs);
    report(
        "GitLab without api_token (at least once), SIGKILL under load",
        &per_delivery,
        cut.len(),
    );
    for r in ci.requests() {
        assert!(
            r.body["variables"].get("HOOKBRIDGE_JOB").is_none(),
            "HOOKBRIDGE_JOB sent without api_token: {}",
            r.body
        );
    }
    assert!(
        ci.reconcile_calls().is_empty(),
        "reads without api_token: {:?}",
        ci.reconcile_calls()
    );
    for (delivery, job) in &run.jobs {
        assert_eq!(job["state"], "done", "{delivery}: {job:#}");
        let pipelines = per_delivery.get(delivery).cloned().unwrap_or_default();
        assert!(!pipelines.is_empty(), "{delivery} was lost: {job:#}");
        assert!(
            pipelines.contains(&result_id(job)),
            "{delivery} records {} but has {pipelines:?}",
            result_id(job)
        );
        // Nothing can be found without reading (a "skipped" note may say why).
        assert!(
            !decisions(job).iter().any(|d| found(d, None)),
            "{delivery}: {job:#}"
        );
    }
    ci.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn circleci_sigkill_under_load_triggers_each_branch_once() {
    let run = kill_under_load(Target::Circle, 30, true).await;
    let ci = &run.ci;
    let per_branch = ci.circle_pipelines_per_branch();
    let cut = interrupted(&run.jobs);
    report(
        "CircleCI v2, one branch per push, SIGKILL under load",
        &per_branch,
        cut.len(),
    );
    assert!(
        !cut.is_empty(),
        "the kill interrupted no attempt: {:#?}",
        run.jobs
    );
    let mut adopted = 0;
    for (delivery, job) in &run.jobs {
        assert_eq!(job["state"], "done", "{delivery}: {job:#}");
        let n: usize = delivery.trim_start_matches("load-").parse().unwrap();
        let branch = format!("b{n}");
        let pipelines = per_branch.get(&branch).cloned().unwrap_or_default();
        assert_eq!(
            pipelines.len(),
            1,
            "{delivery} on {branch} has pipelines {pipelines:?}\n{job:#}"
        );
        assert_eq!(
            result_id(job),
            pipelines[0],
            "{delivery}: the job records its pipeline"
        );
        if cut.contains(delivery) && run.before_kill.contains(&pipelines[0]) {
            let d = decisions(job);
            assert!(
                d.iter().any(|d| found(d, None)),
                "{delivery}: its pipeline existed before the kill, yet no attempt adopted it: {d:?}\n{job:#}"
            );
            adopted += 1;
        }
    }
    println!("  {adopted} job(s) adopted the pipeline their killed attempt created");
    assert!(
        adopted > 0,
        "no job was in flight with its pipeline created at the kill"
    );
    assert_eq!(duplicates(&per_branch), 0, "{per_branch:?}");
    ci.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn circleci_sigkill_under_load_on_one_branch_loses_no_job() {
    // Every push on `main`: the heuristic cannot tell the in-flight jobs'
    // pipelines apart, so it may send again (at least once). What it must
    // never do is adopt a pipeline another job created: that job's push
    // would then have no pipeline of its own.
    let run = kill_under_load(Target::Circle, 30, false).await;
    let ci = &run.ci;
    let all = ci.circle_pipelines();
    let cut = interrupted(&run.jobs);
    let mut by_pipeline: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (delivery, job) in &run.jobs {
        assert_eq!(job["state"], "done", "{delivery}: {job:#}");
        by_pipeline
            .entry(result_id(job))
            .or_default()
            .push(delivery.clone());
    }
    let per_delivery: BTreeMap<String, Vec<String>> = run
        .jobs
        .keys()
        .map(|d| {
            let ids = all
                .iter()
                .filter(|p| p.parameters["delivery"] == d.as_str())
                .map(|p| p.id.clone())
                .collect();
            (d.clone(), ids)
        })
        .collect();
    report(
        "CircleCI v2, every push on main, SIGKILL under load",
        &per_delivery,
        cut.len(),
    );
    let adopted: usize = run
        .jobs
        .values()
        .filter(|j| decisions(j).iter().any(|d| found(d, None)))
        .count();
    println!(
        "  {adopted} job(s) adopted a pipeline; {} pipelines in all",
        all.len()
    );
    let shared: Vec<_> = by_pipeline.iter().filter(|(_, d)| d.len() > 1).collect();
    assert!(
        shared.is_empty(),
        "jobs recording the same pipeline (a push left without its own): {shared:?}"
    );
    for (delivery, job) in &run.jobs {
        let own = &per_delivery[delivery];
        assert!(
            own.contains(&result_id(job)),
            "{delivery} records pipeline {}, created for another delivery (its own: {own:?})\n{job:#}",
            result_id(job)
        );
    }
    ci.assert_clean();
}

// ---------------------------------------------------------------------------
// One ambiguous attempt.

/// One push to `main` whose first trigger gets `first` (the pipeline is
/// created, the answer never comes), against a target with a 1 s timeout;
/// `reads` scripts the first reconcile reads. The workspace, the daemon,
/// the stand-in and the final job.
async fn one_ambiguous(
    target: Target,
    first: Reply,
    reads: Vec<Reply>,
    env: &[(&str, &str)],
) -> (StandIn, Workspace, Daemon, Value) {
    let ci = StandIn::start().await;
    ci.script([first]);
    ci.script_reads(reads);
    let ws = Workspace::new(&config(&ci.url, target, "1s"));
    let daemon = ws.start(env);
    let client = reqwest::Client::new();
    post(&client, &daemon.hook_url("github"), "amb-1", push_to("main", 0)).await;
    let job = final_job(&client, &daemon, "amb-1").await;
    ws.settled().await;
    (ci, ws, daemon, job)
}

/// Attempt `n`'s record (1-based), or a panic naming the job.
fn attempt(job: &Value, n: usize) -> Value {
    history(job)
        .get(n - 1)
        .cloned()
        .unwrap_or_else(|| panic!("no attempt {n}:\n{job:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gitlab_timeout_after_create_is_reconciled() {
    let (ci, _ws, _daemon, job) = one_ambiguous(Target::Gitlab, Reply::CreateThenHang, vec![], ENV).await;
    let pipelines = ci.gitlab_pipelines();
    assert_eq!(pipelines.len(), 1, "{pipelines:#?}\n{job:#}");
    assert_eq!(gitlab_triggers(&ci), 1, "triggered again");
    let p = &pipelines[0];
    assert_eq!(p.job(), job["id"].as_str(), "the trigger carried HOOKBRIDGE_JOB");
    assert_eq!(job["state"], "done", "{job:#}");
    assert_eq!(result_id(&job), p.id.to_string(), "{job:#}");
    assert_eq!(job["result"]["url"].as_str(), Some(p.web_url.as_str()), "{job:#}");
    let first = attempt(&job, 1);
    assert!(
        first["error"].as_str().unwrap_or_default().contains("timed out"),
        "attempt 1 timed out: {job:#}"
    );
    assert!(
        first["reconcile"].is_null(),
        "nothing to reconcile before the first attempt: {job:#}"
    );
    let second = attempt(&job, 2);
    let decision = second["reconcile"].as_str().unwrap_or_default();
    assert!(
        found(decision, Some(&p.id.to_string())),
        "attempt 2 found it: {job:#}"
    );
    assert_eq!(history(&job).len(), 2, "{job:#}");
    // The reads: the trigger pipelines of `main` since the attempt began,
    // newest first, then the found pipeline's variables.
    let calls = ci.reconcile_calls();
    let list = calls
        .iter()
        .find(|c| c.api == "gitlab-pipelines")
        .expect("a pipeline list");
    let q: BTreeMap<String, String> = form_urlencoded::parse(list.query.as_deref().unwrap_or("").as_bytes())
        .into_owned()
        .collect();
    assert_eq!(q.get("source").map(String::as_str), Some("trigger"), "{q:?}");
    assert_eq!(q.get("ref").map(String::as_str), Some("main"), "{q:?}");
    assert!(q.contains_key("created_after"), "{q:?}");
    assert!(
        calls.iter().any(
            |c| c.api == "gitlab-pipeline-variables" && c.path.ends_with(&format!("/{}/variables", p.id))
        ),
        "{calls:#?}"
    );
    ci.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gitlab_connection_cut_after_create_is_reconciled() {
    let (ci, _ws, _daemon, job) = one_ambiguous(Target::Gitlab, Reply::CreateThenDrop, vec![], ENV).await;
    let pipelines = ci.gitlab_pipelines();
    assert_eq!(pipelines.len(), 1, "{pipelines:#?}\n{job:#}");
    assert_eq!(gitlab_triggers(&ci), 1, "triggered again");
    assert_eq!(job["state"], "done", "{job:#}");
    assert_eq!(result_id(&job), pipelines[0].id.to_string(), "{job:#}");
    let decision = attempt(&job, 2)["reconcile"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(found(&decision, Some(&pipelines[0].id.to_string())), "{job:#}");
    ci.assert_clean();
}

/// While the first attempt of a push to `main` hangs (its pipeline
/// created), `others` more trigger pipelines of `main` appear, other jobs'
/// (and two that are no candidates: a push's, and one on `dev`). The
/// stand-in, the job, and its pipeline's id.
async fn among_others(others: usize) -> (StandIn, Value, u64) {
    let ci = StandIn::start().await;
    ci.script([Reply::CreateThenHang]);
    let ws = Workspace::new(&config(&ci.url, Target::Gitlab, "2s"));
    let daemon = ws.start(ENV);
    let client = reqwest::Client::new();
    post(&client, &daemon.hook_url("github"), "amb-1", push_to("main", 0)).await;
    eventually(Duration::from_secs(10), "the first trigger", || {
        ci.gitlab_pipelines().len() == 1
    })
    .await;
    for i in 0..others {
        let other = format!("01JOTHERJOB{i:015}");
        ci.add_gitlab_pipeline(GITLAB_PROJECT, "main", "trigger", &[("HOOKBRIDGE_JOB", &other)]);
    }
    ci.add_gitlab_pipeline(GITLAB_PROJECT, "main", "push", &[]);
    ci.add_gitlab_pipeline(
        GITLAB_PROJECT,
        "dev",
        "trigger",
        &[("HOOKBRIDGE_JOB", "01JOTHERDEV")],
    );
    let job = final_job(&client, &daemon, "amb-1").await;
    let mine = ci.gitlab_pipelines()[0].id;
    (ci, job, mine)
}

/// The `page` of every pipeline list read.
fn pages_read(ci: &StandIn) -> BTreeSet<String> {
    ci.reconcile_calls()
        .iter()
        .filter(|c| c.api == "gitlab-pipelines")
        .filter_map(|c| {
            form_urlencoded::parse(c.query.as_deref().unwrap_or("").as_bytes())
                .find(|(k, _)| k == "page")
                .map(|(_, v)| v.into_owned())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gitlab_reconcile_finds_its_pipeline_among_other_jobs() {
    let (ci, job, mine) = among_others(40).await;
    assert_eq!(gitlab_triggers(&ci), 1, "triggered again: {job:#}");
    assert_eq!(job["state"], "done", "{job:#}");
    assert_eq!(result_id(&job), mine.to_string(), "{job:#}");
    assert!(
        decisions(&job).iter().any(|d| found(d, Some(&mine.to_string()))),
        "{job:#}"
    );
    // Only the candidates' variables were read (not the push's, not dev's).
    let read: Vec<String> = ci
        .reconcile_calls()
        .iter()
        .filter(|c| c.api == "gitlab-pipeline-variables")
        .map(|c| c.path.clone())
        .collect();
    assert!(read.len() <= 41, "{read:#?}");
    ci.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gitlab_reconcile_reads_past_a_page_of_other_pipelines() {
    // 120 newer trigger pipelines: the one to find is on the second page
    // of 100.
    let (ci, job, mine) = among_others(120).await;
    let pages = pages_read(&ci);
    println!("pages read: {pages:?}; decisions: {:?}", decisions(&job));
    assert_eq!(gitlab_triggers(&ci), 1, "triggered again: {job:#}");
    assert_eq!(job["state"], "done", "{job:#}");
    assert_eq!(result_id(&job), mine.to_string(), "{job:#}");
    assert!(
        decisions(&job).iter().any(|d| found(d, Some(&mine.to_string()))),
        "{job:#}"
    );
    assert!(pages.contains("2"), "the second page was never read: {pages:?}");
    ci.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gitlab_reconcile_failing_with_500_retries_without_triggering() {
    // The list answers 500 once: the attempt can tell nothing, so it
    // triggers nothing and is retried; the next one finds the pipeline.
    let (ci, _ws, daemon, job) = one_ambiguous(
        Target::Gitlab,
        Reply::CreateThenHang,
        vec![Reply::Status(500)],
        ENV,
    )
    .await;
    let pipelines = ci.gitlab_pipelines();
    assert_eq!(pipelines.len(), 1, "{pipelines:#?}\n{job:#}");
    assert_eq!(
        gitlab_triggers(&ci),
        1,
        "triggered while reconcile failed: {job:#}"
    );
    assert_eq!(job["state"], "done", "{job:#}");
    assert_eq!(result_id(&job), pipelines[0].id.to_string(), "{job:#}");
    let second = attempt(&job, 2);
    let failed = second["reconcile"].as_str().unwrap_or_default();
    assert!(
        failed.contains("500"),
        "attempt 2 says the list failed, and how: {job:#}"
    );
    assert!(!found(failed, None), "{job:#}");
    assert_ne!(second["outcome"], "done", "{job:#}");
    let later = history(&job)[2..].to_vec();
    assert!(
        later
            .iter()
            .filter_map(|a| a["reconcile"].as_str())
            .any(|d| found(d, Some(&pipelines[0].id.to_string()))),
        "a later attempt found it: {job:#}"
    );
    let metrics = daemon.metrics().await;
    let samples = reconcile_metrics(&metrics);
    assert!(
        samples
            .iter()
            .any(|(l, v)| l.contains("outcome=\"failed\"") && *v >= 1.0),
        "{samples:?}"
    );
    ci.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gitlab_reconcile_refused_401_triggers_anyway_and_says_why() {
    // The api_token is revoked (or lacks `read_api`): reconcile is
    // impossible, so the job is sent again (at least once), and the
    // attempt says why.
    let env: Vec<(&str, &str)> = ENV
        .iter()
        .map(|&(k, v)| {
            if k == "GITLAB_API_TOKEN" {
                (k, "glpat-revoked-token")
            } else {
                (k, v)
            }
        })
        .collect();
    let (ci, ws, daemon, job) = one_ambiguous(Target::Gitlab, Reply::CreateThenHang, vec![], &env).await;
    let pipelines = ci.gitlab_pipelines();
    assert_eq!(job["state"], "done", "{job:#}");
    assert_eq!(pipelines.len(), 2, "the trigger is sent again: {pipelines:#?}");
    assert_eq!(gitlab_triggers(&ci), 2);
    assert_eq!(
        result_id(&job),
        pipelines[1].id.to_string(),
        "the second pipeline: {job:#}"
    );
    let decision = attempt(&job, 2)["reconcile"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        decision.contains("401"),
        "attempt 2 says reconcile was refused (401): {job:#}"
    );
    assert!(!found(&decision, None), "{job:#}");
    assert!(
        ci.reconcile_calls().iter().all(|c| c.status == 401),
        "{:?}",
        ci.reconcile_calls()
    );
    let text = show(&ws, "amb-1", false);
    assert!(text.contains("401"), "{text}");
    let samples = reconcile_metrics(&daemon.metrics().await);
    assert!(
        samples.iter().any(
            |(l, v)| (l.contains("outcome=\"failed\"") || l.contains("outcome=\"skipped\"")) && *v >= 1.0
        ),
        "{samples:?}"
    );
    ci.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reconcile_decision_is_shown_and_counted() {
    let (ci, ws, daemon, job) = one_ambiguous(Target::Gitlab, Reply::CreateThenHang, vec![], ENV).await;
    let id = ci.gitlab_pipelines()[0].id.to_string();
    let decision = attempt(&job, 2)["reconcile"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(found(&decision, Some(&id)), "{job:#}");
    // `deliveries show --json`: the same field as the admin API.
    let shown: Value = serde_json::from_str(&show(&ws, "amb-1", true)).unwrap();
    let attempts = shown["jobs"][0]["history"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        attempts
            .iter()
            .any(|a| a["reconcile"].as_str() == Some(decision.as_str())),
        "{shown:#}"
    );
    // The text says it too.
    let text = show(&ws, "amb-1", false);
    assert!(text.contains(&decision), "{text}");
    // And the metric counts it.
    let metrics = daemon.metrics().await;
    let samples = reconcile_metrics(&metrics);
    assert!(
        samples
            .iter()
            .any(|(l, v)| l.contains("outcome=\"found\"") && l.contains("target=\"gitlab\"") && *v >= 1.0),
        "no hookbridge_reconciles_total{{target=\"gitlab\",outcome=\"found\"}}: {samples:?}"
    );
    // Neither the trigger token nor the api_token the lookup read with is
    // in what is shown, logged or stored.
    let logs = daemon.logs();
    assert_eq!(daemon.stop(), 0);
    let mut stored = std::fs::read(ws.db_path()).unwrap();
    let wal = ws.db_path().with_extension("db-wal");
    stored.extend(std::fs::read(wal).unwrap_or_default());
    for secret in [GITLAB_TRIGGER_TOKEN, GITLAB_PRIVATE_TOKEN] {
        for (what, text) in [
            ("show --json", &shown.to_string()),
            ("show", &text),
            ("log", &logs),
        ] {
            assert!(!text.contains(secret), "{secret} in {what}");
        }
        let found = stored.windows(secret.len()).any(|w| w == secret.as_bytes());
        assert!(!found, "{secret} in the store");
    }
    ci.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn circleci_timeout_after_create_adopts_the_one_candidate() {
    // While the first attempt hangs, pipelines that are not candidates
    // appear: a push's (webhook) on the branch, another user's, and one on
    // another branch. The one `api` pipeline of the token's user on `main`
    // is adopted.
    let ci = StandIn::start().await;
    ci.script([Reply::CreateThenHang]);
    let ws = Workspace::new(&config(&ci.url, Target::Circle, "2s"));
    let daemon = ws.start(ENV);
    let client = reqwest::Client::new();
    post(&client, &daemon.hook_url("github"), "amb-1", push_to("main", 0)).await;
    eventually(Duration::from_secs(10), "the first trigger", || {
        ci.circle_pipelines().len() == 1
    })
    .await;
    ci.add_circle_pipeline(CIRCLE_PROJECT, "main", "webhook", true);
    ci.add_circle_pipeline(CIRCLE_PROJECT, "main", "api", false);
    ci.add_circle_pipeline(CIRCLE_PROJECT, "dev", "api", true);
    let job = final_job(&client, &daemon, "amb-1").await;
    let mine = ci.circle_pipelines()[0].clone();
    assert_eq!(job["state"], "done", "{job:#}");
    assert_eq!(ci.requests().len(), 1, "triggered again: {job:#}");
    assert_eq!(result_id(&job), mine.id, "{job:#}");
    assert!(decisions(&job).iter().any(|d| found(d, None)), "{job:#}");
    assert!(
        ci.reconcile_calls()
            .iter()
            .any(|c| c.api == "circleci-pipeline-mine"),
        "{:?}",
        ci.reconcile_calls()
    );
    ci.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn circleci_pipeline_run_timeout_after_create_is_adopted() {
    let (ci, _ws, _daemon, job) = one_ambiguous(Target::CircleRun, Reply::CreateThenHang, vec![], ENV).await;
    let all = ci.circle_pipelines();
    assert_eq!(all.len(), 1, "{all:#?}\n{job:#}");
    assert_eq!(all[0].api, "circleci-pipeline-run");
    assert_eq!(all[0].project_slug, CIRCLE_RUN_PROJECT);
    assert_eq!(ci.requests().len(), 1, "triggered again: {job:#}");
    assert_eq!(job["state"], "done", "{job:#}");
    assert_eq!(result_id(&job), all[0].id, "{job:#}");
    assert!(
        found(attempt(&job, 2)["reconcile"].as_str().unwrap_or_default(), None),
        "{job:#}"
    );
    let mine = ci.reconcile_calls();
    assert!(
        mine.iter()
            .any(|c| c.path == format!("/api/v2/project/{CIRCLE_RUN_PROJECT}/pipeline/mine")),
        "{mine:#?}"
    );
    ci.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn circleci_two_candidates_trigger_again() {
    // Two `api` pipelines of the token's user on the branch since the
    // attempt began: they cannot be told apart, so the job triggers again
    // (at least once) and says why.
    let ci = StandIn::start().await;
    ci.script([Reply::CreateThenHang]);
    let ws = Workspace::new(&config(&ci.url, Target::Circle, "2s"));
    let daemon = ws.start(ENV);
    let client = reqwest::Client::new();
    post(&client, &daemon.hook_url("github"), "amb-1", push_to("main", 0)).await;
    eventually(Duration::from_secs(10), "the first trigger", || {
        ci.circle_pipelines().len() == 1
    })
    .await;
    ci.add_circle_pipeline(CIRCLE_PROJECT, "main", "api", true);
    let job = final_job(&client, &daemon, "amb-1").await;
    let all = ci.circle_pipelines();
    assert_eq!(job["state"], "done", "{job:#}");
    assert_eq!(all.len(), 3, "{all:#?}");
    assert_eq!(ci.requests().len(), 2, "{job:#}");
    assert_eq!(result_id(&job), all[2].id, "the new pipeline: {job:#}");
    let d = decisions(&job);
    assert!(!d.is_empty() && !d.iter().any(|d| found(d, None)), "{job:#}");
    ci.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn circleci_does_not_adopt_a_pipeline_another_job_is_creating() {
    // Two pushes on `main`, both first attempts time out (nothing created).
    // Job A's reconcile fails once (500) and is retried ~100 ms later; job
    // B's finds nothing and triggers, and B's pipeline exists (created on
    // arrival) while B waits 1.5 s for its answer. A's second reconcile
    // then sees one API pipeline on `main` since its attempt, not yet
    // recorded by anyone: B's. Adopting it would leave A's push without a
    // pipeline (worse than a duplicate: at-least-once is broken).
    let ci = StandIn::start().await;
    ci.script([Reply::Hang, Reply::Hang]);
    ci.script_reads([Reply::Status(500)]);
    ci.set_delay(Duration::from_millis(1500));
    let ws = Workspace::new(&config(&ci.url, Target::Circle, "2s"));
    let daemon = ws.start(ENV);
    let client = reqwest::Client::new();
    let hooks = daemon.hook_url("github");
    post(&client, &hooks, "same-a", push_to("main", 0)).await;
    post(&client, &hooks, "same-b", push_to("main", 1)).await;
    let a = final_job(&client, &daemon, "same-a").await;
    let b = final_job(&client, &daemon, "same-b").await;
    ws.settled().await;
    let all = ci.circle_pipelines();
    let own = |d: &str| -> Vec<String> {
        all.iter()
            .filter(|p| p.parameters["delivery"] == d)
            .map(|p| p.id.clone())
            .collect()
    };
    println!(
        "A: {} {:?} own {:?}\nB: {} {:?} own {:?}",
        result_id(&a),
        decisions(&a),
        own("same-a"),
        result_id(&b),
        decisions(&b),
        own("same-b")
    );
    for (d, job) in [("same-a", &a), ("same-b", &b)] {
        assert_eq!(job["state"], "done", "{d}: {job:#}");
        assert!(
            own(d).contains(&result_id(job)),
            "{d} records pipeline {}, which another push's job created; its own: {:?}\n{job:#}",
            result_id(job),
            own(d)
        );
    }
    ci.assert_clean();
}

// ---------------------------------------------------------------------------
// The stand-in itself: its reads follow the documents (no daemon).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stand_in_reads_follow_the_documents() {
    let ci = StandIn::start().await;
    let client = reqwest::Client::new();
    for i in 0..25 {
        ci.add_gitlab_pipeline(
            GITLAB_PROJECT,
            if i % 5 == 0 { "dev" } else { "main" },
            "trigger",
            &[("N", &i.to_string())],
        );
    }
    ci.add_gitlab_pipeline(GITLAB_PROJECT, "main", "push", &[]);
    let base = format!("{}/api/v4/projects/acme%2Fapp/pipelines", ci.url);
    let get = |url: String, token: &'static str| {
        client
            .get(url)
            .header("PRIVATE-TOKEN", token)
            .header("Accept", "application/json")
            .send()
    };
    // Newest first, 20 by 20 of the 20 trigger pipelines on main.
    let r = get(
        format!("{base}?source=trigger&ref=main&order_by=id&sort=desc&per_page=15&page=1"),
        GITLAB_PRIVATE_TOKEN,
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-total"], "20");
    assert_eq!(r.headers()["x-next-page"], "2");
    let page: Value = r.json().await.unwrap();
    let ids: Vec<u64> = page
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids.len(), 15);
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "{ids:?}");
    let r = get(
        format!("{base}?source=trigger&ref=main&per_page=15&page=2"),
        GITLAB_PRIVATE_TOKEN,
    )
    .await
    .unwrap();
    assert_eq!(r.headers()["x-next-page"], "");
    assert_eq!(r.json::<Value>().await.unwrap().as_array().unwrap().len(), 5);
    // created_after is inclusive and filters.
    let future = support::ci::reads::iso(std::time::SystemTime::now() + Duration::from_secs(60));
    let r = get(format!("{base}?created_after={future}"), GITLAB_PRIVATE_TOKEN)
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap(), serde_json::json!([]));
    ci.assert_clean();
    // Variables, and a 404 for an unknown pipeline.
    let first = ci.gitlab_pipelines()[1].id;
    let vars: Value = get(format!("{base}/{first}/variables"), GITLAB_PRIVATE_TOKEN)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        vars,
        serde_json::json!([{"variable_type": "env_var", "key": "N", "value": "1"}])
    );
    let r = get(format!("{base}/999999/variables"), GITLAB_PRIVATE_TOKEN)
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // A wrong token is GitLab's 401 (not a violation: hookbridge cannot know).
    let r = get(format!("{base}?ref=main"), "glpat-wrong").await.unwrap();
    assert_eq!(r.status(), 401);
    ci.assert_clean();
    // Unknown, malformed or out-of-enum parameters are violations.
    for bad in [
        "since=2026-01-01T00:00:00Z",
        "created_after=yesterday",
        "order_by=created_at",
        "sort=newest",
        "per_page=ten",
        "source=triggered",
    ] {
        get(format!("{base}?{bad}"), GITLAB_PRIVATE_TOKEN).await.unwrap();
    }
    assert_eq!(ci.violations().len(), 6, "{:#?}", ci.violations());

    // CircleCI: mine, newest first, 20 a page.
    let ci = StandIn::start().await;
    for i in 0..25 {
        ci.add_circle_pipeline(CIRCLE_PROJECT, &format!("b{i}"), "api", true);
    }
    ci.add_circle_pipeline(CIRCLE_PROJECT, "main", "api", false);
    let url = format!("{}/api/v2/project/gh/acme/app/pipeline/mine", ci.url);
    let page: Value = client
        .get(&url)
        .header("Circle-Token", CIRCLE_TOKEN)
        .header("Accept", "application/json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 20);
    assert_eq!(page["items"][0]["vcs"]["branch"], "b24");
    let token = page["next_page_token"].as_str().unwrap().to_owned();
    let page: Value = client
        .get(format!("{url}?page-token={token}"))
        .header("Circle-Token", CIRCLE_TOKEN)
        .header("Accept", "application/json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        page["items"].as_array().unwrap().len(),
        5,
        "another user's is not mine"
    );
    assert!(page["next_page_token"].is_null());
    ci.assert_clean();
    client
        .get(format!("{url}?branch=main"))
        .header("Circle-Token", CIRCLE_TOKEN)
        .header("Accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(ci.violations().len(), 1, "{:?}", ci.violations());
}

/// A project that restricts pipeline variables (GitLab 18's default for new
/// projects) refuses a trigger for its `HOOKBRIDGE_JOB` with a 400 that
/// creates nothing: the same attempt sends it once more without the marker,
/// and says the job cannot be reconciled. Nothing is dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_project_refusing_the_marker_still_gets_its_trigger() {
    let ci = StandIn::start().await;
    ci.script([Reply::Body(
        400,
        r#"{"message":{"base":["Insufficient permissions to set pipeline variables"]}}"#,
    )]);
    let ws = Workspace::new(&config(&ci.url, Target::Gitlab, "5s"));
    let daemon = ws.start(ENV);
    let client = reqwest::Client::new();
    post(
        &client,
        &daemon.hook_url("github"),
        "restricted-1",
        push_to("main", 0),
    )
    .await;
    let job = final_job(&client, &daemon, "restricted-1").await;
    assert_eq!(job["state"], "done", "{job:#}");
    let triggers: Vec<_> = ci
        .requests()
        .into_iter()
        .filter(|r| r.api == "gitlab-trigger")
        .collect();
    assert_eq!(triggers.len(), 2, "{triggers:#?}");
    assert_eq!(triggers[0].body["variables"]["HOOKBRIDGE_JOB"], job["id"]);
    assert!(
        triggers[1].body["variables"].get("HOOKBRIDGE_JOB").is_none(),
        "{:#}",
        triggers[1].body
    );
    assert_eq!(triggers[1].body["variables"]["DELIVERY"], "restricted-1");
    assert_eq!(history(&job).len(), 1, "one attempt: {job:#}");
    let decision = attempt(&job, 1)["reconcile"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        decision.contains("refuses pipeline variables") && decision.contains("cannot be reconciled"),
        "{job:#}"
    );
    assert_eq!(ci.gitlab_pipelines().len(), 1);
    ci.assert_clean();
}
