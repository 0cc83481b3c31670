//! Ingests and attempt records go through a [`Batcher`] each: concurrent
//! calls share a transaction and its commit (see `batch`), written by `bulk`:
//! an ingest batch as one statement on connections of its own, which keep
//! one plan of it ([`STATEMENT_SESSION`]).
//!
//! A batch the server refuses (one delivery's text it cannot store, a
//! deadlock it broke, a constraint) is written again call by call, each in
//! its own transaction, so one bad call fails only itself. A batch that
//! failed because the server or the connection is away fails all its calls
//! at once: each sender is told "try again", and a commit whose answer was
//! lost is settled by deduplication when the sender does.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sqlx::postgres::PgPool;

use super::batch::{Batcher, Limits, Pending, Weigh, first_by_key};
use super::bulk;
use super::error::refused_by_server;
use super::record::{self, Record};
use super::{db, queue::Tx};
use crate::store::handoff::Handoff;
use crate::store::{Ingested, NewDelivery, StoreError};

/// A batch of ingests carries at most this many payload bytes (one larger
/// payload still goes, alone).
const INGEST_BYTES: usize = 8 << 20;
/// Calls per batch.
const CALLS: usize = 256;
/// How long a record batch waits for more attempts after its first. Nobody
/// waits on a record but the job's lease (the attempt's slot is free once
/// the CI answered), and jobs handed over at ingest finish a few at a time,
/// not in lease-sized groups: without a wait, each record batch held about
/// two attempts at three statements and a commit each.
const RECORD_LINGER: Duration = Duration::from_millis(5);

impl Weigh for NewDelivery {
    fn weight(&self) -> usize {
        self.payload.len()
    }
}

impl Weigh for Record {
    fn weight(&self) -> usize {
        self.attempt.response.as_ref().map_or(0, String::len)
    }
}

/// The batched write paths of one store.
pub(super) struct Writers {
    pub ingest: Batcher<NewDelivery, Ingested>,
    pub record: Batcher<Record, ()>,
}

impl Writers {
    /// Start both on the current runtime; `pool_size` bounds how many
    /// connections their batches take at once, leaving the rest to leases,
    /// reads and probes.
    ///
    /// While `dispatching` is false (no dispatcher runs in this process: a
    /// tool, a test) new jobs are announced with `NOTIFY`; while it is true
    /// the caller wakes its own dispatcher, which takes them, and the other
    /// replicas are not woken for work they would only find taken: they
    /// find what this one leaves due when they poll (each second), and
    /// after a crash when its leases expire.
    ///
    /// Once `handoff` is set, ingests lease jobs to that dispatcher as they
    /// store them (see [`crate::store::handoff`]).
    ///
    /// The ingest's statement runs on `statement` (see
    /// [`STATEMENT_SESSION`]), everything else on `pool`.
    pub(super) fn start(
        pool: &PgPool,
        statement: &PgPool,
        pool_size: u32,
        dispatching: Arc<AtomicBool>,
        handoff: Arc<OnceLock<Arc<Handoff>>>,
    ) -> Writers {
        let pools = (statement.clone(), pool.clone());
        let record_pool = pool.clone();
        Writers {
            ingest: Batcher::start(
                Limits {
                    calls: CALLS,
                    weight: INGEST_BYTES,
                    flushes: ingest_flushes(pool_size),
                    linger: Duration::ZERO,
                },
                move |batch| {
                    let announce = !dispatching.load(Ordering::Relaxed);
                    ingest(pools.clone(), batch, announce, handoff.get().cloned())
                },
            ),
            record: Batcher::start(
                Limits {
                    calls: CALLS,
                    weight: usize::MAX,
                    flushes: 1,
                    linger: RECORD_LINGER,
                },
                move |batch| record(record_pool.clone(), batch),
            ),
        }
    }
}

/// Ingest batches written at once: one per five connections, at most two.
fn ingest_flushes(pool_size: u32) -> usize {
    usize::try_from(pool_size / 5).unwrap_or(usize::MAX).clamp(1, 2)
}

/// How many of `pool_size` connections are the ingest statement's own: one
/// per concurrent ingest batch, when at least two are left for the rest;
/// else none (the statement shares the pool, and is planned on each call).
pub(super) fn statement_connections(pool_size: u32) -> u32 {
    let own = u32::try_from(ingest_flushes(pool_size)).unwrap_or(1);
    if pool_size >= own.saturating_add(2) {
        own
    } else {
        0
    }
}

/// The session setting of the ingest statement's own connections: they
/// keep one plan of it. It only appends to tables through `UNNEST` and `ON
/// CONFLICT` on a unique key, so no plan depends on what the tables hold;
/// planning it on every batch, as the session default (`force_custom_plan`,
/// see `connect`) does for every statement that reads, cost a tenth of the
/// server's CPU per delivery.
pub(super) const STATEMENT_SESSION: &str = "SET plan_cache_mode = force_generic_plan";

async fn ingest(
    pools: (PgPool, PgPool),
    batch: Vec<Pending<NewDelivery, Ingested>>,
    announce: bool,
    handoff: Option<Arc<Handoff>>,
) {
    let (first, repeats) = first_by_key(batch, |d| (d.source.clone(), d.delivery.clone()));
    let items: Vec<&NewDelivery> = first.iter().map(|p| &p.item).collect();
    let (statement, pool) = pools;
    let lone = statement.clone();
    let lone_handoff = handoff.clone();
    let alone = async move |pool: &PgPool, item: &NewDelivery| {
        ingest_alone((&lone, pool), item, announce, lone_handoff.as_deref()).await
    };
    let pool = &pool;
    match ingest_together((&statement, pool), &items, announce, handoff.as_deref()).await {
        Ok(results) => {
            for (p, r) in first.into_iter().zip(results) {
                p.answer(Ok(r));
            }
        }
        Err(e) => retry_alone(pool, first, e, &alone).await,
    }
    // After the batch: a repeat finds the first call's delivery committed.
    for p in repeats {
        let r = alone(pool, &p.item).await;
        p.answer(r);
    }
}

/// `bulk::ingest` behind a named signature: awaited inline in `ingest`, its
/// future's borrows defeat the compiler's proof that the spawned batcher
/// is `Send` ("not general enough").
async fn ingest_together(
    pools: (&PgPool, &PgPool),
    items: &[&NewDelivery],
    announce: bool,
    handoff: Option<&Handoff>,
) -> Result<Vec<Ingested>, StoreError> {
    bulk::ingest(pools, items, announce, handoff).await
}

async fn ingest_alone(
    pools: (&PgPool, &PgPool),
    item: &NewDelivery,
    announce: bool,
    handoff: Option<&Handoff>,
) -> Result<Ingested, StoreError> {
    let mut results = ingest_together(pools, &[item], announce, handoff).await?;
    results
        .pop()
        .ok_or_else(|| StoreError::unavailable("an ingest came back without its answer"))
}

async fn record(pool: PgPool, batch: Vec<Pending<Record, ()>>) {
    let (first, repeats) = first_by_key(batch, |r| r.job.clone());
    let items: Vec<&Record> = first.iter().map(|p| &p.item).collect();
    match record_together(&pool, &items).await {
        Ok(()) => {
            for p in first {
                p.answer(Ok(()));
            }
        }
        Err(e) => retry_alone(&pool, first, e, &record_alone).await,
    }
    for p in repeats {
        let r = record_alone(&pool, &p.item).await;
        p.answer(r);
    }
}

async fn record_together(pool: &PgPool, items: &[&Record]) -> Result<(), StoreError> {
    let mut tx: Tx = pool.begin().await.map_err(db)?;
    record::record(&mut tx, items).await?;
    tx.commit().await.map_err(db)
}

async fn record_alone(pool: &PgPool, item: &Record) -> Result<(), StoreError> {
    record_together(pool, &[item]).await
}

/// After a failed batch: every call alone when the server refused a
/// statement (the connection works; one call may be the cause), else every
/// call fails with the batch's error.
async fn retry_alone<T, R, F>(pool: &PgPool, calls: Vec<Pending<T, R>>, e: StoreError, alone: &F)
where
    F: AsyncFn(&PgPool, &T) -> Result<R, StoreError>,
{
    if calls.len() > 1 && refused_by_server(&e) {
        tracing::debug!(error = %e, calls = calls.len(), "batch refused; writing its calls one by one");
        for p in calls {
            let r = alone(pool, &p.item).await;
            p.answer(r);
        }
        return;
    }
    for p in calls {
        p.answer(Err(StoreError::new(e.kind(), e.detail())));
    }
}
