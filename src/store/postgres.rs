//! The shared store: PostgreSQL, for running several replicas on one queue.
//!
//! Same tables and semantics as [`super::sqlite`]; what differs is how
//! replicas stay out of each other's way:
//! - deduplication is a unique key on (source, delivery): `INSERT ... ON
//!   CONFLICT DO NOTHING` waits for a concurrent insert of the same delivery
//!   to commit, then the loser reads the winner's summary;
//! - workers claim jobs with `FOR UPDATE SKIP LOCKED`, and a lease expiry lets
//!   another replica take over the jobs of one that died;
//! - every change that makes a job due sends `NOTIFY hookbridge_jobs`, which
//!   [`Store::watch`] turns into a wake-up of this replica's dispatcher;
//! - migrations run under `pg_advisory_lock`, the retention purge under
//!   `pg_try_advisory_xact_lock`, so replicas starting or purging at once are safe.
//!
//! While the server is unreachable every call fails fast with
//! [`StoreErrorKind::Unavailable`] (short acquire timeout); the pool reconnects on
//! its own when the server returns.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow, PgSslMode};
use sqlx::{Connection, Executor, PgConnection, Postgres, Row, Transaction};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::model::{self, JobUpdate, from_json, to_json};
use super::*;
use crate::config::{StoreSettings, redact_url};

/// The channel new and re-queued jobs are announced on.
const CHANNEL: &str = "hookbridge_jobs";
/// `pg_advisory_lock` keys (arbitrary, fixed): schema migrations, retention purge.
const MIGRATION_LOCK: i64 = 0x6862_6d69_6772_6174;
const PURGE_LOCK: i64 = 0x6862_7075_7267_6521;
/// How long a call waits for a connection before answering "unavailable".
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// Versioned schema; entry `i` moves the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE deliveries (
    id          TEXT PRIMARY KEY,
    source      TEXT NOT NULL,
    delivery    TEXT NOT NULL,
    received_at BIGINT NOT NULL,
    event_name  TEXT NOT NULL,
    kind        TEXT NOT NULL,
    repository  TEXT,
    git_ref     TEXT,
    status      TEXT NOT NULL,
    summary     TEXT NOT NULL,
    event       TEXT NOT NULL,
    headers     TEXT NOT NULL,
    payload     BYTEA NOT NULL,
    UNIQUE (source, delivery)
);
CREATE INDEX deliveries_delivery ON deliveries (delivery);
CREATE INDEX deliveries_status ON deliveries (status, received_at);
CREATE INDEX deliveries_received ON deliveries (received_at);
CREATE TABLE jobs (
    id              TEXT PRIMARY KEY,
    delivery_id     TEXT NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    rule            TEXT NOT NULL,
    target          TEXT NOT NULL,
    request         TEXT NOT NULL,
    state           TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    lease_owner     TEXT,
    lease_until     BIGINT,
    last_error      TEXT,
    result          TEXT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);
CREATE INDEX jobs_due ON jobs (state, next_attempt_at);
CREATE INDEX jobs_lease ON jobs (state, lease_until);
CREATE INDEX jobs_delivery ON jobs (delivery_id);
CREATE INDEX jobs_rule ON jobs (rule);
CREATE TABLE attempts (
    job_id      TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    n           INTEGER NOT NULL,
    started_at  BIGINT NOT NULL,
    duration_ms BIGINT NOT NULL,
    status      INTEGER,
    outcome     TEXT NOT NULL,
    error       TEXT,
    response    TEXT,
    PRIMARY KEY (job_id, n)
);
"#,
    // Version 2: the row the readiness probe rewrites, so that "ready" means
    // a write just committed on the primary.
    r#"
CREATE TABLE hookbridge_probe (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    at BIGINT NOT NULL
);
"#,
];

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::unavailable(e)
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::corrupt(e)
}

/// Connection options from `[store]`: URL, password secret, TLS mode, statement timeout.
pub fn connect_options(settings: &StoreSettings) -> Result<PgConnectOptions, StoreError> {
    let crate::config::StoreUrl::Postgres(url) = &settings.url else {
        return Err(StoreError::invalid("not a PostgreSQL store url"));
    };
    let mut options = PgConnectOptions::from_str(url)
        .map_err(|e| StoreError::invalid(format!("invalid store url `{}`: {e}", redact_url(url))))?;
    if let Some(password) = &settings.password {
        options = options.password(password.expose());
    }
    // An explicit `sslmode` in the URL wins over `[store] tls`.
    if !url.contains("sslmode=") {
        let mode = PgSslMode::from_str(&settings.tls).map_err(|_| {
            StoreError::invalid(format!(
                "unknown `[store] tls` mode `{}`; expected disable, prefer, require, verify-ca or verify-full",
                settings.tls
            ))
        })?;
        options = options.ssl_mode(mode);
    }
    let timeout_ms = settings.statement_timeout.as_millis().max(1);
    Ok(options
        .application_name("hookbridge")
        .options([("statement_timeout", format!("{timeout_ms}"))]))
}

/// Bring the schema up to date, under an advisory lock so replicas starting
/// at once apply each migration exactly once. Returns the schema version.
pub async fn migrate(options: &PgConnectOptions) -> Result<usize, StoreError> {
    let mut conn = PgConnection::connect_with(options).await.map_err(unavailable)?;
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut conn)
        .await
        .map_err(unavailable)?;
    let result = apply_migrations(&mut conn).await;
    // Closing the session releases the lock too; unlock anyway to be tidy.
    let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut conn)
        .await;
    let _ = conn.close().await;
    result
}

async fn apply_migrations(conn: &mut PgConnection) -> Result<usize, StoreError> {
    conn.execute(
        "CREATE TABLE IF NOT EXISTS hookbridge_schema (
            version    INTEGER PRIMARY KEY,
            applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    )
    .await
    .map_err(unavailable)?;
    let version: i32 = sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM hookbridge_schema")
        .fetch_one(&mut *conn)
        .await
        .map_err(unavailable)?;
    let version = version.max(0) as usize;
    model::check_schema(version, MIGRATIONS.len())?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let mut tx = conn.begin().await.map_err(unavailable)?;
        tx.execute(*sql).await.map_err(unavailable)?;
        sqlx::query("INSERT INTO hookbridge_schema (version) VALUES ($1)")
            .bind((i + 1) as i32)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        info!(version = i + 1, "applied store schema migration");
    }
    Ok(MIGRATIONS.len())
}

/// The PostgreSQL store.
pub struct PostgresStore {
    pool: PgPool,
    readiness: super::ready::Readiness,
}

impl PostgresStore {
    /// Connect, migrate, and open a pool sized by `[store] pool_size`.
    pub async fn open(settings: &StoreSettings) -> Result<PostgresStore, StoreError> {
        let options = connect_options(settings)?;
        migrate(&options).await?;
        let pool = PgPoolOptions::new()
            .max_connections(settings.pool_size)
            .min_connections(0)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .idle_timeout(Duration::from_secs(300))
            .connect_lazy_with(options);
        Ok(PostgresStore {
            pool,
            readiness: super::ready::Readiness::new(),
        })
    }

    /// The pool, for tests and tools.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn begin(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        self.pool.begin().await.map_err(unavailable)
    }
}

type Tx = Transaction<'static, Postgres>;

async fn notify(tx: &mut Tx) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(CHANNEL)
        .execute(&mut **tx)
        .await
        .map_err(unavailable)?;
    Ok(())
}

async fn insert_job(tx: &mut Tx, delivery_id: &str, job: &NewJob, now: i64) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO jobs (id, delivery_id, rule, target, request, state, attempts, next_attempt_at, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, 'pending', 0, $6, $6, $6)",
    )
    .bind(&job.id)
    .bind(delivery_id)
    .bind(&job.rule)
    .bind(&job.target)
    .bind(to_json(&job.request)?)
    .bind(now)
    .execute(&mut **tx)
    .await
    .map_err(unavailable)?;
    Ok(())
}

/// Recompute a delivery's status from its jobs.
async fn refresh_status(tx: &mut Tx, delivery_id: &str) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE deliveries SET status = CASE
            WHEN EXISTS (SELECT 1 FROM jobs WHERE delivery_id = $1 AND state IN ('pending', 'running')) THEN 'pending'
            WHEN EXISTS (SELECT 1 FROM jobs WHERE delivery_id = $1 AND state = 'dead') THEN 'dead'
            WHEN EXISTS (SELECT 1 FROM jobs WHERE delivery_id = $1 AND state = 'done') THEN 'done'
            ELSE 'skipped' END
         WHERE id = $1",
    )
    .bind(delivery_id)
    .execute(&mut **tx)
    .await
    .map_err(unavailable)?;
    Ok(())
}

/// The number of a job's next attempt row. Callers hold the job's row lock.
async fn next_attempt_number(tx: &mut Tx, job: &str) -> Result<i32, StoreError> {
    sqlx::query_scalar("SELECT COALESCE(MAX(n), 0) + 1 FROM attempts WHERE job_id = $1")
        .bind(job)
        .fetch_one(&mut **tx)
        .await
        .map_err(unavailable)
}

/// Record that an attempt was cut short (crash, shutdown past the grace period).
async fn interrupted(tx: &mut Tx, job: &str, now_ms: i64, why: &str) -> Result<(), StoreError> {
    let n = next_attempt_number(tx, job).await?;
    sqlx::query(
        "INSERT INTO attempts (job_id, n, started_at, duration_ms, status, outcome, error, response)
         VALUES ($1, $2, $3, 0, NULL, $5, $4, NULL)",
    )
    .bind(job)
    .bind(n)
    .bind(now_ms)
    .bind(why)
    .bind(model::INTERRUPTED)
    .execute(&mut **tx)
    .await
    .map_err(unavailable)?;
    Ok(())
}

async fn ingest(tx: &mut Tx, d: &NewDelivery) -> Result<Ingested, StoreError> {
    let received = millis(d.received_at);
    let status = if d.jobs.is_empty() { "skipped" } else { "pending" };
    // Waits for a concurrent insert of the same (source, delivery) to finish.
    let inserted: Option<String> = sqlx::query_scalar(
        "INSERT INTO deliveries (id, source, delivery, received_at, event_name, kind, repository, git_ref, status, summary, event, headers, payload)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
         ON CONFLICT (source, delivery) DO NOTHING
         RETURNING id",
    )
    .bind(&d.id)
    .bind(&d.source)
    .bind(&d.delivery)
    .bind(received)
    .bind(&d.event.name)
    .bind(&d.event.kind)
    .bind(&d.event.repository)
    .bind(&d.event.git_ref)
    .bind(status)
    .bind(to_json(&d.summary)?)
    .bind(to_json(&d.event)?)
    .bind(to_json(&d.headers)?)
    .bind(d.payload.as_ref())
    .fetch_optional(&mut **tx)
    .await
    .map_err(unavailable)?;
    if inserted.is_some() {
        for job in &d.jobs {
            insert_job(tx, &d.id, job, received).await?;
        }
        if !d.jobs.is_empty() {
            notify(tx).await?;
        }
        return Ok(Ingested::Stored);
    }
    let (id, summary): (String, String) =
        sqlx::query_as("SELECT id, summary FROM deliveries WHERE source = $1 AND delivery = $2")
            .bind(&d.source)
            .bind(&d.delivery)
            .fetch_one(&mut **tx)
            .await
            .map_err(unavailable)?;
    // The duplicate's arrival is the clock: its dead jobs are due at once.
    let now = millis(d.received_at);
    let requeued = sqlx::query(
        "UPDATE jobs SET state = 'pending', attempts = 0, next_attempt_at = $2, last_error = NULL, updated_at = $2
         WHERE delivery_id = $1 AND state = 'dead'",
    )
    .bind(&id)
    .bind(now)
    .execute(&mut **tx)
    .await
    .map_err(unavailable)?
    .rows_affected() as usize;
    if requeued > 0 {
        refresh_status(tx, &id).await?;
        notify(tx).await?;
    }
    Ok(Ingested::Duplicate {
        summary: from_json(&summary)?,
        requeued,
    })
}

async fn lease_due(
    tx: &mut Tx,
    owner: &str,
    limit: usize,
    lease: Duration,
    now: SystemTime,
) -> Result<Vec<LeasedJob>, StoreError> {
    let now_ms = millis(now);
    let expired: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM jobs WHERE state = 'running' AND lease_until < $1
         ORDER BY lease_until LIMIT $2 FOR UPDATE SKIP LOCKED",
    )
    .bind(now_ms)
    .bind(limit as i64)
    .fetch_all(&mut **tx)
    .await
    .map_err(unavailable)?;
    let due: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM jobs WHERE state = 'pending' AND next_attempt_at <= $1
         ORDER BY next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED",
    )
    .bind(now_ms)
    .bind(limit.saturating_sub(expired.len()) as i64)
    .fetch_all(&mut **tx)
    .await
    .map_err(unavailable)?;
    for id in &expired {
        interrupted(tx, id, now_ms, model::LEASE_EXPIRED).await?;
    }
    let ids: Vec<String> = expired.into_iter().chain(due).collect();
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows = sqlx::query(
        "UPDATE jobs j SET state = 'running', lease_owner = $2, lease_until = $3, attempts = j.attempts + 1, updated_at = $4
         FROM deliveries d
         WHERE j.id = ANY($1) AND d.id = j.delivery_id
         RETURNING j.id, j.delivery_id, d.delivery, d.source, j.rule, j.target, j.request, j.attempts, j.next_attempt_at",
    )
    .bind(&ids)
    .bind(owner)
    .bind(millis(now + lease))
    .bind(now_ms)
    .fetch_all(&mut **tx)
    .await
    .map_err(unavailable)?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let request: String = r.try_get(6).map_err(corrupt)?;
        let attempts: i32 = r.try_get(7).map_err(corrupt)?;
        out.push((
            r.try_get::<i64, _>(8).map_err(corrupt)?,
            LeasedJob {
                id: r.try_get(0).map_err(corrupt)?,
                delivery_id: r.try_get(1).map_err(corrupt)?,
                delivery: r.try_get(2).map_err(corrupt)?,
                source: r.try_get(3).map_err(corrupt)?,
                rule: r.try_get(4).map_err(corrupt)?,
                target: r.try_get(5).map_err(corrupt)?,
                request: from_json(&request)?,
                attempt: attempts.max(1) as u32,
            },
        ));
    }
    // Oldest due first, as SQLite hands them out.
    out.sort_by_key(|(due, _)| *due);
    Ok(out.into_iter().map(|(_, job)| job).collect())
}

async fn release_leases(tx: &mut Tx, owner: &str, now_ms: i64) -> Result<(), StoreError> {
    let ids: Vec<(String, String)> = sqlx::query_as(
        "SELECT id, delivery_id FROM jobs WHERE state = 'running' AND lease_owner = $1 FOR UPDATE",
    )
    .bind(owner)
    .fetch_all(&mut **tx)
    .await
    .map_err(unavailable)?;
    for (id, _) in &ids {
        interrupted(tx, id, now_ms, model::STOPPED).await?;
        sqlx::query(
            "UPDATE jobs SET state = 'pending', lease_owner = NULL, lease_until = NULL, next_attempt_at = $2, updated_at = $2
             WHERE id = $1",
        )
        .bind(id)
        .bind(now_ms)
        .execute(&mut **tx)
        .await
        .map_err(unavailable)?;
    }
    if !ids.is_empty() {
        notify(tx).await?;
    }
    Ok(())
}

async fn record(
    tx: &mut Tx,
    job: &LeasedJob,
    owner: &str,
    attempt: &Attempt,
    next: &Transition,
    now: SystemTime,
) -> Result<(), StoreError> {
    // The job's row lock orders this attempt against a lease takeover.
    let exists: Option<String> = sqlx::query_scalar("SELECT id FROM jobs WHERE id = $1 FOR UPDATE")
        .bind(&job.id)
        .fetch_optional(&mut **tx)
        .await
        .map_err(unavailable)?;
    if exists.is_none() {
        // Purged or gone: nothing left to record against.
        return Ok(());
    }
    let n = next_attempt_number(tx, &job.id).await?;
    let update = JobUpdate::after(next, attempt, now)?;
    sqlx::query(
        "INSERT INTO attempts (job_id, n, started_at, duration_ms, status, outcome, error, response)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&job.id)
    .bind(n)
    .bind(millis(attempt.started_at))
    .bind(attempt.duration.as_millis() as i64)
    .bind(attempt.status.map(i32::from))
    .bind(next.outcome())
    .bind(&update.error)
    .bind(&attempt.response)
    .execute(&mut **tx)
    .await
    .map_err(unavailable)?;
    let now_ms = millis(now);
    // Only the lease holder moves the job; a late worker's attempt is still recorded above.
    sqlx::query(
        "UPDATE jobs SET state = $3, next_attempt_at = $4, lease_owner = NULL, lease_until = NULL,
                last_error = $5, result = COALESCE($6, result), updated_at = $7
         WHERE id = $1 AND lease_owner = $2 AND state = 'running'",
    )
    .bind(&job.id)
    .bind(owner)
    .bind(update.state.as_str())
    .bind(update.next_attempt_at)
    .bind(&update.error)
    .bind(update.result)
    .bind(now_ms)
    .execute(&mut **tx)
    .await
    .map_err(unavailable)?;
    refresh_status(tx, &job.delivery_id).await
}

/// Resolve a [`DeliveryKey`] to an internal id.
async fn resolve(conn: &mut PgConnection, key: &DeliveryKey) -> Result<String, StoreError> {
    let by_internal: Option<String> = sqlx::query_scalar("SELECT id FROM deliveries WHERE id = $1")
        .bind(&key.id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(unavailable)?;
    if let Some(id) = by_internal {
        return Ok(id);
    }
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT id, source FROM deliveries WHERE delivery = $1 AND ($2::TEXT IS NULL OR source = $2) ORDER BY source",
    )
    .bind(&key.id)
    .bind(&key.source)
    .fetch_all(&mut *conn)
    .await
    .map_err(unavailable)?;
    match rows.as_slice() {
        [] => Err(StoreError::not_found(key.id.clone())),
        [(id, _)] => Ok(id.clone()),
        _ => Err(model::ambiguous(
            &key.id,
            rows.into_iter().map(|(_, s)| s).collect(),
        )),
    }
}

async fn replay(
    tx: &mut Tx,
    key: &DeliveryKey,
    job: Option<&str>,
    now: SystemTime,
) -> Result<Vec<String>, StoreError> {
    let id = resolve(tx, key).await?;
    let now_ms = millis(now);
    let ids: Vec<String> = sqlx::query_scalar(
        "UPDATE jobs SET state = 'pending', attempts = 0, next_attempt_at = $3, last_error = NULL, updated_at = $3
         WHERE delivery_id = $1 AND ($2::TEXT IS NULL OR id = $2) AND state != 'running'
         RETURNING id",
    )
    .bind(&id)
    .bind(job)
    .bind(now_ms)
    .fetch_all(&mut **tx)
    .await
    .map_err(unavailable)?;
    if let Some(j) = job
        && ids.is_empty()
    {
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM jobs WHERE id = $1 AND delivery_id = $2)")
                .bind(j)
                .bind(&id)
                .fetch_one(&mut **tx)
                .await
                .map_err(unavailable)?;
        if !exists {
            return Err(model::job_not_found(j, key));
        }
    }
    refresh_status(tx, &id).await?;
    if !ids.is_empty() {
        notify(tx).await?;
    }
    let mut ids = ids;
    ids.sort();
    Ok(ids)
}

const DELIVERY_COLUMNS: &str =
    "d.id, d.source, d.delivery, d.received_at, d.event_name, d.kind, d.repository, d.git_ref, d.status,
     (SELECT COUNT(*) FROM jobs j WHERE j.delivery_id = d.id)";

fn row_to_delivery(r: &PgRow) -> Result<DeliveryRow, StoreError> {
    let status: String = r.try_get(8).map_err(corrupt)?;
    Ok(DeliveryRow {
        id: r.try_get(0).map_err(corrupt)?,
        source: r.try_get(1).map_err(corrupt)?,
        delivery: r.try_get(2).map_err(corrupt)?,
        received_at: r.try_get(3).map_err(corrupt)?,
        event: r.try_get(4).map_err(corrupt)?,
        kind: r.try_get(5).map_err(corrupt)?,
        repository: r.try_get(6).map_err(corrupt)?,
        git_ref: r.try_get(7).map_err(corrupt)?,
        status: DeliveryStatus::parse(&status).unwrap_or(DeliveryStatus::Pending),
        jobs: r.try_get::<i64, _>(9).map_err(corrupt)? as u32,
    })
}

async fn list(pool: &PgPool, f: &DeliveryFilter) -> Result<Vec<DeliveryRow>, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT {DELIVERY_COLUMNS} FROM deliveries d
         WHERE ($1::TEXT IS NULL OR d.status = $1)
           AND ($2::TEXT IS NULL OR d.source = $2)
           AND ($3::TEXT IS NULL OR EXISTS (SELECT 1 FROM jobs j WHERE j.delivery_id = d.id AND j.rule = $3))
           AND ($4::BIGINT IS NULL OR d.received_at >= $4)
           AND ($5::TEXT IS NULL OR d.id < $5)
         ORDER BY d.id DESC LIMIT $6"
    ))
    .bind(f.status.map(DeliveryStatus::as_str))
    .bind(&f.source)
    .bind(&f.rule)
    .bind(f.since.map(millis))
    .bind(&f.before)
    .bind(f.limit.max(1) as i64)
    .fetch_all(pool)
    .await
    .map_err(unavailable)?;
    rows.iter().map(row_to_delivery).collect()
}

async fn get(pool: &PgPool, key: &DeliveryKey) -> Result<DeliveryDetail, StoreError> {
    let mut conn = pool.acquire().await.map_err(unavailable)?;
    let id = resolve(&mut conn, key).await?;
    drop(conn);
    let r = sqlx::query(&format!(
        "SELECT {DELIVERY_COLUMNS}, d.summary, d.event FROM deliveries d WHERE d.id = $1"
    ))
    .bind(&id)
    .fetch_one(pool)
    .await
    .map_err(unavailable)?;
    let row = row_to_delivery(&r)?;
    let summary: String = r.try_get(10).map_err(corrupt)?;
    let event: String = r.try_get(11).map_err(corrupt)?;
    let job_rows = sqlx::query(
        "SELECT id, rule, target, state, attempts, next_attempt_at, last_error, result, request
         FROM jobs WHERE delivery_id = $1 ORDER BY id",
    )
    .bind(&id)
    .fetch_all(pool)
    .await
    .map_err(unavailable)?;
    let mut jobs = Vec::with_capacity(job_rows.len());
    for j in job_rows {
        let job_id: String = j.try_get(0).map_err(corrupt)?;
        let history = sqlx::query(
            "SELECT n, started_at, duration_ms, status, outcome, error, response
             FROM attempts WHERE job_id = $1 ORDER BY n",
        )
        .bind(&job_id)
        .fetch_all(pool)
        .await
        .map_err(unavailable)?
        .iter()
        .map(|a| {
            Ok(AttemptRow {
                n: a.try_get::<i32, _>(0).map_err(corrupt)? as u32,
                started_at: a.try_get(1).map_err(corrupt)?,
                duration_ms: a.try_get(2).map_err(corrupt)?,
                status: a.try_get::<Option<i32>, _>(3).map_err(corrupt)?.map(|s| s as u16),
                outcome: a.try_get(4).map_err(corrupt)?,
                error: a.try_get(5).map_err(corrupt)?,
                response: a.try_get(6).map_err(corrupt)?,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
        let state: String = j.try_get(3).map_err(corrupt)?;
        let next: i64 = j.try_get(5).map_err(corrupt)?;
        let result: Option<String> = j.try_get(7).map_err(corrupt)?;
        let request: String = j.try_get(8).map_err(corrupt)?;
        let state: JobState = state.parse()?;
        let waiting = state == JobState::Pending;
        jobs.push(JobDetail {
            id: job_id,
            rule: j.try_get(1).map_err(corrupt)?,
            target: j.try_get(2).map_err(corrupt)?,
            state,
            attempts: j.try_get::<i32, _>(4).map_err(corrupt)? as u32,
            next_attempt_at: waiting.then_some(next),
            last_error: j.try_get(6).map_err(corrupt)?,
            result: result.as_deref().map(from_json).transpose()?,
            request: from_json(&request)?,
            history,
        });
    }
    Ok(DeliveryDetail {
        row,
        summary: from_json(&summary)?,
        normalized: from_json(&event)?,
        jobs,
    })
}

/// Wake `wake` on every `NOTIFY hookbridge_jobs`, reconnecting until `shutdown`.
async fn listen(pool: PgPool, wake: Arc<Notify>, shutdown: CancellationToken) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let connected = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let mut listener = tokio::select! {
            r = connected => match r {
                Ok(l) => l,
                Err(e) => {
                    debug!(error = %e, "cannot listen for new jobs; polling meanwhile");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        backoff = Duration::from_millis(200);
        debug!(channel = CHANNEL, "listening for new jobs");
        // Jobs announced while we were not listening.
        wake.notify_one();
        loop {
            tokio::select! {
                r = listener.try_recv() => match r {
                    Ok(Some(_)) => wake.notify_one(),
                    Ok(None) => {
                        warn!("lost the notification connection; reconnecting");
                        break;
                    }
                    Err(e) => {
                        warn!(error = %e, "notification connection failed; reconnecting");
                        break;
                    }
                },
                _ = shutdown.cancelled() => return,
            }
        }
    }
}

#[async_trait::async_trait]
impl Store for PostgresStore {
    async fn ingest(&self, delivery: NewDelivery) -> Result<Ingested, StoreError> {
        let mut tx = self.begin().await?;
        let ingested = ingest(&mut tx, &delivery).await?;
        tx.commit().await.map_err(unavailable)?;
        Ok(ingested)
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
        let mut tx = self.begin().await?;
        let jobs = lease_due(&mut tx, owner, limit, lease, now).await?;
        tx.commit().await.map_err(unavailable)?;
        Ok(jobs)
    }

    async fn record_attempt(
        &self,
        job: &LeasedJob,
        owner: &str,
        attempt: Attempt,
        next: Transition,
        now: SystemTime,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        record(&mut tx, job, owner, &attempt, &next, now).await?;
        tx.commit().await.map_err(unavailable)
    }

    async fn release(&self, owner: &str, now: SystemTime) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        release_leases(&mut tx, owner, millis(now)).await?;
        tx.commit().await.map_err(unavailable)
    }

    async fn next_due(&self) -> Result<Option<SystemTime>, StoreError> {
        let next: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(t) FROM (
                SELECT MIN(next_attempt_at) AS t FROM jobs WHERE state = 'pending'
                UNION ALL SELECT MIN(lease_until) FROM jobs WHERE state = 'running') AS due",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(next.map(from_millis))
    }

    async fn list(&self, filter: &DeliveryFilter) -> Result<Vec<DeliveryRow>, StoreError> {
        list(&self.pool, filter).await
    }

    async fn get(&self, key: &DeliveryKey) -> Result<DeliveryDetail, StoreError> {
        get(&self.pool, key).await
    }

    async fn payload(&self, key: &DeliveryKey) -> Result<StoredPayload, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(unavailable)?;
        let id = resolve(&mut conn, key).await?;
        drop(conn);
        let (event, headers, payload): (String, String, Vec<u8>) =
            sqlx::query_as("SELECT event, headers, payload FROM deliveries WHERE id = $1")
                .bind(&id)
                .fetch_one(&self.pool)
                .await
                .map_err(unavailable)?;
        Ok(StoredPayload {
            event: from_json(&event)?,
            headers: from_json::<BTreeMap<String, String>>(&headers)?,
            payload,
        })
    }

    async fn replay(
        &self,
        key: &DeliveryKey,
        job: Option<&str>,
        now: SystemTime,
    ) -> Result<Vec<String>, StoreError> {
        let mut tx = self.begin().await?;
        let ids = replay(&mut tx, key, job, now).await?;
        tx.commit().await.map_err(unavailable)?;
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
        let id = resolve(&mut tx, key).await?;
        let now = millis(now);
        for job in &jobs {
            insert_job(&mut tx, &id, job, now).await?;
        }
        sqlx::query("UPDATE deliveries SET summary = $2 WHERE id = $1")
            .bind(&id)
            .bind(to_json(&summary)?)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        refresh_status(&mut tx, &id).await?;
        if !jobs.is_empty() {
            notify(&mut tx).await?;
        }
        tx.commit().await.map_err(unavailable)
    }

    /// One batch, by one replica at a time: a replica that finds the purge
    /// lock taken deletes nothing this round.
    async fn purge(&self, cutoff: SystemTime, batch: usize) -> Result<u64, StoreError> {
        let mut tx = self.begin().await?;
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(PURGE_LOCK)
            .fetch_one(&mut *tx)
            .await
            .map_err(unavailable)?;
        if !locked {
            return Ok(0);
        }
        let n = sqlx::query(
            "DELETE FROM deliveries WHERE id IN (
                SELECT id FROM deliveries WHERE status IN ('done', 'dead', 'skipped') AND received_at < $1
                LIMIT $2 FOR UPDATE SKIP LOCKED)",
        )
        .bind(millis(cutoff))
        .bind(batch as i64)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?
        .rows_affected();
        tx.commit().await.map_err(unavailable)?;
        Ok(n)
    }

    async fn stats(&self) -> Result<QueueStats, StoreError> {
        let mut stats = QueueStats::default();
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT state, COUNT(*) FROM jobs WHERE state IN ('pending', 'running', 'dead') GROUP BY state",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        for (state, n) in rows {
            match state.as_str() {
                "pending" => stats.pending = n as u64,
                "running" => stats.running = n as u64,
                _ => stats.dead = n as u64,
            }
        }
        let oldest: Option<i64> =
            sqlx::query_scalar("SELECT MIN(created_at) FROM jobs WHERE state IN ('pending', 'running')")
                .fetch_one(&self.pool)
                .await
                .map_err(unavailable)?;
        stats.oldest_pending = oldest.map(from_millis);
        Ok(stats)
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
                .map_err(unavailable)?;
                Ok(())
            })
            .await
    }

    fn watch(&self, wake: Arc<Notify>, shutdown: CancellationToken) {
        tokio::spawn(listen(self.pool.clone(), wake, shutdown));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Secret, StoreUrl};

    fn settings(url: &str, tls: &str) -> StoreSettings {
        StoreSettings {
            url: StoreUrl::Postgres(url.into()),
            retention: Duration::from_secs(60),
            password: Some(Secret::new("hunter2")),
            pool_size: 4,
            statement_timeout: Duration::from_secs(5),
            tls: tls.into(),
        }
    }

    #[test]
    fn options_take_the_password_secret_and_tls_mode() {
        let o = connect_options(&settings("postgres://app@db:5433/hb", "require")).unwrap();
        assert_eq!(o.get_host(), "db");
        assert_eq!(o.get_port(), 5433);
        assert_eq!(o.get_database(), Some("hb"));
        assert!(matches!(o.get_ssl_mode(), PgSslMode::Require));
        // An explicit sslmode in the URL wins.
        let o = connect_options(&settings("postgres://app@db/hb?sslmode=disable", "require")).unwrap();
        assert!(matches!(o.get_ssl_mode(), PgSslMode::Disable));
    }

    #[test]
    fn errors_never_show_the_password() {
        let e = connect_options(&settings("postgres://app:s3cret@db:notaport/hb", "prefer"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("invalid store url"), "{e}");
        assert!(!e.contains("s3cret") && !e.contains("hunter2"), "{e}");
        let e = connect_options(&settings("postgres://app@db/hb", "sometimes"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("`sometimes`") && !e.contains("hunter2"), "{e}");
    }
}
