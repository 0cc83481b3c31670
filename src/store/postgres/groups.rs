//! Concurrency groups on PostgreSQL: an ingest batch with grouped jobs is
//! one transaction that takes each of its groups' advisory locks (sorted,
//! so batches of several replicas wait for each other instead of
//! deadlocking), reads the groups' live jobs, stores the batch and ends
//! what its jobs superseded (the plan is the model's, [`concurrency::supersede`]).
//! The locks make the order of commits the order deliveries were stored:
//! of two replicas' jobs of one group, the later one supersedes the other.
//!
//! An attempt of a grouped job starts through [`start`]: the row lock its
//! update takes orders it against the ingest that reads the job `FOR
//! UPDATE`, so a job is either superseded before it goes out or goes out.

use std::collections::{HashMap, HashSet};
use std::time::SystemTime;

use sha2::Digest;
use sqlx::Row;
use sqlx::postgres::PgPool;

use super::db;
use super::status::{Tx, refresh_status};
use crate::store::concurrency::{self, GroupedJob, LiveJob, Requeued, Supersede};
use crate::store::{NewDelivery, Start, StoreError, Superseded, millis};

/// The advisory lock key of a group: the first 8 bytes of its SHA-256
/// (a collision only makes two groups wait for each other).
fn lock_key(group: &str) -> i64 {
    let digest = sha2::Sha256::digest(group.as_bytes());
    let mut key = [0u8; 8];
    key.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(key)
}

/// Take the advisory locks of `groups`, in key order (so that batches of
/// several replicas wait for each other instead of deadlocking).
pub(super) async fn lock_groups(tx: &mut Tx, groups: &[&str]) -> Result<(), StoreError> {
    let mut keys: Vec<i64> = groups.iter().map(|g| lock_key(g)).collect();
    keys.sort_unstable();
    keys.dedup();
    for key in keys {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(key)
            .execute(&mut **tx)
            .await
            .map_err(db)?;
    }
    Ok(())
}

/// The live jobs and open pipelines of the groups of `jobs`, locked. The
/// rows are read again once locked: the statement that locks them found
/// them in its snapshot, and a record that held a lock meanwhile may have
/// moved one on (a pipeline created, a job dead), which its classification
/// must see. The caller holds the groups' locks, so no job joins them.
async fn live(tx: &mut Tx, jobs: &[GroupedJob<'_>]) -> Result<Vec<LiveJob>, StoreError> {
    let mut groups: Vec<&str> = jobs.iter().map(|j| j.group).collect();
    groups.sort_unstable();
    groups.dedup();
    let locked: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM jobs WHERE id IN (
            SELECT id FROM jobs WHERE concurrency_group = ANY($1) AND (state = 'pending' OR state = 'running')
            UNION ALL SELECT id FROM jobs WHERE concurrency_group = ANY($1) AND pipeline_open = 1)
         ORDER BY id FOR UPDATE",
    )
    .bind(&groups)
    .fetch_all(&mut **tx)
    .await
    .map_err(db)?;
    sqlx::query(
        "SELECT id, delivery_id, concurrency_group, state = 'running' AND started_at IS NOT NULL,
                COALESCE(state = 'done' AND pipeline_open = 1, false)
         FROM jobs WHERE id = ANY($1) AND (state = 'pending' OR state = 'running' OR pipeline_open = 1)",
    )
    .bind(&locked)
    .fetch_all(&mut **tx)
    .await
    .map_err(db)?
    .into_iter()
    .map(|r| {
        Ok(LiveJob {
            id: r.try_get(0).map_err(db)?,
            delivery_id: r.try_get(1).map_err(db)?,
            group: r.try_get(2).map_err(db)?,
            started: r.try_get(3).map_err(db)?,
            open: r.try_get(4).map_err(db)?,
        })
    })
    .collect()
}

/// Jobs queued again (replay, re-evaluation, a redelivery's dead jobs):
/// each is the newest of its group, and supersedes the rest. The caller
/// took the groups' locks before it changed the jobs' rows.
pub(super) async fn requeued(tx: &mut Tx, jobs: &[Requeued], now: i64) -> Result<(), StoreError> {
    let grouped: Vec<GroupedJob<'_>> = jobs.iter().map(Requeued::grouped).collect();
    supersede(tx, &grouped, now).await.map(drop)
}

/// Jobs stored since the caller took their groups' locks (a settled
/// deferral's): each is the newest of its group, and supersedes the rest.
/// Answers what was superseded, for the summary.
pub(super) async fn supersede(
    tx: &mut Tx,
    grouped: &[GroupedJob<'_>],
    now: i64,
) -> Result<Supersede, StoreError> {
    if grouped.is_empty() {
        return Ok(Supersede::default());
    }
    let live = live(tx, grouped).await?;
    let plan = concurrency::supersede(live, grouped);
    apply(tx, &plan, now).await?;
    Ok(plan)
}

/// The groups of a delivery's jobs (one job, or all), to lock before
/// changing their rows.
pub(super) async fn groups_of(
    tx: &mut Tx,
    delivery_id: &str,
    job: Option<&str>,
) -> Result<Vec<String>, StoreError> {
    sqlx::query_scalar(
        "SELECT DISTINCT concurrency_group FROM jobs
         WHERE delivery_id = $1 AND ($2::TEXT IS NULL OR id = $2) AND concurrency_group IS NOT NULL",
    )
    .bind(delivery_id)
    .bind(job)
    .fetch_all(&mut **tx)
    .await
    .map_err(db)
}

/// What storing a batch with grouped jobs supersedes ([`plan`]).
pub(super) struct Planned {
    pub plan: Supersede,
    /// By delivery id: what each one's jobs superseded.
    pub notes: HashMap<String, Vec<Superseded>>,
    /// How many of the batch's deliveries are new (the rest are duplicates).
    pub fresh: usize,
}

/// Take the locks of the groups of `deliveries` and plan what storing them
/// supersedes, in `tx`; the caller inserts them, then [`apply`]s the plan.
pub(super) async fn plan(tx: &mut Tx, deliveries: &[&NewDelivery]) -> Result<Planned, StoreError> {
    let groups: Vec<&str> = deliveries
        .iter()
        .flat_map(|d| d.jobs.iter().filter_map(|j| j.group.as_deref()))
        .collect();
    lock_groups(tx, &groups).await?;
    // Under the locks, a delivery stored before is stored by now: its jobs
    // supersede nothing here (it is answered as a duplicate).
    let sources: Vec<&str> = deliveries.iter().map(|d| d.source.as_str()).collect();
    let ids: Vec<&str> = deliveries.iter().map(|d| d.delivery.as_str()).collect();
    let seen: HashSet<(String, String)> = sqlx::query_as(
        "SELECT d.source, d.delivery FROM deliveries d
         JOIN UNNEST($1::text[], $2::text[]) AS u(source, delivery)
           ON d.delivery = u.delivery AND d.source = u.source",
    )
    .bind(&sources)
    .bind(&ids)
    .fetch_all(&mut **tx)
    .await
    .map_err(db)?
    .into_iter()
    .collect();
    // A batch comes sorted by delivery id (for its row locks); a group's
    // newest job is the one received last.
    let mut fresh: Vec<&NewDelivery> = deliveries
        .iter()
        .copied()
        .filter(|d| !seen.contains(&(d.source.clone(), d.delivery.clone())))
        .collect();
    fresh.sort_by_key(|d| d.received_at);
    let grouped: Vec<GroupedJob<'_>> = fresh.iter().flat_map(|d| concurrency::grouped_jobs(d)).collect();
    let live = live(tx, &grouped).await?;
    let plan = concurrency::supersede(live, &grouped);
    let delivery_of: HashMap<&str, &str> = grouped.iter().map(|j| (j.id, j.delivery_id)).collect();
    let mut notes: HashMap<String, Vec<Superseded>> = HashMap::new();
    for s in &plan.superseded {
        if let Some(d) = delivery_of.get(s.by.as_str()) {
            notes.entry((*d).to_owned()).or_default().push(s.clone());
        }
    }
    Ok(Planned {
        plan,
        notes,
        fresh: fresh.len(),
    })
}

/// End what `plan` supersedes, once the batch is inserted (`now`: ms).
pub(super) async fn apply(tx: &mut Tx, plan: &Supersede, now: i64) -> Result<(), StoreError> {
    let (ended, by): (Vec<&str>, Vec<&str>) =
        plan.ended.iter().map(|(j, b)| (j.as_str(), b.as_str())).unzip();
    // Those that report commit statuses say so, in the plan's order.
    let reporting: HashSet<String> = sqlx::query_scalar::<_, Option<String>>(
        "UPDATE jobs j SET state = 'superseded', superseded_by = u.by, lease_owner = NULL, lease_until = NULL,
                next_attempt_at = $3, updated_at = $3
         FROM UNNEST($1::text[], $2::text[]) AS u(id, by) WHERE j.id = u.id
         RETURNING CASE WHEN j.status IS NOT NULL THEN j.id END",
    )
    .bind(&ended)
    .bind(&by)
    .bind(now)
    .fetch_all(&mut **tx)
    .await
    .map_err(db)?
    .into_iter()
    .flatten()
    .collect();
    let reporting: Vec<(&str, i64)> = ended
        .iter()
        .filter(|j| reporting.contains(**j))
        .map(|j| (*j, now))
        .collect();
    super::statuses::sync(tx, &reporting).await?;
    let (marked, by): (Vec<&str>, Vec<&str>) =
        plan.marked.iter().map(|(j, b)| (j.as_str(), b.as_str())).unzip();
    if !marked.is_empty() {
        sqlx::query(
            "UPDATE jobs j SET superseded_by = u.by, updated_at = $3
             FROM UNNEST($1::text[], $2::text[]) AS u(id, by) WHERE j.id = u.id",
        )
        .bind(&marked)
        .bind(&by)
        .bind(now)
        .execute(&mut **tx)
        .await
        .map_err(db)?;
    }
    if !plan.cancel_by.is_empty() {
        let (jobs, by): (Vec<&str>, Vec<Option<&str>>) = plan
            .cancel_by
            .iter()
            .map(|(j, b)| (j.as_str(), b.as_deref()))
            .unzip();
        // Without a newer job to cancel it, a pipeline is no longer held.
        sqlx::query(
            "UPDATE jobs j SET cancel_by = u.by,
                    pipeline_open = CASE WHEN u.by IS NULL THEN NULL ELSE j.pipeline_open END
             FROM UNNEST($1::text[], $2::text[]) AS u(id, by) WHERE j.id = u.id",
        )
        .bind(&jobs)
        .bind(&by)
        .execute(&mut **tx)
        .await
        .map_err(db)?;
    }
    let deliveries: Vec<&str> = plan.deliveries.iter().map(String::as_str).collect();
    refresh_status(tx, &deliveries).await
}

/// Let the attempt `lease` of `job` (leased by `owner`) go out, or end the
/// job if a newer one of its group superseded it while it was leased.
pub(super) async fn start(
    pool: &PgPool,
    job: &str,
    (owner, lease): (&str, i32),
    now: SystemTime,
) -> Result<Start, StoreError> {
    let mut tx: Tx = pool.begin().await.map_err(db)?;
    let row: Option<(String, String, bool)> = sqlx::query_as(
        "UPDATE jobs SET
            state = CASE WHEN superseded_by IS NULL THEN 'running' ELSE 'superseded' END,
            started_at = CASE WHEN superseded_by IS NULL THEN $4 END,
            lease_owner = CASE WHEN superseded_by IS NULL THEN lease_owner END,
            lease_until = CASE WHEN superseded_by IS NULL THEN lease_until END,
            updated_at = $4
         WHERE id = $1 AND lease_owner = $2 AND state = 'running' AND attempts = $3
         RETURNING state, delivery_id, status IS NOT NULL",
    )
    .bind(job)
    .bind(owner)
    .bind(lease)
    .bind(millis(now))
    .fetch_optional(&mut *tx)
    .await
    .map_err(db)?;
    let start = match row {
        None => Start::Gone,
        Some((state, _, _)) if state == "running" => Start::Go,
        Some((_, delivery, reporting)) => {
            if reporting {
                super::statuses::sync(&mut tx, &[(job, millis(now))]).await?;
            }
            refresh_status(&mut tx, &[delivery.as_str()]).await?;
            Start::Superseded
        }
    };
    tx.commit().await.map_err(db)?;
    Ok(start)
}

/// Pipelines created by attempts whose lease was taken over meanwhile, for
/// jobs their new workers found superseded (`created`: job and result): the
/// jobs did create them, so they are done with them, as on SQLite
/// (`sqlite::groups::created_late`).
pub(super) async fn created_late(tx: &mut Tx, created: &[(&str, &str)], now: i64) -> Result<(), StoreError> {
    let (jobs, results): (Vec<&str>, Vec<&str>) = created.iter().copied().unzip();
    sqlx::query(
        "UPDATE jobs j SET state = 'done', result = u.result, last_error = NULL, next_attempt_at = $3, updated_at = $3
         FROM UNNEST($1::text[], $2::text[]) AS u(id, result)
         WHERE j.id = u.id AND j.state = 'superseded'",
    )
    .bind(&jobs)
    .bind(&results)
    .bind(now)
    .execute(&mut **tx)
    .await
    .map_err(db)?;
    Ok(())
}

/// After jobs of groups recorded a created pipeline (`done`, sorted ids;
/// the caller holds their row locks and those of the jobs they are to
/// cancel or be cancelled by): their pipelines are open, and the cancels
/// they make due are queued, as on SQLite (`sqlite::groups::after_done`).
pub(super) async fn after_done(tx: &mut Tx, done: &[&str], now: i64) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE jobs SET pipeline_open = 1
         WHERE id = ANY($1) AND state = 'done' AND result IS NOT NULL AND concurrency_group IS NOT NULL",
    )
    .bind(done)
    .execute(&mut **tx)
    .await
    .map_err(db)?;
    sqlx::query(
        "WITH candidates AS (
            SELECT id FROM jobs WHERE id = ANY($1) UNION SELECT id FROM jobs WHERE cancel_by = ANY($1)),
         due AS (
            SELECT o.id, o.cancel_by, o.result FROM candidates c JOIN jobs o ON o.id = c.id
            JOIN jobs n ON n.id = o.cancel_by
            WHERE o.pipeline_open = 1 AND o.result IS NOT NULL AND n.state = 'done' AND n.result IS NOT NULL),
         queued AS (
            INSERT INTO cancels (job_id, by_job, pipeline, state, attempts, next_attempt_at, created_at, updated_at)
            SELECT id, cancel_by, result, 'pending', 0, $2, $2, $2 FROM due
            ON CONFLICT (job_id) DO NOTHING)
         UPDATE jobs j SET pipeline_open = NULL, cancel_by = NULL FROM due WHERE j.id = due.id",
    )
    .bind(done)
    .bind(now)
    .execute(&mut **tx)
    .await
    .map_err(db)?;
    Ok(())
}
