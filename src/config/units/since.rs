//! `since`: how far back `deliveries list --since` and
//! `GET /api/v1/deliveries?since=` look.
//!
//! Admin callers type it, so it is outside input: `500000000000y` is a valid
//! `humantime` duration that used to be taken from `SystemTime::now()` and
//! panic the handler. Here the subtraction is checked and a time before the
//! Unix epoch (where no delivery can be) is refused.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
    rfc3339(text).map_err(|e| match e {
        Rfc3339::Invalid => SinceError::Invalid(shown(s)),
        Rfc3339::BeforeEpoch => SinceError::TooFarBack(shown(s)),
    })
}

enum Rfc3339 {
    Invalid,
    BeforeEpoch,
}

/// An RFC 3339 time with any offset (`Z`, `+01:00`, `-05:00`; `T` and `Z`
/// in either case, as RFC 3339 allows): the offset is read here, the rest
/// by `humantime`, which knows only UTC.
fn rfc3339(text: &str) -> Result<SystemTime, Rfc3339> {
    let mut upper = text.to_ascii_uppercase();
    // `?since=…+01:00` typed into a URL without encoding the `+` arrives as
    // a space: a space where an offset's sign goes is that `+`.
    if let Some(at) = upper.len().checked_sub(6)
        && upper.is_char_boundary(at)
        && upper[at..].starts_with(' ')
        && upper.as_bytes().get(at + 3) == Some(&b':')
    {
        upper.replace_range(at..at + 1, "+");
    }
    let split = upper
        .len()
        .checked_sub(6)
        .filter(|at| upper.is_char_boundary(*at))
        .map(|at| upper.split_at(at));
    let (local, offset) = match split {
        Some((local, offset))
            if offset.is_ascii() && offset.starts_with(['+', '-']) && offset.as_bytes()[3] == b':' =>
        {
            let number = |digits: &str| {
                (digits.len() == 2 && digits.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| digits.parse::<u64>().ok())
                    .flatten()
            };
            let (hours, minutes) = (number(&offset[1..3]), number(&offset[4..6]));
            let (Some(hours), Some(minutes @ 0..=59)) = (hours, minutes) else {
                return Err(Rfc3339::Invalid);
            };
            if hours > 23 {
                return Err(Rfc3339::Invalid);
            }
            let east = offset.starts_with('+');
            (
                format!("{local}Z"),
                Some((east, Duration::from_secs((hours * 60 + minutes) * 60))),
            )
        }
        _ => (upper, None),
    };
    let at = humantime::parse_rfc3339_weak(&local).map_err(|_| Rfc3339::Invalid)?;
    match offset {
        None => Ok(at),
        // 08:00+01:00 is 07:00 UTC.
        Some((true, by)) => at
            .checked_sub(by)
            .filter(|t| *t >= UNIX_EPOCH)
            .ok_or(Rfc3339::BeforeEpoch),
        Some((false, by)) => at.checked_add(by).ok_or(Rfc3339::Invalid),
    }
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
    fn rfc3339_times_with_an_offset_or_in_lower_case() {
        let utc = Ok(UNIX_EPOCH + Duration::from_secs(1_738_310_400));
        assert_eq!(parse_since("2025-01-31T09:00:00+01:00", now()), utc);
        assert_eq!(parse_since("2025-01-31T03:00:00-05:00", now()), utc);
        assert_eq!(parse_since("2025-01-31T08:00:00+00:00", now()), utc);
        assert_eq!(parse_since("2025-01-31t08:00:00z", now()), utc);
        assert_eq!(parse_since("2025-01-31T13:30:00+05:30", now()), utc);
        // A `+` that a URL's query turned into a space.
        assert_eq!(parse_since("2025-01-31T09:00:00 01:00", now()), utc);
        for bad in [
            "2025-01-31T08:00:00+24:00",
            "2025-01-31T08:00:00+01:60",
            "2025-01-31T08:00:00+1:000",
            "2025-01-31T08:00:00+ab:cd",
        ] {
            assert!(
                matches!(parse_since(bad, now()), Err(SinceError::Invalid(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            parse_since("1970-01-01T00:30:00+01:00", now()),
            Err(SinceError::TooFarBack(_))
        ));
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

        /// Offsets of any shape, and multi-byte text where one would be.
        #[test]
        fn any_offset(offset in "[+\\-é:0-9Z]{0,7}|\\PC{0,6}") {
            if let Ok(t) = parse_since(&format!("2025-01-31T08:00:00{offset}"), now()) {
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
