//! Debezium change events end to end: creates, updates, deletes, tombstones and snapshot reads
//! of an `orders` table, as JSON envelopes (with and without the converter's schema/payload
//! wrapper) and as Avro written by Python's fastavro and confluent-kafka through the registry.
//! Views count the state each change leaves, filter on `_op`, and take event time from
//! `source.ts_ms`; tombstones (and excluded snapshots) are skipped and counted.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, ensure};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};
use tandem_tests::{
    Ready, SchemaRegistry, TestServer, eventually, fixture, metrics_text, run_args,
};

const MINUTE: i64 = 60_000;
const CITIES: [&str; 3] = ["Pune", "Goa", "Agra"];

/// One change of the `orders` table; `op` is `c`, `u`, `d`, `r` or `tombstone`.
#[derive(Debug, Clone)]
struct Change {
    key: String,
    op: &'static str,
    before: Option<Value>,
    after: Option<Value>,
    ts_ms: i64,
}

fn row(id: i64, city: &str, amount: f64, qty: i64) -> Value {
    json!({"id": id, "city": city, "amount": amount, "qty": qty})
}

/// Five rows read by a snapshot, then 25 inserts; every third row updated, every fifth deleted
/// (each delete followed by its tombstone).
fn changes(base: i64) -> Vec<Change> {
    let mut out = Vec::new();
    let mut ts = base;
    let mut tick = || {
        ts += 4_000;
        ts
    };
    for id in 0..30 {
        let city = CITIES[(id % 3) as usize];
        let created = row(id, city, (id % 7 + 1) as f64 * 1.5, id % 4 + 1);
        out.push(Change {
            key: id.to_string(),
            op: if id < 5 { "r" } else { "c" },
            before: None,
            after: Some(created.clone()),
            ts_ms: tick(),
        });
        let mut current = created;
        if id % 3 == 0 {
            let updated = row(id, CITIES[((id + 1) % 3) as usize], 99.0, 1);
            out.push(Change {
                key: id.to_string(),
                op: "u",
                before: Some(current.clone()),
                after: Some(updated.clone()),
                ts_ms: tick(),
            });
            current = updated;
        }
        if id % 5 == 0 {
            let t = tick();
            out.push(Change {
                key: id.to_string(),
                op: "d",
                before: Some(current),
                after: None,
                ts_ms: t,
            });
            out.push(Change {
                key: id.to_string(),
                op: "tombstone",
                before: None,
                after: None,
                ts_ms: t,
            });
        }
    }
    out
}

/// by_city: (minute, city) → (changes, sum of amount, sum of qty) over the state each change
/// leaves (the row before a delete); created: (minute, city) → inserts.
type Counts = BTreeMap<(i64, String), (i64, f64, i64)>;

fn expected(changes: &[Change], include_snapshot: bool) -> (Counts, BTreeMap<(i64, String), i64>) {
    let mut by_city = Counts::new();
    let mut created = BTreeMap::new();
    for c in changes {
        let state = match c.op {
            "tombstone" => continue,
            "r" if !include_snapshot => continue,
            "d" => c.before.as_ref(),
            _ => c.after.as_ref(),
        };
        let Some(state) = state else { continue };
        let start = c.ts_ms - c.ts_ms.rem_euclid(MINUTE);
        let city = state["city"].as_str().unwrap_or_default().to_owned();
        let e = by_city.entry((start, city.clone())).or_insert((0, 0.0, 0));
        e.0 += 1;
        e.1 += state["amount"].as_f64().unwrap_or_default();
        e.2 += state["qty"].as_i64().unwrap_or_default();
        if c.op == "c" {
            *created.entry((start, city)).or_insert(0) += 1;
        }
    }
    (by_city, created)
}

async fn answer(
    client: &reqwest::Client,
    server: &TestServer,
) -> anyhow::Result<(Counts, BTreeMap<(i64, String), i64>)> {
    let mut by_city = Counts::new();
    for r in tandem_tests::view_rows(client, server, "by_city").await? {
        let key = (
            tandem_tests::millis(&r["window_start"])?,
            r["group"]["city"].as_str().context("city")?.to_owned(),
        );
        let v = &r["values"];
        by_city.insert(
            key,
            (
                v["n"].as_i64().context("n")?,
                v["total"].as_f64().unwrap_or_default(),
                v["items"].as_i64().unwrap_or_default(),
            ),
        );
    }
    let mut created = BTreeMap::new();
    for r in tandem_tests::view_rows(client, server, "created").await? {
        let key = (
            tandem_tests::millis(&r["window_start"])?,
            r["group"]["city"].as_str().context("city")?.to_owned(),
        );
        created.insert(key, r["values"]["n"].as_i64().context("n")?);
    }
    Ok((by_city, created))
}

fn same(a: &Counts, b: &Counts) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|((ka, va), (kb, vb))| {
            ka == kb && va.0 == vb.0 && va.2 == vb.2 && (va.1 - vb.1).abs() < 1e-9
        })
}

/// Starts `tandem run` on the formats fixture with `schema_keys` and a view of inserts.
fn start(
    dir: &std::path::Path,
    broker: &TestServer,
    schema_keys: &str,
) -> anyhow::Result<TestServer> {
    let created = "\n[[views]]\nname = \"created\"\nwindow = { tumbling = \"1m\" }\ngroup_by = [\"city\"]\nfilter = \"_op = 'c'\"\nallowed_lateness = \"10s\"\naggregates = [\"count(*) AS n\"]\n";
    let text = std::fs::read_to_string(fixture("formats.toml"))?
        .replace("@BROKERS@", &broker.kafka)
        .replace("@STORE@", &dir.join("store").display().to_string())
        .replace("@FORMAT@", schema_keys)
        + created;
    let path = dir.join("tandem.toml");
    std::fs::write(&path, text)?;
    let mut server = TestServer::spawn(&run_args(&path), &[], dir, Ready::Http)?;
    server.kafka = broker.kafka.clone();
    Ok(server)
}

async fn check(
    server: &TestServer,
    changes: &[Change],
    include_snapshot: bool,
) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let (want, want_created) = expected(changes, include_snapshot);
    eventually(Duration::from_secs(60), || async {
        let (got, created) = answer(&client, server).await?;
        ensure!(same(&got, &want), "by_city: {got:?}\nwant {want:?}");
        ensure!(
            created == want_created,
            "created: {created:?}\nwant {want_created:?}"
        );
        Ok(())
    })
    .await
    .map_err(|e| e.context(format!("log:\n{}", server.log())))?;
    let tombstones = changes.iter().filter(|c| c.op == "tombstone").count();
    let snapshots = changes.iter().filter(|c| c.op == "r").count();
    let metrics = metrics_text(&client, server).await?;
    let skipped = |reason: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("tandem_speed_skipped_total")
                    && l.contains(&format!("reason=\"{reason}\""))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0) as usize
    };
    ensure!(
        skipped("tombstone") == tombstones,
        "tombstones skipped: {}",
        skipped("tombstone")
    );
    let want_snapshots = if include_snapshot { 0 } else { snapshots };
    ensure!(
        skipped("snapshot") == want_snapshots,
        "snapshots skipped: {}",
        skipped("snapshot")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debezium_json_change_events_without_the_snapshot() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let broker = TestServer::broker(&["orders:2"], data.path())?;
    let server = start(
        data.path(),
        &broker,
        "envelope = \"debezium\"\ninclude_snapshot = false",
    )?;
    let base = chrono::Utc::now().timestamp_millis() / MINUTE * MINUTE - 120 * MINUTE;
    let changes = changes(base);
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &broker.kafka)
        .create()?;
    for (i, c) in changes.iter().enumerate() {
        let record = FutureRecord::to("orders").key(&c.key);
        let delivery = if c.op == "tombstone" {
            producer.send(record, Duration::from_secs(10)).await
        } else {
            let event = json!({
                "before": c.before, "after": c.after, "op": c.op, "ts_ms": c.ts_ms + 40,
                "source": {"version": "2.7.0.Final", "connector": "postgresql", "name": "shop",
                           "ts_ms": c.ts_ms, "snapshot": c.op == "r", "db": "shop",
                           "schema": "public", "table": "orders"},
            });
            // Every other event as the JSON converter writes it with schemas enabled.
            let payload = if i % 2 == 0 {
                json!({"schema": {"type": "struct", "optional": false, "name": "shop.public.orders.Envelope"}, "payload": event})
            } else {
                event
            }
            .to_string();
            producer
                .send(record.payload(&payload), Duration::from_secs(10))
                .await
        };
        delivery.map_err(|(e, _)| e)?;
    }
    check(&server, &changes, false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debezium_avro_change_events_from_python() -> anyhow::Result<()> {
    let python = std::env::var("TANDEM_PYTHON")
        .context("TANDEM_PYTHON (the test venv's interpreter with confluent-kafka and fastavro) is not set; ./scripts/test sets it")?;
    let data = tempfile::tempdir()?;
    let registry = SchemaRegistry::start().await?;
    let broker = TestServer::broker(&["orders:2"], data.path())?;
    let keys = format!(
        "format = \"avro\"\nregistry = {{ url = \"{}\" }}\nenvelope = \"debezium\"",
        registry.url
    );
    let server = start(data.path(), &broker, &keys)?;
    let base = chrono::Utc::now().timestamp_millis() / MINUTE * MINUTE - 120 * MINUTE;
    let changes = changes(base);
    let file = data.path().join("changes.json");
    let list: Vec<Value> = changes
        .iter()
        .map(|c| json!({"key": c.key, "op": c.op, "before": c.before, "after": c.after, "ts_ms": c.ts_ms}))
        .collect();
    std::fs::write(&file, serde_json::to_vec(&list)?)?;
    let script = fixture("../scripts/debezium_producer.py");
    let out = tokio::process::Command::new(&python)
        .arg(&script)
        .args([&broker.kafka, &registry.url, "orders"])
        .arg(&file)
        .output()
        .await?;
    ensure!(
        out.status.success(),
        "{} {}: {}{}",
        python,
        script.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    check(&server, &changes, true).await
}
