//! Senders and their signature schemes: one file per provider.
//!
//! A source turns an [`Inbound`] request into a [`Verified`] payload (outside
//! this crate the only way to obtain one is to pass [`Scheme::verify`]; inside
//! it, the offline tools say so by calling `assume_authentic`), and a
//! verified payload into a normalized [`Event`] with [`Scheme::describe`].
//! Verification always runs over the raw bytes, before anything parses them.
//!
//! Keys and tokens are decoded when the config loads and kept in redacting
//! types ([`crate::config::secret::HmacKey`], [`crate::config::secret::Secret`]), so `{:?}`
//! of a source prints `***` for every one of them.
//!
//! Adding a provider is adding a file with a [`Scheme`] implementation and one
//! line in [`build`].

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::time::SystemTime;

use http::HeaderMap;

use crate::event::Event;
pub use build::{SourceKind, build};
pub(crate) use keys::{hmac_keys, required_secrets, whsec_keys};

pub mod azure;
pub mod bitbucket;
mod build;
pub mod circleci;
mod commit;
pub mod gitea;
pub mod github;
pub mod gitlab;
pub mod hmac;
mod keys;
pub mod signature;
pub mod standard;

#[cfg(test)]
mod props;

/// An HTTP request as received, before anyone trusts it.
pub struct Inbound<'a> {
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
    /// The clock used for timestamp tolerances (injectable for tests).
    pub now: SystemTime,
}

impl<'a> Inbound<'a> {
    pub fn new(headers: &'a HeaderMap, body: &'a [u8]) -> Self {
        Inbound {
            headers,
            body,
            now: SystemTime::now(),
        }
    }

    /// A header's value, trimmed; empty values count as absent.
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    }

    /// True when the body is `application/x-www-form-urlencoded`.
    pub fn is_form(&self) -> bool {
        self.header("content-type").is_some_and(|ct| {
            ct.to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        })
    }

    /// The JSON inside a form body's `payload` field, decoded to the exact bytes
    /// the sender encoded. `form_urlencoded::parse` would replace invalid UTF-8
    /// with U+FFFD, which hides a broken payload (and changes the bytes Gitea
    /// signs); the UTF-8 check is [`require_utf8`]'s, after verification.
    pub fn form_payload(&self) -> Result<Vec<u8>, VerifyError> {
        self.body
            .split(|b| *b == b'&')
            .find_map(|pair| {
                let (key, value) = match pair.iter().position(|b| *b == b'=') {
                    Some(i) => (&pair[..i], &pair[i + 1..]),
                    None => (pair, &[][..]),
                };
                is_payload_key(key).then(|| form_decode(value))
            })
            .ok_or(VerifyError::NoFormPayload)
    }
}

/// Whether an encoded form name decodes to `payload`, without allocating: a
/// body of millions of `a&a&...` pairs can arrive before verification (Gitea
/// signs the decoded field, so it is decoded first). A raw `+` is a space,
/// which `payload` does not contain.
fn is_payload_key(encoded: &[u8]) -> bool {
    !encoded.contains(&b'+') && percent_encoding::percent_decode(encoded).eq(b"payload".iter().copied())
}

/// One `application/x-www-form-urlencoded` name or value: `+` is a space, `%XX` a byte.
fn form_decode(encoded: &[u8]) -> Vec<u8> {
    let spaced: Cow<'_, [u8]> = if encoded.contains(&b'+') {
        Cow::Owned(
            encoded
                .iter()
                .map(|&b| if b == b'+' { b' ' } else { b })
                .collect(),
        )
    } else {
        Cow::Borrowed(encoded)
    };
    // Decoding only shrinks: one allocation, even for a payload of megabytes.
    let mut decoded = Vec::with_capacity(spaced.len());
    decoded.extend(percent_encoding::percent_decode(&spaced));
    decoded
}

/// Refuse a payload that is not UTF-8. Every source's payload is JSON, and JSON
/// text is UTF-8 (RFC 8259, section 8.1); GitHub asks receivers to treat it so.
/// serde_json checks the encoding only of the strings it keeps, so invalid bytes
/// inside a field nobody reads would otherwise be accepted, stored, and handed
/// to rules and templates as text. Runs after verification, so only an
/// authentic but broken delivery gets this answer (400).
pub(crate) fn require_utf8(payload: &[u8]) -> Result<(), DescribeError> {
    std::str::from_utf8(payload)
        .map(drop)
        .map_err(|e| DescribeError::NotUtf8 {
            offset: e.valid_up_to(),
        })
}

/// The longest delivery id kept. Providers send 36-character UUIDs or short
/// `msg_...` ids; anything far longer is not an id.
pub const MAX_DELIVERY_ID: usize = 256;

/// Refuse a delivery id (from a header or the body) that cannot serve as one:
/// empty, longer than [`MAX_DELIVERY_ID`], or holding control characters.
/// It is the key deliveries are deduplicated by, shown in logs and tables.
pub(crate) fn check_delivery_id(id: &str) -> Result<(), DescribeError> {
    let problem = if id.trim().is_empty() {
        "it is empty"
    } else if id.len() > MAX_DELIVERY_ID {
        "it is longer than 256 bytes"
    } else if id.chars().any(char::is_control) {
        "it holds control characters"
    } else {
        return Ok(());
    };
    Err(DescribeError::BadDeliveryId(problem))
}

/// A payload whose authenticity a [`Scheme`] has checked. Only this module can make one.
pub struct Verified<'a> {
    payload: Cow<'a, [u8]>,
}

impl<'a> Verified<'a> {
    fn new(payload: Cow<'a, [u8]>) -> Self {
        Verified { payload }
    }

    /// The JSON payload (for form deliveries, the decoded `payload` field).
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    pub fn into_payload(self) -> Vec<u8> {
        self.payload.into_owned()
    }

    /// The payload as [`bytes::Bytes`]; when it is the request body as received
    /// (not a decoded form field), a view of `body` rather than a copy, which
    /// matters for payloads of several megabytes.
    pub fn into_payload_bytes(self, body: &bytes::Bytes) -> bytes::Bytes {
        match self.payload {
            Cow::Borrowed(b) if is_within(b, body) => body.slice_ref(b),
            Cow::Borrowed(b) => bytes::Bytes::copy_from_slice(b),
            Cow::Owned(v) => bytes::Bytes::from(v),
        }
    }
}

/// Whether `part` lies inside `whole` (so [`bytes::Bytes::slice_ref`] accepts it).
fn is_within(part: &[u8], whole: &[u8]) -> bool {
    let (start, end) = (whole.as_ptr() as usize, whole.as_ptr() as usize + whole.len());
    let p = part.as_ptr() as usize;
    p >= start && p + part.len() <= end
}

/// Treat a request as authentic without checking it: the offline tools
/// (`explain` without `--verify`, `test`) describe payloads that carry no
/// signature and never store or trigger anything. Crate-private, and reached
/// only through [`crate::intake::Trust::AssumeAuthentic`], so no caller can
/// forge a [`Verified`] without naming that trust.
pub(crate) fn assume_authentic<'a>(inbound: &Inbound<'a>) -> Result<Verified<'a>, VerifyError> {
    let payload = if inbound.is_form() {
        Cow::Owned(inbound.form_payload()?)
    } else {
        Cow::Borrowed(inbound.body)
    };
    Ok(Verified::new(payload))
}

/// Why a request was not accepted as authentic. Messages never include a
/// secret, a computed signature, or which of several secrets was tried.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("missing `{0}` header")]
    MissingHeader(Cow<'static, str>),
    #[error("`{0}` header is malformed: {1}")]
    Malformed(Cow<'static, str>, String),
    #[error("signature does not match")]
    Mismatch,
    #[error("`{0}` does not match")]
    TokenMismatch(Cow<'static, str>),
    #[error("webhook-timestamp is {skew_secs}s away from now; the tolerance is {tolerance_secs}s")]
    Stale { skew_secs: u64, tolerance_secs: u64 },
    #[error("the source has no usable secret configured")]
    NoSecret,
    /// A signature the source has no key for: not checked, and not replaced
    /// by a weaker check.
    #[error(
        "the delivery is signed (`{0}`) but the source has no `{1}` to check it with; add the sender's signing key there"
    )]
    SignedWithoutKey(&'static str, &'static str),
    #[error("form body has no `payload` field")]
    NoFormPayload,
}

impl VerifyError {
    /// 400 for requests that are unreadable, 401 for requests that are not authentic.
    pub fn status(&self) -> http::StatusCode {
        match self {
            VerifyError::NoFormPayload => http::StatusCode::BAD_REQUEST,
            _ => http::StatusCode::UNAUTHORIZED,
        }
    }
}

/// Why a verified payload could not be described.
#[derive(Debug, thiserror::Error)]
pub enum DescribeError {
    #[error("missing `{0}` header: cannot tell which event this is")]
    MissingEventHeader(Cow<'static, str>),
    #[error("body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error(
        "payload is not valid UTF-8 (the first invalid byte is at offset {offset}); webhook payloads are JSON, which is always UTF-8"
    )]
    NotUtf8 { offset: usize },
    #[error("the delivery id cannot be used: {0}")]
    BadDeliveryId(&'static str),
    #[error("{0}")]
    Unreadable(String),
}

/// Parse a typed view of a payload, mapping serde errors to [`DescribeError`].
pub fn parse<'de, T: serde::Deserialize<'de>>(payload: &'de [u8]) -> Result<T, DescribeError> {
    serde_json::from_slice(payload).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            DescribeError::InvalidJson(e.to_string())
        } else {
            DescribeError::Unreadable(format!("payload does not have the expected shape: {e}"))
        }
    })
}

/// One provider's scheme: verification, description, and signing for tests.
pub trait Scheme: Send + Sync + fmt::Debug {
    /// Check the request's signature or token over the raw bytes.
    fn verify<'a>(&self, inbound: &Inbound<'a>) -> Result<Verified<'a>, VerifyError>;

    /// Turn a verified payload into a normalized event.
    fn describe(
        &self,
        source: &str,
        inbound: &Inbound<'_>,
        verified: &Verified<'_>,
    ) -> Result<Event, DescribeError>;

    /// The headers this provider's sender would attach to `body` (`hookbridge sign`).
    fn sign(&self, body: &[u8], now: SystemTime) -> Result<Vec<(String, String)>, String>;

    /// The headers that name `event` the way this provider's sender does
    /// (`X-GitHub-Event: push`); used by `sign --event`, `explain` and `test`.
    fn event_headers(&self, event: &str) -> Vec<(String, String)> {
        let _ = event;
        Vec::new()
    }

    /// Headers that carry credentials for this scheme, beyond the common ones.
    fn credential_headers(&self) -> Vec<String> {
        Vec::new()
    }
}

/// A configured source: its name and the scheme that checks it.
#[derive(Debug)]
pub struct Source {
    pub name: String,
    pub kind: SourceKind,
    pub scheme: Box<dyn Scheme>,
}

/// Headers that carry credentials for any scheme; never shown to rules or stored.
pub const CREDENTIAL_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-hub-signature",
    "x-hub-signature-256",
    "x-gitlab-token",
    "webhook-signature",
    "svix-signature",
    "x-gitea-signature",
    "x-gogs-signature",
    "x-forgejo-signature",
    "circleci-signature",
    // Credentials a proxy or another sender may add: never needed by a rule.
    "x-forwarded-authorization",
    "private-token",
    "job-token",
    "circle-token",
    "x-api-key",
    "x-auth-token",
    "x-access-token",
    "set-cookie",
];

impl Source {
    /// The request headers rules may see: lower-cased names, credentials removed.
    pub fn visible_headers(&self, headers: &HeaderMap) -> BTreeMap<String, String> {
        let extra = self.scheme.credential_headers();
        let mut out: BTreeMap<String, String> = BTreeMap::new();
        for (name, value) in headers {
            let name = name.as_str();
            if CREDENTIAL_HEADERS.contains(&name) || extra.iter().any(|h| h == name) {
                continue;
            }
            let value = String::from_utf8_lossy(value.as_bytes());
            out.entry(name.to_owned())
                .and_modify(|v| {
                    v.push_str(", ");
                    v.push_str(&value);
                })
                .or_insert_with(|| value.into_owned());
        }
        out
    }
}

/// The delivery id from the first present header, else a digest of the body.
pub(crate) fn delivery_id(inbound: &Inbound<'_>, headers: &[&str]) -> String {
    headers
        .iter()
        .find_map(|h| inbound.header(h))
        .map(str::to_owned)
        .unwrap_or_else(|| signature::body_digest(inbound.body))
}

#[cfg(test)]
mod tests;
