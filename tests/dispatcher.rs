//! The dispatcher loop on tokio's paused clock: exact attempt times.
//!
//! In process: the real `Dispatcher` over a SQLite store on a temp file, and
//! a fake CI behind the `Transport` seam that answers from a script and
//! records the instant of every call. The dispatcher reads the time from a
//! `TokioClock`, so the `now` it hands the store moves only with tokio's
//! paused clock, and its jitter is fixed, so every retry time is known.
//!
//! Time moves only when every task waits on a timer. The store's writes go
//! to its writer thread, which tokio cannot see, so [`Paused`] runs every
//! store call on a blocking task (tokio holds a paused clock still while one
//! runs). So each instant below is exact to the millisecond, and a test
//! waits by conditions (a call count, a job state), never by wall time.
#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use hookbridge::config::{LoadMode, Secret};
use hookbridge::dispatch::{Clock, Dispatcher, TokioClock};
use hookbridge::store::handoff::Handoff;
use hookbridge::store::sqlite::SqliteStore;
use hookbridge::store::*;
use hookbridge::target::client::{SendError, Transport};
use hookbridge::target::{OutboundRequest, Response};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The wall time the tests start at: whole seconds, so HTTP dates are exact.
const T0: u64 = 1_800_000_000;

const CONFIG: &str = r#"
[dispatch]
concurrency = 2
lease = "60s"

[retry]
max_attempts = 6
initial_backoff = "2s"
max_backoff = "10s"
request_timeout = "5s"

[targets.gitlab]
type = "gitlab"
url = "http://ci.invalid"
token = "glptt-test"

[[rules]]
name = "mirror"
[rules.trigger]
target = "gitlab"
project = "acme/app"
ref = "main"
"#;

/// What the fake CI does with one call.
enum Answer {
    /// Answer `status` with these headers and body `down`.
    Status(u16, Vec<(&'static str, String)>),
    /// `429` with `Retry-After` as an HTTP date this far after the call.
    RetryAtDate(Duration),
    /// `429` with `RateLimit-Reset` as the Unix time this far after the call.
    ResetAtUnix(Duration),
    /// Wait out the request timeout, then report a timeout.
    Timeout,
    /// Panic in the call.
    Panic(&'static str),
    /// Hold the call this long, then answer 201.
    Stall(Duration),
}

/// A CI that answers from a script (then `201` to everything) and records
/// when each call came, in milliseconds of the paused clock since the start.
struct FakeCi {
    start: Instant,
    clock: TokioClock,
    script: Mutex<VecDeque<Answer>>,
    calls: Mutex<Vec<u64>>,
    count: watch::Sender<usize>,
}

impl FakeCi {
    fn new(h: &Harness, script: impl IntoIterator<Item = Answer>) -> Arc<FakeCi> {
        Arc::new(FakeCi {
            start: h.start,
            clock: h.clock,
            script: Mutex::new(script.into_iter().collect()),
            calls: Mutex::new(Vec::new()),
            count: watch::channel(0).0,
        })
    }

    fn calls(&self) -> Vec<u64> {
        self.calls.lock().unwrap().clone()
    }

    /// Wait until `n` calls have come; fails once the clock passes `within`.
    async fn wait_calls(&self, n: usize, within: Duration) {
        let mut rx = self.count.subscribe();
        let waited = tokio::time::timeout(within, rx.wait_for(|c| *c >= n)).await;
        assert!(waited.is_ok(), "{n} calls expected, got {:?}", self.calls());
    }
}

fn response(status: u16, headers: Vec<(&'static str, String)>) -> Response {
    let mut map = http::HeaderMap::new();
    for (name, value) in headers {
        map.insert(name, value.parse().unwrap());
    }
    let body = if status == 201 {
        r#"{"id": 7, "iid": 1}"#
    } else {
        "down"
    };
    Response {
        status,
        headers: map,
        body: body.into(),
    }
}

#[async_trait::async_trait]
impl Transport for FakeCi {
    async fn send(
        &self,
        _: &OutboundRequest,
        _: Option<&Secret>,
        timeout: Duration,
    ) -> Result<Response, SendError> {
        let at = self.start.elapsed().as_millis() as u64;
        let answer = self.script.lock().unwrap().pop_front();
        self.calls.lock().unwrap().push(at);
        self.count.send_modify(|c| *c += 1);
        let unix_now = self.clock.now().duration_since(UNIX_EPOCH).unwrap();
        match answer {
            None => Ok(response(201, vec![])),
            Some(Answer::Status(status, headers)) => Ok(response(status, headers)),
            Some(Answer::RetryAtDate(d)) => {
                let date = httpdate::fmt_http_date(UNIX_EPOCH + unix_now + d);
                Ok(response(429, vec![("retry-after", date)]))
            }
            Some(Answer::ResetAtUnix(d)) => {
                let reset = (unix_now + d).as_secs().to_string();
                Ok(response(429, vec![("ratelimit-reset", reset)]))
            }
            Some(Answer::Timeout) => {
                tokio::time::sleep(timeout).await;
                Err(SendError::Timeout)
            }
            Some(Answer::Panic(message)) => panic!("{message}"),
            Some(Answer::Stall(d)) => {
                tokio::time::sleep(d).await;
                Ok(response(201, vec![]))
            }
        }
    }
}

/// Run `f` on a blocking task: tokio does not move a paused clock while one
/// runs, so no timer fires while the store is working.
async fn held<T: Send + 'static>(f: impl Future<Output = T> + Send + 'static) -> T {
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || handle.block_on(f))
        .await
        .unwrap()
}

/// The store with every call [`held`], optionally [`Racing`], and the
/// number of grouped attempts' starts still to fail (the store unavailable).
struct Paused(
    Arc<dyn Store>,
    Option<Arc<Racing>>,
    Arc<std::sync::atomic::AtomicUsize>,
);

/// An ingest beside the dispatcher, as PostgreSQL's (`store::handoff`): it
/// takes the dispatcher's handoff; when the dispatcher next asks when work is
/// due, it claims every free slot, and 1.5 s later stores `delivery`, leases
/// its jobs to the dispatcher and hands them over. Meanwhile the dispatcher
/// has no free slot and nothing running.
#[derive(Default)]
struct Racing {
    handoff: Mutex<Option<Arc<Handoff>>>,
    delivery: Mutex<Option<NewDelivery>>,
    /// The most slots it claims (0: every free one).
    claim_at_most: std::sync::atomic::AtomicUsize,
    /// When it hands over after its claim (0: 1.5 s).
    hand_over_after_ms: std::sync::atomic::AtomicU64,
    /// Slots an ingest could claim while the dispatcher leased: must be none.
    claimed_while_leasing: std::sync::atomic::AtomicUsize,
}

/// Statuses pass straight through: no test here holds them.
#[async_trait::async_trait]
impl status::StatusQueue for Paused {
    async fn lease_statuses(
        &self,
        owner: &str,
        limit: usize,
        lease: Duration,
        now: SystemTime,
    ) -> Result<Vec<status::LeasedStatus>, StoreError> {
        self.0.lease_statuses(owner, limit, lease, now).await
    }
    async fn record_status(
        &self,
        s: &status::LeasedStatus,
        owner: &str,
        outcome: status::PostOutcome,
        now: SystemTime,
    ) -> Result<(), StoreError> {
        self.0.record_status(s, owner, outcome, now).await
    }
    async fn lease_watches(
        &self,
        owner: &str,
        limit: usize,
        lease: Duration,
        now: SystemTime,
    ) -> Result<Vec<status::LeasedWatch>, StoreError> {
        self.0.lease_watches(owner, limit, lease, now).await
    }
    async fn record_watch(
        &self,
        w: &status::LeasedWatch,
        owner: &str,
        record: status::WatchRecord,
        now: SystemTime,
    ) -> Result<(), StoreError> {
        self.0.record_watch(w, owner, record, now).await
    }
}

/// Deferrals pass straight through: no test here holds them.
#[async_trait::async_trait]
impl deferral::DeferralQueue for Paused {
    async fn lease_deferrals(
        &self,
        owner: &str,
        limit: usize,
        lease: Duration,
        now: SystemTime,
    ) -> Result<Vec<deferral::LeasedDeferral>, StoreError> {
        self.0.lease_deferrals(owner, limit, lease, now).await
    }
    async fn settle_deferral(
        &self,
        d: &deferral::LeasedDeferral,
        owner: &str,
        settled: deferral::Settled,
        now: SystemTime,
    ) -> Result<bool, StoreError> {
        self.0.settle_deferral(d, owner, settled, now).await
    }
    async fn retry_deferral(
        &self,
        d: &deferral::LeasedDeferral,
        owner: &str,
        at: SystemTime,
        error: &str,
        now: SystemTime,
    ) -> Result<bool, StoreError> {
        self.0.retry_deferral(d, owner, at, error, now).await
    }
}

#[async_trait::async_trait]
impl Store for Paused {
    async fn ingest(&self, delivery: NewDelivery) -> Result<Ingested, StoreError> {
        let s = self.0.clone();
        held(async move { s.ingest(delivery).await }).await
    }

    async fn lease_due(
        &self,
        owner: &str,
        limit: usize,
        lease: Duration,
        now: SystemTime,
    ) -> Result<Vec<LeasedJob>, StoreError> {
        if let Some(racing) = &self.1
            && let Some(handoff) = racing.handoff.lock().unwrap().clone()
        {
            let claim = handoff.claim(usize::MAX);
            racing
                .claimed_while_leasing
                .fetch_add(claim.len(), std::sync::atomic::Ordering::SeqCst);
        }
        let (s, owner) = (self.0.clone(), owner.to_owned());
        held(async move { s.lease_due(&owner, limit, lease, now).await }).await
    }

    fn hand_off(&self, handoff: Arc<Handoff>) {
        if let Some(racing) = &self.1 {
            *racing.handoff.lock().unwrap() = Some(handoff);
        }
    }

    async fn record_attempt(
        &self,
        job: &LeasedJob,
        owner: &str,
        attempt: Attempt,
        next: Transition,
        now: SystemTime,
    ) -> Result<(), StoreError> {
        let (s, job, owner) = (self.0.clone(), job.clone(), owner.to_owned());
        held(async move { s.record_attempt(&job, &owner, attempt, next, now).await }).await
    }

    async fn start_attempt(
        &self,
        job: &LeasedJob,
        owner: &str,
        now: SystemTime,
    ) -> Result<Start, StoreError> {
        let failing = self.2.fetch_update(
            std::sync::atomic::Ordering::SeqCst,
            std::sync::atomic::Ordering::SeqCst,
            |n| n.checked_sub(1),
        );
        if failing.is_ok() {
            return Err(StoreError::unavailable("scripted: the store is away"));
        }
        let (s, job, owner) = (self.0.clone(), job.clone(), owner.to_owned());
        held(async move { s.start_attempt(&job, &owner, now).await }).await
    }

    async fn lease_follow_ups(
        &self,
        owner: &str,
        limit: usize,
        lease: Duration,
        now: SystemTime,
    ) -> Result<Vec<hookbridge::store::follow::LeasedFollowUp>, StoreError> {
        self.0.lease_follow_ups(owner, limit, lease, now).await
    }

    async fn record_follow_up(
        &self,
        follow_up: &hookbridge::store::follow::LeasedFollowUp,
        owner: &str,
        outcome: hookbridge::store::follow::FollowOutcome,
        now: SystemTime,
    ) -> Result<(), StoreError> {
        self.0.record_follow_up(follow_up, owner, outcome, now).await
    }

    async fn lease_cancels(
        &self,
        owner: &str,
        limit: usize,
        lease: Duration,
        now: SystemTime,
    ) -> Result<Vec<concurrency::LeasedCancel>, StoreError> {
        self.0.lease_cancels(owner, limit, lease, now).await
    }

    async fn record_cancel(
        &self,
        cancel: &concurrency::LeasedCancel,
        owner: &str,
        attempt: Attempt,
        outcome: concurrency::CancelOutcome,
        now: SystemTime,
    ) -> Result<(), StoreError> {
        self.0.record_cancel(cancel, owner, attempt, outcome, now).await
    }

    async fn release(&self, owner: &str, now: SystemTime) -> Result<(), StoreError> {
        let (s, owner) = (self.0.clone(), owner.to_owned());
        held(async move { s.release(&owner, now).await }).await
    }

    async fn next_due(&self) -> Result<Option<SystemTime>, StoreError> {
        if let Some(racing) = &self.1
            && let Some(handoff) = racing.handoff.lock().unwrap().clone()
        {
            let most = match racing.claim_at_most.load(std::sync::atomic::Ordering::SeqCst) {
                0 => usize::MAX,
                n => n,
            };
            let after = match racing
                .hand_over_after_ms
                .load(std::sync::atomic::Ordering::SeqCst)
            {
                0 => 1_500,
                ms => ms,
            };
            let claim = handoff.claim(most);
            let delivery = (!claim.is_empty())
                .then(|| racing.delivery.lock().unwrap().take())
                .flatten();
            if let Some(mut delivery) = delivery {
                let store = self.0.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(after)).await;
                    let now = claim.now + Duration::from_millis(after);
                    delivery.received_at = now;
                    let (s, d) = (store.clone(), delivery);
                    held(async move { s.ingest(d).await }).await.unwrap();
                    let owner = claim.owner.clone();
                    let (s, n) = (store, claim.len());
                    let lease = claim.until.duration_since(claim.now).unwrap();
                    let jobs = held(async move { s.lease_due(&owner, n, lease, now).await })
                        .await
                        .unwrap();
                    assert!(handoff.deliver(claim, jobs, false).is_empty());
                });
            }
        }
        let s = self.0.clone();
        held(async move { s.next_due().await }).await
    }

    async fn list(&self, filter: &DeliveryFilter) -> Result<Vec<DeliveryRow>, StoreError> {
        let (s, filter) = (self.0.clone(), filter.clone());
        held(async move { s.list(&filter).await }).await
    }

    async fn get(&self, key: &DeliveryKey) -> Result<DeliveryDetail, StoreError> {
        let (s, key) = (self.0.clone(), key.clone());
        held(async move { s.get(&key).await }).await
    }
    async fn verdicts(&self, since: SystemTime, cap: usize) -> Result<RecentVerdicts, StoreError> {
        let s = self.0.clone();
        held(async move { s.verdicts(since, cap).await }).await
    }

    async fn payload(&self, key: &DeliveryKey) -> Result<StoredPayload, StoreError> {
        let (s, key) = (self.0.clone(), key.clone());
        held(async move { s.payload(&key).await }).await
    }

    async fn replay(
        &self,
        key: &DeliveryKey,
        job: Option<&str>,
        now: SystemTime,
    ) -> Result<Vec<String>, StoreError> {
        let (s, key, job) = (self.0.clone(), key.clone(), job.map(str::to_owned));
        held(async move { s.replay(&key, job.as_deref(), now).await }).await
    }

    async fn add_jobs(
        &self,
        key: &DeliveryKey,
        jobs: Vec<NewJob>,
        summary: Summary,
        now: SystemTime,
    ) -> Result<(), StoreError> {
        let (s, key) = (self.0.clone(), key.clone());
        held(async move { s.add_jobs(&key, jobs, summary, now).await }).await
    }

    async fn purge(&self, cutoff: SystemTime, batch: usize) -> Result<u64, StoreError> {
        let s = self.0.clone();
        held(async move { s.purge(cutoff, batch).await }).await
    }

    async fn stats(&self) -> Result<QueueStats, StoreError> {
        let s = self.0.clone();
        held(async move { s.stats().await }).await
    }
    async fn neighbours(&self, target: &str, job: &str, since: SystemTime) -> Result<Neighbours, StoreError> {
        let (s, target, job) = (self.0.clone(), target.to_owned(), job.to_owned());
        held(async move { s.neighbours(&target, &job, since).await }).await
    }

    async fn ready(&self) -> Result<(), StoreError> {
        let s = self.0.clone();
        held(async move { s.ready().await }).await
    }
}

/// A temp-file store, the clocks, and the delivery the tests queue.
struct Harness {
    store: Arc<dyn Store>,
    racing: Option<Arc<Racing>>,
    /// Grouped attempts' starts still to fail.
    start_failures: Arc<std::sync::atomic::AtomicUsize>,
    _dir: tempfile::TempDir,
    start: Instant,
    clock: TokioClock,
}

/// The one delivery of every test.
fn key() -> DeliveryKey {
    DeliveryKey {
        id: "d-1".into(),
        source: Some("github".into()),
    }
}

/// `ms` after the start, as the store records it.
fn at(ms: u64) -> i64 {
    (T0 * 1000 + ms) as i64
}

impl Harness {
    async fn new() -> Harness {
        Harness::with(false).await
    }

    /// A harness whose store hands jobs over as it leases them (see [`Paused`]).
    async fn racing() -> Harness {
        Harness::with(true).await
    }

    /// The racing store's delivery `id`, with `rules.len()` jobs, to be
    /// handed over (see [`Racing`]); its job ids.
    fn race_with(&self, id: &str, rules: &[&str]) -> Vec<String> {
        let (delivery, ids) = self.delivery(id, rules);
        *self.racing.as_ref().unwrap().delivery.lock().unwrap() = Some(delivery);
        ids
    }

    async fn with(racing: bool) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let sqlite = SqliteStore::open_exclusive(&dir.path().join("hb.db")).unwrap();
        let racing = racing.then(|| Arc::new(Racing::default()));
        let start_failures = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        Harness {
            store: Arc::new(Paused(Arc::new(sqlite), racing.clone(), start_failures.clone())),
            racing,
            start_failures,
            _dir: dir,
            start: Instant::now(),
            clock: TokioClock::starting_at(UNIX_EPOCH + Duration::from_secs(T0)),
        }
    }

    /// Store delivery `d-1` with `rules.len()` jobs, received now; their ids.
    async fn queue(&self, rules: &[&str]) -> Vec<String> {
        let (delivery, ids) = self.delivery("d-1", rules);
        assert_eq!(
            self.store.ingest(delivery).await.unwrap(),
            Ingested::Stored { superseded: vec![] }
        );
        ids
    }

    /// Delivery `id` with `rules.len()` jobs, received now, and its job ids.
    fn delivery(&self, id: &str, rules: &[&str]) -> (NewDelivery, Vec<String>) {
        let event = serde_json::from_value(serde_json::json!({
            "source": "github", "provider": "github", "name": "push", "kind": "push",
            "delivery": id, "repository": "acme/app", "ref": "refs/heads/main",
            "branch": "main", "created": false, "deleted": false, "forced": false, "changes": []
        }))
        .unwrap();
        let jobs: Vec<NewJob> = rules
            .iter()
            .map(|rule| NewJob {
                id: ulid::Ulid::generate().to_string(),
                rule: (*rule).into(),
                target: "gitlab".into(),
                request: serde_json::from_value(
                    serde_json::json!({"api": "gitlab_pipeline", "project": "acme/app", "ref": "main"}),
                )
                .unwrap(),
                group: None,
                delay: Duration::ZERO,
                cancel: false,
                status: None,
            })
            .collect();
        let ids = jobs.iter().map(|j| j.id.clone()).collect();
        let delivery = NewDelivery {
            id: ulid::Ulid::generate().to_string(),
            source: "github".into(),
            delivery: id.into(),
            received_at: self.clock.now(),
            event,
            headers: Default::default(),
            payload: br#"{}"#.to_vec().into(),
            summary: Summary {
                delivery: id.into(),
                source: "github".into(),
                event: "push".into(),
                duplicate: false,
                matched: jobs
                    .iter()
                    .map(|j| MatchedJob {
                        rule: j.rule.clone(),
                        job: j.id.clone(),
                        target: "gitlab".into(),
                        group: None,
                        superseded: vec![],
                    })
                    .collect(),
                skipped: vec![],
                errors: vec![],
                deferred: Vec::new(),
            },
            jobs: jobs.clone(),
            trace: None,
        };
        (delivery, ids)
    }

    /// A dispatcher with `config`, calling `ci`, on the paused clock, whose
    /// retries fall at `jitter` within their backoff window.
    fn dispatcher(&self, config: &str, ci: Arc<FakeCi>, jitter: f64) -> Dispatcher {
        let config = hookbridge::config::parse(std::path::Path::new("t.toml"), config, LoadMode::Check)
            .unwrap()
            .config;
        Dispatcher::new(
            self.store.clone(),
            Arc::new(ArcSwap::from_pointee(config)),
            Arc::new(Notify::new()),
        )
        .with_transport(ci)
        .with_clock(Arc::new(self.clock))
        .with_jitter(Arc::new(move || jitter))
    }

    fn spawn(&self, dispatcher: Dispatcher) -> Running {
        let stop = CancellationToken::new();
        let task = tokio::spawn(dispatcher.run(stop.clone(), Duration::from_secs(5)));
        Running { stop, task }
    }

    async fn jobs(&self) -> Vec<JobDetail> {
        self.store.get(&key()).await.unwrap().jobs
    }

    async fn job(&self, id: &str) -> JobDetail {
        self.jobs().await.into_iter().find(|j| j.id == id).unwrap()
    }

    /// Wait until job `id` is in `state`, looking every 50 ms of the paused
    /// clock (the times asserted are those recorded, not when this looked);
    /// fails once the clock passes `within`.
    async fn job_when(&self, id: &str, state: &str, within: Duration) -> JobDetail {
        let deadline = Instant::now() + within;
        loop {
            let job = self.job(id).await;
            if job.state.as_str() == state {
                return job;
            }
            assert!(Instant::now() < deadline, "job never became {state}: {job:#?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Let `span` of the paused clock pass with every dispatcher timer firing,
    /// then check that nothing is left to do: no job due, none running.
    async fn quiet_for(&self, span: Duration) {
        tokio::time::sleep(span).await;
        assert_eq!(self.store.next_due().await.unwrap(), None);
        let states: Vec<String> = self
            .jobs()
            .await
            .iter()
            .map(|j| j.state.as_str().to_owned())
            .collect();
        assert!(
            states.iter().all(|s| s != "running" && s != "pending"),
            "{states:?}"
        );
    }

    fn ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }
}

struct Running {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap();
    }
}

fn outcomes(job: &JobDetail) -> Vec<&str> {
    job.history.iter().map(|a| a.outcome.as_str()).collect()
}

fn started(job: &JobDetail) -> Vec<i64> {
    job.history.iter().map(|a| a.started_at).collect()
}

fn down(status: u16) -> Answer {
    Answer::Status(status, vec![])
}

/// Retries double from `initial_backoff` and stop growing at `max_backoff`;
/// the jitter places each in the upper half of its window, so jitter 1 is
/// the whole base and 0 half of it. The sixth failure dead-letters the job,
/// and nothing is sent after that.
#[tokio::test(start_paused = true)]
async fn backoff_doubles_from_the_floor_up_to_the_cap_then_dead_letters() {
    for (jitter, want) in [
        (1.0, [0, 2_000, 6_000, 14_000, 24_000, 34_000]),
        (0.0, [0, 1_000, 3_000, 7_000, 12_000, 17_000]),
        (0.5, [0, 1_500, 4_500, 10_500, 18_000, 25_500]),
    ] {
        let h = Harness::new().await;
        let [id] = <[String; 1]>::try_from(h.queue(&["mirror"]).await).unwrap();
        let ci = FakeCi::new(&h, (0..6).map(|_| down(503)));
        let running = h.spawn(h.dispatcher(CONFIG, ci.clone(), jitter));

        let job = h.job_when(&id, "dead", Duration::from_secs(120)).await;
        assert_eq!(ci.calls(), want, "jitter {jitter}");
        assert_eq!(
            outcomes(&job),
            ["retry", "retry", "retry", "retry", "retry", "dead"]
        );
        assert_eq!(started(&job), want.map(at));
        assert_eq!(job.attempts, 6);
        assert_eq!(
            job.last_error.as_deref(),
            Some("gave up after 6 attempts; last: HTTP 503: down")
        );
        h.quiet_for(Duration::from_secs(600)).await;
        assert_eq!(ci.calls().len(), 6, "nothing is sent after the dead letter");
        running.stop().await;
    }
}

/// A CI's `Retry-After` or `RateLimit-Reset` is honoured when it asks for
/// longer than the backoff, and bounded by it below and `max_backoff` above,
/// in each of its forms.
#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured_between_the_backoff_and_max_backoff() {
    let h = Harness::new().await;
    let [id] = <[String; 1]>::try_from(h.queue(&["mirror"]).await).unwrap();
    let ci = FakeCi::new(
        &h,
        [
            // Backoff 2 s; an HTTP date 5 s ahead is honoured.
            Answer::RetryAtDate(Duration::from_secs(5)),
            // Backoff 4 s; "retry now" waits the backoff.
            Answer::Status(429, vec![("retry-after", "0".into())]),
            // Backoff 8 s; GitLab's Unix-time reset 9 s ahead is honoured.
            Answer::ResetAtUnix(Duration::from_secs(9)),
            // Backoff 10 s (capped); an hour is clamped to max_backoff.
            Answer::Status(429, vec![("retry-after", "3600".into())]),
            // A reset past the end of time: max_backoff, no panic.
            Answer::Status(503, vec![("ratelimit-reset", u64::MAX.to_string())]),
        ],
    );
    let running = h.spawn(h.dispatcher(CONFIG, ci.clone(), 1.0));

    let job = h.job_when(&id, "done", Duration::from_secs(120)).await;
    let want = [0, 5_000, 9_000, 18_000, 28_000, 38_000];
    assert_eq!(ci.calls(), want);
    assert_eq!(started(&job), want.map(at));
    assert_eq!(
        outcomes(&job),
        ["retry", "retry", "retry", "retry", "retry", "done"]
    );
    let statuses: Vec<Option<u16>> = job.history.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [429, 429, 429, 429, 503, 201].map(Some), "{job:#?}");
    h.quiet_for(Duration::from_secs(600)).await;
    assert_eq!(ci.calls().len(), 6);
    running.stop().await;
}

/// A call that times out takes its whole request timeout; the backoff counts
/// from when it ended.
#[tokio::test(start_paused = true)]
async fn a_timed_out_attempt_backs_off_from_its_end() {
    let h = Harness::new().await;
    let [id] = <[String; 1]>::try_from(h.queue(&["mirror"]).await).unwrap();
    let ci = FakeCi::new(&h, [Answer::Timeout, Answer::Timeout]);
    let running = h.spawn(h.dispatcher(CONFIG, ci.clone(), 1.0));

    let job = h.job_when(&id, "done", Duration::from_secs(60)).await;
    // 0 + 5 s timeout + 2 s backoff; 7 + 5 + 4.
    assert_eq!(ci.calls(), [0, 7_000, 16_000]);
    assert_eq!(outcomes(&job), ["retry", "retry", "done"]);
    let first = &job.history[0];
    assert_eq!(first.duration_ms, 5_000);
    assert_eq!(first.error.as_deref(), Some("timed out waiting for the CI API"));
    running.stop().await;
}

/// A panicking attempt is recorded as a retryable failure like any other,
/// and the job moves on: retried after its backoff, then delivered.
#[tokio::test(start_paused = true)]
async fn a_panicking_attempt_is_recorded_and_the_job_moves_on() {
    let h = Harness::new().await;
    let [id] = <[String; 1]>::try_from(h.queue(&["mirror"]).await).unwrap();
    let ci = FakeCi::new(&h, [Answer::Panic("scripted panic")]);
    let running = h.spawn(h.dispatcher(CONFIG, ci.clone(), 1.0));

    let job = h.job_when(&id, "done", Duration::from_secs(60)).await;
    assert_eq!(ci.calls(), [0, 2_000]);
    assert_eq!(outcomes(&job), ["retry", "done"]);
    assert_eq!(started(&job), [at(0), at(2_000)]);
    assert_eq!(
        job.history[0].error.as_deref(),
        Some("internal error: scripted panic")
    );
    assert_eq!(job.history[0].status, None);
    h.quiet_for(Duration::from_secs(600)).await;
    assert_eq!(ci.calls().len(), 2);
    running.stop().await;
}

/// A grouped job whose start the store cannot take is not sent: the
/// attempt is recorded as a retry, and the job goes out after its backoff.
#[tokio::test(start_paused = true)]
async fn a_grouped_attempt_the_store_cannot_start_is_not_sent_and_retried() {
    let h = Harness::new().await;
    let (mut delivery, ids) = h.delivery("d-1", &["mirror"]);
    delivery.jobs[0].group = Some("acme/app/main".into());
    h.store.ingest(delivery).await.unwrap();
    h.start_failures.store(1, std::sync::atomic::Ordering::SeqCst);
    let ci = FakeCi::new(&h, []);
    let running = h.spawn(h.dispatcher(CONFIG, ci.clone(), 1.0));

    let job = h.job_when(&ids[0], "done", Duration::from_secs(60)).await;
    assert_eq!(ci.calls(), [2_000], "sent once, after the backoff");
    assert_eq!(outcomes(&job), ["retry", "done"]);
    assert_eq!(
        job.history[0].error.as_deref(),
        Some("not sent: the store could not start the attempt")
    );
    running.stop().await;
}

/// [`CONFIG`] with a 30 s lease, for the takeover test.
fn short_lease() -> String {
    let config = CONFIG.replace("lease = \"60s\"", "lease = \"30s\"");
    assert_ne!(config, CONFIG, "CONFIG names its lease");
    config
}

/// Dispatcher A (one slot, so it cannot lease again itself) leases the job
/// and its worker stalls past the 30 s lease. Dispatcher B, another owner,
/// takes the job over in the first millisecond after the lease ends and
/// delivers it. A's late answer is kept in the history but does
/// not move the job, and nothing is sent a third time.
#[tokio::test(start_paused = true)]
async fn a_stalled_worker_loses_its_lease_to_another_dispatcher() {
    let h = Harness::new().await;
    let [id] = <[String; 1]>::try_from(h.queue(&["mirror"]).await).unwrap();
    let stalled = FakeCi::new(&h, [Answer::Stall(Duration::from_secs(45))]);
    let short = short_lease();
    let one_slot = short.replace("concurrency = 2", "concurrency = 1");
    let a = h.spawn(h.dispatcher(&one_slot, stalled.clone(), 1.0));
    stalled.wait_calls(1, Duration::from_secs(1)).await;
    assert_eq!(h.job(&id).await.state.as_str(), "running");

    let ci = FakeCi::new(&h, []);
    let b = h.spawn(h.dispatcher(&short, ci.clone(), 1.0));
    let job = h.job_when(&id, "done", Duration::from_secs(40)).await;
    assert_eq!(stalled.calls(), [0]);
    // The lease holds through its last millisecond (`lease_until < now`).
    assert_eq!(ci.calls(), [30_001], "taken over when the lease expired");
    assert_eq!(outcomes(&job), ["interrupted", "done"]);
    assert_eq!(started(&job), [at(30_001), at(30_001)]);
    assert_eq!(job.attempts, 2);

    // A's worker answers at 45 s: recorded, but the job stays B's.
    tokio::time::sleep_until(h.start + Duration::from_millis(45_001)).await;
    let job = h.job(&id).await;
    assert_eq!(job.state.as_str(), "done");
    assert_eq!(outcomes(&job), ["interrupted", "done", "done"]);
    assert_eq!(started(&job), [at(30_001), at(30_001), at(0)]);
    h.quiet_for(Duration::from_secs(600)).await;
    assert_eq!(stalled.calls().len() + ci.calls().len(), 2);
    a.stop().await;
    b.stop().await;
}

/// With a lease of at least twice the longest request timeout, a dispatcher
/// leases up to `concurrency` jobs ahead of its free slots: two run and two
/// wait for a slot. With a shorter lease it leases only what it can start.
/// The calls come at the same times either way.
#[tokio::test(start_paused = true)]
async fn lease_size_leases_ahead_only_when_the_lease_allows() {
    // `lease = "30s"` is twice the 5 s timeout or more; 8 s is not.
    let long = short_lease();
    let short = long.replace("lease = \"30s\"", "lease = \"8s\"");
    for (config, running_at_start) in [(long.as_str(), 4), (short.as_str(), 2)] {
        let h = Harness::new().await;
        let ids = h.queue(&["r1", "r2", "r3", "r4", "r5"]).await;
        let ci = FakeCi::new(&h, (0..5).map(|_| Answer::Stall(Duration::from_secs(3))));
        let running = h.spawn(h.dispatcher(config, ci.clone(), 1.0));

        ci.wait_calls(2, Duration::from_secs(1)).await;
        assert_eq!(h.ms(), 0);
        let states: Vec<String> = h
            .jobs()
            .await
            .iter()
            .map(|j| j.state.as_str().to_owned())
            .collect();
        let leased = states.iter().filter(|s| *s == "running").count();
        assert_eq!(leased, running_at_start, "{states:?}");

        for id in &ids {
            h.job_when(id, "done", Duration::from_secs(30)).await;
        }
        assert_eq!(ci.calls(), [0, 0, 3_000, 3_000, 6_000]);
        h.quiet_for(Duration::from_secs(600)).await;
        assert_eq!(ci.calls().len(), 5);
        running.stop().await;
    }
}

/// An ingest claims the dispatcher's only slot while it waits for work and
/// hands its job over 1.5 s later. Meanwhile the dispatcher has no free slot
/// and nothing running: it waits for the job or a slot (it used to spin
/// there, holding a worker thread, so the job never came), and starts the
/// job the moment it arrives, once.
#[tokio::test(start_paused = true)]
async fn a_job_handed_over_while_every_slot_is_claimed_starts_when_it_arrives() {
    let h = Harness::racing().await;
    let ids = h.race_with("d-2", &["r1"]);
    let ci = FakeCi::new(&h, [Answer::Status(201, vec![])]);
    let config = CONFIG.replace("concurrency = 2", "concurrency = 1");
    let running = h.spawn(h.dispatcher(&config, ci.clone(), 1.0));
    ci.wait_calls(1, Duration::from_secs(5)).await;
    assert_eq!(ci.calls(), [1_500]);
    let key = DeliveryKey {
        id: "d-2".into(),
        source: Some("github".into()),
    };
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(h.store.next_due().await.unwrap(), None);
    assert_eq!(ci.calls().len(), 1);
    let detail = h.store.get(&key).await.unwrap();
    let job = detail.jobs.into_iter().find(|j| j.id == ids[0]).unwrap();
    assert_eq!((job.attempts, outcomes(&job)), (1, vec!["done"]), "{job:#?}");
    running.stop().await;
}

/// An ingest beside a lease statement finds no free slot: the dispatcher
/// took them all before leasing. (Slots claimed then left the jobs it
/// leased waiting for a whole attempt, past their lease, and another
/// dispatcher sent them again.)
#[tokio::test(start_paused = true)]
async fn no_ingest_claims_a_slot_while_the_dispatcher_leases() {
    let h = Harness::racing().await;
    let ids = h.queue(&["r1", "r2", "r3"]).await;
    let ci = FakeCi::new(&h, (0..3).map(|_| Answer::Stall(Duration::from_secs(3))));
    let running = h.spawn(h.dispatcher(&short_lease(), ci.clone(), 1.0));
    for id in &ids {
        h.job_when(id, "done", Duration::from_secs(30)).await;
    }
    assert_eq!(ci.calls(), [0, 0, 3_000]);
    let racing = h.racing.as_ref().unwrap();
    assert_eq!(
        racing
            .claimed_while_leasing
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    running.stop().await;
}

/// An ingest claimed one of two slots and hands its job over 2.5 s later;
/// meanwhile three jobs are queued. The dispatcher leases one job fewer
/// ahead of its free slot for the pending claim: a second job leased ahead
/// would wait for the claimed slot, whose attempt starts only at the
/// hand-over, and outlive its 10.5 s lease (it was sent twice: 5 sends for
/// 4 jobs).
#[tokio::test(start_paused = true)]
async fn no_job_is_leased_ahead_while_an_ingest_claim_is_pending() {
    let h = Harness::racing().await;
    let racing = h.racing.clone().unwrap();
    racing.claim_at_most.store(1, std::sync::atomic::Ordering::SeqCst);
    racing
        .hand_over_after_ms
        .store(2_500, std::sync::atomic::Ordering::SeqCst);
    let handed = h.race_with("d-2", &["h1"]);
    let ci = FakeCi::new(&h, (0..4).map(|_| Answer::Stall(Duration::from_millis(4_900))));
    // 10.5 s is twice the 5 s timeout and a tenth: it leases ahead.
    let config = CONFIG.replace("lease = \"60s\"", "lease = \"10500ms\"");
    let running = h.spawn(h.dispatcher(&config, ci.clone(), 1.0));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ids = h.queue(&["r1", "r2", "r3"]).await;
    for id in &ids {
        h.job_when(id, "done", Duration::from_secs(60)).await;
    }
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(ci.calls().len(), 4, "{:?}", ci.calls());
    for id in &ids {
        let job = h.job(id).await;
        assert_eq!((job.attempts, outcomes(&job)), (1, vec!["done"]), "{job:#?}");
    }
    let key = DeliveryKey {
        id: "d-2".into(),
        source: Some("github".into()),
    };
    let job = h
        .store
        .get(&key)
        .await
        .unwrap()
        .jobs
        .into_iter()
        .find(|j| j.id == handed[0])
        .unwrap();
    assert_eq!((job.attempts, outcomes(&job)), (1, vec!["done"]), "{job:#?}");
    running.stop().await;
}
