//! Concurrency groups on SQLite: what an ingest supersedes (the plan is
//! the model's, [`concurrency::supersede`]), the start an attempt of a
//! grouped job makes before it goes to the CI, and the cancels a created
//! pipeline makes due (`cancel_in_progress`). The one writer orders every
//! ingest and start, so each reads what the one before it wrote.

use std::time::SystemTime;

use rusqlite::{Connection, OptionalExtension, params};

use super::db;
use super::status::refresh_status;
use crate::store::concurrency::{self, GroupedJob, LiveJob, Requeued, Supersede};
use crate::store::{Start, StoreError, millis};

/// A group's live jobs, through `jobs_group` (its predicate's terms as written).
pub(super) const LIVE: &str = "SELECT id, delivery_id, state = 'running' AND started_at IS NOT NULL FROM jobs
     WHERE concurrency_group = ?1 AND (state = 'pending' OR state = 'running')";

/// A group's open pipelines, through `jobs_open`.
pub(super) const OPEN: &str =
    "SELECT id, delivery_id FROM jobs WHERE concurrency_group = ?1 AND pipeline_open = 1";

/// What storing `jobs` (in order) supersedes.
pub(super) fn plan(tx: &Connection, jobs: &[GroupedJob<'_>]) -> Result<Supersede, StoreError> {
    let mut groups: Vec<&str> = jobs.iter().map(|j| j.group).collect();
    groups.sort_unstable();
    groups.dedup();
    let mut live = Vec::new();
    let mut s = tx.prepare_cached(LIVE).map_err(db)?;
    for group in groups {
        let rows = s
            .query_map(params![group], |r| {
                Ok(LiveJob {
                    id: r.get(0)?,
                    delivery_id: r.get(1)?,
                    group: group.to_owned(),
                    started: r.get(2)?,
                    open: false,
                })
            })
            .map_err(db)?;
        for job in rows {
            live.push(job.map_err(db)?);
        }
        let mut open = tx.prepare_cached(OPEN).map_err(db)?;
        let rows = open
            .query_map(params![group], |r| {
                Ok(LiveJob {
                    id: r.get(0)?,
                    delivery_id: r.get(1)?,
                    group: group.to_owned(),
                    started: false,
                    open: true,
                })
            })
            .map_err(db)?;
        for job in rows {
            live.push(job.map_err(db)?);
        }
    }
    Ok(concurrency::supersede(live, jobs))
}

/// Write `plan`, once the new jobs are inserted.
pub(super) fn apply(tx: &Connection, plan: &Supersede, now: i64) -> Result<(), StoreError> {
    for (job, by) in &plan.ended {
        tx.prepare_cached(
            "UPDATE jobs SET state = 'superseded', superseded_by = ?2, lease_owner = NULL, lease_until = NULL,
                    next_attempt_at = ?3, updated_at = ?3
             WHERE id = ?1",
        )
        .and_then(|mut s| s.execute(params![job, by, now]))
        .map_err(db)?;
        super::statuses::sync(tx, job, now)?;
    }
    for (job, by) in &plan.marked {
        tx.prepare_cached("UPDATE jobs SET superseded_by = ?2, updated_at = ?3 WHERE id = ?1")
            .and_then(|mut s| s.execute(params![job, by, now]))
            .map_err(db)?;
    }
    // Without a newer job to cancel it, a pipeline is no longer held.
    for (job, by) in &plan.cancel_by {
        tx.prepare_cached(
            "UPDATE jobs SET cancel_by = ?2, pipeline_open = CASE WHEN ?2 IS NULL THEN NULL ELSE pipeline_open END
             WHERE id = ?1",
        )
            .and_then(|mut s| s.execute(params![job, by]))
            .map_err(db)?;
    }
    for delivery in &plan.deliveries {
        refresh_status(tx, delivery)?;
    }
    Ok(())
}

/// A pipeline created by an attempt whose lease was taken over meanwhile,
/// for a job its new worker found superseded: the job did create it, so
/// it is done with it (and its pipeline may be cancelled like any other).
pub(super) fn created_late(
    tx: &Connection,
    job: &str,
    result: Option<&str>,
    now: i64,
) -> Result<(), StoreError> {
    tx.prepare_cached(
        "UPDATE jobs SET state = 'done', result = ?2, last_error = NULL, next_attempt_at = ?3, updated_at = ?3
         WHERE id = ?1 AND state = 'superseded' AND ?2 IS NOT NULL",
    )
    .and_then(|mut s| s.execute(params![job, result, now]))
    .map_err(db)?;
    Ok(())
}

/// After `job` of a group recorded a created pipeline: its pipeline is
/// open, and the cancels it makes due are queued: of the older pipelines
/// handed to it to cancel, and of its own when the newer job that is to
/// cancel it already has its pipeline.
pub(super) fn after_done(tx: &Connection, job: &str, now: i64) -> Result<(), StoreError> {
    tx.prepare_cached(
        "UPDATE jobs SET pipeline_open = 1
         WHERE id = ?1 AND state = 'done' AND result IS NOT NULL AND concurrency_group IS NOT NULL",
    )
    .and_then(|mut s| s.execute(params![job]))
    .map_err(db)?;
    let due: Vec<(String, String, String)> = {
        let mut s = tx
            .prepare_cached(
                "SELECT o.id, o.cancel_by, o.result FROM jobs o JOIN jobs n ON n.id = o.cancel_by
                 WHERE o.id = ?1 AND o.pipeline_open = 1 AND o.result IS NOT NULL
                   AND n.state = 'done' AND n.result IS NOT NULL
                 UNION ALL
                 SELECT o.id, o.cancel_by, o.result FROM jobs o JOIN jobs n ON n.id = o.cancel_by
                 WHERE o.cancel_by = ?1 AND o.pipeline_open = 1 AND o.result IS NOT NULL
                   AND n.state = 'done' AND n.result IS NOT NULL",
            )
            .map_err(db)?;
        s.query_map(params![job], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(db)?
            .collect::<Result<_, _>>()
            .map_err(db)?
    };
    for (id, by, pipeline) in due {
        tx.prepare_cached(
            "INSERT OR IGNORE INTO cancels (job_id, by_job, pipeline, state, attempts, next_attempt_at, created_at,
                                           updated_at)
             VALUES (?1, ?2, ?3, 'pending', 0, ?4, ?4, ?4)",
        )
        .and_then(|mut s| s.execute(params![id, by, pipeline, now]))
        .and_then(|_| tx.prepare_cached("UPDATE jobs SET pipeline_open = NULL, cancel_by = NULL WHERE id = ?1"))
        .and_then(|mut s| s.execute(params![id]))
        .map_err(db)?;
    }
    Ok(())
}

/// Let the attempt `lease` of `job` (leased by `owner`) go out, or end
/// the job if a newer one of its group superseded it while it was leased.
pub(super) fn start(
    tx: &Connection,
    job: &str,
    (owner, lease): (&str, u32),
    now: SystemTime,
) -> Result<Start, StoreError> {
    let now = millis(now);
    let row: Option<(String, String)> = tx
        .prepare_cached(
            "UPDATE jobs SET
                state = CASE WHEN superseded_by IS NULL THEN 'running' ELSE 'superseded' END,
                started_at = CASE WHEN superseded_by IS NULL THEN ?4 END,
                lease_owner = CASE WHEN superseded_by IS NULL THEN lease_owner END,
                lease_until = CASE WHEN superseded_by IS NULL THEN lease_until END,
                updated_at = ?4
             WHERE id = ?1 AND lease_owner = ?2 AND state = 'running' AND attempts = ?3
             RETURNING state, delivery_id",
        )
        .and_then(|mut s| {
            s.query_row(params![job, owner, lease, now], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
        .map_err(db)?;
    match row {
        None => Ok(Start::Gone),
        Some((state, _)) if state == "running" => Ok(Start::Go),
        Some((_, delivery)) => {
            super::statuses::sync(tx, job, now)?;
            refresh_status(tx, &delivery)?;
            Ok(Start::Superseded)
        }
    }
}

/// Jobs queued again (replay, re-evaluation, a redelivery's dead jobs):
/// each is the newest of its group, and supersedes the rest.
pub(super) fn requeued(tx: &Connection, jobs: &[Requeued], now: i64) -> Result<(), StoreError> {
    let grouped: Vec<GroupedJob<'_>> = jobs.iter().map(Requeued::grouped).collect();
    if grouped.is_empty() {
        return Ok(());
    }
    let plan = plan(tx, &grouped)?;
    apply(tx, &plan, now)
}

/// The grouped jobs among `ids`, for [`requeued`].
pub(super) fn grouped_of(tx: &Connection, ids: &[String]) -> Result<Vec<Requeued>, StoreError> {
    let mut out = Vec::new();
    let mut s = tx
        .prepare_cached(
            "SELECT delivery_id, concurrency_group, cancel_in_progress IS NOT NULL FROM jobs
             WHERE id = ?1 AND concurrency_group IS NOT NULL",
        )
        .map_err(db)?;
    for id in ids {
        let row: Option<(String, String, bool)> = s
            .query_row(params![id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()
            .map_err(db)?;
        if let Some((delivery, group, cancel)) = row {
            out.extend(Requeued::from_row(id.clone(), &delivery, Some(group), cancel));
        }
    }
    Ok(out)
}
