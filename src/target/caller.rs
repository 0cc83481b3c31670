//! The calls hookbridge makes to a CI's API besides the trigger itself
//! (cancels, reconcile reads): one target, one token, the token redacted
//! from everything kept, and the answer sorted into what the caller acts on.

use std::time::{Duration, SystemTime};

use super::client::{SendError, Transport};
use super::outbound::json_headers;
use super::redact::Redactor;
use super::{
    Credential, Header, OutboundRequest, REDACTED, Response, error_message, retry_after, truncate_body,
};
use crate::config::secret::Secret;

/// Response bytes kept for the attempt record.
const KEPT: usize = 2048;

/// The last answer of an attempt, for its record (token redacted).
#[derive(Debug, Clone, Default)]
pub struct Exchange {
    pub status: Option<u16>,
    pub response: Option<String>,
}

/// A call's answer: its 2xx, a 404, or why the calls stop here.
pub(crate) enum Step {
    Ok(Response),
    NotFound,
    Stop(Stop),
}

/// Why a sequence of calls stopped: worth another try later, or not.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Stop {
    Retry { reason: String, after: Option<Duration> },
    Permanent(String),
}

/// The calls of one attempt, on one target with one token.
pub(crate) struct Caller<'a> {
    pub transport: &'a dyn Transport,
    pub token: &'a Secret,
    /// The header the token goes in, as it is.
    pub header: &'static str,
    pub timeout: Duration,
    pub now: SystemTime,
    pub redact: Redactor,
    pub last: Exchange,
}

impl<'a> Caller<'a> {
    /// Calls with `token` in the header `header`, as it is.
    pub(crate) fn new(
        transport: &'a dyn Transport,
        token: &'a Secret,
        header: &'static str,
        timeout: Duration,
        now: SystemTime,
    ) -> Caller<'a> {
        Caller {
            transport,
            token,
            header,
            timeout,
            now,
            redact: Redactor::new(token.expose()),
            last: Exchange::default(),
        }
    }

    pub(crate) async fn call(&mut self, method: &'static str, url: String) -> Step {
        // A call without an answer leaves no earlier call's answer behind.
        self.last = Exchange::default();
        // JSON's headers but the body's type (calls without a body), the
        // token's header first.
        let mut headers = vec![Header {
            name: self.header.into(),
            value: REDACTED.to_owned(),
        }];
        headers.extend(json_headers().into_iter().filter(|h| h.name != "Content-Type"));
        let request = OutboundRequest {
            method,
            url,
            headers,
            body: serde_json::Value::Null,
            encoding: super::Encoding::Json,
            credential: Credential::Header(self.header.into()),
        };
        let response = match self
            .transport
            .send(&request, Some(self.token), self.timeout)
            .await
        {
            Ok(r) => r,
            Err(e @ SendError::Build(_)) => {
                return Step::Stop(Stop::Permanent(self.redact.text(&e.to_string())));
            }
            Err(e) => {
                return Step::Stop(Stop::Retry {
                    reason: self.redact.text(&e.to_string()),
                    after: None,
                });
            }
        };
        let body = self.redact.bytes(response.body.to_vec());
        self.last = Exchange {
            status: Some(response.status),
            response: Some(truncate_body(&body, KEPT)).filter(|r| !r.is_empty()),
        };
        let status = response.status;
        let message = || self.redact.text(&error_message(&body));
        match status {
            200..=299 => Step::Ok(Response {
                status,
                headers: response.headers,
                body: body.into(),
            }),
            404 => Step::NotFound,
            408 | 425 | 429 | 500..=599 => Step::Stop(Stop::Retry {
                reason: format!("HTTP {status}: {}", message()),
                after: retry_after(&response.headers, self.now),
            }),
            _ => Step::Stop(Stop::Permanent(format!("HTTP {status}: {}", message()))),
        }
    }
}
