//! `tandem-bench batch`: recompute throughput next to DuckDB over the same Parquet files.
//!
//! Imports `--events` generated order events into a fresh archive (one day, 8 partitions, files
//! per partition and hour, written by the archive's own encoder), recomputes four views with
//! Tandem (DataFusion), then hands DuckDB (`scripts/duckdb_bench.py`) the equivalent SQL over the
//! same files, restricted to the windows Tandem published, and compares rows per second and
//! result sizes. Then SQL (`bench::sql`): a rollup of the published minutes, and five archive
//! queries through Tandem's `events` table next to DuckDB.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use object_store::ObjectStore;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tandem_batch_layer::archive::import::{self, PartitionBatches};
use tandem_batch_layer::recompute::Requested;
use tandem_shared::clock::SystemClock;
use tandem_shared::event::EventDecoder;
use tokio_util::sync::CancellationToken;

use super::{CITIES, ORDERS_BY_CITY, SCHEMA, order_json};
use tandem::config::Config;
use tandem::wiring;

/// Options of `tandem-bench batch`.
#[derive(Debug, Clone)]
pub struct BatchBench {
    pub events: u64,
    pub dir: PathBuf,
    /// Python interpreter with the `duckdb` package.
    pub python: String,
    /// The DuckDB side of the comparison (`scripts/duckdb_bench.py`).
    pub script: PathBuf,
}

const CONFIG: &str = r#"
[kafka]
topic = "bench"
idle_timeout = "1m"

[[views]]
name = "buyers_per_city"
window = { tumbling = "1h" }
group_by = ["city"]
aggregates = ["count(DISTINCT user_id) AS buyers"]

[[views]]
name = "revenue_hopping"
window = { hopping = "1h", every = "15m" }
group_by = ["event_type"]
aggregates = ["count(*) AS events", "sum(amount) AS revenue"]

[[views]]
name = "p95_by_city"
window = { tumbling = "1h" }
group_by = ["city"]
aggregates = ["percentile(amount, 0.95) AS p95"]
"#;

const PARTITIONS: i32 = 8;
const DAY: i64 = 86_400_000;

/// DuckDB SQL equivalent to each view, over `files`, for window starts in [from, to).
fn duckdb_sql(view: &str, files: &str, from: i64, to: i64) -> Option<String> {
    let t = "epoch_ms(ts)";
    // Every generated event time is after the epoch, so `t % slide` is the floor's remainder
    // (Tandem's planner makes the same simplification from the scan range).
    let ws = |slide: i64| format!("{t} - {t} % {slide}");
    Some(match view {
        "orders_by_city" => format!(
            "SELECT __ws, city, count(*), sum(amount), min(amount), max(amount), avg(amount) FROM \
             (SELECT *, {} AS __ws FROM read_parquet({files})) WHERE event_type = 'order_placed' \
             AND __ws >= {from} AND __ws < {to} GROUP BY __ws, city",
            ws(60_000)
        ),
        "buyers_per_city" => format!(
            "SELECT __ws, city, count(DISTINCT user_id) FROM (SELECT *, {} AS __ws FROM read_parquet({files})) \
             WHERE __ws >= {from} AND __ws < {to} GROUP BY __ws, city",
            ws(3_600_000)
        ),
        "revenue_hopping" => format!(
            "SELECT __ws, event_type, count(*), sum(amount) FROM (SELECT *, {} - h * 900000 AS __ws \
             FROM read_parquet({files}) CROSS JOIN (SELECT range AS h FROM range(4))) \
             WHERE __ws >= {from} AND __ws < {to} GROUP BY __ws, event_type",
            ws(900_000)
        ),
        "p95_by_city" => format!(
            "SELECT __ws, city, quantile_cont(amount, 0.95) FROM (SELECT *, {} AS __ws FROM read_parquet({files})) \
             WHERE __ws >= {from} AND __ws < {to} GROUP BY __ws, city",
            ws(3_600_000)
        ),
        _ => return None,
    })
}

/// Timed runs per view and engine; the median is reported.
const RUNS: usize = 5;

/// A day of generated order events imported into a fresh archive under `dir/store`.
pub(super) struct ImportedDay {
    pub(super) config: Config,
    pub(super) store: Arc<dyn ObjectStore>,
    /// The archive's Parquet files.
    pub(super) files: Vec<String>,
    /// The day's start (epoch ms).
    pub(super) base: i64,
}

/// The benchmark configuration (`orders_by_city` and three more views on the orders schema).
pub(super) fn config() -> anyhow::Result<Config> {
    Ok(Config::parse(
        &format!("{SCHEMA}{ORDERS_BY_CITY}{CONFIG}"),
        "bench",
    )?)
}

/// Imports `events` generated events (a day, 8 partitions) into a fresh store under `dir`, in
/// chunks so that memory stays bounded.
pub(super) async fn import_day(
    config: Config,
    dir: &std::path::Path,
    events: u64,
) -> anyhow::Result<ImportedDay> {
    let store_dir = dir.join("store");
    if store_dir.exists() {
        std::fs::remove_dir_all(&store_dir)
            .with_context(|| format!("clearing {}", store_dir.display()))?;
    }
    std::fs::create_dir_all(&store_dir)?;
    let store_dir = std::fs::canonicalize(&store_dir)?;
    let store = tandem_store::open(&tandem_store::StorageSettings::at(format!(
        "file://{}",
        store_dir.display()
    )))?;
    let schema = Arc::new(config.schema.clone());
    let decoder = EventDecoder::new(Arc::clone(&schema));
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(3);
    let base = 1_795_219_200_000; // 2026-11-21T00:00:00Z
    let chunk = 1_000_000u64;
    let mut batches = PartitionBatches::new(&decoder, PARTITIONS, chunk as usize / 8 + 1);
    let mut done = 0u64;
    while done < events {
        let n = chunk.min(events - done);
        for i in done..done + n {
            let ts = base + (i as i64 * DAY) / events as i64;
            let user = rng.random_range(0..200_000u32);
            let p = (user % PARTITIONS as u32) as i32;
            let event_type = if rng.random_ratio(7, 10) {
                "order_placed"
            } else {
                "payment_captured"
            };
            let city = CITIES[rng.random_range(0..CITIES.len())];
            let amount = rng.random_range(1.0..500.0f64);
            let json = order_json(i, ts, city, &format!("u-{user}"), amount, event_type);
            let event = decoder.decode(json.as_bytes()).context("generated event")?;
            batches.append(&event, p);
        }
        import::import(&store, "bench", PARTITIONS, &batches.finish()).await?;
        done += n;
    }
    let files: Vec<String> = walk(&store_dir.join("archive/bench"))
        .into_iter()
        .filter(|p| p.ends_with(".parquet"))
        .collect();
    let bytes: u64 = files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    println!(
        "imported {events} events into {} Parquet files ({:.1} MiB) in {:.1}s",
        files.len(),
        bytes as f64 / (1 << 20) as f64,
        started.elapsed().as_secs_f64()
    );
    Ok(ImportedDay {
        config,
        store,
        files,
        base,
    })
}

pub async fn run(opts: BatchBench) -> anyhow::Result<()> {
    // 1. Import a day of events.
    println!("# tandem-bench batch: {} events", opts.events);
    let ImportedDay {
        config,
        store,
        files,
        base,
    } = import_day(config()?, &opts.dir, opts.events).await?;

    // 2. Tandem recomputes every view.
    let catalog = wiring::catalog(&config, &store);
    let recompute = wiring::recompute(&config, &store, &catalog, Arc::new(SystemClock));
    let file_list = format!(
        "[{}]",
        files
            .iter()
            .map(|f| format!("'{f}'"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut spec = Vec::new();
    let mut tandem = Vec::new();
    for view in &config.views {
        // Warm the page cache the same way DuckDB's warm-up run does.
        recompute
            .run_view(
                view,
                Requested::default(),
                "warmup",
                &CancellationToken::new(),
                &|_| {},
            )
            .await?;
        let mut times = Vec::with_capacity(RUNS);
        let mut last = None;
        for run in 0..RUNS {
            let started = Instant::now();
            let outcome = recompute
                .run_view(
                    view,
                    Requested::default(),
                    &format!("bench-{run}"),
                    &CancellationToken::new(),
                    &|_| {},
                )
                .await?;
            times.push(started.elapsed().as_secs_f64());
            last = Some(outcome);
        }
        times.sort_by(f64::total_cmp);
        let seconds = times[RUNS / 2];
        let outcome = last.context("no run")?;
        let covered = outcome.covered.context("nothing was published")?;
        println!(
            "{}: query {} ms, publish {} ms",
            view.name, outcome.query_ms, outcome.publish_ms
        );
        tandem.push((
            view.name.clone(),
            seconds,
            outcome.rows_read,
            outcome.result_rows,
        ));
        if let Some(sql) = duckdb_sql(
            &view.name,
            &file_list,
            covered.from.millis(),
            covered.to.millis(),
        ) {
            spec.push(serde_json::json!({"view": view.name, "sql": sql}));
        }
    }

    // 3. SQL: a rollup over the published minutes, and archive queries through `events`.
    let sql_results = super::sql::run(&config, &store, base).await?;
    for q in super::sql::archive_queries(base) {
        spec.push(
            serde_json::json!({"view": q.name, "sql": q.duckdb.replace("FILES", &file_list)}),
        );
    }

    // 4. DuckDB over the same files and windows.
    let spec_path = opts.dir.join("duckdb-spec.json");
    std::fs::write(&spec_path, serde_json::to_vec(&spec)?)?;
    let output = Command::new(&opts.python)
        .arg(&opts.script)
        .arg(&spec_path)
        .output()
        .with_context(|| {
            format!(
                "running {} (is duckdb installed? see scripts/bench)",
                opts.python
            )
        })?;
    if !output.status.success() {
        bail!("duckdb failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    let duck: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout)?;
    println!(
        "| view | rows read | Tandem s | Tandem rows/s | DuckDB s | DuckDB rows/s | Tandem / DuckDB | result rows (Tandem, DuckDB) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (name, seconds, rows_read, result_rows) in tandem {
        let d = duck.iter().find(|d| d["view"] == name.as_str());
        let d_seconds = d.and_then(|d| d["seconds"].as_f64()).unwrap_or(f64::NAN);
        let d_rows = d.and_then(|d| d["rows"].as_u64()).unwrap_or(0);
        println!(
            "| {name} | {rows_read} | {seconds:.3} | {:.0} | {d_seconds:.3} | {:.0} | {:.2}x | {result_rows}, {d_rows} |",
            rows_read as f64 / seconds,
            rows_read as f64 / d_seconds,
            d_seconds / seconds,
        );
    }
    println!();
    println!(
        "| archive query (SQL) | Tandem s | DuckDB s | Tandem / DuckDB time | rows (Tandem, DuckDB) |"
    );
    println!("|---|---|---|---|---|");
    for (name, seconds, rows) in sql_results {
        let d = duck.iter().find(|d| d["view"] == name);
        let d_seconds = d.and_then(|d| d["seconds"].as_f64()).unwrap_or(f64::NAN);
        let d_rows = d.and_then(|d| d["rows"].as_u64()).unwrap_or(0);
        println!(
            "| {name} | {seconds:.3} | {d_seconds:.3} | {:.2}x | {rows}, {d_rows} |",
            seconds / d_seconds
        );
    }
    Ok(())
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p.display().to_string());
            }
        }
    }
    out
}
