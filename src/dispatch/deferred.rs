//! Deferred rules (`paths_unknown = "fetch"`): a loop beside the
//! dispatcher's that leases the deferrals due, reads the changed files from
//! the VCS of the delivery's source (`vcs::files`, through a bounded cache
//! so several rules and redeliveries read a comparison once), evaluates the
//! rule again with them and settles it: its job queued (with its group and
//! statuses) when it matches, its verdict moved in the delivery's summary.
//!
//! A read that fails for now (timeout, 429, 5xx) is tried again with the
//! rule's retry policy, as a trigger would be; when the policy gives up, or
//! the VCS refuses (401, 403, 404), `paths_unknown_on_error` decides (skip,
//! or match), and the reason is recorded on the deferral and in the
//! verdict. Deferrals of one delivery are settled one after another (the
//! later ones find the first one's read in the cache); different
//! deliveries' run side by side.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, SystemTime};

use futures_util::FutureExt;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use super::Dispatcher;
use super::retry::{LONGEST_WAIT, record_retrying, retry_delay};
use crate::config::Config;
use crate::event::Event;
use crate::rules::Files;
use crate::store::deferral::{FilesNote, LeasedDeferral, Settled, Verdict};
use crate::store::{DeliveryKey, StoredPayload};
use crate::vcs::files::{self, FilesQuery, FilesRead};

/// How often an idle loop looks for due deferrals.
const IDLE: Duration = Duration::from_millis(500);
/// Deferrals leased at once (each delivery's read holds up to
/// `vcs::files::BODY_LIMIT` of answer at a time).
const BATCH: usize = 8;

/// What one settling comes to, for the store and the metrics.
enum Step {
    Settle(Settled),
    Retry { at: SystemTime, error: String },
}

impl Dispatcher {
    /// Settle deferred rules until `shutdown`.
    pub(super) async fn deferral_loop(self, shutdown: CancellationToken) {
        super::side::run("deferrals", IDLE, shutdown, || async {
            let lease = self.config.load().dispatch.lease;
            let leased = self
                .store
                .lease_deferrals(&self.owner, BATCH, lease, self.clock.now())
                .await?;
            let count = leased.len();
            let mut by_delivery: BTreeMap<String, Vec<LeasedDeferral>> = BTreeMap::new();
            for d in leased {
                by_delivery.entry(d.delivery_id.clone()).or_default().push(d);
            }
            let this = &self;
            let deliveries = by_delivery.into_values().map(|group| async move {
                // One read per delivery: its other rules take the same
                // answer, a failure (and its Retry-After) included.
                let mut read: Option<FilesRead> = None;
                for d in group {
                    let span = info_span!("deferred", delivery = %d.delivery_id, rule = %d.rule, attempt = d.attempt);
                    this.settle_one(d, lease, &mut read).instrument(span).await;
                }
            });
            futures_util::future::join_all(deliveries).await;
            Ok(count)
        })
        .await;
    }

    /// Settle `d` (leased for `lease`), reading the files unless `read`
    /// already holds this delivery's answer.
    async fn settle_one(&self, d: LeasedDeferral, lease: Duration, read: &mut Option<FilesRead>) {
        let config = self.config.load_full();
        // However it fails, a deferral is tried no more than a rule would be.
        let attempts = config
            .rules
            .get(&d.rule)
            .map_or(config.retry.max_attempts, |r| r.retry.max_attempts);
        let key = DeliveryKey {
            id: d.delivery_id.clone(),
            source: Some(d.source.clone()),
        };
        let step = match self.store.payload(&key).await {
            Ok(stored) => AssertUnwindSafe(self.decide(&config, &d, &stored, lease, read))
                .catch_unwind()
                .await
                .unwrap_or_else(|_| Step::Retry {
                    at: self.clock.now() + Duration::from_secs(60),
                    error: "internal error: settling the rule panicked".into(),
                }),
            Err(e) if e.is_unavailable() => {
                // The lease runs out and another read takes it up.
                return warn!(error = %e, "cannot read the deferred delivery; trying again later");
            }
            Err(e) => Step::Retry {
                at: self.clock.now() + Duration::from_secs(60),
                error: format!("cannot read the stored delivery: {e}"),
            },
        };
        let step = match step {
            Step::Retry { error, .. } if d.attempt >= attempts => Step::Settle(Settled {
                verdict: Verdict::Errored(format!("gave up after {} tries: {error}", d.attempt)),
                files: None,
                error: Some(error),
            }),
            step => step,
        };
        let label = match &step {
            Step::Settle(s) => {
                info!(outcome = s.outcome(), "deferred rule settled");
                s.outcome()
            }
            Step::Retry { error, .. } => {
                warn!(reason = %error, "cannot read the changed files; trying again");
                "retry"
            }
        };
        metrics::counter!("hookbridge_deferred_total", "source" => d.source.clone(), "outcome" => label)
            .increment(1);
        let write = || {
            let d = &d;
            let step = match &step {
                Step::Settle(s) => Step::Settle(s.clone()),
                Step::Retry { at, error } => Step::Retry {
                    at: *at,
                    error: error.clone(),
                },
            };
            async move {
                let now = self.clock.now();
                let held = match step {
                    Step::Settle(s) => self.store.settle_deferral(d, &self.owner, s, now).await?,
                    Step::Retry { at, error } => {
                        self.store.retry_deferral(d, &self.owner, at, &error, now).await?
                    }
                };
                if !held {
                    warn!("the deferral's lease was lost; another worker settles it");
                }
                Ok(())
            }
        };
        if record_retrying("deferred rule", write).await {
            // A matched rule's job is due: wake the dispatcher.
            self.wake.notify_one();
        }
    }

    /// Read the files and decide, or say when to read again.
    async fn decide(
        &self,
        config: &Config,
        d: &LeasedDeferral,
        stored: &StoredPayload,
        lease: Duration,
        memo: &mut Option<FilesRead>,
    ) -> Step {
        let event = &stored.event;
        let settle = |files: Files, note: Option<FilesNote>, error: Option<String>, event: &Event| {
            let verdict = crate::intake::settle_deferred(
                config,
                event,
                &stored.headers,
                &stored.payload,
                &d.rule,
                files,
            );
            Step::Settle(Settled {
                verdict,
                files: note,
                error,
            })
        };
        let unreadable =
            |reason: String| settle(Files::Unreadable(reason.clone()), None, Some(reason), event);
        let Some(rule) = config.rules.get(&d.rule) else {
            return Step::Settle(Settled {
                verdict: Verdict::Errored(format!("rule `{}` is no longer in the configuration", d.rule)),
                files: None,
                error: None,
            });
        };
        let Some(api) = config.source_api(&event.source) else {
            return unreadable(format!(
                "source `{}` has no [sources.{}.api] in the configuration any more",
                event.source, event.source
            ));
        };
        let query = match FilesQuery::of(event) {
            Ok(query) => query,
            Err(why) => return unreadable(why),
        };
        let Some(vcs) = crate::rules::status::vcs_of(event) else {
            return unreadable(format!(
                "{} events have no VCS to read from",
                event.provider.as_str()
            ));
        };
        let now = self.clock.now();
        // The cache's key names the source: another source's token may not
        // see the same repository.
        let cache_key = format!("{}\n{}", event.source, api.url);
        let read = if let Some(read) = memo.clone() {
            read
        } else if let Some(files) = self.files.get(&cache_key, &query, std::time::Instant::now()) {
            metrics::counter!("hookbridge_changed_files_reads_total", "vcs" => vcs.as_str(), "outcome" => "cached")
                .increment(1);
            FilesRead::Read(files)
        } else {
            // A read may take many requests: it ends well inside its lease.
            let budget = lease.min(LONGEST_WAIT) / 2;
            let timeout = rule.retry.request_timeout.min(LONGEST_WAIT);
            let read = files::read(&*self.transport, vcs, api, &query, timeout, now);
            let read = match tokio::time::timeout(budget, read).await {
                Ok(read) => read,
                Err(_) => FilesRead::Retry {
                    reason: format!(
                        "reading the changed files took longer than {} (half of [dispatch] lease)",
                        humantime::format_duration(budget)
                    ),
                    after: None,
                },
            };
            let label = match &read {
                FilesRead::Read(files) => {
                    self.files
                        .put(&cache_key, &query, files, std::time::Instant::now());
                    "read"
                }
                FilesRead::Retry { .. } => "retry",
                FilesRead::Failed(_) => "failed",
            };
            metrics::counter!("hookbridge_changed_files_reads_total", "vcs" => vcs.as_str(), "outcome" => label)
                .increment(1);
            read
        };
        *memo = Some(read.clone());
        match read {
            FilesRead::Read(files) => {
                let note = FilesNote {
                    from: files.from.clone(),
                    count: u64::try_from(files.paths.len()).unwrap_or(u64::MAX),
                };
                settle(Files::Read, Some(note), None, &event.with_paths(files.paths))
            }
            FilesRead::Retry { reason, after } if d.attempt < rule.retry.max_attempts => {
                let delay = retry_delay(&rule.retry, d.attempt, after, (self.jitter)());
                Step::Retry {
                    at: now + delay,
                    error: reason,
                }
            }
            FilesRead::Retry { reason, .. } => {
                unreadable(format!("gave up after {} reads: {reason}", d.attempt))
            }
            FilesRead::Failed(reason) => unreadable(reason),
        }
    }
}
