//! The admin listener: health, readiness, metrics, and the deliveries API.
//!
//! `/api/v1/*` requires `Authorization: Bearer <[admin] token>` when a token is
//! configured; the config refuses a non-loopback admin address without one,
//! and without one the API answers only requests addressed to a loopback
//! name. Browsers' cross-site requests are refused either way.

use std::time::SystemTime;

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;

use super::App;
use super::listing::ListQuery;
use super::origin::{addressed_to, all_loopback, cross_site};
use crate::intake::{self, ReevaluateError};
use crate::store::{DeliveryKey, StoreError, StoreErrorKind};

pub(crate) fn router(app: App) -> Router {
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

/// Why an admin request failed: the one mapping from errors to statuses.
///
/// A message sent back is built from the caller's own input (their id, their
/// query). What went wrong inside (driver messages, file paths) goes to the
/// log only; the caller learns the status and a fixed sentence.
#[derive(Debug)]
enum ApiError {
    /// The query or body is wrong, or the stored payload no longer describes
    /// under the current rules; the message says why.
    BadRequest(String),
    /// No such delivery (or job of it).
    NotFound(String),
    /// The id names deliveries of several sources; the message lists them.
    Ambiguous(String),
    /// The store cannot answer now, or cannot read what it holds.
    Unavailable,
    /// The store refused the request for a reason of its own.
    Refused,
    /// The request would break what the store holds (a constraint).
    Conflict,
    /// `/readyz`: the store cannot commit a delivery (the store logs why).
    NotReady,
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e.kind() {
            StoreErrorKind::NotFound => ApiError::NotFound(e.to_string()),
            StoreErrorKind::Ambiguous => ApiError::Ambiguous(e.to_string()),
            StoreErrorKind::Invalid => {
                tracing::warn!(error = %e, "admin API: the store refused the request");
                ApiError::Refused
            }
            StoreErrorKind::Conflict => {
                tracing::warn!(error = %e, "admin API: the request conflicts with stored data");
                ApiError::Conflict
            }
            StoreErrorKind::Unavailable | StoreErrorKind::Corrupt => {
                tracing::warn!(error = %e, "admin API: store error");
                ApiError::Unavailable
            }
        }
    }
}

impl From<ReevaluateError> for ApiError {
    fn from(e: ReevaluateError) -> Self {
        match e {
            ReevaluateError::Store(e) => e.into(),
            ReevaluateError::Rejected(r) => ApiError::BadRequest(r.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            ApiError::NotReady => {
                // Plain text, like the answer when ready: probes read it.
                return (StatusCode::SERVICE_UNAVAILABLE, "not ready: store not writable\n").into_response();
            }
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, m),
            ApiError::Ambiguous(m) => (StatusCode::CONFLICT, m),
            ApiError::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "the store is unavailable".into()),
            ApiError::Refused => (StatusCode::BAD_REQUEST, "the store refused the request".into()),
            ApiError::Conflict => (
                StatusCode::CONFLICT,
                "the request conflicts with stored data".into(),
            ),
        };
        (status, axum::Json(json!({ "error": message }))).into_response()
    }
}

/// The API's gate. With `[admin] token`: the bearer token, compared in
/// constant time, read from the live config. Without one (the listener is
/// then loopback-only): only requests addressed to a loopback name, so a web
/// page cannot reach the API through DNS rebinding (`Host: attacker.example`
/// resolving to 127.0.0.1). Either way a browser's cross-site request (an
/// `Origin` other than the API's own, `Sec-Fetch-Site: cross-site`) is
/// refused: a page's form or `fetch` cannot replay deliveries.
async fn require_token(State(app): State<App>, headers: HeaderMap, request: Request, next: Next) -> Response {
    let refused =
        |status: StatusCode, message: &str| (status, axum::Json(json!({ "error": message }))).into_response();
    let config = app.config.load();
    let hosts = addressed_to(request.uri(), &headers);
    if config.admin.token.is_some() {
        // The scheme's name is case-insensitive (RFC 9110, 11.1).
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map_or("", |(_, token)| token.trim_start());
        if !config.admin.accepts(given) {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                axum::Json(json!({ "error": "missing or wrong bearer token" })),
            )
                .into_response();
        }
    } else if !all_loopback(hosts.as_deref()) {
        return refused(
            StatusCode::FORBIDDEN,
            "without [admin] token the API answers only requests addressed to a loopback host (localhost, 127.0.0.1, [::1])",
        );
    }
    if cross_site(&headers, hosts.as_deref()) {
        return refused(StatusCode::FORBIDDEN, "cross-site requests are refused");
    }
    next.run(request).await
}

/// A query string that does not parse (`?limit=abc`): 400 with the JSON
/// error every other refusal has, not axum's plain text.
fn bad_query(rejection: QueryRejection) -> ApiError {
    ApiError::BadRequest(rejection.body_text())
}

async fn list_deliveries(
    State(app): State<App>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(bad_query)?;
    let filter = q.filter(SystemTime::now()).map_err(ApiError::BadRequest)?;
    let rows = app.store.list(&filter).await?;
    let next = (rows.len() == filter.limit)
        .then(|| rows.last().map(|r| r.id.clone()))
        .flatten();
    Ok(axum::Json(json!({ "deliveries": rows, "next": next })).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyQuery {
    source: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReplayBody {
    job: Option<String>,
    #[serde(default)]
    reevaluate: bool,
}

async fn get_delivery(
    State(app): State<App>,
    Path(id): Path<String>,
    q: Result<Query<KeyQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(bad_query)?;
    let key = DeliveryKey { id, source: q.source };
    Ok(axum::Json(app.store.get(&key).await?).into_response())
}

async fn replay_delivery(
    State(app): State<App>,
    Path(id): Path<String>,
    q: Result<Query<KeyQuery>, QueryRejection>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let req: ReplayBody = if body.is_empty() {
        ReplayBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))?
    };
    let Query(q) = q.map_err(bad_query)?;
    if req.reevaluate && req.job.is_some() {
        return Err(ApiError::BadRequest(
            "`job` and `reevaluate` exclude each other: a re-evaluation makes new jobs".into(),
        ));
    }
    let key = DeliveryKey { id, source: q.source };
    let (queued, answer) = if req.reevaluate {
        let config = app.config.load_full();
        let summary = intake::reevaluate(&config, app.store.as_ref(), &key, SystemTime::now()).await?;
        let queued: Vec<String> = summary.matched.iter().map(|m| m.job.clone()).collect();
        // The verdicts say why nothing was queued, when nothing was.
        let answer = json!({
            "queued": queued, "skipped": summary.skipped, "errors": summary.errors,
            "deferred": summary.deferred,
        });
        (queued, answer)
    } else {
        let queued = app
            .store
            .replay(&key, req.job.as_deref(), SystemTime::now())
            .await?;
        let answer = json!({ "queued": queued });
        (queued, answer)
    };
    if !queued.is_empty() {
        app.wake.notify_one();
    }
    tracing::info!(delivery = %key.id, queued = queued.len(), "replay requested through the admin API");
    Ok((StatusCode::ACCEPTED, axum::Json(answer)).into_response())
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready when the store proves it can commit a delivery ([`crate::store::Store::ready`]).
/// Why not stays in the log: callers learn only that the store cannot write.
async fn readyz(State(app): State<App>) -> Result<&'static str, ApiError> {
    match app.store.ready().await {
        Ok(()) => Ok("ready\n"),
        Err(_) => Err(ApiError::NotReady),
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
