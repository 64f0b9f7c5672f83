//! The event schema: which JSON fields an event carries, their types, and the Arrow schema that
//! both layers evaluate expressions against.
//!
//! The speed layer decodes Kafka messages into record batches of exactly this Arrow schema and the
//! archive writes Parquet files of exactly this schema, so a filter or aggregate expression is
//! type-checked and evaluated by DataFusion against identical columns in both layers.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::{Deserialize, Serialize};

use crate::time::EventTime;

/// Column holding the Kafka partition an event was read from.
pub const PARTITION_COLUMN: &str = "_kafka_partition";
/// Column holding the Kafka offset of an event within its partition.
pub const OFFSET_COLUMN: &str = "_kafka_offset";

/// Errors in a schema definition. Always the user's configuration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error(
        "field `{field}`: names starting with `_kafka_` are reserved for Kafka metadata columns"
    )]
    Reserved { field: String },
    #[error("field `{field}`: the time field is implicit and must not be listed in `fields`")]
    TimeFieldListed { field: String },
    #[error("field name must not be empty")]
    EmptyName,
    #[error("id_field `{field}` is not one of the declared fields")]
    UnknownIdField { field: String },
    #[error("id_field `{field}` is a {found:?}: an id is a string or an int64")]
    IdFieldType { field: String, found: FieldType },
    #[error(
        "field `{field}`: `{inner}` is declared too, and a value cannot be both a field and a record of fields"
    )]
    PathConflict { field: String, inner: String },
    #[error("field `{field}`: an empty name between dots")]
    EmptyPathPart { field: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The type of one event field as users declare it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum FieldType {
    String,
    Int64,
    Float64,
    Bool,
    /// RFC 3339 string or integer epoch milliseconds in JSON; `Timestamp(ms, UTC)` in Arrow.
    Timestamp,
    /// `decimal(P, S)`: exact, P digits of which S after the point (1 ≤ P ≤ 38, 0 ≤ S ≤ P);
    /// a JSON number or string; `Decimal128(P, S)` in Arrow. Money.
    Decimal {
        precision: u8,
        scale: i8,
    },
}

impl FieldType {
    pub fn arrow_type(self) -> DataType {
        match self {
            FieldType::String => DataType::Utf8,
            FieldType::Int64 => DataType::Int64,
            FieldType::Float64 => DataType::Float64,
            FieldType::Bool => DataType::Boolean,
            FieldType::Timestamp => timestamp_type(),
            FieldType::Decimal { precision, scale } => DataType::Decimal128(precision, scale),
        }
    }

    /// Parses a declared type: `string`, `int64`, `float64`, `bool`, `timestamp` or
    /// `decimal(P, S)`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let plain = match text.trim() {
            "string" => Some(FieldType::String),
            "int64" => Some(FieldType::Int64),
            "float64" => Some(FieldType::Float64),
            "bool" => Some(FieldType::Bool),
            "timestamp" => Some(FieldType::Timestamp),
            _ => None,
        };
        if let Some(ty) = plain {
            return Ok(ty);
        }
        let bad = || {
            format!(
                "unknown field type `{text}`: use string, int64, float64, bool, timestamp or decimal(P, S)"
            )
        };
        let args = text
            .trim()
            .strip_prefix("decimal(")
            .and_then(|rest| rest.strip_suffix(')'))
            .ok_or_else(bad)?;
        let (p, s) = args.split_once(',').ok_or_else(bad)?;
        let precision: u8 = p.trim().parse().map_err(|_| bad())?;
        let scale: i8 = s.trim().parse().map_err(|_| bad())?;
        if !(1..=crate::decimal::MAX_PRECISION).contains(&precision)
            || scale < 0
            || scale as u8 > precision
        {
            return Err(format!(
                "`{text}`: a decimal needs 1 ≤ precision ≤ 38 and 0 ≤ scale ≤ precision"
            ));
        }
        Ok(FieldType::Decimal { precision, scale })
    }
}

impl TryFrom<String> for FieldType {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        FieldType::parse(&text)
    }
}

impl From<FieldType> for String {
    fn from(ty: FieldType) -> String {
        ty.to_string()
    }
}

impl fmt::Display for FieldType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FieldType::String => "string",
            FieldType::Int64 => "int64",
            FieldType::Float64 => "float64",
            FieldType::Bool => "bool",
            FieldType::Timestamp => "timestamp",
            FieldType::Decimal { precision, scale } => {
                return write!(f, "decimal({precision}, {scale})");
            }
        })
    }
}

/// The Arrow type of every timestamp column: milliseconds, UTC.
pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

/// The declared shape of events on the topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventSchema {
    /// The event-time field: required in every event.
    pub time_field: String,
    /// Declared fields in declaration order. Undeclared keys are ignored; missing ones are null.
    /// A dotted name (`customer.city`) selects a field of a nested record.
    pub fields: Vec<(String, FieldType)>,
    /// Optional event id, used by the batch layer to count a re-produced event once.
    pub id_field: Option<String>,
    /// Events before this time are dead-lettered (reason `past`).
    #[serde(default = "EventSchema::default_min_time")]
    pub min_time: EventTime,
}

impl EventSchema {
    pub fn new(
        time_field: impl Into<String>,
        fields: impl IntoIterator<Item = (String, FieldType)>,
        id_field: Option<String>,
    ) -> Result<Self> {
        let schema = Self {
            time_field: time_field.into(),
            fields: fields.into_iter().collect(),
            id_field,
            min_time: Self::default_min_time(),
        };
        schema.validate()?;
        Ok(schema)
    }

    /// 2000-01-01T00:00:00Z: earlier event times are almost always a bug in the producer.
    pub fn default_min_time() -> EventTime {
        EventTime(946_684_800_000)
    }

    /// The same schema with events before `min_time` dead-lettered.
    pub fn with_min_time(mut self, min_time: EventTime) -> Self {
        self.min_time = min_time;
        self
    }

    fn validate(&self) -> Result<()> {
        if self.time_field.is_empty() {
            return Err(Error::EmptyName);
        }
        for (name, _) in &self.fields {
            if name.is_empty() {
                return Err(Error::EmptyName);
            }
            if name.starts_with("_kafka_") {
                return Err(Error::Reserved {
                    field: name.clone(),
                });
            }
            if *name == self.time_field {
                return Err(Error::TimeFieldListed {
                    field: name.clone(),
                });
            }
        }
        // `customer.city` selects a nested field: `customer` cannot also be a value.
        let names = std::iter::once(&self.time_field).chain(self.fields.iter().map(|(n, _)| n));
        for name in names.clone() {
            if name.split('.').any(str::is_empty) {
                return Err(Error::EmptyPathPart {
                    field: name.clone(),
                });
            }
            if let Some(inner) = names.clone().find(|other| {
                other.len() > name.len()
                    && other.starts_with(name.as_str())
                    && other.as_bytes()[name.len()] == b'.'
            }) {
                return Err(Error::PathConflict {
                    field: name.clone(),
                    inner: inner.clone(),
                });
            }
        }
        if let Some(id) = &self.id_field {
            // Both layers compare ids exactly: as strings or integers, never as floats, times
            // or scaled decimals.
            match self.fields.iter().find(|(n, _)| n == id) {
                None => return Err(Error::UnknownIdField { field: id.clone() }),
                Some((_, FieldType::String | FieldType::Int64)) => {}
                Some((_, found)) => {
                    return Err(Error::IdFieldType {
                        field: id.clone(),
                        found: *found,
                    });
                }
            }
        }
        Ok(())
    }

    /// The type of a column an expression may refer to: declared fields, the time field and the
    /// Kafka metadata columns.
    pub fn column_type(&self, name: &str) -> Option<DataType> {
        if name == self.time_field {
            return Some(timestamp_type());
        }
        if name == PARTITION_COLUMN {
            return Some(DataType::Int32);
        }
        if name == OFFSET_COLUMN {
            return Some(DataType::Int64);
        }
        self.field_type(name).map(FieldType::arrow_type)
    }

    pub fn field_type(&self, name: &str) -> Option<FieldType> {
        self.fields.iter().find(|(n, _)| n == name).map(|(_, t)| *t)
    }

    /// Arrow schema of decoded events and of archive Parquet files: the time field first, then the
    /// declared fields in order, then the Kafka partition and offset.
    pub fn arrow_schema(&self) -> SchemaRef {
        let mut fields = Vec::with_capacity(self.fields.len() + 3);
        fields.push(Field::new(&self.time_field, timestamp_type(), false));
        for (name, ty) in &self.fields {
            fields.push(Field::new(name, ty.arrow_type(), true));
        }
        fields.push(Field::new(PARTITION_COLUMN, DataType::Int32, false));
        fields.push(Field::new(OFFSET_COLUMN, DataType::Int64, false));
        Arc::new(Schema::new(fields))
    }

    /// A short, order-independent fingerprint input for view versioning.
    pub fn describe(&self) -> String {
        let fields: BTreeMap<_, _> = self.fields.iter().cloned().collect();
        let mut out = format!("time={};", self.time_field);
        for (name, ty) in fields {
            out.push_str(&format!("{name}:{ty};"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields() -> Vec<(String, FieldType)> {
        vec![
            ("city".into(), FieldType::String),
            ("amount".into(), FieldType::Float64),
        ]
    }

    #[test]
    fn field_types_parse_and_print_as_declared() {
        for text in [
            "string",
            "int64",
            "float64",
            "bool",
            "timestamp",
            "decimal(18, 2)",
        ] {
            let ty = FieldType::parse(text).unwrap();
            assert_eq!(ty.to_string(), text);
        }
        assert_eq!(
            FieldType::parse("decimal(38,0)").unwrap().arrow_type(),
            DataType::Decimal128(38, 0)
        );
        for bad in [
            "decimal(0, 0)",
            "decimal(39, 2)",
            "decimal(4, 5)",
            "decimal(4, -1)",
        ] {
            let err = FieldType::parse(bad).unwrap_err();
            assert!(err.contains("precision"), "{bad}: {err}");
        }
        for bad in ["money", "decimal", "decimal(18)", "decimal(a, b)"] {
            let err = FieldType::parse(bad).unwrap_err();
            assert!(err.contains("unknown field type"), "{bad}: {err}");
        }
        let toml: std::collections::BTreeMap<String, FieldType> =
            serde_json::from_str(r#"{"amount": "decimal(12, 2)", "n": "int64"}"#).unwrap();
        assert_eq!(
            toml["amount"],
            FieldType::Decimal {
                precision: 12,
                scale: 2
            }
        );
    }

    #[test]
    fn arrow_schema_puts_time_first_and_kafka_columns_last() {
        let schema = EventSchema::new("ts", fields(), None).unwrap();
        let arrow = schema.arrow_schema();
        let names: Vec<_> = arrow.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(
            names,
            ["ts", "city", "amount", PARTITION_COLUMN, OFFSET_COLUMN]
        );
        assert_eq!(arrow.field(0).data_type(), &timestamp_type());
        assert!(!arrow.field(0).is_nullable());
        assert!(arrow.field(1).is_nullable());
    }

    #[test]
    fn rejects_reserved_and_duplicate_time_names() {
        let reserved = vec![("_kafka_offset".to_string(), FieldType::Int64)];
        assert!(matches!(
            EventSchema::new("ts", reserved, None),
            Err(Error::Reserved { .. })
        ));
        let listed = vec![("ts".to_string(), FieldType::Timestamp)];
        assert!(matches!(
            EventSchema::new("ts", listed, None),
            Err(Error::TimeFieldListed { .. })
        ));
        assert!(matches!(
            EventSchema::new("ts", fields(), Some("order_id".into())),
            Err(Error::UnknownIdField { .. })
        ));
        let amount = vec![("amount".to_string(), FieldType::Float64)];
        assert!(matches!(
            EventSchema::new("ts", amount, Some("amount".into())),
            Err(Error::IdFieldType { .. })
        ));
        for ty in [FieldType::String, FieldType::Int64] {
            let id = vec![("id".to_string(), ty)];
            assert!(EventSchema::new("ts", id, Some("id".into())).is_ok());
        }
    }
}
