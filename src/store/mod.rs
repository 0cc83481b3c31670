//! Durable storage of deliveries, jobs and attempts, behind one [`Store`] trait.
//!
//! The contract every backend keeps:
//! - [`Store::ingest`] writes a delivery and all its jobs in one transaction,
//!   and returns only once that transaction is durable. A second delivery with
//!   the same (source, delivery id) stores nothing and returns the original
//!   summary, re-queueing the delivery's dead-lettered jobs.
//! - [`Store::lease_due`] hands each due job to one worker until its lease
//!   expires; an expired lease (a crashed worker) makes the job due again.
//! - [`Store::record_attempt`] stores every attempt and moves the job on, but
//!   only while the worker still holds the lease.
//! - Concurrency groups (`[rules.concurrency]`): an ingest ends, in its
//!   transaction, the older jobs of each new job's group that have not
//!   gone out (pending, or leased and not started) as `superseded`, and
//!   marks those whose attempt is out, which end superseded unless that
//!   attempt creates a pipeline; [`Store::start_attempt`] lets a grouped
//!   job's attempt go out, or ends it when it was superseded meanwhile.
//! - Deferred rules ([`deferral`]): the ingest stores one pending deferral
//!   per rule its summary defers, in its transaction; a delivery is
//!   `pending` while any of them is not settled, and the purge keeps it.
//!
//! SQLite ([`sqlite`]) is the embedded default; PostgreSQL ([`postgres`])
//! lets several replicas share one queue.
//!
//! # Time
//!
//! Operations that decide by the clock take `now` from the caller
//! ([`Store::lease_due`], [`Store::record_attempt`], [`Store::release`],
//! [`Store::replay`], [`Store::add_jobs`]; [`Store::ingest`] uses the
//! delivery's `received_at`), so tests can run them at chosen instants.
//!
//! # Errors
//!
//! Every failure is a [`StoreError`]; callers decide on its
//! [`kind`](StoreError::kind), never on its text. Backends classify driver
//! errors where they happen and keep the driver error as the
//! [`source`](std::error::Error::source).
//!
//! | kind | means | the caller |
//! |---|---|---|
//! | `Unavailable` | busy, locked, down, full disk, I/O: nothing was written | retries later: the webhook handler answers 503 (the sender retries), the dispatcher backs off and retries, the admin API answers 503 |
//! | `Conflict` | the write contradicts what is stored (a constraint) | does not retry the same call; admin answers 503 without detail (it is a bug, for the log) |
//! | `NotFound` | no such delivery or job | admin answers 404, the CLI says so |
//! | `Ambiguous` | the delivery id exists for several sources | admin answers 409, the CLI asks for `--source` |
//! | `Corrupt` | stored data cannot be read back | nobody retries; admin answers 503 without detail |
//! | `Invalid` | setup or request is wrong (newer schema, bad URL, store in use) | a person fixes it; `serve` refuses to start |
//!
//! Messages are for operators: they name tables, files and ids, never a
//! password or a connection string. The admin API shows only `NotFound`,
//! `Ambiguous` and `Invalid` messages; the rest go to the log.
//!
//! # Layout
//!
//! - `mod.rs` (here): the [`Store`] trait and the public types;
//! - `open.rs`: [`open`] and [`migrate`] the store the config names;
//! - `error.rs`: [`StoreError`] and [`StoreErrorKind`];
//! - [`model`]: what both backends share: [`JobState`], the transition to
//!   job update mapping ([`model::JobUpdate`]), the interrupted-attempt
//!   texts, messages, the schema check, JSON columns;
//! - [`concurrency`]: concurrency groups' shared model: what an ingest
//!   supersedes ([`concurrency::supersede`]), starts, cancels;
//! - [`follow`]: follow-ups of runs a CI only queued;
//! - [`deferral`]: rules deferred until their changed files are read;
//! - [`ready`]: the readiness probe cache;
//! - [`sqlite`]: `mod` (store, open), `schema`, `writer` (group commit, one
//!   generic write op), `queue` (writes), `groups` (superseding), `cancels`,
//!   `follow_ups`, `deferrals` and `deferral_queue`, `status`, `history`
//!   (reads), `guard` (files, room);
//! - [`postgres`]: the shared store. SQL stays per backend.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::event::Event;
use crate::rules::{Errored, Skipped};
use crate::target::{TriggerRequest, TriggerResult};

pub mod concurrency;
pub mod deferral;
mod detail;
mod error;
pub mod follow;
pub mod handoff;
pub mod model;
mod open;
pub mod owner;
pub mod postgres;
pub mod query;
pub mod ready;
pub mod sqlite;
pub mod status;

pub use concurrency::{Start, Superseded, SupersededBy};
pub use detail::{
    AttemptRow, DeliveryDetail, DeliveryFilter, DeliveryRow, JobDetail, StatusRow, StoredPayload,
};
pub use error::{StoreError, StoreErrorKind};
pub use model::{DeliveryStatus, JobState, UnknownStatus};
pub use open::{OpenMode, migrate, open};
pub use query::{RecentVerdicts, RuleCounts};

/// Milliseconds since the Unix epoch, the stores' time unit.
pub fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

pub fn from_millis(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}

/// A job in a summary: which rule matched, the job it created, and where it goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MatchedJob {
    pub rule: String,
    pub job: String,
    pub target: String,
    /// The concurrency group the job joined (`[rules.concurrency]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The older jobs of its group this job superseded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub superseded: Vec<String>,
}

/// What the sender is told about its delivery (and what `deliveries show` repeats).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub delivery: String,
    pub source: String,
    pub event: String,
    pub duplicate: bool,
    pub matched: Vec<MatchedJob>,
    pub skipped: Vec<Skipped>,
    pub errors: Vec<Errored>,
    /// The rules whose path filters wait for the changed files read from
    /// the VCS (`paths_unknown = "fetch"`); each moves to `matched`,
    /// `skipped` or `errors` once they are read ([`deferral`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deferred: Vec<deferral::Deferred>,
}

/// A job to create with its delivery.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub id: String,
    pub rule: String,
    pub target: String,
    pub request: TriggerRequest,
    /// Its concurrency group: storing it supersedes the group's older jobs
    /// that have not created a pipeline yet.
    pub group: Option<String>,
    /// How long after the delivery its first attempt falls due (debounce).
    pub delay: Duration,
    /// Once its pipeline exists, cancel the older pipelines of its group
    /// (`cancel_in_progress`).
    pub cancel: bool,
    /// What the job reports on its commit (`[rules.status]`).
    pub status: Option<status::StatusSpec>,
}

impl NewJob {
    /// A job without a group, due at once.
    pub fn new(id: String, rule: String, target: String, request: TriggerRequest) -> NewJob {
        NewJob {
            id,
            rule,
            target,
            request,
            group: None,
            delay: Duration::ZERO,
            cancel: false,
            status: None,
        }
    }
}

/// A verified, described delivery with the jobs its rules produced.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    /// Internal id (ULID).
    pub id: String,
    pub source: String,
    /// The provider's delivery id (deduplication key with `source`).
    pub delivery: String,
    pub received_at: SystemTime,
    pub event: Event,
    /// Request headers without credentials.
    pub headers: BTreeMap<String, String>,
    /// The JSON payload; for the daemon, the request body itself (not a copy).
    pub payload: bytes::Bytes,
    pub summary: Summary,
    pub jobs: Vec<NewJob>,
    /// The W3C `traceparent` of the intake's span, stored with each job so
    /// that its attempts, on any replica, join the delivery's trace (`None`
    /// when telemetry is off).
    pub trace: Option<String>,
}

/// The result of [`Store::ingest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ingested {
    /// Stored; with the jobs its new jobs superseded, when any did.
    Stored { superseded: Vec<Superseded> },
    /// Seen before: the original summary, and how many dead jobs were queued again.
    Duplicate { summary: Summary, requeued: usize },
}

/// A job handed to a worker.
#[derive(Debug, Clone)]
pub struct LeasedJob {
    pub id: String,
    pub delivery_id: String,
    pub delivery: String,
    pub source: String,
    pub rule: String,
    pub target: String,
    pub request: TriggerRequest,
    /// Attempt number within the current round (1 for the first try).
    pub attempt: u32,
    /// In a concurrency group: [`Store::start_attempt`] lets each attempt
    /// through, unless a newer job of the group superseded this one.
    pub grouped: bool,
    /// The delivery's trace context (see [`NewDelivery::trace`]).
    pub trace: Option<String>,
    /// When the earliest attempt of this round whose outcome is unknown
    /// began (it timed out or was cut off after sending, or its worker
    /// stopped): the CI may have created the pipeline since, so this attempt
    /// reconciles before it sends again.
    pub ambiguous_since: Option<SystemTime>,
    /// The pipeline an earlier round of the job recorded (before a
    /// replay): never this round's, whatever a reconcile finds.
    pub previous: Option<String>,
}

/// One attempt, as it will be recorded.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub started_at: SystemTime,
    pub duration: Duration,
    pub status: Option<u16>,
    pub error: Option<String>,
    /// The response body, truncated.
    pub response: Option<String>,
    /// The request may have reached the CI without its answer reaching
    /// hookbridge (a timeout or a connection cut after sending): the next
    /// attempt reconciles first ([`LeasedJob::ambiguous_since`]).
    pub ambiguous: bool,
    /// What reconciling with the CI before sending decided, and why.
    pub reconcile: Option<String>,
}

impl Attempt {
    /// An attempt starting at `started_at`, with nothing to record yet.
    pub fn at(started_at: SystemTime) -> Attempt {
        Attempt {
            started_at,
            duration: Duration::ZERO,
            status: None,
            error: None,
            response: None,
            ambiguous: false,
            reconcile: None,
        }
    }
}

/// Other jobs of a target, as a heuristic reconcile sees them ([`Store::neighbours`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Neighbours {
    /// The pipelines they recorded (their ids).
    pub recorded: Vec<String>,
    /// The requests of those whose attempt is out or was cut short: each
    /// may have created a pipeline not recorded yet.
    pub unsettled: Vec<TriggerRequest>,
}

/// Where a job goes after an attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    Done(TriggerResult),
    /// The CI chose not to run; nothing to retry.
    Skipped(String),
    Retry {
        at: SystemTime,
        reason: String,
    },
    Dead(String),
}

impl Transition {
    pub fn outcome(&self) -> &'static str {
        match self {
            Transition::Done(_) => "done",
            Transition::Skipped(_) => "skipped",
            Transition::Retry { .. } => "retry",
            Transition::Dead(_) => "dead",
        }
    }
}

/// Queue figures for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueStats {
    pub pending: u64,
    pub running: u64,
    pub dead: u64,
    pub oldest_pending: Option<SystemTime>,
}

/// How to find a delivery: its provider id (optionally with the source), or the internal id.
#[derive(Debug, Clone)]
pub struct DeliveryKey {
    pub id: String,
    pub source: Option<String>,
}

/// The durable queue and delivery history.
#[async_trait::async_trait]
pub trait Store: status::StatusQueue + deferral::DeferralQueue + Send + Sync {
    /// Store a delivery and its jobs atomically and durably, or report a duplicate.
    /// The delivery's `received_at` is the clock: a duplicate re-queues dead jobs due then.
    async fn ingest(&self, delivery: NewDelivery) -> Result<Ingested, StoreError>;

    /// Lease up to `limit` due jobs (pending and due, or running with an expired lease).
    /// `now` decides what is due and starts the lease.
    async fn lease_due(
        &self,
        owner: &str,
        limit: usize,
        lease: Duration,
        now: SystemTime,
    ) -> Result<Vec<LeasedJob>, StoreError>;

    /// Record an attempt and move the job on, if `owner` still holds its lease.
    /// `now` is when the attempt's outcome is known.
    async fn record_attempt(
        &self,
        job: &LeasedJob,
        owner: &str,
        attempt: Attempt,
        next: Transition,
        now: SystemTime,
    ) -> Result<(), StoreError>;

    /// Let an attempt of a grouped job (`job.grouped`) go to the CI: from
    /// now on a newer job of its group no longer ends it. A job a newer one
    /// superseded while it was leased is ended instead ([`Start::Superseded`]).
    async fn start_attempt(&self, job: &LeasedJob, owner: &str, now: SystemTime)
    -> Result<Start, StoreError>;

    /// Lease up to `limit` due cancels of older pipelines
    /// (`cancel_in_progress`): pending and due, or running with an expired lease.
    async fn lease_cancels(
        &self,
        owner: &str,
        limit: usize,
        lease: Duration,
        now: SystemTime,
    ) -> Result<Vec<concurrency::LeasedCancel>, StoreError>;

    /// Record a cancel's attempt on the cancelled job and move the cancel
    /// on, if `owner` still holds its lease.
    async fn record_cancel(
        &self,
        cancel: &concurrency::LeasedCancel,
        owner: &str,
        attempt: Attempt,
        outcome: concurrency::CancelOutcome,
        now: SystemTime,
    ) -> Result<(), StoreError>;

    /// Lease up to `limit` due follow-ups of queued runs ([`follow`]):
    /// pending and due, or running with an expired lease. Each lease counts
    /// as a poll ([`follow::LeasedFollowUp::poll`]).
    async fn lease_follow_ups(
        &self,
        owner: &str,
        limit: usize,
        lease: std::time::Duration,
        now: SystemTime,
    ) -> Result<Vec<follow::LeasedFollowUp>, StoreError>;

    /// Record a follow-up's read: the job's result becomes the outcome's,
    /// and the follow-up ends or falls due again, if `owner` still holds
    /// its lease.
    async fn record_follow_up(
        &self,
        follow_up: &follow::LeasedFollowUp,
        owner: &str,
        outcome: follow::FollowOutcome,
        now: SystemTime,
    ) -> Result<(), StoreError>;

    /// Give back every lease `owner` holds (graceful shutdown); the jobs are due at `now`.
    async fn release(&self, owner: &str, now: SystemTime) -> Result<(), StoreError>;

    /// When the next pending job falls due, if any.
    async fn next_due(&self) -> Result<Option<SystemTime>, StoreError>;

    async fn list(&self, filter: &DeliveryFilter) -> Result<Vec<DeliveryRow>, StoreError>;

    async fn get(&self, key: &DeliveryKey) -> Result<DeliveryDetail, StoreError>;

    /// Every rule's verdicts over the deliveries received since `since`,
    /// newest first, reading at most `cap` of them.
    async fn verdicts(&self, since: SystemTime, cap: usize) -> Result<RecentVerdicts, StoreError>;

    async fn payload(&self, key: &DeliveryKey) -> Result<StoredPayload, StoreError>;

    /// Queue a delivery's finished jobs (or one job) again, due at `now`;
    /// returns the job ids queued.
    async fn replay(
        &self,
        key: &DeliveryKey,
        job: Option<&str>,
        now: SystemTime,
    ) -> Result<Vec<String>, StoreError>;

    /// Add jobs to a stored delivery (`replay --reevaluate`), due at `now`,
    /// and replace its summary.
    async fn add_jobs(
        &self,
        key: &DeliveryKey,
        jobs: Vec<NewJob>,
        summary: Summary,
        now: SystemTime,
    ) -> Result<(), StoreError>;

    /// Delete finished deliveries received before `cutoff`, at most `batch` of them.
    async fn purge(&self, cutoff: SystemTime, batch: usize) -> Result<u64, StoreError>;

    async fn stats(&self) -> Result<QueueStats, StoreError>;

    /// What the other jobs of `target` than `job` did that a reconcile by
    /// heuristic must know: the pipelines they recorded at or after
    /// `since`, and those whose outcome is unknown. Run only to reconcile
    /// an ambiguous attempt, so it may scan.
    async fn neighbours(&self, target: &str, job: &str, since: SystemTime) -> Result<Neighbours, StoreError>;

    /// Can the store take a delivery now? Ready means a durable commit just
    /// succeeded (not merely that a connection answers): a full disk, a write
    /// lock held elsewhere, a read-only file or files deleted under the
    /// daemon all make it fail. Probes at most once per [`ready::TTL`]; the
    /// error is for the log, not for callers of `/readyz`.
    async fn ready(&self) -> Result<(), StoreError>;

    /// Lease jobs to this process's dispatcher as they are stored, in its
    /// free slots ([`handoff`]). The default does not.
    fn hand_off(&self, handoff: std::sync::Arc<handoff::Handoff>) {
        let _ = handoff;
    }

    /// True once [`Store::hand_off`] took a handoff: the store wakes that
    /// dispatcher itself for the jobs an ingest leaves due, so the caller of
    /// [`Store::ingest`] does not.
    fn wakes_on_ingest(&self) -> bool {
        false
    }

    /// Wake `wake` whenever another process queues jobs, until `shutdown`.
    /// Stores without such news do nothing; the dispatcher polls anyway.
    fn watch(
        &self,
        wake: std::sync::Arc<tokio::sync::Notify>,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let _ = (wake, shutdown);
    }
}
