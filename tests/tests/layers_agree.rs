//! The two layers against one independent oracle.
//!
//! The same generated events go (a) through the speed layer's window state and (b) into an
//! archive recomputed by the batch layer with DataFusion. Both answers are compared with values
//! computed here directly from the events: exact aggregates must match exactly (float sums up to
//! summation order), and the speed layer's sketches must stay within their error bounds.

// Test fixtures fail loudly on malformed setup.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use object_store::ObjectStore;
use object_store::memory::InMemory;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tandem_batch_layer::ViewCatalog;
use tandem_batch_layer::archive::import;
use tandem_batch_layer::recompute::{Recompute, Requested};
use tandem_shared::clock::SystemClock;
use tandem_shared::coverage::{Coverage, StartRange};
use tandem_shared::event::{EventBatchBuilder, EventDecoder};
use tandem_shared::row::{GroupValue, ViewRow};
use tandem_shared::schema::{EventSchema, FieldType};
use tandem_shared::testing;
use tandem_shared::time::{EventTime, Span};
use tandem_shared::value::AggregateValue;
use tandem_shared::view::ViewDefinition;
use tandem_shared::window::WindowConfig;
use tandem_speed_layer::program::ViewProgram;
use tandem_speed_layer::state::ViewState;
use tokio_util::sync::CancellationToken;

const MINUTE: i64 = 60_000;
const BASE: i64 = 1_795_255_200_000; // 2026-11-21T10:00:00Z
const PARTITIONS: i32 = 4;
const CITIES: [&str; 6] = ["Chennai", "Mumbai", "Berlin", "Lagos", "Tokyo", "Lima"];
const TYPES: [&str; 3] = ["order_placed", "payment_captured", "order_cancelled"];

#[derive(Debug, Clone)]
struct Event {
    partition: i32,
    ts: i64,
    city: &'static str,
    user: String,
    amount: Option<f64>,
    qty: i64,
    coupon: Option<String>,
    event_type: &'static str,
}

impl Event {
    fn json(&self) -> String {
        serde_json::json!({
            "ts": self.ts, "city": self.city, "user_id": self.user, "amount": self.amount,
            "qty": self.qty, "coupon": self.coupon, "event_type": self.event_type,
        })
        .to_string()
    }
}

fn events(n: usize) -> Vec<Event> {
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
        })
        .collect()
}

fn schema() -> Arc<EventSchema> {
    testing::schema(&[
        ("city", FieldType::String),
        ("user_id", FieldType::String),
        ("amount", FieldType::Float64),
        ("qty", FieldType::Int64),
        ("coupon", FieldType::String),
        ("event_type", FieldType::String),
    ])
}

fn view(
    name: &str,
    window: WindowConfig,
    group_by: &[&str],
    filter: Option<&str>,
    aggs: &[&str],
) -> ViewDefinition {
    let mut config = testing::view_config(name, window, group_by, filter, aggs);
    config.allowed_lateness = Some("5s".into());
    testing::define(&config, &schema())
}

fn tumbling(size: &str) -> WindowConfig {
    testing::tumbling(size)
}

/// Recompute over `store`'s archive of topic `orders`, publishing to `catalog`.
fn recompute(
    store: &Arc<dyn ObjectStore>,
    schema: &Arc<EventSchema>,
    catalog: &Arc<ViewCatalog>,
) -> Recompute {
    Recompute::new(
        Arc::clone(store),
        Arc::clone(schema),
        "orders",
        Span::from_millis(30_000),
        Arc::clone(catalog),
        Arc::new(SystemClock),
    )
}

/// One exact expected value, as the oracle computes it.
#[derive(Debug, Clone, PartialEq)]
enum Want {
    Exact(AggregateValue),
    /// A float sum or average: equal up to summation order.
    Close(f64),
    /// A distinct count (speed layer: HyperLogLog estimate).
    Distinct(i64),
    /// A percentile: q and the sorted values (speed layer: KLL estimate).
    Percentile(f64, Vec<f64>),
}

/// Expected windows: (start, group) → (end, values).
type Oracle = BTreeMap<(i64, Vec<GroupValue>), (i64, Vec<Want>)>;

/// Computes one aggregate of a window's events.
type AggregateOracle<'a> = &'a dyn Fn(&[&Event]) -> Want;

/// Continuous percentile with linear interpolation (what `percentile_cont` defines).
fn percentile_cont(sorted: &[f64], q: f64) -> f64 {
    let rank = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
}

/// Computes a view's windows from the events, by hand.
fn oracle(
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
fn session_oracle(
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

fn count(es: &[&Event]) -> Want {
    Want::Exact(AggregateValue::Int(es.len() as i64))
}
fn sum_amount(es: &[&Event]) -> Want {
    let v: Vec<f64> = es.iter().filter_map(|e| e.amount).collect();
    if v.is_empty() {
        Want::Exact(AggregateValue::Null)
    } else {
        Want::Close(v.iter().sum())
    }
}
fn avg_amount(es: &[&Event]) -> Want {
    let v: Vec<f64> = es.iter().filter_map(|e| e.amount).collect();
    if v.is_empty() {
        Want::Exact(AggregateValue::Null)
    } else {
        Want::Close(v.iter().sum::<f64>() / v.len() as f64)
    }
}
fn min_amount(es: &[&Event]) -> Want {
    Want::Exact(
        es.iter()
            .filter_map(|e| e.amount)
            .reduce(f64::min)
            .map_or(AggregateValue::Null, AggregateValue::Float),
    )
}
fn max_amount(es: &[&Event]) -> Want {
    Want::Exact(
        es.iter()
            .filter_map(|e| e.amount)
            .reduce(f64::max)
            .map_or(AggregateValue::Null, AggregateValue::Float),
    )
}
fn sum_qty(es: &[&Event]) -> Want {
    Want::Exact(AggregateValue::Int(es.iter().map(|e| e.qty).sum()))
}
fn max_qty(es: &[&Event]) -> Want {
    Want::Exact(
        es.iter()
            .map(|e| e.qty)
            .max()
            .map_or(AggregateValue::Null, AggregateValue::Int),
    )
}
fn count_coupon(es: &[&Event]) -> Want {
    Want::Exact(AggregateValue::Int(
        es.iter().filter(|e| e.coupon.is_some()).count() as i64,
    ))
}
fn distinct_users(es: &[&Event]) -> Want {
    Want::Distinct(
        es.iter()
            .map(|e| e.user.as_str())
            .collect::<HashSet<_>>()
            .len() as i64,
    )
}
fn p90_amount(es: &[&Event]) -> Want {
    let mut v: Vec<f64> = es.iter().filter_map(|e| e.amount).collect();
    v.sort_by(f64::total_cmp);
    Want::Percentile(0.9, v)
}

/// Checks one answered value against the oracle. `exact` says which layer answered.
fn check(want: &Want, got: &AggregateValue, exact: bool) -> Result<(), String> {
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

fn compare(
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

struct Case {
    view: ViewDefinition,
    oracle: Oracle,
}

fn cases(events: &[Event]) -> Vec<Case> {
    let city = |e: &Event| vec![GroupValue::Str(e.city.into())];
    let kind = |e: &Event| vec![GroupValue::Str(e.event_type.into())];
    vec![
        Case {
            view: view(
                "orders_by_city",
                tumbling("1m"),
                &["city"],
                Some("event_type = 'order_placed'"),
                &[
                    "count(*) AS orders",
                    "sum(amount) AS revenue",
                    "min(amount) AS lo",
                    "max(amount) AS hi",
                    "avg(amount) AS mean",
                    "sum(qty) AS items",
                    "count(coupon) AS coupons",
                    "count(DISTINCT user_id) AS buyers",
                    "percentile(amount, 0.9) AS p90",
                ],
            ),
            oracle: oracle(
                events,
                MINUTE,
                MINUTE,
                city,
                |e| e.event_type == "order_placed",
                &[
                    &count,
                    &sum_amount,
                    &min_amount,
                    &max_amount,
                    &avg_amount,
                    &sum_qty,
                    &count_coupon,
                    &distinct_users,
                    &p90_amount,
                ],
            ),
        },
        Case {
            view: view(
                "types_hopping",
                testing::hopping("5m", "1m"),
                &["event_type"],
                None,
                &[
                    "count(*) AS events",
                    "sum(amount) AS amount",
                    "count(DISTINCT user_id) AS users",
                ],
            ),
            oracle: oracle(
                events,
                5 * MINUTE,
                MINUTE,
                kind,
                |_| true,
                &[&count, &sum_amount, &distinct_users],
            ),
        },
        Case {
            view: view(
                "big_spender_sessions",
                testing::sessions("5m"),
                &["city"],
                Some("amount > 495"),
                &[
                    "count(*) AS n",
                    "sum(amount) AS spent",
                    "max(qty) AS most",
                    "count(DISTINCT user_id) AS users",
                ],
            ),
            oracle: session_oracle(
                events,
                5 * MINUTE,
                city,
                |e| e.amount.is_some_and(|a| a > 495.0),
                &[&count, &sum_amount, &max_qty, &distinct_users],
            ),
        },
        Case {
            view: view(
                "big_orders",
                tumbling("10m"),
                &[],
                Some("amount > 100 AND city <> 'Lagos'"),
                &["count(*) AS n", "avg(amount) AS mean", "max(qty) AS most"],
            ),
            oracle: oracle(
                events,
                10 * MINUTE,
                10 * MINUTE,
                |_| vec![],
                |e| e.amount.is_some_and(|a| a > 100.0) && e.city != "Lagos",
                &[&count, &avg_amount, &max_qty],
            ),
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speed_and_batch_layers_agree_with_an_independent_oracle() {
    let events = events(60_000);
    let schema = schema();
    let decoder = EventDecoder::new(Arc::clone(&schema));

    // Per-partition batches with Kafka offsets, as both consumers would build them.
    let mut offsets = [0i64; PARTITIONS as usize];
    let mut builders: Vec<EventBatchBuilder> = (0..PARTITIONS)
        .map(|_| EventBatchBuilder::new(&decoder, 1024))
        .collect();
    for e in &events {
        let json = e.json();
        let decoded = decoder.decode(json.as_bytes()).unwrap();
        let p = e.partition as usize;
        builders[p].append(&decoded, e.partition, offsets[p]);
        offsets[p] += 1;
    }
    let batches: Vec<(i32, _)> = builders
        .iter_mut()
        .enumerate()
        .map(|(p, b)| (p as i32, b.finish()))
        .collect();

    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    import::import(&store, "orders", PARTITIONS, &batches)
        .await
        .unwrap();

    let cases = cases(&events);
    let catalog = Arc::new(ViewCatalog::new(
        Arc::clone(&store),
        cases.iter().map(|c| c.view.clone()),
    ));
    let recompute = recompute(&store, &schema, &catalog);

    for case in &cases {
        let name = &case.view.name;
        // Speed layer: every event, in small batches.
        let mut state =
            ViewState::new(Arc::new(ViewProgram::compile(&case.view, &schema).unwrap()));
        for (_, batch) in &batches {
            for offset in (0..batch.num_rows()).step_by(997) {
                let len = 997.min(batch.num_rows() - offset);
                let applied = state
                    .apply(&batch.slice(offset, len), None, &Coverage::new())
                    .unwrap();
                assert!(applied.late_rows.is_empty());
            }
        }
        let speed_rows = state.rows(StartRange::new(EventTime::MIN, EventTime::MAX));
        let n = compare(name, "speed", &speed_rows, &case.oracle, None);
        assert!(n >= 10, "{name}: only {n} windows compared");

        // Batch layer: a real recompute over the archive.
        let outcome = recompute
            .run_view(
                &case.view,
                Requested::default(),
                &format!("job-{name}"),
                &CancellationToken::new(),
                &|_| {},
            )
            .await
            .unwrap();
        let covered = outcome.covered.expect("some windows are ready");
        let published = catalog.get(name).unwrap();
        assert_eq!(published.coverage.ranges(), &[covered]);
        assert_eq!(
            outcome.rows_read,
            events.len() as u64,
            "{name}: every archived row was in scope"
        );
        let n = compare(name, "batch", &published.rows, &case.oracle, Some(covered));
        assert!(n >= 10, "{name}: only {n} windows compared");
        // The windows near the end of the stream are not complete yet and stay unpublished.
        let last_start = case.oracle.keys().map(|(s, _)| *s).max().unwrap();
        assert!(
            !covered.contains(EventTime(last_start)),
            "{name}: the last window must not be ready"
        );
        // Recomputing again publishes the same answer (a newer segment replaces the older one).
        recompute
            .run_view(
                &case.view,
                Requested::default(),
                &format!("again-{name}"),
                &CancellationToken::new(),
                &|_| {},
            )
            .await
            .unwrap();
        let again = catalog.get(name).unwrap();
        // (Float sums may differ in the last bits: DataFusion adds in parallel, in any order.)
        compare(name, "batch", &again.rows, &case.oracle, Some(covered));
        assert_eq!(
            again.manifest.segments.len(),
            1,
            "{name}: the shadowed segment is dropped"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_counts_a_reproduced_event_once_when_the_schema_has_an_id() {
    let schema = testing::schema_with_id(
        &[
            ("order_id", FieldType::String),
            ("amount", FieldType::Float64),
        ],
        Some("order_id"),
    );
    let decoder = EventDecoder::new(Arc::clone(&schema));
    // 300 orders one second apart; every 7th is produced twice (the copy on the other
    // partition), and 20 events carry no id at all.
    let mut produced: Vec<(i32, i64, Option<String>)> = Vec::new();
    for i in 0..300i64 {
        let ts = BASE + i * 1_000;
        produced.push(((i % 2) as i32, ts, Some(format!("o{i}"))));
        if i % 7 == 0 {
            produced.push((((i + 1) % 2) as i32, ts, Some(format!("o{i}"))));
        }
    }
    for i in 0..20i64 {
        produced.push((0, BASE + i * 3_000, None));
    }
    let mut builders: Vec<EventBatchBuilder> = (0..2)
        .map(|_| EventBatchBuilder::new(&decoder, 512))
        .collect();
    let mut offsets = [0i64; 2];
    for (p, ts, id) in &produced {
        let json = serde_json::json!({"ts": ts, "order_id": id, "amount": 1.0}).to_string();
        let p = *p as usize;
        builders[p].append(
            &decoder.decode(json.as_bytes()).unwrap(),
            p as i32,
            offsets[p],
        );
        offsets[p] += 1;
    }
    let batches: Vec<(i32, _)> = builders
        .iter_mut()
        .enumerate()
        .map(|(p, b)| (p as i32, b.finish()))
        .collect();
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    import::import(&store, "orders", 2, &batches).await.unwrap();
    let v = testing::view(
        &schema,
        "totals",
        tumbling("1m"),
        &[],
        None,
        &["count(*) AS n", "sum(amount) AS total"],
    );
    let catalog = Arc::new(ViewCatalog::new(Arc::clone(&store), [v.clone()]));
    let recompute = recompute(&store, &schema, &catalog);
    let outcome = recompute
        .run_view(
            &v,
            Requested::default(),
            "dedup",
            &CancellationToken::new(),
            &|_| {},
        )
        .await
        .unwrap();
    let covered = outcome.covered.expect("the first minutes are complete");
    // Oracle: per published minute, the distinct ids plus the id-less events.
    let mut want: BTreeMap<i64, HashSet<String>> = BTreeMap::new();
    let mut anonymous: BTreeMap<i64, i64> = BTreeMap::new();
    for (_, ts, id) in &produced {
        let minute = ts - ts.rem_euclid(MINUTE);
        if !covered.contains(EventTime(minute)) {
            continue;
        }
        match id {
            Some(id) => {
                want.entry(minute).or_default().insert(id.clone());
            }
            None => *anonymous.entry(minute).or_default() += 1,
        }
    }
    let published = catalog.get("totals").unwrap();
    assert_eq!(published.rows.len(), want.len());
    for row in &published.rows {
        let minute = row.window.start.millis();
        let expected = want[&minute].len() as i64 + anonymous.get(&minute).copied().unwrap_or(0);
        assert_eq!(
            row.values[0],
            AggregateValue::Int(expected),
            "minute {minute}"
        );
    }
    assert!(want.len() >= 3, "several minutes were published");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recomputing_one_hour_reads_only_that_hours_files() {
    // Three days of events, one every 30 seconds, over 4 partitions.
    let schema = schema();
    let decoder = EventDecoder::new(Arc::clone(&schema));
    let mut builders: Vec<EventBatchBuilder> = (0..4)
        .map(|_| EventBatchBuilder::new(&decoder, 4096))
        .collect();
    let mut offsets = [0i64; 4];
    let n = 3 * 24 * 120;
    for i in 0..n {
        let p = (i % 4) as usize;
        let json = format!(
            r#"{{"ts":{},"city":"Lima","amount":1.0,"qty":1,"event_type":"order_placed"}}"#,
            BASE + i * 30_000
        );
        builders[p].append(
            &decoder.decode(json.as_bytes()).unwrap(),
            p as i32,
            offsets[p],
        );
        offsets[p] += 1;
    }
    let batches: Vec<(i32, _)> = builders
        .iter_mut()
        .enumerate()
        .map(|(p, b)| (p as i32, b.finish()))
        .collect();
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    import::import(&store, "orders", 4, &batches).await.unwrap();
    let v = view("per_minute", tumbling("1m"), &[], None, &["count(*) AS n"]);
    let catalog = Arc::new(ViewCatalog::new(Arc::clone(&store), [v.clone()]));
    let recompute = recompute(&store, &schema, &catalog);
    let hour = BASE + 30 * 3_600_000;
    let outcome = recompute
        .run_view(
            &v,
            Requested {
                from: Some(EventTime(hour)),
                to: Some(EventTime(hour + 3_600_000)),
            },
            "one-hour",
            &CancellationToken::new(),
            &|_| {},
        )
        .await
        .unwrap();
    assert_eq!(
        outcome.covered,
        Some(StartRange::new(
            EventTime(hour),
            EventTime(hour + 3_600_000)
        ))
    );
    assert_eq!(outcome.windows_published, 60);
    // One file per partition for that hour, and nothing else.
    assert_eq!(outcome.files_scanned, 4, "{outcome:?}");
    assert_eq!(outcome.rows_read, 120);
    let published = catalog.get("per_minute").unwrap();
    assert!(
        published
            .rows
            .iter()
            .all(|r| r.values[0] == AggregateValue::Int(2))
    );
    assert_eq!(published.rows.len(), 60);
}
