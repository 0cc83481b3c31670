//! The dispatcher under abuse: CI answers with absurd rate-limit numbers,
//! attempts that panic, workers that die mid-attempt.
//!
//! In process: the real `Dispatcher` and SQLite store on a temp file, with a
//! scripted `Transport` in place of HTTP, on the system clock (the dead
//! workers' leases are taken at chosen times just ahead of it). The exact
//! timing of the loop is tests/dispatcher.rs, on tokio's paused clock. End
//! to end: the real daemon and the stand-in CI.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use hookbridge::config::{LoadMode, Secret};
use hookbridge::dispatch::Dispatcher;
use hookbridge::store::sqlite::SqliteStore;
use hookbridge::store::*;
use hookbridge::target::client::{SendError, Transport};
use hookbridge::target::{OutboundRequest, Response};
use support::ci::{CIRCLE_TOKEN, Reply, StandIn};
use support::daemon::Workspace;
use support::{github_signature, payload, wait_for};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

const CONFIG: &str = r#"
[retry]
max_attempts = 3
initial_backoff = "10ms"
max_backoff = "40ms"
request_timeout = "2s"

[targets.gitlab]
type = "gitlab"
url = "http://127.0.0.1:9"
token = "glptt-never-sent"

[[rules]]
name = "mirror"
[rules.trigger]
target = "gitlab"
project = "acme/app"
ref = "main"
"#;

/// A transport that counts its calls and panics on each.
#[derive(Default)]
struct Panicking {
    calls: AtomicUsize,
}

#[async_trait::async_trait]
impl Transport for Panicking {
    async fn send(
        &self,
        _: &OutboundRequest,
        _: Option<&Secret>,
        _: Duration,
    ) -> Result<Response, SendError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        panic!("scripted panic in call {n}");
    }
}

/// A transport that counts its calls and answers 201.
#[derive(Default)]
struct Counting {
    calls: AtomicUsize,
}

#[async_trait::async_trait]
impl Transport for Counting {
    async fn send(
        &self,
        _: &OutboundRequest,
        _: Option<&Secret>,
        _: Duration,
    ) -> Result<Response, SendError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(Response {
            status: 201,
            headers: http::HeaderMap::new(),
            body: r#"{"id": 7, "iid": 1}"#.into(),
        })
    }
}

/// A SQLite store on a temp file, holding one delivery with one `mirror` job.
async fn store_with_one_job() -> (Arc<dyn Store>, tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open_exclusive(&dir.path().join("hb.db")).unwrap());
    let job = ulid::Ulid::generate().to_string();
    let event = serde_json::from_value(serde_json::json!({
        "source": "github", "provider": "github", "name": "push", "kind": "push",
        "delivery": "d-1", "repository": "acme/app", "ref": "refs/heads/main",
        "branch": "main", "created": false, "deleted": false, "forced": false, "changes": []
    }))
    .unwrap();
    let request = serde_json::from_value(
        serde_json::json!({"api": "gitlab_pipeline", "project": "acme/app", "ref": "main"}),
    )
    .unwrap();
    let delivery = NewDelivery {
        id: ulid::Ulid::generate().to_string(),
        source: "github".into(),
        delivery: "d-1".into(),
        received_at: SystemTime::now(),
        event,
        headers: Default::default(),
        payload: br#"{}"#.to_vec().into(),
        summary: Summary {
            delivery: "d-1".into(),
            source: "github".into(),
            event: "push".into(),
            duplicate: false,
            matched: vec![MatchedJob {
                rule: "mirror".into(),
                job: job.clone(),
                target: "gitlab".into(),
                group: None,
                superseded: vec![],
            }],
            skipped: vec![],
            errors: vec![],
            deferred: Vec::new(),
        },
        jobs: vec![NewJob {
            id: job.clone(),
            rule: "mirror".into(),
            target: "gitlab".into(),
            request,
            group: None,
            delay: std::time::Duration::ZERO,
            cancel: false,
            status: None,
        }],
        trace: None,
    };
    assert_eq!(
        store.ingest(delivery).await.unwrap(),
        Ingested::Stored { superseded: vec![] }
    );
    (store, dir, job)
}

fn key() -> DeliveryKey {
    DeliveryKey {
        id: "d-1".into(),
        source: Some("github".into()),
    }
}

/// The job once it is in `state`; fails after `timeout`.
async fn job_when(store: &dyn Store, state: &str, timeout: Duration) -> JobDetail {
    wait_for(timeout, &format!("the job {state}"), async || {
        let job = store.get(&key()).await.unwrap().jobs.remove(0);
        if job.state.as_str() == state {
            Ok(job)
        } else {
            Err(format!("{job:#?}"))
        }
    })
    .await
}

/// Run a dispatcher over `store` with `transport` until `done` returns.
async fn with_dispatcher<T, F: Future<Output = T>>(
    store: Arc<dyn Store>,
    transport: Arc<dyn Transport>,
    done: F,
) -> T {
    let config = hookbridge::config::parse(std::path::Path::new("t.toml"), CONFIG, LoadMode::Check)
        .unwrap()
        .config;
    let dispatcher = Dispatcher::new(
        store,
        Arc::new(ArcSwap::from_pointee(config)),
        Arc::new(Notify::new()),
    )
    .with_transport(transport);
    let stop = CancellationToken::new();
    let running = tokio::spawn(dispatcher.run(stop.clone(), Duration::from_secs(5)));
    let out = done.await;
    stop.cancel();
    running.await.unwrap();
    out
}

/// Every log line of this test binary. One global subscriber, installed by
/// the first test that asks: a thread-local one misses events whose callsite
/// another test's thread has already registered without it.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn global() -> &'static Logs {
        static LOGS: OnceLock<Logs> = OnceLock::new();
        LOGS.get_or_init(|| {
            let logs = Logs::default();
            let writer = logs.clone();
            tracing_subscriber::fmt()
                .with_writer(move || writer.clone())
                .with_ansi(false)
                .init();
            logs
        })
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every attempt panics: each is recorded as a retryable "internal error",
/// logged in the job's span, and the job is dead-lettered at `max_attempts`
/// with no further call.
#[tokio::test]
async fn a_job_whose_attempts_all_panic_is_dead_lettered_after_max_attempts() {
    let logs = Logs::global();
    let (store, _dir, job_id) = store_with_one_job().await;
    let transport = Arc::new(Panicking::default());
    let job = with_dispatcher(
        store.clone(),
        transport.clone(),
        job_when(&*store, "dead", Duration::from_secs(10)),
    )
    .await;

    assert_eq!(transport.calls.load(Ordering::SeqCst), 3);
    let outcomes: Vec<&str> = job.history.iter().map(|a| a.outcome.as_str()).collect();
    assert_eq!(outcomes, ["retry", "retry", "dead"]);
    for (i, a) in job.history.iter().enumerate() {
        let error = a.error.as_deref().unwrap();
        assert!(
            error.contains(&format!("internal error: scripted panic in call {}", i + 1)),
            "{error}"
        );
    }
    assert_eq!(
        job.last_error.as_deref(),
        Some("gave up after 3 attempts; last: internal error: scripted panic in call 3")
    );
    // Logged in the job's span: with its id, rule and attempt number.
    let logs = logs.text();
    let panicked: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("the attempt panicked") && l.contains(&format!("job={job_id}")))
        .collect();
    assert_eq!(panicked.len(), 3, "{logs}");
    for (n, line) in panicked.iter().enumerate() {
        assert!(line.contains("rule=mirror"), "{line}");
        assert!(line.contains(&format!("attempt={}", n + 1)), "{line}");
        assert!(
            line.contains(&format!("scripted panic in call {}", n + 1)),
            "{line}"
        );
    }
}

/// A worker that leases the job and dies, three times (the lease expires
/// with nothing recorded): the next lease dead-letters the job without
/// sending it a fourth time.
#[tokio::test]
async fn a_job_whose_worker_died_each_time_is_dead_lettered_without_another_send() {
    let (store, _dir, _) = store_with_one_job().await;
    let start = SystemTime::now();
    for n in 1..=3 {
        // Each lease taken 2 ms after the one before, past its 1 ms end.
        let now = start + Duration::from_millis(2 * u64::from(n));
        let leased = store
            .lease_due("ghost", 1, Duration::from_millis(1), now)
            .await
            .unwrap();
        assert_eq!(leased.len(), 1, "lease {n}");
        assert_eq!(leased[0].attempt, n);
    }
    let transport = Arc::new(Counting::default());
    let job = with_dispatcher(
        store.clone(),
        transport.clone(),
        job_when(&*store, "dead", Duration::from_secs(10)),
    )
    .await;

    assert_eq!(transport.calls.load(Ordering::SeqCst), 0);
    let outcomes: Vec<&str> = job.history.iter().map(|a| a.outcome.as_str()).collect();
    assert_eq!(outcomes, ["interrupted", "interrupted", "interrupted", "dead"]);
    assert_eq!(
        job.last_error.as_deref(),
        Some("gave up after 3 attempts; last: the worker stopped mid-attempt")
    );
}

/// A worker that died twice leaves the job its last attempt, which is sent.
#[tokio::test]
async fn a_job_within_max_attempts_after_dead_workers_is_still_sent() {
    let (store, _dir, _) = store_with_one_job().await;
    let start = SystemTime::now();
    for n in 1..=2 {
        let now = start + Duration::from_millis(2 * n);
        let leased = store
            .lease_due("ghost", 1, Duration::from_millis(1), now)
            .await
            .unwrap();
        assert_eq!(leased.len(), 1, "lease {n}");
    }
    let transport = Arc::new(Counting::default());
    let job = with_dispatcher(
        store.clone(),
        transport.clone(),
        job_when(&*store, "done", Duration::from_secs(10)),
    )
    .await;
    assert_eq!(transport.calls.load(Ordering::SeqCst), 1);
    let outcomes: Vec<&str> = job.history.iter().map(|a| a.outcome.as_str()).collect();
    assert_eq!(outcomes, ["interrupted", "interrupted", "done"]);
}

const DAEMON_CONFIG: &str = r#"
[server]
listen = "127.0.0.1:0"

[admin]
listen = "127.0.0.1:0"

[store]
url = "@DB@"

[retry]
max_attempts = 5
initial_backoff = "300ms"
max_backoff = "1s"
request_timeout = "2s"

[sources.github]
type = "github"
secrets = ["env:GITHUB_WEBHOOK_SECRET"]

[targets.circleci]
type = "circleci"
url = "@CI@"
token = "env:CIRCLECI_TOKEN"

[[rules]]
name = "pipeline"
events = ["push"]
[rules.trigger]
target = "circleci"
project = "gh/Codertocat/Hello-World"
branch = "{{ event.branch }}"
"#;

/// The CI answers `429` with a `RateLimit-Reset` past the end of time, then
/// `429` with `Retry-After: 0`, then creates the pipeline. Nothing panics, and
/// each retry waits at least its backoff and at most `max_backoff`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_rate_limit_answers_are_retried_within_the_backoff_bounds() {
    const SECRET: &str = "rate-limit-secret";
    let ci = StandIn::start().await;
    ci.script([
        Reply::Headers(429, vec![("ratelimit-reset", u64::MAX.to_string())]),
        Reply::Headers(429, vec![("retry-after", "0".into())]),
    ]);
    let ws = Workspace::new(&DAEMON_CONFIG.replace("@CI@", &ci.url));
    let daemon = ws.start(&[
        ("GITHUB_WEBHOOK_SECRET", SECRET),
        ("CIRCLECI_TOKEN", CIRCLE_TOKEN),
    ]);
    let body = payload("github/push.json");
    let response = reqwest::Client::new()
        .post(daemon.hook_url("github"))
        .header("X-GitHub-Event", "push")
        .header("X-GitHub-Delivery", "d-1")
        .header("X-Hub-Signature-256", github_signature(SECRET, &body))
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);

    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&ws.db_path()).unwrap());
    let job = job_when(&*store, "done", Duration::from_secs(20)).await;
    ci.assert_clean();
    let statuses: Vec<Option<u16>> = job.history.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [Some(429), Some(429), Some(201)], "{job:#?}");
    assert_eq!(ci.requests().len(), 3);
    let started: Vec<i64> = job.history.iter().map(|a| a.started_at).collect();
    // First retry: the reset is clamped to max_backoff (1s), not honoured forever.
    let first = started[1] - started[0];
    assert!((1000..4000).contains(&first), "first retry after {first} ms");
    // Second retry: `Retry-After: 0` waits the backoff of attempt 2, at least 300 ms.
    let second = started[2] - started[1];
    assert!((300..3000).contains(&second), "second retry after {second} ms");
    let logs = daemon.logs();
    assert!(!logs.contains("panicked"), "{logs}");
}
