//! A batch of ingests or of attempt records, written in one transaction with
//! one multi-row statement per table (`UNNEST` of one array per column).
//!
//! Callers ([`super::write`]) hand in calls with distinct keys, sorted by key
//! (see [`super::batch::first_by_key`]); what a lone call writes is in
//! `queue`, and a batch writes the same rows.

use std::collections::HashMap;
use std::time::SystemTime;

use sqlx::Row;

use super::queue::{Tx, duplicate, notify, refresh_status};
use super::{db, to_json};
use crate::store::model::JobUpdate;
use crate::store::*;

/// Store `deliveries`, each with its payload and jobs; a delivery another
/// transaction stored first is answered as a duplicate. One `NOTIFY` for
/// the batch when it queued jobs and is to `announce` them, or queued
/// dead jobs of a duplicate again (which may be any replica's to run).
pub(super) async fn ingest(
    tx: &mut Tx,
    deliveries: &[&NewDelivery],
    announce: bool,
) -> Result<Vec<Ingested>, StoreError> {
    let n = deliveries.len();
    let mut ids = Vec::with_capacity(n);
    let mut sources = Vec::with_capacity(n);
    let mut keys = Vec::with_capacity(n);
    let mut received = Vec::with_capacity(n);
    let mut names = Vec::with_capacity(n);
    let mut kinds = Vec::with_capacity(n);
    let mut repositories = Vec::with_capacity(n);
    let mut refs = Vec::with_capacity(n);
    let mut statuses = Vec::with_capacity(n);
    for d in deliveries {
        ids.push(d.id.as_str());
        sources.push(d.source.as_str());
        keys.push(d.delivery.as_str());
        received.push(millis(d.received_at));
        names.push(d.event.name.as_str());
        kinds.push(d.event.kind.as_str());
        repositories.push(d.event.repository.as_deref());
        refs.push(d.event.git_ref.as_deref());
        statuses.push(if d.jobs.is_empty() { "skipped" } else { "pending" });
    }
    // Waits for a concurrent insert of the same (delivery, source) to finish.
    let rows = sqlx::query(
        "INSERT INTO deliveries (id, source, delivery, received_at, event_name, kind, repository, git_ref, status)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[], $5::text[], $6::text[],
                              $7::text[], $8::text[], $9::text[])
         ON CONFLICT (delivery, source) DO NOTHING
         RETURNING id, seq",
    )
    .bind(&ids)
    .bind(&sources)
    .bind(&keys)
    .bind(&received)
    .bind(&names)
    .bind(&kinds)
    .bind(&repositories)
    .bind(&refs)
    .bind(&statuses)
    .fetch_all(&mut **tx)
    .await
    .map_err(db)?;
    let mut stored: HashMap<String, i64> = HashMap::with_capacity(rows.len());
    for r in rows {
        stored.insert(r.try_get(0).map_err(db)?, r.try_get(1).map_err(db)?);
    }
    let fresh: Vec<(&NewDelivery, i64)> = deliveries
        .iter()
        .filter_map(|d| stored.get(&d.id).map(|seq| (*d, *seq)))
        .collect();
    insert_payloads(tx, &fresh).await?;
    let queued = insert_jobs(tx, &fresh).await?;
    let mut requeued_any = false;
    let mut out = Vec::with_capacity(n);
    for d in deliveries {
        if stored.contains_key(&d.id) {
            out.push(Ingested::Stored);
        } else {
            let seen = duplicate(tx, d).await?;
            requeued_any |= matches!(seen, Ingested::Duplicate { requeued, .. } if requeued > 0);
            out.push(seen);
        }
    }
    if (announce && queued > 0) || requeued_any {
        notify(tx).await?;
    }
    Ok(out)
}

async fn insert_payloads(tx: &mut Tx, fresh: &[(&NewDelivery, i64)]) -> Result<(), StoreError> {
    if fresh.is_empty() {
        return Ok(());
    }
    let mut seqs = Vec::with_capacity(fresh.len());
    let mut summaries = Vec::with_capacity(fresh.len());
    let mut events = Vec::with_capacity(fresh.len());
    let mut headers = Vec::with_capacity(fresh.len());
    let mut payloads: Vec<&[u8]> = Vec::with_capacity(fresh.len());
    for (d, seq) in fresh {
        seqs.push(*seq);
        summaries.push(to_json(&d.summary)?);
        events.push(to_json(&d.event)?);
        headers.push(to_json(&d.headers)?);
        payloads.push(d.payload.as_ref());
    }
    sqlx::query(
        "INSERT INTO payloads (seq, summary, event, headers, payload)
         SELECT * FROM UNNEST($1::int8[], $2::text[], $3::text[], $4::text[], $5::bytea[])",
    )
    .bind(&seqs)
    .bind(&summaries)
    .bind(&events)
    .bind(&headers)
    .bind(&payloads)
    .execute(&mut **tx)
    .await
    .map_err(db)?;
    Ok(())
}

/// The jobs of the deliveries just stored, due at their delivery's arrival.
async fn insert_jobs(tx: &mut Tx, fresh: &[(&NewDelivery, i64)]) -> Result<usize, StoreError> {
    let jobs: Vec<(&NewDelivery, &NewJob)> = fresh
        .iter()
        .flat_map(|(d, _)| d.jobs.iter().map(move |j| (*d, j)))
        .collect();
    if jobs.is_empty() {
        return Ok(0);
    }
    let mut ids = Vec::with_capacity(jobs.len());
    let mut deliveries = Vec::with_capacity(jobs.len());
    let mut rules = Vec::with_capacity(jobs.len());
    let mut targets = Vec::with_capacity(jobs.len());
    let mut requests = Vec::with_capacity(jobs.len());
    let mut due = Vec::with_capacity(jobs.len());
    for (d, j) in &jobs {
        ids.push(j.id.as_str());
        deliveries.push(d.id.as_str());
        rules.push(j.rule.as_str());
        targets.push(j.target.as_str());
        requests.push(to_json(&j.request)?);
        due.push(millis(d.received_at));
    }
    sqlx::query(
        "INSERT INTO jobs (id, delivery_id, rule, target, request, state, attempts, next_attempt_at, created_at, updated_at)
         SELECT id, delivery_id, rule, target, request, 'pending', 0, due, due, due
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int8[])
              AS u(id, delivery_id, rule, target, request, due)",
    )
    .bind(&ids)
    .bind(&deliveries)
    .bind(&rules)
    .bind(&targets)
    .bind(&requests)
    .bind(&due)
    .execute(&mut **tx)
    .await
    .map_err(db)?;
    Ok(jobs.len())
}

/// One attempt to record, owned so it can wait in a batch.
pub(super) struct Record {
    pub job: String,
    pub delivery_id: String,
    pub owner: String,
    pub attempt: Attempt,
    pub next: Transition,
    pub now: SystemTime,
}

/// Record `records` (distinct jobs, sorted by job id): each attempt is
/// numbered after its job's last one and always kept; the job moves only
/// for the worker that still holds its lease; the deliveries' statuses
/// follow. A job purged meanwhile records nothing.
pub(super) async fn record(tx: &mut Tx, records: &[&Record]) -> Result<(), StoreError> {
    let ids: Vec<&str> = records.iter().map(|r| r.job.as_str()).collect();
    // The jobs' row locks, in id order, order these attempts against a lease
    // takeover (which notes an interrupted attempt).
    let live: Vec<String> =
        sqlx::query_scalar("SELECT id FROM jobs WHERE id = ANY($1) ORDER BY id FOR UPDATE")
            .bind(&ids)
            .fetch_all(&mut **tx)
            .await
            .map_err(db)?;
    // Read after the locks are held, in a statement of its own: its snapshot
    // sees an attempt a takeover committed while this one waited.
    let last: HashMap<String, i32> = sqlx::query_as(
        "SELECT u.id, COALESCE((SELECT MAX(a.n) FROM attempts a WHERE a.job_id = u.id), 0)
         FROM UNNEST($1::text[]) AS u(id)",
    )
    .bind(&live)
    .fetch_all(&mut **tx)
    .await
    .map_err(db)?
    .into_iter()
    .collect();
    if last.is_empty() {
        return Ok(());
    }
    let records: Vec<&Record> = records
        .iter()
        .copied()
        .filter(|r| last.contains_key(&r.job))
        .collect();
    let updates = records
        .iter()
        .map(|r| JobUpdate::after(&r.next, &r.attempt, r.now))
        .collect::<Result<Vec<_>, _>>()?;
    insert_attempts(tx, &records, &updates, &last).await?;
    move_jobs(tx, &records, &updates).await?;
    let mut deliveries: Vec<&str> = records.iter().map(|r| r.delivery_id.as_str()).collect();
    deliveries.sort_unstable();
    deliveries.dedup();
    refresh_status(tx, &deliveries).await
}

async fn insert_attempts(
    tx: &mut Tx,
    records: &[&Record],
    updates: &[JobUpdate],
    last: &HashMap<String, i32>,
) -> Result<(), StoreError> {
    let n = records.len();
    let (mut jobs, mut numbers, mut started, mut durations) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut statuses, mut outcomes, mut errors, mut responses) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for (r, u) in records.iter().zip(updates) {
        jobs.push(r.job.as_str());
        numbers.push(last.get(&r.job).copied().unwrap_or(0).saturating_add(1));
        started.push(millis(r.attempt.started_at));
        durations.push(i64::try_from(r.attempt.duration.as_millis()).unwrap_or(i64::MAX));
        statuses.push(r.attempt.status.map(i32::from));
        outcomes.push(r.next.outcome());
        errors.push(u.error.as_deref());
        responses.push(r.attempt.response.as_deref());
    }
    sqlx::query(
        "INSERT INTO attempts (job_id, n, started_at, duration_ms, status, outcome, error, response)
         SELECT * FROM UNNEST($1::text[], $2::int4[], $3::int8[], $4::int8[], $5::int4[], $6::text[],
                              $7::text[], $8::text[])",
    )
    .bind(&jobs)
    .bind(&numbers)
    .bind(&started)
    .bind(&durations)
    .bind(&statuses)
    .bind(&outcomes)
    .bind(&errors)
    .bind(&responses)
    .execute(&mut **tx)
    .await
    .map_err(db)?;
    Ok(())
}

/// Only the lease holder moves its job; a late worker's attempt is recorded all the same.
async fn move_jobs(tx: &mut Tx, records: &[&Record], updates: &[JobUpdate]) -> Result<(), StoreError> {
    let ids: Vec<&str> = records.iter().map(|r| r.job.as_str()).collect();
    let owners: Vec<&str> = records.iter().map(|r| r.owner.as_str()).collect();
    let states: Vec<&str> = updates.iter().map(|u| u.state.as_str()).collect();
    let due: Vec<i64> = updates.iter().map(|u| u.next_attempt_at).collect();
    let errors: Vec<Option<&str>> = updates.iter().map(|u| u.error.as_deref()).collect();
    let results: Vec<Option<&str>> = updates.iter().map(|u| u.result.as_deref()).collect();
    let now: Vec<i64> = records.iter().map(|r| millis(r.now)).collect();
    sqlx::query(
        "UPDATE jobs j SET state = u.state, next_attempt_at = u.due, lease_owner = NULL, lease_until = NULL,
                last_error = u.error, result = COALESCE(u.result, j.result), updated_at = u.now
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[], $5::text[], $6::text[], $7::int8[])
              AS u(id, owner, state, due, error, result, now)
         WHERE j.id = u.id AND j.lease_owner = u.owner AND j.state = 'running'",
    )
    .bind(&ids)
    .bind(&owners)
    .bind(&states)
    .bind(&due)
    .bind(&errors)
    .bind(&results)
    .bind(&now)
    .execute(&mut **tx)
    .await
    .map_err(db)?;
    Ok(())
}
