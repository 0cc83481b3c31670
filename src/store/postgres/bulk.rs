//! A batch of ingests or of attempt records, written with multi-row
//! statements (`UNNEST` of one array per column): an ingest batch as one
//! statement, a record batch as three in one transaction.
//!
//! Callers ([`super::write`]) hand in calls with distinct keys, sorted by key
//! (see [`super::batch::first_by_key`]); what a lone call writes is in
//! `queue`, and a batch writes the same rows.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::time::SystemTime;

use sqlx::Row;
use sqlx::postgres::PgPool;

use super::error::refused_by_server;
use super::queue::{Tx, duplicate, notify, refresh_status};
use super::{db, to_json};
use crate::store::handoff::{Claim, Handoff};
use crate::store::model::JobUpdate;
use crate::store::*;

/// Store `deliveries`, each with its payload and jobs, in one statement
/// (its own transaction: one round trip and one commit for the batch); a
/// delivery another transaction stored first is answered as a duplicate,
/// in a second transaction. One `NOTIFY` for the batch, after its commit,
/// when it queued jobs and is to `announce` them, or queued dead jobs of a
/// duplicate again (which may be any replica's to run).
///
/// With a `handoff` (this process runs a dispatcher), as many of the
/// batch's jobs as the dispatcher has free slots are written leased to it
/// and handed over once committed (see [`crate::store::handoff`]).
///
/// `statement` runs the insert, `pool` the rest (see `write`). When the
/// second transaction fails after the first committed, every call fails;
/// a sender that tries again is answered as a duplicate of what it stored.
pub(super) async fn ingest(
    (statement, pool): (&PgPool, &PgPool),
    deliveries: &[&NewDelivery],
    announce: bool,
    handoff: Option<&Handoff>,
) -> Result<Vec<Ingested>, StoreError> {
    let jobs: usize = deliveries.iter().map(|d| d.jobs.len()).sum();
    let claim = handoff.map(|h| h.claim(jobs));
    let stored = match insert(statement, deliveries, claim.as_ref()).await {
        Ok(stored) => stored,
        Err(e) => {
            // Lost with the connection, the statement may have committed with
            // only its answer lost: jobs leased to a dispatcher that never
            // gets them. (One the server refused did not commit, and its
            // calls may be written again alone, with the same job ids.)
            if let Some(claim) = claim.filter(|c| !c.is_empty() && !refused_by_server(&e)) {
                let leased = deliveries.iter().flat_map(|d| &d.jobs).take(claim.len());
                let ids = leased.map(|j| j.id.clone()).collect();
                let lease = (claim.owner.clone(), millis(claim.until));
                tokio::spawn(give_back_soon(pool.clone(), ids, lease));
            }
            return Err(e);
        }
    };
    // Jobs stored due (not leased to this replica's dispatcher).
    let queued = match (handoff, claim) {
        (Some(handoff), Some(claim)) => hand_over(pool, handoff, claim, deliveries, &stored).await,
        _ => deliveries
            .iter()
            .filter(|d| stored.contains_key(&d.id))
            .map(|d| d.jobs.len())
            .sum(),
    };
    let mut out = Vec::with_capacity(deliveries.len());
    let mut requeued_any = false;
    if stored.len() == deliveries.len() {
        out.resize_with(deliveries.len(), || Ingested::Stored);
    } else {
        let mut tx: Tx = pool.begin().await.map_err(db)?;
        for d in deliveries {
            if stored.contains_key(&d.id) {
                out.push(Ingested::Stored);
            } else {
                let seen = duplicate(&mut tx, d).await?;
                requeued_any |= matches!(seen, Ingested::Duplicate { requeued, .. } if requeued > 0);
                out.push(seen);
            }
        }
        tx.commit().await.map_err(db)?;
    }
    if (announce && queued > 0) || requeued_any {
        notify(pool).await?;
    }
    Ok(out)
}

/// Hand the jobs `claim` leased and the batch stored to the dispatcher (see
/// [`Handoff`]); answers how many stored jobs were left due. Jobs it can no
/// longer take (it stopped) are given back at once, or, failing that, when
/// their lease expires.
async fn hand_over(
    pool: &PgPool,
    handoff: &Handoff,
    claim: Claim,
    deliveries: &[&NewDelivery],
    stored: &HashMap<String, i64>,
) -> usize {
    let leased = claim.len();
    let lease = (claim.owner.clone(), millis(claim.until));
    let mut handed = Vec::with_capacity(leased);
    let mut left_due = 0;
    let jobs = deliveries
        .iter()
        .flat_map(|d| d.jobs.iter().map(move |j| (*d, j)));
    for (i, (d, j)) in jobs.enumerate() {
        if !stored.contains_key(&d.id) {
            continue;
        }
        if i < leased {
            handed.push(LeasedJob {
                id: j.id.clone(),
                delivery_id: d.id.clone(),
                delivery: d.delivery.clone(),
                source: d.source.clone(),
                rule: j.rule.clone(),
                target: j.target.clone(),
                request: j.request.clone(),
                attempt: 1,
            });
        } else {
            left_due += 1;
        }
    }
    let refused = handoff.deliver(claim, handed, left_due > 0);
    if !refused.is_empty()
        && let Err(e) = give_back(pool, &refused, &lease).await
    {
        tracing::warn!(error = %e, jobs = refused.len(), "cannot give back jobs stored for a stopped dispatcher; they run when their lease expires");
    }
    left_due
}

/// Jobs leased at ingest (to `lease`: owner and expiry) that no attempt
/// took: due again, as if never leased, and announced. Jobs not under that
/// very lease (never stored, or leased again since) are left alone.
async fn give_back(pool: &PgPool, jobs: &[String], lease: &(String, i64)) -> Result<(), StoreError> {
    let mut tx: Tx = pool.begin().await.map_err(db)?;
    let moved = sqlx::query(
        "UPDATE jobs SET state = 'pending', lease_owner = NULL, lease_until = NULL, attempts = 0
         WHERE id = ANY($1) AND state = 'running' AND lease_owner = $2 AND lease_until = $3 AND attempts = 1",
    )
    .bind(jobs)
    .bind(&lease.0)
    .bind(lease.1)
    .execute(&mut *tx)
    .await
    .map_err(db)?
    .rows_affected();
    if moved > 0 {
        notify(&mut *tx).await?;
    }
    tx.commit().await.map_err(db)
}

/// After an ingest statement failed, in case it committed all the same:
/// give back what it would have leased, trying every few seconds while the
/// server is away (a minute in all; after that, the lease expires as after
/// a crash).
async fn give_back_soon(pool: PgPool, jobs: Vec<String>, lease: (String, i64)) {
    for _ in 0..12 {
        match give_back(&pool, &jobs, &lease).await {
            Ok(()) => return,
            Err(e) => tracing::debug!(error = %e, "cannot give back jobs of a failed ingest yet"),
        }
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    }
    tracing::warn!(
        jobs = jobs.len(),
        "cannot give back jobs of an ingest whose answer was lost; if it was stored, they run when their lease expires"
    );
}

/// Two optional columns of text, made fit by [`text`].
type TextPair<'a> = (Option<Cow<'a, str>>, Option<Cow<'a, str>>);

/// Text for a `text` column, which cannot hold NUL (SQLSTATE 22021, a
/// write that would fail on every try): a repository or ref decoded from a
/// payload's `\u0000`, a CI's raw answer. NUL is shown as U+FFFD.
pub(super) fn text(s: &str) -> Cow<'_, str> {
    if s.contains('\0') {
        Cow::Owned(s.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(s)
    }
}

/// The one statement of a batch: deliveries, payloads and jobs, one
/// `UNNEST` per table; answers the deliveries it stored, by id, with their
/// `seq`. `ON CONFLICT` waits for a concurrent insert of the same
/// (delivery, source) to finish, then leaves that delivery out.
async fn insert(
    pool: &PgPool,
    deliveries: &[&NewDelivery],
    claim: Option<&Claim>,
) -> Result<HashMap<String, i64>, StoreError> {
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
    let mut summaries = Vec::with_capacity(n);
    let mut events = Vec::with_capacity(n);
    let mut headers = Vec::with_capacity(n);
    let mut payloads: Vec<&[u8]> = Vec::with_capacity(n);
    let searchable: Vec<TextPair> = deliveries
        .iter()
        .map(|d| {
            (
                d.event.repository.as_deref().map(text),
                d.event.git_ref.as_deref().map(text),
            )
        })
        .collect();
    for (d, (repository, git_ref)) in deliveries.iter().zip(&searchable) {
        ids.push(d.id.as_str());
        sources.push(d.source.as_str());
        keys.push(d.delivery.as_str());
        received.push(millis(d.received_at));
        names.push(d.event.name.as_str());
        kinds.push(d.event.kind.as_str());
        repositories.push(repository.as_deref());
        refs.push(git_ref.as_deref());
        statuses.push(if d.jobs.is_empty() { "skipped" } else { "pending" });
        summaries.push(to_json(&d.summary)?);
        events.push(to_json(&d.event)?);
        headers.push(to_json(&d.headers)?);
        payloads.push(d.payload.as_ref());
    }
    let jobs: Vec<(&NewDelivery, &NewJob)> = deliveries
        .iter()
        .flat_map(|d| d.jobs.iter().map(move |j| (*d, j)))
        .collect();
    let mut job_ids = Vec::with_capacity(jobs.len());
    let mut job_deliveries = Vec::with_capacity(jobs.len());
    let mut rules = Vec::with_capacity(jobs.len());
    let mut targets = Vec::with_capacity(jobs.len());
    let mut requests = Vec::with_capacity(jobs.len());
    let mut due = Vec::with_capacity(jobs.len());
    for (d, j) in &jobs {
        job_ids.push(j.id.as_str());
        job_deliveries.push(d.id.as_str());
        rules.push(j.rule.as_str());
        targets.push(j.target.as_str());
        requests.push(to_json(&j.request)?);
        due.push(millis(d.received_at));
    }
    let rows = sqlx::query(
        "WITH d AS (
            INSERT INTO deliveries (id, source, delivery, received_at, event_name, kind, repository, git_ref, status)
            SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[], $5::text[], $6::text[],
                                 $7::text[], $8::text[], $9::text[])
            ON CONFLICT (delivery, source) DO NOTHING
            RETURNING id, seq),
         p AS (
            INSERT INTO payloads (seq, summary, event, headers, payload)
            SELECT d.seq, u.summary, u.event, u.headers, u.payload
            FROM UNNEST($1::text[], $10::text[], $11::text[], $12::text[], $13::bytea[])
                 AS u(id, summary, event, headers, payload)
            JOIN d ON d.id = u.id),
         j AS (
            INSERT INTO jobs (id, delivery_id, rule, target, request, state, attempts, next_attempt_at,
                              created_at, updated_at, lease_owner, lease_until)
            SELECT u.id, u.delivery_id, u.rule, u.target, u.request,
                   CASE WHEN u.n <= $20 THEN 'running' ELSE 'pending' END,
                   CASE WHEN u.n <= $20 THEN 1 ELSE 0 END,
                   u.due, u.due, u.due,
                   CASE WHEN u.n <= $20 THEN $21::text END,
                   CASE WHEN u.n <= $20 THEN $22::int8 END
            FROM UNNEST($14::text[], $15::text[], $16::text[], $17::text[], $18::text[], $19::int8[])
                 WITH ORDINALITY AS u(id, delivery_id, rule, target, request, due, n)
            WHERE u.delivery_id IN (SELECT id FROM d))
         SELECT id, seq FROM d",
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
    .bind(&summaries)
    .bind(&events)
    .bind(&headers)
    .bind(&payloads)
    .bind(&job_ids)
    .bind(&job_deliveries)
    .bind(&rules)
    .bind(&targets)
    .bind(&requests)
    .bind(&due)
    .bind(claim.map_or(0, |c| i64::try_from(c.len()).unwrap_or(i64::MAX)))
    .bind(claim.map(|c| c.owner.as_str()))
    .bind(claim.map(|c| millis(c.until)))
    .fetch_all(pool)
    .await
    .map_err(db)?;
    let mut stored = HashMap::with_capacity(rows.len());
    for r in rows {
        stored.insert(r.try_get(0).map_err(db)?, r.try_get(1).map_err(db)?);
    }
    Ok(stored)
}

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
}

/// Record `records` (distinct jobs, sorted by job id): each attempt is
/// numbered after its job's last one and always kept; the job moves only
/// for the worker that still holds this lease (owner and attempt number);
/// the deliveries' statuses follow. A job purged meanwhile records nothing.
pub(super) async fn record(tx: &mut Tx, records: &[&Record]) -> Result<(), StoreError> {
    let ids: Vec<&str> = records.iter().map(|r| r.job.as_str()).collect();
    // The jobs' row locks, in id order, order these attempts against a lease
    // takeover (which notes an interrupted attempt).
    let live: HashSet<String> =
        sqlx::query_scalar("SELECT id FROM jobs WHERE id = ANY($1) ORDER BY id FOR UPDATE")
            .bind(&ids)
            .fetch_all(&mut **tx)
            .await
            .map_err(db)?
            .into_iter()
            .collect();
    let records: Vec<&Record> = records
        .iter()
        .copied()
        .filter(|r| live.contains(&r.job))
        .collect();
    if records.is_empty() {
        return Ok(());
    }
    let updates = records
        .iter()
        .map(|r| JobUpdate::after(&r.next, &r.attempt, r.now))
        .collect::<Result<Vec<_>, _>>()?;
    attempts_and_jobs(tx, &records, &updates).await?;
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
/// alone); a late worker's attempt is recorded all the same.
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
    let texts: Vec<TextPair> = records
        .iter()
        .zip(updates)
        .map(|(r, u)| {
            (
                u.error.as_deref().map(text),
                r.attempt.response.as_deref().map(text),
            )
        })
        .collect();
    for ((r, u), (error, response)) in records.iter().zip(updates).zip(&texts) {
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
    }
    sqlx::query(
        "WITH u AS (
            SELECT * FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::int4[], $5::text[], $6::text[],
                                 $7::text[], $8::text[], $9::text[], $10::int8[], $11::text[], $12::int8[],
                                 $13::int4[])
                 AS u(job, started, duration, status, outcome, error, response, owner, state, due, result, now,
                      lease)),
         a AS (
            INSERT INTO attempts (job_id, n, started_at, duration_ms, status, outcome, error, response)
            SELECT u.job, COALESCE((SELECT MAX(x.n) FROM attempts x WHERE x.job_id = u.job), 0) + 1,
                   u.started, u.duration, u.status, u.outcome, u.error, u.response
            FROM u)
         UPDATE jobs j SET state = u.state, next_attempt_at = u.due, lease_owner = NULL, lease_until = NULL,
                last_error = u.error, result = COALESCE(u.result, j.result), updated_at = u.now
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
    .execute(&mut **tx)
    .await
    .map_err(db)?;
    Ok(())
}
