//! The produced stream and the oracle: orders, malformed messages, and every view's values
//! computed from the orders here, independently of Tandem; and reading answers back.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, ensure};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use crate::{CITIES, MINUTE};

/// One produced order event and its Kafka key and payload.
#[derive(Debug, Clone)]
pub(crate) struct Order {
    pub(crate) key: String,
    pub(crate) ts: i64,
    pub(crate) city: &'static str,
    pub(crate) amount: f64,
    pub(crate) event_type: &'static str,
    pub(crate) payload: String,
}

/// A deterministic stream over 20 minutes, produced in index order with event times up to 5s
/// behind the stream's front (the views allow 10s of lateness). Amounts are multiples of 0.25,
/// which binary floating point represents exactly, so sums are exact in any order.
pub(crate) fn stream(base: i64, n: usize) -> Vec<Order> {
    let mut rng = StdRng::seed_from_u64(42);
    (0..n)
        .map(|i| {
            let ts = base + i as i64 * 400 - rng.random_range(0..5_000);
            let city = CITIES[rng.random_range(0..CITIES.len())];
            let amount = f64::from(rng.random_range(1..2_000u32)) * 0.25;
            let event_type = match rng.random_range(0..10) {
                0..7 => "order_placed",
                7..9 => "payment_captured",
                _ => "order_cancelled",
            };
            let user = format!("u-{:04}", rng.random_range(0..500));
            // Alternate the two accepted time formats.
            let ts_json = if i % 2 == 0 {
                json!(ts)
            } else {
                json!(chrono::DateTime::from_timestamp_millis(ts).map(|d| d.to_rfc3339()))
            };
            let payload = json!({
                "order_id": format!("o-{i}"),
                "ts": ts_json,
                "city": city,
                "user_id": user,
                "amount": amount,
                "event_type": event_type,
                "ignored_extra": {"nested": true},
            })
            .to_string();
            Order {
                key: user,
                ts,
                city,
                amount,
                event_type,
                payload,
            }
        })
        .collect()
}

pub(crate) fn malformed() -> Vec<(&'static str, &'static str)> {
    vec![
        ("not json at all", "not_json"),
        ("{\"ts\": 1795255200000, \"city\": ", "not_json"),
        ("[1, 2, 3]", "not_object"),
        ("{\"city\": \"Chennai\", \"amount\": 1.5}", "missing_time"),
        (
            "{\"ts\": \"half past nine\", \"city\": \"Chennai\"}",
            "bad_time",
        ),
        (
            "{\"ts\": 1795255200000, \"amount\": \"12.50\"}",
            "wrong_type",
        ),
        ("{\"ts\": 1795255200000, \"city\": 7}", "wrong_type"),
    ]
}

/// Expected values of `orders_by_city`, computed directly from the produced events.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Expected {
    pub(crate) orders: i64,
    pub(crate) revenue: f64,
    pub(crate) min: f64,
    pub(crate) max: f64,
}

pub(crate) fn expected_orders_by_city(orders: &[Order]) -> BTreeMap<(i64, String), Expected> {
    let mut out: BTreeMap<(i64, String), Expected> = BTreeMap::new();
    for o in orders.iter().filter(|o| o.event_type == "order_placed") {
        let window = o.ts - o.ts.rem_euclid(MINUTE);
        let e = out.entry((window, o.city.to_owned())).or_insert(Expected {
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            ..Default::default()
        });
        e.orders += 1;
        e.revenue += o.amount;
        e.min = e.min.min(o.amount);
        e.max = e.max.max(o.amount);
    }
    out
}

pub(crate) fn expected_events_by_type(orders: &[Order]) -> BTreeMap<(i64, String), (i64, f64)> {
    let mut out: BTreeMap<(i64, String), (i64, f64)> = BTreeMap::new();
    for o in orders {
        let window = o.ts - o.ts.rem_euclid(5 * MINUTE);
        let e = out.entry((window, o.event_type.to_owned())).or_default();
        e.0 += 1;
        e.1 += o.amount;
    }
    out
}

pub(crate) use tandem_tests::millis;

/// Orders counted over every row of `orders_by_city`.
pub(crate) fn orders_in(rows: &BTreeMap<(i64, String), (Value, String)>) -> i64 {
    rows.values()
        .filter_map(|(v, _)| v["orders"].as_i64())
        .sum()
}

/// Rows of a view keyed by (window start, first group value), with their source.
pub(crate) fn rows_by_key(
    body: &Value,
    dimension: &str,
) -> anyhow::Result<BTreeMap<(i64, String), (Value, String)>> {
    let mut out = BTreeMap::new();
    let rows = body["rows"].as_array().context("no rows array")?;
    let mut last: Option<(i64, String)> = None;
    for row in rows {
        let key = (
            millis(&row["window_start"])?,
            row["group"][dimension]
                .as_str()
                .context("group value")?
                .to_owned(),
        );
        ensure!(
            millis(&row["window_end"])? > key.0,
            "window_end must follow window_start: {row}"
        );
        if let Some(prev) = &last {
            ensure!(
                prev < &key,
                "rows must be ordered by window_start then group: {prev:?} then {key:?}"
            );
        }
        last = Some(key.clone());
        let source = row["source"].as_str().context("source")?.to_owned();
        ensure!(
            out.insert(key.clone(), (row["values"].clone(), source))
                .is_none(),
            "window and group {key:?} appears twice"
        );
    }
    Ok(out)
}

pub(crate) fn check_orders_by_city(
    got: &BTreeMap<(i64, String), (Value, String)>,
    expected: &BTreeMap<(i64, String), Expected>,
) -> anyhow::Result<()> {
    let got_keys: BTreeSet<_> = got.keys().collect();
    let want_keys: BTreeSet<_> = expected.keys().collect();
    ensure!(
        got_keys == want_keys,
        "windows and groups differ: missing {:?}, unexpected {:?}",
        want_keys.difference(&got_keys).take(5).collect::<Vec<_>>(),
        got_keys.difference(&want_keys).take(5).collect::<Vec<_>>()
    );
    for (key, want) in expected {
        let (values, source) = &got[key];
        let ctx = || format!("{key:?} from {source}: {values}");
        ensure!(
            values["orders"].as_i64() == Some(want.orders),
            "orders: {}",
            ctx()
        );
        for (name, want) in [
            ("revenue", want.revenue),
            ("min_amount", want.min),
            ("max_amount", want.max),
        ] {
            ensure!(values[name].as_f64() == Some(want), "{name}: {}", ctx());
        }
        let avg = values["avg_amount"].as_f64().context("avg")?;
        let want_avg = want.revenue / want.orders as f64;
        ensure!(
            (avg - want_avg).abs() <= 1e-9 * want_avg.abs(),
            "avg: {}",
            ctx()
        );
    }
    Ok(())
}
