//! Dimension tables: rows by key, read from a (compacted) topic, that a view joins its events
//! with, and the rules both layers follow to do it.
//!
//! ```text
//!  [[tables]] name, topic, key, fields, time_field?, envelope?
//!        │ TableDefinition::from_config
//!        ▼
//!  table topic ──EventDecoder (TableDefinition::schema: time = time_field or the record's
//!        │        timestamp, `_op` for a changelog)──► rows (key, valid_from, columns | deleted)
//!        ├──speed layer: the latest row per key, known when an event is processed
//!        └──archive (like a topic) ──batch layer: the row valid at the event's time (as-of)
//!  a view's `join = [{ table, on }]` ──► columns `table.field`, NULL (`on_missing = "keep"`)
//!                                        or the event dropped (`"drop"`) without a row
//! ```
//!
//! The rules written here, once: a row is valid from its own time field if the table declares
//! one, else from its Kafka record's timestamp ([`RECORD_TIME`]); a change whose operation is
//! `d` deletes its key ([`TableDefinition::deletes`]); a table's columns are named qualified
//! (`merchants.category`, [`TableDefinition::qualified`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_schema::{DataType, Field};
use serde::{Deserialize, Serialize};

use crate::event::{Envelope, Format, OP_FIELD, PayloadFormat};
use crate::schema::{self, EventSchema, FieldType};

/// The time column of a table without a `time_field`: its Kafka record's timestamp. Reserved
/// (`_kafka_` names are), so no payload field can take its place.
pub const RECORD_TIME: &str = "_kafka_timestamp";

/// Errors in a `[[tables]]` entry or a view's `join`. Always the user's configuration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("table name `{name}` must be non-empty and use only letters, digits and `_`")]
    Name { name: String },
    #[error("topic must not be empty")]
    Topic,
    #[error("key `{key}` is not one of the declared fields")]
    UnknownKey { key: String },
    #[error("key `{key}` is a {found}: a key is a string or an int64")]
    KeyType { key: String, found: FieldType },
    #[error("field `{field}`: a table's field is one name, without dots")]
    Dotted { field: String },
    #[error("fields: {0}")]
    Schema(#[from] schema::Error),
    #[error("format `{format}`: a table is `json` or `avro` (with `[schema] registry`)")]
    Format { format: PayloadFormat },
    #[error("join: no table named `{table}` (declare it in [[tables]])")]
    UnknownTable { table: String },
    #[error("join: table `{table}` is joined twice")]
    DuplicateJoin { table: String },
    #[error("join `{table}` on `{on}`: `{on}` is not a declared event field")]
    UnknownOn { table: String, on: String },
    #[error(
        "join `{table}` on `{on}`: the event field is a {event}, the table's key `{key}` a {table_key}; they must be the same type"
    )]
    OnType {
        table: String,
        on: String,
        event: FieldType,
        key: String,
        table_key: FieldType,
    },
    #[error("table `{table}`: the event field `{column}` has the table's name; rename the table")]
    Shadowed { table: String, column: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The TOML shape of a `[[tables]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    pub name: String,
    pub topic: String,
    /// The declared field that identifies a row (the topic's key, for compaction).
    pub key: String,
    pub fields: BTreeMap<String, FieldType>,
    /// A row's own validity time; without it, its Kafka record's timestamp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_field: Option<String>,
    /// `debezium`: the topic is a change-data-capture changelog of a database table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envelope: Option<Envelope>,
    /// `json` (default) or `avro` (writer schemas from `[schema] registry`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<PayloadFormat>,
}

/// A validated dimension table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableDefinition {
    pub name: String,
    pub topic: String,
    pub key: String,
    /// Declared fields, the key among them, in name order.
    pub fields: Vec<(String, FieldType)>,
    pub time_field: Option<String>,
    pub envelope: Option<Envelope>,
    pub payload: PayloadFormat,
    /// What both layers decode the topic with (and the archive writes).
    schema: Arc<EventSchema>,
}

impl TableDefinition {
    pub fn from_config(config: &TableConfig) -> Result<Self> {
        let name_ok = !config.name.is_empty()
            && config
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !name_ok {
            return Err(Error::Name {
                name: config.name.clone(),
            });
        }
        if config.topic.is_empty() {
            return Err(Error::Topic);
        }
        let payload = config.format.unwrap_or_default();
        if payload == PayloadFormat::Protobuf {
            return Err(Error::Format { format: payload });
        }
        if let Some(field) = config.fields.keys().find(|f| f.contains('.')) {
            return Err(Error::Dotted {
                field: field.clone(),
            });
        }
        match config.fields.get(&config.key) {
            None => {
                return Err(Error::UnknownKey {
                    key: config.key.clone(),
                });
            }
            Some(FieldType::String | FieldType::Int64) => {}
            Some(found) => {
                return Err(Error::KeyType {
                    key: config.key.clone(),
                    found: *found,
                });
            }
        }
        let fields: Vec<(String, FieldType)> =
            config.fields.iter().map(|(n, t)| (n.clone(), *t)).collect();
        let mut decoded = fields.clone();
        if config.envelope == Some(Envelope::Debezium) {
            decoded.push((OP_FIELD.to_owned(), FieldType::String));
        }
        let time = config.time_field.as_deref().unwrap_or(RECORD_TIME);
        let schema = EventSchema::new(time, decoded, None)?;
        Ok(Self {
            name: config.name.clone(),
            topic: config.topic.clone(),
            key: config.key.clone(),
            fields,
            time_field: config.time_field.clone(),
            envelope: config.envelope,
            payload,
            schema: Arc::new(schema),
        })
    }

    /// The schema the table's topic is decoded with: its validity time first (the time field,
    /// or [`RECORD_TIME`]), its fields, `_op` for a changelog, then the Kafka columns.
    pub fn schema(&self) -> &Arc<EventSchema> {
        &self.schema
    }

    /// How the table's payloads are written: JSON or Avro (its writer schemas from the
    /// registry), plain or in a Debezium envelope.
    pub fn format(&self) -> Format {
        Format {
            payload: self.payload,
            envelope: self.envelope,
            registry: self.payload == PayloadFormat::Avro,
            ..Format::default()
        }
    }

    /// A column's name in a view that joins the table: `merchants.category`.
    pub fn qualified(&self, field: &str) -> String {
        format!("{}.{field}", self.name)
    }

    /// The columns a join adds to an event, qualified, in declaration order.
    pub fn columns(&self) -> impl Iterator<Item = (String, FieldType)> + '_ {
        self.fields.iter().map(|(f, t)| (self.qualified(f), *t))
    }

    /// The type of the key.
    pub fn key_type(&self) -> FieldType {
        self.fields
            .iter()
            .find(|(f, _)| *f == self.key)
            .map_or(FieldType::String, |(_, t)| *t)
    }

    /// Whether a decoded row's operation deletes its key: a changelog's `d`.
    pub fn deletes(op: Option<&str>) -> bool {
        op == Some("d")
    }

    /// What a view's version depends on: the table's name, key and fields, its time and format.
    pub fn describe(&self) -> String {
        format!(
            "table={};key={};time={:?};envelope={:?};format={};{}",
            self.name,
            self.key,
            self.time_field,
            self.envelope,
            self.payload,
            self.schema.describe()
        )
    }
}

/// The TOML shape of one entry of a view's `join`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinConfig {
    pub table: String,
    /// The event field whose value is the table's key.
    pub on: String,
}

/// What becomes of an event whose key a joined table has no row for (or a deleted one).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnMissing {
    /// The event is kept, the table's columns NULL.
    #[default]
    Keep,
    /// The event is not counted in the view.
    Drop,
}

/// One validated join of a view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Join {
    pub table: Arc<TableDefinition>,
    pub on: String,
}

/// Validates a view's joins against the event schema and the declared tables.
pub fn joins(
    configs: &[JoinConfig],
    schema: &EventSchema,
    tables: &[Arc<TableDefinition>],
) -> Result<Vec<Join>> {
    let mut out: Vec<Join> = Vec::with_capacity(configs.len());
    for c in configs {
        let Some(table) = tables.iter().find(|t| t.name == c.table) else {
            return Err(Error::UnknownTable {
                table: c.table.clone(),
            });
        };
        if out.iter().any(|j| j.table.name == c.table) {
            return Err(Error::DuplicateJoin {
                table: c.table.clone(),
            });
        }
        let Some(event) = schema.field_type(&c.on) else {
            return Err(Error::UnknownOn {
                table: c.table.clone(),
                on: c.on.clone(),
            });
        };
        if event != table.key_type() {
            return Err(Error::OnType {
                table: c.table.clone(),
                on: c.on.clone(),
                event,
                key: table.key.clone(),
                table_key: table.key_type(),
            });
        }
        check_shadowing(schema, &table.name)?;
        out.push(Join {
            table: Arc::clone(table),
            on: c.on.clone(),
        });
    }
    Ok(out)
}

/// Refuses a joined side's name (a table's, a joined stream's) that an event column has, or
/// that prefixes one: `merchants.category` must name one column only.
pub fn check_shadowing(schema: &EventSchema, name: &str) -> Result<()> {
    let prefix = format!("{name}.");
    let shadowed = schema
        .column_type(name)
        .map(|_| name.to_owned())
        .or_else(|| {
            schema
                .fields
                .iter()
                .find(|(f, _)| f.starts_with(&prefix))
                .map(|(f, _)| f.clone())
        });
    match shadowed {
        Some(column) => Err(Error::Shadowed {
            table: name.to_owned(),
            column,
        }),
        None => Ok(()),
    }
}

/// The Arrow fields a view's joins append to an event batch, in join order: per table, a
/// struct named as the table (what an expression's `merchants.category` reads: a field of
/// the struct, so no event column is ever shadowed or ambiguous), then its columns flat,
/// named qualified (what `group_by = ["merchants.category"]` names).
pub fn joined_fields(joins: &[Join]) -> Vec<Field> {
    joins.iter().flat_map(|j| side_fields(&j.table)).collect()
}

/// The Arrow fields one joined side appends (a table, or a joined stream's second topic): a
/// struct named as the side, then its columns flat, named qualified.
pub fn side_fields(side: &TableDefinition) -> Vec<Field> {
    let children: Vec<Field> = side
        .fields
        .iter()
        .map(|(name, ty)| Field::new(name, ty.arrow_type(), true))
        .collect();
    let mut out = vec![Field::new_struct(&side.name, children, true)];
    out.extend(
        side.columns()
            .map(|(name, ty)| Field::new(name, ty.arrow_type(), true)),
    );
    out
}

/// The type of a column a view's expressions may name: an event column, or a joined table's
/// qualified column.
pub fn column_type(schema: &EventSchema, joins: &[Join], name: &str) -> Option<DataType> {
    schema.column_type(name).or_else(|| {
        joins
            .iter()
            .flat_map(|j| j.table.columns())
            .find(|(q, _)| q == name)
            .map(|(_, t)| t.arrow_type())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn merchants() -> TableConfig {
        TableConfig {
            name: "merchants".into(),
            topic: "merchants".into(),
            key: "merchant_id".into(),
            fields: [
                ("merchant_id".to_owned(), FieldType::String),
                ("category".to_owned(), FieldType::String),
            ]
            .into(),
            time_field: None,
            envelope: None,
            format: None,
        }
    }

    #[test]
    fn a_table_without_a_time_field_is_timed_by_its_records() {
        let t = TableDefinition::from_config(&merchants()).unwrap();
        assert_eq!(t.schema().time_field, RECORD_TIME);
        assert_eq!(
            t.columns().map(|(c, _)| c).collect::<Vec<_>>(),
            ["merchants.category", "merchants.merchant_id"]
        );
        let mut c = merchants();
        c.time_field = Some("updated_at".into());
        c.envelope = Some(Envelope::Debezium);
        let t = TableDefinition::from_config(&c).unwrap();
        assert_eq!(t.schema().time_field, "updated_at");
        assert_eq!(
            t.schema().field_type(OP_FIELD),
            Some(FieldType::String),
            "a changelog's rows carry their operation"
        );
        assert!(TableDefinition::deletes(Some("d")));
        assert!(!TableDefinition::deletes(Some("u")));
    }

    #[test]
    fn rejects_bad_tables_and_joins_with_the_reason() {
        let mut c = merchants();
        c.key = "nope".into();
        assert!(matches!(
            TableDefinition::from_config(&c),
            Err(Error::UnknownKey { .. })
        ));
        let mut c = merchants();
        c.fields.insert("merchant_id".into(), FieldType::Float64);
        assert!(matches!(
            TableDefinition::from_config(&c),
            Err(Error::KeyType { .. })
        ));
        let mut c = merchants();
        c.name = "bad.name".into();
        assert!(matches!(
            TableDefinition::from_config(&c),
            Err(Error::Name { .. })
        ));

        let table = Arc::new(TableDefinition::from_config(&merchants()).unwrap());
        let schema = EventSchema::new(
            "ts",
            [
                ("merchant_id".to_owned(), FieldType::String),
                ("n".to_owned(), FieldType::Int64),
            ],
            None,
        )
        .unwrap();
        let join = |table: &str, on: &str| JoinConfig {
            table: table.into(),
            on: on.into(),
        };
        let tables = [table];
        let ok = joins(&[join("merchants", "merchant_id")], &schema, &tables).unwrap();
        assert_eq!(
            column_type(&schema, &ok, "merchants.category"),
            Some(DataType::Utf8)
        );
        assert_eq!(column_type(&schema, &ok, "merchants.nope"), None);
        for (configs, want) in [
            (vec![join("cards", "merchant_id")], "no table named `cards`"),
            (
                vec![join("merchants", "shop")],
                "not a declared event field",
            ),
            (vec![join("merchants", "n")], "must be the same type"),
            (
                vec![
                    join("merchants", "merchant_id"),
                    join("merchants", "merchant_id"),
                ],
                "joined twice",
            ),
        ] {
            let err = joins(&configs, &schema, &tables).unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
        }
    }
}
