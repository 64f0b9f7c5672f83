//! `tandem-bench doors`: the SQL benchmark's queries through `POST /v1/sql` and through the
//! PostgreSQL protocol (psycopg), in the same run, and a large `events` scan through Arrow Flight
//! SQL (ADBC) next to JSON over HTTP.
//!
//! ```text
//!  a day of events (the batch bench's import) ─► orders_by_city published ─► one SQL engine
//!      ├► HTTP (the API's router, as `tandem run` serves it) ◄── reqwest, here
//!      └► PostgreSQL and Flight SQL doors ◄── psycopg and ADBC (`scripts/doors_bench.py`)
//! ```

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tandem_batch_layer::recompute::Requested;
use tandem_batch_layer::scheduler::Scheduler;
use tandem_serving::sql::{SqlEngine, SqlLimits};
use tandem_serving::{Access, AppState, Reconciler};
use tandem_shared::clock::SystemClock;
use tokio_util::sync::CancellationToken;

use tandem::{process, wiring};

use super::batch::{ImportedDay, config, import_day};

/// Options of `tandem-bench doors`.
#[derive(Debug, Clone)]
pub struct DoorsBench {
    pub events: u64,
    pub dir: PathBuf,
    /// Runs of each query (after one warm-up).
    pub runs: usize,
    /// Python with psycopg and the ADBC Flight SQL driver.
    pub python: String,
    /// The clients' side (`scripts/doors_bench.py`).
    pub script: PathBuf,
}

/// (p50, p99) in milliseconds of `times` (seconds).
fn percentiles(times: &mut [f64]) -> (f64, f64) {
    times.sort_by(f64::total_cmp);
    (
        super::measure::percentile(times, 0.5) * 1e3,
        super::measure::percentile(times, 0.99) * 1e3,
    )
}

pub async fn run(opts: DoorsBench) -> anyhow::Result<()> {
    println!("# tandem-bench doors: {} events", opts.events);
    let ImportedDay {
        mut config,
        store,
        base,
        ..
    } = import_day(config()?, &opts.dir, opts.events).await?;
    let catalog = wiring::catalog(&config, &store);
    let recompute = wiring::recompute(&config, &store, &catalog, Arc::new(SystemClock));
    let view = config
        .views
        .iter()
        .find(|v| v.name == "orders_by_city")
        .context("the bench's orders_by_city")?;
    recompute
        .run_view(
            view,
            Requested::default(),
            "doors",
            &CancellationToken::new(),
            &|_| {},
        )
        .await?;
    catalog.refresh_all().await?;
    // Large enough for the scan; the other limits as shipped.
    let limits = SqlLimits {
        timeout: Duration::from_secs(600),
        memory_bytes: 4 << 30,
        max_rows: opts.events as usize + 1,
        ..SqlLimits::default()
    };
    let engine = SqlEngine::new(
        Arc::clone(&catalog),
        None,
        Arc::clone(&store),
        &config.kafka.topic,
        Arc::new(config.schema.clone()),
        limits,
    )
    .await?;

    // HTTP as `tandem run` serves it, and the two doors, over the one engine.
    let cancel = CancellationToken::new();
    let speed = tandem_speed_layer::SpeedLayer::compile(&config.views, &config.schema)?;
    let scheduler = Scheduler::new(Arc::new(recompute), wiring::scheduler_config(&config))?;
    let reconciler = Reconciler::new(Arc::clone(&catalog), speed.clone());
    let state = AppState::new(
        catalog,
        speed,
        scheduler,
        reconciler,
        None,
        tandem_serving::Readiness::default(),
    )
    .with_sql(engine.clone());
    let mut policy = tandem_serving::HttpPolicy::default();
    policy.limits.request_timeout = Duration::from_secs(600);
    let (http, _server) = process::serve("127.0.0.1:0", state, &policy, cancel.clone()).await?;
    config.sql.postgres = Some("127.0.0.1:0".into());
    config.sql.flight = Some("127.0.0.1:0".into());
    let doors = tandem::doors::open(&config, &engine, &Access::open(), &cancel).await?;
    let (Some(postgres), Some(flight)) = (doors.postgres, doors.flight) else {
        bail!("the doors did not open");
    };

    let at = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_default()
    };
    let queries = [
        (
            "one-day rollup of orders_by_city",
            super::sql::rollup_sql(base, &at),
        ),
        (
            "archive q2 group-by",
            super::sql::archive_queries(base)
                .into_iter()
                .find(|q| q.name.starts_with("q2"))
                .context("q2")?
                .tandem,
        ),
    ];
    let scan = format!("SELECT * FROM events LIMIT {}", opts.events.min(1_000_000));

    // POST /v1/sql (JSON), timed here.
    let client = reqwest::Client::new();
    let post = |sql: String| {
        let client = client.clone();
        let url = format!("http://{http}/v1/sql");
        async move {
            let started = Instant::now();
            let response = client.post(url).json(&json!({ "sql": sql })).send().await?;
            let status = response.status();
            let body = response.bytes().await?;
            if !status.is_success() {
                bail!("{status}: {}", String::from_utf8_lossy(&body));
            }
            Ok::<_, anyhow::Error>((started.elapsed().as_secs_f64(), body.len()))
        }
    };
    let mut http_times = Vec::new();
    for (_, sql) in &queries {
        post(sql.clone()).await?;
        let mut times = Vec::with_capacity(opts.runs);
        for _ in 0..opts.runs {
            times.push(post(sql.clone()).await?.0);
        }
        http_times.push(percentiles(&mut times));
    }
    post(scan.clone()).await?;
    let (http_scan, http_bytes) = post(scan.clone()).await?;

    // psycopg and ADBC, timed by the clients' script.
    let args = json!({
        "postgres": postgres.to_string(),
        "flight": flight.to_string(),
        "runs": opts.runs,
        "queries": queries.iter().map(|(name, sql)| json!([name, sql])).collect::<Vec<_>>(),
        "scan": scan,
    });
    let output = Command::new(&opts.python)
        .arg(&opts.script)
        .arg(args.to_string())
        .output()
        .with_context(|| format!("running {} (see scripts/bench)", opts.python))?;
    if !output.status.success() {
        bail!(
            "{}: {}",
            opts.script.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let clients: Value = serde_json::from_slice(&output.stdout)?;

    println!("| query | POST /v1/sql p50 ms | p99 ms | psycopg p50 ms | p99 ms | runs |");
    println!("|---|---|---|---|---|---|");
    for ((name, _), (p50, p99)) in queries.iter().zip(&http_times) {
        let mut times: Vec<f64> = clients["psycopg"][name]
            .as_array()
            .context("psycopg times")?
            .iter()
            .filter_map(Value::as_f64)
            .collect();
        let (pg50, pg99) = percentiles(&mut times);
        println!(
            "| {name} | {p50:.1} | {p99:.1} | {pg50:.1} | {pg99:.1} | {} |",
            opts.runs
        );
    }
    let rows = clients["scan_rows"].as_f64().unwrap_or(f64::NAN);
    println!();
    println!("| `{scan}` | seconds | rows/s |");
    println!("|---|---|---|");
    for (door, seconds) in [
        (
            format!(
                "JSON over HTTP ({:.0} MiB)",
                http_bytes as f64 / (1 << 20) as f64
            ),
            http_scan,
        ),
        (
            "Flight SQL (ADBC, Arrow)".to_owned(),
            clients["adbc_scan"].as_f64().unwrap_or(f64::NAN),
        ),
        (
            "PostgreSQL (psycopg, text)".to_owned(),
            clients["psycopg_scan"].as_f64().unwrap_or(f64::NAN),
        ),
    ] {
        println!("| {door} | {seconds:.2} | {:.0} |", rows / seconds);
    }
    cancel.cancel();
    doors.closed().await;
    Ok(())
}
