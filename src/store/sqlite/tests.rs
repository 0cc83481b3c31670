//! The SQLite store against what PostgreSQL does: the order leases, ambiguity
//! lists and replayed ids come in, and an attempt for a job that vanished.

use std::time::{Duration, SystemTime};

use super::*;
use crate::store::{MatchedJob, StoreErrorKind};

fn t(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
}

/// A delivery of `source` with one job per id in `jobs`, received at `at`.
fn delivery(source: &str, id: &str, jobs: &[&str], at: SystemTime) -> NewDelivery {
    let event = serde_json::from_value(serde_json::json!({
        "source": source, "provider": "github", "name": "push", "kind": "push",
        "delivery": id, "repository": "acme/app", "ref": "refs/heads/main",
        "branch": "main", "created": false, "deleted": false, "forced": false, "changes": []
    }))
    .unwrap();
    let request: crate::target::TriggerRequest = serde_json::from_value(
        serde_json::json!({"api": "gitlab_pipeline", "project": "acme/app", "ref": "main"}),
    )
    .unwrap();
    let jobs: Vec<NewJob> = jobs
        .iter()
        .map(|j| NewJob {
            id: (*j).into(),
            rule: "r".into(),
            target: "gitlab".into(),
            request: request.clone(),
            group: None,
            delay: std::time::Duration::ZERO,
            cancel: false,
            status: None,
        })
        .collect();
    NewDelivery {
        id: format!("{source}-{id}"),
        source: source.into(),
        delivery: id.into(),
        received_at: at,
        event,
        headers: Default::default(),
        payload: bytes::Bytes::from_static(b"{}"),
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

fn attempt(at: SystemTime) -> Attempt {
    Attempt {
        started_at: at,
        duration: Duration::from_millis(5),
        status: Some(201),
        error: None,
        response: None,
        ambiguous: false,
        reconcile: None,
    }
}

fn done() -> Transition {
    Transition::Done(crate::target::TriggerResult {
        id: Some("1".into()),
        number: None,
        url: None,
        state: None,
        follow: None,
    })
}

async fn store() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("hb.db")).unwrap();
    (dir, store)
}

fn ids(jobs: &[LeasedJob]) -> Vec<&str> {
    jobs.iter().map(|j| j.id.as_str()).collect()
}

#[tokio::test]
async fn expired_leases_first_by_expiry_and_every_lease_oldest_due_first() {
    let (_dir, s) = store().await;
    for (i, job) in ["j0", "j1", "j2"].into_iter().enumerate() {
        let d = delivery("github", &format!("d{i}"), &[job], t(i as u64));
        s.ingest(d).await.unwrap();
    }
    let long = s.lease_due("a", 1, Duration::from_secs(10), t(5)).await.unwrap();
    let short = s.lease_due("a", 1, Duration::from_secs(1), t(6)).await.unwrap();
    assert_eq!((ids(&long), ids(&short)), (vec!["j0"], vec!["j1"]));
    // j1's lease ran out first (7 s), so it is taken over first.
    let first = s.lease_due("b", 1, Duration::from_secs(60), t(20)).await.unwrap();
    assert_eq!(ids(&first), ["j1"]);
    // An expired lease and a due job: the oldest due first.
    let rest = s.lease_due("b", 5, Duration::from_secs(60), t(20)).await.unwrap();
    assert_eq!(ids(&rest), ["j0", "j2"]);
    assert_eq!(rest[0].attempt, 2);
}

#[tokio::test]
async fn ambiguity_names_the_sources_in_order() {
    let (_dir, s) = store().await;
    for source in ["github", "gitea", "forgejo"] {
        s.ingest(delivery(source, "dup", &[], t(0))).await.unwrap();
    }
    let e = s.get(&key("dup")).await.unwrap_err();
    assert_eq!(e.kind(), StoreErrorKind::Ambiguous);
    assert_eq!(
        e.to_string(),
        "delivery `dup` exists for several sources (forgejo, gitea, github); name one with --source"
    );
}

#[tokio::test]
async fn replayed_ids_come_sorted() {
    let (_dir, s) = store().await;
    s.ingest(delivery("github", "r", &["j3", "j1", "j2"], t(0)))
        .await
        .unwrap();
    for job in s.lease_due("w", 5, Duration::from_secs(60), t(1)).await.unwrap() {
        s.record_attempt(&job, "w", attempt(t(1)), done(), t(2))
            .await
            .unwrap();
    }
    let queued = s.replay(&key("r"), None, t(3)).await.unwrap();
    assert_eq!(queued, ["j1", "j2", "j3"]);
    let e = s.replay(&key("r"), Some("j9"), t(3)).await.unwrap_err();
    assert_eq!(e.kind(), StoreErrorKind::NotFound);
    assert_eq!(e.to_string(), "no delivery `j9 (job of delivery r)`");
}

#[tokio::test]
async fn an_attempt_for_a_vanished_job_is_dropped_not_an_error() {
    let (dir, s) = store().await;
    s.ingest(delivery("github", "v", &["j1"], t(0))).await.unwrap();
    let job = s
        .lease_due("w", 1, Duration::from_secs(60), t(1))
        .await
        .unwrap()
        .remove(0);
    // Gone meanwhile (an operator's hand, a purge by another process).
    let conn = Connection::open(dir.path().join("hb.db")).unwrap();
    conn.execute_batch("PRAGMA foreign_keys = ON; DELETE FROM deliveries WHERE delivery = 'v';")
        .unwrap();
    s.record_attempt(&job, "w", attempt(t(1)), done(), t(2))
        .await
        .unwrap();
    assert_eq!(
        s.get(&key("v")).await.unwrap_err().kind(),
        StoreErrorKind::NotFound
    );
}

#[test]
fn driver_errors_are_classified() {
    let conn = Connection::open_in_memory().unwrap();
    conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY); INSERT INTO t VALUES (1);")
        .unwrap();
    let e = db(conn.execute("INSERT INTO t VALUES (1)", []).unwrap_err());
    assert_eq!(e.kind(), StoreErrorKind::Conflict);
    assert!(
        e.to_string()
            .starts_with("store conflict: UNIQUE constraint failed"),
        "{e}"
    );
    assert!(std::error::Error::source(&e).is_some());
    let e = db(conn
        .query_row("SELECT 'x'", [], |r| r.get::<_, i64>(0))
        .unwrap_err());
    assert_eq!(e.kind(), StoreErrorKind::Corrupt);
    let e = db(rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
        None,
    ));
    assert_eq!(e.kind(), StoreErrorKind::Unavailable);
}

/// A large commit grows the WAL; once the checkpointer has copied
/// it into the database and the writer starts over, the file is cut back to
/// `WAL_SIZE_LIMIT` instead of keeping its largest size.
#[tokio::test]
async fn the_wal_shrinks_back_after_a_large_commit() {
    let (dir, s) = store().await;
    let wal = dir.path().join("hb.db-wal");
    // One transaction larger than the limit: the WAL must hold all of it.
    let mut d = delivery("github", "big", &[], t(0));
    d.payload = bytes::Bytes::from(vec![b'x'; 80 << 20]);
    s.ingest(d).await.unwrap();
    let grown = std::fs::metadata(&wal).unwrap().len();
    assert!(
        grown > WAL_SIZE_LIMIT as u64,
        "the burst left a WAL of {grown} bytes"
    );
    // Each small commit after a full checkpoint starts the WAL over, and
    // the writer then truncates the file.
    let mut size = grown;
    for i in 0..200 {
        s.ingest(delivery("github", &format!("small{i}"), &[], t(100 + i)))
            .await
            .unwrap();
        size = std::fs::metadata(&wal).unwrap().len();
        if size <= WAL_SIZE_LIMIT as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(size <= WAL_SIZE_LIMIT as u64, "the WAL stayed at {size} bytes");
}

/// One daemon per database: a second `open_exclusive` is refused, also
/// through a symbolic link to the file or to its directory (a second daemon
/// would take back the first one's leases and send its jobs again).
#[tokio::test]
async fn a_second_daemon_is_refused_through_any_link() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("hb.db");
    let _first = SqliteStore::open_exclusive(&real).unwrap();
    let file_link = dir.path().join("alias.db");
    std::os::unix::fs::symlink(&real, &file_link).unwrap();
    let dir_link = dir.path().join("linked-dir");
    std::os::unix::fs::symlink(dir.path(), &dir_link).unwrap();
    for path in [real.clone(), file_link, dir_link.join("hb.db")] {
        let e = SqliteStore::open_exclusive(&path).err().map(|e| e.to_string());
        assert!(
            e.as_deref().is_some_and(|e| e.contains("in use by another")),
            "{}: {e:?}",
            path.display()
        );
    }
}

fn plan(conn: &rusqlite::Connection, sql: &str) -> Vec<String> {
    let mut plan = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
    plan.query_map(
        rusqlite::params_from_iter(vec![10_i64; plan.parameter_count()]),
        |r| r.get::<_, String>(3),
    )
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

/// The queue's reads find jobs through the partial indexes that hold only
/// the queue (`jobs_due`, `jobs_lease`), never by reading every job: the
/// table holds the whole history. SQLite uses a partial index only when a
/// term of the query matches its predicate, so a query written another way
/// (`state IN (...)`) would scan the table. And the reads of one delivery's
/// jobs go through `jobs_delivery`, not through `jobs_due`'s dead jobs,
/// which SQLite (without statistics) would otherwise prefer.
#[test]
fn the_queue_reads_never_scan_the_jobs_table() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hb.db");
    drop(SqliteStore::open(&path).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    for sql in [
        queue::EXPIRED,
        queue::DUE,
        history::NEXT_DUE,
        crate::store::model::QUEUE_STATS,
    ] {
        let steps = plan(&conn, sql);
        assert!(
            steps
                .iter()
                .any(|s| s.contains("jobs_due") || s.contains("jobs_lease")),
            "{sql}: {steps:?}"
        );
        // A scan of a partial index reads only what it holds.
        assert!(
            steps.iter().all(|s| !s.starts_with("SCAN jobs")
                || s.contains("INDEX jobs_due")
                || s.contains("INDEX jobs_lease")),
            "{sql}: {steps:?}"
        );
    }
    // A group's live jobs: through `jobs_group`, which holds only those.
    let steps = plan(&conn, groups::LIVE);
    assert!(
        steps
            .iter()
            .all(|s| s.starts_with("SEARCH jobs USING INDEX jobs_group")),
        "{steps:?}"
    );
    // Deferrals, the same way: through `deferrals_due` and `deferrals_lease`.
    for (sql, index) in [
        (deferrals::DUE, "deferrals_due"),
        (deferrals::EXPIRED, "deferrals_lease"),
    ] {
        let steps = plan(&conn, sql);
        assert!(steps.iter().all(|s| s.contains(index)), "{sql}: {steps:?}");
    }
    let steps = plan(&conn, status::REFRESH_STATUS);
    let deferred: Vec<&String> = steps.iter().filter(|s| s.contains(" deferrals ")).collect();
    assert!(
        !deferred.is_empty()
            && deferred
                .iter()
                .all(|s| s.starts_with("SEARCH deferrals USING INDEX deferrals_delivery")),
        "{steps:?}"
    );
    for sql in [queue::REQUEUE_DEAD, status::REFRESH_STATUS] {
        let steps = plan(&conn, sql);
        let jobs: Vec<&String> = steps.iter().filter(|s| s.contains(" jobs ")).collect();
        assert!(!jobs.is_empty(), "{sql}: {steps:?}");
        assert!(
            jobs.iter()
                .all(|s| s.starts_with("SEARCH jobs USING INDEX jobs_delivery")
                    || s.starts_with("SEARCH jobs USING COVERING INDEX jobs_delivery")),
            "{sql}: {steps:?}"
        );
    }
}

/// The search box reads indexes: the internal id, the provider's delivery
/// id and the sha (a prefix is a range of `deliveries_sha`), so it stays
/// fast however long the history.
#[test]
fn the_search_box_reads_indexes_not_the_history() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hb.db");
    drop(SqliteStore::open(&path).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    let f = DeliveryFilter {
        // A ULID made of hex digits: all three arms.
        search: Some("01ABCDEF0123456789ABCDEF01".into()),
        limit: 50,
        ..Default::default()
    };
    let (sql, _) = crate::store::query::list(&f, "d.id", |n| format!("?{n}"), "");
    let steps = plan(&conn, &sql);
    assert!(steps.iter().any(|s| s.contains("deliveries_sha")), "{steps:?}");
    assert!(
        steps
            .iter()
            .all(|s| !s.starts_with("SCAN d") && !s.starts_with("SCAN deliveries")),
        "{steps:?}"
    );
}
