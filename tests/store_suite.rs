//! One store test suite, run against every backend: SQLite (a temp file) and
//! PostgreSQL (a fresh database per test, dropped at the end).
//!
//! PostgreSQL comes from `HOOKBRIDGE_TEST_POSTGRES_URL` (a maintenance
//! connection allowed to create databases), defaulting to
//! `postgres://postgres@127.0.0.1:5432/postgres`.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hookbridge::config::{StoreSettings, StoreUrl};
use hookbridge::store::*;
use hookbridge::target::{TriggerRequest, TriggerResult};
use support::pg::TestDatabase;

/// A store under test, and what keeps its backing storage alive.
struct Harness {
    store: Arc<dyn Store>,
    _sqlite: Option<tempfile::TempDir>,
    _postgres: Option<TestDatabase>,
}

async fn sqlite() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let settings = settings(StoreUrl::Sqlite(dir.path().join("hb.db")));
    let store = open(&settings, OpenMode::Daemon).await.unwrap();
    Harness {
        store,
        _sqlite: Some(dir),
        _postgres: None,
    }
}

impl Harness {
    /// Delete a delivery (with its jobs, attempts and payload) behind the
    /// store's back, as a concurrent purge or an operator's SQL would.
    async fn delete_behind_the_store(&self, delivery_id: &str) {
        if let Some(dir) = &self._sqlite {
            let conn = rusqlite::Connection::open(dir.path().join("hb.db")).unwrap();
            conn.busy_timeout(Duration::from_secs(5)).unwrap();
            conn.execute_batch("PRAGMA foreign_keys = ON").unwrap();
            conn.execute(
                "DELETE FROM payloads WHERE seq = (SELECT seq FROM deliveries WHERE id = ?1)",
                [delivery_id],
            )
            .unwrap();
            conn.execute("DELETE FROM deliveries WHERE id = ?1", [delivery_id])
                .unwrap();
        }
        if let Some(db) = &self._postgres {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
            for sql in [
                "DELETE FROM attempts WHERE job_id IN (SELECT id FROM jobs WHERE delivery_id = $1)",
                "DELETE FROM jobs WHERE delivery_id = $1",
                "DELETE FROM payloads WHERE seq = (SELECT seq FROM deliveries WHERE id = $1)",
                "DELETE FROM deliveries WHERE id = $1",
            ] {
                sqlx::query(sql)
                    .bind(delivery_id)
                    .execute(&mut conn)
                    .await
                    .unwrap();
            }
            let _ = conn.close().await;
        }
    }
}

/// Rows whose delivery (or job) is gone: payloads, jobs, attempts, deferrals.
const ORPHANS: &str = "SELECT
    (SELECT COUNT(*) FROM payloads p WHERE NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.seq = p.seq))
  + (SELECT COUNT(*) FROM jobs j WHERE NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.id = j.delivery_id))
  + (SELECT COUNT(*) FROM attempts a WHERE NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = a.job_id))
  + (SELECT COUNT(*) FROM deferrals f WHERE NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.id = f.delivery_id))";

impl Harness {
    /// Payloads, jobs, attempts and deferrals left without their delivery or job.
    async fn orphans(&self) -> i64 {
        if let Some(dir) = &self._sqlite {
            let conn = rusqlite::Connection::open(dir.path().join("hb.db")).unwrap();
            return conn.query_row(ORPHANS, [], |r| r.get(0)).unwrap();
        }
        use sqlx::Connection;
        let db = self._postgres.as_ref().unwrap();
        let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
        let n: i64 = sqlx::query_scalar(ORPHANS).fetch_one(&mut conn).await.unwrap();
        let _ = conn.close().await;
        n
    }
}

async fn postgres() -> Harness {
    let db = TestDatabase::create().await;
    let store = open(&settings(StoreUrl::Postgres(db.url.clone())), OpenMode::Daemon)
        .await
        .unwrap();
    Harness {
        store,
        _sqlite: None,
        _postgres: Some(db),
    }
}

fn settings(url: StoreUrl) -> StoreSettings {
    StoreSettings {
        url,
        retention: Duration::from_secs(14 * 86400),
        password: None,
        pool_size: 8,
        statement_timeout: Duration::from_secs(10),
        tls: "disable".into(),
    }
}

fn event(source: &str, delivery: &str) -> hookbridge::event::Event {
    serde_json::from_value(serde_json::json!({
        "source": source, "provider": "github", "name": "push", "kind": "push",
        "delivery": delivery, "repository": "acme/app", "ref": "refs/heads/main",
        "branch": "main", "created": false, "deleted": false, "forced": false, "changes": []
    }))
    .unwrap()
}

fn request() -> TriggerRequest {
    serde_json::from_value(
        serde_json::json!({"api": "gitlab_pipeline", "project": "acme/app", "ref": "main"}),
    )
    .unwrap()
}

/// A delivery with `jobs` matched rules (`rule-0`, `rule-1`, ...).
fn delivery(source: &str, id: &str, jobs: usize, received_at: SystemTime) -> NewDelivery {
    let jobs: Vec<NewJob> = (0..jobs)
        .map(|i| NewJob {
            id: ulid::Ulid::generate().to_string(),
            rule: format!("rule-{i}"),
            target: "gitlab".into(),
            request: request(),
            group: None,
            delay: Duration::ZERO,
            cancel: false,
            status: None,
        })
        .collect();
    NewDelivery {
        id: ulid::Ulid::generate().to_string(),
        source: source.into(),
        delivery: id.into(),
        received_at,
        event: event(source, id),
        headers: [("x-github-event".to_owned(), "push".to_owned())].into(),
        payload: br#"{"ref":"refs/heads/main"}"#.to_vec().into(),
        summary: Summary {
            delivery: id.into(),
            source: source.into(),
            event: "push".into(),
            duplicate: false,
            matched: jobs
                .iter()
                .map(|j| MatchedJob {
                    rule: j.rule.clone(),
                    job: j.id.clone(),
                    target: j.target.clone(),
                    group: None,
                    superseded: vec![],
                })
                .collect(),
            skipped: vec![],
            errors: vec![],
            deferred: Vec::new(),
        },
        jobs,
        trace: None,
    }
}

fn key(id: &str) -> DeliveryKey {
    DeliveryKey {
        id: id.into(),
        source: None,
    }
}

fn attempt(status: u16) -> Attempt {
    Attempt {
        started_at: SystemTime::now(),
        duration: Duration::from_millis(5),
        status: Some(status),
        error: None,
        response: Some("{}".into()),
        ambiguous: false,
        reconcile: None,
    }
}

fn created() -> Transition {
    Transition::Done(TriggerResult {
        id: Some("42".into()),
        number: Some(7),
        url: None,
        state: None,
        follow: None,
    })
}

const LEASE: Duration = Duration::from_secs(60);

async fn ingest_then_read_back(h: Harness) {
    let s = &h.store;
    let d = delivery("github", "d-1", 2, SystemTime::now());
    let summary = d.summary.clone();
    assert_eq!(
        s.ingest(d).await.unwrap(),
        Ingested::Stored { superseded: vec![] }
    );
    let detail = s.get(&key("d-1")).await.unwrap();
    assert_eq!(detail.summary, summary);
    assert_eq!(detail.row.status, DeliveryStatus::Pending);
    assert_eq!(detail.row.jobs, 2);
    assert_eq!(detail.jobs.len(), 2);
    assert_eq!(detail.jobs[0].request, request());
    let payload = s.payload(&key("d-1")).await.unwrap();
    assert_eq!(payload.payload, br#"{"ref":"refs/heads/main"}"#);
    assert_eq!(payload.headers["x-github-event"], "push");
    let skipped = delivery("github", "d-2", 0, SystemTime::now());
    assert_eq!(
        s.ingest(skipped).await.unwrap(),
        Ingested::Stored { superseded: vec![] }
    );
    let rows = s
        .list(&DeliveryFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].delivery, "d-2", "newest first");
    assert_eq!(rows[0].status, DeliveryStatus::Skipped);
    let pending = s
        .list(&DeliveryFilter {
            status: Some(DeliveryStatus::Pending),
            rule: Some("rule-1".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(pending.len(), 1);
    let missing = s.get(&key("nope")).await.unwrap_err();
    assert_eq!(missing.kind(), StoreErrorKind::NotFound);
    assert_eq!(missing.to_string(), "no delivery `nope`");
    let missing = s.payload(&key("nope")).await.unwrap_err();
    assert_eq!(missing.kind(), StoreErrorKind::NotFound);
}

async fn duplicates_return_the_original_summary(h: Harness) {
    let s = &h.store;
    let first = delivery("github", "dup", 1, SystemTime::now());
    let original = first.summary.clone();
    assert_eq!(
        s.ingest(first).await.unwrap(),
        Ingested::Stored { superseded: vec![] }
    );
    let again = delivery("github", "dup", 1, SystemTime::now());
    assert_eq!(
        s.ingest(again).await.unwrap(),
        Ingested::Duplicate {
            summary: original,
            requeued: 0
        }
    );
    // The same delivery id from another source is another delivery.
    assert_eq!(
        s.ingest(delivery("gitea", "dup", 1, SystemTime::now()))
            .await
            .unwrap(),
        Ingested::Stored { superseded: vec![] }
    );
    // Stored github first, listed by source name.
    let ambiguous = s.get(&key("dup")).await.unwrap_err();
    assert_eq!(ambiguous.kind(), StoreErrorKind::Ambiguous);
    assert_eq!(
        ambiguous.to_string(),
        "delivery `dup` exists for several sources (gitea, github); name one with --source"
    );
    let payload = s.payload(&key("dup")).await.unwrap_err();
    assert_eq!(payload.to_string(), ambiguous.to_string());
    let one = DeliveryKey {
        id: "dup".into(),
        source: Some("gitea".into()),
    };
    assert_eq!(s.get(&one).await.unwrap().row.source, "gitea");
    let stats = s.stats().await.unwrap();
    assert_eq!(stats.pending, 2);
}

async fn concurrent_duplicates_are_stored_once(h: Harness) {
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let s = h.store.clone();
        tasks.push(tokio::spawn(async move {
            s.ingest(delivery("github", "race", 1, SystemTime::now()))
                .await
                .unwrap()
        }));
    }
    let mut stored = 0;
    let mut summaries = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ingested::Stored { .. } => stored += 1,
            Ingested::Duplicate { summary, .. } => summaries.push(summary),
        }
    }
    assert_eq!(stored, 1);
    let original = h.store.get(&key("race")).await.unwrap().summary;
    assert!(summaries.iter().all(|s| *s == original));
    assert_eq!(h.store.stats().await.unwrap().pending, 1);
}

async fn lease_hands_each_job_to_one_worker(h: Harness) {
    let s = &h.store;
    s.ingest(delivery("github", "l-1", 3, SystemTime::now()))
        .await
        .unwrap();
    let a = s.lease_due("a", 2, LEASE, SystemTime::now()).await.unwrap();
    let b = s.lease_due("b", 5, LEASE, SystemTime::now()).await.unwrap();
    assert_eq!((a.len(), b.len()), (2, 1));
    assert!(
        a.iter()
            .chain(&b)
            .all(|j| j.attempt == 1 && j.delivery == "l-1" && j.source == "github")
    );
    assert!(
        s.lease_due("c", 5, LEASE, SystemTime::now())
            .await
            .unwrap()
            .is_empty()
    );
    let stats = s.stats().await.unwrap();
    assert_eq!((stats.pending, stats.running), (0, 3));
    assert!(stats.oldest_pending.is_some());
    // Graceful shutdown gives leases back.
    s.release("a", SystemTime::now()).await.unwrap();
    let again = s.lease_due("c", 5, LEASE, SystemTime::now()).await.unwrap();
    assert_eq!(again.len(), 2);
    assert!(again.iter().all(|j| j.attempt == 2));
}

async fn an_expired_lease_is_taken_over(h: Harness) {
    let s = &h.store;
    s.ingest(delivery("github", "e-1", 1, SystemTime::now()))
        .await
        .unwrap();
    let t = SystemTime::now();
    let dead_worker = s.lease_due("a", 1, Duration::from_millis(50), t).await.unwrap();
    assert_eq!(dead_worker.len(), 1);
    assert!(
        s.lease_due("b", 1, LEASE, t + Duration::from_millis(49))
            .await
            .unwrap()
            .is_empty(),
        "lease still held"
    );
    let later = t + Duration::from_millis(120);
    let next_due = s.next_due().await.unwrap().unwrap();
    assert_eq!(millis(next_due), millis(t + Duration::from_millis(50)));
    let taken = s.lease_due("b", 1, LEASE, later).await.unwrap();
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].id, dead_worker[0].id);
    assert_eq!(taken[0].attempt, 2);
    // The first worker comes back late: its attempt is recorded, but the job stays with b.
    s.record_attempt(&dead_worker[0], "a", attempt(201), created(), later)
        .await
        .unwrap();
    let job = &s.get(&key("e-1")).await.unwrap().jobs[0];
    assert_eq!(job.state, JobState::Running);
    let outcomes: Vec<&str> = job.history.iter().map(|a| a.outcome.as_str()).collect();
    assert_eq!(outcomes, ["interrupted", "done"]);
    s.record_attempt(&taken[0], "b", attempt(201), created(), later)
        .await
        .unwrap();
    let detail = s.get(&key("e-1")).await.unwrap();
    assert_eq!(detail.jobs[0].state, JobState::Done);
    assert_eq!(detail.jobs[0].history.len(), 3);
    assert_eq!(detail.row.status, DeliveryStatus::Done);
}

/// A record is fenced to its own lease, not only its owner: a worker's
/// record retried after its job was leased again (by the same dispatcher,
/// hence the same owner) is kept as an attempt but leaves the new lease
/// alone, so no other replica can take the job while it runs.
async fn a_retried_record_leaves_a_later_lease_of_the_same_owner_alone(h: Harness) {
    let s = &h.store;
    s.ingest(delivery("github", "f-1", 1, SystemTime::now()))
        .await
        .unwrap();
    let t = SystemTime::now();
    let first = s.lease_due("a", 1, LEASE, t).await.unwrap().remove(0);
    let retry = Transition::Retry {
        at: t + Duration::from_millis(10),
        reason: "HTTP 503".into(),
    };
    // Committed, but its answer was lost: the worker will send it again.
    s.record_attempt(&first, "a", attempt(503), retry.clone(), t)
        .await
        .unwrap();
    let t2 = t + Duration::from_millis(20);
    let second = s.lease_due("a", 1, LEASE, t2).await.unwrap().remove(0);
    assert_eq!((second.id.as_str(), second.attempt), (first.id.as_str(), 2));
    s.record_attempt(&first, "a", attempt(503), retry, t2)
        .await
        .unwrap();
    let job = &s.get(&key("f-1")).await.unwrap().jobs[0];
    assert_eq!(job.state, JobState::Running, "the second lease still holds");
    assert_eq!(job.history.len(), 2, "the retried record is kept as an attempt");
    assert!(
        s.lease_due("b", 1, LEASE, t2 + Duration::from_secs(1))
            .await
            .unwrap()
            .is_empty(),
        "another replica took a job under a live lease"
    );
    s.record_attempt(&second, "a", attempt(201), created(), t2)
        .await
        .unwrap();
    let job = &s.get(&key("f-1")).await.unwrap().jobs[0];
    assert_eq!(job.state, JobState::Done, "the lease's own record moves the job");
}

async fn attempts_are_recorded_and_retries_come_back(h: Harness) {
    let s = &h.store;
    s.ingest(delivery("github", "a-1", 1, SystemTime::now()))
        .await
        .unwrap();
    let t = SystemTime::now();
    let job = s.lease_due("w", 1, LEASE, t).await.unwrap().remove(0);
    let retry_at = t + Duration::from_millis(100);
    let retry = Transition::Retry {
        at: retry_at,
        reason: "HTTP 503".into(),
    };
    s.record_attempt(&job, "w", attempt(503), retry, t).await.unwrap();
    let detail = s.get(&key("a-1")).await.unwrap();
    assert_eq!(detail.jobs[0].state, JobState::Pending);
    assert_eq!(detail.jobs[0].last_error.as_deref(), Some("HTTP 503"));
    assert_eq!(detail.jobs[0].next_attempt_at, Some(millis(retry_at)));
    assert_eq!(detail.jobs[0].history[0].error.as_deref(), Some("HTTP 503"));
    assert!(
        s.lease_due("w", 1, LEASE, retry_at - Duration::from_millis(1))
            .await
            .unwrap()
            .is_empty(),
        "not due yet"
    );
    let job = s.lease_due("w", 1, LEASE, retry_at).await.unwrap().remove(0);
    assert_eq!(job.attempt, 2);
    s.record_attempt(&job, "w", attempt(201), created(), retry_at)
        .await
        .unwrap();
    let detail = s.get(&key("a-1")).await.unwrap();
    let j = &detail.jobs[0];
    assert_eq!((j.state, j.attempts), (JobState::Done, 2));
    assert_eq!(j.result.as_ref().and_then(|r| r.id.as_deref()), Some("42"));
    let history: Vec<(u32, Option<u16>, &str)> = j
        .history
        .iter()
        .map(|a| (a.n, a.status, a.outcome.as_str()))
        .collect();
    assert_eq!(history, [(1, Some(503), "retry"), (2, Some(201), "done")]);
    assert_eq!(detail.row.status, DeliveryStatus::Done);
}

async fn dead_letters_are_requeued_by_a_duplicate(h: Harness) {
    let s = &h.store;
    s.ingest(delivery("github", "x-1", 1, SystemTime::now()))
        .await
        .unwrap();
    let job = s
        .lease_due("w", 1, LEASE, SystemTime::now())
        .await
        .unwrap()
        .remove(0);
    s.record_attempt(
        &job,
        "w",
        attempt(404),
        Transition::Dead("HTTP 404".into()),
        SystemTime::now(),
    )
    .await
    .unwrap();
    let detail = s.get(&key("x-1")).await.unwrap();
    assert_eq!(detail.row.status, DeliveryStatus::Dead);
    assert_eq!(detail.jobs[0].last_error.as_deref(), Some("HTTP 404"));
    assert_eq!(s.stats().await.unwrap().dead, 1);
    let dead = s
        .list(&DeliveryFilter {
            status: Some(DeliveryStatus::Dead),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    match s
        .ingest(delivery("github", "x-1", 1, SystemTime::now()))
        .await
        .unwrap()
    {
        Ingested::Duplicate { requeued, .. } => assert_eq!(requeued, 1),
        other => panic!("expected a duplicate, got {other:?}"),
    }
    assert_eq!(
        s.get(&key("x-1")).await.unwrap().row.status,
        DeliveryStatus::Pending
    );
    let again = s.lease_due("w", 1, LEASE, SystemTime::now()).await.unwrap();
    assert_eq!(again[0].attempt, 1, "a new round starts at attempt 1");
}

async fn replay_queues_finished_jobs_again(h: Harness) {
    let s = &h.store;
    s.ingest(delivery("github", "r-1", 2, SystemTime::now()))
        .await
        .unwrap();
    for job in s.lease_due("w", 2, LEASE, SystemTime::now()).await.unwrap() {
        s.record_attempt(&job, "w", attempt(201), created(), SystemTime::now())
            .await
            .unwrap();
    }
    assert_eq!(s.get(&key("r-1")).await.unwrap().row.status, DeliveryStatus::Done);
    let detail = s.get(&key("r-1")).await.unwrap();
    let one = detail.jobs[0].id.clone();
    assert_eq!(
        s.replay(&key("r-1"), Some(&one), SystemTime::now())
            .await
            .unwrap(),
        vec![one]
    );
    assert_eq!(
        s.get(&key("r-1")).await.unwrap().row.status,
        DeliveryStatus::Pending
    );
    let mut all = s.replay(&key("r-1"), None, SystemTime::now()).await.unwrap();
    all.sort();
    assert_eq!(all.len(), 2);
    let missing = s
        .replay(&key("r-1"), Some("no-such-job"), SystemTime::now())
        .await
        .unwrap_err();
    assert_eq!(
        missing.to_string(),
        "no delivery `no-such-job (job of delivery r-1)`"
    );
    assert_eq!(
        s.replay(&key("r-1"), Some("no-such-job"), SystemTime::now())
            .await
            .unwrap_err()
            .kind(),
        StoreErrorKind::NotFound
    );
    assert_eq!(
        s.lease_due("w", 5, LEASE, SystemTime::now()).await.unwrap().len(),
        2
    );
    // Re-evaluation adds jobs and replaces the summary.
    let mut extra = delivery("github", "r-1", 1, SystemTime::now());
    extra.summary.matched[0].rule = "rule-new".into();
    extra.jobs[0].rule = "rule-new".into();
    s.add_jobs(&key("r-1"), extra.jobs, extra.summary.clone(), SystemTime::now())
        .await
        .unwrap();
    let detail = s.get(&key("r-1")).await.unwrap();
    assert_eq!(detail.jobs.len(), 3);
    assert_eq!(detail.summary, extra.summary);
}

async fn retention_purges_finished_deliveries_in_batches(h: Harness) {
    let s = &h.store;
    let old = SystemTime::now() - Duration::from_secs(30 * 86400);
    for i in 0..3 {
        s.ingest(delivery("github", &format!("old-{i}"), 0, old))
            .await
            .unwrap();
    }
    s.ingest(delivery("github", "old-pending", 1, old)).await.unwrap();
    s.ingest(delivery("github", "old-done", 1, old)).await.unwrap();
    s.ingest(delivery("github", "old-dead", 1, old)).await.unwrap();
    let jobs = s.lease_due("w", 5, LEASE, SystemTime::now()).await.unwrap();
    let done = jobs.iter().find(|j| j.delivery == "old-done").unwrap();
    s.record_attempt(done, "w", attempt(201), created(), SystemTime::now())
        .await
        .unwrap();
    // Dead-lettered: kept for `deliveries list --status dead` and a replay.
    let dead = jobs.iter().find(|j| j.delivery == "old-dead").unwrap();
    s.record_attempt(
        dead,
        "w",
        attempt(404),
        Transition::Dead("HTTP 404".into()),
        SystemTime::now(),
    )
    .await
    .unwrap();
    s.ingest(delivery("github", "new", 0, SystemTime::now()))
        .await
        .unwrap();
    let cutoff = SystemTime::now() - Duration::from_secs(14 * 86400);
    assert_eq!(s.purge(cutoff, 3).await.unwrap(), 3);
    assert_eq!(s.purge(cutoff, 3).await.unwrap(), 1);
    assert_eq!(s.purge(cutoff, 3).await.unwrap(), 0);
    let mut left: Vec<String> = s
        .list(&DeliveryFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.delivery)
        .collect();
    // What is left, not its order: ids made in the same millisecond (as
    // these are) are unordered.
    left.sort_unstable();
    assert_eq!(left, ["new", "old-dead", "old-pending"]);
    // What hung on the purged deliveries went with them.
    assert_eq!(h.orphans().await, 0);
    assert!(s.ready().await.is_ok());
}

/// A delivery with one job, received `secs` after `t0`, whose internal and job
/// ids are given (so that the order they are stored in is not their order).
fn named(delivery_id: &str, internal: &str, jobs: &[&str], received_at: SystemTime) -> NewDelivery {
    let mut d = delivery("github", delivery_id, jobs.len(), received_at);
    d.id = internal.into();
    for (job, id) in d.jobs.iter_mut().zip(jobs) {
        job.id = (*id).into();
    }
    for (m, id) in d.summary.matched.iter_mut().zip(jobs) {
        m.job = (*id).into();
    }
    d
}

fn history_errors(detail: &DeliveryDetail) -> Vec<(String, Option<String>)> {
    detail.jobs[0]
        .history
        .iter()
        .map(|a| (a.outcome.clone(), a.error.clone()))
        .collect()
}

const LEASE_EXPIRED: &str = "its lease expired: the process holding it stopped or stalled while the job was leased (it may not have been sent)";
const STOPPED: &str = "hookbridge stopped while the job was leased (it may not have been sent)";

/// Due jobs go out oldest due first, whatever order they were stored in;
/// of expired leases, the one that expired first is taken first; each
/// interruption is recorded with its reason, word for word.
async fn leases_go_out_in_order(h: Harness) {
    let s = &h.store;
    let t0 = SystemTime::now() - Duration::from_secs(60);
    let at = |secs: u64| t0 + Duration::from_secs(secs);
    for (d, secs) in [("o-3", 3), ("o-1", 1), ("o-2", 2)] {
        s.ingest(delivery("github", d, 1, at(secs))).await.unwrap();
    }
    let first = s.lease_due("a", 1, Duration::from_secs(3), at(5)).await.unwrap();
    let second = s.lease_due("b", 1, Duration::from_secs(1), at(5)).await.unwrap();
    assert_eq!(
        (first[0].delivery.as_str(), second[0].delivery.as_str()),
        ("o-1", "o-2")
    );
    // At 10 s both leases have expired: b's (at 6 s) before a's (at 8 s).
    let taken = s.lease_due("c", 1, LEASE, at(10)).await.unwrap();
    assert_eq!(taken[0].delivery, "o-2", "the lease that expired first");
    let rest: Vec<String> = s
        .lease_due("c", 5, LEASE, at(10))
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.delivery)
        .collect();
    assert_eq!(rest, ["o-1", "o-3"], "oldest due first");
    s.release("c", at(11)).await.unwrap();
    let o2 = s.get(&key("o-2")).await.unwrap();
    assert_eq!(
        history_errors(&o2),
        [
            ("interrupted".to_owned(), Some(LEASE_EXPIRED.to_owned())),
            ("interrupted".to_owned(), Some(STOPPED.to_owned())),
        ]
    );
    assert_eq!(o2.jobs[0].history[0].started_at, millis(at(10)));
    assert_eq!(o2.jobs[0].history[1].started_at, millis(at(11)));
    assert_eq!(o2.jobs[0].state, JobState::Pending);
    assert_eq!(o2.jobs[0].next_attempt_at, Some(millis(at(11))));
    let o3 = s.get(&key("o-3")).await.unwrap();
    assert_eq!(
        history_errors(&o3),
        [("interrupted".to_owned(), Some(STOPPED.to_owned()))]
    );
}

/// Replay answers the job ids sorted, whatever order the jobs were stored in;
/// `list` is newest first by internal id and pages with `before`.
async fn replayed_ids_and_lists_are_ordered(h: Harness) {
    let s = &h.store;
    let t = SystemTime::now();
    let ids = [
        "01J00000000000000000000003",
        "01J00000000000000000000001",
        "01J00000000000000000000002",
    ];
    for (i, id) in ids.iter().enumerate() {
        let jobs = [format!("job-{i}-c"), format!("job-{i}-a"), format!("job-{i}-b")];
        let jobs: Vec<&str> = jobs.iter().map(String::as_str).collect();
        s.ingest(named(&format!("p-{i}"), id, &jobs, t)).await.unwrap();
    }
    for job in s.lease_due("w", 9, LEASE, t).await.unwrap() {
        s.record_attempt(&job, "w", attempt(201), created(), t)
            .await
            .unwrap();
    }
    assert_eq!(
        s.replay(&key("p-0"), None, t).await.unwrap(),
        ["job-0-a", "job-0-b", "job-0-c"]
    );
    let listed: Vec<String> = s
        .list(&DeliveryFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(listed, [ids[0], ids[2], ids[1]]);
    let page: Vec<String> = s
        .list(&DeliveryFilter {
            before: Some(ids[2].into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(page, [ids[1]]);
    let detail = s.get(&key("p-0")).await.unwrap();
    let jobs: Vec<&str> = detail.jobs.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(jobs, ["job-0-a", "job-0-b", "job-0-c"]);
}

/// A job deleted between its lease and its record (a purge, an operator's
/// SQL): the worker's record is tolerated and writes nothing.
async fn a_vanished_job_is_tolerated(h: Harness) {
    let s = &h.store;
    let t = SystemTime::now();
    s.ingest(named("v-1", "01J0000000000000000000000V", &["job-v"], t))
        .await
        .unwrap();
    let job = s.lease_due("w", 1, LEASE, t).await.unwrap().remove(0);
    h.delete_behind_the_store(&job.delivery_id).await;
    let recorded = s.record_attempt(&job, "w", attempt(201), created(), t).await;
    assert!(recorded.is_ok(), "{recorded:?}");
    let dead = Transition::Dead("HTTP 404".into());
    let recorded = s.record_attempt(&job, "w", attempt(404), dead, t).await;
    assert!(recorded.is_ok(), "{recorded:?}");
    assert_eq!(
        s.get(&key("v-1")).await.unwrap_err().kind(),
        StoreErrorKind::NotFound
    );
    let stats = s.stats().await.unwrap();
    assert_eq!((stats.pending, stats.running, stats.dead), (0, 0, 0));
}

/// A write that contradicts what is stored (here: a job id taken) is a
/// conflict, not "try again later", and leaves nothing behind.
async fn a_constraint_violation_is_a_conflict(h: Harness) {
    let s = &h.store;
    let t = SystemTime::now();
    s.ingest(named("c-1", "01J0000000000000000000000C", &["job-same"], t))
        .await
        .unwrap();
    let clash = s
        .ingest(named("c-2", "01J0000000000000000000000D", &["job-same"], t))
        .await
        .unwrap_err();
    assert_eq!(clash.kind(), StoreErrorKind::Conflict, "{clash}");
    assert_eq!(
        s.get(&key("c-2")).await.unwrap_err().kind(),
        StoreErrorKind::NotFound
    );
    assert_eq!(s.get(&key("c-1")).await.unwrap().jobs.len(), 1);
}

/// Many ingests and then many records at once (PostgreSQL writes
/// concurrent calls in shared transactions): each lands exactly once, a
/// repeat of a delivery within the burst is answered as a duplicate with the
/// original summary, and a call that cannot be written (its job id is
/// taken) fails alone without taking the others with it.
async fn a_burst_of_writes_lands_once_each_and_a_bad_call_fails_alone(h: Harness) {
    let s = &h.store;
    let t = SystemTime::now();
    s.ingest(named("taken", "01J000000000000000000000TK", &["job-taken"], t))
        .await
        .unwrap();
    let mut ingests = tokio::task::JoinSet::new();
    for i in 0..96 {
        let d = if i == 40 {
            named("clash", "01J000000000000000000000CL", &["job-taken"], t)
        } else {
            // 80..96 repeat the keys of 0..16.
            delivery("github", &format!("burst-{}", i % 80), 1, t)
        };
        let s = s.clone();
        ingests.spawn(async move { (d.delivery.clone(), s.ingest(d).await) });
    }
    let mut stored = std::collections::BTreeMap::new();
    let mut duplicates = Vec::new();
    while let Some(joined) = ingests.join_next().await {
        match joined.unwrap() {
            (key, Ok(Ingested::Stored { .. })) => *stored.entry(key).or_insert(0) += 1,
            (_, Ok(Ingested::Duplicate { summary, requeued })) => {
                assert_eq!(requeued, 0);
                duplicates.push(summary);
            }
            (key, Err(e)) => {
                assert_eq!(key, "clash");
                assert_eq!(e.kind(), StoreErrorKind::Conflict, "{e}");
            }
        }
    }
    assert_eq!(stored.len(), 79, "{stored:?}");
    assert!(stored.values().all(|n| *n == 1), "{stored:?}");
    assert_eq!(duplicates.len(), 16);
    for d in &duplicates {
        assert_eq!(*d, s.get(&key(&d.delivery)).await.unwrap().summary);
    }
    assert_eq!(
        s.get(&key("clash")).await.unwrap_err().kind(),
        StoreErrorKind::NotFound
    );

    let jobs = s.lease_due("w", 500, LEASE, t).await.unwrap();
    assert_eq!(jobs.len(), 80);
    let mut records = tokio::task::JoinSet::new();
    for job in jobs {
        let s = s.clone();
        records.spawn(async move { s.record_attempt(&job, "w", attempt(201), created(), t).await });
    }
    while let Some(joined) = records.join_next().await {
        joined.unwrap().unwrap();
    }
    for key_ in stored.keys().map(String::as_str).chain(["taken"]) {
        let detail = s.get(&key(key_)).await.unwrap();
        assert_eq!(detail.row.status, DeliveryStatus::Done, "{key_}");
        let history: Vec<(u32, Option<u16>)> =
            detail.jobs[0].history.iter().map(|a| (a.n, a.status)).collect();
        assert_eq!(history, [(1, Some(201))], "{key_}");
    }
    let stats = s.stats().await.unwrap();
    assert_eq!((stats.pending, stats.running, stats.dead), (0, 0, 0));
}

/// Every case runs on both backends.
/// Text from outside may hold NUL (a payload's `\u0000`, a CI's raw
/// answer), which PostgreSQL's `text` refuses: each store keeps the
/// delivery and the attempt, NUL shown as U+FFFD where it cannot be kept.
async fn text_with_nul_bytes_is_stored(h: Harness) {
    let s = &h.store;
    let mut d = delivery("github", "nul-1", 1, SystemTime::now());
    d.event.repository = Some("acme/a\0pp".into());
    d.event.git_ref = Some("refs/heads/ma\0in".into());
    assert_eq!(
        s.ingest(d).await.unwrap(),
        Ingested::Stored { superseded: vec![] }
    );
    let t = SystemTime::now();
    let job = s.lease_due("w", 1, LEASE, t).await.unwrap().remove(0);
    let mut failed = attempt(500);
    failed.response = Some("oops\0bad".into());
    let retry = Transition::Retry {
        at: t,
        reason: "HTTP 500: oops\0bad".into(),
    };
    s.record_attempt(&job, "w", failed, retry, t).await.unwrap();
    let detail = s.get(&key("nul-1")).await.unwrap();
    let shown = |v: Option<&str>| v.map(|v| v.replace('\u{FFFD}', "\0"));
    assert_eq!(
        shown(detail.row.repository.as_deref()).as_deref(),
        Some("acme/a\0pp")
    );
    let a = &detail.jobs[0].history[0];
    assert_eq!(shown(a.error.as_deref()).as_deref(), Some("HTTP 500: oops\0bad"));
    assert_eq!(shown(a.response.as_deref()).as_deref(), Some("oops\0bad"));
    assert_eq!(detail.jobs[0].state, JobState::Pending);
}

macro_rules! suite {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::sqlite().await).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::postgres().await).await
                }
            )*
        }
    };
}

#[path = "store_suite/ambiguous.rs"]
mod ambiguous;
#[path = "store_suite/deferrals.rs"]
mod deferrals;
#[path = "store_suite/follow_ups.rs"]
mod follow_ups;
#[path = "store_suite/groups.rs"]
mod groups;
#[path = "store_suite/search.rs"]
mod search;
#[path = "store_suite/statuses.rs"]
mod statuses;

suite!(
    ingest_then_read_back,
    duplicates_return_the_original_summary,
    concurrent_duplicates_are_stored_once,
    lease_hands_each_job_to_one_worker,
    an_expired_lease_is_taken_over,
    a_retried_record_leaves_a_later_lease_of_the_same_owner_alone,
    attempts_are_recorded_and_retries_come_back,
    dead_letters_are_requeued_by_a_duplicate,
    replay_queues_finished_jobs_again,
    retention_purges_finished_deliveries_in_batches,
    a_constraint_violation_is_a_conflict,
    leases_go_out_in_order,
    replayed_ids_and_lists_are_ordered,
    a_vanished_job_is_tolerated,
    a_burst_of_writes_lands_once_each_and_a_bad_call_fails_alone,
    text_with_nul_bytes_is_stored,
);

/// New jobs are announced (`NOTIFY hookbridge_jobs`) by a process without a
/// dispatcher of its own (a tool); once the store watches for a dispatcher
/// (`Store::watch`, as `serve` does) that dispatcher takes them and the
/// other replicas are not woken. Notifications arrive in commit order, so a
/// marker sent after the second ingest shows whether it announced anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_announces_new_jobs_only_when_no_dispatcher_of_its_own_takes_them() {
    use sqlx::Connection;
    use sqlx::postgres::PgListener;

    let h = postgres().await;
    let url = h._postgres.as_ref().unwrap().url.clone();
    let mut listener = PgListener::connect(&url).await.unwrap();
    listener.listen("hookbridge_jobs").await.unwrap();
    let within = Duration::from_secs(10);

    h.store
        .ingest(delivery("github", "n-1", 1, SystemTime::now()))
        .await
        .unwrap();
    let first = tokio::time::timeout(within, listener.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.payload(), "");

    let shutdown = tokio_util::sync::CancellationToken::new();
    h.store
        .watch(Arc::new(tokio::sync::Notify::new()), shutdown.clone());
    h.store
        .ingest(delivery("github", "n-2", 1, SystemTime::now()))
        .await
        .unwrap();
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("SELECT pg_notify('hookbridge_jobs', 'marker')")
        .execute(&mut conn)
        .await
        .unwrap();
    let next = tokio::time::timeout(within, listener.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next.payload(), "marker", "the second ingest was announced");
    shutdown.cancel();
}

/// With a dispatcher's handoff, an ingest writes as many jobs as it has free
/// slots leased to it and hands them over with their slots; the rest are
/// stored due and wake it. Nobody else can lease the handed jobs, the
/// dispatcher records them like any lease, a duplicate takes no slot, and
/// once it stopped nothing more is handed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_leases_new_jobs_into_its_dispatchers_free_slots_as_it_stores_them() {
    use hookbridge::store::handoff::Handoff;

    let h = postgres().await;
    let s = &h.store;
    assert!(!s.wakes_on_ingest());
    let slots = Arc::new(tokio::sync::Semaphore::new(2));
    let wake = Arc::new(tokio::sync::Notify::new());
    let (handoff, mut handed) = Handoff::new(
        "me".into(),
        slots.clone(),
        Box::new(|| Some((SystemTime::now(), LEASE))),
        wake.clone(),
    );
    s.hand_off(handoff);
    assert!(s.wakes_on_ingest());

    let d = delivery("github", "h-1", 3, SystemTime::now());
    let ids: Vec<String> = d.jobs.iter().map(|j| j.id.clone()).collect();
    assert_eq!(
        s.ingest(d.clone()).await.unwrap(),
        Ingested::Stored { superseded: vec![] }
    );
    let within = Duration::from_secs(10);
    tokio::time::timeout(within, wake.notified()).await.unwrap();
    let first = handed.recv().await.unwrap();
    let second = handed.recv().await.unwrap();
    assert!(handed.try_recv().is_err(), "only two slots were free");
    assert_eq!(slots.available_permits(), 0);
    assert_eq!([&first.job.id, &second.job.id], [&ids[0], &ids[1]]);
    assert!(
        [&first.job, &second.job]
            .iter()
            .all(|j| j.attempt == 1 && j.delivery == "h-1" && j.source == "github" && j.request == request())
    );
    // Only the job left due can be leased by anyone else.
    let other = s.lease_due("other", 10, LEASE, SystemTime::now()).await.unwrap();
    assert_eq!(other.iter().map(|j| &j.id).collect::<Vec<_>>(), [&ids[2]]);
    let stats = s.stats().await.unwrap();
    assert_eq!((stats.pending, stats.running), (0, 3));

    // The handed lease is this dispatcher's, and records like one it took.
    s.record_attempt(&first.job, "me", attempt(201), created(), SystemTime::now())
        .await
        .unwrap();
    drop(first);
    assert_eq!(slots.available_permits(), 1);
    let detail = s.get(&key("h-1")).await.unwrap();
    let job = detail.jobs.iter().find(|j| j.id == ids[0]).unwrap();
    assert_eq!(
        (job.state, job.attempts, job.history.len()),
        (JobState::Done, 1, 1)
    );

    // A duplicate stores nothing, so it keeps no slot.
    assert!(matches!(s.ingest(d).await.unwrap(), Ingested::Duplicate { .. }));
    assert_eq!(slots.available_permits(), 1);
    assert!(handed.try_recv().is_err());

    // A stopped dispatcher is handed nothing: its jobs are stored due.
    handed.close();
    s.ingest(delivery("github", "h-2", 1, SystemTime::now()))
        .await
        .unwrap();
    assert_eq!(slots.available_permits(), 1);
    let due = s.lease_due("other", 10, LEASE, SystemTime::now()).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].delivery, "h-2");
}

/// A dispatcher that stops between an ingest's claim and its commit cannot
/// take the jobs written leased to it: they are given back at once, due for
/// any replica and announced, with no attempt counted (they were never
/// sent), instead of waiting for their lease to expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_gives_back_at_once_what_a_stopped_dispatcher_was_handed() {
    use hookbridge::store::handoff::{Handed, Handoff};
    use sqlx::postgres::PgListener;
    use std::sync::Mutex;

    let h = postgres().await;
    let s = &h.store;
    let url = h._postgres.as_ref().unwrap().url.clone();
    let mut listener = PgListener::connect(&url).await.unwrap();
    listener.listen("hookbridge_jobs").await.unwrap();
    // The dispatcher stops right after the claim: its terms drop the receiver.
    let receiver: Arc<Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<Handed>>>> =
        Arc::new(Mutex::new(None));
    let stops = receiver.clone();
    let slots = Arc::new(tokio::sync::Semaphore::new(4));
    let (handoff, rx) = Handoff::new(
        "me".into(),
        slots.clone(),
        Box::new(move || {
            stops.lock().unwrap().take();
            Some((SystemTime::now(), LEASE))
        }),
        Arc::new(tokio::sync::Notify::new()),
    );
    *receiver.lock().unwrap() = Some(rx);
    s.hand_off(handoff);

    s.ingest(delivery("github", "g-1", 2, SystemTime::now()))
        .await
        .unwrap();
    assert_eq!(slots.available_permits(), 4);
    let announced = tokio::time::timeout(Duration::from_secs(10), listener.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(announced.payload(), "");
    let due = s.lease_due("other", 10, LEASE, SystemTime::now()).await.unwrap();
    assert_eq!(due.len(), 2, "both jobs are due for anyone");
    assert!(due.iter().all(|j| j.attempt == 1), "{due:?}");
    let detail = s.get(&key("g-1")).await.unwrap();
    assert!(
        detail.jobs.iter().all(|j| j.history.is_empty()),
        "{:?}",
        detail.jobs
    );
}

/// `pool_size = 1` is accepted, so it must work: the `LISTEN` of a
/// watching store holds a connection of its own, not the pool's only one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_with_a_pool_of_one_still_writes_while_it_listens() {
    let db = TestDatabase::create().await;
    let mut settings = settings(StoreUrl::Postgres(db.url.clone()));
    settings.pool_size = 1;
    let s = open(&settings, OpenMode::Daemon).await.unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    s.watch(Arc::new(tokio::sync::Notify::new()), shutdown.clone());
    // The listener connects first, as it would under `serve`.
    {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let listening: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND query ILIKE 'LISTEN%'",
            )
            .fetch_one(&mut conn)
            .await
            .unwrap();
            if listening > 0 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the store never listened");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    s.ingest(delivery("github", "p-1", 1, SystemTime::now()))
        .await
        .unwrap();
    let job = s
        .lease_due("me", 1, LEASE, SystemTime::now())
        .await
        .unwrap()
        .remove(0);
    s.record_attempt(&job, "me", attempt(201), created(), SystemTime::now())
        .await
        .unwrap();
    assert_eq!(s.get(&key("p-1")).await.unwrap().row.status, DeliveryStatus::Done);
    shutdown.cancel();
}

/// SQLite, its files deleted under the store: new deliveries and operator
/// actions are refused and readiness fails, while the dispatcher still drains
/// what was acknowledged before (it lives on in the open file until then).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_refuses_new_work_once_its_files_are_deleted_but_drains_the_queue() {
    let h = sqlite().await;
    let s = &h.store;
    let db = h._sqlite.as_ref().unwrap().path().join("hb.db");
    s.ingest(delivery("github", "before", 1, SystemTime::now()))
        .await
        .unwrap();
    s.ready().await.unwrap();
    for suffix in ["", "-wal", "-shm"] {
        let mut path = db.clone().into_os_string();
        path.push(suffix);
        std::fs::remove_file(path).unwrap();
    }
    let refused = s.ingest(delivery("github", "after", 1, SystemTime::now())).await;
    assert!(
        matches!(&refused, Err(e) if e.kind() == StoreErrorKind::Unavailable && e.to_string().contains("was deleted")),
        "{refused:?}"
    );
    assert!(s.replay(&key("before"), None, SystemTime::now()).await.is_err());
    // Readiness answers from its cache for up to ready::TTL, then probes.
    support::wait_for(ready::TTL * 5, "readiness to fail", async || {
        match s.ready().await {
            Err(_) => Ok(()),
            Ok(()) => Err("ready".into()),
        }
    })
    .await;
    // Nothing recreated the file at the path.
    assert!(!db.exists());

    let leased = s.lease_due("w", 10, LEASE, SystemTime::now()).await.unwrap();
    assert_eq!(leased.len(), 1);
    assert_eq!(leased[0].delivery, "before");
    s.record_attempt(&leased[0], "w", attempt(201), created(), SystemTime::now())
        .await
        .unwrap();
}

/// PostgreSQL readiness takes a committed write: a server that still answers
/// queries but cannot write (here: every new session read-only, as on a
/// standby) is not ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_readiness_needs_a_write_not_just_an_answer() {
    use sqlx::{Connection, Executor};

    let h = postgres().await;
    let s = &h.store;
    let db = h._postgres.as_ref().unwrap();
    s.ready().await.unwrap();
    let mut admin = sqlx::PgConnection::connect(&support::pg::maintenance_url())
        .await
        .unwrap();
    admin
        .execute(
            format!(
                "ALTER DATABASE {} SET default_transaction_read_only = on",
                db.name
            )
            .as_str(),
        )
        .await
        .unwrap();
    // The pool reconnects, and its new sessions are read-only.
    admin
        .execute(
            format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{}'",
                db.name
            )
            .as_str(),
        )
        .await
        .unwrap();
    // Readiness answers from its cache for up to ready::TTL; a first probe
    // may meet a terminated connection, and the pool then reconnects.
    support::wait_for(
        Duration::from_secs(10),
        "readiness refused for being read-only",
        async || match s.ready().await {
            Err(e) if e.to_string().contains("read-only") => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    s.stats().await.expect("reads still work");

    admin
        .execute(format!("ALTER DATABASE {} RESET default_transaction_read_only", db.name).as_str())
        .await
        .unwrap();
    admin
        .execute(
            format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{}'",
                db.name
            )
            .as_str(),
        )
        .await
        .unwrap();
    let _ = admin.close().await;
    support::wait_for(Duration::from_secs(10), "ready again", async || {
        s.ready().await.map_err(|e| e.to_string())
    })
    .await;
}

/// PostgreSQL schema version 1, as hookbridge created it before payloads
/// moved to their own table (kept verbatim: it is what old databases hold).
const POSTGRES_V1: &str = r#"
CREATE TABLE hookbridge_schema (
    version    INTEGER PRIMARY KEY,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now());
INSERT INTO hookbridge_schema (version) VALUES (1);
CREATE TABLE deliveries (
    id          TEXT PRIMARY KEY,
    source      TEXT NOT NULL,
    delivery    TEXT NOT NULL,
    received_at BIGINT NOT NULL,
    event_name  TEXT NOT NULL,
    kind        TEXT NOT NULL,
    repository  TEXT,
    git_ref     TEXT,
    status      TEXT NOT NULL,
    summary     TEXT NOT NULL,
    event       TEXT NOT NULL,
    headers     TEXT NOT NULL,
    payload     BYTEA NOT NULL,
    UNIQUE (source, delivery)
);
CREATE INDEX deliveries_delivery ON deliveries (delivery);
CREATE INDEX deliveries_status ON deliveries (status, received_at);
CREATE INDEX deliveries_received ON deliveries (received_at);
CREATE TABLE jobs (
    id              TEXT PRIMARY KEY,
    delivery_id     TEXT NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    rule            TEXT NOT NULL,
    target          TEXT NOT NULL,
    request         TEXT NOT NULL,
    state           TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    lease_owner     TEXT,
    lease_until     BIGINT,
    last_error      TEXT,
    result          TEXT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);
CREATE INDEX jobs_due ON jobs (state, next_attempt_at);
CREATE INDEX jobs_lease ON jobs (state, lease_until);
CREATE INDEX jobs_delivery ON jobs (delivery_id);
CREATE INDEX jobs_rule ON jobs (rule);
CREATE TABLE attempts (
    job_id      TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    n           INTEGER NOT NULL,
    started_at  BIGINT NOT NULL,
    duration_ms BIGINT NOT NULL,
    status      INTEGER,
    outcome     TEXT NOT NULL,
    error       TEXT,
    response    TEXT,
    PRIMARY KEY (job_id, n)
);
"#;

/// Version 2 added the readiness probe's row.
const POSTGRES_V2: &str = r#"
CREATE TABLE hookbridge_probe (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    at BIGINT NOT NULL
);
INSERT INTO hookbridge_schema (version) VALUES (2);
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_migrates_a_version_1_database_in_place() {
    postgres_migrates_in_place(&[POSTGRES_V1]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_migrates_a_version_2_database_in_place() {
    postgres_migrates_in_place(&[POSTGRES_V1, POSTGRES_V2]).await
}

/// A database written by an older schema (a delivery with a dead job and
/// its attempt) opens with this build: migrated in place to version 3, every
/// row still there and readable, and the delivery still deduplicates.
async fn postgres_migrates_in_place(old_schema: &[&str]) {
    use sqlx::{Connection, Executor};

    let db = TestDatabase::create().await;
    let mut old = delivery("github", "old-1", 1, SystemTime::now());
    old.event.sha = Some("ABCDEF0123456789ABCDEF0123456789ABCDEF01".into());
    let job = &old.jobs[0];
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    for sql in old_schema {
        conn.execute(*sql).await.unwrap();
    }
    sqlx::query(
        "INSERT INTO deliveries (id, source, delivery, received_at, event_name, kind, repository, git_ref, status, summary, event, headers, payload)
         VALUES ($1, 'github', 'old-1', 1700000000000, 'push', 'push', 'acme/app', 'refs/heads/main', 'dead', $2, $3, $4, $5)",
    )
    .bind(&old.id)
    .bind(serde_json::to_string(&old.summary).unwrap())
    .bind(serde_json::to_string(&old.event).unwrap())
    .bind(serde_json::to_string(&old.headers).unwrap())
    .bind(old.payload.as_ref())
    .execute(&mut conn)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO jobs (id, delivery_id, rule, target, request, state, attempts, next_attempt_at, last_error, created_at, updated_at)
         VALUES ($1, $2, 'rule-0', 'gitlab', $3, 'dead', 1, 1700000000000, 'HTTP 404', 1700000000000, 1700000000000)",
    )
    .bind(&job.id)
    .bind(&old.id)
    .bind(serde_json::to_string(&job.request).unwrap())
    .execute(&mut conn)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO attempts (job_id, n, started_at, duration_ms, status, outcome, error, response)
         VALUES ($1, 1, 1700000000000, 12, 404, 'dead', 'HTTP 404', 'not found')",
    )
    .bind(&job.id)
    .execute(&mut conn)
    .await
    .unwrap();
    let _ = conn.close().await;

    let settings = settings(StoreUrl::Postgres(db.url.clone()));
    assert_eq!(
        migrate(&settings).await.unwrap(),
        hookbridge::store::postgres::schema_version()
    );
    let s = open(&settings, OpenMode::Daemon).await.unwrap();
    let detail = s.get(&key("old-1")).await.unwrap();
    assert_eq!(detail.row.id, old.id);
    assert_eq!(detail.row.status, DeliveryStatus::Dead);
    assert_eq!(detail.summary, old.summary);
    assert_eq!(detail.normalized, old.event);
    // The commit is read back from the stored event, searchable in lower case.
    assert_eq!(
        detail.row.sha.as_deref(),
        Some("abcdef0123456789abcdef0123456789abcdef01")
    );
    let j = &detail.jobs[0];
    assert_eq!((j.id.as_str(), j.state), (job.id.as_str(), JobState::Dead));
    assert_eq!(j.request, job.request);
    assert_eq!(j.last_error.as_deref(), Some("HTTP 404"));
    let recorded = AttemptRow {
        n: 1,
        started_at: 1_700_000_000_000,
        duration_ms: 12,
        status: Some(404),
        outcome: "dead".into(),
        error: Some("HTTP 404".into()),
        response: Some("not found".into()),
        reconcile: None,
    };
    assert_eq!(j.history, [recorded]);
    let payload = s.payload(&key("old-1")).await.unwrap();
    assert_eq!(payload.payload, old.payload.as_ref());
    assert_eq!(payload.headers, old.headers);
    // Deduplication still holds for the old row, and new rows go in beside it.
    match s
        .ingest(delivery("github", "old-1", 1, SystemTime::now()))
        .await
        .unwrap()
    {
        Ingested::Duplicate { summary, requeued } => {
            assert_eq!((summary, requeued), (old.summary.clone(), 1));
        }
        other => panic!("expected a duplicate, got {other:?}"),
    }
    s.ingest(delivery("github", "new-1", 1, SystemTime::now()))
        .await
        .unwrap();
    let leased = s.lease_due("w", 5, LEASE, SystemTime::now()).await.unwrap();
    assert_eq!(leased.len(), 2);
    let again = leased.iter().find(|j| j.delivery == "old-1").unwrap();
    assert_eq!((again.id.as_str(), again.attempt), (job.id.as_str(), 1));
    // A run the CI only queued is followed up on the migrated schema.
    let queued = TriggerResult {
        follow: Some("3".into()),
        ..TriggerResult::default()
    };
    s.record_attempt(
        again,
        "w",
        attempt(201),
        Transition::Done(queued),
        SystemTime::now(),
    )
    .await
    .unwrap();
    let follow_ups = s
        .lease_follow_ups("w", 5, LEASE, SystemTime::now())
        .await
        .unwrap();
    assert_eq!(follow_ups.len(), 1);
    assert_eq!(follow_ups[0].job, job.id);
    // Purging the old delivery takes its payload and follow-up with it.
    assert_eq!(s.purge(SystemTime::now(), 10).await.unwrap(), 1);
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let (payloads, follow_ups): (i64, i64) =
        sqlx::query_as("SELECT (SELECT COUNT(*) FROM payloads), (SELECT COUNT(*) FROM follow_ups)")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!((payloads, follow_ups), (1, 0));
    let _ = conn.close().await;
    // Migrating again (a second replica, a restart) changes nothing.
    assert_eq!(
        migrate(&settings).await.unwrap(),
        hookbridge::store::postgres::schema_version()
    );
    assert_eq!(
        s.payload(&key("new-1")).await.unwrap().payload,
        old.payload.as_ref()
    );
}

/// The two schemas do not drift apart: the same tables with the same columns,
/// and the same plain indexes on the same columns. (Unique keys differ only
/// as the `schema` module of the PostgreSQL store writes down: SQLite's `seq`
/// is its row id.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_stores_have_the_same_tables_columns_and_indexes() {
    use std::collections::BTreeMap;

    use sqlx::Connection;

    type Shape = BTreeMap<String, Vec<String>>;
    const TABLES: [&str; 10] = [
        "deliveries",
        "payloads",
        "jobs",
        "attempts",
        "cancels",
        "follow_ups",
        "statuses",
        "watches",
        "completions",
        "deferrals",
    ];

    let lite = sqlite().await;
    let path = lite._sqlite.as_ref().unwrap().path().join("hb.db");
    let conn = rusqlite::Connection::open(&path).unwrap();
    let strings = |sql: &str, arg: &str| -> Vec<String> {
        let mut s = conn.prepare(sql).unwrap();
        let rows = s.query_map([arg], |r| r.get::<_, String>(0)).unwrap();
        rows.map(Result::unwrap).collect()
    };
    let mut lite_columns = Shape::new();
    let mut lite_indexes = Shape::new();
    for table in TABLES {
        let mut columns = strings("SELECT name FROM pragma_table_info(?1)", table);
        columns.sort();
        lite_columns.insert(table.into(), columns);
        for index in strings(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ?1 AND sql IS NOT NULL",
            table,
        ) {
            let mut columns = strings("SELECT name FROM pragma_index_info(?1) ORDER BY seqno", &index);
            let sql = strings("SELECT sql FROM sqlite_master WHERE name = ?1", &index).remove(0);
            if let Some((_, predicate)) = sql.split_once(" WHERE ") {
                columns.push(format!("WHERE {}", predicate.trim().replace(['(', ')'], "")));
            }
            lite_indexes.insert(index, columns);
        }
    }

    let pg = postgres().await;
    let mut conn = sqlx::PgConnection::connect(&pg._postgres.as_ref().unwrap().url)
        .await
        .unwrap();
    let mut pg_columns = Shape::new();
    let mut pg_indexes = Shape::new();
    for table in TABLES {
        let columns: Vec<String> = sqlx::query_scalar(
            "SELECT column_name::TEXT FROM information_schema.columns
             WHERE table_schema = current_schema() AND table_name = $1 ORDER BY column_name",
        )
        .bind(table)
        .fetch_all(&mut conn)
        .await
        .unwrap();
        pg_columns.insert(table.into(), columns);
        // Plain indexes: not the ones behind a primary key or unique constraint.
        let indexes: Vec<(String, String)> = sqlx::query_as(
            "SELECT indexname::TEXT, indexdef FROM pg_indexes
             WHERE schemaname = current_schema() AND tablename = $1
               AND indexname NOT IN (SELECT conname FROM pg_constraint)",
        )
        .bind(table)
        .fetch_all(&mut conn)
        .await
        .unwrap();
        for (index, def) in indexes {
            // `... USING btree (a, b) [WHERE (state = 'running'::text)]`
            let (head, predicate) = def
                .split_once(" WHERE ")
                .map_or((def.as_str(), None), |(h, p)| (h, Some(p)));
            let inside = head.rsplit_once('(').unwrap().1.trim_end_matches(')');
            // PostgreSQL's indexes may compare text as bytes (`COLLATE "C"`),
            // which is how SQLite always compares it.
            let mut columns: Vec<String> = inside
                .split(", ")
                .map(|c| c.trim_end_matches(" COLLATE \"C\"").to_owned())
                .collect();
            if let Some(p) = predicate {
                // `((state = 'pending'::text) OR ...)`: parentheses differ.
                let p = p.replace("::text", "").replace(['(', ')'], "");
                columns.push(format!("WHERE {p}"));
            }
            pg_indexes.insert(index, columns);
        }
    }
    let _ = conn.close().await;
    assert_eq!(
        lite_indexes["jobs_due"],
        [
            "state",
            "next_attempt_at",
            "WHERE state = 'pending' OR state = 'dead'"
        ]
    );
    // Listing by a rare status (dead, pending) finds its page through it.
    assert_eq!(lite_indexes["deliveries_status"], ["status", "received_at"]);
    assert_eq!(
        lite_indexes["jobs_lease"],
        ["lease_until", "WHERE state = 'running'"]
    );
    assert!(lite_columns["payloads"].contains(&"payload".to_owned()));
    assert_eq!(
        lite_indexes["follow_ups_due"],
        ["next_attempt_at", "WHERE state = 'pending'"]
    );
    assert_eq!(
        lite_indexes["follow_ups_lease"],
        ["lease_until", "WHERE state = 'running'"]
    );
    assert_eq!(
        lite_indexes["deferrals_due"],
        ["next_attempt_at", "WHERE state = 'pending'"]
    );
    assert_eq!(pg_columns, lite_columns);
    assert_eq!(pg_indexes, lite_indexes);
}
