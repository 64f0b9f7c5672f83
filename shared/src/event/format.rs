//! How payloads on the topic are written: the format, an optional change-event envelope, and
//! the writer schemas a registry hands out.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The encoding of each message's value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadFormat {
    /// A JSON object.
    #[default]
    Json,
    /// Avro in the Confluent wire format (writer schema from the registry).
    Avro,
    /// Protobuf: in the Confluent wire format with a registry, or bare with a local `.proto`.
    Protobuf,
}

impl std::fmt::Display for PayloadFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PayloadFormat::Json => "json",
            PayloadFormat::Avro => "avro",
            PayloadFormat::Protobuf => "protobuf",
        })
    }
}

/// A wrapper around the row the payload describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Envelope {
    /// Debezium change events: `before`, `after`, `op`, `source.ts_ms`.
    Debezium,
}

/// Everything the decoder needs to know about the topic's payloads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Format {
    pub payload: PayloadFormat,
    pub envelope: Option<Envelope>,
    /// Change events of a snapshot (`op = r`) count as events.
    pub include_snapshot: bool,
    /// Writer schemas come from a schema registry (the Confluent wire format).
    pub registry: bool,
    /// Protobuf: the message type (`shop.Order`).
    pub message: Option<String>,
    /// Protobuf without a registry: the `.proto` file declaring `message`.
    pub proto_file: Option<PathBuf>,
}

impl Default for Format {
    fn default() -> Self {
        Self {
            payload: PayloadFormat::Json,
            envelope: None,
            include_snapshot: true,
            registry: false,
            message: None,
            proto_file: None,
        }
    }
}

impl Format {
    /// Whether payloads carry a schema id to look up in the registry.
    pub fn framed(&self) -> bool {
        self.registry && self.payload != PayloadFormat::Json
    }
}

/// The kind of a registered schema (the registry's `schemaType`; absent means Avro).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum SchemaType {
    Avro,
    Protobuf,
    Json,
}

/// A writer schema as the registry returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisteredSchema {
    pub schema_type: SchemaType,
    pub text: String,
}

/// A format the decoder cannot be built for. Always the user's configuration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    #[error("format `{format}` needs a schema registry (`[schema] registry`)")]
    RegistryNeeded { format: PayloadFormat },
    #[error(
        "format `protobuf` needs the message type (`[schema] message`) and either a registry or a `.proto` file (`[schema] proto`)"
    )]
    ProtobufSource,
    #[error("`[schema] proto`: {detail}")]
    Proto { detail: String },
    #[error("envelope `debezium` reads JSON or Avro, not {format}")]
    EnvelopeFormat { format: PayloadFormat },
}
