//! The two layers against one independent oracle.
//!
//! The same generated events go (a) through the speed layer's window state and (b) into an
//! archive recomputed by the batch layer with DataFusion. Both answers are compared with values
//! computed here directly from the events: exact aggregates must match exactly (float sums up to
//! summation order), and the speed layer's sketches must stay within their error bounds.

// Test fixtures fail loudly on malformed setup.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use arrow_array::RecordBatch;
use object_store::ObjectStore;
use object_store::memory::InMemory;
use tandem_batch_layer::ViewCatalog;
use tandem_batch_layer::archive::import::{self, PartitionBatches};
use tandem_batch_layer::recompute::{Recompute, Requested};
use tandem_shared::clock::SystemClock;
use tandem_shared::coverage::{Coverage, StartRange};
use tandem_shared::event::{EventDecoder, PayloadFormat};
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
#[cfg(feature = "ballista")]
mod ballista;
mod encodings;
mod oracle;
mod rollups;
mod sessions;

use oracle::*;

fn schema() -> Arc<EventSchema> {
    testing::schema(&[
        ("city", FieldType::String),
        ("user_id", FieldType::String),
        ("amount", FieldType::Float64),
        ("qty", FieldType::Int64),
        ("coupon", FieldType::String),
        ("event_type", FieldType::String),
        (
            "price",
            FieldType::Decimal {
                precision: 12,
                scale: 2,
            },
        ),
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

/// One batch per partition of `events` (partition, JSON), with Kafka offsets, as both consumers
/// would build them.
fn partitioned(
    decoder: &EventDecoder,
    partitions: i32,
    events: impl IntoIterator<Item = (i32, String)>,
) -> Vec<(i32, RecordBatch)> {
    let mut batches = PartitionBatches::new(decoder, partitions, 1024);
    for (partition, json) in events {
        assert!(batches.append(&decoder.decode(json.as_bytes()).unwrap(), partition));
    }
    batches.finish()
}

/// `events` as per-partition batches with Kafka offsets (as both consumers would build them),
/// and an in-memory store holding them as the archive of topic `orders`.
async fn archived(
    schema: &Arc<EventSchema>,
    events: &[Event],
) -> (Vec<(i32, RecordBatch)>, Arc<dyn ObjectStore>) {
    archived_as(schema, events, PayloadFormat::Json).await
}

/// [`archived`], each event written in `format` and read back by that format's decoder.
async fn archived_as(
    schema: &Arc<EventSchema>,
    events: &[Event],
    format: PayloadFormat,
) -> (Vec<(i32, RecordBatch)>, Arc<dyn ObjectStore>) {
    let decoder = encodings::decoder(schema, format);
    let mut batches = PartitionBatches::new(&decoder, PARTITIONS, 1024);
    for e in events {
        let payload = encodings::encode(e, format);
        let event = decoder
            .decode(&payload)
            .unwrap_or_else(|err| panic!("{format}: {err}"));
        assert!(batches.append(&event, e.partition));
    }
    let batches = batches.finish();
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    import::import(&store, "orders", PARTITIONS, &batches)
        .await
        .unwrap();
    (batches, store)
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
                    "sum(price) AS paid",
                ],
            ),
            oracle: session_oracle(
                events,
                5 * MINUTE,
                city,
                |e| e.amount.is_some_and(|a| a > 495.0),
                &[&count, &sum_amount, &max_qty, &distinct_users, &sum_price],
            ),
        },
        Case {
            view: view(
                "exact_revenue",
                testing::hopping("10m", "5m"),
                &["city"],
                Some("price > 0"),
                &[
                    "sum(price) AS revenue",
                    "min(price) AS lo",
                    "max(price) AS hi",
                    "avg(price) AS mean",
                    "count(price) AS paid",
                ],
            ),
            oracle: oracle(
                events,
                10 * MINUTE,
                5 * MINUTE,
                city,
                |e| e.price.is_some_and(|p| p > 0),
                &[&sum_price, &min_price, &max_price, &avg_price, &count_price],
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
    layers_agree(60_000, PayloadFormat::Json).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_layers_agree_with_the_oracle_on_avro_payloads() {
    layers_agree(20_000, PayloadFormat::Avro).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_layers_agree_with_the_oracle_on_protobuf_payloads() {
    layers_agree(20_000, PayloadFormat::Protobuf).await;
}

/// `n` events written in `format`: the speed layer and a recompute over their archive agree
/// with the oracle, which computes from the events themselves, never from the decoded rows.
async fn layers_agree(n: usize, format: PayloadFormat) {
    let events = events(n);
    let schema = schema();
    let (batches, store) = archived_as(&schema, &events, format).await;

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
        let rows = catalog.rows(&published, ALL).await.unwrap();
        // The oracle's windows the publication covers (per group: a session view holds back
        // the groups whose session was still open).
        let want: Oracle = case
            .oracle
            .iter()
            .filter(|((start, g), _)| published.coverage.covers(g, EventTime(*start)))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let n = compare(name, "batch", &rows, &want, Some(covered));
        assert!(n >= 10, "{name}: only {n} windows compared");
        // The windows near the end of the stream are not complete yet and stay unpublished.
        let (last_start, last_group) = case.oracle.keys().max_by_key(|(s, _)| *s).unwrap();
        assert!(
            !published
                .coverage
                .covers(last_group, EventTime(*last_start)),
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
        let rows = catalog.rows(&again, ALL).await.unwrap();
        compare(name, "batch", &rows, &want, Some(covered));
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
    let batches = partitioned(
        &decoder,
        2,
        produced.iter().map(|(p, ts, id)| {
            let json = serde_json::json!({"ts": ts, "order_id": id, "amount": 1.0});
            (*p, json.to_string())
        }),
    );
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
    let rows = catalog.rows(&published, ALL).await.unwrap();
    assert_eq!(rows.len(), want.len());
    for row in &rows {
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
    let n = 3 * 24 * 120;
    let batches = partitioned(
        &decoder,
        4,
        (0..n).map(|i| {
            let json = format!(
                r#"{{"ts":{},"city":"Lima","amount":1.0,"qty":1,"event_type":"order_placed"}}"#,
                BASE + i * 30_000
            );
            ((i % 4) as i32, json)
        }),
    );
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
    let rows = catalog.rows(&published, ALL).await.unwrap();
    assert!(rows.iter().all(|r| r.values[0] == AggregateValue::Int(2)));
    assert_eq!(rows.len(), 60);
    // A range answers only its own windows: two of the 60 here.
    let two = StartRange::new(rows[10].window.start, rows[12].window.start);
    assert_eq!(catalog.rows(&published, two).await.unwrap().len(), 2);
}

/// Every window start.
const ALL: StartRange = StartRange {
    from: EventTime::MIN,
    to: EventTime::MAX,
};
