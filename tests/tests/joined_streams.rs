//! Joined streams: orders matched with their payments within 15 minutes, as an inner join
//! (paid orders per city) and a left join (orders still unpaid). Both topics are produced out
//! of order (within the allowed lateness); Tandem is killed half-way and restarts from its
//! checkpoints (the join's buffers and both topics' offsets); then events late on both sides
//! arrive. The speed layer answers the join of what was on time, the late events go to the
//! late topic, and the batch layer's job answers the join of everything: each compared with
//! DuckDB over the produced events.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, ensure};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};
use tandem_tests::{RunFixture, TestServer, eventually, metric, metrics_text, run_job};

const MINUTE: i64 = 60_000;
const WINDOW: i64 = 10 * MINUTE;
const ORDERS: i64 = 300;
const TOPICS: &[&str] = &["orders:4", "orders.dlq:1", "orders.late:1", "payments:4"];

/// One produced event.
#[derive(Debug, Clone)]
struct Event {
    topic: &'static str,
    ts: i64,
    payload: Value,
}

fn order(id: &str, ts: i64, city: &str) -> Event {
    Event {
        topic: "orders",
        ts,
        payload: json!({"order_id": id, "ts": ts, "city": city}),
    }
}

fn payment(id: &str, ts: i64, amount: i64) -> Event {
    Event {
        topic: "payments",
        ts,
        payload: json!({"order_id": id, "ts": ts, "amount": amount}),
    }
}

/// Orders every 30 s from `base`; payments within the interval, at its end, past it, before
/// the order, twice or never. In arrival order: each event up to 4 minutes after its time
/// (less than the allowed lateness), both topics interleaved.
fn on_time(base: i64) -> Vec<Event> {
    let mut out = Vec::new();
    for i in 0..ORDERS {
        let id = format!("o{i}");
        let t = base + i * 30_000;
        out.push(order(&id, t, &format!("c{}", i % 3)));
        let amount = i % 17 + 1;
        match i % 5 {
            0 => {}
            1 => out.push(payment(&id, t + (i * 7 % 14) * MINUTE, amount)),
            2 => out.push(payment(&id, t + 16 * MINUTE, amount)),
            3 => {
                out.push(payment(&id, t + MINUTE + i % 5 * 1_000, amount));
                out.push(payment(&id, t + 15 * MINUTE, amount + 100));
            }
            _ => out.push(payment(&id, t - MINUTE, amount)),
        }
    }
    let jitter = |e: &Event| {
        let h = e.ts.wrapping_mul(2_654_435_761).rem_euclid(4 * MINUTE);
        e.ts + h + i64::from(e.topic == "payments")
    };
    out.sort_by_key(|e| jitter(e));
    out
}

/// Events behind the speed layer's horizon once an event of now was read: an order and its
/// payment, and a second payment of an early order.
fn late(base: i64) -> Vec<Event> {
    vec![
        order("late", base + 31 * MINUTE, "c1"),
        payment("late", base + 33 * MINUTE, 7),
        payment("o3", base + 3 * 30_000 + 5 * MINUTE, 9),
    ]
}

async fn produce(producer: &FutureProducer, events: &[Event]) -> anyhow::Result<()> {
    let mut pending = Vec::new();
    for e in events {
        let key = e.payload["order_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let payload = e.payload.to_string();
        pending.push(
            producer
                .send_result(FutureRecord::to(e.topic).key(&key).payload(&payload))
                .map_err(|(e, _)| e)?,
        );
    }
    for p in pending {
        p.await?.map_err(|(e, _)| e)?;
    }
    Ok(())
}

/// Per (view, window start, city): the first value and the second (the paid amount).
type Answer = BTreeMap<(String, i64, String), (i64, Option<i64>)>;

/// The oracle: DuckDB over the produced events, the join written in SQL.
fn duckdb(dir: &std::path::Path, events: &[Event]) -> anyhow::Result<Answer> {
    let python = std::env::var("TANDEM_PYTHON").context(
        "TANDEM_PYTHON (a Python with DuckDB) is not set: run ./scripts/test, which installs it",
    )?;
    let mut files = BTreeMap::new();
    for topic in ["orders", "payments"] {
        let path = dir.join(format!("{topic}.jsonl"));
        let lines: Vec<String> = events
            .iter()
            .filter(|e| e.topic == topic)
            .map(|e| e.payload.to_string())
            .collect();
        std::fs::write(&path, lines.join("\n") + "\n")?;
        files.insert(topic, path.display().to_string());
    }
    let sql = format!(
        "WITH o AS (SELECT * FROM read_json('{orders}', format = 'newline_delimited', columns = {{order_id: 'VARCHAR', ts: 'BIGINT', city: 'VARCHAR'}})), \
              p AS (SELECT * FROM read_json('{payments}', format = 'newline_delimited', columns = {{order_id: 'VARCHAR', ts: 'BIGINT', amount: 'BIGINT'}})), \
              j AS (SELECT o.ts - o.ts % {WINDOW} AS w, o.city, p.amount FROM o LEFT JOIN p \
                    ON o.order_id = p.order_id AND p.ts BETWEEN o.ts AND o.ts + {within}) \
         SELECT 'paid', w, city, count(*), sum(amount) FROM j WHERE amount IS NOT NULL GROUP BY ALL \
         UNION ALL SELECT 'unpaid', w, city, count(*), NULL FROM j WHERE amount IS NULL GROUP BY ALL",
        orders = files["orders"],
        payments = files["payments"],
        within = 15 * MINUTE,
    );
    let script = "import duckdb, json, sys\nprint(json.dumps(duckdb.sql(sys.argv[1]).fetchall()))";
    let out = std::process::Command::new(python)
        .args(["-c", script, &sql])
        .output()?;
    ensure!(
        out.status.success(),
        "duckdb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<(String, i64, String, i64, Option<i64>)> = serde_json::from_slice(&out.stdout)?;
    Ok(rows
        .into_iter()
        .map(|(view, w, city, n, amount)| ((view, w, city), (n, amount)))
        .collect())
}

/// Both views' rows from `source` (any without one), windows before `until`.
async fn answer(
    client: &reqwest::Client,
    server: &TestServer,
    source: Option<&str>,
    until: i64,
) -> anyhow::Result<Answer> {
    let mut out = Answer::new();
    for (view, first, second) in [
        ("paid", "payments", Some("amount")),
        ("unpaid", "orders", None),
    ] {
        let body: Value = client
            .get(server.url(&format!("/v1/views/{view}")))
            .send()
            .await?
            .json()
            .await?;
        for row in body["rows"].as_array().context("rows")? {
            if source.is_some_and(|s| row["source"] != s) {
                continue;
            }
            let start = tandem_tests::millis(&row["window_start"])?;
            let city = row["group"]["city"].as_str().context("city")?.to_owned();
            if start >= until || city == "Advance" {
                continue;
            }
            let v = &row["values"];
            let values = (
                v[first].as_i64().context("count")?,
                second.and_then(|s| v[s].as_i64()),
            );
            ensure!(
                out.insert((view.to_owned(), start, city), values).is_none(),
                "duplicate row"
            );
        }
    }
    Ok(out)
}

async fn counted(
    client: &reqwest::Client,
    server: &TestServer,
    name: &str,
    want: f64,
) -> anyhow::Result<()> {
    eventually(Duration::from_secs(60), || async {
        let got = metric(&metrics_text(client, server).await?, name);
        ensure!(got == want, "{name}: {got}, want {want}");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_layers_join_orders_with_payments_as_duckdb_does() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let fixture = RunFixture::with_fixture(dir.path(), TOPICS, "joined.toml")?;
    let producer = fixture.producer()?;
    let client = reqwest::Client::new();
    let now = chrono::Utc::now().timestamp_millis();
    let base = now - now.rem_euclid(WINDOW) - 180 * MINUTE;
    let until = base + 180 * MINUTE;
    let events = on_time(base);
    let (first, rest) = events.split_at(events.len() / 2);
    let orders_in = |events: &[Event]| events.iter().filter(|e| e.topic == "orders").count();

    // 1. Half the events, read; the process killed.
    let server = fixture.start(&[])?;
    produce(&producer, first).await?;
    counted(
        &client,
        &server,
        "tandem_speed_events_total",
        orders_in(first) as f64,
    )
    .await?;
    let payments = (first.len() - orders_in(first)) as f64;
    counted(
        &client,
        &server,
        "tandem_speed_joined_events_total{topic=\"payments\"}",
        payments,
    )
    .await?;
    // Killed with whatever the last checkpoints (every second) hold: the restart reads both
    // topics again from their offsets.
    server.kill()?;

    // 2. After the restart (the join's buffers and both offsets from the checkpoints), the
    //    rest, and an order of now: every partition of both topics then goes idle, event
    //    time reaches now, and the left join's rows of every order come out.
    let server = fixture.start(&[])?;
    produce(&producer, rest).await?;
    produce(&producer, &[order("advance", now, "Advance")]).await?;
    let fresh = duckdb(dir.path(), &events)?;
    ensure!(
        fresh.keys().any(|k| k.0 == "unpaid") && fresh.keys().any(|k| k.0 == "paid"),
        "the workload has paid and unpaid orders: {fresh:?}"
    );
    eventually(Duration::from_secs(90), || async {
        let got = answer(&client, &server, Some("speed"), until).await?;
        ensure!(got == fresh, "speed: {got:?}\nwant {fresh:?}");
        Ok(())
    })
    .await?;

    // 3. Events late on both sides: sent to the late topic for each view, the speed layer's
    //    answer unchanged.
    let late = late(base);
    produce(&producer, &late).await?;
    for view in ["paid", "unpaid"] {
        counted(
            &client,
            &server,
            &format!("tandem_late_events_total{{view=\"{view}\"}}"),
            late.len() as f64,
        )
        .await?;
    }
    let got = answer(&client, &server, Some("speed"), until).await?;
    ensure!(
        got == fresh,
        "speed after late events: {got:?}\nwant {fresh:?}"
    );

    // 4. A job joins both archives, late events included: DuckDB over everything produced.
    let mut all = events.clone();
    all.extend(late);
    let exact = duckdb(dir.path(), &all)?;
    ensure!(exact != fresh, "the late events change the exact answer");
    eventually(Duration::from_secs(180), || async {
        run_job(&client, &server, json!({}), Duration::from_secs(120)).await?;
        let got = answer(&client, &server, None, until).await?;
        ensure!(got == exact, "after the job: {got:?}\nwant {exact:?}");
        let batch = answer(&client, &server, Some("batch"), until).await?;
        ensure!(batch == exact, "not every window from the batch layer yet");
        Ok(())
    })
    .await?;
    let status = server.stop()?;
    ensure!(status.success(), "tandem exited with {status}");
    Ok(())
}

/// A joined stream's topic with another partition count than the events' cannot meet them
/// partition by partition: start-up stops and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joined_topic_with_other_partitions_stops_start_up() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let topics = ["orders:4", "orders.dlq:1", "orders.late:1", "payments:2"];
    let _fixture = RunFixture::with_fixture(dir.path(), &topics, "joined.toml")?;
    let out = std::process::Command::new(tandem_tests::tandem_binary()?)
        .args(tandem_tests::run_args(&dir.path().join("tandem.toml")))
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success()
            && stderr.contains("topic `payments` has 2 partitions and the events' topic 4"),
        "expected a partition-count error, got {}: {stderr}",
        out.status
    );
    Ok(())
}
