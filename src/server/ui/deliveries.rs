//! The deliveries list and one delivery's page, with the buttons that
//! replay its jobs or evaluate it again.

use std::time::SystemTime;

use axum::Extension;
use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::render::page;
use super::session::Keys;
use super::{Session, message};
use crate::config::Config;
use crate::explain::format_request;
use crate::intake::{self, ReevaluateError};
use crate::server::App;
use crate::server::listing::ListQuery;
use crate::store::{
    AttemptRow, DeliveryDetail, DeliveryKey, DeliveryRow, DeliveryStatus, JobDetail, StoreError,
    StoreErrorKind,
};

/// The most of a payload a page shows.
const PAYLOAD_SHOWN: usize = 512 * 1024;

const STATUSES: [DeliveryStatus; 5] = [
    DeliveryStatus::Pending,
    DeliveryStatus::Done,
    DeliveryStatus::Dead,
    DeliveryStatus::Superseded,
    DeliveryStatus::Skipped,
];

/// A store failure as a page: what the caller can act on, never the
/// driver's words (those go to the log).
pub(super) fn store_error(e: &StoreError) -> Response {
    match e.kind() {
        StoreErrorKind::NotFound => message(StatusCode::NOT_FOUND, "Not found", &e.to_string()),
        StoreErrorKind::Ambiguous => message(
            StatusCode::CONFLICT,
            "Several deliveries",
            &format!("{e} (here: add `?source=NAME` to the address, or search the list for it)"),
        ),
        _ => {
            tracing::warn!(error = %e, "dashboard: store error");
            message(
                StatusCode::SERVICE_UNAVAILABLE,
                "Store unavailable",
                "The store cannot answer now; try again shortly.",
            )
        }
    }
}

struct Listed {
    rows: Vec<DeliveryRow>,
    next: Option<String>,
    error: Option<String>,
}

async fn read_list(app: &App, q: &ListQuery) -> Result<Listed, Response> {
    let filter = match q.filter(SystemTime::now()) {
        Ok(f) => f,
        Err(error) => {
            return Ok(Listed {
                rows: vec![],
                next: None,
                error: Some(error),
            });
        }
    };
    let rows = app.store.list(&filter).await.map_err(|e| store_error(&e))?;
    let next = (rows.len() == filter.limit)
        .then(|| rows.last().map(|r| q.page(Some(&r.id))))
        .flatten();
    Ok(Listed {
        rows,
        next,
        error: None,
    })
}

pub(super) async fn list(
    State(app): State<App>,
    Extension(s): Extension<Session>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Response {
    let q = match q {
        Ok(Query(q)) => q,
        Err(e) => return message(StatusCode::BAD_REQUEST, "Bad filter", &e.body_text()),
    };
    let listed = match read_list(&app, &q).await {
        Ok(l) => l,
        Err(r) => return r,
    };
    let config = app.config.load();
    let first_page = q.before.as_deref().is_none_or(str::is_empty);
    let status = if listed.error.is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    page(
        status,
        "deliveries.html",
        json!({
            "title": "Deliveries",
            "nav": "deliveries",
            "logout": s.login,
            "csrf": s.csrf,
            "q": &q,
            "statuses": STATUSES.map(DeliveryStatus::as_str),
            "sources": config.sources.keys().collect::<Vec<_>>(),
            "rules": config.rules.rules().iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
            "deliveries": listed.rows,
            "error": listed.error,
            "first_page": first_page,
            "live": first_page.then(|| format!("/ui/deliveries/rows?{}", q.page(None))),
            "next": listed.next,
            "newest": q.page(None),
        }),
    )
}

/// The list's rows alone, for live updates of its first page.
pub(super) async fn rows(State(app): State<App>, q: Result<Query<ListQuery>, QueryRejection>) -> Response {
    let Ok(Query(q)) = q else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    match read_list(&app, &q).await {
        Ok(l) => page(StatusCode::OK, "rows.html", json!({ "deliveries": l.rows })),
        Err(r) => r,
    }
}

/// A job as its page shows it: the stored job, and the exact request it
/// sends with secrets as `***`.
#[derive(Debug, Serialize)]
struct JobView<'a> {
    #[serde(flatten)]
    job: &'a JobDetail,
    request_text: String,
    request_error: bool,
    history: &'a [AttemptRow],
}

fn job_views<'a>(config: &Config, d: &'a DeliveryDetail) -> Vec<JobView<'a>> {
    d.jobs
        .iter()
        .map(|j| {
            let built = config
                .targets
                .get(&j.target)
                .ok_or_else(|| format!("target `{}` is no longer in the config", j.target))
                .and_then(|t| {
                    let mut request = t.request(&j.request).map_err(|e| e.to_string())?;
                    t.mark(&mut request, &j.id);
                    Ok(request)
                });
            let (request_text, request_error) = match built {
                Ok(r) => (format_request(&r, ""), false),
                Err(e) => (
                    format!(
                        "{e}\n\nAs stored:\n{}",
                        serde_json::to_string_pretty(&j.request).unwrap_or_default()
                    ),
                    true,
                ),
            };
            JobView {
                job: j,
                request_text,
                request_error,
                history: &j.history,
            }
        })
        .collect()
}

#[derive(Debug, Deserialize)]
pub(super) struct ShowQuery {
    source: Option<String>,
    /// The notice after a replay without the script (a count; anything
    /// else shows none).
    queued: Option<String>,
}

fn key(id: String, q: &ShowQuery) -> DeliveryKey {
    DeliveryKey {
        id,
        source: q.source.clone().filter(|s| !s.is_empty()),
    }
}

/// A payload as shown: pretty JSON when it is JSON and its pretty text is
/// not too large, else its text, cut at [`PAYLOAD_SHOWN`] bytes. (Pretty
/// printing can multiply a payload's size: deep nesting is indented.)
fn payload_view(payload: &[u8]) -> serde_json::Value {
    let size = payload.len();
    if size <= PAYLOAD_SHOWN
        && let Ok(v) = serde_json::from_slice::<serde_json::Value>(payload)
        && let Some(text) = pretty_within(&v, PAYLOAD_SHOWN)
    {
        return json!({ "size": size, "json": true, "truncated": false, "text": text });
    }
    let cut = &payload[..size.min(PAYLOAD_SHOWN)];
    let text = String::from_utf8_lossy(cut);
    json!({ "size": size, "json": false, "truncated": size > PAYLOAD_SHOWN, "shown": cut.len(), "text": text })
}

/// `v` pretty-printed, unless that takes more than `limit` bytes.
fn pretty_within(v: &impl Serialize, limit: usize) -> Option<String> {
    struct Capped(Vec<u8>, usize);
    impl std::io::Write for Capped {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.0.len().saturating_add(buf.len()) > self.1 {
                return Err(std::io::Error::other("over the limit"));
            }
            self.0.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut out = Capped(Vec::new(), limit);
    serde_json::to_writer_pretty(&mut out, v).ok()?;
    String::from_utf8(out.0).ok()
}

pub(super) async fn show(
    State(app): State<App>,
    Extension(s): Extension<Session>,
    Path(id): Path<String>,
    q: Result<Query<ShowQuery>, QueryRejection>,
) -> Response {
    let Ok(Query(q)) = q else {
        return message(StatusCode::BAD_REQUEST, "Bad query", "Unknown query parameters.");
    };
    let key = key(id, &q);
    let detail = match app.store.get(&key).await {
        Ok(d) => d,
        Err(e) => return store_error(&e),
    };
    // The payload by the internal id: the key may name several sources.
    let stored = match app
        .store
        .payload(&DeliveryKey {
            id: detail.row.id.clone(),
            source: None,
        })
        .await
    {
        Ok(p) => p,
        Err(e) => return store_error(&e),
    };
    let config = app.config.load();
    let notice = q
        .queued
        .as_deref()
        .and_then(|n| n.parse::<u16>().ok())
        .map(|n| queued_notice(n.into()));
    page(
        StatusCode::OK,
        "delivery.html",
        json!({
            "title": format!("Delivery {}", detail.row.delivery),
            "nav": "deliveries",
            "logout": s.login,
            "csrf": s.csrf,
            "notice": notice,
            "d": &detail.row,
            "delivery_id": &detail.row.id,
            "status": detail.row.status,
            "summary": &detail.summary,
            "deferrals": &detail.deferrals,
            "jobs": job_views(&config, &detail),
            "event": pretty_within(&detail.normalized, PAYLOAD_SHOWN)
                .unwrap_or_else(|| "(the normalized event is too large to show; `deliveries show --json` prints it)".into()),
            "headers": stored.headers.iter().collect::<Vec<_>>(),
            "payload": payload_view(&stored.payload),
        }),
    )
}

/// A delivery's jobs alone, for live updates of its page.
pub(super) async fn jobs(
    State(app): State<App>,
    Extension(s): Extension<Session>,
    Path(id): Path<String>,
) -> Response {
    let detail = match app.store.get(&DeliveryKey { id, source: None }).await {
        Ok(d) => d,
        Err(e) => return store_error(&e),
    };
    let config = app.config.load();
    page(
        StatusCode::OK,
        "jobs.html",
        json!({
            "csrf": s.csrf,
            "delivery_id": &detail.row.id,
            "status": detail.row.status,
            "jobs": job_views(&config, &detail),
        }),
    )
}

/// What a replay queued, as the page says it (after the form's reload, or
/// in place by the script).
fn queued_notice(n: usize) -> String {
    match n {
        0 => "Nothing was queued.".to_owned(),
        1 => "1 job queued; it appears below when it runs.".to_owned(),
        n => format!("{n} jobs queued; they appear below when they run."),
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct ReplayForm {
    #[serde(default)]
    csrf: String,
    job: Option<String>,
    #[serde(default)]
    reevaluate: Option<String>,
}

/// Replay one job, all of a delivery's jobs, or evaluate it again. A form
/// post is answered with the delivery's page (303); the script's request
/// (`Accept: application/json`) with what was queued.
pub(super) async fn replay(
    State(app): State<App>,
    Extension(s): Extension<Session>,
    headers: HeaderMap,
    Path(id): Path<String>,
    form: Result<Form<ReplayForm>, FormRejection>,
) -> Response {
    let json = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/json"));
    let refuse = |status: StatusCode, text: &str| {
        if json {
            (status, axum::Json(json!({ "message": text }))).into_response()
        } else {
            message(status, "Refused", text)
        }
    };
    let form = match form {
        Ok(Form(f)) => f,
        Err(e) => return refuse(e.status(), &e.body_text()),
    };
    let config = app.config.load_full();
    if !s.allows(&Keys::of(&config), &form.csrf) {
        return refuse(
            StatusCode::FORBIDDEN,
            "The form's anti-CSRF token is missing or wrong.",
        );
    }
    let key = DeliveryKey { id, source: None };
    let reevaluate = form.reevaluate.as_deref() == Some("true");
    let job = form.job.as_deref().filter(|j| !j.is_empty());
    if reevaluate && job.is_some() {
        return refuse(
            StatusCode::BAD_REQUEST,
            "`job` and `reevaluate` exclude each other: a re-evaluation makes new jobs.",
        );
    }
    let now = SystemTime::now();
    let queued = if reevaluate {
        intake::reevaluate(&config, app.store.as_ref(), &key, now)
            .await
            .map(|summary| summary.matched.len())
    } else {
        app.store
            .replay(&key, job, now)
            .await
            .map(|q| q.len())
            .map_err(ReevaluateError::Store)
    };
    let queued = match queued {
        Ok(n) => n,
        Err(ReevaluateError::Rejected(r)) => return refuse(StatusCode::BAD_REQUEST, &r.to_string()),
        Err(ReevaluateError::Store(e)) if !json => return store_error(&e),
        Err(ReevaluateError::Store(e)) => {
            let status = store_error(&e).status();
            // What the caller can act on (no such job, several sources) is
            // said; what went wrong inside is in the log.
            let text = match e.kind() {
                StoreErrorKind::NotFound | StoreErrorKind::Ambiguous => e.to_string(),
                _ => "The store could not queue the jobs; nothing changed.".to_owned(),
            };
            return refuse(status, &text);
        }
    };
    if queued > 0 {
        app.wake.notify_one();
    }
    tracing::info!(delivery = %key.id, queued, reevaluate, "replay requested from the dashboard");
    if json {
        let text = queued_notice(queued);
        return (
            StatusCode::ACCEPTED,
            axum::Json(json!({ "queued": queued, "message": text })),
        )
            .into_response();
    }
    Redirect::to(&format!("/ui/deliveries/{}?queued={queued}", key.id)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_that_pretty_printing_would_blow_up_is_shown_as_sent() {
        // 120 levels of arrays, repeated: small as sent, huge indented.
        let nested = format!("{}{}", "[".repeat(120), "]".repeat(120));
        let items = vec![nested; 1500].join(",");
        let payload = format!(r#"{{"x":[{items}]}}"#);
        assert!(payload.len() < PAYLOAD_SHOWN);
        let v = payload_view(payload.as_bytes());
        assert_eq!(v["json"], false);
        assert!(v["text"].as_str().unwrap().len() <= PAYLOAD_SHOWN);
        let small = payload_view(br#"{"a":[1,2]}"#);
        assert_eq!(small["json"], true);
        assert!(small["text"].as_str().unwrap().contains("\n"));
    }
}
