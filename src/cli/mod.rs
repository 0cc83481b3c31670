//! The command line: `hookbridge <command>`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::{self, LoadMode, Loaded};
use crate::telemetry::LogFormat;

mod check;
mod migrate;
mod serve;

/// Verified VCS webhooks in, CircleCI and GitLab pipeline triggers out, durably.
#[derive(Debug, Parser)]
#[command(name = "hookbridge", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: receive webhooks, store them, trigger CI.
    Serve(serve::ServeArgs),
    /// Validate the config; prints a summary, or every error with file:line:col and exits 1.
    Check(ConfigArg),
    /// Apply the store's schema migrations and exit (`serve` also does at start).
    Migrate(ConfigArg),
}

/// `--config PATH`, shared by every command that reads the config.
#[derive(Debug, Clone, Args)]
pub struct ConfigArg {
    /// Config file [default: $HOOKBRIDGE_CONFIG, then ./hookbridge.toml]
    #[arg(long, short = 'c', value_name = "PATH")]
    pub config: Option<PathBuf>,
}

impl ConfigArg {
    pub fn path(&self) -> PathBuf {
        self.config.clone().unwrap_or_else(config::default_path)
    }

    /// Load the config, printing errors (and warnings) to stderr.
    pub fn load(&self, mode: LoadMode) -> Result<Loaded, ExitCode> {
        match config::load(&self.path(), mode) {
            Ok(loaded) => {
                for w in loaded.warnings.warnings() {
                    eprintln!("{}", loaded.warnings.render(w));
                }
                Ok(loaded)
            }
            Err(report) => {
                eprint!("{report}");
                Err(ExitCode::FAILURE)
            }
        }
    }
}

/// Logging options of long-running commands.
#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Log line format
    #[arg(long, value_enum, default_value = "auto", env = "HOOKBRIDGE_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// Log filter, e.g. `info` or `hookbridge=debug` [default: $RUST_LOG, then info]
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,
}

/// Parse the arguments and run the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Check(args) => check::run(&args),
        Command::Migrate(args) => migrate::run(&args),
    }
}
