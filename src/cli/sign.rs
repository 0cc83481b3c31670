//! `hookbridge sign`: the headers a source's sender would attach to a payload.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use clap::Args;

use super::ConfigArg;
use super::common::{find_source, read_payload};

#[derive(Debug, Args)]
pub struct SignArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// The source (`[sources.NAME]`) whose sender to imitate
    #[arg(long)]
    pub source: String,
    /// Also print the provider's event header(s), e.g. `push` or `Push Hook`
    #[arg(long)]
    pub event: Option<String>,
    /// The payload file, exactly as it will be sent
    pub payload: PathBuf,
}

pub fn run(args: &SignArgs) -> ExitCode {
    let Ok(loaded) = args.config.load_quiet() else {
        return ExitCode::FAILURE;
    };
    let config = loaded.config;
    let source = match find_source(&config, &args.source) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let body = match read_payload(&args.payload) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut headers = match source.scheme.sign(&body, SystemTime::now()) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("error: source `{}`: {e}", args.source);
            return ExitCode::FAILURE;
        }
    };
    if let Some(event) = &args.event {
        for (name, value) in source.scheme.event_headers(event) {
            if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(&name)) {
                headers.push((name, value));
            }
        }
    }
    for (name, value) in headers {
        println!("{name}: {value}");
    }
    ExitCode::SUCCESS
}
