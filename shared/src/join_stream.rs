//! Joined streams: a view over two topics matched by key within an interval, and the rules
//! both layers follow to join them (ADR 0008).
//!
//! ```text
//!  [[views]] join_stream = { topic, on, within, kind, fields, time_field?, name?, format? }
//!        │ JoinStream::from_config (the second topic's side: a TableDefinition keyed by `on`)
//!        ▼
//!  first topic (events, time t) ──┐
//!                                 ├─► joined rows: every second-topic event of the same key
//!  second topic (time s) ─────────┘     with t ≤ s ≤ t + within; `left`: an event with none,
//!                                       once, with NULL columns. A joined row's time is t.
//!        ├──speed layer: both buffered within `within` (speed_layer::interval)
//!        └──batch layer: the same join over both archives
//! ```
//!
//! The rules written here, once: the match interval ([`JoinStream::matches`]), how far a
//! join holds a view's watermark back ([`JoinStream::within`], in
//! `ViewDefinition::watermark`), the second side's columns, named qualified
//! (`payments.amount`, as a table's are).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::event::PayloadFormat;
use crate::schema::{EventSchema, FieldType};
use crate::table::{self, TableConfig, TableDefinition};
use crate::time::Span;

/// Errors in a view's `join_stream`. Always the user's configuration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("join_stream: within: {0}")]
    Within(crate::time::Error),
    #[error("join_stream: `on` field `{on}` is not a declared event field")]
    UnknownOn { on: String },
    #[error(
        "join_stream: `on` field `{on}` is a {event} in the events and a {second} in `{topic}`; they must be the same type"
    )]
    OnType {
        on: String,
        topic: String,
        event: FieldType,
        second: FieldType,
    },
    #[error(
        "join_stream: the topic `{topic}` is not a valid column prefix; name the joined side with `name`"
    )]
    Name { topic: String },
    #[error("join_stream: `{name}` is also a dimension table this view joins; name the side apart")]
    Clash { name: String },
    #[error("join_stream: {0}")]
    Side(#[from] table::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Which first-topic events a joined view counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JoinKind {
    /// Only matched pairs.
    #[default]
    Inner,
    /// Matched pairs, and each event without a match once, its second-side columns NULL (the
    /// orders still unpaid after `within`).
    Left,
}

/// The TOML shape of a view's `join_stream`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinStreamConfig {
    pub topic: String,
    /// The key field, in both topics: each topic's Kafka key, so a key's events of both topics
    /// meet in one partition number.
    pub on: String,
    /// How long after a first-topic event a second-topic event still matches it.
    pub within: String,
    #[serde(default)]
    pub kind: JoinKind,
    /// The second topic's declared fields (`on` among them, or taken from the events').
    pub fields: BTreeMap<String, FieldType>,
    /// The second topic's event-time field; by default the events'.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_field: Option<String>,
    /// The qualifier of the second side's columns; by default the topic's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `json` (default) or `avro` (writer schemas from `[schema] registry`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<PayloadFormat>,
}

/// A validated joined stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinStream {
    /// The second topic: its name (the qualifier), topic, key (`on`), fields, time field and
    /// format, decoded and archived as a table's topic is.
    pub side: Arc<TableDefinition>,
    pub on: String,
    pub within: Span,
    pub kind: JoinKind,
}

impl JoinStream {
    /// Validates `config` against the events' schema (that the topic is not the events' own
    /// is the configuration's check: the view does not know the events' topic).
    pub fn from_config(config: &JoinStreamConfig, schema: &EventSchema) -> Result<Self> {
        let within = Span::parse(&config.within).map_err(Error::Within)?;
        let Some(event) = schema.field_type(&config.on) else {
            return Err(Error::UnknownOn {
                on: config.on.clone(),
            });
        };
        let name = match &config.name {
            Some(n) => n.clone(),
            None => {
                let ok = !config.topic.is_empty()
                    && config
                        .topic
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !ok {
                    return Err(Error::Name {
                        topic: config.topic.clone(),
                    });
                }
                config.topic.clone()
            }
        };
        let mut fields = config.fields.clone();
        let second = *fields.entry(config.on.clone()).or_insert(event);
        if second != event {
            return Err(Error::OnType {
                on: config.on.clone(),
                topic: config.topic.clone(),
                event,
                second,
            });
        }
        let side = TableDefinition::from_config(&TableConfig {
            name,
            topic: config.topic.clone(),
            key: config.on.clone(),
            fields,
            time_field: Some(
                config
                    .time_field
                    .clone()
                    .unwrap_or_else(|| schema.time_field.clone()),
            ),
            envelope: None,
            format: config.format,
        })?;
        Ok(Self {
            side: Arc::new(side),
            on: config.on.clone(),
            within,
            kind: config.kind,
        })
    }

    /// Whether a second-side event at `s` matches a first-side event at `t`: `t ≤ s ≤ t +
    /// within` (both ends included). The one place the interval is written; the batch
    /// layer's SQL says the same (`BETWEEN t AND t + within`).
    pub fn matches(&self, t: i64, s: i64) -> bool {
        s >= t && s <= t.saturating_add(self.within.millis())
    }

    /// What a view's version depends on.
    pub fn describe(&self) -> String {
        format!(
            "stream;on={};within={};kind={:?};{}",
            self.on,
            self.within.millis(),
            self.kind,
            self.side.describe()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> JoinStreamConfig {
        JoinStreamConfig {
            topic: "payments".into(),
            on: "order_id".into(),
            within: "15m".into(),
            kind: JoinKind::Left,
            fields: [("amount".to_owned(), FieldType::Float64)].into(),
            time_field: None,
            name: None,
            format: None,
        }
    }

    fn schema() -> EventSchema {
        EventSchema::new(
            "ts",
            [
                ("order_id".to_owned(), FieldType::String),
                ("city".to_owned(), FieldType::String),
            ],
            None,
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_second_side_is_keyed_and_timed_like_the_events() {
        let j = JoinStream::from_config(&config(), &schema()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(j.side.name, "payments");
        assert_eq!(j.side.key, "order_id");
        assert_eq!(j.side.schema().time_field, "ts");
        assert_eq!(
            j.side.key_type(),
            FieldType::String,
            "`on` taken from the events"
        );
        assert_eq!(
            j.side.columns().map(|(c, _)| c).collect::<Vec<_>>(),
            ["payments.amount", "payments.order_id"]
        );
        let minute = 60_000;
        assert!(j.matches(0, 0) && j.matches(0, 15 * minute));
        assert!(!j.matches(0, 15 * minute + 1) && !j.matches(0, -1));
    }

    /// A change to the valid configuration.
    type Change = fn(&mut JoinStreamConfig);

    #[test]
    fn rejects_bad_joined_streams_with_the_reason() {
        let cases: [(Change, &str); 4] = [
            (|c| c.on = "nope".into(), "not a declared event field"),
            (|c| c.within = "soon".into(), "within"),
            (
                |c| {
                    c.fields.insert("order_id".into(), FieldType::Int64);
                },
                "must be the same type",
            ),
            (|c| c.topic = "pay.ments".into(), "name the joined side"),
        ];
        for (change, want) in cases {
            let mut c = config();
            change(&mut c);
            let err = JoinStream::from_config(&c, &schema())
                .map(|_| ())
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{err}");
        }
        let mut c = config();
        c.topic = "pay.ments".into();
        c.name = Some("payments".into());
        assert!(JoinStream::from_config(&c, &schema()).is_ok());
    }
}
