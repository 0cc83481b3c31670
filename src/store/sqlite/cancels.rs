//! The cancels of older pipelines (`cancel_in_progress`) on SQLite: a
//! queue of their own, leased and recorded like jobs; each attempt is an
//! attempt row of the cancelled job.

use std::time::{Duration, SystemTime};

use rusqlite::{Connection, params};

use super::db;
use super::queue::next_attempt_number;
use crate::store::concurrency::{CancelOutcome, LeasedCancel};
use crate::store::model::from_json;
use crate::store::{Attempt, StoreError, millis};

/// Cancels due, and those whose lease ran out, oldest first.
const DUE: &str = "SELECT job_id FROM cancels WHERE state = 'pending' AND next_attempt_at <= ?1
     UNION ALL SELECT job_id FROM cancels WHERE state = 'running' AND lease_until < ?1
     LIMIT ?2";

pub(super) fn lease(
    tx: &Connection,
    owner: &str,
    limit: usize,
    lease: Duration,
    now: SystemTime,
) -> Result<Vec<LeasedCancel>, StoreError> {
    let now_ms = millis(now);
    let ids: Vec<String> = {
        let mut s = tx.prepare_cached(DUE).map_err(db)?;
        s.query_map(params![now_ms, i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
            r.get(0)
        })
        .map_err(db)?
        .collect::<Result<_, _>>()
        .map_err(db)?
    };
    let until = millis(now + lease);
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let row = tx
            .prepare_cached(
                "UPDATE cancels SET state = 'running', lease_owner = ?2, lease_until = ?3,
                        attempts = attempts + 1, updated_at = ?4
                 WHERE job_id = ?1
                 RETURNING by_job, attempts, pipeline",
            )
            .and_then(|mut s| {
                s.query_row(params![id, owner, until, now_ms], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, String>(2)?,
                    ))
                })
            })
            .map_err(db)?;
        let (by_job, attempts, pipeline) = row;
        let job = tx
            .prepare_cached("SELECT delivery_id, rule, target, request FROM jobs WHERE id = ?1")
            .and_then(|mut s| {
                s.query_row(params![id], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                    ))
                })
            })
            .map_err(db)?;
        let (delivery_id, rule, target, request) = job;
        out.push(LeasedCancel {
            job: id,
            delivery_id,
            by_job,
            rule,
            target,
            request: from_json(&request)?,
            pipeline: from_json(&pipeline)?,
            attempt: u32::try_from(attempts.max(1)).unwrap_or(u32::MAX),
        });
    }
    Ok(out)
}

pub(super) fn record(
    tx: &Connection,
    cancel: (&str, u32),
    owner: &str,
    attempt: &Attempt,
    outcome: &CancelOutcome,
    now: SystemTime,
) -> Result<(), StoreError> {
    let (job, lease) = cancel;
    let exists: bool = tx
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM jobs WHERE id = ?1)")
        .and_then(|mut s| s.query_row(params![job], |r| r.get(0)))
        .map_err(db)?;
    if !exists {
        return Ok(());
    }
    let now_ms = millis(now);
    let (state, due, text) = outcome.state(now_ms);
    let n = next_attempt_number(tx, job)?;
    let error = match outcome {
        CancelOutcome::Retry { .. } | CancelOutcome::Failed(_) => Some(text),
        _ => None,
    };
    tx.prepare_cached(
        "INSERT INTO attempts (job_id, n, started_at, duration_ms, status, outcome, error, response)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )
    .and_then(|mut s| {
        s.execute(params![
            job,
            n,
            millis(attempt.started_at),
            i64::try_from(attempt.duration.as_millis()).unwrap_or(i64::MAX),
            attempt.status,
            outcome.outcome(),
            error,
            attempt.response,
        ])
    })
    .map_err(db)?;
    tx.prepare_cached(
        "UPDATE cancels SET state = ?3, next_attempt_at = ?4, outcome = ?5, lease_owner = NULL, lease_until = NULL,
                updated_at = ?6
         WHERE job_id = ?1 AND lease_owner = ?2 AND state = 'running' AND attempts = ?7",
    )
    .and_then(|mut s| s.execute(params![job, owner, state.as_str(), due, text, now_ms, lease]))
    .map_err(db)?;
    Ok(())
}
