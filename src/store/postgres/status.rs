//! A delivery's status, recomputed from its jobs and deferred rules after
//! every change to them, the transaction type every write shares, the
//! job-row lock a write to a job's side queues (cancels, follow-ups, commit
//! statuses) takes first, and text made fit for a `text` column.

use std::borrow::Cow;

use sha2::Digest;
use sqlx::{Postgres, Transaction};

use super::db;
use crate::store::StoreError;

pub(super) type Tx = Transaction<'static, Postgres>;

/// Recompute the statuses of `deliveries` (sorted: their row locks are
/// taken in that order) from their jobs, found through `jobs_delivery`, and
/// their deferred rules, through `deferrals_delivery`: pending while one is
/// not settled, whatever the jobs say. (A `CASE` of `EXISTS (... state IN
/// (...))` lets the planner scan `jobs_due` by state instead, reading every
/// finished job: measured at ~10,000 index entries per delivery after
/// 25,000 deliveries.) A delivery with neither keeps its status.
pub(super) async fn refresh_status(tx: &mut Tx, deliveries: &[&str]) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE deliveries d SET status = s.status
         FROM (SELECT id FROM deliveries WHERE id = ANY($1) ORDER BY id FOR UPDATE) AS locked,
              (SELECT delivery_id, CASE
                    WHEN bool_or(deferred) THEN 'pending'
                    WHEN bool_or(state IN ('pending', 'running')) THEN 'pending'
                    WHEN bool_or(state = 'dead') THEN 'dead'
                    WHEN bool_or(state = 'done') THEN 'done'
                    WHEN bool_or(state = 'superseded') THEN 'superseded'
                    ELSE 'skipped' END AS status
               FROM (SELECT delivery_id, state, false AS deferred FROM jobs WHERE delivery_id = ANY($1)
                     UNION ALL
                     SELECT delivery_id, NULL::text, state <> 'done' FROM deferrals WHERE delivery_id = ANY($1))
                    AS u
               GROUP BY delivery_id) AS s
         WHERE d.id = locked.id AND s.delivery_id = locked.id AND d.status <> s.status",
    )
    .bind(deliveries)
    .execute(&mut **tx)
    .await
    .map_err(db)?;
    Ok(())
}

/// Lock job `id`'s row for the rest of `tx`, first of what a write to it
/// and its queues locks (so writes never wait on each other in a cycle);
/// false when the job is gone (purged).
pub(super) async fn lock_job(tx: &mut Tx, id: &str) -> Result<bool, StoreError> {
    let alive: Option<String> = sqlx::query_scalar("SELECT id FROM jobs WHERE id = $1 FOR UPDATE")
        .bind(id)
        .fetch_optional(&mut **tx)
        .await
        .map_err(db)?;
    Ok(alive.is_some())
}

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

/// The advisory lock key of a subject (the first 8 bytes of its SHA-256,
/// after a prefix of its own: a collision only makes two writes wait).
pub(super) fn lock_key(subject: &str) -> i64 {
    let digest = sha2::Sha256::digest(format!("hookbridge status\n{subject}").as_bytes());
    let mut key = [0u8; 8];
    key.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(key)
}
