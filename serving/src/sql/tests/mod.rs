//! SQL over a real catalog and archive in an in-memory store: events are archived, the first
//! minutes published by a real recompute job, the rest answered by a stand-in speed layer.
//! Answers are compared with counts computed here from the generated events.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{Array, Float64Array, Int64Array, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use object_store::ObjectStore;
use object_store::memory::InMemory;
use tandem_batch_layer::archive::import::{self, PartitionBatches};
use tandem_batch_layer::recompute::Requested;
use tandem_batch_layer::{Recompute, ViewCatalog};
use tandem_shared::clock::SystemClock;
use tandem_shared::coverage::StartRange;
use tandem_shared::event::EventDecoder;
use tandem_shared::row::{GroupValue, ViewRow};
use tandem_shared::testing;
use tandem_shared::time::{EventTime, Span};
use tandem_shared::value::AggregateValue;
use tandem_shared::window::Window;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::seam::FreshViews;

const M: i64 = 60_000;
const CITIES: [&str; 3] = ["Lima", "Oslo", "Pune"];
/// Minutes of events; the first `PUBLISHED` are published by a recompute job.
const MINUTES: i64 = 10;
const PUBLISHED: i64 = 5;

#[derive(Debug, Clone)]
struct Order {
    ts: i64,
    city: &'static str,
    placed: bool,
    amount: f64,
}

/// Rows a speed layer holds, set by the test.
#[derive(Default)]
struct StandIn(Mutex<Vec<ViewRow>>);

impl FreshViews for StandIn {
    fn fresh<'a>(
        &'a self,
        view: &'a str,
        range: StartRange,
    ) -> futures::future::BoxFuture<'a, Option<crate::seam::FreshRows<ViewRow>>> {
        let rows = (view == "orders_by_city").then(|| {
            let rows = self.0.lock().unwrap();
            crate::seam::FreshRows::complete(
                rows.iter()
                    .filter(|r| range.contains(r.window.start))
                    .cloned()
                    .collect(),
            )
        });
        Box::pin(std::future::ready(rows))
    }
}

struct Fixture {
    engine: SqlEngine,
    orders: Vec<Order>,
    base: i64,
}

/// (orders, revenue) by (minute start, city) of placed orders in minutes `[from, to)`.
fn oracle(orders: &[Order], base: i64, from: i64, to: i64) -> BTreeMap<(i64, String), (i64, f64)> {
    let mut out: BTreeMap<(i64, String), (i64, f64)> = BTreeMap::new();
    for o in orders.iter().filter(|o| o.placed) {
        let minute = (o.ts - base) / M;
        if (from..to).contains(&minute) {
            let e = out
                .entry((base + minute * M, o.city.to_owned()))
                .or_default();
            e.0 += 1;
            e.1 += o.amount;
        }
    }
    out
}

async fn fixture(limits: SqlLimits) -> Fixture {
    let schema = testing::orders_schema();
    let view = testing::view(
        &schema,
        "orders_by_city",
        testing::tumbling("1m"),
        &["city"],
        Some("event_type = 'order_placed'"),
        &["count(*) AS orders", "sum(amount) AS revenue"],
    );
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let now = chrono::Utc::now().timestamp_millis();
    let base = now - now.rem_euclid(M) - 60 * M;
    // Deterministic orders: 37 a minute, spread over cities, types and amounts.
    let orders: Vec<Order> = (0..MINUTES * 37)
        .map(|i| Order {
            ts: base + (i / 37) * M + (i * 7919) % M,
            city: CITIES[(i % 3) as usize],
            placed: i % 4 != 0,
            amount: ((i * 31) % 500) as f64 / 4.0,
        })
        .collect();
    let decoder = EventDecoder::new(Arc::clone(&schema));
    let mut batches = PartitionBatches::new(&decoder, 2, 64);
    for (i, o) in orders.iter().enumerate() {
        let json = serde_json::json!({
            "ts": o.ts, "city": o.city, "user_id": format!("u{}", i % 13), "amount": o.amount,
            "qty": 1, "event_type": if o.placed { "order_placed" } else { "payment_captured" },
        })
        .to_string();
        let event = decoder.decode(json.as_bytes()).unwrap();
        batches.append(&event, (i % 2) as i32);
    }
    import::import(&store, "orders", 2, &batches.finish())
        .await
        .unwrap();
    let catalog = Arc::new(ViewCatalog::new(Arc::clone(&store), vec![view.clone()]));
    let recompute = Recompute::new(
        Arc::clone(&store),
        Arc::clone(&schema),
        "orders",
        Span::from_millis(1000),
        Arc::clone(&catalog),
        Arc::new(SystemClock),
    );
    let outcome = recompute
        .run_view(
            &view,
            Requested {
                from: Some(EventTime(base)),
                to: Some(EventTime(base + PUBLISHED * M)),
            },
            "job",
            &CancellationToken::new(),
            &|_| {},
        )
        .await
        .unwrap();
    assert_eq!(outcome.windows_published, PUBLISHED as u64);
    // The speed layer holds every minute; the seam answers published ones from the batch layer.
    // Its rows are marked (revenue + 0.5) so that a row's source can be checked by its value.
    let speed = StandIn::default();
    *speed.0.lock().unwrap() = oracle(&orders, base, 0, MINUTES)
        .into_iter()
        .map(|((start, city), (n, revenue))| ViewRow {
            window: Window {
                start: EventTime(start),
                end: EventTime(start + M),
            },
            group: vec![GroupValue::Str(city)],
            values: vec![AggregateValue::Int(n), AggregateValue::Float(revenue + 0.5)],
        })
        .collect();
    let engine = SqlEngine::new(
        catalog,
        Some(Arc::new(speed)),
        store,
        "orders",
        schema,
        limits,
    )
    .await
    .unwrap();
    Fixture {
        engine,
        orders,
        base,
    }
}

fn strings(answer: &SqlAnswer, column: usize) -> Vec<String> {
    let mut out = Vec::new();
    for b in &answer.batches {
        let c = cast(b.column(column), &DataType::Utf8).unwrap();
        let c = c.as_any().downcast_ref::<StringArray>().unwrap();
        out.extend((0..c.len()).map(|i| c.value(i).to_owned()));
    }
    out
}

fn ints(answer: &SqlAnswer, column: usize) -> Vec<i64> {
    let mut out = Vec::new();
    for b in &answer.batches {
        let c = cast(b.column(column), &DataType::Int64).unwrap();
        let c = c.as_any().downcast_ref::<Int64Array>().unwrap();
        out.extend(c.values().iter().copied());
    }
    out
}

fn floats(answer: &SqlAnswer, column: usize) -> Vec<f64> {
    let mut out = Vec::new();
    for b in &answer.batches {
        let c = cast(b.column(column), &DataType::Float64).unwrap();
        let c = c.as_any().downcast_ref::<Float64Array>().unwrap();
        out.extend(c.values().iter().copied());
    }
    out
}

fn time(ms: i64) -> String {
    format!("'{}'", EventTime(ms).to_rfc3339())
}

#[tokio::test]
async fn a_view_table_answers_batch_where_published_and_speed_elsewhere() {
    let f = fixture(SqlLimits::default()).await;
    let answer = f
        .engine
        .query(
            "SELECT CAST(window_start AS BIGINT) AS start_ms, city, orders, revenue, source, complete \
             FROM orders_by_city ORDER BY window_start, city",
        )
        .await
        .unwrap();
    let expected = oracle(&f.orders, f.base, 0, MINUTES);
    assert_eq!(answer.rows(), expected.len());
    let starts = ints(&answer, 0);
    let cities = strings(&answer, 1);
    let counts = ints(&answer, 2);
    let revenue = floats(&answer, 3);
    let sources = strings(&answer, 4);
    for (i, ((start, city), (n, r))) in expected.iter().enumerate() {
        let published = *start < f.base + PUBLISHED * M;
        assert_eq!((starts[i], &cities[i], counts[i]), (*start, city, *n));
        // Batch rows are exact; the stand-in speed layer's are marked +0.5.
        let (source, value) = if published {
            ("batch", *r)
        } else {
            ("speed", r + 0.5)
        };
        assert_eq!(sources[i], source, "row {i}");
        assert!(
            (revenue[i] - value).abs() < 1e-9,
            "row {i}: {} vs {value}",
            revenue[i]
        );
    }
    assert!(strings(&answer, 5).iter().all(|c| c == "true"));

    // Filters on window_start and a dimension (pushed down) give the same rows as filtering
    // the whole answer.
    let sql = format!(
        "SELECT CAST(window_start AS BIGINT) AS start_ms, orders FROM orders_by_city \
         WHERE window_start >= {} AND window_start < {} AND city = 'Oslo' ORDER BY 1",
        time(f.base + 3 * M),
        time(f.base + 7 * M)
    );
    let answer = f.engine.query(&sql).await.unwrap();
    let expected: Vec<(i64, i64)> = oracle(&f.orders, f.base, 3, 7)
        .into_iter()
        .filter(|((_, c), _)| c == "Oslo")
        .map(|((s, _), (n, _))| (s, n))
        .collect();
    let got: Vec<(i64, i64)> = ints(&answer, 0).into_iter().zip(ints(&answer, 1)).collect();
    assert_eq!(got, expected);
}

#[tokio::test]
async fn the_events_table_is_the_archive() {
    let f = fixture(SqlLimits::default()).await;
    let answer = f.engine.query("SELECT count(*) FROM events").await.unwrap();
    assert_eq!(ints(&answer, 0), [f.orders.len() as i64]);
    // A time range and a group-by, against counts computed from the generated orders.
    let (from, to) = (f.base + 2 * M + 1234, f.base + 6 * M);
    let sql = format!(
        "SELECT city, count(*), sum(amount) FROM events \
         WHERE ts >= {} AND ts < {} AND event_type = 'order_placed' GROUP BY city ORDER BY city",
        time(from),
        time(to)
    );
    let answer = f.engine.query(&sql).await.unwrap();
    let mut expected: BTreeMap<&str, (i64, f64)> = BTreeMap::new();
    for o in f
        .orders
        .iter()
        .filter(|o| o.placed && o.ts >= from && o.ts < to)
    {
        let e = expected.entry(o.city).or_default();
        e.0 += 1;
        e.1 += o.amount;
    }
    assert_eq!(
        strings(&answer, 0),
        expected.keys().map(|c| c.to_string()).collect::<Vec<_>>()
    );
    assert_eq!(
        ints(&answer, 1),
        expected.values().map(|v| v.0).collect::<Vec<_>>()
    );
    for (got, want) in floats(&answer, 2).iter().zip(expected.values()) {
        assert!((got - want.1).abs() < 1e-6, "{got} vs {}", want.1);
    }
    // A range with no archived events reads nothing and answers nothing.
    let sql = format!(
        "SELECT count(*) FROM events WHERE ts < {}",
        time(f.base - M)
    );
    assert_eq!(ints(&f.engine.query(&sql).await.unwrap(), 0), [0]);
}

#[tokio::test]
async fn a_rollup_of_published_minutes_equals_the_archive() {
    let f = fixture(SqlLimits::default()).await;
    let end = time(f.base + PUBLISHED * M);
    let rollup = f
        .engine
        .query(&format!(
            "SELECT city, sum(orders) FROM orders_by_city WHERE window_start < {end} \
             GROUP BY city ORDER BY city"
        ))
        .await
        .unwrap();
    let events = f
        .engine
        .query(&format!(
            "SELECT city, count(*) FROM events WHERE ts < {end} \
             AND event_type = 'order_placed' GROUP BY city ORDER BY city"
        ))
        .await
        .unwrap();
    assert_eq!(strings(&rollup, 0), strings(&events, 0));
    assert_eq!(ints(&rollup, 1), ints(&events, 1));
    assert_eq!(strings(&rollup, 0).len(), CITIES.len());
}

#[tokio::test]
async fn only_queries_run() {
    let f = fixture(SqlLimits::default()).await;
    for sql in [
        "CREATE TABLE t AS SELECT 1",
        "CREATE EXTERNAL TABLE p STORED AS CSV LOCATION '/etc/passwd'",
        "CREATE VIEW v AS SELECT * FROM events",
        "DROP TABLE events",
        "INSERT INTO events SELECT * FROM events",
        "COPY (SELECT 1) TO '/tmp/tandem-copy.csv'",
        "SET datafusion.execution.batch_size = 1",
    ] {
        match f.engine.query(sql).await {
            Err(Error::ReadOnly(_)) => {}
            other => panic!("{sql}: {other:?}"),
        }
    }
    assert!(!std::path::Path::new("/tmp/tandem-copy.csv").exists());
    // A file is not a table.
    assert!(matches!(
        f.engine.query("SELECT * FROM '/etc/passwd'").await,
        Err(Error::Plan { .. })
    ));
}

#[tokio::test]
async fn mistakes_are_named_with_their_position() {
    let f = fixture(SqlLimits::default()).await;
    match f
        .engine
        .query("SELECT city\nFROM events WHERE ORDER BY city")
        .await
    {
        Err(e @ Error::Syntax { .. }) => {
            let p = e.position().expect("a position");
            // `ORDER` parses as a column name: the parser stops at `BY`.
            assert_eq!((p.line, p.column), (2, 25), "{e}");
            assert!(
                e.to_string()
                    .starts_with("Expected: end of statement, found: BY"),
                "{e}"
            );
        }
        other => panic!("{other:?}"),
    }
    match f.engine.query("SELECT no_such_column FROM events").await {
        Err(e @ Error::Plan { .. }) => assert!(e.to_string().contains("no_such_column"), "{e}"),
        other => panic!("{other:?}"),
    }
    match f.engine.query("SELECT 1; SELECT 2").await {
        Err(Error::Syntax { .. } | Error::Plan { .. }) => {}
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn answers_render_as_json_csv_and_arrow() {
    let f = fixture(SqlLimits::default()).await;
    let answer = f
        .engine
        .query("SELECT 'a' AS s, CAST(2 AS BIGINT) AS n, 2.5 AS x, CAST(NULL AS BIGINT) AS m, window_start FROM orders_by_city ORDER BY window_start LIMIT 1")
        .await
        .unwrap();
    let json = render::json(&answer).unwrap();
    let names: Vec<_> = json.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["s", "n", "x", "m", "window_start"]);
    assert_eq!(json.columns[1].data_type, "Int64");
    assert_eq!(json.rows.len(), 1);
    let row = &json.rows[0];
    assert_eq!(
        &row[..4],
        &[
            serde_json::json!("a"),
            serde_json::json!(2),
            serde_json::json!(2.5),
            serde_json::Value::Null
        ]
    );
    let start = row[4].as_str().unwrap();
    assert_eq!(
        chrono::DateTime::parse_from_rfc3339(start)
            .unwrap()
            .timestamp_millis(),
        f.base,
        "{start}"
    );

    let csv = String::from_utf8(render::csv(&answer).unwrap()).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("s,n,x,m,window_start"));
    assert!(lines.next().unwrap().starts_with("a,2,2.5,,"), "{csv}");

    let bytes = render::arrow_stream(&answer).unwrap();
    let reader =
        datafusion::arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
            .unwrap();
    assert_eq!(reader.schema(), answer.schema);
    let batches: Vec<_> = reader.collect::<Result<_, _>>().unwrap();
    assert_eq!(batches, answer.batches);
}

#[tokio::test]
async fn plans_can_be_explained_and_analyzed() {
    let f = fixture(SqlLimits::default()).await;
    for sql in [
        "EXPLAIN SELECT city, count(*) FROM events GROUP BY city",
        "EXPLAIN ANALYZE SELECT count(*) FROM events WHERE event_type = 'order_placed'",
        "EXPLAIN ANALYZE SELECT city, sum(orders) FROM orders_by_city GROUP BY city",
    ] {
        let answer = f
            .engine
            .query(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        let text = strings(&answer, 1).join("\n");
        assert!(text.contains("AggregateExec"), "{sql}: {text}");
    }
}

/// Decimal text with `scale` digits after the point, from its units: the oracle's rendering.
fn decimal_text(units: i128, scale: u32) -> String {
    let sign = if units < 0 { "-" } else { "" };
    let digits = units.unsigned_abs().to_string();
    let scale = scale as usize;
    let digits = format!("{digits:0>width$}", width = scale + 1);
    let (whole, fraction) = digits.split_at(digits.len() - scale);
    format!("{sign}{whole}.{fraction}")
}

/// Sums of 17–19 digit decimals answer every digit in JSON (a string with the column's
/// scale), CSV and Arrow, against an i128 oracle.
#[tokio::test]
async fn decimal_sums_keep_every_digit_in_every_format() {
    use datafusion::arrow::array::Decimal128Array;

    let f = fixture(SqlLimits::default()).await;
    // Units of decimal(20, 2): 17 to 19 digits, some negative, and one with a trailing zero.
    let values: [i128; 6] = [
        11_336_340_127_919_881_658,
        -987_654_321_098_765_432,
        12_345_678_901_234_567,
        9_999_999_999_999_999_990,
        30,
        -1,
    ];
    let oracle: i128 = values.iter().sum();
    let rows: Vec<String> = values
        .iter()
        .map(|v| format!("(CAST('{}' AS DECIMAL(20, 2)))", decimal_text(*v, 2)))
        .collect();
    let sql = format!(
        "SELECT sum(v) AS total, CAST('0.30' AS DECIMAL(10, 2)) AS small FROM (VALUES {}) AS t(v)",
        rows.join(", ")
    );

    let json: serde_json::Value =
        serde_json::from_slice(&f.engine.render(&sql, render::Format::Json).await.unwrap())
            .unwrap();
    assert_eq!(
        json["rows"][0][0],
        serde_json::json!(decimal_text(oracle, 2))
    );
    assert_eq!(json["rows"][0][1], serde_json::json!("0.30"));
    assert!(
        json["columns"][0]["type"]
            .as_str()
            .unwrap()
            .starts_with("Decimal128"),
        "{json}"
    );

    let csv = String::from_utf8(f.engine.render(&sql, render::Format::Csv).await.unwrap()).unwrap();
    assert_eq!(
        csv.lines().nth(1),
        Some(format!("{},0.30", decimal_text(oracle, 2)).as_str()),
        "{csv}"
    );

    let bytes = f
        .engine
        .render(&sql, render::Format::ArrowStream)
        .await
        .unwrap();
    let reader =
        datafusion::arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
            .unwrap();
    let batches: Vec<_> = reader.collect::<Result<_, _>>().unwrap();
    let total = batches[0]
        .column(0)
        .as_any()
        .downcast_ref::<Decimal128Array>()
        .unwrap();
    assert_eq!(total.value(0), oracle);
    assert_eq!(total.scale(), 2);
}

mod bounds;
mod doors;
