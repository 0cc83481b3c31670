//! Jobs leased to this process's dispatcher in the transaction that stores them.
//!
//! Without it, a stored job waits for the dispatcher's next lease statement:
//! one more statement, one more commit and one more version of the job's row
//! (and its index entries) per batch, and on PostgreSQL with several replicas
//! those statements are most of what a third replica adds. With it, an
//! ingest batch first claims the dispatcher's free slots ([`Handoff::claim`]),
//! writes that many of its jobs already leased to the dispatcher, and after
//! the commit hands each one over with its slot ([`Handoff::deliver`]): the
//! attempt starts at once, as if the dispatcher had leased it.
//!
//! Only free slots are claimed, never jobs ahead of them, so a handed job
//! never waits for a slot. Its lease starts at the claim, before the insert
//! (which may wait on locks): only a dispatcher whose lease is at least
//! twice the longest request timeout takes part, and a job whose insert
//! took more than half the lease is given back rather than started, so a
//! started job has a whole attempt of its lease left. Nor may a claim delay
//! the jobs the dispatcher leases itself: from before it counts its free
//! slots for a lease until each leased job has a slot, it holds the handoff
//! ([`Handoff::hold`]) and no ingest claims; and it leases one job fewer
//! ahead of its free slots for each claim made before that is still pending
//! ([`Handoff::claims_pending`]: its slot frees up only an attempt after its
//! insert). Jobs
//! of a batch left over when the slots run out (or while the handoff is
//! held) are stored due, as before, and the dispatcher is woken for them.
//!
//! A dispatcher that stops closes the handoff: later claims get nothing, and
//! jobs committed leased after it closed come back from
//! [`Handoff::deliver`], for the store to give back at once (their lease
//! would otherwise wait to expire).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};

use super::LeasedJob;

/// The dispatcher's side: when it is now, and how long a lease lasts; none
/// when its lease is too short to hand jobs over (see [`Handoff::claim`]).
pub type Terms = Box<dyn Fn() -> Option<(SystemTime, Duration)> + Send + Sync>;

/// A job handed over with the slot it runs in.
pub struct Handed {
    pub job: LeasedJob,
    pub permit: OwnedSemaphorePermit,
}

/// Shared by one dispatcher and the store it reads: see the module docs.
pub struct Handoff {
    owner: String,
    slots: Arc<Semaphore>,
    terms: Terms,
    jobs: mpsc::UnboundedSender<Handed>,
    wake: Arc<Notify>,
    /// Set while the dispatcher leases jobs itself and gives them slots
    /// ([`Handoff::hold`]): no claim then.
    held: AtomicBool,
    /// Slots claimed whose jobs are not handed over yet.
    claimed: Arc<AtomicUsize>,
}

/// While alive, no ingest claims a slot: see [`Handoff::hold`].
pub struct Hold<'a>(&'a AtomicBool);

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// Slots taken for the jobs of one batch, and the lease they are written with.
pub struct Claim {
    permits: Vec<OwnedSemaphorePermit>,
    claimed: Arc<AtomicUsize>,
    /// How many it took: counted in [`Handoff::claims_pending`] until it drops.
    taken: usize,
    /// Whose lease: the dispatcher's owner id.
    pub owner: String,
    pub now: SystemTime,
    pub until: SystemTime,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.claimed.fetch_sub(self.taken, Ordering::SeqCst);
    }
}

impl Claim {
    /// How many jobs of the batch are written leased.
    pub fn len(&self) -> usize {
        self.permits.len()
    }

    pub fn is_empty(&self) -> bool {
        self.permits.is_empty()
    }
}

impl Handoff {
    /// The handoff of a dispatcher that runs its attempts in `slots` and
    /// reads its handed jobs from the receiver returned with it.
    pub fn new(
        owner: String,
        slots: Arc<Semaphore>,
        terms: Terms,
        wake: Arc<Notify>,
    ) -> (Arc<Handoff>, mpsc::UnboundedReceiver<Handed>) {
        let (jobs, rx) = mpsc::unbounded_channel();
        let handoff = Handoff {
            owner,
            slots,
            terms,
            jobs,
            wake,
            held: AtomicBool::new(false),
            claimed: Arc::new(AtomicUsize::new(0)),
        };
        (Arc::new(handoff), rx)
    }

    /// Keep ingests from claiming slots until the guard drops. The
    /// dispatcher holds it from before it counts its free slots for a lease
    /// until every job it leased has a slot: a slot an ingest took meanwhile
    /// would leave a leased job waiting for a whole attempt, which its lease
    /// was not sized for.
    pub fn hold(&self) -> Hold<'_> {
        self.held.store(true, Ordering::SeqCst);
        Hold(&self.held)
    }

    /// Slots claimed by ingests whose jobs are not handed over yet. They
    /// free up only one attempt after their insert commits, so the
    /// dispatcher leases that many jobs fewer ahead of its free slots.
    pub fn claims_pending(&self) -> usize {
        self.claimed.load(Ordering::SeqCst)
    }

    /// Take up to `jobs` of the dispatcher's free slots. None once it
    /// stopped, while it holds them ([`Handoff::hold`]), or when its lease
    /// is too short for a job to wait for its insert (it has no terms).
    pub fn claim(&self, jobs: usize) -> Claim {
        let terms = (self.terms)();
        let mut permits = Vec::new();
        if terms.is_some() && !self.jobs.is_closed() && !self.held.load(Ordering::SeqCst) {
            while permits.len() < jobs {
                match self.slots.clone().try_acquire_owned() {
                    Ok(p) => permits.push(p),
                    Err(_) => break,
                }
            }
        }
        self.claimed.fetch_add(permits.len(), Ordering::SeqCst);
        let (now, lease) = terms.unwrap_or((SystemTime::UNIX_EPOCH, Duration::ZERO));
        Claim {
            taken: permits.len(),
            permits,
            claimed: self.claimed.clone(),
            owner: self.owner.clone(),
            now,
            until: now.checked_add(lease).unwrap_or(now),
        }
    }

    /// Hand over `jobs`, committed as leased under `claim` (at most as many
    /// as it holds; slots left over are freed), and wake the dispatcher when
    /// `left_due` jobs were stored without a lease. Answers the ids of the
    /// jobs the dispatcher cannot take: it stopped, or the insert took more
    /// than half their lease (a job must have the time of one whole attempt
    /// left: the lease is at least twice the longest request timeout, or
    /// no claim is made).
    pub fn deliver(&self, mut claim: Claim, jobs: Vec<LeasedJob>, left_due: bool) -> Vec<String> {
        let lease = claim.until.duration_since(claim.now).unwrap_or_default();
        let late = match (self.terms)() {
            Some((now, _)) => now.duration_since(claim.now).unwrap_or_default() > lease / 2,
            None => true,
        };
        let mut refused = Vec::new();
        let permits = std::mem::take(&mut claim.permits);
        for (job, permit) in jobs.into_iter().zip(permits) {
            if late {
                refused.push(job.id);
            } else if let Err(mpsc::error::SendError(back)) = self.jobs.send(Handed { job, permit }) {
                refused.push(back.job.id);
            }
        }
        if left_due || !refused.is_empty() {
            self.wake.notify_one();
        }
        refused
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn job(id: &str) -> LeasedJob {
        LeasedJob {
            id: id.into(),
            delivery_id: "d".into(),
            delivery: "x".into(),
            source: "s".into(),
            rule: "r".into(),
            target: "t".into(),
            request: serde_json::from_value(
                serde_json::json!({"api": "gitlab_pipeline", "project": "o/r", "ref": "main"}),
            )
            .unwrap(),
            attempt: 1,
            grouped: false,
            trace: None,
            ambiguous_since: None,
            previous: None,
        }
    }

    fn handoff(
        slots: usize,
    ) -> (
        Arc<Handoff>,
        mpsc::UnboundedReceiver<Handed>,
        Arc<Semaphore>,
        Arc<Notify>,
    ) {
        let sem = Arc::new(Semaphore::new(slots));
        let wake = Arc::new(Notify::new());
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let (h, rx) = Handoff::new(
            "me".into(),
            sem.clone(),
            Box::new(move || Some((at, Duration::from_secs(30)))),
            wake.clone(),
        );
        (h, rx, sem, wake)
    }

    /// A claim takes free slots only, and what it does not hand over is freed.
    #[tokio::test]
    async fn a_claim_takes_only_free_slots_and_gives_back_what_it_does_not_use() {
        let (h, mut rx, sem, _) = handoff(3);
        let busy = sem.clone().try_acquire_owned().unwrap();
        let claim = h.claim(5);
        assert_eq!(claim.len(), 2);
        assert_eq!(claim.owner, "me");
        assert_eq!(
            claim.until.duration_since(claim.now).unwrap(),
            Duration::from_secs(30)
        );
        assert_eq!(sem.available_permits(), 0);
        assert!(h.claim(1).is_empty());
        // One of the two claimed jobs was a duplicate: its slot comes back.
        assert!(h.deliver(claim, vec![job("a")], false).is_empty());
        assert_eq!(sem.available_permits(), 1);
        let handed = rx.recv().await.unwrap();
        assert_eq!(handed.job.id, "a");
        drop(handed);
        drop(busy);
        assert_eq!(sem.available_permits(), 3);
    }

    /// A dispatcher waiting for a slot gets released ones before any claim.
    #[tokio::test]
    async fn a_waiting_dispatcher_is_served_before_a_claim() {
        let (h, _rx, sem, _) = handoff(1);
        let held = sem.clone().try_acquire_owned().unwrap();
        let waiter = tokio::spawn({
            let sem = sem.clone();
            async move { sem.acquire_owned().await.unwrap() }
        });
        // The current-thread runtime runs the waiter up to its wait here.
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        assert!(!waiter.is_finished());
        drop(held);
        assert!(
            h.claim(1).is_empty(),
            "a claim took the slot the dispatcher waits for"
        );
        let _slot = waiter.await.unwrap();
        assert!(h.claim(1).is_empty());
    }

    /// While the dispatcher holds its slots, nothing is claimed.
    #[tokio::test]
    async fn a_held_handoff_claims_nothing_until_the_hold_ends() {
        let (h, _rx, sem, _) = handoff(2);
        let hold = h.hold();
        assert!(h.claim(2).is_empty());
        assert_eq!(sem.available_permits(), 2);
        drop(hold);
        assert_eq!(h.claim(2).len(), 2);
    }

    /// A claim counts as pending until its jobs are handed over or it
    /// drops; a hand-over after more than half the lease is refused (the
    /// jobs are given back, the slots freed); a dispatcher without terms
    /// (its lease too short) is claimed nothing.
    #[tokio::test]
    async fn pending_claims_are_counted_and_a_late_hand_over_is_refused() {
        let (h, mut rx, sem, wake) = handoff(3);
        let claim = h.claim(2);
        assert_eq!(h.claims_pending(), 2);
        let dropped = h.claim(1);
        assert_eq!(h.claims_pending(), 3);
        drop(dropped);
        assert_eq!(h.claims_pending(), 2);
        assert!(h.deliver(claim, vec![job("a")], false).is_empty());
        assert_eq!(h.claims_pending(), 0);
        assert_eq!(rx.recv().await.unwrap().job.id, "a");

        let clock = Arc::new(std::sync::Mutex::new(
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_000),
        ));
        let at = clock.clone();
        let terms: Terms = Box::new(move || Some((*at.lock().unwrap(), Duration::from_secs(30))));
        let (late, _late_rx) = Handoff::new("me".into(), sem.clone(), terms, wake.clone());
        let claim = late.claim(1);
        assert_eq!(claim.len(), 1);
        *clock.lock().unwrap() += Duration::from_millis(15_001);
        assert_eq!(late.deliver(claim, vec![job("b")], false), ["b"]);
        assert_eq!(late.claims_pending(), 0);
        tokio::time::timeout(Duration::from_secs(5), wake.notified())
            .await
            .unwrap();

        let (short, _short_rx) = Handoff::new("me".into(), sem.clone(), Box::new(|| None), wake);
        assert!(short.claim(1).is_empty());
        assert_eq!(sem.available_permits(), 3);
    }

    /// After the dispatcher stopped, nothing is claimed, and jobs committed
    /// under an earlier claim come back to be given back; a left-over due
    /// job wakes the dispatcher.
    #[tokio::test]
    async fn a_stopped_dispatcher_claims_nothing_and_refuses_what_comes_late() {
        let (h, rx, sem, wake) = handoff(2);
        let claim = h.claim(2);
        assert_eq!(claim.len(), 2);
        drop(rx);
        assert!(h.claim(1).is_empty());
        let refused = h.deliver(claim, vec![job("a"), job("b")], true);
        assert_eq!(refused, ["a", "b"]);
        assert_eq!(sem.available_permits(), 2);
        tokio::time::timeout(Duration::from_secs(5), wake.notified())
            .await
            .unwrap();
    }
}
