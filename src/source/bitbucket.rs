//! Bitbucket Cloud and Data Center: `X-Hub-Signature: sha256=<hex>` (the prefix
//! names the hash; on GitHub the same header means SHA-1), `X-Event-Key`,
//! delivery id from `X-Request-UUID` (Cloud) or `X-Request-Id` (DC), and
//! optional HTTP basic auth on Data Center. Both sign with HMAC-SHA256 only,
//! so a `sha1=` signature is refused (401) rather than checked.
//!
//! A push may change several refs; the first becomes the event's own `ref` and
//! all of them are listed in `event.changes`. Bitbucket payloads never list
//! changed files, so `event.paths` is unknown.

use std::borrow::Cow;
use std::time::SystemTime;

use super::signature::{self, Algorithm};

mod payload;
use super::{DescribeError, Inbound, Scheme, Verified, VerifyError, delivery_id, hmac_keys};
use crate::config::diagnostic::Diagnostic;
use crate::config::loader::Loader;
use crate::config::raw::RawSource;
use crate::config::secret::{HmacKey, Secret};
use crate::event::Event;
use payload::describe;

#[derive(Debug)]
pub struct Bitbucket {
    /// Webhook secrets as HMAC keys; any one of them verifies (rotation).
    keys: Vec<HmacKey>,
    /// Data Center basic-auth credentials, `user:password`.
    basic_auth: Vec<Secret>,
    signature_required: bool,
    basic_required: bool,
}

impl Bitbucket {
    pub fn build(name: &str, raw: &RawSource, loader: &mut Loader) -> Self {
        let secrets = raw
            .secrets
            .as_ref()
            .map(|l| loader.secrets(l))
            .unwrap_or_default();
        let basic_auth = raw
            .basic_auth
            .as_ref()
            .map(|l| loader.secrets_with_spans(l))
            .unwrap_or_default();
        let signature_required = raw.secrets.as_ref().is_some_and(|l| !l.get_ref().is_empty());
        let basic_required = raw.basic_auth.as_ref().is_some_and(|l| !l.get_ref().is_empty());
        if !signature_required && !basic_required {
            loader.push(Diagnostic::error(
                format!("source `{name}`: set `secrets` (webhook secret) or `basic_auth` (\"user:password\"); hookbridge does not accept unauthenticated webhooks"),
                Some(raw.kind.span()),
            ));
        }
        check_basic_credentials(name, "basic_auth", &basic_auth, loader);
        Bitbucket {
            keys: hmac_keys(&secrets),
            basic_auth: basic_auth.into_iter().map(|(s, _)| s).collect(),
            signature_required,
            basic_required,
        }
    }

    pub fn with_secrets(secrets: &[Secret]) -> Self {
        Bitbucket {
            keys: hmac_keys(secrets),
            basic_auth: Vec::new(),
            signature_required: true,
            basic_required: false,
        }
    }
}

/// Check `Authorization: Basic` against "user:password" credentials in constant time.
/// Each of `credentials` (from `key`) must be `"user:password"` with a
/// password: `":"` or `"user:"` (say, `"${USER}:${PASS}"` rendered with both
/// unset) would accept anyone who sends them, which is no authentication.
pub(super) fn check_basic_credentials(
    name: &str,
    key: &str,
    credentials: &[(Secret, std::ops::Range<usize>)],
    loader: &mut Loader,
) {
    for (secret, span) in credentials {
        let problem = match secret.expose().split_once(':') {
            None => "must be \"user:password\"",
            Some((_, password)) if password.trim().is_empty() => {
                "need a password: \"user:\" with an empty one accepts anyone who sends it"
            }
            Some(_) => continue,
        };
        loader.push(Diagnostic::error(
            format!("source `{name}`: {key} credentials {problem}"),
            Some(span.clone()),
        ));
    }
}

pub(super) fn verify_basic(inbound: &Inbound<'_>, credentials: &[Secret]) -> Result<(), VerifyError> {
    use base64::Engine as _;
    let value = inbound
        .header("authorization")
        .ok_or(VerifyError::MissingHeader("Authorization".into()))?;
    // The scheme's name is case-insensitive (RFC 9110, 11.1).
    let encoded = value
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
        .map(|(_, encoded)| encoded)
        .ok_or_else(|| VerifyError::Malformed("Authorization".into(), "expected `Basic <base64>`".into()))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| VerifyError::Malformed("Authorization".into(), "not base64".into()))?;
    if credentials.is_empty() {
        return Err(VerifyError::NoSecret);
    }
    if signature::token_matches(&decoded, credentials) {
        Ok(())
    } else {
        Err(VerifyError::TokenMismatch("Authorization".into()))
    }
}

impl Scheme for Bitbucket {
    fn event_headers(&self, event: &str) -> Vec<(String, String)> {
        vec![("X-Event-Key".into(), event.into())]
    }

    fn verify<'a>(&self, inbound: &Inbound<'a>) -> Result<Verified<'a>, VerifyError> {
        if self.basic_required {
            verify_basic(inbound, &self.basic_auth)?;
        }
        if self.signature_required {
            let value = inbound
                .header("x-hub-signature")
                .ok_or(VerifyError::MissingHeader("X-Hub-Signature".into()))?;
            signature::verify_prefixed_hex(
                &self.keys,
                value,
                "X-Hub-Signature",
                Algorithm::Sha256,
                &[inbound.body],
            )?;
        }
        Ok(Verified::new(Cow::Borrowed(inbound.body)))
    }

    fn describe(
        &self,
        source: &str,
        inbound: &Inbound<'_>,
        verified: &Verified<'_>,
    ) -> Result<Event, DescribeError> {
        let name = inbound
            .header("x-event-key")
            .ok_or(DescribeError::MissingEventHeader("X-Event-Key".into()))?;
        let delivery = delivery_id(inbound, &["x-request-uuid", "x-request-id"]);
        describe(source, name, delivery, verified.payload())
    }

    fn sign(&self, body: &[u8], _now: SystemTime) -> Result<Vec<(String, String)>, String> {
        let mut out = Vec::new();
        if let Some(key) = self.keys.first() {
            let mac = signature::hmac(Algorithm::Sha256, key.expose(), &[body]);
            out.push(("X-Hub-Signature".into(), format!("sha256={}", hex::encode(mac))));
        }
        if let Some(creds) = self.basic_auth.first() {
            use base64::Engine as _;
            let encoded = base64::engine::general_purpose::STANDARD.encode(creds.expose());
            out.push(("Authorization".into(), format!("Basic {encoded}")));
        }
        if out.is_empty() {
            return Err("the source has no secret to sign with".into());
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_plugin_vector() {
        let body = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/payloads/bitbucket-cloud/repo-push-signed.json"
        ))
        .unwrap();
        let b = Bitbucket::with_secrets(&[Secret::new("Gkvl$k$wyNpQAF42")]);
        let mut h = http::HeaderMap::new();
        h.insert(
            "x-hub-signature",
            "sha256=f205c729821c6954aff2afe72b965c34015b4baf96ea8ddc2cc44999c014a035"
                .parse()
                .unwrap(),
        );
        assert!(b.verify(&Inbound::new(&h, &body)).is_ok());
        h.insert(
            "x-hub-signature",
            "sha256=f205c729821c6954aff2afe72b965c34015b4baf96ea8ddc2cc44999c014a036"
                .parse()
                .unwrap(),
        );
        assert_eq!(
            b.verify(&Inbound::new(&h, &body)).err(),
            Some(VerifyError::Mismatch)
        );
    }

    #[test]
    fn a_valid_sha1_signature_is_refused() {
        let b = Bitbucket::with_secrets(&[Secret::new("s")]);
        let body = br#"{"push":{"changes":[]}}"#;
        let sha1 = hex::encode(signature::hmac(Algorithm::Sha1, b"s", &[body]));
        let mut h = http::HeaderMap::new();
        h.insert("x-hub-signature", format!("sha1={sha1}").parse().unwrap());
        let err = b.verify(&Inbound::new(&h, body)).err().unwrap();
        assert!(
            matches!(err, VerifyError::Malformed(ref h, _) if h == "X-Hub-Signature"),
            "{err}"
        );
        assert_eq!(err.status(), 401);
    }
}
