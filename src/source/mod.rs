//! Senders and their signature schemes: one file per provider.
//!
//! A source turns an [`Inbound`] request into a [`Verified`] payload (outside
//! this crate the only way to obtain one is to pass [`Scheme::verify`]; inside
//! it, the offline tools say so by calling `assume_authentic`), and a
//! verified payload into a normalized [`Event`] with [`Scheme::describe`].
//! Verification always runs over the raw bytes, before anything parses them.
//!
//! Keys and tokens are decoded when the config loads and kept in redacting
//! types ([`crate::config::HmacKey`], [`crate::config::Secret`]), so `{:?}`
//! of a source prints `***` for every one of them.
//!
//! Adding a provider is adding a file with a [`Scheme`] implementation and one
//! line in [`build`].

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::time::SystemTime;

use http::HeaderMap;

use crate::config::raw::RawSource;
use crate::config::{Diagnostic, Loader};
use crate::event::Event;
pub(crate) use keys::{hmac_keys, required_secrets, whsec_keys};

pub mod azure;
pub mod bitbucket;
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
pub fn require_utf8(payload: &[u8]) -> Result<(), DescribeError> {
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
pub fn check_delivery_id(id: &str) -> Result<(), DescribeError> {
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
    MissingHeader(&'static str),
    #[error("`{0}` header is malformed: {1}")]
    Malformed(&'static str, String),
    #[error("signature does not match")]
    Mismatch,
    #[error("`{0}` does not match")]
    TokenMismatch(&'static str),
    #[error("webhook-timestamp is {skew_secs}s away from now; the tolerance is {tolerance_secs}s")]
    Stale { skew_secs: u64, tolerance_secs: u64 },
    #[error("the source has no usable secret configured")]
    NoSecret,
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
    MissingEventHeader(&'static str),
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

/// The `type` of a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    Github,
    Gitlab,
    Bitbucket,
    Gitea,
    Forgejo,
    Gogs,
    AzureDevops,
    Standard,
    Hmac,
}

impl SourceKind {
    pub const ALL: [(&'static str, SourceKind); 9] = [
        ("github", SourceKind::Github),
        ("gitlab", SourceKind::Gitlab),
        ("bitbucket", SourceKind::Bitbucket),
        ("gitea", SourceKind::Gitea),
        ("forgejo", SourceKind::Forgejo),
        ("gogs", SourceKind::Gogs),
        ("azure-devops", SourceKind::AzureDevops),
        ("standard", SourceKind::Standard),
        ("hmac", SourceKind::Hmac),
    ];

    pub fn parse(s: &str) -> Option<SourceKind> {
        Self::ALL.iter().find(|(n, _)| *n == s).map(|(_, k)| *k)
    }

    pub fn as_str(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, k)| *k == self)
            .map(|(n, _)| *n)
            .unwrap_or("unknown")
    }

    /// Keys besides `type` that this kind accepts.
    fn settings(self) -> &'static [&'static str] {
        match self {
            SourceKind::Github => &["secrets"],
            SourceKind::Gitlab => &["secrets", "signing_secrets", "tolerance"],
            SourceKind::Bitbucket => &["secrets", "basic_auth"],
            SourceKind::Gitea | SourceKind::Forgejo | SourceKind::Gogs => &["secrets"],
            SourceKind::AzureDevops => &["secrets"],
            SourceKind::Standard => &["secrets", "tolerance"],
            SourceKind::Hmac => &[
                "secrets",
                "header",
                "algorithm",
                "encoding",
                "prefix",
                "event_header",
                "event",
                "delivery_header",
            ],
        }
    }
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

/// Build a source from its config table, reporting every problem with its span.
pub fn build(name: &str, raw: &toml::Spanned<RawSource>, loader: &mut Loader) -> Option<Source> {
    let raw_ref = raw.get_ref();
    let Some(kind) = SourceKind::parse(raw_ref.kind.get_ref()) else {
        let names: Vec<&str> = SourceKind::ALL.iter().map(|(n, _)| *n).collect();
        let mut d = Diagnostic::error(
            format!("source `{name}`: unknown type `{}`", raw_ref.kind.get_ref()),
            Some(raw_ref.kind.span()),
        )
        .with_help(format!("types are {}", names.join(", ")));
        if let Some(s) = crate::config::suggest(raw_ref.kind.get_ref(), names.iter().copied()) {
            d = d.with_help(format!("did you mean `{s}`?"));
        }
        loader.push(d);
        return None;
    };
    let allowed = kind.settings();
    for (key, span) in present_settings(raw_ref) {
        if !allowed.contains(&key) {
            loader.push(
                Diagnostic::error(
                    format!(
                        "source `{name}`: `{key}` is not a setting of `{}` sources",
                        kind.as_str()
                    ),
                    Some(span),
                )
                .with_help(format!(
                    "`{}` sources take: type, {}",
                    kind.as_str(),
                    allowed.join(", ")
                )),
            );
        }
    }
    let errors_before = loader.error_count();
    let scheme: Box<dyn Scheme> = match kind {
        SourceKind::Github => Box::new(github::GitHub::build(name, raw_ref, loader)),
        SourceKind::Gitlab => Box::new(gitlab::GitLab::build(name, raw_ref, loader)),
        SourceKind::Bitbucket => Box::new(bitbucket::Bitbucket::build(name, raw_ref, loader)),
        SourceKind::Gitea => Box::new(gitea::Gitea::build(name, raw_ref, loader, gitea::Flavor::Gitea)),
        SourceKind::Forgejo => Box::new(gitea::Gitea::build(name, raw_ref, loader, gitea::Flavor::Forgejo)),
        SourceKind::Gogs => Box::new(gitea::Gitea::build(name, raw_ref, loader, gitea::Flavor::Gogs)),
        SourceKind::AzureDevops => Box::new(azure::AzureDevops::build(name, raw_ref, loader)),
        SourceKind::Standard => Box::new(standard::Standard::build(name, raw_ref, loader)),
        SourceKind::Hmac => Box::new(hmac::GenericHmac::build(name, raw_ref, loader)),
    };
    (loader.error_count() == errors_before).then(|| Source {
        name: name.to_owned(),
        kind,
        scheme,
    })
}

fn present_settings(raw: &RawSource) -> Vec<(&'static str, std::ops::Range<usize>)> {
    let mut out = Vec::new();
    macro_rules! key {
        ($field:ident) => {
            if let Some(v) = &raw.$field {
                out.push((stringify!($field), v.span()));
            }
        };
    }
    key!(secrets);
    key!(signing_secrets);
    key!(basic_auth);
    key!(tolerance);
    key!(header);
    key!(algorithm);
    key!(encoding);
    key!(prefix);
    key!(event_header);
    key!(event);
    key!(delivery_header);
    out
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
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn form(body: &[u8]) -> Result<Vec<u8>, VerifyError> {
        let mut h = HeaderMap::new();
        h.insert(
            "content-type",
            http::HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        Inbound::new(&h, body).form_payload()
    }

    proptest! {
        #[test]
        fn delivery_ids_are_kept_only_when_usable(id in "\\PC{0,300}|[\\x00-\\x7f]{0,40}") {
            match check_delivery_id(&id) {
                Ok(()) => {
                    prop_assert!(!id.trim().is_empty() && id.len() <= MAX_DELIVERY_ID);
                    prop_assert!(!id.chars().any(char::is_control));
                }
                Err(e) => prop_assert!(!e.to_string().contains(&id) || id.trim().is_empty()),
            }
        }
    }

    #[test]
    fn real_delivery_ids_are_usable() {
        for id in [
            "72d3162e-cc78-11e3-81ab-4c9367dc0958",
            "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W",
            "{7c9f6bd0-7a4e-4f4a-8f0e-35a4b2b63a11}",
        ] {
            assert!(check_delivery_id(id).is_ok(), "{id}");
        }
        assert!(check_delivery_id(&"a".repeat(257)).is_err());
        assert!(check_delivery_id("a\nb").is_err());
        assert!(check_delivery_id(" ").is_err());
    }

    #[test]
    fn form_payload_keeps_the_bytes_the_sender_encoded() {
        assert_eq!(form(b"a=1&payload=%7B%22x%22%3A+1%7D").unwrap(), br#"{"x": 1}"#);
        // Invalid UTF-8 stays invalid for `require_utf8` to refuse, not U+FFFD.
        let raw = form(b"payload=%7B%22x%22%3A%22%FF%22%7D").unwrap();
        assert_eq!(raw, b"{\"x\":\"\xff\"}");
        assert_eq!(
            require_utf8(&raw).unwrap_err().to_string(),
            "payload is not valid UTF-8 (the first invalid byte is at offset 6); webhook payloads are JSON, which is always UTF-8"
        );
        assert_eq!(form(b"pay=x&payloads=y"), Err(VerifyError::NoFormPayload));
        assert_eq!(form(b"payload").unwrap(), b"");
    }

    /// Form bodies made of the pieces that matter: names, separators, escapes
    /// (valid, truncated, non-UTF-8) and arbitrary bytes.
    fn form_body() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            Just(b"payload".to_vec()),
            Just(b"pay%6Coad".to_vec()),
            Just(b"=".to_vec()),
            Just(b"&".to_vec()),
            Just(b"+".to_vec()),
            Just(b"%".to_vec()),
            Just(b"%FF".to_vec()),
            "%[0-9a-fA-F]{2}".prop_map(String::into_bytes),
            prop::collection::vec(any::<u8>(), 1..4),
        ];
        prop::collection::vec(piece, 0..16).prop_map(|v| v.concat())
    }

    proptest! {
        /// For any form body, the `payload` field decodes like `form_urlencoded`
        /// whenever that decoding is lossless (valid UTF-8), and never panics.
        #[test]
        fn form_payload_agrees_with_form_urlencoded(body in form_body()) {
            let ours = form(&body);
            let theirs = form_urlencoded::parse(&body).find(|(k, _)| k == "payload").map(|(_, v)| v.into_owned());
            match (ours, theirs) {
                (Ok(bytes), Some(text)) => {
                    if let Ok(s) = std::str::from_utf8(&bytes) {
                        prop_assert_eq!(s, text);
                    }
                }
                (Err(VerifyError::NoFormPayload), None) => {}
                // A key that only decodes to `payload` lossily is not `payload`.
                (Err(VerifyError::NoFormPayload), Some(_)) => {}
                (ours, theirs) => prop_assert!(false, "{ours:?} vs {theirs:?}"),
            }
        }

        #[test]
        fn require_utf8_accepts_exactly_utf8(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            prop_assert_eq!(require_utf8(&bytes).is_ok(), std::str::from_utf8(&bytes).is_ok());
        }

        #[test]
        fn encoded_text_round_trips(text in any::<String>()) {
            let body: String = form_urlencoded::Serializer::new(String::new())
                .append_pair("payload", &text)
                .finish();
            prop_assert_eq!(form(body.as_bytes()).unwrap(), text.into_bytes());
        }
    }
}
