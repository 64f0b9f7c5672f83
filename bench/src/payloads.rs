//! What decoding the benchmark's orders costs in each payload format (the orders are written by
//! `tandem_shared::testing::orders`).
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
use prost_reflect::{DescriptorPool, DynamicMessage};
use tandem_shared::event::{EventDecoder, PayloadFormat, Read};
use tandem_shared::schema::EventSchema;
use tandem_shared::testing::orders::{AVRO, PROTO, SCHEMA_ID as ID};

/// The decoder of `format`, knowing the orders' writer schema as if the registry had answered.
pub(super) fn decoder(schema: &EventSchema, format: PayloadFormat) -> anyhow::Result<EventDecoder> {
    Ok(tandem_shared::testing::decoder_knowing(
        Arc::new(schema.clone()),
        format,
        ID,
        AVRO,
        PROTO,
    )?)
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
    let cpu0 = super::measure::cpu_seconds()?;
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
    let cpu = (super::measure::cpu_seconds()? - cpu0).max(0.01);
    tracing::debug!(wall = ?wall.elapsed(), cpu, "decode loop");
    Ok(ok as f64 / cpu)
}
