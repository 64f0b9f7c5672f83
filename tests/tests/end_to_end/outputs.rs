//! Outputs on the running system: a view's rows pushed to a Kafka topic as they change (the
//! latest record of each key equals what the API answers), an alert rule that fires once per
//! window and group, and a batch correction when the batch layer publishes a different value.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, ensure};
use rdkafka::Message;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};
use tandem_tests::{TestServer, eventually, fixture, run_job};

use crate::{MINUTE, get};

const RESULTS: &str = "orders_by_city.results";
const ALERTS: &str = "orders_by_city.alerts";

fn config() -> anyhow::Result<String> {
    Ok(format!(
        "{}\n{}",
        std::fs::read_to_string(fixture("orders.toml"))?,
        r#"
[[outputs]]
view = "orders_by_city"
topic = "orders_by_city.results"

[[outputs]]
view = "orders_by_city"
topic = "orders_by_city.alerts"
when = "orders >= 5 AND city = 'Chennai'"
"#
    ))
}

/// Orders at `(time, city)`, each to the partition given (or by its city as key).
async fn produce(server: &TestServer, events: &[(i64, &str, Option<i32>)]) -> anyhow::Result<()> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &server.kafka)
        .create()?;
    for (i, (ts, city, partition)) in events.iter().enumerate() {
        let payload = json!({"ts": ts, "city": city, "order_id": format!("x-{ts}-{i}"),
            "amount": 2.5, "event_type": "order_placed"})
        .to_string();
        let mut record = FutureRecord::to("orders").key(*city).payload(&payload);
        if let Some(p) = partition {
            record = record.partition(*p);
        }
        producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)?;
    }
    Ok(())
}

/// Every record of `topic` so far, as JSON with its key.
fn read_all(consumer: &BaseConsumer, into: &mut Vec<(String, Value)>) -> anyhow::Result<()> {
    while let Some(msg) = consumer.poll(Duration::from_millis(200)) {
        let msg = msg?;
        let key = String::from_utf8(msg.key().context("a record without key")?.to_vec())?;
        let payload: Value = serde_json::from_slice(msg.payload().context("no payload")?)?;
        into.push((key, payload));
    }
    Ok(())
}

fn consumer(server: &TestServer, topic: &str) -> anyhow::Result<BaseConsumer> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &server.kafka)
        .set("group.id", format!("outputs-test-{topic}"))
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[topic])?;
    Ok(consumer)
}

/// The latest record per key (the highest `seq`), checking that `seq` only grows per key.
fn latest(records: &[(String, Value)]) -> anyhow::Result<BTreeMap<String, Value>> {
    let mut out: BTreeMap<String, Value> = BTreeMap::new();
    for (key, r) in records {
        let seq = r["seq"].as_u64().context("seq")?;
        if let Some(before) = out.get(key) {
            ensure!(
                before["seq"].as_u64() < Some(seq),
                "{key}: seq {seq} after {}",
                before["seq"]
            );
        }
        out.insert(key.clone(), r.clone());
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn view_rows_alerts_and_corrections_reach_their_topics() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let path = data.path().join("tandem.toml");
    std::fs::write(&path, config()?)?;
    let server = TestServer::dev(&path, data.path())?;
    let client = reqwest::Client::new();
    let now = chrono::Utc::now().timestamp_millis();
    // Within the outputs' lookback (15 minutes by default).
    let w0 = now - now.rem_euclid(MINUTE) - 5 * MINUTE;
    let w1 = w0 + MINUTE;
    // Chennai reaches 5 orders in w0 (the rule holds from the fifth on), Mumbai has 3; Berlin 2
    // in w1. Then time moves on, past w1's lateness, on every partition.
    let mut events: Vec<(i64, &str, Option<i32>)> =
        (0..7).map(|i| (w0 + 1_000 * i, "Chennai", None)).collect();
    events.extend((0..3).map(|i| (w0 + 500 + 1_000 * i, "Mumbai", None)));
    events.extend((0..2).map(|i| (w1 + 1_000 * i, "Berlin", None)));
    events.extend((0..4).map(|p| (w0 + 3 * MINUTE, "Tokyo", Some(p))));
    produce(&server, &events).await?;

    let results = consumer(&server, RESULTS)?;
    let alerts = consumer(&server, ALERTS)?;
    let mut seen = Vec::new();
    let key = |start: i64, city: &str| format!("orders_by_city/{start}/{}", json!({"city": city}));
    let want = [
        (key(w0, "Chennai"), 7),
        (key(w0, "Mumbai"), 3),
        (key(w1, "Berlin"), 2),
    ];
    // The latest record of each row equals the speed layer's answer.
    let want = &want;
    let latest_results = eventually(Duration::from_secs(60), || {
        let got = read_all(&results, &mut seen).and_then(|()| latest(&seen));
        async move {
            let got = got?;
            for (k, n) in want {
                let r = got
                    .get(k)
                    .with_context(|| format!("no record for {k}: {got:?}"))?;
                ensure!(r["values"]["orders"] == json!(n), "{k}: {r}");
            }
            Ok(got)
        }
    })
    .await?;
    let record = &latest_results[&key(w0, "Chennai")];
    ensure!(
        record["view"] == "orders_by_city"
            && record["kind"] == "update"
            && record["source"] == "speed"
            && record["version"].is_string()
            && record["group"] == json!({"city": "Chennai"}),
        "{record}"
    );
    let api = get(&client, &server.url("/v1/views/orders_by_city")).await?;
    let api_row = api["rows"]
        .as_array()
        .and_then(|rows| {
            rows.iter().find(|r| {
                r["group"]["city"] == "Chennai" && r["window_end"] == record["window_end"]
            })
        })
        .context("Chennai w0 in the API")?;
    ensure!(
        api_row["values"] == record["values"],
        "API {api_row} vs {record}"
    );

    // One alert, for Chennai in w0, however often the row changed after the rule held.
    let mut alert_records = Vec::new();
    eventually(Duration::from_secs(30), || {
        let read = read_all(&alerts, &mut alert_records);
        let n = alert_records.len();
        async move {
            read?;
            ensure!(n >= 1, "no alert yet");
            Ok(())
        }
    })
    .await?;
    // One task evaluates both outputs in every poll, the results output first: once a row
    // produced after Chennai's final count has been sent, the alert rule has been evaluated on
    // that count, and each alert it emitted is counted in the metric when it is queued.
    let lagos = w0 + 3 * MINUTE + 1_000;
    produce(&server, &[(lagos, "Lagos", None)]).await?;
    eventually(Duration::from_secs(30), || {
        let got = read_all(&results, &mut seen).and_then(|()| latest(&seen));
        async move {
            ensure!(
                got?.contains_key(&key(lagos - 1_000, "Lagos")),
                "no Lagos row yet"
            );
            Ok(())
        }
    })
    .await?;
    let metrics = tandem_tests::metrics_text(&client, &server).await?;
    let queued: f64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("tandem_output_records_total{")
                && l.contains("kind=\"alert\"")
                && l.contains("view=\"orders_by_city\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    ensure!(queued == 1.0, "alerts queued: {queued}\n{metrics}");
    read_all(&alerts, &mut alert_records)?;
    ensure!(alert_records.len() == 1, "alerts: {alert_records:?}");
    let (alert_key, alert) = &alert_records[0];
    ensure!(
        *alert_key == key(w0, "Chennai") && alert["kind"] == "alert",
        "{alert_key}: {alert}"
    );
    ensure!(
        alert["values"]["orders"].as_i64() >= Some(5),
        "the rule holds in the alert: {alert}"
    );

    // A late Mumbai order for w0 (beyond the lateness: the speed layer passes it over, the
    // archive keeps it). The batch layer's exact count differs from what was sent: a correction.
    produce(&server, &[(w0 + 40_000, "Mumbai", Some(0))]).await?;
    // The job publishes the count once the archive holds the late order.
    let w0_text = chrono::DateTime::from_timestamp_millis(w0)
        .context("w0")?
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    eventually(Duration::from_secs(90), || async {
        run_job(
            &client,
            &server,
            json!({"view": "orders_by_city"}),
            Duration::from_secs(30),
        )
        .await?;
        let api = get(&client, &server.url("/v1/views/orders_by_city")).await?;
        let mumbai = api["rows"]
            .as_array()
            .and_then(|rows| {
                rows.iter().find(|r| {
                    r["group"]["city"] == "Mumbai" && r["window_start"] == w0_text.as_str()
                })
            })
            .cloned()
            .context("Mumbai w0")?;
        ensure!(
            mumbai["source"] == "batch" && mumbai["values"]["orders"] == 4,
            "{mumbai}"
        );
        Ok(())
    })
    .await?;
    let corrected = eventually(Duration::from_secs(60), || {
        let got = read_all(&results, &mut seen).and_then(|()| latest(&seen));
        let k = key(w0, "Mumbai");
        async move {
            let got = got?;
            let r = got.get(&k).context("Mumbai")?.clone();
            ensure!(r["kind"] == "correction", "not corrected yet: {r}");
            Ok(r)
        }
    })
    .await?;
    ensure!(
        corrected["source"] == "batch" && corrected["values"]["orders"] == 4,
        "{corrected}"
    );
    // Rows the batch layer confirmed were not sent again.
    let after = latest(&seen)?;
    ensure!(
        after[&key(w0, "Chennai")]["kind"] == "update",
        "{}",
        after[&key(w0, "Chennai")]
    );
    Ok(())
}
