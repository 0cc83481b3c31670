//! `[rules.status]`: a rule that reports its job on the commit. Compiled
//! with the rule (`check` refuses a status no source of the rule could
//! post, and a `poll` the target cannot answer), and rendered per match
//! into the [`StatusSpec`] stored with the job. The states themselves are
//! posted later, by the VCS client (`crate::vcs`), with the source's
//! `[sources.NAME.api]`.

use std::collections::BTreeSet;
use std::time::Duration;

use toml::Spanned;

use crate::config::diagnostic::Diagnostic;
use crate::config::loader::Loader;
use crate::config::raw::{RawRule, RawStatus};
use crate::event::{Event, Provider};
use crate::store::status::{StatusSpec, Vcs};
use crate::target::{Target, TargetKind};
use crate::template::{TemplateCompiler, TemplateValue, Templates};

/// The context when `[rules.status]` names none.
pub const DEFAULT_CONTEXT: &str = "hookbridge/{{ rule }}";
/// How long a job's result is waited for when `poll_timeout` is not set.
pub const DEFAULT_POLL_TIMEOUT: Duration = Duration::from_secs(12 * 3600);
/// The shortest `poll`: CI APIs rate-limit, and a pipeline takes minutes.
pub const MIN_POLL: Duration = Duration::from_secs(10);
/// Names a status context may use besides `event`, `body` and `headers`.
const CONTEXT_ROOTS: &[&str] = &["rule"];

/// `[rules.status]`, compiled.
#[derive(Debug)]
pub struct StatusRule {
    /// The status's name on the commit; sees `rule` besides the event.
    pub context: TemplateValue,
    /// The context as written, for messages.
    pub context_source: String,
    /// Report the pipeline's final result, not only its creation.
    pub follow: bool,
    /// Ask the CI after this long without a completion event.
    pub poll: Option<Duration>,
    /// Stop waiting for the result after this long.
    pub poll_timeout: Duration,
    /// Whether the result of the rule's pipelines can reach hookbridge at
    /// all (not from a target or trigger that never reports one; `check`
    /// warns of those when `follow` is set).
    pub learns_result: bool,
}

/// The source names a rule set compiles against.
#[derive(Debug, Clone, Copy)]
pub struct SourceNames<'a> {
    /// Every `[sources.NAME]`.
    pub all: &'a [&'a str],
    /// The sources with `[sources.NAME.api]`: the ones that can post statuses.
    pub with_api: &'a [&'a str],
}

/// Compile `[rules.status]` of rule `name`, whose target is `target`;
/// `None` when it has errors (each one reported).
pub(super) fn compile(
    name: &str,
    r: &RawRule,
    raw: &Spanned<RawStatus>,
    target: &Target,
    sources: SourceNames<'_>,
    compiler: &mut TemplateCompiler,
    loader: &mut Loader,
) -> Option<StatusRule> {
    let errors_before = loader.error_count();
    let s = raw.get_ref();
    check_sources(name, r, raw.span(), sources, loader);
    let context_source = s
        .context
        .as_ref()
        .map_or(DEFAULT_CONTEXT, |c| c.get_ref().as_str());
    let context_span = s.context.as_ref().map_or_else(|| raw.span(), Spanned::span);
    let context = if context_source.trim().is_empty() {
        loader.error(
            format!("rule `{name}`: status.context is empty; leave it out for \"{DEFAULT_CONTEXT}\""),
            context_span,
        );
        None
    } else {
        compiler
            .text_with(
                &format!("rule `{name}` status.context"),
                context_source,
                CONTEXT_ROOTS,
            )
            .map_err(|e| {
                loader.error(
                    format!("rule `{name}`: status.context: {e}"),
                    context_span.clone(),
                )
            })
            .ok()
    };
    let follow = s.follow.as_ref().is_none_or(|f| *f.get_ref());
    let poll = s.poll.as_ref().map(|p| (p.get_ref().0, p.span()));
    let poll_timeout = s
        .poll_timeout
        .as_ref()
        .map_or(DEFAULT_POLL_TIMEOUT, |t| t.get_ref().0);
    if let Some((poll, span)) = &poll {
        check_poll(name, r, target, *poll, span.clone(), follow, loader);
        if poll_timeout <= *poll {
            let span = s
                .poll_timeout
                .as_ref()
                .map_or_else(|| span.clone(), Spanned::span);
            loader.error(
                format!(
                    "rule `{name}`: status.poll_timeout ({}) must be longer than poll ({})",
                    crate::config::units::HumanDuration(poll_timeout),
                    crate::config::units::HumanDuration(*poll)
                ),
                span,
            );
        }
    }
    let learns_result = reads_results(r, target.kind);
    if follow && !learns_result {
        let span = s.follow.as_ref().map_or_else(|| raw.span(), Spanned::span);
        let (why, help) = if target.kind == TargetKind::Circleci {
            (
                "a CircleCI v1.1 job trigger creates no pipeline, so neither CircleCI webhooks nor reads can tell its result; its status stays running once the job is triggered".to_owned(),
                "set `follow = false` to report success once the job is triggered, or trigger a pipeline (API v2) to report its result",
            )
        } else {
            (
                format!(
                    "hookbridge learns pipeline results from CircleCI and GitLab only; the status of a {} target's pipeline stays pending after \"pipeline created\"",
                    target.kind.as_str()
                ),
                "set `follow = false` to report success once the pipeline is created",
            )
        };
        loader.push(Diagnostic::warning(format!("rule `{name}`: {why}"), Some(span)).with_help(help));
    }
    if loader.error_count() != errors_before {
        return None;
    }
    Some(StatusRule {
        context: context?,
        context_source: context_source.to_owned(),
        follow,
        poll: poll.map(|(p, _)| p),
        poll_timeout,
        learns_result,
    })
}

/// Whether the results of the pipelines rule `r` creates on a target of
/// `kind` reach hookbridge (completion webhooks, reads): GitLab's and
/// CircleCI's, but not those of a CircleCI v1.1 job trigger, whose result
/// names no pipeline that a watch or a completion event could find.
fn reads_results(r: &RawRule, kind: TargetKind) -> bool {
    match kind {
        TargetKind::Gitlab => true,
        TargetKind::Circleci => r.trigger.get_ref().job.is_none(),
        _ => false,
    }
}

/// Each followed rule's `poll_timeout` within `[store] retention`: a
/// delivery whose pipeline is still watched is not purged, so a longer wait
/// would keep it (payload and all) past the retention the operator set.
/// `raw` is the rules as written, for the place to point at.
pub fn check_retention(
    rules: &super::RuleSet,
    raw: &[Spanned<RawRule>],
    retention: Duration,
    loader: &mut Loader,
) {
    for rule in rules.rules() {
        let Some(status) = rule.status.as_ref() else {
            continue;
        };
        // Nothing is watched without `follow`, or for a result that never comes.
        if !status.follow || !status.learns_result || status.poll_timeout <= retention {
            continue;
        }
        let written = raw
            .iter()
            .find(|r| *r.get_ref().name.get_ref() == rule.name)
            .and_then(|r| r.get_ref().status.as_ref());
        let (span, default) = match written.map(|s| (s, &s.get_ref().poll_timeout)) {
            Some((_, Some(t))) => (Some(t.span()), ""),
            Some((s, None)) => (Some(s.span()), ", the default"),
            None => (None, ""),
        };
        loader.push(
            Diagnostic::error(
                format!(
                    "rule `{}`: status.poll_timeout ({}{default}) is longer than `[store] retention` ({}): a delivery is kept while its pipeline is watched",
                    rule.name,
                    crate::config::units::HumanDuration(status.poll_timeout),
                    crate::config::units::HumanDuration(retention)
                ),
                span,
            )
            .with_help("set a shorter `poll_timeout`, or a longer `[store] retention`"),
        );
    }
}

/// Every source the rule may match must have an API to post with.
fn check_sources(
    name: &str,
    r: &RawRule,
    span: std::ops::Range<usize>,
    sources: SourceNames<'_>,
    loader: &mut Loader,
) {
    match &r.source {
        Some(list) => {
            for source in &list.get_ref().0 {
                let source = source.get_ref().as_str();
                // An unknown source has its own error.
                if sources.all.contains(&source) && !sources.with_api.contains(&source) {
                    loader.push(
                        Diagnostic::error(
                            format!(
                                "rule `{name}`: `[rules.status]` needs `[sources.{source}.api]`: statuses are posted through the source's API"
                            ),
                            Some(span.clone()),
                        )
                        .with_help(format!(
                            "add `[sources.{source}.api]` with a `token` that may write commit statuses"
                        )),
                    );
                }
            }
        }
        None if sources.with_api.is_empty() => loader.push(
            Diagnostic::error(
                format!("rule `{name}`: `[rules.status]` needs a source with `[sources.NAME.api]`, and none has one"),
                Some(span),
            )
            .with_help("add `[sources.NAME.api]` with a `token` to the sources the rule takes events from"),
        ),
        None => {}
    }
}

/// `poll`: at least [`MIN_POLL`], and a target whose pipelines hookbridge can read.
fn check_poll(
    name: &str,
    r: &RawRule,
    target: &Target,
    poll: Duration,
    span: std::ops::Range<usize>,
    follow: bool,
    loader: &mut Loader,
) {
    if poll < MIN_POLL {
        loader.error(
            format!(
                "rule `{name}`: status.poll is at least {}: each poll is a call to the CI's API",
                crate::config::units::HumanDuration(MIN_POLL)
            ),
            span.clone(),
        );
    }
    if let Some(why) = unreadable(r, target) {
        loader.push(
            Diagnostic::error(format!("rule `{name}`: status.poll: {why}"), Some(span.clone()))
                .with_help("remove `poll`: the result then comes from the CI's completion webhook"),
        );
    }
    if !follow {
        loader.push(
            Diagnostic::warning(
                format!("rule `{name}`: status.poll has no effect with `follow = false`"),
                Some(span),
            )
            .with_help("remove `poll`, or set `follow = true` to report the pipeline's result"),
        );
    }
}

/// Why hookbridge cannot read the pipelines of this rule's trigger, if it cannot.
fn unreadable(r: &RawRule, target: &Target) -> Option<String> {
    match target.kind {
        TargetKind::Gitlab if !target.has_api_token => Some(format!(
            "reading a GitLab pipeline needs `api_token` on target `{}` (scope `read_api`); a trigger token cannot",
            target.name
        )),
        TargetKind::Gitlab => None,
        TargetKind::Circleci if r.trigger.get_ref().job.is_some() => Some(
            "a CircleCI v1.1 job trigger creates no pipeline to read; trigger a pipeline (API v2) instead"
                .to_owned(),
        ),
        TargetKind::Circleci => None,
        other => Some(format!(
            "hookbridge reads pipelines of CircleCI and GitLab targets only; target `{}` is a {} target",
            target.name,
            other.as_str()
        )),
    }
}

/// The VCS an event's statuses go to, when its sender has one.
pub fn vcs_of(event: &Event) -> Option<Vcs> {
    Some(match event.provider {
        Provider::Github => Vcs::Github,
        Provider::Gitlab => Vcs::Gitlab,
        Provider::Gitea => Vcs::Gitea,
        Provider::Forgejo => Vcs::Forgejo,
        Provider::Bitbucket if is_bitbucket_datacenter(&event.name) => Vcs::BitbucketDatacenter,
        Provider::Bitbucket => Vcs::BitbucketCloud,
        _ => return None,
    })
}

/// Whether a Bitbucket event key is Data Center's (`repo:refs_changed`,
/// `pr:opened`, ...) rather than Cloud's (`repo:push`, `pullrequest:created`).
fn is_bitbucket_datacenter(name: &str) -> bool {
    const DC_PREFIXES: [&str; 4] = ["pr:", "mirror:", "repo:comment:", "diagnostics:"];
    const DC_EVENTS: [&str; 3] = ["repo:refs_changed", "repo:modified", "repo:forked"];
    DC_PREFIXES.iter().any(|p| name.starts_with(p)) || DC_EVENTS.contains(&name)
}

/// What a match reports on its commit: a spec, or why none.
#[derive(Debug)]
pub(super) enum Report {
    Spec(StatusSpec),
    /// Not reported, and why (the job still runs).
    Unreported(String),
}

impl StatusRule {
    /// The status a match of rule `rule` on `event` reports. `Err` when the
    /// context fails to render (the rule's error, as for its trigger).
    pub(super) fn render(
        &self,
        rule: &str,
        templates: &Templates,
        scope: &minijinja::Value,
        event: &Event,
        with_api: &BTreeSet<String>,
    ) -> Result<Report, String> {
        let source = &event.source;
        if !with_api.contains(source) {
            return Ok(Report::Unreported(format!(
                "source `{source}` has no `[sources.{source}.api]`"
            )));
        }
        let Some(vcs) = vcs_of(event) else {
            return Ok(Report::Unreported(format!(
                "`{}` sources take no commit statuses",
                event.provider.as_str()
            )));
        };
        let Some(sha) = event.sha.clone() else {
            return Ok(Report::Unreported(
                "the event names no commit (`event.sha` is null)".into(),
            ));
        };
        let Some(repository) = event.repository.clone() else {
            return Ok(Report::Unreported("the event names no repository".into()));
        };
        let scope = minijinja::context! { rule => rule, ..scope.clone() };
        let context = match templates.render(&self.context, &scope)? {
            serde_json::Value::String(s) => s,
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::Bool(b) => b.to_string(),
            serde_json::Value::Null => return Err("status.context rendered null".into()),
            _ => return Err("status.context must render text, not a list or a table".into()),
        };
        let limit = crate::config::limits::STATUS_CONTEXT;
        if context.trim().is_empty() {
            return Err(format!(
                "status.context `{}` rendered an empty string",
                self.context_source
            ));
        }
        if context.chars().any(char::is_control) {
            return Err("status.context rendered a control character".into());
        }
        if context.chars().count() > limit {
            return Err(format!("status.context rendered more than {limit} characters"));
        }
        Ok(Report::Spec(StatusSpec {
            source: source.clone(),
            vcs,
            repository,
            sha,
            git_ref: event.git_ref.clone(),
            context,
            follow: self.follow,
            poll: self.poll,
            poll_timeout: self.poll_timeout,
        }))
    }
}

#[cfg(test)]
mod tests;
