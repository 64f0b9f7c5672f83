//! JSON decoding and the batch builder.

use proptest::strategy::Strategy;

use super::*;
use arrow_array::Array;
use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, TimestampMillisecondType};

fn decoder() -> EventDecoder {
    EventDecoder::new(crate::testing::schema(&[
        ("city", FieldType::String),
        ("amount", FieldType::Float64),
        ("qty", FieldType::Int64),
        ("paid", FieldType::Bool),
        ("shipped_at", FieldType::Timestamp),
    ]))
}

#[test]
fn decodes_typed_fields_and_ignores_unknown_keys() {
    let d = decoder();
    let e = d
        .decode(br#"{"ts":"2026-11-21T10:00:00Z","city":"Chennai","amount":12,"qty":3,"paid":true,"shipped_at":1795255200000,"extra":{"a":[1,2]}}"#)
        .unwrap();
    assert_eq!(e.time, EventTime(1_795_255_200_000));
    assert_eq!(
        e.values,
        vec![
            Slot::Str("Chennai".into()),
            Slot::Float(12.0),
            Slot::Int(3),
            Slot::Bool(true),
            Slot::Time(1_795_255_200_000),
        ]
    );
}

#[test]
fn missing_and_null_fields_are_null_but_time_is_required() {
    let d = decoder();
    let e = d.decode(br#"{"ts":1000,"city":null}"#).unwrap();
    assert!(e.values.iter().all(|s| *s == Slot::Null));
    assert_eq!(
        d.decode(br#"{"city":"Pune"}"#),
        Err(DecodeError::MissingTime { field: "ts".into() })
    );
    assert_eq!(
        d.decode(br#"{"ts":null}"#),
        Err(DecodeError::MissingTime { field: "ts".into() })
    );
}

#[test]
fn classifies_malformed_payloads() {
    let d = decoder();
    assert_eq!(d.decode(b"not json").unwrap_err().kind(), "not_json");
    assert_eq!(
        d.decode(b"{\"ts\":1000,\"city\":\"\xff\"}")
            .unwrap_err()
            .kind(),
        "not_json"
    );
    assert_eq!(d.decode(br#"{"ts":1000"#).unwrap_err().kind(), "not_json");
    assert_eq!(
        d.decode(br#"{"ts":1000} trailing"#).unwrap_err().kind(),
        "not_json"
    );
    assert_eq!(d.decode(b"[1,2]").unwrap_err(), DecodeError::NotObject);
    assert_eq!(d.decode(b"42").unwrap_err(), DecodeError::NotObject);
    assert_eq!(
        d.decode(br#"{"ts":"noon"}"#).unwrap_err().kind(),
        "bad_time"
    );
    assert_eq!(d.decode(br#"{"ts":1.5}"#).unwrap_err().kind(), "bad_time");
    assert_eq!(
        d.decode(br#"{"ts":1000,"amount":"12.5"}"#),
        Err(DecodeError::WrongType {
            field: "amount".into(),
            expected: FieldType::Float64,
            got: "string \"12.5\"".into()
        })
    );
    assert_eq!(
        d.decode(br#"{"ts":1000,"qty":2.5}"#).unwrap_err().kind(),
        "wrong_type"
    );
    assert_eq!(
        d.decode(br#"{"ts":1000,"city":7}"#).unwrap_err().kind(),
        "wrong_type"
    );
    assert_eq!(
        d.decode(br#"{"ts":1000,"paid":"yes"}"#).unwrap_err().kind(),
        "wrong_type"
    );
}

#[test]
fn escaped_strings_are_decoded() {
    let d = decoder();
    let e = d
        .decode(br#"{"ts":1,"city":"S\u00e3o Paulo","c\u0069ty2":1}"#)
        .unwrap();
    assert_eq!(e.values[0], Slot::Str("São Paulo".into()));
}

#[test]
fn builder_produces_batches_of_the_arrow_schema() {
    let d = decoder();
    let mut b = EventBatchBuilder::new(&d, 4);
    for (i, payload) in [
        br#"{"ts":1000,"city":"A","amount":1.5}"#.as_slice(),
        br#"{"ts":2000,"city":"B"}"#.as_slice(),
    ]
    .iter()
    .enumerate()
    {
        let e = d.decode(payload).unwrap();
        b.append(&e, 3, 10 + i as i64);
    }
    let batch = b.finish();
    assert_eq!(batch.schema(), *d.arrow_schema());
    assert_eq!(batch.num_rows(), 2);
    let ts = batch.column(0).as_primitive::<TimestampMillisecondType>();
    assert_eq!(ts.values(), &[1000, 2000]);
    let amount = batch.column(2).as_primitive::<Float64Type>();
    assert_eq!(amount.value(0), 1.5);
    assert!(amount.is_null(1));
    assert!(b.is_empty());
}

#[test]
fn times_before_min_time_are_past_and_beyond_the_range_are_bad() {
    let schema = Arc::new(
        EventSchema::new("ts", vec![("city".to_owned(), FieldType::String)], None).unwrap(),
    );
    let d = EventDecoder::new(schema);
    let err = d
        .decode(br#"{"ts": "1999-12-31T23:59:59.999Z"}"#)
        .unwrap_err();
    assert_eq!(err.kind(), "past", "{err}");
    assert!(err.to_string().contains("2000-01-01"), "{err}");
    assert!(d.decode(br#"{"ts": "2000-01-01T00:00:00Z"}"#).is_ok());
    for ts in [
        "-9223372036854775808",
        "9223372036854775807",
        "253402300800000",
    ] {
        let payload = format!("{{\"ts\": {ts}}}");
        let kind = d.decode(payload.as_bytes()).unwrap_err().kind();
        assert!(kind == "past" || kind == "bad_time", "{ts}: {kind}");
    }
}

proptest::proptest! {
    /// No byte string panics the decoder: it is either an event or a reason.
    #[test]
    fn no_byte_string_panics_the_decoder(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
        let d = decoder();
        match d.decode(&bytes) {
            Ok(event) => proptest::prop_assert!(event.time.is_supported()),
            Err(err) => proptest::prop_assert!(!err.kind().is_empty()),
        }
    }

    /// Nor does any JSON object built from the schema's own keys with arbitrary values.
    #[test]
    fn no_object_of_known_keys_panics_the_decoder(
        ts in proptest::prop_oneof![
            proptest::num::i64::ANY.prop_map(|n| n.to_string()),
            proptest::num::f64::ANY.prop_map(|f| format!("{f:?}")),
            ".{0,40}".prop_map(|s| format!("{s:?}")),
            proptest::strategy::Just("null".to_owned()),
        ],
        amount in ".{0,12}",
        qty in proptest::num::i64::ANY,
    ) {
        let payload = format!(r#"{{"ts": {ts}, "amount": {amount:?}, "qty": {qty}, "city": [1], "shipped_at": {ts}}}"#);
        let _ = decoder().decode(payload.as_bytes());
    }
}

#[test]
fn json_decimals_are_read_from_their_text() {
    let money = FieldType::Decimal {
        precision: 12,
        scale: 2,
    };
    let d = EventDecoder::new(crate::testing::schema(&[("amount", money), ("fee", money)]));
    let decimal = |payload: &str| {
        d.decode(payload.as_bytes()).map(|e| {
            e.values
                .into_iter()
                .map(Slot::into_owned)
                .collect::<Vec<_>>()
        })
    };
    // Numbers and strings, exactly: 10344.78 is not the float 10344.779999999999.
    assert_eq!(
        decimal(r#"{"ts":1,"amount":10344.78,"fee":"0.10"}"#),
        Ok(vec![Slot::Decimal(1_034_478), Slot::Decimal(10)])
    );
    // 17 significant digits, beyond a float's 15: still exact.
    let wide = EventDecoder::new(crate::testing::schema(&[(
        "amount",
        FieldType::Decimal {
            precision: 30,
            scale: 4,
        },
    )]));
    assert_eq!(
        wide.decode(br#"{"ts":1,"amount":1234567890123.4567}"#)
            .map(|e| e.values),
        Ok(vec![Slot::Decimal(12_345_678_901_234_567)])
    );
    assert_eq!(
        decimal(r#"{"ts":1,"amount":-3,"fee":null}"#),
        Ok(vec![Slot::Decimal(-300), Slot::Null])
    );
    assert_eq!(
        decimal(r#"{"ts":1,"amount":1e3}"#),
        Ok(vec![Slot::Decimal(100_000), Slot::Null])
    );
    let reason = |payload: &str| decimal(payload).unwrap_err().kind();
    assert_eq!(
        reason(r#"{"ts":1,"amount":10000000000}"#),
        "decimal_overflow"
    );
    assert_eq!(reason(r#"{"ts":1,"amount":"1e20"}"#), "decimal_overflow");
    assert_eq!(reason(r#"{"ts":1,"amount":0.001}"#), "decimal_scale");
    assert_eq!(reason(r#"{"ts":1,"amount":"ten"}"#), "wrong_type");
    assert_eq!(reason(r#"{"ts":1,"amount":true}"#), "wrong_type");
    assert_eq!(reason(r#"{"ts":1,"amount":{"v":1}}"#), "wrong_type");
    let err = decimal(r#"{"ts":1,"amount":0.001}"#)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("amount") && err.contains("2 decimal places"),
        "{err}"
    );

    // Into Arrow: Decimal128(12, 2) with the same units.
    let mut builder = EventBatchBuilder::new(&d, 4);
    let e = d.decode(br#"{"ts":1,"amount":"10344.78"}"#).unwrap();
    builder.append(&e, 0, 0);
    let batch = builder.finish();
    let column = batch.column(1);
    assert_eq!(
        column.data_type(),
        &arrow_schema::DataType::Decimal128(12, 2)
    );
    let values = column.as_primitive::<arrow_array::types::Decimal128Type>();
    assert_eq!(values.value(0), 1_034_478);
}

/// The speed layer, the archive and a replay decide an event's admission alike: from the
/// record's timestamp, not from when it is read; the clock only marks events ahead of it.
#[test]
fn admission_is_measured_from_the_record_timestamp() {
    use super::Admission;
    use crate::time::{EventTime, Span};
    let hour = Span::from_millis(3_600_000);
    let record = 1_790_000_000_000i64;
    let now = EventTime(record + 1_000);
    // Within the bound and behind the clock.
    assert_eq!(
        Admission::of(EventTime(record), Some(record), now, hour),
        Admission::Admitted
    );
    // Within the bound, ahead of the clock: kept and marked.
    assert_eq!(
        Admission::of(EventTime(record + 60_000), Some(record), now, hour),
        Admission::AheadOfClock
    );
    // Past the bound: refused, whenever it is read (a replay a year later decides the same).
    let far = EventTime(record + 3_600_001);
    for read_at in [now, EventTime(record + 365 * 86_400_000)] {
        assert_eq!(
            Admission::of(far, Some(record), read_at, hour),
            Admission::Future {
                limit: EventTime(record + 3_600_000),
                from: EventTime(record)
            }
        );
    }
    // Exactly at the bound is admitted.
    assert_ne!(
        Admission::of(EventTime(record + 3_600_000), Some(record), now, hour),
        Admission::Future {
            limit: EventTime(record + 3_600_000),
            from: EventTime(record)
        }
    );
    // No record timestamp: the clock is the reference.
    assert!(matches!(
        Admission::of(EventTime(now.0 + 3_600_001), None, now, hour),
        Admission::Future { from, .. } if from == now
    ));
}
