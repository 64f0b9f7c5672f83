//! Decoding JSON events into Arrow record batches.
//!
//! Both consumers of the topic (the speed layer and the archive) decode with this module, so an
//! event is malformed for one exactly when it is malformed for the other. Decoding is strict about
//! declared fields and lenient about everything else:
//!
//! - the payload must be a JSON object carrying the time field (RFC 3339 string or integer epoch
//!   milliseconds);
//! - a declared field must have its declared type (`float64` also accepts JSON integers,
//!   `timestamp` accepts the same forms as the time field); `null` or absence means SQL NULL;
//! - undeclared keys are ignored.
//!
//! The decoder deserializes straight into typed slots that borrow from the payload, validates the
//! whole event, and only then appends it to column builders, so a bad event never leaves a
//! half-written row behind.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt;
use std::sync::Arc;

use arrow_schema::SchemaRef;
use chrono::DateTime;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};

use crate::schema::{EventSchema, FieldType};
use crate::time::{EventTime, Span};

mod batch;

pub use batch::EventBatchBuilder;

/// Why an event is malformed. Carried to the dead-letter topic as the `reason` header.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("not valid JSON: {detail}")]
    NotJson { detail: String },
    #[error("not a JSON object")]
    NotObject,
    #[error("missing time field `{field}`")]
    MissingTime { field: String },
    #[error("time field `{field}`: {detail}")]
    BadTime { field: String, detail: String },
    #[error(
        "time field `{field}`: {time} is before the earliest accepted time {min} (schema.min_time)"
    )]
    Past {
        field: String,
        time: EventTime,
        min: EventTime,
    },
    #[error("field `{field}`: expected {expected}, got {got}")]
    WrongType {
        field: String,
        expected: FieldType,
        got: String,
    },
}

impl DecodeError {
    /// A short, stable label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::NotJson { .. } => "not_json",
            DecodeError::NotObject => "not_object",
            DecodeError::MissingTime { .. } => "missing_time",
            DecodeError::BadTime { .. } => "bad_time",
            DecodeError::Past { .. } => "past",
            DecodeError::WrongType { .. } => "wrong_type",
        }
    }
}

/// The latest event time a message may carry: `max_future` past the Kafka record's timestamp,
/// so that the speed layer, the archive and any replay decide the same way for the same
/// message; past `now` only for a record without a timestamp.
pub fn future_limit(record_timestamp: Option<i64>, now: EventTime, max_future: Span) -> EventTime {
    record_timestamp
        .map_or(now, EventTime)
        .saturating_add(max_future)
}

/// One decoded field value, borrowing strings from the payload where it can.
#[derive(Debug, Clone, PartialEq)]
pub enum Slot<'a> {
    Null,
    Str(Cow<'a, str>),
    Int(i64),
    Float(f64),
    Bool(bool),
    Time(i64),
}

/// A validated event: its event time and one slot per declared field, in declaration order.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedEvent<'a> {
    pub time: EventTime,
    pub values: Vec<Slot<'a>>,
}

/// Decodes payloads for one [`EventSchema`]. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct EventDecoder {
    schema: Arc<EventSchema>,
    arrow: SchemaRef,
}

/// What a key in the JSON object refers to.
#[derive(Clone, Copy)]
enum Target {
    Time,
    Field(usize),
    Ignored,
}

impl EventDecoder {
    pub fn new(schema: Arc<EventSchema>) -> Self {
        let arrow = schema.arrow_schema();
        Self { schema, arrow }
    }

    pub fn schema(&self) -> &Arc<EventSchema> {
        &self.schema
    }

    pub fn arrow_schema(&self) -> &SchemaRef {
        &self.arrow
    }

    /// A schema has a handful of fields: comparing names beats hashing every key.
    fn target(&self, key: &str) -> Target {
        if key == self.schema.time_field {
            Target::Time
        } else if let Some(i) = self.schema.fields.iter().position(|(name, _)| name == key) {
            Target::Field(i)
        } else {
            Target::Ignored
        }
    }

    /// Decodes and validates one payload.
    pub fn decode<'a>(&self, payload: &'a [u8]) -> Result<DecodedEvent<'a>, DecodeError> {
        let problem = RefCell::new(None);
        let seed = EventSeed {
            decoder: self,
            problem: &problem,
        };
        // One UTF-8 check of the whole payload is cheaper than serde_json's check per string.
        let text = std::str::from_utf8(payload).map_err(|err| DecodeError::NotJson {
            detail: format!("not UTF-8: {err}"),
        })?;
        let mut de = serde_json::Deserializer::from_str(text);
        let outcome = seed
            .deserialize(&mut de)
            .and_then(|event| de.end().map(|()| event));
        match outcome {
            Ok(event) => Ok(event),
            Err(err) => Err(problem
                .into_inner()
                .unwrap_or_else(|| DecodeError::NotJson {
                    detail: err.to_string(),
                })),
        }
    }
}

/// Resolves an object key to its [`Target`] without copying it (a `Cow<str>` key would be
/// deserialized as an owned `String`).
struct KeySeed<'d>(&'d EventDecoder);

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Target;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Target;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        Ok(self.0.target(key))
    }
}

struct EventSeed<'d> {
    decoder: &'d EventDecoder,
    problem: &'d RefCell<Option<DecodeError>>,
}

impl<'de> DeserializeSeed<'de> for EventSeed<'_> {
    type Value = DecodedEvent<'de>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for EventSeed<'_> {
    type Value = DecodedEvent<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let schema = &self.decoder.schema;
        let mut values = vec![Slot::Null; schema.fields.len()];
        let mut time = None;
        while let Some(target) = map.next_key_seed(KeySeed(self.decoder))? {
            match target {
                Target::Ignored => {
                    map.next_value::<IgnoredAny>()?;
                }
                Target::Time => {
                    let slot = map.next_value_seed(SlotSeed {
                        field: &schema.time_field,
                        ty: FieldType::Timestamp,
                        problem: self.problem,
                        is_time: true,
                    })?;
                    time = match slot {
                        Slot::Time(ms) => Some(ms),
                        _ => None,
                    };
                }
                Target::Field(i) => {
                    let (name, ty) = &schema.fields[i];
                    values[i] = map.next_value_seed(SlotSeed {
                        field: name,
                        ty: *ty,
                        problem: self.problem,
                        is_time: false,
                    })?;
                }
            }
        }
        match time {
            Some(ms) if ms > EventTime::LATEST.millis() => Err(fail(
                self.problem,
                DecodeError::BadTime {
                    field: schema.time_field.clone(),
                    detail: format!("{ms} is after {}", EventTime::LATEST),
                },
            )),
            Some(ms) if ms < schema.min_time.millis() => Err(fail(
                self.problem,
                DecodeError::Past {
                    field: schema.time_field.clone(),
                    time: EventTime(ms),
                    min: schema.min_time,
                },
            )),
            Some(ms) => Ok(DecodedEvent {
                time: EventTime(ms),
                values,
            }),
            None => Err(fail(
                self.problem,
                DecodeError::MissingTime {
                    field: schema.time_field.clone(),
                },
            )),
        }
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
        Err(fail(self.problem, DecodeError::NotObject))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Err(fail(self.problem, DecodeError::NotObject))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Err(fail(self.problem, DecodeError::NotObject))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Err(fail(self.problem, DecodeError::NotObject))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Err(fail(self.problem, DecodeError::NotObject))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Err(fail(self.problem, DecodeError::NotObject))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Err(fail(self.problem, DecodeError::NotObject))
    }
}

/// Records the structured reason and hands serde an opaque error to unwind with.
fn fail<E: de::Error>(problem: &RefCell<Option<DecodeError>>, err: DecodeError) -> E {
    let message = err.to_string();
    *problem.borrow_mut() = Some(err);
    E::custom(message)
}

struct SlotSeed<'d> {
    field: &'d str,
    ty: FieldType,
    problem: &'d RefCell<Option<DecodeError>>,
    is_time: bool,
}

impl SlotSeed<'_> {
    fn wrong<E: de::Error>(&self, got: impl Into<String>) -> E {
        let got = got.into();
        let err = if self.is_time {
            DecodeError::BadTime {
                field: self.field.to_owned(),
                detail: format!("expected RFC 3339 string or epoch milliseconds, got {got}"),
            }
        } else {
            DecodeError::WrongType {
                field: self.field.to_owned(),
                expected: self.ty,
                got,
            }
        };
        fail(self.problem, err)
    }
}

impl<'de> DeserializeSeed<'de> for SlotSeed<'_> {
    type Value = Slot<'de>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for SlotSeed<'_> {
    type Value = Slot<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a {} value", self.ty)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        if self.is_time {
            return Err(fail(
                self.problem,
                DecodeError::MissingTime {
                    field: self.field.to_owned(),
                },
            ));
        }
        Ok(Slot::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        self.visit_unit()
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        match self.ty {
            FieldType::Bool => Ok(Slot::Bool(v)),
            _ => Err(self.wrong("a boolean")),
        }
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        match self.ty {
            FieldType::Int64 => Ok(Slot::Int(v)),
            FieldType::Float64 => Ok(Slot::Float(v as f64)),
            FieldType::Timestamp => Ok(Slot::Time(v)),
            _ => Err(self.wrong(format!("number {v}"))),
        }
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        match i64::try_from(v) {
            Ok(v) => self.visit_i64(v),
            Err(_) if self.ty == FieldType::Float64 => Ok(Slot::Float(v as f64)),
            Err(_) => Err(self.wrong(format!("number {v} (out of int64 range)"))),
        }
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        match self.ty {
            FieldType::Float64 => Ok(Slot::Float(v)),
            _ => Err(self.wrong(format!("number {v}"))),
        }
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        match self.ty {
            FieldType::String => Ok(Slot::Str(Cow::Borrowed(v))),
            FieldType::Timestamp => self.timestamp(v),
            _ => Err(self.wrong(format!("string {v:?}"))),
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        match self.ty {
            FieldType::String => Ok(Slot::Str(Cow::Owned(v.to_owned()))),
            FieldType::Timestamp => self.timestamp(v),
            _ => Err(self.wrong(format!("string {v:?}"))),
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
        Err(self.wrong("an object"))
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
        Err(self.wrong("an array"))
    }
}

impl SlotSeed<'_> {
    fn timestamp<'de, E: de::Error>(self, v: &str) -> Result<Slot<'de>, E> {
        match DateTime::parse_from_rfc3339(v) {
            Ok(t) => Ok(Slot::Time(t.timestamp_millis())),
            Err(_) => Err(self.wrong(format!("string {v:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::strategy::Strategy;

    use super::*;
    use arrow_array::Array;
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float64Type, TimestampMillisecondType};

    fn decoder() -> EventDecoder {
        EventDecoder::new(crate::testing::schema(&[
            ("city", FieldType::String),
            ("amount", FieldType::Float64),
            ("qty", FieldType::Int64),
            ("paid", FieldType::Bool),
            ("shipped_at", FieldType::Timestamp),
        ]))
    }

    #[test]
    fn decodes_typed_fields_and_ignores_unknown_keys() {
        let d = decoder();
        let e = d
            .decode(br#"{"ts":"2026-11-21T10:00:00Z","city":"Chennai","amount":12,"qty":3,"paid":true,"shipped_at":1795255200000,"extra":{"a":[1,2]}}"#)
            .unwrap();
        assert_eq!(e.time, EventTime(1_795_255_200_000));
        assert_eq!(
            e.values,
            vec![
                Slot::Str("Chennai".into()),
                Slot::Float(12.0),
                Slot::Int(3),
                Slot::Bool(true),
                Slot::Time(1_795_255_200_000),
            ]
        );
    }

    #[test]
    fn missing_and_null_fields_are_null_but_time_is_required() {
        let d = decoder();
        let e = d.decode(br#"{"ts":1000,"city":null}"#).unwrap();
        assert!(e.values.iter().all(|s| *s == Slot::Null));
        assert_eq!(
            d.decode(br#"{"city":"Pune"}"#),
            Err(DecodeError::MissingTime { field: "ts".into() })
        );
        assert_eq!(
            d.decode(br#"{"ts":null}"#),
            Err(DecodeError::MissingTime { field: "ts".into() })
        );
    }

    #[test]
    fn classifies_malformed_payloads() {
        let d = decoder();
        assert_eq!(d.decode(b"not json").unwrap_err().kind(), "not_json");
        assert_eq!(
            d.decode(b"{\"ts\":1000,\"city\":\"\xff\"}")
                .unwrap_err()
                .kind(),
            "not_json"
        );
        assert_eq!(d.decode(br#"{"ts":1000"#).unwrap_err().kind(), "not_json");
        assert_eq!(
            d.decode(br#"{"ts":1000} trailing"#).unwrap_err().kind(),
            "not_json"
        );
        assert_eq!(d.decode(b"[1,2]").unwrap_err(), DecodeError::NotObject);
        assert_eq!(d.decode(b"42").unwrap_err(), DecodeError::NotObject);
        assert_eq!(
            d.decode(br#"{"ts":"noon"}"#).unwrap_err().kind(),
            "bad_time"
        );
        assert_eq!(d.decode(br#"{"ts":1.5}"#).unwrap_err().kind(), "bad_time");
        assert_eq!(
            d.decode(br#"{"ts":1000,"amount":"12.5"}"#),
            Err(DecodeError::WrongType {
                field: "amount".into(),
                expected: FieldType::Float64,
                got: "string \"12.5\"".into()
            })
        );
        assert_eq!(
            d.decode(br#"{"ts":1000,"qty":2.5}"#).unwrap_err().kind(),
            "wrong_type"
        );
        assert_eq!(
            d.decode(br#"{"ts":1000,"city":7}"#).unwrap_err().kind(),
            "wrong_type"
        );
        assert_eq!(
            d.decode(br#"{"ts":1000,"paid":"yes"}"#).unwrap_err().kind(),
            "wrong_type"
        );
    }

    #[test]
    fn escaped_strings_are_decoded() {
        let d = decoder();
        let e = d
            .decode(br#"{"ts":1,"city":"S\u00e3o Paulo","c\u0069ty2":1}"#)
            .unwrap();
        assert_eq!(e.values[0], Slot::Str("São Paulo".into()));
    }

    #[test]
    fn builder_produces_batches_of_the_arrow_schema() {
        let d = decoder();
        let mut b = EventBatchBuilder::new(&d, 4);
        for (i, payload) in [
            br#"{"ts":1000,"city":"A","amount":1.5}"#.as_slice(),
            br#"{"ts":2000,"city":"B"}"#.as_slice(),
        ]
        .iter()
        .enumerate()
        {
            let e = d.decode(payload).unwrap();
            b.append(&e, 3, 10 + i as i64);
        }
        let batch = b.finish();
        assert_eq!(batch.schema(), *d.arrow_schema());
        assert_eq!(batch.num_rows(), 2);
        let ts = batch.column(0).as_primitive::<TimestampMillisecondType>();
        assert_eq!(ts.values(), &[1000, 2000]);
        let amount = batch.column(2).as_primitive::<Float64Type>();
        assert_eq!(amount.value(0), 1.5);
        assert!(amount.is_null(1));
        assert!(b.is_empty());
    }

    #[test]
    fn times_before_min_time_are_past_and_beyond_the_range_are_bad() {
        let schema = Arc::new(
            EventSchema::new("ts", vec![("city".to_owned(), FieldType::String)], None).unwrap(),
        );
        let d = EventDecoder::new(schema);
        let err = d
            .decode(br#"{"ts": "1999-12-31T23:59:59.999Z"}"#)
            .unwrap_err();
        assert_eq!(err.kind(), "past", "{err}");
        assert!(err.to_string().contains("2000-01-01"), "{err}");
        assert!(d.decode(br#"{"ts": "2000-01-01T00:00:00Z"}"#).is_ok());
        for ts in [
            "-9223372036854775808",
            "9223372036854775807",
            "253402300800000",
        ] {
            let payload = format!("{{\"ts\": {ts}}}");
            let kind = d.decode(payload.as_bytes()).unwrap_err().kind();
            assert!(kind == "past" || kind == "bad_time", "{ts}: {kind}");
        }
    }

    proptest::proptest! {
        /// No byte string panics the decoder: it is either an event or a reason.
        #[test]
        fn no_byte_string_panics_the_decoder(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let d = decoder();
            match d.decode(&bytes) {
                Ok(event) => proptest::prop_assert!(event.time.is_supported()),
                Err(err) => proptest::prop_assert!(!err.kind().is_empty()),
            }
        }

        /// Nor does any JSON object built from the schema's own keys with arbitrary values.
        #[test]
        fn no_object_of_known_keys_panics_the_decoder(
            ts in proptest::prop_oneof![
                proptest::num::i64::ANY.prop_map(|n| n.to_string()),
                proptest::num::f64::ANY.prop_map(|f| format!("{f:?}")),
                ".{0,40}".prop_map(|s| format!("{s:?}")),
                proptest::strategy::Just("null".to_owned()),
            ],
            amount in ".{0,12}",
            qty in proptest::num::i64::ANY,
        ) {
            let payload = format!(r#"{{"ts": {ts}, "amount": {amount:?}, "qty": {qty}, "city": [1], "shipped_at": {ts}}}"#);
            let _ = decoder().decode(payload.as_bytes());
        }
    }
}
