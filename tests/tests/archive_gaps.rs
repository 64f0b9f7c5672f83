//! Offsets the broker deleted before the archive read them.
//!
//! The embedded broker keeps only about 5 MiB per partition and drops older data, exactly what
//! a real broker's retention does to an archive that fell behind. Events are produced past that
//! before `tandem run` starts, so the archive finds the partition's log starting after offset 0:
//! the gap must be recorded in the partition manifest and counted, and the windows that may
//! have held lost events must be published as `"complete": false`, in the job record and in
//! query rows, never as exact.

use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::FutureRecord;
use rdkafka::{ClientConfig, Message};
use serde_json::{Value, json};
use tandem_tests::{RunFixture, TestServer};

const MINUTE: i64 = 60_000;

async fn get(client: &reqwest::Client, url: &str) -> anyhow::Result<Value> {
    let response = client.get(url).send().await?;
    let status = response.status();
    let body: Value = response.json().await?;
    ensure!(status.is_success(), "GET {url}: {status} {body}");
    Ok(body)
}

/// The broker's first offset of partition 0 and the event time of the message there.
fn log_start(bootstrap: &str) -> anyhow::Result<(i64, i64)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "gap-test")
        .set("auto.offset.reset", "earliest")
        .create()?;
    let (low, _) = consumer.fetch_watermarks("orders", 0, Duration::from_secs(10))?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset("orders", 0, rdkafka::Offset::Offset(low))?;
    consumer.assign(&tpl)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Some(message) = consumer.poll(Duration::from_millis(500)) {
            let message = message?;
            let payload: Value = serde_json::from_slice(message.payload().unwrap_or_default())?;
            let ts = payload["ts"].as_i64().context("ts")?;
            return Ok((message.offset(), ts));
        }
    }
    bail!("no message at the log start")
}

async fn wait_job(
    client: &reqwest::Client,
    server: &TestServer,
    id: &str,
) -> anyhow::Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let job = get(client, &server.url(&format!("/v1/jobs/{id}"))).await?;
        match job["status"].as_str() {
            Some("succeeded") => return Ok(job),
            Some("failed" | "cancelled") => bail!("job ended: {job}"),
            _ if Instant::now() > deadline => bail!("job did not finish: {job}"),
            _ => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_deleted_before_it_was_archived_is_a_recorded_gap_and_never_exact()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let fixture = RunFixture::new(dir.path(), &["orders:1", "orders.dlq:1", "orders.late:1"])?;
    let producer = fixture.producer()?;
    let now = chrono::Utc::now().timestamp_millis();
    let base = now - now.rem_euclid(MINUTE) - 240 * MINUTE;
    // About 9 MB of events over three hours: more than the embedded broker keeps. What it
    // keeps spans well over the fixture's allowed lateness (1h), so windows become ready.
    let pad = "x".repeat(400);
    let mut pending = Vec::new();
    for i in 0..20_000i64 {
        let payload =
            json!({"ts": base + i * 540, "city": format!("c{}", i % 5), "amount": 1.0, "pad": pad})
                .to_string();
        pending.push(
            producer
                .send_result(FutureRecord::<(), _>::to("orders").payload(&payload))
                .map_err(|(e, _)| e)?,
        );
    }
    for d in pending {
        d.await?.map_err(|(e, _)| e)?;
    }
    let (low, first_time) = log_start(&fixture.broker.kafka)?;
    ensure!(
        low > 0,
        "the broker kept everything; the test needs it to drop data"
    );

    let server = fixture.start(&[])?;
    let client = reqwest::Client::new();
    // The archive finds the gap and records it in the partition manifest.
    let manifest_dir = fixture.store.join("archive/orders/_manifest/p00000");
    let deadline = Instant::now() + Duration::from_secs(60);
    let gap = loop {
        let newest = std::fs::read_dir(&manifest_dir)
            .ok()
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .max();
        if let Some(path) = newest {
            let m: Value = serde_json::from_slice(&std::fs::read(path)?)?;
            if let Some(gap) = m["gaps"].as_array().and_then(|g| g.first()) {
                break gap.clone();
            }
        }
        ensure!(
            Instant::now() < deadline,
            "no gap recorded: {}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(gap["from_offset"], 0);
    assert_eq!(gap["to_offset"], low);
    let metrics = tandem_tests::metrics_text(&client, &server).await?;
    ensure!(
        metrics
            .lines()
            .any(|l| l == "tandem_archive_offset_gaps_total 1"),
        "gap metric:\n{metrics}"
    );

    // Recompute once the archive is idle (so complete) and the windows are ready.
    let deadline = Instant::now() + Duration::from_secs(90);
    let job = loop {
        let job: Value = client
            .post(server.url("/v1/jobs"))
            .body("{}")
            .send()
            .await?
            .json()
            .await?;
        let job = wait_job(&client, &server, job["id"].as_str().context("id")?).await?;
        // (The last hour stays not ready: the fixture's allowed lateness.)
        if !job["views"][0]["covered"].is_null() {
            break job;
        }
        if Instant::now() > deadline {
            let log = server.log();
            bail!(
                "windows never ready: {job}\n{}",
                &log[log.len().saturating_sub(6000)..]
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let outcome = &job["views"][0];
    assert_eq!(outcome["complete"], false, "{job}");
    let first_window = first_time - first_time.rem_euclid(MINUTE);
    assert_eq!(
        outcome["incomplete"],
        json!([{"from": tandem_time(first_window), "to": tandem_time(first_window + MINUTE)}]),
        "only the window the first surviving event falls in may have lost events: {job}"
    );

    let body = get(&client, &server.url("/v1/views/by_city")).await?;
    let rows = body["rows"].as_array().context("rows")?;
    let batch: Vec<&Value> = rows.iter().filter(|r| r["source"] == "batch").collect();
    ensure!(batch.len() > 5, "batch rows: {body}");
    for r in &batch {
        let incomplete = r["window_start"] == tandem_time(first_window);
        assert_eq!(r["complete"], !incomplete, "{r}");
    }
    // The coverage report says the same: that window is published but incomplete, every other
    // batch row's window is published exact, and no window is claimed by both layers.
    let coverage = get(&client, &server.url("/v1/views/by_city/coverage")).await?;
    assert_eq!(
        coverage["incomplete"],
        json!([{"from": tandem_time(first_window), "to": tandem_time(first_window + MINUTE)}]),
        "{coverage}"
    );
    let within = |list: &Value, start: &Value| {
        let ms = |v: &Value| tandem_tests::millis(v).unwrap_or(i64::MIN);
        list.as_array().is_some_and(|ranges| {
            ranges
                .iter()
                .any(|r| ms(&r["from"]) <= ms(start) && ms(start) < ms(&r["to"]))
        })
    };
    for r in rows {
        let start = &r["window_start"];
        let (batch, incomplete, speed) = (
            within(&coverage["batch"], start),
            within(&coverage["incomplete"], start),
            within(&coverage["speed"], start),
        );
        let expected = match r["source"].as_str() {
            Some("batch") if r["complete"] == false => (false, true, false),
            Some("batch") => (true, false, false),
            _ => (false, false, true),
        };
        assert_eq!((batch, incomplete, speed), expected, "{r} in {coverage}");
    }
    server.stop()?;
    Ok(())
}

fn tandem_time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
        .unwrap_or_default()
}
