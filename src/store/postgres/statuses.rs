//! Commit statuses on PostgreSQL ([`crate::store::status`]), as on SQLite
//! (`sqlite::statuses`; what each write does is the model's,
//! [`sync`](crate::store::status::sync)): queueing the statuses jobs want,
//! a batch of jobs at a time for the batched writes (ingests, attempt
//! records), and what completion events and watches' reads learn. The
//! queues of posts and watches are `status_queue`'s.
//!
//! Each write here runs under the row locks of the jobs it moves, taken by
//! the caller (a record, a replay, a superseding ingest) or here (a
//! completion event, a watch's read); a job just inserted is its
//! transaction's alone. Statuses are queued under the advisory locks of
//! their subjects, so that of two transactions queueing for one commit and
//! context the later sees the earlier's statuses (deduplication) and
//! numbers its own after them (order of posts).

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use sqlx::Row;

use super::status::{Tx, lock_job, text};
use super::{completions, db};
use crate::event::Event;
use crate::store::status::sync::{self, Plan, STORED_COLUMNS, Stored};
use crate::store::status::{LeasedWatch, NewStatus, PipelineState, WatchRecord};
use crate::store::{NewDelivery, StoreError, millis};

/// Jobs with a status spec among `$1`, in its order.
static SYNC_SELECT: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {STORED_COLUMNS} FROM UNNEST($1::text[]) WITH ORDINALITY AS u(id, n)
         JOIN jobs j ON j.id = u.id LEFT JOIN watches w ON w.job_id = j.id
         WHERE j.status IS NOT NULL ORDER BY u.n"
    )
});

/// Queue the statuses `jobs` (each with its clock, ms) want, in this
/// order, that differ from the latest queued for their subjects; first
/// forget what an earlier round learned of a job queued again, and start
/// watching a followed pipeline just created. Jobs without a status spec
/// are left alone (one query finds none).
pub(super) async fn sync(tx: &mut Tx, jobs: &[(&str, i64)]) -> Result<(), StoreError> {
    let created = sync_once(tx, jobs).await?;
    // Completion events that came before these records (a pipeline that
    // finished at once, a trigger reconciled later) tell them now; the
    // jobs they move already carry their pipeline, so this ends.
    let mut moved = Vec::new();
    for (event, at) in completions::early(tx, &created).await? {
        moved.extend(completions::apply(tx, &event, at).await?);
    }
    let moved: Vec<(&str, i64)> = moved.iter().map(|(j, at)| (j.as_str(), *at)).collect();
    if !moved.is_empty() {
        sync_once(tx, &moved).await?;
    }
    Ok(())
}

/// One round of [`sync`]: the pipeline ids it recorded.
async fn sync_once(tx: &mut Tx, jobs: &[(&str, i64)]) -> Result<Vec<String>, StoreError> {
    let mut seen = HashSet::with_capacity(jobs.len());
    let jobs: Vec<(&str, i64)> = jobs.iter().copied().filter(|(j, _)| seen.insert(*j)).collect();
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<&str> = jobs.iter().map(|(j, _)| *j).collect();
    let clock: HashMap<&str, i64> = jobs.iter().copied().collect();
    let rows = sqlx::query(&SYNC_SELECT)
        .bind(&ids)
        .fetch_all(&mut **tx)
        .await
        .map_err(db)?;
    let mut plans = Vec::with_capacity(rows.len());
    for r in rows {
        let stored = Stored {
            id: r.try_get(0).map_err(db)?,
            state: r.try_get(1).map_err(db)?,
            request: r.try_get(2).map_err(db)?,
            result: r.try_get(3).map_err(db)?,
            last_error: r.try_get(4).map_err(db)?,
            spec: r.try_get(5).map_err(db)?,
            pipeline: r.try_get(6).map_err(db)?,
            pipeline_id: r.try_get(7).map_err(db)?,
            superseded_by: r.try_get(8).map_err(db)?,
            watched: r.try_get(9).map_err(db)?,
            facts: r.try_get(10).map_err(db)?,
        };
        let now = clock.get(stored.id.as_str()).copied().unwrap_or_default();
        plans.push((sync::plan(&stored, now)?, now));
    }
    if plans.is_empty() {
        return Ok(Vec::new());
    }
    pipelines(tx, &plans).await?;
    queue(tx, &plans).await?;
    Ok(plans.into_iter().filter_map(|(p, _)| p.pipeline_id).collect())
}

/// What `plans` change of the jobs' pipelines and watches.
async fn pipelines(tx: &mut Tx, plans: &[(Plan, i64)]) -> Result<(), StoreError> {
    let reset: Vec<&str> = plans
        .iter()
        .filter(|(p, _)| p.reset)
        .map(|(p, _)| p.job.as_str())
        .collect();
    if !reset.is_empty() {
        for sql in [
            "DELETE FROM watches WHERE job_id = ANY($1)",
            "UPDATE jobs SET pipeline_state = NULL, pipeline_id = NULL WHERE id = ANY($1)",
        ] {
            sqlx::query(sql)
                .bind(&reset)
                .execute(&mut **tx)
                .await
                .map_err(db)?;
        }
    }
    let (jobs, created): (Vec<&str>, Vec<&str>) = plans
        .iter()
        .filter_map(|(p, _)| p.pipeline_id.as_deref().map(|id| (p.job.as_str(), id)))
        .unzip();
    if !jobs.is_empty() {
        sqlx::query(
            "UPDATE jobs j SET pipeline_id = u.pipeline, pipeline_state = COALESCE(j.pipeline_state, 'created')
             FROM UNNEST($1::text[], $2::text[]) AS u(id, pipeline) WHERE j.id = u.id",
        )
        .bind(&jobs)
        .bind(created.iter().map(|c| text(c)).collect::<Vec<_>>())
        .execute(&mut **tx)
        .await
        .map_err(db)?;
    }
    let watched: Vec<(&str, (i64, i64), i64)> = plans
        .iter()
        .filter_map(|(p, now)| p.watch.map(|w| (p.job.as_str(), w, *now)))
        .collect();
    if !watched.is_empty() {
        sqlx::query(
            "INSERT INTO watches (job_id, state, checks, next_check_at, deadline, created_at, updated_at)
             SELECT u.id, 'pending', 0, u.first, u.deadline, u.now, u.now
             FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::int8[]) AS u(id, first, deadline, now)
             ON CONFLICT (job_id) DO NOTHING",
        )
        .bind(watched.iter().map(|w| w.0).collect::<Vec<_>>())
        .bind(watched.iter().map(|w| w.1.0).collect::<Vec<_>>())
        .bind(watched.iter().map(|w| w.1.1).collect::<Vec<_>>())
        .bind(watched.iter().map(|w| w.2).collect::<Vec<_>>())
        .execute(&mut **tx)
        .await
        .map_err(db)?;
    }
    Ok(())
}

/// Queue what `plans` want, under their subjects' locks (in key order),
/// leaving out each status equal to the latest of its subject, counting
/// those queued before it here.
async fn queue(tx: &mut Tx, plans: &[(Plan, i64)]) -> Result<(), StoreError> {
    let mut subjects: Vec<String> = plans
        .iter()
        .flat_map(|(p, _)| p.wanted.iter().map(|w| text(&w.subject).into_owned()))
        .collect();
    subjects.sort_unstable();
    subjects.dedup();
    if subjects.is_empty() {
        return Ok(());
    }
    let mut keys: Vec<i64> = subjects.iter().map(|s| super::status::lock_key(s)).collect();
    keys.sort_unstable();
    keys.dedup();
    sqlx::query("SELECT pg_advisory_xact_lock(k) FROM UNNEST($1::int8[]) AS k")
        .bind(&keys)
        .execute(&mut **tx)
        .await
        .map_err(db)?;
    // Each job's own latest status of each subject, not a dead one: two
    // jobs on one commit and context do not re-post each other's, and a
    // status the VCS refused may be queued again.
    let mut pairs: Vec<(String, String)> = plans
        .iter()
        .flat_map(|(p, _)| {
            p.wanted
                .iter()
                .map(|w| (p.job.clone(), text(&w.subject).into_owned()))
        })
        .collect();
    pairs.sort_unstable();
    pairs.dedup();
    let (jobs, subjects): (Vec<String>, Vec<String>) = pairs.into_iter().unzip();
    let mut latest: HashMap<(String, String), (String, String)> = sqlx::query_as(
        "SELECT u.job, u.subject, l.state, l.description FROM UNNEST($1::text[], $2::text[]) AS u(job, subject)
         CROSS JOIN LATERAL (SELECT state, description FROM statuses s
                             WHERE s.subject = u.subject AND s.job_id = u.job AND s.post <> 'dead'
                             ORDER BY s.seq DESC LIMIT 1) AS l",
    )
    .bind(&jobs)
    .bind(&subjects)
    .fetch_all(&mut **tx)
    .await
    .map_err(db)?
    .into_iter()
    .map(|(job, subject, state, description)| ((job, subject), (state, description)))
    .collect();
    let mut rows: Vec<[Option<String>; 6]> = Vec::new();
    let mut clock = Vec::new();
    for (plan, now) in plans {
        for w in &plan.wanted {
            // As stored: a `text` column holds no NUL.
            let subject = text(&w.subject).into_owned();
            let status = NewStatus {
                description: text(&w.status.description).into_owned(),
                ..w.status.clone()
            };
            let key = (plan.job.clone(), subject.clone());
            let last = latest.get(&key).map(|(s, d)| (s.as_str(), d.as_str()));
            if sync::repeats(last, &status) {
                continue;
            }
            let (state, description) = (status.state.as_str(), status.description);
            latest.insert(key, (state.to_owned(), description.clone()));
            rows.push([
                Some(plan.job.clone()),
                Some(subject),
                Some(text(&w.context).into_owned()),
                Some(state.to_owned()),
                Some(description),
                w.status.target_url.as_deref().map(|u| text(u).into_owned()),
            ]);
            clock.push(*now);
        }
    }
    if rows.is_empty() {
        return Ok(());
    }
    let column = |i: usize| rows.iter().map(|r| r[i].clone()).collect::<Vec<Option<String>>>();
    sqlx::query(
        "INSERT INTO statuses (job_id, subject, context, state, description, target_url, post, attempts,
                               next_attempt_at, created_at, updated_at)
         SELECT u.job, u.subject, u.context, u.state, u.description, u.url, 'pending', 0, u.now, u.now, u.now
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int8[])
              WITH ORDINALITY AS u(job, subject, context, state, description, url, now, n)
         ORDER BY u.n",
    )
    .bind(column(0))
    .bind(column(1))
    .bind(column(2))
    .bind(column(3))
    .bind(column(4))
    .bind(column(5))
    .bind(&clock)
    .execute(&mut **tx)
    .await
    .map_err(db)?;
    Ok(())
}

/// After an ingest batch stored `stored` (id to `seq`) of `deliveries`:
/// "queued" for their new jobs that report statuses (after what they
/// superseded, so that a newer job of one commit and context reports
/// last), then what their completion events tell, oldest first.
pub(super) async fn ingested(
    tx: &mut Tx,
    deliveries: &[&NewDelivery],
    stored: &HashMap<String, i64>,
) -> Result<(), StoreError> {
    let fresh = || deliveries.iter().filter(|d| stored.contains_key(&d.id));
    let jobs: Vec<(&str, i64)> = fresh()
        .flat_map(|d| {
            let at = millis(d.received_at);
            d.jobs
                .iter()
                .filter(|j| j.status.is_some())
                .map(move |j| (j.id.as_str(), at))
        })
        .collect();
    sync(tx, &jobs).await?;
    let mut runs: Vec<(i64, &Event)> = fresh()
        .filter(|d| d.event.pipeline.is_some())
        .map(|d| (millis(d.received_at), &d.event))
        .collect();
    runs.sort_by_key(|(at, _)| *at);
    for (at, event) in runs {
        completion(tx, event, at).await?;
    }
    Ok(())
}

/// Whether an ingest batch has work here: a job that reports statuses,
/// or a completion event.
pub(super) fn involved(deliveries: &[&NewDelivery]) -> bool {
    deliveries.iter().any(|d| {
        (d.event.pipeline.is_some() && d.event.kind == crate::event::kind::PIPELINE)
            || d.jobs.iter().any(|j| j.status.is_some())
    })
}

/// Record a watch's read and queue the statuses it causes, if `owner`
/// still holds this lease of the watch (the job's row lock first, as
/// every write to a job and its queues).
pub(super) async fn record_watch(
    tx: &mut Tx,
    w: &LeasedWatch,
    owner: &str,
    record: &WatchRecord,
    now_ms: i64,
) -> Result<(), StoreError> {
    if !lock_job(tx, &w.job).await? {
        return Ok(());
    }
    let held: Option<(Option<String>, bool, Option<String>)> = sqlx::query_as(
        "SELECT w.facts, w.woken = 1, j.pipeline_state FROM watches w JOIN jobs j ON j.id = w.job_id
         WHERE w.job_id = $1 AND w.state = 'running' AND w.lease_owner = $2 AND w.checks = $3",
    )
    .bind(&w.job)
    .bind(owner)
    .bind(i32::try_from(w.check).unwrap_or(i32::MAX))
    .fetch_optional(&mut **tx)
    .await
    .map_err(db)?;
    let Some((facts, woken, current)) = held else {
        return Ok(());
    };
    let current = current.as_deref().and_then(PipelineState::parse);
    let read = sync::after_read(facts.as_deref(), woken, current, record, now_ms)?;
    sqlx::query(
        "UPDATE watches SET state = $2, next_check_at = $3, facts = $4, lease_owner = NULL, lease_until = NULL,
                updated_at = $5
         WHERE job_id = $1",
    )
    .bind(&w.job)
    .bind(read.state)
    .bind(read.next)
    .bind(&read.facts)
    .bind(now_ms)
    .execute(&mut **tx)
    .await
    .map_err(db)?;
    if let Some(p) = record.pipeline {
        completions::learn(tx, &w.job, current, p).await?;
    }
    sync(tx, &[(w.job.as_str(), now_ms)]).await
}

/// Give back the statuses and watches `owner` leased, due at `now_ms`.
pub(super) async fn release(tx: &mut Tx, owner: &str, now_ms: i64) -> Result<(), StoreError> {
    for sql in [
        "UPDATE statuses SET post = 'pending', lease_owner = NULL, lease_until = NULL, next_attempt_at = $2,
                updated_at = $2
         WHERE post = 'running' AND lease_owner = $1",
        "UPDATE watches SET state = 'pending', lease_owner = NULL, lease_until = NULL, next_check_at = $2,
                updated_at = $2
         WHERE state = 'running' AND lease_owner = $1",
    ] {
        sqlx::query(sql)
            .bind(owner)
            .bind(now_ms)
            .execute(&mut **tx)
            .await
            .map_err(db)?;
    }
    Ok(())
}

/// A completion event (a GitLab `Pipeline Hook`, a CircleCI
/// `workflow-completed`): what it tells of the pipelines of jobs that
/// report statuses (found by pipeline id, locked), as on SQLite.
pub(super) async fn completion(tx: &mut Tx, event: &Event, now: i64) -> Result<(), StoreError> {
    let moved = completions::apply(tx, event, now).await?;
    let moved: Vec<(&str, i64)> = moved.iter().map(|(j, at)| (j.as_str(), *at)).collect();
    sync(tx, &moved).await
}
