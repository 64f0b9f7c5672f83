//! Enrichment from a dimension table: orders joined with the merchant's row. The speed layer
//! joins each order with the merchant's latest row when it reads the order (the table is read
//! to its end first); the batch layer joins it with the row valid at the order's time, so an
//! update that arrives after the orders (valid from halfway through them) changes the speed
//! layer's answer only when a job publishes the exact one. Both are compared with an oracle
//! that applies each rule to the produced rows; `on_missing = "drop"` leaves out orders of a
//! merchant the table does not know, and those are counted as missing.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, ensure};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};
use tandem_tests::{RunFixture, TestServer, eventually, metric, metrics_text};

const MINUTE: i64 = 60_000;
const WINDOW: i64 = 10 * MINUTE;
const ORDERS: i64 = 600;
const TOPICS: &[&str] = &["orders:4", "orders.dlq:1", "orders.late:1", "merchants:2"];

/// A merchant's row: id, category, fee, valid from.
type Row = (String, String, f64, i64);

/// Order `i`: its time, merchant and amount (whole numbers: sums exact in any order).
fn order(i: i64, base: i64) -> (i64, String, f64) {
    (base + i * 6_000, format!("m{}", i % 10), (i % 50) as f64)
}

/// Merchants m0..m8 (m9 is unknown), valid from an hour before every order.
fn merchants(base: i64) -> Vec<Row> {
    (0..9)
        .map(|m| {
            (
                format!("m{m}"),
                format!("c{}", m % 3),
                (m % 4) as f64 * 0.25,
                base - 60 * MINUTE,
            )
        })
        .collect()
}

/// Every order, in JSON, keyed by its merchant.
async fn produce_orders(producer: &FutureProducer, base: i64) -> anyhow::Result<()> {
    for i in 0..ORDERS {
        let (ts, merchant, amount) = order(i, base);
        let payload = json!({"order_id": format!("o{i}"), "ts": ts, "merchant_id": merchant, "amount": amount});
        send(producer, "orders", &merchant, payload).await?;
    }
    Ok(())
}

/// Per (window start, category): count, total, fees.
type Answer = BTreeMap<(i64, Option<String>), (i64, f64, f64)>;

/// The answer when each order is joined with the row `row_of` picks.
fn oracle(base: i64, row_of: impl Fn(&str, i64) -> Option<Row>) -> (Answer, BTreeMap<i64, i64>) {
    let mut by_category = Answer::new();
    let mut known: BTreeMap<i64, i64> = BTreeMap::new();
    for i in 0..ORDERS {
        let (ts, merchant, amount) = order(i, base);
        let window = ts - ts.rem_euclid(WINDOW);
        let row = row_of(&merchant, ts);
        let e = by_category
            .entry((window, row.as_ref().map(|r| r.1.clone())))
            .or_insert((0, 0.0, 0.0));
        e.0 += 1;
        e.1 += amount;
        e.2 += row.as_ref().map_or(0.0, |r| amount * r.2);
        if row.as_ref().is_some_and(|r| r.2 >= 0.5) {
            *known.entry(window).or_default() += 1;
        }
    }
    // A window with only NULL fees sums to NULL, not 0: compare fees where there are some.
    (by_category, known)
}

async fn send(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    payload: Value,
) -> anyhow::Result<()> {
    producer
        .send(
            FutureRecord::to(topic)
                .key(key)
                .payload(&payload.to_string()),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)?;
    Ok(())
}

async fn rows(client: &reqwest::Client, server: &TestServer, view: &str) -> anyhow::Result<Value> {
    Ok(client
        .get(server.url(&format!("/v1/views/{view}")))
        .send()
        .await?
        .json()
        .await?)
}

fn start_of(row: &Value) -> anyhow::Result<i64> {
    Ok(
        chrono::DateTime::parse_from_rfc3339(row["window_start"].as_str().context("start")?)?
            .timestamp_millis(),
    )
}

/// The `by_category` answer of `body`, of rows from `source` (any without one).
fn by_category(body: &Value, source: Option<&str>) -> anyhow::Result<Answer> {
    let mut out = Answer::new();
    for row in body["rows"].as_array().context("rows")? {
        if source.is_some_and(|s| row["source"] != s) {
            continue;
        }
        let category = row["group"]["merchants.category"]
            .as_str()
            .map(str::to_owned);
        let v = &row["values"];
        let values = (
            v["n"].as_i64().context("n")?,
            v["total"].as_f64().context("total")?,
            v["fees"].as_f64().unwrap_or(0.0),
        );
        ensure!(
            out.insert((start_of(row)?, category), values).is_none(),
            "duplicate row"
        );
    }
    Ok(out)
}

fn known(body: &Value, source: Option<&str>) -> anyhow::Result<BTreeMap<i64, i64>> {
    let mut out = BTreeMap::new();
    for row in body["rows"].as_array().context("rows")? {
        if source.is_some_and(|s| row["source"] != s) {
            continue;
        }
        out.insert(start_of(row)?, row["values"]["n"].as_i64().context("n")?);
    }
    Ok(out)
}

/// Sums of fees compared to a cent (products of whole amounts and fees in float).
fn same(a: &Answer, b: &Answer) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|((ka, va), (kb, vb))| {
            ka == kb && va.0 == vb.0 && va.1 == vb.1 && (va.2 - vb.2).abs() < 0.01
        })
}

/// Waits until the batch layer answers every window of the orders with `want`.
async fn batch_answer(
    client: &reqwest::Client,
    server: &TestServer,
    base: i64,
    want: &Answer,
    want_known: &BTreeMap<i64, i64>,
) -> anyhow::Result<()> {
    eventually(Duration::from_secs(180), || async {
        let mut got = by_category(&rows(client, server, "by_category").await?, Some("batch"))?;
        got.retain(|(w, _), _| *w < base + 180 * MINUTE);
        ensure!(same(&got, want), "batch: {got:?}\nwant {want:?}");
        let mut got = known(&rows(client, server, "known").await?, Some("batch"))?;
        got.retain(|w, _| *w < base + 180 * MINUTE);
        ensure!(
            &got == want_known,
            "batch, known: {got:?}\nwant {want_known:?}"
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_join_the_latest_row_fresh_and_the_row_valid_at_their_time_exactly()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let fixture = RunFixture::with_fixture(dir.path(), TOPICS, "enrichment.toml")?;
    let producer = fixture.producer()?;
    let client = reqwest::Client::new();
    let now = chrono::Utc::now().timestamp_millis();
    // Three hours back: the windows close (end plus an hour of lateness) once an order of
    // now reaches the archive.
    let base = now - now.rem_euclid(WINDOW) - 180 * MINUTE;

    let first = merchants(base);
    for (id, category, fee, from) in &first {
        send(
            &producer,
            "merchants",
            id,
            json!({"merchant_id": id, "category": category, "fee": fee, "updated_at": from}),
        )
        .await?;
    }
    let server = fixture.start(&[])?;
    produce_orders(&producer, base).await?;
    let latest = |rows: &[Row]| {
        let rows = rows.to_vec();
        move |merchant: &str, _ts: i64| rows.iter().rev().find(|r| r.0 == merchant).cloned()
    };
    let (fresh, fresh_known) = oracle(base, latest(&first));
    eventually(Duration::from_secs(60), || async {
        let got = by_category(&rows(&client, &server, "by_category").await?, None)?;
        ensure!(same(&got, &fresh), "speed: {got:?}\nwant {fresh:?}");
        let got = known(&rows(&client, &server, "known").await?, None)?;
        ensure!(
            got == fresh_known,
            "speed, known: {got:?}\nwant {fresh_known:?}"
        );
        Ok(())
    })
    .await?;
    // Orders of m9 have no row: counted missing in both views.
    let text = metrics_text(&client, &server).await?;
    for view in ["by_category", "known"] {
        let missing = metric(
            &text,
            &format!("tandem_join_missing_total{{view=\"{view}\"}}"),
        );
        ensure!(missing == (ORDERS / 10) as f64, "{view}: {missing} missing");
    }

    // Once an order of now is archived, scheduled jobs publish the windows: every order joined
    // with the rows valid at its time, the same rows as the speed layer's here.
    send(
        &producer,
        "orders",
        "advance",
        json!({"order_id": "advance", "ts": now, "merchant_id": "m0", "amount": 0.0}),
    )
    .await?;
    batch_answer(&client, &server, base, &fresh, &fresh_known).await?;

    // m1 moves to another category and fee, valid from halfway through the orders, after the
    // windows were published: the speed layer counted the orders long ago; the next scheduled
    // job finds the windows the row may change dirty and joins each order with the row of its
    // time.
    let update: Row = ("m1".into(), "c9".into(), 1.0, base + 30 * MINUTE);
    send(
        &producer,
        "merchants",
        "m1",
        json!({"merchant_id": "m1", "category": "c9", "fee": 1.0, "updated_at": update.3}),
    )
    .await?;
    let mut all = first.clone();
    all.push(update);
    let as_of = move |merchant: &str, ts: i64| {
        all.iter()
            .filter(|r| r.0 == merchant && r.3 <= ts)
            .max_by_key(|r| r.3)
            .cloned()
    };
    let (exact, exact_known) = oracle(base, as_of);
    ensure!(
        !same(&exact, &fresh),
        "the update must change the exact answer"
    );
    batch_answer(&client, &server, base, &exact, &exact_known).await?;
    let status = server.stop()?;
    ensure!(status.success(), "tandem exited with {status}");
    Ok(())
}

const MERCHANT_AVRO: &str = r#"{"type":"record","name":"Merchant","namespace":"shop","fields":[
  {"name":"merchant_id","type":"string"},
  {"name":"category","type":"string"},
  {"name":"fee","type":"double"},
  {"name":"updated_at","type":{"type":"long","logicalType":"timestamp-millis"}}]}"#;

/// The same join with the merchants written in Avro (writer schema from the registry, which
/// the table's reader and its archive ask), the orders in JSON: both layers answer as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_avro_table_is_read_through_the_schema_registry() -> anyhow::Result<()> {
    use apache_avro::types::Value as Avro;
    let registry = tandem_tests::SchemaRegistry::start().await?;
    let id = registry
        .register("merchants-value", "AVRO", MERCHANT_AVRO)
        .await?;
    let dir = tempfile::tempdir()?;
    let fixture = RunFixture::with_fixture(dir.path(), TOPICS, "enrichment.toml")?;
    let path = dir.path().join("tandem.toml");
    let text = std::fs::read_to_string(&path)?
        .replace(
            "[schema]\n",
            &format!("[schema]\nregistry = {{ url = \"{}\" }}\n", registry.url),
        )
        .replace(
            "time_field = \"updated_at\"\n",
            "time_field = \"updated_at\"\nformat = \"avro\"\n",
        );
    std::fs::write(&path, text)?;
    let producer = fixture.producer()?;
    let client = reqwest::Client::new();
    let now = chrono::Utc::now().timestamp_millis();
    let base = now - now.rem_euclid(WINDOW) - 180 * MINUTE;
    let first = merchants(base);
    for (merchant, category, fee, from) in &first {
        let payload = tandem_tests::formats::avro(
            MERCHANT_AVRO,
            id,
            vec![
                ("merchant_id", Avro::String(merchant.clone())),
                ("category", Avro::String(category.clone())),
                ("fee", Avro::Double(*fee)),
                ("updated_at", Avro::TimestampMillis(*from)),
            ],
        );
        producer
            .send(
                FutureRecord::to("merchants")
                    .key(merchant)
                    .payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)?;
    }
    let server = fixture.start(&[])?;
    produce_orders(&producer, base).await?;
    let rows_of = first.clone();
    let (want, want_known) = oracle(base, move |merchant: &str, _| {
        rows_of.iter().find(|r| r.0 == merchant).cloned()
    });
    eventually(Duration::from_secs(60), || async {
        let got = by_category(&rows(&client, &server, "by_category").await?, None)?;
        ensure!(same(&got, &want), "speed: {got:?}\nwant {want:?}");
        Ok(())
    })
    .await?;
    send(
        &producer,
        "orders",
        "advance",
        json!({"order_id": "advance", "ts": now, "merchant_id": "m0", "amount": 0.0}),
    )
    .await?;
    batch_answer(&client, &server, base, &want, &want_known).await?;
    let status = server.stop()?;
    ensure!(status.success(), "tandem exited with {status}");
    Ok(())
}
