//! `hookbridge sign`: the headers a source's sender would attach to a payload.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use clap::Args;

use super::ConfigArg;
use super::common::{find_source, finish, read_payload};
use crate::config::Config;

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

pub(crate) fn run(args: &SignArgs) -> ExitCode {
    let Ok(loaded) = args.config.load_quiet() else {
        return ExitCode::FAILURE;
    };
    finish(sign(args, &loaded.config).map(|()| ExitCode::SUCCESS))
}

fn sign(args: &SignArgs, config: &Config) -> Result<(), String> {
    let source = find_source(config, &args.source)?;
    let body = read_payload(&args.payload)?;
    let mut headers = source
        .scheme
        .sign(&body, SystemTime::now())
        .map_err(|e| format!("source `{}`: {e}", args.source))?;
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
    Ok(())
}
