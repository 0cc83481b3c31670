//! Test support: fixtures, independent signing, the real daemon, stand-in CI servers.
#![allow(dead_code, clippy::unwrap_used)]

pub mod ci;
pub mod daemon;
pub mod disk;
pub mod down;
pub mod pg;

use std::path::{Path, PathBuf};

use hmac::{KeyInit, Mac};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The bytes of `tests/fixtures/payloads/<rel>`.
pub fn payload(rel: &str) -> Vec<u8> {
    let path = fixtures().join("payloads").join(rel);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// HMAC-SHA256 as lowercase hex, computed here without hookbridge's code.
pub fn hmac_sha256_hex(key: &[u8], body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// The `X-Hub-Signature-256` value GitHub sends.
pub fn github_signature(secret: &str, body: &[u8]) -> String {
    format!("sha256={}", hmac_sha256_hex(secret.as_bytes(), body))
}

/// Standard Webhooks `v1,<base64>` over `id.timestamp.body` with a `whsec_` key.
pub fn standard_signature(whsec: &str, id: &str, timestamp: u64, body: &[u8]) -> String {
    use base64::Engine;
    let key = base64::engine::general_purpose::STANDARD
        .decode(whsec.trim_start_matches("whsec_"))
        .unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Poll `cond` every 50 ms until it holds or `timeout` passes.
pub async fn eventually<F: FnMut() -> bool>(timeout: std::time::Duration, what: &str, mut cond: F) {
    let deadline = std::time::Instant::now() + timeout;
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
