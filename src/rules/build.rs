//! Config time: the `[[rules]]` array compiled into a [`RuleSet`], with every
//! problem reported against its place in the file.

use std::collections::{BTreeMap, HashSet};

use toml::Spanned;

use super::filter::PatternList;
use super::status::{self, SourceNames};
use super::{Concurrency, PathsUnknown, Rule, RuleSet};
use crate::config::diagnostic::{Diagnostic, suggest};
use crate::config::loader::Loader;
use crate::config::raw::{RawConcurrency, RawRule, RawTarget, SpannedList};
use crate::event::Event;
use crate::target::{Target, TargetKind, TriggerTemplate};
use crate::template::TemplateCompiler;

/// What every rule compiles against: the names it may refer to, the compiled
/// targets, the shared template compiler and the diagnostics so far.
struct RuleContext<'a> {
    source_names: SourceNames<'a>,
    raw_targets: &'a BTreeMap<Spanned<String>, Spanned<RawTarget>>,
    targets: &'a BTreeMap<String, Target>,
    compiler: TemplateCompiler,
    loader: &'a mut Loader,
}

/// Compile the `[[rules]]` array.
pub fn build(
    raw_rules: &[Spanned<RawRule>],
    source_names: &SourceNames<'_>,
    raw_targets: &BTreeMap<Spanned<String>, Spanned<RawTarget>>,
    targets: &BTreeMap<String, Target>,
    loader: &mut Loader,
) -> RuleSet {
    let mut cx = RuleContext {
        source_names: *source_names,
        raw_targets,
        targets,
        compiler: TemplateCompiler::new(Event::FIELDS),
        loader,
    };
    let mut rules = Vec::new();
    let mut seen = HashSet::new();
    for raw in raw_rules {
        let r = raw.get_ref();
        let name = r.name.get_ref().clone();
        if !seen.insert(name.clone()) {
            cx.loader.error(
                format!(
                    "rule name `{}` is used twice; names identify rules in summaries and jobs",
                    shown_name(&name)
                ),
                r.name.span(),
            );
            continue;
        }
        if name.trim().is_empty() {
            cx.loader.error("rule name cannot be empty", r.name.span());
            continue;
        }
        // A NUL cannot be stored by PostgreSQL (every delivery the rule
        // matched was refused), and other control characters rewrite the
        // terminal and log lines the name is printed in.
        if name.chars().any(char::is_control) || name.chars().count() > crate::config::limits::RULE_NAME {
            cx.loader.error(
                format!(
                    "rule name `{}` must be at most {} characters, without control characters",
                    shown_name(&name),
                    crate::config::limits::RULE_NAME
                ),
                r.name.span(),
            );
            continue;
        }
        if let Some(rule) = cx.rule(&name, raw) {
            rules.push(rule);
        }
    }
    let (templates, needs_body) = cx.compiler.finish();
    RuleSet {
        rules,
        templates,
        needs_body,
        api_sources: source_names.with_api.iter().map(|s| (*s).to_owned()).collect(),
    }
}

impl<'a> RuleContext<'a> {
    /// One rule, or `None` when it has errors (each one reported).
    fn rule(&mut self, name: &str, raw: &Spanned<RawRule>) -> Option<Rule> {
        let r = raw.get_ref();
        let errors_before = self.loader.error_count();
        let sources = self.sources(name, r);
        let events = self.words(name, &r.events, "events");
        let actions = self.words(name, &r.actions, "actions");
        let repositories = self.patterns(name, &r.repositories, true, "repositories");
        let branches = self.patterns(name, &r.branches, false, "branches");
        let branches_ignore = self.patterns(name, &r.branches_ignore, false, "branches_ignore");
        let tags = self.patterns(name, &r.tags, false, "tags");
        let tags_ignore = self.patterns(name, &r.tags_ignore, false, "tags_ignore");
        let paths = self.patterns(name, &r.paths, false, "paths");
        let paths_ignore = self.patterns(name, &r.paths_ignore, false, "paths_ignore");
        let paths_unknown = self.paths_unknown(name, r);
        let paths_unknown_on_error = self.paths_unknown_on_error(name, r);
        let condition = r.condition.as_ref().and_then(|c| {
            self.compiler
                .condition(&format!("rule `{name}` if"), c.get_ref())
                .map_err(|e| self.loader.error(format!("rule `{name}`: if: {e}"), c.span()))
                .ok()
        });

        let target_name = r.trigger.get_ref().target.get_ref();
        let target = self.target(name, r)?;
        let trigger = TriggerTemplate::compile(name, &r.trigger, target, &mut self.compiler, self.loader)?;
        let retry = match &r.retry {
            Some(raw_retry) => target.retry.overlay(raw_retry, self.loader),
            None => target.retry.clone(),
        };
        let concurrency = r
            .concurrency
            .as_ref()
            .and_then(|c| self.concurrency(name, r, c, target));
        let status = r.status.as_ref().and_then(|s| {
            status::compile(
                name,
                r,
                s,
                target,
                self.source_names,
                &mut self.compiler,
                self.loader,
            )
        });
        (self.loader.error_count() == errors_before).then(|| Rule {
            name: name.to_owned(),
            sources,
            events,
            actions,
            repositories,
            branches,
            branches_ignore,
            tags,
            tags_ignore,
            paths,
            paths_ignore,
            paths_unknown,
            paths_unknown_on_error,
            condition,
            target: target_name.clone(),
            trigger,
            retry,
            concurrency,
            status,
        })
    }

    /// `[rules.concurrency]`. Superseding a CircleCI v1.1 job that pins a
    /// `revision` skips that commit's build: a warning, since it may be meant.
    fn concurrency(
        &mut self,
        name: &str,
        r: &RawRule,
        c: &RawConcurrency,
        target: &Target,
    ) -> Option<Concurrency> {
        if let Some(cancel) = &c.cancel_in_progress
            && *cancel.get_ref()
            && target.kind == TargetKind::Gitlab
            && !target.has_api_token
        {
            self.loader.push(
                Diagnostic::error(
                    format!(
                        "rule `{name}`: cancel_in_progress needs `api_token` on target `{}`: a trigger token cannot cancel a pipeline",
                        target.name
                    ),
                    Some(cancel.span()),
                )
                .with_help("set `api_token = \"env:GITLAB_API_TOKEN\"` (an access token with the `api` scope) on the target"),
            );
        }
        if let Some(cancel) = &c.cancel_in_progress
            && *cancel.get_ref()
            && !matches!(target.kind, TargetKind::Gitlab | TargetKind::Circleci)
        {
            self.loader.push(
                Diagnostic::error(
                    format!(
                        "rule `{name}`: cancel_in_progress cancels CircleCI and GitLab pipelines; target `{}` is a {} target",
                        target.name,
                        target.kind.as_str()
                    ),
                    Some(cancel.span()),
                )
                .with_help("leave `cancel_in_progress` out: newest-wins and `debounce` work for every target"),
            );
        }
        let trigger = r.trigger.get_ref();
        if trigger.job.is_some()
            && target.kind == TargetKind::Circleci
            && let Some(revision) = &trigger.revision
        {
            self.loader.push(
                Diagnostic::warning(
                    format!("rule `{name}`: a CircleCI v1.1 job with `revision` builds that one commit; a newer job of its concurrency group supersedes it, and that commit is never built"),
                    Some(revision.span()),
                )
                .with_help("remove `revision` to build the branch's head, or `[rules.concurrency]` to build every commit"),
            );
        }
        let source = c.group.get_ref();
        let group = self
            .compiler
            .text(&format!("rule `{name}` concurrency.group"), source)
            .map_err(|e| {
                self.loader
                    .error(format!("rule `{name}`: concurrency.group: {e}"), c.group.span())
            })
            .ok()?;
        if source.trim().is_empty() {
            self.loader.error(
                format!("rule `{name}`: concurrency.group is empty; name the group, e.g. \"{{{{ event.repository }}}}/{{{{ event.branch }}}}\""),
                c.group.span(),
            );
            return None;
        }
        Some(Concurrency {
            group,
            source: source.clone(),
            debounce: c.debounce.map_or(std::time::Duration::ZERO, |d| d.0),
            cancel_in_progress: c.cancel_in_progress.as_ref().is_some_and(|c| *c.get_ref()),
        })
    }

    /// `source = [..]`: every name must be a configured source.
    fn sources(&mut self, name: &str, r: &RawRule) -> Option<Vec<String>> {
        let s = r.source.as_ref()?;
        let list: Vec<String> = s.get_ref().0.iter().map(|n| n.get_ref().clone()).collect();
        for n in &s.get_ref().0 {
            if !self.source_names.all.contains(&n.get_ref().as_str()) {
                let span = if n.span().is_empty() { s.span() } else { n.span() };
                let mut d = Diagnostic::error(
                    format!("rule `{name}`: unknown source `{}`", n.get_ref()),
                    Some(span),
                );
                d = match suggest(n.get_ref(), self.source_names.all.iter().copied()) {
                    Some(m) => d.with_help(format!("did you mean `{m}`?")),
                    None if self.source_names.all.is_empty() => {
                        d.with_help("no `[sources.NAME]` is configured")
                    }
                    None => d.with_help(format!("sources are {}", self.source_names.all.join(", "))),
                };
                self.loader.push(d);
            }
        }
        Some(list)
    }

    /// `events`, `actions`: plain words; an empty list would match nothing.
    fn words(&mut self, name: &str, l: &Option<SpannedList<String>>, key: &str) -> Option<Vec<String>> {
        l.as_ref().map(|l| {
            if l.get_ref().is_empty() {
                self.loader.error(
                    format!("rule `{name}`: `{key}` is empty and would match nothing; remove it instead"),
                    l.span(),
                );
            }
            l.get_ref()
                .iter()
                .map(|s| s.get_ref().clone())
                .collect::<Vec<_>>()
        })
    }

    /// Glob lists (`branches`, `paths`, ...).
    fn patterns(
        &mut self,
        name: &str,
        l: &Option<SpannedList<String>>,
        case_insensitive: bool,
        key: &str,
    ) -> Option<PatternList> {
        l.as_ref()
            .and_then(|l| match PatternList::compile(l, case_insensitive) {
                Ok(p) => Some(p),
                Err((msg, span)) => {
                    self.loader.error(format!("rule `{name}`: {key}: {msg}"), span);
                    None
                }
            })
    }

    /// `paths_unknown`: `fetch` by default (it reads the files only where
    /// the event's source has an `api`; elsewhere it skips, as before), and
    /// when written, only on a rule one of whose sources has one.
    fn paths_unknown(&mut self, name: &str, r: &RawRule) -> PathsUnknown {
        let span = || r.paths_unknown.as_ref().map(Spanned::span).unwrap_or_default();
        match r.paths_unknown.as_ref().map(|p| p.get_ref().as_str()) {
            None => PathsUnknown::Fetch,
            Some("skip") => PathsUnknown::Skip,
            Some("match") => PathsUnknown::Match,
            Some("fetch") => {
                let with_api = self.source_names.with_api;
                let any = match &r.source {
                    Some(list) => list
                        .get_ref()
                        .0
                        .iter()
                        .any(|s| with_api.contains(&s.get_ref().as_str())),
                    None => !with_api.is_empty(),
                };
                if !any {
                    self.loader.push(
                        crate::config::diagnostic::Diagnostic::error(
                            format!(
                                "rule `{name}`: paths_unknown = \"fetch\" reads the changed files from the VCS, but none of its sources has an `api`"
                            ),
                            Some(span()),
                        )
                        .with_help("add `[sources.NAME.api]` with `url` and `token` to the rule's source"),
                    );
                }
                PathsUnknown::Fetch
            }
            Some(other) => {
                self.loader.error(
                    format!(
                        "rule `{name}`: paths_unknown `{other}`: expected \"fetch\", \"skip\" or \"match\""
                    ),
                    span(),
                );
                PathsUnknown::Skip
            }
        }
    }

    /// `paths_unknown_on_error`: what a rule does when the changed files
    /// cannot be read (`skip` by default, or `match`).
    fn paths_unknown_on_error(&mut self, name: &str, r: &RawRule) -> PathsUnknown {
        match r.paths_unknown_on_error.as_ref().map(|p| p.get_ref().as_str()) {
            None | Some("skip") => PathsUnknown::Skip,
            Some("match") => PathsUnknown::Match,
            Some(other) => {
                let span = r
                    .paths_unknown_on_error
                    .as_ref()
                    .map(Spanned::span)
                    .unwrap_or_default();
                self.loader.error(
                    format!(
                        "rule `{name}`: paths_unknown_on_error `{other}`: expected \"skip\" or \"match\""
                    ),
                    span,
                );
                PathsUnknown::Skip
            }
        }
    }

    /// The rule's target, or `None` with an error when it is not configured.
    fn target(&mut self, name: &str, r: &RawRule) -> Option<&'a Target> {
        let target_name = r.trigger.get_ref().target.get_ref();
        let target = self.targets.get(target_name);
        // A target that exists but failed to build already has its own error.
        if target.is_none() && !self.raw_targets.keys().any(|k| k.get_ref() == target_name) {
            let names: Vec<&str> = self.raw_targets.keys().map(|k| k.get_ref().as_str()).collect();
            let mut d = Diagnostic::error(
                format!("rule `{name}`: unknown target `{target_name}`"),
                Some(r.trigger.get_ref().target.span()),
            );
            d = match suggest(target_name, names.iter().copied()) {
                Some(m) => d.with_help(format!("did you mean `{m}`?")),
                None if names.is_empty() => d.with_help("no `[targets.NAME]` is configured"),
                None => d.with_help(format!("targets are {}", names.join(", "))),
            };
            self.loader.push(d);
        }
        target
    }
}

/// A rule's name for a message: cut short, control characters escaped.
fn shown_name(name: &str) -> String {
    let mut out = String::new();
    for c in crate::config::units::shown(name).chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}
