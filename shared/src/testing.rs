//! Test fixtures for every crate's tests (the `testing` feature): event schemas, view
//! definitions and batches of decoded events, built through the same constructors and decoder
//! the product uses, so a fixture can never be a shape the product would reject.

pub mod orders;

use std::sync::Arc;

use arrow_array::RecordBatch;

use crate::event::{
    EventBatchBuilder, EventDecoder, Format, FormatError, PayloadFormat, RegisteredSchema,
    SchemaType,
};
use crate::schema::{EventSchema, FieldType};
use crate::time::EventTime;
use crate::view::{ViewConfig, ViewDefinition};
use crate::window::WindowConfig;

/// A decoder of `format` that knows writer schema `id` as if the registry had answered it:
/// `avro` or `proto` by the format (JSON payloads name no writer schema).
pub fn decoder_knowing(
    schema: Arc<EventSchema>,
    format: PayloadFormat,
    id: u32,
    avro: &str,
    proto: &str,
) -> Result<EventDecoder, FormatError> {
    let settings = Format {
        payload: format,
        registry: format != PayloadFormat::Json,
        ..Format::default()
    };
    let decoder = EventDecoder::with_format(schema, &settings)?;
    let (schema_type, text) = match format {
        PayloadFormat::Json => return Ok(decoder),
        PayloadFormat::Avro => (SchemaType::Avro, avro),
        PayloadFormat::Protobuf => (SchemaType::Protobuf, proto),
    };
    decoder.learn(
        id,
        Ok(RegisteredSchema {
            schema_type,
            text: text.to_owned(),
        }),
    );
    Ok(decoder)
}

/// The time field of every fixture schema.
pub const TIME_FIELD: &str = "ts";

/// A schema with time field `ts` and `fields`, in order.
pub fn schema(fields: &[(&str, FieldType)]) -> Arc<EventSchema> {
    schema_with_id(fields, None)
}

/// A schema with time field `ts`, `fields` and an event id field.
pub fn schema_with_id(fields: &[(&str, FieldType)], id_field: Option<&str>) -> Arc<EventSchema> {
    let fields = fields.iter().map(|(name, ty)| ((*name).to_owned(), *ty));
    Arc::new(
        EventSchema::new(TIME_FIELD, fields, id_field.map(str::to_owned))
            .expect("fixture schema is valid")
            // Fixtures use small epoch times; `past` is tested on its own.
            .with_min_time(EventTime::EARLIEST),
    )
}

/// Order events: `city`, `user_id`, `amount` (float), `qty` (integer), `event_type`.
pub fn orders_schema() -> Arc<EventSchema> {
    schema(&[
        ("city", FieldType::String),
        ("user_id", FieldType::String),
        ("amount", FieldType::Float64),
        ("qty", FieldType::Int64),
        ("event_type", FieldType::String),
    ])
}

pub fn tumbling(size: &str) -> WindowConfig {
    WindowConfig {
        tumbling: Some(size.into()),
        ..Default::default()
    }
}

pub fn hopping(size: &str, every: &str) -> WindowConfig {
    WindowConfig {
        hopping: Some(size.into()),
        every: Some(every.into()),
        ..Default::default()
    }
}

pub fn sessions(gap: &str) -> WindowConfig {
    WindowConfig {
        session_gap: Some(gap.into()),
        ..Default::default()
    }
}

/// A view's configuration without allowed lateness; set fields on the result for more.
pub fn view_config(
    name: &str,
    window: WindowConfig,
    group_by: &[&str],
    filter: Option<&str>,
    aggregates: &[&str],
) -> ViewConfig {
    ViewConfig {
        name: name.into(),
        window,
        group_by: group_by.iter().map(|s| (*s).to_owned()).collect(),
        filter: filter.map(str::to_owned),
        allowed_lateness: None,
        aggregates: aggregates.iter().map(|s| (*s).to_owned()).collect(),
        join: Vec::new(),
        on_missing: None,
        join_stream: None,
    }
}

/// Validates `config` against `schema`.
pub fn define(config: &ViewConfig, schema: &EventSchema) -> ViewDefinition {
    ViewDefinition::from_config(config, schema)
        .unwrap_or_else(|e| panic!("fixture view `{}` is invalid: {e}", config.name))
}

/// A view of `schema` without allowed lateness.
pub fn view(
    schema: &EventSchema,
    name: &str,
    window: WindowConfig,
    group_by: &[&str],
    filter: Option<&str>,
    aggregates: &[&str],
) -> ViewDefinition {
    define(
        &view_config(name, window, group_by, filter, aggregates),
        schema,
    )
}

/// Decodes JSON `events` into one batch of `partition`, with offsets from `first_offset` on, as
/// a consumer would build it.
pub fn batch<S: AsRef<str>>(
    decoder: &EventDecoder,
    partition: i32,
    first_offset: i64,
    events: &[S],
) -> RecordBatch {
    let mut builder = EventBatchBuilder::new(decoder, events.len());
    for (i, json) in events.iter().enumerate() {
        let event = decoder
            .decode(json.as_ref().as_bytes())
            .unwrap_or_else(|e| panic!("fixture event {} is malformed: {e}", json.as_ref()));
        builder.append(&event, partition, first_offset + i as i64);
    }
    builder.finish()
}

/// A dimension table `name` keyed by `key`, read from a topic of its name, rows timed by their
/// records.
pub fn table(
    name: &str,
    key: &str,
    fields: &[(&str, FieldType)],
    envelope: Option<crate::event::Envelope>,
) -> Arc<crate::table::TableDefinition> {
    let config = crate::table::TableConfig {
        name: name.into(),
        topic: name.into(),
        key: key.into(),
        fields: fields.iter().map(|(f, t)| ((*f).to_owned(), *t)).collect(),
        time_field: None,
        envelope,
        format: None,
    };
    Arc::new(
        crate::table::TableDefinition::from_config(&config)
            .unwrap_or_else(|e| panic!("fixture table `{name}` is invalid: {e}")),
    )
}
