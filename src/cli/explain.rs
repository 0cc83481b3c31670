//! `hookbridge explain`: which rules match a payload, why the others do not,
//! and the exact requests the matches would send. No network, no store;
//! with `--fetch`, rules that wait for the changed files read them from the
//! source's VCS API, as the daemon would.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::ConfigArg;
use super::common::{find_source, finish, format_request, parse_header, read_payload};
use crate::config::Config;
use crate::intake::Trust;

#[derive(Debug, Args)]
pub struct ExplainArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// The source (`[sources.NAME]`) the payload arrives at
    #[arg(long)]
    pub source: String,
    /// The provider's event name (`push`, `Push Hook`, `repo:push`), sent in its event header
    #[arg(long)]
    pub event: Option<String>,
    /// An extra request header, `Name: value` (repeatable)
    #[arg(long = "header", short = 'H', value_name = "K:V", value_parser = parse_header)]
    pub headers: Vec<(String, String)>,
    /// Check the signature too (give the signature headers with --header)
    #[arg(long)]
    pub verify: bool,
    /// Read the changed files of deferred rules from the source's VCS API
    /// (`[sources.NAME.api]`) and decide them, as the daemon would
    #[arg(long)]
    pub fetch: bool,
    /// Machine-readable output
    #[arg(long)]
    pub json: bool,
    /// The payload file
    pub payload: PathBuf,
}

pub use crate::explain::Explanation;

/// Exit code when no rule matched.
pub const NO_MATCH: u8 = 3;

pub fn run(args: &ExplainArgs) -> ExitCode {
    let Ok(loaded) = args.config.load_quiet() else {
        return ExitCode::FAILURE;
    };
    finish(explain(args, &loaded.config))
}

fn explain(args: &ExplainArgs, config: &Config) -> Result<ExitCode, String> {
    let source = find_source(config, &args.source)?;
    let body = read_payload(&args.payload)?;
    // Without `--verify` the payload file carries no signature: say so by name.
    let trust = if args.verify {
        Trust::Verify
    } else {
        Trust::AssumeAuthentic
    };
    let mut explanation =
        crate::explain::explain(config, source, args.event.as_deref(), &args.headers, &body, trust)?;
    if args.fetch && !explanation.deferred.is_empty() {
        let headers = crate::explain::request_headers(source, &body, args.event.as_deref(), &args.headers)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the runtime: {e}"))?;
        runtime.block_on(crate::explain::fetch(
            config,
            source,
            &mut explanation,
            &body,
            &headers,
        ));
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&explanation).map_err(|e| e.to_string())?
        );
    } else {
        print!("{}", human(&explanation, config.rules.len()));
    }
    Ok(if explanation.matched.is_empty() {
        ExitCode::from(NO_MATCH)
    } else {
        ExitCode::SUCCESS
    })
}

/// The human-readable report.
pub fn human(x: &Explanation, rules: usize) -> String {
    let e = &x.event;
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let mut out = format!(
        "event {:?} (kind {}{}) from source {} [{}], delivery {}\n",
        e.name,
        e.kind,
        e.action
            .as_ref()
            .map(|a| format!(", action {a}"))
            .unwrap_or_default(),
        e.source,
        e.provider.as_str(),
        e.delivery
    );
    out.push_str(&format!(
        "  repository {}  ref {}  sha {}\n\n",
        opt(&e.repository),
        opt(&e.git_ref),
        opt(&e.sha)
    ));
    if e.kind == crate::event::kind::PING {
        out.push_str("a ping: answered 200 with nothing stored; rules are not evaluated\n");
    }
    for m in &x.matched {
        out.push_str(&format!("MATCH  {} -> target {}\n", m.rule, m.target));
        if let Some(group) = &m.group {
            out.push_str(&format!(
                "       concurrency group {group:?}: supersedes the group's older jobs that have not created a pipeline{}\n",
                m.debounce
                    .as_ref()
                    .map(|d| format!("; waits {d} before its first attempt"))
                    .unwrap_or_default()
            ));
        }
        if let Some(status) = &m.status {
            out.push_str(&format!("       status: {status}\n"));
        }
        match (&m.request, &m.error) {
            (Some(r), _) => out.push_str(&format_request(r, "       ")),
            (None, Some(err)) => out.push_str(&format!("       cannot build the request: {err}\n")),
            (None, None) => {}
        }
        out.push('\n');
    }
    for s in &x.skipped {
        out.push_str(&format!("SKIP   {}: {}\n", s.rule, s.reason));
    }
    for err in &x.errors {
        out.push_str(&format!("ERROR  {}: {}\n", err.rule, err.error));
    }
    for d in &x.deferred {
        out.push_str(&format!(
            "DEFER  {}: {} (the daemon decides once it has read them; --fetch reads them now)\n",
            d.rule, d.reason
        ));
    }
    if let Some(fetched) = &x.fetched {
        out.push_str(&format!("\nfiles: {fetched}\n"));
    }
    out.push_str(&format!(
        "\n{} of {rules} rule{} matched\n",
        x.matched.len(),
        if rules == 1 { "" } else { "s" }
    ));
    out
}
