//! The command line: `hookbridge <command>`.

use std::path::PathBuf;
use std::process::ExitCode;

use std::io::Write;

use clap::{Args, Parser, Subcommand};

use crate::config::{self, LoadMode, Loaded};
use crate::telemetry::LogFormat;

mod check;
pub mod common;
pub mod deliveries;
pub mod explain;
mod gitlab;
mod healthcheck;
mod migrate;
mod serve;
mod sign;
mod test_cases;

/// `0.1.0 (commit abc123)`
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("HOOKBRIDGE_COMMIT"),
    ")"
);

/// Verified VCS webhooks in, CircleCI and GitLab pipeline triggers out, durably.
#[derive(Debug, Parser)]
#[command(name = "hookbridge", version = VERSION, about, propagate_version = true)]
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
    /// Show which rules a payload matches, why the others do not, and the requests
    /// the matches would send (no network). Exit 0 if a rule matched, 3 if none did.
    Explain(explain::ExplainArgs),
    /// Run golden cases (payload + expected matches and requests) against the rules.
    Test(test_cases::TestArgs),
    /// Print the headers a source's sender would attach to a payload, for curl.
    Sign(sign::SignArgs),
    /// Inspect and replay stored deliveries (works while the daemon runs).
    #[command(subcommand)]
    Deliveries(deliveries::DeliveriesCommand),
    /// GitLab helpers: manage pipeline trigger tokens
    #[command(subcommand)]
    Gitlab(gitlab::GitlabCommand),
    /// Print the JSON Schema of the config file (for editors and CI)
    Schema,
    /// Print a shell completion script
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Ask the running daemon's admin listener for /healthz (or /readyz); exit 0 on 200.
    Healthcheck(healthcheck::HealthcheckArgs),
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
        self.load_with(mode, true)
    }

    /// Load the config for a tool that does not need every secret: errors only.
    pub fn load_quiet(&self) -> Result<Loaded, ExitCode> {
        self.load_with(LoadMode::Check, false)
    }

    fn load_with(&self, mode: LoadMode, warnings: bool) -> Result<Loaded, ExitCode> {
        match config::load(&self.path(), mode) {
            Ok(loaded) => {
                if warnings {
                    for w in loaded.warnings.warnings() {
                        say(format_args!("{}", loaded.warnings.render(w)));
                    }
                }
                Ok(loaded)
            }
            Err(report) => {
                say(format_args!("{}", report.to_string().trim_end()));
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
        Command::Explain(args) => explain::run(&args),
        Command::Test(args) => test_cases::run(&args),
        Command::Sign(args) => sign::run(&args),
        Command::Deliveries(cmd) => deliveries::run(cmd),
        Command::Gitlab(cmd) => gitlab::run(cmd),
        Command::Schema => match serde_json::to_string_pretty(&crate::config::schema::schema()) {
            Ok(text) => {
                // A closed pipe (`| head`) is not an error worth a panic.
                let _ = writeln!(std::io::stdout().lock(), "{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                say(format_args!("error: {e}"));
                ExitCode::FAILURE
            }
        },
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "hookbridge", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Healthcheck(args) => healthcheck::run(&args),
        Command::Migrate(args) => migrate::run(&args),
    }
}

/// A line on stderr for the operator. Unlike `eprintln!`, a stderr that
/// cannot be written (a full disk, a closed pipe) is not a panic.
pub(crate) fn say(line: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}
