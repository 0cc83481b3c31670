//! Reads of the delivery history: resolving a delivery key, listing, one
//! delivery with its jobs and attempts, its stored payload, queue figures.

use crate::store::concurrency::{CancelDetail, CancelState};
use std::collections::BTreeMap;

use sqlx::postgres::{PgPool, PgRow};
use sqlx::{PgConnection, Row};

use super::{db, from_json};
use crate::store::model;
use crate::store::query;
use crate::store::*;

/// Resolve a [`DeliveryKey`] to an internal id.
pub(super) async fn resolve(conn: &mut PgConnection, key: &DeliveryKey) -> Result<String, StoreError> {
    // A `text` column holds no NUL, and PostgreSQL refuses to compare with
    // one: such a key names no delivery.
    if key.id.contains('\0') || key.source.as_deref().is_some_and(|s| s.contains('\0')) {
        return Err(StoreError::not_found(key.id.replace('\0', "\\0")));
    }
    let by_internal: Option<String> = sqlx::query_scalar("SELECT id FROM deliveries WHERE id = $1")
        .bind(&key.id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db)?;
    if let Some(id) = by_internal {
        return Ok(id);
    }
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT id, source FROM deliveries WHERE delivery = $1 AND ($2::TEXT IS NULL OR source = $2) ORDER BY source",
    )
    .bind(&key.id)
    .bind(&key.source)
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?;
    match rows.as_slice() {
        [] => Err(StoreError::not_found(key.id.clone())),
        [(id, _)] => Ok(id.clone()),
        _ => Err(model::ambiguous(
            &key.id,
            rows.into_iter().map(|(_, s)| s).collect(),
        )),
    }
}

const DELIVERY_COLUMNS: &str =
    "d.id, d.source, d.delivery, d.received_at, d.event_name, d.kind, d.repository, d.git_ref, d.status,
     (SELECT COUNT(*) FROM jobs j WHERE j.delivery_id = d.id), d.sha";

fn row_to_delivery(r: &PgRow) -> Result<DeliveryRow, StoreError> {
    let status: String = r.try_get(8).map_err(db)?;
    Ok(DeliveryRow {
        id: r.try_get(0).map_err(db)?,
        source: r.try_get(1).map_err(db)?,
        delivery: r.try_get(2).map_err(db)?,
        received_at: r.try_get(3).map_err(db)?,
        event: r.try_get(4).map_err(db)?,
        kind: r.try_get(5).map_err(db)?,
        repository: r.try_get(6).map_err(db)?,
        git_ref: r.try_get(7).map_err(db)?,
        status: DeliveryStatus::parse(&status).unwrap_or(DeliveryStatus::Pending),
        jobs: r.try_get::<i64, _>(9).map_err(db)? as u32,
        sha: r.try_get(10).map_err(db)?,
    })
}

pub(super) async fn list(pool: &PgPool, f: &DeliveryFilter) -> Result<Vec<DeliveryRow>, StoreError> {
    let (sql, args) = query::list(f, DELIVERY_COLUMNS, |n| format!("${n}"), " COLLATE \"C\"");
    let mut q = sqlx::query(&sql);
    for a in args {
        q = match a {
            query::Arg::Text(t) => q.bind(t),
            query::Arg::Int(i) => q.bind(i),
        };
    }
    let rows = q.fetch_all(pool).await.map_err(db)?;
    rows.iter().map(row_to_delivery).collect()
}

/// Every rule's verdicts since `since`, from the newest `cap` summaries.
pub(super) async fn verdicts(pool: &PgPool, since: i64, cap: usize) -> Result<RecentVerdicts, StoreError> {
    let limit = i64::try_from(cap.saturating_add(1)).unwrap_or(i64::MAX);
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT p.summary, d.received_at FROM deliveries d JOIN payloads p ON p.seq = d.seq
         WHERE d.received_at >= $1 ORDER BY d.received_at DESC LIMIT $2",
    )
    .bind(since)
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(db)?;
    let mut verdicts = RecentVerdicts::default();
    for (n, (summary, received)) in rows.iter().enumerate() {
        if n == cap {
            verdicts.truncated_at = Some(*received);
            break;
        }
        verdicts.add(summary);
    }
    Ok(verdicts)
}

pub(super) async fn get(pool: &PgPool, key: &DeliveryKey) -> Result<DeliveryDetail, StoreError> {
    let mut conn = pool.acquire().await.map_err(db)?;
    let id = resolve(&mut conn, key).await?;
    drop(conn);
    let r = sqlx::query(&format!(
        "SELECT {DELIVERY_COLUMNS}, p.summary, p.event FROM deliveries d JOIN payloads p ON p.seq = d.seq
         WHERE d.id = $1"
    ))
    .bind(&id)
    .fetch_one(pool)
    .await
    .map_err(db)?;
    let row = row_to_delivery(&r)?;
    let summary: String = r.try_get(11).map_err(db)?;
    let event: String = r.try_get(12).map_err(db)?;
    let job_rows = sqlx::query(
        "SELECT j.id, j.rule, j.target, j.state, j.attempts, j.next_attempt_at, j.last_error, j.result,
                j.request, j.concurrency_group, s.id, s.delivery_id, sd.delivery, s.rule,
                c.by_job, c.state, c.attempts, c.outcome, j.pipeline_state
         FROM jobs j
         LEFT JOIN jobs s ON s.id = j.superseded_by AND j.state = 'superseded'
         LEFT JOIN deliveries sd ON sd.id = s.delivery_id
         LEFT JOIN cancels c ON c.job_id = j.id
         WHERE j.delivery_id = $1 ORDER BY j.id",
    )
    .bind(&id)
    .fetch_all(pool)
    .await
    .map_err(db)?;
    let mut jobs = Vec::with_capacity(job_rows.len());
    for j in job_rows {
        let job_id: String = j.try_get(0).map_err(db)?;
        let history = sqlx::query(
            "SELECT n, started_at, duration_ms, status, outcome, error, response, reconcile
             FROM attempts WHERE job_id = $1 ORDER BY n",
        )
        .bind(&job_id)
        .fetch_all(pool)
        .await
        .map_err(db)?
        .iter()
        .map(|a| {
            Ok(AttemptRow {
                n: a.try_get::<i32, _>(0).map_err(db)? as u32,
                started_at: a.try_get(1).map_err(db)?,
                duration_ms: a.try_get(2).map_err(db)?,
                status: a.try_get::<Option<i32>, _>(3).map_err(db)?.map(|s| s as u16),
                outcome: a.try_get(4).map_err(db)?,
                error: a.try_get(5).map_err(db)?,
                response: a.try_get(6).map_err(db)?,
                reconcile: a.try_get(7).map_err(db)?,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
        let state: String = j.try_get(3).map_err(db)?;
        let next: i64 = j.try_get(5).map_err(db)?;
        let result: Option<String> = j.try_get(7).map_err(db)?;
        let request: String = j.try_get(8).map_err(db)?;
        let state: JobState = state.parse()?;
        let waiting = state == JobState::Pending;
        let by: (Option<String>, Option<String>) = (j.try_get(10).map_err(db)?, j.try_get(11).map_err(db)?);
        let superseded_by = match by {
            (Some(job), Some(delivery_id)) => Some(SupersededBy {
                job,
                delivery_id,
                delivery: j
                    .try_get::<Option<String>, _>(12)
                    .map_err(db)?
                    .unwrap_or_default(),
                rule: j.try_get(13).map_err(db)?,
            }),
            _ => None,
        };
        let cancel = match j.try_get::<Option<String>, _>(14).map_err(db)? {
            Some(by_job) => Some(CancelDetail {
                by_job,
                state: CancelState::parse(&j.try_get::<String, _>(15).map_err(db)?)
                    .unwrap_or(CancelState::Pending),
                attempts: u32::try_from(j.try_get::<i32, _>(16).map_err(db)?).unwrap_or(0),
                outcome: j.try_get(17).map_err(db)?,
            }),
            None => None,
        };
        let statuses = statuses_of(pool, &job_id).await?;
        jobs.push(JobDetail {
            id: job_id,
            rule: j.try_get(1).map_err(db)?,
            target: j.try_get(2).map_err(db)?,
            state,
            attempts: j.try_get::<i32, _>(4).map_err(db)? as u32,
            next_attempt_at: waiting.then_some(next),
            last_error: j.try_get(6).map_err(db)?,
            result: result.as_deref().map(from_json).transpose()?,
            request: from_json(&request)?,
            group: j.try_get(9).map_err(db)?,
            superseded_by,
            cancel,
            pipeline_state: j.try_get(18).map_err(db)?,
            statuses,
            history,
        });
    }
    Ok(DeliveryDetail {
        row,
        summary: from_json(&summary)?,
        normalized: from_json(&event)?,
        jobs,
        deferrals: super::deferrals::rows(pool, &id).await?,
    })
}

/// A delivery's stored inputs, for re-evaluating rules.
pub(super) async fn payload(pool: &PgPool, key: &DeliveryKey) -> Result<StoredPayload, StoreError> {
    let mut conn = pool.acquire().await.map_err(db)?;
    let id = resolve(&mut conn, key).await?;
    drop(conn);
    let (event, headers, payload): (String, String, Vec<u8>) = sqlx::query_as(
        "SELECT p.event, p.headers, p.payload FROM deliveries d JOIN payloads p ON p.seq = d.seq
         WHERE d.id = $1",
    )
    .bind(&id)
    .fetch_one(pool)
    .await
    .map_err(db)?;
    Ok(StoredPayload {
        event: from_json(&event)?,
        headers: from_json::<BTreeMap<String, String>>(&headers)?,
        payload,
    })
}

/// Jobs per state, and when the oldest unfinished one was created.
pub(super) async fn stats(pool: &PgPool) -> Result<QueueStats, StoreError> {
    let row = sqlx::query_as(model::QUEUE_STATS)
        .fetch_one(pool)
        .await
        .map_err(db)?;
    Ok(model::queue_stats(row))
}

/// [`Store::neighbours`].
pub(super) async fn neighbours(
    pool: &PgPool,
    target: &str,
    job: &str,
    since: SystemTime,
) -> Result<Neighbours, StoreError> {
    let rows: Vec<(Option<String>, String, bool)> = sqlx::query_as(model::NEIGHBOURS)
        .bind(target)
        .bind(job)
        .bind(millis(since))
        .fetch_all(pool)
        .await
        .map_err(db)?;
    model::neighbours(rows)
}

/// The statuses a job queued, oldest first.
async fn statuses_of(pool: &PgPool, job: &str) -> Result<Vec<StatusRow>, StoreError> {
    sqlx::query(
        "SELECT context, state, description, target_url, post, attempts, http_status, last_error, created_at,
                updated_at
         FROM statuses WHERE job_id = $1 ORDER BY seq",
    )
    .bind(job)
    .fetch_all(pool)
    .await
    .map_err(db)?
    .iter()
    .map(|r| {
        Ok(StatusRow {
            context: r.try_get(0).map_err(db)?,
            state: r.try_get(1).map_err(db)?,
            description: r.try_get(2).map_err(db)?,
            target_url: r.try_get(3).map_err(db)?,
            post: r.try_get(4).map_err(db)?,
            attempts: u32::try_from(r.try_get::<i32, _>(5).map_err(db)?).unwrap_or(0),
            http_status: r
                .try_get::<Option<i32>, _>(6)
                .map_err(db)?
                .and_then(|s| u16::try_from(s).ok()),
            error: r.try_get(7).map_err(db)?,
            created_at: r.try_get(8).map_err(db)?,
            updated_at: r.try_get(9).map_err(db)?,
        })
    })
    .collect()
}
