//! The queue's writes, each run by the writer inside a batch transaction:
//! ingest, lease, record, give back, replay, add jobs, purge.

use std::time::{Duration, SystemTime};

use rusqlite::{Connection, OptionalExtension, params};

use super::history::resolve;
use super::status::refresh_status;
use super::{db, deferrals, follow_ups, groups, statuses};
use crate::store::model::{self, JobUpdate, from_json, to_json};
use crate::store::owner::{Left, left_by};
use crate::store::*;

/// A delivery with its JSON columns already serialized, so that work runs on
/// the caller's thread in parallel rather than on the one writer thread.
pub(super) struct PreparedDelivery {
    delivery: NewDelivery,
    summary: String,
    event: String,
    headers: String,
    /// Each job's request, in the order of `delivery.jobs`.
    requests: Vec<String>,
}

impl PreparedDelivery {
    pub(super) fn new(delivery: NewDelivery) -> Result<PreparedDelivery, StoreError> {
        Ok(PreparedDelivery {
            summary: to_json(&delivery.summary)?,
            event: to_json(&delivery.event)?,
            headers: to_json(&delivery.headers)?,
            requests: delivery
                .jobs
                .iter()
                .map(|j| to_json(&j.request))
                .collect::<Result<_, _>>()?,
            delivery,
        })
    }

    /// Roughly how many bytes it writes (the payload dominates).
    pub(super) fn bytes(&self) -> usize {
        self.delivery.payload.len() + self.event.len() + self.summary.len()
    }
}

pub(super) fn insert_job(
    tx: &Connection,
    (delivery_id, trace): (&str, Option<&str>),
    job: &NewJob,
    request: &str,
    now: i64,
) -> Result<(), StoreError> {
    let due = now.saturating_add(i64::try_from(job.delay.as_millis()).unwrap_or(i64::MAX));
    let status = job.status.as_ref().map(to_json).transpose()?;
    tx.prepare_cached(
        "INSERT INTO jobs (id, delivery_id, rule, target, request, state, attempts, next_attempt_at, created_at,
                           updated_at, concurrency_group, cancel_in_progress, trace_context, status)
         VALUES (?1, ?2, ?3, ?4, ?5, 'pending', 0, ?7, ?6, ?6, ?8, ?9, ?10, ?11)",
    )
    .and_then(|mut s| {
        s.execute(params![
            job.id,
            delivery_id,
            job.rule,
            job.target,
            request,
            now,
            due,
            job.group,
            job.cancel.then_some(1),
            trace,
            status
        ])
    })
    .map_err(db)?;
    Ok(())
}

pub(super) fn ingest(tx: &Connection, mut p: PreparedDelivery) -> Result<Ingested, StoreError> {
    let d = &p.delivery;
    let existing: Option<(String, String)> = tx
        .prepare_cached(
            "SELECT d.id, p.summary FROM deliveries d JOIN payloads p ON p.seq = d.seq
             WHERE d.source = ?1 AND d.delivery = ?2",
        )
        .and_then(|mut s| {
            s.query_row(params![d.source, d.delivery], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
        .map_err(db)?;
    if let Some((id, summary)) = existing {
        // The duplicate's arrival is the clock: its dead jobs are due at
        // once, each the newest of its group.
        let now = millis(d.received_at);
        let dead: Vec<String> = tx
            .prepare_cached("SELECT id FROM jobs WHERE delivery_id = ?1 AND +state = 'dead'")
            .and_then(|mut s| s.query_map(params![id], |r| r.get(0))?.collect())
            .map_err(db)?;
        let requeued = tx
            .prepare_cached(REQUEUE_DEAD)
            .and_then(|mut s| s.execute(params![id, now]))
            .map_err(db)?;
        groups::requeued(tx, &groups::grouped_of(tx, &dead)?, now)?;
        for job in &dead {
            follow_ups::forget(tx, job)?;
            statuses::sync(tx, job, now)?;
        }
        if requeued > 0 {
            refresh_status(tx, &id)?;
        }
        return Ok(Ingested::Duplicate {
            summary: from_json(&summary)?,
            requeued,
        });
    }
    let received = millis(d.received_at);
    let grouped: Vec<_> = concurrency::grouped_jobs(d).collect();
    let plan = if grouped.is_empty() {
        concurrency::Supersede::default()
    } else {
        groups::plan(tx, &grouped)?
    };
    if !plan.superseded.is_empty() {
        concurrency::note_superseded(&mut p.delivery.summary, &plan.superseded);
        p.summary = to_json(&p.delivery.summary)?;
    }
    let d = &p.delivery;
    // Pending while a job or a deferred rule is open.
    let open = !d.jobs.is_empty() || !d.summary.deferred.is_empty();
    let status = if open { "pending" } else { "skipped" };
    tx.prepare_cached(
        "INSERT INTO deliveries (id, source, delivery, received_at, event_name, kind, repository, git_ref, status, sha)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )
    .and_then(|mut s| {
        s.execute(params![
            d.id,
            d.source,
            d.delivery,
            received,
            d.event.name,
            d.event.kind,
            d.event.repository,
            d.event.git_ref,
            status,
            d.event.sha.as_deref().map(str::to_ascii_lowercase),
        ])
    })
    .map_err(db)?;
    let seq = tx.last_insert_rowid();
    tx.prepare_cached(
        "INSERT INTO payloads (seq, summary, event, headers, payload) VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .and_then(|mut s| s.execute(params![seq, p.summary, p.event, p.headers, &d.payload[..]]))
    .map_err(db)?;
    for (job, request) in d.jobs.iter().zip(&p.requests) {
        insert_job(tx, (&d.id, d.trace.as_deref()), job, request, received)?;
    }
    deferrals::insert(tx, (&d.id, &d.source), &d.summary.deferred, received)?;
    groups::apply(tx, &plan, received)?;
    statuses::queued(tx, &d.jobs, received)?;
    if d.event.pipeline.is_some() {
        statuses::completion(tx, &d.event, received)?;
    }
    Ok(Ingested::Stored {
        superseded: plan.superseded,
    })
}

/// A delivery's dead jobs queued again. `+state`: through `jobs_delivery`
/// (the delivery's few jobs), not `jobs_due` (every dead job), which
/// SQLite would otherwise take for the equality on `state`.
pub(super) const REQUEUE_DEAD: &str =
    "UPDATE jobs SET state = 'pending', attempts = 0, ambiguous_since = NULL, next_attempt_at = ?2, last_error = NULL, updated_at = ?2
     WHERE delivery_id = ?1 AND +state = 'dead'";

pub(super) fn next_attempt_number(tx: &Connection, job: &str) -> Result<i64, StoreError> {
    tx.prepare_cached("SELECT COALESCE(MAX(n), 0) + 1 FROM attempts WHERE job_id = ?1")
        .and_then(|mut s| s.query_row(params![job], |r| r.get(0)))
        .map_err(db)
}

/// Jobs whose lease ran out, oldest first (through `jobs_lease`).
pub(super) const EXPIRED: &str =
    "SELECT id FROM jobs WHERE state = 'running' AND lease_until < ?1 ORDER BY lease_until LIMIT ?2";
/// Jobs due, oldest first (through `jobs_due`).
pub(super) const DUE: &str =
    "SELECT id FROM jobs WHERE state = 'pending' AND next_attempt_at <= ?1 ORDER BY next_attempt_at LIMIT ?2";

pub(super) fn lease_due(
    tx: &Connection,
    owner: &str,
    limit: usize,
    lease: Duration,
    now: SystemTime,
) -> Result<Vec<LeasedJob>, StoreError> {
    let now_ms = millis(now);
    let mut ids: Vec<(String, bool)> = Vec::new();
    // Expired leases first, then due jobs, up to `limit` in all.
    for (sql, expired) in [(EXPIRED, true), (DUE, false)] {
        let room = (limit - ids.len().min(limit)) as i64;
        let found: Vec<String> = tx
            .prepare_cached(sql)
            .and_then(|mut s| s.query_map(params![now_ms, room], |r| r.get(0))?.collect())
            .map_err(db)?;
        ids.extend(found.into_iter().map(|id| (id, expired)));
    }
    let until = millis(now + lease);
    let mut out = Vec::with_capacity(ids.len());
    for (id, was_expired) in ids {
        if was_expired {
            interrupted(tx, &id, now_ms, model::LEASE_EXPIRED)?;
        }
        let row = tx
            .prepare_cached(
                "UPDATE jobs SET state = 'running', lease_owner = ?2, lease_until = ?3, attempts = attempts + 1,
                        started_at = CASE WHEN state = 'pending' THEN NULL ELSE started_at END, updated_at = ?4,
                        leased_at = ?4
                 WHERE id = ?1
                 RETURNING delivery_id, rule, target, request, attempts, next_attempt_at, concurrency_group IS NOT NULL,
                           trace_context, ambiguous_since, result",
            )
            .and_then(|mut s| {
                s.query_row(params![id, owner, until, now_ms], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, i64>(4)?,
                        r.get::<_, i64>(5)?,
                        r.get::<_, bool>(6)?,
                        r.get::<_, Option<String>>(7)?,
                        r.get::<_, Option<i64>>(8)?,
                        r.get::<_, Option<String>>(9)?,
                    ))
                })
            })
            .map_err(db)?;
        let (delivery_id, rule, target, request, attempts, due, grouped, trace, ambiguous, previous) = row;
        let (delivery, source): (String, String) = tx
            .prepare_cached("SELECT delivery, source FROM deliveries WHERE id = ?1")
            .and_then(|mut s| s.query_row(params![delivery_id], |r| Ok((r.get(0)?, r.get(1)?))))
            .map_err(db)?;
        let job = LeasedJob {
            id,
            delivery_id,
            delivery,
            source,
            rule,
            target,
            request: from_json(&request)?,
            attempt: attempts.max(1) as u32,
            grouped,
            trace,
            ambiguous_since: ambiguous.map(from_millis),
            previous: model::pipeline_id(previous.as_deref())?,
        };
        out.push((due, job));
    }
    // Oldest due first, taken-over leases among them, as PostgreSQL hands them out.
    out.sort_by_key(|(due, _)| *due);
    Ok(out.into_iter().map(|(_, job)| job).collect())
}

/// Record that an attempt was cut short (crash, shutdown past the grace period).
fn interrupted(tx: &Connection, job: &str, now_ms: i64, why: &str) -> Result<(), StoreError> {
    let n = next_attempt_number(tx, job)?;
    tx.prepare_cached(
        "INSERT INTO attempts (job_id, n, started_at, duration_ms, status, outcome, error, response)
         VALUES (?1, ?2, ?3, 0, NULL, ?5, ?4, NULL)",
    )
    .and_then(|mut s| s.execute(params![job, n, now_ms, why, model::INTERRUPTED]))
    .map_err(db)?;
    // Cut short, it may have been sent: ambiguous from its lease's start.
    tx.prepare_cached(
        "UPDATE jobs SET ambiguous_since = COALESCE(MIN(ambiguous_since, leased_at), ambiguous_since, leased_at, created_at)
         WHERE id = ?1",
    )
    .and_then(|mut s| s.execute(params![job]))
    .map_err(db)?;
    Ok(())
}

pub(super) fn release_leases(
    tx: &Connection,
    owner: Option<&str>,
    now: SystemTime,
) -> Result<(), StoreError> {
    let now_ms = millis(now);
    let held: Vec<(String, Option<String>)> = {
        let mut s = tx
            .prepare_cached("SELECT id, lease_owner FROM jobs WHERE state = 'running' AND (?1 IS NULL OR lease_owner = ?1)")
            .map_err(db)?;
        let rows = s
            .query_map(params![owner], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(db)?;
        rows.collect::<Result<_, _>>().map_err(db)?
    };
    // At start (no owner named): every lease but those of a hookbridge
    // still running here (a second daemon after the lock file was deleted
    // would otherwise send its attempts in flight again; they expire if
    // it is gone after all). A SQLite store has one host: another host
    // name is a previous container's.
    let ids = held.into_iter().filter(|(_, holder)| {
        owner.is_some() || holder.as_deref().is_none_or(|h| left_by(h) != Left::Running)
    });
    for (id, _) in ids {
        let id = &id;
        interrupted(tx, id, now_ms, model::STOPPED)?;
        tx.prepare_cached(
            "UPDATE jobs SET state = 'pending', lease_owner = NULL, lease_until = NULL, next_attempt_at = ?2, updated_at = ?2
             WHERE id = ?1",
        )
        .and_then(|mut s| s.execute(params![id, now_ms]))
        .map_err(db)?;
    }
    follow_ups::release(tx, owner, now)?;
    deferrals::release(tx, owner, now)?;
    statuses::release(tx, owner, now)
}

/// Record `attempt` of `job`, leased by `owner` as its attempt `lease`.
pub(super) fn record(
    tx: &Connection,
    (job, grouped): (&str, bool),
    delivery_id: &str,
    (owner, lease): (&str, u32),
    attempt: &Attempt,
    next: &Transition,
    now: SystemTime,
) -> Result<(), StoreError> {
    let exists: bool = tx
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM jobs WHERE id = ?1)")
        .and_then(|mut s| s.query_row(params![job], |r| r.get(0)))
        .map_err(db)?;
    if !exists {
        // Purged or gone: nothing left to record against (as on PostgreSQL).
        return Ok(());
    }
    let n = next_attempt_number(tx, job)?;
    let update = JobUpdate::after(next, attempt, now)?;
    tx.prepare_cached(
        "INSERT INTO attempts (job_id, n, started_at, duration_ms, status, outcome, error, response, reconcile)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )
    .and_then(|mut s| {
        s.execute(params![
            job,
            n,
            millis(attempt.started_at),
            attempt.duration.as_millis() as i64,
            attempt.status,
            next.outcome(),
            update.error,
            attempt.response,
            attempt.reconcile,
        ])
    })
    .map_err(db)?;
    let now_ms = millis(now);
    // Only the holder of this very lease moves the job (the attempt number
    // tells this lease from a later one of the same owner: a record retried
    // after its job was leased again must not end the new lease); a late
    // worker's attempt is still recorded above.
    // A job a newer one of its group superseded while its attempt was out
    // is due at once if it is to be retried: its next start ends it.
    let reports: Option<bool> = tx
        .prepare_cached(
            "UPDATE jobs SET state = ?3, lease_owner = NULL, lease_until = NULL,
                next_attempt_at = CASE WHEN ?3 = 'pending' AND superseded_by IS NOT NULL THEN ?7 ELSE ?4 END,
                last_error = ?5, result = COALESCE(?6, result), updated_at = ?7,
                ambiguous_since = COALESCE(MIN(ambiguous_since, ?9), ambiguous_since, ?9)
         WHERE id = ?1 AND lease_owner = ?2 AND state = 'running' AND attempts = ?8
         RETURNING status IS NOT NULL",
        )
        .and_then(|mut s| {
            s.query_row(
                params![
                    job,
                    owner,
                    update.state.as_str(),
                    update.next_attempt_at,
                    update.error,
                    update.result,
                    now_ms,
                    lease,
                    attempt.ambiguous.then(|| millis(attempt.started_at)),
                ],
                |r| r.get(0),
            )
            .optional()
        })
        .map_err(db)?;
    if grouped && matches!(next, Transition::Done(_)) {
        groups::created_late(tx, job, update.result.as_deref(), now_ms)?;
        groups::after_done(tx, job, now_ms)?;
    }
    follow_ups::after_attempt(tx, job, next, update.result.as_deref(), now_ms)?;
    // Statuses, for a job that reports them (a record that did not hold
    // its lease moved nothing, unless a superseded job kept its pipeline).
    if reports.unwrap_or(grouped) {
        statuses::sync(tx, job, now_ms)?;
    }
    refresh_status(tx, delivery_id)
}

pub(super) fn replay(
    tx: &Connection,
    key: &DeliveryKey,
    job: Option<&str>,
    now: SystemTime,
) -> Result<Vec<String>, StoreError> {
    let id = resolve(tx, key)?;
    let now_ms = millis(now);
    let ids: Vec<String> = {
        let mut s = tx
            .prepare_cached(
                "SELECT id FROM jobs WHERE delivery_id = ?1 AND (?2 IS NULL OR id = ?2) AND state != 'running' ORDER BY id",
            )
            .map_err(db)?;
        s.query_map(params![id, job], |r| r.get(0))
            .map_err(db)?
            .collect::<Result<_, _>>()
            .map_err(db)?
    };
    if let Some(j) = job
        && ids.is_empty()
    {
        let exists: bool = tx
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM jobs WHERE id = ?1 AND delivery_id = ?2)",
                params![j, id],
                |r| r.get(0),
            )
            .map_err(db)?;
        if !exists {
            return Err(model::job_not_found(j, key));
        }
    }
    // A job queued again runs anew: its old pipeline is no longer held
    // open, any cancel or follow-up of it is forgotten (its attempts stay
    // in the history), and it is the newest of its group.
    for j in &ids {
        tx.prepare_cached(
            "UPDATE jobs SET state = 'pending', attempts = 0, ambiguous_since = NULL, next_attempt_at = ?2, last_error = NULL,
                    superseded_by = NULL, cancel_by = NULL, pipeline_open = NULL, updated_at = ?2
             WHERE id = ?1",
        )
        .and_then(|mut s| s.execute(params![j, now_ms]))
        .and_then(|_| tx.prepare_cached("DELETE FROM cancels WHERE job_id = ?1"))
        .and_then(|mut s| s.execute(params![j]))
        .map_err(db)?;
        follow_ups::forget(tx, j)?;
    }
    groups::requeued(tx, &groups::grouped_of(tx, &ids)?, now_ms)?;
    ids.iter().try_for_each(|j| statuses::sync(tx, j, now_ms))?;
    refresh_status(tx, &id)?;
    Ok(ids)
}

pub(super) fn add_jobs(
    tx: &Connection,
    key: &DeliveryKey,
    jobs: &[NewJob],
    summary: &Summary,
    now: SystemTime,
) -> Result<(), StoreError> {
    let id = resolve(tx, key)?;
    for job in jobs {
        insert_job(tx, (&id, None), job, &to_json(&job.request)?, millis(now))?;
    }
    let added: Vec<String> = jobs.iter().map(|j| j.id.clone()).collect();
    groups::requeued(tx, &groups::grouped_of(tx, &added)?, millis(now))?;
    statuses::queued(tx, jobs, millis(now))?;
    deferrals::replace(tx, &id, &summary.deferred, millis(now))?;
    tx.execute(
        "UPDATE payloads SET summary = ?2 WHERE seq = (SELECT seq FROM deliveries WHERE id = ?1)",
        params![id, to_json(summary)?],
    )
    .map_err(db)?;
    refresh_status(tx, &id)
}
