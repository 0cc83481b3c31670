//! The cancels of older pipelines (`cancel_in_progress`) on PostgreSQL, as
//! on SQLite (`sqlite::cancels`): leased with `SKIP LOCKED`, each attempt
//! an attempt row of the cancelled job, numbered under its row lock.

use std::time::{Duration, SystemTime};

use sqlx::Row;
use sqlx::postgres::PgPool;

use super::db;
use super::queue::{Tx, next_attempt_number};
use super::status::lock_job;
use crate::store::concurrency::{CancelOutcome, LeasedCancel};
use crate::store::model::from_json;
use crate::store::{Attempt, StoreError, millis};

pub(super) async fn lease(
    pool: &PgPool,
    owner: &str,
    limit: usize,
    lease: Duration,
    now: SystemTime,
) -> Result<Vec<LeasedCancel>, StoreError> {
    let now_ms = millis(now);
    let rows = sqlx::query(
        "WITH picked AS (
            SELECT job_id FROM cancels
            WHERE (state = 'pending' AND next_attempt_at <= $1) OR (state = 'running' AND lease_until < $1)
            ORDER BY next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED)
         UPDATE cancels c SET state = 'running', lease_owner = $3, lease_until = $4, attempts = c.attempts + 1,
                updated_at = $1
         FROM picked, jobs j
         WHERE c.job_id = picked.job_id AND j.id = c.job_id
         RETURNING c.job_id, j.delivery_id, c.by_job, j.rule, j.target, j.request, c.pipeline, c.attempts",
    )
    .bind(now_ms)
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .bind(owner)
    .bind(millis(now + lease))
    .fetch_all(pool)
    .await
    .map_err(db)?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let request: String = r.try_get(5).map_err(db)?;
        let result: String = r.try_get(6).map_err(db)?;
        let attempts: i32 = r.try_get(7).map_err(db)?;
        out.push(LeasedCancel {
            job: r.try_get(0).map_err(db)?,
            delivery_id: r.try_get(1).map_err(db)?,
            by_job: r.try_get(2).map_err(db)?,
            rule: r.try_get(3).map_err(db)?,
            target: r.try_get(4).map_err(db)?,
            request: from_json(&request)?,
            pipeline: from_json(&result)?,
            attempt: u32::try_from(attempts.max(1)).unwrap_or(u32::MAX),
        });
    }
    Ok(out)
}

pub(super) async fn record(
    pool: &PgPool,
    cancel: &LeasedCancel,
    owner: &str,
    attempt: &Attempt,
    outcome: &CancelOutcome,
    now: SystemTime,
) -> Result<(), StoreError> {
    let mut tx: Tx = pool.begin().await.map_err(db)?;
    if !lock_job(&mut tx, &cancel.job).await? {
        return Ok(());
    }
    let now_ms = millis(now);
    let (state, due, text) = outcome.state(now_ms);
    let error = match outcome {
        CancelOutcome::Retry { .. } | CancelOutcome::Failed(_) => Some(text),
        _ => None,
    };
    let n = next_attempt_number(&mut tx, &cancel.job).await?;
    sqlx::query(
        "INSERT INTO attempts (job_id, n, started_at, duration_ms, status, outcome, error, response)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&cancel.job)
    .bind(n)
    .bind(millis(attempt.started_at))
    .bind(i64::try_from(attempt.duration.as_millis()).unwrap_or(i64::MAX))
    .bind(attempt.status.map(i32::from))
    .bind(outcome.outcome())
    .bind(error.map(super::bulk::text))
    .bind(attempt.response.as_deref().map(super::bulk::text))
    .execute(&mut *tx)
    .await
    .map_err(db)?;
    sqlx::query(
        "UPDATE cancels SET state = $3, next_attempt_at = $4, outcome = $5, lease_owner = NULL, lease_until = NULL,
                updated_at = $6
         WHERE job_id = $1 AND lease_owner = $2 AND state = 'running' AND attempts = $7",
    )
    .bind(&cancel.job)
    .bind(owner)
    .bind(state.as_str())
    .bind(due)
    .bind(super::bulk::text(text))
    .bind(now_ms)
    .bind(i32::try_from(cancel.attempt).unwrap_or(i32::MAX))
    .execute(&mut *tx)
    .await
    .map_err(db)?;
    tx.commit().await.map_err(db)
}
