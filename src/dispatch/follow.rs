//! Follow-ups of runs a CI only queued (Jenkins): a loop beside the
//! dispatcher's that leases due follow-ups, reads the queue item once, and
//! records what it says on the job ([`crate::store::follow`]). Reads back
//! off from seconds to a minute and stop after [`jenkins::FOLLOW_FOR`]; the
//! job then says `unknown`. A read that fails (the CI is down, slow, or
//! answers nonsense) is read again later, never sent again: the build was
//! asked for once.

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures_util::FutureExt;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use super::Dispatcher;
use super::retry::{LONGEST_WAIT, record_retrying};
use crate::store::follow::{FollowOutcome, LeasedFollowUp};
use crate::target::jenkins::{self, Queue};
use crate::target::redact::Redactor;
use crate::target::{TargetKind, TriggerResult};

/// How often an idle loop looks for due follow-ups: a queued run is first
/// read 2 s after it was queued, and the store is not asked more often.
const IDLE: Duration = Duration::from_secs(2);
/// Follow-ups leased at once: each is one short read.
const BATCH: usize = 8;

impl Dispatcher {
    /// Run follow-ups until `shutdown`.
    pub(super) async fn follow_loop(self, shutdown: CancellationToken) {
        super::side::run("follow-ups", IDLE, shutdown, || async {
            let lease = self.config.load().dispatch.lease;
            let follow_ups = self
                .store
                .lease_follow_ups(&self.owner, BATCH, lease, self.clock.now())
                .await?;
            let leased = follow_ups.len();
            // Side by side: a batch takes one read's time (at most a
            // request timeout, within the lease), and a slow CI does not
            // hold the others' reads.
            let reads = follow_ups.into_iter().map(|f| {
                let span = info_span!("follow", job = %f.job, target = %f.target, poll = f.poll);
                self.follow_one(f).instrument(span)
            });
            futures_util::future::join_all(reads).await;
            Ok(leased)
        })
        .await;
    }

    async fn follow_one(&self, f: LeasedFollowUp) {
        let now = self.clock.now();
        let mut result = TriggerResult {
            follow: None,
            ..f.result.clone()
        };
        let queue = match self.read(&f).await {
            Ok(queue) => queue,
            Err(reason) => Queue::Unreadable(reason),
        };
        let outcome = match queue {
            Queue::Started { number, url } => {
                info!(build = number, "the queued build started");
                result.number = Some(number);
                result.url = url.filter(|u| u.starts_with("http://") || u.starts_with("https://"));
                result.state = Some("running".into());
                FollowOutcome::Done(result)
            }
            Queue::Cancelled => {
                info!("the queued build was cancelled in Jenkins before it started");
                result.state = Some("cancelled".into());
                FollowOutcome::Done(result)
            }
            Queue::Forgotten => {
                warn!("Jenkins no longer knows the queue item; the build's number is unknown");
                result.state = Some("unknown".into());
                FollowOutcome::Done(result)
            }
            Queue::Waiting(_) | Queue::Unreadable(_) => {
                if let Queue::Unreadable(reason) = &queue {
                    warn!(reason = %reason, "cannot read the queue item; reading again later");
                }
                match jenkins::next_read(f.poll, f.created_at, now) {
                    Some(at) => {
                        result.follow = f.result.follow.clone();
                        result.state = Some("queued".into());
                        FollowOutcome::Again { at, result }
                    }
                    None => {
                        warn!(
                            after = %humantime::format_duration(jenkins::FOLLOW_FOR),
                            "the build never left the queue while followed; its number is unknown"
                        );
                        result.state = Some("unknown".into());
                        FollowOutcome::Done(result)
                    }
                }
            }
        };
        let label = match &outcome {
            FollowOutcome::Done(r) => r.state.as_deref().unwrap_or("done").to_owned(),
            FollowOutcome::Again { .. } => "queued".to_owned(),
        };
        metrics::counter!("hookbridge_follow_ups_total", "target" => f.target.clone(), "outcome" => label)
            .increment(1);
        let write = || {
            let outcome = outcome.clone();
            let f = &f;
            async move {
                self.store
                    .record_follow_up(f, &self.owner, outcome, self.clock.now())
                    .await
            }
        };
        record_retrying("follow-up", write).await;
    }

    /// One read of a follow-up's queue item, with the target's token.
    async fn read(&self, f: &LeasedFollowUp) -> Result<Queue, String> {
        let config = self.config.load_full();
        let target = config
            .targets
            .get(&f.target)
            .ok_or_else(|| format!("target `{}` no longer exists in the configuration", f.target))?;
        if target.kind != TargetKind::Jenkins {
            return Err(format!("target `{}` is no longer a jenkins target", f.target));
        }
        let item = f.result.follow.as_deref().unwrap_or_default();
        let request =
            jenkins::queue_request(&target.base_url, target.user.as_deref().unwrap_or_default(), item)
                .map_err(|e| e.to_string())?;
        let token = target.token.as_ref();
        let redact = Redactor::new(token.map_or("", |t| t.expose()));
        let timeout = target.retry.request_timeout.min(LONGEST_WAIT);
        let call = AssertUnwindSafe(self.transport.send(&request, token, timeout));
        match call.catch_unwind().await {
            Ok(Ok(response)) => Ok(jenkins::read_queue(response.status, &response.body)),
            Ok(Err(e)) => Err(redact.text(&e.to_string())),
            Err(_) => Err("internal error: the read panicked".into()),
        }
    }
}
