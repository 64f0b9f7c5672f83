//! The independent oracle: generated events and every view's windows computed from them by
//! hand, and the comparison of an answer with it.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tandem_shared::coverage::StartRange;
use tandem_shared::decimal::Decimal;
use tandem_shared::row::{GroupValue, ViewRow};
use tandem_shared::time::EventTime;
use tandem_shared::value::AggregateValue;

use crate::{BASE, CITIES, MINUTE, PARTITIONS, TYPES};

/// One generated order event and the partition it is produced to.
#[derive(Debug, Clone)]
pub(crate) struct Event {
    pub(crate) partition: i32,
    pub(crate) ts: i64,
    pub(crate) city: &'static str,
    pub(crate) user: String,
    pub(crate) amount: Option<f64>,
    pub(crate) qty: i64,
    pub(crate) coupon: Option<String>,
    pub(crate) event_type: &'static str,
    /// Exact money, in cents: a `decimal(12, 2)` field.
    pub(crate) price: Option<i64>,
}

impl Event {
    pub(crate) fn json(&self) -> String {
        // The price as producers write money: a JSON string for some, a number for others
        // (both exact to the cent), spliced in as text so no float is involved.
        let price = match (self.price_text(), self.ts % 2 == 0) {
            (None, _) => "null".to_owned(),
            (Some(text), true) => format!("\"{text}\""),
            (Some(text), false) => text,
        };
        let json = serde_json::json!({
            "ts": self.ts, "city": self.city, "user_id": self.user, "amount": self.amount,
            "qty": self.qty, "coupon": self.coupon, "event_type": self.event_type,
        })
        .to_string();
        format!("{},\"price\":{price}}}", &json[..json.len() - 1])
    }

    /// The price as decimal text (`"123.45"`).
    pub(crate) fn price_text(&self) -> Option<String> {
        self.price.map(|cents| {
            let sign = if cents < 0 { "-" } else { "" };
            format!("{sign}{}.{:02}", cents.abs() / 100, cents.abs() % 100)
        })
    }
}

pub(crate) fn events(n: usize) -> Vec<Event> {
    let mut rng = StdRng::seed_from_u64(7);
    (0..n)
        .map(|i| Event {
            partition: rng.random_range(0..PARTITIONS),
            // Two and a half hours, so the archive spans several hour directories.
            ts: BASE + (i as i64 * 150 * MINUTE) / n as i64 + rng.random_range(0..2_000),
            city: CITIES[rng.random_range(0..CITIES.len())],
            user: format!("u{}", rng.random_range(0..3_000)),
            amount: (!rng.random_ratio(1, 20)).then(|| rng.random_range(1.0..500.0)),
            qty: rng.random_range(1..10),
            coupon: rng
                .random_bool(0.5)
                .then(|| format!("c{}", rng.random_range(0..50))),
            event_type: TYPES[rng.random_range(0..TYPES.len())],
            // Up to a million, refunds among them; a float would lose cents in these sums.
            price: (!rng.random_ratio(1, 25)).then(|| rng.random_range(-5_000..100_000_000)),
        })
        .collect()
}

/// One exact expected value, as the oracle computes it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Want {
    Exact(AggregateValue),
    /// A float sum or average: equal up to summation order.
    Close(f64),
    /// A distinct count (speed layer: HyperLogLog estimate).
    Distinct(i64),
    /// A percentile: q and the sorted values (speed layer: KLL estimate).
    Percentile(f64, Vec<f64>),
}

/// Expected windows: (start, group) → (end, values).
pub(crate) type Oracle = BTreeMap<(i64, Vec<GroupValue>), (i64, Vec<Want>)>;

/// Computes one aggregate of a window's events.
pub(crate) type AggregateOracle<'a> = &'a dyn Fn(&[&Event]) -> Want;

/// Continuous percentile with linear interpolation (what `percentile_cont` defines).
pub(crate) fn percentile_cont(sorted: &[f64], q: f64) -> f64 {
    let rank = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
}

/// Computes a view's windows from the events, by hand.
pub(crate) fn oracle(
    events: &[Event],
    size: i64,
    slide: i64,
    group: impl Fn(&Event) -> Vec<GroupValue>,
    keep: impl Fn(&Event) -> bool,
    aggs: &[AggregateOracle<'_>],
) -> Oracle {
    let mut windows: BTreeMap<(i64, Vec<GroupValue>), Vec<&Event>> = BTreeMap::new();
    for e in events.iter().filter(|e| keep(e)) {
        let last = e.ts - e.ts.rem_euclid(slide);
        let mut start = last;
        while start > e.ts - size {
            windows.entry((start, group(e))).or_default().push(e);
            start -= slide;
        }
    }
    windows
        .into_iter()
        .map(|(k, es)| {
            let end = k.0 + size;
            (k, (end, aggs.iter().map(|f| f(&es)).collect()))
        })
        .collect()
}

/// Session windows computed by hand: per group, events sorted by time; a gap of `gap` or more
/// starts a new session; a session's window is [first, last + gap).
pub(crate) fn session_oracle(
    events: &[Event],
    gap: i64,
    group: impl Fn(&Event) -> Vec<GroupValue>,
    keep: impl Fn(&Event) -> bool,
    aggs: &[AggregateOracle<'_>],
) -> Oracle {
    let mut by_group: BTreeMap<Vec<GroupValue>, Vec<&Event>> = BTreeMap::new();
    for e in events.iter().filter(|e| keep(e)) {
        by_group.entry(group(e)).or_default().push(e);
    }
    let mut out = Oracle::new();
    for (key, mut es) in by_group {
        es.sort_by_key(|e| e.ts);
        let mut session: Vec<&Event> = Vec::new();
        let mut flush = |session: &mut Vec<&Event>| {
            if let (Some(first), Some(last)) = (session.first(), session.last()) {
                let values = aggs.iter().map(|f| f(session)).collect();
                out.insert((first.ts, key.clone()), (last.ts + gap, values));
            }
            session.clear();
        };
        for e in es {
            if session.last().is_some_and(|last| e.ts - last.ts >= gap) {
                flush(&mut session);
            }
            session.push(e);
        }
        flush(&mut session);
    }
    out
}

pub(crate) fn count(es: &[&Event]) -> Want {
    Want::Exact(AggregateValue::Int(es.len() as i64))
}
pub(crate) fn sum_amount(es: &[&Event]) -> Want {
    let v: Vec<f64> = es.iter().filter_map(|e| e.amount).collect();
    if v.is_empty() {
        Want::Exact(AggregateValue::Null)
    } else {
        Want::Close(v.iter().sum())
    }
}
pub(crate) fn avg_amount(es: &[&Event]) -> Want {
    let v: Vec<f64> = es.iter().filter_map(|e| e.amount).collect();
    if v.is_empty() {
        Want::Exact(AggregateValue::Null)
    } else {
        Want::Close(v.iter().sum::<f64>() / v.len() as f64)
    }
}
fn prices<'a>(es: &'a [&Event]) -> impl Iterator<Item = i128> + 'a {
    es.iter().filter_map(|e| e.price.map(i128::from))
}
fn cents(units: i128) -> Want {
    Want::Exact(AggregateValue::Decimal(Decimal::new(units, 2)))
}
pub(crate) fn sum_price(es: &[&Event]) -> Want {
    prices(es)
        .reduce(|a, b| a + b)
        .map_or(Want::Exact(AggregateValue::Null), cents)
}
pub(crate) fn min_price(es: &[&Event]) -> Want {
    prices(es)
        .min()
        .map_or(Want::Exact(AggregateValue::Null), cents)
}
pub(crate) fn max_price(es: &[&Event]) -> Want {
    prices(es)
        .max()
        .map_or(Want::Exact(AggregateValue::Null), cents)
}
/// SQL's `avg` of a `decimal(12, 2)`: a decimal of scale 6, the exact mean truncated toward
/// zero.
pub(crate) fn avg_price(es: &[&Event]) -> Want {
    let (sum, n) = prices(es).fold((0i128, 0i128), |(s, n), p| (s + p, n + 1));
    if n == 0 {
        return Want::Exact(AggregateValue::Null);
    }
    Want::Exact(AggregateValue::Decimal(Decimal::new(sum * 10_000 / n, 6)))
}
pub(crate) fn count_price(es: &[&Event]) -> Want {
    Want::Exact(AggregateValue::Int(prices(es).count() as i64))
}
pub(crate) fn min_amount(es: &[&Event]) -> Want {
    Want::Exact(
        es.iter()
            .filter_map(|e| e.amount)
            .reduce(f64::min)
            .map_or(AggregateValue::Null, AggregateValue::Float),
    )
}
pub(crate) fn max_amount(es: &[&Event]) -> Want {
    Want::Exact(
        es.iter()
            .filter_map(|e| e.amount)
            .reduce(f64::max)
            .map_or(AggregateValue::Null, AggregateValue::Float),
    )
}
pub(crate) fn sum_qty(es: &[&Event]) -> Want {
    Want::Exact(AggregateValue::Int(es.iter().map(|e| e.qty).sum()))
}
pub(crate) fn max_qty(es: &[&Event]) -> Want {
    Want::Exact(
        es.iter()
            .map(|e| e.qty)
            .max()
            .map_or(AggregateValue::Null, AggregateValue::Int),
    )
}
pub(crate) fn count_coupon(es: &[&Event]) -> Want {
    Want::Exact(AggregateValue::Int(
        es.iter().filter(|e| e.coupon.is_some()).count() as i64,
    ))
}
pub(crate) fn distinct_users(es: &[&Event]) -> Want {
    Want::Distinct(
        es.iter()
            .map(|e| e.user.as_str())
            .collect::<HashSet<_>>()
            .len() as i64,
    )
}
pub(crate) fn p90_amount(es: &[&Event]) -> Want {
    let mut v: Vec<f64> = es.iter().filter_map(|e| e.amount).collect();
    v.sort_by(f64::total_cmp);
    Want::Percentile(0.9, v)
}

/// Checks one answered value against the oracle. `exact` says which layer answered.
pub(crate) fn check(want: &Want, got: &AggregateValue, exact: bool) -> Result<(), String> {
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1.0);
    match (want, got) {
        (Want::Exact(w), g) if w == g => Ok(()),
        (Want::Close(w), AggregateValue::Float(g)) if close(*g, *w) => Ok(()),
        (Want::Distinct(w), AggregateValue::Int(g)) if exact && g == w => Ok(()),
        // HyperLogLog with 2^14 registers: relative standard error 0.81%; allow 5 sigma.
        (Want::Distinct(w), AggregateValue::Int(g))
            if !exact && (g - w).abs() as f64 <= 0.0405 * *w as f64 + 1.0 =>
        {
            Ok(())
        }
        // DataFusion's percentile_cont quantizes the interpolation weight to 1e-6, so the exact
        // answer may differ from the textbook one by up to 1e-6 of the gap between neighbours.
        (Want::Percentile(q, v), AggregateValue::Float(g))
            if exact
                && (g - percentile_cont(v, *q)).abs()
                    <= 1e-6 * (v[v.len() - 1] - v[0]).abs() + 1e-9 =>
        {
            Ok(())
        }
        (Want::Percentile(q, v), AggregateValue::Float(g)) if !exact => {
            // KLL guarantees rank error: the estimate's rank must be within 2% of q.
            let lo = v.partition_point(|x| x < g) as f64 / v.len() as f64;
            let hi = v.partition_point(|x| x <= g) as f64 / v.len() as f64;
            if lo - 0.02 <= *q && *q <= hi + 0.02 {
                Ok(())
            } else {
                Err(format!("rank [{lo}, {hi}] of {g} is not within 2% of {q}"))
            }
        }
        (Want::Percentile(_, v), AggregateValue::Null) if v.is_empty() => Ok(()),
        _ => Err(format!("want {want:?}, got {got:?}")),
    }
}

pub(crate) fn compare(
    name: &str,
    layer: &str,
    rows: &[ViewRow],
    oracle: &Oracle,
    windows: Option<StartRange>,
) -> usize {
    let exact = layer == "batch";
    let want: BTreeMap<_, _> = oracle
        .iter()
        .filter(|((start, _), _)| windows.is_none_or(|w| w.contains(EventTime(*start))))
        .collect();
    let got: BTreeMap<_, _> = rows
        .iter()
        .map(|r| {
            (
                (r.window.start.millis(), r.group.clone()),
                (r.window.end.millis(), &r.values),
            )
        })
        .collect();
    assert_eq!(
        got.keys().collect::<BTreeSet<_>>(),
        want.keys().copied().collect::<BTreeSet<_>>(),
        "{name}/{layer}: windows and groups differ"
    );
    for (key, (end, values)) in &want {
        let (got_end, got_values) = got[*key];
        assert_eq!(
            got_end, *end,
            "{name}/{layer}: window {} group {:?} ends differently",
            key.0, key.1
        );
        for (i, (w, g)) in values.iter().zip(got_values.iter()).enumerate() {
            if let Err(e) = check(w, g, exact) {
                panic!(
                    "{name}/{layer}: window {} group {:?} value {i}: {e}",
                    key.0, key.1
                );
            }
        }
    }
    want.len()
}
