//! Event time and spans of event time.
//!
//! Every timestamp that crosses a layer boundary is an [`EventTime`]: whole milliseconds since the
//! Unix epoch, UTC. Milliseconds are what Kafka timestamps use and what the archive stores
//! (`Timestamp(Millisecond, "UTC")`), so no layer ever rounds differently from another.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Errors raised while parsing times and spans. Always the user's input.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error(
        "`{input}` is not a timestamp: expected RFC 3339 (2026-11-21T10:00:00Z) or epoch milliseconds"
    )]
    Timestamp { input: String },
    #[error(
        "`{input}` is not a duration: expected a number and a unit, such as 500ms, 10s, 1m, 2h"
    )]
    Span { input: String },
    #[error("duration `{input}` must be greater than zero")]
    ZeroSpan { input: String },
    #[error(
        "`{input}` is outside the supported range of event times (0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999Z)"
    )]
    OutOfRange { input: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A point in event time: milliseconds since the Unix epoch, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EventTime(pub i64);

impl EventTime {
    /// Unbounded below and above: sentinels of open ranges, never an event's time.
    pub const MIN: EventTime = EventTime(i64::MIN);
    pub const MAX: EventTime = EventTime(i64::MAX);
    /// The first and last event times Tandem accepts (what RFC 3339 can write). Every window
    /// computation over times in this range is far from the limits of `i64`.
    pub const EARLIEST: EventTime = EventTime(-62_135_596_800_000);
    pub const LATEST: EventTime = EventTime(253_402_300_799_999);

    /// Whether the time is in `[EARLIEST, LATEST]`.
    pub fn is_supported(self) -> bool {
        (Self::EARLIEST..=Self::LATEST).contains(&self)
    }

    pub fn from_millis(ms: i64) -> Self {
        Self(ms)
    }

    /// How far an event read at wall-clock time `read_at` may move event-time progress: to its
    /// own time, but never past the clock. Producers write event times (and, by default, Kafka
    /// record timestamps); a producer with a clock running ahead, or a hostile one, could
    /// otherwise close windows, make on-time events late and get windows published as exact
    /// while their events still arrive. The event itself is kept in its window.
    ///
    /// Replays stay deterministic: data older than the clock (every replay of a stored topic,
    /// every checkpoint restore) is unaffected, and both layers bound progress the same way.
    /// The one rule for the speed layer's watermark and the archive's completeness.
    pub fn progress_at(self, read_at: EventTime) -> EventTime {
        self.min(read_at)
    }

    pub fn millis(self) -> i64 {
        self.0
    }

    /// Parses a time given by a user: RFC 3339 (any offset, converted to UTC) or integer epoch
    /// milliseconds, in the supported range ([`EventTime::EARLIEST`] to [`EventTime::LATEST`]).
    pub fn parse(input: &str) -> Result<Self> {
        let time = Self::parse_any(input)?;
        if !time.is_supported() {
            return Err(Error::OutOfRange {
                input: input.to_owned(),
            });
        }
        Ok(time)
    }

    /// Parses any time Tandem itself may have written, including the open-range sentinels.
    fn parse_any(input: &str) -> Result<Self> {
        let trimmed = input.trim();
        if let Ok(ms) = trimmed.parse::<i64>() {
            return Ok(Self(ms));
        }
        DateTime::parse_from_rfc3339(trimmed)
            .map(|t| Self(t.timestamp_millis()))
            .map_err(|_| Error::Timestamp {
                input: input.to_owned(),
            })
    }

    /// RFC 3339 in UTC with a `Z` suffix, with fractional seconds only when needed.
    pub fn to_rfc3339(self) -> String {
        match DateTime::<Utc>::from_timestamp_millis(self.0) {
            Some(t) => t.to_rfc3339_opts(SecondsFormat::AutoSi, true),
            None => self.0.to_string(),
        }
    }

    pub fn saturating_add(self, span: Span) -> Self {
        Self(self.0.saturating_add(span.0))
    }

    pub fn saturating_sub(self, span: Span) -> Self {
        Self(self.0.saturating_sub(span.0))
    }
}

impl fmt::Display for EventTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl Serialize for EventTime {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_rfc3339())
    }
}

/// In the API's description: an RFC 3339 timestamp, as it is written.
impl utoipa::PartialSchema for EventTime {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
            .into()
    }
}

impl utoipa::ToSchema for EventTime {}

/// Epoch milliseconds or a timestamp string, read in one pass: manifests hold thousands of
/// times, and an untagged enum would buffer each value and build an error for the first
/// alternative it tries.
impl<'de> Deserialize<'de> for EventTime {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = EventTime;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("epoch milliseconds or an RFC 3339 timestamp")
            }
            fn visit_i64<E: serde::de::Error>(self, ms: i64) -> std::result::Result<EventTime, E> {
                Ok(EventTime(ms))
            }
            fn visit_u64<E: serde::de::Error>(self, ms: u64) -> std::result::Result<EventTime, E> {
                i64::try_from(ms)
                    .map(EventTime)
                    .map_err(|_| E::custom(format!("{ms} is beyond the largest time")))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> std::result::Result<EventTime, E> {
                EventTime::parse_any(s).map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// A positive length of event time in milliseconds (window sizes, lateness, gaps).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Span(i64);

impl Span {
    pub const ZERO: Span = Span(0);

    pub const fn from_millis(ms: i64) -> Self {
        Self(if ms < 0 { 0 } else { ms })
    }

    pub fn millis(self) -> i64 {
        self.0
    }

    pub fn as_duration(self) -> Duration {
        Duration::from_millis(self.0.max(0) as u64)
    }

    /// Parses `500ms`, `10s`, `1m`, `2h`, `1d`, or combinations such as `1h 30m`.
    pub fn parse(input: &str) -> Result<Self> {
        let parsed = humantime::parse_duration(input.trim()).map_err(|_| Error::Span {
            input: input.to_owned(),
        })?;
        let ms = i64::try_from(parsed.as_millis()).map_err(|_| Error::Span {
            input: input.to_owned(),
        })?;
        Ok(Self(ms))
    }

    /// Like [`Span::parse`] but rejects zero, for sizes that divide time.
    pub fn parse_positive(input: &str) -> Result<Self> {
        let span = Self::parse(input)?;
        if span.0 == 0 {
            return Err(Error::ZeroSpan {
                input: input.to_owned(),
            });
        }
        Ok(span)
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.as_duration()))
    }
}

impl Serialize for Span {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// In the API's description: a duration as text (`90s`, `1h`).
impl utoipa::PartialSchema for Span {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .examples(["1m"])
            .into()
    }
}

impl utoipa::ToSchema for Span {}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rfc3339_in_any_offset_and_epoch_millis() {
        let utc = EventTime::parse("2026-11-21T10:00:00Z").unwrap();
        let offset = EventTime::parse("2026-11-21T15:30:00+05:30").unwrap();
        assert_eq!(utc, offset);
        assert_eq!(utc.millis(), 1_795_255_200_000);
        assert_eq!(EventTime::parse("1795255200000").unwrap(), utc);
        assert_eq!(
            EventTime::parse("2026-11-21T10:00:00.250Z")
                .unwrap()
                .millis(),
            utc.millis() + 250
        );
        assert!(matches!(
            EventTime::parse("yesterday"),
            Err(Error::Timestamp { .. })
        ));
    }

    #[test]
    fn user_times_must_be_in_the_supported_range_but_documents_round_trip_sentinels() {
        assert_eq!(
            EventTime::parse("0001-01-01T00:00:00Z").unwrap(),
            EventTime::EARLIEST
        );
        assert_eq!(
            EventTime::parse("9999-12-31T23:59:59.999Z").unwrap(),
            EventTime::LATEST
        );
        for input in ["-9223372036854775808", "253402300800000", "-62135596800001"] {
            assert!(
                matches!(EventTime::parse(input), Err(Error::OutOfRange { .. })),
                "{input}"
            );
        }
        for t in [EventTime::MIN, EventTime::MAX, EventTime(0)] {
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(serde_json::from_str::<EventTime>(&json).unwrap(), t);
        }
    }

    #[test]
    fn formats_utc_with_millis_only_when_present() {
        assert_eq!(
            EventTime(1_795_255_200_000).to_rfc3339(),
            "2026-11-21T10:00:00Z"
        );
        assert_eq!(
            EventTime(1_795_255_200_250).to_rfc3339(),
            "2026-11-21T10:00:00.250Z"
        );
    }

    #[test]
    fn spans_parse_units_and_reject_garbage() {
        assert_eq!(Span::parse("1m").unwrap().millis(), 60_000);
        assert_eq!(Span::parse("10s").unwrap().millis(), 10_000);
        assert_eq!(Span::parse("500ms").unwrap().millis(), 500);
        assert_eq!(Span::parse("1h 30m").unwrap().millis(), 5_400_000);
        assert!(Span::parse("ten seconds").is_err());
        assert!(matches!(
            Span::parse_positive("0s"),
            Err(Error::ZeroSpan { .. })
        ));
    }
}
