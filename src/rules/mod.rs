//! Rules: filters, `if` expressions and templates that map an event to triggers.
//!
//! Every rule is evaluated for every event. Each one either matches (and its
//! trigger is rendered into a concrete [`TriggerRequest`]), is skipped with the
//! first filter that failed and the value it saw, or errors (a template or
//! expression failed, with the message). Several rules may match one event.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Serialize;

pub(crate) mod bounds;
mod build;
pub mod filter;
mod paths;
pub mod status;

pub use build::build;
pub use paths::{Files, PathsUnknown};
pub use status::{SourceNames, StatusRule};

use crate::config::retry::RetryPolicy;
use crate::event::{Event, kind};
use crate::store::status::StatusSpec;
use crate::target::{TriggerRequest, TriggerTemplate};
use crate::template::{Condition, TemplateValue, Templates};
use filter::PatternList;

/// One compiled rule.
#[derive(Debug)]
pub struct Rule {
    pub name: String,
    pub sources: Option<Vec<String>>,
    pub events: Option<Vec<String>>,
    pub actions: Option<Vec<String>>,
    pub repositories: Option<PatternList>,
    pub branches: Option<PatternList>,
    pub branches_ignore: Option<PatternList>,
    pub tags: Option<PatternList>,
    pub tags_ignore: Option<PatternList>,
    pub paths: Option<PatternList>,
    pub paths_ignore: Option<PatternList>,
    pub paths_unknown: PathsUnknown,
    /// What the rule does when the changed files cannot be read from the
    /// VCS (`paths_unknown_on_error`): `Skip` or `Match`.
    pub paths_unknown_on_error: PathsUnknown,
    pub condition: Option<Condition>,
    pub target: String,
    pub trigger: TriggerTemplate,
    /// Effective retry policy: global, then target, then rule.
    pub retry: RetryPolicy,
    pub concurrency: Option<Concurrency>,
    /// `[rules.status]`: report the job on its commit.
    pub status: Option<StatusRule>,
}

/// `[rules.concurrency]`, compiled: jobs whose group renders the same string
/// share it, across rules; a newer job supersedes the older ones that have
/// not created a pipeline yet.
#[derive(Debug)]
pub struct Concurrency {
    pub group: TemplateValue,
    /// The group's template as written, for messages.
    pub source: String,
    /// How long each job waits before its first attempt.
    pub debounce: Duration,
    /// Once a job's pipeline exists, cancel the group's older pipelines.
    pub cancel_in_progress: bool,
}

/// All rules of a config with their compiled templates.
#[derive(Debug)]
pub struct RuleSet {
    rules: Vec<Rule>,
    templates: Templates,
    needs_body: bool,
    /// The sources with `[sources.NAME.api]`, which can post statuses.
    api_sources: BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Matched {
    pub rule: String,
    pub target: String,
    pub request: TriggerRequest,
    /// The concurrency group the job joins (`[rules.concurrency]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// How long the job waits before its first attempt.
    #[serde(skip)]
    pub debounce: Duration,
    /// Once its pipeline exists, cancel the group's older pipelines.
    #[serde(skip)]
    pub cancel: bool,
    /// What the job reports on its commit (`[rules.status]`).
    #[serde(skip)]
    pub status: Option<StatusSpec>,
    /// Why a rule with `[rules.status]` reports nothing for this match (no
    /// commit in the event, no API for its source); the job still runs.
    #[serde(skip)]
    pub status_unreported: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Skipped {
    pub rule: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Errored {
    pub rule: String,
    pub error: String,
}

/// A rule whose verdict waits for the changed files, read from the VCS
/// (`paths_unknown = "fetch"`): the summary's `deferred`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Deferred {
    pub rule: String,
    /// Why the payload cannot decide it.
    pub reason: String,
}

/// The verdict of every rule on one event.
#[derive(Debug, Default, Clone)]
pub struct Evaluation {
    pub matched: Vec<Matched>,
    pub skipped: Vec<Skipped>,
    pub errors: Vec<Errored>,
    pub deferred: Vec<Deferred>,
}

/// Why a rule did not match: skipped by a filter, failed to evaluate, or
/// waiting for the changed files (`paths_unknown = "fetch"`).
enum Miss {
    Skip(String),
    Error(String),
    Defer(String),
}

impl RuleSet {
    /// Whether any rule reports commit statuses (`[rules.status]`).
    pub fn reports_statuses(&self) -> bool {
        self.rules.iter().any(|r| r.status.is_some())
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn get(&self, name: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.name == name)
    }

    /// Whether any template or `if` reads `body` (so the payload must be parsed).
    pub fn needs_body(&self) -> bool {
        self.needs_body
    }

    /// The template scope: `event`, `body`, `headers`.
    pub fn scope(
        event: &Event,
        body: Option<&serde_json::Value>,
        headers: &BTreeMap<String, String>,
    ) -> minijinja::Value {
        let event = minijinja::Value::from(minijinja::value::Serde(event));
        let headers = minijinja::Value::from(minijinja::value::Serde(headers));
        match body {
            Some(body) => {
                minijinja::context! { event, headers, body => minijinja::Value::from(minijinja::value::Serde(body)) }
            }
            None => minijinja::context! { event, headers },
        }
    }

    /// Evaluate every rule against one event.
    pub fn evaluate(
        &self,
        event: &Event,
        body: Option<&serde_json::Value>,
        headers: &BTreeMap<String, String>,
    ) -> Evaluation {
        let scope = Self::scope(event, body, headers);
        let mut out = Evaluation::default();
        for rule in &self.rules {
            self.verdict(rule, event, &scope, &Files::Payload, &mut out);
        }
        out
    }

    /// Evaluate one deferred rule again, now that its changed files are
    /// read (or cannot be): the verdict goes into an [`Evaluation`] of its
    /// own, never `deferred` again. A rule no longer in the config errors.
    pub fn evaluate_deferred(
        &self,
        rule: &str,
        event: &Event,
        body: Option<&serde_json::Value>,
        headers: &BTreeMap<String, String>,
        files: Files,
    ) -> Evaluation {
        let mut out = Evaluation::default();
        let Some(rule) = self.get(rule) else {
            out.errors.push(Errored {
                rule: rule.to_owned(),
                error: format!("rule `{rule}` is no longer in the configuration"),
            });
            return out;
        };
        let scope = Self::scope(event, body, headers);
        self.verdict(rule, event, &scope, &files, &mut out);
        out
    }

    /// One rule's verdict, into `out`.
    fn verdict(
        &self,
        rule: &Rule,
        event: &Event,
        scope: &minijinja::Value,
        files: &Files,
        out: &mut Evaluation,
    ) {
        match self.check(rule, event, scope, files) {
            Ok((request, group, report)) => {
                let (status, status_unreported) = match report {
                    Some(status::Report::Spec(spec)) => (Some(spec), None),
                    Some(status::Report::Unreported(why)) => (None, Some(cut(&why))),
                    None => (None, None),
                };
                out.matched.push(Matched {
                    rule: rule.name.clone(),
                    target: rule.target.clone(),
                    request,
                    group,
                    debounce: rule.concurrency.as_ref().map_or(Duration::ZERO, |c| c.debounce),
                    cancel: rule.concurrency.as_ref().is_some_and(|c| c.cancel_in_progress),
                    status,
                    status_unreported,
                })
            }
            Err(Miss::Skip(reason)) => out.skipped.push(Skipped {
                rule: rule.name.clone(),
                reason: cut(&reason),
            }),
            Err(Miss::Error(error)) => out.errors.push(Errored {
                rule: rule.name.clone(),
                error: cut(&error),
            }),
            Err(Miss::Defer(reason)) => out.deferred.push(Deferred {
                rule: rule.name.clone(),
                reason: cut(&reason),
            }),
        }
    }

    fn check(
        &self,
        rule: &Rule,
        event: &Event,
        scope: &minijinja::Value,
        files: &Files,
    ) -> Result<(TriggerRequest, Option<String>, Option<status::Report>), Miss> {
        filters(rule, event).map_err(Miss::Skip)?;
        // Waiting for the files still runs the rest: an `if` that is false,
        // a template that fails, say so now rather than after the read.
        let deferred = match paths::check(rule, event, files, &self.api_sources) {
            Ok(()) => None,
            Err(paths::Miss::Skip(reason)) => return Err(Miss::Skip(reason)),
            Err(paths::Miss::Defer(reason)) => Some(reason),
        };
        if let Some(cond) = &rule.condition {
            match self.templates.test(cond, scope) {
                Ok(true) => {}
                Ok(false) => return Err(Miss::Skip(format!("if: `{}` is false", cond.source))),
                // The message starts with the condition's name, "rule `NAME` if: ...".
                Err(e) => return Err(Miss::Error(e)),
            }
        }
        let request = rule
            .trigger
            .render(&self.templates, scope, event)
            .map_err(Miss::Error)?;
        let group = match &rule.concurrency {
            Some(c) => Some(self.group(c, scope).map_err(Miss::Error)?),
            None => None,
        };
        let status = match &rule.status {
            Some(s) => Some(
                s.render(&rule.name, &self.templates, scope, event, &self.api_sources)
                    .map_err(Miss::Error)?,
            ),
            None => None,
        };
        if let Some(reason) = deferred {
            return Err(Miss::Defer(reason));
        }
        Ok((request, group, status))
    }

    /// The concurrency group a match joins: text, not empty, short enough to
    /// store with every job, and without NUL (which PostgreSQL cannot store).
    fn group(&self, c: &Concurrency, scope: &minijinja::Value) -> Result<String, String> {
        let group = match self.templates.render(&c.group, scope)? {
            serde_json::Value::String(s) => s,
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::Bool(b) => b.to_string(),
            serde_json::Value::Null => return Err("concurrency.group rendered null".into()),
            _ => return Err("concurrency.group must render text, not a list or a table".into()),
        };
        let limit = crate::config::limits::GROUP;
        if group.trim().is_empty() {
            Err(format!(
                "concurrency.group `{}` rendered an empty string",
                c.source
            ))
        } else if group.contains('\0') {
            Err("concurrency.group rendered a NUL character".into())
        } else if group.chars().count() > limit {
            Err(format!("concurrency.group rendered more than {limit} characters"))
        } else {
            Ok(group)
        }
    }
}

/// The most of a verdict's message kept: it quotes the payload's values
/// (a repository, a branch, paths), which a sender may make as long as its
/// body, and it is sent back, stored and logged once per rule.
const VERDICT_LIMIT: usize = 1000;

fn cut(message: &str) -> String {
    crate::target::truncate_body(message.as_bytes(), VERDICT_LIMIT)
}

fn list_display(items: &[String]) -> String {
    format!("[{}]", items.join(", "))
}

/// The first failing filter, with the value it saw.
fn filters(rule: &Rule, event: &Event) -> Result<(), String> {
    if let Some(sources) = &rule.sources
        && !sources.contains(&event.source)
    {
        return Err(format!(
            "source '{}' not in sources {}",
            event.source,
            list_display(sources)
        ));
    }
    if let Some(events) = &rule.events
        && !events.iter().any(|e| *e == event.kind || *e == event.name)
    {
        let seen = if event.name == event.kind {
            format!("'{}'", event.name)
        } else {
            format!("'{}' ({})", event.name, event.kind)
        };
        return Err(format!("event {seen} not in events {}", list_display(events)));
    }
    if let Some(actions) = &rule.actions {
        let matches = |a: &Option<String>| a.as_ref().is_some_and(|a| actions.contains(a));
        if !matches(&event.action) && !matches(&event.provider_action) {
            return Err(match &event.action {
                Some(a) => format!("action '{a}' not in actions {}", list_display(actions)),
                None => format!("event has no action; actions {} required", list_display(actions)),
            });
        }
    }
    if let Some(repos) = &rule.repositories {
        match &event.repository {
            Some(r) if repos.matches(r) => {}
            Some(r) => return Err(format!("repositories: {r:?} matches none of {}", repos.display())),
            None => return Err("repositories: the event names no repository".into()),
        }
    }
    refs(rule, event)
}

/// Branch and tag filters, with GitHub Actions' rules for which applies.
fn refs(rule: &Rule, event: &Event) -> Result<(), String> {
    let branch_filtered = rule.branches.is_some() || rule.branches_ignore.is_some();
    let tag_filtered = rule.tags.is_some() || rule.tags_ignore.is_some();
    if !branch_filtered && !tag_filtered {
        return Ok(());
    }
    // Pull requests are filtered on their base branch, as in GitHub Actions,
    // and so are the events about one (reviews, comments, approvals), which
    // state it the same way: one rule picks the same pull requests for all.
    let (branch, label) = if event.kind == kind::PULL_REQUEST || event.base_branch.is_some() {
        (event.base_branch.as_deref(), "base branch ")
    } else {
        (event.branch.as_deref(), "")
    };
    // A push of several refs is filtered on its first (`event.changes`).
    let first = match event.changes.len() {
        0 | 1 => String::new(),
        n => format!(" (the first of the {n} refs this push changed; the others are in event.changes)"),
    };
    match (branch, event.tag.as_deref()) {
        (Some(b), _) => {
            if !branch_filtered {
                return Err(format!(
                    "tags: {label}{b:?} is a branch; the rule filters tags only{first}"
                ));
            }
            check_include("branches", &rule.branches, b, label)?;
            check_exclude("branches_ignore", &rule.branches_ignore, b, label)
        }
        (None, Some(t)) => {
            if !tag_filtered {
                return Err(format!(
                    "branches: {t:?} is a tag; the rule filters branches only{first}"
                ));
            }
            check_include("tags", &rule.tags, t, "")?;
            check_exclude("tags_ignore", &rule.tags_ignore, t, "")
        }
        (None, None) => Err(format!(
            "{}: the event has no branch or tag",
            if branch_filtered { "branches" } else { "tags" }
        )),
    }
}

fn check_include(key: &str, list: &Option<PatternList>, value: &str, label: &str) -> Result<(), String> {
    match list {
        // Matched, then excluded by a later `!pattern`: name it.
        Some(l) if !l.matches(value) => match l.deciding_pattern(value) {
            Some(negated) => Err(format!("{key}: {label}{value:?} is excluded by {negated:?}")),
            None => Err(format!("{key}: {label}{value:?} matches none of {}", l.display())),
        },
        _ => Ok(()),
    }
}

fn check_exclude(key: &str, list: &Option<PatternList>, value: &str, label: &str) -> Result<(), String> {
    match list {
        Some(l) if l.matches(value) => Err(format!(
            "{key}: {label}{value:?} matches {:?}",
            l.deciding_pattern(value).unwrap_or_default()
        )),
        _ => Ok(()),
    }
}
