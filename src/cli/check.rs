//! `hookbridge check`: validate a config without starting anything.

use std::process::ExitCode;

use super::ConfigArg;
use crate::config::LoadMode;
use crate::target::{TargetKind, reconcile};

pub(crate) fn run(args: &ConfigArg) -> ExitCode {
    match args.load(LoadMode::Check) {
        Ok(loaded) => {
            println!("{}", loaded.config.summary());
            // What reconcile cannot do for a target whose API could tell
            // (a trigger sent again after an ambiguous attempt).
            let mut targets: Vec<_> = loaded.config.targets.values().collect();
            targets.sort_by(|a, b| a.name.cmp(&b.name));
            for t in targets {
                if matches!(t.kind, TargetKind::Gitlab | TargetKind::Circleci)
                    && let Some(why) = reconcile::unable(t, None)
                {
                    println!(
                        "  note: target `{}` does not reconcile: {why}; an attempt whose answer was lost is sent again (at least once)",
                        t.name
                    );
                }
            }
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}
