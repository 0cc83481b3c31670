//! CircleCI's outbound webhooks (`workflow-completed`, `job-completed`): how
//! hookbridge learns a pipeline's result. `circleci-signature` is a
//! comma-separated list of `version=signature` pairs; `v1` is the lower-case
//! hex HMAC-SHA256 of the raw body under the webhook's secret, and the only
//! version CircleCI defines. Only `v1` is checked, so a weaker future (or
//! forged) version cannot stand in for it. The event's name is the body's
//! `type` (also sent as `circleci-event-type`), its delivery id the body's `id`.

use std::borrow::Cow;
use std::time::SystemTime;

use super::signature::{self, Algorithm};
use super::{DescribeError, Inbound, Scheme, Verified, VerifyError, hmac_keys, required_secrets};
use crate::config::loader::Loader;
use crate::config::raw::RawSource;
use crate::config::secret::{HmacKey, Secret};
use crate::event::Event;

mod payload;

/// The header CircleCI signs with, as its docs write it.
const SIGNATURE_HEADER: &str = "circleci-signature";
/// The header naming the event (the body's `type` says the same).
const EVENT_HEADER: &str = "circleci-event-type";

#[derive(Debug)]
pub struct Circleci {
    /// The webhook secrets as HMAC keys; any one of them verifies (rotation).
    keys: Vec<HmacKey>,
}

impl Circleci {
    pub fn build(name: &str, raw: &RawSource, loader: &mut Loader) -> Self {
        let secrets = required_secrets(name, "secrets", raw.secrets.as_ref(), raw.kind.span(), loader);
        Circleci {
            keys: hmac_keys(secrets.iter().map(|(s, _)| s)),
        }
    }

    pub fn with_secrets(secrets: &[Secret]) -> Self {
        Circleci {
            keys: hmac_keys(secrets),
        }
    }
}

/// The decoded `v1` signatures of a `circleci-signature` value. Other
/// versions are ignored; `v1` entries that are not hex are skipped, and a
/// value left with none is malformed (401, like every verification failure).
fn v1_signatures(value: &str) -> Result<Vec<Vec<u8>>, VerifyError> {
    let v1: Vec<&str> = value
        .split(',')
        .filter_map(|pair| pair.split_once('='))
        .filter(|(version, _)| version.trim() == "v1")
        .map(|(_, sig)| sig.trim())
        .collect();
    if v1.is_empty() {
        return Err(VerifyError::Malformed(
            SIGNATURE_HEADER.into(),
            "no `v1=` signature; CircleCI sends `v1=<hex HMAC-SHA256 of the body>`".into(),
        ));
    }
    let decoded: Vec<Vec<u8>> = v1
        .iter()
        .filter_map(|sig| hex::decode(sig).ok())
        .filter(|sig| !sig.is_empty())
        .collect();
    if decoded.is_empty() {
        return Err(VerifyError::Malformed(
            SIGNATURE_HEADER.into(),
            "the `v1` signature is not hexadecimal".into(),
        ));
    }
    Ok(decoded)
}

impl Scheme for Circleci {
    fn event_headers(&self, event: &str) -> Vec<(String, String)> {
        vec![(EVENT_HEADER.into(), event.into())]
    }

    fn verify<'a>(&self, inbound: &Inbound<'a>) -> Result<Verified<'a>, VerifyError> {
        let value = inbound
            .header(SIGNATURE_HEADER)
            .ok_or(VerifyError::MissingHeader(SIGNATURE_HEADER.into()))?;
        let signatures = v1_signatures(value)?;
        if self.keys.is_empty() {
            return Err(VerifyError::NoSecret);
        }
        if signature::verify_sha256_any_of(&self.keys, inbound.body, &signatures) {
            Ok(Verified::new(Cow::Borrowed(inbound.body)))
        } else {
            Err(VerifyError::Mismatch)
        }
    }

    fn describe(
        &self,
        source: &str,
        inbound: &Inbound<'_>,
        verified: &Verified<'_>,
    ) -> Result<Event, DescribeError> {
        payload::describe(source, inbound.header(EVENT_HEADER), verified.payload())
    }

    fn sign(&self, body: &[u8], _now: SystemTime) -> Result<Vec<(String, String)>, String> {
        let key = self.keys.first().ok_or("the source has no secret to sign with")?;
        let mac = signature::hmac(Algorithm::Sha256, key.expose(), &[body]);
        Ok(vec![(
            SIGNATURE_HEADER.into(),
            format!("v1={}", hex::encode(mac)),
        )])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue};

    /// CircleCI's published examples (tests/fixtures/payloads/circleci/signature-vectors.json).
    fn vectors() -> Vec<(String, Vec<u8>, String)> {
        let path = format!(
            "{}/tests/fixtures/payloads/circleci/signature-vectors.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let file: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        file["vectors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| {
                (
                    v["secret"].as_str().unwrap().to_owned(),
                    v["body_utf8"].as_str().unwrap().as_bytes().to_vec(),
                    v["expected_headers"][SIGNATURE_HEADER]
                        .as_str()
                        .unwrap()
                        .to_owned(),
                )
            })
            .collect()
    }

    fn check(secrets: &[&str], header: Option<&str>, body: &[u8]) -> Result<(), VerifyError> {
        let secrets: Vec<Secret> = secrets.iter().map(|s| Secret::new(*s)).collect();
        let mut h = HeaderMap::new();
        if let Some(value) = header {
            h.insert(SIGNATURE_HEADER, HeaderValue::from_str(value).unwrap());
        }
        Circleci::with_secrets(&secrets)
            .verify(&Inbound::new(&h, body))
            .map(drop)
    }

    #[test]
    fn every_published_vector_verifies_and_its_signer_agrees() {
        let vectors = vectors();
        assert_eq!(vectors.len(), 4);
        for (secret, body, header) in vectors {
            assert_eq!(check(&[&secret], Some(&header), &body), Ok(()), "{header}");
            let signed = Circleci::with_secrets(&[Secret::new(secret.as_str())])
                .sign(&body, SystemTime::now())
                .unwrap();
            assert_eq!(signed, vec![(SIGNATURE_HEADER.to_owned(), header)]);
        }
    }

    #[test]
    fn a_tampered_body_a_wrong_secret_or_another_version_fails() {
        for (secret, body, header) in vectors() {
            let mut tampered = body.clone();
            tampered.push(b' ');
            assert_eq!(
                check(&[&secret], Some(&header), &tampered),
                Err(VerifyError::Mismatch)
            );
            assert_eq!(
                check(&["not-the-secret"], Some(&header), &body),
                Err(VerifyError::Mismatch)
            );
            // The right MAC under a version CircleCI does not define is not looked at.
            let other = header.replacen("v1=", "v2=", 1);
            let err = check(&[&secret], Some(&other), &body).unwrap_err();
            assert!(matches!(err, VerifyError::Malformed(..)), "{err}");
            assert!(err.to_string().contains("no `v1=` signature"), "{err}");
            assert_eq!(err.status(), 401);
        }
    }

    #[test]
    fn one_right_v1_among_several_passes() {
        let (secret, body, header) = vectors().remove(0);
        let wrong = format!("v1={}", "ab".repeat(32));
        for value in [
            format!("{wrong},{header}"),
            format!("{header},{wrong}"),
            format!("v2=00, {wrong} , {header} ,v0=zz"),
            format!("v1=not-hex,{header}"),
        ] {
            assert_eq!(check(&[&secret], Some(&value), &body), Ok(()), "{value}");
        }
        assert_eq!(
            check(&[&secret], Some(&format!("{wrong},{wrong}")), &body),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn a_second_secret_verifies_while_rotating() {
        let (secret, body, header) = vectors().remove(1);
        assert_eq!(check(&["old-secret", &secret], Some(&header), &body), Ok(()));
        assert_eq!(check(&[&secret, "next-secret"], Some(&header), &body), Ok(()));
    }

    #[test]
    fn unreadable_headers_are_refused_with_a_reason() {
        let body = b"hello world";
        assert_eq!(
            check(&["secret"], None, body).unwrap_err().to_string(),
            "missing `circleci-signature` header"
        );
        for (value, reason) in [
            ("v1=xyz", "the `v1` signature is not hexadecimal"),
            ("v1=", "the `v1` signature is not hexadecimal"),
            ("v1=abc", "the `v1` signature is not hexadecimal"),
            ("sha256=00", "no `v1=` signature"),
            (
                "734cc62f32841568f45715aeb9f4d7891324e6d948e4c6c60c0621cdac48623a",
                "no `v1=` signature",
            ),
        ] {
            let err = check(&["secret"], Some(value), body).unwrap_err();
            assert_eq!(err.status(), 401, "{value}");
            assert!(
                err.to_string()
                    .starts_with("`circleci-signature` header is malformed: "),
                "{value}: {err}"
            );
            assert!(err.to_string().contains(reason), "{value}: {err}");
        }
        // A truncated MAC is a mismatch, not a shorter MAC to compare.
        assert_eq!(
            check(&["secret"], Some("v1=734cc62f32841568"), body),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(check(&[], Some("v1=00"), body), Err(VerifyError::NoSecret));
    }

    #[test]
    fn a_header_of_thousands_of_entries_hashes_the_body_once_per_key() {
        let key = "secret";
        let body = vec![b'x'; 1 << 20];
        let right = Circleci::with_secrets(&[Secret::new(key)])
            .sign(&body, SystemTime::now())
            .unwrap()
            .remove(0)
            .1;
        let header = format!("{}{right}", format!("v1={},", "00".repeat(32)).repeat(2000));
        let started = std::time::Instant::now();
        assert_eq!(check(&[key, "old"], Some(&header), &body), Ok(()));
        let took = started.elapsed();
        assert!(took < std::time::Duration::from_secs(5), "{took:?}");
    }
}
