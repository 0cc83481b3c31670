//! Signature primitives shared by the sources: HMAC with constant-time
//! verification over [`HmacKey`]s, `sha256=<hex>` headers, hex/base64
//! decoding, and the Standard Webhooks scheme.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use subtle::ConstantTimeEq;

use super::VerifyError;
use crate::config::secret::{HmacKey, Secret};

/// Hash behind an HMAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Sha1,
    Sha256,
    Sha512,
}

impl Algorithm {
    /// The `sha256=` style prefix GitHub-like headers put before the hex.
    pub fn prefix(self) -> &'static str {
        match self {
            Algorithm::Sha1 => "sha1=",
            Algorithm::Sha256 => "sha256=",
            Algorithm::Sha512 => "sha512=",
        }
    }

    /// The hash's name in messages (`SHA256`).
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha1 => "SHA1",
            Algorithm::Sha256 => "SHA256",
            Algorithm::Sha512 => "SHA512",
        }
    }

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
pub(crate) fn verify_any(alg: Algorithm, keys: &[HmacKey], parts: &[&[u8]], expected: &[u8]) -> bool {
    let mut ok = subtle::Choice::from(0u8);
    for key in keys {
        let mac = hmac(alg, key.expose(), parts);
        // Length is public (it is the hash size); contents are compared in constant time.
        if mac.len() == expected.len() {
            ok |= mac.ct_eq(expected);
        }
    }
    ok.into()
}

/// Whether any of several presented HMAC-SHA256 values (a header may carry
/// more than one) is the MAC of `body` under any of `keys`. The body is
/// hashed once per key, whatever the number of candidates; each candidate
/// then costs one finalization and the `hmac` crate's constant-time
/// `verify_slice`. Every pair is tried, so the time taken does not reveal
/// which one matched.
pub(crate) fn verify_sha256_any_of(keys: &[HmacKey], body: &[u8], candidates: &[Vec<u8>]) -> bool {
    let mut ok = false;
    for key in keys {
        let Ok(mut mac) = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key.expose()) else {
            continue;
        };
        mac.update(body);
        for candidate in candidates {
            // `|`, not `||`: no early exit.
            ok |= mac.clone().verify_slice(candidate).is_ok();
        }
    }
    ok
}

/// Constant-time equality of a presented token with any configured secret.
pub(crate) fn token_matches(presented: &[u8], secrets: &[Secret]) -> bool {
    let mut ok = subtle::Choice::from(0u8);
    for s in secrets {
        ok |= presented.ct_eq(s.expose().as_bytes());
    }
    ok.into()
}

/// Check a `<prefix><hex>` signature header (`sha256=<hex>`) against `keys`.
///
/// The prefix names the one algorithm the sender uses; any other prefix (a
/// `sha1=` from a sender that never signs with SHA-1) is refused, not
/// downgraded to, so a weaker hash cannot be substituted.
pub(crate) fn verify_prefixed_hex(
    keys: &[HmacKey],
    value: &str,
    header: &'static str,
    alg: Algorithm,
    parts: &[&[u8]],
) -> Result<(), VerifyError> {
    let prefix = alg.prefix();
    let hex = value.strip_prefix(prefix).ok_or_else(|| {
        VerifyError::Malformed(
            header.into(),
            format!(
                "expected `{prefix}<hex>`: this sender signs with HMAC-{}",
                alg.name()
            ),
        )
    })?;
    if hex.is_empty() {
        return Err(VerifyError::Malformed(
            header.into(),
            "the signature is empty".into(),
        ));
    }
    let expected =
        hex::decode(hex).map_err(|_| VerifyError::Malformed(header.into(), "not hexadecimal".into()))?;
    if keys.is_empty() {
        return Err(VerifyError::NoSecret);
    }
    if verify_any(alg, keys, parts, &expected) {
        Ok(())
    } else {
        Err(VerifyError::Mismatch)
    }
}

/// SHA-256 of the body, hex: the delivery id for senders that send none.
pub(crate) fn body_digest(body: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(body)))
}

/// Standard Webhooks (and GitLab signing tokens): `v1,<base64>` signatures over
/// `{id}.{timestamp}.{body}`, keyed with the base64-decoded `whsec_` secret
/// ([`HmacKey::from_whsec`]).
pub mod standard {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use super::*;

    /// The `webhook-signature` value for one key.
    pub fn sign(key: &HmacKey, id: &str, timestamp: &str, body: &[u8]) -> String {
        let mac = hmac(
            Algorithm::Sha256,
            key.expose(),
            &[id.as_bytes(), b".", timestamp.as_bytes(), b".", body],
        );
        format!("v1,{}", BASE64.encode(mac))
    }

    /// Seconds since the Unix epoch, as `webhook-timestamp` writes them.
    pub(crate) fn unix_seconds(now: SystemTime) -> i64 {
        now.duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
    }

    /// Parse `webhook-timestamp` and check it against `tolerance` in both
    /// directions. The value comes from the sender before it is authenticated,
    /// so the distance is taken with `abs_diff` (no overflow for any `i64`),
    /// and numbers that are no `i64` are refused with their own message.
    pub(crate) fn check_timestamp(
        timestamp: &str,
        now: SystemTime,
        tolerance: Duration,
    ) -> Result<i64, VerifyError> {
        let ts: i64 = timestamp.trim().parse().map_err(|e: std::num::ParseIntError| {
            let why = match e.kind() {
                std::num::IntErrorKind::PosOverflow | std::num::IntErrorKind::NegOverflow => {
                    "out of range for Unix seconds"
                }
                _ => "not an integer (Unix seconds)",
            };
            VerifyError::Malformed("webhook-timestamp".into(), why.into())
        })?;
        let skew = unix_seconds(now).abs_diff(ts);
        if skew > tolerance.as_secs() {
            return Err(VerifyError::Stale {
                skew_secs: skew,
                tolerance_secs: tolerance.as_secs(),
            });
        }
        Ok(ts)
    }

    /// Verify a `webhook-signature` header (space-separated `v1,<b64>` entries; other
    /// versions ignored) and the timestamp against `tolerance`.
    ///
    /// The header is the sender's before it is authenticated: the HMAC is
    /// computed once per key, not once per entry, so a header of thousands
    /// of `v1,` entries costs one base64 decode and comparison each, not a
    /// pass over the body each.
    pub fn verify(
        keys: &[HmacKey],
        id: &str,
        timestamp: &str,
        signature_header: &str,
        body: &[u8],
        now: SystemTime,
        tolerance: Duration,
    ) -> Result<(), VerifyError> {
        check_timestamp(timestamp, now, tolerance)?;
        let entries: Vec<&str> = signature_header
            .split_whitespace()
            .filter_map(|entry| entry.split_once(','))
            .filter(|(version, _)| *version == "v1")
            .map(|(_, sig)| sig)
            .collect();
        if entries.is_empty() {
            return Err(VerifyError::Malformed(
                "webhook-signature".into(),
                "no `v1,` signature".into(),
            ));
        }
        let parts: [&[u8]; 5] = [id.as_bytes(), b".", timestamp.trim().as_bytes(), b".", body];
        let macs: Vec<Vec<u8>> = keys
            .iter()
            .map(|key| hmac(Algorithm::Sha256, key.expose(), &parts))
            .collect();
        // Every entry against every key; `|` keeps the loops free of early exits.
        let mut ok = subtle::Choice::from(0u8);
        for sig in entries.iter().filter_map(|sig| Encoding::Base64.decode(sig)) {
            for mac in &macs {
                // Length is public (the hash size); contents compare in constant time.
                if mac.len() == sig.len() {
                    ok |= mac.ct_eq(&sig);
                }
            }
        }
        if bool::from(ok) {
            Ok(())
        } else {
            Err(VerifyError::Mismatch)
        }
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
        let keys = vec![HmacKey::from_bytes(b"old"), HmacKey::from_bytes(b"new")];
        let sig = hmac(Algorithm::Sha256, b"new", &[b"body"]);
        assert!(verify_any(Algorithm::Sha256, &keys, &[b"body"], &sig));
        assert!(!verify_any(Algorithm::Sha256, &keys, &[b"body"], &sig[..16]));
        assert!(!verify_any(Algorithm::Sha256, &keys, &[b"other"], &sig));
    }

    #[test]
    fn a_standard_signature_header_of_thousands_of_entries_costs_one_pass_over_the_body() {
        // Before the sender is authenticated its header is free to carry
        // thousands of `v1,` entries; each used to cost an HMAC over the
        // whole body (4,000 entries and 1 MiB: 2.4 s of a worker in a
        // release build). Now each costs a base64 decode and a comparison.
        let key = HmacKey::from_bytes(b"k");
        let body = vec![b'x'; 1 << 20];
        let now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let tolerance = std::time::Duration::from_secs(300);
        let valid = standard::sign(&key, "id", "1700000000", &body);
        let header = format!("{}{valid}", "v1, v1,AAAA ".repeat(4000));
        let started = std::time::Instant::now();
        standard::verify(
            std::slice::from_ref(&key),
            "id",
            "1700000000",
            &header,
            &body,
            now,
            tolerance,
        )
        .unwrap();
        let forged = "v1, ".repeat(8000);
        let err = standard::verify(&[key], "id", "1700000000", &forged, &body, now, tolerance).unwrap_err();
        assert!(matches!(err, VerifyError::Mismatch), "{err:?}");
        let took = started.elapsed();
        assert!(
            took < std::time::Duration::from_secs(5),
            "12,000 entries over a 1 MiB body took {took:?}"
        );
    }

    #[test]
    fn standard_webhooks_published_vector() {
        let key = HmacKey::from_whsec(&Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")).unwrap();
        let sig = standard::sign(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            "1614265330",
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn extreme_timestamps_are_refused_not_overflowed() {
        use std::time::{Duration, UNIX_EPOCH};
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let tolerance = Duration::from_secs(300);
        for ts in [i64::MIN, i64::MIN + 1, -1, 0, i64::MAX] {
            let err = standard::check_timestamp(&ts.to_string(), now, tolerance).unwrap_err();
            assert!(matches!(err, VerifyError::Stale { .. }), "{ts}: {err}");
            assert_eq!(err.status(), 401);
        }
        let err = standard::check_timestamp("-9223372036854775809", now, tolerance).unwrap_err();
        assert_eq!(
            err.to_string(),
            "`webhook-timestamp` header is malformed: out of range for Unix seconds"
        );
        let err = standard::check_timestamp("soon", now, tolerance).unwrap_err();
        assert_eq!(
            err.to_string(),
            "`webhook-timestamp` header is malformed: not an integer (Unix seconds)"
        );
        assert_eq!(
            standard::check_timestamp("1700000300", now, tolerance),
            Ok(1_700_000_300)
        );
        assert!(standard::check_timestamp("1700000301", now, tolerance).is_err());
        assert!(standard::check_timestamp("1699999700", now, tolerance).is_ok());
        assert!(standard::check_timestamp("1699999699", now, tolerance).is_err());
    }

    #[test]
    fn prefixed_hex_accepts_only_the_named_algorithm() {
        let keys = [HmacKey::from_bytes(b"It's a Secret to Everybody")];
        let body: &[&[u8]] = &[b"Hello, World!"];
        let sha256 = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        let sha1 = "sha1=01dc10d0c83e72ed246219cdd91669667fe2ca59";
        assert_eq!(
            verify_prefixed_hex(&keys, sha256, "X-Hub-Signature", Algorithm::Sha256, body),
            Ok(())
        );
        let err = verify_prefixed_hex(&keys, sha1, "X-Hub-Signature", Algorithm::Sha256, body).unwrap_err();
        assert_eq!(
            err.to_string(),
            "`X-Hub-Signature` header is malformed: expected `sha256=<hex>`: this sender signs with HMAC-SHA256"
        );
        assert_eq!(err.status(), 401);
        assert_eq!(
            verify_prefixed_hex(&[], sha256, "X-Hub-Signature", Algorithm::Sha256, body),
            Err(VerifyError::NoSecret)
        );
    }
}
