//! The store under abuse, with the real binary and real files: no delivery is
//! acknowledged that a restart would not find, and `/readyz` says so whenever
//! deliveries are refused.
//!
//! Full disks and read-only file systems are real: a small tmpfs mounted for
//! the test (these tests need root, as CI has; elsewhere they say so and pass).
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeSet;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use hookbridge::store::sqlite::SqliteStore;
use hookbridge::store::{DeliveryFilter, Store};
use support::ci::{CIRCLE_TOKEN, Reply, StandIn};
use support::daemon::{BIN, Daemon, Workspace};
use support::disk::{Tmpfs, is_root, run};
use support::eventually;
use support::{github_signature, payload};

const GITHUB_SECRET: &str = "store-edges-secret";

fn env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("GITHUB_WEBHOOK_SECRET", GITHUB_SECRET),
        ("CIRCLECI_TOKEN", CIRCLE_TOKEN),
    ]
}

/// One rule: every GitHub push becomes one CircleCI pipeline that names its delivery.
fn config(ci: &str, db: &Path) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[admin]
listen = "127.0.0.1:0"

[store]
url = "sqlite://{db}"

[retry]
max_attempts = 20
initial_backoff = "100ms"
max_backoff = "500ms"
request_timeout = "1s"

[sources.github]
type = "github"
secrets = ["env:GITHUB_WEBHOOK_SECRET"]

[targets.circleci]
type = "circleci"
url = "{ci}"
token = "env:CIRCLECI_TOKEN"

[[rules]]
name = "pipeline"
source = "github"
events = ["push"]
[rules.trigger]
target = "circleci"
project = "gh/Codertocat/Hello-World"
branch = "{{{{ event.branch }}}}"
parameters = {{ delivery = "{{{{ event.delivery }}}}" }}
"#,
        db = db.display()
    )
}

/// A signed push with this delivery id; returns the status and the body.
async fn push(daemon: &Daemon, delivery: &str) -> (u16, String) {
    let body = payload("github/push.json");
    let resp = reqwest::Client::new()
        .post(daemon.hook_url("github"))
        .header("X-GitHub-Event", "push")
        .header("X-GitHub-Delivery", delivery)
        .header("X-Hub-Signature-256", github_signature(GITHUB_SECRET, &body))
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

async fn get(url: String) -> (u16, String) {
    let resp = reqwest::get(url).await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// Poll `/readyz` until it answers `status`; returns the body.
async fn readyz_becomes(daemon: &Daemon, status: u16) -> String {
    support::wait_for(
        Duration::from_secs(15),
        &format!("/readyz {status}"),
        async || match get(format!("{}/readyz", daemon.admin)).await {
            (got, body) if got == status => Ok(body),
            (got, body) => Err(format!("/readyz {got} ({body:?}); logs:\n{}", daemon.logs())),
        },
    )
    .await
}

/// The provider delivery ids a (re)started daemon finds in the store.
async fn stored(db: &Path) -> BTreeSet<String> {
    SqliteStore::open(db)
        .unwrap()
        .list(&DeliveryFilter {
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.delivery)
        .collect()
}

/// The deliveries the stand-in CI accepted a pipeline for.
fn triggered(ci: &StandIn) -> BTreeSet<String> {
    ci.accepted()
        .iter()
        .filter_map(|r| r.body["parameters"]["delivery"].as_str().map(str::to_owned))
        .collect()
}

async fn eventually_triggered(ci: &StandIn, wanted: &BTreeSet<String>) {
    support::eventually(
        Duration::from_secs(20),
        "every acknowledged delivery triggered",
        || triggered(ci).is_superset(wanted),
    )
    .await;
}

/// `hookbridge serve` must exit non-zero on its own; returns its stderr.
fn serve_refuses(ws: &Workspace) -> String {
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(ws.config_path())
        .envs(env())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let Some(status) = support::exit_within(&mut child, Duration::from_secs(20)) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("`serve` kept running on a store it cannot write");
    };
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(!status.success(), "`serve` exited 0: {stderr}");
    stderr
}

/// Deleting the database, its WAL and its index under a running daemon: each
/// later push is either refused with 503 or found (and triggered) after a
/// restart; readiness fails; the restarted daemon works on a new file.
async fn files_deleted_under_the_daemon(ci_up: bool) {
    let ci = StandIn::start().await;
    ci.set_hang(!ci_up);
    let ws = Workspace::new("");
    let db = ws.db_path();
    ws.write_config(&config(&ci.url, &db));
    let daemon = ws.start(&env());
    assert_eq!(push(&daemon, "before").await.0, 202);
    readyz_becomes(&daemon, 200).await;

    for suffix in ["", "-wal", "-shm"] {
        let mut path = db.clone().into_os_string();
        path.push(suffix);
        std::fs::remove_file(&path).unwrap();
    }
    let mut acknowledged = BTreeSet::new();
    let mut refused = 0;
    for i in 0..10 {
        let id = format!("after-{i}");
        match push(&daemon, &id).await {
            (200..=299, _) => {
                acknowledged.insert(id);
            }
            (503, body) => {
                assert!(body.contains("not accepted"), "{body}");
                refused += 1;
            }
            (status, body) => panic!("unexpected {status}: {body}"),
        }
    }
    assert!(
        refused > 0,
        "every push after the files were deleted was acknowledged"
    );
    let body = readyz_becomes(&daemon, 503).await;
    assert_eq!(body, "not ready: store not writable\n");
    assert_eq!(get(format!("{}/healthz", daemon.admin)).await.0, 200);
    assert!(
        daemon
            .logs()
            .contains("was deleted or moved while hookbridge had it open")
    );
    daemon.kill();

    ci.set_hang(false);
    let daemon = ws.start(&env());
    readyz_becomes(&daemon, 200).await;
    let found = stored(&db).await;
    assert!(
        found.is_superset(&acknowledged),
        "acknowledged {acknowledged:?}, found after restart {found:?}"
    );
    assert_eq!(push(&daemon, "fresh").await.0, 202);
    acknowledged.insert("fresh".into());
    eventually_triggered(&ci, &acknowledged).await;
    ci.assert_clean();
    assert_eq!(daemon.stop(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleted_store_files_with_the_ci_down_acknowledge_nothing_that_is_lost() {
    files_deleted_under_the_daemon(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleted_store_files_with_the_ci_up_acknowledge_nothing_that_is_lost() {
    files_deleted_under_the_daemon(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn what_was_acknowledged_into_deleted_store_files_is_saved_and_restored() {
    // The CI fails, so "before" waits in the queue when the files go, and
    // only the dispatcher writes: no delivery comes to notice the loss.
    let ci = StandIn::start().await;
    ci.script(vec![Reply::Status(500); 15]);
    let ws = Workspace::new("");
    let db = ws.db_path();
    ws.write_config(&config(&ci.url, &db));
    let daemon = ws.start(&env());
    assert_eq!(push(&daemon, "before").await.0, 202);
    for suffix in ["", "-wal", "-shm"] {
        let mut path = db.clone().into_os_string();
        path.push(suffix);
        std::fs::remove_file(&path).unwrap();
    }
    eventually(Duration::from_secs(10), "the content saved", || {
        daemon.logs().contains("is saved")
    })
    .await;
    assert_eq!(push(&daemon, "after").await.0, 503);
    let saved = std::fs::read_dir(db.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains(".rescued-"))
        .unwrap();
    assert!(daemon.logs().contains("\"jobs_not_done\":"), "{}", daemon.logs());
    daemon.kill();
    // The operator's restore, as the log says.
    for suffix in ["-wal", "-shm"] {
        let mut path = db.clone().into_os_string();
        path.push(suffix);
        let _ = std::fs::remove_file(&path);
    }
    std::fs::rename(&saved, &db).unwrap();
    let daemon = ws.start(&env());
    eventually_triggered(&ci, &BTreeSet::from(["before".to_owned()])).await;
    assert_eq!(daemon.stop(), 0);
}

/// A write lock held by another process: not ready, and a delivery is
/// refused rather than acknowledged; both recover once the lock is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_lock_held_elsewhere_is_not_ready() {
    let ci = StandIn::start().await;
    let ws = Workspace::new("");
    let db = ws.db_path();
    ws.write_config(&config(&ci.url, &db));
    let daemon = ws.start(&env());
    readyz_becomes(&daemon, 200).await;

    let other = rusqlite::Connection::open(&db).unwrap();
    other.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let body = readyz_becomes(&daemon, 503).await;
    assert_eq!(body, "not ready: store not writable\n");
    let (status, body) = push(&daemon, "locked").await;
    assert_eq!(status, 503, "{body}");
    other.execute_batch("ROLLBACK").unwrap();

    readyz_becomes(&daemon, 200).await;
    assert_eq!(push(&daemon, "unlocked").await.0, 202);
    eventually_triggered(&ci, &["unlocked".to_owned()].into()).await;
    assert_eq!(daemon.stop(), 0);
    assert_eq!(stored(&db).await, ["unlocked".to_owned()].into());
}

/// A full disk: not ready, deliveries refused with 503 (and not stored);
/// once space is freed, ready and accepting again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_is_not_ready_and_refuses_deliveries_until_space_is_freed() {
    if !is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let ci = StandIn::start().await;
    let ws = Workspace::new("");
    let disk = Tmpfs::mount(&ws.dir.path().join("data"), "40m");
    let db = disk.path.join("hookbridge.db");
    ws.write_config(&config(&ci.url, &db));
    let daemon = ws.start(&env());
    assert_eq!(push(&daemon, "roomy-0").await.0, 202);
    readyz_becomes(&daemon, 200).await;

    let filler = disk.fill();
    let body = readyz_becomes(&daemon, 503).await;
    assert_eq!(body, "not ready: store not writable\n");
    for i in 0..5 {
        let (status, body) = push(&daemon, &format!("full-{i}")).await;
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("not accepted"), "{body}");
    }

    std::fs::remove_file(filler).unwrap();
    readyz_becomes(&daemon, 200).await;
    assert_eq!(push(&daemon, "roomy-1").await.0, 202);
    let acknowledged: BTreeSet<String> = ["roomy-0".to_owned(), "roomy-1".to_owned()].into();
    eventually_triggered(&ci, &acknowledged).await;
    daemon.kill();
    assert_eq!(
        stored(&db).await,
        acknowledged,
        "exactly the acknowledged deliveries"
    );
    ci.assert_clean();
}

/// A store whose file system turns read-only under the daemon is not ready
/// and refuses deliveries; `serve` refuses to start on a read-only file
/// system or file.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_only_store_is_not_ready_and_serve_refuses_to_start_on_it() {
    if !is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let ci = StandIn::start().await;
    let ws = Workspace::new("");
    let disk = Tmpfs::mount(&ws.dir.path().join("data"), "40m");
    let db = disk.path.join("hookbridge.db");
    ws.write_config(&config(&ci.url, &db));
    let daemon = ws.start(&env());
    assert_eq!(push(&daemon, "writable").await.0, 202);
    eventually_triggered(&ci, &["writable".to_owned()].into()).await;
    readyz_becomes(&daemon, 200).await;

    let view = disk.cover_read_only();
    let body = readyz_becomes(&daemon, 503).await;
    assert_eq!(body, "not ready: store not writable\n");
    let (status, body) = push(&daemon, "read-only").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("not accepted"), "{body}");
    daemon.kill();

    let err = serve_refuses(&ws);
    assert!(
        err.contains(&format!(
            "the store `{}` cannot be written (read-only file system)",
            db.display()
        )),
        "{err}"
    );

    // chattr +i: a file even root cannot write, on a writable file system.
    drop(view);
    run("chattr", &["+i"], &db);
    let err = serve_refuses(&ws);
    run("chattr", &["-i"], &db);
    assert!(
        err.contains(&format!("the store `{}` cannot be written", db.display())),
        "{err}"
    );
    // ... and a directory where SQLite cannot create its WAL.
    run("chattr", &["+i"], &disk.path);
    let err = serve_refuses(&ws);
    run("chattr", &["-i"], &disk.path);
    assert!(
        err.contains(&format!(
            "the store `{}` cannot be written (its directory `{}`",
            db.display(),
            disk.path.display()
        )),
        "{err}"
    );

    let daemon = ws.start(&env());
    readyz_becomes(&daemon, 200).await;
    assert_eq!(daemon.stop(), 0);
    assert_eq!(stored(&db).await, ["writable".to_owned()].into());
}
