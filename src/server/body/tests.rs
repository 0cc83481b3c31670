//! The budget under bursts, stalls and slow senders, on a paused clock.

use super::*;

const KIB: u64 = 1024;

/// Room taken within a second of (paused) time, or the test fails rather
/// than spin forever.
async fn granted(take: impl std::future::Future<Output = bool>) {
    let took = tokio::time::timeout(Duration::from_secs(1), take).await;
    assert_eq!(took, Ok(true), "no room within a second");
}

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
    granted(push.take(8 * KIB)).await;
    assert_eq!(memory.held(), 8 * KIB);
    drop(push);
    assert_eq!(memory.held(), 0);
}

#[tokio::test(start_paused = true)]
async fn one_source_or_connection_never_takes_the_whole_budget() {
    let memory = BodyMemory::new(64 * KIB);
    assert_eq!(memory.share(), 56 * KIB);
    let mut hog = memory.room("github", conn(), 56 * KIB);
    granted(hog.take(56 * KIB)).await;
    // Read in full, it waits for its commit: never a body to cut off.
    memory.finished(hog.id);
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
async fn a_stalled_body_is_cut_off_for_one_that_waits_after_its_grace() {
    let memory = BodyMemory::new(64 * KIB);
    let mut hog = memory.room("github", conn(), 100 * KIB);
    granted(hog.take(56 * KIB)).await;
    let mut push = memory.room("github", conn(), 8 * KIB);
    let waiting = {
        let mut push_take = Box::pin(push.take(8 * KIB));
        // Within the hog's grace nothing is cut.
        assert!(
            tokio::time::timeout(Duration::from_millis(400), push_take.as_mut())
                .await
                .is_err()
        );
        assert!(!hog.cut.is_cancelled());
        // Past it, the hog (no bytes in the last half second) is cut off.
        assert!(
            tokio::time::timeout(ledger::GRACE, push_take.as_mut())
                .await
                .is_err()
        );
        assert!(hog.cut.is_cancelled(), "the stalled body was cut off");
        push_take
    };
    // The hog's task ends (its reader saw the cut): the push gets room.
    drop(hog);
    assert!(
        tokio::time::timeout(Duration::from_millis(10), waiting)
            .await
            .expect("room once the cut body is gone")
    );
    drop(push);
    assert_eq!(memory.held(), 0);
}

#[tokio::test(start_paused = true)]
async fn waiters_cut_one_body_at_a_time_and_newcomers_queue_behind_them() {
    let memory = BodyMemory::new(64 * KIB);
    let mut stalled = Vec::new();
    for i in 0..7 {
        let mut room = memory.room(&format!("s{i}"), conn(), 9 * KIB);
        granted(room.take(8 * KIB)).await;
        stalled.push(room);
    }
    tokio::time::sleep(ledger::GRACE * 2).await;
    // A crowd of waiting requests: one cut, and no more while its room has
    // not come back.
    let waiting: Vec<Room> = (0..50).map(|_| memory.room("github", conn(), 9 * KIB)).collect();
    for room in &waiting {
        assert!(!memory.try_grant(room.id, 9 * KIB));
    }
    let cut = |stalled: &[Room]| stalled.iter().filter(|r| r.cut.is_cancelled()).count();
    assert_eq!(cut(&stalled), 1);
    tokio::time::sleep(ledger::SEARCH_EVERY * 3).await;
    assert!(!memory.try_grant(waiting[0].id, 9 * KIB));
    assert_eq!(cut(&stalled), 1);
    // The cut body's request ends: the first waiter fits, the next one
    // cuts again at once.
    stalled.retain(|r| !r.cut.is_cancelled());
    assert!(memory.try_grant(waiting[0].id, 9 * KIB));
    assert!(!memory.try_grant(waiting[1].id, 9 * KIB));
    assert_eq!(cut(&stalled), 1);
    // A newcomer that would fit in what is free waits behind the older
    // waiters of its source; another source's does not.
    let newcomer = memory.room("github", conn(), KIB);
    assert!(!memory.try_grant(newcomer.id, KIB));
    let elsewhere = memory.room("gitlab", conn(), KIB);
    assert!(memory.try_grant(elsewhere.id, KIB));
}

#[tokio::test(start_paused = true)]
async fn a_sender_that_stopped_is_cut_before_one_that_is_merely_slow() {
    let memory = BodyMemory::new(64 * KIB);
    let mut stopped = memory.room("a", conn(), 20 * KIB);
    granted(stopped.take(8 * KIB)).await;
    let mut slow = memory.room("b", conn(), 48 * KIB);
    granted(slow.take(40 * KIB)).await;
    // The slow one keeps coming at 8 KiB/s, under the floor; the other
    // sends nothing more.
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(125)).await;
        granted(slow.take(KIB)).await;
    }
    let mut push = memory.room("c", conn(), 16 * KIB);
    let _ = tokio::time::timeout(Duration::from_millis(1), push.take(16 * KIB)).await;
    assert!(
        stopped.cut.is_cancelled(),
        "the stopped one, though it holds less"
    );
    assert!(!slow.cut.is_cancelled());
}

#[tokio::test(start_paused = true)]
async fn a_cut_body_that_was_read_in_full_meanwhile_does_not_hold_up_the_next_cut() {
    let memory = BodyMemory::new(64 * KIB);
    let mut stalled = Vec::new();
    for i in 0..7 {
        let mut room = memory.room(&format!("s{i}"), conn(), 8 * KIB + 1);
        granted(room.take(8 * KIB)).await;
        stalled.push(room);
    }
    tokio::time::sleep(ledger::GRACE * 2).await;
    let waiter = memory.room("github", conn(), 16 * KIB);
    assert!(!memory.try_grant(waiter.id, 16 * KIB));
    let cut: Vec<&Room> = stalled.iter().filter(|r| r.cut.is_cancelled()).collect();
    assert_eq!(cut.len(), 1);
    // Its last byte came in as it was cut: it goes on to its commit.
    memory.finished(cut[0].id);
    assert!(!memory.try_grant(waiter.id, 16 * KIB));
    assert_eq!(stalled.iter().filter(|r| r.cut.is_cancelled()).count(), 2);
}

#[tokio::test(start_paused = true)]
async fn when_the_first_waiter_gives_up_the_next_one_is_served_at_once() {
    let memory = BodyMemory::new(64 * KIB);
    let mut read = memory.room("github", conn(), 50 * KIB);
    granted(read.take(50 * KIB)).await;
    memory.finished(read.id);
    // The first waiter needs more than is free; the second would fit, but
    // waits its turn.
    let mut first = memory.room("github", conn(), 20 * KIB);
    let mut second = memory.room("github", conn(), 4 * KIB);
    assert!(!memory.try_grant(first.id, 20 * KIB));
    let mut second_take = Box::pin(second.take(4 * KIB));
    assert!(
        tokio::time::timeout(Duration::from_millis(1), second_take.as_mut())
            .await
            .is_err()
    );
    // The first one's request ends (its sender gave up): the second one is
    // woken and served, well before the next recheck.
    first.waiting = false;
    drop(first);
    assert_eq!(
        tokio::time::timeout(Duration::from_millis(1), second_take).await,
        Ok(true)
    );
}

#[tokio::test(start_paused = true)]
async fn bodies_arriving_above_the_floor_or_read_in_full_are_never_cut() {
    let memory = BodyMemory::new(1024 * KIB);
    // One read in full and waiting for its commit, one arriving at
    // 160 KiB/s, and one from another source that needs more than is free.
    let mut read = memory.room("github", conn(), 500 * KIB);
    granted(read.take(500 * KIB)).await;
    memory.finished(read.id);
    let mut steady = memory.room("github", conn(), 10_000 * KIB);
    for _ in 0..30 {
        granted(steady.take(4 * KIB)).await;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // 500 KiB no longer fit beside the two: it waits.
    let mut push = memory.room("gitlab", conn(), 500 * KIB);
    let mut push_take = Box::pin(push.take(500 * KIB));
    for _ in 0..30 {
        granted(steady.take(4 * KIB)).await;
        assert!(
            tokio::time::timeout(Duration::from_millis(25), push_take.as_mut())
                .await
                .is_err()
        );
    }
    assert!(!steady.cut.is_cancelled(), "cut while arriving at 160 KiB/s");
    // The steady one stops: once its last half second is under the floor
    // it is the one cut, never the body read in full.
    assert!(
        tokio::time::timeout(ledger::GRACE + RECHECK * 2, push_take.as_mut())
            .await
            .is_err()
    );
    assert!(steady.cut.is_cancelled());
    assert!(!read.cut.is_cancelled(), "a body read in full is never cut");
    drop(steady);
    assert!(
        tokio::time::timeout(Duration::from_millis(10), push_take)
            .await
            .expect("room once the cut body is gone")
    );
}

#[tokio::test(start_paused = true)]
async fn a_fast_body_waiting_for_room_is_spared_only_for_the_wait_limit() {
    let memory = BodyMemory::new(128 * KIB);
    let mut read = memory.room("a", conn(), 80 * KIB);
    granted(read.take(80 * KIB)).await;
    memory.finished(read.id);
    // 40 KiB at once, then 16 KiB more that do not fit: it waits.
    let mut fast = memory.room("b", conn(), 56 * KIB);
    granted(fast.take(40 * KIB)).await;
    let fast_cut = fast.cut.clone();
    let mut fast_take = Box::pin(fast.take(16 * KIB));
    assert!(
        tokio::time::timeout(Duration::from_millis(1), fast_take.as_mut())
            .await
            .is_err()
    );
    // Another waits too, and looks for a body to cut off: not the fast one,
    // not yet.
    let mut other = memory.room("c", conn(), 16 * KIB);
    let mut other_take = Box::pin(other.take(16 * KIB));
    let both = async {
        tokio::select! {
            _ = fast_take.as_mut() => {}
            _ = other_take.as_mut() => {}
        }
    };
    assert!(
        tokio::time::timeout(ledger::WAIT_LIMIT - Duration::from_millis(150), both)
            .await
            .is_err()
    );
    assert!(!fast_cut.is_cancelled());
    // Waiting past the limit while it holds room: cut off.
    let _ = tokio::time::timeout(RECHECK * 3, other_take.as_mut()).await;
    assert!(fast_cut.is_cancelled());
    assert!(!read.cut.is_cancelled());
}

#[tokio::test(start_paused = true)]
async fn a_slow_body_waiting_for_room_is_cut_at_once() {
    let memory = BodyMemory::new(64 * KIB);
    let mut slow = memory.room("a", conn(), 60 * KIB);
    granted(slow.take(8 * KIB)).await;
    let mut read = memory.room("b", conn(), 56 * KIB);
    granted(read.take(56 * KIB)).await;
    memory.finished(read.id);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let slow_cut = slow.cut.clone();
    // A byte more when the budget is full: it waits, judged by its pace.
    let mut slow_take = Box::pin(slow.take(1));
    assert!(
        tokio::time::timeout(Duration::from_millis(1), slow_take.as_mut())
            .await
            .is_err()
    );
    let mut push = memory.room("c", conn(), 8 * KIB);
    let mut push_take = Box::pin(push.take(8 * KIB));
    // (Its first search may fall within 10 ms of the slow one's own.)
    assert!(
        tokio::time::timeout(RECHECK + ledger::SEARCH_EVERY, push_take.as_mut())
            .await
            .is_err()
    );
    assert!(slow_cut.is_cancelled(), "cut while it waited");
    // Its take gives up, and once its request ends the push has room.
    assert_eq!(
        tokio::time::timeout(Duration::from_millis(1), slow_take).await,
        Ok(false)
    );
    drop(slow);
    granted(push_take).await;
}

#[tokio::test(start_paused = true)]
async fn partly_read_bodies_never_deadlock() {
    // Four bodies of 10 KiB in a 16 KiB budget, each read in 2 KiB frames,
    // all started at once: if grants ignored what each still needs, each
    // would hold 4 KiB and wait for the others forever.
    let memory = BodyMemory::new(16 * KIB);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..4 {
        let mut room = memory.room(&format!("s{i}"), conn(), 10 * KIB);
        tasks.spawn(async move {
            for _ in 0..5 {
                granted(room.take(2 * KIB)).await;
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
    // while each could still finish.
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

/// The oracle for deadlock freedom, by brute force: once the bodies read in
/// full are answered, the others can finish one after another, each with
/// the room then free, giving back what it held.
fn every_body_can_finish(memory: &BodyMemory, ledger: &Ledger) -> bool {
    let mut free: std::collections::HashMap<&Pool, u64> = std::collections::HashMap::new();
    for claim in ledger.claims.values() {
        for pool in &claim.pools {
            free.entry(pool).or_insert_with(|| {
                let free = memory.capacity_of(pool).saturating_sub(ledger.held_in(pool));
                free.saturating_add(ledger.read_in(pool))
            });
        }
    }
    let mut pending: Vec<_> = ledger
        .claims
        .values()
        .filter(|c| c.held > 0 && !c.read_in_full)
        .collect();
    while !pending.is_empty() {
        let Some(next) = pending
            .iter()
            .position(|c| c.pools.iter().all(|p| free.get(p).is_some_and(|f| *f >= c.need)))
        else {
            return false;
        };
        let done = pending.swap_remove(next);
        for pool in &done.pools {
            if let Some(f) = free.get_mut(pool) {
                *f = f.saturating_add(done.held);
            }
        }
    }
    true
}

proptest::proptest! {
    #[test]
    fn the_ledger_never_exceeds_a_pool_and_always_drains(
        capacity in 1u64..100_000,
        requests in proptest::collection::vec(
            (0u8..3, 0u8..4, 1u64..50_000, 1u64..20_000, proptest::bool::ANY),
            1..20,
        ),
    ) {
        let memory = BodyMemory::new(capacity);
        let mut rooms = Vec::new();
        for (source, connection, claim, take, read_in_full) in requests {
            let mut room = memory.room(&source.to_string(), ConnectionId(u64::from(connection)), claim);
            let take = take.min(claim).min(memory.share());
            let _ = memory.try_grant(room.id, take);
            if read_in_full {
                memory.finished(room.id);
            }
            room.waiting = false;
            rooms.push(room);
            let ledger = memory.lock();
            for (pool, held) in &ledger.held {
                proptest::prop_assert!(*held <= memory.capacity_of(pool));
            }
            proptest::prop_assert!(every_body_can_finish(&memory, &ledger));
        }
        drop(rooms);
        proptest::prop_assert_eq!(memory.held(), 0);
        proptest::prop_assert!(memory.lock().claims.is_empty());
    }
}
