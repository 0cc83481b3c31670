//! The operator's toolkit end to end: explain, test, deliveries, admin API,
//! GitLab trigger tokens, hot reload and metrics.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use support::ci::{CIRCLE_TOKEN, GITLAB_PRIVATE_TOKEN, Reply, StandIn};
use support::daemon::{BIN, Workspace};
use support::{eventually, github_signature, payload, wait_for};

const SECRET: &str = "op-secret";
const ADMIN_TOKEN: &str = "admin-token-for-tests";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Run the binary from the repository root; returns (code, stdout, stderr).
fn cli(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = std::process::Command::new(BIN)
        .args(args)
        .current_dir(root())
        .env_remove("HOOKBRIDGE_CONFIG")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const FIXTURES: &[(&str, &str, &str)] = &[
    ("github", "push", "github/push.json"),
    ("github", "push", "github/push-tag-deleted.json"),
    ("github", "ping", "github/ping.json"),
    ("github", "pull_request", "github/pull_request-opened.json"),
    ("github", "release", "github/release-published.json"),
    ("github", "create", "github/create-tag.json"),
    ("github", "push", "github/ghes-3.5/push-tag-created.json"),
    ("github", "ping", "github/ghes-3.5/ping.json"),
    ("gitlab", "Push Hook", "gitlab/push-hook.json"),
    ("gitlab", "Tag Push Hook", "gitlab/tag-push-hook.json"),
    ("gitlab", "Merge Request Hook", "gitlab/merge-request-hook.json"),
    ("bitbucket", "repo:push", "bitbucket-cloud/repo-push.json"),
    (
        "bitbucket",
        "repo:push",
        "bitbucket-cloud/repo-push-tag-created.json",
    ),
    ("bitbucket", "repo:push", "bitbucket-cloud/repo-push-signed.json"),
    (
        "bitbucket",
        "pullrequest:created",
        "bitbucket-cloud/pullrequest-created.json",
    ),
    (
        "bitbucket",
        "repo:refs_changed",
        "bitbucket-datacenter/repo-refs_changed.json",
    ),
    (
        "bitbucket",
        "repo:refs_changed",
        "bitbucket-datacenter/repo-refs_changed-tag-created.json",
    ),
    (
        "bitbucket",
        "diagnostics:ping",
        "bitbucket-datacenter/diagnostics-ping.json",
    ),
    ("bitbucket", "pr:opened", "bitbucket-datacenter/pr-opened.json"),
    ("gitea", "push", "gitea/push.json"),
    ("forgejo", "push", "gitea/push-docs-example.json"),
    ("gitea", "pull_request", "gitea/pull_request-opened.json"),
    ("gitea", "create", "gitea/create.json"),
    ("forgejo", "release", "gitea/release.json"),
    ("gogs", "push", "gogs/push.json"),
    ("azure", "", "azure-devops/git.push.json"),
    ("azure", "", "azure-devops/git.pullrequest.created.json"),
];

#[test]
fn explain_every_fixture() {
    let mut report = String::new();
    for (source, event, file) in FIXTURES {
        let path = format!("tests/fixtures/payloads/{file}");
        let mut args = vec![
            "explain",
            "--config",
            "config/every-sender.example.toml",
            "--source",
            source,
        ];
        if !event.is_empty() {
            args.extend(["--event", event]);
        }
        args.push(&path);
        let (code, out, err) = cli(&args, &[]);
        assert!(code == 0 || code == 3, "{file}: exit {code}: {err}");
        report.push_str(&format!("### {file} (exit {code})\n{out}\n"));
    }
    insta::assert_snapshot!(report);
    // GitHub and GitLab fixtures against the shipped example config.
    let mut report = String::new();
    for (source, event, file) in FIXTURES
        .iter()
        .filter(|(s, _, _)| *s == "github" || *s == "gitlab")
    {
        let path = format!("tests/fixtures/payloads/{file}");
        let args = [
            "explain",
            "--config",
            "config/hookbridge.example.toml",
            "--source",
            source,
            "--event",
            event,
            &path,
        ];
        let (code, out, err) = cli(&args, &[]);
        assert!(code == 0 || code == 3, "{file}: exit {code}: {err}");
        report.push_str(&format!("### {file} (exit {code})\n{out}\n"));
    }
    insta::assert_snapshot!("explain_example_config", report);
}

#[test]
fn explain_names_the_failing_filter_and_the_value_it_saw() {
    let ws = Workspace::new(
        r#"
[sources.github]
type = "github"
secrets = ["s"]
[sources.gitlab]
type = "gitlab"
secrets = ["t"]
[targets.circleci]
type = "circleci"
token = "t"

[[rules]]
name = "by-source"
source = "gitlab"
[rules.trigger]
target = "circleci"
project = "gh/a/b"
branch = "main"

[[rules]]
name = "by-event"
events = ["pull_request", "release"]
[rules.trigger]
target = "circleci"
project = "gh/a/b"
branch = "main"

[[rules]]
name = "by-action"
events = ["push"]
actions = ["opened"]
[rules.trigger]
target = "circleci"
project = "gh/a/b"
branch = "main"

[[rules]]
name = "by-branch"
branches = ["main", "release/**"]
[rules.trigger]
target = "circleci"
project = "gh/a/b"
branch = "main"

[[rules]]
name = "by-branch-ignore"
branches_ignore = ["mast*"]
[rules.trigger]
target = "circleci"
project = "gh/a/b"
branch = "main"

[[rules]]
name = "by-tag"
tags = ["v*"]
[rules.trigger]
target = "circleci"
project = "gh/a/b"
branch = "main"

[[rules]]
name = "by-path"
paths = ["src/**"]
[rules.trigger]
target = "circleci"
project = "gh/a/b"
branch = "main"

[[rules]]
name = "by-path-ignore"
paths_ignore = ["*.md"]
[rules.trigger]
target = "circleci"
project = "gh/a/b"
branch = "main"

[[rules]]
name = "by-repository"
repositories = ["acme/*"]
[rules.trigger]
target = "circleci"
project = "gh/a/b"
branch = "main"

[[rules]]
name = "by-if"
if = "event.sender == 'dependabot[bot]'"
[rules.trigger]
target = "circleci"
project = "gh/a/b"
branch = "main"

[[rules]]
name = "template-error"
[rules.trigger]
target = "circleci"
project = "gh/a/b"
branch = "{{ body.pull_request.head.ref }}"

[[rules]]
name = "matches"
events = ["push"]
branches = ["master"]
[rules.trigger]
target = "circleci"
project = "gh/a/b"
branch = "{{ event.branch }}"
parameters = { sha = "{{ event.sha }}" }
"#,
    );
    let fixture = root().join("tests/fixtures/payloads/github/push.json");
    let fixture = fixture.to_str().unwrap();
    let (code, out, err) = ws.cli(
        &["explain", "--source", "github", "--event", "push", fixture],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    insta::assert_snapshot!(out);

    let (code, out, _) = ws.cli(
        &[
            "explain", "--source", "github", "--event", "push", "--json", fixture,
        ],
        &[],
    );
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["matched"][0]["rule"], "matches");
    assert_eq!(
        v["matched"][0]["request"]["headers"][0],
        json!({"name": "Circle-Token", "value": "***"})
    );
    assert_eq!(v["skipped"].as_array().unwrap().len(), 10);
    assert_eq!(v["errors"][0]["rule"], "template-error");

    // No rule matched: exit 3.
    let example = root().join("config/hookbridge.example.toml");
    let (code, out, _) = ws.cli(
        &[
            "explain",
            "--config",
            example.to_str().unwrap(),
            "--source",
            "github",
            "--event",
            "push",
            fixture,
        ],
        &[],
    );
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("0 of 4 rules matched"), "{out}");
    // --verify checks the signature given with --header.
    let body = std::fs::read(fixture).unwrap();
    let good = format!("X-Hub-Signature-256: {}", github_signature("s", &body));
    let (code, _, _) = ws.cli(
        &[
            "explain", "--source", "github", "--event", "push", "--verify", "-H", &good, fixture,
        ],
        &[],
    );
    assert_eq!(code, 0);
    let (code, _, err) = ws.cli(
        &[
            "explain", "--source", "github", "--event", "push", "--verify", fixture,
        ],
        &[],
    );
    assert_eq!(code, 1);
    assert!(err.contains("401"), "{err}");
}

#[test]
fn test_command_passes_shipped_cases_and_reports_a_readable_diff() {
    let (code, out, err) = cli(
        &[
            "test",
            "--config",
            "config/hookbridge.example.toml",
            "config/tests/hookbridge.example",
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("5 passed, 0 failed"), "{out}");

    let (code, out, _) = cli(
        &[
            "test",
            "--config",
            "config/hookbridge.example.toml",
            "tests/fixtures/cases-broken",
        ],
        &[],
    );
    assert_eq!(code, 1);
    insta::assert_snapshot!(out);
}

fn daemon_config(ci: &str, admin_listen: &str, rule_branch: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
[admin]
listen = "{admin_listen}"
token = "env:ADMIN_TOKEN"
[store]
url = "@DB@"
[retry]
max_attempts = 3
initial_backoff = "100ms"
max_backoff = "500ms"
request_timeout = "2s"
[sources.github]
type = "github"
secrets = ["env:GITHUB_WEBHOOK_SECRET"]
[targets.circleci]
type = "circleci"
url = "{ci}"
token = "env:CIRCLECI_TOKEN"
[[rules]]
name = "on-{rule_branch}"
events = ["push"]
branches = ["{rule_branch}"]
[rules.trigger]
target = "circleci"
project = "gh/Codertocat/Hello-World"
branch = "{{{{ event.branch }}}}"
"#
    )
}

fn env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("GITHUB_WEBHOOK_SECRET", SECRET),
        ("CIRCLECI_TOKEN", CIRCLE_TOKEN),
        ("ADMIN_TOKEN", ADMIN_TOKEN),
    ]
}

async fn push(url: &str, delivery: &str) -> (u16, Value) {
    let body = payload("github/push.json");
    let resp = reqwest::Client::new()
        .post(url)
        .header("X-GitHub-Event", "push")
        .header("X-GitHub-Delivery", delivery)
        .header("X-Hub-Signature-256", github_signature(SECRET, &body))
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn api(method: &str, url: &str, token: Option<&str>) -> (u16, Value) {
    let client = reqwest::Client::new();
    let mut req = match method {
        "POST" => client.post(url),
        _ => client.get(url),
    };
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dead_letter_is_listed_shown_and_replayed() {
    let ci = StandIn::start().await;
    ci.script([Reply::Status(400)]);
    let ws = Workspace::new(&daemon_config(&ci.url, "127.0.0.1:0", "master"));
    let daemon = ws.start(&env());
    let (status, _) = push(&daemon.hook_url("github"), "dl-1").await;
    assert_eq!(status, 202);

    let dead = wait_for(Duration::from_secs(10), "one dead delivery listed", async || {
        let (code, out, err) = ws.cli(&["deliveries", "list", "--status", "dead", "--json"], &[]);
        assert_eq!(code, 0, "{err}");
        let dead: Value = serde_json::from_str(&out).unwrap();
        match dead.as_array().unwrap().len() {
            1 => Ok(dead),
            _ => Err(dead.to_string()),
        }
    })
    .await;
    assert_eq!(dead[0]["delivery"], "dl-1", "{dead}");
    assert_eq!(dead[0]["status"], "dead");
    let (code, table, _) = ws.cli(&["deliveries", "list"], &[]);
    assert_eq!(code, 0);
    assert!(table.lines().next().unwrap().starts_with("RECEIVED"), "{table}");
    assert!(table.contains("dl-1") && table.contains("dead"), "{table}");

    // The API lists and shows it, with the CI's response body.
    let (status, page) = api(
        "GET",
        &format!("{}/api/v1/deliveries?status=dead", daemon.admin),
        Some(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(page["deliveries"][0]["delivery"], "dl-1");
    let (status, detail) = api(
        "GET",
        &format!("{}/api/v1/deliveries/dl-1", daemon.admin),
        Some(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(status, 200);
    let job = &detail["jobs"][0];
    assert_eq!(job["state"], "dead");
    assert_eq!(job["history"][0]["status"], 400);
    assert!(
        job["history"][0]["response"]
            .as_str()
            .unwrap()
            .contains("scripted 400"),
        "{job}"
    );
    let (code, shown, _) = ws.cli(&["deliveries", "show", "dl-1"], &[]);
    assert_eq!(code, 0);
    assert!(
        shown.contains("scripted 400") && shown.contains("state dead"),
        "{shown}"
    );

    // The CI is fixed; a replay from the CLI delivers it.
    let (code, out, err) = ws.cli(&["deliveries", "replay", "dl-1"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("queued 1 job"), "{out}");
    eventually(Duration::from_secs(10), "replayed trigger", || {
        ci.accepted().len() == 1
    })
    .await;
    ci.assert_clean();
    let detail = wait_for(Duration::from_secs(10), "the replayed job done", async || {
        let (_, detail) = api(
            "GET",
            &format!("{}/api/v1/deliveries/dl-1", daemon.admin),
            Some(ADMIN_TOKEN),
        )
        .await;
        if detail["jobs"][0]["state"] == "done" {
            Ok(detail)
        } else {
            Err(detail.to_string())
        }
    })
    .await;
    assert!(detail["jobs"][0]["result"]["number"].is_number(), "{detail}");

    // Replay through the API too.
    let (status, queued) = api(
        "POST",
        &format!("{}/api/v1/deliveries/dl-1/replay", daemon.admin),
        Some(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(status, 202, "{queued}");
    assert_eq!(queued["queued"].as_array().unwrap().len(), 1);
    eventually(Duration::from_secs(10), "API replay", || ci.accepted().len() == 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_api_requires_the_bearer_token() {
    let ci = StandIn::start().await;
    let ws = Workspace::new(&daemon_config(&ci.url, "127.0.0.1:0", "master"));
    let daemon = ws.start(&env());
    let url = format!("{}/api/v1/deliveries", daemon.admin);
    assert_eq!(api("GET", &url, None).await.0, 401);
    assert_eq!(api("GET", &url, Some("wrong")).await.0, 401);
    assert_eq!(api("GET", &url, Some(ADMIN_TOKEN)).await.0, 200);
    assert_eq!(api("GET", &format!("{url}/nope"), Some(ADMIN_TOKEN)).await.0, 404);
    // Health endpoints stay open for probes.
    assert_eq!(
        reqwest::get(format!("{}/healthz", daemon.admin))
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reevaluation_that_queues_nothing_says_why() {
    // The push is to `master`; the only rule wants `release`.
    let ci = StandIn::start().await;
    let ws = Workspace::new(&daemon_config(&ci.url, "127.0.0.1:0", "release"));
    let daemon = ws.start(&env());
    let (status, _) = push(&daemon.hook_url("github"), "re-1").await;
    assert_eq!(status, 200, "stored, nothing matched");
    let resp = reqwest::Client::new()
        .post(format!("{}/api/v1/deliveries/re-1/replay", daemon.admin))
        .bearer_auth(ADMIN_TOKEN)
        .body(r#"{"reevaluate":true}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(answer["queued"], serde_json::json!([]), "{answer}");
    assert_eq!(answer["skipped"][0]["rule"], "on-release", "{answer}");
    assert!(
        answer["skipped"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("master"),
        "{answer}"
    );
    let (code, out, err) = ws.cli(&["deliveries", "replay", "re-1", "--reevaluate"], &env());
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("nothing queued: no rule matches delivery re-1"),
        "{out}"
    );
    assert!(out.contains("skipped on-release: "), "{out}");
    assert!(ci.requests().is_empty());
}

/// A request to the admin API with these extra headers: its status.
async fn api_with(url: &str, method: &str, headers: &[(&str, &str)]) -> u16 {
    let client = reqwest::Client::new();
    let mut req = match method {
        "POST" => client
            .post(url)
            .header("content-type", "text/plain")
            .body(r#"{"reevaluate":true}"#),
        _ => client.get(url),
    };
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_web_page_cannot_reach_the_admin_api() {
    // Without a token (loopback only): a page that rebinds its own name to
    // 127.0.0.1 sends `Host: attacker.example`; a page's form or fetch sends
    // its `Origin`. Neither reads deliveries nor replays one.
    let ci = StandIn::start().await;
    let config = daemon_config(&ci.url, "127.0.0.1:0", "master").replace("token = \"env:ADMIN_TOKEN\"\n", "");
    let ws = Workspace::new(&config);
    let daemon = ws.start(&env());
    let (status, _) = push(&daemon.hook_url("github"), "page-1").await;
    assert_eq!(status, 202);
    eventually(Duration::from_secs(10), "triggered", || ci.accepted().len() == 1).await;
    let list = format!("{}/api/v1/deliveries", daemon.admin);
    let replay = format!("{}/api/v1/deliveries/page-1/replay", daemon.admin);
    let port = daemon.admin.rsplit(':').next().unwrap().to_owned();
    let rebound = format!("attacker.example:{port}");
    let own = daemon.admin.trim_start_matches("http://").to_owned();
    assert_eq!(api_with(&list, "GET", &[]).await, 200);
    assert_eq!(
        api_with(&list, "GET", &[("host", &format!("localhost:{port}"))]).await,
        200
    );
    assert_eq!(api_with(&list, "GET", &[("host", &rebound)]).await, 403);
    assert_eq!(
        api_with(&list, "GET", &[("host", "127.0.0.1.attacker.example")]).await,
        403
    );
    assert_eq!(api_with(&replay, "POST", &[("host", &rebound)]).await, 403);
    assert_eq!(
        api_with(&replay, "POST", &[("origin", "https://attacker.example")]).await,
        403
    );
    assert_eq!(api_with(&replay, "POST", &[("origin", "null")]).await, 403);
    assert_eq!(
        api_with(&replay, "POST", &[("sec-fetch-site", "cross-site")]).await,
        403
    );
    assert_eq!(ci.accepted().len(), 1, "nothing was replayed");
    // Requests no browser sends, each addressed to no loopback name: none,
    // two Hosts, an absolute-form target.
    let raw = |request: String| {
        let admin = daemon.admin.trim_start_matches("http://").to_owned();
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut conn = tokio::net::TcpStream::connect(admin).await.unwrap();
            conn.write_all(request.as_bytes()).await.unwrap();
            let mut answer = Vec::new();
            let _ = conn.read_to_end(&mut answer).await;
            String::from_utf8_lossy(&answer)
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned()
        }
    };
    let path = "/api/v1/deliveries";
    let own_host = format!("Host: 127.0.0.1:{port}\r\nConnection: close\r\n");
    assert!(
        raw(format!("GET {path} HTTP/1.1\r\n{own_host}\r\n"))
            .await
            .contains(" 200 ")
    );
    for request in [
        format!("GET {path} HTTP/1.0\r\n\r\n"),
        format!("GET {path} HTTP/1.1\r\n{own_host}Host: attacker.example\r\n\r\n"),
        format!("GET http://attacker.example{path} HTTP/1.1\r\n{own_host}\r\n"),
    ] {
        let status = raw(request.clone()).await;
        assert!(
            !status.contains(" 200 ") && !status.is_empty(),
            "{request:?}: {status}"
        );
    }
    // The API's own origin (a same-origin page) is let through.
    assert_eq!(
        api_with(&list, "GET", &[("origin", &format!("http://{own}"))]).await,
        200
    );

    // With a token, the same cross-site checks, and the bearer scheme's
    // name in any case.
    let ws = Workspace::new(&daemon_config(&ci.url, "127.0.0.1:0", "master"));
    let daemon = ws.start(&env());
    let list = format!("{}/api/v1/deliveries", daemon.admin);
    let bearer = format!("bearer {ADMIN_TOKEN}");
    assert_eq!(api_with(&list, "GET", &[("authorization", &bearer)]).await, 200);
    assert_eq!(
        api_with(
            &list,
            "GET",
            &[("authorization", &bearer), ("origin", "https://attacker.example")]
        )
        .await,
        403
    );
}

#[test]
fn non_loopback_admin_without_token_is_refused() {
    let ws = Workspace::new(
        r#"
[admin]
listen = "0.0.0.0:0"
[store]
url = "@DB@"
[sources.github]
type = "github"
secrets = ["s"]
"#,
    );
    let (code, _, err) = ws.cli(&["serve", "--config", "hookbridge.toml"], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("token"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gitlab_trigger_tokens_every_subcommand() {
    let gl = StandIn::start().await;
    let env = [("GITLAB_TOKEN", GITLAB_PRIVATE_TOKEN)];
    let base = ["--url", gl.url.as_str(), "--project", "acme/sub/app"];
    let run = |sub: &[&str]| {
        let mut args = vec!["gitlab", "triggers"];
        args.extend_from_slice(&sub[..1]);
        args.extend_from_slice(&base);
        args.extend_from_slice(&sub[1..]);
        cli(&args, &env)
    };
    let (code, out, err) = run(&[
        "create",
        "--description",
        "hookbridge prod",
        "--expires-at",
        "2027-01-31",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("created trigger 10"), "{out}");
    assert!(out.contains("glptt-"), "the full token is printed once: {out}");
    assert!(out.contains("first 4 characters"), "{out}");

    let (code, out, _) = run(&["list", "--json"]);
    assert_eq!(code, 0);
    let list: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list[0]["id"], 10);
    assert_eq!(list[0]["description"], "hookbridge prod");
    let (code, out, _) = run(&["list"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("ID") && out.contains("hookbridge prod"), "{out}");

    let (code, out, _) = run(&["show", "10"]);
    assert_eq!(code, 0);
    assert!(out.contains("hookbridge prod"));
    let (code, out, err) = run(&["update", "10", "--description", "renamed"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("renamed"));
    let (code, out, _) = run(&["delete", "10"]);
    assert_eq!(code, 0);
    assert!(out.contains("deleted trigger 10"));
    let (code, _, err) = run(&["show", "10"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("404") && err.contains("no such project or trigger"),
        "{err}"
    );

    let (code, _, err) = cli(
        &["gitlab", "triggers", "list", "--url", &gl.url, "--project", "1"],
        &[("GITLAB_TOKEN", "wrong")],
    );
    assert_eq!(code, 1);
    assert!(err.contains("401"), "{err}");
    assert!(!err.contains("wrong"), "the token is not echoed: {err}");
    gl.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gitlab_triggers_refuses_an_answer_without_end() {
    // A "GitLab" that answers 200 and streams its body forever (a wrong
    // --url, a broken proxy): the CLI stops reading at its limit and says so,
    // instead of filling memory until the request times out.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let sent = Arc::new(AtomicUsize::new(0));
    let server = {
        let sent = sent.clone();
        tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut head = [0u8; 4096];
            let _ = conn.read(&mut head).await.unwrap();
            conn.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
            )
            .await
            .unwrap();
            let chunk = format!("10000\r\n{}\r\n", " ".repeat(0x10000));
            // Until the client hangs up (or 1 GiB, so a client that never does fails the test).
            while sent.load(Ordering::Relaxed) < 1 << 30 {
                if conn.write_all(chunk.as_bytes()).await.is_err() {
                    break;
                }
                sent.fetch_add(0x10000, Ordering::Relaxed);
            }
        })
    };
    let (code, _, err) = list_triggers_at(url).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("larger than 4 MiB"), "{err}");
    assert!(!err.contains(GITLAB_PRIVATE_TOKEN), "{err}");
    server.await.unwrap();
    assert!(sent.load(Ordering::Relaxed) < 64 << 20, "the client read on");
}

/// `gitlab triggers list` against `url`, off the runtime the stand-in runs on.
async fn list_triggers_at(url: String) -> (i32, String, String) {
    tokio::task::spawn_blocking(move || {
        cli(
            &["gitlab", "triggers", "list", "--url", &url, "--project", "1"],
            &[("GITLAB_TOKEN", GITLAB_PRIVATE_TOKEN)],
        )
    })
    .await
    .unwrap()
}

/// A GitLab (or a proxy in front of it) that echoes the request in its
/// error answer, with an escape sequence in it: the CLI prints neither the
/// PRIVATE-TOKEN nor the raw escape.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gitlab_triggers_never_prints_an_echoed_token_or_a_raw_escape() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut head = vec![0u8; 8192];
        let n = conn.read(&mut head).await.unwrap();
        let request = String::from_utf8_lossy(&head[..n]).replace("\r\n", " ");
        let body = format!("<html>502 Bad gateway \u{1b}[2J upstream saw: {request}</html>");
        let answer = format!(
            "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        conn.write_all(answer.as_bytes()).await.unwrap();
    });
    let (code, out, err) = list_triggers_at(url).await;
    server.await.unwrap();
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("502") && err.contains("upstream saw"), "{err}");
    assert!(err.contains("***"), "the echoed token is replaced: {err}");
    assert!(
        !err.contains(GITLAB_PRIVATE_TOKEN) && !out.contains(GITLAB_PRIVATE_TOKEN),
        "{err}"
    );
    assert!(
        !err.contains('\u{1b}'),
        "a raw escape reached the terminal: {err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reload_applies_valid_edits_without_dropping_requests_and_keeps_old_rules_on_errors() {
    let ci = StandIn::start().await;
    let ws = Workspace::new(&daemon_config(&ci.url, "127.0.0.1:0", "main"));
    let daemon = ws.start(&env());
    let url = daemon.hook_url("github");

    // The fixture pushes to `master`: not matched before the edit.
    let (status, summary) = push(&url, "before").await;
    assert_eq!(status, 200, "{summary}");

    // Fire requests throughout the reload: some before it, some after.
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let firing = {
        let (url, stop, answered) = (url.clone(), stop.clone(), answered.clone());
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                statuses.push(push(&url, &format!("during-{i}")).await.0);
                answered.fetch_add(1, Ordering::SeqCst);
                i += 1;
            }
            statuses
        })
    };
    let answered_after = |n: usize| {
        let answered = answered.clone();
        move || answered.load(Ordering::SeqCst) >= n
    };
    eventually(
        Duration::from_secs(10),
        "three requests before the reload",
        answered_after(3),
    )
    .await;
    ws.write_config(&daemon_config(&ci.url, "127.0.0.1:0", "master"));
    daemon.reload();
    let mut i = 0;
    let summary = wait_for(Duration::from_secs(10), "the edited rule in effect", async || {
        let (_, summary) = push(&url, &format!("after-{i}")).await;
        i += 1;
        if summary["matched"].as_array().is_some_and(|m| !m.is_empty()) {
            Ok(summary)
        } else {
            Err(summary.to_string())
        }
    })
    .await;
    assert_eq!(summary["matched"][0]["rule"], "on-master");
    let reloaded = answered.load(Ordering::SeqCst);
    eventually(
        Duration::from_secs(10),
        "three requests after the reload",
        answered_after(reloaded + 3),
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    let statuses = firing.await.unwrap();
    assert!(statuses.len() > 5, "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == 200 || *s == 202), "{statuses:?}");

    // An invalid edit (picked up by the file watcher) keeps the running rules.
    ws.write_config("[sources.github]\ntype = \"githubb\"\n");
    let metrics_url = format!("{}/metrics", daemon.admin);
    wait_for(Duration::from_secs(10), "the failed reload counted", async || {
        let text = reqwest::get(&metrics_url).await.unwrap().text().await.unwrap();
        if text.contains(r#"hookbridge_config_reloads_total{result="error"} 1"#) {
            Ok(())
        } else {
            Err(text)
        }
    })
    .await;
    let (status, summary) = push(&url, "after-invalid").await;
    assert_eq!(status, 202, "{summary}");
    assert_eq!(summary["matched"][0]["rule"], "on-master");
    assert!(daemon.logs().contains("config reload refused"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_parse_as_prometheus_text_and_move() {
    let ci = StandIn::start().await;
    let ws = Workspace::new(&daemon_config(&ci.url, "127.0.0.1:0", "master"));
    let daemon = ws.start(&env());
    let url = daemon.hook_url("github");
    for i in 0..3 {
        assert_eq!(push(&url, &format!("m-{i}")).await.0, 202);
    }
    assert_eq!(push(&url, "m-0").await.0, 200);
    let bad = reqwest::Client::new()
        .post(&url)
        .header("X-GitHub-Event", "push")
        .header("X-Hub-Signature-256", "sha256=00")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 401);
    eventually(Duration::from_secs(10), "triggers", || ci.accepted().len() == 3).await;
    // Each attempt is counted before its record: once every job is final, all are.
    ws.settled().await;

    let text = reqwest::get(format!("{}/metrics", daemon.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => 0.0,
            })
            .sum()
    };
    assert_eq!(
        value("hookbridge_webhooks_received_total", &[("outcome", "accepted")]),
        3.0
    );
    assert_eq!(
        value("hookbridge_webhooks_received_total", &[("outcome", "duplicate")]),
        1.0
    );
    assert_eq!(
        value(
            "hookbridge_webhooks_received_total",
            &[("outcome", "unauthorized")]
        ),
        1.0
    );
    assert_eq!(
        value("hookbridge_rule_matches_total", &[("rule", "on-master")]),
        3.0
    );
    assert_eq!(
        value(
            "hookbridge_trigger_attempts_total",
            &[("target", "circleci"), ("outcome", "done")]
        ),
        3.0
    );
    assert_eq!(value("hookbridge_jobs_pending", &[]), 0.0);
    assert_eq!(value("hookbridge_build_info", &[]), 1.0);
    assert!(scrape.samples.iter().any(|s| {
        s.metric
            .starts_with("hookbridge_trigger_attempt_duration_seconds")
    }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn out_of_range_since_and_status_are_a_clear_400_and_a_cli_error() {
    let ci = StandIn::start().await;
    let ws = Workspace::new(&daemon_config(&ci.url, "127.0.0.1:0", "master"));
    let daemon = ws.start(&env());
    let (status, _) = push(&daemon.hook_url("github"), "since-1").await;
    assert_eq!(status, 202);
    let url = |query: &str| format!("{}/api/v1/deliveries?{query}", daemon.admin);

    // Used to panic the handler and drop the connection.
    let (status, body) = api("GET", &url("since=500000000000y"), Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["error"],
        "`500000000000y` reaches back before 1970; use a shorter duration or an RFC 3339 time"
    );
    let (status, body) = api("GET", &url("since=99999999999999999999999d"), Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = api("GET", &url("since=yesterday"), Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("RFC 3339"), "{body}");
    let (status, body) = api("GET", &url("status=exploded"), Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["error"],
        "`exploded` is not a status; use pending, done, dead, superseded or skipped"
    );

    // The daemon is unharmed, and sane values still filter.
    let (status, page) = api("GET", &url("since=1h"), Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["deliveries"][0]["delivery"], "since-1");
    let (status, page) = api("GET", &url("since=2999-01-01T00:00:00Z"), Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["deliveries"].as_array().unwrap().len(), 0);

    // The CLI: a clear `error:` and a usage exit code, not a panic (101).
    let (code, _, err) = ws.cli(&["deliveries", "list", "--since", "500000000000y"], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains("reaches back before 1970"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let (code, out, err) = ws.cli(&["deliveries", "list", "--since", "1h", "--json"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("since-1"), "{out}");
}

/// `deliveries` on a store path that holds none (a typo in `[store] url`)
/// says so and creates nothing, instead of an empty store and "(no deliveries)".
#[test]
fn deliveries_on_a_missing_store_says_so_and_creates_nothing() {
    let ws = Workspace::new(
        r#"
[store]
url = "sqlite://./no-such-dir/hb.db"
[sources.github]
type = "github"
secrets = ["s"]
"#,
    );
    for args in [&["deliveries", "list"][..], &["deliveries", "show", "x"][..]] {
        let (code, out, err) = ws.cli(args, &[]);
        assert_eq!(code, 1, "{args:?}: {out}{err}");
        assert!(
            err.contains("no store at") && err.contains("no-such-dir"),
            "{err}"
        );
    }
    assert!(!ws.dir.path().join("no-such-dir").exists());
}

/// A rule that fails on a delivery (a template reading what the payload
/// lacks) is counted as a rule error, and the delivery's outcome says so,
/// not "unmatched": monitoring can tell a broken rule from nothing to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rule_that_fails_is_counted_apart_from_nothing_matched() {
    let ci = StandIn::start().await;
    let config = daemon_config(&ci.url, "127.0.0.1:0", "nomatch").replace(
        "branch = \"{{ event.branch }}\"",
        "branch = \"{{ event.branch }}\"\n[[rules]]\nname = \"broken\"\nevents = [\"push\"]\n[rules.trigger]\ntarget = \"circleci\"\nproject = \"gh/Codertocat/Hello-World\"\nbranch = \"{{ body.no_such_field }}\"",
    );
    let ws = Workspace::new(&config);
    let daemon = ws.start(&env());
    let (status, summary) = push(&daemon.hook_url("github"), "broken-1").await;
    assert_eq!(status, 200, "{summary}");
    assert_eq!(summary["errors"][0]["rule"], "broken", "{summary}");
    let text = reqwest::get(format!("{}/metrics", daemon.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.lines()
            .any(|l| l.starts_with("hookbridge_rule_errors_total{rule=\"broken\"} 1")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("hookbridge_webhooks_received_total")
                && l.contains("outcome=\"rule_error\"")),
        "{text}"
    );
    assert!(ci.requests().is_empty());
}
