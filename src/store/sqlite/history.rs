//! The history's reads, on the reader connections: resolve a key, list,
//! show, the stored payload, queue figures and the next due time.

use std::collections::BTreeMap;
use std::time::SystemTime;

use rusqlite::{Connection, OptionalExtension, params};

use super::db;
use crate::store::concurrency::{CancelDetail, CancelState};
use crate::store::model::{self, from_json};
use crate::store::query;
use crate::store::*;

/// Resolve a [`DeliveryKey`] to an internal id.
pub(super) fn resolve(conn: &Connection, key: &DeliveryKey) -> Result<String, StoreError> {
    let by_internal: Option<String> = conn
        .prepare_cached("SELECT id FROM deliveries WHERE id = ?1")
        .and_then(|mut s| s.query_row(params![key.id], |r| r.get(0)).optional())
        .map_err(db)?;
    if let Some(id) = by_internal {
        return Ok(id);
    }
    let mut s = conn
        .prepare_cached(
            "SELECT id, source FROM deliveries WHERE delivery = ?1 AND (?2 IS NULL OR source = ?2) ORDER BY source",
        )
        .map_err(db)?;
    let rows: Vec<(String, String)> = s
        .query_map(params![key.id, key.source], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(db)?
        .collect::<Result<_, _>>()
        .map_err(db)?;
    match rows.len() {
        0 => Err(StoreError::not_found(key.id.clone())),
        1 => Ok(rows[0].0.clone()),
        _ => Err(model::ambiguous(
            &key.id,
            rows.into_iter().map(|(_, s)| s).collect(),
        )),
    }
}

fn row_to_delivery(r: &rusqlite::Row<'_>) -> rusqlite::Result<(DeliveryRow, String)> {
    let status: String = r.get(8)?;
    Ok((
        DeliveryRow {
            id: r.get(0)?,
            source: r.get(1)?,
            delivery: r.get(2)?,
            received_at: r.get(3)?,
            event: r.get(4)?,
            kind: r.get(5)?,
            repository: r.get(6)?,
            git_ref: r.get(7)?,
            status: DeliveryStatus::parse(&status).unwrap_or(DeliveryStatus::Pending),
            jobs: r.get::<_, i64>(9)? as u32,
            sha: r.get(10)?,
        },
        status,
    ))
}

const DELIVERY_COLUMNS: &str =
    "d.id, d.source, d.delivery, d.received_at, d.event_name, d.kind, d.repository, d.git_ref, d.status,
     (SELECT COUNT(*) FROM jobs j WHERE j.delivery_id = d.id), d.sha";

pub(super) fn list(conn: &Connection, f: &DeliveryFilter) -> Result<Vec<DeliveryRow>, StoreError> {
    let (sql, args) = query::list(f, DELIVERY_COLUMNS, |n| format!("?{n}"), "");
    let args: Vec<rusqlite::types::Value> = args
        .into_iter()
        .map(|a| match a {
            query::Arg::Text(t) => rusqlite::types::Value::Text(t),
            query::Arg::Int(i) => rusqlite::types::Value::Integer(i),
        })
        .collect();
    let mut s = conn.prepare_cached(&sql).map_err(db)?;
    let rows = s
        .query_map(rusqlite::params_from_iter(args.iter()), row_to_delivery)
        .map_err(db)?;
    rows.map(|r| r.map(|(row, _)| row).map_err(db)).collect()
}

/// Every rule's verdicts since `since`, from the newest `cap` summaries.
pub(super) fn verdicts(
    conn: &Connection,
    since: SystemTime,
    cap: usize,
) -> Result<RecentVerdicts, StoreError> {
    let mut s = conn
        .prepare_cached(
            "SELECT p.summary, d.received_at FROM deliveries d JOIN payloads p ON p.seq = d.seq
             WHERE d.received_at >= ?1 ORDER BY d.received_at DESC LIMIT ?2",
        )
        .map_err(db)?;
    let limit = i64::try_from(cap.saturating_add(1)).unwrap_or(i64::MAX);
    let mut rows = s.query(params![millis(since), limit]).map_err(db)?;
    let mut verdicts = RecentVerdicts::default();
    let mut read = 0usize;
    while let Some(r) = rows.next().map_err(db)? {
        let received: i64 = r.get(1).map_err(db)?;
        if read == cap {
            verdicts.truncated_at = Some(received);
            break;
        }
        read += 1;
        verdicts.add(&r.get::<_, String>(0).map_err(db)?);
    }
    Ok(verdicts)
}

pub(super) fn get(conn: &Connection, key: &DeliveryKey) -> Result<DeliveryDetail, StoreError> {
    let id = resolve(conn, key)?;
    let (row, summary, event): (DeliveryRow, String, String) = conn
        .query_row(
            &format!(
                "SELECT {DELIVERY_COLUMNS}, p.summary, p.event FROM deliveries d JOIN payloads p ON p.seq = d.seq WHERE d.id = ?1"
            ),
            params![id],
            |r| Ok((row_to_delivery(r)?.0, r.get(11)?, r.get(12)?)),
        )
        .map_err(db)?;
    let mut jobs = Vec::new();
    let mut s = conn
        .prepare(
            "SELECT j.id, j.rule, j.target, j.state, j.attempts, j.next_attempt_at, j.last_error, j.result,
                    j.request, j.concurrency_group, s.id, s.delivery_id, sd.delivery, s.rule,
                    c.by_job, c.state, c.attempts, c.outcome
             FROM jobs j
             LEFT JOIN jobs s ON s.id = j.superseded_by AND j.state = 'superseded'
             LEFT JOIN deliveries sd ON sd.id = s.delivery_id
             LEFT JOIN cancels c ON c.job_id = j.id
             WHERE j.delivery_id = ?1 ORDER BY j.id",
        )
        .map_err(db)?;
    let rows: Vec<_> = s
        .query_map(params![id], |r| {
            let by = match (r.get::<_, Option<String>>(10)?, r.get::<_, Option<String>>(11)?) {
                (Some(job), Some(delivery_id)) => Some(SupersededBy {
                    job,
                    delivery_id,
                    delivery: r.get::<_, Option<String>>(12)?.unwrap_or_default(),
                    rule: r.get(13)?,
                }),
                _ => None,
            };
            let cancel = match r.get::<_, Option<String>>(14)? {
                Some(by_job) => Some(CancelDetail {
                    by_job,
                    state: CancelState::parse(&r.get::<_, String>(15)?).unwrap_or(CancelState::Pending),
                    attempts: u32::try_from(r.get::<_, i64>(16)?).unwrap_or(0),
                    outcome: r.get(17)?,
                }),
                None => None,
            };
            Ok((
                (
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, i64>(5)?,
                    r.get::<_, Option<String>>(6)?,
                    r.get::<_, Option<String>>(7)?,
                    r.get::<_, String>(8)?,
                ),
                (r.get::<_, Option<String>>(9)?, by, cancel),
            ))
        })
        .map_err(db)?
        .collect::<Result<_, _>>()
        .map_err(db)?;
    for (
        (job_id, rule, target, state, attempts, next, last_error, result, request),
        (group, superseded_by, cancel),
    ) in rows
    {
        let mut a = conn
            .prepare_cached(
                "SELECT n, started_at, duration_ms, status, outcome, error, response, reconcile FROM attempts WHERE job_id = ?1 ORDER BY n",
            )
            .map_err(db)?;
        let history = a
            .query_map(params![job_id], |r| {
                Ok(AttemptRow {
                    n: r.get::<_, i64>(0)? as u32,
                    started_at: r.get(1)?,
                    duration_ms: r.get(2)?,
                    status: r.get::<_, Option<i64>>(3)?.map(|s| s as u16),
                    outcome: r.get(4)?,
                    error: r.get(5)?,
                    response: r.get(6)?,
                    reconcile: r.get(7)?,
                })
            })
            .map_err(db)?
            .collect::<Result<_, _>>()
            .map_err(db)?;
        let (pipeline_state, statuses) = statuses_of(conn, &job_id)?;
        let state: JobState = state.parse()?;
        let waiting = state == JobState::Pending;
        jobs.push(JobDetail {
            id: job_id,
            rule,
            target,
            state,
            attempts: attempts as u32,
            next_attempt_at: waiting.then_some(next),
            last_error,
            result: result.as_deref().map(from_json).transpose()?,
            request: from_json(&request)?,
            group,
            superseded_by,
            cancel,
            pipeline_state,
            statuses,
            history,
        });
    }
    Ok(DeliveryDetail {
        row,
        summary: from_json(&summary)?,
        normalized: from_json(&event)?,
        jobs,
        deferrals: super::deferrals::rows(conn, &id)?,
    })
}

/// The stored inputs of a delivery.
pub(super) fn payload(c: &Connection, key: &DeliveryKey) -> Result<StoredPayload, StoreError> {
    let id = resolve(c, key)?;
    let (event, headers, payload): (String, String, Vec<u8>) = c
        .query_row(
            "SELECT p.event, p.headers, p.payload FROM deliveries d JOIN payloads p ON p.seq = d.seq WHERE d.id = ?1",
            params![id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .map_err(db)?;
    Ok(StoredPayload {
        event: from_json(&event)?,
        headers: from_json::<BTreeMap<String, String>>(&headers)?,
        payload,
    })
}

/// When the next pending job falls due (`jobs_due`), or the next lease runs
/// out (`jobs_lease`).
pub(super) const NEXT_DUE: &str = "SELECT MIN(t) FROM (
    SELECT MIN(next_attempt_at) AS t FROM jobs WHERE state = 'pending'
    UNION ALL SELECT MIN(lease_until) FROM jobs WHERE state = 'running')";

/// When the next pending job falls due, or the next lease runs out.
pub(super) fn next_due(c: &Connection) -> Result<Option<SystemTime>, StoreError> {
    let next: Option<i64> = c.query_row(NEXT_DUE, [], |r| r.get(0)).map_err(db)?;
    Ok(next.map(from_millis))
}

/// Queue figures for metrics.
pub(super) fn stats(c: &Connection) -> Result<QueueStats, StoreError> {
    let row = c
        .prepare_cached(model::QUEUE_STATS)
        .map_err(db)?
        .query_row([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, Option<i64>>(3)?,
            ))
        })
        .map_err(db)?;
    Ok(model::queue_stats(row))
}

/// [`Store::neighbours`].
pub(super) fn neighbours(
    c: &Connection,
    target: &str,
    job: &str,
    since: SystemTime,
) -> Result<Neighbours, StoreError> {
    let mut s = c.prepare_cached(model::NEIGHBOURS).map_err(db)?;
    let rows = s
        // Named: `$3` comes first in the text, so positions would not match.
        .query_map(
            rusqlite::named_params! {"$1": target, "$2": job, "$3": millis(since)},
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .map_err(db)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(db)?;
    model::neighbours(rows)
}

/// A job's pipeline state and the statuses it queued, oldest first.
fn statuses_of(c: &Connection, job: &str) -> Result<(Option<String>, Vec<StatusRow>), StoreError> {
    let pipeline: Option<String> = c
        .prepare_cached("SELECT pipeline_state FROM jobs WHERE id = ?1")
        .and_then(|mut s| s.query_row(params![job], |r| r.get(0)))
        .map_err(db)?;
    let rows = c
        .prepare_cached(
            "SELECT context, state, description, target_url, post, attempts, http_status, last_error, created_at,
                    updated_at
             FROM statuses WHERE job_id = ?1 ORDER BY seq",
        )
        .and_then(|mut s| {
            s.query_map(params![job], |r| {
                Ok(StatusRow {
                    context: r.get(0)?,
                    state: r.get(1)?,
                    description: r.get(2)?,
                    target_url: r.get(3)?,
                    post: r.get(4)?,
                    attempts: u32::try_from(r.get::<_, i64>(5)?).unwrap_or(0),
                    http_status: r.get::<_, Option<i64>>(6)?.and_then(|s| u16::try_from(s).ok()),
                    error: r.get(7)?,
                    created_at: r.get(8)?,
                    updated_at: r.get(9)?,
                })
            })?
            .collect()
        })
        .map_err(db)?;
    Ok((pipeline, rows))
}
