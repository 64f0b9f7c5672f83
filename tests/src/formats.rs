//! Producers' encoders for the format tests: orders written with apache-avro and prost, framed
//! in the Confluent wire format, in three schema versions.
//!
//! - v1: `ts` (timestamp-millis), `city`, `amount`
//! - v2: v1 plus `qty` (int) and a nested `customer` record with a `tier` enum
//! - v3: v2 without `amount`

use apache_avro::Schema;
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;

/// The Avro subject of the `orders` topic's values.
pub const SUBJECT: &str = "orders-value";

pub const ORDER_V1: &str = r#"{"type":"record","name":"Order","namespace":"shop","fields":[
  {"name":"ts","type":{"type":"long","logicalType":"timestamp-millis"}},
  {"name":"city","type":"string"},
  {"name":"amount","type":"double"}]}"#;

pub const ORDER_V2: &str = r#"{"type":"record","name":"Order","namespace":"shop","fields":[
  {"name":"ts","type":{"type":"long","logicalType":"timestamp-millis"}},
  {"name":"city","type":"string"},
  {"name":"amount","type":"double"},
  {"name":"qty","type":"int","default":1},
  {"name":"customer","type":["null",{"type":"record","name":"Customer","fields":[
    {"name":"id","type":"long"},
    {"name":"tier","type":{"type":"enum","name":"Tier","symbols":["BASIC","GOLD"]}}]}],"default":null}]}"#;

pub const ORDER_V3: &str = r#"{"type":"record","name":"Order","namespace":"shop","fields":[
  {"name":"ts","type":{"type":"long","logicalType":"timestamp-millis"}},
  {"name":"city","type":"string"},
  {"name":"qty","type":"int","default":1},
  {"name":"customer","type":["null",{"type":"record","name":"Customer","fields":[
    {"name":"id","type":"long"},
    {"name":"tier","type":{"type":"enum","name":"Tier","symbols":["BASIC","GOLD"]}}]}],"default":null}]}"#;

/// An order as the tests think of it; each version writes what its schema has.
#[derive(Debug, Clone, PartialEq)]
pub struct Order {
    pub ts: i64,
    pub city: &'static str,
    pub amount: f64,
    pub qty: i32,
    /// `Some("GOLD")` or `Some("BASIC")`; `None` writes a null customer.
    pub tier: Option<&'static str>,
}

/// The Confluent wire format: a zero byte, the schema id (big-endian), the body (Protobuf
/// message indexes, if any, at the start of `body`).
pub fn framed(id: u32, body: &[u8]) -> Vec<u8> {
    tandem_shared::testing::orders::confluent_framed(id, &[], body)
}

/// `fields` as an Avro datum of `schema`, framed with `id`.
pub fn avro(schema: &str, id: u32, fields: Vec<(&str, Value)>) -> Vec<u8> {
    let schema = Schema::parse_str(schema).unwrap_or_else(|e| panic!("test schema: {e}"));
    let writer = GenericDatumWriter::builder(&schema)
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let record = Value::Record(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect());
    let body = writer
        .write_value_to_vec(record)
        .unwrap_or_else(|e| panic!("encoding a test order: {e}"));
    framed(id, &body)
}

impl Order {
    /// The order written with schema `version` (1, 2 or 3), registered as `id`.
    pub fn avro(&self, version: u8, id: u32) -> Vec<u8> {
        let mut fields = vec![
            ("ts", Value::TimestampMillis(self.ts)),
            ("city", Value::String(self.city.into())),
        ];
        if version < 3 {
            fields.push(("amount", Value::Double(self.amount)));
        }
        if version >= 2 {
            fields.push(("qty", Value::Int(self.qty)));
            let customer = match self.tier {
                None => Value::Union(0, Box::new(Value::Null)),
                Some(tier) => Value::Union(
                    1,
                    Box::new(Value::Record(vec![
                        ("id".into(), Value::Long(7)),
                        (
                            "tier".into(),
                            Value::Enum(u32::from(tier == "GOLD"), tier.into()),
                        ),
                    ])),
                ),
            };
            fields.push(("customer", customer));
        }
        let schema = match version {
            1 => ORDER_V1,
            2 => ORDER_V2,
            _ => ORDER_V3,
        };
        avro(schema, id, fields)
    }

    /// The order as Protobuf `shop.Order` (see [`ORDER_PROTO`]), framed with `id` and the
    /// message indexes of the first message.
    pub fn protobuf(&self, id: u32) -> Vec<u8> {
        use prost::Message;
        let message = ProtoOrder {
            ts: self.ts,
            city: self.city.to_owned(),
            amount: self.amount,
            qty: Some(i64::from(self.qty)),
            customer: self.tier.map(|tier| ProtoCustomer {
                tier: tier.to_owned(),
            }),
        };
        // Message indexes `[0]` are written as a single zero.
        let mut body = vec![0];
        body.extend(message.encode_to_vec());
        framed(id, &body)
    }
}

/// The Protobuf schema of orders, as registered.
pub const ORDER_PROTO: &str = r#"syntax = "proto3";
package shop;
message Order {
  int64 ts = 1;
  string city = 2;
  double amount = 3;
  optional int64 qty = 4;
  Customer customer = 5;
}
message Customer { string tier = 1; }
"#;

#[derive(Clone, PartialEq, prost::Message)]
pub struct ProtoOrder {
    #[prost(int64, tag = "1")]
    pub ts: i64,
    #[prost(string, tag = "2")]
    pub city: String,
    #[prost(double, tag = "3")]
    pub amount: f64,
    #[prost(int64, optional, tag = "4")]
    pub qty: Option<i64>,
    #[prost(message, optional, tag = "5")]
    pub customer: Option<ProtoCustomer>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ProtoCustomer {
    #[prost(string, tag = "1")]
    pub tier: String,
}
