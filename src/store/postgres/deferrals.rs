//! Deferred rule evaluations ([`crate::store::deferral`]) on PostgreSQL, as
//! on SQLite (`sqlite::deferrals`): stored by the ingest batch (or the
//! re-evaluation) that deferred the rules, in its transaction; leased with
//! `SKIP LOCKED`, so two replicas never read the files of one deferral at
//! once; settled in one transaction.
//!
//! A settle takes its locks in the order every write of a delivery takes
//! them: its job's group (advisory), then the delivery's row, then the
//! deferral's row. The delivery's row makes two deferrals of one delivery,
//! settled at once on two replicas, rewrite its summary one after the
//! other, each reading what the other wrote (a statement run after the lock
//! sees every commit before it); the purge skips a locked delivery.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use sqlx::Row;
use sqlx::postgres::PgPool;

use super::queue::{Tx, insert_job, notify, refresh_status};
use super::status::text;
use super::{PostgresStore, db, groups, statuses, to_json};
use crate::store::concurrency::GroupedJob;
use crate::store::deferral::{
    self, DeferralQueue, DeferralRow, Deferred, LeasedDeferral, Settled, Verdict, files_note,
};
use crate::store::{NewDelivery, StoreError, from_millis, millis};

/// Whether an ingest batch defers any rule: it is then written in a
/// transaction with its deferrals (see `bulk`).
pub(super) fn involved(deliveries: &[&NewDelivery]) -> bool {
    deliveries.iter().any(|d| !d.summary.deferred.is_empty())
}

/// One deferral to store: the delivery's id and source, and the summary's
/// entry with its place among the delivery's.
type NewRow<'a> = (&'a str, &'a str, &'a Deferred, i32);

/// Store `rows`, pending and due at `at` (ms): one statement for all.
async fn insert(tx: &mut Tx, rows: &[NewRow<'_>], at: &[i64]) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let ids: Vec<String> = rows.iter().map(|_| ulid::Ulid::generate().to_string()).collect();
    let deliveries: Vec<&str> = rows.iter().map(|r| r.0).collect();
    let sources: Vec<&str> = rows.iter().map(|r| r.1).collect();
    let rules: Vec<&str> = rows.iter().map(|r| r.2.rule.as_str()).collect();
    let reasons: Vec<String> = rows.iter().map(|r| text(&r.2.reason).into_owned()).collect();
    let ordinals: Vec<i32> = rows.iter().map(|r| r.3).collect();
    sqlx::query(
        "INSERT INTO deferrals (id, delivery_id, source, rule, reason, ordinal, state, attempts, next_attempt_at,
                                created_at, updated_at)
         SELECT u.id, u.delivery_id, u.source, u.rule, u.reason, u.ordinal, 'pending', 0, u.at, u.at, u.at
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int4[], $7::int8[])
              AS u(id, delivery_id, source, rule, reason, ordinal, at)",
    )
    .bind(&ids)
    .bind(&deliveries)
    .bind(&sources)
    .bind(&rules)
    .bind(&reasons)
    .bind(&ordinals)
    .bind(at)
    .execute(&mut **tx)
    .await
    .map_err(db)?;
    Ok(())
}

/// The rows of `deferred`, in their order, for one delivery.
fn rows_of<'a>(delivery_id: &'a str, source: &'a str, deferred: &'a [Deferred]) -> Vec<NewRow<'a>> {
    deferred
        .iter()
        .enumerate()
        .map(|(i, d)| (delivery_id, source, d, i32::try_from(i).unwrap_or(i32::MAX)))
        .collect()
}

/// After an ingest batch stored `stored` (id to `seq`) of `deliveries`:
/// the deferrals of those stored, due at their arrival.
pub(super) async fn ingested(
    tx: &mut Tx,
    deliveries: &[&NewDelivery],
    stored: &HashMap<String, i64>,
) -> Result<(), StoreError> {
    let mut rows = Vec::new();
    let mut at = Vec::new();
    for d in deliveries.iter().filter(|d| stored.contains_key(&d.id)) {
        let mine = rows_of(&d.id, &d.source, &d.summary.deferred);
        at.extend(mine.iter().map(|_| millis(d.received_at)));
        rows.extend(mine);
    }
    insert(tx, &rows, &at).await
}

/// A re-evaluation's summary replaces the delivery's (whose row the caller
/// locked): its deferrals not settled yet are dropped (a worker holding one
/// finds its lease lost and writes nothing), so that no rule is settled
/// twice, and those of the new summary are stored, due at `now`.
pub(super) async fn replace(
    tx: &mut Tx,
    delivery_id: &str,
    deferred: &[Deferred],
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM deferrals WHERE delivery_id = $1 AND state <> 'done'")
        .bind(delivery_id)
        .execute(&mut **tx)
        .await
        .map_err(db)?;
    if deferred.is_empty() {
        // With neither jobs nor deferrals left (the rules that deferred were
        // removed, say) the status recompute finds no row: nothing is open.
        sqlx::query(
            "UPDATE deliveries SET status = 'skipped' WHERE id = $1 AND status = 'pending'
             AND NOT EXISTS (SELECT 1 FROM jobs WHERE delivery_id = $1)
             AND NOT EXISTS (SELECT 1 FROM deferrals WHERE delivery_id = $1)",
        )
        .bind(delivery_id)
        .execute(&mut **tx)
        .await
        .map_err(db)?;
        return Ok(());
    }
    let source: String = sqlx::query_scalar("SELECT source FROM deliveries WHERE id = $1")
        .bind(delivery_id)
        .fetch_one(&mut **tx)
        .await
        .map_err(db)?;
    let rows = rows_of(delivery_id, &source, deferred);
    insert(tx, &rows, &vec![now; rows.len()]).await
}

/// Deferrals whose lease ran out, then those due, oldest first, in one
/// statement; rows another replica is leasing right now are skipped.
const LEASE: &str = "WITH expired AS (
        SELECT id FROM deferrals WHERE state = 'running' AND lease_until < $1
        ORDER BY lease_until LIMIT $2 FOR UPDATE SKIP LOCKED),
     due AS (
        SELECT id FROM deferrals WHERE state = 'pending' AND next_attempt_at <= $1
        ORDER BY next_attempt_at LIMIT GREATEST($2 - (SELECT count(*) FROM expired), 0) FOR UPDATE SKIP LOCKED)
     UPDATE deferrals f SET state = 'running', lease_owner = $3, lease_until = $4, attempts = f.attempts + 1,
            updated_at = $1
     FROM (SELECT id FROM expired UNION ALL SELECT id FROM due) AS picked, deliveries d
     WHERE f.id = picked.id AND d.id = f.delivery_id
     RETURNING f.id, f.delivery_id, f.source, f.rule, f.attempts, d.received_at, f.next_attempt_at";

async fn lease(
    pool: &PgPool,
    owner: &str,
    limit: usize,
    lease: Duration,
    now: SystemTime,
) -> Result<Vec<LeasedDeferral>, StoreError> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let rows = sqlx::query(LEASE)
        .bind(millis(now))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .bind(owner)
        .bind(millis(now + lease))
        .fetch_all(pool)
        .await
        .map_err(db)?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let attempts: i32 = r.try_get(4).map_err(db)?;
        let leased = LeasedDeferral {
            id: r.try_get(0).map_err(db)?,
            delivery_id: r.try_get(1).map_err(db)?,
            source: r.try_get(2).map_err(db)?,
            rule: r.try_get(3).map_err(db)?,
            attempt: u32::try_from(attempts.max(1)).unwrap_or(u32::MAX),
            created_at: from_millis(r.try_get(5).map_err(db)?),
        };
        out.push((r.try_get::<i64, _>(6).map_err(db)?, leased));
    }
    // Oldest due first, as SQLite hands them out.
    out.sort_by_key(|(due, _)| *due);
    Ok(out.into_iter().map(|(_, d)| d).collect())
}

async fn settle(
    pool: &PgPool,
    d: &LeasedDeferral,
    owner: &str,
    settled: &Settled,
    now: SystemTime,
) -> Result<bool, StoreError> {
    let job = match &settled.verdict {
        Verdict::Matched(job) => Some(&**job),
        _ => None,
    };
    let mut tx: Tx = pool.begin().await.map_err(db)?;
    if let Some(group) = job.and_then(|j| j.group.as_deref()) {
        groups::lock_groups(&mut tx, &[group]).await?;
    }
    let delivery: Option<String> = sqlx::query_scalar("SELECT id FROM deliveries WHERE id = $1 FOR UPDATE")
        .bind(&d.delivery_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
    let held: Option<String> = sqlx::query_scalar(
        "SELECT id FROM deferrals WHERE id = $1 AND state = 'running' AND lease_owner = $2 AND attempts = $3
         FOR UPDATE",
    )
    .bind(&d.id)
    .bind(owner)
    .bind(i32::try_from(d.attempt).unwrap_or(i32::MAX))
    .fetch_optional(&mut *tx)
    .await
    .map_err(db)?;
    if delivery.is_none() || held.is_none() {
        // The lease was lost (or the delivery is gone): nothing is written.
        return Ok(false);
    }
    let now_ms = millis(now);
    let mut superseded = Vec::new();
    // A match queues its job as a re-evaluation does: due after its
    // debounce, the newest of its group, its "queued" status last.
    if let Some(job) = job {
        insert_job(&mut tx, &d.delivery_id, job, now_ms).await?;
        if let Some(group) = job.group.as_deref() {
            let grouped = GroupedJob {
                id: &job.id,
                delivery_id: &d.delivery_id,
                group,
                cancel: job.cancel,
            };
            superseded = groups::supersede(&mut tx, &[grouped], now_ms).await?.superseded;
        }
        if job.status.is_some() {
            statuses::sync(&mut tx, &[(job.id.as_str(), now_ms)]).await?;
        }
    }
    let stored: String = sqlx::query_scalar(
        "SELECT p.summary FROM deliveries d JOIN payloads p ON p.seq = d.seq WHERE d.id = $1",
    )
    .bind(&d.delivery_id)
    .fetch_one(&mut *tx)
    .await
    .map_err(db)?;
    let summary = deferral::settle_summary(&stored, &d.rule, settled, &superseded)?;
    sqlx::query("UPDATE payloads SET summary = $2 WHERE seq = (SELECT seq FROM deliveries WHERE id = $1)")
        .bind(&d.delivery_id)
        .bind(&summary)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    sqlx::query(
        "UPDATE deferrals SET state = 'done', lease_owner = NULL, lease_until = NULL, outcome = $2, files = $3,
                last_error = $4, next_attempt_at = $5, updated_at = $5
         WHERE id = $1",
    )
    .bind(&d.id)
    .bind(settled.outcome())
    .bind(settled.files.as_ref().map(to_json).transpose()?)
    .bind(settled.error.as_deref().map(text))
    .bind(now_ms)
    .execute(&mut *tx)
    .await
    .map_err(db)?;
    refresh_status(&mut tx, &[d.delivery_id.as_str()]).await?;
    if job.is_some() {
        notify(&mut *tx).await?;
    }
    tx.commit().await.map_err(db)?;
    Ok(true)
}

async fn retry(
    pool: &PgPool,
    d: &LeasedDeferral,
    owner: &str,
    (at, error): (SystemTime, &str),
    now: SystemTime,
) -> Result<bool, StoreError> {
    let moved = sqlx::query(
        "UPDATE deferrals SET state = 'pending', lease_owner = NULL, lease_until = NULL, next_attempt_at = $4,
                last_error = $5, updated_at = $6
         WHERE id = $1 AND state = 'running' AND lease_owner = $2 AND attempts = $3",
    )
    .bind(&d.id)
    .bind(owner)
    .bind(i32::try_from(d.attempt).unwrap_or(i32::MAX))
    .bind(millis(at))
    .bind(text(error).as_ref())
    .bind(millis(now))
    .execute(pool)
    .await
    .map_err(db)?
    .rows_affected();
    Ok(moved > 0)
}

/// Give back the deferrals `owner` leased, due at `now_ms`. First of what
/// a shutdown gives back: it holds no other lock yet when it waits for a
/// settle in progress. A lease given back still counts.
pub(super) async fn release(tx: &mut Tx, owner: &str, now_ms: i64) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE deferrals SET state = 'pending', lease_owner = NULL, lease_until = NULL, next_attempt_at = $2,
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

/// A delivery's deferrals, in rule order (earlier evaluations first).
pub(super) async fn rows(pool: &PgPool, delivery_id: &str) -> Result<Vec<DeferralRow>, StoreError> {
    sqlx::query(
        "SELECT rule, reason, state, attempts, next_attempt_at, outcome, files, last_error FROM deferrals
         WHERE delivery_id = $1 ORDER BY created_at, ordinal",
    )
    .bind(delivery_id)
    .fetch_all(pool)
    .await
    .map_err(db)?
    .iter()
    .map(|r| {
        let state: String = r.try_get(2).map_err(db)?;
        let waiting = state == deferral::state::PENDING;
        let files: Option<String> = r.try_get(6).map_err(db)?;
        Ok(DeferralRow {
            rule: r.try_get(0).map_err(db)?,
            reason: r.try_get(1).map_err(db)?,
            attempts: u32::try_from(r.try_get::<i32, _>(3).map_err(db)?).unwrap_or(0),
            next_attempt_at: if waiting {
                Some(r.try_get(4).map_err(db)?)
            } else {
                None
            },
            state,
            outcome: r.try_get(5).map_err(db)?,
            files: files_note(files.as_deref())?,
            last_error: r.try_get(7).map_err(db)?,
        })
    })
    .collect()
}

#[async_trait::async_trait]
impl DeferralQueue for PostgresStore {
    async fn lease_deferrals(
        &self,
        owner: &str,
        limit: usize,
        lease_for: Duration,
        now: SystemTime,
    ) -> Result<Vec<LeasedDeferral>, StoreError> {
        lease(&self.pool, owner, limit, lease_for, now).await
    }

    async fn settle_deferral(
        &self,
        deferral: &LeasedDeferral,
        owner: &str,
        settled: Settled,
        now: SystemTime,
    ) -> Result<bool, StoreError> {
        settle(&self.pool, deferral, owner, &settled, now).await
    }

    async fn retry_deferral(
        &self,
        deferral: &LeasedDeferral,
        owner: &str,
        at: SystemTime,
        error: &str,
        now: SystemTime,
    ) -> Result<bool, StoreError> {
        retry(&self.pool, deferral, owner, (at, error), now).await
    }
}
