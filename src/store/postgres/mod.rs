//! The shared store: PostgreSQL, for running several replicas on one queue.
//!
//! The semantics of [`super::sqlite`], and its tables, columns and indexes
//! from schema version 3 on (SQLite's version 2: write-once payload columns
//! in their own `payloads` table); the differences left are written down in
//! `schema`. What differs is how replicas stay out of each other's way:
//! - deduplication is a unique key on (delivery, source): `INSERT ... ON
//!   CONFLICT DO NOTHING` waits for a concurrent insert of the same delivery
//!   to commit, then the loser reads the winner's summary;
//! - workers claim jobs with `FOR UPDATE SKIP LOCKED`, and a lease expiry lets
//!   another replica take over the jobs of one that died;
//! - every change that makes a job due sends `NOTIFY hookbridge_jobs`, which
//!   [`Store::watch`] turns into a wake-up of this replica's dispatcher;
//!   except new deliveries' jobs at a replica that runs a dispatcher: it
//!   takes them itself, and the others find what it leaves due by polling;
//! - concurrent ingests on one replica share a transaction and its commit,
//!   as do concurrent attempt records (group commit: `batch`, `write`): an
//!   ingest batch is one statement (`UNNEST` per table in data-modifying
//!   CTEs), a record batch three, with one `NOTIFY` per batch (`bulk`,
//!   `record`);
//! - concurrency groups: an ingest batch with grouped jobs takes its
//!   groups' advisory locks in one transaction, so replicas agree on which
//!   job is newest (`groups`);
//! - no foreign keys (schema 5): rows are consistent by construction, and
//!   the purge deletes what hangs on a delivery itself (`admin`);
//! - migrations run under `pg_advisory_lock`, the retention purge under
//!   `pg_try_advisory_xact_lock`, so replicas starting or purging at once are safe.
//!
//! While the server is unreachable every call fails fast with
//! [`StoreErrorKind::Unavailable`] (short acquire timeout); the pool reconnects on
//! its own when the server returns.
//!
//! Files: `schema` (migrations), `batch` (the group-commit queue), `write`
//! (ingests and records through it), `bulk` and `record` (their multi-row
//! statements), `groups` (superseding, and the start of a grouped attempt),
//! `cancels`, `follow_ups` and `deferrals` (their queues), `statuses` (commit statuses
//! queued by the writes, completion events, watches' reads) and
//! `status_queue` (their posts' and watches' queues: [`StatusQueue`](crate::store::status::StatusQueue)),
//! `queue` (lease, release, and what the writes share), `admin` (replay,
//! added jobs, purge), `history` (reads), `listen` (notifications),
//! `connect` (options from `[store]`), `error` (sqlx errors classified into
//! kinds); this file holds the pool and the [`Store`] impl.

mod admin;
mod batch;
mod bulk;
mod cancels;
mod completions;
mod connect;
mod deferrals;
mod error;
mod follow_ups;
mod groups;
mod history;
mod listen;
mod queue;
mod record;
mod schema;
mod status;
mod status_queue;
mod statuses;
mod write;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Postgres, Transaction};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::concurrency::{CancelOutcome, LeasedCancel};
use super::follow::{FollowOutcome, LeasedFollowUp};
use super::*;
use crate::config::StoreSettings;
use crate::store::handoff::Handoff;
pub use connect::connect_options;
pub use schema::{migrate, schema_version};

/// The channel new and re-queued jobs are announced on.
const CHANNEL: &str = "hookbridge_jobs";
/// How long a call waits for a connection before answering "unavailable".
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

use super::model::{from_json, to_json};
use error::db;

/// The PostgreSQL store.
pub struct PostgresStore {
    pool: PgPool,
    writers: write::Writers,
    /// Set by [`Store::watch`]: this process runs a dispatcher.
    dispatching: Arc<AtomicBool>,
    /// Set by [`Store::hand_off`]: that dispatcher takes jobs as they are stored.
    handoff: Arc<OnceLock<Arc<Handoff>>>,
    /// How to connect: `watch` listens on a connection of its own.
    options: sqlx::postgres::PgConnectOptions,
    readiness: super::ready::Readiness,
}

impl PostgresStore {
    /// Connect, migrate, and open a pool sized by `[store] pool_size`.
    pub async fn open(settings: &StoreSettings) -> Result<PostgresStore, StoreError> {
        let options = connect_options(settings)?;
        migrate(&options).await?;
        let own = write::statement_connections(settings.pool_size);
        let pool = connect_pool(&options, settings.pool_size - own, None);
        // The ingest statement's own connections keep one plan of it (`write`).
        let statement = match own {
            0 => pool.clone(),
            n => connect_pool(&options, n, Some(write::STATEMENT_SESSION)),
        };
        let dispatching = Arc::new(AtomicBool::new(false));
        let handoff = Arc::new(OnceLock::new());
        Ok(PostgresStore {
            writers: write::Writers::start(
                &pool,
                &statement,
                settings.pool_size,
                dispatching.clone(),
                handoff.clone(),
            ),
            dispatching,
            handoff,
            options,
            pool,
            readiness: super::ready::Readiness::new(),
        })
    }

    /// The pool, for tests and tools.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn begin(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        self.pool.begin().await.map_err(db)
    }
}

#[async_trait::async_trait]
impl Store for PostgresStore {
    async fn ingest(&self, delivery: NewDelivery) -> Result<Ingested, StoreError> {
        self.writers.ingest.submit(delivery).await
    }

    async fn lease_due(
        &self,
        owner: &str,
        limit: usize,
        lease: Duration,
        now: SystemTime,
    ) -> Result<Vec<LeasedJob>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        queue::lease_due(&self.pool, owner, limit, lease, now).await
    }

    async fn start_attempt(
        &self,
        job: &LeasedJob,
        owner: &str,
        now: SystemTime,
    ) -> Result<Start, StoreError> {
        let lease = i32::try_from(job.attempt).unwrap_or(i32::MAX);
        groups::start(&self.pool, &job.id, (owner, lease), now).await
    }

    async fn record_attempt(
        &self,
        job: &LeasedJob,
        owner: &str,
        attempt: Attempt,
        next: Transition,
        now: SystemTime,
    ) -> Result<(), StoreError> {
        let record = record::Record {
            job: job.id.clone(),
            delivery_id: job.delivery_id.clone(),
            owner: owner.to_owned(),
            lease: i32::try_from(job.attempt).unwrap_or(i32::MAX),
            attempt,
            next,
            now,
            grouped: job.grouped,
        };
        self.writers.record.submit(record).await
    }

    async fn lease_follow_ups(
        &self,
        owner: &str,
        limit: usize,
        lease: Duration,
        now: SystemTime,
    ) -> Result<Vec<LeasedFollowUp>, StoreError> {
        follow_ups::lease(&self.pool, owner, limit, lease, now).await
    }

    async fn record_follow_up(
        &self,
        follow_up: &LeasedFollowUp,
        owner: &str,
        outcome: FollowOutcome,
        now: SystemTime,
    ) -> Result<(), StoreError> {
        follow_ups::record(&self.pool, follow_up, owner, &outcome, now).await
    }

    async fn lease_cancels(
        &self,
        owner: &str,
        limit: usize,
        lease: Duration,
        now: SystemTime,
    ) -> Result<Vec<LeasedCancel>, StoreError> {
        cancels::lease(&self.pool, owner, limit, lease, now).await
    }

    async fn record_cancel(
        &self,
        cancel: &LeasedCancel,
        owner: &str,
        attempt: Attempt,
        outcome: CancelOutcome,
        now: SystemTime,
    ) -> Result<(), StoreError> {
        cancels::record(&self.pool, cancel, owner, &attempt, &outcome, now).await
    }

    async fn release(&self, owner: &str, now: SystemTime) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        // Deferrals first: a settle in progress holds its delivery's lock
        // and may lock jobs, so this waits for it before locking any job.
        deferrals::release(&mut tx, owner, millis(now)).await?;
        queue::release_leases(&mut tx, owner, millis(now)).await?;
        tx.commit().await.map_err(db)
    }

    async fn next_due(&self) -> Result<Option<SystemTime>, StoreError> {
        let (pending, expiry) = queue::next_due(&self.pool).await?;
        Ok(pending.into_iter().chain(expiry).min().map(from_millis))
    }

    async fn list(&self, filter: &DeliveryFilter) -> Result<Vec<DeliveryRow>, StoreError> {
        history::list(&self.pool, filter).await
    }

    async fn verdicts(&self, since: SystemTime, cap: usize) -> Result<RecentVerdicts, StoreError> {
        history::verdicts(&self.pool, millis(since), cap).await
    }

    async fn get(&self, key: &DeliveryKey) -> Result<DeliveryDetail, StoreError> {
        history::get(&self.pool, key).await
    }

    async fn payload(&self, key: &DeliveryKey) -> Result<StoredPayload, StoreError> {
        history::payload(&self.pool, key).await
    }

    async fn replay(
        &self,
        key: &DeliveryKey,
        job: Option<&str>,
        now: SystemTime,
    ) -> Result<Vec<String>, StoreError> {
        let mut tx = self.begin().await?;
        let ids = admin::replay(&mut tx, key, job, now).await?;
        tx.commit().await.map_err(db)?;
        Ok(ids)
    }

    async fn add_jobs(
        &self,
        key: &DeliveryKey,
        jobs: Vec<NewJob>,
        summary: Summary,
        now: SystemTime,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        admin::add_jobs(&mut tx, key, &jobs, &summary, now).await?;
        tx.commit().await.map_err(db)
    }

    /// One batch, by one replica at a time: a replica that finds the purge
    /// lock taken deletes nothing this round. Payloads, jobs, attempts,
    /// cancels and follow-ups go with their delivery, deleted by the purge itself (no foreign keys:
    /// `schema`).
    async fn purge(&self, cutoff: SystemTime, batch: usize) -> Result<u64, StoreError> {
        let mut tx = self.begin().await?;
        let n = admin::purge(&mut tx, cutoff, batch).await?;
        tx.commit().await.map_err(db)?;
        Ok(n)
    }

    async fn stats(&self) -> Result<QueueStats, StoreError> {
        history::stats(&self.pool).await
    }

    async fn neighbours(&self, target: &str, job: &str, since: SystemTime) -> Result<Neighbours, StoreError> {
        history::neighbours(&self.pool, target, job, since).await
    }

    /// A committed write, not a `SELECT 1`: a read-only server (a standby,
    /// `default_transaction_read_only`), a role without write rights or a
    /// server that cannot flush its WAL answers reads but takes no
    /// delivery. Bounded by the pool's acquire timeout and the statement
    /// timeout; replicas probing at once take turns on the one row.
    async fn ready(&self) -> Result<(), StoreError> {
        self.readiness
            .check(|| async {
                sqlx::query(
                    "INSERT INTO hookbridge_probe (id, at) VALUES (1, $1)
                     ON CONFLICT (id) DO UPDATE SET at = EXCLUDED.at",
                )
                .bind(millis(SystemTime::now()))
                .execute(&self.pool)
                .await
                .map_err(db)?;
                Ok(())
            })
            .await
    }

    /// The first dispatcher registered keeps it: a process runs one.
    fn hand_off(&self, handoff: Arc<Handoff>) {
        let _ = self.handoff.set(handoff);
    }

    fn wakes_on_ingest(&self) -> bool {
        self.handoff.get().is_some()
    }

    fn watch(&self, wake: Arc<Notify>, shutdown: CancellationToken) {
        self.dispatching.store(true, Ordering::Relaxed);
        // Its own connection, outside the pool: `LISTEN` holds it for good,
        // and a pool of one would otherwise have none left for the writes.
        let own = connect_pool(&self.options, 1, None);
        tokio::spawn(listen::listen(own, wake, shutdown));
    }
}

/// A lazily connecting pool of `size` connections; each new session gets
/// LZ4 compression (below), then runs `session` when given.
fn connect_pool(
    options: &sqlx::postgres::PgConnectOptions,
    size: u32,
    session: Option<&'static str>,
) -> PgPool {
    PgPoolOptions::new()
        .max_connections(size)
        .min_connections(0)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .idle_timeout(Duration::from_secs(300))
        .after_connect(move |conn, _| {
            Box::pin(async move {
                fast_compression(conn).await?;
                if let Some(sql) = session {
                    sqlx::query(sql).execute(&mut *conn).await?;
                }
                Ok(())
            })
        })
        .connect_lazy_with(options.clone())
}

/// Compress payloads with LZ4 instead of PostgreSQL's own pglz (about five
/// times less CPU for a GitHub push: measured 15 µs against 68 µs for 9 KB).
/// A server built without LZ4 (or before PostgreSQL 14) keeps pglz: the
/// setting is a preference, never a reason to refuse a connection.
async fn fast_compression(conn: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
    if let Err(e) = sqlx::query("SET default_toast_compression = 'lz4'")
        .execute(&mut *conn)
        .await
    {
        tracing::debug!(error = %e, "the server keeps its default TOAST compression");
    }
    Ok(())
}
