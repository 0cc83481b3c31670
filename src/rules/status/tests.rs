//! `[rules.status]` rendered per match: the spec a job stores, and why a
//! match reports nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use crate::config::{Config, LoadMode};
use crate::event::{Event, Provider};
use crate::rules::Matched;
use crate::store::status::{StatusSpec, Vcs};

const SHA: &str = "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c";

fn config(text: &str) -> Config {
    match crate::config::parse(Path::new("status.toml"), text, LoadMode::Check) {
        Ok(loaded) => loaded.config,
        Err(report) => panic!("{report}"),
    }
}

/// A GitHub source with an API, a Bitbucket one, a Gitea one without, and
/// one rule over all of them that reports its job.
fn base(status: &str) -> Config {
    config(&format!(
        r#"
[sources.github]
type = "github"
secrets = ["s"]
[sources.github.api]
token = "t"

[sources.bb]
type = "bitbucket"
secrets = ["s"]
[sources.bb.api]
url = "https://bitbucket.example.com/"
token = "t"

[sources.gitea]
type = "gitea"
secrets = ["s"]

[targets.gitlab]
type = "gitlab"
url = "https://gitlab.example.com"
token = "t"
api_token = "a"

[[rules]]
name = "ci"
[rules.status]
{status}
[rules.trigger]
target = "gitlab"
project = "acme/app"
ref = "main"
"#
    ))
}

fn push(source: &str, provider: Provider, name: &str) -> Event {
    let mut e = Event::new(source, provider, name, "push", "d-1".into());
    e.repository = Some("acme/app".into());
    e.set_ref("refs/heads/main");
    e.sha = Some(SHA.into());
    e
}

fn matched(config: &Config, event: &Event) -> Matched {
    let evaluation = config.rules.evaluate(event, None, &BTreeMap::new());
    assert!(evaluation.errors.is_empty(), "{:?}", evaluation.errors);
    evaluation.matched.into_iter().next().expect("the rule matches")
}

#[test]
fn a_github_push_reports_on_its_commit_with_the_defaults() {
    let config = base("");
    let m = matched(&config, &push("github", Provider::Github, "push"));
    assert_eq!(
        m.status,
        Some(StatusSpec {
            source: "github".into(),
            vcs: Vcs::Github,
            repository: "acme/app".into(),
            sha: SHA.into(),
            git_ref: Some("refs/heads/main".into()),
            context: "hookbridge/ci".into(),
            follow: true,
            poll: None,
            poll_timeout: Duration::from_secs(12 * 3600),
        })
    );
    assert_eq!(m.status_unreported, None);
    let api = config.source_api("github").unwrap();
    assert_eq!(api.url, "https://api.github.com");
    assert_eq!(format!("{api:?}").matches("***").count(), 1, "{api:?}");
}

#[test]
fn the_context_is_a_template_over_the_rule_and_the_event() {
    let config = base(
        "context = \"ci/{{ rule }}/{{ event.branch }}\"\nfollow = false\npoll = \"1m\"\npoll_timeout = \"2h\"",
    );
    let spec = matched(&config, &push("github", Provider::Github, "push"))
        .status
        .unwrap();
    assert_eq!(spec.context, "ci/ci/main");
    assert!(!spec.follow);
    assert_eq!(spec.poll, Some(Duration::from_secs(60)));
    assert_eq!(spec.poll_timeout, Duration::from_secs(7200));
}

#[test]
fn bitbucket_data_center_and_cloud_are_told_apart_by_the_event() {
    let config = base("");
    let dc = matched(&config, &push("bb", Provider::Bitbucket, "repo:refs_changed"));
    assert_eq!(dc.status.unwrap().vcs, Vcs::BitbucketDatacenter);
    let dc_pr = matched(&config, &push("bb", Provider::Bitbucket, "pr:opened"));
    assert_eq!(dc_pr.status.unwrap().vcs, Vcs::BitbucketDatacenter);
    let cloud = matched(&config, &push("bb", Provider::Bitbucket, "repo:push"));
    assert_eq!(cloud.status.unwrap().vcs, Vcs::BitbucketCloud);
    let cloud_pr = matched(&config, &push("bb", Provider::Bitbucket, "pullrequest:created"));
    assert_eq!(cloud_pr.status.unwrap().vcs, Vcs::BitbucketCloud);
    assert_eq!(
        config.source_api("bb").unwrap().url,
        "https://bitbucket.example.com"
    );
}

#[test]
fn a_match_without_a_commit_or_an_api_still_runs_and_says_why() {
    let config = base("");
    let mut e = push("github", Provider::Github, "release");
    e.sha = None;
    let m = matched(&config, &e);
    assert_eq!(m.status, None);
    assert_eq!(
        m.status_unreported.as_deref(),
        Some("the event names no commit (`event.sha` is null)")
    );

    let mut e = push("github", Provider::Github, "push");
    e.repository = None;
    let m = matched(&config, &e);
    assert_eq!(
        m.status_unreported.as_deref(),
        Some("the event names no repository")
    );

    let m = matched(&config, &push("gitea", Provider::Gitea, "push"));
    assert_eq!(m.status, None);
    assert_eq!(
        m.status_unreported.as_deref(),
        Some("source `gitea` has no `[sources.gitea.api]`")
    );
    assert_eq!(config.source_api("gitea").map(|a| a.url.as_str()), None);
}

#[test]
fn a_context_that_renders_nothing_fails_the_rule() {
    let config = base("context = \"{{ event.tag or '' }}\"");
    let e = push("github", Provider::Github, "push");
    let evaluation = config.rules.evaluate(&e, None, &BTreeMap::new());
    assert!(evaluation.matched.is_empty());
    assert!(
        evaluation.errors[0].error.contains("rendered an empty string"),
        "{:?}",
        evaluation.errors
    );
}

#[test]
fn rules_without_status_report_nothing() {
    let config = config(
        r#"
[sources.github]
type = "github"
secrets = ["s"]
[targets.gitlab]
type = "gitlab"
url = "https://gitlab.example.com"
token = "t"
[[rules]]
name = "ci"
[rules.trigger]
target = "gitlab"
project = "acme/app"
ref = "main"
"#,
    );
    let m = matched(&config, &push("github", Provider::Github, "push"));
    assert_eq!((m.status, m.status_unreported), (None, None));
}

#[test]
fn the_job_stores_the_spec_of_its_match() {
    let config = base("");
    let e = push("github", Provider::Github, "push");
    let evaluation = config.rules.evaluate(&e, None, &BTreeMap::new());
    let spec = evaluation.matched[0].status.clone();
    assert!(spec.is_some());
    let (_, jobs) = crate::intake::summary_and_jobs(&e, &evaluation);
    assert_eq!(jobs[0].status, spec);
}

#[test]
fn explain_shows_the_status_each_match_reports_or_why_not() {
    let config = base("");
    let line = |e: &Event| {
        let evaluation = config.rules.evaluate(e, None, &BTreeMap::new());
        crate::explain::render(&config, &evaluation)[0].status.clone()
    };
    assert_eq!(
        line(&push("github", Provider::Github, "push")).as_deref(),
        Some("hookbridge/ci on acme/app@0d1a26e")
    );
    assert_eq!(
        line(&push("gitea", Provider::Gitea, "push")).as_deref(),
        Some("not reported: source `gitea` has no `[sources.gitea.api]`")
    );
    let explanation = crate::explain::Explanation {
        event: push("github", Provider::Github, "push"),
        matched: crate::explain::render(
            &config,
            &config
                .rules
                .evaluate(&push("github", Provider::Github, "push"), None, &BTreeMap::new()),
        ),
        skipped: Vec::new(),
        errors: Vec::new(),
        deferred: Vec::new(),
        fetched: None,
    };
    let human = crate::cli::explain::human(&explanation, 1);
    assert!(
        human.contains("MATCH  ci -> target gitlab\n       status: hookbridge/ci on acme/app@0d1a26e\n"),
        "{human}"
    );
}
