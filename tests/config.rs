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

/// Every way a secret could show in `Debug` output: its text, its bytes as a
/// list (`{:?}` of a `Vec<u8>`, also spread over lines by `{:#?}`), and hex
/// and base64 of its bytes. The first representation found, if any.
fn leaked(printed: &str, secret_bytes: &[u8]) -> Option<String> {
    use base64::Engine as _;
    let b64 = &base64::engine::general_purpose::STANDARD;
    let squeezed: String = printed.chars().filter(|c| !c.is_whitespace()).collect();
    let list = secret_bytes
        .iter()
        .map(u8::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let forms = [
        String::from_utf8_lossy(secret_bytes).into_owned(),
        hex::encode(secret_bytes),
        hex::encode_upper(secret_bytes),
        b64.encode(secret_bytes),
        b64.encode(secret_bytes).trim_end_matches('=').to_owned(),
    ];
    forms
        .into_iter()
        .find(|form| printed.contains(form.as_str()))
        .or_else(|| squeezed.contains(&list).then_some(list))
}

#[test]
fn debug_of_a_loaded_config_prints_no_secret() {
    use base64::Engine as _;
    use hookbridge::source::SourceKind;
    let dir = tempfile::tempdir().unwrap();
    let file_secret = "gh-from-a-file-8c1d";
    std::fs::write(dir.path().join("gh"), format!("{file_secret}\n")).unwrap();
    let std_whsec = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let gl_whsec = "whsec_dGVzdHRlc3R0ZXN0dGVzdHRlc3R0ZXN0dGVzdHRlc3Q=";
    let plain = [
        "gh-literal-5e2a",
        file_secret,
        "gl-token-77b0",
        "bb-secret-19fe",
        "bbuser:bb-password-4471",
        "gitea-secret-0d3c",
        "forgejo-secret-a9e1",
        "gogs-secret-62b8",
        "azuser:az-password-c5d0",
        "hmac-secret-3f7e",
        "circle-token-e018",
        "glptt-target-token-2b64",
        "glptt-rule-token-91aa",
        "admin-token-6d2f",
        "store-password-0c95",
        "url-password-58e3",
        std_whsec,
        gl_whsec,
    ];
    let toml = format!(
        r#"
[admin]
listen = "127.0.0.1:0"
token = "admin-token-6d2f"

[store]
url = "postgres://hookbridge:url-password-58e3@db.example:5432/hb"
password = "store-password-0c95"

[sources.github]
type = "github"
secrets = ["gh-literal-5e2a", "file:{gh_file}"]

[sources.gitlab]
type = "gitlab"
secrets = ["gl-token-77b0"]
signing_secrets = ["{gl_whsec}"]

[sources.bitbucket]
type = "bitbucket"
secrets = ["bb-secret-19fe"]
basic_auth = ["bbuser:bb-password-4471"]

[sources.gitea]
type = "gitea"
secrets = ["gitea-secret-0d3c"]

[sources.forgejo]
type = "forgejo"
secrets = ["forgejo-secret-a9e1"]

[sources.gogs]
type = "gogs"
secrets = ["gogs-secret-62b8"]

[sources.azure]
type = "azure-devops"
secrets = ["azuser:az-password-c5d0"]

[sources.standard]
type = "standard"
secrets = ["{std_whsec}"]

[sources.hmac]
type = "hmac"
secrets = ["hmac-secret-3f7e"]
header = "X-Signature"

[targets.circleci]
type = "circleci"
token = "circle-token-e018"

[targets.gitlab]
type = "gitlab"
url = "https://gitlab.example.com"
token = "glptt-target-token-2b64"

[[rules]]
name = "circle"
source = "github"
events = ["push"]
[rules.trigger]
target = "circleci"
project = "gh/acme/app"
branch = "{{{{ event.branch }}}}"

[[rules]]
name = "gitlab"
events = ["push"]
[rules.trigger]
target = "gitlab"
project = "acme/app"
ref = "main"
token = "glptt-rule-token-91aa"
"#,
        gh_file = dir.path().join("gh").display(),
    );
    let loaded = hookbridge::config::parse(
        std::path::Path::new("every.toml"),
        &toml,
        hookbridge::config::LoadMode::Serve,
    )
    .unwrap_or_else(|report| panic!("{report}"));
    let config = &loaded.config;
    // Every source type and every target type is in the config.
    let kinds: Vec<&str> = config.sources.values().map(|s| s.kind.as_str()).collect();
    for (name, _) in SourceKind::ALL {
        assert!(kinds.contains(&name), "no `{name}` source in the test config");
    }
    let mut targets: Vec<&str> = config.targets.values().map(|t| t.kind.as_str()).collect();
    targets.sort_unstable();
    assert_eq!(targets, ["circleci", "gitlab"]);
    // Every secret but the file one and the URL's password is written literally.
    let literal = loaded
        .warnings
        .diagnostics
        .iter()
        .filter(|d| d.message.contains("literally"))
        .count();
    assert_eq!(literal, plain.len() - 2);

    // The bytes each secret becomes: its text, and the decoded keys of the whsec_ ones.
    let mut secrets: Vec<Vec<u8>> = plain.iter().map(|s| s.as_bytes().to_vec()).collect();
    for whsec in [std_whsec, gl_whsec] {
        let key = base64::engine::general_purpose::STANDARD
            .decode(whsec.trim_start_matches("whsec_"))
            .unwrap();
        secrets.push(key);
    }
    let printed = [format!("{loaded:?}"), format!("{loaded:#?}")];
    for text in &printed {
        for secret in &secrets {
            if let Some(form) = leaked(text, secret) {
                panic!("`{form}` appears in the config's Debug output");
            }
        }
        assert!(text.contains("HmacKey(***)") && text.contains("Secret(***)"));
    }
    // The check can fail: it finds a key printed as a byte list, and in hex.
    let key = secrets.last().unwrap();
    assert!(leaked(&format!("keys: {:#?}", std::slice::from_ref(key)), key).is_some());
    assert!(leaked(&hex::encode(key), key).is_some());
}
