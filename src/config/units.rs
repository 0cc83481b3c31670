//! Human units in the config: durations (`30s`, `10m`, `14d`) and sizes (`25MiB`).
//!
//! Both parse inside `Deserialize`, so a bad value becomes a TOML error that
//! points at the value itself. Parsing uses checked arithmetic, and every
//! value has a maximum (`config::limits`): the field's type names it, as in
//! `DurationAtMost<{ limits::RETENTION }>`, and a key typed plainly
//! [`HumanDuration`] or [`ByteSize`] still gets the general maximum. So no
//! config value can overflow a clock or a multiplication later.
//!
//! `since` (`deliveries list --since`, `GET /api/v1/deliveries?since=`) is a
//! human time too, parsed by [`since::parse_since`].

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use super::limits;

pub mod since;
pub use since::{SinceError, parse_since};

/// Why a duration or size from the config was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("invalid duration `{given}` ({reason}); expected e.g. `30s`, `10m`, `14d`")]
    Duration { given: String, reason: String },
    #[error("duration `{given}` is too long: at most `{max}` is allowed here")]
    DurationTooLong { given: String, max: HumanDuration },
    #[error("timeout `{given}` is under 1ms: nothing could be sent or received in time; expected e.g. `30s`")]
    ShortTimeout { given: String },
    #[error("invalid size `{given}`; expected e.g. `25MiB`, `512KiB` or a number of bytes")]
    Size { given: String },
    #[error("size `{given}` is too large: at most `{max}` is allowed here")]
    SizeTooLarge { given: String, max: ByteSize },
}

/// The user's text for a message, cut short: a value can be as long as the
/// file, and a message should fit on a line.
pub fn shown(s: &str) -> String {
    const MAX: usize = 40;
    match s.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_owned(),
    }
}

/// Parse a duration and check it against `max`.
///
/// `humantime` adds and multiplies with overflow checks (a sum past `u64`
/// seconds is its `NumberOverflow`), but it happily returns `500000000000y`:
/// the maximum is what keeps the value usable.
pub fn parse_duration(s: &str, max: Duration) -> Result<Duration, UnitError> {
    let d = match humantime::parse_duration(s.trim()) {
        Ok(d) => d,
        // More seconds than `u64` holds: certainly over the maximum.
        Err(humantime::DurationError::NumberOverflow) => Duration::MAX,
        Err(e) => {
            return Err(UnitError::Duration {
                given: shown(s),
                reason: e.to_string(),
            });
        }
    };
    if d > max {
        return Err(UnitError::DurationTooLong {
            given: shown(s),
            max: HumanDuration(max),
        });
    }
    Ok(d)
}

/// A duration written as `500ms`, `30s`, `10m`, `2h`, `14d` (or combinations
/// like `1h30m`), at most [`limits::DURATION`]. Also how durations are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = UnitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_duration(s, Duration::from_secs(limits::DURATION)).map(HumanDuration)
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A config duration of at most `MAX` seconds, for keys with a maximum of
/// their own (`[store] retention`, `[retry] request_timeout`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct DurationAtMost<const MAX: u64>(pub Duration);

impl<const MAX: u64> DurationAtMost<MAX> {
    pub const MAX: Duration = Duration::from_secs(MAX);
}

impl<const MAX: u64> FromStr for DurationAtMost<MAX> {
    type Err = UnitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_duration(s, Self::MAX).map(DurationAtMost)
    }
}

/// A timeout: a duration of at most `MAX` seconds, and at least a millisecond
/// (the timers' resolution: less behaves as zero).
#[derive(Debug, Clone, Copy)]
pub struct TimeoutAtMost<const MAX: u64>(pub Duration);

impl<const MAX: u64> FromStr for TimeoutAtMost<MAX> {
    type Err = UnitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match parse_duration(s, Duration::from_secs(MAX))? {
            d if d < Duration::from_millis(1) => Err(UnitError::ShortTimeout { given: shown(s) }),
            d => Ok(TimeoutAtMost(d)),
        }
    }
}

impl<'de, const MAX: u64> Deserialize<'de> for TimeoutAtMost<MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl<'de, const MAX: u64> Deserialize<'de> for DurationAtMost<MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Bytes per unit; `k`/`KB` are decimal and `KiB` binary, as `bytesize` reads them.
fn unit_factor(unit: &str) -> Option<u64> {
    const UNITS: [(&str, u64); 26] = [
        ("", 1),
        ("b", 1),
        ("k", 1_000),
        ("kb", 1_000),
        ("ki", 1 << 10),
        ("kib", 1 << 10),
        ("m", 1_000_000),
        ("mb", 1_000_000),
        ("mi", 1 << 20),
        ("mib", 1 << 20),
        ("g", 1_000_000_000),
        ("gb", 1_000_000_000),
        ("gi", 1 << 30),
        ("gib", 1 << 30),
        ("t", 1_000_000_000_000),
        ("tb", 1_000_000_000_000),
        ("ti", 1 << 40),
        ("tib", 1 << 40),
        ("p", 1_000_000_000_000_000),
        ("pb", 1_000_000_000_000_000),
        ("pi", 1 << 50),
        ("pib", 1 << 50),
        ("e", 1_000_000_000_000_000_000),
        ("eb", 1_000_000_000_000_000_000),
        ("ei", 1 << 60),
        ("eib", 1 << 60),
    ];
    UNITS
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(unit))
        .map(|(_, factor)| *factor)
}

/// What is wrong with a size's text.
enum SizeFault {
    /// Not a number with a unit.
    Invalid,
    /// A size, but more bytes than `u64` holds.
    Overflow,
}

/// `25MiB`, `1.5 GB`, `512` → bytes, with checked arithmetic (a fraction of
/// a byte is rounded down).
fn bytes(s: &str) -> Result<u64, SizeFault> {
    use SizeFault::{Invalid, Overflow};
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let factor = unit_factor(unit.trim_start()).ok_or(Invalid)?;
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
        return Err(Invalid);
    }
    // Only digits are left, so a failed parse is an overflow.
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| Overflow)?
    };
    let mut total = whole.checked_mul(factor).ok_or(Overflow)?;
    // Digits past the 18th change less than a byte of anything below EiB.
    let fraction = &fraction[..fraction.len().min(18)];
    if !fraction.is_empty() {
        let numerator: u128 = fraction.parse().map_err(|_| Invalid)?;
        // 10^18 and factor (at most 2^60) × numerator (below 10^18) fit in u128.
        let part = u128::from(factor) * numerator / 10u128.pow(fraction.len() as u32);
        total = total
            .checked_add(u64::try_from(part).map_err(|_| Overflow)?)
            .ok_or(Overflow)?;
    }
    Ok(total)
}

/// Parse a size and check it against `max`.
pub fn parse_size(s: &str, max: u64) -> Result<u64, UnitError> {
    match bytes(s) {
        Ok(n) => check_size(s, n, max),
        Err(SizeFault::Overflow) => Err(UnitError::SizeTooLarge {
            given: shown(s),
            max: ByteSize(max),
        }),
        Err(SizeFault::Invalid) => Err(UnitError::Size { given: shown(s) }),
    }
}

fn check_size(given: &str, n: u64, max: u64) -> Result<u64, UnitError> {
    if n > max {
        return Err(UnitError::SizeTooLarge {
            given: shown(given),
            max: ByteSize(max),
        });
    }
    Ok(n)
}

/// A size as TOML gives it: an integer of bytes or a string with a unit.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawSize {
    Int(u64),
    Text(String),
}

impl RawSize {
    fn bytes(self, max: u64) -> Result<u64, UnitError> {
        match self {
            RawSize::Int(n) => check_size(&n.to_string(), n, max),
            RawSize::Text(s) => parse_size(&s, max),
        }
    }
}

/// A byte size written as `25MiB`, `512KiB`, `1MB` or a plain number of
/// bytes, at most [`limits::SIZE`]. Also how sizes are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = UnitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_size(s, limits::SIZE).map(ByteSize)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", bytesize::ByteSize(self.0).display().iec())
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        RawSize::deserialize(d)?
            .bytes(limits::SIZE)
            .map(ByteSize)
            .map_err(serde::de::Error::custom)
    }
}

/// A config size of at most `MAX` bytes, for keys with a maximum of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeAtMost<const MAX: u64>(pub u64);

impl<'de, const MAX: u64> Deserialize<'de> for SizeAtMost<MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        RawSize::deserialize(d)?
            .bytes(MAX)
            .map(SizeAtMost)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests;
