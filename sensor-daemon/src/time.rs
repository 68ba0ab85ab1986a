//! Times as alerts, logs and status files write them: RFC 3339 UTC, with
//! nanoseconds (event times) or whole seconds (feed versions, fetch times);
//! and the one parser of durations written by people (`"200ms"`, `"90s"`,
//! `"1h"`) used by the configuration file, `[[output]]` tables and flags.
//!
//! A shared leaf module: it imports nothing from the crate, so any layer may
//! use it.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// RFC 3339 UTC with nanoseconds (event times).
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_nanos(t).to_string()
}

/// RFC 3339 UTC in whole seconds (feed versions, fetch times).
pub fn rfc3339_secs(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// A duration as people write it: a number and a unit (`"200ms"`, `"90s"`,
/// `"1h"`, `"1h 30m"`); the error says what was wrong in one line.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("{text:?} is not a duration like \"200ms\", \"90s\" or \"1h\" ({e})"))
}

/// Serde: a duration as text (see [`parse_duration`]). A bare number is
/// refused with a hint, since its unit would be a guess.
pub fn deserialize_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Text {
        Text(String),
        Number(i64),
    }
    match Text::deserialize(d)? {
        Text::Text(t) => parse_duration(&t).map_err(serde::de::Error::custom),
        Text::Number(n) => Err(serde::de::Error::custom(format!(
            "{n} has no unit; write a duration like \"{n}ms\" or \"{n}s\""
        ))),
    }
}

/// Milliseconds since the Unix epoch (0 before it).
pub fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Nanoseconds since the Unix epoch (0 before it).
pub fn epoch_ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// A point in time written as RFC 3339 with nanoseconds
/// (`2024-11-24T21:00:00.123456789Z`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub SystemTime);

/// A point in time written as RFC 3339 in whole seconds
/// (`2024-11-24T21:00:00Z`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimestampSecs(pub SystemTime);

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        humantime::format_rfc3339_nanos(self.0).fmt(f)
    }
}

impl fmt::Display for TimestampSecs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        humantime::format_rfc3339_seconds(self.0).fmt(f)
    }
}

fn parse<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_rfc3339(&text)
        .map_err(|e| serde::de::Error::custom(format!("time {text:?}: {e}")))
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse(d).map(Timestamp)
    }
}

impl Serialize for TimestampSecs {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TimestampSecs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse(d).map(TimestampSecs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn both_precisions_round_trip_through_json() {
        let t = UNIX_EPOCH + Duration::new(1_732_482_000, 123_456_789);
        let json = serde_json::to_string(&Timestamp(t)).unwrap();
        assert_eq!(json, "\"2024-11-24T21:00:00.123456789Z\"");
        assert_eq!(serde_json::from_str::<Timestamp>(&json).unwrap().0, t);
        let secs = UNIX_EPOCH + Duration::from_secs(1_732_482_000);
        let json = serde_json::to_string(&TimestampSecs(secs)).unwrap();
        assert_eq!(json, "\"2024-11-24T21:00:00Z\"");
        assert_eq!(
            serde_json::from_str::<TimestampSecs>(&json).unwrap().0,
            secs
        );
        assert!(serde_json::from_str::<Timestamp>("\"yesterday\"").is_err());
        assert_eq!(epoch_ms(t), 1_732_482_000_123);
        assert_eq!(epoch_ns(t), 1_732_482_000_123_456_789);
    }
}
