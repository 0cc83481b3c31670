//! Reconcile before sending again ([`crate::target::reconcile`]): an attempt
//! of a job whose earlier attempt may have reached the CI unanswered first
//! looks for the pipeline that attempt created. Found, it is the job's
//! outcome and nothing is sent; not found (or not knowable), the attempt
//! sends; the CI's API unable to answer, the attempt is retried later
//! without sending. The decision and why is recorded on the attempt.

use std::time::{Duration, SystemTime};

use tracing::{info, warn};

use super::Dispatcher;
use crate::config::Config;
use crate::store::{Attempt, LeasedJob};
use crate::target::Outcome;
use crate::target::reconcile::{self, CLOCK_SKEW, Looked, Reconciled};

impl Dispatcher {
    /// The outcome of the attempt when reconciling decided it (found, or
    /// retry later); `None` to send.
    pub(super) async fn reconcile(
        &self,
        config: &Config,
        job: &LeasedJob,
        since: SystemTime,
        timeout: Duration,
        record: &mut Attempt,
    ) -> Option<Outcome> {
        let target = config.targets.get(&job.target)?;
        let (looked, exchange) = reconcile::look(
            self.transport.as_ref(),
            target,
            (&job.id, &job.request),
            since,
            (timeout, self.clock.now()),
        )
        .await;
        let decided = match looked {
            Looked::Decided(decided) => decided,
            // What the target's other jobs did, read after the CI's list:
            // a pipeline listed there was sent before the read, so its job
            // is found either recording it or with its attempt still out.
            Looked::Candidates(candidates) => {
                let from = since.checked_sub(CLOCK_SKEW).unwrap_or(since);
                match self.store.neighbours(&job.target, &job.id, from).await {
                    Ok(n) => {
                        let here = n
                            .unsettled
                            .iter()
                            .filter(|r| reconcile::same_place(r, &job.request))
                            .count();
                        candidates.decide(&n.recorded, here)
                    }
                    Err(e) => {
                        warn!(error = %e, "cannot read what the target's other jobs recorded; reconcile tried again later");
                        Reconciled::Failed {
                            reason: "the store could not list the pipelines other jobs recorded".into(),
                            after: None,
                        }
                    }
                }
            }
        };
        metrics::counter!("hookbridge_reconciles_total", "target" => job.target.clone(), "outcome" => decided.outcome())
            .increment(1);
        let text = decided.describe();
        info!(outcome = decided.outcome(), decision = %text, "reconciled before sending again");
        record.reconcile = Some(text);
        match decided {
            Reconciled::Found { result, .. } => {
                record.status = exchange.status;
                Some(Outcome::Created(result))
            }
            Reconciled::Failed { reason, after } => {
                record.status = exchange.status;
                record.response = exchange.response;
                record.error = Some(format!("reconcile {reason}"));
                Some(Outcome::Retry {
                    reason: format!("reconcile {reason}"),
                    after,
                })
            }
            Reconciled::NotFound(_) | Reconciled::Skipped(_) => None,
        }
    }
}
