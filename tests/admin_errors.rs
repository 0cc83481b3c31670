//! The admin API's errors, over real HTTP: every delivery route answers 404
//! for a delivery that does not exist and 503 when the store is down, and no
//! answer carries the store's own text (driver messages, file paths). The
//! server runs in-process, once with a real SQLite store and once with a store
//! whose every call fails.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hookbridge::config::{Config, LoadMode};
use hookbridge::server::{self, App};
use hookbridge::store::*;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// What the failing store says; none of it may reach a caller.
const INTERNAL: &str = "disk I/O error at /var/lib/hookbridge/secret-path.db";

/// Every delivery route of the admin API, as (method, path, body).
const ROUTES: &[(&str, &str, &str)] = &[
    ("GET", "/api/v1/deliveries/nope", ""),
    ("GET", "/api/v1/deliveries/nope?source=github", ""),
    ("POST", "/api/v1/deliveries/nope/replay", ""),
    ("POST", "/api/v1/deliveries/nope/replay", r#"{"job":"j1"}"#),
    ("POST", "/api/v1/deliveries/nope/replay", r#"{"reevaluate":true}"#),
];

fn config(dir: &std::path::Path) -> Config {
    let toml = format!(
        r#"
[store]
url = "sqlite://{db}"
[sources.github]
type = "github"
secrets = ["s"]
[sources.mirror]
type = "github"
secrets = ["s"]
[targets.circleci]
type = "circleci"
url = "http://127.0.0.1:9"
token = "t"
[[rules]]
name = "r"
[rules.trigger]
target = "circleci"
project = "gh/a/b"
branch = "main"
"#,
        db = dir.join("hb.db").display()
    );
    hookbridge::config::parse(&dir.join("hb.toml"), &toml, LoadMode::Serve)
        .unwrap()
        .config
}

struct Server {
    hooks: SocketAddr,
    admin: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Server {
    async fn start(config: Config, store: Arc<dyn Store>) -> Server {
        let hooks = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let hooks_addr = hooks.local_addr().unwrap();
        let addr = admin.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server::run(
            App::new(config, store),
            hooks,
            admin,
            shutdown.clone(),
        ));
        Server {
            hooks: hooks_addr,
            admin: addr,
            shutdown,
            task,
        }
    }

    /// The status and the text of the answer.
    async fn call(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        let url = format!("http://{}{path}", self.admin);
        let client = reqwest::Client::new();
        let req = match method {
            "POST" => client.post(url).body(body.to_owned()),
            _ => client.get(url),
        };
        let resp = req.send().await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    /// A signed push to `/hooks/{source}`; the status.
    async fn push(&self, source: &str, delivery: &str) -> u16 {
        let body = support::payload("github/push.json");
        let resp = reqwest::Client::new()
            .post(format!("http://{}/hooks/{source}", self.hooks))
            .header("X-GitHub-Event", "push")
            .header("X-GitHub-Delivery", delivery)
            .header("X-Hub-Signature-256", support::github_signature("s", &body))
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        resp.status().as_u16()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}

/// The JSON error body: `{"error": "..."}` and nothing else.
fn error_message(text: &str) -> String {
    let body: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(body.as_object().map(|o| o.len()), Some(1), "{text}");
    body["error"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_404_for_an_unknown_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let store = open(&config.store, OpenMode::Daemon).await.unwrap();
    let server = Server::start(config, store).await;
    for (method, path, body) in ROUTES {
        let (status, text) = server.call(method, path, body).await;
        assert_eq!(status, 404, "{method} {path} {body}: {text}");
        assert_eq!(
            error_message(&text),
            "no delivery `nope`",
            "{method} {path} {body}"
        );
    }
    // A bad query is the caller's mistake: 400, saying what was wrong.
    let (status, text) = server.call("GET", "/api/v1/deliveries?status=exploded", "").await;
    assert_eq!(status, 400, "{text}");
    assert!(
        error_message(&text).contains("`exploded` is not a status"),
        "{text}"
    );
    for query in [
        "limit=abc",
        "limit=-1",
        "limit=99999999999999999999999",
        "limit=0",
        "source=a&source=b",
        // A cursor that is not one, and a misspelt filter, which would
        // otherwise list everything.
        "before=garbage",
        "before=%00",
        "staus=dead",
    ] {
        let path = format!("/api/v1/deliveries?{query}");
        let (status, text) = server.call("GET", &path, "").await;
        assert_eq!(status, 400, "{path}: {text}");
        assert!(!error_message(&text).is_empty(), "{path}: {text}");
    }
    let (status, text) = server
        .call("GET", "/api/v1/deliveries/nope?source=a&source=b", "")
        .await;
    assert_eq!(status, 400, "{text}");
    assert!(!error_message(&text).is_empty(), "{text}");
    let (status, text) = server.call("POST", "/api/v1/deliveries/nope/replay", "{").await;
    assert_eq!(status, 400, "{text}");
    assert!(error_message(&text).starts_with("invalid JSON body"), "{text}");
    // A misspelt field (`jobs` for `job`) would replay every job.
    let (status, text) = server
        .call("POST", "/api/v1/deliveries/nope/replay", r#"{"jobs":"j1"}"#)
        .await;
    assert_eq!(status, 400, "{text}");
    assert!(error_message(&text).contains("unknown field `jobs`"), "{text}");
    let (status, text) = server
        .call(
            "POST",
            "/api/v1/deliveries/nope/replay",
            r#"{"job":"j1","reevaluate":true}"#,
        )
        .await;
    assert_eq!(status, 400, "{text}");
    assert!(error_message(&text).contains("exclude each other"), "{text}");
    // In the query too: `?job=` (a body field) would replay every job.
    for path in [
        "/api/v1/deliveries/nope/replay?job=j1",
        "/api/v1/deliveries/nope?bogus=1",
    ] {
        let method = if path.ends_with("job=j1") { "POST" } else { "GET" };
        let (status, text) = server.call(method, path, "").await;
        assert_eq!(status, 400, "{path}: {text}");
        assert!(error_message(&text).contains("unknown field"), "{path}: {text}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_pages_the_same_in_either_case() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let store = open(&config.store, OpenMode::Daemon).await.unwrap();
    let server = Server::start(config, store).await;
    for id in ["page-1", "page-2", "page-3"] {
        assert_eq!(server.push("github", id).await, 202);
    }
    let page = |text: &str| -> (Vec<String>, String) {
        let v: Value = serde_json::from_str(text).unwrap();
        let ids = v["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["delivery"].as_str().unwrap().to_owned())
            .collect();
        (ids, v["next"].as_str().unwrap_or_default().to_owned())
    };
    let (_, text) = server.call("GET", "/api/v1/deliveries?limit=1", "").await;
    let (first, next) = page(&text);
    assert_eq!(first, ["page-3"]);
    for cursor in [next.clone(), next.to_lowercase()] {
        let (status, text) = server
            .call("GET", &format!("/api/v1/deliveries?limit=1&before={cursor}"), "")
            .await;
        assert_eq!(status, 200, "{text}");
        assert_eq!(page(&text).0, ["page-2"], "{cursor}");
    }
    // The search box and the newer filters, as the dashboard uses them.
    let (status, text) = server.call("GET", "/api/v1/deliveries?q=page-2", "").await;
    assert_eq!(
        (status, page(&text).0),
        (200, vec!["page-2".to_owned()]),
        "{text}"
    );
    let (_, text) = server
        .call("GET", "/api/v1/deliveries?until=2000-01-01T00:00:00Z", "")
        .await;
    assert!(page(&text).0.is_empty(), "{text}");
    let (_, text) = server
        .call(
            "GET",
            "/api/v1/deliveries?repository=nobody%2Fnothing&status=",
            "",
        )
        .await;
    assert!(page(&text).0.is_empty(), "{text}");
    let long = "a".repeat(300);
    let (status, text) = server
        .call("GET", &format!("/api/v1/deliveries?q={long}"), "")
        .await;
    assert_eq!(status, 400, "{text}");
    assert!(error_message(&text).contains("longer than 256"), "{text}");
    server.stop().await;
}

/// The same provider id from two sources: 409 naming them, until `source`
/// says which one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ambiguous_id_answers_409_on_every_route() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let store = open(&config.store, OpenMode::Daemon).await.unwrap();
    let server = Server::start(config, store).await;
    assert_eq!(server.push("github", "twice").await, 202);
    assert_eq!(server.push("mirror", "twice").await, 202);
    for (method, path, body) in ROUTES {
        let path = path.replace("nope", "twice");
        if path.contains("source=") {
            continue;
        }
        let (status, text) = server.call(method, &path, body).await;
        assert_eq!(status, 409, "{method} {path} {body}: {text}");
        let message = error_message(&text);
        assert!(
            message.contains("github, mirror") || message.contains("mirror, github"),
            "{message}"
        );
    }
    let (status, text) = server
        .call("GET", "/api/v1/deliveries/twice?source=mirror", "")
        .await;
    assert_eq!(status, 200, "{text}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_503_without_internal_text_when_the_store_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        config(dir.path()),
        Arc::new(support::down::DownStore { detail: INTERNAL }),
    )
    .await;
    let mut routes = ROUTES.to_vec();
    routes.push(("GET", "/api/v1/deliveries", ""));
    routes.push(("GET", "/api/v1/deliveries?status=dead&since=1h", ""));
    for (method, path, body) in routes {
        let (status, text) = server.call(method, path, body).await;
        assert_eq!(status, 503, "{method} {path} {body}: {text}");
        assert_eq!(
            error_message(&text),
            "the store is unavailable",
            "{method} {path} {body}"
        );
        assert!(!text.contains("disk") && !text.contains("/var/lib"), "{text}");
    }
    let (status, text) = server.call("GET", "/readyz", "").await;
    assert_eq!((status, text.as_str()), (503, "not ready: store not writable\n"));
    server.stop().await;
}
