//! GitHub (github.com, GHEC, GHES): `X-Hub-Signature-256: sha256=<hex>` over the
//! raw body, JSON or form-encoded (`payload=`) bodies, `X-GitHub-Event`,
//! `X-GitHub-Delivery`.
//!
//! GitHub sends the SHA-256 header with every signed delivery; the legacy
//! `X-Hub-Signature: sha1=` copy is never accepted, so a weaker hash cannot
//! stand in for the one GitHub uses.

use std::borrow::Cow;
use std::time::SystemTime;

use super::signature::{self, Algorithm};
use super::{
    DescribeError, Inbound, Scheme, Verified, VerifyError, delivery_id, hmac_keys, required_secrets,
};
use crate::config::loader::Loader;
use crate::config::raw::RawSource;
use crate::config::secret::{HmacKey, Secret};
use crate::event::{Event, Provider};

mod payload;
pub(super) use payload::describe;

#[derive(Debug)]
pub struct GitHub {
    /// The webhook secrets as HMAC keys; any one of them verifies (rotation).
    keys: Vec<HmacKey>,
}

impl GitHub {
    pub fn build(name: &str, raw: &RawSource, loader: &mut Loader) -> Self {
        let secrets = required_secrets(name, "secrets", raw.secrets.as_ref(), raw.kind.span(), loader);
        GitHub {
            keys: hmac_keys(secrets.iter().map(|(s, _)| s)),
        }
    }

    pub fn with_secrets(secrets: &[Secret]) -> Self {
        GitHub {
            keys: hmac_keys(secrets),
        }
    }
}

impl Scheme for GitHub {
    fn event_headers(&self, event: &str) -> Vec<(String, String)> {
        vec![("X-GitHub-Event".into(), event.into())]
    }

    fn verify<'a>(&self, inbound: &Inbound<'a>) -> Result<Verified<'a>, VerifyError> {
        let value = inbound
            .header("x-hub-signature-256")
            .ok_or(VerifyError::MissingHeader("X-Hub-Signature-256".into()))?;
        signature::verify_prefixed_hex(
            &self.keys,
            value,
            "X-Hub-Signature-256",
            Algorithm::Sha256,
            &[inbound.body],
        )?;
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
            .ok_or(DescribeError::MissingEventHeader("X-GitHub-Event".into()))?;
        let delivery = delivery_id(inbound, &["x-github-delivery"]);
        describe(source, Provider::Github, name, name, delivery, verified.payload())
    }

    fn sign(&self, body: &[u8], _now: SystemTime) -> Result<Vec<(String, String)>, String> {
        let key = self.keys.first().ok_or("the source has no secret to sign with")?;
        let mac = signature::hmac(Algorithm::Sha256, key.expose(), &[body]);
        Ok(vec![(
            "X-Hub-Signature-256".into(),
            format!("sha256={}", hex::encode(mac)),
        )])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;

    fn github() -> GitHub {
        GitHub::with_secrets(&[Secret::new("It's a Secret to Everybody")])
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
            Some(VerifyError::MissingHeader("X-Hub-Signature-256".into()))
        );
    }

    #[test]
    fn sha1_signatures_are_refused_in_either_header() {
        // The docs vector's SHA-1 twin: valid HMAC-SHA1, but GitHub signs with SHA-256.
        let sha1 = "sha1=01dc10d0c83e72ed246219cdd91669667fe2ca59";
        let mut h = HeaderMap::new();
        h.insert("x-hub-signature", sha1.parse().unwrap());
        assert_eq!(
            github().verify(&Inbound::new(&h, b"Hello, World!")).err(),
            Some(VerifyError::MissingHeader("X-Hub-Signature-256".into()))
        );
        h.insert("x-hub-signature-256", sha1.parse().unwrap());
        assert!(matches!(
            github().verify(&Inbound::new(&h, b"Hello, World!")),
            Err(VerifyError::Malformed(ref h, _)) if h == "X-Hub-Signature-256"
        ));
    }
}
