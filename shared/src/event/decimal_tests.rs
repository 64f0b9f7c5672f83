//! Decimal fields written by the formats' own libraries: exact, or dead-lettered with a reason.

use apache_avro::types::Value;

use super::format_tests::{avro, avro_decoder, event, registered};
use super::*;

/// Money as a `decimal(10, 2)` field, written as Avro decimals of another scale, as a long and
/// as a string: every value arrives exact, or is dead-lettered with the reason.
#[test]
fn avro_decimals_are_rescaled_exactly() {
    const MONEY: &str = r#"{"type":"record","name":"Pay","fields":[
        {"name":"ts","type":{"type":"long","logicalType":"timestamp-millis"}},
        {"name":"amount","type":{"type":"bytes","logicalType":"decimal","precision":12,"scale":3}},
        {"name":"fee","type":{"type":"fixed","name":"Fee","size":8,"logicalType":"decimal","precision":12,"scale":1}},
        {"name":"units","type":"long"},
        {"name":"text","type":"string"}]}"#;
    let money = FieldType::Decimal {
        precision: 10,
        scale: 2,
    };
    let schema = crate::testing::schema(&[
        ("amount", money),
        ("fee", money),
        ("units", money),
        ("text", money),
    ]);
    let d = avro_decoder(schema, None);
    d.learn(7, registered(MONEY));
    let pay = |amount: i128, fee: i64, units: i64, text: &str| {
        let be = |v: i128, n: usize| v.to_be_bytes()[16 - n..].to_vec();
        avro(
            7,
            MONEY,
            vec![
                ("ts", Value::TimestampMillis(1_000)),
                (
                    "amount",
                    Value::Decimal(apache_avro::Decimal::from(be(amount, 4))),
                ),
                (
                    "fee",
                    Value::Decimal(apache_avro::Decimal::from(be(i128::from(fee), 8))),
                ),
                ("units", Value::Long(units)),
                ("text", Value::String(text.into())),
            ],
        )
    };
    // 12345.670 (scale 3) → 1234567 cents; -2.5 (scale 1) → -250; 7 → 700; "0.05" → 5.
    let e = event(&d, &pay(12_345_670, -25, 7, "0.05"));
    assert_eq!(
        e.values,
        [
            Slot::Decimal(1_234_567),
            Slot::Decimal(-250),
            Slot::Decimal(700),
            Slot::Decimal(5)
        ]
    );
    let kind = |payload: &[u8]| match d.read(Some(payload)) {
        Read::Malformed(e) => e.kind(),
        other => panic!("not malformed: {other:?}"),
    };
    // A tenth of a cent cannot be a decimal(10, 2): refused, not rounded.
    assert_eq!(kind(&pay(12_345_671, 0, 0, "0")), "decimal_scale");
    // 10^8 does not fit eight integer digits.
    assert_eq!(kind(&pay(0, 0, 100_000_000, "0")), "decimal_overflow");
    assert_eq!(kind(&pay(0, 0, 0, "12.345")), "decimal_scale");
    assert_eq!(kind(&pay(0, 0, 0, "twelve")), "wrong_type");
}
