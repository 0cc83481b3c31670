//! The retry and timeout policy of trigger attempts, and how a target's or
//! rule's `[retry]` table overlays it. A leaf of [`crate::config`].

use std::time::Duration;

use super::diagnostic::Diagnostic;
use super::loader::Loader;
use super::raw::RawRetry;

/// Retry and timeout policy for trigger attempts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub request_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 12,
            initial_backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(600),
            request_timeout: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// This policy with the keys `raw` sets replaced.
    pub fn overlay(&self, raw: &RawRetry, loader: &mut Loader) -> RetryPolicy {
        let mut p = self.clone();
        if let Some(n) = &raw.max_attempts {
            if *n.get_ref() == 0 {
                loader.push(Diagnostic::error(
                    "`max_attempts` must be at least 1",
                    Some(n.span()),
                ));
            }
            p.max_attempts = (*n.get_ref()).max(1);
        }
        if let Some(d) = raw.initial_backoff {
            p.initial_backoff = d.0;
        }
        if let Some(d) = raw.max_backoff {
            p.max_backoff = d.0;
        }
        if let Some(d) = raw.request_timeout {
            p.request_timeout = d.0;
        }
        p
    }
}
