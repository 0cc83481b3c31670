//! Concurrency groups on SQLite: what an ingest supersedes (the plan is
//! the model's, [`model::supersede`]), and the start an attempt of a
//! grouped job makes before it goes to the CI. The one writer orders every
//! ingest and start, so each reads what the one before it wrote.

use std::time::SystemTime;

use rusqlite::{Connection, OptionalExtension, params};

use super::db;
use super::status::refresh_status;
use crate::store::model::{self, GroupedJob, LiveJob, Supersede};
use crate::store::{Start, StoreError, millis};

/// A group's live jobs, through `jobs_group` (its predicate's terms as written).
pub(super) const LIVE: &str = "SELECT id, delivery_id, state = 'running' AND started_at IS NOT NULL FROM jobs
     WHERE concurrency_group = ?1 AND (state = 'pending' OR state = 'running')";

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
                })
            })
            .map_err(db)?;
        for job in rows {
            live.push(job.map_err(db)?);
        }
    }
    Ok(model::supersede(live, jobs))
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
    }
    for (job, by) in &plan.marked {
        tx.prepare_cached("UPDATE jobs SET superseded_by = ?2, updated_at = ?3 WHERE id = ?1")
            .and_then(|mut s| s.execute(params![job, by, now]))
            .map_err(db)?;
    }
    for delivery in &plan.deliveries {
        refresh_status(tx, delivery)?;
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
            refresh_status(tx, &delivery)?;
            Ok(Start::Superseded)
        }
    }
}
