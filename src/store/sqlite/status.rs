//! A delivery's status, recomputed from its jobs and deferred rules after
//! every change to them.

use rusqlite::{Connection, params};

use super::db;
use crate::store::StoreError;

/// A delivery's status from its jobs, each test through `jobs_delivery`
/// (`+state`, as in `queue::REQUEUE_DEAD`): pending while a rule of it is
/// still deferred (`deferrals_delivery`), whatever its jobs say.
pub(super) const REFRESH_STATUS: &str = "UPDATE deliveries SET status = CASE
    WHEN EXISTS (SELECT 1 FROM deferrals WHERE delivery_id = ?1 AND +state <> 'done') THEN 'pending'
    WHEN EXISTS (SELECT 1 FROM jobs WHERE delivery_id = ?1 AND +state IN ('pending', 'running')) THEN 'pending'
    WHEN EXISTS (SELECT 1 FROM jobs WHERE delivery_id = ?1 AND +state = 'dead') THEN 'dead'
    WHEN EXISTS (SELECT 1 FROM jobs WHERE delivery_id = ?1 AND +state = 'done') THEN 'done'
    WHEN EXISTS (SELECT 1 FROM jobs WHERE delivery_id = ?1 AND +state = 'superseded') THEN 'superseded'
    ELSE 'skipped' END
 WHERE id = ?1";

/// Recompute a delivery's status from its jobs.
pub(super) fn refresh_status(tx: &Connection, delivery_id: &str) -> Result<(), StoreError> {
    tx.prepare_cached(REFRESH_STATUS)
        .and_then(|mut s| s.execute(params![delivery_id]))
        .map_err(db)?;
    Ok(())
}
