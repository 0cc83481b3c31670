//! Follow-ups of runs a CI only queued ([`crate::store::follow`]) on
//! SQLite: a queue of their own, like `cancels`, stored by the attempt
//! record that created the queue entry, leased and recorded like jobs.

use std::time::{Duration, SystemTime};

use rusqlite::{Connection, params};

use super::db;
use crate::store::follow::{self, FollowOutcome, LeasedFollowUp};
use crate::store::model::{from_json, to_json};
use crate::store::owner::{Left, left_by};
use crate::store::{StoreError, Transition, from_millis, millis};

/// Follow-ups due, and those whose lease ran out (through
/// `follow_ups_due` and `follow_ups_lease`), of jobs done with a result,
/// the longest waiting first.
const DUE: &str = "SELECT job_id, next_attempt_at FROM follow_ups f
     WHERE state = 'pending' AND next_attempt_at <= ?1
       AND EXISTS (SELECT 1 FROM jobs j WHERE j.id = f.job_id AND j.state = 'done' AND j.result IS NOT NULL)
     UNION ALL
     SELECT job_id, next_attempt_at FROM follow_ups f
     WHERE state = 'running' AND lease_until < ?1
       AND EXISTS (SELECT 1 FROM jobs j WHERE j.id = f.job_id AND j.state = 'done' AND j.result IS NOT NULL)
     ORDER BY 2 LIMIT ?2";

pub(super) fn lease(
    tx: &Connection,
    owner: &str,
    limit: usize,
    lease: Duration,
    now: SystemTime,
) -> Result<Vec<LeasedFollowUp>, StoreError> {
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
        let (polls, created_at): (i64, i64) = tx
            .prepare_cached(
                "UPDATE follow_ups SET state = 'running', lease_owner = ?2, lease_until = ?3, polls = polls + 1,
                        updated_at = ?4
                 WHERE job_id = ?1
                 RETURNING polls, created_at",
            )
            .and_then(|mut s| s.query_row(params![id, owner, until, now_ms], |r| Ok((r.get(0)?, r.get(1)?))))
            .map_err(db)?;
        let (delivery_id, rule, target, request, result): (String, String, String, String, String) = tx
            .prepare_cached("SELECT delivery_id, rule, target, request, result FROM jobs WHERE id = ?1")
            .and_then(|mut s| {
                s.query_row(params![id], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                })
            })
            .map_err(db)?;
        out.push(LeasedFollowUp {
            job: id,
            delivery_id,
            rule,
            target,
            request: from_json(&request)?,
            result: from_json(&result)?,
            poll: u32::try_from(polls.max(1)).unwrap_or(u32::MAX),
            created_at: from_millis(created_at),
        });
    }
    Ok(out)
}

/// Record a read of `f`, if `owner` still holds this lease of it (the
/// poll number tells it from a later lease, the creation from a follow-up
/// stored anew after a replay): the job's result becomes the outcome's.
pub(super) fn record(
    tx: &Connection,
    f: &LeasedFollowUp,
    owner: &str,
    outcome: &FollowOutcome,
    now: SystemTime,
) -> Result<(), StoreError> {
    let now_ms = millis(now);
    let (state, due) = outcome.next(now_ms);
    let held = tx
        .prepare_cached(
            "UPDATE follow_ups SET state = ?4, next_attempt_at = ?5, lease_owner = NULL, lease_until = NULL,
                    updated_at = ?6
             WHERE job_id = ?1 AND state = 'running' AND lease_owner = ?2 AND polls = ?3 AND created_at = ?7",
        )
        .and_then(|mut s| {
            s.execute(params![
                f.job,
                owner,
                f.poll,
                state,
                due,
                now_ms,
                millis(f.created_at)
            ])
        })
        .map_err(db)?;
    if held == 0 {
        return Ok(());
    }
    let result = to_json(outcome.result())?;
    tx.prepare_cached("UPDATE jobs SET result = ?2, updated_at = ?3 WHERE id = ?1")
        .and_then(|mut s| s.execute(params![f.job, result, now_ms]))
        .map_err(db)?;
    // The run found: its pipeline on the commit, and watched.
    super::statuses::sync(tx, &f.job, now_ms)
}

/// After an attempt of `job` that ended in `next` (its result as stored:
/// `result`) was recorded: a run the CI only queued gets a follow-up, due
/// at once, if the job is done with that result (the record held its
/// lease, or a superseded job kept the run it created late). A job that is
/// recorded has none to drop: it was leased, so pending or running, and
/// every path that queues a job again ([`forget`]) drops its follow-up.
pub(super) fn after_attempt(
    tx: &Connection,
    job: &str,
    next: &Transition,
    result: Option<&str>,
    now: i64,
) -> Result<(), StoreError> {
    if follow::follows(next) {
        tx.prepare_cached(
            "INSERT INTO follow_ups (job_id, state, polls, next_attempt_at, created_at, updated_at)
             SELECT id, 'pending', 0, ?3, ?3, ?3 FROM jobs WHERE id = ?1 AND state = 'done' AND result = ?2
             ON CONFLICT (job_id) DO UPDATE SET state = 'pending', polls = 0, next_attempt_at = excluded.next_attempt_at,
                    lease_owner = NULL, lease_until = NULL, created_at = excluded.created_at,
                    updated_at = excluded.updated_at",
        )
        .and_then(|mut s| s.execute(params![job, result, now]))
        .map_err(db)?;
    }
    Ok(())
}

/// Drop `job`'s follow-up: it is queued again and runs anew.
pub(super) fn forget(tx: &Connection, job: &str) -> Result<(), StoreError> {
    tx.prepare_cached("DELETE FROM follow_ups WHERE job_id = ?1")
        .and_then(|mut s| s.execute(params![job]))
        .map_err(db)?;
    Ok(())
}

/// Give back the follow-ups `owner` leased, due at `now`; at start (no
/// owner) those of every owner but a hookbridge still running here, as
/// `queue::release_leases` does with jobs. A lease given back still counts
/// as a poll.
pub(super) fn release(tx: &Connection, owner: Option<&str>, now: SystemTime) -> Result<(), StoreError> {
    let held: Vec<(String, Option<String>)> = {
        let mut s = tx
            .prepare_cached(
                "SELECT job_id, lease_owner FROM follow_ups WHERE state = 'running' AND (?1 IS NULL OR lease_owner = ?1)",
            )
            .map_err(db)?;
        s.query_map(params![owner], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(db)?
            .collect::<Result<_, _>>()
            .map_err(db)?
    };
    let ids = held.into_iter().filter(|(_, holder)| {
        owner.is_some() || holder.as_deref().is_none_or(|h| left_by(h) != Left::Running)
    });
    for (id, _) in ids {
        tx.prepare_cached(
            "UPDATE follow_ups SET state = 'pending', lease_owner = NULL, lease_until = NULL, next_attempt_at = ?2,
                    updated_at = ?2
             WHERE job_id = ?1",
        )
        .and_then(|mut s| s.execute(params![id, millis(now)]))
        .map_err(db)?;
    }
    Ok(())
}
