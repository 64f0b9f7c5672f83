//! A broker outage in the middle of a stream loses nothing and publishes nothing wrong.
//!
//! `tandem run` consumes from tansu, a real Kafka-protocol broker. Half of the events are
//! produced and answered; then the broker is stopped (SIGSTOP: it answers nothing, as a hung
//! broker or a network partition would) while the rest are produced into the client's queue, and
//! continued after several seconds. Tandem keeps running throughout; afterwards the speed layer
//! counts every event once, and a recompute job publishes per-minute counts and sums equal to
//! those computed here from the produced events.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, ensure};
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;
use tandem_tests::{
    ExternalBroker, Ready, TestServer, eventually, metrics_text, millis, run_args, run_job,
    view_rows,
};

const MINUTE: i64 = 60_000;

const CONFIG: &str = r#"
[kafka]
brokers = "@BROKERS@"
topic = "orders"
idle_timeout = "2s"

[storage]
url = "memory://"

[schema]
time_field = "ts"
fields = { amount = "int64" }

[[views]]
name = "per_minute"
window = { tumbling = "1m" }
allowed_lateness = "5s"
aggregates = ["count(*) AS n", "sum(amount) AS total"]

[archive]
roll_interval = "1s"
"#;

/// Events `range`, one every 250 ms of event time from `base`: (ts, amount).
fn events(base: i64, range: std::ops::Range<i64>) -> Vec<(i64, i64)> {
    range.map(|i| (base + i * 250, i % 11 + 1)).collect()
}

async fn send(producer: &FutureProducer, events: &[(i64, i64)]) -> anyhow::Result<()> {
    let mut deliveries = Vec::new();
    for (i, (ts, amount)) in events.iter().enumerate() {
        let payload = json!({"ts": ts, "amount": amount}).to_string();
        let key = format!("k{}", i % 17);
        deliveries.push(
            producer
                .send_result(FutureRecord::to("orders").key(&key).payload(&payload))
                .map_err(|(e, _)| e)?,
        );
    }
    for d in deliveries {
        d.await?.map_err(|(e, _)| e)?;
    }
    Ok(())
}

/// Rows of `per_minute` by window start: (n, total, source).
async fn rows(
    client: &reqwest::Client,
    server: &TestServer,
) -> anyhow::Result<BTreeMap<i64, (i64, i64, String)>> {
    let mut out = BTreeMap::new();
    for row in view_rows(client, server, "per_minute").await? {
        out.insert(
            millis(&row["window_start"])?,
            (
                row["values"]["n"].as_i64().context("n")?,
                row["values"]["total"].as_i64().context("total")?,
                row["source"].as_str().context("source")?.to_owned(),
            ),
        );
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_mid_stream_loses_nothing() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let broker = ExternalBroker::start(data.path())?;
    broker.create_topic("orders", 2).await?;
    let config_path = data.path().join("tandem.toml");
    std::fs::write(&config_path, CONFIG.replace("@BROKERS@", &broker.bootstrap))?;
    let run = run_args(&config_path);
    let mut server = TestServer::spawn(&run, &[], data.path(), Ready::Http)?;
    let result = outage(&broker, &mut server).await;
    if result.is_err() {
        eprintln!("---- tandem log ----\n{}", server.log());
    }
    result?;
    let status = server.stop()?;
    ensure!(status.success(), "tandem exited with {status}");
    Ok(())
}

async fn outage(broker: &ExternalBroker, server: &mut TestServer) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .set("linger.ms", "5")
        // Queued messages wait out the outage in the client, and retries keep their order.
        .set("message.timeout.ms", "120000")
        .set("enable.idempotence", "true")
        .create()?;
    let now = chrono::Utc::now().timestamp_millis();
    let base = now - now.rem_euclid(MINUTE) - 10 * MINUTE;
    let first = events(base, 0..600);
    let second = events(base, 600..1_200);
    let counted =
        |rows: &BTreeMap<i64, (i64, i64, String)>| rows.values().map(|r| r.0).sum::<i64>();

    send(&producer, &first).await?;
    eventually(Duration::from_secs(60), || async {
        let n = counted(&rows(&client, server).await?);
        ensure!(n == 600, "the speed layer counts {n} of 600");
        Ok(())
    })
    .await?;

    // The outage: the rest is produced into the client's queue while the broker answers nothing.
    broker.pause()?;
    let sending = {
        let producer = producer.clone();
        let second = second.clone();
        tokio::spawn(async move { send(&producer, &second).await })
    };
    // Eight seconds of outage, Tandem alive and healthy at every look within them.
    let outage = std::time::Instant::now() + Duration::from_secs(8);
    let mut looks = 0;
    while std::time::Instant::now() < outage {
        ensure!(
            server.exited()?.is_none(),
            "tandem exited during the outage"
        );
        let health = client.get(server.url("/healthz")).send().await?;
        ensure!(
            health.status().is_success(),
            "/healthz: {}",
            health.status()
        );
        looks += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    ensure!(looks >= 8, "only {looks} looks during the outage");
    broker.resume()?;
    sending.await??;

    // Every event once in the speed layer...
    let all: Vec<(i64, i64)> = first.iter().chain(&second).copied().collect();
    let mut oracle: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
    for (ts, amount) in &all {
        let e = oracle.entry(ts - ts.rem_euclid(MINUTE)).or_default();
        e.0 += 1;
        e.1 += amount;
    }
    // (A partition whose leader is silent is not idle, so the partition that answers first after
    // the outage cannot carry the watermark past the other one's events and make them late.)
    eventually(Duration::from_secs(90), || async {
        let now = rows(&client, server).await?;
        let got: BTreeMap<i64, (i64, i64)> = now.iter().map(|(k, v)| (*k, (v.0, v.1))).collect();
        if got != oracle {
            let metrics = metrics_text(&client, server).await?;
            let late: Vec<&str> = metrics
                .lines()
                .filter(|l| l.starts_with("tandem_late_events_total"))
                .collect();
            anyhow::bail!("speed layer: {got:?}, expected {oracle:?}; late: {late:?}");
        }
        Ok(())
    })
    .await?;

    // ...and exactly in the batch layer: jobs publish the windows the archive has completed
    // (all but the last, once every partition is archived and idle).
    let now = eventually(Duration::from_secs(120), || async {
        let job = run_job(
            &client,
            server,
            json!({"view": "per_minute"}),
            Duration::from_secs(60),
        )
        .await?;
        let now = rows(&client, server).await?;
        let batch = now.values().filter(|v| v.2 == "batch").count();
        ensure!(
            batch >= 4,
            "batch answers {batch} windows: {now:?} after {job}"
        );
        Ok(now)
    })
    .await?;
    for (start, (n, total, _)) in &now {
        ensure!(
            oracle.get(start) == Some(&(*n, *total)),
            "window {start}: answered {n}/{total}, expected {:?}",
            oracle.get(start)
        );
    }
    ensure!(
        now.len() == oracle.len(),
        "{} windows answered of {}",
        now.len(),
        oracle.len()
    );
    Ok(())
}
