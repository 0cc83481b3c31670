//! `hookbridge migrate`: bring the store's schema up to date and exit.
//!
//! `serve` migrates at start as well; this lets operators do it ahead of a
//! rollout (or from a job with more privileges than the daemon's). Missing
//! CI secrets are only warnings here; the store password must resolve.

use std::process::ExitCode;

use super::ConfigArg;
use crate::config::LoadMode;

pub fn run(args: &ConfigArg) -> ExitCode {
    let loaded = match args.load(LoadMode::Check) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(crate::store::migrate(&loaded.config.store)) {
        Ok(version) => {
            println!("store schema is at version {version}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: cannot migrate the store: {e}");
            ExitCode::FAILURE
        }
    }
}
