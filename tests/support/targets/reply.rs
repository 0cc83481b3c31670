//! Scripted replies, and the plain answers every API shares.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// A scripted reply for the next trigger call (any API but `jenkins-queue`),
/// used before the normal (successful) behaviour resumes.
#[derive(Debug, Clone)]
pub(crate) enum Reply {
    /// This status, body `{"message": "scripted <status>"}`.
    Status(u16),
    /// This status, body `{"message": <message>}`.
    Message(u16, String),
    /// This status with these headers, body `{"message": "scripted <status>"}`.
    Headers(u16, Vec<(&'static str, String)>),
    /// This status, these headers, this JSON body.
    Json(u16, Vec<(&'static str, String)>, Value),
    /// This status and headers with `x-ratelimit-remaining: 0` and
    /// `x-ratelimit-reset` = unix time at the answer + `secs` (GitHub's
    /// primary rate limit).
    RateLimitReset(u16, u64),
    /// This status with this body, verbatim (an HTML error page, say).
    Body(u16, String),
    /// Never answer (the client times out or goes away).
    Hang,
}

impl Reply {
    /// `status` with `Retry-After: <secs>`.
    pub(crate) fn retry_after(status: u16, secs: u64) -> Reply {
        Reply::Headers(status, vec![("retry-after", secs.to_string())])
    }

    /// GitHub's primary rate limit: 403, remaining 0, reset in `secs`.
    pub(crate) fn github_rate_limit(secs: u64) -> Reply {
        Reply::RateLimitReset(403, secs)
    }

    /// GitHub's secondary rate limit: 403, its message, and `retry-after` if given.
    pub(crate) fn github_secondary_rate_limit(retry_after: Option<u64>) -> Reply {
        let headers = retry_after
            .map(|s| vec![("retry-after", s.to_string())])
            .unwrap_or_default();
        Reply::Json(
            403,
            headers,
            json!({
                "message": "You have exceeded a secondary rate limit. Please wait a few minutes before you try again. If you reach out to GitHub Support for help, please include the request ID ABCD:1234:5678.",
                "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api#about-secondary-rate-limits",
                "status": "403",
            }),
        )
    }
}

/// `status` with the body `{"message": text}`.
pub(super) fn message(status: u16, text: &str) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        axum::Json(json!({ "message": text })),
    )
        .into_response()
}

fn with_headers(mut response: Response, headers: Vec<(&'static str, String)>) -> Response {
    for (name, value) in headers {
        response
            .headers_mut()
            .insert(name, HeaderValue::from_str(&value).unwrap());
    }
    response
}

fn scripted(reply: Reply) -> Response {
    match reply {
        Reply::Status(code) => message(code, &format!("scripted {code}")),
        Reply::Message(code, text) => message(code, &text),
        Reply::Headers(code, headers) => with_headers(message(code, &format!("scripted {code}")), headers),
        Reply::Json(code, headers, body) => with_headers(
            (StatusCode::from_u16(code).unwrap(), axum::Json(body)).into_response(),
            headers,
        ),
        Reply::RateLimitReset(code, secs) => with_headers(
            message(
                code,
                "API rate limit exceeded for user ID 1. If you reach out to GitHub Support for help, please include the request ID ABCD:1234:5678.",
            ),
            vec![
                ("x-ratelimit-limit", "5000".into()),
                ("x-ratelimit-remaining", "0".into()),
                ("x-ratelimit-used", "5000".into()),
                ("x-ratelimit-reset", (super::super::unix_now() + secs).to_string()),
                ("x-ratelimit-resource", "core".into()),
            ],
        ),
        Reply::Body(code, body) => (StatusCode::from_u16(code).unwrap(), body).into_response(),
        Reply::Hang => unreachable!("handled before"),
    }
}

/// The answer to a call that passed every check: the scripted `reply` if
/// there is one, else `normal()`. `Reply::Hang` sets `hung` (the handler
/// then never answers) and gives 504 for the record.
pub(super) fn scripted_or(
    reply: Option<Reply>,
    hung: &mut bool,
    normal: impl FnOnce() -> Response,
) -> Response {
    match reply {
        None => normal(),
        Some(Reply::Hang) => {
            *hung = true;
            StatusCode::GATEWAY_TIMEOUT.into_response()
        }
        Some(reply) => scripted(reply),
    }
}
