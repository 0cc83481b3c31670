//! `hookbridge migrate`: bring the store's schema up to date and exit.
//!
//! `serve` migrates at start as well; this lets operators do it ahead of a
//! rollout (or from a job with more privileges than the daemon's). Missing
//! CI secrets are only warnings here; the store password must resolve.

use std::process::ExitCode;

use super::ConfigArg;
use crate::config::LoadMode;

pub(crate) fn run(args: &ConfigArg) -> ExitCode {
    let loaded = match args.load(LoadMode::Check) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    super::common::block_on(async {
        let version = crate::store::migrate(&loaded.config.store)
            .await
            .map_err(|e| format!("cannot migrate the store: {e}"))?;
        println!("store schema is at version {version}");
        Ok(())
    })
}
