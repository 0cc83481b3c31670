//! [`DeferralQueue`] on SQLite: each call one write of the writer
//! ([`super::deferrals`] holds the queue's SQL). A settle reads and
//! rewrites its delivery's summary with no other write in between: the
//! writer runs one write at a time.

use std::time::{Duration, SystemTime};

use rusqlite::{Connection, OptionalExtension, params};

use super::status::refresh_status;
use super::writer::How;
use super::{SqliteStore, db, deferrals, groups, queue, statuses};
use crate::store::concurrency::GroupedJob;
use crate::store::deferral::{self, DeferralQueue, LeasedDeferral, Settled, Verdict};
use crate::store::model::to_json;
use crate::store::{StoreError, millis};

/// Whether `owner` still holds this very lease of `d` (the attempt tells
/// it from a later lease of the same owner).
fn held(tx: &Connection, d: &LeasedDeferral, owner: &str) -> Result<bool, StoreError> {
    tx.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM deferrals
                        WHERE id = ?1 AND state = 'running' AND lease_owner = ?2 AND attempts = ?3)",
    )
    .and_then(|mut s| s.query_row(params![d.id, owner, d.attempt], |r| r.get(0)))
    .map_err(db)
}

fn settle(
    tx: &Connection,
    d: &LeasedDeferral,
    owner: &str,
    settled: &Settled,
    now: SystemTime,
) -> Result<bool, StoreError> {
    if !held(tx, d, owner)? {
        return Ok(false);
    }
    let now_ms = millis(now);
    let mut superseded = Vec::new();
    // A match queues its job as a re-evaluation does: due after its
    // debounce, the newest of its group, its "queued" status last.
    if let Verdict::Matched(job) = &settled.verdict {
        queue::insert_job(tx, (&d.delivery_id, None), job, &to_json(&job.request)?, now_ms)?;
        if let Some(group) = job.group.as_deref() {
            let grouped = GroupedJob {
                id: &job.id,
                delivery_id: &d.delivery_id,
                group,
                cancel: job.cancel,
            };
            let plan = groups::plan(tx, &[grouped])?;
            groups::apply(tx, &plan, now_ms)?;
            superseded = plan.superseded;
        }
        statuses::queued(tx, std::slice::from_ref(&**job), now_ms)?;
    }
    let stored: Option<String> = tx
        .prepare_cached("SELECT p.summary FROM deliveries d JOIN payloads p ON p.seq = d.seq WHERE d.id = ?1")
        .and_then(|mut s| s.query_row(params![d.delivery_id], |r| r.get(0)).optional())
        .map_err(db)?;
    if let Some(stored) = stored {
        let summary = deferral::settle_summary(&stored, &d.rule, settled, &superseded)?;
        tx.prepare_cached(
            "UPDATE payloads SET summary = ?2 WHERE seq = (SELECT seq FROM deliveries WHERE id = ?1)",
        )
        .and_then(|mut s| s.execute(params![d.delivery_id, summary]))
        .map_err(db)?;
    }
    let files = settled.files.as_ref().map(to_json).transpose()?;
    tx.prepare_cached(
        "UPDATE deferrals SET state = 'done', lease_owner = NULL, lease_until = NULL, outcome = ?2, files = ?3,
                last_error = ?4, next_attempt_at = ?5, updated_at = ?5
         WHERE id = ?1",
    )
    .and_then(|mut s| s.execute(params![d.id, settled.outcome(), files, settled.error, now_ms]))
    .map_err(db)?;
    refresh_status(tx, &d.delivery_id)?;
    Ok(true)
}

#[async_trait::async_trait]
impl DeferralQueue for SqliteStore {
    async fn lease_deferrals(
        &self,
        owner: &str,
        limit: usize,
        lease_for: Duration,
        now: SystemTime,
    ) -> Result<Vec<LeasedDeferral>, StoreError> {
        let owner = owner.to_owned();
        self.write(How::BOOKKEEPING, move |tx| {
            deferrals::lease(tx, &owner, limit, lease_for, now)
        })
        .await
    }

    async fn settle_deferral(
        &self,
        deferral: &LeasedDeferral,
        owner: &str,
        settled: Settled,
        now: SystemTime,
    ) -> Result<bool, StoreError> {
        let (deferral, owner) = (deferral.clone(), owner.to_owned());
        self.write(How::BOOKKEEPING, move |tx| {
            settle(tx, &deferral, &owner, &settled, now)
        })
        .await
    }

    async fn retry_deferral(
        &self,
        deferral: &LeasedDeferral,
        owner: &str,
        at: SystemTime,
        error: &str,
        now: SystemTime,
    ) -> Result<bool, StoreError> {
        let (deferral, owner, error) = (deferral.clone(), owner.to_owned(), error.to_owned());
        self.write(How::BOOKKEEPING, move |tx| {
            deferrals::retry(tx, &deferral, &owner, (at, &error), now)
        })
        .await
    }
}
