//! Generated orders as producers write them, in each payload format (the `testing` feature):
//! the benchmarks and the tests produce the same bytes a real producer would.
//!
//! ```text
//!  Order ──Encoder (serde_json text / apache-avro datum / prost message)──► message value
//!                   Avro and Protobuf Confluent-framed: 0, schema id, [message indexes], body
//! ```

use apache_avro::Schema;
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use prost::Message;

use crate::event::PayloadFormat;

/// The id the orders' writer schema is registered under.
pub const SCHEMA_ID: u32 = 1;

/// The orders' Avro writer schema.
pub const AVRO: &str = r#"{"type":"record","name":"Order","namespace":"shop","fields":[
  {"name":"order_id","type":"string"},
  {"name":"ts","type":{"type":"long","logicalType":"timestamp-millis"}},
  {"name":"city","type":"string"},
  {"name":"user_id","type":"string"},
  {"name":"amount","type":"double"},
  {"name":"event_type","type":"string"}]}"#;

/// The orders' Protobuf schema (`shop.Order`, the first message).
pub const PROTO: &str = r#"syntax = "proto3";
package shop;
message Order {
  string order_id = 1;
  int64 ts = 2;
  string city = 3;
  string user_id = 4;
  double amount = 5;
  string event_type = 6;
}
"#;

#[derive(Clone, PartialEq, prost::Message)]
struct ProtoOrder {
    #[prost(string, tag = "1")]
    order_id: String,
    #[prost(int64, tag = "2")]
    ts: i64,
    #[prost(string, tag = "3")]
    city: String,
    #[prost(string, tag = "4")]
    user_id: String,
    #[prost(double, tag = "5")]
    amount: f64,
    #[prost(string, tag = "6")]
    event_type: String,
}

/// One generated order.
#[derive(Debug, Clone)]
pub struct Order<'a> {
    pub seq: u64,
    pub ts: i64,
    pub city: &'a str,
    pub user: &'a str,
    pub amount: f64,
    pub event_type: &'a str,
}

/// The JSON of one generated order (`order_id` is `o-<seq>`, the amount in cents).
pub fn order_json(
    seq: u64,
    ts: i64,
    city: &str,
    user: &str,
    amount: f64,
    event_type: &str,
) -> String {
    format!(
        r#"{{"order_id":"o-{seq}","ts":{ts},"city":"{city}","user_id":"{user}","amount":{amount:.2},"event_type":"{event_type}"}}"#
    )
}

/// The Confluent wire format: a zero byte, the schema id (big-endian), the Protobuf message
/// indexes if any, the body.
pub fn confluent_framed(id: u32, indexes: &[u8], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + indexes.len() + body.len());
    out.push(0);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(indexes);
    out.extend_from_slice(body);
    out
}

/// An encoding error of a generated order (the Avro writer's).
#[derive(Debug, thiserror::Error)]
#[error("encoding a generated order: {0}")]
pub struct EncodeError(String);

/// Writes orders in one format.
#[derive(Debug)]
pub struct Encoder {
    format: PayloadFormat,
    avro: Option<Schema>,
}

impl Encoder {
    /// An encoder of `format`; Avro and Protobuf payloads name [`SCHEMA_ID`].
    pub fn new(format: PayloadFormat) -> Result<Self, EncodeError> {
        let avro = match format {
            PayloadFormat::Avro => {
                Some(Schema::parse_str(AVRO).map_err(|e| EncodeError(e.to_string()))?)
            }
            _ => None,
        };
        Ok(Self { format, avro })
    }

    /// The message value of `o`.
    pub fn encode(&self, o: &Order<'_>) -> Result<Vec<u8>, EncodeError> {
        // Amounts in cents, as the JSON text writes them.
        let amount = (o.amount * 100.0).round() / 100.0;
        Ok(match (self.format, &self.avro) {
            (PayloadFormat::Avro, Some(schema)) => {
                let record = Value::Record(vec![
                    ("order_id".into(), Value::String(format!("o-{}", o.seq))),
                    ("ts".into(), Value::TimestampMillis(o.ts)),
                    ("city".into(), Value::String(o.city.into())),
                    ("user_id".into(), Value::String(o.user.into())),
                    ("amount".into(), Value::Double(amount)),
                    ("event_type".into(), Value::String(o.event_type.into())),
                ]);
                let body = GenericDatumWriter::builder(schema)
                    .build()
                    .and_then(|w| w.write_value_to_vec(record))
                    .map_err(|e| EncodeError(e.to_string()))?;
                confluent_framed(SCHEMA_ID, &[], &body)
            }
            (PayloadFormat::Protobuf, _) => {
                let body = ProtoOrder {
                    order_id: format!("o-{}", o.seq),
                    ts: o.ts,
                    city: o.city.into(),
                    user_id: o.user.into(),
                    amount,
                    event_type: o.event_type.into(),
                }
                .encode_to_vec();
                // Message indexes [0]: the first message of the schema.
                confluent_framed(SCHEMA_ID, &[0], &body)
            }
            _ => order_json(o.seq, o.ts, o.city, o.user, o.amount, o.event_type).into_bytes(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each format's payload of one order decodes to the same event with the product's decoder.
    #[test]
    fn every_format_decodes_to_the_order() {
        use crate::event::Read;
        use crate::schema::{EventSchema, FieldType};
        let schema = std::sync::Arc::new(
            EventSchema::new(
                "ts",
                [
                    ("order_id", FieldType::String),
                    ("city", FieldType::String),
                    ("user_id", FieldType::String),
                    ("amount", FieldType::Float64),
                    ("event_type", FieldType::String),
                ]
                .map(|(n, t)| (n.to_owned(), t)),
                None,
            )
            .unwrap(),
        );
        let order = Order {
            seq: 7,
            ts: 1_790_000_000_123,
            city: "Oslo",
            user: "u-1",
            amount: 12.345,
            event_type: "order_placed",
        };
        let mut events = Vec::new();
        for format in [
            PayloadFormat::Json,
            PayloadFormat::Avro,
            PayloadFormat::Protobuf,
        ] {
            let decoder =
                super::super::decoder_knowing(schema.clone(), format, SCHEMA_ID, AVRO, PROTO)
                    .unwrap();
            let payload = Encoder::new(format).unwrap().encode(&order).unwrap();
            match decoder.read(Some(&payload)) {
                Read::Event(event) => events.push(format!("{event:?}")),
                other => panic!("{format}: {other:?}"),
            }
        }
        assert_eq!(events[0], events[1]);
        assert_eq!(events[0], events[2]);
    }
}
