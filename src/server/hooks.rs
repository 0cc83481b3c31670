//! `POST /hooks/{source}`: the webhook listener.
//!
//! The order of work is the contract: refuse unknown sources and oversized
//! bodies before reading them, verify the raw bytes before parsing, and
//! answer 2xx only once the delivery and its jobs are durable.

use std::time::{Instant, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::json;
use tracing::{Instrument, debug, info, info_span, warn};

use super::App;
use super::body::{BodyMemory, ConnectionId, ReadError, read_body};
use crate::config::ServerSettings;
use crate::config::units::ByteSize;
use crate::intake::{self, Rejection};
use crate::store::{Ingested, Summary};
use crate::telemetry::trace;

pub fn router(app: App) -> Router {
    Router::new()
        .route("/hooks/{source}", post(receive))
        .fallback(not_found)
        .with_state(app)
}

async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "no such endpoint; webhooks are received at POST /hooks/{source}",
    )
}

/// A JSON error body: `{"error": "..."}`. Messages never contain secrets.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

fn summary(status: StatusCode, summary: &Summary) -> Response {
    (status, axum::Json(summary)).into_response()
}

fn count(source: &str, outcome: &'static str) {
    metrics::counter!("hookbridge_webhooks_received_total", "source" => source.to_owned(), "outcome" => outcome)
        .increment(1);
}

async fn receive(
    State(app): State<App>,
    Path(name): Path<String>,
    connection: Option<axum::Extension<ConnectionId>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // The name comes from the URL, percent-decoded, before anyone is
    // verified: control characters are escaped, so a terminal reading the
    // log does not obey them (configured names are shown as they are).
    let connection = connection.map_or_else(ConnectionId::unattached, |c| c.0);
    if trace::enabled() {
        let span = trace::webhook_span(&name, &headers);
        let response = handle(app, name, connection, headers, body)
            .instrument(span.clone())
            .await;
        trace::answered(&span, response.status().as_u16());
        return response;
    }
    let span = info_span!("webhook", source = %name.escape_debug(), delivery = tracing::field::Empty);
    handle(app, name, connection, headers, body)
        .instrument(span)
        .await
}

async fn handle(
    app: App,
    name: String,
    connection: ConnectionId,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let config = app.config.load_full();
    let Some(source) = config.sources.get(&name) else {
        count("unknown", "unknown_source");
        debug!("unknown source");
        return error(StatusCode::NOT_FOUND, format!("unknown source `{name}`"));
    };
    let limit = config.server.max_body.min(app.body_memory.share());
    let too_large = || {
        count(&name, "too_large");
        warn!(
            limit,
            "body over max_body (or the share of body_memory one request may hold) refused"
        );
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            too_large_message(&config.server, &app.body_memory),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return too_large();
    }
    let deadline = super::later(
        tokio::time::Instant::from_std(started),
        config.server.read_timeout,
    );
    // A declared length is only a claim: room is taken as bytes arrive.
    let mut room = app.body_memory.room(&name, connection, declared.unwrap_or(limit));
    let idle = config.server.body_idle_timeout;
    let read = tokio::time::timeout_at(deadline, read_body(body, limit, declared, idle, &mut room)).await;
    let bytes = match read {
        Ok(Ok(bytes)) => bytes,
        Err(_) if room.waiting => {
            count(&name, "unavailable");
            warn!(
                "no room for the body within read_timeout ([server] body_memory); the sender was told to retry"
            );
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many webhooks are being received at once; it was not accepted, please retry",
            );
        }
        Err(_) => {
            count(&name, "invalid");
            info!("body not received within read_timeout; connection closed");
            return closing(error(
                StatusCode::REQUEST_TIMEOUT,
                "timed out reading the request body",
            ));
        }
        Ok(Err(ReadError::Stalled)) => {
            count(&name, "invalid");
            info!(body_idle_timeout = ?idle, "sender stopped mid-body; connection closed");
            return closing(error(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "no body bytes received for {} ([server] body_idle_timeout); the request was cut off",
                    humantime::format_duration(idle)
                ),
            ));
        }
        Ok(Err(ReadError::TooSlow)) => {
            count(&name, "invalid");
            info!("body cut off for room (too slow, or waiting while holding room); connection closed");
            return closing(error(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request was cut off to make room for other webhooks ([server] body_memory): its body arrived slower than {} per second, or waited for room while holding part of it",
                    ByteSize(super::body::FLOOR_PER_SECOND)
                ),
            ));
        }
        Ok(Err(ReadError::TooLarge)) => return closing(too_large()),
        Ok(Err(ReadError::Unreadable(e))) => {
            count(&name, "invalid");
            debug!(error = %e, "unreadable body");
            return error(StatusCode::BAD_REQUEST, "the request body could not be read");
        }
    };

    let received_at = SystemTime::now();
    let processed = intake::receive(&config, source, &headers, &bytes, received_at);
    let intake = match processed {
        Ok(intake) => intake,
        Err(rejection) => return reject(&name, rejection),
    };
    tracing::Span::current().record("delivery", intake.event.delivery.as_str());
    trace::describe(&intake.event);
    if intake.is_ping() {
        count(&name, "ping");
        info!(event = %intake.event.name, "ping answered; nothing stored");
        return summary(StatusCode::OK, &intake::ping_summary(&intake.event));
    }
    for e in &intake.evaluation.errors {
        warn!(rule = %e.rule, error = %e.error, "rule could not be evaluated");
    }
    // Traced, the jobs keep the store span's context (`intake::delivery`).
    let store_span = trace::store_span(intake.evaluation.matched.len());
    let delivery = match &store_span {
        Some(span) => span.in_scope(|| intake::delivery(intake, received_at)),
        None => intake::delivery(intake, received_at),
    };
    let mut fresh = delivery.summary.clone();
    let event = delivery.event.name.clone();
    let ingest = app.store.ingest(delivery);
    let ingested = match store_span {
        Some(span) => ingest.instrument(span).await,
        None => ingest.await,
    };
    match ingested {
        Ok(Ingested::Stored { superseded }) => {
            let ended: usize = superseded.iter().map(|s| s.jobs.len()).sum();
            if ended > 0 {
                metrics::counter!("hookbridge_jobs_superseded_total").increment(ended as u64);
                crate::store::concurrency::note_superseded(&mut fresh, &superseded);
            }
            metrics::histogram!("hookbridge_ingest_duration_seconds").record(started.elapsed().as_secs_f64());
            let matched = !fresh.matched.is_empty();
            for m in &fresh.matched {
                metrics::counter!("hookbridge_rule_matches_total", "rule" => m.rule.clone()).increment(1);
            }
            for e in &fresh.errors {
                metrics::counter!("hookbridge_rule_errors_total", "rule" => e.rule.clone()).increment(1);
            }
            if matched && !app.store.wakes_on_ingest() {
                app.wake.notify_one();
            }
            // Rules waiting for the changed files are work to do, like a match.
            let deferred = !fresh.deferred.is_empty();
            // Nothing matched because rules failed is not "nothing to do".
            count(
                &name,
                match (matched, deferred, fresh.errors.is_empty()) {
                    (true, _, _) => "accepted",
                    (false, true, _) => "deferred",
                    (false, false, true) => "unmatched",
                    (false, false, false) => "rule_error",
                },
            );
            info!(
                event = %event,
                matched = fresh.matched.len(),
                superseded = ended,
                skipped = fresh.skipped.len(),
                errors = fresh.errors.len(),
                deferred = fresh.deferred.len(),
                "delivery stored"
            );
            summary(
                if matched || deferred {
                    StatusCode::ACCEPTED
                } else {
                    StatusCode::OK
                },
                &fresh,
            )
        }
        Ok(Ingested::Duplicate {
            mut summary,
            requeued,
        }) => {
            summary.duplicate = true;
            count(&name, "duplicate");
            if requeued > 0 {
                app.wake.notify_one();
                info!(
                    requeued,
                    "duplicate delivery; its dead-lettered jobs are queued again"
                );
                self::summary(StatusCode::ACCEPTED, &summary)
            } else {
                info!("duplicate delivery; nothing new triggered");
                self::summary(StatusCode::OK, &summary)
            }
        }
        Err(e) => {
            count(&name, "unavailable");
            warn!(error = %e, "delivery not stored; the sender was told to retry");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the delivery could not be stored; it was not accepted, please retry",
            )
        }
    }
}

/// Tell hyper not to keep the connection: the rest of its body is not wanted.
fn closing(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

fn too_large_message(server: &ServerSettings, memory: &BodyMemory) -> String {
    if memory.share() < server.max_body {
        format!(
            "body is larger than one request may hold ({}: the share of [server] body_memory one source or connection may use)",
            ByteSize(memory.share())
        )
    } else {
        format!("body is larger than max_body ({})", ByteSize(server.max_body))
    }
}

fn reject(source: &str, rejection: Rejection) -> Response {
    let status = rejection.status();
    count(source, rejection.outcome());
    if status == StatusCode::UNAUTHORIZED {
        warn!(reason = %rejection, "webhook refused");
    } else {
        info!(status = status.as_u16(), reason = %rejection, "webhook refused");
    }
    error(status, rejection.to_string())
}
