//! Traces end to end: the real daemon, signed GitHub pushes, the GitLab
//! stand-in CI, and a stand-in OpenTelemetry collector that decodes what
//! the daemon exports over OTLP/HTTP (protobuf, gzip when asked).
//!
//! One push makes one trace: the server span `POST /hooks/{source}`, the
//! store span, the attempt's consumer span (a child of the stored context
//! and linked to it, on whichever replica runs it) and the CI call's client
//! span with the pipeline it created; the daemon's JSON log lines of the
//! delivery carry that trace's id. Off, nothing is exported.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::ci::{GITLAB_TRIGGER_TOKEN, StandIn};
use support::daemon::{BIN, Daemon, Workspace};
use support::pg::TestDatabase;
use support::{eventually, github_signature, payload, wait_for};

const GITHUB_SECRET: &str = "It's a Secret to Everybody";
/// The sha of `github/push.json`.
const SHA: &str = "6113728f27ae82c7b1a177c8d03f9e96e0adf246";
/// An OTLP API key in `OTEL_EXPORTER_OTLP_HEADERS`: sent, never logged.
const OTLP_KEY: &str = "otlp-api-key-5f1d2c3b4a";

const WAIT: Duration = Duration::from_secs(30);

/// Span kinds as OTLP numbers them.
const SERVER: i32 = 2;
const CLIENT: i32 = 3;
const PRODUCER: i32 = 4;
const CONSUMER: i32 = 5;

mod collector {
    //! A stand-in OTLP/HTTP collector on 127.0.0.1: `POST /v1/traces` with
    //! protobuf bodies, gzip-compressed or not.

    use std::collections::BTreeMap;
    use std::io::Read;
    use std::sync::{Arc, Mutex};

    use axum::body::Bytes;
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::IntoResponse;
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    };
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
    use prost::Message;

    /// One exported span, flattened.
    #[derive(Debug, Clone)]
    pub(crate) struct Span {
        pub trace_id: String,
        pub span_id: String,
        /// Empty for a root span.
        pub parent: String,
        pub name: String,
        pub kind: i32,
        pub attributes: BTreeMap<String, String>,
        /// (trace id, span id) of each link.
        pub links: Vec<(String, String)>,
        /// The resource's `service.name`.
        pub service: String,
    }

    impl Span {
        pub(crate) fn attr(&self, key: &str) -> Option<&str> {
            self.attributes.get(key).map(String::as_str)
        }
    }

    /// One export request as it arrived.
    #[derive(Debug, Clone)]
    pub(crate) struct Export {
        pub content_type: String,
        pub content_encoding: String,
        pub authorization: String,
        /// Everything in it, as text: where a secret would show.
        pub dump: String,
    }

    #[derive(Default)]
    struct Shared {
        exports: Mutex<Vec<Export>>,
        spans: Mutex<Vec<Span>>,
        problems: Mutex<Vec<String>>,
    }

    #[derive(Clone)]
    pub(crate) struct Collector {
        /// The OTLP/HTTP base URL.
        pub url: String,
        shared: Arc<Shared>,
    }

    impl Collector {
        pub(crate) async fn start() -> Collector {
            let shared = Arc::new(Shared::default());
            let app = axum::Router::new()
                .route("/v1/traces", axum::routing::post(traces))
                .with_state(shared.clone());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            Collector { url, shared }
        }

        pub(crate) fn exports(&self) -> Vec<Export> {
            self.shared.exports.lock().unwrap().clone()
        }

        pub(crate) fn spans(&self) -> Vec<Span> {
            self.shared.spans.lock().unwrap().clone()
        }

        pub(crate) fn assert_clean(&self) {
            let problems = self.shared.problems.lock().unwrap().clone();
            assert!(problems.is_empty(), "{problems:#?}");
        }
    }

    fn text(v: &Option<AnyValue>) -> String {
        match v.as_ref().and_then(|v| v.value.as_ref()) {
            Some(any_value::Value::StringValue(s)) => s.clone(),
            Some(any_value::Value::IntValue(i)) => i.to_string(),
            Some(any_value::Value::DoubleValue(d)) => d.to_string(),
            Some(any_value::Value::BoolValue(b)) => b.to_string(),
            other => format!("{other:?}"),
        }
    }

    fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, String> {
        kvs.iter().map(|kv| (kv.key.clone(), text(&kv.value))).collect()
    }

    async fn traces(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> impl IntoResponse {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        let (content_type, content_encoding) = (header("content-type"), header("content-encoding"));
        if content_type != "application/x-protobuf" {
            shared
                .problems
                .lock()
                .unwrap()
                .push(format!("content-type `{content_type}`"));
        }
        let bytes = match content_encoding.as_str() {
            "" => body.to_vec(),
            "gzip" => {
                let mut out = Vec::new();
                flate2::read::GzDecoder::new(&body[..])
                    .read_to_end(&mut out)
                    .unwrap();
                out
            }
            other => panic!("content-encoding `{other}`"),
        };
        let request = match ExportTraceServiceRequest::decode(&bytes[..]) {
            Ok(r) => r,
            Err(e) => {
                shared.problems.lock().unwrap().push(format!("undecodable: {e}"));
                return (StatusCode::BAD_REQUEST, Vec::new());
            }
        };
        let mut spans = Vec::new();
        for resource in &request.resource_spans {
            let resource_attributes = resource
                .resource
                .as_ref()
                .map(|r| attributes(&r.attributes))
                .unwrap_or_default();
            let service = resource_attributes
                .get("service.name")
                .cloned()
                .unwrap_or_default();
            for scope in &resource.scope_spans {
                for s in &scope.spans {
                    spans.push(Span {
                        trace_id: hex::encode(&s.trace_id),
                        span_id: hex::encode(&s.span_id),
                        parent: hex::encode(&s.parent_span_id),
                        name: s.name.clone(),
                        kind: s.kind,
                        attributes: attributes(&s.attributes),
                        links: s
                            .links
                            .iter()
                            .map(|l| (hex::encode(&l.trace_id), hex::encode(&l.span_id)))
                            .collect(),
                        service: service.clone(),
                    });
                }
            }
        }
        shared.exports.lock().unwrap().push(Export {
            content_type,
            content_encoding,
            authorization: header("authorization"),
            dump: format!("{request:?}"),
        });
        shared.spans.lock().unwrap().extend(spans);
        (
            StatusCode::OK,
            ExportTraceServiceResponse::default().encode_to_vec(),
        )
    }
}

use collector::Collector;

/// A GitHub source, the GitLab stand-in as target, one rule (with
/// `rule_extra` under it), then `telemetry` (a `[telemetry]` table, or nothing).
fn config(store: &str, ci: &str, rule_extra: &str, telemetry: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
shutdown_grace = "2s"

[admin]
listen = "127.0.0.1:0"

[store]
url = "{store}"
tls = "disable"

[retry]
max_attempts = 3
initial_backoff = "100ms"
request_timeout = "5s"

[sources.github]
type = "github"
secrets = ["env:GITHUB_WEBHOOK_SECRET"]

[targets.gitlab]
type = "gitlab"
url = "{ci}"
token = "env:GITLAB_TRIGGER_TOKEN"

[[rules]]
name = "mirror"
source = "github"
events = ["push"]
[rules.trigger]
target = "gitlab"
project = "acme/app"
ref = "{{{{ event.branch }}}}"
{rule_extra}
{telemetry}
"#
    )
}

fn telemetry_table(collector: &Collector) -> String {
    format!(
        "[telemetry]\notlp_endpoint = \"{}\"\nservice_name = \"hookbridge-test\"\nsample_ratio = 1.0\n",
        collector.url
    )
}

/// The daemon on `ws`, with `env` and none of the test's own `OTEL_*` variables.
fn start(ws: &Workspace, env: &[(&str, &str)]) -> Daemon {
    let mut command = Command::new(BIN);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("OTEL_") {
            command.env_remove(name);
        }
    }
    let mut all = vec![
        ("GITHUB_WEBHOOK_SECRET", GITHUB_SECRET),
        ("GITLAB_TRIGGER_TOKEN", GITLAB_TRIGGER_TOKEN),
    ];
    all.extend_from_slice(env);
    Daemon::spawn(command, &ws.config_path(), ws.dir.path(), &all)
}

/// POST a signed GitHub push with delivery id `delivery`; its status.
async fn push(daemon: &Daemon, delivery: &str) -> u16 {
    let body = payload("github/push.json");
    let response = reqwest::Client::new()
        .post(daemon.hook_url("github"))
        .header("X-GitHub-Event", "push")
        .header("X-GitHub-Delivery", delivery)
        .header("X-Hub-Signature-256", github_signature(GITHUB_SECRET, &body))
        .header("Content-Type", "application/json")
        .header("User-Agent", "GitHub-Hookshot/044aadd")
        .body(body)
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .unwrap();
    response.status().as_u16()
}

/// The spans of one delivery's trace, by role.
struct Trace {
    server: collector::Span,
    store: collector::Span,
    attempt: collector::Span,
    client: collector::Span,
}

/// Wait until the collector holds the four spans of one delivery; each kind once.
async fn trace_of(collector: &Collector) -> Trace {
    wait_for(WAIT, "the four spans of the delivery", async || {
        let spans = collector.spans();
        let one = |kind: i32| {
            let found: Vec<_> = spans.iter().filter(|s| s.kind == kind).cloned().collect();
            match found.as_slice() {
                [s] => Ok(s.clone()),
                _ => Err(format!("{} spans of kind {kind}: {spans:#?}", found.len())),
            }
        };
        Ok(Trace {
            server: one(SERVER)?,
            store: one(PRODUCER)?,
            attempt: one(CONSUMER)?,
            client: one(CLIENT)?,
        })
    })
    .await
}

/// The JSON log lines of `delivery` (those in a span that names it), once
/// the daemon has written each of `messages`.
async fn log_lines_of(daemon: &Daemon, delivery: &str, messages: &[&str]) -> Vec<Value> {
    wait_for(WAIT, "the delivery's log lines", async || {
        let lines: Vec<Value> = daemon
            .logs()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| {
                v["spans"]
                    .as_array()
                    .is_some_and(|spans| spans.iter().any(|s| s["delivery"] == delivery))
            })
            .collect();
        match messages
            .iter()
            .find(|m| !lines.iter().any(|l| l["message"] == **m))
        {
            Some(missing) => Err(format!("no `{missing}` in {lines:#?}")),
            None => Ok(lines),
        }
    })
    .await
}

/// The one pipeline the GitLab stand-in created: its `id` and `web_url`,
/// as it answered them.
fn created_pipeline(ci: &StandIn) -> (String, String) {
    let made = ci.gitlab_pipelines();
    assert_eq!(made.len(), 1, "{made:#?}");
    (made[0].id.to_string(), made[0].web_url.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_signed_push_is_one_trace_from_webhook_to_pipeline() {
    let (ci, collector) = (StandIn::start().await, Collector::start().await);
    let ws = Workspace::new(&config("@DB@", &ci.url, "", &telemetry_table(&collector)));
    let daemon = start(&ws, &[("OTEL_BSP_SCHEDULE_DELAY", "100")]);
    assert_eq!(push(&daemon, "trace-1").await, 202);
    let t = trace_of(&collector).await;
    let (pipeline, url) = created_pipeline(&ci);

    // The server span.
    assert_eq!(t.server.name, "POST /hooks/{source}");
    assert_eq!(t.server.parent, "", "a delivery starts its own trace");
    assert_eq!(t.server.attr("http.request.method"), Some("POST"));
    assert_eq!(t.server.attr("http.route"), Some("/hooks/{source}"));
    assert_eq!(t.server.attr("http.response.status_code"), Some("202"));
    assert_eq!(
        t.server.attr("user_agent.original"),
        Some("GitHub-Hookshot/044aadd")
    );
    assert_eq!(t.server.attr("vcs.ref.head.revision"), Some(SHA));
    assert_eq!(t.server.service, "hookbridge-test");
    // The store span, under it.
    assert_eq!(t.store.name, "store delivery");
    assert_eq!(t.store.trace_id, t.server.trace_id);
    assert_eq!(t.store.parent, t.server.span_id);
    // The attempt: in the same trace, a child of the stored context (the
    // store span) and linked to it.
    assert_eq!(t.attempt.name, "process gitlab");
    assert_eq!(t.attempt.trace_id, t.server.trace_id);
    assert_eq!(t.attempt.parent, t.store.span_id);
    assert_eq!(
        t.attempt.links,
        [(t.store.trace_id.clone(), t.store.span_id.clone())]
    );
    assert_eq!(t.attempt.attr("messaging.destination.name"), Some("gitlab"));
    assert_eq!(t.attempt.attr("hookbridge.rule"), Some("mirror"));
    assert_eq!(t.attempt.attr("hookbridge.attempt"), Some("1"));
    assert_eq!(t.attempt.attr("hookbridge.outcome"), Some("done"));
    assert!(
        t.attempt
            .attr("messaging.message.id")
            .is_some_and(|id| id.len() == 26)
    );
    assert_eq!(t.attempt.attr("cicd.pipeline.run.id"), Some(pipeline.as_str()));
    // The CI call: a client span under the attempt, by HTTP's conventions,
    // with the pipeline it created and the event it was for.
    assert_eq!(t.client.name, "POST");
    assert_eq!(t.client.trace_id, t.server.trace_id);
    assert_eq!(t.client.parent, t.attempt.span_id);
    assert_eq!(t.client.attr("http.request.method"), Some("POST"));
    assert_eq!(t.client.attr("http.response.status_code"), Some("201"));
    let full = format!("{}/api/v4/projects/acme%2Fapp/trigger/pipeline", ci.url);
    assert_eq!(t.client.attr("url.full"), Some(full.as_str()));
    assert_eq!(t.client.attr("server.address"), Some("127.0.0.1"));
    assert!(t.client.attr("server.port").is_some());
    assert_eq!(t.client.attr("cicd.pipeline.run.id"), Some(pipeline.as_str()));
    assert_eq!(t.client.attr("cicd.pipeline.run.url.full"), Some(url.as_str()));
    assert_eq!(t.client.attr("vcs.ref.head.revision"), Some(SHA));
    assert_eq!(t.client.attr("vcs.ref.head.name"), Some("master"));
    assert_eq!(t.client.attr("vcs.repository.name"), Some("Hello-World"));
    assert_eq!(t.client.attr("vcs.provider.name"), Some("github"));
    assert!(t.client.attr("error.type").is_none());

    // The delivery's log lines carry its trace id: its intake's and its attempt's.
    let lines = log_lines_of(&daemon, "trace-1", &["delivery stored", "trigger delivered"]).await;
    for line in &lines {
        assert_eq!(line["trace_id"], t.server.trace_id.as_str(), "{line}");
    }
    // No token in anything exported.
    for export in collector.exports() {
        assert_eq!(export.content_type, "application/x-protobuf");
        for secret in [GITLAB_TRIGGER_TOKEN, GITHUB_SECRET] {
            assert!(!export.dump.contains(secret), "{secret} exported");
        }
    }
    collector.assert_clean();
    ci.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_on_another_replica_joins_the_deliverys_trace() {
    let db = TestDatabase::create().await;
    let (ci, collector) = (StandIn::start().await, Collector::start().await);
    // Held for 3 s after its delivery: replica A stores it and stops, B runs it.
    let debounce = "[rules.concurrency]\ngroup = \"x\"\ndebounce = \"3s\"\n";
    let telemetry = format!("[telemetry]\notlp_endpoint = \"{}\"\n", collector.url);
    let ws = Workspace::new(&config(&db.url, &ci.url, debounce, &telemetry));
    let (code, out, err) = ws.cli(&["migrate"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    let env = |name| [("OTEL_BSP_SCHEDULE_DELAY", "100"), ("OTEL_SERVICE_NAME", name)];

    let a = start(&ws, &env("replica-a"));
    assert_eq!(push(&a, "replica-1").await, 202);
    let alogs = a.logs();
    assert_eq!(a.stop(), 0);
    eprintln!("A LOGS:\n{alogs}");
    assert!(ci.requests().is_empty(), "replica A sent it");
    let b = start(&ws, &env("replica-b"));
    eventually(WAIT, "replica B triggers the pipeline", || {
        ci.accepted().len() == 1
    })
    .await;
    let t = trace_of(&collector).await;

    assert_eq!(
        (t.server.service.as_str(), t.store.service.as_str()),
        ("replica-a", "replica-a")
    );
    assert_eq!(
        (t.attempt.service.as_str(), t.client.service.as_str()),
        ("replica-b", "replica-b")
    );
    assert_eq!(t.attempt.trace_id, t.server.trace_id);
    assert_eq!(t.attempt.parent, t.store.span_id);
    assert_eq!(
        t.attempt.links,
        [(t.server.trace_id.clone(), t.store.span_id.clone())]
    );
    assert_eq!(t.client.parent, t.attempt.span_id);
    // B knew the event only from the job: its `vcs.*` came with the context.
    assert_eq!(t.client.attr("vcs.ref.head.revision"), Some(SHA));
    assert_eq!(t.attempt.attr("vcs.ref.head.name"), Some("master"));
    let (pipeline, url) = created_pipeline(&ci);
    assert_eq!(t.client.attr("cicd.pipeline.run.id"), Some(pipeline.as_str()));
    assert_eq!(t.attempt.attr("cicd.pipeline.run.url.full"), Some(url.as_str()));
    // B's log lines of the attempt carry A's trace id.
    let lines = log_lines_of(&b, "replica-1", &["trigger delivered"]).await;
    assert!(
        lines.iter().all(|l| l["trace_id"] == t.server.trace_id.as_str()),
        "{lines:#?}"
    );
    collector.assert_clean();
}

/// Push, wait until the pipeline is triggered and the job is final, stop
/// the daemon (which flushes whatever traces it holds): its logs.
async fn push_settle_and_stop(ws: &Workspace, ci: &StandIn, daemon: Daemon) -> String {
    assert_eq!(push(&daemon, "quiet-1").await, 202);
    eventually(WAIT, "the pipeline triggered", || ci.accepted().len() == 1).await;
    ws.settled().await;
    let logs = daemon.logs();
    assert_eq!(daemon.stop(), 0);
    logs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_telemetry_config_or_otel_variables_nothing_is_exported() {
    let (ci, collector) = (StandIn::start().await, Collector::start().await);
    let ws = Workspace::new(&config("@DB@", &ci.url, "", ""));
    let logs = push_settle_and_stop(&ws, &ci, start(&ws, &[])).await;
    assert!(collector.exports().is_empty());
    assert!(!logs.contains("trace_id"), "{logs}");
    assert!(!logs.contains("exporting traces"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otel_sdk_disabled_turns_traces_off_whatever_else_is_set() {
    let (ci, collector) = (StandIn::start().await, Collector::start().await);
    let ws = Workspace::new(&config("@DB@", &ci.url, "", &telemetry_table(&collector)));
    let env = [
        ("OTEL_SDK_DISABLED", "true"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let logs = push_settle_and_stop(&ws, &ci, start(&ws, &env)).await;
    assert!(collector.exports().is_empty());
    assert!(!logs.contains("trace_id"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standard_otel_variables_alone_turn_traces_on() {
    let (ci, collector) = (StandIn::start().await, Collector::start().await);
    let ws = Workspace::new(&config("@DB@", &ci.url, "", ""));
    let headers = format!("authorization=Bearer {OTLP_KEY}");
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url.as_str()),
        ("OTEL_EXPORTER_OTLP_HEADERS", headers.as_str()),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
        ("OTEL_SERVICE_NAME", "from-env"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let daemon = start(&ws, &env);
    assert_eq!(push(&daemon, "env-1").await, 202);
    let t = trace_of(&collector).await;
    assert_eq!(t.client.trace_id, t.server.trace_id);
    assert_eq!(t.server.service, "from-env");
    let exports = collector.exports();
    assert!(
        exports.iter().all(|e| e.content_encoding == "gzip"),
        "{exports:#?}"
    );
    assert!(
        exports
            .iter()
            .all(|e| e.authorization == format!("Bearer {OTLP_KEY}")),
        "{exports:#?}"
    );
    let logs = daemon.logs();
    assert!(logs.contains("exporting traces"), "{logs}");
    assert!(!logs.contains(OTLP_KEY), "the OTLP key was logged: {logs}");
    collector.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_still_buffered_at_sigterm_are_flushed_on_the_way_out() {
    let (ci, collector) = (StandIn::start().await, Collector::start().await);
    let ws = Workspace::new(&config("@DB@", &ci.url, "", &telemetry_table(&collector)));
    // A minute between batches: only the flush at exit can send them.
    let daemon = start(&ws, &[("OTEL_BSP_SCHEDULE_DELAY", "60000")]);
    assert_eq!(push(&daemon, "flush-1").await, 202);
    eventually(WAIT, "the pipeline triggered", || ci.accepted().len() == 1).await;
    ws.settled().await;
    assert!(collector.exports().is_empty(), "exported before the batch delay");
    let stopping = std::time::Instant::now();
    assert_eq!(daemon.stop(), 0);
    assert!(
        stopping.elapsed() < Duration::from_secs(15),
        "{:?}",
        stopping.elapsed()
    );
    // Nothing to wait for: the daemon exited after its flush.
    let spans = collector.spans();
    let kinds: BTreeMap<i32, usize> = spans.iter().fold(BTreeMap::new(), |mut m, s| {
        *m.entry(s.kind).or_default() += 1;
        m
    });
    assert_eq!(
        kinds,
        BTreeMap::from([(SERVER, 1), (CLIENT, 1), (PRODUCER, 1), (CONSUMER, 1)]),
        "{spans:#?}"
    );
    assert!(spans.iter().all(|s| s.trace_id == spans[0].trace_id));
}

/// `[telemetry]` mistakes, each with its place in the file.
#[test]
fn telemetry_settings_are_checked_with_their_place() {
    let check = |table: &str| {
        let ws = Workspace::new(&config("@DB@", "https://gitlab.example.com", "", table));
        let (code, _, err) = ws.cli(
            &["check", "--config", "hookbridge.toml"],
            &[("GITHUB_WEBHOOK_SECRET", "s"), ("GITLAB_TRIGGER_TOKEN", "t")],
        );
        (code, err)
    };
    let (code, err) =
        check("[telemetry]\notlp_endpoint = \"ftp://collector\"\nservice_name = \" \"\nsample_ratio = 1.5\n");
    assert_eq!(code, 1, "{err}");
    insta::assert_snapshot!(err);
    for ratio in ["nan", "-0.1", "inf"] {
        let (code, err) = check(&format!("[telemetry]\nsample_ratio = {ratio}\n"));
        assert_eq!(code, 1, "{ratio}: {err}");
        assert!(err.contains("`sample_ratio` is between 0.0 and 1.0"), "{err}");
        assert!(err.contains("--> hookbridge.toml:"), "{err}");
    }
    // Credentials in the URL are refused, and not shown.
    let (code, err) = check("[telemetry]\notlp_endpoint = \"https://me:hunter2@otel.example\"\n");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("may not hold credentials"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
    // A traces URL where the base belongs is only warned about.
    let (code, err) = check("[telemetry]\notlp_endpoint = \"http://c:4318/v1/traces\"\n");
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("/v1/traces/v1/traces"), "{err}");
    let (code, err) = check("[telemetry]\nsample_ratio = 0\n");
    assert_eq!(code, 0, "{err}");
}
