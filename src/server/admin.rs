//! The admin listener: health, readiness, metrics, and the deliveries API.
//!
//! `/api/v1/*` requires `Authorization: Bearer <[admin] token>` when a token is
//! configured; the config refuses a non-loopback admin address without one.

use std::time::SystemTime;

use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;

use super::App;
use crate::config::units::parse_since;
use crate::store::{DeliveryFilter, DeliveryKey, DeliveryStatus, StoreError, StoreErrorKind};

/// Largest page of `GET /api/v1/deliveries`.
const MAX_PAGE: usize = 500;

pub fn router(app: App) -> Router {
    let api = Router::new()
        .route("/api/v1/deliveries", get(list_deliveries))
        .route("/api/v1/deliveries/{id}", get(get_delivery))
        .route("/api/v1/deliveries/{id}/replay", post(replay_delivery))
        .route_layer(middleware::from_fn_with_state(app.clone(), require_token));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(api)
        .with_state(app)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

/// Bearer-token check, constant time; the token is read from the live config.
async fn require_token(State(app): State<App>, headers: HeaderMap, request: Request, next: Next) -> Response {
    let config = app.config.load();
    if let Some(token) = &config.admin.token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let ok: bool = given.as_bytes().ct_eq(token.expose().as_bytes()).into();
        if !ok {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                axum::Json(json!({ "error": "missing or wrong bearer token" })),
            )
                .into_response();
        }
    }
    next.run(request).await
}

fn store_error(e: StoreError) -> Response {
    match e.kind() {
        StoreErrorKind::NotFound => error(StatusCode::NOT_FOUND, e.to_string()),
        StoreErrorKind::Ambiguous => error(StatusCode::CONFLICT, e.to_string()),
        StoreErrorKind::Invalid => error(StatusCode::BAD_REQUEST, e.to_string()),
        StoreErrorKind::Unavailable | StoreErrorKind::Conflict | StoreErrorKind::Corrupt => {
            tracing::warn!(error = %e, "admin API: store error");
            error(StatusCode::SERVICE_UNAVAILABLE, "the store is unavailable")
        }
    }
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    status: Option<String>,
    source: Option<String>,
    rule: Option<String>,
    since: Option<String>,
    /// Cursor: the `next` value of the previous page.
    before: Option<String>,
    limit: Option<usize>,
}

async fn list_deliveries(State(app): State<App>, Query(q): Query<ListQuery>) -> Response {
    let status = match q.status.as_deref().map(str::parse::<DeliveryStatus>).transpose() {
        Ok(s) => s,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let since = match q
        .since
        .as_deref()
        .map(|s| parse_since(s, SystemTime::now()))
        .transpose()
    {
        Ok(s) => s,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let limit = q.limit.unwrap_or(50).clamp(1, MAX_PAGE);
    let filter = DeliveryFilter {
        status,
        source: q.source,
        rule: q.rule,
        since,
        before: q.before,
        limit,
    };
    match app.store.list(&filter).await {
        Ok(rows) => {
            let next = (rows.len() == limit)
                .then(|| rows.last().map(|r| r.id.clone()))
                .flatten();
            axum::Json(json!({ "deliveries": rows, "next": next })).into_response()
        }
        Err(e) => store_error(e),
    }
}

#[derive(Debug, Deserialize)]
struct KeyQuery {
    source: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
struct ReplayBody {
    job: Option<String>,
    #[serde(default)]
    reevaluate: bool,
}

async fn get_delivery(State(app): State<App>, Path(id): Path<String>, Query(q): Query<KeyQuery>) -> Response {
    let key = DeliveryKey { id, source: q.source };
    match app.store.get(&key).await {
        Ok(detail) => axum::Json(detail).into_response(),
        Err(e) => store_error(e),
    }
}

async fn replay_delivery(
    State(app): State<App>,
    Path(id): Path<String>,
    Query(q): Query<KeyQuery>,
    body: axum::body::Bytes,
) -> Response {
    let req: ReplayBody = if body.is_empty() {
        ReplayBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")),
        }
    };
    let key = DeliveryKey { id, source: q.source };
    let queued = if req.reevaluate {
        let config = app.config.load_full();
        crate::cli::deliveries::reevaluate(&config, app.store.as_ref(), &key)
            .await
            .map_err(|e| error(StatusCode::BAD_REQUEST, e))
    } else {
        app.store
            .replay(&key, req.job.as_deref(), SystemTime::now())
            .await
            .map_err(store_error)
    };
    match queued {
        Ok(queued) => {
            if !queued.is_empty() {
                app.wake.notify_one();
            }
            tracing::info!(delivery = %key.id, queued = queued.len(), "replay requested through the admin API");
            (StatusCode::ACCEPTED, axum::Json(json!({ "queued": queued }))).into_response()
        }
        Err(response) => response,
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready when the store proves it can commit a delivery ([`crate::store::Store::ready`]).
/// Why not stays in the log: callers learn only that the store cannot write.
async fn readyz(State(app): State<App>) -> Response {
    match app.store.ready().await {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "not ready: store not writable\n").into_response(),
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
