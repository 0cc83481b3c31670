//! The queue's writes, each inside the caller's transaction: leasing due
//! jobs, giving leases back, and the steps ingests and records (`bulk`) and
//! the admin writes share. Every change that makes a job due ends with a
//! `NOTIFY`.

use std::time::{Duration, SystemTime};

use sqlx::Row;
use sqlx::postgres::PgPool;

use super::{CHANNEL, db, from_json, to_json};
use crate::store::concurrency::Requeued;
use crate::store::model;
use crate::store::*;

pub(super) use super::status::{Tx, refresh_status};

/// Announce due jobs: inside a transaction, delivered at its commit.
pub(super) async fn notify<'e>(on: impl sqlx::PgExecutor<'e>) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(CHANNEL)
        .execute(on)
        .await
        .map_err(db)?;
    Ok(())
}

pub(super) async fn insert_job(
    tx: &mut Tx,
    delivery_id: &str,
    job: &NewJob,
    now: i64,
) -> Result<(), StoreError> {
    let due = now.saturating_add(i64::try_from(job.delay.as_millis()).unwrap_or(i64::MAX));
    sqlx::query(
        "INSERT INTO jobs (id, delivery_id, rule, target, request, state, attempts, next_attempt_at, created_at,
                           updated_at, concurrency_group, cancel_in_progress, status)
         VALUES ($1, $2, $3, $4, $5, 'pending', 0, $7, $6, $6, $8, $9, $10)",
    )
    .bind(&job.id)
    .bind(delivery_id)
    .bind(&job.rule)
    .bind(&job.target)
    .bind(to_json(&job.request)?)
    .bind(now)
    .bind(due)
    .bind(&job.group)
    .bind(job.cancel.then_some(1_i32))
    .bind(job.status.as_ref().map(to_json).transpose()?)
    .execute(&mut **tx)
    .await
    .map_err(db)?;
    Ok(())
}

/// The number of a job's next attempt row. Callers hold the job's row lock.
pub(super) async fn next_attempt_number(tx: &mut Tx, job: &str) -> Result<i32, StoreError> {
    sqlx::query_scalar("SELECT COALESCE(MAX(n), 0) + 1 FROM attempts WHERE job_id = $1")
        .bind(job)
        .fetch_one(&mut **tx)
        .await
        .map_err(db)
}

/// Record that an attempt was cut short (crash, shutdown past the grace period).
pub(super) async fn interrupted(tx: &mut Tx, job: &str, now_ms: i64, why: &str) -> Result<(), StoreError> {
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
    .map_err(db)?;
    sqlx::query(
        "UPDATE jobs SET ambiguous_since = COALESCE(LEAST(ambiguous_since, leased_at), created_at) WHERE id = $1",
    )
    .bind(job)
    .execute(&mut **tx)
    .await
    .map_err(db)?;
    Ok(())
}

/// `d` was stored before (by this call's transaction or another): the
/// original summary, and its dead jobs queued again. The caller sends the
/// `NOTIFY` when any were.
pub(super) async fn duplicate(tx: &mut Tx, d: &NewDelivery) -> Result<Ingested, StoreError> {
    let (id, summary): (String, String) = sqlx::query_as(
        "SELECT d.id, p.summary FROM deliveries d JOIN payloads p ON p.seq = d.seq
             WHERE d.source = $1 AND d.delivery = $2",
    )
    .bind(&d.source)
    .bind(&d.delivery)
    .fetch_one(&mut **tx)
    .await
    .map_err(db)?;
    // The duplicate's arrival is the clock: its dead jobs are due at once,
    // each the newest of its group (the groups' locks first).
    let now = millis(d.received_at);
    let groups: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT concurrency_group FROM jobs
         WHERE delivery_id = $1 AND state = 'dead' AND concurrency_group IS NOT NULL",
    )
    .bind(&id)
    .fetch_all(&mut **tx)
    .await
    .map_err(db)?;
    let groups: Vec<&str> = groups.iter().map(String::as_str).collect();
    super::groups::lock_groups(tx, &groups).await?;
    let rows: Vec<(String, Option<String>, Option<i32>, bool)> = sqlx::query_as(
        "UPDATE jobs SET state = 'pending', attempts = 0, ambiguous_since = NULL, next_attempt_at = $2, last_error = NULL, updated_at = $2
         WHERE delivery_id = $1 AND state = 'dead'
         RETURNING id, concurrency_group, cancel_in_progress, status IS NOT NULL",
    )
    .bind(&id)
    .bind(now)
    .fetch_all(&mut **tx)
    .await
    .map_err(db)?;
    let requeued = rows.len();
    if requeued > 0 {
        let ids: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
        super::follow_ups::forget(tx, &ids).await?;
    }
    let reporting: Vec<String> = rows.iter().filter(|r| r.3).map(|r| r.0.clone()).collect();
    let grouped: Vec<Requeued> = rows
        .into_iter()
        .filter_map(|(job, group, cancel, _)| Requeued::from_row(job, &id, group, cancel.is_some()))
        .collect();
    super::groups::requeued(tx, &grouped, now).await?;
    // Last, after what they superseded (as at ingest).
    let reporting: Vec<(&str, i64)> = reporting.iter().map(|j| (j.as_str(), now)).collect();
    super::statuses::sync(tx, &reporting).await?;
    if requeued > 0 {
        refresh_status(tx, &[id.as_str()]).await?;
    }
    Ok(Ingested::Duplicate {
        summary: from_json(&summary)?,
        requeued,
    })
}

/// Lease up to `limit` jobs in one statement (no transaction around it):
/// jobs whose lease expired first (each gets an "interrupted" attempt row),
/// then due jobs, oldest first; rows another replica is leasing right now
/// are skipped, not waited for.
pub(super) async fn lease_due(
    pool: &PgPool,
    owner: &str,
    limit: usize,
    lease: Duration,
    now: SystemTime,
) -> Result<Vec<LeasedJob>, StoreError> {
    let now_ms = millis(now);
    let rows = sqlx::query(
        "WITH expired AS (
            SELECT id FROM jobs WHERE state = 'running' AND lease_until < $1
            ORDER BY lease_until LIMIT $2 FOR UPDATE SKIP LOCKED),
         due AS (
            SELECT id FROM jobs WHERE state = 'pending' AND next_attempt_at <= $1
            ORDER BY next_attempt_at LIMIT GREATEST($2 - (SELECT count(*) FROM expired), 0)
            FOR UPDATE SKIP LOCKED),
         noted AS (
            INSERT INTO attempts (job_id, n, started_at, duration_ms, status, outcome, error, response)
            SELECT e.id, COALESCE((SELECT MAX(a.n) FROM attempts a WHERE a.job_id = e.id), 0) + 1,
                   $1, 0, NULL, $5, $6, NULL
            FROM expired e)
         UPDATE jobs j SET state = 'running', lease_owner = $3, lease_until = $4, attempts = j.attempts + 1,
                started_at = CASE WHEN j.state = 'pending' THEN NULL ELSE j.started_at END, updated_at = $1,
                ambiguous_since = CASE WHEN j.state = 'running'
                    THEN COALESCE(LEAST(j.ambiguous_since, j.leased_at), j.created_at) ELSE j.ambiguous_since END,
                leased_at = $1
         FROM (SELECT id FROM expired UNION ALL SELECT id FROM due) AS picked, deliveries d
         WHERE j.id = picked.id AND d.id = j.delivery_id
         RETURNING j.id, j.delivery_id, d.delivery, d.source, j.rule, j.target, j.request, j.attempts, j.next_attempt_at,
                   j.concurrency_group IS NOT NULL, j.trace_context, j.ambiguous_since, j.result",
    )
    .bind(now_ms)
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .bind(owner)
    .bind(millis(now + lease))
    .bind(model::INTERRUPTED)
    .bind(model::LEASE_EXPIRED)
    .fetch_all(pool)
    .await
    .map_err(db)?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let request: String = r.try_get(6).map_err(db)?;
        let attempts: i32 = r.try_get(7).map_err(db)?;
        out.push((
            r.try_get::<i64, _>(8).map_err(db)?,
            LeasedJob {
                id: r.try_get(0).map_err(db)?,
                delivery_id: r.try_get(1).map_err(db)?,
                delivery: r.try_get(2).map_err(db)?,
                source: r.try_get(3).map_err(db)?,
                rule: r.try_get(4).map_err(db)?,
                target: r.try_get(5).map_err(db)?,
                request: from_json(&request)?,
                attempt: attempts.max(1) as u32,
                grouped: r.try_get(9).map_err(db)?,
                trace: r.try_get(10).map_err(db)?,
                ambiguous_since: r.try_get::<Option<i64>, _>(11).map_err(db)?.map(from_millis),
                previous: model::pipeline_id(r.try_get::<Option<String>, _>(12).map_err(db)?.as_deref())?,
            },
        ));
    }
    // Oldest due first, as SQLite hands them out.
    out.sort_by_key(|(due, _)| *due);
    Ok(out.into_iter().map(|(_, job)| job).collect())
}

pub(super) async fn release_leases(tx: &mut Tx, owner: &str, now_ms: i64) -> Result<(), StoreError> {
    let ids: Vec<(String, String)> = sqlx::query_as(
        "SELECT id, delivery_id FROM jobs WHERE state = 'running' AND lease_owner = $1 FOR UPDATE",
    )
    .bind(owner)
    .fetch_all(&mut **tx)
    .await
    .map_err(db)?;
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
        .map_err(db)?;
    }
    super::follow_ups::release(tx, owner, now_ms).await?;
    super::statuses::release(tx, owner, now_ms).await?;
    if !ids.is_empty() {
        notify(&mut **tx).await?;
    }
    Ok(())
}

/// When the next pending job falls due, and when the next lease expires
/// (milliseconds).
pub(super) async fn next_due(pool: &PgPool) -> Result<(Option<i64>, Option<i64>), StoreError> {
    sqlx::query_as(
        "SELECT (SELECT MIN(next_attempt_at) FROM jobs WHERE state = 'pending'),
                (SELECT MIN(lease_until) FROM jobs WHERE state = 'running')",
    )
    .fetch_one(pool)
    .await
    .map_err(db)
}
