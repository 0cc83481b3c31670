//! The accounting behind `[server] body_memory`: who holds how much of which
//! pool, whether a grant keeps every body able to finish, and which body to
//! cut off when others wait for room.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A body may be cut off for room only once it has been read for this long
/// (time spent waiting for room not counted).
pub(super) const GRACE: Duration = Duration::from_millis(500);
/// A body that holds room and waits for more is spared for its pace before
/// the wait only this long: otherwise a sender could send fast, then send one
/// byte more whenever the budget is full, and sit on what it holds.
pub(super) const WAIT_LIMIT: Duration = Duration::from_millis(500);
/// While others wait for room, a body arriving slower than this is cut off.
pub const FLOOR_PER_SECOND: u64 = 64 * 1024;
/// How the pace is measured: bytes in the current 125 ms slice and the four
/// before it, so over at least the last 500 ms.
const BUCKETS: usize = 5;
const BUCKET: Duration = Duration::from_millis(125);
const FLOOR_PER_WINDOW: u64 = FLOOR_PER_SECOND / 2;
/// Looking for a body to cut off reads every claim. A search that found one
/// is not repeated until its room comes back; one that found none is not
/// repeated within this, however many requests wait.
pub(super) const SEARCH_EVERY: Duration = Duration::from_millis(10);

/// Which pools a request draws from: the whole budget, its source's share and
/// its connection's share.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub(super) enum Pool {
    Global,
    Source(String),
    Connection(u64),
}

#[derive(Default)]
pub(super) struct Ledger {
    /// Bytes held per pool; a pool with nothing held is removed.
    pub(super) held: HashMap<Pool, u64>,
    /// The part of `held` that belongs to bodies read in full: given back at
    /// their answer whatever else happens.
    read: HashMap<Pool, u64>,
    pub(super) claims: HashMap<u64, Claim>,
    pub(super) next: u64,
    /// Requests holding nothing that wait for room, per source pool, in
    /// arrival order: a newer one is not served before them.
    queue: HashMap<Pool, BTreeSet<u64>>,
    /// Bodies cut off whose room has not come back yet.
    cut_pending: HashSet<u64>,
    /// When a search for a body to cut off last found none.
    last_empty_search: Option<Instant>,
}

pub(super) struct Claim {
    pub(super) pools: [Pool; 3],
    pub(super) held: u64,
    /// Bytes it may still need: its declared length (or its share when it
    /// declared none) less what it has received.
    pub(super) need: u64,
    /// Read in full, held until its answer (whether it waits for room is
    /// its pace's to know).
    pub(super) read_in_full: bool,
    pub(super) pace: Pace,
    /// Cancelled to cut the request off for room.
    pub(super) cut: CancellationToken,
}

impl Claim {
    pub(super) fn new(pools: [Pool; 3], need: u64, now: Instant) -> Claim {
        Claim {
            pools,
            held: 0,
            need,
            read_in_full: false,
            pace: Pace::new(now),
            cut: CancellationToken::new(),
        }
    }

    /// Holding room, not read in full, not already cut, and either slower
    /// than the floor past its grace or waiting for room for too long.
    fn slow(&self, now: Instant) -> bool {
        self.held > 0 && !self.read_in_full && !self.cut.is_cancelled() && self.pace.slow(now)
    }

    /// The pool of the source it was sent to.
    fn source(&self) -> &Pool {
        &self.pools[1]
    }
}

/// Add `n` to `pool`'s count.
fn add(counts: &mut HashMap<Pool, u64>, pool: &Pool, n: u64) {
    let count = counts.entry(pool.clone()).or_default();
    *count = count.saturating_add(n);
}

/// Take `n` from `pool`'s count, dropping the count once it is nothing.
fn subtract(counts: &mut HashMap<Pool, u64>, pool: &Pool, n: u64) {
    if let Some(count) = counts.get_mut(pool) {
        *count = count.saturating_sub(n);
        if *count == 0 {
            counts.remove(pool);
        }
    }
}

/// How fast a body has been arriving lately: bytes per 125 ms slice over the
/// current slice and the four before it, on a clock that stops while the
/// body waits for room (the sender is not to blame for that pause, and its
/// pace before the wait is what it is judged by meanwhile).
#[derive(Clone, Debug)]
pub(super) struct Pace {
    since: Instant,
    /// Time spent waiting for room, left off the clock.
    waited: Duration,
    /// Set while waiting for room.
    waiting_since: Option<Instant>,
    /// The index of the newest slice written, counted on the clock.
    last: u64,
    bytes: [u64; BUCKETS],
}

impl Pace {
    pub(super) fn new(now: Instant) -> Pace {
        Pace {
            since: now,
            waited: Duration::ZERO,
            waiting_since: None,
            last: 0,
            bytes: [0; BUCKETS],
        }
    }

    pub(super) fn wait(&mut self, now: Instant) {
        self.waiting_since.get_or_insert(now);
    }

    pub(super) fn resume(&mut self, now: Instant) {
        if let Some(since) = self.waiting_since.take() {
            self.waited = self.waited.saturating_add(now.saturating_duration_since(since));
        }
    }

    /// Time spent reading (not waiting for room) up to `now`.
    fn reading(&self, now: Instant) -> Duration {
        self.waiting_since
            .unwrap_or(now)
            .min(now)
            .saturating_duration_since(self.since)
            .saturating_sub(self.waited)
    }

    fn slice(&self, now: Instant) -> u64 {
        let elapsed = self.reading(now).as_nanos();
        u64::try_from(elapsed / BUCKET.as_nanos()).unwrap_or(u64::MAX)
    }

    pub(super) fn record(&mut self, now: Instant, n: u64) {
        let slice = self.slice(now).max(self.last);
        let gap = slice.saturating_sub(self.last);
        for k in 1..=gap.min(BUCKETS as u64) {
            self.bytes[self.last.wrapping_add(k) as usize % BUCKETS] = 0;
        }
        self.last = slice;
        let at = &mut self.bytes[slice as usize % BUCKETS];
        *at = at.saturating_add(n);
    }

    /// Bytes received in the current slice and the four before it: at least
    /// the last 500 ms, at most the last 625 ms.
    pub(super) fn recent(&self, now: Instant) -> u64 {
        let slice = self.slice(now).max(self.last);
        (0..BUCKETS as u64)
            .filter_map(|back| self.last.checked_sub(back))
            .filter(|s| s.saturating_add(BUCKETS as u64) > slice)
            .map(|s| self.bytes[s as usize % BUCKETS])
            .fold(0u64, u64::saturating_add)
    }

    fn slow(&self, now: Instant) -> bool {
        let too_slow = self.reading(now) >= GRACE && self.recent(now) < FLOOR_PER_WINDOW;
        let waited_too_long = self
            .waiting_since
            .is_some_and(|since| now.saturating_duration_since(since) >= WAIT_LIMIT);
        too_slow || waited_too_long
    }
}

impl Ledger {
    /// Whether `bytes` more may go to claim `id`: only if every pool it
    /// draws from has the room, and then, counting what the bodies already
    /// read in full will give back, still has room for the rest of its claim.
    ///
    /// That keeps one thing true at every moment: once the bodies read in
    /// full have been answered, the requests holding room can all finish,
    /// one after another, each with the room then free (so partly read
    /// bodies never wait on each other in a cycle). It holds with nothing
    /// held; a release or a body read in full only adds room; and after such
    /// a grant the bodies read in full can go first, then this request,
    /// which gives back more than it took, and then the others in the order
    /// they could before. The check costs the same with ten bodies in
    /// progress or ten thousand.
    pub(super) fn may_grant(&self, id: u64, bytes: u64, capacity_of: impl Fn(&Pool) -> u64) -> bool {
        let Some(claim) = self.claims.get(&id) else {
            return false;
        };
        if claim.held == 0 && self.queued_before(id, &claim.pools) {
            return false;
        }
        let need = claim.need.saturating_sub(bytes);
        claim
            .pools
            .iter()
            .all(|pool| self.fits(pool, bytes, need, &capacity_of))
    }

    /// Whether `pool` has room for `bytes` now and, counting what bodies read
    /// in full will give back, for `need` more after them.
    fn fits(&self, pool: &Pool, bytes: u64, need: u64, capacity_of: &impl Fn(&Pool) -> u64) -> bool {
        capacity_of(pool)
            .saturating_sub(self.held_in(pool))
            .checked_sub(bytes)
            .is_some_and(|free| free.saturating_add(self.read_in(pool)) >= need)
    }

    /// Whether an older request holding nothing waits for room in the same
    /// source.
    fn queued_before(&self, id: u64, pools: &[Pool; 3]) -> bool {
        pools.iter().any(|pool| {
            self.queue
                .get(pool)
                .and_then(|ids| ids.first())
                .is_some_and(|first| *first < id)
        })
    }

    pub(super) fn read_in(&self, pool: &Pool) -> u64 {
        self.read.get(pool).copied().unwrap_or(0)
    }

    /// Claim `id` has its whole body: what it holds will come back.
    pub(super) fn finish(&mut self, id: u64) {
        let Some(claim) = self.claims.get_mut(&id) else {
            return;
        };
        if claim.read_in_full {
            return;
        }
        claim.read_in_full = true;
        for pool in &claim.pools {
            add(&mut self.read, pool, claim.held);
        }
        // Cut as its last bytes came in: its room comes back at its answer
        // anyway, and the next search need not wait for that commit.
        self.cut_pending.remove(&id);
    }

    pub(super) fn held_in(&self, pool: &Pool) -> u64 {
        self.held.get(pool).copied().unwrap_or(0)
    }

    /// Record a grant the check allowed.
    pub(super) fn grant(&mut self, id: u64, bytes: u64, now: Instant) {
        let Some(claim) = self.claims.get_mut(&id) else {
            return;
        };
        debug_assert!(!claim.read_in_full, "a body read in full takes no more room");
        claim.held = claim.held.saturating_add(bytes);
        claim.need = claim.need.saturating_sub(bytes);
        claim.pace.resume(now);
        claim.pace.record(now, bytes);
        for pool in &claim.pools {
            add(&mut self.held, pool, bytes);
        }
        let source = claim.source().clone();
        self.dequeue(&source, id);
    }

    /// Take claim `id` out of its source's queue; true if it was in it.
    fn dequeue(&mut self, source: &Pool, id: u64) -> bool {
        let Some(ids) = self.queue.get_mut(source) else {
            return false;
        };
        let was = ids.remove(&id);
        if ids.is_empty() {
            self.queue.remove(source);
        }
        was
    }

    /// Claim `id` waits for `bytes` of room: queue it if it holds nothing,
    /// and cut off the slowest of the slow ones (see [`Claim::slow`]), the
    /// one holding the most among equals, in every pool that keeps `bytes`
    /// from being granted, unless a cut is already on its way, a search
    /// within `SEARCH_EVERY` found none, or only older waiters keep it out
    /// (the first of them searches). True if one was cut.
    pub(super) fn wait_and_cut(
        &mut self,
        id: u64,
        bytes: u64,
        now: Instant,
        capacity_of: impl Fn(&Pool) -> u64,
    ) -> bool {
        let Some(waiter) = self.claims.get_mut(&id) else {
            return false;
        };
        waiter.pace.wait(now);
        if waiter.held == 0 {
            self.queue.entry(waiter.source().clone()).or_default().insert(id);
        }
        let recently_empty = self
            .last_empty_search
            .is_some_and(|last| now.saturating_duration_since(last) < SEARCH_EVERY);
        if !self.cut_pending.is_empty() || recently_empty {
            return false;
        }
        let Some(waiter) = self.claims.get(&id) else {
            return false;
        };
        let need = waiter.need.saturating_sub(bytes);
        let binding: Vec<&Pool> = waiter
            .pools
            .iter()
            .filter(|p| !self.fits(p, bytes, need, &capacity_of))
            .collect();
        if binding.is_empty() {
            return false;
        }
        let victim = self
            .claims
            .iter()
            .filter(|(other, c)| **other != id && c.slow(now) && binding.iter().all(|p| c.pools.contains(p)))
            // The slowest first (a sender that stopped before one that is
            // merely slow), then the one holding the most.
            .min_by_key(|(_, c)| (c.pace.recent(now), std::cmp::Reverse(c.held)))
            .map(|(victim, c)| (*victim, c.cut.clone()));
        match victim {
            Some((victim, cut)) => {
                cut.cancel();
                self.cut_pending.insert(victim);
                true
            }
            None => {
                self.last_empty_search = Some(now);
                false
            }
        }
    }

    /// Forget claim `id`; true if it held anything or was queued (so
    /// waiters may proceed).
    pub(super) fn release(&mut self, id: u64) -> bool {
        let Some(claim) = self.claims.remove(&id) else {
            return false;
        };
        self.cut_pending.remove(&id);
        let was_queued = self.dequeue(claim.source(), id);
        if claim.held == 0 {
            return was_queued;
        }
        for pool in &claim.pools {
            subtract(&mut self.held, pool, claim.held);
            if claim.read_in_full {
                subtract(&mut self.read, pool, claim.held);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pace_counts_the_last_half_second_only() {
        let start = Instant::now();
        let mut pace = Pace::new(start);
        pace.record(start, 100_000);
        assert_eq!(pace.recent(start), 100_000);
        assert!(!pace.slow(start + Duration::from_millis(499)));
        // Slices older than the window no longer count.
        assert_eq!(pace.recent(start + Duration::from_millis(624)), 100_000);
        assert!(!pace.slow(start + Duration::from_millis(624)));
        assert_eq!(pace.recent(start + Duration::from_millis(625)), 0);
        assert!(pace.slow(start + Duration::from_millis(625)));
        // A trickle under the floor stays slow; a flow just above it is not.
        let mut trickle = Pace::new(start);
        let mut steady = Pace::new(start);
        for ms in (0..3_000).step_by(100) {
            let at = start + Duration::from_millis(ms);
            trickle.record(at, 1_000);
            steady.record(at, 7 * 1024);
        }
        let end = start + Duration::from_millis(3_000);
        assert!(trickle.slow(end));
        assert!(!steady.slow(end));
        // Waiting for room stops the clock: the pace before the wait holds,
        // until the wait itself is too long.
        let mut fast = Pace::new(start);
        fast.record(start, 40 * 1024);
        fast.wait(start + Duration::from_millis(100));
        let later = start + Duration::from_millis(100) + WAIT_LIMIT - Duration::from_millis(1);
        assert!(!fast.slow(later));
        assert!(fast.slow(later + Duration::from_millis(1)));
        fast.resume(start + Duration::from_secs(2));
        assert_eq!(fast.recent(start + Duration::from_secs(2)), 40 * 1024);
        assert!(!fast.slow(start + Duration::from_secs(2)));
        // Long gaps clear every slice, whatever their length.
        trickle.record(start + Duration::from_secs(3_600), 1);
        assert_eq!(trickle.recent(start + Duration::from_secs(3_600)), 1);
    }

    proptest::proptest! {
        #[test]
        fn pace_never_counts_more_than_was_recorded(
            steps in proptest::collection::vec((0u64..2_000, 0u64..u64::MAX / 4), 1..50),
        ) {
            let start = Instant::now();
            let mut pace = Pace::new(start);
            let mut at = start;
            let mut window: Vec<(Instant, u64)> = Vec::new();
            for (gap_ms, bytes) in steps {
                at += Duration::from_millis(gap_ms);
                pace.record(at, bytes);
                window.push((at, bytes));
                let total = window.iter().fold(0u64, |a, (_, b)| a.saturating_add(*b));
                proptest::prop_assert!(pace.recent(at) <= total);
                // What arrived just now always counts.
                proptest::prop_assert!(pace.recent(at) >= bytes);
            }
        }
    }
}
