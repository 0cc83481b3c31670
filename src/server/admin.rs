//! The admin listener: health, readiness and metrics.

use std::time::SystemTime;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::App;

pub fn router(app: App) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(app)
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready when the config is loaded (it always is once serving) and the store answers.
async fn readyz(State(app): State<App>) -> Response {
    match app.store.ping().await {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n")).into_response(),
    }
}

async fn metrics(State(app): State<App>) -> Response {
    if let Ok(stats) = app.store.stats().await {
        metrics::gauge!("hookbridge_jobs_pending").set(stats.pending as f64);
        metrics::gauge!("hookbridge_jobs_running").set(stats.running as f64);
        metrics::gauge!("hookbridge_jobs_dead").set(stats.dead as f64);
        let age = stats
            .oldest_pending
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .map_or(0.0, |d| d.as_secs_f64());
        metrics::gauge!("hookbridge_oldest_pending_job_age_seconds").set(age);
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        crate::telemetry::metrics().render(),
    )
        .into_response()
}
