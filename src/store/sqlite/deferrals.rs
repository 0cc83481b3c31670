//! Deferred rule evaluations ([`crate::store::deferral`]) on SQLite: a
//! queue of their own, like `follow_ups`, stored by the ingest (or the
//! re-evaluation) that deferred the rules, leased like jobs, given back,
//! shown. Settling one queues a job, so it lives beside the queue's
//! writes, in `deferral_queue`, which holds the [`DeferralQueue`] impl.

use std::time::{Duration, SystemTime};

use rusqlite::{Connection, params};

use super::db;
use crate::store::deferral::{self, DeferralRow, Deferred, LeasedDeferral, files_note};
use crate::store::owner::{Left, left_by};
use crate::store::{StoreError, from_millis, millis};

/// Deferrals whose lease ran out, oldest first (through `deferrals_lease`).
pub(super) const EXPIRED: &str =
    "SELECT id FROM deferrals WHERE state = 'running' AND lease_until < ?1 ORDER BY lease_until LIMIT ?2";
/// Deferrals due, oldest first (through `deferrals_due`).
pub(super) const DUE: &str = "SELECT id FROM deferrals WHERE state = 'pending' AND next_attempt_at <= ?1
     ORDER BY next_attempt_at LIMIT ?2";

/// Store one pending deferral per entry of `deferred`, in its order, for
/// the delivery `delivery_id` of `source`, due at `now`.
pub(super) fn insert(
    tx: &Connection,
    (delivery_id, source): (&str, &str),
    deferred: &[Deferred],
    now: i64,
) -> Result<(), StoreError> {
    for (ordinal, d) in deferred.iter().enumerate() {
        tx.prepare_cached(
            "INSERT INTO deferrals (id, delivery_id, source, rule, reason, ordinal, state, attempts, next_attempt_at,
                                    created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', 0, ?7, ?7, ?7)",
        )
        .and_then(|mut s| {
            s.execute(params![
                ulid::Ulid::generate().to_string(),
                delivery_id,
                source,
                d.rule,
                d.reason,
                i64::try_from(ordinal).unwrap_or(i64::MAX),
                now
            ])
        })
        .map_err(db)?;
    }
    Ok(())
}

/// A re-evaluation's summary replaces the delivery's: its deferrals not
/// settled yet are dropped (a worker holding one finds its lease lost and
/// writes nothing), so that no rule is settled twice, and those of the new
/// summary are stored.
pub(super) fn replace(
    tx: &Connection,
    delivery_id: &str,
    deferred: &[Deferred],
    now: i64,
) -> Result<(), StoreError> {
    tx.prepare_cached("DELETE FROM deferrals WHERE delivery_id = ?1 AND state <> 'done'")
        .and_then(|mut s| s.execute(params![delivery_id]))
        .map_err(db)?;
    if deferred.is_empty() {
        return Ok(());
    }
    let source: String = tx
        .prepare_cached("SELECT source FROM deliveries WHERE id = ?1")
        .and_then(|mut s| s.query_row(params![delivery_id], |r| r.get(0)))
        .map_err(db)?;
    insert(tx, (delivery_id, &source), deferred, now)
}

pub(super) fn lease(
    tx: &Connection,
    owner: &str,
    limit: usize,
    lease: Duration,
    now: SystemTime,
) -> Result<Vec<LeasedDeferral>, StoreError> {
    let now_ms = millis(now);
    let mut ids: Vec<String> = Vec::new();
    // Taken-over leases first, then due ones, up to `limit` in all.
    for sql in [EXPIRED, DUE] {
        let room = i64::try_from(limit - ids.len().min(limit)).unwrap_or(i64::MAX);
        let found: Vec<String> = tx
            .prepare_cached(sql)
            .and_then(|mut s| s.query_map(params![now_ms, room], |r| r.get(0))?.collect())
            .map_err(db)?;
        ids.extend(found);
    }
    let until = millis(now + lease);
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let (delivery_id, source, rule, attempts, due): (String, String, String, i64, i64) = tx
            .prepare_cached(
                "UPDATE deferrals SET state = 'running', lease_owner = ?2, lease_until = ?3, attempts = attempts + 1,
                        updated_at = ?4
                 WHERE id = ?1
                 RETURNING delivery_id, source, rule, attempts, next_attempt_at",
            )
            .and_then(|mut s| {
                s.query_row(params![id, owner, until, now_ms], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                })
            })
            .map_err(db)?;
        let received: i64 = tx
            .prepare_cached("SELECT received_at FROM deliveries WHERE id = ?1")
            .and_then(|mut s| s.query_row(params![delivery_id], |r| r.get(0)))
            .map_err(db)?;
        let leased = LeasedDeferral {
            id,
            delivery_id,
            source,
            rule,
            attempt: u32::try_from(attempts.max(1)).unwrap_or(u32::MAX),
            created_at: from_millis(received),
        };
        out.push((due, leased));
    }
    // Oldest due first, taken-over leases among them, as PostgreSQL hands them out.
    out.sort_by_key(|(due, _)| *due);
    Ok(out.into_iter().map(|(_, d)| d).collect())
}

pub(super) fn retry(
    tx: &Connection,
    d: &LeasedDeferral,
    owner: &str,
    (at, error): (SystemTime, &str),
    now: SystemTime,
) -> Result<bool, StoreError> {
    let moved = tx
        .prepare_cached(
            "UPDATE deferrals SET state = 'pending', lease_owner = NULL, lease_until = NULL, next_attempt_at = ?4,
                    last_error = ?5, updated_at = ?6
             WHERE id = ?1 AND state = 'running' AND lease_owner = ?2 AND attempts = ?3",
        )
        .and_then(|mut s| s.execute(params![d.id, owner, d.attempt, millis(at), error, millis(now)]))
        .map_err(db)?;
    Ok(moved > 0)
}

/// Give back the deferrals `owner` leased, due at `now`; at start (no
/// owner) those of every owner but a hookbridge still running here, as
/// `queue::release_leases` does with jobs. A lease given back still counts.
pub(super) fn release(tx: &Connection, owner: Option<&str>, now: SystemTime) -> Result<(), StoreError> {
    let held: Vec<(String, Option<String>)> = tx
        .prepare_cached(
            "SELECT id, lease_owner FROM deferrals WHERE state = 'running' AND (?1 IS NULL OR lease_owner = ?1)",
        )
        .and_then(|mut s| {
            s.query_map(params![owner], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
        })
        .map_err(db)?;
    let ids = held.into_iter().filter(|(_, holder)| {
        owner.is_some() || holder.as_deref().is_none_or(|h| left_by(h) != Left::Running)
    });
    for (id, _) in ids {
        tx.prepare_cached(
            "UPDATE deferrals SET state = 'pending', lease_owner = NULL, lease_until = NULL, next_attempt_at = ?2,
                    updated_at = ?2
             WHERE id = ?1",
        )
        .and_then(|mut s| s.execute(params![id, millis(now)]))
        .map_err(db)?;
    }
    Ok(())
}

/// A delivery's deferrals, in rule order (earlier evaluations first).
pub(super) fn rows(c: &Connection, delivery_id: &str) -> Result<Vec<DeferralRow>, StoreError> {
    let rows: Vec<(DeferralRow, Option<String>)> = c
        .prepare_cached(
            "SELECT rule, reason, state, attempts, next_attempt_at, outcome, files, last_error FROM deferrals
             WHERE delivery_id = ?1 ORDER BY created_at, ordinal",
        )
        .and_then(|mut s| {
            s.query_map(params![delivery_id], |r| {
                let state: String = r.get(2)?;
                let waiting = state == deferral::state::PENDING;
                Ok((
                    DeferralRow {
                        rule: r.get(0)?,
                        reason: r.get(1)?,
                        attempts: u32::try_from(r.get::<_, i64>(3)?).unwrap_or(0),
                        next_attempt_at: if waiting { Some(r.get(4)?) } else { None },
                        state,
                        outcome: r.get(5)?,
                        files: None,
                        last_error: r.get(7)?,
                    },
                    r.get(6)?,
                ))
            })?
            .collect()
        })
        .map_err(db)?;
    rows.into_iter()
        .map(|(mut row, files)| {
            row.files = files_note(files.as_deref())?;
            Ok(row)
        })
        .collect()
}
