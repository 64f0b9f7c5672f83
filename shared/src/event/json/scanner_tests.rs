//! The scanner against the serde reader (the oracle): whatever the scanner accepts, the serde
//! reader accepts too and fills the same slots; whatever it declines, decoding still answers as
//! the serde reader does.

use proptest::prelude::*;

use super::super::Slot;
use super::super::paths::{Layout, Shape};
use super::{decode, deserialize, scanner};
use crate::schema::FieldType;

fn layout() -> Layout {
    let schema = crate::testing::schema(&[
        ("city", FieldType::String),
        ("amount", FieldType::Float64),
        ("qty", FieldType::Int64),
        ("paid", FieldType::Bool),
        ("shipped_at", FieldType::Timestamp),
        (
            "price",
            FieldType::Decimal {
                precision: 12,
                scale: 2,
            },
        ),
        ("customer.tier", FieldType::String),
    ]);
    Layout::new(&schema, Shape::Plain)
}

/// What the scanner and the serde reader make of `text`: `Some` slots when the scanner takes
/// it (then the serde reader must agree), and the public decoding's answer either way.
fn compare(layout: &Layout, text: &str) -> Option<Vec<Slot<'static>>> {
    let empty = || vec![Slot::Null; layout.slots];
    let mut oracle = empty();
    let expected = deserialize(&layout.root, text, &mut oracle);
    let mut decoded = empty();
    let got = decode(&layout.root, text.as_bytes(), &mut decoded);
    assert_eq!(got, expected, "decoding {text:?}");
    if expected.is_ok() {
        assert_eq!(decoded, oracle, "slots of {text:?}");
    }
    let mut scanned = empty();
    scanner::scan(&layout.root, text, &mut scanned)?;
    assert_eq!(
        expected,
        Ok(()),
        "the scanner took {text:?}, serde rejects it"
    );
    assert_eq!(scanned, oracle, "the scanner's slots of {text:?}");
    Some(oracle.into_iter().map(Slot::into_owned).collect())
}

#[test]
fn common_events_take_the_scanner_and_match_serde() {
    let layout = layout();
    let events = [
        r#"{"ts":1795255200000,"city":"Chennai","amount":12.5,"qty":3,"paid":true,"shipped_at":"2026-11-21T10:00:00Z","price":"10344.78","customer":{"tier":"gold","since":2019}}"#,
        r#"{ "ts" : "2026-11-21T10:00:00.250+05:30" , "city" : "Zürich" , "price" : 0.1 , "qty" : -42 , "amount" : 7 }"#,
        "{\"ts\":0,\n\t\"paid\":false,\"amount\":-1.5e-3,\"extra\":[1,{\"a\":[true,null,\"x\"]},[]],\"customer\":null}\r\n",
        r#"{"ts":1,"amount":1E+2,"qty":9223372036854775,"price":-12,"other":{},"more":[],"shipped_at":null}"#,
        r#"{"ts":1,"city":"a","city":"b","customer":{"tier":"x"},"customer":{"since":1}}"#,
    ];
    for text in events {
        assert!(compare(&layout, text).is_some(), "{text} should be scanned");
    }
}

#[test]
fn what_the_scanner_declines_serde_decides() {
    let layout = layout();
    let declined = [
        // Escapes, in a declared value, an undeclared one, and a key.
        r#"{"ts":1,"city":"Chen\"nai"}"#,
        r#"{"ts":1,"note":"caf\u00e9"}"#,
        r#"{"t\u0073":1}"#,
        // Numbers serde reads otherwise than as a small integer.
        r#"{"ts":1,"qty":-0}"#,
        r#"{"ts":1,"amount":-0}"#,
        r#"{"ts":1,"qty":12345678901234567890}"#,
        r#"{"ts":1,"amount":1e400}"#,
        r#"{"ts":1,"amount":123456789012345678901234}"#,
        // Wrong types, bad decimals and times, bad JSON.
        r#"{"ts":1,"qty":1.5}"#,
        r#"{"ts":1,"qty":"3"}"#,
        r#"{"ts":1,"paid":1}"#,
        r#"{"ts":1,"price":12.345}"#,
        r#"{"ts":1,"price":"1e20"}"#,
        r#"{"ts":"yesterday"}"#,
        r#"{"ts":1.5}"#,
        r#"{"ts":1,"customer":"gold"}"#,
        r#"{"ts":1,"qty":01}"#,
        r#"{"ts":1,"qty":1.}"#,
        r#"{"ts":1,"x":[1,]}"#,
        r#"{"ts":1,}"#,
        r#"{"ts":1} x"#,
        r#"[1]"#,
        "{\"ts\":1,\"city\":\"a\tb\"}",
    ];
    for text in declined {
        assert!(
            compare(&layout, text).is_none(),
            "{text} should go to serde"
        );
    }
}

/// JSON value texts: of every declared type, of wrong types, and the edge cases of the grammar.
fn value() -> impl Strategy<Value = String> {
    let fixed = prop::sample::select(vec![
        "null",
        "true",
        "false",
        "0",
        "-0",
        "1",
        "-1",
        "01",
        "1.",
        ".5",
        "+1",
        "1e5",
        "1E+2",
        "-1.5e-3",
        "2.5",
        "12.34",
        "12.345",
        "1e400",
        "9223372036854775807",
        "-9223372036854775808",
        "12345678901234567890",
        "999999999999999999",
        "\"\"",
        "\"Chennai\"",
        "\"Zürich\"",
        "\"a\\\"b\"",
        "\"\\u00e9\"",
        "\"\\ud800\"",
        "\"10344.78\"",
        "\" 1.5 \"",
        "\"1e2\"",
        "\"abc\"",
        "\"2026-11-21T10:00:00Z\"",
        "\"2026-13-01T00:00:00Z\"",
        "[]",
        "{}",
        "[1,[2,{\"a\":null}]]",
        "{\"tier\":\"gold\"}",
        "{\"tier\":1}",
        "{\"tier\":\"x\",\"since\":[1]}",
        "[1,]",
        "{\"a\"}",
        "tru",
        "nul",
    ])
    .prop_map(str::to_owned);
    prop_oneof![
        3 => fixed,
        1 => any::<i64>().prop_map(|v| v.to_string()),
        1 => any::<f64>().prop_map(|v| format!("{v:e}")),
        1 => "[a-zA-Z0-9 .:é-]{0,12}".prop_map(|s| format!("\"{s}\"")),
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "ts",
        "city",
        "amount",
        "qty",
        "paid",
        "shipped_at",
        "price",
        "customer",
        "other",
        "t\\u0073",
    ])
    .prop_map(str::to_owned)
}

fn whitespace() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["", "", "", " ", "\n\t", "\r\n "])
}

/// A declared key with a value of its type.
fn typed_pair() -> impl Strategy<Value = (String, String)> {
    let string = "[a-zA-Z0-9 .:é-]{0,40}".prop_map(|s| format!("\"{s}\""));
    prop_oneof![
        string.clone().prop_map(|v| ("city".to_owned(), v)),
        any::<f64>().prop_map(|v| ("amount".to_owned(), v.to_string())),
        (-1_000_000_000_000i64..1_000_000_000_000, 0..20usize).prop_map(|(v, shift)| {
            // Short decimals with the point anywhere (Clinger's fast path, and just past it).
            let digits = v.unsigned_abs().to_string();
            let at = digits.len().saturating_sub(shift % (digits.len() + 1));
            let sign = if v < 0 { "-" } else { "" };
            let whole = if at == 0 { "0" } else { &digits[..at] };
            (
                "amount".to_owned(),
                format!("{sign}{whole}.{}0", &digits[at..]),
            )
        }),
        (0u64..1 << 54).prop_map(|v| ("amount".to_owned(), format!("{v}.5"))),
        any::<i64>().prop_map(|v| ("qty".to_owned(), v.to_string())),
        any::<bool>().prop_map(|v| ("paid".to_owned(), v.to_string())),
        (0i64..4_000_000_000_000).prop_map(|v| ("ts".to_owned(), v.to_string())),
        (-10_000_000_000i64..10_000_000_000).prop_map(|v| (
            "price".to_owned(),
            format!("{}.{:02}", v / 100, (v % 100).abs())
        )),
        // Decimals of any shape: 1 to 22 digits (past the precision and past 18), the point
        // anywhere or absent, leading zeros, a sign, sometimes an exponent.
        (
            "-?0{0,2}[0-9]{1,22}",
            0..25usize,
            prop::option::of(-4i32..6)
        )
            .prop_map(|(digits, at, exponent)| {
                let unsigned = digits.trim_start_matches('-');
                let sign = &digits[..digits.len() - unsigned.len()];
                let at = unsigned.len() - at.min(unsigned.len());
                let whole = if at == 0 { "0" } else { &unsigned[..at] };
                let point = if at < unsigned.len() {
                    format!(".{}", &unsigned[at..])
                } else {
                    String::new()
                };
                let exponent = exponent.map(|e| format!("e{e}")).unwrap_or_default();
                (
                    "price".to_owned(),
                    format!("{sign}{whole}{point}{exponent}"),
                )
            }),
        string.prop_map(|v| ("customer".to_owned(), format!("{{\"tier\":{v}}}"))),
    ]
}

/// An object of `pairs`, with whitespace, optionally damaged: a prefix, or one byte replaced.
fn payload() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(
            (
                prop_oneof![2 => typed_pair(), 1 => (key(), value())],
                whitespace(),
            ),
            0..9,
        ),
        whitespace(),
        0..6u8,
        any::<prop::sample::Index>(),
        prop::sample::select(vec![
            b'{', b'}', b'[', b']', b',', b':', b'"', b'\\', b'x', b'0',
        ]),
    )
        .prop_map(|(pairs, ws, damage, at, byte)| {
            let body: Vec<String> = pairs
                .iter()
                .map(|((k, v), w)| format!("{w}\"{k}\"{w}:{w}{v}{w}"))
                .collect();
            let text = format!("{ws}{{{}}}{ws}", body.join(","));
            match damage {
                0 => {
                    let mut end = at.index(text.len() + 1);
                    while !text.is_char_boundary(end) {
                        end -= 1;
                    }
                    text[..end].to_owned()
                }
                1 => {
                    let mut bytes = text.into_bytes();
                    let i = at.index(bytes.len());
                    bytes[i] = byte;
                    String::from_utf8(bytes).unwrap_or_default()
                }
                _ => text,
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn eight_bytes_at_a_time_find_the_first_byte_to_look_at(
        bytes in prop::array::uniform8(prop::sample::select(vec![
            b'"', b'\\', 0x00, 0x1f, 0x20, 0x21, b'a', 0x7f, 0x80, 0xc3, 0xff,
        ])),
    ) {
        let first = bytes.iter().position(|b| *b == b'"' || *b == b'\\' || *b < 0x20);
        let found = scanner::needs_a_look(u64::from_le_bytes(bytes));
        prop_assert_eq!(
            (found != 0).then(|| (found.trailing_zeros() / 8) as usize),
            first
        );
    }

    #[test]
    fn scanner_agrees_with_serde(text in payload()) {
        compare(&layout(), &text);
    }
}
