//! A batch of attempt records, written with multi-row statements (`UNNEST`
//! of one array per column): three in one transaction, and a fourth when
//! a record leaves a follow-up (`follow_ups`), and the statuses of jobs
//! that report them (`statuses`: the lock tells which do).
//!
//! Callers ([`super::write`]) hand in records of distinct jobs, sorted by
//! job id (see [`super::batch::first_by_key`]).

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::SystemTime;

use super::bulk::text;
use super::queue::{Tx, refresh_status};
use super::{db, follow_ups, groups, statuses};
use crate::store::follow::follows;
use crate::store::model::JobUpdate;
use crate::store::*;

/// One attempt to record, owned so it can wait in a batch.
pub(super) struct Record {
    pub job: String,
    pub delivery_id: String,
    pub owner: String,
    /// Which of the owner's leases of the job: its attempt number.
    pub lease: i32,
    pub attempt: Attempt,
    pub next: Transition,
    pub now: SystemTime,
    /// The job is in a concurrency group: a created pipeline may make
    /// cancels due (`groups::after_done`).
    pub grouped: bool,
}

/// The row locks of a record batch with created pipelines of groups.
/// Besides the batch's own jobs (`$1`): the newer jobs that are to cancel
/// the pipelines of its grouped done jobs (`$2`), and the older jobs whose
/// pipelines they are to cancel.
const LOCK_WITH_RELATED: &str = "SELECT id, status IS NOT NULL FROM jobs WHERE id IN (
        SELECT unnest($1::text[])
        UNION SELECT cancel_by FROM jobs WHERE id = ANY($2) AND cancel_by IS NOT NULL
        UNION SELECT id FROM jobs WHERE cancel_by = ANY($2))
    ORDER BY id FOR UPDATE";

/// Record `records` (distinct jobs, sorted by job id): each attempt is
/// numbered after its job's last one and always kept; the job moves only
/// for the worker that still holds this lease (owner and attempt number);
/// the deliveries' statuses follow. A job purged meanwhile records nothing.
pub(super) async fn record(tx: &mut Tx, records: &[&Record]) -> Result<(), StoreError> {
    let ids: Vec<&str> = records.iter().map(|r| r.job.as_str()).collect();
    let grouped_done: Vec<&str> = records
        .iter()
        .filter(|r| r.grouped && matches!(r.next, Transition::Done(_)))
        .map(|r| r.job.as_str())
        .collect();
    // The jobs' row locks, in id order, order these attempts against a lease
    // takeover (which notes an interrupted attempt). A created pipeline of a
    // group also locks, in the same order, the jobs whose cancels it may
    // make due, so that two records of one group see each other's commit.
    // Each with whether it reports commit statuses (`statuses`).
    let lock = if grouped_done.is_empty() {
        sqlx::query_as("SELECT id, status IS NOT NULL FROM jobs WHERE id = ANY($1) ORDER BY id FOR UPDATE")
            .bind(&ids)
    } else {
        sqlx::query_as(LOCK_WITH_RELATED).bind(&ids).bind(&grouped_done)
    };
    let live: HashMap<String, bool> = lock.fetch_all(&mut **tx).await.map_err(db)?.into_iter().collect();
    let records: Vec<&Record> = records
        .iter()
        .copied()
        .filter(|r| live.contains_key(&r.job))
        .collect();
    if records.is_empty() {
        return Ok(());
    }
    let updates = records
        .iter()
        .map(|r| JobUpdate::after(&r.next, &r.attempt, r.now))
        .collect::<Result<Vec<_>, _>>()?;
    attempts_and_jobs(tx, &records, &updates).await?;
    if !grouped_done.is_empty() {
        let now = records.iter().map(|r| millis(r.now)).max().unwrap_or(0);
        let created: Vec<(&str, &str)> = records
            .iter()
            .zip(&updates)
            .filter(|(r, _)| r.grouped)
            .filter_map(|(r, u)| u.result.as_deref().map(|res| (r.job.as_str(), res)))
            .collect();
        groups::created_late(tx, &created, now).await?;
        groups::after_done(tx, &grouped_done, now).await?;
    }
    let queued: Vec<(&str, &str, i64)> = records
        .iter()
        .zip(&updates)
        .filter(|(r, _)| follows(&r.next))
        .filter_map(|(r, u)| {
            u.result
                .as_deref()
                .map(|res| (r.job.as_str(), res, millis(r.now)))
        })
        .collect();
    if !queued.is_empty() {
        follow_ups::created(tx, &queued).await?;
    }
    let reporting: Vec<(&str, i64)> = records
        .iter()
        .filter(|r| live.get(&r.job).copied().unwrap_or_default())
        .map(|r| (r.job.as_str(), millis(r.now)))
        .collect();
    statuses::sync(tx, &reporting).await?;
    let mut deliveries: Vec<&str> = records.iter().map(|r| r.delivery_id.as_str()).collect();
    deliveries.sort_unstable();
    deliveries.dedup();
    refresh_status(tx, &deliveries).await
}

/// One statement: the attempts, each numbered after its job's last one
/// (read by this statement, issued once the locks are held, so it sees an
/// attempt a takeover committed meanwhile), and the jobs moved, only for
/// the worker that still holds this lease (owner and attempt number: a
/// record retried after its job was leased again leaves the new lease
/// alone); a late worker's attempt is recorded all the same. A job a newer
/// one of its group superseded while its attempt was out is due at once if
/// it is to be retried: its next start ends it.
async fn attempts_and_jobs(
    tx: &mut Tx,
    records: &[&Record],
    updates: &[JobUpdate],
) -> Result<(), StoreError> {
    let n = records.len();
    let (mut jobs, mut started, mut durations, mut statuses) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut outcomes, mut errors, mut responses, mut owners) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut states, mut due, mut results, mut now) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let mut leases = Vec::with_capacity(n);
    let mut ambiguous = Vec::with_capacity(n);
    // Error, response and reconcile decision, as `text` columns hold them.
    let texts: Vec<[Option<Cow<str>>; 3]> = records
        .iter()
        .zip(updates)
        .map(|(r, u)| {
            [
                u.error.as_deref().map(text),
                r.attempt.response.as_deref().map(text),
                r.attempt.reconcile.as_deref().map(text),
            ]
        })
        .collect();
    let mut reconciles = Vec::with_capacity(n);
    for ((r, u), [error, response, reconcile]) in records.iter().zip(updates).zip(&texts) {
        jobs.push(r.job.as_str());
        started.push(millis(r.attempt.started_at));
        durations.push(i64::try_from(r.attempt.duration.as_millis()).unwrap_or(i64::MAX));
        statuses.push(r.attempt.status.map(i32::from));
        outcomes.push(r.next.outcome());
        errors.push(error.as_deref());
        responses.push(response.as_deref());
        owners.push(r.owner.as_str());
        states.push(u.state.as_str());
        due.push(u.next_attempt_at);
        results.push(u.result.as_deref());
        now.push(millis(r.now));
        leases.push(r.lease);
        ambiguous.push(r.attempt.ambiguous.then(|| millis(r.attempt.started_at)));
        reconciles.push(reconcile.as_deref());
    }
    sqlx::query(
        "WITH u AS (
            SELECT * FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::int4[], $5::text[], $6::text[],
                                 $7::text[], $8::text[], $9::text[], $10::int8[], $11::text[], $12::int8[],
                                 $13::int4[], $14::int8[], $15::text[])
                 AS u(job, started, duration, status, outcome, error, response, owner, state, due, result, now,
                      lease, ambiguous, reconcile)),
         a AS (
            INSERT INTO attempts (job_id, n, started_at, duration_ms, status, outcome, error, response, reconcile)
            SELECT u.job, COALESCE((SELECT MAX(x.n) FROM attempts x WHERE x.job_id = u.job), 0) + 1,
                   u.started, u.duration, u.status, u.outcome, u.error, u.response, u.reconcile
            FROM u)
         UPDATE jobs j SET state = u.state, lease_owner = NULL, lease_until = NULL,
                next_attempt_at = CASE WHEN u.state = 'pending' AND j.superseded_by IS NOT NULL THEN u.now ELSE u.due END,
                last_error = u.error, result = COALESCE(u.result, j.result), updated_at = u.now,
                ambiguous_since = LEAST(j.ambiguous_since, u.ambiguous)
         FROM u
         WHERE j.id = u.job AND j.lease_owner = u.owner AND j.state = 'running' AND j.attempts = u.lease",
    )
    .bind(&jobs)
    .bind(&started)
    .bind(&durations)
    .bind(&statuses)
    .bind(&outcomes)
    .bind(&errors)
    .bind(&responses)
    .bind(&owners)
    .bind(&states)
    .bind(&due)
    .bind(&results)
    .bind(&now)
    .bind(&leases)
    .bind(&ambiguous)
    .bind(&reconciles)
    .execute(&mut **tx)
    .await
    .map_err(db)?;
    Ok(())
}
