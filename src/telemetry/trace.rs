//! The spans of a delivery's trace, made where its work happens.
//!
//! One trace per delivery: the server span of `POST /hooks/{source}`
//! ([`webhook_span`]), the store span of its ingest ([`store_span`]), one
//! consumer span per attempt ([`attempt_span`]) and one client span per CI
//! call ([`client_span`]). The store span's context, and the event's `vcs.*`
//! attributes, are stored with each job ([`carrier`]): an attempt, on any
//! replica and after any restart, continues that trace as a child of the
//! store span, with a link to it.
//!
//! Every function here is a no-op (or the span the daemon made before
//! traces existed) while traces are off: [`enabled`] is one relaxed atomic
//! load, and nothing else runs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{Status, TraceContextExt};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use tracing::{Span, info_span};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::event::{Event, Provider};

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether traces are exported (set once, at start).
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Traces are on from now: the exporter and its layer are installed.
pub(super) fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// The webhook handler's span, as the server span `POST /hooks/{source}`.
/// It has the fields of the span the handler makes while traces are off
/// (`source`, `delivery`), so its log lines read the same.
pub fn webhook_span(source: &str, headers: &http::HeaderMap) -> Span {
    let span = info_span!(
        target: "hookbridge::server::hooks",
        "webhook",
        source = %source.escape_debug(),
        delivery = tracing::field::Empty,
        otel.name = "POST /hooks/{source}",
        otel.kind = "server",
    );
    span.set_attribute("http.request.method", "POST");
    span.set_attribute("http.route", "/hooks/{source}");
    span.set_attribute("url.scheme", "http");
    span.set_attribute("url.path", format!("/hooks/{source}"));
    if let Some(agent) = headers
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
    {
        span.set_attribute("user_agent.original", agent.to_owned());
    }
    span
}

/// The server span's answer: 5xx is an error of ours, 4xx the sender's.
pub fn answered(span: &Span, status: u16) {
    span.set_attribute("http.response.status_code", i64::from(status));
    if status >= 500 {
        span.set_attribute("error.type", status.to_string());
        span.set_status(Status::error(""));
    }
}

/// The event's `vcs.*` attributes on the current span (the server span).
pub fn describe(event: &Event) {
    if !enabled() {
        return;
    }
    let span = Span::current();
    span.set_attribute("hookbridge.event", event.name.clone());
    for (key, value) in vcs(event) {
        span.set_attribute(key, value);
    }
}

/// The producer span of one ingest (the delivery and its jobs, one
/// transaction); `None` while traces are off.
pub fn store_span(jobs: usize) -> Option<Span> {
    if !enabled() {
        return None;
    }
    let span = info_span!(
        target: "hookbridge::server::hooks",
        "store",
        otel.name = "store delivery",
        otel.kind = "producer",
    );
    span.set_attribute("messaging.system", "hookbridge");
    span.set_attribute("messaging.operation.type", "send");
    span.set_attribute("messaging.batch.message_count", jobs as i64);
    Some(span)
}

/// What a job keeps of its delivery's trace (`jobs.trace_context`): the
/// current span's W3C `traceparent`, then, after a space, the event's
/// `vcs.*` attributes as a W3C `baggage` value. `None` while traces are off.
pub fn carrier(event: &Event) -> Option<String> {
    if !enabled() {
        return None;
    }
    let cx = Span::current().context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut fields = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut fields);
    let mut out = fields.remove("traceparent")?;
    let vcs = vcs(event);
    if !vcs.is_empty() {
        out.push(' ');
        out.push_str(&baggage(&vcs));
    }
    Some(out)
}

/// The stored context of a [`carrier`]: the trace to continue, and the
/// `vcs.*` attributes (only the known keys; anything else is dropped).
fn extract(stored: &str) -> (Context, Vec<KeyValue>) {
    let (parent, baggage) = stored.split_once(' ').unwrap_or((stored, ""));
    let fields = HashMap::from([("traceparent".to_owned(), parent.trim().to_owned())]);
    let cx = TraceContextPropagator::new().extract(&fields);
    let vcs = baggage
        .split(',')
        .filter_map(|pair| {
            let (key, value) = pair.trim().split_once('=')?;
            let key = VCS_KEYS.iter().find(|k| **k == key)?;
            let value = percent_decode_str(value).decode_utf8().ok()?;
            Some(KeyValue::new(*key, value.into_owned()))
        })
        .collect();
    (cx, vcs)
}

/// What identifies an attempt, for its span.
#[derive(Debug, Clone, Copy)]
pub struct Job<'a> {
    pub id: &'a str,
    /// The internal delivery id (ULID).
    pub delivery_id: &'a str,
    /// The provider's delivery id.
    pub delivery: &'a str,
    pub source: &'a str,
    pub rule: &'a str,
    pub target: &'a str,
    pub attempt: u32,
    /// The job's stored [`carrier`].
    pub trace: Option<&'a str>,
}

/// The consumer span `process {target}` of one attempt, a child of the
/// stored context (so in the delivery's trace, whichever replica runs it)
/// and linked to it; with the fields of the span the dispatcher makes
/// while traces are off. Run the attempt under the answered [`Attempt`].
pub fn attempt_span(job: &Job<'_>) -> (Span, Attempt) {
    let name = format!("process {}", job.target);
    let span = info_span!(
        target: "hookbridge::dispatch",
        "attempt",
        delivery = %job.delivery,
        source = %job.source,
        rule = %job.rule,
        target = %job.target,
        job = %job.id,
        attempt = job.attempt,
        otel.name = %name,
        otel.kind = "consumer",
    );
    let (parent, vcs) = job.trace.map(extract).unwrap_or_default();
    let stored = parent.span().span_context().clone();
    if stored.is_valid() {
        // Not yet entered, so not yet started: the parent can still be set.
        let _ = span.set_parent(parent);
        span.add_link(stored);
    }
    span.set_attribute("messaging.system", "hookbridge");
    span.set_attribute("messaging.operation.type", "process");
    span.set_attribute("messaging.destination.name", job.target.to_owned());
    span.set_attribute("messaging.message.id", job.id.to_owned());
    span.set_attribute("hookbridge.delivery.id", job.delivery_id.to_owned());
    span.set_attribute("hookbridge.rule", job.rule.to_owned());
    span.set_attribute("hookbridge.attempt", i64::from(job.attempt));
    for kv in &vcs {
        span.set_attribute(kv.key.clone(), kv.value.clone());
    }
    let attempt = Attempt {
        vcs,
        calls: Mutex::new(Vec::new()),
    };
    (span, attempt)
}

tokio::task_local! {
    static ATTEMPT: Attempt;
}

/// What the client spans of one attempt share: the event's `vcs.*`
/// attributes, and the spans of its CI calls, held open until its outcome
/// is known ([`outcome`]) so that the pipeline's id can join them. (A span
/// ends when it was last exited, not when it is dropped: holding it does
/// not lengthen it.)
#[derive(Debug)]
pub struct Attempt {
    vcs: Vec<KeyValue>,
    calls: Mutex<Vec<Span>>,
}

impl Attempt {
    /// Run `work` (the attempt) with this attempt's calls traced.
    pub fn run<F: Future>(self, work: F) -> impl Future<Output = F::Output> {
        ATTEMPT.scope(self, work)
    }
}

/// The client span of one call to a CI, named by its method, when it is
/// made by an attempt under traces ([`Attempt::run`]); `None` otherwise.
pub fn client_span(method: &str, url: &str) -> Option<Span> {
    if !enabled() {
        return None;
    }
    ATTEMPT
        .try_with(|attempt| {
            let span = info_span!(
                target: "hookbridge::target::client",
                "ci_request",
                otel.name = %method,
                otel.kind = "client",
            );
            let (full, host, port) = describe_url(url);
            span.set_attribute("http.request.method", method.to_owned());
            span.set_attribute("url.full", full);
            if let Some(host) = host {
                span.set_attribute("server.address", host);
            }
            if let Some(port) = port {
                span.set_attribute("server.port", i64::from(port));
            }
            for kv in &attempt.vcs {
                span.set_attribute(kv.key.clone(), kv.value.clone());
            }
            attempt
                .calls
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(span.clone());
            span
        })
        .ok()
}

/// A CI call's answer on its client span: the status (4xx and 5xx are
/// errors), or why none came (`timeout`, `connect`, ...).
pub fn client_answered(span: &Span, answer: Result<u16, &'static str>) {
    match answer {
        Ok(status) => {
            span.set_attribute("http.response.status_code", i64::from(status));
            if status >= 400 {
                span.set_attribute("error.type", status.to_string());
                span.set_status(Status::error(""));
            }
        }
        Err(kind) => {
            span.set_attribute("error.type", kind);
            span.set_status(Status::error(kind));
        }
    }
}

/// An attempt's outcome (`done`, `skipped`, `retry`, `dead`) on its span
/// (the current one; `retry` and `dead` are errors), and the pipeline it
/// created on that span and on the span of its last CI call, the one that
/// created it: the join key with the CI's own spans (CircleCI exports
/// `cicd.pipeline.run.id`).
pub fn outcome(outcome: &'static str, id: Option<&str>, url: Option<&str>) {
    if !enabled() {
        return;
    }
    let current = Span::current();
    current.set_attribute("hookbridge.outcome", outcome);
    if matches!(outcome, "retry" | "dead") {
        current.set_status(Status::error(outcome));
    }
    let attributes: Vec<KeyValue> = [
        id.map(|id| KeyValue::new("cicd.pipeline.run.id", id.to_owned())),
        url.map(|url| KeyValue::new("cicd.pipeline.run.url.full", url.to_owned())),
    ]
    .into_iter()
    .flatten()
    .collect();
    for kv in &attributes {
        current.set_attribute(kv.key.clone(), kv.value.clone());
    }
    let _ = ATTEMPT.try_with(|attempt| {
        let mut calls = attempt.calls.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(last) = calls.last() {
            for kv in &attributes {
                last.set_attribute(kv.key.clone(), kv.value.clone());
            }
        }
        calls.clear();
    });
}

/// The `vcs.*` keys a [`carrier`] may hold.
const VCS_KEYS: &[&str] = &[
    "vcs.provider.name",
    "vcs.owner.name",
    "vcs.repository.name",
    "vcs.ref.head.name",
    "vcs.ref.head.type",
    "vcs.ref.head.revision",
    "vcs.ref.base.name",
    "vcs.change.id",
];

/// The event's `vcs.*` attributes (OpenTelemetry's VCS conventions).
fn vcs(event: &Event) -> Vec<(&'static str, String)> {
    let mut out = Vec::with_capacity(VCS_KEYS.len());
    let provider = match event.provider {
        Provider::Standard | Provider::Hmac | Provider::Circleci => None,
        known => Some(known.as_str()),
    };
    if let Some(provider) = provider {
        out.push(("vcs.provider.name", provider.to_owned()));
    }
    if let Some(repository) = &event.repository {
        match repository.rsplit_once('/') {
            Some((owner, name)) => {
                out.push(("vcs.owner.name", owner.to_owned()));
                out.push(("vcs.repository.name", name.to_owned()));
            }
            None => out.push(("vcs.repository.name", repository.clone())),
        }
    }
    if let Some(branch) = &event.branch {
        out.push(("vcs.ref.head.name", branch.clone()));
        out.push(("vcs.ref.head.type", "branch".to_owned()));
    } else if let Some(tag) = &event.tag {
        out.push(("vcs.ref.head.name", tag.clone()));
        out.push(("vcs.ref.head.type", "tag".to_owned()));
    }
    if let Some(sha) = &event.sha {
        out.push(("vcs.ref.head.revision", sha.clone()));
    }
    if let Some(base) = &event.base_branch {
        out.push(("vcs.ref.base.name", base.clone()));
    }
    if let Some(number) = event.number {
        out.push(("vcs.change.id", number.to_string()));
    }
    out
}

/// Bytes a baggage value keeps as they are.
const BAGGAGE_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/')
    .remove(b':');

/// `key=value,...`, values percent-encoded (a W3C `baggage` header value).
fn baggage(pairs: &[(&'static str, String)]) -> String {
    pairs
        .iter()
        .map(|(key, value)| format!("{key}={}", utf8_percent_encode(value, BAGGAGE_VALUE)))
        .collect::<Vec<_>>()
        .join(",")
}

/// `url.full` without credentials and with every query value replaced by
/// `REDACTED`, and the server's host and port.
fn describe_url(url: &str) -> (String, Option<String>, Option<u16>) {
    let Ok(mut url) = reqwest::Url::parse(url) else {
        return (String::new(), None, None);
    };
    let _ = url.set_username("");
    let _ = url.set_password(None);
    if url.query().is_some() {
        let keys: Vec<String> = url.query_pairs().map(|(k, _)| k.into_owned()).collect();
        url.query_pairs_mut()
            .clear()
            .extend_pairs(keys.iter().map(|k| (k.as_str(), "REDACTED")));
    }
    url.set_fragment(None);
    let (host, port) = (url.host_str().map(str::to_owned), url.port_or_known_default());
    (url.to_string(), host, port)
}

/// `url` as it may be logged: [`describe_url`]'s `url.full`.
pub(super) fn shown_url(url: &str) -> String {
    describe_url(url).0
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn push() -> Event {
        let mut e = Event::new("github", Provider::Github, "push", "push", "d-1".into());
        e.repository = Some("acme/app".into());
        e.branch = Some("feature/a b,c".into());
        e.sha = Some("6113728f27ae82c7b1a177c8d03f9e96e0adf246".into());
        e.number = Some(42);
        e
    }

    #[test]
    fn a_stored_context_gives_back_its_trace_and_vcs_attributes() {
        let event = push();
        let stored = format!(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 {}",
            baggage(&vcs(&event))
        );
        assert!(!stored.contains("a b"), "{stored}");
        let (cx, attributes) = extract(&stored);
        let sc = cx.span().span_context().clone();
        assert!(sc.is_valid() && sc.is_remote() && sc.is_sampled());
        assert_eq!(sc.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        let got: Vec<(String, String)> = attributes
            .iter()
            .map(|kv| (kv.key.to_string(), kv.value.to_string()))
            .collect();
        let want: Vec<(String, String)> = vcs(&event).into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        assert_eq!(got, want);
        assert!(want.contains(&("vcs.ref.head.name".into(), "feature/a b,c".into())));
        assert!(want.contains(&("vcs.change.id".into(), "42".into())));

        // A bare traceparent, garbage, unknown keys: what can be read is.
        let (cx, attributes) = extract("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
        assert!(cx.span().span_context().is_valid() && attributes.is_empty());
        let (cx, attributes) = extract("nonsense x=1,vcs.change.id=7,=,%");
        assert!(!cx.span().span_context().is_valid());
        assert_eq!(attributes.len(), 1);
    }

    #[test]
    fn urls_lose_credentials_and_query_values() {
        let (full, host, port) = describe_url("https://u:p@ci.example/api/v4/x?token=s3cret&ref=main#frag");
        assert_eq!(full, "https://ci.example/api/v4/x?token=REDACTED&ref=REDACTED");
        assert_eq!((host.as_deref(), port), (Some("ci.example"), Some(443)));
        let (full, _, port) = describe_url("http://127.0.0.1:8080/api/v2/pipeline");
        assert_eq!(
            (full.as_str(), port),
            ("http://127.0.0.1:8080/api/v2/pipeline", Some(8080))
        );
    }

    #[test]
    fn everything_is_a_no_op_while_traces_are_off() {
        assert!(!enabled());
        assert!(store_span(1).is_none());
        assert!(carrier(&push()).is_none());
        assert!(client_span("POST", "http://x/").is_none());
        outcome("done", Some("1"), None);
    }
}
