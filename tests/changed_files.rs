//! Changed files the payload does not list, end to end: the real daemon,
//! signed webhooks over HTTP, a SQLite store, the stand-in CI (GitLab
//! triggers) and the stand-in VCS APIs, which serve a repository's history
//! through each VCS's own compare, diffstat and changes endpoints, paging
//! and capping as the real ones do (`support::vcs::files`).
//!
//! A rule with `paths` on a source with an `api` is answered `deferred`;
//! the daemon reads the files in the background, and the rule matches
//! exactly when one of them is under its path. With the API down the read
//! is retried, then the rule is skipped or matched as configured, with the
//! reason shown, and a restart in between loses nothing.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use hookbridge::store::status::Vcs;
use serde_json::{Value, json};
use support::ci::{GITLAB_TRIGGER_TOKEN, StandIn};
use support::daemon::{Daemon, Workspace};
use support::vcs::VcsStandIn;
use support::vcs::files::{FileChange, History};
use support::{github_signature, hmac_sha256_hex, payload, wait_for};

const SECRET: &str = "changed-files-webhook-secret";
const BILLING: &str = "services/billing/invoice.rs";

/// The VCS stand-ins the daemon reads from, one per source.
struct Vcss {
    github: VcsStandIn,
    gitlab: VcsStandIn,
    cloud: VcsStandIn,
    dc: VcsStandIn,
}

impl Vcss {
    async fn start() -> Vcss {
        Vcss {
            github: VcsStandIn::start(Vcs::Github).await,
            gitlab: VcsStandIn::start(Vcs::Gitlab).await,
            cloud: VcsStandIn::start(Vcs::BitbucketCloud).await,
            dc: VcsStandIn::start(Vcs::BitbucketDatacenter).await,
        }
    }

    fn all(&self) -> [&VcsStandIn; 4] {
        [&self.github, &self.gitlab, &self.cloud, &self.dc]
    }

    fn assert_clean(&self) {
        for vcs in self.all() {
            assert!(
                vcs.problems().is_empty(),
                "{:?}: {:#?}",
                vcs.vcs(),
                vcs.problems()
            );
        }
    }
}

/// Sources with their `api` at the stand-ins; two rules with `paths` that
/// trigger two GitLab projects; `extra` is added to the `billing` rule.
fn config(v: &Vcss, ci: &StandIn, extra: &str) -> String {
    let source = |name: &str, kind: &str, vcs: &VcsStandIn| {
        format!(
            r#"
[sources.{name}]
type = "{kind}"
secrets = ["env:WEBHOOK_SECRET"]
[sources.{name}.api]
url = "{url}"
token = "env:{var}_TOKEN"
"#,
            url = vcs.url(),
            var = name.to_uppercase().replace('-', "_"),
        )
    };
    let rule = |name: &str, path: &str, extra: &str| {
        format!(
            r#"
[[rules]]
name = "{name}"
events = ["push", "pull_request"]
paths = ["{path}"]
{extra}
[rules.trigger]
target = "gitlab"
project = "acme/{name}"
ref = "main"
"#
        )
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
max_attempts = 4
initial_backoff = "200ms"
max_backoff = "400ms"
request_timeout = "3s"
{github}{gitlab}{cloud}{dc}
[targets.gitlab]
type = "gitlab"
url = "{ci}"
token = "env:GITLAB_TRIGGER_TOKEN"
{billing}{web}"#,
        github = source("github", "github", &v.github),
        gitlab = source("gitlab", "gitlab", &v.gitlab),
        cloud = source("bitbucket", "bitbucket", &v.cloud),
        dc = source("bitbucket-dc", "bitbucket", &v.dc),
        ci = ci.url,
        billing = rule("billing", "services/billing/**", extra),
        web = rule("web", "web/**", ""),
    )
}

fn env(v: &Vcss) -> Vec<(&'static str, String)> {
    vec![
        ("WEBHOOK_SECRET", SECRET.into()),
        ("GITLAB_TRIGGER_TOKEN", GITLAB_TRIGGER_TOKEN.into()),
        ("GITHUB_TOKEN", v.github.token().into()),
        ("GITLAB_TOKEN", v.gitlab.token().into()),
        ("BITBUCKET_TOKEN", v.cloud.token().into()),
        ("BITBUCKET_DC_TOKEN", v.dc.token().into()),
    ]
}

fn start(ws: &Workspace, v: &Vcss) -> Daemon {
    let env = env(v);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    ws.start(&env)
}

/// `n` commits of 100 files each under `services/s<i>/`; the commit `with`
/// (if any) also changes [`BILLING`].
fn monorepo(history: &mut History, n: usize, with: Option<usize>) -> String {
    history.commits(n, |i| {
        let mut files: Vec<FileChange> = (0..100)
            .map(|j| FileChange::modified(&format!("services/s{i}/f{j}.rs")))
            .collect();
        if with == Some(i) {
            files.push(FileChange::modified(BILLING));
        }
        files
    })
}

/// Post `body` to `source` with `headers`; the status and the summary.
async fn post(daemon: &Daemon, source: &str, headers: &[(&str, String)], body: &Value) -> (u16, Value) {
    let body = serde_json::to_vec(body).unwrap();
    let mut request = reqwest::Client::new()
        .post(daemon.hook_url(source))
        .header("Content-Type", "application/json");
    for (k, v) in headers {
        request = request.header(*k, v);
    }
    let hex = hmac_sha256_hex(SECRET.as_bytes(), &body);
    let request = match source {
        "github" => request.header("X-Hub-Signature-256", github_signature(SECRET, &body)),
        "gitlab" => request.header("X-Gitlab-Token", SECRET),
        _ => request.header("X-Hub-Signature", format!("sha256={hex}")),
    };
    let resp = request.body(body).send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

/// GitHub's example push, of `before..after` on `main` of `acme/monorepo`,
/// listing only three files.
fn github_push(before: &str, after: &str) -> Value {
    let mut body: Value = serde_json::from_slice(&payload("github/push.json")).unwrap();
    body["ref"] = json!("refs/heads/main");
    body["before"] = json!(before);
    body["after"] = json!(after);
    body["created"] = json!(false);
    body["repository"]["full_name"] = json!("acme/monorepo");
    let listed = json!(["services/s0/f1.rs", "services/s0/f2.rs", "services/s0/f3.rs"]);
    for commit in body["commits"].as_array_mut().unwrap() {
        commit["added"] = json!([]);
        commit["removed"] = json!([]);
        commit["modified"] = listed.clone();
    }
    body["head_commit"]["modified"] = listed;
    body
}

/// The admin API's view of delivery `id` of `source`.
async fn delivery(daemon: &Daemon, source: &str, id: &str) -> Value {
    let url = format!("{}/api/v1/deliveries/{id}?source={source}", daemon.admin);
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

/// Wait until every deferral of the delivery is done; the delivery then.
async fn settled(daemon: &Daemon, source: &str, id: &str) -> Value {
    wait_for(Duration::from_secs(30), "every deferral settled", async || {
        let d = delivery(daemon, source, id).await;
        let done = d["deferrals"]
            .as_array()
            .is_some_and(|a| !a.is_empty() && a.iter().all(|f| f["state"] == "done"));
        if done { Ok(d) } else { Err(format!("{d:#}")) }
    })
    .await
}

/// The verdict of `rule` in a stored summary: `matched`, `skipped`, `errors` or `deferred`.
fn verdict<'a>(summary: &'a Value, rule: &str) -> (&'static str, &'a Value) {
    for key in ["matched", "skipped", "errors", "deferred"] {
        if let Some(v) = summary[key]
            .as_array()
            .and_then(|a| a.iter().find(|v| v["rule"] == rule))
        {
            return (key, v);
        }
    }
    panic!("no verdict for {rule} in {summary:#}");
}

/// The GitLab projects triggered, in order.
fn triggered(ci: &StandIn) -> Vec<String> {
    ci.accepted()
        .iter()
        .map(|r| {
            if r.path.contains("billing") {
                "billing".to_owned()
            } else {
                r.path.clone()
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_github_push_listing_3_of_1200_files_matches_on_the_files_read_from_the_api() {
    let v = Vcss::start().await;
    let ci = StandIn::start().await;
    let mut h = History::new("acme/monorepo", "main");
    let base = h.commit(vec![FileChange::modified("README.md")]);
    // 12 commits, 1,200 files: beyond the 300 a GitHub comparison lists.
    let with_billing = monorepo(&mut h, 12, Some(7));
    // Then 12 more that do not touch billing.
    let without = monorepo(&mut h, 12, None);
    h.branch("main", &without);
    v.github.set_history(h);
    let ws = Workspace::new(&config(&v, &ci, ""));
    let daemon = start(&ws, &v);

    let (status, summary) = post(
        &daemon,
        "github",
        &[
            ("X-GitHub-Event", "push".into()),
            ("X-GitHub-Delivery", "push-with-billing".into()),
        ],
        &github_push(&base, &with_billing),
    )
    .await;
    assert_eq!(status, 202, "{summary:#}");
    let deferred = summary["deferred"].as_array().unwrap();
    assert_eq!(deferred.len(), 2, "{summary:#}");
    assert!(
        deferred[0]["reason"]
            .as_str()
            .unwrap()
            .contains("reading them from the VCS"),
        "{summary:#}"
    );
    assert!(summary["matched"].as_array().unwrap().is_empty());

    let d = settled(&daemon, "github", "push-with-billing").await;
    let (key, _) = verdict(&d["summary"], "billing");
    assert_eq!(key, "matched", "{d:#}");
    let (key, skip) = verdict(&d["summary"], "web");
    assert_eq!(key, "skipped");
    assert!(
        skip["reason"].as_str().unwrap().contains("match none of"),
        "{skip:#}"
    );
    let files = d["deferrals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["rule"] == "billing")
        .unwrap()["files"]
        .clone();
    // 1,200 files of the 12 commits, and billing's.
    assert_eq!(files["count"], 1201, "{d:#}");
    assert!(
        files["from"].as_str().unwrap().contains("GitHub compare"),
        "{files:#}"
    );
    ws.settled().await;
    assert_eq!(triggered(&ci), ["billing"]);

    // The second range does not touch billing: nothing is triggered.
    let (status, _) = post(
        &daemon,
        "github",
        &[
            ("X-GitHub-Event", "push".into()),
            ("X-GitHub-Delivery", "push-without-billing".into()),
        ],
        &github_push(&with_billing, &without),
    )
    .await;
    assert_eq!(status, 202);
    let d = settled(&daemon, "github", "push-without-billing").await;
    assert_eq!(verdict(&d["summary"], "billing").0, "skipped", "{d:#}");
    assert_eq!(d["status"], "skipped", "{d:#}");
    assert_eq!(triggered(&ci), ["billing"]);

    // The same push delivered again (another id) is answered from the cache.
    let (status, _) = post(
        &daemon,
        "github",
        &[
            ("X-GitHub-Event", "push".into()),
            ("X-GitHub-Delivery", "push-without-billing-again".into()),
        ],
        &github_push(&with_billing, &without),
    )
    .await;
    assert_eq!(status, 202);
    let d = settled(&daemon, "github", "push-without-billing-again").await;
    assert_eq!(verdict(&d["summary"], "billing").0, "skipped", "{d:#}");
    // The two rules of a delivery read the comparison once; the redelivery not at all.
    let metrics = daemon.metrics().await;
    assert!(
        metrics.contains(r#"hookbridge_changed_files_reads_total{vcs="github",outcome="read"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"hookbridge_changed_files_reads_total{vcs="github",outcome="cached"} 1"#),
        "{metrics}"
    );
    // `deliveries show` says which files were read, from where.
    let (code, out, err) = ws.cli(&["deliveries", "show", "push-with-billing"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("files for billing: done (matched): 1201 read from GitHub compare"),
        "{out}"
    );
    // So does the dashboard's delivery page.
    let page = reqwest::get(format!(
        "{}/ui/deliveries/{}",
        daemon.admin,
        d["id"].as_str().unwrap()
    ))
    .await
    .unwrap();
    assert_eq!(page.status().as_u16(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("Changed files read from the VCS"), "{html}");
    assert!(html.contains("from GitHub compare"), "{html}");
    v.assert_clean();
    ci.assert_clean();
    // No token in the logs.
    let logs = daemon.logs();
    for vcs in v.all() {
        assert!(!logs.contains(vcs.token()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gitlab_push_of_25_commits_is_decided_through_the_compare_api() {
    let v = Vcss::start().await;
    let ci = StandIn::start().await;
    let mut h = History::new("acme/monorepo", "main");
    let base = h.commit(vec![FileChange::modified("README.md")]);
    // Billing is changed by the 3rd commit, which the payload (the last 20) leaves out.
    let after = h.commits(25, |i| {
        let path = if i == 2 {
            BILLING.to_owned()
        } else {
            format!("services/s{i}/main.rs")
        };
        vec![FileChange::modified(&path)]
    });
    h.branch("main", &after);
    v.gitlab.set_history(h);
    let ws = Workspace::new(&config(&v, &ci, ""));
    let daemon = start(&ws, &v);

    let mut body: Value = serde_json::from_slice(&payload("gitlab/push-hook.json")).unwrap();
    body["ref"] = json!("refs/heads/main");
    body["before"] = json!(base);
    body["after"] = json!(after);
    body["checkout_sha"] = json!(after);
    body["project"]["path_with_namespace"] = json!("acme/monorepo");
    body["total_commits_count"] = json!(25);
    let commit = body["commits"][0].clone();
    body["commits"] = json!(
        (0..20)
            .map(|i| {
                let mut c = commit.clone();
                c["added"] = json!([]);
                c["removed"] = json!([]);
                c["modified"] = json!([format!("services/s{}/main.rs", i + 5)]);
                c
            })
            .collect::<Vec<_>>()
    );
    let (status, summary) = post(
        &daemon,
        "gitlab",
        &[
            ("X-Gitlab-Event", "Push Hook".into()),
            ("X-Gitlab-Event-UUID", "gitlab-push-25".into()),
        ],
        &body,
    )
    .await;
    assert_eq!(status, 202, "{summary:#}");
    assert!(
        summary["deferred"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("20 of the push's 25 commits"),
        "{summary:#}"
    );
    let d = settled(&daemon, "gitlab", "gitlab-push-25").await;
    assert_eq!(verdict(&d["summary"], "billing").0, "matched", "{d:#}");
    assert_eq!(verdict(&d["summary"], "web").0, "skipped", "{d:#}");
    let files = &d["deferrals"][0]["files"];
    assert_eq!(files["count"], 25, "{d:#}");
    assert!(files["from"].as_str().unwrap().contains("GitLab"), "{files:#}");
    ws.settled().await;
    assert_eq!(triggered(&ci), ["billing"]);
    v.assert_clean();
    ci.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bitbucket_pushes_and_a_github_pull_request_are_decided_from_the_api() {
    let v = Vcss::start().await;
    let ci = StandIn::start().await;

    // Bitbucket Cloud: a push touching billing (and a rename out of web/).
    let mut cloud = History::new("amuniz/test-repos", "main");
    let cloud_base = cloud.commit(vec![FileChange::modified("README.md")]);
    let cloud_after = cloud.commits(3, |i| match i {
        1 => vec![FileChange::renamed("web/old.js", "lib/new.js")],
        2 => vec![FileChange::added(BILLING)],
        _ => vec![FileChange::modified("docs/x.md")],
    });
    cloud.branch("main", &cloud_after);
    v.cloud.set_history(cloud);

    // Bitbucket Data Center: a push that does not touch billing.
    let mut dc = History::new("AMUNIZ/test-repos", "main");
    let dc_base = dc.commit(vec![FileChange::modified("README.md")]);
    let dc_after = dc.commits(2, |i| vec![FileChange::modified(&format!("docs/{i}.md"))]);
    dc.branch("main", &dc_after);
    v.dc.set_history(dc);

    // GitHub: pull request #2 changes billing.
    let mut gh = History::new("Codertocat/Hello-World", "main");
    let gh_base = gh.commit(vec![FileChange::modified("README.md")]);
    gh.branch("main", &gh_base);
    let gh_head = gh.commits(2, |i| {
        if i == 0 {
            vec![FileChange::modified(BILLING)]
        } else {
            vec![FileChange::modified("services/s1/x.rs")]
        }
    });
    gh.branch("changes", &gh_head);
    gh.request(2, &gh_base, &gh_head, "changes", "main");
    v.github.set_history(gh);

    let ws = Workspace::new(&config(&v, &ci, ""));
    let daemon = start(&ws, &v);

    let mut push: Value = serde_json::from_slice(&payload("bitbucket-cloud/repo-push.json")).unwrap();
    let change = &mut push["push"]["changes"][0];
    change["old"]["target"]["hash"] = json!(cloud_base);
    change["new"]["target"]["hash"] = json!(cloud_after);
    let (status, summary) = post(
        &daemon,
        "bitbucket",
        &[
            ("X-Event-Key", "repo:push".into()),
            ("X-Request-UUID", "cloud-push-1".into()),
        ],
        &push,
    )
    .await;
    assert_eq!(status, 202, "{summary:#}");

    let mut refs: Value =
        serde_json::from_slice(&payload("bitbucket-datacenter/repo-refs_changed.json")).unwrap();
    refs["changes"][0]["fromHash"] = json!(dc_base);
    refs["changes"][0]["toHash"] = json!(dc_after);
    let (status, summary) = post(
        &daemon,
        "bitbucket-dc",
        &[
            ("X-Event-Key", "repo:refs_changed".into()),
            ("X-Request-Id", "dc-push-1".into()),
        ],
        &refs,
    )
    .await;
    assert_eq!(status, 202, "{summary:#}");

    let mut pr: Value = serde_json::from_slice(&payload("github/pull_request-opened.json")).unwrap();
    pr["pull_request"]["head"]["sha"] = json!(gh_head);
    let (status, summary) = post(
        &daemon,
        "github",
        &[
            ("X-GitHub-Event", "pull_request".into()),
            ("X-GitHub-Delivery", "pr-2".into()),
        ],
        &pr,
    )
    .await;
    assert_eq!(status, 202, "{summary:#}");

    let d = settled(&daemon, "bitbucket", "cloud-push-1").await;
    assert_eq!(verdict(&d["summary"], "billing").0, "matched", "{d:#}");
    // The rename counts its old path: web/ was changed.
    assert_eq!(verdict(&d["summary"], "web").0, "matched", "{d:#}");
    assert!(
        d["deferrals"][0]["files"]["from"]
            .as_str()
            .unwrap()
            .contains("Bitbucket Cloud")
    );
    let d = settled(&daemon, "bitbucket-dc", "dc-push-1").await;
    assert_eq!(verdict(&d["summary"], "billing").0, "skipped", "{d:#}");
    assert!(
        d["deferrals"][0]["files"]["from"]
            .as_str()
            .unwrap()
            .contains("Bitbucket Data Center")
    );
    let d = settled(&daemon, "github", "pr-2").await;
    assert_eq!(verdict(&d["summary"], "billing").0, "matched", "{d:#}");
    assert_eq!(verdict(&d["summary"], "web").0, "skipped", "{d:#}");
    assert_eq!(d["deferrals"][0]["files"]["count"], 2, "{d:#}");
    ws.settled().await;
    let mut projects = triggered(&ci);
    projects.sort();
    assert_eq!(
        projects.iter().filter(|p| *p == "billing").count(),
        2,
        "{projects:?}"
    );
    v.assert_clean();
    ci.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_api_down_the_read_is_retried_then_skipped_or_matched_and_a_restart_loses_nothing() {
    let v = Vcss::start().await;
    let ci = StandIn::start().await;
    let mut h = History::new("acme/monorepo", "main");
    let base = h.commit(vec![FileChange::modified("README.md")]);
    let after = monorepo(&mut h, 2, Some(0));
    h.branch("main", &after);
    v.github.set_history(h);
    // `web` skips when the files cannot be read (the default); `billing` matches.
    let ws = Workspace::new(&config(&v, &ci, r#"paths_unknown_on_error = "match""#));
    v.github.fail_reads(503, 1000);
    let daemon = start(&ws, &v);

    // A payload without its commits: nothing to fall back on.
    let mut push = github_push(&base, &after);
    push.as_object_mut().unwrap().remove("commits");
    let (status, summary) = post(
        &daemon,
        "github",
        &[
            ("X-GitHub-Event", "push".into()),
            ("X-GitHub-Delivery", "push-api-down".into()),
        ],
        &push,
    )
    .await;
    // Answered at once, the API down or not.
    assert_eq!(status, 202, "{summary:#}");
    assert_eq!(summary["deferred"].as_array().unwrap().len(), 2);

    // A read failed and is to be tried again; then the daemon dies.
    wait_for(Duration::from_secs(20), "a failed read recorded", async || {
        let d = delivery(&daemon, "github", "push-api-down").await;
        let retried = d["deferrals"].as_array().is_some_and(|a| {
            a.iter()
                .any(|f| f["last_error"].as_str().is_some_and(|e| e.contains("503")))
        });
        if retried { Ok(()) } else { Err(format!("{d:#}")) }
    })
    .await;
    assert_eq!(d_status(&daemon).await, "pending");
    daemon.kill();

    let daemon = start(&ws, &v);
    let d = settled(&daemon, "github", "push-api-down").await;
    let (key, skip) = verdict(&d["summary"], "web");
    assert_eq!(key, "skipped", "{d:#}");
    let reason = skip["reason"].as_str().unwrap();
    assert!(
        reason.contains("could not be read") && reason.contains("HTTP 503"),
        "{reason}"
    );
    assert_eq!(verdict(&d["summary"], "billing").0, "matched", "{d:#}");
    for f in d["deferrals"].as_array().unwrap() {
        assert!(f["files"].is_null(), "{f:#}");
        assert!(f["last_error"].as_str().unwrap().contains("503"), "{f:#}");
        assert!(f["attempts"].as_u64().unwrap() >= 4, "{f:#}");
    }
    ws.settled().await;
    assert_eq!(triggered(&ci), ["billing"]);
    let logs = daemon.logs();
    assert!(!logs.contains(v.github.token()));
    v.assert_clean();
}

async fn d_status(daemon: &Daemon) -> String {
    delivery(daemon, "github", "push-api-down").await["status"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_shows_deferred_offline_and_reads_the_files_with_fetch() {
    let v = Vcss::start().await;
    let ci = StandIn::start().await;
    let mut h = History::new("acme/monorepo", "main");
    let base = h.commit(vec![FileChange::modified("README.md")]);
    let after = monorepo(&mut h, 3, Some(1));
    h.branch("main", &after);
    v.github.set_history(h);
    let ws = Workspace::new(&config(&v, &ci, ""));
    let file = ws.dir.path().join("push.json");
    std::fs::write(&file, serde_json::to_vec(&github_push(&base, &after)).unwrap()).unwrap();
    let file = file.to_str().unwrap();
    let env = env(&v);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();

    let (code, out, err) = ws.cli(&["explain", "--source", "github", "--event", "push", file], &env);
    assert_eq!(code, 3, "{out}{err}");
    assert!(out.contains("DEFER  billing: paths:"), "{out}");
    assert!(v.github.reads().is_empty(), "explain read without --fetch");

    let (code, out, err) = ws.cli(
        &[
            "explain", "--source", "github", "--event", "push", "--fetch", file,
        ],
        &env,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("MATCH  billing -> target gitlab"), "{out}");
    assert!(out.contains("SKIP   web: paths:"), "{out}");
    assert!(
        out.contains("files: 301 changed files read from GitHub compare"),
        "{out}"
    );
    assert!(!v.github.reads().is_empty());
    v.assert_clean();
}
