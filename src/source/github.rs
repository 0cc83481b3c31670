//! GitHub (github.com, GHEC, GHES): `X-Hub-Signature-256: sha256=<hex>` over the
//! raw body, JSON or form-encoded (`payload=`) bodies, `X-GitHub-Event`,
//! `X-GitHub-Delivery`.

use std::borrow::Cow;
use std::time::SystemTime;

use super::signature::{self, Algorithm};
use super::{DescribeError, Inbound, Scheme, Verified, VerifyError, delivery_id, required_secrets};
use crate::config::raw::RawSource;
use crate::config::{Loader, Secret};
use crate::event::{Event, Provider};

mod payload;
pub(super) use payload::describe;

#[derive(Debug)]
pub struct GitHub {
    secrets: Vec<Secret>,
}

impl GitHub {
    pub fn build(name: &str, raw: &RawSource, loader: &mut Loader) -> Self {
        let secrets = required_secrets(name, "secrets", raw.secrets.as_ref(), raw.kind.span(), loader)
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        GitHub { secrets }
    }

    pub fn with_secrets(secrets: Vec<Secret>) -> Self {
        GitHub { secrets }
    }
}

/// Check a `sha256=<hex>` / `sha1=<hex>` signature header against the secrets.
pub(super) fn verify_hub_signature(
    secrets: &[Secret],
    value: &str,
    header: &'static str,
    parts: &[&[u8]],
) -> Result<(), VerifyError> {
    let (alg, hex) = if let Some(h) = value.strip_prefix("sha256=") {
        (Algorithm::Sha256, h)
    } else if let Some(h) = value.strip_prefix("sha1=") {
        (Algorithm::Sha1, h)
    } else {
        return Err(VerifyError::Malformed(header, "expected `sha256=<hex>`".into()));
    };
    if hex.is_empty() {
        return Err(VerifyError::Malformed(header, "the signature is empty".into()));
    }
    let expected = hex::decode(hex).map_err(|_| VerifyError::Malformed(header, "not hexadecimal".into()))?;
    if secrets.is_empty() {
        return Err(VerifyError::NoSecret);
    }
    let keys: Vec<Vec<u8>> = secrets.iter().map(|s| s.expose().as_bytes().to_vec()).collect();
    if signature::verify_any(alg, &keys, parts, &expected) {
        Ok(())
    } else {
        Err(VerifyError::Mismatch)
    }
}

impl Scheme for GitHub {
    fn event_headers(&self, event: &str) -> Vec<(String, String)> {
        vec![("X-GitHub-Event".into(), event.into())]
    }

    fn verify<'a>(&self, inbound: &Inbound<'a>) -> Result<Verified<'a>, VerifyError> {
        // SHA-256 when present; the legacy SHA-1 header only for senders that lack it.
        let (header, value) = match inbound.header("x-hub-signature-256") {
            Some(v) => ("X-Hub-Signature-256", v),
            None => match inbound.header("x-hub-signature") {
                Some(v) if v.starts_with("sha1=") => ("X-Hub-Signature", v),
                _ => return Err(VerifyError::MissingHeader("X-Hub-Signature-256")),
            },
        };
        verify_hub_signature(&self.secrets, value, header, &[inbound.body])?;
        // GitHub signs the body as sent; a form body carries the JSON in `payload`.
        let payload = if inbound.is_form() {
            Cow::Owned(inbound.form_payload()?)
        } else {
            Cow::Borrowed(inbound.body)
        };
        Ok(Verified::new(payload))
    }

    fn describe(
        &self,
        source: &str,
        inbound: &Inbound<'_>,
        verified: &Verified<'_>,
    ) -> Result<Event, DescribeError> {
        let name = inbound
            .header("x-github-event")
            .ok_or(DescribeError::MissingEventHeader("X-GitHub-Event"))?;
        let delivery = delivery_id(inbound, &["x-github-delivery"]);
        describe(source, Provider::Github, name, name, delivery, verified.payload())
    }

    fn sign(&self, body: &[u8], _now: SystemTime) -> Result<Vec<(String, String)>, String> {
        let secret = self
            .secrets
            .first()
            .ok_or("the source has no secret to sign with")?;
        let key = secret.expose().as_bytes();
        Ok(vec![
            (
                "X-Hub-Signature-256".into(),
                format!(
                    "sha256={}",
                    hex::encode(signature::hmac(Algorithm::Sha256, key, &[body]))
                ),
            ),
            (
                "X-Hub-Signature".into(),
                format!(
                    "sha1={}",
                    hex::encode(signature::hmac(Algorithm::Sha1, key, &[body]))
                ),
            ),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;

    fn github() -> GitHub {
        GitHub::with_secrets(vec![Secret::new("It's a Secret to Everybody")])
    }

    #[test]
    fn docs_vector_verifies_and_bad_ones_do_not() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-hub-signature-256",
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
                .parse()
                .unwrap(),
        );
        let gh = github();
        assert!(gh.verify(&Inbound::new(&h, b"Hello, World!")).is_ok());
        assert_eq!(
            gh.verify(&Inbound::new(&h, b"Hello, World?")).err(),
            Some(VerifyError::Mismatch)
        );
        h.insert("x-hub-signature-256", "sha256=757107ea0eb2509f".parse().unwrap());
        assert_eq!(
            gh.verify(&Inbound::new(&h, b"Hello, World!")).err(),
            Some(VerifyError::Mismatch)
        );
        h.insert("x-hub-signature-256", "sha256=".parse().unwrap());
        assert!(matches!(
            gh.verify(&Inbound::new(&h, b"x")),
            Err(VerifyError::Malformed(..))
        ));
        let empty = HeaderMap::new();
        assert_eq!(
            gh.verify(&Inbound::new(&empty, b"x")).err(),
            Some(VerifyError::MissingHeader("X-Hub-Signature-256"))
        );
    }

    #[test]
    fn legacy_sha1_header_is_accepted_alone() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-hub-signature",
            "sha1=01dc10d0c83e72ed246219cdd91669667fe2ca59".parse().unwrap(),
        );
        assert!(github().verify(&Inbound::new(&h, b"Hello, World!")).is_ok());
    }
}
