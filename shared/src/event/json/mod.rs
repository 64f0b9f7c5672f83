//! JSON payloads: streamed with serde straight into the decoder's slots.
//!
//! Strict about declared fields and lenient about everything else:
//! - the payload must be a JSON object; a declared field must have its declared type (`float64`
//!   also accepts integers, `timestamp` an RFC 3339 string or integer epoch milliseconds,
//!   `decimal(P, S)` a number or a string, read from its text so no digit is lost);
//!   `null` or absence means SQL NULL;
//! - a dotted field (`customer.city`) is looked up in nested objects;
//! - undeclared keys are skipped without building anything.
//!
//! Strings borrow from the payload where they have no escapes.
//!
//! ```text
//!  payload ─UTF-8 check─► scanner (the common case, no serde) ──► slots
//!                            └─ anything else ─► serde reader (every error message) ──► slots
//! ```

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt;

use chrono::DateTime;
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};

use super::paths::{Fields, Leaf, Node};
use super::{DecodeError, Slot};

mod scanner;
#[cfg(test)]
mod scanner_tests;
use crate::schema::FieldType;

/// Fills `scratch` from one JSON object; the slots of absent keys stay as they are.
pub(super) fn decode<'a>(
    root: &Fields,
    payload: &'a [u8],
    scratch: &mut [Slot<'a>],
) -> Result<(), DecodeError> {
    // One UTF-8 check of the whole payload is cheaper than serde_json's check per string.
    let text = std::str::from_utf8(payload).map_err(|err| DecodeError::NotJson {
        detail: format!("not UTF-8: {err}"),
    })?;
    if scanner::scan(root, text, scratch).is_some() {
        return Ok(());
    }
    // Not the common case: serde decides, from empty slots, and names any error.
    scratch.fill(Slot::Null);
    deserialize(root, text, scratch)
}

/// The serde reader: every payload, every error message.
fn deserialize<'a>(
    root: &Fields,
    text: &'a str,
    scratch: &mut [Slot<'a>],
) -> Result<(), DecodeError> {
    let problem = RefCell::new(None);
    let mut de = serde_json::Deserializer::from_str(text);
    let seed = RecordSeed {
        fields: root,
        scratch,
        problem: &problem,
        top: true,
    };
    match seed.deserialize(&mut de).and_then(|()| de.end()) {
        Ok(()) => Ok(()),
        Err(err) => Err(problem
            .into_inner()
            .unwrap_or_else(|| DecodeError::NotJson {
                detail: err.to_string(),
            })),
    }
}

/// Records the structured reason and hands serde an opaque error to unwind with.
fn fail<E: de::Error>(problem: &RefCell<Option<DecodeError>>, err: DecodeError) -> E {
    let message = err.to_string();
    *problem.borrow_mut() = Some(err);
    E::custom(message)
}

/// What an object key refers to, resolved without copying the key.
struct KeySeed<'f>(&'f Fields);

impl<'de, 'f> DeserializeSeed<'de> for KeySeed<'f> {
    type Value = Option<&'f Node>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de, 'f> Visitor<'de> for KeySeed<'f> {
    type Value = Option<&'f Node>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        Ok(self.0.get(key))
    }
}

/// One object: the top-level event or a nested record holding declared fields.
struct RecordSeed<'s, 'a> {
    fields: &'s Fields,
    scratch: &'s mut [Slot<'a>],
    problem: &'s RefCell<Option<DecodeError>>,
    top: bool,
}

impl RecordSeed<'_, '_> {
    fn not_object<E: de::Error>(&self, got: &str) -> E {
        let err = if self.top {
            DecodeError::NotObject
        } else {
            DecodeError::NotRecord {
                field: self.fields.path.clone(),
                got: got.to_owned(),
            }
        };
        fail(self.problem, err)
    }
}

impl<'de> DeserializeSeed<'de> for RecordSeed<'_, 'de> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for RecordSeed<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(node) = map.next_key_seed(KeySeed(self.fields))? {
            match node {
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
                Some(Node::Leaf(leaf)) => {
                    self.scratch[leaf.slot] = map.next_value_seed(SlotSeed {
                        leaf,
                        problem: self.problem,
                    })?;
                }
                Some(Node::Record(fields)) => {
                    map.next_value_seed(RecordSeed {
                        fields,
                        scratch: &mut *self.scratch,
                        problem: self.problem,
                        top: false,
                    })?;
                }
            }
        }
        Ok(())
    }

    /// A nested record that is `null` leaves its fields NULL; the event itself must be an object.
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        if self.top {
            return Err(self.not_object("null"));
        }
        Ok(())
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.visit_unit()
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(self.not_object("an array"))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Err(self.not_object("a string"))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Err(self.not_object("a number"))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Err(self.not_object("a number"))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Err(self.not_object("a number"))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Err(self.not_object("a boolean"))
    }
}

struct SlotSeed<'d> {
    leaf: &'d Leaf,
    problem: &'d RefCell<Option<DecodeError>>,
}

impl SlotSeed<'_> {
    fn wrong<E: de::Error>(&self, got: impl Into<String>) -> E {
        fail(self.problem, self.leaf.wrong(got.into()))
    }
}

impl Leaf {
    /// The reason a value of this leaf is unusable: `bad_time` for the time, else `wrong_type`.
    pub(super) fn wrong(&self, got: String) -> DecodeError {
        if self.is_time {
            DecodeError::BadTime {
                field: self.path.clone(),
                detail: format!("expected RFC 3339 string or epoch milliseconds, got {got}"),
            }
        } else {
            DecodeError::WrongType {
                field: self.path.clone(),
                expected: self.ty,
                got,
            }
        }
    }
}

impl<'de> DeserializeSeed<'de> for SlotSeed<'_> {
    type Value = Slot<'de>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        if let FieldType::Decimal { precision, scale } = self.leaf.ty {
            // The value's own text: a float would already have lost the exact value.
            let raw = <&'de serde_json::value::RawValue>::deserialize(d)?;
            return self.decimal(raw.get(), precision, scale);
        }
        d.deserialize_any(self)
    }
}

impl SlotSeed<'_> {
    /// A decimal from the JSON text of its value: a number or a string holding one.
    fn decimal<'de, E: de::Error>(
        self,
        raw: &str,
        precision: u8,
        scale: i8,
    ) -> Result<Slot<'de>, E> {
        let text = match raw.as_bytes().first() {
            Some(b'n') => return Ok(Slot::Null),
            Some(b'"') => raw[1..raw.len() - 1].trim(),
            Some(b'-' | b'0'..=b'9') => raw,
            Some(b't' | b'f') => return Err(self.wrong("a boolean")),
            Some(b'[') => return Err(self.wrong("an array")),
            _ => return Err(self.wrong("an object")),
        };
        match crate::decimal::parse_units(text, precision, scale) {
            Ok(units) => Ok(Slot::Decimal(units)),
            Err(crate::decimal::Error::Syntax { .. }) => Err(self.wrong(raw.to_owned())),
            Err(source) => Err(fail(
                self.problem,
                DecodeError::Decimal {
                    field: self.leaf.path.clone(),
                    source,
                },
            )),
        }
    }
}

impl<'de> Visitor<'de> for SlotSeed<'_> {
    type Value = Slot<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a {} value", self.leaf.ty)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Slot::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        self.visit_unit()
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        match self.leaf.ty {
            FieldType::Bool => Ok(Slot::Bool(v)),
            _ => Err(self.wrong("a boolean")),
        }
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        match self.leaf.ty {
            FieldType::Int64 => Ok(Slot::Int(v)),
            FieldType::Float64 => Ok(Slot::Float(v as f64)),
            FieldType::Timestamp => Ok(Slot::Time(v)),
            _ => Err(self.wrong(format!("number {v}"))),
        }
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        match i64::try_from(v) {
            Ok(v) => self.visit_i64(v),
            Err(_) if self.leaf.ty == FieldType::Float64 => Ok(Slot::Float(v as f64)),
            Err(_) => Err(self.wrong(format!("number {v} (out of int64 range)"))),
        }
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        match self.leaf.ty {
            FieldType::Float64 => Ok(Slot::Float(v)),
            _ => Err(self.wrong(format!("number {v}"))),
        }
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        match self.leaf.ty {
            FieldType::String => Ok(Slot::Str(Cow::Borrowed(v))),
            FieldType::Timestamp => self.timestamp(v),
            _ => Err(self.wrong(format!("string {v:?}"))),
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        match self.leaf.ty {
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
        match parse_rfc3339(v) {
            Some(ms) => Ok(Slot::Time(ms)),
            None => Err(self.wrong(format!("string {v:?}"))),
        }
    }
}

/// Epoch milliseconds of an RFC 3339 time.
pub(super) fn parse_rfc3339(v: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(v)
        .ok()
        .map(|t| t.timestamp_millis())
}
