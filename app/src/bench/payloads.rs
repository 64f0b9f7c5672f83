//! The benchmark's orders in each payload format, and what decoding them costs.
//!
//! ```text
//!  generated order ──encode (serde_json / apache-avro / prost)──► message value (Confluent-framed)
//!  message values ──EventDecoder::read──► events          (Tandem's decoder, per CPU-second)
//!                 ──the library's generic decoder──► values (apache-avro Value, prost-reflect
//!                   DynamicMessage, serde_json Value: the alternatives the decision record weighs)
//! ```

use std::io::Cursor;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage};
use tandem_shared::event::{
    EventDecoder, Format, PayloadFormat, Read, RegisteredSchema, SchemaType,
};
use tandem_shared::schema::EventSchema;

/// The id the benchmark's writer schema is registered under.
const ID: u32 = 1;

const AVRO: &str = r#"{"type":"record","name":"Order","namespace":"shop","fields":[
  {"name":"order_id","type":"string"},
  {"name":"ts","type":{"type":"long","logicalType":"timestamp-millis"}},
  {"name":"city","type":"string"},
  {"name":"user_id","type":"string"},
  {"name":"amount","type":"double"},
  {"name":"event_type","type":"string"}]}"#;

const PROTO: &str = r#"syntax = "proto3";
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
pub(super) struct Order<'a> {
    pub(super) seq: u64,
    pub(super) ts: i64,
    pub(super) city: &'a str,
    pub(super) user: &'a str,
    pub(super) amount: f64,
    pub(super) event_type: &'a str,
}

/// Writes orders in one format.
pub(super) struct Encoder {
    format: PayloadFormat,
    avro: Option<Schema>,
}

impl Encoder {
    pub(super) fn new(format: PayloadFormat) -> anyhow::Result<Self> {
        let avro = match format {
            PayloadFormat::Avro => Some(Schema::parse_str(AVRO)?),
            _ => None,
        };
        Ok(Self { format, avro })
    }

    pub(super) fn encode(&self, o: &Order<'_>) -> anyhow::Result<Vec<u8>> {
        // Amounts in cents, as the JSON generator writes them.
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
                    .build()?
                    .write_value_to_vec(record)?;
                framed(&[], &body)
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
                framed(&[0], &body)
            }
            _ => {
                super::order_json(o.seq, o.ts, o.city, o.user, o.amount, o.event_type).into_bytes()
            }
        })
    }
}

fn framed(indexes: &[u8], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + indexes.len() + body.len());
    out.push(0);
    out.extend_from_slice(&ID.to_be_bytes());
    out.extend_from_slice(indexes);
    out.extend_from_slice(body);
    out
}

/// The decoder of `format`, knowing the writer schema as if the registry had answered.
pub(super) fn decoder(schema: &EventSchema, format: PayloadFormat) -> anyhow::Result<EventDecoder> {
    let settings = Format {
        payload: format,
        registry: format != PayloadFormat::Json,
        ..Format::default()
    };
    let decoder = EventDecoder::with_format(Arc::new(schema.clone()), &settings)?;
    let (schema_type, text) = match format {
        PayloadFormat::Json => return Ok(decoder),
        PayloadFormat::Avro => (SchemaType::Avro, AVRO),
        PayloadFormat::Protobuf => (SchemaType::Protobuf, PROTO),
    };
    decoder.learn(
        ID,
        Ok(RegisteredSchema {
            schema_type,
            text: text.to_owned(),
        }),
    );
    Ok(decoder)
}

/// Decodes `payloads` `rounds` times with Tandem's decoder and with the format library's generic
/// decoder, and prints events per CPU-second of each (one thread; nothing else runs).
pub(super) fn decode_cost(
    schema: &EventSchema,
    format: PayloadFormat,
    payloads: &[Vec<u8>],
) -> anyhow::Result<()> {
    let rounds = (2_000_000 / payloads.len().max(1)).max(1);
    let decoder = decoder(schema, format)?;
    let tandem = per_cpu_second(payloads, rounds, |p| {
        matches!(decoder.read(Some(p)), Read::Event(_))
    })?;
    let (library, name) = match format {
        PayloadFormat::Json => (
            per_cpu_second(payloads, rounds, |p| {
                serde_json::from_slice::<serde_json::Value>(p).is_ok()
            })?,
            "serde_json::Value",
        ),
        PayloadFormat::Avro => {
            let schema = Schema::parse_str(AVRO)?;
            let reader = GenericDatumReader::builder(&schema).build()?;
            (
                per_cpu_second(payloads, rounds, |p| {
                    reader.read_value(&mut Cursor::new(&p[5..])).is_ok()
                })?,
                "apache-avro GenericDatumReader (Value)",
            )
        }
        PayloadFormat::Protobuf => {
            let mut compiler = protox::Compiler::with_file_resolver(OneFile);
            compiler.open_file("order.proto")?;
            let pool: DescriptorPool = compiler.descriptor_pool();
            let message = pool
                .get_message_by_name("shop.Order")
                .context("shop.Order")?;
            (
                per_cpu_second(payloads, rounds, |p| {
                    DynamicMessage::decode(message.clone(), &p[6..]).is_ok()
                })?,
                "prost_reflect::DynamicMessage::decode",
            )
        }
    };
    println!(
        "decode {format}: {tandem:.0} events per CPU-second (Tandem's decoder, validated rows); {library:.0} with {name} (a generic value, nothing validated)"
    );
    Ok(())
}

struct OneFile;

impl protox::file::FileResolver for OneFile {
    fn open_file(&self, name: &str) -> Result<protox::file::File, protox::Error> {
        protox::file::File::from_source(name, PROTO)
    }
}

fn per_cpu_second(
    payloads: &[Vec<u8>],
    rounds: usize,
    mut decode: impl FnMut(&[u8]) -> bool,
) -> anyhow::Result<f64> {
    let cpu0 = super::speed::cpu_seconds()?;
    let wall = Instant::now();
    let mut ok = 0usize;
    for _ in 0..rounds {
        for p in payloads {
            ok += usize::from(decode(p));
        }
    }
    anyhow::ensure!(
        ok == rounds * payloads.len(),
        "{ok} of {} payloads decoded",
        rounds * payloads.len()
    );
    let cpu = (super::speed::cpu_seconds()? - cpu0).max(0.01);
    tracing::debug!(wall = ?wall.elapsed(), cpu, "decode loop");
    Ok(ok as f64 / cpu)
}
