//! A hostile day, scaled to CI: what an attacker or a careless user tried against a release
//! build, run against the real binary. No query, client or producer may freeze Tandem, kill
//! it, or get a wrong answer published as exact. (The full-size probes and their figures are
//! in BENCHMARKS.md, "Under attack".)
//!
//! - a CPU-bound SQL query from a read token (four at once) stops at the query timeout while
//!   `/healthz` and view queries keep answering;
//! - 2,000 half-sent requests under a 1,024 file limit: checkpoints keep succeeding, the API
//!   keeps answering, and the server closes them at the header timeout;
//! - value bombs (`repeat`, `lpad`, `||`) are a 413 and the process lives;
//! - a producer writing event times 55 minutes ahead neither moves the watermark past the
//!   clock, nor makes on-time events late, nor gets a window published before its time;
//! - streams past `http.max_streams` are refused, and a stream ends when its client goes;
//! - the archive keeps receiving after quiet partitions, on the embedded broker and on tansu.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use serde_json::{Value, json};
use tandem_tests::{
    ExternalBroker, Ready, TestServer, eventually, fixture, metric, metrics_text, run_args, run_job,
};
use tokio::io::AsyncWriteExt;

/// `fixtures/orders.toml` with `extra` appended (whole tables), written under `dir`.
fn config(dir: &Path, brokers: Option<&str>, extra: &str) -> anyhow::Result<std::path::PathBuf> {
    let mut text = std::fs::read_to_string(fixture("orders.toml"))?;
    if let Some(brokers) = brokers {
        text = text.replacen(
            "[kafka]\n",
            &format!("[kafka]\nbrokers = \"{brokers}\"\n"),
            1,
        );
    }
    text.push('\n');
    text.push_str(extra);
    let path = dir.join("tandem.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

fn dev_args(config: &Path, data: &Path) -> Vec<String> {
    let mut args: Vec<String> = vec!["dev".into(), "--config".into()];
    args.push(config.display().to_string());
    args.extend(["--http", "127.0.0.1:0", "--kafka-port", "0", "--data"].map(String::from));
    args.push(data.join("dev").display().to_string());
    args
}

fn producer(brokers: &str) -> anyhow::Result<FutureProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .create()?)
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Sends `events` (JSON values) keyed by their position, and waits for every delivery.
async fn produce(producer: &FutureProducer, events: &[Value]) -> anyhow::Result<()> {
    let sends = events.iter().enumerate().map(|(i, e)| {
        let payload = e.to_string();
        let key = format!("k{i}");
        async move {
            producer
                .send(
                    FutureRecord::to("orders").key(&key).payload(&payload),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(e, _)| e)
        }
    });
    for sent in futures::future::join_all(sends).await {
        sent?;
    }
    producer.flush(Duration::from_secs(30))?;
    Ok(())
}

fn order(i: usize, ts: i64) -> Value {
    let cities = ["Lima", "Oslo", "Pune", "Kyiv"];
    json!({
        "order_id": format!("o{i}"),
        "city": cities[i % cities.len()],
        "user_id": format!("u{}", i % 97),
        "amount": 1.0 + (i % 10) as f64,
        "event_type": "order_placed",
        "ts": ts,
    })
}

async fn post_sql(
    client: &reqwest::Client,
    server: &TestServer,
    sql: &str,
) -> anyhow::Result<(reqwest::StatusCode, Value)> {
    let response = client
        .post(server.url("/v1/sql"))
        .json(&json!({ "sql": sql }))
        .send()
        .await?;
    let status = response.status();
    Ok((status, response.json().await.unwrap_or(Value::Null)))
}

/// A CPU-bound query no longer holds the runtime that serves HTTP: four at once stop at the
/// query timeout (not the request timeout), while `/healthz` and view queries answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_bound_queries_stop_at_their_timeout_while_the_api_answers() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = config(
        dir.path(),
        None,
        "[http]\nquery_timeout = \"3s\"\nrequest_timeout = \"60s\"\n",
    )?;
    let server = TestServer::dev(&config, dir.path())?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let cross = "SELECT count(*) FROM generate_series(1,200000) a CROSS JOIN \
                 generate_series(1,200000) b WHERE (a.value*b.value)%7=3";
    let queries: Vec<_> = (0..4)
        .map(|_| {
            let client = client.clone();
            let url = server.url("/v1/sql");
            tokio::spawn(async move {
                let started = Instant::now();
                let response = client
                    .post(url)
                    .json(&json!({ "sql": cross }))
                    .send()
                    .await?;
                let status = response.status();
                let body: Value = response.json().await?;
                anyhow::Ok((status, body, started.elapsed()))
            })
        })
        .collect();
    // While they run, the probes and a view query answer, each within a deadline far below the
    // request timeout (before: 29.7 s for /healthz).
    let quick = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    for _ in 0..6 {
        for path in ["/healthz", "/v1/views/orders_by_city"] {
            let status = quick
                .get(server.url(path))
                .send()
                .await
                .with_context(|| format!("{path} while 4 CPU-bound queries run"))?
                .status();
            ensure!(status.is_success(), "{path}: {status}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for query in queries {
        let (status, body, _took) = query.await??;
        ensure!(
            status == reqwest::StatusCode::REQUEST_TIMEOUT && body["error"]["code"] == "timed_out",
            "{status} {body}"
        );
        let message = body["error"]["message"].as_str().unwrap_or_default();
        ensure!(
            message.contains("query_timeout"),
            "stopped by the query timeout: {body}"
        );
    }
    let (status, body) = post_sql(&client, &server, "SELECT 1 AS one").await?;
    ensure!(
        status.is_success() && body["rows"][0][0] == 1,
        "{status} {body}"
    );
    Ok(())
}

/// Functions that build huge values are a 413, and the process is still there to answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn value_bombs_are_refused_and_the_process_lives() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = config(dir.path(), None, "")?;
    let mut server = TestServer::dev(&config, dir.path())?;
    let client = reqwest::Client::new();
    for bomb in [
        "SELECT length(repeat('x',400000000))",
        "SELECT repeat('x',300000000) AS s",
        "SELECT lpad('x', 300000000)",
        "SELECT length(s || s || s || s) FROM (SELECT repeat('x', 100000000) AS s)",
    ] {
        let (status, body) = post_sql(&client, &server, bomb).await?;
        ensure!(
            status == reqwest::StatusCode::PAYLOAD_TOO_LARGE
                && body["error"]["code"] == "memory_limit",
            "{bomb}: {status} {body}"
        );
    }
    ensure!(server.exited()?.is_none(), "tandem died:\n{}", server.log());
    let (status, _) = post_sql(&client, &server, "SELECT 1").await?;
    ensure!(status.is_success());
    Ok(())
}

/// 2,000 clients that send half a request head, against a process limited to 1,024 files:
/// connections are capped below the limit, checkpoints keep succeeding, the API answers, and
/// the server closes the half-sent requests at the header timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_connections_cannot_starve_checkpoints_or_the_api() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = config(
        dir.path(),
        None,
        "[http]\nheader_timeout = \"3s\"\n\n[speed]\ncheckpoint_interval = \"1s\"\n",
    )?;
    let server = TestServer::spawn_within(
        &dev_args(&config, dir.path()),
        &[],
        dir.path(),
        Ready::Both,
        Some(1024),
    )?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let producer = producer(&server.kafka)?;
    let base = now_ms();
    produce(
        &producer,
        &(0..200).map(|i| order(i, base)).collect::<Vec<_>>(),
    )
    .await?;
    let before = metrics_text(&client, &server).await?;
    let checkpoints_before = metric(&before, "tandem_checkpoints_total");
    let errors_before = metric(&before, "tandem_checkpoint_errors_total");

    let addr = server.http.trim_start_matches("http://").to_owned();
    let mut held = Vec::with_capacity(2_000);
    for _ in 0..2_000 {
        let mut stream = tokio::net::TcpStream::connect(&addr).await?;
        // Half a request head, never finished.
        stream
            .write_all(b"GET /v1/views HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            .await?;
        held.push(stream);
    }
    // Meanwhile events flow and checkpoints are written.
    let feed = {
        let producer = producer.clone();
        tokio::spawn(async move {
            for round in 0..20 {
                let events: Vec<Value> = (0..50).map(|i| order(round * 50 + i, now_ms())).collect();
                produce(&producer, &events).await?;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            anyhow::Ok(())
        })
    };
    let after = eventually(Duration::from_secs(60), || async {
        let text = metrics_text(&client, &server).await?;
        let done = metric(&text, "tandem_checkpoints_total") - checkpoints_before;
        ensure!(done >= 10.0, "{done} checkpoints during the attack so far");
        Ok(text)
    })
    .await
    .with_context(|| server.log())?;
    ensure!(
        metric(&after, "tandem_checkpoint_errors_total") == errors_before,
        "checkpoints failed under the attack:\n{}",
        server.log()
    );
    let health = client.get(server.url("/healthz")).send().await?.status();
    ensure!(health.is_success(), "/healthz: {health}");
    feed.await??;
    // The server hung up on the half-sent requests (a read sees the end of the stream, or a
    // reset), after its header timeout.
    let deadline = Instant::now() + Duration::from_secs(60);
    for stream in held.iter_mut().step_by(100) {
        let mut buf = [0u8; 256];
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, tokio::io::AsyncReadExt::read(stream, &mut buf)).await {
            Ok(Ok(_)) | Ok(Err(_)) => {}
            Err(_) => bail!("a half-sent request is still open after the header timeout"),
        }
    }
    let log = server.log();
    ensure!(
        !log.contains("Too many open files") && !log.contains("checkpoint failed"),
        "{log}"
    );
    Ok(())
}

/// Eight events 55 minutes ahead of the clock: the watermark stays behind the clock, on-time
/// events are not late, the future events are kept (and counted), and no window is published
/// before the clock passes its end plus the allowed lateness.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_times_ahead_of_the_clock_do_not_move_time() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = config(dir.path(), None, "")?;
    let server = TestServer::dev(&config, dir.path())?;
    let client = reqwest::Client::new();
    let producer = producer(&server.kafka)?;
    let start = now_ms();
    let ahead = start + 55 * 60_000;
    // The future events reach every partition (keys spread them).
    let future: Vec<Value> = (0..8).map(|i| order(10_000 + i, ahead)).collect();
    produce(&producer, &future).await?;
    // Then on-time events, for a few seconds.
    let mut on_time = 0;
    for round in 0..10 {
        let events: Vec<Value> = (0..40).map(|i| order(round * 40 + i, now_ms())).collect();
        on_time += events.len();
        produce(&producer, &events).await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let text = eventually(Duration::from_secs(30), || async {
        let text = metrics_text(&client, &server).await?;
        ensure!(
            metric(&text, "tandem_speed_events_total") >= (8 + on_time) as f64,
            "not all consumed yet"
        );
        Ok(text)
    })
    .await?;
    let checked_at = now_ms();
    let progress = metric(&text, "tandem_speed_event_time_progress_ms");
    ensure!(
        progress as i64 <= checked_at,
        "event-time progress {progress} is past the clock {checked_at}"
    );
    ensure!(metric(&text, "tandem_late_events_total") == 0.0, "{text}");
    ensure!(
        metric(&text, "tandem_speed_future_events_total") >= 8.0,
        "{text}"
    );
    // The future events are kept in their window; every on-time event is counted.
    let rows = tandem_tests::view_rows(&client, &server, "orders_by_city").await?;
    let mut counted: BTreeMap<bool, i64> = BTreeMap::new();
    for row in &rows {
        let start = tandem_tests::millis(&row["window_start"])?;
        *counted.entry(start >= ahead - 60_000).or_default() +=
            row["values"]["orders"].as_i64().context("orders")?;
    }
    ensure!(counted.get(&true) == Some(&8), "{rows:?}");
    ensure!(counted.get(&false) == Some(&(on_time as i64)), "{rows:?}");
    // A job publishes only windows whose end plus lateness the clock has passed.
    let job = run_job(&client, &server, json!({}), Duration::from_secs(120)).await?;
    let finished = now_ms();
    for row in tandem_tests::view_rows(&client, &server, "orders_by_city").await? {
        if row["source"] == "batch" {
            let end = tandem_tests::millis(&row["window_end"])?;
            ensure!(
                end + 10_000 <= finished,
                "window ending {end} published as exact at {finished}: {job}"
            );
        }
    }
    Ok(())
}

/// Streams count against `http.max_streams`, and a stream whose client goes frees its slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_capped_and_end_when_their_client_goes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = config(dir.path(), None, "[http]\nmax_streams = 3\n")?;
    let server = TestServer::dev(&config, dir.path())?;
    let client = reqwest::Client::new();
    let open = || {
        client
            .get(server.url("/v1/views/orders_by_city/stream"))
            .send()
    };
    let mut streams = Vec::new();
    for _ in 0..3 {
        let response = open().await?;
        ensure!(response.status().is_success(), "{}", response.status());
        streams.push(response);
    }
    let refused = open().await?;
    ensure!(
        refused.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE,
        "a fourth stream: {}",
        refused.status()
    );
    // Two clients go away: their streams end and free their slots.
    streams.truncate(1);
    eventually(Duration::from_secs(30), || async {
        let text = metrics_text(&client, &server).await?;
        let open_now = metric(&text, "tandem_http_streams");
        ensure!(open_now <= 1.0, "{open_now} streams still open");
        Ok(())
    })
    .await?;
    let again = open().await?;
    ensure!(again.status().is_success(), "{}", again.status());
    Ok(())
}

/// Bursts separated by quiet periods longer than the roll interval: every event is archived.
async fn quiet_partitions_then_bursts(
    client: &reqwest::Client,
    server: &TestServer,
    brokers: &str,
) -> anyhow::Result<()> {
    let producer = producer(brokers)?;
    let mut sent = 0usize;
    for burst in 0..3 {
        let base = now_ms();
        let events: Vec<Value> = (0..1_300).map(|i| order(burst * 1_300 + i, base)).collect();
        produce(&producer, &events).await?;
        sent += events.len();
        // Quiet for longer than the roll interval: partitions are marked idle meanwhile.
        tokio::time::sleep(Duration::from_secs(6)).await;
    }
    eventually(Duration::from_secs(90), || async {
        let (status, body) = post_sql(client, server, "SELECT count(*) AS n FROM events").await?;
        ensure!(status.is_success(), "{status} {body}");
        let archived = body["rows"][0][0].as_u64().context("count")?;
        ensure!(archived == sent as u64, "archived {archived} of {sent}");
        Ok(())
    })
    .await
    .with_context(|| server.log())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_archive_keeps_receiving_after_quiet_periods() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = config(dir.path(), None, "")?.display().to_string();
    let text = std::fs::read_to_string(&config)?
        .replace("roll_interval = \"1s\"", "roll_interval = \"2s\"");
    std::fs::write(&config, text)?;
    let server = TestServer::dev(Path::new(&config), dir.path())?;
    let client = reqwest::Client::new();
    quiet_partitions_then_bursts(&client, &server, &server.kafka.clone()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_archive_keeps_receiving_after_quiet_periods_on_a_real_broker() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = ExternalBroker::start(dir.path())?;
    broker.create_topic("orders", 4).await?;
    let config = config(dir.path(), Some(&broker.bootstrap), "")?;
    let text = std::fs::read_to_string(&config)?
        .replace("roll_interval = \"1s\"", "roll_interval = \"2s\"")
        .replace(
            "url = \"memory://\"",
            &format!("url = \"file://{}\"", dir.path().join("store").display()),
        );
    std::fs::write(&config, text)?;
    let server = TestServer::spawn(&run_args(&config), &[], dir.path(), Ready::Http)?;
    let client = reqwest::Client::new();
    quiet_partitions_then_bursts(&client, &server, &broker.bootstrap).await
}
