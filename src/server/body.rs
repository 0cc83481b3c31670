//! `[server] body_memory`: how request bodies share memory before they are
//! verified.
//!
//! Anyone can open a connection to `POST /hooks/{source}`, so the budget must
//! not be something an unauthenticated sender can sit on:
//!
//! - A request holds room only for body bytes it has actually sent. A
//!   declared `Content-Length` is a *claim* (what it may still need), never a
//!   reservation, so a connection that declares 20 MB and sends nothing holds
//!   nothing.
//! - One connection, and one source, can hold at most a share of the budget
//!   (all of it less an eighth kept for the others).
//! - Room is granted with the banker's rule: a grant is made only if, after
//!   it, every request holding room could still finish in some order with its
//!   remaining claim. So requests that are already partly read never wait on
//!   each other in a cycle (no deadlock under bursts of large bodies), and a
//!   small delivery can always be read while stalled senders hold only what
//!   they sent. Stalled senders are cut off by `[server] body_idle_timeout`.
//!
//! Memory held is therefore at most `body_memory`, plus at most one network
//! read per request that is waiting for room.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use tokio::sync::Notify;

/// The budget, sized once at start (a reload cannot resize it).
#[derive(Clone)]
pub struct BodyMemory {
    ledger: Arc<Mutex<Ledger>>,
    released: Arc<Notify>,
    capacity: u64,
    share: u64,
}

/// Which pools a request draws from: the whole budget, its source's share and
/// its connection's share.
#[derive(Clone, PartialEq, Eq, Hash)]
enum Pool {
    Global,
    Source(String),
    Connection(u64),
}

#[derive(Default)]
struct Ledger {
    /// Bytes held per pool; a pool with nothing held is removed.
    held: HashMap<Pool, u64>,
    claims: HashMap<u64, Claim>,
    next: u64,
}

#[derive(Clone)]
struct Claim {
    pools: [Pool; 3],
    held: u64,
    /// Bytes it may still need: its declared length (or its share when it
    /// declared none) less what it has received.
    need: u64,
}

/// Connection ids for requests served without the listener (in-process tests).
static UNATTACHED: AtomicU64 = AtomicU64::new(1 << 63);

/// The id of the connection a request arrived on, set by the listener.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionId(pub u64);

impl ConnectionId {
    /// A fresh id for a request that did not come through the listener.
    pub fn unattached() -> ConnectionId {
        ConnectionId(UNATTACHED.fetch_add(1, Ordering::Relaxed))
    }
}

impl BodyMemory {
    pub fn new(capacity: u64) -> BodyMemory {
        let capacity = capacity.max(1);
        BodyMemory {
            ledger: Arc::default(),
            released: Arc::new(Notify::new()),
            capacity,
            share: crate::config::body_share(capacity),
        }
    }

    /// The most one connection or one source may hold at once.
    pub fn share(&self) -> u64 {
        self.share
    }

    /// Register a request that may need up to `claim` bytes (capped at the share).
    pub fn room(&self, source: &str, connection: ConnectionId, claim: u64) -> Room {
        let mut ledger = self.lock();
        ledger.next += 1;
        let id = ledger.next;
        ledger.claims.insert(
            id,
            Claim {
                pools: [
                    Pool::Global,
                    Pool::Source(source.to_owned()),
                    Pool::Connection(connection.0),
                ],
                held: 0,
                need: claim.min(self.share),
            },
        );
        Room {
            memory: self.clone(),
            id,
            waiting: false,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Ledger> {
        // The ledger is plain numbers: a panic elsewhere cannot leave it torn.
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn capacity_of(&self, pool: &Pool) -> u64 {
        match pool {
            Pool::Global => self.capacity,
            Pool::Source(_) | Pool::Connection(_) => self.share,
        }
    }

    /// Grant `bytes` to claim `id` if the ledger stays safe; false to wait.
    fn try_grant(&self, id: u64, bytes: u64) -> bool {
        let mut ledger = self.lock();
        let Some(mut claim) = ledger.claims.get(&id).cloned() else {
            return false;
        };
        for pool in &claim.pools {
            let held = ledger.held.get(pool).copied().unwrap_or(0);
            if held.saturating_add(bytes) > self.capacity_of(pool) {
                return false;
            }
        }
        claim.held = claim.held.saturating_add(bytes);
        claim.need = claim.need.saturating_sub(bytes);
        if !self.safe_with(&ledger, id, &claim) {
            return false;
        }
        for pool in &claim.pools {
            *ledger.held.entry(pool.clone()).or_default() += bytes;
        }
        ledger.claims.insert(id, claim);
        true
    }

    /// The banker's check: with `candidate` in place of claim `id`, can every
    /// claim that holds room finish, one after another, each releasing what it
    /// held? Claims holding nothing can always finish last (their need is at
    /// most a share, and every pool has at least a share once all else ends).
    fn safe_with(&self, ledger: &Ledger, id: u64, candidate: &Claim) -> bool {
        let mut pending: Vec<&Claim> = ledger
            .claims
            .iter()
            .filter(|(other, c)| **other != id && c.held > 0)
            .map(|(_, c)| c)
            .chain(std::iter::once(candidate))
            .collect();
        let mut free: HashMap<&Pool, u64> = HashMap::new();
        for claim in &pending {
            for pool in &claim.pools {
                free.entry(pool).or_insert_with(|| {
                    let held = ledger.held.get(pool).copied().unwrap_or(0);
                    self.capacity_of(pool).saturating_sub(held)
                });
            }
        }
        // The candidate's grant is not in `ledger.held` yet.
        let grant = candidate
            .held
            .saturating_sub(ledger.claims.get(&id).map_or(0, |c| c.held));
        for pool in &candidate.pools {
            if let Some(f) = free.get_mut(pool) {
                *f = f.saturating_sub(grant);
            }
        }
        // Smallest needs first finishes most in one pass; finishing a claim
        // only ever adds room, so repeating until no progress decides it.
        pending.sort_by_key(|c| c.need);
        loop {
            let before = pending.len();
            pending.retain(|claim| {
                let fits = claim
                    .pools
                    .iter()
                    .all(|p| free.get(p).is_some_and(|f| *f >= claim.need));
                if fits {
                    for pool in &claim.pools {
                        if let Some(f) = free.get_mut(pool) {
                            *f = f.saturating_add(claim.held);
                        }
                    }
                }
                !fits
            });
            if pending.is_empty() {
                return true;
            }
            if pending.len() == before {
                return false;
            }
        }
    }

    fn release(&self, id: u64) {
        let mut ledger = self.lock();
        if let Some(claim) = ledger.claims.remove(&id)
            && claim.held > 0
        {
            for pool in &claim.pools {
                if let Some(held) = ledger.held.get_mut(pool) {
                    *held = held.saturating_sub(claim.held);
                    if *held == 0 {
                        ledger.held.remove(pool);
                    }
                }
            }
            drop(ledger);
            self.released.notify_waiters();
        }
    }

    #[cfg(test)]
    fn held(&self) -> u64 {
        self.lock().held.get(&Pool::Global).copied().unwrap_or(0)
    }
}

/// One request's place in the ledger; gives back what it holds when dropped
/// (after the answer, so a body is counted until its commit).
pub struct Room {
    memory: BodyMemory,
    id: u64,
    /// Set while waiting for room, so a timeout there answers 503, not 408.
    pub waiting: bool,
}

impl Room {
    /// Take room for `bytes` more, waiting until granting it is safe.
    async fn take(&mut self, bytes: u64) {
        loop {
            let released = self.memory.released.notified();
            tokio::pin!(released);
            // Registered before checking, so a release between the check and
            // the wait is not missed.
            released.as_mut().enable();
            if self.memory.try_grant(self.id, bytes) {
                self.waiting = false;
                return;
            }
            self.waiting = true;
            released.await;
        }
    }
}

impl Drop for Room {
    fn drop(&mut self) {
        self.memory.release(self.id);
    }
}

#[derive(Debug)]
pub enum ReadError {
    /// Over `max_body`, or over the share one request may hold.
    TooLarge,
    /// No bytes for `body_idle_timeout`.
    Stalled,
    Unreadable(axum::BoxError),
}

/// Read the whole body, at most `limit` bytes, taking room for each frame as
/// it arrives. A frame must arrive within `idle` of the previous one; time
/// spent waiting for room does not count (the sender is not to blame).
///
/// When the sender declared its length the buffer grows toward it by
/// doubling what arrived (memory follows the bytes received, as the room
/// does: a sender that declares 25 MB and sends one byte gets a few bytes),
/// and is then shared, not copied, by the intake and the store.
pub async fn read_body(
    body: Body,
    limit: u64,
    declared: Option<u64>,
    idle: Duration,
    room: &mut Room,
) -> Result<Bytes, ReadError> {
    let mut body = body.into_data_stream();
    let mut buf = BytesMut::new();
    let mut received: u64 = 0;
    loop {
        let next = tokio::time::timeout(idle, futures_util::StreamExt::next(&mut body))
            .await
            .map_err(|_| ReadError::Stalled)?;
        let Some(data) = next else { break };
        let data = data.map_err(|e| ReadError::Unreadable(e.into()))?;
        let len = data.len() as u64;
        received = received.saturating_add(len);
        if received > limit {
            return Err(ReadError::TooLarge);
        }
        room.take(len).await;
        if buf.capacity() - buf.len() < data.len()
            && let Some(n) = declared
        {
            // Toward the declared length, doubling what arrived: memory
            // follows the bytes received (a sender that declares much and
            // sends little gets little), with few copies on the way.
            let left = usize::try_from(n.min(limit))
                .unwrap_or(0)
                .saturating_sub(buf.len());
            buf.reserve(left.min(buf.len().max(data.len())).max(data.len()));
        }
        buf.extend_from_slice(&data);
    }
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: u64 = 1024;

    fn conn() -> ConnectionId {
        ConnectionId::unattached()
    }

    #[tokio::test(start_paused = true)]
    async fn a_declared_length_reserves_nothing() {
        let memory = BodyMemory::new(64 * KIB);
        let _stalled: Vec<Room> = (0..50)
            .map(|_| memory.room("github", conn(), 5_000_000))
            .collect();
        assert_eq!(memory.held(), 0);
        let mut push = memory.room("github", conn(), 8 * KIB);
        push.take(8 * KIB).await;
        assert_eq!(memory.held(), 8 * KIB);
        drop(push);
        assert_eq!(memory.held(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn one_source_or_connection_never_takes_the_whole_budget() {
        let memory = BodyMemory::new(64 * KIB);
        assert_eq!(memory.share(), 56 * KIB);
        let mut hog = memory.room("github", conn(), 56 * KIB);
        hog.take(56 * KIB).await;
        // Another source still has the reserved eighth.
        let mut other = memory.room("gitlab", conn(), 8 * KIB);
        tokio::time::timeout(Duration::from_millis(10), other.take(8 * KIB))
            .await
            .expect("room outside the hogging source");
        // The same source has nothing left: it waits until the hog ends.
        let mut same = memory.room("github", conn(), KIB);
        assert!(
            tokio::time::timeout(Duration::from_secs(5), same.take(KIB))
                .await
                .is_err()
        );
        assert!(same.waiting);
        drop(hog);
        tokio::time::timeout(Duration::from_millis(10), same.take(KIB))
            .await
            .expect("room once the hog is gone");
    }

    #[tokio::test(start_paused = true)]
    async fn partly_read_bodies_never_deadlock() {
        // Four bodies of 10 KiB in a 16 KiB budget, each read in 2 KiB frames,
        // all started at once: without the banker's rule each would hold
        // 4 KiB and wait for the others forever.
        let memory = BodyMemory::new(16 * KIB);
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..4 {
            let mut room = memory.room(&format!("s{i}"), conn(), 10 * KIB);
            tasks.spawn(async move {
                for _ in 0..5 {
                    room.take(2 * KIB).await;
                    tokio::task::yield_now().await;
                }
                // Answered: the room goes back.
            });
        }
        let done = tokio::time::timeout(Duration::from_secs(1), tasks.join_all()).await;
        assert!(done.is_ok(), "every body finished");
        assert_eq!(memory.held(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn stalled_partial_bodies_leave_room_for_a_small_delivery() {
        let memory = BodyMemory::new(32 * KIB);
        // Stalled senders that each sent 2 KiB of a 20 KiB body: grants stop
        // before they could make the ledger unsafe.
        let mut stalled = Vec::new();
        for _ in 0..20 {
            let mut room = memory.room("github", conn(), 20 * KIB);
            if tokio::time::timeout(Duration::from_millis(10), room.take(2 * KIB))
                .await
                .is_ok()
            {
                stalled.push(room);
            }
        }
        assert!(stalled.len() < 20);
        let mut push = memory.room("github", conn(), 4 * KIB);
        tokio::time::timeout(Duration::from_millis(10), push.take(4 * KIB))
            .await
            .expect("a small delivery is read at once");
    }

    proptest::proptest! {
        #[test]
        fn the_ledger_never_exceeds_a_pool_and_always_drains(
            capacity in 1u64..100_000,
            requests in proptest::collection::vec((0u8..3, 0u8..4, 1u64..50_000, 1u64..20_000), 1..20),
        ) {
            let memory = BodyMemory::new(capacity);
            let mut rooms = Vec::new();
            for (source, connection, claim, take) in requests {
                let mut room = memory.room(&source.to_string(), ConnectionId(u64::from(connection)), claim);
                let take = take.min(claim).min(memory.share());
                let _ = memory.try_grant(room.id, take);
                room.waiting = false;
                rooms.push(room);
                let ledger = memory.lock();
                for (pool, held) in &ledger.held {
                    proptest::prop_assert!(*held <= memory.capacity_of(pool));
                }
            }
            drop(rooms);
            proptest::prop_assert_eq!(memory.held(), 0);
            proptest::prop_assert!(memory.lock().claims.is_empty());
        }
    }
}
