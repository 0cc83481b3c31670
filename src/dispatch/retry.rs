//! When a job runs next: exponential backoff with jitter, and the bounds on
//! what a CI may ask for.
//!
//! A CI's `Retry-After` or `RateLimit-Reset` is a number from outside. It is
//! honoured when it asks for longer than the backoff, up to `max_backoff`, so
//! a CI answering "retry now" cannot make a job spend its attempts in a burst,
//! and one answering "in a thousand years" cannot park it forever. All of it
//! is saturating arithmetic: no config value or header can panic here.

use std::time::{Duration, SystemTime};

use tracing::warn;

use crate::config::RetryPolicy;
use crate::store::{StoreError, Transition};
use crate::target::Outcome;

/// Write a record (`what`: "attempt", "cancel") to the store, tried again
/// while the store is briefly unavailable: only an unavailable store may
/// take it later (the error policy in `store`). False once given up.
pub(super) async fn record_retrying<F, Fut>(what: &str, mut write: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), StoreError>>,
{
    let mut delay = Duration::from_millis(50);
    for _ in 0..10 {
        match write().await {
            Ok(()) => return true,
            Err(e) if !e.is_unavailable() => {
                warn!(error = %e, "cannot record the {what}; not retried");
                return false;
            }
            Err(e) => {
                warn!(error = %e, "cannot record the {what}; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
    false
}

/// The longest delay the dispatcher hands to a clock, the store or the HTTP
/// client (retry delays, leases, request timeouts), whatever the config says:
/// far beyond any sensible setting, and well inside what `SystemTime`, the
/// stores' millisecond columns and timers can represent.
pub const LONGEST_WAIT: Duration = Duration::from_secs(366 * 24 * 3600);

/// The base delay before retry `attempt` (1-based): `initial_backoff`
/// doubling each time, capped at `max_backoff`. The jittered delay lies in
/// `[base / 2, base]`.
pub fn backoff_base(policy: &RetryPolicy, attempt: u32) -> Duration {
    let exp = attempt.saturating_sub(1).min(30);
    policy
        .initial_backoff
        .saturating_mul(1u32 << exp)
        .min(policy.max_backoff)
}

/// Delay before retry `attempt` (1-based): exponential from `initial_backoff`,
/// capped at `max_backoff`, with "equal jitter": half the base fixed, plus
/// `jitter` (a fraction in `[0, 1]`, clamped; random in the daemon) of the
/// other half.
pub fn backoff(policy: &RetryPolicy, attempt: u32, jitter: f64) -> Duration {
    let half = backoff_base(policy, attempt) / 2;
    let jitter = if jitter.is_nan() {
        0.0
    } else {
        jitter.clamp(0.0, 1.0)
    };
    half.saturating_add(half.mul_f64(jitter))
}

/// The delay before retry `attempt`: the backoff, or what the CI `requested`
/// when that is longer, never more than `max_backoff` (nor [`LONGEST_WAIT`]).
pub fn retry_delay(policy: &RetryPolicy, attempt: u32, requested: Option<Duration>, jitter: f64) -> Duration {
    let backoff = backoff(policy, attempt, jitter);
    requested
        .map_or(backoff, |r| r.max(backoff))
        .min(policy.max_backoff)
        .min(LONGEST_WAIT)
}

/// The next state of a job after an attempt with `outcome`, at `now`; a
/// retry falls at `jitter` within its backoff window ([`backoff`]).
pub fn transition(
    outcome: Outcome,
    attempt: u32,
    policy: &RetryPolicy,
    now: SystemTime,
    jitter: f64,
) -> Transition {
    match outcome {
        Outcome::Created(result) => Transition::Done(result),
        Outcome::Skipped(message) => Transition::Skipped(message),
        Outcome::Permanent(reason) => Transition::Dead(reason),
        Outcome::Retry { reason, .. } if attempt >= policy.max_attempts => {
            Transition::Dead(format!("gave up after {attempt} attempts; last: {reason}"))
        }
        Outcome::Retry { reason, after } => {
            let delay = retry_delay(policy, attempt, after, jitter);
            Transition::Retry {
                // `now` is a clock and the delay at most `LONGEST_WAIT`, so this never falls back in practice.
                at: now.checked_add(delay).unwrap_or(now),
                reason,
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::UNIX_EPOCH;

    use proptest::prelude::*;

    use super::*;
    use crate::target::{Response, TriggerRequest, classify};

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
        }
    }

    fn retry(after: Option<Duration>) -> Outcome {
        Outcome::Retry {
            reason: "HTTP 429".into(),
            after,
        }
    }

    fn delay(t: &Transition, now: SystemTime) -> Duration {
        match t {
            Transition::Retry { at, .. } => at.duration_since(now).unwrap(),
            other => panic!("not a retry: {other:?}"),
        }
    }

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let p = policy();
        for _ in 0..100 {
            let d1 = backoff(&p, 1, rand::random());
            assert!(
                d1 >= Duration::from_secs(1) && d1 <= Duration::from_secs(2),
                "{d1:?}"
            );
            let d3 = backoff(&p, 3, rand::random());
            assert!(
                d3 >= Duration::from_secs(4) && d3 <= Duration::from_secs(8),
                "{d3:?}"
            );
            let d20 = backoff(&p, 20, rand::random());
            assert!(
                d20 >= Duration::from_secs(30) && d20 <= Duration::from_secs(60),
                "{d20:?}"
            );
        }
    }

    /// The jitter places the delay in the upper half of the base, exactly.
    #[test]
    fn jitter_places_the_backoff_in_its_window() {
        let p = policy();
        let s = Duration::from_secs;
        assert_eq!(backoff(&p, 1, 0.0), s(1));
        assert_eq!(backoff(&p, 1, 1.0), s(2));
        assert_eq!(backoff(&p, 3, 0.5), s(6));
        assert_eq!(backoff(&p, 20, 1.0), s(60));
        assert_eq!(backoff(&p, 20, 0.0), s(30));
        // Out of range is clamped; NaN is the floor.
        assert_eq!(backoff(&p, 2, 7.0), s(4));
        assert_eq!(backoff(&p, 2, -1.0), s(2));
        assert_eq!(backoff(&p, 2, f64::NAN), s(2));
    }

    #[test]
    fn retries_stop_at_max_attempts() {
        let now = SystemTime::now();
        assert!(matches!(
            transition(retry(None), 4, &policy(), now, rand::random()),
            Transition::Retry { .. }
        ));
        assert!(
            matches!(transition(retry(None), 5, &policy(), now, rand::random()), Transition::Dead(r) if r == "gave up after 5 attempts; last: HTTP 429")
        );
    }

    #[test]
    fn a_longer_retry_after_is_honoured() {
        let now = SystemTime::now();
        let t = transition(
            retry(Some(Duration::from_secs(30))),
            1,
            &policy(),
            now,
            rand::random(),
        );
        assert_eq!(
            t,
            Transition::Retry {
                at: now + Duration::from_secs(30),
                reason: "HTTP 429".into()
            }
        );
    }

    #[test]
    fn retry_after_is_floored_at_the_backoff_and_capped_at_max_backoff() {
        let now = SystemTime::now();
        for _ in 0..50 {
            let d = delay(
                &transition(retry(Some(Duration::ZERO)), 3, &policy(), now, rand::random()),
                now,
            );
            assert!(d >= Duration::from_secs(4), "{d:?}");
            let d = delay(
                &transition(
                    retry(Some(Duration::from_secs(100_000))),
                    1,
                    &policy(),
                    now,
                    rand::random(),
                ),
                now,
            );
            assert_eq!(d, Duration::from_secs(60));
            let d = delay(
                &transition(retry(Some(Duration::MAX)), 1, &policy(), now, rand::random()),
                now,
            );
            assert_eq!(d, Duration::from_secs(60));
        }
    }

    #[test]
    fn huge_config_durations_do_not_panic() {
        let p = RetryPolicy {
            max_attempts: u32::MAX,
            initial_backoff: Duration::MAX,
            max_backoff: Duration::MAX,
            request_timeout: Duration::MAX,
        };
        let now = SystemTime::now();
        for attempt in [0, 1, 2, 31, 32, u32::MAX - 1] {
            let d = delay(
                &transition(retry(Some(Duration::MAX)), attempt, &p, now, rand::random()),
                now,
            );
            assert_eq!(d, LONGEST_WAIT);
            let d = delay(&transition(retry(None), attempt, &p, now, rand::random()), now);
            assert!(d <= LONGEST_WAIT);
        }
    }

    fn request() -> TriggerRequest {
        serde_json::from_value(serde_json::json!({"api": "gitlab_pipeline", "project": "a/b", "ref": "main"}))
            .unwrap()
    }

    proptest! {
        /// Whatever a CI writes in `Retry-After` or `RateLimit-Reset`, whatever
        /// the clock says: no panic, and the job's next attempt lies within
        /// [backoff floor, max_backoff] of now.
        #[test]
        fn any_rate_limit_header_gives_a_bounded_delay(
            status in prop_oneof![Just(429u16), Just(503), Just(408)],
            retry_after in proptest::option::of(prop_oneof![
                "\\PC{0,30}",
                "[0-9]{1,22}",
                "-[0-9]{1,5}",
                any::<u64>().prop_map(|n| n.to_string()),
                (0u64..=253_402_300_799).prop_map(|s| httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(s))),
            ]),
            reset in proptest::option::of(prop_oneof![
                "[0-9]{1,22}",
                any::<u64>().prop_map(|n| n.to_string()),
                "\\PC{0,20}",
            ]),
            now_secs in 0u64..=400_000_000_000,
            attempt in 1u32..=40,
            initial_ms in 1u64..=120_000,
            max_ms in 1u64..=7_200_000,
            jitter in 0.0f64..=1.0,
        ) {
            let p = RetryPolicy {
                max_attempts: 100,
                initial_backoff: Duration::from_millis(initial_ms),
                max_backoff: Duration::from_millis(max_ms),
                request_timeout: Duration::from_secs(30),
            };
            let mut headers = http::HeaderMap::new();
            for (name, value) in [("retry-after", retry_after), ("ratelimit-reset", reset)] {
                if let Some(v) = value.and_then(|v| http::HeaderValue::from_str(&v).ok()) {
                    headers.insert(name, v);
                }
            }
            let now = UNIX_EPOCH + Duration::from_secs(now_secs);
            let response = Response { status, headers, body: bytes::Bytes::new() };
            let outcome = classify(&request(), &response, now);
            let t = transition(outcome, attempt, &p, now, jitter);
            let d = delay(&t, now);
            let floor = backoff(&p, attempt, jitter);
            prop_assert!(d >= floor, "{:?} < floor {:?}", d, floor);
            prop_assert!(d <= p.max_backoff, "{:?} > max_backoff {:?}", d, p.max_backoff);
        }
    }
}
