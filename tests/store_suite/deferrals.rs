//! Deferred rules (`paths_unknown = "fetch"`) on every store: a delivery's
//! deferrals are stored with it, leased to one worker at a time, and
//! settled in one transaction that queues the rule's job (with its group
//! and statuses), moves the rule in the stored summary and ends the
//! deferral; the delivery reads `pending` until every one is settled, and
//! the purge keeps it until then.

use super::*;
use hookbridge::rules::Deferred;
use hookbridge::store::deferral::{FilesNote, LeasedDeferral, Settled, Verdict};

const REASON: &str = "the push lists no changed files";

/// A push whose `rules` wait for their changed files, and `jobs` matched rules.
fn deferring(id: &str, rules: &[&str], jobs: usize, at: SystemTime) -> NewDelivery {
    let mut d = delivery("github", id, jobs, at);
    d.summary.deferred = rules
        .iter()
        .map(|r| Deferred {
            rule: (*r).into(),
            reason: REASON.into(),
        })
        .collect();
    d
}

fn new_job(rule: &str) -> NewJob {
    NewJob::new(
        ulid::Ulid::generate().to_string(),
        rule.into(),
        "gitlab".into(),
        request(),
    )
}

fn files() -> FilesNote {
    FilesNote {
        from: "GitHub compare 1a2b3c4...5d6e7f8".into(),
        count: 3,
    }
}

fn matched(job: NewJob) -> Settled {
    Settled {
        verdict: Verdict::Matched(Box::new(job)),
        files: Some(files()),
        error: None,
    }
}

fn skipped(reason: &str) -> Settled {
    Settled {
        verdict: Verdict::Skipped(reason.into()),
        files: Some(files()),
        error: None,
    }
}

async fn lease(s: &Arc<dyn Store>, owner: &str, at: SystemTime) -> Vec<LeasedDeferral> {
    s.lease_deferrals(owner, 10, LEASE, at).await.unwrap()
}

/// The leased deferral of `rule`.
fn of<'a>(leased: &'a [LeasedDeferral], rule: &str) -> &'a LeasedDeferral {
    leased.iter().find(|d| d.rule == rule).unwrap()
}

fn rules(leased: &[LeasedDeferral]) -> Vec<&str> {
    let mut rules: Vec<&str> = leased.iter().map(|d| d.rule.as_str()).collect();
    rules.sort_unstable();
    rules
}

async fn status(s: &Arc<dyn Store>, id: &str) -> DeliveryStatus {
    s.get(&key(id)).await.unwrap().row.status
}

/// Both deferrals go in with the delivery, pending and due at its arrival,
/// in rule order; the delivery is pending with no job at all, and its
/// summary says which rules wait.
async fn deferred_rules_are_stored_pending_with_their_delivery(h: Harness) {
    let s = &h.store;
    let t = SystemTime::now();
    let d = deferring("push-1", &["web", "api"], 0, t);
    let summary = d.summary.clone();
    s.ingest(d).await.unwrap();
    let detail = s.get(&key("push-1")).await.unwrap();
    assert_eq!(detail.summary, summary);
    assert_eq!(detail.row.status, DeliveryStatus::Pending);
    assert!(detail.jobs.is_empty());
    let shown: Vec<(&str, &str, &str, u32, Option<i64>)> = detail
        .deferrals
        .iter()
        .map(|d| {
            (
                d.rule.as_str(),
                d.reason.as_str(),
                d.state.as_str(),
                d.attempts,
                d.next_attempt_at,
            )
        })
        .collect();
    assert_eq!(
        shown,
        [
            ("web", REASON, "pending", 0, Some(millis(t))),
            ("api", REASON, "pending", 0, Some(millis(t)))
        ]
    );
    let pending = s
        .list(&DeliveryFilter {
            status: Some(DeliveryStatus::Pending),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(pending.len(), 1);
    // A delivery that defers nothing has none, and nothing to lease.
    s.ingest(delivery("github", "push-2", 0, t)).await.unwrap();
    assert!(s.get(&key("push-2")).await.unwrap().deferrals.is_empty());
    assert_eq!(status(s, "push-2").await, DeliveryStatus::Skipped);
    // The admin API's shape: snake_case, and nothing when nothing waits.
    let json = serde_json::to_value(&detail).unwrap();
    assert_eq!(json["deferrals"][0]["next_attempt_at"], millis(t));
    let json = serde_json::to_value(s.get(&key("push-2")).await.unwrap()).unwrap();
    assert!(json.get("deferrals").is_none());
}

/// A deferral goes to one owner at a time: another gets none until the
/// lease runs out, then takes it over as its second lease.
async fn a_deferral_is_leased_once_until_its_lease_runs_out(h: Harness) {
    let s = &h.store;
    let t = SystemTime::now();
    let d = deferring("push-1", &["web", "api"], 0, t);
    let delivery_id = d.id.clone();
    s.ingest(d).await.unwrap();
    let a = s
        .lease_deferrals("a", 10, Duration::from_secs(5), t)
        .await
        .unwrap();
    assert_eq!(rules(&a), ["api", "web"]);
    for d in &a {
        assert_eq!((d.attempt, d.source.as_str()), (1, "github"));
        assert_eq!(d.delivery_id, delivery_id);
        assert_eq!(millis(d.created_at), millis(t));
    }
    assert!(lease(s, "b", t + Duration::from_secs(4)).await.is_empty());
    let detail = s.get(&key("push-1")).await.unwrap();
    assert!(
        detail
            .deferrals
            .iter()
            .all(|d| d.state == "running" && d.attempts == 1)
    );
    assert_eq!(detail.deferrals[0].next_attempt_at, None);
    let b = lease(s, "b", t + Duration::from_secs(6)).await;
    assert_eq!(rules(&b), ["api", "web"]);
    assert!(b.iter().all(|d| d.attempt == 2));
    // A limit is a limit.
    s.ingest(deferring("push-2", &["x", "y", "z"], 0, t))
        .await
        .unwrap();
    let c = s.lease_deferrals("c", 2, LEASE, t).await.unwrap();
    assert_eq!(c.len(), 2);
    assert!(s.lease_deferrals("c", 0, LEASE, t).await.unwrap().is_empty());
}

/// A match queues the rule's job, which the queue then hands out, and
/// moves the rule to the summary's `matched` with that job; the deferral
/// ends done with what was read. The delivery stays pending while its
/// other rule waits, even once the job is done.
async fn a_matched_deferral_queues_its_job_and_moves_the_rule(h: Harness) {
    let s = &h.store;
    let t = SystemTime::now();
    s.ingest(deferring("push-1", &["web", "api"], 0, t))
        .await
        .unwrap();
    let leased = lease(s, "w", t).await;
    let job = new_job("web");
    let job_id = job.id.clone();
    assert!(
        s.settle_deferral(of(&leased, "web"), "w", matched(job), t)
            .await
            .unwrap()
    );
    let jobs = s.lease_due("w", 10, LEASE, t).await.unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(
        (
            jobs[0].id.as_str(),
            jobs[0].rule.as_str(),
            jobs[0].delivery.as_str()
        ),
        (job_id.as_str(), "web", "push-1")
    );
    let detail = s.get(&key("push-1")).await.unwrap();
    assert_eq!(detail.summary.matched.len(), 1);
    assert_eq!(detail.summary.matched[0].job, job_id);
    assert_eq!(detail.summary.matched[0].rule, "web");
    assert_eq!(detail.summary.deferred.len(), 1);
    assert_eq!(detail.summary.deferred[0].rule, "api");
    let web = &detail.deferrals[0];
    assert_eq!((web.rule.as_str(), web.state.as_str()), ("web", "done"));
    assert_eq!(web.outcome.as_deref(), Some("matched"));
    assert_eq!(web.files, Some(files()));
    assert_eq!((web.attempts, web.next_attempt_at), (1, None));
    assert_eq!(detail.row.jobs, 1);
    s.record_attempt(&jobs[0], "w", attempt(201), created(), t)
        .await
        .unwrap();
    assert_eq!(
        status(s, "push-1").await,
        DeliveryStatus::Pending,
        "api still waits"
    );
    assert!(
        s.settle_deferral(of(&leased, "api"), "w", skipped("paths: none"), t)
            .await
            .unwrap()
    );
    assert_eq!(status(s, "push-1").await, DeliveryStatus::Done);
    let summary = s.get(&key("push-1")).await.unwrap().summary;
    assert!(summary.deferred.is_empty());
    assert_eq!(summary.skipped.len(), 1);
}

/// A delivery whose only rule was deferred reads pending, then skipped
/// once that rule is skipped (why the files could not be read kept with
/// it); one whose rule matched reads pending until its job runs.
async fn a_skipped_deferral_leaves_the_delivery_skipped(h: Harness) {
    let s = &h.store;
    let t = SystemTime::now();
    s.ingest(deferring("push-1", &["web"], 0, t)).await.unwrap();
    s.ingest(deferring("push-2", &["web"], 0, t)).await.unwrap();
    s.ingest(deferring("push-3", &["web"], 0, t)).await.unwrap();
    let leased = lease(s, "w", t).await;
    let mut ids = Vec::new();
    for id in ["push-1", "push-2", "push-3"] {
        ids.push(s.get(&key(id)).await.unwrap().row.id);
    }
    let (one, two, three) = (&ids[0], &ids[1], &ids[2]);
    let find = |id: &str| leased.iter().find(|d| d.delivery_id == id).unwrap();
    let gave_up = Settled {
        verdict: Verdict::Skipped("the changed files could not be read".into()),
        files: None,
        error: Some("GitHub answered 404".into()),
    };
    assert!(s.settle_deferral(find(one), "w", gave_up, t).await.unwrap());
    let detail = s.get(&key("push-1")).await.unwrap();
    assert_eq!(detail.row.status, DeliveryStatus::Skipped);
    assert_eq!(detail.summary.skipped[0].rule, "web");
    assert_eq!(
        detail.summary.skipped[0].reason,
        "the changed files could not be read"
    );
    let row = &detail.deferrals[0];
    assert_eq!(row.outcome.as_deref(), Some("skipped"));
    assert_eq!(row.last_error.as_deref(), Some("GitHub answered 404"));
    assert_eq!(row.files, None);
    let errored = Settled {
        verdict: Verdict::Errored("bad glob".into()),
        files: None,
        error: None,
    };
    assert!(s.settle_deferral(find(two), "w", errored, t).await.unwrap());
    let detail = s.get(&key("push-2")).await.unwrap();
    assert_eq!(detail.summary.errors[0].error, "bad glob");
    assert_eq!(detail.deferrals[0].outcome.as_deref(), Some("error"));
    assert_eq!(detail.row.status, DeliveryStatus::Skipped);
    assert!(
        s.settle_deferral(find(three), "w", matched(new_job("web")), t)
            .await
            .unwrap()
    );
    assert_eq!(status(s, "push-3").await, DeliveryStatus::Pending);
    let job = s.lease_due("w", 10, LEASE, t).await.unwrap().remove(0);
    s.record_attempt(&job, "w", attempt(201), created(), t)
        .await
        .unwrap();
    assert_eq!(status(s, "push-3").await, DeliveryStatus::Done);
}

/// A worker whose lease was taken over (or that leased it again since)
/// writes nothing: no job, no summary change, the deferral still the new
/// holder's.
async fn a_settle_without_the_lease_writes_nothing(h: Harness) {
    let s = &h.store;
    let t = SystemTime::now();
    s.ingest(deferring("push-1", &["web"], 0, t)).await.unwrap();
    let late = s
        .lease_deferrals("a", 10, Duration::from_secs(1), t)
        .await
        .unwrap()
        .remove(0);
    let before = s.get(&key("push-1")).await.unwrap();
    let t2 = t + Duration::from_secs(2);
    let taken = lease(s, "b", t2).await.remove(0);
    assert_eq!(taken.attempt, 2);
    assert!(
        !s.settle_deferral(&late, "a", matched(new_job("web")), t2)
            .await
            .unwrap()
    );
    assert!(!s.retry_deferral(&late, "a", t2, "timeout", t2).await.unwrap());
    // The same owner, but an earlier lease of it.
    let mut stale = taken.clone();
    stale.attempt = 1;
    assert!(!s.settle_deferral(&stale, "b", skipped("x"), t2).await.unwrap());
    let after = s.get(&key("push-1")).await.unwrap();
    assert_eq!(after.summary, before.summary);
    assert!(after.jobs.is_empty());
    assert_eq!(after.deferrals[0].state, "running");
    assert_eq!(after.deferrals[0].attempts, 2);
    assert!(s.lease_due("w", 10, LEASE, t2).await.unwrap().is_empty());
    assert!(s.settle_deferral(&taken, "b", skipped("x"), t2).await.unwrap());
    // Settled once: settling again is a lost lease too.
    assert!(!s.settle_deferral(&taken, "b", skipped("x"), t2).await.unwrap());
}

/// A failed read puts the deferral back, due at the time given and not
/// before, with why it failed.
async fn a_retried_deferral_is_due_at_its_time_and_not_before(h: Harness) {
    let s = &h.store;
    let t = SystemTime::now();
    s.ingest(deferring("push-1", &["web"], 0, t)).await.unwrap();
    let leased = lease(s, "w", t).await.remove(0);
    let at = t + Duration::from_secs(30);
    assert!(
        s.retry_deferral(&leased, "w", at, "GitHub answered 502", t)
            .await
            .unwrap()
    );
    let row = s.get(&key("push-1")).await.unwrap().deferrals.remove(0);
    assert_eq!(row.state, "pending");
    assert_eq!(row.next_attempt_at, Some(millis(at)));
    assert_eq!(row.last_error.as_deref(), Some("GitHub answered 502"));
    assert_eq!(status(s, "push-1").await, DeliveryStatus::Pending);
    assert!(lease(s, "w", at - Duration::from_millis(1)).await.is_empty());
    let again = lease(s, "w", at).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempt, 2);
}

/// Deferrals of one delivery settled at once each land in its summary:
/// none overwrites another's change.
async fn deferrals_of_one_delivery_settled_at_once_all_land(h: Harness) {
    let s = &h.store;
    let t = SystemTime::now();
    let names: Vec<String> = (0..6).map(|i| format!("rule-{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    s.ingest(deferring("push-1", &names, 0, t)).await.unwrap();
    let leased = lease(s, "w", t).await;
    assert_eq!(leased.len(), 6);
    let start = Arc::new(tokio::sync::Barrier::new(leased.len()));
    let mut tasks = Vec::new();
    for (i, d) in leased.into_iter().enumerate() {
        let (s, start) = (s.clone(), start.clone());
        tasks.push(tokio::spawn(async move {
            let settled = if i % 2 == 0 {
                matched(new_job(&d.rule))
            } else {
                skipped("paths: none")
            };
            start.wait().await;
            s.settle_deferral(&d, "w", settled, t).await.unwrap()
        }));
    }
    for task in tasks {
        assert!(task.await.unwrap());
    }
    let detail = s.get(&key("push-1")).await.unwrap();
    assert!(detail.summary.deferred.is_empty(), "{:?}", detail.summary);
    assert_eq!(
        (detail.summary.matched.len(), detail.summary.skipped.len()),
        (3, 3)
    );
    assert_eq!(detail.jobs.len(), 3);
    assert!(detail.deferrals.iter().all(|d| d.state == "done"));
    assert_eq!(detail.row.status, DeliveryStatus::Pending, "three jobs to run");
}

/// A matched job in a concurrency group is its group's newest: it ends
/// the group's older pending job, and its summary entry names it.
async fn a_matched_job_supersedes_its_groups_older_pending_job(h: Harness) {
    let s = &h.store;
    let t = SystemTime::now();
    let mut older = delivery("github", "push-1", 1, t);
    older.jobs[0].group = Some("acme/app/main".into());
    let old_job = older.jobs[0].id.clone();
    s.ingest(older).await.unwrap();
    s.ingest(deferring("push-2", &["web"], 0, t)).await.unwrap();
    let leased = lease(s, "w", t).await.remove(0);
    let mut job = new_job("web");
    job.group = Some("acme/app/main".into());
    let job_id = job.id.clone();
    assert!(s.settle_deferral(&leased, "w", matched(job), t).await.unwrap());
    let old = s.get(&key("push-1")).await.unwrap();
    assert_eq!(old.jobs[0].state, JobState::Superseded);
    assert_eq!(old.jobs[0].superseded_by.as_ref().unwrap().job, job_id);
    assert_eq!(old.row.status, DeliveryStatus::Superseded);
    let new = s.get(&key("push-2")).await.unwrap();
    assert_eq!(new.summary.matched[0].group.as_deref(), Some("acme/app/main"));
    assert_eq!(new.summary.matched[0].superseded, [old_job]);
    let due = s.lease_due("w", 10, LEASE, t).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].id, job_id);
    assert!(due[0].grouped);
}

/// A matched job keeps its debounce: due that long after the settle.
async fn a_matched_job_keeps_its_debounce(h: Harness) {
    let s = &h.store;
    let t = SystemTime::now();
    s.ingest(deferring("push-1", &["web"], 0, t)).await.unwrap();
    let leased = lease(s, "w", t).await.remove(0);
    let mut job = new_job("web");
    job.delay = Duration::from_secs(5);
    assert!(s.settle_deferral(&leased, "w", matched(job), t).await.unwrap());
    assert!(s.lease_due("w", 10, LEASE, t).await.unwrap().is_empty());
    let later = t + Duration::from_secs(5);
    assert_eq!(s.lease_due("w", 10, LEASE, later).await.unwrap().len(), 1);
}

/// A shutdown gives its deferrals back, due at once.
async fn release_gives_deferral_leases_back(h: Harness) {
    let s = &h.store;
    let t = SystemTime::now();
    s.ingest(deferring("push-1", &["web", "api"], 0, t))
        .await
        .unwrap();
    assert_eq!(lease(s, "a", t).await.len(), 2);
    s.release("b", t).await.unwrap();
    assert!(lease(s, "c", t).await.is_empty(), "b held none");
    s.release("a", t).await.unwrap();
    let again = lease(s, "c", t).await;
    assert_eq!(rules(&again), ["api", "web"]);
    assert!(again.iter().all(|d| d.attempt == 2));
}

/// The purge keeps a delivery whose rule still waits, however old, and
/// takes it (with its settled deferrals) once settled.
async fn the_purge_keeps_a_delivery_until_its_deferrals_settle(h: Harness) {
    let s = &h.store;
    let old = SystemTime::now() - Duration::from_secs(30 * 86400);
    s.ingest(deferring("old-1", &["web"], 0, old)).await.unwrap();
    let cutoff = SystemTime::now() - Duration::from_secs(14 * 86400);
    assert_eq!(s.purge(cutoff, 10).await.unwrap(), 0);
    let leased = lease(s, "w", SystemTime::now()).await.remove(0);
    assert_eq!(s.purge(cutoff, 10).await.unwrap(), 0, "leased, not settled");
    assert!(
        s.settle_deferral(&leased, "w", skipped("paths: none"), SystemTime::now())
            .await
            .unwrap()
    );
    assert_eq!(s.purge(cutoff, 10).await.unwrap(), 1);
    assert_eq!(
        s.get(&key("old-1")).await.unwrap_err().kind(),
        StoreErrorKind::NotFound
    );
    assert_eq!(h.orphans().await, 0);
}

/// Re-evaluation replaces the summary: the deferrals it lists are stored,
/// those of the earlier summary not settled yet are dropped (their worker
/// writes nothing), settled ones stay as history.
async fn a_reevaluation_replaces_the_unsettled_deferrals(h: Harness) {
    let s = &h.store;
    let t = SystemTime::now();
    s.ingest(deferring("push-1", &["web", "api"], 0, t))
        .await
        .unwrap();
    let leased = lease(s, "w", t).await;
    assert!(
        s.settle_deferral(of(&leased, "api"), "w", skipped("paths: none"), t)
            .await
            .unwrap()
    );
    let again = deferring("push-1", &["web", "docs"], 0, t);
    let later = t + Duration::from_secs(1);
    s.add_jobs(&key("push-1"), vec![], again.summary.clone(), later)
        .await
        .unwrap();
    assert!(
        !s.settle_deferral(of(&leased, "web"), "w", skipped("x"), later)
            .await
            .unwrap()
    );
    let detail = s.get(&key("push-1")).await.unwrap();
    let shown: Vec<(&str, &str)> = detail
        .deferrals
        .iter()
        .map(|d| (d.rule.as_str(), d.state.as_str()))
        .collect();
    assert_eq!(shown, [("api", "done"), ("web", "pending"), ("docs", "pending")]);
    assert_eq!(detail.summary.deferred, again.summary.deferred);
    assert_eq!(detail.row.status, DeliveryStatus::Pending);
    assert_eq!(rules(&lease(s, "w", later).await), ["docs", "web"]);
}

/// A re-evaluation that defers nothing and matches nothing (the deferred
/// rules were removed) leaves nothing open: the delivery is skipped.
async fn a_reevaluation_that_drops_every_deferral_leaves_the_delivery_skipped(h: Harness) {
    let s = &h.store;
    let t = SystemTime::now();
    s.ingest(deferring("push-1", &["web"], 0, t)).await.unwrap();
    assert_eq!(
        s.get(&key("push-1")).await.unwrap().row.status,
        DeliveryStatus::Pending
    );
    let mut again = deferring("push-1", &[], 0, t);
    again.summary.deferred.clear();
    s.add_jobs(&key("push-1"), vec![], again.summary, t + Duration::from_secs(1))
        .await
        .unwrap();
    let detail = s.get(&key("push-1")).await.unwrap();
    assert!(detail.deferrals.is_empty());
    assert_eq!(detail.row.status, DeliveryStatus::Skipped);
    assert!(lease(s, "w", t + Duration::from_secs(1)).await.is_empty());
}

/// Concurrent deliveries (one batch on PostgreSQL) each get their own
/// deferrals, those that defer nothing none.
async fn a_burst_of_ingests_stores_each_ones_deferrals(h: Harness) {
    let t = SystemTime::now();
    let mut tasks = Vec::new();
    for i in 0..24 {
        let s = h.store.clone();
        tasks.push(tokio::spawn(async move {
            let id = format!("push-{i}");
            let d = match i % 3 {
                0 => deferring(&id, &["web", "api"], 1, t),
                1 => deferring(&id, &["web"], 0, t),
                _ => delivery("github", &id, 1, t),
            };
            s.ingest(d).await.unwrap()
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    for i in 0..24 {
        let detail = h.store.get(&key(&format!("push-{i}"))).await.unwrap();
        let want = [2, 1, 0][i % 3];
        assert_eq!(detail.deferrals.len(), want, "push-{i}");
        assert_eq!(detail.row.status, DeliveryStatus::Pending, "push-{i}");
    }
    assert_eq!(lease(&h.store, "w", t).await.len(), 10);
    assert_eq!(
        h.store.lease_deferrals("w", 100, LEASE, t).await.unwrap().len(),
        14
    );
}

suite!(
    deferred_rules_are_stored_pending_with_their_delivery,
    a_deferral_is_leased_once_until_its_lease_runs_out,
    a_matched_deferral_queues_its_job_and_moves_the_rule,
    a_skipped_deferral_leaves_the_delivery_skipped,
    a_settle_without_the_lease_writes_nothing,
    a_retried_deferral_is_due_at_its_time_and_not_before,
    deferrals_of_one_delivery_settled_at_once_all_land,
    a_matched_job_supersedes_its_groups_older_pending_job,
    a_matched_job_keeps_its_debounce,
    release_gives_deferral_leases_back,
    the_purge_keeps_a_delivery_until_its_deferrals_settle,
    a_reevaluation_replaces_the_unsettled_deferrals,
    a_reevaluation_that_drops_every_deferral_leaves_the_delivery_skipped,
    a_burst_of_ingests_stores_each_ones_deferrals,
);

/// SQLite, restarted: a pending deferral is still there, and one leased
/// by the process before is taken back at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_keeps_deferrals_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let settings = settings(StoreUrl::Sqlite(dir.path().join("hb.db")));
    let t = SystemTime::now();
    {
        let s = open(&settings, OpenMode::Daemon).await.unwrap();
        s.ingest(deferring("push-1", &["web", "api"], 0, t))
            .await
            .unwrap();
        let leased = s.lease_deferrals("gone", 1, LEASE, t).await.unwrap();
        assert_eq!(leased.len(), 1);
    }
    let s = open(&settings, OpenMode::Daemon).await.unwrap();
    let detail = s.get(&key("push-1")).await.unwrap();
    assert_eq!(detail.row.status, DeliveryStatus::Pending);
    assert!(detail.deferrals.iter().all(|d| d.state == "pending"));
    // Taken back at the restart, due then.
    let now = SystemTime::now();
    assert_eq!(rules(&lease(&s, "w", now).await), ["api", "web"]);
}

/// A store of the schema before deferrals (SQLite 10, PostgreSQL 11) gains
/// them in place: what it held reads as before, and new deliveries defer.
async fn an_older_store_gains_deferrals_in_place(settings: StoreSettings, roll_back: &str) {
    let t = SystemTime::now();
    {
        let s = open(&settings, OpenMode::Daemon).await.unwrap();
        s.ingest(delivery("github", "old-1", 1, t)).await.unwrap();
    }
    match &settings.url {
        StoreUrl::Sqlite(path) => {
            let conn = rusqlite::Connection::open(path).unwrap();
            conn.execute_batch(roll_back).unwrap();
        }
        StoreUrl::Postgres(url) => {
            use sqlx::{Connection, Executor};
            let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
            conn.execute(roll_back).await.unwrap();
            let _ = conn.close().await;
        }
    }
    let s = open(&settings, OpenMode::Daemon).await.unwrap();
    let old = s.get(&key("old-1")).await.unwrap();
    assert!(old.deferrals.is_empty());
    assert_eq!(old.row.status, DeliveryStatus::Pending);
    s.ingest(deferring("new-1", &["web"], 0, t)).await.unwrap();
    let leased = lease(&s, "w", t).await.remove(0);
    assert!(s.settle_deferral(&leased, "w", skipped("x"), t).await.unwrap());
    assert_eq!(status(&s, "new-1").await, DeliveryStatus::Skipped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_version_10_gains_deferrals_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let settings = settings(StoreUrl::Sqlite(dir.path().join("hb.db")));
    assert_eq!(hookbridge::store::sqlite::schema_version(), 11);
    an_older_store_gains_deferrals_in_place(settings, "DROP TABLE deferrals; PRAGMA user_version = 10;").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_version_11_gains_deferrals_in_place() {
    let db = TestDatabase::create().await;
    let settings = settings(StoreUrl::Postgres(db.url.clone()));
    assert_eq!(hookbridge::store::postgres::schema_version(), 12);
    an_older_store_gains_deferrals_in_place(
        settings,
        "DROP TABLE deferrals; DELETE FROM hookbridge_schema WHERE version = 12;",
    )
    .await
}
