//! The declared fields as a tree of paths that every payload format walks, and how the values
//! found become an event: directly, or out of a Debezium change-event envelope.
//!
//! ```text
//!  declared fields (`city`, `customer.city`, time field)
//!        │ Layout::new
//!        ▼
//!  Fields tree ──walked by json / avro / protobuf──► scratch slots ──Layout::assemble──► Read
//! ```
//!
//! A plain layout has one slot per declared field and one for the time. A Debezium layout keeps
//! the row twice (`after` and `before`), the operation and `source.ts_ms`, and picks the row the
//! operation says is the change's state.

use crate::schema::{EventSchema, FieldType};
use crate::time::EventTime;

use super::{DecodeError, DecodedEvent, Read, Skip, Slot};

/// The field a change event's operation (`c`, `u`, `d`, `r`) is read into.
pub const OP_FIELD: &str = "_op";

/// A value the decoder keeps: its slot and the type it must have.
#[derive(Debug, Clone)]
pub(super) struct Leaf {
    pub(super) slot: usize,
    pub(super) ty: FieldType,
    /// The time field: a wrong value is `bad_time`, a missing one `missing_time`.
    pub(super) is_time: bool,
    /// The dotted path, for error messages.
    pub(super) path: String,
}

#[derive(Debug, Clone)]
pub(super) enum Node {
    Leaf(Leaf),
    Record(Fields),
}

/// The keys of one record the decoder looks at; every other key is skipped.
#[derive(Debug, Clone, Default)]
pub(super) struct Fields {
    pub(super) entries: Vec<(String, Node)>,
    /// The record's own dotted path (empty at the top), for error messages.
    pub(super) path: String,
}

impl Fields {
    /// A record has a handful of interesting keys: comparing beats hashing.
    pub(super) fn get(&self, key: &str) -> Option<&Node> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, n)| n)
    }

    fn insert(&mut self, rest: &str, leaf: Leaf) {
        match rest.split_once('.') {
            None => self.entries.push((rest.to_owned(), Node::Leaf(leaf))),
            Some((head, tail)) => {
                let at = match self.entries.iter().position(|(k, _)| k == head) {
                    Some(at) => at,
                    None => {
                        let path = join(&self.path, head);
                        self.entries
                            .push((head.to_owned(), Node::Record(Fields::with_path(path))));
                        self.entries.len() - 1
                    }
                };
                // Schema validation rules out a name that is both a value and a record.
                if let Node::Record(inner) = &mut self.entries[at].1 {
                    inner.insert(tail, leaf);
                }
            }
        }
    }

    fn with_path(path: String) -> Self {
        Self {
            entries: Vec::new(),
            path,
        }
    }

    /// Every leaf's slot moved by `by`.
    fn shifted(&self, by: usize, prefix: &str) -> Fields {
        Fields {
            entries: self
                .entries
                .iter()
                .map(|(k, n)| {
                    let node = match n {
                        Node::Leaf(l) => Node::Leaf(Leaf {
                            slot: l.slot + by,
                            path: join(prefix, &l.path),
                            ..l.clone()
                        }),
                        Node::Record(r) => Node::Record(r.shifted(by, prefix)),
                    };
                    (k.clone(), node)
                })
                .collect(),
            path: join(prefix, &self.path),
        }
    }
}

fn join(prefix: &str, name: &str) -> String {
    match (prefix.is_empty(), name.is_empty()) {
        (true, _) => name.to_owned(),
        (_, true) => prefix.to_owned(),
        _ => format!("{prefix}.{name}"),
    }
}

/// How the payload's values become an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Shape {
    /// The payload is the event.
    Plain,
    /// The payload is a Debezium change event.
    Debezium { include_snapshot: bool },
}

/// The tree a decoder walks and the slots it fills.
#[derive(Debug, Clone)]
pub(super) struct Layout {
    pub(super) root: Fields,
    pub(super) shape: Shape,
    /// Slots a payload fills.
    pub(super) slots: usize,
    /// Declared fields.
    fields: usize,
    /// The declared `_op` field of a change-event layout.
    op_field: Option<usize>,
}

impl Layout {
    pub(super) fn new(schema: &EventSchema, shape: Shape) -> Self {
        let n = schema.fields.len();
        let op_field = match shape {
            Shape::Plain => None,
            Shape::Debezium { .. } => schema.fields.iter().position(|(f, _)| f == OP_FIELD),
        };
        // A row: declared field i in slot i, the time in slot n.
        let mut row = Fields::default();
        for (i, (name, ty)) in schema.fields.iter().enumerate() {
            if Some(i) == op_field {
                continue;
            }
            row.insert(
                name,
                Leaf {
                    slot: i,
                    ty: *ty,
                    is_time: false,
                    path: name.clone(),
                },
            );
        }
        row.insert(
            &schema.time_field,
            Leaf {
                slot: n,
                ty: FieldType::Timestamp,
                is_time: true,
                path: schema.time_field.clone(),
            },
        );
        match shape {
            Shape::Plain => Self {
                root: row,
                shape,
                slots: n + 1,
                fields: n,
                op_field,
            },
            Shape::Debezium { .. } => {
                // after: 0..=n, before: n+1..=2n+1, op: 2n+2, source.ts_ms: 2n+3.
                let mut envelope = Fields::default();
                let mut after = row.shifted(0, "after");
                after.path = "after".into();
                let mut before = row.shifted(n + 1, "before");
                before.path = "before".into();
                envelope.entries.push(("after".into(), Node::Record(after)));
                envelope
                    .entries
                    .push(("before".into(), Node::Record(before)));
                envelope.insert(
                    "op",
                    Leaf {
                        slot: 2 * n + 2,
                        ty: FieldType::String,
                        is_time: false,
                        path: "op".into(),
                    },
                );
                envelope.insert(
                    "source.ts_ms",
                    Leaf {
                        slot: 2 * n + 3,
                        ty: FieldType::Timestamp,
                        is_time: false,
                        path: "source.ts_ms".into(),
                    },
                );
                // Debezium's JSON converter with schemas enabled wraps the event in `payload`.
                let mut payload = envelope.shifted(0, "payload");
                payload.path = "payload".into();
                envelope
                    .entries
                    .push(("payload".into(), Node::Record(payload)));
                Self {
                    root: envelope,
                    shape,
                    slots: 2 * n + 4,
                    fields: n,
                    op_field,
                }
            }
        }
    }

    /// The slots a row's time is read into: one, or a change event's `after` and `before`.
    pub(super) fn time_slots(&self) -> impl Iterator<Item = usize> {
        let n = self.fields;
        let before = matches!(self.shape, Shape::Debezium { .. }).then_some(2 * n + 1);
        std::iter::once(n).chain(before)
    }

    /// Whether a message without a value is a tombstone (skipped) rather than malformed.
    pub(super) fn has_tombstones(&self) -> bool {
        matches!(self.shape, Shape::Debezium { .. })
    }

    /// Turns the slots a payload filled into an event, a skip, or the reason it is malformed.
    pub(super) fn assemble<'a>(
        &self,
        schema: &EventSchema,
        mut scratch: Vec<Slot<'a>>,
    ) -> Result<Read<'a>, DecodeError> {
        let n = self.fields;
        match self.shape {
            Shape::Plain => {
                let time = scratch.pop();
                let time = event_time(schema, time, None, None)?;
                Ok(Read::Event(DecodedEvent {
                    time,
                    values: scratch,
                }))
            }
            Shape::Debezium { include_snapshot } => {
                let source_ts = scratch.pop();
                let op = match scratch.pop() {
                    Some(Slot::Str(op)) if matches!(&*op, "c" | "u" | "d" | "r") => op,
                    Some(Slot::Str(op)) => {
                        return Err(DecodeError::NotChangeEvent {
                            detail: format!("unknown operation {op:?} (expected c, u, d or r)"),
                        });
                    }
                    _ => {
                        return Err(DecodeError::NotChangeEvent {
                            detail: "no `op` field".into(),
                        });
                    }
                };
                if &*op == "r" && !include_snapshot {
                    return Ok(Read::Skip(Skip::Snapshot));
                }
                // A delete's state is the row before it; every other change's the row after.
                let mut row = if &*op == "d" {
                    scratch.split_off(n + 1)
                } else {
                    scratch.truncate(n + 1);
                    scratch
                };
                let time = row.pop();
                let time = event_time(schema, time, source_ts, Some("source.ts_ms"))?;
                if let Some(i) = self.op_field {
                    row[i] = Slot::Str(op);
                }
                Ok(Read::Event(DecodedEvent { time, values: row }))
            }
        }
    }
}

/// The event time from the time slot, or `fallback` (a change's `source.ts_ms`) without one.
fn event_time(
    schema: &EventSchema,
    time: Option<Slot<'_>>,
    fallback: Option<Slot<'_>>,
    fallback_name: Option<&str>,
) -> Result<EventTime, DecodeError> {
    let ms = match (time, fallback) {
        (Some(Slot::Time(ms)), _) | (_, Some(Slot::Time(ms))) => ms,
        _ => {
            return Err(DecodeError::MissingTime {
                field: match fallback_name {
                    Some(other) => format!("{}` or `{other}", schema.time_field),
                    None => schema.time_field.clone(),
                },
            });
        }
    };
    if ms > EventTime::LATEST.millis() {
        return Err(DecodeError::BadTime {
            field: schema.time_field.clone(),
            detail: format!("{ms} is after {}", EventTime::LATEST),
        });
    }
    if ms < schema.min_time.millis() {
        return Err(DecodeError::Past {
            field: schema.time_field.clone(),
            time: EventTime(ms),
            min: schema.min_time,
        });
    }
    Ok(EventTime(ms))
}
