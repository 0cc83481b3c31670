//! Test support: fixtures, independent signing, the real daemon, stand-in CI servers.
#![allow(dead_code, clippy::unwrap_used)]

pub(crate) mod browser;
pub(crate) mod cancel;
pub(crate) mod ci;
pub(crate) mod daemon;
pub(crate) mod disk;
pub(crate) mod down;
pub(crate) mod pg;
pub(crate) mod targets;
pub(crate) mod vcs;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hmac::{KeyInit, Mac};

pub(crate) fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The bytes of `tests/fixtures/payloads/<rel>`.
pub(crate) fn payload(rel: &str) -> Vec<u8> {
    let path = fixtures().join("payloads").join(rel);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// HMAC-SHA256 as lowercase hex, computed here without hookbridge's code.
pub(crate) fn hmac_sha256_hex(key: &[u8], body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// The `X-Hub-Signature-256` value GitHub sends.
pub(crate) fn github_signature(secret: &str, body: &[u8]) -> String {
    format!("sha256={}", hmac_sha256_hex(secret.as_bytes(), body))
}

/// Standard Webhooks `v1,<base64>` over `id.timestamp.body` with a `whsec_` key.
pub(crate) fn standard_signature(whsec: &str, id: &str, timestamp: u64, body: &[u8]) -> String {
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

pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// How often the waits below look again.
const POLL: Duration = Duration::from_millis(50);

/// Poll `cond` until it holds, at most `timeout`.
pub(crate) async fn eventually<F: FnMut() -> bool>(timeout: Duration, what: &str, mut cond: F) {
    wait_for(
        timeout,
        what,
        async || if cond() { Ok(()) } else { Err("not yet".into()) },
    )
    .await;
}

/// Poll `check` until it returns `Ok`, at most `timeout`; then fail, naming
/// `what` and the last `Err`: what was seen instead.
pub(crate) async fn wait_for<T>(
    timeout: Duration,
    what: &str,
    mut check: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(done) => return done,
            Err(seen) => assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}; last seen: {seen}"
            ),
        }
        tokio::time::sleep(POLL).await;
    }
}

/// [`wait_for`] for tests that run no async runtime.
pub(crate) fn wait_for_blocking<T>(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(done) => return done,
            Err(seen) => assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}; last seen: {seen}"
            ),
        }
        std::thread::sleep(POLL);
    }
}

/// Wait at most `timeout` for `child` to exit on its own; `None` if it is
/// still running then (it is left running: the caller decides).
pub(crate) fn exit_within(
    child: &mut std::process::Child,
    timeout: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(POLL);
    }
}
