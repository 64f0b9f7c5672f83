//! End to end: events through Kafka to a merged, exact answer over HTTP.
//!
//! Runs the real `tandem dev` binary, produces a known stream with an rdkafka producer (out of
//! order within the allowed lateness, plus malformed messages), and checks every answer against
//! values computed independently here.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use rdkafka::Message;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};
use tandem_tests::{
    ExternalBroker, Ready, TestServer, eventually, fixture, metrics_text, run_args, run_job,
};

const MINUTE: i64 = 60_000;
const CITIES: [&str; 5] = ["Chennai", "Mumbai", "Berlin", "Lagos", "Tokyo"];

mod debezium;
mod formats;
mod orders;
mod outputs;
mod rollup;
mod s3;
mod sql;

use orders::*;

async fn get(client: &reqwest::Client, url: &str) -> anyhow::Result<Value> {
    let resp = client.get(url).send().await?;
    let status = resp.status();
    let body: Value = resp.json().await?;
    ensure!(status.is_success(), "GET {url}: {status} {body}");
    Ok(body)
}

/// The same scenario through `tandem run` against a real Kafka-protocol broker (tansu) instead
/// of the embedded mock cluster: consumer groups, offset commits, headers and topic creation as a
/// production deployment exercises them. Tandem must create its side topics itself (the broker
/// does not create topics on first use), and refuses to start without the events topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tandem_run_against_a_real_kafka_protocol_broker() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let broker = ExternalBroker::start(data.path())?;
    let config = std::fs::read_to_string(fixture("orders.toml"))?.replacen(
        "[kafka]\n",
        &format!("[kafka]\nbrokers = \"{}\"\n", broker.bootstrap),
        1,
    );
    let config_path = data.path().join("tandem.toml");
    std::fs::write(&config_path, config)?;
    let run = run_args(&config_path);

    // Without the events topic, start-up stops and says which topic is missing.
    let missing = std::process::Command::new(tandem_tests::tandem_binary()?)
        .args(&run)
        .output()?;
    let stderr = String::from_utf8_lossy(&missing.stderr);
    ensure!(
        !missing.status.success() && stderr.contains("topic `orders` does not exist"),
        "expected a missing-topic error, got {}: {stderr}",
        missing.status
    );

    broker.create_topic("orders", 4).await?;
    // Nor without a dimension table's topic (the embedded broker would create it on demand;
    // this one does not).
    let tables_path = data.path().join("tables.toml");
    std::fs::write(
        &tables_path,
        format!(
            "{}\n[[tables]]\nname = \"merchants\"\ntopic = \"merchants\"\nkey = \"merchant_id\"\nfields = {{ merchant_id = \"string\", category = \"string\" }}\n",
            std::fs::read_to_string(&config_path)?
        ),
    )?;
    let missing = std::process::Command::new(tandem_tests::tandem_binary()?)
        .args(run_args(&tables_path))
        .output()?;
    let stderr = String::from_utf8_lossy(&missing.stderr);
    ensure!(
        !missing.status.success() && stderr.contains("topic `merchants` does not exist"),
        "expected a missing table topic error, got {}: {stderr}",
        missing.status
    );

    let mut server = TestServer::spawn(&run, &[], data.path(), Ready::Http)?;
    server.kafka = broker.bootstrap.clone();
    run_scenario(server).await
}

/// Runs the scenario against `server` (its log on failure), then stops it in order.
async fn run_scenario(server: TestServer) -> anyhow::Result<()> {
    let result = scenario(&server).await;
    if result.is_err() {
        eprintln!("---- tandem log ----\n{}", server.log());
    }
    result?;
    let status = server.stop()?;
    ensure!(status.success(), "tandem exited with {status}");
    Ok(())
}

async fn produce(server: &TestServer, orders: &[Order]) -> anyhow::Result<()> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &server.kafka)
        .set("linger.ms", "5")
        .create()?;
    let mut deliveries = Vec::new();
    for o in orders {
        deliveries.push(
            producer
                .send_result(FutureRecord::to("orders").key(&o.key).payload(&o.payload))
                .map_err(|(e, _)| e)?,
        );
    }
    for (payload, _) in malformed() {
        deliveries.push(
            producer
                .send_result(FutureRecord::<(), _>::to("orders").payload(payload))
                .map_err(|(e, _)| e)?,
        );
    }
    // A message without any payload.
    deliveries.push(
        producer
            .send_result(FutureRecord::<str, ()>::to("orders").key("empty"))
            .map_err(|(e, _)| e)?,
    );
    for d in deliveries {
        d.await?.map_err(|(e, _)| e)?;
    }
    Ok(())
}

async fn dead_letters(
    server: &TestServer,
    want: usize,
) -> anyhow::Result<Vec<(Option<Vec<u8>>, BTreeMap<String, String>)>> {
    read_topic(server, "orders.dlq", want).await
}

/// Reads `want` messages of `topic` from its start, with their headers.
async fn read_topic(
    server: &TestServer,
    topic: &str,
    want: usize,
) -> anyhow::Result<Vec<(Option<Vec<u8>>, BTreeMap<String, String>)>> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &server.kafka)
        .set("group.id", format!("e2e-reader-{topic}-{want}"))
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[topic])?;
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while out.len() < want {
        let left = deadline.saturating_duration_since(Instant::now());
        ensure!(
            !left.is_zero(),
            "only {} of {want} dead letters arrived",
            out.len()
        );
        let Ok(msg) = tokio::time::timeout(left, consumer.recv()).await else {
            continue;
        };
        let msg = msg?;
        let mut headers = BTreeMap::new();
        if let Some(h) = msg.headers() {
            for header in h.iter() {
                headers.insert(
                    header.key.to_owned(),
                    String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned(),
                );
            }
        }
        out.push((msg.payload().map(<[u8]>::to_vec), headers));
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_through_kafka_to_a_merged_exact_answer() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let server = TestServer::dev(&fixture("orders.toml"), data.path())?;
    run_scenario(server).await
}

/// One record's Kafka timestamp is hours old, to show that `max_future` counts from the
/// record's timestamp.
async fn scenario(server: &TestServer) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let now = chrono::Utc::now().timestamp_millis();
    let base = now - now.rem_euclid(MINUTE) - 30 * MINUTE;
    let orders = stream(base, 3_000);
    produce(server, &orders).await?;

    // 1. The speed layer answers with exactly the expected values.
    let expected = expected_orders_by_city(&orders);
    let total_orders: i64 = expected.values().map(|e| e.orders).sum();
    let url = server.url("/v1/views/orders_by_city");
    eventually(Duration::from_secs(60), || async {
        let body = get(&client, &url).await?;
        let rows = rows_by_key(&body, "city")?;
        let seen = orders_in(&rows);
        ensure!(
            seen == total_orders,
            "speed layer has {seen} of {total_orders} orders"
        );
        ensure!(
            rows.values().all(|(_, s)| s == "speed"),
            "nothing is published yet"
        );
        check_orders_by_city(&rows, &expected)
    })
    .await
    .context("speed-layer answer")?;

    // Paging: `limit` rows at a time, following `next_cursor`, gives the whole answer once.
    let whole = get(&client, &url).await?;
    ensure!(
        whole["next_cursor"].is_null(),
        "one page: {}",
        whole["next_cursor"]
    );
    let mut paged = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let page_url = match &cursor {
            None => format!("{url}?limit=7"),
            Some(c) => format!("{url}?limit=7&cursor={c}"),
        };
        let page = get(&client, &page_url).await?;
        let rows = page["rows"].as_array().context("rows")?;
        ensure!(rows.len() <= 7, "page of {}", rows.len());
        paged.extend(
            rows.iter()
                .map(|r| (r["window_start"].clone(), r["group"].clone())),
        );
        pages += 1;
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
        ensure!(pages < 10_000, "paging does not end");
    }
    let unpaged: Vec<_> = whole["rows"]
        .as_array()
        .context("rows")?
        .iter()
        .map(|r| (r["window_start"].clone(), r["group"].clone()))
        .collect();
    ensure!(pages > 1, "{} rows fit in one page of 7", unpaged.len());
    ensure!(paged == unpaged, "pages differ from the whole answer");

    // Every layer task runs, the consumer holds partitions, the store answers: ready.
    let readyz = server.url("/readyz");
    eventually(Duration::from_secs(30), || async {
        let response = client.get(&readyz).send().await?;
        let status = response.status();
        let body: serde_json::Value = response.json().await?;
        ensure!(
            status == reqwest::StatusCode::OK && body["status"] == "ready",
            "/readyz: {status} {body}"
        );
        Ok(())
    })
    .await
    .context("readiness")?;

    // Dimension filters and ranges narrow the answer.
    let chennai = get(
        &client,
        &format!(
            "{url}?city=Chennai&from={}&to={}",
            base + 5 * MINUTE,
            base + 10 * MINUTE
        ),
    )
    .await?;
    let rows = rows_by_key(&chennai, "city")?;
    let want: Vec<_> = expected
        .keys()
        .filter(|(w, c)| c == "Chennai" && *w >= base + 5 * MINUTE && *w < base + 10 * MINUTE)
        .collect();
    ensure!(
        rows.keys().collect::<Vec<_>>() == want,
        "filtered rows: {chennai}"
    );

    // 2. Malformed messages are in the dead-letter topic with a reason.
    let malformed = malformed();
    let letters = dead_letters(server, malformed.len() + 1).await?;
    let mut payloads: Vec<String> = letters
        .iter()
        .filter_map(|(p, _)| p.as_ref().map(|p| String::from_utf8_lossy(p).into_owned()))
        .collect();
    payloads.sort();
    let mut want_payloads: Vec<String> = malformed.iter().map(|(p, _)| (*p).to_owned()).collect();
    want_payloads.sort();
    ensure!(
        payloads == want_payloads,
        "dead-letter payloads: {payloads:?}"
    );
    for (payload, headers) in &letters {
        ensure!(
            headers.get("reason").is_some_and(|r| !r.is_empty()),
            "dead letter {payload:?} has no reason: {headers:?}"
        );
        ensure!(headers.get("source_topic").map(String::as_str) == Some("orders"));
        if let Some(p) = payload {
            let kind = malformed
                .iter()
                .find(|(m, _)| m.as_bytes() == p.as_slice())
                .map(|(_, k)| *k);
            ensure!(
                headers.get("error_kind").map(String::as_str) == kind,
                "{headers:?}"
            );
        }
    }
    let metrics = metrics_text(&client, server).await?;
    let dead: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("tandem_dead_letter_events_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    ensure!(
        dead as usize == malformed.len() + 1,
        "dead-letter metric says {dead}"
    );
    // Consumer lag comes from librdkafka's statistics, emitted every second.
    eventually(Duration::from_secs(10), || async {
        let metrics = metrics_text(&client, server).await?;
        ensure!(
            metrics.contains("tandem_consumer_lag{"),
            "consumer lag metric missing"
        );
        Ok(())
    })
    .await?;

    // 3. A batch job recomputes exactly; covered windows switch to the batch layer with the same
    //    values and the rest stay with the speed layer. The archive may still be rolling, so
    //    repeat the job until it covers the stream up to its last few windows.
    let last_window =
        (orders.iter().map(|o| o.ts).max().unwrap_or(base)).div_euclid(MINUTE) * MINUTE;
    let body = eventually(Duration::from_secs(90), || async {
        let done = run_job(&client, server, json!({}), Duration::from_secs(30)).await?;
        let body = get(&client, &url).await?;
        let horizon = millis(&body["batch_horizon"]).context("no batch horizon yet")?;
        ensure!(
            horizon >= last_window - 2 * MINUTE,
            "batch horizon {horizon} not near {last_window} yet"
        );
        ensure!(
            done["windows_published"].as_u64().unwrap_or(0) > 0,
            "job published nothing: {done}"
        );
        // The last windows are not complete yet: the job says so instead of publishing them.
        ensure!(
            done["windows_not_ready"]
                .as_array()
                .is_some_and(|w| !w.is_empty()),
            "job reports no windows left to the speed layer: {done}"
        );
        Ok(body)
    })
    .await
    .context("batch recompute")?;

    let horizon = millis(&body["batch_horizon"])?;
    let rows = rows_by_key(&body, "city")?;
    check_orders_by_city(&rows, &expected).context("merged answer")?;
    for ((window, city), (_, source)) in &rows {
        let want = if *window < horizon { "batch" } else { "speed" };
        ensure!(
            source == want,
            "{window} {city} came from {source}, horizon {horizon}"
        );
    }
    ensure!(rows.values().any(|(_, s)| s == "batch"), "no batch rows");
    ensure!(
        rows.values().any(|(_, s)| s == "speed"),
        "the last window must still be speed"
    );
    // Speed rows say whether the watermark (latest event time less the 10 s lateness, every
    // partition having delivered) has passed their end; batch rows are final and do not.
    let latest = orders.iter().map(|o| o.ts).max().unwrap_or(base);
    for row in body["rows"].as_array().context("rows")? {
        let end = millis(&row["window_end"])?;
        match row["source"].as_str() {
            Some("speed") => ensure!(
                row["closed"] == json!(end <= latest - 10_000),
                "closed of a speed row ending {end}, latest event {latest}: {row}"
            ),
            _ => ensure!(row.get("closed").is_none(), "batch row with closed: {row}"),
        }
    }
    let merged_total = orders_in(&rows);
    ensure!(
        merged_total == total_orders,
        "merged total {merged_total} != {total_orders}"
    );

    // The second view (5-minute windows, no filter) agrees with its own oracle.
    let by_type = get(&client, &server.url("/v1/views/events_by_type")).await?;
    let got = rows_by_key(&by_type, "event_type")?;
    let want = expected_events_by_type(&orders);
    ensure!(got.len() == want.len(), "events_by_type rows: {by_type}");
    for (key, (n, amount)) in &want {
        let (values, source) = got.get(key).with_context(|| format!("missing {key:?}"))?;
        ensure!(
            values["events"].as_i64() == Some(*n),
            "{key:?} {source}: {values}"
        );
        ensure!(
            values["amount"].as_f64() == Some(*amount),
            "{key:?} {source}: {values}"
        );
    }

    // Reconciliation released the covered windows from the speed layer and found no drift.
    let views = get(&client, &server.url("/v1/views")).await?;
    let report = views["views"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == "orders_by_city"))
        .map(|v| v["reconciliation"].clone())
        .context("orders_by_city in /v1/views")?;
    ensure!(
        report["rows_compared"].as_u64().unwrap_or(0) > 0,
        "no reconciliation: {report}"
    );
    ensure!(
        report["max_relative_drift"]["orders"].as_f64() == Some(0.0),
        "drift: {report}"
    );

    // 4. Late events: beyond the lateness (and in windows the batch layer already published) they
    //    go to the late-events topic, per view, and are counted; they stay in the archive, so a
    //    recompute of their window includes them. An event from the far future is dead-lettered.
    let late_window = base + MINUTE;
    let late: Vec<Order> = (0..3)
        .map(|i| {
            let ts = late_window + 1_000 + i;
            Order {
                key: format!("late-{i}"),
                ts,
                city: "Lagos",
                amount: 2.5,
                event_type: "order_placed",
                payload: json!({"order_id": format!("late-{i}"), "ts": ts, "city": "Lagos", "user_id": "u-late",
                                "amount": 2.5, "event_type": "order_placed"}).to_string(),
            }
        })
        .collect();
    let future_ts = chrono::Utc::now().timestamp_millis() + 2 * 3_600_000;
    let future =
        json!({"ts": future_ts, "city": "Lagos", "amount": 1.0, "event_type": "order_placed"})
            .to_string();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &server.kafka)
        .create()?;
    for o in &late {
        producer
            .send(
                FutureRecord::to("orders").key(&o.key).payload(&o.payload),
                Duration::from_secs(5),
            )
            .await
            .map_err(|(e, _)| e)?;
    }
    producer
        .send(
            FutureRecord::to("orders").key("future").payload(&future),
            Duration::from_secs(5),
        )
        .await
        .map_err(|(e, _)| e)?;
    // `max_future` counts from the record's Kafka timestamp, not the wall clock: a message
    // produced (or replayed) with a timestamp 3 hours ago whose event time is 30 minutes ago
    // is 2.5 hours in its own future. And an event before schema.min_time is `past`.
    let now_ms = chrono::Utc::now().timestamp_millis();
    let replayed =
        json!({"ts": now_ms - 30 * MINUTE, "city": "Lagos", "amount": 1.0, "event_type": "order_placed"})
            .to_string();
    producer
        .send(
            FutureRecord::to("orders")
                .key("replayed")
                .payload(&replayed)
                .timestamp(now_ms - 180 * MINUTE),
            Duration::from_secs(5),
        )
        .await
        .map_err(|(e, _)| e)?;
    let ancient =
        json!({"ts": "1999-12-31T23:59:59Z", "city": "Lagos", "amount": 1.0, "event_type": "order_placed"})
            .to_string();
    producer
        .send(
            FutureRecord::to("orders").key("ancient").payload(&ancient),
            Duration::from_secs(5),
        )
        .await
        .map_err(|(e, _)| e)?;
    let late_letters = read_topic(server, "orders.late", 6).await?;
    let for_view = late_letters
        .iter()
        .filter(|(_, h)| h.get("view").map(String::as_str) == Some("orders_by_city"))
        .count();
    ensure!(
        for_view == 3,
        "late messages for orders_by_city: {for_view} of {late_letters:?}"
    );
    ensure!(
        late_letters
            .iter()
            .all(|(_, h)| h.get("reason").is_some_and(|r| !r.is_empty()))
    );
    let all_dead = dead_letters(server, malformed.len() + 4).await?;
    let kinds = |kind: &str| {
        all_dead
            .iter()
            .filter(|(_, h)| h.get("error_kind").map(String::as_str) == Some(kind))
            .count()
    };
    ensure!(
        kinds("future") == 2,
        "dead letters for the future and the replayed event: {all_dead:?}"
    );
    ensure!(
        kinds("past") == 1,
        "dead letter for the ancient event: {all_dead:?}"
    );
    let metrics = metrics_text(&client, server).await?;
    ensure!(
        metrics
            .lines()
            .any(|l| l.starts_with("tandem_late_events_total{view=\"orders_by_city\"} 3")),
        "late-event metric:\n{}",
        metrics
            .lines()
            .filter(|l| l.contains("late"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Recompute the late events' window: the batch answer now includes them.
    let key = (late_window, "Lagos".to_owned());
    let before = expected.get(&key).map_or(0, |e| e.orders);
    let late = eventually(Duration::from_secs(60), || async {
        let job =
            json!({"view": "orders_by_city", "from": late_window, "to": late_window + MINUTE});
        let done = run_job(&client, server, job, Duration::from_secs(30)).await?;
        let body = get(
            &client,
            &format!(
                "{url}?city=Lagos&from={late_window}&to={}",
                late_window + MINUTE
            ),
        )
        .await?;
        let n = body["rows"][0]["values"]["orders"].as_i64().unwrap_or(0);
        ensure!(
            n == before + 3,
            "window has {n} orders, want {} (job {done})",
            before + 3
        );
        ensure!(body["rows"][0]["source"] == "batch");
        Ok(())
    })
    .await;
    if let Err(err) = late {
        let metrics = metrics_text(&client, server).await.unwrap_or_default();
        let archive: Vec<&str> = metrics
            .lines()
            .filter(|l| l.starts_with("tandem_archive") || l.starts_with("tandem_dead"))
            .collect();
        return Err(err.context(format!(
            "recompute including late events; archive metrics:\n{}",
            archive.join("\n")
        )));
    }

    // SQL over the same views and the archive.
    sql::check(&client, server).await?;
    rollup::check(&client, server).await?;

    // 5. Bad requests get clear 4xx errors.
    let resp = client
        .get(server.url("/v1/views/no_such_view"))
        .send()
        .await?;
    ensure!(resp.status().as_u16() == 404);
    let err: Value = resp.json().await?;
    ensure!(
        err["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("no_such_view"))
    );
    let resp = client.get(format!("{url}?from=noon")).send().await?;
    ensure!(resp.status().as_u16() == 400);
    let resp = client
        .post(server.url("/v1/jobs"))
        .json(&json!({"view": "nope"}))
        .send()
        .await?;
    ensure!(resp.status().as_u16() == 404);
    Ok(())
}

fn gauge(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_speed_layer_pauses_at_its_memory_budget_and_resumes_when_batch_covers()
-> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let server = TestServer::dev(&fixture("tight_budget.toml"), data.path())?;
    let result = async {
        let client = reqwest::Client::new();
        let now = chrono::Utc::now().timestamp_millis();
        let base = now - now.rem_euclid(MINUTE) - 30 * MINUTE;
        let orders = stream(base, 3_000);
        produce(&server, &orders).await?;
        let expected = expected_orders_by_city(&orders);
        let total: i64 = expected.values().map(|e| e.orders).sum();
        let url = server.url("/v1/views/orders_by_city");

        // The state hits its budget: consumption pauses short of the whole stream.
        eventually(Duration::from_secs(60), || async {
            let metrics = metrics_text(&client, &server).await?;
            ensure!(
                gauge(&metrics, "tandem_speed_paused") == Some(1.0),
                "not paused yet"
            );
            Ok(())
        })
        .await?;
        let body = get(&client, &url).await?;
        let seen = orders_in(&rows_by_key(&body, "city")?);
        ensure!(seen < total, "paused, yet all {total} orders are counted");

        // The batch layer covers the older windows; the speed layer lets them go and resumes.
        eventually(Duration::from_secs(90), || async {
            run_job(&client, &server, json!({}), Duration::from_secs(30)).await?;
            let metrics = metrics_text(&client, &server).await?;
            ensure!(
                gauge(&metrics, "tandem_speed_paused") == Some(0.0),
                "still paused"
            );
            let body = get(&client, &url).await?;
            let rows = rows_by_key(&body, "city")?;
            check_orders_by_city(&rows, &expected)
        })
        .await
        .context("resuming after the batch layer covered windows")?;
        Ok::<_, anyhow::Error>(())
    }
    .await;
    if result.is_err() {
        eprintln!("---- tandem log ----\n{}", server.log());
    }
    result
}
