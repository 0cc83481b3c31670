//! Which rules wait for the changed files, which are decided at once, and
//! what they decide once the files are read or cannot be.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;

use crate::config::{Config, LoadMode};
use crate::event::{Event, Provider, kind};
use crate::rules::{Evaluation, Files};

const SHA: &str = "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c";
const BEFORE: &str = "95790bf891e76fee5e1747ab589903a6a1f80f22";

/// `github` and `gitlab` sources with an API, `gitea` without; rules over
/// all of them with `paths`, each with the `paths_unknown` keys given.
fn config(keys: &[(&str, &str)]) -> Config {
    let mut text = r#"
[sources.github]
type = "github"
secrets = ["s"]
[sources.github.api]
token = "t"

[sources.gitlab]
type = "gitlab"
secrets = ["s"]
[sources.gitlab.api]
token = "t"

[sources.gitea]
type = "gitea"
secrets = ["s"]

[targets.gitlab]
type = "gitlab"
url = "https://gitlab.example.com"
token = "t"
"#
    .to_owned();
    for (name, extra) in keys {
        text.push_str(&format!(
            "\n[[rules]]\nname = \"{name}\"\npaths = [\"services/billing/**\"]\n{extra}\n[rules.trigger]\ntarget = \"gitlab\"\nproject = \"acme/app\"\nref = \"main\"\n"
        ));
    }
    match crate::config::parse(Path::new("paths.toml"), &text, LoadMode::Check) {
        Ok(loaded) => loaded.config,
        Err(report) => panic!("{report}"),
    }
}

fn push(source: &str, provider: Provider, paths: Option<Vec<&str>>) -> Event {
    let mut e = Event::new(source, provider, "push", kind::PUSH, "d1".into());
    e.repository = Some("acme/app".into());
    e.git_ref = Some("refs/heads/main".into());
    e.branch = Some("main".into());
    e.sha = Some(SHA.into());
    e.before = Some(BEFORE.into());
    match paths {
        Some(p) => e.paths = Some(p.into_iter().map(str::to_owned).collect()),
        None => e.paths_unknown = Some("the payload lists 20 of the push's 25 commits".into()),
    }
    e
}

fn evaluate(config: &Config, event: &Event) -> Evaluation {
    config.rules.evaluate(event, None, &BTreeMap::new())
}

fn rules<T>(list: &[T], name: impl Fn(&T) -> &str) -> Vec<String> {
    list.iter().map(|x| name(x).to_owned()).collect()
}

#[test]
fn fetch_is_the_default_where_the_source_has_an_api_and_skip_elsewhere() {
    let c = config(&[
        ("default", ""),
        ("skip", "paths_unknown = \"skip\""),
        ("match", "paths_unknown = \"match\""),
    ]);
    let e = evaluate(&c, &push("gitlab", Provider::Gitlab, None));
    assert_eq!(rules(&e.deferred, |d| &d.rule), ["default"]);
    assert!(
        e.deferred[0].reason.contains("reading them from the VCS"),
        "{:?}",
        e.deferred
    );
    assert!(
        e.deferred[0].reason.contains("20 of the push's 25 commits"),
        "{:?}",
        e.deferred
    );
    assert_eq!(rules(&e.skipped, |s| &s.rule), ["skip"]);
    assert_eq!(rules(&e.matched, |m| &m.rule), ["match"]);

    // No api: the default skips, as it did before.
    let e = evaluate(&c, &push("gitea", Provider::Gitea, None));
    assert!(e.deferred.is_empty());
    assert_eq!(rules(&e.skipped, |s| &s.rule), ["default", "skip"]);
    assert!(
        e.skipped[0].reason.contains("set paths_unknown = \"match\""),
        "{:?}",
        e.skipped
    );
}

#[test]
fn a_complete_list_decides_at_once_except_a_github_push_which_is_read() {
    let c = config(&[("default", ""), ("skip", "paths_unknown = \"skip\"")]);
    let listed = Some(vec!["services/billing/a.rs"]);
    let e = evaluate(&c, &push("gitlab", Provider::Gitlab, listed.clone()));
    assert_eq!(rules(&e.matched, |m| &m.rule), ["default", "skip"]);
    // GitHub's payload cannot show it is complete: with an api it is read.
    let e = evaluate(&c, &push("github", Provider::Github, listed));
    assert_eq!(rules(&e.deferred, |d| &d.rule), ["default"]);
    assert!(
        e.deferred[0].reason.contains("GitHub push payload"),
        "{:?}",
        e.deferred
    );
    // `skip` (and `match`) trust the payload.
    assert_eq!(rules(&e.matched, |m| &m.rule), ["skip"]);
}

#[test]
fn what_cannot_be_read_is_not_deferred() {
    let c = config(&[("default", "")]);
    // A deleted branch changes no files.
    let mut deleted = push("gitlab", Provider::Gitlab, None);
    deleted.deleted = true;
    deleted.sha = Some("0".repeat(40));
    let e = evaluate(&c, &deleted);
    assert!(e.deferred.is_empty());
    assert!(
        e.skipped[0].reason.contains("deletes branch \"main\""),
        "{:?}",
        e.skipped
    );
    // No repository to read from.
    let mut anonymous = push("gitlab", Provider::Gitlab, None);
    anonymous.repository = None;
    let e = evaluate(&c, &anonymous);
    assert!(e.deferred.is_empty());
    assert!(
        e.skipped[0].reason.contains("names no repository"),
        "{:?}",
        e.skipped
    );
    // Tag pushes are not path-filtered at all.
    let mut tag = push("gitlab", Provider::Gitlab, None);
    tag.branch = None;
    tag.tag = Some("v1".into());
    assert_eq!(evaluate(&c, &tag).matched.len(), 1);
}

#[test]
fn a_deferred_rule_is_decided_on_the_files_read_or_by_paths_unknown_on_error() {
    let c = config(&[("strict", ""), ("lenient", "paths_unknown_on_error = \"match\"")]);
    let unknown = push("gitlab", Provider::Gitlab, None);
    let decide = |rule: &str, event: &Event, files: Files| {
        c.rules
            .evaluate_deferred(rule, event, None, &BTreeMap::new(), files)
    };
    let mut read = unknown.clone();
    read.paths = Some(vec!["services/billing/x.rs".into(), "web/a.js".into()]);
    read.paths_unknown = None;
    assert_eq!(decide("strict", &read, Files::Read).matched.len(), 1);
    read.paths = Some(vec!["web/a.js".into()]);
    let e = decide("strict", &read, Files::Read);
    assert!(e.skipped[0].reason.contains("match none of"), "{:?}", e.skipped);
    assert!(e.deferred.is_empty());

    let gone = || Files::Unreadable("HTTP 503: unavailable".into());
    let e = decide("strict", &unknown, gone());
    assert!(
        e.skipped[0]
            .reason
            .contains("could not be read from the VCS (HTTP 503: unavailable)"),
        "{:?}",
        e.skipped
    );
    assert_eq!(decide("lenient", &unknown, gone()).matched.len(), 1);
    // A payload that lists files (a GitHub push) decides when the read gave up.
    let mut listed = unknown.clone();
    listed.paths = Some(vec!["web/a.js".into()]);
    listed.paths_unknown = None;
    let e = decide("lenient", &listed, gone());
    assert!(
        e.skipped[0].reason.contains("match none of")
            && e.skipped[0]
                .reason
                .contains("the payload's list: the changed files could not be read"),
        "{:?}",
        e.skipped
    );
    listed.paths = Some(vec!["services/billing/a.rs".into()]);
    assert_eq!(decide("strict", &listed, gone()).matched.len(), 1);
    // A rule removed from the config since errors, with its name.
    let e = decide("removed", &unknown, gone());
    assert!(e.errors[0].error.contains("no longer in the configuration"));
}
