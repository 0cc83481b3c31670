//! Signature primitives shared by the sources: HMAC with constant-time
//! verification, hex/base64 decoding, and the Standard Webhooks scheme.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use subtle::ConstantTimeEq;

use super::VerifyError;
use crate::config::Secret;

/// Hash behind an HMAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Sha1,
    Sha256,
    Sha512,
}

impl Algorithm {
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "sha1" => Some(Algorithm::Sha1),
            "sha256" => Some(Algorithm::Sha256),
            "sha512" => Some(Algorithm::Sha512),
            _ => None,
        }
    }
}

/// How a signature is written in its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Hex,
    Base64,
}

impl Encoding {
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "hex" => Some(Encoding::Hex),
            "base64" => Some(Encoding::Base64),
            _ => None,
        }
    }

    pub fn decode(self, s: &str) -> Option<Vec<u8>> {
        match self {
            Encoding::Hex => hex::decode(s.trim()).ok(),
            Encoding::Base64 => BASE64.decode(s.trim()).ok(),
        }
    }

    pub fn encode(self, bytes: &[u8]) -> String {
        match self {
            Encoding::Hex => hex::encode(bytes),
            Encoding::Base64 => BASE64.encode(bytes),
        }
    }
}

/// HMAC over the concatenation of `parts`.
pub fn hmac(alg: Algorithm, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    fn run<M: Mac + KeyInit>(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        let mut mac = <M as KeyInit>::new_from_slice(key).expect("HMAC accepts keys of any length");
        for p in parts {
            mac.update(p);
        }
        mac.finalize().into_bytes().to_vec()
    }
    match alg {
        Algorithm::Sha1 => run::<Hmac<sha1::Sha1>>(key, parts),
        Algorithm::Sha256 => run::<Hmac<sha2::Sha256>>(key, parts),
        Algorithm::Sha512 => run::<Hmac<sha2::Sha512>>(key, parts),
    }
}

/// Constant-time check of `expected` against the HMAC under any of `keys`.
/// Every key is tried, so the time taken does not reveal which one matched.
pub fn verify_any(alg: Algorithm, keys: &[Vec<u8>], parts: &[&[u8]], expected: &[u8]) -> bool {
    let mut ok = subtle::Choice::from(0u8);
    for key in keys {
        let mac = hmac(alg, key, parts);
        // Length is public (it is the hash size); contents are compared in constant time.
        if mac.len() == expected.len() {
            ok |= mac.ct_eq(expected);
        }
    }
    ok.into()
}

/// Constant-time equality of a presented token with any configured secret.
pub fn token_matches(presented: &[u8], secrets: &[Secret]) -> bool {
    let mut ok = subtle::Choice::from(0u8);
    for s in secrets {
        ok |= presented.ct_eq(s.expose().as_bytes());
    }
    ok.into()
}

/// SHA-256 of the body, hex: the delivery id for senders that send none.
pub fn body_digest(body: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(body)))
}

/// Standard Webhooks (and GitLab signing tokens): `v1,<base64>` signatures over
/// `{id}.{timestamp}.{body}`, keyed with the base64-decoded `whsec_` secret.
pub mod standard {
    use super::*;

    /// The HMAC key of a `whsec_...` secret. Secrets without the prefix are
    /// taken as base64 too, as the reference libraries do.
    pub fn key(secret: &str) -> Result<Vec<u8>, String> {
        let b64 = secret.strip_prefix("whsec_").unwrap_or(secret);
        BASE64
            .decode(b64)
            .map_err(|_| "a Standard Webhooks secret must be `whsec_` followed by base64".to_owned())
    }

    /// The `webhook-signature` value for one key.
    pub fn sign(key: &[u8], id: &str, timestamp: &str, body: &[u8]) -> String {
        let mac = hmac(
            Algorithm::Sha256,
            key,
            &[id.as_bytes(), b".", timestamp.as_bytes(), b".", body],
        );
        format!("v1,{}", BASE64.encode(mac))
    }

    /// Verify a `webhook-signature` header (space-separated `v1,<b64>` entries; other
    /// versions ignored) and the timestamp against `tolerance` (`None`: not checked).
    pub fn verify(
        keys: &[Vec<u8>],
        id: &str,
        timestamp: &str,
        signature_header: &str,
        body: &[u8],
        now: std::time::SystemTime,
        tolerance: Option<std::time::Duration>,
    ) -> Result<(), VerifyError> {
        let ts: i64 = timestamp
            .trim()
            .parse()
            .map_err(|_| VerifyError::Malformed("webhook-timestamp", "not an integer".into()))?;
        if let Some(tolerance) = tolerance {
            let now = now
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            let skew = (now - ts).unsigned_abs();
            if skew > tolerance.as_secs() {
                return Err(VerifyError::Stale {
                    skew_secs: skew,
                    tolerance_secs: tolerance.as_secs(),
                });
            }
        }
        let mut any_v1 = false;
        let mut ok = false;
        for entry in signature_header.split_whitespace() {
            let Some((version, sig)) = entry.split_once(',') else {
                continue;
            };
            if version != "v1" {
                continue;
            }
            any_v1 = true;
            if let Some(sig) = Encoding::Base64.decode(sig) {
                // Evaluate every entry; `|` keeps the loop free of early exits.
                ok |= verify_any(
                    Algorithm::Sha256,
                    keys,
                    &[id.as_bytes(), b".", timestamp.trim().as_bytes(), b".", body],
                    &sig,
                );
            }
        }
        if !any_v1 {
            return Err(VerifyError::Malformed(
                "webhook-signature",
                "no `v1,` signature".into(),
            ));
        }
        if ok { Ok(()) } else { Err(VerifyError::Mismatch) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn github_docs_vector() {
        let mac = hmac(
            Algorithm::Sha256,
            b"It's a Secret to Everybody",
            &[b"Hello, World!"],
        );
        assert_eq!(
            hex::encode(mac),
            "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
    }

    #[test]
    fn verify_any_accepts_any_key_and_rejects_truncation() {
        let keys = vec![b"old".to_vec(), b"new".to_vec()];
        let sig = hmac(Algorithm::Sha256, b"new", &[b"body"]);
        assert!(verify_any(Algorithm::Sha256, &keys, &[b"body"], &sig));
        assert!(!verify_any(Algorithm::Sha256, &keys, &[b"body"], &sig[..16]));
        assert!(!verify_any(Algorithm::Sha256, &keys, &[b"other"], &sig));
    }

    #[test]
    fn standard_webhooks_published_vector() {
        let key = standard::key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = standard::sign(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            "1614265330",
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }
}
