//! Reconcile before sending again ([`crate::target::reconcile`]): an attempt
//! of a job whose earlier attempt may have reached the CI unanswered first
//! looks for the pipeline that attempt created. Found, it is the job's
//! outcome and nothing is sent; not found (or not knowable), the attempt
//! sends; the CI's API unable to answer, the attempt is retried later
//! without sending (but for the last allowed attempt, which sends: at least
//! once). The decision and why is recorded on the attempt.

use std::time::{Duration, SystemTime};

use tracing::{info, warn};

use super::Dispatcher;
use crate::config::{Config, RetryPolicy};
use crate::store::{Attempt, LeasedJob};
use crate::target::Outcome;
use crate::target::reconcile::{self, Looked, RECORDED_SKEW, Reconciled, Subject};

impl Dispatcher {
    /// The outcome of the attempt when reconciling decided it (found, or
    /// retry later); `None` to send.
    pub(super) async fn reconcile(
        &self,
        config: &Config,
        job: &LeasedJob,
        since: SystemTime,
        policy: &RetryPolicy,
        record: &mut Attempt,
    ) -> Option<Outcome> {
        let target = config.targets.get(&job.target)?;
        let timeout = policy.request_timeout;
        // The lookup and the trigger after it fit in the lease, or another
        // worker could take the job over and send it while this one looks.
        let budget = (config.dispatch.lease.saturating_sub(timeout) / 2).max(Duration::from_secs(1));
        let subject = Subject {
            id: &job.id,
            request: &job.request,
            previous: job.previous.as_deref(),
        };
        let now = self.clock.now();
        let lookup = reconcile::look(self.transport.as_ref(), target, subject, since, (timeout, now));
        let (decided, exchange) = match tokio::time::timeout(budget, lookup).await {
            Err(_) => (
                Reconciled::Failed {
                    reason: format!(
                        "the lookup took longer than {} (its share of the lease)",
                        humantime::format_duration(budget)
                    ),
                    after: None,
                },
                Default::default(),
            ),
            Ok((Looked::Decided(decided), exchange)) => (decided, exchange),
            // What the target's other jobs did, read after the CI's list:
            // a pipeline listed there was sent before the read, so its job
            // is found either recording it or with its attempt still out.
            Ok((Looked::Candidates(candidates), exchange)) => {
                let from = since.checked_sub(RECORDED_SKEW).unwrap_or(since);
                let decided = match self.store.neighbours(&job.target, &job.id, from).await {
                    Ok(n) => {
                        let here = n
                            .unsettled
                            .iter()
                            .filter(|r| reconcile::same_place(r, &job.request))
                            .count();
                        let mut recorded = n.recorded;
                        recorded.extend(job.previous.clone());
                        candidates.decide(&recorded, here)
                    }
                    Err(e) => {
                        warn!(error = %e, "cannot read what the target's other jobs recorded; reconcile tried again later");
                        Reconciled::Failed {
                            reason: "the store could not list the pipelines other jobs recorded".into(),
                            after: None,
                        }
                    }
                };
                (decided, exchange)
            }
        };
        metrics::counter!("hookbridge_reconciles_total", "target" => job.target.clone(), "outcome" => decided.outcome())
            .increment(1);
        let last = job.attempt >= policy.max_attempts;
        let mut text = decided.describe();
        if last && let Reconciled::Failed { reason, .. } = &decided {
            text = format!("failed: {reason}; the last allowed attempt, so triggered again (at least once)");
        }
        info!(outcome = decided.outcome(), decision = %text, "reconciled before sending again");
        record.reconcile = Some(text);
        match decided {
            Reconciled::Found { result, .. } => {
                record.status = exchange.status;
                Some(Outcome::Created(result))
            }
            Reconciled::Failed { reason, after } if !last => {
                record.status = exchange.status;
                record.response = exchange.response;
                record.error = Some(format!("reconcile {reason}"));
                Some(Outcome::Retry {
                    reason: format!("reconcile {reason}"),
                    after,
                })
            }
            Reconciled::Failed { .. } | Reconciled::NotFound(_) | Reconciled::Skipped(_) => None,
        }
    }
}
