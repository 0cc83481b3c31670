//! Reconcile before retry: when an earlier attempt of a job may have reached
//! the CI without its answer reaching hookbridge (it timed out or its
//! connection was cut after sending, or its worker stopped mid-attempt),
//! the next attempt first asks the CI for the pipeline that attempt may have
//! created, and records it instead of triggering again.
//!
//! - GitLab, exactly: every trigger of a target with an `api_token` carries
//!   the variable `HOOKBRIDGE_JOB=<job id>` ([`MARKER`]); the trigger
//!   pipelines of the ref created since the earlier attempt are listed and
//!   their variables read until one carries this job's id.
//! - CircleCI v2 (pipeline, pipeline run), a heuristic: the pipelines the
//!   token's user created through the API on the job's branch (or tag)
//!   since the earlier attempt, less those other jobs recorded; exactly one
//!   is this job's, none means the earlier attempt created nothing, several
//!   cannot be told apart (sent again).
//!
//! Every other target (and a GitLab target without `api_token`, or with
//! `reconcile = false`) is sent again: at least once, as before.

use std::time::{Duration, SystemTime};

use super::caller::{Caller, Exchange, Stop};
use super::client::Transport;
use super::{OutboundRequest, Target, TargetKind, TriggerRequest, TriggerResult, circleci};

mod circleci_v2;
mod gitlab;

pub use super::gitlab::MARKER;

/// How much earlier than the ambiguous attempt's start a pipeline may be
/// stamped and still be its own: the CI's clock and this host's differ.
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// How far back the pipelines other jobs recorded are read: wider than
/// [`CLOCK_SKEW`], since replicas stamp them by their own clocks.
pub const RECORDED_SKEW: Duration = Duration::from_secs(600);

/// The longest one read of a reconcile waits.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What reconciling decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Reconciled {
    /// The earlier attempt's pipeline: recorded, nothing sent.
    Found { result: TriggerResult, why: String },
    /// The earlier attempt created nothing: send.
    NotFound(String),
    /// It cannot be known (no way to ask, or the CI's answer cannot say):
    /// send, at least once as without reconcile.
    Skipped(String),
    /// The CI's API cannot answer now: try again later, sending nothing.
    Failed { reason: String, after: Option<Duration> },
}

impl Reconciled {
    /// The metric label.
    pub fn outcome(&self) -> &'static str {
        match self {
            Reconciled::Found { .. } => "found",
            Reconciled::NotFound(_) => "not_found",
            Reconciled::Skipped(_) => "skipped",
            Reconciled::Failed { .. } => "failed",
        }
    }

    /// The text recorded on the attempt.
    pub fn describe(&self) -> String {
        match self {
            Reconciled::Found { why, .. } => format!("found: {why}; not triggered again"),
            Reconciled::NotFound(why) => format!("not found: {why}; triggered"),
            Reconciled::Skipped(why) => format!("skipped: {why}; triggered again (at least once)"),
            Reconciled::Failed { reason, .. } => {
                format!("failed: {reason}; not triggered, tried again later")
            }
        }
    }
}

/// Whether `target` can reconcile its jobs, and if not, why: for `check`
/// and the attempt record.
pub fn unable(target: &Target, request: Option<&TriggerRequest>) -> Option<String> {
    match target.kind {
        TargetKind::Gitlab | TargetKind::Circleci if !target.reconcile => {
            Some("the target sets `reconcile = false`".into())
        }
        TargetKind::Gitlab if target.api_token.is_none() => {
            Some("the target has no `api_token` to list its pipelines with (a trigger token cannot)".into())
        }
        TargetKind::Gitlab => None,
        TargetKind::Circleci => match request {
            Some(TriggerRequest::Circleci(circleci::Request::Job(_))) => {
                Some("API v1.1 jobs cannot be told apart".into())
            }
            _ => None,
        },
        other => Some(format!(
            "hookbridge cannot look up a {} run it may have started",
            other.as_str()
        )),
    }
}

/// Whether a GitLab trigger of `target` carries [`MARKER`].
pub fn marks(target: &Target) -> bool {
    target.kind == TargetKind::Gitlab && unable(target, None).is_none()
}

impl Target {
    /// Mark a GitLab trigger of job `id` with the variable
    /// [`HOOKBRIDGE_JOB`](MARKER), by which a later
    /// attempt finds the pipeline an ambiguous one created (when the
    /// target can reconcile: it has an `api_token`).
    pub fn mark(&self, request: &mut OutboundRequest, id: &str) {
        if !marks(self) {
            return;
        }
        if let Some(body) = request.body.as_object_mut() {
            let variables = body
                .entry("variables")
                .or_insert_with(|| serde_json::Value::Object(serde_json::Map::new()));
            if let Some(variables) = variables.as_object_mut() {
                variables.insert(MARKER.into(), id.into());
            }
        }
    }
}

/// What looking at the CI found: a decision (GitLab's marker decides
/// alone), or pipelines that may be the job's, to weigh against what the
/// target's other jobs did ([`Candidates::decide`]).
#[derive(Debug)]
pub enum Looked {
    Decided(Reconciled),
    Candidates(Candidates),
}

/// The job a reconcile looks for.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub id: &'a str,
    pub request: &'a TriggerRequest,
    /// The pipeline its round before a replay recorded: not this round's.
    pub previous: Option<&'a str>,
}

/// Look at the CI for the pipeline job `job` may have created since its
/// earliest ambiguous attempt began (`since`). Each read waits at most
/// `timeout` (and [`READ_TIMEOUT`]).
pub async fn look(
    transport: &dyn Transport,
    target: &Target,
    job: Subject<'_>,
    since: SystemTime,
    (timeout, now): (Duration, SystemTime),
) -> (Looked, Exchange) {
    let timeout = timeout.min(READ_TIMEOUT);
    let request = job.request;
    if let Some(why) = unable(target, Some(request)) {
        return (Looked::Decided(Reconciled::Skipped(why)), Exchange::default());
    }
    let after = since.checked_sub(CLOCK_SKEW).unwrap_or(since);
    match request {
        TriggerRequest::Gitlab(r) => {
            let Some(token) = target.api_token.as_ref() else {
                return (
                    Looked::Decided(Reconciled::Skipped("no `api_token`".into())),
                    Exchange::default(),
                );
            };
            let mut caller = Caller::new(transport, token, "PRIVATE-TOKEN", timeout, now);
            let decided = gitlab::find(&mut caller, &target.base_url, r, (job.id, job.previous), after).await;
            (Looked::Decided(decided), caller.last)
        }
        TriggerRequest::Circleci(r) => {
            let Some(token) = target.token.as_ref() else {
                return (
                    Looked::Decided(Reconciled::Skipped("no `token`".into())),
                    Exchange::default(),
                );
            };
            let mut caller = Caller::new(transport, token, "Circle-Token", timeout, now);
            let looked = circleci_v2::list(&mut caller, &target.base_url, r, after).await;
            (looked, caller.last)
        }
        other => (
            Looked::Decided(Reconciled::Skipped(format!(
                "hookbridge cannot look up a {} run",
                other.target_kind().as_str()
            ))),
            Exchange::default(),
        ),
    }
}

/// Pipelines the token's user started through the API where the job
/// triggers, since its ambiguous attempt: any may be the job's, or another
/// job's of the same target.
#[derive(Debug)]
pub struct Candidates {
    pub(crate) found: Vec<TriggerResult>,
    /// Where they ran: `branch `main``.
    pub(crate) place: String,
    /// Since when (RFC 3339).
    pub(crate) since: String,
}

impl Candidates {
    /// Leave out the pipelines other jobs of the target recorded
    /// (`recorded`); exactly one left is the job's, unless another job
    /// triggering at the same place has an outcome unknown (`unsettled`):
    /// it may be that job's, not yet recorded.
    pub fn decide(self, recorded: &[String], unsettled: usize) -> Reconciled {
        let Candidates { found, place, since } = self;
        let total = found.len();
        let mut left: Vec<TriggerResult> = found
            .into_iter()
            .filter(|p| p.id.as_ref().is_none_or(|id| !recorded.contains(id)))
            .collect();
        let besides = match total - left.len() {
            0 => String::new(),
            1 => " (besides the one another job recorded)".to_owned(),
            n => format!(" (besides the {n} other jobs recorded)"),
        };
        let others = match unsettled {
            1 => "1 other job".to_owned(),
            n => format!("{n} other jobs"),
        };
        match left.len() {
            0 => Reconciled::NotFound(format!(
                "the token's user started no API pipeline on {place} since {since}{besides}"
            )),
            1 if unsettled > 0 => Reconciled::Skipped(format!(
                "one API pipeline on {place} since {since}{besides}, but {others} on {place} may have started it and not recorded it yet"
            )),
            1 => {
                let result = left.remove(0);
                let name = match (&result.number, &result.id) {
                    (Some(n), Some(id)) => format!("#{n} ({id})"),
                    (None, Some(id)) => id.clone(),
                    (Some(n), None) => format!("#{n}"),
                    (None, None) => "?".to_owned(),
                };
                Reconciled::Found {
                    why: format!(
                        "pipeline {name} is the one API pipeline the token's user started on {place} since {since}{besides} (a heuristic: CircleCI returns no trigger parameters)"
                    ),
                    result,
                }
            }
            n => Reconciled::Skipped(format!(
                "the token's user started {n} API pipelines on {place} since {since}{besides}: which one (if any) is this job's cannot be told"
            )),
        }
    }
}

/// Whether two jobs trigger at the same place (CircleCI: project and
/// branch or tag), so that one's pipeline could pass for the other's.
pub fn same_place(a: &TriggerRequest, b: &TriggerRequest) -> bool {
    circleci_v2::place(a).is_some() && circleci_v2::place(a) == circleci_v2::place(b)
}

/// `request` without its [`MARKER`], when a GitLab project refused it for
/// that (`400 Insufficient permissions to set pipeline variables`: nothing
/// was created, so sending again is safe).
pub fn refused_marker(request: &OutboundRequest, outcome: &super::Outcome) -> Option<OutboundRequest> {
    let super::Outcome::Permanent(reason) = outcome else {
        return None;
    };
    if !reason.starts_with("HTTP 400")
        || !reason.contains("Insufficient permissions to set pipeline variables")
    {
        return None;
    }
    let mut plain = request.clone();
    let body = plain.body.as_object_mut()?;
    let variables = body.get_mut("variables")?.as_object_mut()?;
    variables.remove(MARKER)?;
    if variables.is_empty() {
        body.remove("variables");
    }
    Some(plain)
}

/// A stop of the reads: a 4xx (the token cannot read, say) cannot be fixed
/// by waiting, so the job is sent again; anything else is tried later.
fn stopped(stop: Stop) -> Reconciled {
    match stop {
        Stop::Retry { reason, after } => Reconciled::Failed {
            reason: format!("cannot ask the CI: {reason}"),
            after,
        },
        Stop::Permanent(reason) => Reconciled::Skipped(format!("the CI refused the lookup: {reason}")),
    }
}

/// A time as the CI APIs write it: RFC 3339, UTC, milliseconds.
fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests;
