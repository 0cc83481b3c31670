//! GitLab: the `X-Gitlab-Token` secret compared in constant time, and GitLab
//! signing tokens (Standard Webhooks `webhook-signature`, `whsec_` keys) when
//! `signing_secrets` is set. Every configured mechanism must pass.

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use super::signature::{self, standard};
use super::{DescribeError, Inbound, Scheme, Verified, VerifyError, delivery_id, whsec_keys};
use crate::config::diagnostic::Diagnostic;
use crate::config::loader::Loader;
use crate::config::raw::RawSource;
use crate::config::secret::{HmacKey, Secret};
use crate::event::Event;

mod payload;
mod pipeline;

/// Default allowed clock skew for signed deliveries.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

#[derive(Debug)]
pub struct GitLab {
    /// `X-Gitlab-Token` values, compared in constant time.
    tokens: Vec<Secret>,
    /// Decoded `whsec_` signing-token keys.
    signing_keys: Vec<HmacKey>,
    /// Whether `signing_secrets` was configured (even if unresolved in `check`).
    signing_required: bool,
    tolerance: Duration,
}

impl GitLab {
    pub fn build(name: &str, raw: &RawSource, loader: &mut Loader) -> Self {
        let tokens = raw
            .secrets
            .as_ref()
            .map(|l| loader.secrets(l))
            .unwrap_or_default();
        let signing = raw
            .signing_secrets
            .as_ref()
            .map(|l| loader.secrets_with_spans(l))
            .unwrap_or_default();
        let has_tokens = raw.secrets.as_ref().is_some_and(|l| !l.get_ref().is_empty());
        let signing_required = raw
            .signing_secrets
            .as_ref()
            .is_some_and(|l| !l.get_ref().is_empty());
        if !has_tokens && !signing_required {
            loader.push(
                Diagnostic::error(
                    format!("source `{name}`: set `secrets` (X-Gitlab-Token) or `signing_secrets` (signing tokens); hookbridge does not accept unauthenticated webhooks"),
                    Some(raw.kind.span()),
                ),
            );
        }
        let signing_keys = whsec_keys(name, &signing, loader);
        GitLab {
            tokens,
            signing_keys,
            signing_required,
            tolerance: raw
                .tolerance
                .as_ref()
                .map_or(DEFAULT_TOLERANCE, |t| t.get_ref().0),
        }
    }
}

impl Scheme for GitLab {
    fn event_headers(&self, event: &str) -> Vec<(String, String)> {
        vec![("X-Gitlab-Event".into(), event.into())]
    }

    fn verify<'a>(&self, inbound: &Inbound<'a>) -> Result<Verified<'a>, VerifyError> {
        if self.signing_required {
            // When signing is configured the signature is required; never fall back to the token.
            let sig = inbound
                .header("webhook-signature")
                .ok_or(VerifyError::MissingHeader("webhook-signature".into()))?;
            let id = inbound
                .header("webhook-id")
                .ok_or(VerifyError::MissingHeader("webhook-id".into()))?;
            let ts = inbound
                .header("webhook-timestamp")
                .ok_or(VerifyError::MissingHeader("webhook-timestamp".into()))?;
            if self.signing_keys.is_empty() {
                return Err(VerifyError::NoSecret);
            }
            standard::verify(
                &self.signing_keys,
                id,
                ts,
                sig,
                inbound.body,
                inbound.now,
                self.tolerance,
            )?;
        } else if inbound.header("webhook-signature").is_some() {
            // GitLab signs only when a signing token is set on the hook: the
            // signature cannot be checked, and the token is no substitute
            // for it (a bearer secret that proves nothing about the body).
            return Err(VerifyError::SignedWithoutKey(
                "webhook-signature",
                "signing_secrets",
            ));
        }
        if !self.tokens.is_empty() || !self.signing_required {
            let token = inbound
                .header("x-gitlab-token")
                .ok_or(VerifyError::MissingHeader("X-Gitlab-Token".into()))?;
            if self.tokens.is_empty() {
                return Err(VerifyError::NoSecret);
            }
            if !signature::token_matches(token.as_bytes(), &self.tokens) {
                return Err(VerifyError::TokenMismatch("X-Gitlab-Token".into()));
            }
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
            .header("x-gitlab-event")
            .ok_or(DescribeError::MissingEventHeader("X-Gitlab-Event".into()))?;
        let delivery = delivery_id(inbound, &["idempotency-key", "webhook-id", "x-gitlab-event-uuid"]);
        payload::describe(source, name, delivery, verified.payload())
    }

    fn sign(&self, body: &[u8], now: SystemTime) -> Result<Vec<(String, String)>, String> {
        let mut headers = Vec::new();
        let id = format!("msg_{}", ulid::Ulid::generate());
        if let Some(key) = self.signing_keys.first() {
            let ts = standard::unix_seconds(now).to_string();
            headers.push(("webhook-id".into(), id.clone()));
            headers.push(("webhook-timestamp".into(), ts.clone()));
            headers.push(("webhook-signature".into(), standard::sign(key, &id, &ts, body)));
        }
        if let Some(token) = self.tokens.first() {
            headers.push(("X-Gitlab-Token".into(), token.expose().to_owned()));
        }
        if headers.is_empty() {
            return Err("the source has no secret to sign with".into());
        }
        headers.push(("Idempotency-Key".into(), id));
        Ok(headers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;

    fn gitlab(tokens: &[&str], signing: &[&str]) -> GitLab {
        GitLab {
            tokens: tokens.iter().map(|t| Secret::new(*t)).collect(),
            signing_keys: signing
                .iter()
                .map(|s| HmacKey::from_whsec(&Secret::new(*s)).unwrap())
                .collect(),
            signing_required: !signing.is_empty(),
            tolerance: DEFAULT_TOLERANCE,
        }
    }

    #[test]
    fn token_must_match_one_secret() {
        let gl = gitlab(&["old", "new"], &[]);
        let mut h = HeaderMap::new();
        h.insert("x-gitlab-token", "new".parse().unwrap());
        assert!(gl.verify(&Inbound::new(&h, b"{}")).is_ok());
        h.insert("x-gitlab-token", "ne".parse().unwrap());
        assert_eq!(
            gl.verify(&Inbound::new(&h, b"{}")).err(),
            Some(VerifyError::TokenMismatch("X-Gitlab-Token".into()))
        );
    }

    #[test]
    fn signing_token_is_required_once_configured() {
        let gl = gitlab(&[], &["whsec_dGVzdHRlc3R0ZXN0dGVzdHRlc3R0ZXN0dGVzdHRlc3Q="]);
        let mut h = HeaderMap::new();
        h.insert("x-gitlab-token", "anything".parse().unwrap());
        assert_eq!(
            gl.verify(&Inbound::new(&h, b"{}")).err(),
            Some(VerifyError::MissingHeader("webhook-signature".into()))
        );
        let now = SystemTime::now();
        let signed = gl.sign(b"{}", now).unwrap();
        let mut h = HeaderMap::new();
        for (k, v) in signed {
            h.insert(http::HeaderName::try_from(k).unwrap(), v.parse().unwrap());
        }
        assert!(gl.verify(&Inbound::new(&h, b"{}")).is_ok());
        assert_eq!(
            gl.verify(&Inbound::new(&h, b"{ }")).err(),
            Some(VerifyError::Mismatch)
        );
    }
}
