//! What a later attempt learns of the earlier ones, on every store: when
//! the earliest attempt of the round began whose outcome is unknown (a
//! timeout after sending, a worker that stopped while holding the job), the
//! delivery's trace context, each attempt's reconcile decision, and the
//! pipelines other jobs recorded (for the CircleCI heuristic).

use super::*;

fn ambiguous(at: SystemTime) -> Attempt {
    Attempt {
        started_at: at,
        duration: Duration::from_secs(30),
        status: None,
        error: Some("timed out waiting for the CI API".into()),
        response: None,
        ambiguous: true,
        reconcile: None,
    }
}

fn retry(at: SystemTime) -> Transition {
    Transition::Retry {
        at,
        reason: "timed out waiting for the CI API".into(),
    }
}

/// A timed-out attempt makes the next one reconcile from its start; a
/// clear failure after it keeps that start (the pipeline may still be
/// there); a replay starts a new round without it.
async fn an_unanswered_attempt_is_remembered_until_the_round_ends(h: Harness) {
    let s = &h.store;
    let mut d = delivery("github", "amb-1", 1, SystemTime::now());
    d.trace = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
    s.ingest(d).await.unwrap();
    let t0 = SystemTime::now();
    let first = s.lease_due("w", 1, LEASE, t0).await.unwrap();
    assert_eq!(first[0].ambiguous_since, None);
    assert_eq!(
        first[0].trace.as_deref(),
        Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    );
    s.record_attempt(&first[0], "w", ambiguous(t0), retry(t0), t0)
        .await
        .unwrap();
    let t1 = t0 + Duration::from_secs(1);
    let second = s.lease_due("w", 1, LEASE, t1).await.unwrap();
    assert_eq!(second[0].ambiguous_since.map(millis), Some(millis(t0)));
    // Reconciled, sent, and answered 503: still ambiguous from t0.
    let mut clear = attempt(503);
    clear.started_at = t1;
    clear.reconcile = Some("not found: none of the 0 trigger pipelines; triggered".into());
    s.record_attempt(&second[0], "w", clear, retry(t1), t1)
        .await
        .unwrap();
    let third = s
        .lease_due("w", 1, LEASE, t1 + Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(third[0].ambiguous_since.map(millis), Some(millis(t0)));
    assert_eq!(third[0].trace, second[0].trace);
    s.record_attempt(&third[0], "w", attempt(201), created(), t1)
        .await
        .unwrap();
    let job = &s.get(&key("amb-1")).await.unwrap().jobs[0];
    let decisions: Vec<Option<&str>> = job.history.iter().map(|a| a.reconcile.as_deref()).collect();
    assert_eq!(
        decisions,
        [
            None,
            Some("not found: none of the 0 trigger pipelines; triggered"),
            None
        ]
    );
    // A replay is a new round: it sends, it does not look for the old pipeline.
    s.replay(&key("amb-1"), None, t1).await.unwrap();
    let replayed = s
        .lease_due("w", 1, LEASE, t1 + Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(replayed[0].ambiguous_since, None);
    // The earlier round's pipeline goes with it, so no reconcile takes it
    // for this round's.
    assert_eq!(replayed[0].previous.as_deref(), Some("42"));
    assert_eq!(third[0].previous, None);
}

/// A worker that stopped while holding the job (its lease ran out) may have
/// sent it: the taker reconciles from when that lease was taken.
async fn a_lease_taken_over_is_ambiguous_from_its_start(h: Harness) {
    let s = &h.store;
    s.ingest(delivery("github", "amb-2", 1, SystemTime::now()))
        .await
        .unwrap();
    let t0 = SystemTime::now();
    let gone = s
        .lease_due("dead", 1, Duration::from_millis(50), t0)
        .await
        .unwrap();
    assert_eq!(gone[0].ambiguous_since, None);
    let taken = s
        .lease_due("b", 1, LEASE, t0 + Duration::from_millis(500))
        .await
        .unwrap();
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].ambiguous_since.map(millis), Some(millis(t0)));
    // Given back at shutdown, too: the next holder reconciles from t0 still.
    s.release("b", t0 + Duration::from_secs(1)).await.unwrap();
    let again = s
        .lease_due("c", 1, LEASE, t0 + Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(again[0].ambiguous_since.map(millis), Some(millis(t0)));
}

/// The target's other jobs as a heuristic reconcile sees them: the
/// pipelines they recorded since a time, and those whose attempt is out or
/// was cut short (they may have created one not recorded yet).
async fn other_jobs_are_seen_as_a_reconcile_needs(h: Harness) {
    let s = &h.store;
    s.ingest(delivery("github", "amb-3", 4, SystemTime::now()))
        .await
        .unwrap();
    let t0 = SystemTime::now();
    let jobs = s.lease_due("w", 4, Duration::from_secs(3600), t0).await.unwrap();
    assert_eq!(jobs.len(), 4);
    for (i, job) in jobs.iter().take(2).enumerate() {
        let done = Transition::Done(TriggerResult {
            id: Some(format!("pipeline-{i}")),
            ..TriggerResult::default()
        });
        s.record_attempt(job, "w", attempt(201), done, t0 + Duration::from_secs(1))
            .await
            .unwrap();
    }
    // The third timed out (pending, ambiguous); the fourth is still out.
    s.record_attempt(
        &jobs[2],
        "w",
        ambiguous(t0),
        retry(t0 + Duration::from_secs(60)),
        t0,
    )
    .await
    .unwrap();
    let target = &jobs[3].target;
    let mut n = s.neighbours(target, &jobs[3].id, t0).await.unwrap();
    n.recorded.sort();
    assert_eq!(n.recorded, ["pipeline-0", "pipeline-1"]);
    assert_eq!(n.unsettled, [jobs[2].request.clone()]);
    let n = s.neighbours(target, &jobs[0].id, t0).await.unwrap();
    assert_eq!(n.recorded, ["pipeline-1"]);
    assert_eq!(n.unsettled.len(), 2, "the ambiguous one and the one still out");
    let later = s
        .neighbours(target, &jobs[3].id, t0 + Duration::from_secs(5))
        .await
        .unwrap();
    assert!(later.recorded.is_empty(), "recorded before the window");
    assert_eq!(later.unsettled.len(), 1);
    // Done after its timed-out attempt: the pipeline that attempt may have
    // created is recorded by nobody, so it still counts, within the window.
    let mut sent = attempt(201);
    sent.started_at = t0 + Duration::from_secs(61);
    let again = s
        .lease_due("w", 1, LEASE, t0 + Duration::from_secs(61))
        .await
        .unwrap();
    assert_eq!(again[0].id, jobs[2].id);
    s.record_attempt(&again[0], "w", sent, created(), t0 + Duration::from_secs(62))
        .await
        .unwrap();
    let n = s.neighbours(target, &jobs[3].id, t0).await.unwrap();
    assert_eq!(n.unsettled, [jobs[2].request.clone()]);
    assert_eq!(n.recorded.len(), 3);
    let n = s
        .neighbours(target, &jobs[3].id, t0 + Duration::from_secs(120))
        .await
        .unwrap();
    assert!(n.unsettled.is_empty() && n.recorded.is_empty(), "{n:?}");
    assert_eq!(
        s.neighbours("another", &jobs[3].id, t0).await.unwrap(),
        Neighbours::default()
    );
}

suite!(
    an_unanswered_attempt_is_remembered_until_the_round_ends,
    a_lease_taken_over_is_ambiguous_from_its_start,
    other_jobs_are_seen_as_a_reconcile_needs,
);
