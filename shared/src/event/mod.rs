//! Decoding events: payloads of the topic into validated rows of the event schema.
//!
//! ```text
//!  message value ──json / avro / protobuf (paths: declared fields, `customer.city`)──► slots
//!       slots ──Layout::assemble (plain, or a Debezium envelope's before/after)──► Read
//!  Read::Event ──EventBatchBuilder──► RecordBatch of EventSchema::arrow_schema
//!  Read::Unresolved(schema id) ──the consumer asks the registry, EventDecoder::learn──► retry
//! ```
//!
//! Both consumers of the topic (the speed layer and the archive) decode with this module, so an
//! event is malformed for one exactly when it is malformed for the other, and the archive holds
//! the same columns whatever the topic's format. Decoding validates the whole event before any
//! of it is appended to column builders, so a bad event never leaves a half-written row behind.

use std::borrow::Cow;
use std::sync::Arc;

use arrow_schema::SchemaRef;
use prost_reflect::MessageDescriptor;

use crate::schema::{EventSchema, FieldType};
use crate::time::{EventTime, Span};

mod avro;
mod batch;
mod format;
mod json;
mod paths;
mod protobuf;
mod schemas;
mod wire;

pub use batch::EventBatchBuilder;
pub use format::{Envelope, Format, FormatError, PayloadFormat, RegisteredSchema, SchemaType};
pub use paths::OP_FIELD;
pub use wire::SchemaId;

use paths::{Layout, Shape};

/// Why an event is malformed. Carried to the dead-letter topic as the `reason` header.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("message has no payload")]
    Empty,
    #[error("not valid JSON: {detail}")]
    NotJson { detail: String },
    #[error("not a JSON object")]
    NotObject,
    #[error("field `{field}`: expected a record of the declared fields, got {got}")]
    NotRecord { field: String, got: String },
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
    /// A decimal field's value that is not exactly a `decimal(P, S)`: too many digits
    /// (`decimal_overflow`) or decimal places past the scale (`decimal_scale`).
    #[error("field `{field}`: {source}")]
    Decimal {
        field: String,
        source: crate::decimal::Error,
    },
    #[error("first byte {byte:#04x} is not the schema-registry magic byte 0x00")]
    WrongMagicByte { byte: u8 },
    #[error("truncated payload: {detail}")]
    Truncated { detail: String },
    #[error("malformed payload: {detail}")]
    BadPayload { detail: String },
    #[error("schema id {id}: {detail}")]
    UnknownSchema { id: SchemaId, detail: String },
    #[error("{}{detail}", if field.is_empty() { String::new() } else { format!("field `{field}`: ") })]
    SchemaMismatch { field: String, detail: String },
    #[error("not a change event: {detail}")]
    NotChangeEvent { detail: String },
}

impl DecodeError {
    /// A short, stable label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::Empty => "empty",
            DecodeError::NotJson { .. } => "not_json",
            DecodeError::NotObject => "not_object",
            DecodeError::NotRecord { .. } => "wrong_type",
            DecodeError::MissingTime { .. } => "missing_time",
            DecodeError::BadTime { .. } => "bad_time",
            DecodeError::Past { .. } => "past",
            DecodeError::WrongType { .. } => "wrong_type",
            DecodeError::Decimal { source, .. } => match source {
                crate::decimal::Error::Overflow { .. } => "decimal_overflow",
                crate::decimal::Error::Scale { .. } => "decimal_scale",
                crate::decimal::Error::Syntax { .. } => "wrong_type",
            },
            DecodeError::WrongMagicByte { .. } => "wrong_magic_byte",
            DecodeError::Truncated { .. } => "truncated",
            DecodeError::BadPayload { .. } => "bad_payload",
            DecodeError::UnknownSchema { .. } => "unknown_schema",
            DecodeError::SchemaMismatch { .. } => "schema_mismatch",
            DecodeError::NotChangeEvent { .. } => "not_change_event",
        }
    }
}

/// Whether a decoded event is taken in, decided alike by the speed layer, the archive and any
/// replay of the same message (it depends on the message and the clock, nothing else).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Taken in.
    Admitted,
    /// Taken in, but its time is ahead of the clock: it is kept in its window and counted, and
    /// it moves event-time progress only as far as the clock (`EventTime::progress_at`).
    AheadOfClock,
    /// Refused: more than `max_future` past its Kafka record's timestamp (the speed layer
    /// dead-letters it; the archive counts it and moves past its offset).
    Future {
        /// The latest time the message could have carried.
        limit: EventTime,
        /// What the limit was measured from: the record's timestamp, or the clock for a record
        /// without one.
        from: EventTime,
    },
}

impl Admission {
    /// The admission of an event of `event_time` in a message of `record_timestamp`, at `now`.
    /// The limit is measured from the record's timestamp (`now` only for a record without
    /// one), so a replay of old data decides as the first reading did.
    pub fn of(
        event_time: EventTime,
        record_timestamp: Option<i64>,
        now: EventTime,
        max_future: Span,
    ) -> Self {
        let from = record_timestamp.map_or(now, EventTime);
        let limit = from.saturating_add(max_future);
        if event_time > limit {
            Self::Future { limit, from }
        } else if event_time > now {
            Self::AheadOfClock
        } else {
            Self::Admitted
        }
    }
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
    /// Units of a `decimal(P, S)` field (the value × 10^S), checked against P.
    Decimal(i128),
}

impl Slot<'_> {
    /// The same value, owning its string.
    pub fn into_owned(self) -> Slot<'static> {
        match self {
            Slot::Str(s) => Slot::Str(Cow::Owned(s.into_owned())),
            Slot::Null => Slot::Null,
            Slot::Int(v) => Slot::Int(v),
            Slot::Float(v) => Slot::Float(v),
            Slot::Bool(v) => Slot::Bool(v),
            Slot::Time(v) => Slot::Time(v),
            Slot::Decimal(v) => Slot::Decimal(v),
        }
    }
}

/// A validated event: its event time and one slot per declared field, in declaration order.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedEvent<'a> {
    pub time: EventTime,
    pub values: Vec<Slot<'a>>,
}

/// A message that is deliberately not an event. Counted, never dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// A change-event topic's tombstone (a key with no value, for log compaction).
    Tombstone,
    /// A snapshot read (`op = r`) with `include_snapshot = false`.
    Snapshot,
}

impl Skip {
    pub fn kind(self) -> &'static str {
        match self {
            Skip::Tombstone => "tombstone",
            Skip::Snapshot => "snapshot",
        }
    }
}

/// What one message is.
#[derive(Debug, Clone, PartialEq)]
pub enum Read<'a> {
    Event(DecodedEvent<'a>),
    Skip(Skip),
    Malformed(DecodeError),
    /// Written with a schema the decoder has not seen: fetch it, [`EventDecoder::learn`] it,
    /// and read the message again.
    Unresolved(SchemaId),
}

/// Compiled writer schemas by registry id.
type Plans<T> = schemas::SchemaCache<T>;

#[derive(Debug)]
enum Codec {
    Json,
    Avro(Plans<avro::Plan>),
    ProtobufRegistry {
        message: Option<String>,
        plans: Plans<protobuf::SchemaPlans>,
    },
    ProtobufLocal(protobuf::MessagePlan),
}

/// Decodes payloads for one [`EventSchema`] and [`Format`]. Share it behind an `Arc`: writer
/// schemas learnt by one consumer serve the other.
#[derive(Debug)]
pub struct EventDecoder {
    schema: Arc<EventSchema>,
    arrow: SchemaRef,
    layout: Layout,
    codec: Codec,
}

impl EventDecoder {
    /// A decoder of plain JSON events.
    pub fn new(schema: Arc<EventSchema>) -> Self {
        let layout = Layout::new(&schema, Shape::Plain);
        let arrow = schema.arrow_schema();
        Self {
            schema,
            arrow,
            layout,
            codec: Codec::Json,
        }
    }

    /// A decoder of payloads in `format`.
    pub fn with_format(schema: Arc<EventSchema>, format: &Format) -> Result<Self, FormatError> {
        let shape = match format.envelope {
            None => Shape::Plain,
            Some(Envelope::Debezium) if format.payload == PayloadFormat::Protobuf => {
                return Err(FormatError::EnvelopeFormat {
                    format: format.payload,
                });
            }
            Some(Envelope::Debezium) => Shape::Debezium {
                include_snapshot: format.include_snapshot,
            },
        };
        let layout = Layout::new(&schema, shape);
        let codec = match format.payload {
            PayloadFormat::Json => Codec::Json,
            PayloadFormat::Avro if !format.registry => {
                return Err(FormatError::RegistryNeeded {
                    format: format.payload,
                });
            }
            PayloadFormat::Avro => Codec::Avro(Plans::default()),
            PayloadFormat::Protobuf if format.registry => Codec::ProtobufRegistry {
                message: format.message.clone(),
                plans: Plans::default(),
            },
            PayloadFormat::Protobuf => {
                let (Some(path), Some(message)) = (&format.proto_file, &format.message) else {
                    return Err(FormatError::ProtobufSource);
                };
                let descriptor: MessageDescriptor = protobuf::local_message(path, message)
                    .map_err(|detail| FormatError::Proto { detail })?;
                let plan = protobuf::MessagePlan::compile(&descriptor, &layout.root, 0).map_err(
                    |err| FormatError::Proto {
                        detail: err.to_string(),
                    },
                )?;
                Codec::ProtobufLocal(plan)
            }
        };
        let arrow = schema.arrow_schema();
        Ok(Self {
            schema,
            arrow,
            layout,
            codec,
        })
    }

    pub fn schema(&self) -> &Arc<EventSchema> {
        &self.schema
    }

    pub fn arrow_schema(&self) -> &SchemaRef {
        &self.arrow
    }

    /// Whether payloads name writer schemas that must be fetched from a registry.
    pub fn uses_registry(&self) -> bool {
        matches!(self.codec, Codec::Avro(_) | Codec::ProtobufRegistry { .. })
    }

    /// Reads one message value (`None`: the message has no value).
    pub fn read<'a>(&self, payload: Option<&'a [u8]>) -> Read<'a> {
        self.read_into(payload, Vec::new())
    }

    /// [`EventDecoder::read`] into `slots`: the values of an event read before (from payloads
    /// that live as long), handed back so that a consumer reads without allocating per message.
    pub fn read_into<'a>(&self, payload: Option<&'a [u8]>, slots: Vec<Slot<'a>>) -> Read<'a> {
        self.read_record(payload, slots, None)
    }

    /// [`EventDecoder::read_into`] of a Kafka record whose timestamp is `record_time`: a schema
    /// timed by its records ([`crate::table::RECORD_TIME`], a dimension table without a time
    /// field) takes it as the row's time; any other schema ignores it.
    pub fn read_record<'a>(
        &self,
        payload: Option<&'a [u8]>,
        slots: Vec<Slot<'a>>,
        record_time: Option<i64>,
    ) -> Read<'a> {
        let payload = match payload {
            Some(p) if !p.is_empty() || !self.layout.has_tombstones() => p,
            _ if self.layout.has_tombstones() => return Read::Skip(Skip::Tombstone),
            _ => return Read::Malformed(DecodeError::Empty),
        };
        let mut scratch = slots;
        scratch.clear();
        scratch.resize(self.layout.slots, Slot::Null);
        let filled = match &self.codec {
            Codec::Json => json::decode(&self.layout.root, payload, &mut scratch),
            Codec::Avro(plans) => match wire::frame(payload) {
                Err(err) => Err(err),
                Ok((id, body)) => match known(plans, id) {
                    None => return Read::Unresolved(id),
                    Some(Err(err)) => Err(err),
                    Some(Ok(plan)) => plan.read(body, &mut scratch),
                },
            },
            Codec::ProtobufRegistry { plans, .. } => match wire::frame(payload) {
                Err(err) => Err(err),
                Ok((id, mut body)) => match known(plans, id) {
                    None => return Read::Unresolved(id),
                    Some(Err(err)) => Err(err),
                    Some(Ok(schema)) => wire::message_indexes(&mut body).and_then(|indexes| {
                        schema.get(indexes.as_slice())?.read(body, &mut scratch)
                    }),
                },
            },
            Codec::ProtobufLocal(plan) => plan.read(payload, &mut scratch),
        };
        if self.schema.time_field == crate::table::RECORD_TIME
            && let Some(ms) = record_time
        {
            for slot in self.layout.time_slots() {
                scratch[slot] = Slot::Time(ms);
            }
        }
        match filled.and_then(|()| self.layout.assemble(&self.schema, scratch)) {
            Ok(read) => read,
            Err(err) => Read::Malformed(err),
        }
    }

    /// Decodes one payload: the event, or why it is none (a skip or an unknown schema id is
    /// reported as an error here; consumers use [`EventDecoder::read`]).
    pub fn decode<'a>(&self, payload: &'a [u8]) -> Result<DecodedEvent<'a>, DecodeError> {
        match self.read(Some(payload)) {
            Read::Event(event) => Ok(event),
            Read::Malformed(err) => Err(err),
            Read::Skip(skip) => Err(DecodeError::NotChangeEvent {
                detail: format!("skipped ({})", skip.kind()),
            }),
            Read::Unresolved(id) => Err(DecodeError::UnknownSchema {
                id,
                detail: "not fetched from the registry yet".into(),
            }),
        }
    }

    /// Learns the writer schema `id` as the registry answered: a schema, or why there is none
    /// (messages written with it are then dead-lettered with that reason).
    pub fn learn(&self, id: SchemaId, answer: Result<RegisteredSchema, String>) {
        let wrong_kind = |want: SchemaType, got: SchemaType| DecodeError::SchemaMismatch {
            field: String::new(),
            detail: format!("schema id {id} is a {got:?} schema, the topic is read as {want:?}"),
        };
        match &self.codec {
            Codec::Avro(plans) => match answer {
                Err(detail) => plans.missing(
                    id,
                    DecodeError::UnknownSchema { id, detail },
                    std::time::Instant::now(),
                ),
                Ok(s) => plans.learn(
                    id,
                    if s.schema_type != SchemaType::Avro {
                        Err(wrong_kind(SchemaType::Avro, s.schema_type))
                    } else {
                        avro::Plan::compile(&s.text, &self.layout.root).map(Arc::new)
                    },
                ),
            },
            Codec::ProtobufRegistry { message, plans } => match answer {
                Err(detail) => plans.missing(
                    id,
                    DecodeError::UnknownSchema { id, detail },
                    std::time::Instant::now(),
                ),
                Ok(s) => plans.learn(
                    id,
                    if s.schema_type != SchemaType::Protobuf {
                        Err(wrong_kind(SchemaType::Protobuf, s.schema_type))
                    } else {
                        protobuf::SchemaPlans::compile(
                            &s.text,
                            &self.layout.root,
                            message.as_deref(),
                        )
                        .map(Arc::new)
                    },
                ),
            },
            Codec::Json | Codec::ProtobufLocal(_) => {}
        }
    }
}

fn known<T>(plans: &Plans<T>, id: SchemaId) -> Option<Result<Arc<T>, DecodeError>> {
    plans.get(id, std::time::Instant::now)
}

#[cfg(test)]
mod decimal_tests;
#[cfg(test)]
mod format_tests;
#[cfg(test)]
mod tests;
