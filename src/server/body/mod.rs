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
//! - A grant is made only if the request could then still finish with the
//!   room left once the bodies already read in full are answered. So the
//!   requests holding room can always all finish, one after another, and
//!   requests that are already partly read never wait on each other in a
//!   cycle (no deadlock under bursts of large bodies); the check is a few
//!   additions, however many bodies are in progress.
//! - Room is not held by the slow at the expense of the waiting: while a
//!   request waits for room, the slowest body (the one holding the most
//!   among equals) among those that have
//!   been read for half a second and arrived at under 64 KiB/s over the last
//!   half second, or that have themselves waited for more room for half a
//!   second, is cut off (`408`) in the pools that keep the waiting one out;
//!   then, as soon as its room is back, the next, until the waiting one
//!   fits. Time spent waiting for room is left off a body's clock: it is
//!   judged by its pace before the wait. Requests that hold nothing yet are
//!   served in arrival order within a source, so room freed for a waiting
//!   delivery is not taken by senders that arrive after it. Stalled senders
//!   are cut off by `[server] body_idle_timeout` in any case.
//!
//! Body bytes held are therefore at most `body_memory`, plus at most one
//! network read per request that is waiting for room; the buffers holding
//! them grow by doubling, so their capacity may reach twice that.

mod ledger;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use ledger::FLOOR_PER_SECOND;
use ledger::{Claim, Ledger, Pool};

/// How often a request waiting for room looks again for a slow body to cut
/// off, when no room was released meanwhile.
const RECHECK: Duration = Duration::from_millis(100);

/// The budget, sized once at start (a reload cannot resize it).
#[derive(Clone)]
pub struct BodyMemory {
    ledger: Arc<Mutex<Ledger>>,
    released: Arc<Notify>,
    capacity: u64,
    share: u64,
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
        let pools = [
            Pool::Global,
            Pool::Source(source.to_owned()),
            Pool::Connection(connection.0),
        ];
        let claim = Claim::new(pools, claim.min(self.share), Instant::now());
        let cut = claim.cut.clone();
        let mut ledger = self.lock();
        ledger.next += 1;
        let id = ledger.next;
        ledger.claims.insert(id, claim);
        Room {
            memory: self.clone(),
            id,
            cut,
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

    /// Grant `bytes` to claim `id` if it could still finish; otherwise mark it
    /// waiting, cut off a slow body in its way if there is one, and return
    /// false.
    fn try_grant(&self, id: u64, bytes: u64) -> bool {
        let now = Instant::now();
        let mut ledger = self.lock();
        if ledger.may_grant(id, bytes, |p| self.capacity_of(p)) {
            ledger.grant(id, bytes, now);
            return true;
        }
        let cut = ledger.wait_and_cut(id, bytes, now, |p| self.capacity_of(p));
        drop(ledger);
        if cut {
            metrics::counter!("hookbridge_body_cut_off_total").increment(1);
        }
        false
    }

    fn release(&self, id: u64) {
        if self.lock().release(id) {
            self.released.notify_waiters();
        }
    }

    fn finished(&self, id: u64) {
        self.lock().finish(id);
        // What it holds now counts as coming back: a waiting grant may pass.
        self.released.notify_waiters();
    }

    #[cfg(test)]
    fn held(&self) -> u64 {
        self.lock().held_in(&Pool::Global)
    }
}

/// One request's place in the ledger; gives back what it holds when dropped
/// (after the answer, so a body is counted until its commit).
pub struct Room {
    memory: BodyMemory,
    id: u64,
    cut: CancellationToken,
    /// Set while waiting for room, so a timeout there answers 503, not 408.
    pub waiting: bool,
}

impl Room {
    /// Take room for `bytes` more, waiting until it may be granted; false
    /// if the request was cut off for room meanwhile.
    async fn take(&mut self, bytes: u64) -> bool {
        loop {
            if self.cut.is_cancelled() {
                return false;
            }
            let released = self.memory.released.notified();
            tokio::pin!(released);
            // Registered before checking, so a release between the check and
            // the wait is not missed.
            released.as_mut().enable();
            if self.memory.try_grant(self.id, bytes) {
                self.waiting = false;
                return true;
            }
            self.waiting = true;
            // A slow body may become one to cut off without any release;
            // and this one may be cut off itself while it waits.
            tokio::select! {
                () = released => {}
                () = self.cut.cancelled() => return false,
                () = tokio::time::sleep(RECHECK) => {}
            }
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
    /// Cut off for room: it arrived too slowly while others waited.
    TooSlow,
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
    let cut = room.cut.clone();
    loop {
        let next = tokio::select! {
            biased;
            () = cut.cancelled() => return Err(ReadError::TooSlow),
            next = tokio::time::timeout(idle, futures_util::StreamExt::next(&mut body)) => next,
        };
        let next = next.map_err(|_| ReadError::Stalled)?;
        let Some(data) = next else { break };
        let data = data.map_err(|e| ReadError::Unreadable(e.into()))?;
        let len = data.len() as u64;
        received = received.saturating_add(len);
        if received > limit {
            return Err(ReadError::TooLarge);
        }
        if !room.take(len).await {
            return Err(ReadError::TooSlow);
        }
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
    // Read in full: no longer a body to cut off, however long its answer takes.
    room.memory.finished(room.id);
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests;
