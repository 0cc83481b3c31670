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
            for note in status_notes(&loaded.config) {
                println!("  note: {note}");
            }
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

/// What `[rules.status]` with `follow = true` and no `poll` relies on: the
/// CI's completion webhook, which only the CI's side can configure.
fn status_notes(config: &crate::config::Config) -> Vec<String> {
    config
        .rules
        .rules()
        .iter()
        .filter_map(|rule| {
            let status = rule.status.as_ref()?;
            // No result comes at all (`check` warned), or it is asked for.
            if !status.follow || status.poll.is_some() || !status.learns_result {
                return None;
            }
            let hook = match config.targets.get(&rule.target)?.kind {
                TargetKind::Circleci => {
                    "CircleCI webhooks (`workflow-completed`) to a `circleci` source"
                }
                TargetKind::Gitlab => "GitLab `Pipeline Hook` deliveries to a `gitlab` source",
                _ => return None,
            };
            Some(format!(
                "rule `{}` reports the pipeline's result only when {hook} reach hookbridge; set `poll` to ask the CI instead",
                rule.name
            ))
        })
        .collect()
}
