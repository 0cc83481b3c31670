//! Commit statuses (`[rules.status]`): two loops beside the dispatcher's.
//!
//! - **Posts**: lease the statuses due (each the oldest unposted one of its
//!   commit and context, so a VCS sees them in order), post each with its
//!   source's `[sources.NAME.api]`, and record the answer: posted, retried
//!   with the global `[retry]` backoff, or dead with the reason.
//! - **Watches**: read a followed pipeline's state from the CI when a poll
//!   is due (`poll`), when a CircleCI completion event woke it (is every
//!   workflow done?), or at its deadline (`poll_timeout`). A read that
//!   fails is read again later; a CI that refuses to list CircleCI's
//!   workflows makes the job report each workflow under its own context.
//!
//! Posting a status twice is harmless (the VCS shows the same state), so
//! both loops stop at once at shutdown; their leases are given back.

use std::panic::AssertUnwindSafe;
use std::time::{Duration, SystemTime};

use futures_util::FutureExt;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use super::Dispatcher;
use super::retry::{LONGEST_WAIT, record_retrying, retry_delay};
use crate::store::status::{LeasedStatus, LeasedWatch, PostOutcome, WatchRecord, Workflow};
use crate::target::TargetKind;
use crate::target::watch::{self, PipelineRead};
use crate::vcs::{self, Posted, StatusPost};

/// How often an idle loop looks for due statuses.
const IDLE: Duration = Duration::from_millis(500);
/// How often, when no rule reports statuses (those queued before a
/// reload that removed the last such rule still get posted).
const QUIET: Duration = Duration::from_secs(5);
/// Statuses or watches leased at once: each is one short call.
const BATCH: usize = 16;
/// The longest a read of a pipeline's state may take.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// When a read fails without a poll interval to go by, read again after this.
const READ_AGAIN: Duration = Duration::from_secs(60);

impl Dispatcher {
    /// Post statuses until `shutdown`.
    pub(super) async fn status_loop(self, shutdown: CancellationToken) {
        super::side::run("statuses", IDLE, shutdown, || async {
            self.quiet().await;
            let lease = self.config.load().dispatch.lease;
            let statuses = self
                .store
                .lease_statuses(&self.owner, BATCH, lease, self.clock.now())
                .await?;
            let leased = statuses.len();
            let posts = statuses.into_iter().map(|s| {
                let span = info_span!("status", job = %s.job, context = %s.context, state = s.state.as_str());
                self.post_one(s).instrument(span)
            });
            futures_util::future::join_all(posts).await;
            Ok(leased)
        })
        .await;
    }

    /// Without a rule that reports statuses, look less often.
    async fn quiet(&self) {
        if !self.config.load().rules.reports_statuses() {
            tokio::time::sleep(QUIET.saturating_sub(IDLE)).await;
        }
    }

    async fn post_one(&self, s: LeasedStatus) {
        let config = self.config.load_full();
        let policy = &config.retry;
        let now = self.clock.now();
        let outcome = match config.source_api(&s.spec.source) {
            None => PostOutcome::Dead {
                reason: format!(
                    "source `{}` has no [sources.{}.api] in the configuration any more",
                    s.spec.source, s.spec.source
                ),
                status: None,
            },
            Some(api) => {
                let post = StatusPost {
                    repository: &s.spec.repository,
                    sha: &s.spec.sha,
                    git_ref: s.spec.git_ref.as_deref(),
                    context: &s.context,
                    state: s.state,
                    description: &s.description,
                    target_url: s.target_url.as_deref(),
                };
                let timeout = policy.request_timeout.min(LONGEST_WAIT);
                let call = vcs::post_status(&*self.transport, s.spec.vcs, api, &post, timeout, now);
                let posted = AssertUnwindSafe(call)
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|_| Posted::Retry {
                        reason: "internal error: the post panicked".into(),
                        after: None,
                        status: None,
                    });
                match posted {
                    Posted::Done { status } => PostOutcome::Posted { status },
                    Posted::Retry {
                        reason,
                        after,
                        status,
                    } if s.attempt < policy.max_attempts => {
                        let delay = retry_delay(policy, s.attempt, after, (self.jitter)());
                        PostOutcome::Retry {
                            at: now + delay,
                            reason,
                            status,
                        }
                    }
                    Posted::Retry { reason, status, .. } => PostOutcome::Dead {
                        reason: format!("gave up after {} attempts: {reason}", s.attempt),
                        status,
                    },
                    Posted::Permanent { reason, status } => PostOutcome::Dead { reason, status },
                }
            }
        };
        let label = match &outcome {
            PostOutcome::Posted { .. } => {
                info!(vcs = s.spec.vcs.as_str(), "status posted");
                "posted"
            }
            PostOutcome::Retry { reason, .. } => {
                warn!(vcs = s.spec.vcs.as_str(), reason = %reason, "cannot post the status; trying again");
                "retry"
            }
            PostOutcome::Dead { reason, .. } => {
                warn!(vcs = s.spec.vcs.as_str(), reason = %reason, "gave up posting the status");
                "dead"
            }
        };
        metrics::counter!(
            "hookbridge_statuses_total",
            "source" => s.spec.source.clone(),
            "state" => s.state.as_str(),
            "outcome" => label
        )
        .increment(1);
        let write = || {
            let outcome = outcome.clone();
            let s = &s;
            async move {
                self.store
                    .record_status(s, &self.owner, outcome, self.clock.now())
                    .await
            }
        };
        record_retrying("status", write).await;
    }

    /// Read followed pipelines until `shutdown`.
    pub(super) async fn watch_loop(self, shutdown: CancellationToken) {
        super::side::run("watches", IDLE, shutdown, || async {
            self.quiet().await;
            let lease = self.config.load().dispatch.lease;
            let watches = self
                .store
                .lease_watches(&self.owner, BATCH, lease, self.clock.now())
                .await?;
            let leased = watches.len();
            let reads = watches.into_iter().map(|w| {
                let span = info_span!("watch", job = %w.job, target = %w.target, pipeline = %w.pipeline);
                self.watch_one(w).instrument(span)
            });
            futures_util::future::join_all(reads).await;
            Ok(leased)
        })
        .await;
    }

    async fn watch_one(&self, w: LeasedWatch) {
        let now = self.clock.now();
        let (record, label) = self.read_watch(&w, now).await;
        metrics::counter!("hookbridge_pipeline_reads_total", "target" => w.target.clone(), "outcome" => label)
            .increment(1);
        let write = || {
            let record = record.clone();
            let w = &w;
            async move {
                self.store
                    .record_watch(w, &self.owner, record, self.clock.now())
                    .await
            }
        };
        record_retrying("watch", write).await;
    }

    /// What a watch learns now, and the metrics label of how.
    async fn read_watch(&self, w: &LeasedWatch, now: SystemTime) -> (WatchRecord, &'static str) {
        let config = self.config.load_full();
        let Some(target) = config.targets.get(&w.target) else {
            let why = format!("target `{}` no longer exists in the configuration", w.target);
            return (gave_up(why), "skipped");
        };
        if let Err(why) = watch::readable(target, &w.request) {
            // Only completion events can tell: wait for them until the deadline.
            return (waiting(w, now, None, &why), "skipped");
        }
        let read = watch::read_pipeline(
            target,
            &*self.transport,
            &w.request,
            &w.pipeline,
            READ_TIMEOUT,
            now,
        );
        let read = AssertUnwindSafe(read)
            .catch_unwind()
            .await
            .unwrap_or_else(|_| PipelineRead::Retry {
                reason: "internal error: the read panicked".into(),
                after: None,
            });
        match read {
            PipelineRead::State { state, workflows, .. } => {
                let workflows = workflows
                    .into_iter()
                    .map(|r| {
                        (
                            r.name,
                            Workflow {
                                status: r.status,
                                url: r.url,
                            },
                        )
                    })
                    .collect();
                let mut record = if state.is_final() {
                    info!(state = state.as_str(), "the pipeline finished");
                    WatchRecord::default()
                } else {
                    waiting(w, now, None, "the pipeline has not finished")
                };
                record.pipeline = Some(state);
                record.workflows = workflows;
                (record, if state.is_final() { "final" } else { "running" })
            }
            PipelineRead::Retry { reason, after } => {
                warn!(reason = %reason, "cannot read the pipeline's state; reading again later");
                (
                    waiting(w, now, Some(after.unwrap_or(READ_AGAIN)), &reason),
                    "failed",
                )
            }
            PipelineRead::Refused(reason) => {
                warn!(reason = %reason, "the CI refuses to read the pipeline; reporting what completion events tell");
                let mut record = waiting(
                    w,
                    now,
                    Some(w.deadline.duration_since(now).unwrap_or_default()),
                    &reason,
                );
                // CircleCI's completion events are per workflow: each is
                // reported under its own context.
                record.per_workflow = w.request.target_kind() == TargetKind::Circleci;
                (record, "refused")
            }
        }
    }
}

/// Watching ends, for `why`.
fn gave_up(why: String) -> WatchRecord {
    WatchRecord {
        gave_up: Some(why),
        ..WatchRecord::default()
    }
}

/// Read again at the next poll (or after `after`), never past the
/// deadline; at the deadline, give up saying so.
fn waiting(w: &LeasedWatch, now: SystemTime, after: Option<Duration>, why: &str) -> WatchRecord {
    if now >= w.deadline {
        let within = humantime::format_duration(w.spec.poll_timeout);
        return gave_up(format!("no result within {within} ({why})"));
    }
    // `after` may be a CI's `Retry-After` of any size: never past the deadline.
    let left = w.deadline.duration_since(now).unwrap_or_default();
    let wait = match (w.spec.poll, after) {
        (Some(poll), Some(after)) => poll.min(after),
        (Some(poll), None) => poll,
        (None, Some(after)) => after,
        (None, None) => left,
    }
    .min(left);
    WatchRecord {
        next: Some(now.checked_add(wait).unwrap_or(w.deadline).min(w.deadline)),
        ..WatchRecord::default()
    }
}
