//! One attempt of one job, recorded whatever happens.
//!
//! The call to the CI runs under `catch_unwind`: a panic anywhere in
//! preparing, sending or classifying becomes a retryable outcome ("internal
//! error: ...") that is logged in the job's span and recorded like any other.
//! And a job whose earlier attempts never finished (its worker died each time,
//! so nothing was recorded) is dead-lettered here, before sending, once it is
//! past `max_attempts`: no job is sent more than `max_attempts` times.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::time::SystemTime;

use futures_util::FutureExt;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tracing::{error, info, warn};

use super::Dispatcher;
use super::retry::{LONGEST_WAIT, record_retrying, transition};
use crate::config::{Config, RetryPolicy};
use crate::store::{Attempt, LeasedJob, Start, Transition};
use crate::target::redact::Redactor;
use crate::target::{self, Outcome, reconcile, truncate_body};

/// Response bytes kept per attempt.
const RESPONSE_LIMIT: usize = 2048;

/// Why a job is given up before sending, when `attempt` is past `max_attempts`.
///
/// Every completed attempt is recorded, and the attempt that reaches
/// `max_attempts` dead-letters a job that keeps failing, so the attempt that
/// did not complete is the last one: its worker stopped (or panicked outside
/// the attempt) before it could record. Only when `max_attempts` was lowered
/// since can a job be further past it.
pub fn gave_up(attempt: u32, max_attempts: u32) -> Option<String> {
    let done = attempt.checked_sub(1)?;
    if attempt <= max_attempts {
        None
    } else if done == max_attempts {
        Some(format!(
            "gave up after {done} attempts; last: the worker stopped mid-attempt"
        ))
    } else {
        Some(format!(
            "gave up after {done} attempts: more than max_attempts ({max_attempts})"
        ))
    }
}

/// `outcome` with every form of the token replaced in its texts.
fn redacted(outcome: Outcome, redact: &Redactor) -> Outcome {
    match outcome {
        Outcome::Created(mut created) => {
            created.id = created.id.map(|t| redact.text(&t));
            created.url = created.url.map(|t| redact.text(&t));
            created.state = created.state.map(|t| redact.text(&t));
            Outcome::Created(created)
        }
        Outcome::Skipped(why) => Outcome::Skipped(redact.text(&why)),
        Outcome::Retry { reason, after } => Outcome::Retry {
            reason: redact.text(&reason),
            after,
        },
        Outcome::Permanent(why) => Outcome::Permanent(redact.text(&why)),
    }
}

/// The text of a panic's payload.
fn panic_message(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic without a message")
}

impl Dispatcher {
    /// One attempt of one job, recorded whatever happens. `permit` is the
    /// concurrency slot for the call to the CI API; it is given back as soon as
    /// the CI answered, so waiting for the record's commit does not hold it.
    /// Answers when the job is due again: a retry's time.
    pub(super) async fn attempt(&self, job: LeasedJob, permit: OwnedSemaphorePermit) -> Option<SystemTime> {
        let config = self.config.load_full();
        let policy = config
            .rules
            .get(&job.rule)
            .map(|r| &r.retry)
            .or_else(|| config.targets.get(&job.target).map(|t| &t.retry))
            .unwrap_or(&config.retry)
            .clone();
        let clock = Instant::now();
        let mut record = Attempt::at(self.clock.now());
        let given_up = gave_up(job.attempt, policy.max_attempts);
        let start = if job.grouped && given_up.is_none() {
            self.start_grouped(&job).await
        } else {
            Ok(())
        };
        let next = if let Some(reason) = given_up {
            drop(permit);
            Transition::Dead(reason)
        } else if let Err(not_sent) = start {
            drop(permit);
            match not_sent {
                // Nothing went out and nothing is the worker's to record.
                NotSent::Superseded | NotSent::Gone => return None,
                NotSent::Unavailable(reason) => {
                    record.error = Some(reason.clone());
                    let at = self.clock.now() + policy.initial_backoff;
                    Transition::Retry { at, reason }
                }
            }
        } else {
            let call = AssertUnwindSafe(self.call(&config, &job, &policy, &mut record));
            let outcome = call.catch_unwind().await.unwrap_or_else(|panic| {
                let message = panic_message(&*panic);
                error!(panic = %message, "the attempt panicked; recorded as a retryable failure");
                Outcome::Retry {
                    reason: format!("internal error: {message}"),
                    after: None,
                }
            });
            record.duration = clock.elapsed();
            drop(permit);
            transition(outcome, job.attempt, &policy, self.clock.now(), (self.jitter)())
        };
        self.report(&config, &job, &record, &next);
        let due = match &next {
            Transition::Retry { at, .. } => Some(*at),
            _ => None,
        };
        self.record(&job, record, next).await;
        due
    }

    /// Let an attempt of a grouped job go out ([`Store::start_attempt`]):
    /// not when a newer job of its group superseded it, or it is no longer
    /// this worker's; retried later when the store cannot say.
    async fn start_grouped(&self, job: &LeasedJob) -> Result<(), NotSent> {
        match self.store.start_attempt(job, &self.owner, self.clock.now()).await {
            Ok(Start::Go) => Ok(()),
            Ok(Start::Superseded) => {
                metrics::counter!("hookbridge_jobs_superseded_total").increment(1);
                info!("superseded by a newer job of its concurrency group while leased; not sent");
                Err(NotSent::Superseded)
            }
            Ok(Start::Gone) => {
                info!("no longer this worker's job (superseded, or its lease was taken over); not sent");
                Err(NotSent::Gone)
            }
            Err(e) => {
                warn!(error = %e, "cannot start the attempt: the store is unavailable; not sent, retried later");
                Err(NotSent::Unavailable(
                    "not sent: the store could not start the attempt".to_owned(),
                ))
            }
        }
    }

    /// Prepare, send and classify: everything that talks to the CI. What
    /// is recorded or logged of the answer (the response, the error, the
    /// reason derived from them) has every form of the token replaced,
    /// whatever the transport: a reason can hold text the classifier decoded
    /// from the body (a JSON string's `\u` escapes).
    async fn call(
        &self,
        config: &Config,
        job: &LeasedJob,
        policy: &RetryPolicy,
        record: &mut Attempt,
    ) -> Outcome {
        let (request, token) = match prepare(config, job, self.clock.now()) {
            Ok(prepared) => prepared,
            Err(reason) => return Outcome::Permanent(reason.to_string()),
        };
        let timeout = policy.request_timeout.min(LONGEST_WAIT);
        let redact = Redactor::new(token.map_or("", |t| t.expose()));
        if let Some(since) = job.ambiguous_since
            && let Some(outcome) = self.reconcile(config, job, since, policy, record).await
        {
            record.reconcile = record.reconcile.take().map(|r| redact.text(&r));
            record.error = record.error.take().map(|e| redact.text(&e));
            record.response = record.response.take().map(|r| redact.text(&r));
            return redacted(outcome, &redact);
        }
        let mut outcome = self.send(&request, (token, &redact), timeout, job, record).await;
        // A project that refuses pipeline variables refused the trigger for
        // its marker, creating nothing: sent once more without it.
        if let Some(plain) = reconcile::refused_marker(&request, &outcome) {
            record.reconcile = Some(format!(
                "the project refuses pipeline variables: sent again without {}, so this job cannot be reconciled (`reconcile = false` on the target stops sending it)",
                reconcile::MARKER
            ));
            outcome = self.send(&plain, (token, &redact), timeout, job, record).await;
        }
        record.error = record.error.take().map(|e| redact.text(&e));
        record.response = record.response.take().map(|r| redact.text(&r));
        redacted(outcome, &redact)
    }

    /// Send `request` once and classify the answer into `record`.
    async fn send(
        &self,
        request: &target::OutboundRequest,
        (token, redact): (Option<&crate::config::Secret>, &Redactor),
        timeout: std::time::Duration,
        job: &LeasedJob,
        record: &mut Attempt,
    ) -> Outcome {
        match self.transport.send(request, token, timeout).await {
            Ok(response) => {
                // A gateway's timeout or failure: the CI behind it may have
                // taken the trigger.
                record.ambiguous = matches!(response.status, 502 | 504);
                let response = target::Response {
                    status: response.status,
                    headers: redact.headers(response.headers),
                    body: redact.bytes(response.body.to_vec()).into(),
                };
                record.status = Some(response.status);
                record.response =
                    Some(truncate_body(&response.body, RESPONSE_LIMIT)).filter(|r| !r.is_empty());
                target::classify(&job.request, &response, self.clock.now())
            }
            // The request cannot be built from this config: retrying will not help.
            Err(error @ target::client::SendError::Build(_)) => {
                record.error = Some(error.to_string());
                Outcome::Permanent(error.to_string())
            }
            Err(error) => {
                record.error = Some(error.to_string());
                record.ambiguous = error.may_have_arrived();
                Outcome::Retry {
                    reason: error.to_string(),
                    after: None,
                }
            }
        }
    }

    /// Metrics and the log line of an attempt.
    fn report(&self, config: &Config, job: &LeasedJob, record: &Attempt, next: &Transition) {
        let target_kind = config
            .targets
            .get(&job.target)
            .map_or("unknown", |t| t.kind.as_str());
        metrics::counter!("hookbridge_trigger_attempts_total", "target" => job.target.clone(), "type" => target_kind, "outcome" => next.outcome()).increment(1);
        metrics::histogram!("hookbridge_trigger_attempt_duration_seconds", "target" => job.target.clone())
            .record(record.duration.as_secs_f64());
        let created = match next {
            Transition::Done(result) => (result.id.as_deref(), result.url.as_deref()),
            _ => (None, None),
        };
        crate::telemetry::trace::outcome(next.outcome(), created.0, created.1);
        match next {
            // A 2xx is the CI's word that it accepted the trigger, so the job
            // is done (sending again could start a second pipeline); but an
            // answer naming no pipeline is what a wrong `url` (a login page,
            // a web UI) also gives, so it is said out loud.
            Transition::Done(result) if result.id.is_none() && result.number.is_none() => warn!(
                status = record.status,
                duration_ms = record.duration.as_millis() as u64,
                "trigger delivered, but the CI's answer names no pipeline (not the API's JSON?); check the target's url if this repeats"
            ),
            Transition::Done(result) => info!(
                status = record.status,
                pipeline = result.id.as_deref().unwrap_or(""),
                number = result.number,
                url = result.url.as_deref().unwrap_or(""),
                duration_ms = record.duration.as_millis() as u64,
                "trigger delivered"
            ),
            Transition::Skipped(message) => {
                info!(status = record.status, message = %message, "CI skipped the trigger")
            }
            Transition::Retry { at, reason } => warn!(
                status = record.status,
                reason = %reason,
                retry_in_ms = at.duration_since(self.clock.now()).unwrap_or_default().as_millis() as u64,
                "trigger failed; will retry"
            ),
            Transition::Dead(reason) => {
                metrics::counter!("hookbridge_dead_lettered_total", "target" => job.target.clone())
                    .increment(1);
                warn!(status = record.status, reason = %reason, "trigger dead-lettered")
            }
        }
    }

    /// Store the attempt; retried while the store is briefly unavailable, since a
    /// lost record means the job runs again when its lease expires.
    async fn record(&self, job: &LeasedJob, attempt: Attempt, next: Transition) {
        let write = || {
            let (attempt, next) = (attempt.clone(), next.clone());
            async move {
                self.store
                    .record_attempt(job, &self.owner, attempt, next, self.clock.now())
                    .await
            }
        };
        if !record_retrying("attempt", write).await {
            warn!("attempt not recorded; the job runs again when its lease expires");
        }
    }
}

/// Why a grouped job's attempt did not go out ([`Dispatcher::start_grouped`]).
enum NotSent {
    /// Ended by its start: nothing to record.
    Superseded,
    /// Not this worker's: nothing to record.
    Gone,
    /// The store could not say: recorded as an attempt to retry, with
    /// this reason.
    Unavailable(String),
}

/// Why a job cannot be sent with the current config. Every one is permanent
/// for the job (the dispatcher dead-letters it with this text): the config
/// changed since the job was stored, and a replay after fixing it sends it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum PrepareError {
    #[error("target `{0}` no longer exists in the configuration")]
    TargetGone(String),
    #[error("rule `{0}` no longer defines the trigger token this job needs")]
    RuleTokenGone(String),
    #[error(transparent)]
    Request(#[from] target::RequestError),
}

/// The printable request for a job, from the current config, and the token
/// that goes with it on the wire.
fn prepare<'c>(
    config: &'c Config,
    job: &LeasedJob,
    now: SystemTime,
) -> Result<(target::OutboundRequest, Option<&'c crate::config::Secret>), PrepareError> {
    let target = config
        .targets
        .get(&job.target)
        .ok_or_else(|| PrepareError::TargetGone(job.target.clone()))?;
    let rule_token = match &job.request {
        target::TriggerRequest::Gitlab(r) if r.rule_token => Some(
            config
                .rules
                .get(&job.rule)
                .and_then(|r| r.trigger.token())
                .ok_or_else(|| PrepareError::RuleTokenGone(job.rule.clone()))?,
        ),
        _ => None,
    };
    let mut request = target.request(&job.request)?;
    target.mark(&mut request, &job.id);
    target.sign(&mut request, &job.id, now)?;
    Ok((request, target.token_for(rule_token)?))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
[targets.gitlab]
type = "gitlab"
url = "https://gitlab.example.com"
token = "glptt-target"

[targets.circleci]
type = "circleci"
token = "circle-token"

[[rules]]
name = "mirror"
[rules.trigger]
target = "gitlab"
project = "acme/app"
"#;

    fn job(target: &str, rule: &str, request: serde_json::Value) -> LeasedJob {
        LeasedJob {
            id: "01JOB".into(),
            delivery_id: "01DELIVERY".into(),
            delivery: "d-1".into(),
            source: "github".into(),
            rule: rule.into(),
            target: target.into(),
            request: serde_json::from_value(request).unwrap(),
            attempt: 1,
            grouped: false,
            trace: None,
            ambiguous_since: None,
            previous: None,
        }
    }

    /// What the config no longer allows is a typed error whose text the
    /// job's history shows.
    #[test]
    fn a_job_the_config_no_longer_fits_is_refused_with_its_reason() {
        let config = crate::config::parse(
            std::path::Path::new("t.toml"),
            CONFIG,
            crate::config::LoadMode::Check,
        )
        .unwrap()
        .config;
        let gitlab = serde_json::json!({"api": "gitlab_pipeline", "project": "acme/app", "ref": "main"});
        let (request, token) = prepare(
            &config,
            &job("gitlab", "mirror", gitlab.clone()),
            SystemTime::UNIX_EPOCH,
        )
        .unwrap();
        assert_eq!(
            request.url,
            "https://gitlab.example.com/api/v4/projects/acme%2Fapp/trigger/pipeline"
        );
        assert_eq!(token.unwrap().expose(), "glptt-target");

        let e = prepare(
            &config,
            &job("gone", "mirror", gitlab.clone()),
            SystemTime::UNIX_EPOCH,
        )
        .unwrap_err();
        assert_eq!(e, PrepareError::TargetGone("gone".into()));
        assert_eq!(
            e.to_string(),
            "target `gone` no longer exists in the configuration"
        );

        let mut own_token = gitlab.clone();
        own_token["rule_token"] = true.into();
        let e = prepare(
            &config,
            &job("gitlab", "mirror", own_token),
            SystemTime::UNIX_EPOCH,
        )
        .unwrap_err();
        assert_eq!(e, PrepareError::RuleTokenGone("mirror".into()));
        assert_eq!(
            e.to_string(),
            "rule `mirror` no longer defines the trigger token this job needs"
        );

        let e = prepare(
            &config,
            &job("circleci", "mirror", gitlab),
            SystemTime::UNIX_EPOCH,
        )
        .unwrap_err();
        assert!(matches!(
            e,
            PrepareError::Request(target::RequestError::KindChanged { .. })
        ));
        assert_eq!(
            e.to_string(),
            "target `circleci` is now a circleci target and cannot send this gitlab trigger"
        );
    }

    #[test]
    fn jobs_past_max_attempts_are_given_up_before_sending() {
        assert_eq!(gave_up(1, 1), None);
        assert_eq!(gave_up(3, 3), None);
        assert_eq!(
            gave_up(4, 3).as_deref(),
            Some("gave up after 3 attempts; last: the worker stopped mid-attempt")
        );
        assert_eq!(
            gave_up(9, 3).as_deref(),
            Some("gave up after 8 attempts: more than max_attempts (3)")
        );
        assert_eq!(gave_up(0, 3), None);
        assert_eq!(
            gave_up(u32::MAX, 0).as_deref(),
            Some("gave up after 4294967294 attempts: more than max_attempts (0)")
        );
    }

    #[test]
    fn panic_messages_are_read_from_either_payload() {
        let p: Box<dyn Any + Send> = Box::new("boom");
        assert_eq!(panic_message(&*p), "boom");
        let p: Box<dyn Any + Send> = Box::new(String::from("bang 7"));
        assert_eq!(panic_message(&*p), "bang 7");
        let p: Box<dyn Any + Send> = Box::new(7u8);
        assert_eq!(panic_message(&*p), "a panic without a message");
    }
}
