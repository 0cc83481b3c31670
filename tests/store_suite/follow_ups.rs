//! Follow-ups of runs a CI only queued, on every store: stored by the
//! attempt record that created the queue entry, leased to one owner at a
//! time (and taken over when its lease runs out), read again until the
//! run is known, each read updating the job's result; gone with a replay
//! or a purge.

use super::*;
use hookbridge::store::follow::{FollowOutcome, LeasedFollowUp};

/// What a Jenkins-like CI answers a trigger with: a queue item to read.
fn queued(item: &str, state: &str) -> TriggerResult {
    TriggerResult {
        id: None,
        number: None,
        url: Some(format!("https://ci.example/queue/item/{item}/")),
        state: Some(state.into()),
        follow: Some(item.into()),
    }
}

/// The run the queue item became.
fn run(number: i64) -> TriggerResult {
    TriggerResult {
        id: Some(number.to_string()),
        number: Some(number),
        url: Some(format!("https://ci.example/job/app/{number}/")),
        state: Some("running".into()),
        follow: None,
    }
}

/// Store delivery `id` with one job, lease it to `w` and record `next`, all at `at`.
async fn recorded(s: &Arc<dyn Store>, id: &str, next: Transition, at: SystemTime) -> String {
    s.ingest(delivery("github", id, 1, at)).await.unwrap();
    let job = s.lease_due("w", 1, LEASE, at).await.unwrap().remove(0);
    s.record_attempt(&job, "w", attempt(201), next, at).await.unwrap();
    job.id
}

async fn lease(s: &Arc<dyn Store>, owner: &str, at: SystemTime) -> Vec<LeasedFollowUp> {
    s.lease_follow_ups(owner, 10, LEASE, at).await.unwrap()
}

async fn result(s: &Arc<dyn Store>, delivery: &str) -> Option<TriggerResult> {
    s.get(&key(delivery)).await.unwrap().jobs[0].result.clone()
}

/// The `follow_ups` rows, read behind the store's back.
async fn rows(h: &Harness) -> i64 {
    const COUNT: &str = "SELECT COUNT(*) FROM follow_ups";
    if let Some(dir) = &h._sqlite {
        let conn = rusqlite::Connection::open(dir.path().join("hb.db")).unwrap();
        return conn.query_row(COUNT, [], |r| r.get(0)).unwrap();
    }
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&h._postgres.as_ref().unwrap().url)
        .await
        .unwrap();
    let n: i64 = sqlx::query_scalar(COUNT).fetch_one(&mut conn).await.unwrap();
    let _ = conn.close().await;
    n
}

/// A queued run's follow-up is due at once and goes to one owner; another
/// owner takes it over once that lease runs out (a new poll), and the
/// first owner's late record then changes nothing. A lease given back is
/// due at once.
async fn a_queued_run_is_followed_up_by_one_owner_at_a_time(h: Harness) {
    let s = &h.store;
    let t = SystemTime::now();
    let job = recorded(s, "q-1", Transition::Done(queued("7", "queued")), t).await;
    let detail = s.get(&key("q-1")).await.unwrap();
    assert_eq!(detail.jobs[0].state, JobState::Done);
    assert_eq!(detail.row.status, DeliveryStatus::Done);

    let first = lease(s, "a", t).await;
    assert_eq!(first.len(), 1);
    let f = &first[0];
    assert_eq!(
        (f.job.as_str(), f.delivery_id.as_str()),
        (job.as_str(), detail.row.id.as_str())
    );
    assert_eq!((f.rule.as_str(), f.target.as_str()), ("rule-0", "gitlab"));
    assert_eq!(f.request, request());
    assert_eq!(f.result, queued("7", "queued"));
    assert_eq!(f.poll, 1);
    assert_eq!(millis(f.created_at), millis(t));
    assert!(lease(s, "b", t).await.is_empty(), "leased to a");
    assert!(
        lease(s, "b", t + LEASE).await.is_empty(),
        "a's lease holds to its end"
    );

    let later = t + LEASE + Duration::from_secs(1);
    let taken = lease(s, "b", later).await;
    assert_eq!(taken.len(), 1);
    assert_eq!((taken[0].job.as_str(), taken[0].poll), (job.as_str(), 2));
    // a comes back late: neither the result nor b's lease changes.
    s.record_follow_up(f, "a", FollowOutcome::Done(run(99)), later)
        .await
        .unwrap();
    assert_eq!(result(s, "q-1").await, Some(queued("7", "queued")));
    assert!(lease(s, "c", later).await.is_empty(), "still b's");
    // Neither does a record of the right owner for an earlier poll.
    s.record_follow_up(f, "b", FollowOutcome::Done(run(99)), later)
        .await
        .unwrap();
    assert_eq!(result(s, "q-1").await, Some(queued("7", "queued")));

    // b stops: its lease is given back, due at once, and counts as a poll.
    s.release("b", later).await.unwrap();
    let again = lease(s, "c", later).await;
    assert_eq!((again.len(), again[0].poll), (1, 3));
}

/// A read that finds the run still queued stores what it learned as the
/// job's result and makes the follow-up due again at the time it names,
/// not before; the one that finds the run ends it with the run as result,
/// and it is never leased again.
async fn a_follow_up_is_read_again_until_its_run_is_known(h: Harness) {
    let s = &h.store;
    let t = SystemTime::now();
    recorded(s, "q-2", Transition::Done(queued("8", "queued")), t).await;
    let f = lease(s, "a", t).await.remove(0);
    let at = t + Duration::from_secs(30);
    let blocked = queued("8", "blocked");
    let again = FollowOutcome::Again {
        at,
        result: blocked.clone(),
    };
    s.record_follow_up(&f, "a", again, t).await.unwrap();
    let detail = s.get(&key("q-2")).await.unwrap();
    assert_eq!(detail.jobs[0].result, Some(blocked.clone()));
    assert_eq!(detail.jobs[0].state, JobState::Done);
    assert!(lease(s, "a", t + Duration::from_secs(1)).await.is_empty());
    assert!(lease(s, "b", at - Duration::from_millis(1)).await.is_empty());
    let next = lease(s, "b", at).await;
    assert_eq!(next.len(), 1);
    assert_eq!((next[0].poll, &next[0].result), (2, &blocked));
    assert_eq!(millis(next[0].created_at), millis(t), "the same follow-up");

    s.record_follow_up(&next[0], "b", FollowOutcome::Done(run(12)), at)
        .await
        .unwrap();
    let detail = s.get(&key("q-2")).await.unwrap();
    assert_eq!(detail.jobs[0].result, Some(run(12)));
    assert_eq!(detail.jobs[0].state, JobState::Done);
    assert_eq!(detail.row.status, DeliveryStatus::Done);
    let far = at + Duration::from_secs(86400);
    assert!(lease(s, "c", far).await.is_empty(), "ended");
    // A late repeat of that record changes nothing either.
    s.record_follow_up(&next[0], "b", FollowOutcome::Done(run(13)), far)
        .await
        .unwrap();
    assert_eq!(result(s, "q-2").await, Some(run(12)));
}

/// A created run (no `follow`), a skip, a retry and a dead letter leave no
/// follow-up; nor does a late worker's record of a queued run while the
/// job is another worker's.
async fn only_a_queued_run_recorded_by_its_lease_holder_is_followed_up(h: Harness) {
    let s = &h.store;
    let t = SystemTime::now();
    recorded(s, "n-1", created(), t).await;
    recorded(s, "n-2", Transition::Skipped("not now".into()), t).await;
    let retry = Transition::Retry {
        at: t + Duration::from_secs(600),
        reason: "HTTP 503".into(),
    };
    recorded(s, "n-3", retry, t).await;
    recorded(s, "n-4", Transition::Dead("HTTP 404".into()), t).await;
    assert!(lease(s, "a", t + Duration::from_secs(1)).await.is_empty());
    assert_eq!(rows(&h).await, 0);

    s.ingest(delivery("github", "n-5", 1, t)).await.unwrap();
    let stalled = s
        .lease_due("w", 1, Duration::from_millis(50), t)
        .await
        .unwrap()
        .remove(0);
    let later = t + Duration::from_secs(1);
    let taken = s.lease_due("x", 1, LEASE, later).await.unwrap().remove(0);
    s.record_attempt(
        &stalled,
        "w",
        attempt(201),
        Transition::Done(queued("9", "queued")),
        later,
    )
    .await
    .unwrap();
    assert!(lease(s, "a", later).await.is_empty(), "the job is x's");
    s.record_attempt(&taken, "x", attempt(201), created(), later)
        .await
        .unwrap();
    assert!(lease(s, "a", later).await.is_empty());
    assert_eq!(rows(&h).await, 0);
}

/// A replayed job runs anew: its follow-up goes (a lease of it records
/// nothing), and its next queued run gets a new one. A purge takes the
/// follow-up with its delivery.
async fn replay_and_purge_take_the_follow_up_away(h: Harness) {
    let s = &h.store;
    let t = SystemTime::now();
    recorded(s, "p-1", Transition::Done(queued("10", "queued")), t).await;
    let f = lease(s, "a", t).await.remove(0);
    let replayed = t + Duration::from_secs(1);
    s.replay(&key("p-1"), None, replayed).await.unwrap();
    assert_eq!(rows(&h).await, 0);
    s.record_follow_up(&f, "a", FollowOutcome::Done(run(5)), replayed)
        .await
        .unwrap();
    assert_eq!(result(s, "p-1").await, Some(queued("10", "queued")), "unchanged");
    assert!(lease(s, "a", replayed + LEASE * 2).await.is_empty());

    let job = s.lease_due("w", 1, LEASE, replayed).await.unwrap().remove(0);
    s.record_attempt(
        &job,
        "w",
        attempt(201),
        Transition::Done(queued("11", "queued")),
        replayed,
    )
    .await
    .unwrap();
    let anew = lease(s, "a", replayed).await;
    assert_eq!(anew.len(), 1);
    assert_eq!((anew[0].poll, &anew[0].result), (1, &queued("11", "queued")));
    assert_eq!(millis(anew[0].created_at), millis(replayed));
    // The old lease was of the same owner and poll, of the follow-up before.
    s.record_follow_up(&f, "a", FollowOutcome::Done(run(5)), replayed)
        .await
        .unwrap();
    assert_eq!(result(s, "p-1").await, Some(queued("11", "queued")));
    assert!(lease(s, "b", replayed).await.is_empty(), "still a's");

    assert_eq!(s.purge(replayed + Duration::from_secs(1), 10).await.unwrap(), 1);
    assert_eq!(rows(&h).await, 0);
    assert!(lease(s, "b", replayed + LEASE * 2).await.is_empty());
    s.record_follow_up(&anew[0], "a", FollowOutcome::Done(run(6)), replayed)
        .await
        .unwrap();
    assert_eq!(h.orphans().await, 0);
}

suite!(
    a_queued_run_is_followed_up_by_one_owner_at_a_time,
    a_follow_up_is_read_again_until_its_run_is_known,
    only_a_queued_run_recorded_by_its_lease_holder_is_followed_up,
    replay_and_purge_take_the_follow_up_away,
);
