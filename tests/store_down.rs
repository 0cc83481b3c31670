//! When the store cannot take a delivery, the sender is told 503 (not accepted),
//! and readiness reports it. Runs the server in-process with a store that fails.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hookbridge::config::LoadMode;
use hookbridge::server::{self, App};
use hookbridge::store::*;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

struct DownStore;

fn down<T>() -> Result<T, StoreError> {
    Err(StoreError::unavailable("disk I/O error"))
}

#[async_trait::async_trait]
impl Store for DownStore {
    async fn ingest(&self, _: NewDelivery) -> Result<Ingested, StoreError> {
        down()
    }
    async fn lease_due(
        &self,
        _: &str,
        _: usize,
        _: Duration,
        _: SystemTime,
    ) -> Result<Vec<LeasedJob>, StoreError> {
        down()
    }
    async fn record_attempt(
        &self,
        _: &LeasedJob,
        _: &str,
        _: Attempt,
        _: Transition,
        _: SystemTime,
    ) -> Result<(), StoreError> {
        down()
    }
    async fn release(&self, _: &str, _: SystemTime) -> Result<(), StoreError> {
        down()
    }
    async fn next_due(&self) -> Result<Option<SystemTime>, StoreError> {
        down()
    }
    async fn list(&self, _: &DeliveryFilter) -> Result<Vec<DeliveryRow>, StoreError> {
        down()
    }
    async fn get(&self, _: &DeliveryKey) -> Result<DeliveryDetail, StoreError> {
        down()
    }
    async fn payload(&self, _: &DeliveryKey) -> Result<StoredPayload, StoreError> {
        down()
    }
    async fn replay(
        &self,
        _: &DeliveryKey,
        _: Option<&str>,
        _: SystemTime,
    ) -> Result<Vec<String>, StoreError> {
        down()
    }
    async fn add_jobs(
        &self,
        _: &DeliveryKey,
        _: Vec<NewJob>,
        _: Summary,
        _: SystemTime,
    ) -> Result<(), StoreError> {
        down()
    }
    async fn purge(&self, _: SystemTime, _: usize) -> Result<u64, StoreError> {
        down()
    }
    async fn stats(&self) -> Result<QueueStats, StoreError> {
        down()
    }
    async fn ready(&self) -> Result<(), StoreError> {
        down()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_failure_answers_503_and_readiness_fails() {
    let config = hookbridge::config::parse(
        std::path::Path::new("t.toml"),
        r#"
[sources.github]
type = "github"
secrets = ["s"]
[targets.circleci]
type = "circleci"
token = "t"
[[rules]]
name = "r"
[rules.trigger]
target = "circleci"
project = "gh/a/b"
branch = "main"
"#,
        LoadMode::Serve,
    )
    .unwrap()
    .config;
    let app = App::new(config, Arc::new(DownStore));
    let hooks = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hooks_url = format!("http://{}/hooks/github", hooks.local_addr().unwrap());
    let admin_url = format!("http://{}", admin.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(server::run(app, hooks, admin, shutdown.clone()));

    let body = support::payload("github/push.json");
    let resp = reqwest::Client::new()
        .post(&hooks_url)
        .header("X-GitHub-Event", "push")
        .header("X-GitHub-Delivery", "x")
        .header("X-Hub-Signature-256", support::github_signature("s", &body))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    let text = resp.text().await.unwrap();
    assert!(text.contains("not accepted"), "{text}");
    assert!(
        !text.contains("disk I/O"),
        "internal errors stay in the logs: {text}"
    );

    let ready = reqwest::get(format!("{admin_url}/readyz")).await.unwrap();
    assert_eq!(ready.status().as_u16(), 503);
    let text = ready.text().await.unwrap();
    assert_eq!(text, "not ready: store not writable\n", "no internal error text");
    let health = reqwest::get(format!("{admin_url}/healthz")).await.unwrap();
    assert_eq!(health.status().as_u16(), 200);

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
