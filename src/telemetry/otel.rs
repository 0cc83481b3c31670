//! OpenTelemetry traces: when they are on, where they go, and the machinery
//! that sends them.
//!
//! [`plan`] decides from `[telemetry]` and the standard `OTEL_*` variables.
//! [`Traces::start`] builds the OTLP/HTTP (protobuf) exporter and a tracer
//! provider whose batch processor runs on a thread of its own; its exports
//! go out through the daemon's runtime with an async reqwest client
//! ([`Exporting`]), so there is one HTTP and TLS stack. [`Traces::layer`]
//! turns hookbridge's `tracing` spans into OpenTelemetry spans, and
//! [`WithTraceId`] adds `trace_id` and `span_id` to JSON log lines written
//! inside one. Off, none of it exists.
//!
//! Export headers (`OTEL_EXPORTER_OTLP_HEADERS`, often an API key) are read
//! by the exporter and never logged; a logged endpoint loses its
//! credentials and query values.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use opentelemetry::KeyValue;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing::subscriber::Interest;
use tracing::{Level, Metadata, Subscriber, span};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

use crate::config::telemetry::{TelemetrySettings, traces_url};

/// The OTLP/HTTP port on this host, where `[telemetry]` without an endpoint sends.
const DEFAULT_BASE: &str = "http://localhost:4318";

/// The most of an export's answer read (the SDK's own clients' limit).
const ANSWER_LIMIT: usize = 4 * 1024 * 1024;

/// What `[telemetry]` and the environment decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The full URL spans are POSTed to.
    pub endpoint: String,
    /// `service.name`.
    pub service_name: String,
    /// The root sampler's ratio; `None` leaves it to `OTEL_TRACES_SAMPLER`.
    pub sample_ratio: Option<f64>,
    /// One export's time limit (`OTEL_EXPORTER_OTLP_TRACES_TIMEOUT`,
    /// `OTEL_EXPORTER_OTLP_TIMEOUT`, in milliseconds; 10 s).
    pub export_timeout: Duration,
    /// An `OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL` other than `http/protobuf`,
    /// which is not followed.
    pub ignored_protocol: Option<String>,
}

/// Whether traces are on and how, from `[telemetry]` (`settings`) and the
/// environment (`env`):
///
/// - off when `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`,
///   whatever else is set;
/// - on when `[telemetry]` is present, or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
///   or `OTEL_EXPORTER_OTLP_ENDPOINT` is set (not empty); else off;
/// - spans go to `otlp_endpoint` + `/v1/traces`, else to
///   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` as it is, else to
///   `OTEL_EXPORTER_OTLP_ENDPOINT` + `/v1/traces`, else to
///   `http://localhost:4318/v1/traces`;
/// - `service.name` is `service_name`, else `OTEL_SERVICE_NAME`, else `hookbridge`;
/// - the sampler is parent-based with a trace-id ratio root of
///   `sample_ratio`; without it, `OTEL_TRACES_SAMPLER` (and `_ARG`) when
///   set, else a ratio of 1.
pub fn plan(settings: Option<&TelemetrySettings>, env: &dyn Fn(&str) -> Option<String>) -> Option<Plan> {
    let var = |name: &str| env(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
    let is = |name: &str, value: &str| var(name).is_some_and(|v| v.eq_ignore_ascii_case(value));
    if is("OTEL_SDK_DISABLED", "true") || is("OTEL_TRACES_EXPORTER", "none") {
        return None;
    }
    let endpoint = match settings.and_then(|s| s.otlp_endpoint.as_deref()) {
        Some(base) => traces_url(base),
        None => match (
            var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            var("OTEL_EXPORTER_OTLP_ENDPOINT"),
        ) {
            (Some(url), _) => url,
            (None, Some(base)) => traces_url(&base),
            (None, None) if settings.is_some() => traces_url(DEFAULT_BASE),
            (None, None) => return None,
        },
    };
    let service_name = settings
        .and_then(|s| s.service_name.clone())
        .or_else(|| var("OTEL_SERVICE_NAME"))
        .unwrap_or_else(|| "hookbridge".to_owned());
    let sample_ratio = settings
        .and_then(|s| s.sample_ratio)
        .or_else(|| var("OTEL_TRACES_SAMPLER").is_none().then_some(1.0));
    let export_timeout = ["OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"]
        .iter()
        .find_map(|name| var(name)?.parse::<u64>().ok())
        .map_or(Duration::from_secs(10), Duration::from_millis);
    let ignored_protocol = [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ]
    .iter()
    .find_map(|name| var(name))
    .filter(|p| p != "http/protobuf");
    Some(Plan {
        endpoint,
        service_name,
        sample_ratio,
        export_timeout,
        ignored_protocol,
    })
}

/// Running traces: flush them with [`Traces::shutdown`] before exiting.
pub struct Traces {
    provider: SdkTracerProvider,
}

impl Traces {
    /// The exporter and the provider for `plan`; exports run on `runtime`.
    pub fn start(plan: &Plan, runtime: tokio::runtime::Handle) -> Result<Traces, String> {
        let client = reqwest::Client::builder()
            .timeout(plan.export_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(Exporting { client, runtime })
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(plan.endpoint.clone())
            .build()
            // Its message may quote the endpoint: not its credentials.
            .map_err(|e| {
                let shown = super::trace::shown_url(&plan.endpoint);
                e.to_string().replace(&plan.endpoint, &shown)
            })?;
        let resource = Resource::builder()
            .with_service_name(plan.service_name.clone())
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        let mut provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource);
        if let Some(ratio) = plan.sample_ratio {
            provider = provider.with_sampler(Sampler::parent_based(Sampler::TraceIdRatioBased(ratio)));
        }
        Ok(Traces {
            provider: provider.build(),
        })
    }

    /// The layer that makes OpenTelemetry spans of the spans `Filter`
    /// lets through. Log events inside them become span events.
    pub fn layer<S>(&self) -> impl Layer<S> + Send + Sync + 'static
    where
        S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync + 'static,
    {
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer("hookbridge"))
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
    }

    /// Export the spans still buffered, waiting at most `within`.
    pub fn shutdown(self, within: Duration) {
        match self.provider.shutdown_with_timeout(within) {
            Ok(()) => tracing::debug!("traces flushed"),
            Err(e) => tracing::warn!(error = %e, "traces not flushed at exit; the last spans may be lost"),
        }
    }
}

/// The one filter of a traced daemon: the log filter, which also lets
/// hookbridge's own spans through at `info` and above whatever it says, so
/// that the log level does not decide what is traced.
///
/// One filter for both layers, not a filter per layer: with per-layer
/// filters, a `tracing::enabled!` check that no event follows (sqlx asks
/// before logging each statement) leaves the next event on its thread
/// wrongly filtered, and log lines went missing.
pub(super) struct Filter {
    logs: EnvFilter,
}

impl Filter {
    pub(super) fn new(logs: EnvFilter) -> Filter {
        Filter { logs }
    }

    /// One of hookbridge's spans that traces need.
    fn traced(meta: &Metadata<'_>) -> bool {
        meta.is_span() && *meta.level() <= Level::INFO && meta.target().starts_with("hookbridge")
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Filter {
    fn register_callsite(&self, meta: &'static Metadata<'static>) -> Interest {
        // Always asked: it keeps what its span directives need.
        let logs = Layer::<S>::register_callsite(&self.logs, meta);
        if Self::traced(meta) {
            Interest::always()
        } else {
            logs
        }
    }

    fn enabled(&self, meta: &Metadata<'_>, ctx: Context<'_, S>) -> bool {
        Self::traced(meta) || Layer::<S>::enabled(&self.logs, meta, ctx)
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Layer::<S>::max_level_hint(&self.logs).map(|hint| hint.max(LevelFilter::INFO))
    }

    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        self.logs.on_new_span(attrs, id, ctx);
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, ctx: Context<'_, S>) {
        self.logs.on_record(id, values, ctx);
    }

    fn on_enter(&self, id: &span::Id, ctx: Context<'_, S>) {
        self.logs.on_enter(id, ctx);
    }

    fn on_exit(&self, id: &span::Id, ctx: Context<'_, S>) {
        self.logs.on_exit(id, ctx);
    }

    fn on_close(&self, id: span::Id, ctx: Context<'_, S>) {
        self.logs.on_close(id, ctx);
    }
}

/// The exporter's HTTP client: the batch processor's thread hands each
/// export to the daemon's runtime, where reqwest (rustls) sends it.
#[derive(Debug)]
struct Exporting {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for Exporting {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, opentelemetry_http::HttpError> {
        let client = self.client.clone();
        let export = async move {
            let request = reqwest::Request::try_from(request)?;
            let mut response = client.execute(request).await?;
            let (status, headers) = (response.status(), response.headers().clone());
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await? {
                if body.len() + chunk.len() > ANSWER_LIMIT {
                    break;
                }
                body.extend_from_slice(&chunk);
            }
            let mut answer = http::Response::new(Bytes::from(body));
            *answer.status_mut() = status;
            *answer.headers_mut() = headers;
            Ok::<_, opentelemetry_http::HttpError>(answer)
        };
        self.runtime.spawn(export).await?
    }
}

/// A JSON log line written inside a traced span, with its `trace_id` and
/// `span_id` (lower-case hex, as W3C writes them) after the other fields.
pub(super) struct WithTraceId<F>(pub F);

impl<S, N, F> FormatEvent<S, N> for WithTraceId<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        // The layer attaches a span's context while it is entered.
        let cx = opentelemetry::Context::current();
        let span = cx.span();
        let ids = span.span_context();
        if !ids.is_valid() {
            return self.0.format_event(ctx, writer, event);
        }
        let mut line = String::with_capacity(512);
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        match line.strip_suffix("}\n") {
            Some(object) => writeln!(
                writer,
                "{object},\"trace_id\":\"{}\",\"span_id\":\"{}\"}}",
                ids.trace_id(),
                ids.span_id()
            ),
            None => writer.write_str(&line),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    fn plan_with(settings: Option<&TelemetrySettings>, vars: &[(&str, &str)]) -> Option<Plan> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        plan(settings, &|name| vars.get(name).cloned())
    }

    fn settings(endpoint: Option<&str>) -> TelemetrySettings {
        TelemetrySettings {
            otlp_endpoint: endpoint.map(str::to_owned),
            service_name: None,
            sample_ratio: None,
        }
    }

    #[test]
    fn off_unless_the_config_or_an_endpoint_variable_asks() {
        assert_eq!(plan_with(None, &[]), None);
        assert_eq!(plan_with(None, &[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")]), None);
        assert_eq!(plan_with(None, &[("OTEL_SERVICE_NAME", "x")]), None);
        let on = plan_with(None, &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/")]).unwrap();
        assert_eq!(on.endpoint, "http://c:4318/v1/traces");
        assert_eq!(on.service_name, "hookbridge");
        assert_eq!(on.sample_ratio, Some(1.0));
        assert_eq!(on.export_timeout, Duration::from_secs(10));
        let on = plan_with(None, &[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c/t")]).unwrap();
        assert_eq!(on.endpoint, "http://c/t");
        let on = plan_with(Some(&settings(None)), &[]).unwrap();
        assert_eq!(on.endpoint, "http://localhost:4318/v1/traces");
    }

    #[test]
    fn the_config_wins_over_the_environment_and_disabling_wins_over_both() {
        let mut s = settings(Some("https://otel.example/base"));
        s.service_name = Some("bridge".into());
        s.sample_ratio = Some(0.25);
        let env = [
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://other/v1/traces"),
            ("OTEL_SERVICE_NAME", "env-name"),
            ("OTEL_TRACES_SAMPLER", "always_off"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ];
        let on = plan_with(Some(&s), &env).unwrap();
        assert_eq!(on.endpoint, "https://otel.example/base/v1/traces");
        assert_eq!(on.service_name, "bridge");
        assert_eq!(on.sample_ratio, Some(0.25));
        assert_eq!(on.export_timeout, Duration::from_millis(2500));
        assert_eq!(on.ignored_protocol.as_deref(), Some("grpc"));
        // Without `sample_ratio`, the standard sampler variable decides.
        let on = plan_with(Some(&settings(None)), &env).unwrap();
        assert_eq!((on.service_name.as_str(), on.sample_ratio), ("env-name", None));
        for off in [("OTEL_SDK_DISABLED", "TRUE"), ("OTEL_TRACES_EXPORTER", "none")] {
            assert_eq!(plan_with(Some(&s), &[off]), None, "{off:?}");
        }
        assert!(plan_with(Some(&s), &[("OTEL_SDK_DISABLED", "false")]).is_some());
    }

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The log filter decides the lines; hookbridge's spans pass it for the
    /// traces; an `enabled!` no event follows (sqlx's habit) costs no line;
    /// a line inside a traced span has its trace and span ids.
    #[test]
    fn one_filter_keeps_the_log_level_and_lets_spans_through() {
        let traces = Traces {
            provider: SdkTracerProvider::builder().build(),
        };
        let lines = Lines::default();
        let writer = lines.clone();
        let fmt = tracing_subscriber::fmt::layer()
            .with_writer(move || writer.clone())
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .map_event_format(WithTraceId);
        let subscriber = tracing_subscriber::Registry::default()
            .with(Filter::new(EnvFilter::new("warn")))
            .with(fmt)
            .with(traces.layer());
        let trace_id = tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("webhook", delivery = "d-1");
            let trace_id = span.in_scope(|| {
                assert!(!tracing::enabled!(target: "sqlx::query", tracing::Level::DEBUG));
                tracing::info!("not logged at warn");
                tracing::warn!("logged");
                opentelemetry::Context::current().span().span_context().trace_id()
            });
            tracing::warn!("outside");
            trace_id
        });
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0]["message"], "logged");
        assert_eq!(lines[0]["spans"][0]["delivery"], "d-1");
        assert_eq!(lines[0]["trace_id"], trace_id.to_string());
        assert!(trace_id != opentelemetry::trace::TraceId::INVALID);
        assert_eq!(lines[1]["message"], "outside");
        assert!(lines[1].get("trace_id").is_none(), "{text}");
    }
}
