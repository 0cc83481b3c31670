//! Group commit: calls made at the same time share one transaction.
//!
//! A [`Batcher`] queues calls; its task takes whatever is waiting (up to a
//! count and a byte budget) as soon as one of its `flushes` slots is free and
//! hands the batch to a flush, which answers every call on its own channel.
//! Under light load a batch is one call and costs what a lone transaction
//! did; under heavy load calls queue while the slots are busy and the next
//! batch carries all of them, so the work per statement and per commit
//! (PostgreSQL's CPU, the WAL flush) is shared. No call is answered before
//! the transaction that holds it has committed.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::store::StoreError;

/// A call waiting in a batch, and where its answer goes.
pub(super) struct Pending<T, R> {
    pub item: T,
    reply: oneshot::Sender<Result<R, StoreError>>,
}

impl<T, R> Pending<T, R> {
    /// Answer the caller; one that stopped waiting (its request was
    /// cancelled) gets nothing, and what was committed stays committed.
    pub(super) fn answer(self, result: Result<R, StoreError>) {
        let _ = self.reply.send(result);
    }
}

/// How big a batch may grow.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// Calls per batch.
    pub calls: usize,
    /// Sum of [`Weigh::weight`] per batch; a single heavier call still goes, alone.
    pub weight: usize,
    /// Batches being written at once (connections taken from the pool).
    pub flushes: usize,
    /// How long a batch waits for more calls after its first, once a slot
    /// is free: zero for calls someone waits on, a few milliseconds where
    /// fewer, larger commits matter more than the wait.
    pub linger: Duration,
}

/// The size of a call for [`Limits::weight`] (payload bytes for an ingest).
pub(super) trait Weigh {
    fn weight(&self) -> usize;
}

/// The queue in front of one kind of write.
pub(super) struct Batcher<T, R> {
    queue: mpsc::UnboundedSender<Pending<T, R>>,
}

impl<T, R> Batcher<T, R>
where
    T: Weigh + Send + 'static,
    R: Send + 'static,
{
    /// Start the batching task on the current runtime. It ends when the
    /// batcher is dropped and the queue is empty.
    pub(super) fn start<F, Fut>(limits: Limits, flush: F) -> Batcher<T, R>
    where
        F: Fn(Vec<Pending<T, R>>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (queue, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(rx, limits, flush));
        Batcher { queue }
    }

    /// Queue `item` and wait for its batch to be written.
    pub(super) async fn submit(&self, item: T) -> Result<R, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Pending { item, reply })
            .map_err(|_| StoreError::unavailable("the store's batch writer has stopped"))?;
        // A flush that panicked drops its calls' senders: "try again", not a hang.
        answer
            .await
            .map_err(|_| StoreError::unavailable("the store's batch writer lost this write"))?
    }
}

async fn run<T, R, F, Fut>(mut rx: mpsc::UnboundedReceiver<Pending<T, R>>, limits: Limits, flush: F)
where
    T: Weigh + Send + 'static,
    R: Send + 'static,
    F: Fn(Vec<Pending<T, R>>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.flushes.max(1)));
    let mut carry: Option<Pending<T, R>> = None;
    loop {
        // Wait for a free slot first: calls that arrive meanwhile join the next batch.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let first = match carry.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        let mut weight = first.item.weight();
        let mut batch = vec![first];
        let until = tokio::time::Instant::now() + limits.linger;
        while batch.len() < limits.calls.max(1) {
            let next = match rx.try_recv() {
                Ok(next) => next,
                Err(_) if limits.linger.is_zero() => break,
                Err(_) => match tokio::time::timeout_at(until, rx.recv()).await {
                    Ok(Some(next)) => next,
                    _ => break,
                },
            };
            weight = weight.saturating_add(next.item.weight());
            if weight > limits.weight {
                carry = Some(next);
                break;
            }
            batch.push(next);
        }
        let write = flush(batch);
        tokio::spawn(async move {
            write.await;
            drop(slot);
        });
    }
}

/// Calls that go out together.
pub(super) type Calls<T, R> = Vec<Pending<T, R>>;

/// Split `batch` into the first call for each key, sorted by key, and the
/// calls that repeat a key already in it. Sorted keys make concurrent
/// batches (on this replica or another) take row locks in one order, so
/// they wait for each other instead of deadlocking; the repeats are written
/// after the batch, alone, and see what it committed.
pub(super) fn first_by_key<T, R, K: Ord>(
    batch: Calls<T, R>,
    key: impl Fn(&T) -> K,
) -> (Calls<T, R>, Calls<T, R>) {
    let mut keyed: Vec<(K, usize, Pending<T, R>)> = batch
        .into_iter()
        .enumerate()
        .map(|(i, p)| (key(&p.item), i, p))
        .collect();
    keyed.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
    let mut first: Vec<(K, usize, Pending<T, R>)> = Vec::with_capacity(keyed.len());
    let mut repeats = Vec::new();
    for entry in keyed {
        match first.last() {
            Some(prev) if prev.0 == entry.0 => repeats.push(entry),
            _ => first.push(entry),
        }
    }
    repeats.sort_by_key(|e| e.1);
    (
        first.into_iter().map(|e| e.2).collect(),
        repeats.into_iter().map(|e| e.2).collect(),
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;

    impl Weigh for usize {
        fn weight(&self) -> usize {
            *self
        }
    }

    fn pending(
        item: usize,
    ) -> (
        Pending<usize, usize>,
        oneshot::Receiver<Result<usize, StoreError>>,
    ) {
        let (reply, rx) = oneshot::channel();
        (Pending { item, reply }, rx)
    }

    /// Calls queued while the only slot is busy go out as one batch, within
    /// the count and weight limits, and each gets its own answer.
    #[tokio::test(start_paused = true)]
    async fn calls_that_wait_share_the_next_batch() {
        let batches = Arc::new(Mutex::new(Vec::<Vec<usize>>::new()));
        let seen = batches.clone();
        let limits = Limits {
            calls: 4,
            weight: 100,
            flushes: 1,
            linger: Duration::ZERO,
        };
        let batcher = Arc::new(Batcher::start(
            limits,
            move |batch: Vec<Pending<usize, usize>>| {
                seen.lock().unwrap().push(batch.iter().map(|p| p.item).collect());
                async move {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    for p in batch {
                        let n = p.item;
                        p.answer(Ok(n * 2));
                    }
                }
            },
        ));
        let submit = |n: usize| {
            let b = batcher.clone();
            tokio::spawn(async move { b.submit(n).await })
        };
        let mut calls = vec![submit(1)];
        while batches.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
        calls.extend([2, 3, 4, 5, 6, 90, 20].map(submit));
        for (call, n) in calls.into_iter().zip([1, 2, 3, 4, 5, 6, 90, 20]) {
            assert_eq!(call.await.unwrap().unwrap(), n * 2);
        }
        let batches = batches.lock().unwrap().clone();
        // The first call goes alone (the slot was free); the rest waited.
        assert_eq!(batches, vec![vec![1], vec![2, 3, 4, 5], vec![6, 90], vec![20]]);
    }

    /// With a linger, calls that arrive within it after the first join its
    /// batch even when a slot was free; a later one starts the next.
    #[tokio::test(start_paused = true)]
    async fn a_lingering_batch_waits_for_calls_that_follow_the_first() {
        let batches = Arc::new(Mutex::new(Vec::<Vec<usize>>::new()));
        let seen = batches.clone();
        let limits = Limits {
            calls: 3,
            weight: usize::MAX,
            flushes: 1,
            linger: Duration::from_millis(5),
        };
        let batcher = Arc::new(Batcher::start(
            limits,
            move |batch: Vec<Pending<usize, usize>>| {
                seen.lock().unwrap().push(batch.iter().map(|p| p.item).collect());
                async move {
                    for p in batch {
                        let n = p.item;
                        p.answer(Ok(n));
                    }
                }
            },
        ));
        let submit_at = |n: usize, ms: u64| {
            let b = batcher.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                b.submit(n).await
            })
        };
        let calls = [(1, 0), (2, 2), (3, 4), (4, 6), (5, 7), (6, 20)].map(|(n, ms)| submit_at(n, ms));
        for (call, n) in calls.into_iter().zip(1..) {
            assert_eq!(call.await.unwrap().unwrap(), n);
        }
        let batches = batches.lock().unwrap().clone();
        // 1 waits 5 ms and takes 2 and 3 (full); 4 waits and takes 5; 6 is alone.
        assert_eq!(batches, vec![vec![1, 2, 3], vec![4, 5], vec![6]]);
    }

    /// A flush that panics answers its calls "unavailable"; later calls still work.
    #[tokio::test]
    async fn a_panicking_flush_fails_its_calls_not_the_batcher() {
        let limits = Limits {
            calls: 8,
            weight: usize::MAX,
            flushes: 2,
            linger: Duration::ZERO,
        };
        let batcher = Batcher::start(limits, |batch: Vec<Pending<usize, usize>>| async move {
            for p in batch {
                assert_ne!(p.item, 13, "unlucky");
                let n = p.item;
                p.answer(Ok(n));
            }
        });
        let err = batcher.submit(13).await.unwrap_err();
        assert!(err.is_unavailable(), "{err}");
        assert_eq!(batcher.submit(7).await.unwrap(), 7);
    }

    #[test]
    fn repeats_of_a_key_are_split_off_in_arrival_order() {
        let (calls, _rx): (Vec<_>, Vec<_>) = [5, 3, 5, 1, 3, 5].into_iter().map(pending).unzip();
        let (first, repeats) = first_by_key(calls, |n| *n);
        assert_eq!(first.iter().map(|p| p.item).collect::<Vec<_>>(), vec![1, 3, 5]);
        assert_eq!(repeats.iter().map(|p| p.item).collect::<Vec<_>>(), vec![5, 3, 5]);
    }
}
