//! From a raw request to a delivery ready to store: verify, describe, evaluate.
//!
//! The HTTP handler, `explain`, `test` and `replay --reevaluate` all go through
//! here, so what they report is what the daemon does. The daemon's entry,
//! [`receive`], always verifies; the offline tools call [`process`] and name
//! their [`Trust`], so skipping verification is never a `bool` away.

use std::collections::BTreeMap;
use std::time::SystemTime;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};

use crate::config::Config;
use crate::event::{Event, kind};
use crate::rules::{Evaluation, Files};
use crate::source::{DescribeError, Inbound, Source, Verified, VerifyError};
use crate::store::deferral::Verdict;
use crate::store::{DeliveryKey, MatchedJob, NewDelivery, NewJob, Store, StoreError, Summary};

/// Why a request was refused. The message is safe to send back to the sender.
/// (An unknown source never reaches intake: the handler answers it first.)
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    #[error("{0}")]
    Unauthorized(#[from] VerifyError),
    #[error("{0}")]
    Undescribable(#[from] DescribeError),
}

impl Rejection {
    pub fn status(&self) -> StatusCode {
        match self {
            Rejection::Unauthorized(e) => e.status(),
            Rejection::Undescribable(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// The metrics label for this outcome.
    pub fn outcome(&self) -> &'static str {
        match self.status() {
            StatusCode::UNAUTHORIZED => "unauthorized",
            _ => "invalid",
        }
    }
}

/// Why a stored delivery could not be evaluated and queued again.
#[derive(Debug, thiserror::Error)]
pub enum ReevaluateError {
    /// Reading the delivery or adding its jobs failed (including: no such delivery).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The stored payload does not describe under the current rules (a rule
    /// reads `body` and the payload is not JSON). Safe to show the caller.
    #[error(transparent)]
    Rejected(#[from] Rejection),
}

/// A verified and described delivery with every rule's verdict.
#[derive(Debug)]
pub struct Intake {
    pub event: Event,
    /// Request headers without credentials (what rules see as `headers`).
    pub headers: BTreeMap<String, String>,
    /// The JSON payload (shares the request body's buffer where it can).
    pub payload: Bytes,
    pub evaluation: Evaluation,
}

impl Intake {
    pub fn is_ping(&self) -> bool {
        self.event.kind == kind::PING
    }
}

/// How far an offline tool trusts the request it describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// Check the signature or token as the daemon does (`explain --verify`).
    Verify,
    /// Describe the payload as if it were authentic: `explain` without
    /// `--verify` and `test` cases carry no signature, and neither stores
    /// nor triggers anything.
    AssumeAuthentic,
}

/// The daemon's path: verify, describe and evaluate one request. There is no
/// way to skip verification here; the intake's payload is the body itself,
/// not a copy.
pub fn receive(
    config: &Config,
    source: &Source,
    headers: &HeaderMap,
    body: &Bytes,
    now: SystemTime,
) -> Result<Intake, Rejection> {
    let inbound = Inbound {
        headers,
        body: &body[..],
        now,
    };
    let verified = source.scheme.verify(&inbound)?;
    describe_and_evaluate(config, source, &inbound, verified, body)
}

/// The offline tools' path (`explain`, `test`, library tests): like
/// [`receive`], with the trust named by the caller.
pub fn process(
    config: &Config,
    source: &Source,
    headers: &HeaderMap,
    body: &[u8],
    now: SystemTime,
    trust: Trust,
) -> Result<Intake, Rejection> {
    let body = Bytes::copy_from_slice(body);
    let inbound = Inbound {
        headers,
        body: &body[..],
        now,
    };
    let verified = match trust {
        Trust::Verify => source.scheme.verify(&inbound)?,
        Trust::AssumeAuthentic => crate::source::assume_authentic(&inbound)?,
    };
    describe_and_evaluate(config, source, &inbound, verified, &body)
}

fn describe_and_evaluate(
    config: &Config,
    source: &Source,
    inbound: &Inbound<'_>,
    verified: Verified<'_>,
    body: &Bytes,
) -> Result<Intake, Rejection> {
    crate::source::require_utf8(verified.payload())?;
    let event = source.scheme.describe(&source.name, inbound, &verified)?;
    crate::source::check_delivery_id(&event.delivery)?;
    let visible = source.visible_headers(inbound.headers);
    let payload = verified.into_payload_bytes(body);
    let evaluation = if event.kind == kind::PING {
        Evaluation::default()
    } else {
        evaluate(config, &event, &visible, &payload)?
    };
    Ok(Intake {
        event,
        headers: visible,
        payload,
        evaluation,
    })
}

/// Run the rules on a described event; parses the payload only when a rule reads `body`.
pub(crate) fn evaluate(
    config: &Config,
    event: &Event,
    headers: &BTreeMap<String, String>,
    payload: &[u8],
) -> Result<Evaluation, Rejection> {
    let body = body(config, payload)?;
    let evaluation = config.rules.evaluate(event, body.as_ref(), headers);
    Ok(buildable(config, evaluation))
}

/// The payload as JSON, when a rule reads `body`.
fn body(config: &Config, payload: &[u8]) -> Result<Option<serde_json::Value>, Rejection> {
    Ok(if config.rules.needs_body() {
        Some(crate::source::parse(payload)?)
    } else {
        None
    })
}

/// A deferred rule's verdict on a stored delivery, once its changed files
/// are read (`files` is `Read` and `event.paths` holds them) or cannot be
/// (`Unreadable`, and `paths_unknown_on_error` decides). A match comes with
/// its new job.
pub fn settle_deferred(
    config: &Config,
    event: &Event,
    headers: &BTreeMap<String, String>,
    payload: &[u8],
    rule: &str,
    files: Files,
) -> Verdict {
    let evaluation = match evaluate_deferred(config, event, headers, payload, rule, files) {
        Ok(evaluation) => evaluation,
        Err(e) => return Verdict::Errored(e.to_string()),
    };
    let (_, jobs) = summary_and_jobs(event, &evaluation);
    if let Some(job) = jobs.into_iter().next() {
        Verdict::Matched(Box::new(job))
    } else if let Some(s) = evaluation.skipped.into_iter().next() {
        Verdict::Skipped(s.reason)
    } else if let Some(e) = evaluation.errors.into_iter().next() {
        Verdict::Errored(e.error)
    } else {
        // A rule evaluated with its files known is never deferred again.
        Verdict::Errored(format!("rule `{rule}` could not be decided"))
    }
}

/// A deferred rule evaluated again with what is known of its files (see
/// [`settle_deferred`]); `explain --fetch` shows it.
pub fn evaluate_deferred(
    config: &Config,
    event: &Event,
    headers: &BTreeMap<String, String>,
    payload: &[u8],
    rule: &str,
    files: Files,
) -> Result<Evaluation, Rejection> {
    let body = body(config, payload)?;
    let evaluation = config
        .rules
        .evaluate_deferred(rule, event, body.as_ref(), headers, files);
    Ok(buildable(config, evaluation))
}

/// `evaluation` with the matches their target cannot build turned into errors.
fn buildable(config: &Config, mut evaluation: Evaluation) -> Evaluation {
    // A request its target cannot build (a templated project that is not a
    // slug, a `.` or `..` path segment) fails its rule now, with the reason
    // in the summary, rather than being acknowledged and dead-lettered at
    // its first attempt.
    for m in std::mem::take(&mut evaluation.matched) {
        match config.targets.get(&m.target).map(|t| t.request(&m.request)) {
            Some(Err(e)) => evaluation.errors.push(crate::rules::Errored {
                rule: m.rule,
                error: e.to_string(),
            }),
            _ => evaluation.matched.push(m),
        }
    }
    evaluation
}

/// Assign job ids and build the summary and the record to store. Traced,
/// its jobs keep the current span's context ([`crate::telemetry::trace::carrier`]).
pub fn delivery(intake: Intake, received_at: SystemTime) -> NewDelivery {
    let (summary, jobs) = summary_and_jobs(&intake.event, &intake.evaluation);
    let trace = (!jobs.is_empty())
        .then(|| crate::telemetry::trace::carrier(&intake.event))
        .flatten();
    NewDelivery {
        id: ulid::Ulid::generate().to_string(),
        source: intake.event.source.clone(),
        delivery: intake.event.delivery.clone(),
        received_at,
        event: intake.event,
        headers: intake.headers,
        payload: intake.payload,
        summary,
        jobs,
        trace,
    }
}

/// The summary of an evaluation, with a new job for every match (and the
/// status it reports on its commit, `[rules.status]`).
pub(crate) fn summary_and_jobs(event: &Event, evaluation: &Evaluation) -> (Summary, Vec<NewJob>) {
    let jobs: Vec<NewJob> = evaluation
        .matched
        .iter()
        .map(|m| {
            if let Some(why) = &m.status_unreported {
                // Names and the reason only: no payload beyond the event's own ids.
                tracing::warn!(
                    source = %event.source,
                    delivery = %event.delivery,
                    rule = %m.rule,
                    "commit status not reported: {why}"
                );
            }
            NewJob {
                id: ulid::Ulid::generate().to_string(),
                rule: m.rule.clone(),
                target: m.target.clone(),
                request: m.request.clone(),
                group: m.group.clone(),
                delay: m.debounce,
                cancel: m.cancel,
                status: m.status.clone(),
            }
        })
        .collect();
    let summary = Summary {
        delivery: event.delivery.clone(),
        source: event.source.clone(),
        event: event.name.clone(),
        duplicate: false,
        matched: jobs
            .iter()
            .map(|j| MatchedJob {
                rule: j.rule.clone(),
                job: j.id.clone(),
                target: j.target.clone(),
                group: j.group.clone(),
                superseded: Vec::new(),
            })
            .collect(),
        skipped: evaluation.skipped.clone(),
        errors: evaluation.errors.clone(),
        deferred: evaluation.deferred.clone(),
    };
    (summary, jobs)
}

/// The summary for a ping: nothing matched, nothing stored.
pub(crate) fn ping_summary(event: &Event) -> Summary {
    summary_and_jobs(event, &Evaluation::default()).0
}

/// Run the current rules on a stored delivery and queue what matches
/// (`replay --reevaluate` and the admin API's `reevaluate`); answers the
/// new verdicts, whose `matched` are the queued jobs.
pub async fn reevaluate(
    config: &Config,
    store: &dyn Store,
    key: &DeliveryKey,
    now: SystemTime,
) -> Result<Summary, ReevaluateError> {
    let stored = store.payload(key).await?;
    let evaluation = evaluate(config, &stored.event, &stored.headers, &stored.payload)?;
    let (summary, jobs) = summary_and_jobs(&stored.event, &evaluation);
    store.add_jobs(key, jobs, summary.clone(), now).await?;
    Ok(summary)
}
