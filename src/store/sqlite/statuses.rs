//! Commit statuses on SQLite ([`crate::store::status`]): queueing the
//! statuses a job wants ([`sync`], run by every write that moves a job
//! with a status spec), the posts' queue and the pipelines' watches.

use std::sync::LazyLock;
use std::time::{Duration, SystemTime};

use rusqlite::{Connection, OptionalExtension, params};

use super::db;
use crate::event::Event;
use crate::store::model::{from_json, to_json};
use crate::store::owner::{Left, left_by};
use crate::store::status::sync::{self, STORED_COLUMNS, Stored, Told};
use crate::store::status::{LeasedStatus, LeasedWatch, PipelineState, PostOutcome, StatusState, WatchRecord};
use crate::store::{NewJob, StoreError, from_millis, millis};
use crate::target::TriggerRequest;

/// A job with a status spec, as [`sync`] reads it.
static SYNC_SELECT: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {STORED_COLUMNS} FROM jobs j LEFT JOIN watches w ON w.job_id = j.id
         WHERE j.id = ?1 AND j.status IS NOT NULL"
    )
});

/// Queue the statuses `job` wants that differ from the latest queued for
/// their subjects; first drop what an earlier round learned of a job
/// queued again, and start watching a followed pipeline just created
/// (the model's [`sync::plan`]).
pub(super) fn sync(tx: &Connection, job: &str, now: i64) -> Result<(), StoreError> {
    let stored: Option<Stored> = tx
        .prepare_cached(&SYNC_SELECT)
        .and_then(|mut s| {
            s.query_row(params![job], |r| {
                Ok(Stored {
                    id: r.get(0)?,
                    state: r.get(1)?,
                    request: r.get(2)?,
                    result: r.get(3)?,
                    last_error: r.get(4)?,
                    spec: r.get(5)?,
                    pipeline: r.get(6)?,
                    pipeline_id: r.get(7)?,
                    superseded_by: r.get(8)?,
                    watched: r.get(9)?,
                    facts: r.get(10)?,
                })
            })
            .optional()
        })
        .map_err(db)?;
    let Some(stored) = stored else {
        return Ok(());
    };
    let plan = sync::plan(&stored, now)?;
    if plan.reset {
        // Queued again: what the earlier round learned is gone.
        tx.prepare_cached("DELETE FROM watches WHERE job_id = ?1")
            .and_then(|mut s| s.execute(params![job]))
            .map_err(db)?;
        tx.prepare_cached("UPDATE jobs SET pipeline_state = NULL, pipeline_id = NULL WHERE id = ?1")
            .and_then(|mut s| s.execute(params![job]))
            .map_err(db)?;
    }
    if let Some(id) = &plan.pipeline_id {
        tx.prepare_cached(
            "UPDATE jobs SET pipeline_id = ?2, pipeline_state = COALESCE(pipeline_state, 'created') WHERE id = ?1",
        )
        .and_then(|mut s| s.execute(params![job, id]))
        .map_err(db)?;
    }
    if let Some((first, deadline)) = plan.watch {
        tx.prepare_cached(
            "INSERT INTO watches (job_id, state, checks, next_check_at, deadline, created_at, updated_at)
             VALUES (?1, 'pending', 0, ?2, ?3, ?4, ?4) ON CONFLICT (job_id) DO NOTHING",
        )
        .and_then(|mut s| s.execute(params![job, first, deadline, now]))
        .map_err(db)?;
    }
    for w in plan.wanted {
        let latest: Option<(String, String)> = tx
            .prepare_cached(
                "SELECT state, description FROM statuses WHERE subject = ?1 AND job_id = ?2 AND post <> 'dead'
                 ORDER BY seq DESC LIMIT 1",
            )
            .and_then(|mut s| {
                s.query_row(params![w.subject, job], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
            })
            .map_err(db)?;
        if sync::repeats(latest.as_ref().map(|(s, d)| (s.as_str(), d.as_str())), &w.status) {
            continue;
        }
        tx.prepare_cached(
            "INSERT INTO statuses (job_id, subject, context, state, description, target_url, post, attempts,
                                   next_attempt_at, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', 0, ?7, ?7, ?7)",
        )
        .and_then(|mut s| {
            s.execute(params![
                job,
                w.subject,
                w.context,
                w.status.state.as_str(),
                w.status.description,
                w.status.target_url,
                now
            ])
        })
        .map_err(db)?;
    }
    // A completion event that came before this record (a pipeline that
    // finished at once, a trigger reconciled later) tells it now.
    if let Some(id) = &plan.pipeline_id {
        early(tx, id)?;
    }
    Ok(())
}

/// Completion events kept for pipeline `id` before any job recorded it,
/// applied (each moves the jobs that now carry it) and dropped.
fn early(tx: &Connection, id: &str) -> Result<(), StoreError> {
    let kept: Vec<(i64, String, i64)> = tx
        .prepare_cached("SELECT seq, event, received_at FROM completions WHERE pipeline_id = ?1 ORDER BY seq")
        .and_then(|mut s| {
            s.query_map(params![id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect()
        })
        .map_err(db)?;
    for (seq, event, at) in kept {
        tx.prepare_cached("DELETE FROM completions WHERE seq = ?1")
            .and_then(|mut s| s.execute(params![seq]))
            .map_err(db)?;
        completion(tx, &from_json(&event)?, at)?;
    }
    Ok(())
}

/// After new jobs are stored and what they supersede is ended: "queued"
/// for each that reports statuses. Last, so that a newer job of the same
/// commit and context reports after the older one it superseded.
pub(super) fn queued(tx: &Connection, jobs: &[NewJob], now: i64) -> Result<(), StoreError> {
    for job in jobs.iter().filter(|j| j.status.is_some()) {
        sync(tx, &job.id, now)?;
    }
    Ok(())
}

/// A completion event (a GitLab `Pipeline Hook`, a CircleCI
/// `workflow-completed`): what it tells of the pipelines of jobs that
/// report statuses. GitLab's says the pipeline's state; CircleCI's says
/// one workflow's, so it records that and wakes the watch, which reads
/// whether every workflow is done.
pub(super) fn completion(tx: &Connection, event: &Event, now: i64) -> Result<(), StoreError> {
    // Only pipeline events tell a result (not CircleCI's job-completed).
    let Some(run) = event
        .pipeline
        .as_ref()
        .filter(|_| event.kind == crate::event::kind::PIPELINE)
    else {
        return Ok(());
    };
    let jobs: Vec<(String, String, Option<String>)> = tx
        .prepare_cached(
            "SELECT id, request, pipeline_state FROM jobs
             WHERE pipeline_id = ?1 AND status IS NOT NULL AND state = 'done'",
        )
        .and_then(|mut s| {
            s.query_map(params![run.id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect()
        })
        .map_err(db)?;
    if jobs.is_empty() {
        // No job recorded this pipeline (yet): its trigger's answer may
        // still be on its way. Kept until one does, or the purge.
        let kept = to_json(event)?;
        tx.prepare_cached("INSERT INTO completions (pipeline_id, event, received_at) VALUES (?1, ?2, ?3)")
            .and_then(|mut s| s.execute(params![run.id, kept, now]))
            .map_err(db)?;
        return Ok(());
    }
    for (job, request, current) in jobs {
        let request = from_json::<TriggerRequest>(&request)?;
        let current = current.as_deref().and_then(PipelineState::parse);
        match sync::told(&request, event) {
            Some(Told::Pipeline(next)) => learn(tx, &job, current, next)?,
            Some(Told::Workflow(workflow)) => {
                let facts: Option<Option<String>> = tx
                    .prepare_cached("SELECT facts FROM watches WHERE job_id = ?1")
                    .and_then(|mut s| s.query_row(params![job], |r| r.get(0)).optional())
                    .map_err(db)?;
                let facts = sync::with_workflow(facts.flatten().as_deref(), workflow)?;
                tx.prepare_cached(
                    "UPDATE watches SET facts = ?2, woken = 1, next_check_at = MIN(next_check_at, ?3), updated_at = ?3
                     WHERE job_id = ?1 AND state <> 'done'",
                )
                .and_then(|mut s| s.execute(params![job, facts, now]))
                .map_err(db)?;
                learn(tx, &job, current, PipelineState::Running)?;
            }
            None => continue,
        }
        sync(tx, &job, now)?;
    }
    Ok(())
}

/// Move `job`'s pipeline to `next` if that moves it on; a final state ends its watch.
fn learn(
    tx: &Connection,
    job: &str,
    current: Option<PipelineState>,
    next: PipelineState,
) -> Result<(), StoreError> {
    if !PipelineState::advances_to(current, next) {
        return Ok(());
    }
    tx.prepare_cached("UPDATE jobs SET pipeline_state = ?2 WHERE id = ?1")
        .and_then(|mut s| s.execute(params![job, next.as_str()]))
        .map_err(db)?;
    if next.is_final() {
        tx.prepare_cached(
            "UPDATE watches SET state = 'done', lease_owner = NULL, lease_until = NULL WHERE job_id = ?1",
        )
        .and_then(|mut s| s.execute(params![job]))
        .map_err(db)?;
    }
    Ok(())
}

/// Statuses due, each the oldest unposted of its subject, and those whose
/// lease ran out.
const DUE_STATUSES: &str = "SELECT seq FROM statuses s WHERE post = 'pending' AND next_attempt_at <= ?1
       AND NOT EXISTS (SELECT 1 FROM statuses o WHERE o.subject = s.subject AND o.seq < s.seq
                       AND o.post IN ('pending', 'running'))
     UNION ALL
     SELECT seq FROM statuses WHERE post = 'running' AND lease_until < ?1
     ORDER BY 1 LIMIT ?2";

pub(super) fn lease_statuses(
    tx: &Connection,
    owner: &str,
    limit: usize,
    lease: Duration,
    now: SystemTime,
) -> Result<Vec<LeasedStatus>, StoreError> {
    let now_ms = millis(now);
    let seqs: Vec<i64> = tx
        .prepare_cached(DUE_STATUSES)
        .and_then(|mut s| {
            s.query_map(params![now_ms, i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
                r.get(0)
            })?
            .collect()
        })
        .map_err(db)?;
    let until = millis(now + lease);
    let mut out = Vec::with_capacity(seqs.len());
    for seq in seqs {
        let (job, context, state, description, target_url, attempts): (
            String,
            String,
            String,
            String,
            Option<String>,
            i64,
        ) = tx
            .prepare_cached(
                "UPDATE statuses SET post = 'running', lease_owner = ?2, lease_until = ?3, attempts = attempts + 1,
                        updated_at = ?4
                 WHERE seq = ?1
                 RETURNING job_id, context, state, description, target_url, attempts",
            )
            .and_then(|mut s| {
                s.query_row(params![seq, owner, until, now_ms], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
                })
            })
            .map_err(db)?;
        let (delivery_id, spec): (String, String) = tx
            .prepare_cached("SELECT delivery_id, status FROM jobs WHERE id = ?1")
            .and_then(|mut s| s.query_row(params![job], |r| Ok((r.get(0)?, r.get(1)?))))
            .map_err(db)?;
        out.push(LeasedStatus {
            seq,
            job,
            delivery_id,
            spec: from_json(&spec)?,
            context,
            state: StatusState::parse(&state)
                .ok_or_else(|| StoreError::corrupt(format!("status {seq}: state {state:?}")))?,
            description,
            target_url,
            attempt: u32::try_from(attempts.max(1)).unwrap_or(u32::MAX),
        });
    }
    Ok(out)
}

pub(super) fn record_status(
    tx: &Connection,
    s: &LeasedStatus,
    owner: &str,
    outcome: &PostOutcome,
    now: SystemTime,
) -> Result<(), StoreError> {
    let now_ms = millis(now);
    let (post, due, status, error) = sync::posted(outcome, now_ms);
    tx.prepare_cached(
        "UPDATE statuses SET post = ?4, next_attempt_at = ?5, lease_owner = NULL, lease_until = NULL,
                http_status = ?6, last_error = ?7, updated_at = ?8
         WHERE seq = ?1 AND post = 'running' AND lease_owner = ?2 AND attempts = ?3",
    )
    .and_then(|mut st| st.execute(params![s.seq, owner, s.attempt, post, due, status, error, now_ms]))
    .map_err(db)?;
    Ok(())
}

/// Watches due (a poll, a completion event, the deadline), and those
/// whose lease ran out.
const DUE_WATCHES: &str = "SELECT job_id FROM watches WHERE state = 'pending' AND next_check_at <= ?1
     UNION ALL
     SELECT job_id FROM watches WHERE state = 'running' AND lease_until < ?1
     LIMIT ?2";

pub(super) fn lease_watches(
    tx: &Connection,
    owner: &str,
    limit: usize,
    lease: Duration,
    now: SystemTime,
) -> Result<Vec<LeasedWatch>, StoreError> {
    let now_ms = millis(now);
    let ids: Vec<String> = tx
        .prepare_cached(DUE_WATCHES)
        .and_then(|mut s| {
            s.query_map(params![now_ms, i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
                r.get(0)
            })?
            .collect()
        })
        .map_err(db)?;
    let until = millis(now + lease);
    let mut out = Vec::with_capacity(ids.len());
    for job in ids {
        let (checks, deadline): (i64, i64) = tx
            .prepare_cached(
                "UPDATE watches SET state = 'running', lease_owner = ?2, lease_until = ?3, checks = checks + 1,
                        woken = 0, updated_at = ?4
                 WHERE job_id = ?1 RETURNING checks, deadline",
            )
            .and_then(|mut s| s.query_row(params![job, owner, until, now_ms], |r| Ok((r.get(0)?, r.get(1)?))))
            .map_err(db)?;
        let (delivery_id, target, request, spec, pipeline): (String, String, String, String, Option<String>) =
            tx.prepare_cached(
                "SELECT delivery_id, target, request, status, pipeline_id FROM jobs WHERE id = ?1",
            )
            .and_then(|mut s| {
                s.query_row(params![job], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                })
            })
            .map_err(db)?;
        out.push(LeasedWatch {
            job,
            delivery_id,
            target,
            request: from_json(&request)?,
            pipeline: pipeline.unwrap_or_default(),
            spec: from_json(&spec)?,
            check: u32::try_from(checks.max(1)).unwrap_or(u32::MAX),
            deadline: from_millis(deadline),
        });
    }
    Ok(out)
}

pub(super) fn record_watch(
    tx: &Connection,
    w: &LeasedWatch,
    owner: &str,
    record: &WatchRecord,
    now: SystemTime,
) -> Result<(), StoreError> {
    let now_ms = millis(now);
    let held: Option<(Option<String>, bool)> = tx
        .prepare_cached(
            "SELECT facts, woken = 1 FROM watches WHERE job_id = ?1 AND state = 'running' AND lease_owner = ?2
             AND checks = ?3",
        )
        .and_then(|mut s| s.query_row(params![w.job, owner, w.check], |r| Ok((r.get(0)?, r.get(1)?))).optional())
        .map_err(db)?;
    let Some((facts, woken)) = held else {
        return Ok(());
    };
    let current: Option<String> = tx
        .prepare_cached("SELECT pipeline_state FROM jobs WHERE id = ?1")
        .and_then(|mut s| s.query_row(params![w.job], |r| r.get(0)))
        .map_err(db)?;
    let current = current.as_deref().and_then(PipelineState::parse);
    let read = sync::after_read(facts.as_deref(), woken, current, record, now_ms)?;
    tx.prepare_cached(
        "UPDATE watches SET state = ?2, next_check_at = ?3, facts = ?4, lease_owner = NULL, lease_until = NULL,
                updated_at = ?5
         WHERE job_id = ?1",
    )
    .and_then(|mut s| s.execute(params![w.job, read.state, read.next, read.facts, now_ms]))
    .map_err(db)?;
    if let Some(p) = record.pipeline {
        learn(tx, &w.job, current, p)?;
    }
    sync(tx, &w.job, now_ms)
}

/// Give back the statuses and watches `owner` leased, due at `now`; at
/// start (no owner) those of every owner but a hookbridge still running here.
pub(super) fn release(tx: &Connection, owner: Option<&str>, now: SystemTime) -> Result<(), StoreError> {
    let now_ms = millis(now);
    for (select, update) in [
        (
            "SELECT seq, lease_owner FROM statuses WHERE post = 'running' AND (?1 IS NULL OR lease_owner = ?1)",
            "UPDATE statuses SET post = 'pending', lease_owner = NULL, lease_until = NULL, next_attempt_at = ?2
             WHERE seq = ?1",
        ),
        (
            "SELECT job_id, lease_owner FROM watches WHERE state = 'running' AND (?1 IS NULL OR lease_owner = ?1)",
            "UPDATE watches SET state = 'pending', lease_owner = NULL, lease_until = NULL, next_check_at = ?2
             WHERE job_id = ?1",
        ),
    ] {
        let held: Vec<(rusqlite::types::Value, Option<String>)> = tx
            .prepare_cached(select)
            .and_then(|mut s| s.query_map(params![owner], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
            .map_err(db)?;
        for (key, holder) in held {
            if owner.is_none() && holder.as_deref().is_some_and(|h| left_by(h) == Left::Running) {
                continue;
            }
            tx.prepare_cached(update)
                .and_then(|mut s| s.execute(params![key, now_ms]))
                .map_err(db)?;
        }
    }
    Ok(())
}
