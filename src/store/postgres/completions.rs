//! Completion events on PostgreSQL ([`crate::store::status`]): what a
//! GitLab `Pipeline Hook` or a CircleCI `workflow-completed` tells the jobs
//! that recorded its pipeline, and the events kept for a pipeline no job
//! recorded yet (its trigger's answer still on its way), applied by the
//! record that does. One advisory lock per pipeline id orders an event and
//! that record, so each sees the other.

use super::db;
use super::status::{Tx, lock_key, text};
use crate::event::Event;
use crate::store::StoreError;
use crate::store::model::from_json;
use crate::store::status::PipelineState;
use crate::store::status::sync::{self, Told};
use crate::target::TriggerRequest;

/// The advisory lock of pipeline `id`'s completion events: an event and
/// the record of the pipeline's creation, in two transactions, see each
/// other (the later waits for the earlier to commit, then reads).
pub(super) async fn lock_pipelines(tx: &mut Tx, ids: &[String]) -> Result<(), StoreError> {
    let mut keys: Vec<i64> = ids
        .iter()
        .map(|id| lock_key(&format!("pipeline\n{id}")))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    sqlx::query("SELECT pg_advisory_xact_lock(k) FROM UNNEST($1::int8[]) AS k")
        .bind(&keys)
        .execute(&mut **tx)
        .await
        .map_err(db)?;
    Ok(())
}

/// The completion events kept for pipelines `ids` before a job recorded
/// them, oldest first, taken out of the table.
pub(super) async fn early(tx: &mut Tx, ids: &[String]) -> Result<Vec<(Event, i64)>, StoreError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    lock_pipelines(tx, ids).await?;
    let ids: Vec<String> = ids.iter().map(|id| text(id).into_owned()).collect();
    let kept: Vec<(String, i64)> = sqlx::query_as(
        "WITH taken AS (DELETE FROM completions WHERE pipeline_id = ANY($1) RETURNING seq, event, received_at)
         SELECT event, received_at FROM taken ORDER BY seq",
    )
    .bind(&ids)
    .fetch_all(&mut **tx)
    .await
    .map_err(db)?;
    kept.into_iter()
        .map(|(event, at)| Ok((from_json(&event)?, at)))
        .collect()
}

/// What `event` tells the jobs that recorded its pipeline (the jobs it
/// moved, to sync); with none, it is kept for the job that will.
pub(super) async fn apply(tx: &mut Tx, event: &Event, now: i64) -> Result<Vec<(String, i64)>, StoreError> {
    // Only pipeline events tell a result (not CircleCI's job-completed).
    let Some(run) = event
        .pipeline
        .as_ref()
        .filter(|_| event.kind == crate::event::kind::PIPELINE)
    else {
        return Ok(Vec::new());
    };
    lock_pipelines(tx, std::slice::from_ref(&run.id)).await?;
    let jobs: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT id, request, pipeline_state FROM jobs
         WHERE pipeline_id = $1 AND status IS NOT NULL AND state = 'done' ORDER BY id FOR UPDATE",
    )
    .bind(text(&run.id))
    .fetch_all(&mut **tx)
    .await
    .map_err(db)?;
    if jobs.is_empty() {
        // No job recorded this pipeline (yet): its trigger's answer may
        // still be on its way. Kept until one does, or the purge.
        sqlx::query("INSERT INTO completions (pipeline_id, event, received_at) VALUES ($1, $2, $3)")
            .bind(text(&run.id))
            .bind(crate::store::model::to_json(event)?)
            .bind(now)
            .execute(&mut **tx)
            .await
            .map_err(db)?;
        return Ok(Vec::new());
    }
    let mut moved = Vec::with_capacity(jobs.len());
    for (job, request, current) in &jobs {
        let request = from_json::<TriggerRequest>(request)?;
        let current = current.as_deref().and_then(PipelineState::parse);
        match sync::told(&request, event) {
            Some(Told::Pipeline(next)) => learn(tx, job, current, next).await?,
            Some(Told::Workflow(workflow)) => {
                let facts: Option<Option<String>> =
                    sqlx::query_scalar("SELECT facts FROM watches WHERE job_id = $1 FOR UPDATE")
                        .bind(job)
                        .fetch_optional(&mut **tx)
                        .await
                        .map_err(db)?;
                let facts = sync::with_workflow(facts.flatten().as_deref(), workflow)?;
                sqlx::query(
                    "UPDATE watches SET facts = $2, woken = 1, next_check_at = LEAST(next_check_at, $3),
                            updated_at = $3
                     WHERE job_id = $1 AND state <> 'done'",
                )
                .bind(job)
                .bind(facts)
                .bind(now)
                .execute(&mut **tx)
                .await
                .map_err(db)?;
                learn(tx, job, current, PipelineState::Running).await?;
            }
            None => continue,
        }
        moved.push((job.clone(), now));
    }
    Ok(moved)
}

/// Move `job`'s pipeline to `next` if that moves it on; a final state ends its watch.
pub(super) async fn learn(
    tx: &mut Tx,
    job: &str,
    current: Option<PipelineState>,
    next: PipelineState,
) -> Result<(), StoreError> {
    if !PipelineState::advances_to(current, next) {
        return Ok(());
    }
    sqlx::query("UPDATE jobs SET pipeline_state = $2 WHERE id = $1")
        .bind(job)
        .bind(next.as_str())
        .execute(&mut **tx)
        .await
        .map_err(db)?;
    if next.is_final() {
        sqlx::query(
            "UPDATE watches SET state = 'done', lease_owner = NULL, lease_until = NULL WHERE job_id = $1",
        )
        .bind(job)
        .execute(&mut **tx)
        .await
        .map_err(db)?;
    }
    Ok(())
}
