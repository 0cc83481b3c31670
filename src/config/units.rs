//! Human units in the config: durations (`30s`, `10m`, `14d`) and sizes (`25MiB`).
//!
//! Both parse inside `Deserialize`, so a bad value becomes a TOML error that
//! points at the value itself.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

/// A duration written as `500ms`, `30s`, `10m`, `2h`, `14d` (or combinations like `1h30m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(s.trim())
            .map(HumanDuration)
            .map_err(|e| format!("invalid duration `{s}` ({e}); expected e.g. `30s`, `10m`, `14d`"))
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

/// A byte size written as `25MiB`, `512KiB`, `1MB` or a plain number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.trim()
            .parse::<bytesize::ByteSize>()
            .map(|b| ByteSize(b.as_u64()))
            .map_err(|_| format!("invalid size `{s}`; expected e.g. `25MiB`, `512KiB` or a number of bytes"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", bytesize::ByteSize(self.0).display().iec())
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(ByteSize(n)),
            Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!("30s".parse::<HumanDuration>().unwrap().0, Duration::from_secs(30));
        assert_eq!(
            "10m".parse::<HumanDuration>().unwrap().0,
            Duration::from_secs(600)
        );
        assert_eq!(
            "14d".parse::<HumanDuration>().unwrap().0,
            Duration::from_secs(14 * 86400)
        );
        assert!("ten minutes".parse::<HumanDuration>().is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!("25MiB".parse::<ByteSize>().unwrap().0, 25 * 1024 * 1024);
        assert_eq!("1MB".parse::<ByteSize>().unwrap().0, 1_000_000);
        assert!("lots".parse::<ByteSize>().is_err());
    }
}
