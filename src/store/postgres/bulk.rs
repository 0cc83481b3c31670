//! A batch of ingests or of attempt records, written with multi-row
//! statements (`UNNEST` of one array per column): an ingest batch as one
//! statement (in a transaction with what else it writes when its jobs are
//! grouped or report commit statuses), a record batch as three in one
//! transaction.
//!
//! Callers ([`super::write`]) hand in calls with distinct keys, sorted by key
//! (see [`super::batch::first_by_key`]); what a lone call writes is in
//! `queue`, and a batch writes the same rows.

use std::borrow::Cow;
use std::collections::HashMap;

use sqlx::Row;
use sqlx::postgres::PgPool;

use super::error::refused_by_server;
use super::queue::{Tx, duplicate, notify};
use super::{db, deferrals, groups, statuses, to_json};
use crate::store::handoff::{Claim, Handoff};
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
    // A batch with concurrency groups supersedes under the groups' locks,
    // in a transaction of its own, and leases nothing at ingest: each
    // attempt of a grouped job starts through the store.
    let grouped = deliveries
        .iter()
        .any(|d| d.jobs.iter().any(|j| j.group.is_some()));
    let claim = handoff.map(|h| h.claim(if grouped { 0 } else { jobs }));
    // A batch that queues commit statuses (or learns what they report), or
    // defers rules, is a transaction of its own too, its jobs leased as
    // usual: the statuses and deferrals are stored with the deliveries that
    // cause them. (Most batches do neither, and stay one statement.)
    let own_tx = grouped || statuses::involved(deliveries) || deferrals::involved(deliveries);
    let (inserted, mut superseded) = if own_tx {
        match insert_in_tx(pool, deliveries, grouped, claim.as_ref()).await {
            Ok((stored, superseded)) => (Ok(stored), superseded),
            Err(e) => (Err(e), HashMap::new()),
        }
    } else {
        let inserted = insert(statement, deliveries, claim.as_ref(), &HashMap::new()).await;
        (inserted, HashMap::new())
    };
    let stored = match inserted {
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
    let mut stored_one = |id: &str| Ingested::Stored {
        superseded: superseded.remove(id).unwrap_or_default(),
    };
    if stored.len() == deliveries.len() {
        out.extend(deliveries.iter().map(|d| stored_one(&d.id)));
    } else {
        let mut tx: Tx = pool.begin().await.map_err(db)?;
        for d in deliveries {
            if stored.contains_key(&d.id) {
                out.push(stored_one(&d.id));
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
                grouped: false,
                trace: d.trace.clone(),
                ambiguous_since: None,
                previous: None,
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

/// Store `deliveries` in a transaction of its own: with `grouped` jobs,
/// superseding (see [`super::groups`]; `claim` is then empty), with the
/// commit statuses they queue and what completion events among them tell
/// (see [`super::statuses`]), and with the rules they defer (see
/// [`super::deferrals`]); answers the deliveries stored (id to
/// `seq`) and, by delivery id, what each one's jobs superseded.
async fn insert_in_tx(
    pool: &PgPool,
    deliveries: &[&NewDelivery],
    grouped: bool,
    claim: Option<&Claim>,
) -> Result<(HashMap<String, i64>, HashMap<String, Vec<Superseded>>), StoreError> {
    let mut tx: Tx = pool.begin().await.map_err(db)?;
    let planned = if grouped {
        Some(groups::plan(&mut tx, deliveries).await?)
    } else {
        None
    };
    let no_notes = HashMap::new();
    let notes = planned.as_ref().map_or(&no_notes, |p| &p.notes);
    let stored = insert(&mut *tx, deliveries, claim, notes).await?;
    if let Some(planned) = &planned {
        if stored.len() != planned.fresh {
            // Stored by a replica that groups its jobs otherwise (another
            // config) since the plan: it no longer holds. Nothing is written;
            // the sender tries again and is answered as a duplicate.
            return Err(StoreError::unavailable(
                "a delivery of this batch was stored by another replica meanwhile",
            ));
        }
        let now = deliveries
            .iter()
            .map(|d| millis(d.received_at))
            .max()
            .unwrap_or(0);
        groups::apply(&mut tx, &planned.plan, now).await?;
    }
    statuses::ingested(&mut tx, deliveries, &stored).await?;
    deferrals::ingested(&mut tx, deliveries, &stored).await?;
    tx.commit().await.map_err(db)?;
    Ok((stored, planned.map(|p| p.notes).unwrap_or_default()))
}

/// Two optional columns of text, made fit by [`text`].
pub(super) type TextPair<'a> = (Option<Cow<'a, str>>, Option<Cow<'a, str>>);

/// Text for a `text` column (`status`, which every write shares).
pub(super) use super::status::text;

/// The one statement of a batch: deliveries, payloads and jobs, one
/// `UNNEST` per table; answers the deliveries it stored, by id, with their
/// `seq`. `ON CONFLICT` waits for a concurrent insert of the same
/// (delivery, source) to finish, then leaves that delivery out. A summary
/// names the jobs its delivery's jobs superseded (`notes`, by delivery id).
async fn insert<'e>(
    on: impl sqlx::PgExecutor<'e>,
    deliveries: &[&NewDelivery],
    claim: Option<&Claim>,
    notes: &HashMap<String, Vec<Superseded>>,
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
    // Lower case, as the search box compares it; NUL shown as for `text`.
    let shas: Vec<Option<String>> = deliveries
        .iter()
        .map(|d| d.event.sha.as_deref().map(|s| text(s).to_ascii_lowercase()))
        .collect();
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
        // Pending while a job or a deferred rule is open.
        let open = !d.jobs.is_empty() || !d.summary.deferred.is_empty();
        statuses.push(if open { "pending" } else { "skipped" });
        summaries.push(match notes.get(&d.id) {
            Some(superseded) => {
                let mut summary = d.summary.clone();
                crate::store::concurrency::note_superseded(&mut summary, superseded);
                to_json(&summary)?
            }
            None => to_json(&d.summary)?,
        });
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
    let mut delays = Vec::with_capacity(jobs.len());
    let mut groups = Vec::with_capacity(jobs.len());
    let mut cancels = Vec::with_capacity(jobs.len());
    let mut traces = Vec::with_capacity(jobs.len());
    let mut specs = Vec::with_capacity(jobs.len());
    for (d, j) in &jobs {
        job_ids.push(j.id.as_str());
        job_deliveries.push(d.id.as_str());
        rules.push(j.rule.as_str());
        targets.push(j.target.as_str());
        requests.push(to_json(&j.request)?);
        due.push(millis(d.received_at));
        delays.push(i64::try_from(j.delay.as_millis()).unwrap_or(i64::MAX));
        groups.push(j.group.as_deref());
        cancels.push(j.cancel.then_some(1_i32));
        traces.push(d.trace.as_deref());
        specs.push(j.status.as_ref().map(to_json).transpose()?);
    }
    let rows = sqlx::query(
        "WITH d AS (
            INSERT INTO deliveries (id, source, delivery, received_at, event_name, kind, repository, git_ref, status,
                                    sha)
            SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[], $5::text[], $6::text[],
                                 $7::text[], $8::text[], $9::text[], $26::text[])
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
                              created_at, updated_at, lease_owner, lease_until, concurrency_group,
                              cancel_in_progress, leased_at, trace_context, status)
            SELECT u.id, u.delivery_id, u.rule, u.target, u.request,
                   CASE WHEN u.n <= $20 THEN 'running' ELSE 'pending' END,
                   CASE WHEN u.n <= $20 THEN 1 ELSE 0 END,
                   u.due + u.delay, u.due, u.due,
                   CASE WHEN u.n <= $20 THEN $21::text END,
                   CASE WHEN u.n <= $20 THEN $22::int8 END,
                   u.grp, u.cancel,
                   CASE WHEN u.n <= $20 THEN u.due END, u.trace, u.status
            FROM UNNEST($14::text[], $15::text[], $16::text[], $17::text[], $18::text[], $19::int8[],
                        $23::int8[], $24::text[], $25::int4[], $27::text[], $28::text[])
                 WITH ORDINALITY AS u(id, delivery_id, rule, target, request, due, delay, grp, cancel, trace, status,
                                      n)
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
    .bind(&delays)
    .bind(&groups)
    .bind(&cancels)
    .bind(&shas)
    .bind(&traces)
    .bind(&specs)
    .fetch_all(on)
    .await
    .map_err(db)?;
    let mut stored = HashMap::with_capacity(rows.len());
    for r in rows {
        stored.insert(r.try_get(0).map_err(db)?, r.try_get(1).map_err(db)?);
    }
    Ok(stored)
}
