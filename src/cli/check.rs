//! `hookbridge check`: validate a config without starting anything.

use std::process::ExitCode;

use super::ConfigArg;
use crate::config::LoadMode;

pub(crate) fn run(args: &ConfigArg) -> ExitCode {
    match args.load(LoadMode::Check) {
        Ok(loaded) => {
            println!("{}", loaded.config.summary());
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}
