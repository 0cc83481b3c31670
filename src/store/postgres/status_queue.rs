//! [`StatusQueue`] on PostgreSQL: the queues of status posts and pipeline
//! watches, leased with `SKIP LOCKED` (so two replicas never take the same
//! one), as on SQLite (`sqlite::statuses`). A subject's statuses go out one
//! at a time, oldest first: the due query offers only the oldest unposted
//! one of each subject. A watch's read is recorded by `statuses`, which
//! queues what it learned.

use std::time::{Duration, SystemTime};

use sqlx::Row;
use sqlx::postgres::PgPool;

use super::status::text;
use super::{PostgresStore, db, statuses};
use crate::store::model::from_json;
use crate::store::status::sync;
use crate::store::status::{LeasedStatus, LeasedWatch, PostOutcome, StatusQueue, StatusState, WatchRecord};
use crate::store::{StoreError, from_millis, millis};

/// Statuses whose lease ran out, then those due, each the oldest unposted
/// of its subject (a subject with one out or waiting to be retried offers
/// none); rows another replica is leasing are skipped.
const LEASE_STATUSES: &str = "WITH expired AS (
        SELECT seq FROM statuses WHERE post = 'running' AND lease_until < $1
        ORDER BY seq LIMIT $2 FOR UPDATE SKIP LOCKED),
     due AS (
        SELECT seq FROM statuses s WHERE post = 'pending' AND next_attempt_at <= $1
          AND NOT EXISTS (SELECT 1 FROM statuses o WHERE o.subject = s.subject AND o.seq < s.seq
                          AND o.post IN ('pending', 'running'))
        ORDER BY seq LIMIT GREATEST($2 - (SELECT count(*) FROM expired), 0) FOR UPDATE SKIP LOCKED)
     UPDATE statuses s SET post = 'running', lease_owner = $3, lease_until = $4, attempts = s.attempts + 1,
            updated_at = $1
     FROM (SELECT seq FROM expired UNION ALL SELECT seq FROM due) AS picked, jobs j
     WHERE s.seq = picked.seq AND j.id = s.job_id
     RETURNING s.seq, s.job_id, j.delivery_id, j.status, s.context, s.state, s.description, s.target_url,
               s.attempts";

/// Watches whose lease ran out, then those due (a poll, a completion
/// event woke it, its deadline).
const LEASE_WATCHES: &str = "WITH expired AS (
        SELECT job_id FROM watches WHERE state = 'running' AND lease_until < $1
        ORDER BY lease_until LIMIT $2 FOR UPDATE SKIP LOCKED),
     due AS (
        SELECT job_id FROM watches WHERE state = 'pending' AND next_check_at <= $1
        ORDER BY next_check_at LIMIT GREATEST($2 - (SELECT count(*) FROM expired), 0) FOR UPDATE SKIP LOCKED)
     UPDATE watches w SET state = 'running', lease_owner = $3, lease_until = $4, checks = w.checks + 1, woken = 0,
            updated_at = $1
     FROM (SELECT job_id FROM expired UNION ALL SELECT job_id FROM due) AS picked, jobs j
     WHERE w.job_id = picked.job_id AND j.id = w.job_id
     RETURNING w.job_id, j.delivery_id, j.target, j.request, j.status, j.pipeline_id, w.checks, w.deadline,
               w.next_check_at";

async fn lease_statuses(
    pool: &PgPool,
    owner: &str,
    limit: usize,
    lease: Duration,
    now: SystemTime,
) -> Result<Vec<LeasedStatus>, StoreError> {
    let rows = sqlx::query(LEASE_STATUSES)
        .bind(millis(now))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .bind(owner)
        .bind(millis(now + lease))
        .fetch_all(pool)
        .await
        .map_err(db)?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let seq: i64 = r.try_get(0).map_err(db)?;
        let spec: String = r.try_get(3).map_err(db)?;
        let state: String = r.try_get(5).map_err(db)?;
        let attempts: i32 = r.try_get(8).map_err(db)?;
        out.push(LeasedStatus {
            seq,
            job: r.try_get(1).map_err(db)?,
            delivery_id: r.try_get(2).map_err(db)?,
            spec: from_json(&spec)?,
            context: r.try_get(4).map_err(db)?,
            state: StatusState::parse(&state)
                .ok_or_else(|| StoreError::corrupt(format!("status {seq}: state {state:?}")))?,
            description: r.try_get(6).map_err(db)?,
            target_url: r.try_get(7).map_err(db)?,
            attempt: u32::try_from(attempts.max(1)).unwrap_or(u32::MAX),
        });
    }
    // In queue order, as SQLite hands them out.
    out.sort_by_key(|s| s.seq);
    Ok(out)
}

async fn lease_watches(
    pool: &PgPool,
    owner: &str,
    limit: usize,
    lease: Duration,
    now: SystemTime,
) -> Result<Vec<LeasedWatch>, StoreError> {
    let rows = sqlx::query(LEASE_WATCHES)
        .bind(millis(now))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .bind(owner)
        .bind(millis(now + lease))
        .fetch_all(pool)
        .await
        .map_err(db)?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let request: String = r.try_get(3).map_err(db)?;
        let spec: String = r.try_get(4).map_err(db)?;
        let checks: i32 = r.try_get(6).map_err(db)?;
        let due: i64 = r.try_get(8).map_err(db)?;
        let watch = LeasedWatch {
            job: r.try_get(0).map_err(db)?,
            delivery_id: r.try_get(1).map_err(db)?,
            target: r.try_get(2).map_err(db)?,
            request: from_json(&request)?,
            pipeline: r.try_get::<Option<String>, _>(5).map_err(db)?.unwrap_or_default(),
            spec: from_json(&spec)?,
            check: u32::try_from(checks.max(1)).unwrap_or(u32::MAX),
            deadline: from_millis(r.try_get(7).map_err(db)?),
        };
        out.push((due, watch));
    }
    // The longest due first.
    out.sort_by_key(|(due, _)| *due);
    Ok(out.into_iter().map(|(_, w)| w).collect())
}

#[async_trait::async_trait]
impl StatusQueue for PostgresStore {
    async fn lease_statuses(
        &self,
        owner: &str,
        limit: usize,
        lease: Duration,
        now: SystemTime,
    ) -> Result<Vec<LeasedStatus>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        lease_statuses(&self.pool, owner, limit, lease, now).await
    }

    /// Only for the holder of this very lease (owner and attempt number).
    async fn record_status(
        &self,
        status: &LeasedStatus,
        owner: &str,
        outcome: PostOutcome,
        now: SystemTime,
    ) -> Result<(), StoreError> {
        let now_ms = millis(now);
        let (post, due, http, error) = sync::posted(&outcome, now_ms);
        sqlx::query(
            "UPDATE statuses SET post = $4, next_attempt_at = $5, lease_owner = NULL, lease_until = NULL,
                    http_status = $6, last_error = $7, updated_at = $8
             WHERE seq = $1 AND post = 'running' AND lease_owner = $2 AND attempts = $3",
        )
        .bind(status.seq)
        .bind(owner)
        .bind(i32::try_from(status.attempt).unwrap_or(i32::MAX))
        .bind(post)
        .bind(due)
        .bind(http.map(i32::from))
        .bind(error.map(text))
        .bind(now_ms)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn lease_watches(
        &self,
        owner: &str,
        limit: usize,
        lease: Duration,
        now: SystemTime,
    ) -> Result<Vec<LeasedWatch>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        lease_watches(&self.pool, owner, limit, lease, now).await
    }

    async fn record_watch(
        &self,
        watch: &LeasedWatch,
        owner: &str,
        record: WatchRecord,
        now: SystemTime,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        statuses::record_watch(&mut tx, watch, owner, &record, millis(now)).await?;
        tx.commit().await.map_err(db)
    }
}
