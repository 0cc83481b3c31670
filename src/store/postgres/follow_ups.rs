//! Follow-ups of runs a CI only queued ([`crate::store::follow`]) on
//! PostgreSQL, as on SQLite (`sqlite::follow_ups`): leased with `SKIP
//! LOCKED`, so two replicas never read the same one at once. Writes that
//! touch a job and its follow-up lock the job's row first, as the attempt
//! records and replays do.

use std::time::{Duration, SystemTime};

use sqlx::Row;
use sqlx::postgres::PgPool;

use super::db;
use super::status::Tx;
use super::status::lock_job;
use crate::store::follow::{FollowOutcome, LeasedFollowUp};
use crate::store::model::{from_json, to_json};
use crate::store::{StoreError, from_millis, millis};

pub(super) async fn lease(
    pool: &PgPool,
    owner: &str,
    limit: usize,
    lease: Duration,
    now: SystemTime,
) -> Result<Vec<LeasedFollowUp>, StoreError> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let now_ms = millis(now);
    let rows = sqlx::query(
        "WITH picked AS (
            SELECT job_id FROM follow_ups f
            WHERE ((state = 'pending' AND next_attempt_at <= $1) OR (state = 'running' AND lease_until < $1))
              AND EXISTS (SELECT 1 FROM jobs j WHERE j.id = f.job_id AND j.state = 'done' AND j.result IS NOT NULL)
            ORDER BY next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED)
         UPDATE follow_ups f SET state = 'running', lease_owner = $3, lease_until = $4, polls = f.polls + 1,
                updated_at = $1
         FROM picked, jobs j
         WHERE f.job_id = picked.job_id AND j.id = f.job_id
         RETURNING f.job_id, j.delivery_id, j.rule, j.target, j.request, j.result, f.polls, f.created_at,
                   f.next_attempt_at",
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
        let request: String = r.try_get(4).map_err(db)?;
        let result: String = r.try_get(5).map_err(db)?;
        let polls: i32 = r.try_get(6).map_err(db)?;
        let due: i64 = r.try_get(8).map_err(db)?;
        let follow_up = LeasedFollowUp {
            job: r.try_get(0).map_err(db)?,
            delivery_id: r.try_get(1).map_err(db)?,
            rule: r.try_get(2).map_err(db)?,
            target: r.try_get(3).map_err(db)?,
            request: from_json(&request)?,
            result: from_json(&result)?,
            poll: u32::try_from(polls.max(1)).unwrap_or(u32::MAX),
            created_at: from_millis(r.try_get(7).map_err(db)?),
        };
        out.push((due, follow_up));
    }
    // The longest waiting first, as SQLite hands them out.
    out.sort_by_key(|(due, _)| *due);
    Ok(out.into_iter().map(|(_, f)| f).collect())
}

/// Record a read of `f`, if `owner` still holds this lease of it (the
/// poll number tells it from a later lease, the creation from a follow-up
/// stored anew after a replay): the job's result becomes the outcome's.
pub(super) async fn record(
    pool: &PgPool,
    f: &LeasedFollowUp,
    owner: &str,
    outcome: &FollowOutcome,
    now: SystemTime,
) -> Result<(), StoreError> {
    let mut tx: Tx = pool.begin().await.map_err(db)?;
    if !lock_job(&mut tx, &f.job).await? {
        return Ok(());
    }
    let now_ms = millis(now);
    let (state, due) = outcome.next(now_ms);
    let held = sqlx::query(
        "UPDATE follow_ups SET state = $4, next_attempt_at = $5, lease_owner = NULL, lease_until = NULL,
                updated_at = $6
         WHERE job_id = $1 AND state = 'running' AND lease_owner = $2 AND polls = $3 AND created_at = $7",
    )
    .bind(&f.job)
    .bind(owner)
    .bind(i32::try_from(f.poll).unwrap_or(i32::MAX))
    .bind(state)
    .bind(due)
    .bind(now_ms)
    .bind(millis(f.created_at))
    .execute(&mut *tx)
    .await
    .map_err(db)?;
    if held.rows_affected() == 0 {
        return Ok(());
    }
    let reporting: bool = sqlx::query_scalar(
        "UPDATE jobs SET result = $2, updated_at = $3 WHERE id = $1 RETURNING status IS NOT NULL",
    )
    .bind(&f.job)
    .bind(to_json(outcome.result())?)
    .bind(now_ms)
    .fetch_one(&mut *tx)
    .await
    .map_err(db)?;
    if reporting {
        // The run found: its pipeline on the commit, and watched.
        super::statuses::sync(&mut tx, &[(f.job.as_str(), now_ms)]).await?;
    }
    tx.commit().await.map_err(db)
}

/// After attempt records of runs the CI only queued (`job`, its result as
/// stored, when recorded; the caller holds the jobs' row locks): each job
/// done with that result (the record held its lease, or a superseded job
/// kept the run it created late) gets a follow-up due at once, or its
/// follow-up starts over.
pub(super) async fn created(tx: &mut Tx, queued: &[(&str, &str, i64)]) -> Result<(), StoreError> {
    let mut jobs = Vec::with_capacity(queued.len());
    let mut results = Vec::with_capacity(queued.len());
    let mut now = Vec::with_capacity(queued.len());
    for (job, result, at) in queued {
        jobs.push(*job);
        results.push(*result);
        now.push(*at);
    }
    sqlx::query(
        "INSERT INTO follow_ups (job_id, state, polls, next_attempt_at, created_at, updated_at)
         SELECT j.id, 'pending', 0, u.now, u.now, u.now
         FROM UNNEST($1::text[], $2::text[], $3::int8[]) AS u(job, result, now)
         JOIN jobs j ON j.id = u.job AND j.state = 'done' AND j.result = u.result
         ON CONFLICT (job_id) DO UPDATE SET state = 'pending', polls = 0, next_attempt_at = EXCLUDED.next_attempt_at,
                lease_owner = NULL, lease_until = NULL, created_at = EXCLUDED.created_at,
                updated_at = EXCLUDED.updated_at",
    )
    .bind(&jobs)
    .bind(&results)
    .bind(&now)
    .execute(&mut **tx)
    .await
    .map_err(db)?;
    Ok(())
}

/// Drop the follow-ups of `jobs` (queued again: each runs anew, or purged).
pub(super) async fn forget(tx: &mut Tx, jobs: &[String]) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM follow_ups WHERE job_id = ANY($1)")
        .bind(jobs)
        .execute(&mut **tx)
        .await
        .map_err(db)?;
    Ok(())
}

/// Give back the follow-ups `owner` leased, due at `now_ms`. A lease given
/// back still counts as a poll.
pub(super) async fn release(tx: &mut Tx, owner: &str, now_ms: i64) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE follow_ups SET state = 'pending', lease_owner = NULL, lease_until = NULL, next_attempt_at = $2,
                updated_at = $2
         WHERE state = 'running' AND lease_owner = $1",
    )
    .bind(owner)
    .bind(now_ms)
    .execute(&mut **tx)
    .await
    .map_err(db)?;
    Ok(())
}
