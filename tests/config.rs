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

/// A target's or a rule's own `request_timeout` counts against the lease
/// like `[retry]`'s: an attempt that may outlast its lease would be sent
/// again by another replica while it still runs. The default lease follows
/// the longest timeout.
#[test]
fn a_lease_no_longer_than_a_targets_own_timeout_is_refused() {
    let slow_target = "\n[targets.circleci.retry]\nrequest_timeout = \"5m\"\n";
    let (code, err) = check(&format!("{slow_target}\n[dispatch]\nlease = \"60s\"\n"));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("`[dispatch] lease`")
            && err.contains("must be longer than `[targets.circleci.retry] request_timeout`"),
        "{err}"
    );
    let text = format!("{BASE}{slow_target}");
    let loaded = hookbridge::config::parse(
        std::path::Path::new("hookbridge.toml"),
        &text,
        hookbridge::config::LoadMode::Check,
    )
    .unwrap();
    // Twice the longest and a tenth: long enough to lease ahead.
    assert_eq!(loaded.config.dispatch.lease, std::time::Duration::from_secs(630));
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
fn basic_auth_credentials_without_a_password_are_refused() {
    // ":" or "user:" (a "${USER}:${PASS}" with both unset) would accept
    // anyone who sends them.
    let (code, err) = check(
        r#"
[sources.azure]
type = "azure-devops"
secrets = [":", "ado:", "ado:pw", "no-colon", "ado:  "]

[sources.dc]
type = "bitbucket"
basic_auth = ["bb:"]
"#,
    );
    assert_eq!(code, 1);
    assert_eq!(err.matches("need a password").count(), 4, "{err}");
    assert_eq!(err.matches("must be \"user:password\"").count(), 1, "{err}");
    assert!(err.contains("secrets credentials need a password"), "{err}");
    assert!(err.contains("basic_auth credentials need a password"), "{err}");
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

#[test]
fn diagnostics_never_show_a_secret_from_the_file() {
    // Literal secrets (warned about, and an error pointing at one), a store
    // URL with a password holding `?`, and a line TOML cannot parse: each
    // diagnostic shows its line, with `***` for the secret.
    let literals = r#"
[store]
url = "mysql://app:pa?ss-Url-Secret@127.0.0.1:1/hb"

[sources.azure]
type = "azure-devops"
secrets = ["NoColonAzureSecret123"]

[targets.gitlab]
type = "gitlab"
url = "https://gitlab.example"
token = "glptt-LiteralTriggerSecret"
"#;
    // `command` refuses the file and shows none of its secrets; its stderr.
    let refused_without_secrets = |command: &str| {
        let ws = Workspace::new(&format!("{BASE}{literals}"));
        let (code, out, err) = ws.cli(
            &[command, "--config", "hookbridge.toml"],
            &[("GITHUB_WEBHOOK_SECRET", "s"), ("CIRCLECI_TOKEN", "t")],
        );
        assert_ne!(code, 0, "{command}: {err}");
        for secret in [
            "pa?ss-Url-Secret",
            "NoColonAzureSecret123",
            "glptt-LiteralTriggerSecret",
        ] {
            assert!(
                !err.contains(secret) && !out.contains(secret),
                "{command}: {secret} shown:\n{err}{out}"
            );
        }
        err
    };
    let err = refused_without_secrets("check");
    assert!(err.contains("secret written literally"), "{err}");
    assert!(err.contains("token = ***"), "{err}");
    assert!(err.contains("url = ***"), "{err}");

    // A file that does not parse: no spans are known, the key names the secret.
    let broken = "\n[targets.x]\ntype = \"circleci\"\ntoken = \"Unparsed-Secret-Value\" trailing\n";
    let single = "\n[targets.y]\ntype = \"circleci\"\ntoken = 'Single-Quoted-Secret' trailing\n";
    let (code, err) = check(single);
    assert_eq!(code, 1, "{err}");
    assert!(!err.contains("Single-Quoted-Secret"), "{err}");
    let (code, err) = check(broken);
    assert_eq!(code, 1, "{err}");
    assert!(!err.contains("Unparsed-Secret-Value"), "{err}");
    assert!(err.contains("token = \"***\""), "{err}");

    // A secret written where a list belongs: the parser's message quotes
    // the value; the key's values are hidden there too (and in a reload's log
    // line, which is this rendering).
    for (text, secret) in [
        (
            "\n[sources.g]\ntype = \"github\"\nsecrets = \"TypeErrorSecret123\"\n",
            "TypeErrorSecret123",
        ),
        (
            "\n[sources.s]\ntype = \"standard\"\nsigning_secrets = \"whsec_c2VjcmV0\"\n",
            "whsec_c2VjcmV0",
        ),
        ("\n[sources.g]\ntype = \"github\"\nsecrets = \"abc\"\n", "\"abc\""),
        // An inline table and a dotted key: the key is the one nearest the value.
        (
            "\n[sources]\ngh = { type = \"github\", secrets = \"InlineTableSecret1\" }\n",
            "InlineTableSecret1",
        ),
        (
            "\nsources.gh.type = \"github\"\nsources.gh.secrets = \"DottedKeySecret12\"\n",
            "DottedKeySecret12",
        ),
    ] {
        let (code, err) = check(text);
        assert_eq!(code, 1, "{err}");
        assert!(!err.contains(secret), "{secret} shown:\n{err}");
        assert!(
            err.contains("expected a sequence") || err.contains("expected"),
            "{err}"
        );
    }

    // A misspelt secret key is an unknown key, and the error points at it:
    // its value is hidden all the same.
    for (text, secret) in [
        (
            "\n[sources.g]\ntype = \"github\"\nsecret = [\"MisspeltKeySecret1\"]\n",
            "MisspeltKeySecret1",
        ),
        (
            "\n[targets.c]\ntype = \"circleci\"\ntokn = \"MisspeltTokenSecret\"\n",
            "MisspeltTokenSecret",
        ),
        (
            "\n[admin]\napi_key = \"UnknownApiKeySecret\"\n",
            "UnknownApiKeySecret",
        ),
        (
            "\n[admin]\nsigning_key = \"UnknownSigningKey1\"\n",
            "UnknownSigningKey1",
        ),
        ("\n[admin]\npwd = \"UnknownPwdSecret12\"\n", "UnknownPwdSecret12"),
        (
            "\n[admin]\nsecret.value = \"DottedSecretValue1\"\n",
            "DottedSecretValue1",
        ),
    ] {
        let (code, err) = check(text);
        assert_eq!(code, 1, "{err}");
        assert!(!err.contains(secret), "{secret} shown:\n{err}");
        assert!(err.contains("unknown"), "{err}");
    }

    // Values TOML cannot parse, under the right key: a bare word, and a
    // list over several lines where the error points at a later line.
    for (text, secret) in [
        (
            "\n[targets.c]\ntype = \"circleci\"\ntoken = BareTokenSecret123\n",
            "BareTokenSecret123",
        ),
        (
            "\n[sources.g]\ntype = \"github\"\nsecrets = [BareListSecret12]\n",
            "BareListSecret12",
        ),
        (
            "\n[sources.g]\ntype = \"github\"\nsecrets = [\n  \"RotatedNewSecret1\"\n  \"RotatedOldSecret2\"\n]\n",
            "RotatedOldSecret2",
        ),
        (
            "\n[sources.g]\ntype = \"github\"\nsecrets = [\n  \"ListItemSecret123\", 42,\n]\n",
            "ListItemSecret123",
        ),
    ] {
        let (code, err) = check(text);
        assert_eq!(code, 1, "{err}");
        assert!(!err.contains(secret), "{secret} shown:\n{err}");
        assert!(err.contains("***"), "{err}");
    }

    // `serve` logs the same diagnostics.
    refused_without_secrets("serve");
}

/// `serve` on `BASE` + `extra`: it must refuse to start (and not panic).
/// Returns (exit code, stderr); a daemon that starts anyway fails the test.
fn serve(extra: &str) -> (i32, String) {
    // No store URL: a refused config never gets as far as opening the store.
    let ws = Workspace::new(&format!("{BASE}{extra}"));
    let mut child = std::process::Command::new(support::daemon::BIN)
        .args(["serve", "--config", "hookbridge.toml"])
        .current_dir(ws.dir.path())
        .env("GITHUB_WEBHOOK_SECRET", "s")
        .env("CIRCLECI_TOKEN", "t")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    if support::exit_within(&mut child, std::time::Duration::from_secs(30)).is_none() {
        let _ = child.kill();
        panic!("serve started with a config it should refuse");
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A rule whose `if` and `branches` are given.
fn rule(condition: &str, branches: &str) -> String {
    format!(
        r#"
[[rules]]
name = "deploy"
if = "{condition}"
branches = ["{branches}"]
[rules.trigger]
target = "circleci"
project = "gh/acme/app"
branch = "main"
"#
    )
}

/// Values `check` used to accept (or crash on) that broke `serve`.
fn out_of_range() -> Vec<(&'static str, String)> {
    let braces = format!("{}main{}", "{".repeat(250), "}".repeat(250));
    vec![
        (
            "huge_retention",
            "\n[store]\nretention = \"500000000000y\"\n".to_owned(),
        ),
        (
            "request_timeout_2_pow_63_s",
            "\n[retry]\nrequest_timeout = \"9223372036854775808s\"\n".to_owned(),
        ),
        (
            "dispatch_concurrency_4_billion",
            "\n[dispatch]\nconcurrency = 4294967295\n".to_owned(),
        ),
        (
            "huge_lease",
            "\n[dispatch]\nlease = \"500000000000y\"\n".to_owned(),
        ),
        (
            "if_10k_not",
            rule(&format!("{}event.deleted", "not ".repeat(10_000)), "main"),
        ),
        (
            "if_100k_not",
            rule(&format!("{}event.deleted", "not ".repeat(100_000)), "main"),
        ),
        ("glob_250_nested_braces", rule("true", &braces)),
        // `serve` aborted allocating the pool's bookkeeping.
        (
            "pool_size_4_billion",
            "\n[store]\npool_size = 4294967295\n".to_owned(),
        ),
        ("pool_size_0", "\n[store]\npool_size = 0\n".to_owned()),
        (
            "dispatch_concurrency_0",
            "\n[dispatch]\nconcurrency = 0\n".to_owned(),
        ),
        // Every request with a body in two packets got 408.
        (
            "read_timeout_0s",
            "\n[server]\nread_timeout = \"0s\"\n".to_owned(),
        ),
        (
            "idle_timeout_0ms",
            "\n[server]\nidle_timeout = \"0ms\"\n".to_owned(),
        ),
        (
            "body_idle_timeout_1ns",
            "\n[server]\nbody_idle_timeout = \"1ns\"\n".to_owned(),
        ),
        (
            "request_timeout_0s",
            "\n[retry]\nrequest_timeout = \"0s\"\n".to_owned(),
        ),
        // PostgreSQL refused every delivery the rule matched (503 forever).
        (
            "rule_name_with_nul",
            rule("true", "main").replace("name = \"deploy\"", "name = \"push\\u0000main\""),
        ),
        (
            "rule_name_of_100k_characters",
            rule("true", "main").replace(
                "name = \"deploy\"",
                &format!("name = \"{}\"", "r".repeat(100_000)),
            ),
        ),
    ]
}

#[test]
fn out_of_range_values_are_config_errors_with_their_place() {
    for (name, extra) in out_of_range() {
        let (code, err) = check(&extra);
        assert_eq!(code, 1, "{name}: {err}");
        assert!(err.contains("--> hookbridge.toml:"), "{name}: {err}");
        insta::assert_snapshot!(format!("out_of_range_{name}"), err);
    }
}

#[test]
fn serve_refuses_out_of_range_values_with_the_same_error() {
    for (name, extra) in out_of_range() {
        let (_, checked) = check(&extra);
        let (code, err) = serve(&extra);
        assert_eq!(code, 1, "{name}: {err}");
        assert!(err.contains(&checked), "{name}: {err}");
        assert!(!err.contains("panicked"), "{name}: {err}");
    }
}

mod accepted_configs {
    //! Whatever `check` accepts, the daemon can compute with.

    use std::path::Path;
    use std::time::{Duration, Instant, SystemTime};

    use hookbridge::config::{LoadMode, RetryPolicy, parse};
    use proptest::prelude::*;

    /// Durations of every magnitude, in every unit `humantime` knows.
    fn duration() -> impl Strategy<Value = String> {
        (
            prop_oneof![0u64..100, 0u64..100_000, any::<u64>()],
            "(ns|ms|s|m|h|d|w|M|y)",
        )
            .prop_map(|(n, unit)| format!("{n}{unit}"))
    }

    /// Sizes of every magnitude.
    fn size() -> impl Strategy<Value = String> {
        (
            prop_oneof![0u64..100, 0u64..100_000, any::<u64>()],
            "(|B|KiB|MB|MiB|GiB|TiB|EiB)",
        )
            .prop_map(|(n, unit)| format!("\"{n}{unit}\""))
    }

    /// `d` can be added to and taken from both clocks, doubled, and turned
    /// into milliseconds for the store, without overflow.
    fn usable(d: Duration) -> bool {
        SystemTime::now().checked_add(d * 2).is_some()
            && SystemTime::now().checked_sub(d).is_some()
            && Instant::now().checked_add(d * 2).is_some()
            && i64::try_from(d.as_millis()).is_ok()
    }

    fn usable_policy(p: &RetryPolicy) -> bool {
        [p.initial_backoff, p.max_backoff, p.request_timeout]
            .into_iter()
            .all(usable)
    }

    /// Every duration and size key, as `(table, key, is a size)`.
    const KEYS: [(&str, &str, bool); 12] = [
        ("server", "max_body", true),
        ("server", "body_memory", true),
        ("server", "read_timeout", false),
        ("server", "shutdown_grace", false),
        ("store", "retention", false),
        ("store", "statement_timeout", false),
        ("retry", "initial_backoff", false),
        ("retry", "max_backoff", false),
        ("retry", "request_timeout", false),
        ("dispatch", "lease", false),
        ("sources.std", "tolerance", false),
        ("targets.ci.retry", "request_timeout", false),
    ];

    const SOURCES_AND_TARGETS: &str = r#"
[sources.std]
type = "standard"
secrets = ["env:X"]
[targets.ci]
type = "circleci"
token = "env:Y"
"#;

    /// The config with `key = value` added to its table.
    fn config_with(table: &str, key: &str, value: &str) -> String {
        let line = format!("{key} = {value}\n");
        if SOURCES_AND_TARGETS.contains(&format!("[{table}]\n")) {
            SOURCES_AND_TARGETS.replace(&format!("[{table}]\n"), &format!("[{table}]\n{line}"))
        } else {
            format!("[{table}]\n{line}{SOURCES_AND_TARGETS}")
        }
    }

    /// Asserts every duration and size of whatever `text` compiles to is usable;
    /// returns whether it compiled.
    fn assert_usable(text: &str) -> Result<bool, TestCaseError> {
        let Ok(loaded) = parse(Path::new("hookbridge.toml"), text, LoadMode::Check) else {
            return Ok(false);
        };
        let c = loaded.config;
        for d in [
            c.server.read_timeout,
            c.server.shutdown_grace,
            c.store.retention,
            c.store.statement_timeout,
            c.dispatch.lease,
        ] {
            prop_assert!(usable(d), "{d:?}");
        }
        prop_assert!(usable_policy(&c.retry));
        prop_assert!(c.targets.values().all(|t| usable_policy(&t.retry)));
        prop_assert!(c.server.max_body <= 1 << 30 && c.server.body_memory <= 64 << 30);
        Ok(true)
    }

    #[test]
    fn the_maxima_themselves_are_accepted() {
        for (table, key, value) in [
            ("store", "retention", "\"10y\""),
            ("retry", "request_timeout", "\"1d\""),
            ("dispatch", "lease", "\"2d\""),
            ("retry", "max_backoff", "\"7d\""),
            ("server", "max_body", "\"1GiB\""),
            ("server", "body_memory", "68719476736"),
        ] {
            assert!(assert_usable(&config_with(table, key, value)).unwrap(), "{key}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// One key at a time, any value: refused, or usable.
        #[test]
        fn every_accepted_duration_and_size_is_usable(
            key in 0..KEYS.len(), d in duration(), s in size(),
        ) {
            let (table, key, is_size) = KEYS[key];
            let value = if is_size { s } else { format!("\"{d}\"") };
            assert_usable(&config_with(table, key, &value))?;
        }

        /// Every key at once, mostly small values: the combinations
        /// (`lease` against `request_timeout`, defaults derived from others).
        #[test]
        fn every_accepted_combination_is_usable(
            values in prop::collection::vec((0u64..100, "(ms|s|m|h|d)"), KEYS.len()),
        ) {
            let mut text = SOURCES_AND_TARGETS.to_owned();
            for ((table, key, is_size), (n, unit)) in KEYS.iter().zip(values) {
                let value = if *is_size { format!("\"{n}MiB\"") } else { format!("\"{n}{unit}\"") };
                let line = format!("{key} = {value}\n");
                text = if text.contains(&format!("[{table}]\n")) {
                    text.replace(&format!("[{table}]\n"), &format!("[{table}]\n{line}"))
                } else {
                    format!("[{table}]\n{line}{text}")
                };
            }
            assert_usable(&text)?;
        }
    }
}

#[test]
fn a_reload_with_out_of_range_values_keeps_the_daemon_and_its_config() {
    let daemon_part = "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n";
    let valid = format!("{daemon_part}{BASE}{}", rule("true", "main"));
    let ws = Workspace::new(&valid);
    let daemon = ws.start(&[("GITHUB_WEBHOOK_SECRET", "s"), ("CIRCLECI_TOKEN", "t")]);
    let refusals = |d: &support::daemon::Daemon| d.logs().matches("config reload refused").count();
    for (name, extra) in out_of_range() {
        // `[store]` and `[retry]` tables come before the rule's in `extra`.
        let before = refusals(&daemon);
        ws.write_config(&format!("{daemon_part}{BASE}{extra}"));
        daemon.reload();
        support::wait_for_blocking(
            std::time::Duration::from_secs(20),
            &format!("{name}: a refusal logged"),
            || match refusals(&daemon) {
                n if n > before => Ok(()),
                _ => Err(daemon.logs()),
            },
        );
    }
    // Still up, still serving.
    let health = std::process::Command::new("curl")
        .args(["-sf", &format!("{}/healthz", daemon.admin)])
        .output()
        .unwrap();
    assert!(health.status.success(), "{}", daemon.logs());
    assert!(!daemon.logs().contains("panicked"), "{}", daemon.logs());
    assert_eq!(daemon.stop(), 0);
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
        "circleci-webhook-secret-7b41",
        "ghp-status-api-token-4c2e",
        "bbapi-status-token-e9a3",
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

[sources.github.api]
token = "ghp-status-api-token-4c2e"

[sources.circleci]
type = "circleci"
secrets = ["circleci-webhook-secret-7b41"]

[sources.gitlab]
type = "gitlab"
secrets = ["gl-token-77b0"]
signing_secrets = ["{gl_whsec}"]

[sources.bitbucket]
type = "bitbucket"
secrets = ["bb-secret-19fe"]
basic_auth = ["bbuser:bb-password-4471"]

[sources.bitbucket.api]
token = "bbapi-status-token-e9a3"
user = "dev@example.com"

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

/// A target on plain http sends its token unencrypted: `check` warns, except
/// for loopback addresses (a sidecar, a stand-in); the config still loads.
#[test]
fn plain_http_to_a_remote_ci_is_warned_about() {
    let target = |url: &str| {
        format!("\n[targets.gl]\ntype = \"gitlab\"\nurl = \"{url}\"\ntoken = \"env:CIRCLECI_TOKEN\"\n")
    };
    let (code, err) = check(&target("http://gitlab.example.com"));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("plain http; the token travels unencrypted"), "{err}");
    // The warning names the origin only, never what the URL carries.
    let (_, err) = check(&target(
        "http://u:pw@gitlab.example.com/?private_token=glpat-AbCdEf123456",
    ));
    assert!(
        !err.contains("pw@") && !err.contains("glpat-AbCdEf123456"),
        "{err}"
    );
    for url in [
        "https://gitlab.example.com",
        "http://127.0.0.1:8080",
        "http://[::1]:80",
        "http://localhost",
    ] {
        let (code, err) = check(&target(url));
        assert_eq!(code, 0, "{url}: {err}");
        assert!(!err.contains("plain http"), "{url}: {err}");
    }
}

/// The new target types refuse, at `check`, what their APIs would refuse:
/// each error names file, line and column.
#[test]
fn ci_targets_refuse_what_their_apis_would() {
    let inputs: Vec<String> = (0..26).map(|i| format!("i{i} = \"v\"")).collect();
    let payload: Vec<String> = (0..11).map(|i| format!("k{i} = 1")).collect();
    let (code, err) = check(&format!(
        r#"
[targets.gha]
type = "github-actions"
token = "env:GITHUB_TOKEN"

[targets.gitea]
type = "gitea-actions"
url = "https://gitea.example.com"
token = "env:GITEA_TOKEN"

[targets.kite]
type = "buildkite"
token = "env:BUILDKITE_TOKEN"
api_token = "env:X"

[targets.jenkins]
type = "jenkins"
url = "https://jenkins.example.com"
token = "env:JENKINS_TOKEN"

[targets.hook]
type = "http"
url = "https://deploy.example.com"
signing = "standard"

[[rules]]
name = "too-many-inputs"
[rules.trigger]
target = "gha"
repository = "acme/app"
workflow = "deploy.yml"
project = "acme/app"
inputs = {{ {inputs} }}

[[rules]]
name = "both-dispatches"
[rules.trigger]
target = "gha"
repository = "acme"
workflow = "deploy.yml"
event_type = "deploy"

[[rules]]
name = "big-payload"
[rules.trigger]
target = "gha"
repository = "acme/app"
event_type = "{long}"
client_payload = {{ {payload} }}

[[rules]]
name = "typed-gitea-input"
[rules.trigger]
target = "gitea"
repository = "acme/app"
workflow = "ci.yaml"
inputs = {{ level = 3, dry = true, name = "x" }}

[[rules]]
name = "no-pipeline"
[rules.trigger]
target = "kite"
organization = "acme"

[[rules]]
name = "jenkins-folder"
[rules.concurrency]
group = "x"
cancel_in_progress = true
[rules.trigger]
target = "jenkins"
job = "team//app"

[[rules]]
name = "own-auth"
[rules.trigger]
target = "hook"
method = "FETCH"
path = "deploy"
headers = {{ Authorization = "Bearer x" }}

[targets.jenkins2]
type = "jenkins"
url = "https://jenkins.example.com"
user = "ops:admin"
token = "env:JENKINS_TOKEN"

[targets.hook2]
type = "http"
url = "https://deploy.example.com"
token = "env:DEPLOY_TOKEN"
token_header = "Host"
signing = "standard"
signing_secret = "whsec_!!not-base64!!"

[[rules]]
name = "empty-and-dots"
[rules.trigger]
target = "jenkins2"
job = "team/../admin"

[[rules]]
name = "no-workflow-name"
[rules.trigger]
target = "gitea"
repository = "acme/app"
workflow = ""

[[rules]]
name = "key-in-a-header"
[rules.trigger]
target = "hook2"
path = "/deploy"
headers = {{ X-Api-Key = "sk_live_written_in_the_config", webhook-foo = "x" }}
"#,
        inputs = inputs.join(", "),
        payload = payload.join(", "),
        long = "x".repeat(101),
    ));
    assert_eq!(code, 1, "{err}");
    insta::assert_snapshot!(err);
}

/// `check` says which GitLab and CircleCI targets cannot reconcile an
/// ambiguous attempt, and refuses `reconcile` where it means nothing and a
/// rule variable named as hookbridge's marker.
#[test]
fn check_says_which_targets_cannot_reconcile() {
    let targets = r#"
[targets.gl-plain]
type = "gitlab"
url = "https://gitlab.example"
token = "env:GL_TRIGGER"

[targets.gl-api]
type = "gitlab"
url = "https://gitlab.example"
token = "env:GL_TRIGGER"
api_token = "env:GL_API"

[targets.gl-off]
type = "gitlab"
url = "https://gitlab.example"
token = "env:GL_TRIGGER"
api_token = "env:GL_API"
reconcile = false
"#;
    let ws = Workspace::new(&format!("{BASE}{targets}"));
    let env = [
        ("GITHUB_WEBHOOK_SECRET", "s"),
        ("CIRCLECI_TOKEN", "t"),
        ("GL_TRIGGER", "glptt-x"),
        ("GL_API", "glpat-x"),
    ];
    let (code, out, err) = ws.cli(&["check", "--config", "hookbridge.toml"], &env);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "hookbridge.toml: ok — 1 source, 4 targets, 0 rules\n\
         \x20 note: target `gl-off` does not reconcile: the target sets `reconcile = false`; an attempt whose answer was lost is sent again (at least once)\n\
         \x20 note: target `gl-plain` does not reconcile: the target has no `api_token` to list its pipelines with (a trigger token cannot); an attempt whose answer was lost is sent again (at least once)\n"
    );
    let (code, err) = check(
        r#"
[targets.bk]
type = "buildkite"
token = "env:CIRCLECI_TOKEN"
reconcile = true

[targets.gl]
type = "gitlab"
url = "https://gitlab.example"
token = "env:CIRCLECI_TOKEN"

[[rules]]
name = "r"
[rules.trigger]
target = "gl"
project = "acme/app"
variables = { HOOKBRIDGE_JOB = "mine" }
"#,
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("`reconcile` is for gitlab and circleci targets"),
        "{err}"
    );
    assert!(err.contains("variable `HOOKBRIDGE_JOB` is hookbridge's"), "{err}");
}

/// `[sources.NAME.api]` only where the VCS takes commit statuses; each
/// refusal names its place.
#[test]
fn status_api_is_refused_where_the_vcs_takes_no_statuses() {
    let sources = r#"
[sources.gogs]
type = "gogs"
secrets = ["env:GITHUB_WEBHOOK_SECRET"]
[sources.gogs.api]
url = "https://gogs.example.com"
token = "env:GITHUB_WEBHOOK_SECRET"

[sources.azure]
type = "azure-devops"
secrets = ["env:AZURE"]
[sources.azure.api]
token = "env:GITHUB_WEBHOOK_SECRET"

[sources.billing]
type = "standard"
secrets = ["env:WHSEC"]
api = { token = "env:GITHUB_WEBHOOK_SECRET" }

[sources.ci]
type = "circleci"
secrets = ["env:GITHUB_WEBHOOK_SECRET"]
[sources.ci.api]
url = "https://circleci.com"
token = "env:GITHUB_WEBHOOK_SECRET"

[sources.custom]
type = "hmac"
secrets = ["env:GITHUB_WEBHOOK_SECRET"]
header = "X-Signature"
[sources.custom.api]
token = "env:GITHUB_WEBHOOK_SECRET"
"#;
    let ws = Workspace::new(&format!("{BASE}{sources}"));
    let (code, _, err) = ws.cli(
        &["check", "--config", "hookbridge.toml"],
        &[
            ("GITHUB_WEBHOOK_SECRET", "s"),
            ("CIRCLECI_TOKEN", "t"),
            ("AZURE", "ado:pw"),
            ("WHSEC", "whsec_c2VjcmV0"),
        ],
    );
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        err.matches("commit statuses and changed files are not supported")
            .count(),
        5,
        "{err}"
    );
    assert!(!err.contains("warning"), "{err}");
    insta::assert_snapshot!(err);
}

#[test]
fn status_api_values_are_checked() {
    let (code, err) = check(
        r#"
[sources.github.api]
url = "https://ghe.example.com/api/v3/"
token = "env:GITHUB_WEBHOOK_SECRET"
user = "octocat"

[sources.gitea]
type = "gitea"
secrets = ["env:GITHUB_WEBHOOK_SECRET"]
[sources.gitea.api]
token = "env:GITHUB_WEBHOOK_SECRET"

[sources.gl]
type = "gitlab"
secrets = ["env:GITHUB_WEBHOOK_SECRET"]
[sources.gl.api]
url = "https://ops:Url-Password-4e1f@gitlab.example.com"
token = "env:GITHUB_WEBHOOK_SECRET"

[sources.fj]
type = "forgejo"
secrets = ["env:GITHUB_WEBHOOK_SECRET"]
[sources.fj.api]
url = "ftp://forgejo.example.com"
token = "env:GITHUB_WEBHOOK_SECRET"

[sources.bb]
type = "bitbucket"
secrets = ["env:GITHUB_WEBHOOK_SECRET"]
[sources.bb.api]
token = "env:GITHUB_WEBHOOK_SECRET"
user = "ops:admin"
"#,
    );
    assert_eq!(code, 1, "{err}");
    assert!(!err.contains("Url-Password-4e1f"), "{err}");
    insta::assert_snapshot!(err);
}

#[test]
fn status_api_misspelled_key() {
    let (code, err) =
        check("\n[sources.github.api]\ntokn = \"env:GITHUB_API_TOKEN\"\ntoken = \"env:GITHUB_API_TOKEN\"\n");
    assert_eq!(code, 1, "{err}");
    insta::assert_snapshot!(err);
    let (code, err) = check("\n[sources.github.api]\nurl = \"https://api.github.com\"\n");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("missing field `token`"), "{err}");
}

/// The API's token is a secret like the others: literal ones are warned
/// about and shown as `***`; neither `check` nor `Debug` prints it.
#[test]
fn status_api_token_is_never_shown() {
    let text = format!(
        "{BASE}\n[sources.github.api]\ntoken = \"ghp-Literal-Api-Token-9b2c\"\n\n[sources.bb]\ntype = \"bitbucket\"\nsecrets = [\"env:GITHUB_WEBHOOK_SECRET\"]\n[sources.bb.api]\nurl = \"https://bitbucket.example.com/rest/\"\nuser = \"ops\"\ntoken = \"bb-Literal-App-Password-1c7e\"\n"
    );
    let ws = Workspace::new(&text);
    let (code, out, err) = ws.cli(
        &["check", "--config", "hookbridge.toml"],
        &[("GITHUB_WEBHOOK_SECRET", "s"), ("CIRCLECI_TOKEN", "t")],
    );
    assert_eq!(code, 0, "{err}");
    for secret in ["ghp-Literal-Api-Token-9b2c", "bb-Literal-App-Password-1c7e"] {
        assert!(!err.contains(secret) && !out.contains(secret), "{err}{out}");
    }
    assert_eq!(err.matches("secret written literally").count(), 2, "{err}");
    let loaded = hookbridge::config::parse(
        std::path::Path::new("hookbridge.toml"),
        &text,
        hookbridge::config::LoadMode::Check,
    )
    .unwrap();
    let config = &loaded.config;
    let debug = format!("{config:?}");
    assert!(!debug.contains("ghp-Literal-Api-Token-9b2c"), "{debug}");
    assert!(!debug.contains("bb-Literal-App-Password-1c7e"), "{debug}");
    let gh = config.source_api("github").unwrap();
    assert_eq!(gh.url, "https://api.github.com");
    assert_eq!(gh.token.expose(), "ghp-Literal-Api-Token-9b2c");
    let bb = config.source_api("bb").unwrap();
    assert_eq!(bb.url, "https://bitbucket.example.com/rest");
    assert_eq!(bb.user.as_deref(), Some("ops"));
    assert!(config.source_api("circleci").is_none());
}

/// A rule with `[rules.status]` on `target`; `status` and `source` are its lines.
fn status_rule(name: &str, source: &str, target: &str, status: &str) -> String {
    format!(
        "\n[[rules]]\nname = \"{name}\"\n{source}\n[rules.status]\n{status}\n[rules.trigger]\ntarget = \"{target}\"\n{}\n",
        match target {
            "gl" | "gl-api" => "project = \"acme/app\"\nref = \"main\"",
            "v1" => "project = \"gh/acme/app\"\njob = \"build\"\nbranch = \"main\"",
            "kite" => "organization = \"acme\"\npipeline = \"app\"",
            _ => "project = \"gh/acme/app\"\nbranch = \"main\"",
        }
    )
}

const STATUS_TARGETS: &str = r#"
[targets.gl]
type = "gitlab"
url = "https://gitlab.example.com"
token = "env:CIRCLECI_TOKEN"

[targets.gl-api]
type = "gitlab"
url = "https://gitlab.example.com"
token = "env:CIRCLECI_TOKEN"
api_token = "env:CIRCLECI_TOKEN"

[targets.v1]
type = "circleci"
token = "env:CIRCLECI_TOKEN"

[targets.kite]
type = "buildkite"
token = "env:CIRCLECI_TOKEN"

[sources.gitea]
type = "gitea"
secrets = ["env:GITHUB_WEBHOOK_SECRET"]
"#;

#[test]
fn status_rules_without_an_api_are_refused() {
    // No source has an API: a rule over every source cannot post.
    let (code, err) = check(&format!(
        "{STATUS_TARGETS}{}{}",
        status_rule("everywhere", "", "circleci", ""),
        status_rule("on-gitea", "source = [\"gitea\", \"github\"]", "circleci", "")
    ));
    assert_eq!(code, 1, "{err}");
    insta::assert_snapshot!(err);
    // With one, a rule naming a source without one is still refused.
    let (code, err) = check(&format!(
        "{STATUS_TARGETS}\n[sources.github.api]\ntoken = \"env:GITHUB_WEBHOOK_SECRET\"\n{}{}",
        status_rule("everywhere", "", "circleci", ""),
        status_rule("on-gitea", "source = \"gitea\"", "circleci", "")
    ));
    assert_eq!(code, 1, "{err}");
    assert_eq!(err.matches("error:").count(), 1, "{err}");
    assert!(
        err.contains("rule `on-gitea`: `[rules.status]` needs `[sources.gitea.api]`"),
        "{err}"
    );
}

#[test]
fn status_poll_and_context_are_checked() {
    let api = "\n[sources.github.api]\ntoken = \"env:GITHUB_WEBHOOK_SECRET\"\n";
    let src = "source = \"github\"";
    let rules = [
        status_rule("too-often", src, "circleci", "poll = \"5s\""),
        status_rule("trigger-token", src, "gl", "poll = \"1m\""),
        status_rule("v1-job", src, "v1", "poll = \"1m\""),
        status_rule("kite-poll", src, "kite", "poll = \"1m\"\nfollow = false"),
        status_rule("timeout", src, "gl-api", "poll = \"1h\"\npoll_timeout = \"30m\""),
        status_rule("empty", src, "circleci", "context = \"\""),
        status_rule("unknown", src, "circleci", "context = \"ci/{{ rul }}\""),
    ]
    .concat();
    let (code, err) = check(&format!("{STATUS_TARGETS}{api}{rules}"));
    assert_eq!(code, 1, "{err}");
    insta::assert_snapshot!(err);
    // Durations have their maximum, as everywhere.
    for (status, max) in [("poll = \"2d\"", "1day"), ("poll_timeout = \"31d\"", "30days")] {
        let (code, err) = check(&format!("{api}{}", status_rule("long", src, "circleci", status)));
        assert_eq!(code, 1, "{err}");
        assert!(err.contains(&format!("at most `{max}` is allowed here")), "{err}");
    }
}

/// What `follow` relies on is said where it is not an error: a target whose
/// results hookbridge never learns is a warning; a completion webhook the
/// result waits for is a note.
#[test]
fn status_follow_says_what_the_result_needs() {
    let api = "\n[sources.github.api]\ntoken = \"env:GITHUB_WEBHOOK_SECRET\"\n";
    let rules = [
        status_rule("on-circleci", "", "circleci", ""),
        status_rule("on-gitlab", "", "gl", "context = \"gitlab/{{ event.branch }}\""),
        status_rule("polled", "", "gl-api", "poll = \"1m\""),
        status_rule("created-only", "", "circleci", "follow = false"),
        status_rule("on-buildkite", "", "kite", ""),
    ]
    .concat();
    let ws = Workspace::new(&format!("{BASE}{STATUS_TARGETS}{api}{rules}"));
    let (code, out, err) = ws.cli(
        &["check", "--config", "hookbridge.toml"],
        &[("GITHUB_WEBHOOK_SECRET", "s"), ("CIRCLECI_TOKEN", "t")],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(
            "warning: rule `on-buildkite`: hookbridge learns pipeline results from CircleCI and GitLab only"
        ),
        "{err}"
    );
    assert_eq!(err.matches("warning:").count(), 1, "{err}");
    let notes: Vec<&str> = out.lines().filter(|l| l.contains("note: rule")).collect();
    assert_eq!(
        notes,
        [
            "  note: rule `on-circleci` reports the pipeline's result only when CircleCI webhooks (`workflow-completed`) to a `circleci` source reach hookbridge; set `poll` to ask the CI instead",
            "  note: rule `on-gitlab` reports the pipeline's result only when GitLab `Pipeline Hook` deliveries to a `gitlab` source reach hookbridge; set `poll` to ask the CI instead",
        ],
        "{out}"
    );
}

/// A followed pipeline is watched until its result or `poll_timeout`, and
/// its delivery is kept meanwhile: a `poll_timeout` (its own or the default)
/// longer than `[store] retention` is refused. Rules that watch nothing
/// (`follow = false`, a target that never reports) are not concerned.
#[test]
fn status_poll_timeout_longer_than_retention_is_refused() {
    let api = "\n[sources.github.api]\ntoken = \"env:GITHUB_WEBHOOK_SECRET\"\n";
    let store = "\n[store]\nretention = \"6h\"\n";
    let rules = [
        status_rule("default-timeout", "", "circleci", ""),
        status_rule(
            "long-timeout",
            "",
            "gl-api",
            "poll = \"1m\"\npoll_timeout = \"1d\"",
        ),
        status_rule(
            "short-timeout",
            "",
            "gl-api",
            "poll = \"1m\"\npoll_timeout = \"6h\"",
        ),
        status_rule(
            "not-followed",
            "",
            "circleci",
            "follow = false\npoll_timeout = \"1d\"",
        ),
    ]
    .concat();
    let (code, err) = check(&format!("{STATUS_TARGETS}{api}{store}{rules}"));
    assert_eq!(code, 1, "{err}");
    assert_eq!(err.matches("error:").count(), 2, "{err}");
    insta::assert_snapshot!(err);
}

/// A CircleCI v1.1 job trigger creates no pipeline: no read and no
/// CircleCI webhook can tell its result, so `follow` is warned about as for
/// a target that never reports one, and no note promises a webhook.
#[test]
fn status_follow_on_a_circleci_v1_job_warns() {
    let api = "\n[sources.github.api]\ntoken = \"env:GITHUB_WEBHOOK_SECRET\"\n";
    let rules = [
        status_rule("v1-job", "", "v1", ""),
        status_rule("v1-created", "", "v1", "follow = false"),
        status_rule("v2-pipeline", "", "circleci", ""),
    ]
    .concat();
    let ws = Workspace::new(&format!("{BASE}{STATUS_TARGETS}{api}{rules}"));
    let (code, out, err) = ws.cli(
        &["check", "--config", "hookbridge.toml"],
        &[("GITHUB_WEBHOOK_SECRET", "s"), ("CIRCLECI_TOKEN", "t")],
    );
    assert_eq!(code, 0, "{err}");
    insta::assert_snapshot!(err);
    let notes: Vec<&str> = out.lines().filter(|l| l.contains("note: rule")).collect();
    assert_eq!(notes.len(), 1, "{out}");
    assert!(notes[0].contains("rule `v2-pipeline`"), "{out}");
}

/// `paths_unknown` takes "fetch", "skip" or "match"; "fetch" needs a
/// source with an `api`; `paths_unknown_on_error` takes "skip" or "match".
#[test]
fn paths_unknown_values_are_checked() {
    let rule = |name: &str, keys: &str| {
        format!(
            "\n[[rules]]\nname = \"{name}\"\nsource = \"github\"\npaths = [\"src/**\"]\n{keys}\n[rules.trigger]\ntarget = \"circleci\"\nproject = \"gh/acme/app\"\n"
        )
    };
    let (code, err) = check(&format!(
        "{}{}{}",
        rule("fetching", "paths_unknown = \"fetch\""),
        rule("guessing", "paths_unknown = \"guess\""),
        rule("on-error", "paths_unknown_on_error = \"retry\""),
    ));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("rule `fetching`: paths_unknown = \"fetch\" reads the changed files from the VCS, but none of its sources has an `api`"),
        "{err}"
    );
    assert!(
        err.contains("rule `guessing`: paths_unknown `guess`: expected \"fetch\", \"skip\" or \"match\""),
        "{err}"
    );
    assert!(
        err.contains("rule `on-error`: paths_unknown_on_error `retry`: expected \"skip\" or \"match\""),
        "{err}"
    );
    // With an api, all three are fine.
    let (code, err) = check(&format!(
        "\n[sources.github.api]\ntoken = \"env:GITHUB_WEBHOOK_SECRET\"\n{}{}",
        rule(
            "fetching",
            "paths_unknown = \"fetch\"\npaths_unknown_on_error = \"match\""
        ),
        rule("default", ""),
    ));
    assert_eq!(code, 0, "{err}");
}
