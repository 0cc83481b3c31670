//! `hookbridge test DIR`: golden cases for a rule set.
//!
//! Each `*.toml` file in DIR is one case:
//!
//! ```toml
//! source = "github"            # a source of the config
//! event = "push"               # optional: the provider's event header value
//! payload = "push.json"        # relative to the case file
//! [headers]                    # optional extra request headers
//! "X-GitHub-Delivery" = "abc"
//! [expect]
//! matched = ["deploy"]         # exactly the rules that match, in config order
//! [expect.skipped]             # optional: rule -> substring of its skip reason
//! "pr" = "not in events"
//! [[expect.requests]]          # optional: a matched rule's request (secrets as ***)
//! rule = "deploy"
//! method = "POST"
//! url = "https://circleci.com/api/v2/project/gh/acme/app/pipeline"
//! body = { branch = "main" }   # compared exactly
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use clap::Args;
use serde::Deserialize;

use super::ConfigArg;
use super::common::{read_payload, render, request_headers};
use crate::config::Config;
use crate::intake::Trust;

#[derive(Debug, Args)]
pub struct TestArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Directory of case files (`*.toml`)
    pub dir: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    source: String,
    event: Option<String>,
    payload: PathBuf,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    expect: Expect,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    matched: Vec<String>,
    #[serde(default)]
    skipped: BTreeMap<String, String>,
    #[serde(default)]
    errors: BTreeMap<String, String>,
    #[serde(default)]
    requests: Vec<ExpectedRequest>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectedRequest {
    rule: String,
    method: Option<String>,
    url: Option<String>,
    body: Option<toml::Value>,
}

pub(crate) fn run(args: &TestArgs) -> ExitCode {
    let Ok(loaded) = args.config.load_quiet() else {
        return ExitCode::FAILURE;
    };
    let config = loaded.config;
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&args.dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect(),
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", args.dir.display());
            return ExitCode::FAILURE;
        }
    };
    files.sort();
    if files.is_empty() {
        eprintln!("error: no case files (*.toml) in {}", args.dir.display());
        return ExitCode::FAILURE;
    }
    let mut failed = 0;
    for file in &files {
        let name = file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        match run_case(&config, file) {
            Ok(()) => println!("ok    {name}"),
            Err(problems) => {
                failed += 1;
                println!("FAIL  {name} ({})", file.display());
                for p in problems {
                    for line in p.lines() {
                        println!("      {line}");
                    }
                }
            }
        }
    }
    println!("\n{} passed, {failed} failed", files.len() - failed);
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Run one case; the problems found, each ready to print.
fn run_case(config: &Config, file: &Path) -> Result<(), Vec<String>> {
    let text = std::fs::read_to_string(file).map_err(|e| vec![format!("cannot read: {e}")])?;
    let case: Case =
        toml::from_str(&text).map_err(|e| vec![format!("invalid case file: {}", e.message())])?;
    let source = config
        .sources
        .get(&case.source)
        .ok_or_else(|| vec![format!("unknown source `{}`", case.source)])?;
    let payload_path = file.parent().unwrap_or(Path::new(".")).join(&case.payload);
    let body = read_payload(&payload_path).map_err(|e| vec![e])?;
    let extra: Vec<(String, String)> = case.headers.into_iter().collect();
    let headers = request_headers(source, &body, case.event.as_deref(), &extra).map_err(|e| vec![e])?;
    // Case files hold unsigned payloads: they test the rules, not the signature.
    let intake = crate::intake::process(
        config,
        source,
        &headers,
        &body,
        SystemTime::now(),
        Trust::AssumeAuthentic,
    )
    .map_err(|e| vec![format!("the delivery is refused: {e}")])?;
    let mut problems = Vec::new();

    let matched: Vec<String> = intake.evaluation.matched.iter().map(|m| m.rule.clone()).collect();
    if matched != case.expect.matched {
        let mut p = format!(
            "matched rules differ\n- expected {:?}\n+ actual   {:?}",
            case.expect.matched, matched
        );
        for s in &intake.evaluation.skipped {
            if case.expect.matched.contains(&s.rule) {
                p.push_str(&format!("\n  `{}` was skipped: {}", s.rule, s.reason));
            }
        }
        for e in &intake.evaluation.errors {
            p.push_str(&format!("\n  `{}` failed: {}", e.rule, e.error));
        }
        problems.push(p);
    }
    for (rule, want) in &case.expect.skipped {
        match intake.evaluation.skipped.iter().find(|s| &s.rule == rule) {
            Some(s) if s.reason.contains(want.as_str()) => {}
            Some(s) => problems.push(format!(
                "`{rule}` skip reason differs\n- expected to contain {want:?}\n+ actual {:?}",
                s.reason
            )),
            None => problems.push(format!("`{rule}` was expected to be skipped, but was not")),
        }
    }
    for (rule, want) in &case.expect.errors {
        match intake.evaluation.errors.iter().find(|e| &e.rule == rule) {
            Some(e) if e.error.contains(want.as_str()) => {}
            Some(e) => problems.push(format!(
                "`{rule}` error differs\n- expected to contain {want:?}\n+ actual {:?}",
                e.error
            )),
            None => problems.push(format!("`{rule}` was expected to fail, but did not")),
        }
    }
    let rendered = render(config, &intake.evaluation);
    for want in &case.expect.requests {
        let Some(got) = rendered.iter().find(|r| r.rule == want.rule) else {
            problems.push(format!(
                "`{}` has an expected request but did not match",
                want.rule
            ));
            continue;
        };
        let Some(req) = &got.request else {
            problems.push(format!(
                "`{}` request could not be built: {}",
                want.rule,
                got.error.clone().unwrap_or_default()
            ));
            continue;
        };
        if let Some(m) = &want.method
            && !m.eq_ignore_ascii_case(req.method)
        {
            problems.push(format!(
                "`{}` method\n- expected {m}\n+ actual   {}",
                want.rule, req.method
            ));
        }
        if let Some(u) = &want.url
            && u != &req.url
        {
            problems.push(format!(
                "`{}` url\n- expected {u}\n+ actual   {}",
                want.rule, req.url
            ));
        }
        if let Some(b) = &want.body {
            let expected = serde_json::to_value(b).unwrap_or_default();
            if expected != req.body {
                problems.push(format!(
                    "`{}` body differs\n{}",
                    want.rule,
                    json_diff(&expected, &req.body)
                ));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// A line diff of two JSON values, pretty-printed with sorted keys.
fn json_diff(expected: &serde_json::Value, actual: &serde_json::Value) -> String {
    let a = serde_json::to_string_pretty(expected).unwrap_or_default();
    let b = serde_json::to_string_pretty(actual).unwrap_or_default();
    let diff = similar::TextDiff::from_lines(&a, &b);
    let mut out = String::new();
    for change in diff.iter_all_changes() {
        let sign = match change.tag() {
            similar::ChangeTag::Delete => "- ",
            similar::ChangeTag::Insert => "+ ",
            similar::ChangeTag::Equal => "  ",
        };
        out.push_str(sign);
        out.push_str(change.as_str().unwrap_or_default().trim_end_matches('\n'));
        out.push('\n');
    }
    out
}
