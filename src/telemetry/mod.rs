//! Logs, metrics and traces.
//!
//! Logs go to stderr, as JSON lines (`--log-format json`, the default when
//! stdout is not a terminal) or human-readable text; `RUST_LOG` or
//! `--log-level` set the filter. Metrics are recorded through the `metrics`
//! facade and rendered in Prometheus text format on the admin listener.
//! Traces ([`otel`], [`trace`]) are off unless `[telemetry]` or the standard
//! `OTEL_EXPORTER_OTLP_*` variables ask for them ([`init`]); while on, JSON log
//! lines written inside a traced span carry its `trace_id` and `span_id`.

use std::io::IsTerminal;
use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Registry;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::config::telemetry::TelemetrySettings;

pub mod otel;
pub mod trace;

/// How long the exit waits for the last spans to be exported.
pub const FLUSH_WITHIN: Duration = Duration::from_secs(5);

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// JSON when stdout is not a terminal, pretty otherwise.
    Auto,
    Json,
    Pretty,
}

/// Install logging, and traces when `[telemetry]` (`settings`) or the
/// environment asks for them ([`otel::plan`]); their exports run on
/// `runtime`. Answers the running traces, to [`otel::Traces::shutdown`]
/// before exiting. Traces that cannot start are logged, and the daemon
/// runs without them.
pub fn init(
    format: LogFormat,
    level: Option<&str>,
    settings: Option<&TelemetrySettings>,
    runtime: &tokio::runtime::Handle,
) -> Option<otel::Traces> {
    let plan = otel::plan(settings, &|name| std::env::var(name).ok());
    let Some(plan) = plan else {
        init_logging(format, level);
        return None;
    };
    let traces = match otel::Traces::start(&plan, runtime.clone()) {
        Ok(traces) => traces,
        Err(e) => {
            init_logging(format, level);
            tracing::error!(error = %e, "cannot export traces; running without them");
            return None;
        }
    };
    // As `init_logging`, with the traces' layer beside the log lines'.
    let traced = Registry::default().with(otel::Filter::new(filter(level)));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    let _ = if json(format) {
        let fmt = fmt
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .map_event_format(otel::WithTraceId);
        traced.with(fmt).with(traces.layer()).try_init()
    } else {
        let fmt = fmt.with_ansi(std::io::stderr().is_terminal());
        traced.with(fmt).with(traces.layer()).try_init()
    };
    trace::enable();
    tracing::info!(
        endpoint = %trace::shown_url(&plan.endpoint),
        service = %plan.service_name,
        sample_ratio = plan.sample_ratio,
        "exporting traces (OTLP/HTTP)"
    );
    if let Some(protocol) = &plan.ignored_protocol {
        tracing::warn!(%protocol, "OTEL_EXPORTER_OTLP_PROTOCOL is not followed: traces go out as OTLP/HTTP with protobuf");
    }
    Some(traces)
}

fn filter(level: Option<&str>) -> EnvFilter {
    match level {
        Some(level) => EnvFilter::new(level),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    }
}

fn json(format: LogFormat) -> bool {
    match format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stdout().is_terminal(),
    }
}

/// Install the global log subscriber. Safe to call more than once (later calls do nothing).
pub fn init_logging(format: LogFormat, level: Option<&str>) {
    // A log line that cannot be written (stderr on a full disk, a closed
    // pipe) is dropped: reporting it would `eprintln!` to the same stderr,
    // which panics, and a panic in a request drops the sender's connection.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(level))
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    let _ = if json(format) {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init()
    } else {
        // Colours only for a terminal: a file or a pipe gets plain text.
        builder.with_ansi(std::io::stderr().is_terminal()).try_init()
    };
}

/// The process-wide Prometheus recorder, installed on first use.
pub fn metrics() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&[
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ])
            .map(PrometheusBuilder::build_recorder)
            .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
        let handle = recorder.handle();
        // Another recorder may already be installed (tests embedding the server); then
        // this handle renders an empty page rather than failing.
        let _ = metrics::set_global_recorder(recorder);
        describe();
        metrics::gauge!(
            "hookbridge_build_info",
            "version" => env!("CARGO_PKG_VERSION"),
            "commit" => env!("HOOKBRIDGE_COMMIT")
        )
        .set(1.0);
        handle
    })
}

fn describe() {
    metrics::describe_counter!(
        "hookbridge_webhooks_received_total",
        "Webhook requests by source and outcome (accepted, deferred, unmatched, rule_error, duplicate, ping, unauthorized, invalid, too_large, unknown_source, unavailable)"
    );
    metrics::describe_counter!(
        "hookbridge_rule_matches_total",
        "Rules that matched a delivery, by rule"
    );
    metrics::describe_counter!(
        "hookbridge_trigger_attempts_total",
        "Trigger attempts by target and outcome (done, skipped, retry, dead)"
    );
    metrics::describe_histogram!(
        "hookbridge_trigger_attempt_duration_seconds",
        metrics::Unit::Seconds,
        "Time of one trigger request to the CI API"
    );
    metrics::describe_counter!("hookbridge_dead_lettered_total", "Jobs dead-lettered, by target");
    metrics::describe_counter!(
        "hookbridge_reconciles_total",
        "Looks for the pipeline an ambiguous attempt may have created, by target and outcome (found, not_found, skipped, failed)"
    );
    metrics::describe_counter!(
        "hookbridge_statuses_total",
        "Commit status posts to the VCS, by source, state and outcome (posted, retry, dead)"
    );
    metrics::describe_counter!(
        "hookbridge_pipeline_reads_total",
        "Reads of a followed pipeline's state from the CI, by target and outcome (final, running, failed, refused, skipped)"
    );
    metrics::describe_counter!(
        "hookbridge_changed_files_reads_total",
        "Reads of a change's files from the VCS for deferred rules, by vcs and outcome (read, cached, retry, failed)"
    );
    metrics::describe_counter!(
        "hookbridge_deferred_total",
        "Deferred rules settled or retried, by source and outcome (matched, skipped, error, retry)"
    );
    metrics::describe_histogram!(
        "hookbridge_ingest_duration_seconds",
        metrics::Unit::Seconds,
        "Time from request received to stored delivery"
    );
    metrics::describe_gauge!("hookbridge_jobs_pending", "Jobs waiting for an attempt");
    metrics::describe_gauge!("hookbridge_jobs_running", "Jobs leased by a worker");
    metrics::describe_gauge!("hookbridge_jobs_dead", "Dead-lettered jobs");
    metrics::describe_gauge!(
        "hookbridge_oldest_pending_job_age_seconds",
        metrics::Unit::Seconds,
        "Age of the oldest pending job"
    );
    metrics::describe_counter!(
        "hookbridge_config_reloads_total",
        "Config reloads by result (ok, error)"
    );
}
