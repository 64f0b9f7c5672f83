//! `tandem-bench load`: view queries under ingestion, and ingestion under view queries.
//!
//! ```text
//!  producer thread ──(--rate events/s)──► embedded broker (child process)
//!                                             │
//!  this process: speed layer ◄── consume ─────┘      HTTP API (as `tandem run` serves it)
//!                                                       ▲
//!  `tandem-bench query-load` (child process) ──(--queries/s, one-hour range, one city)──┘
//! ```
//!
//! Two phases of `--seconds` each at the same event rate: first without queries (idle), then
//! with a separate load process sending `--queries` view queries per second, open loop (each
//! query has a scheduled start; its latency counts from then, so a slow answer delays no later
//! query's measurement). Ingestion is measured in this process by the speed layer's consumed
//! offsets: events per second consumed in each phase, and the backlog (produced but not yet
//! consumed) at the end of each.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::harness::{CONFIG, on_topic, spawn_broker};
use super::measure::percentile;
use super::producers::{SteadyLoad, steady_load};
use super::speed::serve_speed;
use super::{CITIES, ORDERS_BY_CITY, SCHEMA};
use tandem::config::Config;

/// Options of `tandem-bench load`.
#[derive(Debug, Clone)]
pub struct LoadBench {
    /// Events per second produced in both phases.
    pub rate: u64,
    /// Queries per second in the loaded phase.
    pub queries: u64,
    pub seconds: u64,
    /// Concurrent connections of the load process.
    pub connections: usize,
}

/// Options of the load process (`tandem-bench query-load`).
#[derive(Debug, Clone)]
pub struct QueryLoad {
    /// The view's URL (`http://HOST:PORT/v1/views/NAME`).
    pub url: String,
    pub queries: u64,
    pub seconds: u64,
    pub connections: usize,
}

/// What the load process reports, as one JSON line.
#[derive(Debug, Serialize, Deserialize)]
struct LoadReport {
    sent: u64,
    failed: u64,
    seconds: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

/// Ingestion over one phase.
#[derive(Debug)]
struct Ingestion {
    consumed_per_second: f64,
    backlog: i64,
}

async fn phase(
    speed: &tandem_speed_layer::SpeedLayer,
    load: &SteadyLoad,
    seconds: u64,
) -> Ingestion {
    let (c0, t0) = (speed.consumed(), Instant::now());
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let consumed = speed.consumed();
    Ingestion {
        consumed_per_second: (consumed - c0) as f64 / t0.elapsed().as_secs_f64(),
        backlog: load.sent() as i64 - consumed,
    }
}

/// Runs the benchmark and prints its report.
pub async fn run(opts: LoadBench) -> anyhow::Result<()> {
    let config = Config::parse(&format!("{CONFIG}{SCHEMA}{ORDERS_BY_CITY}"), "bench")?;
    let (mut broker, brokers) = spawn_broker(&["live:8", "bench.dlq:1", "bench.late:1"])?;
    println!(
        "# tandem-bench load: {} events/s; {} s idle, then {} s with {} queries/s over {} connections from a separate process",
        opts.rate, opts.seconds, opts.seconds, opts.queries, opts.connections
    );
    let result = measure(&config, &brokers, &opts).await;
    let _ = broker.kill();
    let _ = broker.wait();
    result
}

async fn measure(config: &Config, brokers: &str, opts: &LoadBench) -> anyhow::Result<()> {
    let config = on_topic(config, brokers, "live");
    let cancel = CancellationToken::new();
    let (addr, speed, task) = serve_speed(&config, &cancel).await?;
    let load = steady_load(brokers, "live", opts.rate)?;
    // Let the consumer join and a few windows fill.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle = phase(&speed, &load, opts.seconds).await;
    println!(
        "idle: {:.0} events/s consumed, backlog {} events at the end",
        idle.consumed_per_second, idle.backlog
    );

    let mut child = Command::new(std::env::current_exe()?)
        .args(["query-load"])
        .args(["--url", &format!("http://{addr}/v1/views/orders_by_city")])
        .args(["--queries", &opts.queries.to_string()])
        .args(["--seconds", &opts.seconds.to_string()])
        .args(["--connections", &opts.connections.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting the load process")?;
    let loaded = phase(&speed, &load, opts.seconds).await;
    let output = tokio::task::spawn_blocking(move || {
        let stdout = child.stdout.take();
        let status = child.wait();
        (stdout, status)
    })
    .await?;
    let sent = load.stop();
    cancel.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
    let (Some(mut stdout), status) = output else {
        bail!("the load process has no output");
    };
    let mut text = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut text)?;
    if !status?.success() {
        bail!("the load process failed: {text}");
    }
    let report: LoadReport = serde_json::from_str(text.trim().lines().last().unwrap_or(""))
        .with_context(|| format!("load process output: {text}"))?;
    println!(
        "loaded: {:.0} events/s consumed, backlog {} events at the end ({sent} events produced in all)",
        loaded.consumed_per_second, loaded.backlog
    );
    println!(
        "queries: {} sent in {:.1}s ({:.0}/s), {} failed; latency from scheduled start: p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms",
        report.sent,
        report.seconds,
        report.sent as f64 / report.seconds,
        report.failed,
        report.p50_ms,
        report.p99_ms,
        report.max_ms
    );
    println!(
        "ingestion under query load: {:.1}% of idle",
        100.0 * loaded.consumed_per_second / idle.consumed_per_second
    );
    Ok(())
}

/// The load process: `queries` per second over `connections` for `seconds`, then one JSON line.
pub async fn query_load(opts: QueryLoad) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(opts.connections)
        .build()?;
    let per_connection = opts.queries as f64 / opts.connections.max(1) as f64;
    let interval = Duration::from_secs_f64(1.0 / per_connection.max(0.001));
    let start = tokio::time::Instant::now();
    let end = start + Duration::from_secs(opts.seconds);
    let mut tasks = Vec::new();
    for c in 0..opts.connections {
        let client = client.clone();
        let url = opts.url.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut failed = 0u64;
            // Connections start spread over one interval.
            let mut next = start + interval.mul_f64(c as f64 / opts.connections as f64);
            let mut n = c;
            while next < end {
                tokio::time::sleep_until(next).await;
                let now = chrono::Utc::now().timestamp_millis();
                let city = CITIES[n % CITIES.len()];
                let query = [
                    ("from", (now - 3_600_000).to_string()),
                    ("to", now.to_string()),
                    ("city", city.to_owned()),
                ];
                let ok = match client.get(&url).query(&query).send().await {
                    Ok(response) if response.status().is_success() => {
                        response.bytes().await.is_ok()
                    }
                    _ => false,
                };
                if ok {
                    latencies.push(next.elapsed().as_secs_f64() * 1000.0);
                } else {
                    failed += 1;
                }
                next += interval;
                n += opts.connections;
            }
            (latencies, failed)
        }));
    }
    let mut latencies = Vec::new();
    let mut failed = 0;
    for t in tasks {
        let (l, f) = t.await?;
        latencies.extend(l);
        failed += f;
    }
    let seconds = start.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let report = LoadReport {
        sent: latencies.len() as u64 + failed,
        failed,
        seconds,
        p50_ms: percentile(&latencies, 0.5),
        p99_ms: percentile(&latencies, 0.99),
        max_ms: latencies.last().copied().unwrap_or(f64::NAN),
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
