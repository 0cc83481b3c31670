//! Gitea, Forgejo and Gogs: bare-hex HMAC-SHA256 over the JSON payload (also
//! when the body is form-encoded), their own event and delivery headers ahead of
//! the GitHub-compatible copies, and GitHub-shaped payloads.

use std::borrow::Cow;
use std::time::SystemTime;

use super::signature::{self, Algorithm};
use super::{
    DescribeError, Inbound, Scheme, Verified, VerifyError, delivery_id, github, hmac_keys, required_secrets,
};
use crate::config::loader::Loader;
use crate::config::raw::RawSource;
use crate::config::secret::{HmacKey, Secret};
use crate::event::{Event, Provider};

/// Which of the three related senders a source expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Gitea,
    Forgejo,
    Gogs,
}

impl Flavor {
    fn provider(self) -> Provider {
        match self {
            Flavor::Gitea => Provider::Gitea,
            Flavor::Forgejo => Provider::Forgejo,
            Flavor::Gogs => Provider::Gogs,
        }
    }

    /// Signature headers in the order they are looked for.
    fn signature_headers(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Flavor::Gitea => &[("x-gitea-signature", "X-Gitea-Signature")],
            Flavor::Forgejo => &[
                ("x-forgejo-signature", "X-Forgejo-Signature"),
                ("x-gitea-signature", "X-Gitea-Signature"),
            ],
            Flavor::Gogs => &[("x-gogs-signature", "X-Gogs-Signature")],
        }
    }

    /// Fine-grained event headers first, then coarse ones, own before copies.
    fn event_headers(self) -> (&'static [&'static str], &'static [&'static str]) {
        match self {
            Flavor::Gitea => (
                &["x-gitea-event-type", "x-gogs-event-type", "x-github-event-type"],
                &["x-gitea-event", "x-gogs-event", "x-github-event"],
            ),
            Flavor::Forgejo => (
                &[
                    "x-forgejo-event-type",
                    "x-gitea-event-type",
                    "x-github-event-type",
                ],
                &["x-forgejo-event", "x-gitea-event", "x-github-event"],
            ),
            Flavor::Gogs => (&[], &["x-gogs-event", "x-github-event"]),
        }
    }

    fn delivery_headers(self) -> &'static [&'static str] {
        match self {
            Flavor::Gitea => &["x-gitea-delivery", "x-gogs-delivery", "x-github-delivery"],
            Flavor::Forgejo => &["x-forgejo-delivery", "x-gitea-delivery", "x-github-delivery"],
            Flavor::Gogs => &["x-gogs-delivery", "x-github-delivery"],
        }
    }
}

#[derive(Debug)]
pub struct Gitea {
    flavor: Flavor,
    /// The webhook secrets as HMAC-SHA256 keys; any one of them verifies.
    keys: Vec<HmacKey>,
}

impl Gitea {
    pub fn build(name: &str, raw: &RawSource, loader: &mut Loader, flavor: Flavor) -> Self {
        let secrets = required_secrets(name, "secrets", raw.secrets.as_ref(), raw.kind.span(), loader);
        Gitea {
            flavor,
            keys: hmac_keys(secrets.iter().map(|(s, _)| s)),
        }
    }

    pub fn with_secrets(flavor: Flavor, secrets: &[Secret]) -> Self {
        Gitea {
            flavor,
            keys: hmac_keys(secrets),
        }
    }
}

impl Scheme for Gitea {
    fn event_headers(&self, event: &str) -> Vec<(String, String)> {
        let prefix = match self.flavor {
            Flavor::Gitea => "X-Gitea",
            Flavor::Forgejo => "X-Forgejo",
            Flavor::Gogs => return vec![("X-Gogs-Event".into(), event.into())],
        };
        vec![
            (format!("{prefix}-Event"), event.into()),
            (format!("{prefix}-Event-Type"), event.into()),
        ]
    }

    fn verify<'a>(&self, inbound: &Inbound<'a>) -> Result<Verified<'a>, VerifyError> {
        let headers = self.flavor.signature_headers();
        // Gitea sends empty signature headers when the hook has no secret: empty is missing.
        let (header, value) = headers
            .iter()
            .find_map(|(lower, display)| inbound.header(lower).map(|v| (*display, v)))
            .ok_or(VerifyError::MissingHeader(headers[0].1.into()))?;
        let expected = hex::decode(value)
            .map_err(|_| VerifyError::Malformed(header.into(), "not hexadecimal".into()))?;
        // The signature covers the JSON payload, not the form body around it.
        let payload = if inbound.is_form() {
            Cow::Owned(inbound.form_payload()?)
        } else {
            Cow::Borrowed(inbound.body)
        };
        if self.keys.is_empty() {
            return Err(VerifyError::NoSecret);
        }
        if !signature::verify_any(Algorithm::Sha256, &self.keys, &[&payload], &expected) {
            return Err(VerifyError::Mismatch);
        }
        Ok(Verified::new(without_secret(payload)))
    }

    fn describe(
        &self,
        source: &str,
        inbound: &Inbound<'_>,
        verified: &Verified<'_>,
    ) -> Result<Event, DescribeError> {
        let (fine, coarse) = self.flavor.event_headers();
        let coarse_name = coarse.iter().find_map(|h| inbound.header(h));
        let fine_name = fine.iter().find_map(|h| inbound.header(h));
        let name = fine_name
            .or(coarse_name)
            .ok_or(DescribeError::MissingEventHeader(
                match self.flavor {
                    Flavor::Gitea => "X-Gitea-Event",
                    Flavor::Forgejo => "X-Forgejo-Event",
                    Flavor::Gogs => "X-Gogs-Event",
                }
                .into(),
            ))?;
        let delivery = delivery_id(inbound, self.flavor.delivery_headers());
        // The coarse name decides the payload shape; `pull_request_sync` is a pull_request.
        let shape = coarse_name.unwrap_or(name);
        github::describe(
            source,
            self.flavor.provider(),
            name,
            shape,
            delivery,
            verified.payload(),
        )
    }

    fn sign(&self, body: &[u8], _now: SystemTime) -> Result<Vec<(String, String)>, String> {
        let key = self.keys.first().ok_or("the source has no secret to sign with")?;
        let sig = hex::encode(signature::hmac(Algorithm::Sha256, key.expose(), &[body]));
        let names: &[&str] = match self.flavor {
            Flavor::Gitea => &["X-Gitea-Signature", "X-Gogs-Signature"],
            Flavor::Forgejo => &["X-Forgejo-Signature", "X-Gitea-Signature", "X-Gogs-Signature"],
            Flavor::Gogs => &["X-Gogs-Signature"],
        };
        let mut out: Vec<(String, String)> = names.iter().map(|n| ((*n).to_owned(), sig.clone())).collect();
        if self.flavor != Flavor::Gogs {
            out.push(("X-Hub-Signature-256".into(), format!("sha256={sig}")));
        }
        Ok(out)
    }
}

/// The payload with its top-level `secret` shown as `***`. Gogs and older
/// Gitea write the webhook's secret into every payload, in clear text; kept,
/// it would reach the store, `deliveries show`, the admin API, and any
/// template that reads `body.secret` or forwards the body. Checked after the
/// signature, which covers the payload as sent.
fn without_secret(payload: Cow<'_, [u8]>) -> Cow<'_, [u8]> {
    const KEY: &[u8] = b"\"secret\"";
    if !payload.windows(KEY.len()).any(|w| w == KEY) {
        return payload;
    }
    let Ok(mut value) = serde_json::from_slice::<serde_json::Value>(&payload) else {
        return payload; // not JSON: describing it says why
    };
    match value.get_mut("secret") {
        Some(secret) if !secret.is_null() => *secret = serde_json::Value::from("***"),
        _ => return payload,
    }
    match serde_json::to_vec(&value) {
        Ok(redacted) => Cow::Owned(redacted),
        Err(_) => payload,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;

    #[test]
    fn empty_signature_header_is_rejected() {
        let g = Gitea::with_secrets(Flavor::Gitea, &[Secret::new("s")]);
        let mut h = HeaderMap::new();
        h.insert("x-gitea-signature", "".parse().unwrap());
        assert_eq!(
            g.verify(&Inbound::new(&h, b"{}")).err(),
            Some(VerifyError::MissingHeader("X-Gitea-Signature".into()))
        );
    }

    #[test]
    fn form_bodies_are_verified_over_the_inner_json() {
        let g = Gitea::with_secrets(Flavor::Forgejo, &[Secret::new("s")]);
        let json = br#"{"a":1}"#;
        let sig = hex::encode(signature::hmac(Algorithm::Sha256, b"s", &[json]));
        let mut h = HeaderMap::new();
        h.insert("x-forgejo-signature", sig.parse().unwrap());
        h.insert(
            "content-type",
            "application/x-www-form-urlencoded".parse().unwrap(),
        );
        let body = format!(
            "payload={}",
            form_urlencoded::byte_serialize(json).collect::<String>()
        );
        let v = g.verify(&Inbound::new(&h, body.as_bytes())).unwrap();
        assert_eq!(v.payload(), json);
    }
}
