//! The cancels of older pipelines (`cancel_in_progress`): a loop beside the
//! dispatcher's that leases due cancels one at a time, calls the CI
//! (`target::cancel`) and records each attempt on the cancelled job. A
//! failing cancel is retried with the job's backoff, up to its
//! `max_attempts`, then recorded as failed.

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use super::Dispatcher;
use super::retry::{LONGEST_WAIT, record_retrying, transition};
use crate::store::concurrency::{CancelOutcome, LeasedCancel};
use crate::store::{Attempt, Transition};
use crate::target::cancel::{Cancelled, cancel};
use crate::target::{Outcome, TriggerResult};

impl Dispatcher {
    /// Run cancels until `shutdown`; one in flight at a time (they are few:
    /// one per superseded pipeline).
    pub(super) async fn cancel_loop(self, shutdown: CancellationToken) {
        super::side::run("cancels", Duration::from_millis(500), shutdown, || async {
            let lease = self.config.load().dispatch.lease;
            let cancels = self
                .store
                .lease_cancels(&self.owner, 1, lease, self.clock.now())
                .await?;
            let leased = cancels.len();
            for c in cancels {
                let span = info_span!("cancel", job = %c.job, by = %c.by_job, target = %c.target, attempt = c.attempt);
                self.cancel_one(c).instrument(span).await;
            }
            Ok(leased)
        })
        .await;
    }

    async fn cancel_one(&self, c: LeasedCancel) {
        let config = self.config.load_full();
        let policy = config
            .rules
            .get(&c.rule)
            .map(|r| &r.retry)
            .or_else(|| config.targets.get(&c.target).map(|t| &t.retry))
            .unwrap_or(&config.retry)
            .clone();
        let mut record = Attempt::at(self.clock.now());
        let clock = Instant::now();
        let result = match config.targets.get(&c.target) {
            None => Cancelled::Permanent(format!(
                "target `{}` no longer exists in the configuration",
                c.target
            )),
            Some(target) => {
                let timeout = policy.request_timeout.min(LONGEST_WAIT);
                let call = AssertUnwindSafe(cancel(
                    self.transport.as_ref(),
                    target,
                    &c.request,
                    &c.pipeline,
                    timeout,
                    self.clock.now(),
                ));
                // A cancel of several calls ends within half its lease, so
                // that no other worker takes it over while it runs (and
                // sends its cancels again).
                let within = config.dispatch.lease.min(LONGEST_WAIT) / 2;
                match tokio::time::timeout(within, call.catch_unwind()).await {
                    Ok(Ok((result, exchange))) => {
                        record.status = exchange.status;
                        record.response = exchange.response;
                        result
                    }
                    Ok(Err(_)) => Cancelled::Retry {
                        reason: "internal error: the cancel panicked".into(),
                        after: None,
                    },
                    Err(_) => Cancelled::Retry {
                        reason: format!(
                            "the cancel took longer than {} (half the lease); what it cancelled stays cancelled",
                            humantime::format_duration(within)
                        ),
                        after: None,
                    },
                }
            }
        };
        record.duration = clock.elapsed();
        let outcome = match result {
            Cancelled::Cancelled(t) => CancelOutcome::Cancelled(t),
            Cancelled::Finished(t) => CancelOutcome::Finished(t),
            Cancelled::Retry { reason, after } => {
                let retry = Outcome::Retry { reason, after };
                self.after_failure(retry, &c, &policy)
            }
            Cancelled::Permanent(reason) => self.after_failure(Outcome::Permanent(reason), &c, &policy),
        };
        let label = match &outcome {
            CancelOutcome::Cancelled(_) => "cancelled",
            CancelOutcome::Finished(_) => "not_running",
            CancelOutcome::Retry { .. } => "retry",
            CancelOutcome::Failed(_) => "failed",
        };
        metrics::counter!("hookbridge_pipelines_cancelled_total", "target" => c.target.clone(), "outcome" => label)
            .increment(1);
        match &outcome {
            CancelOutcome::Cancelled(t) | CancelOutcome::Finished(t) => info!(outcome = label, "{t}"),
            CancelOutcome::Retry { reason, .. } => warn!(reason = %reason, "cancel failed; will retry"),
            CancelOutcome::Failed(reason) => warn!(reason = %reason, "cancel failed for good"),
        }
        self.record_cancel(&c, record, outcome).await;
    }

    /// A failed cancel: retried by the job's policy, or failed for good.
    fn after_failure(
        &self,
        outcome: Outcome,
        c: &LeasedCancel,
        policy: &crate::config::RetryPolicy,
    ) -> CancelOutcome {
        match transition(outcome, c.attempt, policy, self.clock.now(), (self.jitter)()) {
            Transition::Retry { at, reason } => CancelOutcome::Retry { at, reason },
            Transition::Dead(reason) => CancelOutcome::Failed(reason),
            Transition::Done(TriggerResult { .. }) | Transition::Skipped(_) => {
                CancelOutcome::Failed("unexpected outcome".into())
            }
        }
    }

    /// Store the attempt, retried while the store is briefly unavailable
    /// (a lost record means the cancel runs again when its lease expires:
    /// harmless, it cancels only what still runs).
    async fn record_cancel(&self, c: &LeasedCancel, attempt: Attempt, outcome: CancelOutcome) {
        let write = || {
            let (attempt, outcome) = (attempt.clone(), outcome.clone());
            async move {
                self.store
                    .record_cancel(c, &self.owner, attempt, outcome, self.clock.now())
                    .await
            }
        };
        record_retrying("cancel", write).await;
    }
}
