//! The writes an operator asks for (replay, re-evaluation's new jobs) and
//! the retention purge.

use std::time::SystemTime;

use super::history::resolve;
use super::queue::{Tx, insert_job, notify, refresh_status};
use super::{db, deferrals, groups, statuses, to_json};
use crate::store::concurrency::Requeued;
use crate::store::model;
use crate::store::*;

/// `pg_try_advisory_xact_lock` key (arbitrary, fixed) of the retention purge.
const PURGE_LOCK: i64 = 0x6862_7075_7267_6521;

pub(super) async fn replay(
    tx: &mut Tx,
    key: &DeliveryKey,
    job: Option<&str>,
    now: SystemTime,
) -> Result<Vec<String>, StoreError> {
    let id = resolve(tx, key).await?;
    let now_ms = millis(now);
    // A grouped job queued again is its group's newest: the groups' locks
    // first, as an ingest takes them.
    let groups = groups::groups_of(tx, &id, job).await?;
    let groups: Vec<&str> = groups.iter().map(String::as_str).collect();
    groups::lock_groups(tx, &groups).await?;
    // Its old pipeline is no longer held open, and any cancel or follow-up
    // of it is forgotten (its attempts stay in the history): it runs anew.
    let rows: Vec<(String, Option<String>, Option<i32>, bool)> = sqlx::query_as(
        "UPDATE jobs SET state = 'pending', attempts = 0, ambiguous_since = NULL, next_attempt_at = $3, last_error = NULL,
                superseded_by = NULL, cancel_by = NULL, pipeline_open = NULL, updated_at = $3
         WHERE delivery_id = $1 AND ($2::TEXT IS NULL OR id = $2) AND state != 'running'
         RETURNING id, concurrency_group, cancel_in_progress, status IS NOT NULL",
    )
    .bind(&id)
    .bind(job)
    .bind(now_ms)
    .fetch_all(&mut **tx)
    .await
    .map_err(db)?;
    let ids: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
    let mut reporting: Vec<(&str, i64)> = rows
        .iter()
        .filter(|r| r.3)
        .map(|r| (r.0.as_str(), now_ms))
        .collect();
    reporting.sort_unstable();
    sqlx::query("DELETE FROM cancels WHERE job_id = ANY($1)")
        .bind(&ids)
        .execute(&mut **tx)
        .await
        .map_err(db)?;
    super::follow_ups::forget(tx, &ids).await?;
    let grouped: Vec<Requeued> = rows
        .iter()
        .filter_map(|(job, group, cancel, _)| {
            Requeued::from_row(job.clone(), &id, group.clone(), cancel.is_some())
        })
        .collect();
    groups::requeued(tx, &grouped, now_ms).await?;
    // "queued" again, after what they superseded (as at ingest).
    statuses::sync(tx, &reporting).await?;
    if let Some(j) = job
        && ids.is_empty()
    {
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM jobs WHERE id = $1 AND delivery_id = $2)")
                .bind(j)
                .bind(&id)
                .fetch_one(&mut **tx)
                .await
                .map_err(db)?;
        if !exists {
            return Err(model::job_not_found(j, key));
        }
    }
    refresh_status(tx, &[id.as_str()]).await?;
    if !ids.is_empty() {
        notify(&mut **tx).await?;
    }
    let mut ids = ids;
    ids.sort();
    Ok(ids)
}

/// Add jobs to a stored delivery (`replay --reevaluate`) and replace its summary.
pub(super) async fn add_jobs(
    tx: &mut Tx,
    key: &DeliveryKey,
    jobs: &[NewJob],
    summary: &Summary,
    now: SystemTime,
) -> Result<(), StoreError> {
    let id = resolve(tx, key).await?;
    let groups: Vec<&str> = jobs.iter().filter_map(|j| j.group.as_deref()).collect();
    groups::lock_groups(tx, &groups).await?;
    // Held until commit: the purge skips a locked delivery, so none of
    // these jobs can outlive theirs.
    lock_delivery(tx, &id, key).await?;
    let now = millis(now);
    for job in jobs {
        insert_job(tx, &id, job, now).await?;
    }
    let grouped: Vec<Requeued> = jobs
        .iter()
        .filter_map(|j| Requeued::from_row(j.id.clone(), &id, j.group.clone(), j.cancel))
        .collect();
    groups::requeued(tx, &grouped, now).await?;
    let reporting: Vec<(&str, i64)> = jobs
        .iter()
        .filter(|j| j.status.is_some())
        .map(|j| (j.id.as_str(), now))
        .collect();
    statuses::sync(tx, &reporting).await?;
    deferrals::replace(tx, &id, &summary.deferred, now).await?;
    sqlx::query("UPDATE payloads SET summary = $2 WHERE seq = (SELECT seq FROM deliveries WHERE id = $1)")
        .bind(&id)
        .bind(to_json(summary)?)
        .execute(&mut **tx)
        .await
        .map_err(db)?;
    refresh_status(tx, &[id.as_str()]).await?;
    if !jobs.is_empty() {
        notify(&mut **tx).await?;
    }
    Ok(())
}

async fn lock_delivery(tx: &mut Tx, id: &str, key: &DeliveryKey) -> Result<(), StoreError> {
    let found: Option<String> = sqlx::query_scalar("SELECT id FROM deliveries WHERE id = $1 FOR UPDATE")
        .bind(id)
        .fetch_optional(&mut **tx)
        .await
        .map_err(db)?;
    match found {
        Some(_) => Ok(()),
        None => Err(StoreError::not_found(key.id.clone())),
    }
}

/// Delete up to `batch` finished deliveries received before `cutoff`, with
/// their payloads, deferrals, jobs, attempts, cancels, follow-ups, commit
/// statuses and watches, unless another replica holds the purge lock (then
/// 0: it purges this round). A delivery whose jobs still have a status to
/// post or a pipeline watched stays until it is posted and the watch ends
/// (at its deadline at the latest), as does one with a rule still deferred
/// (its status says pending anyway; checked here too, as the purge must
/// never lose one); held ones are left out before the `LIMIT`, so that
/// they never fill a batch.
///
/// One statement per table, in this order: deleting the jobs waits for any
/// attempt record holding one of their locks (a late worker's), so the
/// attempts statement after it, with a snapshot of its own, sees and deletes
/// that attempt too.
pub(super) async fn purge(tx: &mut Tx, cutoff: SystemTime, batch: usize) -> Result<u64, StoreError> {
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(PURGE_LOCK)
        .fetch_one(&mut **tx)
        .await
        .map_err(db)?;
    if !locked {
        return Ok(0);
    }
    // Completion events kept for a pipeline no job recorded in that time.
    sqlx::query("DELETE FROM completions WHERE received_at < $1")
        .bind(millis(cutoff))
        .execute(&mut **tx)
        .await
        .map_err(db)?;
    let gone: Vec<(String, i64)> = sqlx::query_as(
        "DELETE FROM deliveries WHERE id IN (
            SELECT id FROM deliveries d WHERE status IN ('done', 'skipped', 'superseded') AND received_at < $1
              AND NOT EXISTS (SELECT 1 FROM jobs j JOIN statuses s ON s.job_id = j.id
                              WHERE j.delivery_id = d.id AND s.post IN ('pending', 'running'))
              AND NOT EXISTS (SELECT 1 FROM jobs j JOIN watches w ON w.job_id = j.id
                              WHERE j.delivery_id = d.id AND w.state <> 'done')
              AND NOT EXISTS (SELECT 1 FROM deferrals f WHERE f.delivery_id = d.id AND f.state <> 'done')
            LIMIT $2 FOR UPDATE OF d SKIP LOCKED)
         RETURNING id, seq",
    )
    .bind(millis(cutoff))
    .bind(i64::try_from(batch).unwrap_or(i64::MAX))
    .fetch_all(&mut **tx)
    .await
    .map_err(db)?;
    if gone.is_empty() {
        return Ok(0);
    }
    let (ids, seqs): (Vec<String>, Vec<i64>) = gone.into_iter().unzip();
    sqlx::query("DELETE FROM payloads WHERE seq = ANY($1)")
        .bind(&seqs)
        .execute(&mut **tx)
        .await
        .map_err(db)?;
    sqlx::query("DELETE FROM deferrals WHERE delivery_id = ANY($1)")
        .bind(&ids)
        .execute(&mut **tx)
        .await
        .map_err(db)?;
    let jobs: Vec<String> = sqlx::query_scalar("DELETE FROM jobs WHERE delivery_id = ANY($1) RETURNING id")
        .bind(&ids)
        .fetch_all(&mut **tx)
        .await
        .map_err(db)?;
    for sql in [
        "DELETE FROM attempts WHERE job_id = ANY($1)",
        "DELETE FROM cancels WHERE job_id = ANY($1)",
        "DELETE FROM follow_ups WHERE job_id = ANY($1)",
        "DELETE FROM statuses WHERE job_id = ANY($1)",
        "DELETE FROM watches WHERE job_id = ANY($1)",
    ] {
        sqlx::query(sql)
            .bind(&jobs)
            .execute(&mut **tx)
            .await
            .map_err(db)?;
    }
    Ok(ids.len() as u64)
}
