//! The oracle's events written in each payload format the decoder reads, as producers write
//! them (apache-avro, prost), and the decoder that reads them back.

use std::sync::Arc;

use apache_avro::types::Value;
use tandem_shared::event::{EventDecoder, PayloadFormat};
use tandem_shared::schema::EventSchema;
use tandem_shared::testing;
use tandem_tests::formats::{avro, framed};

use super::oracle::Event;

/// The schema id the writer schema is registered under.
const ID: u32 = 42;

const AVRO: &str = r#"{"type":"record","name":"Order","namespace":"shop","fields":[
  {"name":"ts","type":{"type":"long","logicalType":"timestamp-millis"}},
  {"name":"city","type":"string"},
  {"name":"user_id","type":"string"},
  {"name":"amount","type":["null","double"]},
  {"name":"qty","type":"long"},
  {"name":"coupon","type":["null","string"]},
  {"name":"event_type","type":"string"},
  {"name":"price","type":["null",{"type":"bytes","logicalType":"decimal","precision":12,"scale":2}]}]}"#;

const PROTO: &str = r#"syntax = "proto3";
package shop;
message Order {
  int64 ts = 1;
  string city = 2;
  string user_id = 3;
  optional double amount = 4;
  int64 qty = 5;
  optional string coupon = 6;
  string event_type = 7;
  optional string price = 8;
}
"#;

#[derive(Clone, PartialEq, prost::Message)]
struct ProtoOrder {
    #[prost(int64, tag = "1")]
    ts: i64,
    #[prost(string, tag = "2")]
    city: String,
    #[prost(string, tag = "3")]
    user_id: String,
    #[prost(double, optional, tag = "4")]
    amount: Option<f64>,
    #[prost(int64, tag = "5")]
    qty: i64,
    #[prost(string, optional, tag = "6")]
    coupon: Option<String>,
    #[prost(string, tag = "7")]
    event_type: String,
    #[prost(string, optional, tag = "8")]
    price: Option<String>,
}

/// The decoder of `format`, knowing the writer schema as the registry would hand it out.
pub(crate) fn decoder(schema: &Arc<EventSchema>, format: PayloadFormat) -> EventDecoder {
    testing::decoder_knowing(Arc::clone(schema), format, ID, AVRO, PROTO)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// `event` as a message value in `format`.
pub(crate) fn encode(event: &Event, format: PayloadFormat) -> Vec<u8> {
    let nullable = |v: Option<Value>| match v {
        None => Value::Union(0, Box::new(Value::Null)),
        Some(v) => Value::Union(1, Box::new(v)),
    };
    match format {
        PayloadFormat::Json => event.json().into_bytes(),
        PayloadFormat::Avro => avro(
            AVRO,
            ID,
            vec![
                ("ts", Value::TimestampMillis(event.ts)),
                ("city", Value::String(event.city.into())),
                ("user_id", Value::String(event.user.clone())),
                ("amount", nullable(event.amount.map(Value::Double))),
                ("qty", Value::Long(event.qty)),
                ("coupon", nullable(event.coupon.clone().map(Value::String))),
                ("event_type", Value::String(event.event_type.into())),
                (
                    "price",
                    nullable(event.price.map(|cents| {
                        Value::Decimal(apache_avro::Decimal::from(
                            i128::from(cents).to_be_bytes()[8..].to_vec(),
                        ))
                    })),
                ),
            ],
        ),
        PayloadFormat::Protobuf => {
            use prost::Message;
            let message = ProtoOrder {
                ts: event.ts,
                city: event.city.into(),
                user_id: event.user.clone(),
                amount: event.amount,
                qty: event.qty,
                coupon: event.coupon.clone(),
                event_type: event.event_type.into(),
                price: event.price_text(),
            };
            let mut body = vec![0];
            body.extend(message.encode_to_vec());
            framed(ID, &body)
        }
    }
}
