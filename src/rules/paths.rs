//! Path filters (`paths`, `paths_ignore`), and what a rule does when the
//! payload does not list every changed file (`paths_unknown`): skip, match,
//! or wait while the files are read from the VCS (`fetch`, the default,
//! which applies where the event's source has an `[sources.NAME.api]`).
//!
//! As in GitHub Actions, path filters do not apply to tag pushes.

use std::collections::BTreeSet;

use super::Rule;
use crate::event::{Event, kind};
use crate::vcs::files::FilesQuery;

/// What a rule does when a push's changed files are not known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathsUnknown {
    Skip,
    Match,
    /// Read them from the VCS when the event's source has an `api`; skip otherwise.
    Fetch,
}

/// What is known of the changed files when a rule is evaluated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Files {
    /// What the payload lists (`event.paths`): a rule may be deferred.
    Payload,
    /// Read from the VCS, and put in `event.paths` by the caller.
    Read,
    /// They could not be read, for this reason: `paths_unknown_on_error` decides.
    Unreadable(String),
}

/// Why the path filters did not let a rule through.
pub(super) enum Miss {
    Skip(String),
    /// Wait for the files to be read from the VCS.
    Defer(String),
}

/// The path filters' verdict on `event`.
pub(super) fn check(
    rule: &Rule,
    event: &Event,
    files: &Files,
    api_sources: &BTreeSet<String>,
) -> Result<(), Miss> {
    if rule.paths.is_none() && rule.paths_ignore.is_none() {
        return Ok(());
    }
    if event.kind == kind::PUSH && event.tag.is_some() {
        return Ok(());
    }
    let key = if rule.paths.is_some() {
        "paths"
    } else {
        "paths_ignore"
    };
    let fetching = rule.paths_unknown == PathsUnknown::Fetch && api_sources.contains(&event.source);
    // Nothing to read: a deleted branch changes no files, whatever its
    // payload lists (the same for every VCS).
    if fetching && event.kind == kind::PUSH && event.deleted {
        return Err(Miss::Skip(deleted(event, key)));
    }
    let Some(paths) = &event.paths else {
        return unknown(rule, event, files, fetching, key);
    };
    // A GitHub push is read even when its payload lists files: when the
    // read gives up, the payload's list decides, as it does without an api.
    let fallback = |reason: String| match files {
        Files::Unreadable(why) => {
            format!("{reason} (the payload's list: the changed files could not be read from the VCS: {why})")
        }
        _ => reason,
    };
    // GitHub's push payload says nothing of what it leaves out (it cuts the
    // commits at 2048 and each commit's files at 3000, and lists no commit
    // for a branch created at an existing one): where the files can be
    // read, they are, rather than trusting a list that may be partial.
    if *files == Files::Payload
        && fetching
        && event.provider == crate::event::Provider::Github
        && event.kind == kind::PUSH
        && !event.deleted
        && FilesQuery::of(event).is_ok()
    {
        return Err(Miss::Defer(format!(
            "{key}: a GitHub push payload cannot show that it lists every changed file; reading them from the VCS"
        )));
    }
    if let Some(include) = &rule.paths
        && !paths.iter().any(|p| include.matches(p))
    {
        return Err(Miss::Skip(fallback(format!(
            "paths: {} match none of {}",
            display(paths),
            include.display()
        ))));
    }
    if let Some(ignore) = &rule.paths_ignore
        && !paths.is_empty()
        && paths.iter().all(|p| ignore.matches(p))
    {
        return Err(Miss::Skip(fallback(format!(
            "paths_ignore: every changed file {} matches {}",
            display(paths),
            ignore.display()
        ))));
    }
    Ok(())
}

#[cfg(test)]
mod tests;

/// The verdict when the payload does not list the changed files.
fn unknown(rule: &Rule, event: &Event, files: &Files, fetching: bool, key: &str) -> Result<(), Miss> {
    let why = event
        .paths_unknown
        .as_deref()
        .unwrap_or("the payload does not list them");
    if let Files::Unreadable(reason) = files {
        return match rule.paths_unknown_on_error {
            PathsUnknown::Match => Ok(()),
            _ => Err(Miss::Skip(format!(
                "{key}: the changed files could not be read from the VCS ({reason}); \
                 set paths_unknown_on_error = \"match\" to run anyway"
            ))),
        };
    }
    match rule.paths_unknown {
        PathsUnknown::Match => Ok(()),
        PathsUnknown::Fetch if fetching => match FilesQuery::of(event) {
            Ok(_) => Err(Miss::Defer(format!(
                "{key}: changed files unknown ({why}); reading them from the VCS"
            ))),
            Err(cannot) => Err(Miss::Skip(format!(
                "{key}: changed files unknown ({why}), and {cannot}; set paths_unknown = \"match\" to run anyway"
            ))),
        },
        _ => Err(Miss::Skip(format!(
            "{key}: changed files unknown ({why}); set paths_unknown = \"match\" to run anyway"
        ))),
    }
}

/// Why a deleted branch's push is skipped.
fn deleted(event: &Event, key: &str) -> String {
    format!(
        "{key}: the push deletes {}; it changes no files",
        event
            .branch
            .as_deref()
            .map_or("its ref".to_owned(), |b| format!("branch {b:?}"))
    )
}

/// Changed paths for messages: the first few, then a count.
fn display(paths: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut items: Vec<String> = paths.iter().take(SHOWN).map(|p| format!("{p:?}")).collect();
    if paths.len() > SHOWN {
        items.push(format!("… {} more", paths.len() - SHOWN));
    }
    format!("[{}]", items.join(", "))
}
