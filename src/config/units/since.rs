//! `since`: how far back `deliveries list --since` and
//! `GET /api/v1/deliveries?since=` look.
//!
//! Admin callers type it, so it is outside input: `500000000000y` is a valid
//! `humantime` duration that used to be taken from `SystemTime::now()` and
//! panic the handler. Here the subtraction is checked and a time before the
//! Unix epoch (where no delivery can be) is refused.

use std::time::{SystemTime, UNIX_EPOCH};

use super::shown;

/// Why a `since` value was refused. The message names the value and what
/// would have been accepted, for the CLI's `error:` and the API's 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinceError {
    #[error("`{0}` is neither a duration (`1h`, `2d`) nor an RFC 3339 time (`2025-01-31T08:00:00Z`)")]
    Invalid(String),
    #[error("`{0}` reaches back before 1970; use a shorter duration or an RFC 3339 time")]
    TooFarBack(String),
}

/// `1h`, `30m`, `2d` before `now`, or an RFC 3339 timestamp.
pub fn parse_since(s: &str, now: SystemTime) -> Result<SystemTime, SinceError> {
    let text = s.trim();
    match humantime::parse_duration(text) {
        Ok(d) => {
            return now
                .checked_sub(d)
                .filter(|t| *t >= UNIX_EPOCH)
                .ok_or_else(|| SinceError::TooFarBack(shown(s)));
        }
        Err(humantime::DurationError::NumberOverflow) => return Err(SinceError::TooFarBack(shown(s))),
        Err(_) => {}
    }
    humantime::parse_rfc3339_weak(text).map_err(|_| SinceError::Invalid(shown(s)))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_780_000_000)
    }

    #[test]
    fn durations_count_back_from_now() {
        assert_eq!(parse_since("1h", now()), Ok(now() - Duration::from_secs(3600)));
        assert_eq!(
            parse_since(" 2d ", now()),
            Ok(now() - Duration::from_secs(2 * 86400))
        );
    }

    #[test]
    fn rfc3339_times() {
        assert_eq!(
            parse_since("2025-01-31T08:00:00Z", now()),
            Ok(UNIX_EPOCH + Duration::from_secs(1_738_310_400))
        );
    }

    #[test]
    fn huge_durations_are_an_error_not_a_panic() {
        assert_eq!(
            parse_since("500000000000y", now()),
            Err(SinceError::TooFarBack("500000000000y".into()))
        );
        assert!(matches!(
            parse_since("57y", now()),
            Err(SinceError::TooFarBack(_))
        ));
        assert!(parse_since("56y", now()).is_ok());
    }

    #[test]
    fn garbage_is_named_in_the_error() {
        let e = parse_since("yesterday", now()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "`yesterday` is neither a duration (`1h`, `2d`) nor an RFC 3339 time (`2025-01-31T08:00:00Z`)"
        );
    }

    proptest! {
        /// Whatever the caller sends: an answer, never a panic, and never a
        /// time before the epoch or (for a duration) after now.
        #[test]
        fn any_text(s in "\\PC{0,40}") {
            if let Ok(t) = parse_since(&s, now()) {
                prop_assert!(t >= UNIX_EPOCH);
            }
        }

        #[test]
        fn any_number_of_any_unit(n in any::<u64>(), unit in "(ns|us|ms|s|m|h|d|w|M|y)") {
            match parse_since(&format!("{n}{unit}"), now()) {
                Ok(t) => prop_assert!(t >= UNIX_EPOCH && t <= now()),
                Err(e) => prop_assert_eq!(e, SinceError::TooFarBack(shown(&format!("{n}{unit}")))),
            }
        }
    }
}
