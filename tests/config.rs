//! `hookbridge check`: every shipped config passes, and every kind of mistake
//! is reported with file, line, column and what was expected.
#![allow(clippy::unwrap_used)]

mod support;

use support::daemon::Workspace;

const BASE: &str = r#"
[sources.github]
type = "github"
secrets = ["env:GITHUB_WEBHOOK_SECRET"]

[targets.circleci]
type = "circleci"
token = "env:CIRCLECI_TOKEN"
"#;

/// Run `check` on `BASE` + `extra`; returns (exit code, stderr).
fn check(extra: &str) -> (i32, String) {
    let ws = Workspace::new(&format!("{BASE}{extra}"));
    let (code, _out, err) = ws.cli(
        &["check", "--config", "hookbridge.toml"],
        &[("GITHUB_WEBHOOK_SECRET", "s"), ("CIRCLECI_TOKEN", "t")],
    );
    (code, err)
}

#[test]
fn every_shipped_config_passes_check() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            seen += 1;
            let out = std::process::Command::new(support::daemon::BIN)
                .args(["check", "--config"])
                .arg(&path)
                .env_remove("HOOKBRIDGE_CONFIG")
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{}:\n{}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(stdout.contains(": ok — "), "{stdout}");
        }
    }
    assert!(seen >= 1);
}

#[test]
fn valid_config_prints_a_one_line_summary() {
    let ws = Workspace::new(&format!(
        "{BASE}{}",
        r#"
[[rules]]
name = "r"
[rules.trigger]
target = "circleci"
project = "gh/acme/app"
branch = "main"
"#
    ));
    let (code, out, _) = ws.cli(&["check", "--config", "hookbridge.toml"], &[]);
    assert_eq!(code, 0);
    assert_eq!(out, "hookbridge.toml: ok — 1 source, 1 target, 1 rule\n");
}

#[test]
fn misspelled_key() {
    let (code, err) = check("\n[server]\nlisten = \"0.0.0.0:8080\"\nmax_bodyy = \"1MiB\"\n");
    assert_eq!(code, 1);
    insta::assert_snapshot!(err);
}

#[test]
fn rule_names_an_unknown_target() {
    let (code, err) = check(
        r#"
[[rules]]
name = "deploy"
[rules.trigger]
target = "circle"
project = "gh/acme/app"
branch = "main"
"#,
    );
    assert_eq!(code, 1);
    insta::assert_snapshot!(err);
}

#[test]
fn invalid_glob() {
    let (code, err) = check(
        r#"
[[rules]]
name = "deploy"
branches = ["release/[abc"]
[rules.trigger]
target = "circleci"
project = "gh/acme/app"
branch = "main"
"#,
    );
    assert_eq!(code, 1);
    insta::assert_snapshot!(err);
}

#[test]
fn template_syntax_error() {
    let (code, err) = check(
        r#"
[[rules]]
name = "deploy"
[rules.trigger]
target = "circleci"
project = "gh/acme/app"
branch = "{{ event.branch "
"#,
    );
    assert_eq!(code, 1);
    insta::assert_snapshot!(err);
}

#[test]
fn unknown_event_field_and_bad_if() {
    let (code, err) = check(
        r#"
[[rules]]
name = "deploy"
if = "event.repository =="
[rules.trigger]
target = "circleci"
project = "gh/acme/app"
branch = "{{ event.brnch }}"
"#,
    );
    assert_eq!(code, 1);
    insta::assert_snapshot!(err);
}

#[test]
fn bad_values_are_reported_together() {
    let (code, err) = check(
        r#"
[sources.gl]
type = "gitlabb"
secrets = ["env:X"]

[[rules]]
name = "deploy"
source = "githbu"
[rules.trigger]
target = "circleci"
project = "acme/app"
branch = "main"
"#,
    );
    assert_eq!(code, 1);
    insta::assert_snapshot!(err);
}

#[test]
fn invalid_duration() {
    let (code, err) = check("\n[retry]\ninitial_backoff = \"2 parsecs\"\n");
    assert_eq!(code, 1);
    insta::assert_snapshot!(err);
}

#[test]
fn serve_refuses_missing_secrets_without_printing_them() {
    let ws = Workspace::new(&format!("[store]\nurl = \"@DB@\"\n{BASE}"));
    let (code, _, err) = ws.cli(
        &["serve", "--config", "hookbridge.toml"],
        &[("CIRCLECI_TOKEN", "sekrit-value")],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("GITHUB_WEBHOOK_SECRET"), "{err}");
    assert!(err.contains("hookbridge.toml:6:12"), "{err}");
    assert!(!err.contains("sekrit-value"));
}
