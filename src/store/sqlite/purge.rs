//! The retention purge on SQLite: finished deliveries go with their
//! jobs, attempts, statuses, watches and deferrals (ON DELETE CASCADE),
//! unless a status of theirs is still to post, a watch still open or a
//! rule still deferred; completion events kept for a pipeline no job
//! recorded go after the same time.

use std::time::SystemTime;

use rusqlite::{Connection, params};

use super::db;
use crate::store::{StoreError, millis};

/// Finished deliveries past the cutoff, but none with a status still to post, a watch
/// open (the watch ends at its deadline at the latest) or a deferral not settled (its
/// status says pending anyway; checked here too, as the purge must never lose one);
/// held ones never fill a batch.
pub(super) fn purge(tx: &Connection, cutoff: SystemTime, batch: usize) -> Result<u64, StoreError> {
    let seqs: Vec<i64> = tx
        .prepare_cached(
            "SELECT seq FROM deliveries d WHERE status IN ('done', 'skipped', 'superseded') AND received_at < ?1
               AND NOT EXISTS (SELECT 1 FROM jobs j JOIN statuses s ON s.job_id = j.id
                               WHERE j.delivery_id = d.id AND s.post IN ('pending', 'running'))
               AND NOT EXISTS (SELECT 1 FROM jobs j JOIN watches w ON w.job_id = j.id
                               WHERE j.delivery_id = d.id AND w.state <> 'done')
               AND NOT EXISTS (SELECT 1 FROM deferrals f WHERE f.delivery_id = d.id AND f.state <> 'done')
             LIMIT ?2",
        )
        .and_then(|mut s| {
            s.query_map(params![millis(cutoff), batch as i64], |r| r.get(0))?
                .collect()
        })
        .map_err(db)?;
    for seq in &seqs {
        // Jobs, attempts, statuses, watches and deferrals go with the delivery (ON DELETE CASCADE).
        tx.prepare_cached("DELETE FROM payloads WHERE seq = ?1")
            .and_then(|mut s| s.execute(params![seq]))
            .and_then(|_| tx.prepare_cached("DELETE FROM deliveries WHERE seq = ?1"))
            .and_then(|mut s| s.execute(params![seq]))
            .map_err(db)?;
    }
    tx.prepare_cached("DELETE FROM completions WHERE received_at < ?1")
        .and_then(|mut s| s.execute(params![millis(cutoff)]))
        .map_err(db)?;
    Ok(seqs.len() as u64)
}
