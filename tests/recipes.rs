//! The recipe configs in config/ and their golden cases in config/tests/<stem>/:
//! every case's payload matches exactly the expected rules, skips the others
//! for the expected reason, and renders exactly the expected requests.
//!
//! This is the format `hookbridge test DIR` reads; the runner here uses the
//! library directly so the cases are proven whatever the CLI does.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use hookbridge::config::LoadMode;
use http::{HeaderMap, HeaderName, HeaderValue};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// The header a provider names its event in.
fn event_header(kind: &str) -> &'static str {
    match kind {
        "github" => "x-github-event",
        "gitlab" => "x-gitlab-event",
        "bitbucket" => "x-event-key",
        "gitea" => "x-gitea-event",
        "forgejo" => "x-forgejo-event",
        "gogs" => "x-gogs-event",
        other => panic!("no event header known for `{other}`"),
    }
}

fn run_case(config_path: &Path, case_path: &Path) {
    let text = std::fs::read_to_string(config_path).unwrap();
    let raw: toml::Table = text.parse().unwrap();
    let config = hookbridge::config::parse(config_path, &text, LoadMode::Check)
        .unwrap_or_else(|r| panic!("{}: {r}", config_path.display()))
        .config;
    let case: toml::Table = std::fs::read_to_string(case_path).unwrap().parse().unwrap();
    let case = serde_json::to_value(case).unwrap();
    let at = case_path.display();
    let source = case["source"].as_str().unwrap();
    let kind = raw["sources"][source]["type"].as_str().unwrap();
    let body = std::fs::read(
        case_path
            .parent()
            .unwrap()
            .join(case["payload"].as_str().unwrap()),
    )
    .unwrap();
    let mut headers = HeaderMap::new();
    if let Some(event) = case["event"].as_str() {
        headers.insert(event_header(kind), HeaderValue::from_str(event).unwrap());
    }
    for (k, v) in case["headers"].as_object().into_iter().flatten() {
        headers.insert(
            HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()).unwrap(),
            HeaderValue::from_str(v.as_str().unwrap()).unwrap(),
        );
    }
    let intake = hookbridge::intake::process(
        &config,
        &config.sources[source],
        &headers,
        &body,
        SystemTime::now(),
        hookbridge::intake::Trust::AssumeAuthentic,
    )
    .unwrap_or_else(|e| panic!("{at}: rejected: {e}"));
    let ev = &intake.evaluation;
    assert!(ev.errors.is_empty(), "{at}: rule errors {:?}", ev.errors);
    let matched: Vec<&str> = ev.matched.iter().map(|m| m.rule.as_str()).collect();
    let expected: Vec<&str> = case["expect"]["matched"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        matched, expected,
        "{at}: matched rules; skipped: {:?}",
        ev.skipped
    );
    for (rule, reason) in case["expect"]["skipped"].as_object().into_iter().flatten() {
        let got = ev.skipped.iter().find(|s| s.rule == *rule);
        let got = got.unwrap_or_else(|| panic!("{at}: `{rule}` was not skipped"));
        assert!(
            got.reason.contains(reason.as_str().unwrap()),
            "{at}: `{rule}` skipped for {:?}",
            got.reason
        );
    }
    for want in case["expect"]["requests"].as_array().into_iter().flatten() {
        let rule = want["rule"].as_str().unwrap();
        let m = ev.matched.iter().find(|m| m.rule == rule).unwrap();
        let request = config.targets[&m.target].request(&m.request).unwrap();
        let got = serde_json::to_value(&request).unwrap();
        for key in ["method", "url", "body"] {
            if want.get(key).is_some() {
                assert_eq!(got[key], want[key], "{at}: `{rule}` {key}");
            }
        }
    }
}

#[test]
fn recipe_cases_hold() {
    let mut cases = 0;
    for dir in std::fs::read_dir(root().join("config/tests")).unwrap() {
        let dir = dir.unwrap().path();
        let stem = dir.file_name().unwrap().to_str().unwrap().to_owned();
        let config = root().join("config").join(format!("{stem}.toml"));
        assert!(config.exists(), "{} has no config/{stem}.toml", dir.display());
        for case in std::fs::read_dir(&dir).unwrap() {
            let case = case.unwrap().path();
            if case.extension().is_some_and(|e| e == "toml") {
                run_case(&config, &case);
                cases += 1;
            }
        }
    }
    assert!(cases >= 5, "only {cases} cases");
}

#[test]
fn every_recipe_config_has_cases() {
    for entry in std::fs::read_dir(root().join("config")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let stem = path.file_stem().unwrap().to_str().unwrap();
            let cases = root().join("config/tests").join(stem);
            assert!(
                cases.is_dir(),
                "{} has no cases in config/tests/{stem}/",
                path.display()
            );
        }
    }
}

/// config/monorepo-services.toml: on a GitHub source with an `api`, a push
/// to main leaves every service's rule waiting for the changed files; read
/// from GitHub, they decide which services build, and when they cannot be
/// read every service builds (`paths_unknown_on_error = "match"`).
#[test]
fn the_monorepo_recipe_builds_the_services_the_files_read_touch() {
    use hookbridge::rules::Files;

    let config_path = root().join("config/monorepo-services.toml");
    let text = std::fs::read_to_string(&config_path).unwrap();
    let config = hookbridge::config::parse(&config_path, &text, LoadMode::Check)
        .unwrap_or_else(|r| panic!("{}: {r}", config_path.display()))
        .config;
    let body = std::fs::read(root().join("config/tests/monorepo-services/push-main.json")).unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("x-github-event", HeaderValue::from_static("push"));
    let intake = hookbridge::intake::process(
        &config,
        &config.sources["github"],
        &headers,
        &body,
        SystemTime::now(),
        hookbridge::intake::Trust::AssumeAuthentic,
    )
    .unwrap();
    let ev = &intake.evaluation;
    assert!(
        ev.matched.is_empty() && ev.skipped.is_empty() && ev.errors.is_empty(),
        "{ev:?}"
    );
    let deferred: Vec<&str> = ev.deferred.iter().map(|d| d.rule.as_str()).collect();
    assert_eq!(deferred, ["billing", "search", "web"]);
    for d in &ev.deferred {
        assert!(
            d.reason.contains("cannot show that it lists every changed file"),
            "{}: {}",
            d.rule,
            d.reason
        );
    }

    // Each rule decided as the daemon does once the files are read.
    // `paths`: the files read (or, when unreadable, what the payload
    // lists: `None` for a payload that lists none).
    let decide = |files: Files, paths: Option<&[&str]>| -> Vec<String> {
        let mut event = intake.event.clone();
        match paths {
            Some(paths) => {
                event.paths = Some(paths.iter().map(|p| (*p).to_owned()).collect());
                event.paths_unknown = None;
            }
            None => {
                event.paths = None;
                event.paths_unknown = Some("the payload lists no commits".into());
            }
        }
        let mut matched = Vec::new();
        for rule in &deferred {
            let e = hookbridge::intake::evaluate_deferred(
                &config,
                &event,
                &intake.headers,
                &intake.payload,
                rule,
                files.clone(),
            )
            .unwrap();
            assert!(e.errors.is_empty() && e.deferred.is_empty(), "{rule}: {e:?}");
            for m in &e.matched {
                let request = config.targets[&m.target].request(&m.request).unwrap();
                let got = serde_json::to_value(&request).unwrap();
                assert_eq!(
                    got["url"],
                    "https://circleci.com/api/v2/project/gh/acme/monorepo/pipeline"
                );
                assert_eq!(
                    got["body"],
                    serde_json::json!({"branch": "main", "parameters": {"service": rule}})
                );
            }
            matched.extend(e.matched.iter().map(|m| m.rule.clone()));
        }
        matched
    };
    // The payload lists billing and docs; GitHub has the whole push.
    assert_eq!(
        decide(
            Files::Read,
            Some(&["docs/billing.md", "services/billing/src/invoice.rs"])
        ),
        ["billing"]
    );
    assert_eq!(
        decide(
            Files::Read,
            Some(&["libs/money/src/round.rs", "services/web/app.ts"])
        ),
        ["billing", "search", "web"]
    );
    assert_eq!(
        decide(Files::Read, Some(&["docs/billing.md"])),
        Vec::<String>::new()
    );
    // Unreadable: the payload's list decides when it has one...
    let unreadable = || Files::Unreadable("HTTP 401: Bad credentials".into());
    assert_eq!(
        decide(unreadable(), Some(&["services/billing/src/invoice.rs"])),
        ["billing"]
    );
    // ...and without one, paths_unknown_on_error = "match" builds every service.
    assert_eq!(decide(unreadable(), None), ["billing", "search", "web"]);
}
