//! Concurrency groups on every store: a newer job of a group ends the older
//! ones that have not gone out, in its ingest; a leased job starts through
//! the store; a job whose attempt is out keeps what it creates.

use super::*;

/// A delivery with one job in `group`, due `delay` after `at`.
fn grouped(id: &str, group: &str, delay: Duration, at: SystemTime) -> NewDelivery {
    let mut d = delivery("github", id, 1, at);
    d.jobs[0].group = Some(group.into());
    d.jobs[0].delay = delay;
    d.summary.matched[0].group = Some(group.into());
    d
}

fn job_of(d: &NewDelivery) -> String {
    d.jobs[0].id.clone()
}

async fn job(s: &Arc<dyn Store>, delivery: &str) -> JobDetail {
    let detail = s.get(&key(delivery)).await.unwrap();
    assert_eq!(detail.jobs.len(), 1);
    detail.jobs.into_iter().next().unwrap()
}

async fn status(s: &Arc<dyn Store>, delivery: &str) -> DeliveryStatus {
    s.get(&key(delivery)).await.unwrap().row.status
}

fn retry_now() -> Transition {
    Transition::Retry {
        at: SystemTime::now() + Duration::from_secs(600),
        reason: "HTTP 503".into(),
    }
}

/// Pending jobs of a group are ended by a newer one, which names them in
/// its summary; each ended job names the job and delivery that ended it;
/// other groups are untouched; the lease hands out only the survivors.
async fn a_newer_job_supersedes_the_pending_ones_of_its_group(h: Harness) {
    let s = &h.store;
    let now = SystemTime::now();
    let first = grouped("push-1", "acme/app/main", Duration::ZERO, now);
    let second = grouped("push-2", "acme/app/main", Duration::ZERO, now);
    let other = grouped("push-3", "acme/app/dev", Duration::ZERO, now);
    let third = grouped("push-4", "acme/app/main", Duration::ZERO, now);
    let (j1, j2, j3, j4) = (job_of(&first), job_of(&second), job_of(&other), job_of(&third));
    assert_eq!(
        s.ingest(first).await.unwrap(),
        Ingested::Stored { superseded: vec![] }
    );
    assert_eq!(
        s.ingest(second).await.unwrap(),
        Ingested::Stored {
            superseded: vec![Superseded {
                by: j2.clone(),
                jobs: vec![j1.clone()]
            }]
        }
    );
    assert_eq!(
        s.ingest(other).await.unwrap(),
        Ingested::Stored { superseded: vec![] }
    );
    assert_eq!(
        s.ingest(third).await.unwrap(),
        Ingested::Stored {
            superseded: vec![Superseded {
                by: j4.clone(),
                jobs: vec![j2.clone()]
            }]
        }
    );

    let ended = job(s, "push-1").await;
    assert_eq!(ended.state, JobState::Superseded);
    assert_eq!(ended.group.as_deref(), Some("acme/app/main"));
    let by = ended.superseded_by.unwrap();
    assert_eq!((by.job.as_str(), by.delivery.as_str()), (j2.as_str(), "push-2"));
    assert_eq!(status(s, "push-1").await, DeliveryStatus::Superseded);
    let stored = s.get(&key("push-2")).await.unwrap();
    assert_eq!(stored.summary.matched[0].superseded, vec![j1.clone()]);
    assert_eq!(stored.jobs[0].superseded_by.as_ref().unwrap().delivery, "push-4");
    assert_eq!(job(s, "push-3").await.state, JobState::Pending);

    let listed = s
        .list(&DeliveryFilter {
            status: Some(DeliveryStatus::Superseded),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut names: Vec<_> = listed.iter().map(|r| r.delivery.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["push-1", "push-2"]);

    let leased = s.lease_due("w", 10, LEASE, SystemTime::now()).await.unwrap();
    let mut ids: Vec<_> = leased.iter().map(|j| j.id.clone()).collect();
    ids.sort_unstable();
    let mut want = vec![j3, j4];
    want.sort_unstable();
    assert_eq!(ids, want);
    assert!(leased.iter().all(|j| j.grouped));

    // A superseded job replayed by hand runs again, no longer superseded.
    let replayed = s.replay(&key("push-1"), None, SystemTime::now()).await.unwrap();
    assert_eq!(replayed, vec![j1]);
    let again = job(s, "push-1").await;
    assert_eq!((again.state, again.superseded_by), (JobState::Pending, None));
}

/// A leased job that has not started is ended by a newer job and may not
/// start; one that started is only marked: it keeps what its attempt
/// creates, and ends superseded when the attempt creates nothing.
async fn a_started_attempt_keeps_its_pipeline_and_an_unstarted_one_is_ended(h: Harness) {
    let s = &h.store;
    let now = SystemTime::now();
    let first = grouped("push-1", "g", Duration::ZERO, now);
    s.ingest(first).await.unwrap();
    let leased = s.lease_due("w", 10, LEASE, SystemTime::now()).await.unwrap();
    assert_eq!(leased.len(), 1);
    let second = grouped("push-2", "g", Duration::ZERO, now);
    let j2 = job_of(&second);
    let Ingested::Stored { superseded } = s.ingest(second).await.unwrap() else {
        panic!("stored");
    };
    assert_eq!(
        superseded[0].jobs,
        vec![leased[0].id.clone()],
        "leased, not started: ended"
    );
    assert_eq!(
        s.start_attempt(&leased[0], "w", SystemTime::now()).await.unwrap(),
        Start::Gone
    );
    assert_eq!(job(s, "push-1").await.state, JobState::Superseded);

    // push-2 starts; push-3 arrives while its attempt is out and only marks it.
    let leased = s.lease_due("w", 10, LEASE, SystemTime::now()).await.unwrap();
    assert_eq!(
        leased.iter().map(|j| j.id.clone()).collect::<Vec<_>>(),
        vec![j2.clone()]
    );
    assert_eq!(
        s.start_attempt(&leased[0], "w", SystemTime::now()).await.unwrap(),
        Start::Go
    );
    let third = grouped("push-3", "g", Duration::ZERO, now);
    let j3 = job_of(&third);
    assert_eq!(
        s.ingest(third).await.unwrap(),
        Ingested::Stored { superseded: vec![] }
    );
    assert_eq!(job(s, "push-2").await.state, JobState::Running);
    // Its attempt fails: it is due at once, and its next start ends it.
    s.record_attempt(&leased[0], "w", attempt(503), retry_now(), SystemTime::now())
        .await
        .unwrap();
    let leased = s.lease_due("w", 10, LEASE, SystemTime::now()).await.unwrap();
    let mut ids: Vec<_> = leased.iter().map(|j| j.id.clone()).collect();
    ids.sort_unstable();
    let mut want = vec![j2.clone(), j3.clone()];
    want.sort_unstable();
    assert_eq!(ids, want, "the marked job is due at once, not in ten minutes");
    for j in &leased {
        let expected = if j.id == j2 { Start::Superseded } else { Start::Go };
        assert_eq!(
            s.start_attempt(j, "w", SystemTime::now()).await.unwrap(),
            expected
        );
    }
    let ended = job(s, "push-2").await;
    assert_eq!(ended.state, JobState::Superseded);
    assert_eq!(ended.superseded_by.unwrap().delivery, "push-3");
    assert_eq!(ended.history.len(), 1, "the failed attempt is kept");

    // push-3 is out; push-4 marks it; push-3's attempt creates a pipeline: done.
    let pushed = leased.iter().find(|j| j.id == j3).unwrap();
    s.ingest(grouped("push-4", "g", Duration::ZERO, now))
        .await
        .unwrap();
    s.record_attempt(pushed, "w", attempt(201), created(), SystemTime::now())
        .await
        .unwrap();
    let kept = job(s, "push-3").await;
    assert_eq!(kept.state, JobState::Done);
    assert_eq!(kept.result.unwrap().id.as_deref(), Some("42"));
    assert_eq!(kept.superseded_by, None, "shown only on a superseded job");
    assert_eq!(status(s, "push-3").await, DeliveryStatus::Done);
    assert_eq!(job(s, "push-4").await.state, JobState::Pending);
}

/// A debounced job is not due before its delay; the next due time says when.
async fn a_debounced_job_waits_for_its_delay(h: Harness) {
    let s = &h.store;
    let at = SystemTime::now();
    s.ingest(grouped("push-1", "g", Duration::from_secs(20), at))
        .await
        .unwrap();
    assert!(s.lease_due("w", 10, LEASE, at).await.unwrap().is_empty());
    let due = s.next_due().await.unwrap().unwrap();
    let wait = due.duration_since(at).unwrap();
    assert!(
        (Duration::from_millis(19_990)..=Duration::from_millis(20_010)).contains(&wait),
        "{wait:?}"
    );
    let later = at + Duration::from_secs(21);
    assert_eq!(s.lease_due("w", 10, LEASE, later).await.unwrap().len(), 1);
}

/// Concurrent ingests of one group leave exactly one job alive, and every
/// other one superseded by a job that was stored; none is lost.
async fn concurrent_ingests_of_a_group_leave_one_job(h: Harness) {
    let s = &h.store;
    let now = SystemTime::now();
    let mut calls = Vec::new();
    for i in 0..24 {
        let s = s.clone();
        let group = if i % 4 == 3 { "other" } else { "main" };
        let d = grouped(&format!("push-{i}"), group, Duration::from_secs(5), now);
        calls.push(tokio::spawn(async move { s.ingest(d).await.unwrap() }));
    }
    for c in calls {
        assert!(matches!(c.await.unwrap(), Ingested::Stored { .. }));
    }
    let rows = s
        .list(&DeliveryFilter {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(rows.len(), 24);
    let mut alive = std::collections::BTreeMap::<String, usize>::new();
    for r in &rows {
        let j = job(s, &r.delivery).await;
        match j.state {
            JobState::Pending => *alive.entry(j.group.unwrap()).or_default() += 1,
            JobState::Superseded => {
                let by = j.superseded_by.unwrap();
                let newer = job(s, &by.delivery).await;
                assert_eq!(newer.id, by.job);
                assert_eq!(newer.group, j.group);
            }
            other => panic!("{other}"),
        }
    }
    assert_eq!(alive, [("main".to_owned(), 1), ("other".to_owned(), 1)].into());
}

/// Finished superseded deliveries are purged with the rest.
async fn superseded_deliveries_are_purged(h: Harness) {
    let s = &h.store;
    let old = SystemTime::now() - Duration::from_secs(3600);
    s.ingest(grouped("push-1", "g", Duration::ZERO, old))
        .await
        .unwrap();
    s.ingest(grouped("push-2", "g", Duration::ZERO, old))
        .await
        .unwrap();
    let purged = s.purge(SystemTime::now(), 100).await.unwrap();
    assert_eq!(purged, 1, "push-1 (superseded) goes; push-2 is pending");
    assert_eq!(
        s.get(&key("push-1")).await.unwrap_err().kind(),
        StoreErrorKind::NotFound
    );
    assert_eq!(h.orphans().await, 0);
}

/// A delivery whose job cancels the group's older pipelines.
fn cancelling(id: &str, group: &str) -> NewDelivery {
    let mut d = grouped(id, group, Duration::ZERO, SystemTime::now());
    d.jobs[0].cancel = true;
    d
}

/// Lease the one due job, start it and record its created pipeline.
async fn run_to_done(s: &Arc<dyn Store>) -> LeasedJob {
    let leased = s.lease_due("w", 10, LEASE, SystemTime::now()).await.unwrap();
    assert_eq!(leased.len(), 1, "{leased:?}");
    assert_eq!(
        s.start_attempt(&leased[0], "w", SystemTime::now()).await.unwrap(),
        Start::Go
    );
    s.record_attempt(&leased[0], "w", attempt(201), created(), SystemTime::now())
        .await
        .unwrap();
    leased.into_iter().next().unwrap()
}

/// Once a newer job's pipeline exists, the older pipelines of its group are
/// queued for cancelling, once each; a cancel is leased, retried and
/// recorded on the cancelled job. A newer job whose rule does not cancel
/// queues nothing.
async fn a_newer_pipeline_queues_the_cancel_of_the_older_one(h: Harness) {
    let s = &h.store;
    s.ingest(cancelling("push-1", "g")).await.unwrap();
    let first = run_to_done(s).await;
    assert!(
        s.lease_cancels("w", 10, LEASE, SystemTime::now())
            .await
            .unwrap()
            .is_empty()
    );
    s.ingest(cancelling("push-2", "g")).await.unwrap();
    let second = run_to_done(s).await;
    let cancels = s.lease_cancels("w", 10, LEASE, SystemTime::now()).await.unwrap();
    assert_eq!(cancels.len(), 1);
    let c = &cancels[0];
    assert_eq!(
        (c.job.as_str(), c.by_job.as_str()),
        (first.id.as_str(), second.id.as_str())
    );
    assert_eq!(c.pipeline.id.as_deref(), Some("42"));
    assert_eq!(c.request, request());
    assert_eq!(c.attempt, 1);
    // A failing cancel is retried.
    let retry = concurrency::CancelOutcome::Retry {
        at: SystemTime::now(),
        reason: "HTTP 503".into(),
    };
    s.record_cancel(c, "w", attempt(503), retry, SystemTime::now())
        .await
        .unwrap();
    let again = s.lease_cancels("w", 10, LEASE, SystemTime::now()).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempt, 2);
    let done = concurrency::CancelOutcome::Cancelled("cancelled pipeline 42".into());
    s.record_cancel(&again[0], "w", attempt(200), done, SystemTime::now())
        .await
        .unwrap();
    assert!(
        s.lease_cancels("w", 10, LEASE, SystemTime::now())
            .await
            .unwrap()
            .is_empty()
    );
    let cancelled = job(s, "push-1").await;
    assert_eq!(
        cancelled.state,
        JobState::Done,
        "the job keeps its pipeline, cancelled"
    );
    let cancel = cancelled.cancel.unwrap();
    assert_eq!(cancel.by_job, second.id);
    assert_eq!(cancel.state, concurrency::CancelState::Cancelled);
    assert_eq!(cancel.attempts, 2);
    assert_eq!(cancel.outcome.as_deref(), Some("cancelled pipeline 42"));
    let outcomes: Vec<_> = cancelled.history.iter().map(|a| a.outcome.as_str()).collect();
    assert_eq!(outcomes, ["done", "cancel_retry", "cancelled"]);
    assert_eq!(cancelled.history[1].error.as_deref(), Some("HTTP 503"));
    assert_eq!(job(s, "push-2").await.cancel, None);

    // A newer job whose rule does not cancel leaves push-2's pipeline alone.
    s.ingest(grouped("push-3", "g", Duration::ZERO, SystemTime::now()))
        .await
        .unwrap();
    run_to_done(s).await;
    assert!(
        s.lease_cancels("w", 10, LEASE, SystemTime::now())
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(job(s, "push-2").await.cancel, None);
}

/// An older job whose attempt was out when a newer one arrived creates its
/// pipeline after the newer one did: its own pipeline is cancelled then.
async fn an_older_pipeline_created_last_is_cancelled_too(h: Harness) {
    let s = &h.store;
    s.ingest(cancelling("push-1", "g")).await.unwrap();
    let old = s.lease_due("w", 10, LEASE, SystemTime::now()).await.unwrap();
    assert_eq!(
        s.start_attempt(&old[0], "w", SystemTime::now()).await.unwrap(),
        Start::Go
    );
    s.ingest(cancelling("push-2", "g")).await.unwrap();
    let newer = run_to_done(s).await;
    assert!(
        s.lease_cancels("w", 10, LEASE, SystemTime::now())
            .await
            .unwrap()
            .is_empty()
    );
    s.record_attempt(&old[0], "w", attempt(201), created(), SystemTime::now())
        .await
        .unwrap();
    let cancels = s.lease_cancels("w", 10, LEASE, SystemTime::now()).await.unwrap();
    assert_eq!(cancels.len(), 1);
    assert_eq!(
        (cancels[0].job.as_str(), cancels[0].by_job.as_str()),
        (old[0].id.as_str(), newer.id.as_str())
    );
}

/// Jobs added by re-evaluation keep their group and debounce on both stores.
async fn reevaluated_jobs_keep_their_group(h: Harness) {
    let s = &h.store;
    let now = SystemTime::now();
    let d = delivery("github", "push-1", 0, now);
    let summary = d.summary.clone();
    s.ingest(d).await.unwrap();
    let mut added = NewJob::new(
        ulid::Ulid::generate().to_string(),
        "r".into(),
        "gitlab".into(),
        request(),
    );
    added.group = Some("g".into());
    added.delay = Duration::from_secs(5);
    s.add_jobs(&key("push-1"), vec![added], summary, now)
        .await
        .unwrap();
    assert_eq!(job(s, "push-1").await.group.as_deref(), Some("g"));
    assert!(s.lease_due("w", 10, LEASE, now).await.unwrap().is_empty());
    let leased = s
        .lease_due("w", 10, LEASE, now + Duration::from_secs(6))
        .await
        .unwrap();
    assert_eq!(leased.len(), 1);
    assert!(leased[0].grouped);
}

/// A group holds only the pipelines created since its newest job arrived:
/// a later job that cancels does not reach back through the history.
async fn a_group_holds_no_history_of_pipelines(h: Harness) {
    let s = &h.store;
    for i in 0..5 {
        s.ingest(grouped(
            &format!("push-{i}"),
            "g",
            Duration::ZERO,
            SystemTime::now(),
        ))
        .await
        .unwrap();
        run_to_done(s).await;
    }
    s.ingest(cancelling("push-5", "g")).await.unwrap();
    run_to_done(s).await;
    let cancels = s.lease_cancels("w", 10, LEASE, SystemTime::now()).await.unwrap();
    let jobs: Vec<String> = cancels.iter().map(|c| c.job.clone()).collect();
    assert_eq!(
        jobs,
        vec![job(s, "push-4").await.id],
        "only the newest older pipeline"
    );
}

/// A job queued again (replay, re-evaluation, a redelivery of its dead
/// delivery) is its group's newest: it supersedes the pending ones.
async fn a_job_queued_again_is_the_newest_of_its_group(h: Harness) {
    let s = &h.store;
    let now = SystemTime::now();
    // Replay: push-1 done, push-2 pending; replaying push-1 ends push-2.
    s.ingest(cancelling("push-1", "g")).await.unwrap();
    run_to_done(s).await;
    s.ingest(cancelling("push-2", "g")).await.unwrap();
    s.replay(&key("push-1"), None, now).await.unwrap();
    let ended = job(s, "push-2").await;
    assert_eq!(ended.state, JobState::Superseded);
    assert_eq!(ended.superseded_by.unwrap().delivery, "push-1");
    assert_eq!(job(s, "push-1").await.state, JobState::Pending);
    // Its new pipeline is not cancelled for its old one's sake.
    let again = run_to_done(s).await;
    assert_eq!(again.id, job(s, "push-1").await.id);
    assert!(
        s.lease_cancels("w", 10, LEASE, SystemTime::now())
            .await
            .unwrap()
            .is_empty()
    );

    // Redelivery: push-3's job dead, push-4 pending; push-3 again ends push-4.
    s.ingest(grouped("push-3", "h", Duration::ZERO, now))
        .await
        .unwrap();
    let leased = s.lease_due("w", 10, LEASE, SystemTime::now()).await.unwrap();
    s.record_attempt(
        &leased[0],
        "w",
        attempt(404),
        Transition::Dead("HTTP 404".into()),
        SystemTime::now(),
    )
    .await
    .unwrap();
    s.ingest(grouped("push-4", "h", Duration::ZERO, now))
        .await
        .unwrap();
    let redelivered = s
        .ingest(grouped("push-3", "h", Duration::ZERO, SystemTime::now()))
        .await
        .unwrap();
    assert!(
        matches!(redelivered, Ingested::Duplicate { requeued: 1, .. }),
        "{redelivered:?}"
    );
    assert_eq!(job(s, "push-4").await.state, JobState::Superseded);
    assert_eq!(job(s, "push-3").await.state, JobState::Pending);

    // Re-evaluation: a job added to push-5 ends push-3's.
    let d = delivery("github", "push-5", 0, now);
    let summary = d.summary.clone();
    s.ingest(d).await.unwrap();
    let mut added = NewJob::new(
        ulid::Ulid::generate().to_string(),
        "r".into(),
        "gitlab".into(),
        request(),
    );
    added.group = Some("h".into());
    s.add_jobs(&key("push-5"), vec![added], summary, now)
        .await
        .unwrap();
    assert_eq!(job(s, "push-3").await.state, JobState::Superseded);
    let due = s.lease_due("w", 10, LEASE, SystemTime::now()).await.unwrap();
    assert_eq!(due.len(), 1, "one job of the group left: {due:?}");
}

/// A job whose lease was taken over while its attempt was out is not taken
/// for unsent: a newer job only marks it, and its new worker's start ends
/// it; when the first worker's attempt turns out to have created a
/// pipeline, the job is done with it.
async fn a_taken_over_attempt_counts_as_out(h: Harness) {
    let s = &h.store;
    let at = SystemTime::now();
    s.ingest(grouped("push-1", "g", Duration::ZERO, at))
        .await
        .unwrap();
    let first = s.lease_due("w1", 10, Duration::from_secs(1), at).await.unwrap();
    assert_eq!(s.start_attempt(&first[0], "w1", at).await.unwrap(), Start::Go);
    let later = at + Duration::from_secs(5);
    let taken = s.lease_due("w2", 10, LEASE, later).await.unwrap();
    assert_eq!(taken.len(), 1);
    let Ingested::Stored { superseded } = s
        .ingest(grouped("push-2", "g", Duration::ZERO, later))
        .await
        .unwrap()
    else {
        panic!("stored");
    };
    assert!(superseded.is_empty(), "its request may be out: marked, not ended");
    assert_eq!(
        s.start_attempt(&taken[0], "w2", later).await.unwrap(),
        Start::Superseded
    );
    assert_eq!(job(s, "push-1").await.state, JobState::Superseded);
    // The first worker's request did create a pipeline: the job has it.
    s.record_attempt(&first[0], "w1", attempt(201), created(), later)
        .await
        .unwrap();
    let kept = job(s, "push-1").await;
    assert_eq!(kept.state, JobState::Done);
    assert_eq!(kept.result.unwrap().id.as_deref(), Some("42"));
    assert_eq!(status(s, "push-1").await, DeliveryStatus::Done);
}

suite!(
    a_group_holds_no_history_of_pipelines,
    a_job_queued_again_is_the_newest_of_its_group,
    a_taken_over_attempt_counts_as_out,
    reevaluated_jobs_keep_their_group,
    a_newer_pipeline_queues_the_cancel_of_the_older_one,
    an_older_pipeline_created_last_is_cancelled_too,
    a_newer_job_supersedes_the_pending_ones_of_its_group,
    a_started_attempt_keeps_its_pipeline_and_an_unstarted_one_is_ended,
    a_debounced_job_waits_for_its_delay,
    concurrent_ingests_of_a_group_leave_one_job,
    superseded_deliveries_are_purged,
);

/// Within one ingest batch (which is sorted by delivery id for its row
/// locks), a group's newest job is the one received last. The batch is
/// made to carry five deliveries by holding the group's advisory lock
/// while the first one waits for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_orders_a_batch_by_arrival_not_by_delivery_id() {
    use sha2::Digest;
    use sqlx::Connection;
    let h = postgres().await;
    let s = h.store.clone();
    let db = h._postgres.as_ref().unwrap();
    let mut blocker = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let digest = sha2::Sha256::digest(b"g");
    let key = i64::from_be_bytes(digest[..8].try_into().unwrap());
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(key)
        .execute(&mut blocker)
        .await
        .unwrap();
    let base = SystemTime::now();
    let first = {
        let s = s.clone();
        let d = grouped("m-first", "g", Duration::ZERO, base);
        tokio::spawn(async move { s.ingest(d).await.unwrap() })
    };
    // The first batch now waits for the lock; these queue behind it, and go
    // out as one batch: received in order 1..=5, ids in the reverse order.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut rest = Vec::new();
    for i in 1..=5u64 {
        let s = s.clone();
        let id = format!("{}-push", ['z', 'y', 'x', 'w', 'v'][i as usize - 1]);
        let d = grouped(&id, "g", Duration::ZERO, base + Duration::from_millis(i));
        rest.push(tokio::spawn(async move { s.ingest(d).await.unwrap() }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(key)
        .execute(&mut blocker)
        .await
        .unwrap();
    first.await.unwrap();
    for r in rest {
        r.await.unwrap();
    }
    let survivor = |d: &str| {
        let s = s.clone();
        let d = d.to_owned();
        async move { job(&s, &d).await.state }
    };
    assert_eq!(survivor("v-push").await, JobState::Pending, "received last");
    for d in ["m-first", "z-push", "y-push", "x-push", "w-push"] {
        assert_eq!(survivor(d).await, JobState::Superseded, "{d}");
    }
    let by = job(&s, "z-push").await.superseded_by.unwrap();
    assert_eq!(
        by.delivery, "y-push",
        "each is superseded by the one received after it"
    );
}

/// A record that moved a job on while an ingest waited for its row lock
/// (its pipeline created, its cancel queued) is what the ingest sees: a
/// done job with its pipeline is never ended as superseded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_an_ingest_classifies_what_it_locked_as_it_is_then() {
    use sqlx::Connection;
    let h = postgres().await;
    let s = h.store.clone();
    s.ingest(cancelling("push-a", "g")).await.unwrap();
    run_to_done(&s).await;
    let a = job(&s, "push-a").await.id;
    // A record holds push-a's row while push-c's ingest reads the group.
    let db = h._postgres.as_ref().unwrap();
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    sqlx::query("SELECT id FROM jobs WHERE id = $1 FOR UPDATE")
        .bind(&a)
        .execute(&mut *tx)
        .await
        .unwrap();
    let ingest = {
        let s = s.clone();
        tokio::spawn(async move { s.ingest(cancelling("push-c", "g")).await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The record queues push-a's cancel (as `after_done` does), then commits.
    sqlx::query("UPDATE jobs SET pipeline_open = NULL WHERE id = $1")
        .bind(&a)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let Ingested::Stored { superseded } = ingest.await.unwrap() else {
        panic!("stored");
    };
    assert!(superseded.is_empty(), "{superseded:?}");
    let kept = job(&s, "push-a").await;
    assert_eq!(kept.state, JobState::Done);
    assert!(kept.result.is_some());
}
