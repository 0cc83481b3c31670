//! The dispatcher: lease due jobs, call the CI API, record every attempt.
//!
//! Workers are tasks bounded by `[dispatch] concurrency`. New jobs wake the
//! loop at once; otherwise it sleeps until the next job falls due (or a short
//! poll interval, to notice jobs queued by other processes). A store that
//! leases new jobs into free slots as it stores them (PostgreSQL:
//! `store::handoff`) hands them over with their slots, and the loop starts
//! them wherever it waits. Each attempt's
//! outcome is one `match` on `target::Outcome`: created and CI-skipped jobs
//! finish, retryable ones are rescheduled with exponential backoff and jitter
//! (or the server's longer `Retry-After`, up to `max_backoff`: `retry`),
//! everything else is dead-lettered. A panicking attempt is recorded as a
//! retryable failure, and a job is never sent more than `max_attempts` times,
//! even when its worker died every time (`attempt`). On shutdown the running
//! attempts get a grace period; leases still held after it are given back so
//! the next start runs those jobs again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub use clock::{Clock, Jitter, SystemClock, TokioClock, random_jitter};

use arc_swap::ArcSwap;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::{JoinError, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::store::handoff::{Handed, Handoff, Terms};
use crate::store::{LeasedJob, Store};
use crate::target::client::{Http, Transport};

mod attempt;
mod cancel;
mod clock;
mod deferred;
mod follow;
mod purge;
mod reconcile;
mod retry;
mod side;
mod span;
mod status;

pub use attempt::gave_up;
pub use purge::purge_loop;
pub use retry::{LONGEST_WAIT, backoff, backoff_base, retry_delay, transition};

/// How often an idle dispatcher looks for work queued elsewhere (CLI replays, other replicas).
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The most jobs leased ahead of free slots: enough to keep a busy writer's
/// group commits full, few enough that one dispatcher does not hoard a queue
/// other replicas could run.
const MAX_LEASE_AHEAD: usize = 128;

/// How many jobs to lease when `free` of `concurrency` slots are free.
///
/// Under load a lease is one round trip through the store's writer (a group
/// commit), so leasing only one job per freed slot caps triggers at a few per
/// commit. When the lease lasts long enough (twice the longest request
/// timeout and a tenth: `config::DispatchSettings::lease_ahead`), lease up to
/// `concurrency` jobs ahead, but no more than `MAX_LEASE_AHEAD` in all
/// (`free` alone when that is more): each of them gets a slot within one
/// request timeout (every running attempt ends by then) and finishes its
/// attempt within the next, so it never outlives its lease and runs once.
/// Otherwise lease only `free`.
pub fn lease_size(config: &Config, free: usize, concurrency: usize) -> usize {
    if config.dispatch.lease_ahead {
        free.saturating_add(concurrency).min(free.max(MAX_LEASE_AHEAD))
    } else {
        free
    }
}

/// Everything a worker needs; cheap to clone.
#[derive(Clone)]
pub struct Dispatcher {
    store: Arc<dyn Store>,
    config: Arc<ArcSwap<Config>>,
    /// The HTTP call to the CI: reqwest, or a stand-in in tests.
    transport: Arc<dyn Transport>,
    wake: Arc<Notify>,
    owner: String,
    /// The `now` of every store call and rate-limit date: the system clock,
    /// or tokio's paused one in tests.
    clock: Arc<dyn Clock>,
    /// Where each retry falls in its backoff window.
    jitter: Jitter,
    /// Changed files recently read from a VCS (deferred rules).
    files: Arc<crate::vcs::files::cache::FilesCache>,
}

impl Dispatcher {
    pub fn new(store: Arc<dyn Store>, config: Arc<ArcSwap<Config>>, wake: Arc<Notify>) -> Self {
        let owner = crate::store::owner::new_owner();
        Dispatcher {
            store,
            config,
            transport: Arc::new(Http::new()),
            wake,
            owner,
            clock: Arc::new(SystemClock),
            jitter: random_jitter(),
            files: Arc::default(),
        }
    }

    /// This dispatcher, calling the CI through `transport` instead of HTTP.
    pub fn with_transport(mut self, transport: Arc<dyn Transport>) -> Self {
        self.transport = transport;
        self
    }

    /// This dispatcher, reading the time from `clock`.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// This dispatcher, placing retries in their backoff window by `jitter`.
    pub fn with_jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// How long to sleep before `at`: at least a millisecond, at most the poll interval.
    fn until(&self, at: SystemTime) -> Duration {
        at.duration_since(self.clock.now())
            .unwrap_or_default()
            .clamp(Duration::from_millis(1), POLL_INTERVAL)
    }

    /// Run until `shutdown`, then let attempts finish within `grace`.
    ///
    /// Jobs a store hands over (see [`crate::store::handoff`]) are started
    /// wherever the loop waits. While it leases, it holds the handoff and
    /// reserves its free slots first, so each job it leases has a slot at
    /// once, or (leased ahead) the next one to free up.
    pub async fn run(self, shutdown: CancellationToken, grace: Duration) {
        let concurrency = self.config.load().dispatch.concurrency;
        let slots = Arc::new(Semaphore::new(concurrency));
        let (handoff, mut handed) = self.offer_slots(&slots);
        let mut inflight = Inflight::default();
        let mut store_backoff = Duration::from_millis(100);
        let cancels = tokio::spawn(self.clone().cancel_loop(shutdown.clone()));
        let follows = tokio::spawn(self.clone().follow_loop(shutdown.clone()));
        let statuses = tokio::spawn(self.clone().status_loop(shutdown.clone()));
        let watches = tokio::spawn(self.clone().watch_loop(shutdown.clone()));
        let deferrals = tokio::spawn(self.clone().deferral_loop(shutdown.clone()));
        // A slot the loop waited for, kept for its next lease.
        let mut freed: Option<OwnedSemaphorePermit> = None;
        info!(owner = %self.owner, concurrency, "dispatcher started");
        loop {
            inflight.reap_finished();
            if shutdown.is_cancelled() {
                break;
            }
            while let Ok(h) = handed.try_recv() {
                self.start(&mut inflight, h.job, h.permit);
            }
            let hold = handoff.hold();
            let mut reserved = reserve(&slots);
            reserved.extend(freed.take());
            if reserved.is_empty() {
                // Every slot is busy (or claimed by an ingest whose jobs are on
                // their way): wait for one to free up (kept: no ingest takes
                // it before the next lease) or for those jobs.
                drop(hold);
                tokio::select! {
                    Some(_) = inflight.next() => {}
                    Some(h) = handed.recv() => self.start(&mut inflight, h.job, h.permit),
                    p = slots.clone().acquire_owned() => freed = p.ok(),
                    _ = shutdown.cancelled() => break,
                }
                continue;
            }
            let (lease, want) = {
                let config = self.config.load();
                // A job leased ahead gets a slot when an attempt now running
                // or started now ends: within one request timeout. A slot an
                // ingest claimed frees up only an attempt after its insert
                // commits, so each pending claim is one job fewer ahead.
                let free = reserved.len();
                let ahead = concurrency.saturating_sub(handoff.claims_pending());
                let want = lease_size(&config, free, concurrency).min(free.saturating_add(ahead));
                (config.dispatch.lease.min(LONGEST_WAIT), want)
            };
            let leasing = self.store.lease_due(&self.owner, want, lease, self.clock.now());
            match self.handing(leasing, &mut handed, &mut inflight).await {
                Ok(jobs) => {
                    store_backoff = Duration::from_millis(100);
                    let full = jobs.len() == want;
                    for job in jobs {
                        // Jobs not started by shutdown are given back by `release` below.
                        let permit = match reserved.pop() {
                            Some(p) => Some(p),
                            None => {
                                let next = async {
                                    tokio::select! {
                                        p = slots.clone().acquire_owned() => p.ok(),
                                        _ = shutdown.cancelled() => None,
                                    }
                                };
                                self.handing(next, &mut handed, &mut inflight).await
                            }
                        };
                        let Some(permit) = permit else { break };
                        self.start(&mut inflight, job, permit);
                    }
                    drop((reserved, hold));
                    if full {
                        continue;
                    }
                }
                Err(e) => {
                    drop((reserved, hold));
                    warn!(error = %e, retry_in = ?store_backoff, "cannot lease jobs");
                    let pause = async {
                        tokio::select! {
                            _ = tokio::time::sleep(store_backoff) => false,
                            _ = shutdown.cancelled() => true,
                        }
                    };
                    if self.handing(pause, &mut handed, &mut inflight).await {
                        break;
                    }
                    store_backoff = (store_backoff * 2).min(Duration::from_secs(10));
                    continue;
                }
            }
            let wait = match self
                .handing(self.store.next_due(), &mut handed, &mut inflight)
                .await
            {
                Ok(Some(t)) => self.until(t),
                _ => POLL_INTERVAL,
            };
            // Nothing more is due now: sleep until new jobs are announced or
            // the next one falls due. A finished attempt frees a slot but
            // brings no work, unless it scheduled a retry sooner than that.
            let mut deadline = tokio::time::Instant::now() + wait;
            let stop = loop {
                tokio::select! {
                    _ = self.wake.notified() => break false,
                    _ = tokio::time::sleep_until(deadline) => break false,
                    Some(h) = handed.recv() => self.start(&mut inflight, h.job, h.permit),
                    Some(due) = inflight.next() => {
                        if let Some(at) = due {
                            deadline = deadline.min(tokio::time::Instant::now() + self.until(at));
                        }
                    }
                    _ = shutdown.cancelled() => break true,
                }
            };
            if stop {
                break;
            }
        }
        // Jobs stored for it from now on stay due; those handed over and
        // not started are given back with the other leases below.
        handed.close();
        while handed.try_recv().is_ok() {}
        let draining = tokio::time::Instant::now();
        let running = inflight.tasks.len();
        if running > 0 {
            info!(running, grace = ?grace, "waiting for running trigger attempts");
            let drained =
                tokio::time::timeout(grace, async { while inflight.next().await.is_some() {} }).await;
            if drained.is_err() {
                warn!(
                    left = inflight.tasks.len(),
                    "grace period over; the remaining jobs run again at next start"
                );
                inflight.tasks.abort_all();
            }
        }
        // A cancel in flight may finish within what is left of the grace
        // period; otherwise it stops, and runs again once its lease expires.
        let mut cancels = cancels;
        let left = grace.saturating_sub(draining.elapsed());
        if tokio::time::timeout(left, &mut cancels).await.is_err() {
            cancels.abort();
            warn!("a pipeline cancel was still running at the end of the grace period; it runs again");
        }
        // A read of a queue item, a status post, a pipeline read and a read
        // of changed files are safe to repeat: they stop here.
        follows.abort();
        statuses.abort();
        watches.abort();
        deferrals.abort();
        if let Err(e) = self.store.release(&self.owner, self.clock.now()).await {
            warn!(error = %e, "cannot give back leases; they expire on their own");
        }
        info!("dispatcher stopped");
    }
}

impl Dispatcher {
    /// Let the store lease new jobs into free `slots` as it stores them
    /// (PostgreSQL does; see [`crate::store::handoff`]): they arrive on the
    /// receiver, each with its slot.
    fn offer_slots(&self, slots: &Arc<Semaphore>) -> (Arc<Handoff>, mpsc::UnboundedReceiver<Handed>) {
        let (config, clock) = (self.config.clone(), self.clock.clone());
        // Only a lease long enough to lease ahead leaves a handed job the
        // time of its insert and one whole attempt (see `Handoff::deliver`).
        let terms: Terms = Box::new(move || {
            let dispatch = &config.load().dispatch;
            dispatch
                .lease_ahead
                .then(|| (clock.now(), dispatch.lease.min(LONGEST_WAIT)))
        });
        let (handoff, handed) = Handoff::new(self.owner.clone(), slots.clone(), terms, self.wake.clone());
        self.store.hand_off(handoff.clone());
        (handoff, handed)
    }

    /// Await `work`, starting what is handed over meanwhile: a handed job
    /// holds its lease and its slot, and must not wait behind a slow store.
    async fn handing<T>(
        &self,
        work: impl Future<Output = T>,
        handed: &mut mpsc::UnboundedReceiver<Handed>,
        inflight: &mut Inflight,
    ) -> T {
        tokio::pin!(work);
        loop {
            tokio::select! {
                biased;
                out = &mut work => return out,
                Some(h) = handed.recv() => self.start(inflight, h.job, h.permit),
            }
        }
    }

    /// Start one attempt of a leased `job` in its slot.
    fn start(&self, inflight: &mut Inflight, job: LeasedJob, permit: OwnedSemaphorePermit) {
        let id = job.id.clone();
        inflight.spawn(id, span::attempt(self.clone(), job, permit));
    }
}

/// Every slot free now, taken at once.
fn reserve(slots: &Arc<Semaphore>) -> Vec<OwnedSemaphorePermit> {
    let mut taken = Vec::with_capacity(slots.available_permits());
    while let Ok(p) = slots.clone().try_acquire_owned() {
        taken.push(p);
    }
    taken
}

/// Running attempts, with the job each task runs: a task that ends in a panic
/// (outside the attempt's own `catch_unwind`) or is cancelled is logged with
/// its job instead of vanishing.
#[derive(Default)]
struct Inflight {
    /// Each task answers when its job is due again (a retry it recorded).
    tasks: JoinSet<Option<SystemTime>>,
    jobs: HashMap<tokio::task::Id, String>,
}

impl Inflight {
    fn spawn(&mut self, job: String, task: impl Future<Output = Option<SystemTime>> + Send + 'static) {
        let handle = self.tasks.spawn(task);
        self.jobs.insert(handle.id(), job);
    }

    /// When the finished task's job is due again, if it is.
    fn reap(&mut self, done: Result<(tokio::task::Id, Option<SystemTime>), JoinError>) -> Option<SystemTime> {
        let e = match done {
            Ok((id, due)) => {
                self.jobs.remove(&id);
                return due;
            }
            Err(e) => e,
        };
        let job = self.jobs.remove(&e.id()).unwrap_or_default();
        if e.is_panic() {
            error!(job = %job, error = %e, "a trigger attempt's task panicked; the job runs again when its lease expires");
        } else {
            warn!(job = %job, error = %e, "a trigger attempt's task was cancelled; the job runs again when its lease expires");
        }
        None
    }

    /// Reap every task that has finished, without waiting.
    fn reap_finished(&mut self) {
        while let Some(done) = self.tasks.try_join_next_with_id() {
            let _ = self.reap(done);
        }
    }

    /// Wait for the next task to finish and reap it: `None` when none runs,
    /// else when its job is due again, if it is.
    async fn next(&mut self) -> Option<Option<SystemTime>> {
        let done = self.tasks.join_next_with_id().await?;
        Some(self.reap(done))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[derive(Clone, Default)]
    struct Logs(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Logs {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn config(lease: &str) -> Config {
        let text = format!(
            "[dispatch]\nlease = \"{lease}\"\n[retry]\nrequest_timeout = \"5s\"\n\
             [targets.gitlab]\ntype = \"gitlab\"\nurl = \"https://g.example\"\ntoken = \"t\"\n\
             [targets.gitlab.retry]\nrequest_timeout = \"7s\"\n"
        );
        crate::config::parse(
            std::path::Path::new("t.toml"),
            &text,
            crate::config::LoadMode::Check,
        )
        .unwrap()
        .config
    }

    /// Leasing ahead needs a lease of twice the longest request timeout and
    /// a tenth (a target's 7 s here, not the default 5 s: 14.7 s), and stops
    /// at 128 jobs unless the free slots alone are more.
    #[test]
    fn lease_size_leases_ahead_up_to_concurrency_and_128() {
        let long = config("14700ms");
        assert_eq!(lease_size(&long, 2, 2), 4);
        assert_eq!(lease_size(&long, 1, 8), 9);
        assert_eq!(lease_size(&long, 0, 8), 8);
        assert_eq!(lease_size(&long, 100, 100), 128);
        assert_eq!(lease_size(&long, 1, 500), 128);
        assert_eq!(lease_size(&long, 200, 200), 200);
        assert_eq!(lease_size(&long, usize::MAX, usize::MAX), usize::MAX);
        let short = config("14s");
        assert_eq!(lease_size(&short, 2, 2), 2);
        assert_eq!(lease_size(&short, 100, 100), 100);
    }

    /// A task that dies outside the attempt's own `catch_unwind` is reaped
    /// and logged with its job, not dropped in silence.
    #[tokio::test]
    async fn a_task_that_panics_is_logged_with_its_job() {
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);

        let mut inflight = Inflight::default();
        inflight.spawn("01JOB".into(), async { panic!("outside the attempt") });
        let retry = SystemTime::UNIX_EPOCH + Duration::from_secs(60);
        inflight.spawn("01FINE".into(), async move { Some(retry) });
        // The panicked task answers no retry; the fine one its own.
        let mut answers = vec![inflight.next().await, inflight.next().await];
        answers.sort();
        assert_eq!(answers, [Some(None), Some(Some(retry))]);
        assert_eq!(inflight.next().await, None);
        assert!(inflight.jobs.is_empty());

        let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{text}");
        assert!(lines[0].contains("job=01JOB"), "{text}");
        assert!(lines[0].contains("outside the attempt"), "{text}");
        assert!(lines[0].contains("runs again when its lease expires"), "{text}");
    }
}
