//! Avro, Protobuf, nested fields and Debezium envelopes, with payloads written by the formats'
//! own libraries (apache-avro, prost through prost-reflect).

use apache_avro::Schema as AvroSchema;
use apache_avro::types::Value;
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, Value as PValue};

use super::*;

fn orders() -> Arc<EventSchema> {
    crate::testing::schema(&[
        ("city", FieldType::String),
        ("amount", FieldType::Float64),
        ("qty", FieldType::Int64),
        ("customer.tier", FieldType::String),
    ])
}

pub(super) fn avro_decoder(schema: Arc<EventSchema>, envelope: Option<Envelope>) -> EventDecoder {
    let format = Format {
        payload: PayloadFormat::Avro,
        envelope,
        registry: true,
        ..Format::default()
    };
    EventDecoder::with_format(schema, &format).unwrap()
}

fn framed(id: u32, body: &[u8]) -> Vec<u8> {
    let mut out = vec![0];
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(body);
    out
}

pub(super) fn avro(id: u32, schema: &str, fields: Vec<(&str, Value)>) -> Vec<u8> {
    let schema = AvroSchema::parse_str(schema).unwrap();
    let record = Value::Record(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect());
    let writer = apache_avro::writer::datum::GenericDatumWriter::builder(&schema)
        .build()
        .unwrap();
    framed(id, &writer.write_value_to_vec(record).unwrap())
}

pub(super) fn registered(text: &str) -> Result<RegisteredSchema, String> {
    Ok(RegisteredSchema {
        schema_type: SchemaType::Avro,
        text: text.to_owned(),
    })
}

const V1: &str = r#"{"type":"record","name":"Order","namespace":"shop","fields":[
    {"name":"ts","type":{"type":"long","logicalType":"timestamp-millis"}},
    {"name":"city","type":"string"},
    {"name":"amount","type":"double"}]}"#;
/// v2 adds `qty` (an int) and a nested `customer` record.
const V2: &str = r#"{"type":"record","name":"Order","namespace":"shop","fields":[
    {"name":"ts","type":{"type":"long","logicalType":"timestamp-millis"}},
    {"name":"city","type":"string"},
    {"name":"amount","type":"double"},
    {"name":"qty","type":"int","default":0},
    {"name":"customer","type":["null",{"type":"record","name":"Customer","fields":[
        {"name":"id","type":"long"},{"name":"tier","type":{"type":"enum","name":"Tier","symbols":["BASIC","GOLD"]}}]}],"default":null},
    {"name":"tags","type":{"type":"array","items":"string"},"default":[]}]}"#;
/// v3 drops `amount`.
const V3: &str = r#"{"type":"record","name":"Order","namespace":"shop","fields":[
    {"name":"ts","type":{"type":"long","logicalType":"timestamp-micros"}},
    {"name":"city","type":"string"},
    {"name":"qty","type":["null","long"]}]}"#;

pub(super) fn event(d: &EventDecoder, payload: &[u8]) -> DecodedEvent<'static> {
    match d.read(Some(payload)) {
        Read::Event(e) => DecodedEvent {
            time: e.time,
            values: e.values.into_iter().map(Slot::into_owned).collect(),
        },
        other => panic!("not an event: {other:?}"),
    }
}

#[test]
fn avro_schemas_evolve_within_one_topic() {
    let d = avro_decoder(orders(), None);
    let p1 = avro(
        1,
        V1,
        vec![
            ("ts", Value::TimestampMillis(5_000)),
            ("city", Value::String("Pune".into())),
            ("amount", Value::Double(12.5)),
        ],
    );
    // Unknown id: nothing is decided until the registry answers.
    assert_eq!(d.read(Some(&p1)), Read::Unresolved(1));
    d.learn(1, registered(V1));
    d.learn(2, registered(V2));
    d.learn(3, registered(V3));
    let e = event(&d, &p1);
    assert_eq!(e.time, EventTime(5_000));
    assert_eq!(
        e.values,
        [
            Slot::Str("Pune".into()),
            Slot::Float(12.5),
            Slot::Null,
            Slot::Null
        ]
    );
    let p2 = avro(
        2,
        V2,
        vec![
            ("ts", Value::TimestampMillis(6_000)),
            ("city", Value::String("Goa".into())),
            ("amount", Value::Double(3.0)),
            ("qty", Value::Int(4)),
            (
                "customer",
                Value::Union(
                    1,
                    Box::new(Value::Record(vec![
                        ("id".into(), Value::Long(9)),
                        ("tier".into(), Value::Enum(1, "GOLD".into())),
                    ])),
                ),
            ),
            (
                "tags",
                Value::Array(vec![Value::String("a".into()), Value::String("b".into())]),
            ),
        ],
    );
    assert_eq!(
        event(&d, &p2).values,
        [
            Slot::Str("Goa".into()),
            Slot::Float(3.0),
            Slot::Int(4),
            Slot::Str("GOLD".into())
        ]
    );
    let p3 = avro(
        3,
        V3,
        vec![
            ("ts", Value::TimestampMicros(7_000_123)),
            ("city", Value::String("Agra".into())),
            ("qty", Value::Union(0, Box::new(Value::Null))),
        ],
    );
    let e = event(&d, &p3);
    assert_eq!(e.time, EventTime(7_000));
    assert_eq!(
        e.values,
        [Slot::Str("Agra".into()), Slot::Null, Slot::Null, Slot::Null]
    );
}

#[test]
fn avro_bad_input_has_a_reason_each() {
    let d = avro_decoder(orders(), None);
    d.learn(1, registered(V1));
    let good = avro(
        1,
        V1,
        vec![
            ("ts", Value::TimestampMillis(5_000)),
            ("city", Value::String("Pune".into())),
            ("amount", Value::Double(12.5)),
        ],
    );
    let kind = |p: &[u8]| match d.read(Some(p)) {
        Read::Malformed(err) => err.kind(),
        other => panic!("{other:?}"),
    };
    let mut wrong_magic = good.clone();
    wrong_magic[0] = 1;
    assert_eq!(kind(&wrong_magic), "wrong_magic_byte");
    assert_eq!(kind(br#"{"ts":1}"#), "wrong_magic_byte");
    assert_eq!(kind(&good[..3]), "truncated");
    assert_eq!(kind(&good[..good.len() - 3]), "truncated");
    let mut trailing = good.clone();
    trailing.push(7);
    assert_eq!(kind(&trailing), "bad_payload");
    assert_eq!(d.read(None), Read::Malformed(DecodeError::Empty));

    // A type that cannot convert: `amount` written as a string.
    let v4 = V1.replace(
        r#""name":"amount","type":"double""#,
        r#""name":"amount","type":"string""#,
    );
    d.learn(4, registered(&v4));
    let p = avro(
        4,
        &v4,
        vec![
            ("ts", Value::TimestampMillis(5_000)),
            ("city", Value::String("Pune".into())),
            ("amount", Value::String("12.5".into())),
        ],
    );
    match d.read(Some(&p)) {
        Read::Malformed(err) => {
            assert_eq!(err.kind(), "schema_mismatch");
            assert!(err.to_string().contains("amount"), "{err}");
        }
        other => panic!("{other:?}"),
    }
    // The registry has no such id, or holds a schema that does not parse.
    d.learn(5, Err("404: Schema 5 not found".into()));
    assert_eq!(kind(&framed(5, &[2])), "unknown_schema");
    d.learn(6, registered("{not avro"));
    assert_eq!(kind(&framed(6, &[2])), "schema_mismatch");
    d.learn(
        7,
        Ok(RegisteredSchema {
            schema_type: SchemaType::Protobuf,
            text: "syntax = \"proto3\";".into(),
        }),
    );
    assert_eq!(kind(&framed(7, &[2])), "schema_mismatch");
}

#[test]
fn avro_corrupt_bodies_never_panic() {
    let d = avro_decoder(orders(), None);
    d.learn(2, registered(V2));
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    for len in 0..400 {
        let mut body = Vec::with_capacity(len % 60);
        for _ in 0..len % 60 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            body.push(state as u8);
        }
        match d.read(Some(&framed(2, &body))) {
            Read::Event(e) => assert!(e.time.is_supported()),
            Read::Malformed(err) => assert!(!err.kind().is_empty()),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn json_fields_nest_with_dots() {
    let d = EventDecoder::new(orders());
    let e = d
        .decode(br#"{"ts":1,"city":"Pune","customer":{"tier":"GOLD","id":3},"qty":2}"#)
        .unwrap();
    assert_eq!(e.values[3], Slot::Str("GOLD".into()));
    let e = d.decode(br#"{"ts":1,"customer":null}"#).unwrap();
    assert_eq!(e.values[3], Slot::Null);
    let err = d.decode(br#"{"ts":1,"customer":"GOLD"}"#).unwrap_err();
    assert_eq!(err.kind(), "wrong_type");
    assert!(err.to_string().contains("customer"), "{err}");
}

fn change_schema() -> Arc<EventSchema> {
    crate::testing::schema(&[
        ("status", FieldType::String),
        ("amount", FieldType::Float64),
        (OP_FIELD, FieldType::String),
    ])
}

fn debezium_json(include_snapshot: bool) -> EventDecoder {
    let format = Format {
        envelope: Some(Envelope::Debezium),
        include_snapshot,
        ..Format::default()
    };
    EventDecoder::with_format(change_schema(), &format).unwrap()
}

/// Debezium's documented envelope: `before`, `after`, `source` (with `ts_ms`), `op`, `ts_ms`.
fn change(op: &str, before: &str, after: &str) -> String {
    format!(
        r#"{{"before":{before},"after":{after},"source":{{"version":"2.7.0.Final","connector":"postgresql","name":"shop","ts_ms":1700000000000,"snapshot":"false","db":"shop","schema":"public","table":"orders","txId":563,"lsn":33850480}},"op":"{op}","ts_ms":1700000000123,"transaction":null}}"#
    )
}

#[test]
fn debezium_json_reads_the_row_the_operation_leaves() {
    let d = debezium_json(true);
    let row = r#"{"id":1,"status":"paid","amount":12.5}"#;
    let old = r#"{"id":1,"status":"new","amount":12.5}"#;
    let create = change("c", "null", row);
    let e = d.decode(create.as_bytes()).unwrap();
    assert_eq!(e.time, EventTime(1_700_000_000_000));
    assert_eq!(
        e.values,
        [
            Slot::Str("paid".into()),
            Slot::Float(12.5),
            Slot::Str("c".into())
        ]
    );
    let update = change("u", old, row);
    assert_eq!(
        d.decode(update.as_bytes()).unwrap().values[0],
        Slot::Str("paid".into())
    );
    let delete = change("d", old, "null");
    let e = d.decode(delete.as_bytes()).unwrap();
    assert_eq!(e.values[0], Slot::Str("new".into()));
    assert_eq!(e.values[2], Slot::Str("d".into()));
    // With the JSON converter's schemas enabled, the event is wrapped in `payload`.
    let wrapped = format!(r#"{{"schema":{{"type":"struct","fields":[]}},"payload":{create}}}"#);
    assert_eq!(
        d.decode(wrapped.as_bytes()).unwrap(),
        d.decode(create.as_bytes()).unwrap()
    );
    // A row carrying the time field wins over `source.ts_ms`.
    let timed = change("c", "null", r#"{"ts":1700000005000,"status":"paid"}"#);
    assert_eq!(
        d.decode(timed.as_bytes()).unwrap().time,
        EventTime(1_700_000_005_000)
    );
    // Tombstones are skipped; snapshot reads count unless excluded.
    assert_eq!(d.read(None), Read::Skip(Skip::Tombstone));
    assert_eq!(d.read(Some(b"")), Read::Skip(Skip::Tombstone));
    let snapshot = change("r", "null", row);
    assert!(matches!(d.read(Some(snapshot.as_bytes())), Read::Event(_)));
    assert_eq!(
        debezium_json(false).read(Some(snapshot.as_bytes())),
        Read::Skip(Skip::Snapshot)
    );
    // Not a change event.
    assert_eq!(
        d.decode(br#"{"status":"paid"}"#).unwrap_err().kind(),
        "not_change_event"
    );
    assert_eq!(
        d.decode(change("x", "null", row).as_bytes())
            .unwrap_err()
            .kind(),
        "not_change_event"
    );
}

const ENVELOPE: &str = r#"{"type":"record","name":"Envelope","namespace":"shop.public.orders","fields":[
    {"name":"before","type":["null",{"type":"record","name":"Value","fields":[
        {"name":"id","type":"int"},{"name":"status","type":"string"},{"name":"amount","type":["null","double"],"default":null}]}],"default":null},
    {"name":"after","type":["null","Value"],"default":null},
    {"name":"source","type":{"type":"record","name":"Source","namespace":"io.debezium.connector.postgresql","fields":[
        {"name":"version","type":"string"},{"name":"connector","type":"string"},{"name":"name","type":"string"},
        {"name":"ts_ms","type":"long"},{"name":"db","type":"string"},{"name":"table","type":"string"}]}},
    {"name":"op","type":"string"},
    {"name":"ts_ms","type":["null","long"],"default":null}]}"#;

fn avro_row(status: &str, amount: f64) -> Value {
    Value::Union(
        1,
        Box::new(Value::Record(vec![
            ("id".into(), Value::Int(1)),
            ("status".into(), Value::String(status.into())),
            (
                "amount".into(),
                Value::Union(1, Box::new(Value::Double(amount))),
            ),
        ])),
    )
}

fn avro_change(op: &str, before: Value, after: Value) -> Vec<u8> {
    let null = || Value::Union(0, Box::new(Value::Null));
    avro(
        9,
        ENVELOPE,
        vec![
            ("before", before),
            ("after", after),
            (
                "source",
                Value::Record(vec![
                    ("version".into(), Value::String("2.7.0.Final".into())),
                    ("connector".into(), Value::String("postgresql".into())),
                    ("name".into(), Value::String("shop".into())),
                    ("ts_ms".into(), Value::Long(1_700_000_000_000)),
                    ("db".into(), Value::String("shop".into())),
                    ("table".into(), Value::String("orders".into())),
                ]),
            ),
            ("op", Value::String(op.into())),
            ("ts_ms", null()),
        ],
    )
}

#[test]
fn debezium_avro_envelopes_read_like_json_ones() {
    let d = avro_decoder(change_schema(), Some(Envelope::Debezium));
    d.learn(9, registered(ENVELOPE));
    let null = || Value::Union(0, Box::new(Value::Null));
    let e = event(&d, &avro_change("c", null(), avro_row("paid", 12.5)));
    assert_eq!(e.time, EventTime(1_700_000_000_000));
    assert_eq!(
        e.values,
        [
            Slot::Str("paid".into()),
            Slot::Float(12.5),
            Slot::Str("c".into())
        ]
    );
    let e = event(&d, &avro_change("d", avro_row("new", 3.0), null()));
    assert_eq!(
        e.values,
        [
            Slot::Str("new".into()),
            Slot::Float(3.0),
            Slot::Str("d".into())
        ]
    );
    assert_eq!(d.read(None), Read::Skip(Skip::Tombstone));
}

const PROTO: &str = r#"
syntax = "proto3";
package shop;
import "google/protobuf/timestamp.proto";
message Customer { string tier = 1; int64 id = 2; }
message Order {
  google.protobuf.Timestamp ts = 1;
  string city = 2;
  double amount = 3;
  optional int64 qty = 4;
  Customer customer = 5;
  repeated string tags = 6;
}
"#;

fn proto_pool() -> DescriptorPool {
    super::protobuf::compile_text_for_tests(PROTO)
}

#[test]
fn protobuf_messages_read_by_their_indexes() {
    let pool = proto_pool();
    let order = pool.get_message_by_name("shop.Order").unwrap();
    let mut m = DynamicMessage::new(order.clone());
    let mut ts = DynamicMessage::new(
        pool.get_message_by_name("google.protobuf.Timestamp")
            .unwrap(),
    );
    ts.set_field_by_name("seconds", PValue::I64(1_700_000_000));
    ts.set_field_by_name("nanos", PValue::I32(250_000_000));
    m.set_field_by_name("ts", PValue::Message(ts));
    m.set_field_by_name("city", PValue::String("Pune".into()));
    m.set_field_by_name("tags", PValue::List(vec![PValue::String("x".into())]));
    let mut c = DynamicMessage::new(pool.get_message_by_name("shop.Customer").unwrap());
    c.set_field_by_name("tier", PValue::String("GOLD".into()));
    m.set_field_by_name("customer", PValue::Message(c));
    // Order is the second top-level message: indexes [1], written as count 1, index 1 (zigzag).
    let mut body = vec![2, 2];
    body.extend(m.encode_to_vec());
    let format = Format {
        payload: PayloadFormat::Protobuf,
        registry: true,
        ..Format::default()
    };
    let d = EventDecoder::with_format(orders(), &format).unwrap();
    d.learn(
        3,
        Ok(RegisteredSchema {
            schema_type: SchemaType::Protobuf,
            text: PROTO.into(),
        }),
    );
    let e = event(&d, &framed(3, &body));
    assert_eq!(e.time, EventTime(1_700_000_000_250));
    // `amount` is proto3 without presence: absent means 0; `qty` is optional: absent is NULL.
    assert_eq!(
        e.values,
        [
            Slot::Str("Pune".into()),
            Slot::Float(0.0),
            Slot::Null,
            Slot::Str("GOLD".into())
        ]
    );
    // Indexes [0] name `Customer`: it has no time, so the event has none.
    let mut as_customer = vec![0];
    as_customer.extend(m.encode_to_vec());
    assert!(matches!(
        d.read(Some(&framed(3, &as_customer))),
        Read::Malformed(_)
    ));
    // Truncated body, wrong magic byte.
    let full = framed(3, &body);
    assert!(matches!(
        d.read(Some(&full[..full.len() - 2])),
        Read::Malformed(DecodeError::Truncated { .. })
    ));
    let mut wrong = full.clone();
    wrong[0] = 9;
    assert!(matches!(
        d.read(Some(&wrong)),
        Read::Malformed(DecodeError::WrongMagicByte { byte: 9 })
    ));
}

#[test]
fn protobuf_type_mismatches_and_a_configured_message_are_enforced() {
    let schema = crate::testing::schema(&[("tags", FieldType::String)]);
    let format = Format {
        payload: PayloadFormat::Protobuf,
        registry: true,
        message: Some("shop.Order".into()),
        ..Format::default()
    };
    let d = EventDecoder::with_format(schema, &format).unwrap();
    d.learn(
        3,
        Ok(RegisteredSchema {
            schema_type: SchemaType::Protobuf,
            text: PROTO.into(),
        }),
    );
    let kind = |p: &[u8]| match d.read(Some(p)) {
        Read::Malformed(err) => err.kind(),
        other => panic!("{other:?}"),
    };
    // `tags` is repeated: it cannot be one string.
    assert_eq!(kind(&framed(3, &[2, 2, 0x32, 1, b'x'])), "schema_mismatch");
    // Indexes [0] are `shop.Customer`, not the configured `shop.Order`.
    assert_eq!(kind(&framed(3, &[0, 0x0a, 1, b'x'])), "schema_mismatch");
}

#[test]
fn a_local_proto_file_reads_bare_messages() {
    let dir = std::env::temp_dir().join(format!("tandem-proto-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("orders.proto");
    std::fs::write(&path, PROTO).unwrap();
    let schema = crate::testing::schema(&[("city", FieldType::String), ("qty", FieldType::Int64)]);
    let format = |message: &str| Format {
        payload: PayloadFormat::Protobuf,
        message: Some(message.into()),
        proto_file: Some(path.clone()),
        ..Format::default()
    };
    let d = EventDecoder::with_format(Arc::clone(&schema), &format("shop.Order")).unwrap();
    assert!(!d.uses_registry());
    let pool = proto_pool();
    let mut m = DynamicMessage::new(pool.get_message_by_name("shop.Order").unwrap());
    let mut ts = DynamicMessage::new(
        pool.get_message_by_name("google.protobuf.Timestamp")
            .unwrap(),
    );
    ts.set_field_by_name("seconds", PValue::I64(1_700_000_000));
    m.set_field_by_name("ts", PValue::Message(ts));
    m.set_field_by_name("city", PValue::String("Pune".into()));
    m.set_field_by_name("qty", PValue::I64(3));
    let e = event(&d, &m.encode_to_vec());
    assert_eq!(e.time, EventTime(1_700_000_000_000));
    assert_eq!(e.values, [Slot::Str("Pune".into()), Slot::Int(3)]);
    // An unknown message type or a missing file is a configuration error naming the problem.
    let err = EventDecoder::with_format(Arc::clone(&schema), &format("shop.Nope")).unwrap_err();
    assert!(err.to_string().contains("shop.Order"), "{err}");
    std::fs::remove_file(&path).unwrap();
    let err = EventDecoder::with_format(schema, &format("shop.Order")).unwrap_err();
    assert!(err.to_string().contains("orders.proto"), "{err}");
    let _ = std::fs::remove_dir(&dir);
}

#[test]
fn protobuf_field_numbers_beyond_the_direct_table_are_found() {
    let text = "syntax = \"proto3\";\npackage big;\nmessage Event { int64 ts = 1; string city = 100000; int64 qty = 127; }\n";
    let pool = super::protobuf::compile_text_for_tests(text);
    let mut m = DynamicMessage::new(pool.get_message_by_name("big.Event").unwrap());
    m.set_field_by_name("ts", PValue::I64(5_000));
    m.set_field_by_name("city", PValue::String("Lima".into()));
    m.set_field_by_name("qty", PValue::I64(7));
    let mut body = vec![0];
    body.extend(m.encode_to_vec());
    let schema = crate::testing::schema(&[("city", FieldType::String), ("qty", FieldType::Int64)]);
    let format = Format {
        payload: PayloadFormat::Protobuf,
        registry: true,
        ..Format::default()
    };
    let d = EventDecoder::with_format(schema, &format).unwrap();
    d.learn(
        1,
        Ok(RegisteredSchema {
            schema_type: SchemaType::Protobuf,
            text: text.into(),
        }),
    );
    let e = event(&d, &framed(1, &body));
    assert_eq!(e.time, EventTime(5_000));
    assert_eq!(e.values, [Slot::Str("Lima".into()), Slot::Int(7)]);
}
