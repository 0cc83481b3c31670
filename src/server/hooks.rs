//! `POST /hooks/{source}`: the webhook listener.
//!
//! The order of work is the contract: refuse unknown sources and oversized
//! bodies before reading them, verify the raw bytes before parsing, and
//! answer 2xx only once the delivery and its jobs are durable.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{Instrument, debug, info, info_span, warn};

use super::App;
use crate::intake::{self, Rejection};
use crate::store::{Ingested, Summary};

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
    headers: HeaderMap,
    body: Body,
) -> Response {
    let span = info_span!("webhook", source = %name, delivery = tracing::field::Empty);
    handle(app, name, headers, body).instrument(span).await
}

async fn handle(app: App, name: String, headers: HeaderMap, body: Body) -> Response {
    let started = Instant::now();
    let config = app.config.load_full();
    let Some(source) = config.sources.get(&name) else {
        count("unknown", "unknown_source");
        debug!("unknown source");
        return error(StatusCode::NOT_FOUND, format!("unknown source `{name}`"));
    };
    let limit = config.server.max_body;
    let too_large = || {
        count(&name, "too_large");
        warn!(max_body = limit, "body over max_body refused");
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "body is larger than max_body ({})",
                crate::config::units::ByteSize(limit)
            ),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return too_large();
    }
    let limit_usize = usize::try_from(limit).unwrap_or(usize::MAX);
    let deadline = tokio::time::Instant::from_std(started) + config.server.read_timeout;
    // Bodies in memory stay within `body_memory` however many senders there
    // are: a request takes room for its body before reading it, the others
    // wait (their bytes stay in the kernel's socket buffers) and are told to
    // retry if no room comes within `read_timeout`.
    let mut room = Room::new(&app.body_memory);
    let read = tokio::time::timeout_at(deadline, read_body(body, limit_usize, declared, &mut room)).await;
    let bytes = match read {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(ReadError::NoRoom)) | Err(_) if room.waiting => {
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
            return error(StatusCode::REQUEST_TIMEOUT, "timed out reading the request body");
        }
        Ok(Err(ReadError::TooLarge)) => return too_large(),
        Ok(Err(e)) => {
            count(&name, "invalid");
            if let ReadError::Unreadable(e) = e {
                debug!(error = %e, "unreadable body");
            }
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
    if intake.is_ping() {
        count(&name, "ping");
        info!(event = %intake.event.name, "ping answered; nothing stored");
        return summary(StatusCode::OK, &intake::ping_summary(&intake.event));
    }
    for e in &intake.evaluation.errors {
        warn!(rule = %e.rule, error = %e.error, "rule could not be evaluated");
    }
    let delivery = intake::delivery(intake, received_at);
    let fresh = delivery.summary.clone();
    let event = delivery.event.name.clone();
    match app.store.ingest(delivery).await {
        Ok(Ingested::Stored) => {
            metrics::histogram!("hookbridge_ingest_duration_seconds").record(started.elapsed().as_secs_f64());
            let matched = !fresh.matched.is_empty();
            for m in &fresh.matched {
                metrics::counter!("hookbridge_rule_matches_total", "rule" => m.rule.clone()).increment(1);
            }
            if matched {
                app.wake.notify_one();
            }
            count(&name, if matched { "accepted" } else { "unmatched" });
            info!(
                event = %event,
                matched = fresh.matched.len(),
                skipped = fresh.skipped.len(),
                errors = fresh.errors.len(),
                "delivery stored"
            );
            summary(
                if matched {
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

/// `[server] body_memory`: KiB permits for the request bodies held at once.
/// Sized once at start (a reload cannot resize it).
#[derive(Clone)]
pub struct BodyMemory {
    permits: Arc<Semaphore>,
    kib: u32,
}

impl BodyMemory {
    pub fn new(bytes: u64) -> BodyMemory {
        let kib = kib(bytes).clamp(1, u32::try_from(Semaphore::MAX_PERMITS).unwrap_or(u32::MAX));
        BodyMemory {
            permits: Arc::new(Semaphore::new(kib as usize)),
            kib,
        }
    }
}

/// A request's share of `[server] body_memory`, in KiB permits, held until
/// its answer. It grows with the body: the declared `Content-Length` up front,
/// or chunk by chunk when the sender declared none. It never exceeds the
/// whole budget, so one body larger than `body_memory` still gets through,
/// alone.
struct Room {
    memory: BodyMemory,
    held: Option<OwnedSemaphorePermit>,
    /// Set while waiting for room, so a timeout there answers 503, not 408.
    waiting: bool,
}

impl Room {
    fn new(memory: &BodyMemory) -> Room {
        Room {
            memory: memory.clone(),
            held: None,
            waiting: false,
        }
    }

    /// Hold room for `bytes` of body, waiting for other requests to answer
    /// if there is none yet.
    async fn hold(&mut self, bytes: u64) -> Result<(), ReadError> {
        let held = self
            .held
            .as_ref()
            .map_or(0, |p| u32::try_from(p.num_permits()).unwrap_or(u32::MAX));
        let want = kib(bytes).clamp(1, self.memory.kib);
        if want <= held {
            return Ok(());
        }
        self.waiting = true;
        let more = Arc::clone(&self.memory.permits)
            .acquire_many_owned(want - held)
            .await
            .map_err(|_| ReadError::NoRoom)?;
        self.waiting = false;
        match &mut self.held {
            Some(permit) => permit.merge(more),
            None => self.held = Some(more),
        }
        Ok(())
    }
}

fn kib(bytes: u64) -> u32 {
    u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX)
}

/// Room taken at once by a body of undeclared length before it grows.
const CHUNKED_ROOM: u64 = 64 * 1024;

enum ReadError {
    TooLarge,
    NoRoom,
    Unreadable(axum::BoxError),
}

/// Read the whole body, at most `limit` bytes, into one buffer sized from
/// `Content-Length` when the sender declared it: one allocation and no final
/// copy of the chunks (a 1 MB push arrives in many frames). The buffer is then
/// shared, not copied, by the intake and the store.
async fn read_body(
    body: Body,
    limit: usize,
    declared: Option<u64>,
    room: &mut Room,
) -> Result<Bytes, ReadError> {
    room.hold(declared.unwrap_or(CHUNKED_ROOM)).await?;
    let capacity = declared
        .map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX))
        .min(limit);
    let mut buf = BytesMut::with_capacity(capacity);
    let mut body = Limited::new(body, limit);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            if e.is::<LengthLimitError>() {
                ReadError::TooLarge
            } else {
                ReadError::Unreadable(e)
            }
        })?;
        if let Ok(data) = frame.into_data() {
            if declared.is_none() {
                room.hold((buf.len() + data.len()) as u64).await?;
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
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

#[cfg(test)]
mod tests {
    use super::{BodyMemory, Room};

    const MIB: u64 = 1024 * 1024;

    #[tokio::test]
    async fn a_body_holds_its_length_and_never_more_than_the_budget() {
        let memory = BodyMemory::new(32 * MIB);
        let free = || memory.permits.available_permits();
        let mut room = Room::new(&memory);
        assert!(room.hold(9000).await.is_ok());
        assert_eq!(free(), 32 * 1024 - 9);
        // Growing takes only the difference; shrinking gives nothing back early.
        assert!(room.hold(20_000).await.is_ok());
        assert!(room.hold(5).await.is_ok());
        assert_eq!(free(), 32 * 1024 - 20);
        // Larger than the whole budget: it takes everything and goes through alone.
        let mut big = Room::new(&memory);
        drop(room);
        assert!(big.hold(40 * MIB).await.is_ok());
        assert_eq!(free(), 0);
        drop(big);
        assert_eq!(free(), 32 * 1024);
    }

    #[tokio::test]
    async fn a_body_waits_for_room_until_another_answers() {
        let memory = BodyMemory::new(MIB);
        let mut first = Room::new(&memory);
        assert!(first.hold(800 * 1024).await.is_ok());
        let mut second = Room::new(&memory);
        let waited =
            tokio::time::timeout(std::time::Duration::from_millis(50), second.hold(400 * 1024)).await;
        assert!(waited.is_err(), "there is no room while the first body is held");
        assert!(second.waiting);
        drop(first);
        assert!(second.hold(400 * 1024).await.is_ok());
        assert!(!second.waiting);
    }
}
