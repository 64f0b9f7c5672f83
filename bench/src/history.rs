//! `tandem-bench history`: is Tandem as fast on day 30 as on day 1?
//!
//! ```text
//!  per synthesized day: the day's order events ─► archive (import: hourly files per partition)
//!                       every minute: each demo view's results for the minute ─► catalog.publish
//!                       day closed ─► maintenance (real: late-row check, compaction, retention)
//!  after day 1 and day N: one more real job (recompute + publish of a minute), timed
//!                         a fresh serving process (this binary, --serve-only) loads the catalog
//!                         and answers random one-hour view queries: resident memory, p50, p99
//! ```
//!
//! The minute results are computed here rather than by one recompute per minute (86,400 a
//! day would take hours); they go through the same publication path a job's do. The archive
//! is written in hourly rolls: see BENCHMARKS.md for what that leaves out.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use arrow_array::{Float64Array, Int64Array, RecordBatch, StringArray};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tandem_batch_layer::ArchiveSnapshot;
use tandem_batch_layer::archive::import::{self, PartitionBatches};
use tandem_batch_layer::catalog::JobResult;
use tandem_batch_layer::recompute::Requested;
use tandem_serving::seam::{self, ViewQuery};
use tandem_shared::clock::SystemClock;
use tandem_shared::coverage::StartRange;
use tandem_shared::event::EventDecoder;
use tandem_shared::time::{EventTime, Span};
use tandem_speed_layer::SpeedLayer;
use tokio_util::sync::CancellationToken;

use super::measure::rss_mib;
use super::{CITIES, order_json};
use tandem::config::{self, Config};
use tandem::wiring;

const MINUTE: i64 = 60_000;
const DAY: i64 = 86_400_000;
const PARTITIONS: i32 = 8;
const TOPIC: &str = "orders";

/// Options of `tandem-bench history`.
#[derive(Debug, Clone)]
pub struct HistoryBench {
    pub days: u32,
    pub dir: PathBuf,
    pub events_per_minute: u32,
    pub queries: usize,
    /// Child mode: load the catalog under `dir`, answer queries, print one JSON line.
    pub serve_only: bool,
    /// Time five more jobs on an existing store, synthesizing nothing.
    pub publish_only: bool,
    /// The serving process's segment cache bound (`serving.cache_bytes`), in MiB; the
    /// configuration's default when `None`.
    pub cache_mib: Option<u64>,
}

fn config(dir: &std::path::Path) -> anyhow::Result<Config> {
    let mut config = Config::parse(config::DEMO, "demo")?;
    config.storage = tandem_store::StorageSettings::at(format!("file://{}", dir.display()));
    config.kafka.topic = TOPIC.into();
    Ok(config)
}

/// Minute results of both demo views, as the recompute query shapes them.
fn minute_batches(
    events: &[(i64, &str, &str, f64)],
    start: i64,
) -> anyhow::Result<BTreeMap<&'static str, RecordBatch>> {
    let end = start + MINUTE;
    // orders_by_city: count, sum, min, max, avg of placed orders per city.
    let mut cities: BTreeMap<&str, (i64, f64, f64, f64)> = BTreeMap::new();
    // events_by_type: count and sum per event type.
    let mut types: BTreeMap<&str, (i64, f64)> = BTreeMap::new();
    for (_, city, event_type, amount) in events {
        let t = types.entry(event_type).or_default();
        t.0 += 1;
        t.1 += amount;
        if *event_type == "order_placed" {
            let c = cities
                .entry(city)
                .or_insert((0, 0.0, f64::INFINITY, f64::NEG_INFINITY));
            c.0 += 1;
            c.1 += amount;
            c.2 = c.2.min(*amount);
            c.3 = c.3.max(*amount);
        }
    }
    let n = cities.len();
    let by_city = RecordBatch::try_from_iter([
        (
            "window_start",
            Arc::new(Int64Array::from(vec![start; n])) as _,
        ),
        ("window_end", Arc::new(Int64Array::from(vec![end; n])) as _),
        (
            "city",
            Arc::new(StringArray::from_iter_values(cities.keys())) as _,
        ),
        (
            "orders",
            Arc::new(Int64Array::from_iter_values(cities.values().map(|c| c.0))) as _,
        ),
        (
            "revenue",
            Arc::new(Float64Array::from_iter_values(cities.values().map(|c| c.1))) as _,
        ),
        (
            "min_amount",
            Arc::new(Float64Array::from_iter_values(cities.values().map(|c| c.2))) as _,
        ),
        (
            "max_amount",
            Arc::new(Float64Array::from_iter_values(cities.values().map(|c| c.3))) as _,
        ),
        (
            "avg_amount",
            Arc::new(Float64Array::from_iter_values(
                cities.values().map(|c| c.1 / c.0 as f64),
            )) as _,
        ),
    ])?;
    let n = types.len();
    let by_type = RecordBatch::try_from_iter([
        (
            "window_start",
            Arc::new(Int64Array::from(vec![start; n])) as _,
        ),
        ("window_end", Arc::new(Int64Array::from(vec![end; n])) as _),
        (
            "event_type",
            Arc::new(StringArray::from_iter_values(types.keys())) as _,
        ),
        (
            "events",
            Arc::new(Int64Array::from_iter_values(types.values().map(|t| t.0))) as _,
        ),
        (
            "amount",
            Arc::new(Float64Array::from_iter_values(types.values().map(|t| t.1))) as _,
        ),
    ])?;
    Ok(BTreeMap::from([
        ("orders_by_city", by_city),
        ("events_by_type", by_type),
    ]))
}

/// What a serving process measured.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Served {
    rss_mib: f64,
    load_ms: f64,
    p50_ms: f64,
    p99_ms: f64,
    queries: usize,
    rows: usize,
    /// What the segment cache holds at the end.
    cache_mib: f64,
}

/// Child mode: a fresh process loads the published views and answers one-hour queries.
async fn serve(opts: &HistoryBench) -> anyhow::Result<()> {
    let mut config = config(&std::fs::canonicalize(&opts.dir)?)?;
    if let Some(mib) = opts.cache_mib {
        config.serving.cache_bytes = tandem_shared::settings::ByteSize(usize::try_from(mib << 20)?);
    }
    let store = tandem_store::open(&config.storage)?;
    let started = Instant::now();
    let catalog = wiring::catalog(&config, &store);
    catalog.refresh_all().await?;
    let load_ms = started.elapsed().as_secs_f64() * 1e3;
    let schema = Arc::new(config.schema.clone());
    let speed = SpeedLayer::compile(&config.views, &schema)?;
    let horizon = config
        .views
        .iter()
        .filter_map(|v| catalog.get(&v.name)?.coverage.horizon())
        .min()
        .context("nothing published")?;
    let first = horizon.millis() - i64::from(opts.days) * DAY;
    let mut rng = StdRng::seed_from_u64(11);
    let mut latencies = Vec::with_capacity(opts.queries);
    let mut rows = 0;
    for i in 0..opts.queries {
        let view = &config.views[i % config.views.len()];
        let hour = rng.random_range(first / 3_600_000..horizon.millis() / 3_600_000);
        let from = EventTime(hour * 3_600_000);
        let query = ViewQuery {
            view: view.name.clone(),
            range: StartRange::new(from, from.saturating_add(Span::from_millis(3_600_000))),
            filters: Vec::new(),
        };
        let t = Instant::now();
        let answer = seam::answer(catalog.as_ref(), &speed, &query).await?;
        rows += answer.rows.len();
        let body = serde_json::to_vec(&tandem_serving::api::ViewRows::new(
            view, answer, None, None,
        ))?;
        latencies.push(t.elapsed().as_secs_f64() * 1e3);
        std::hint::black_box(body);
    }
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    let served = Served {
        rss_mib: rss_mib(),
        load_ms,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        queries: latencies.len(),
        rows,
        cache_mib: catalog.cache_usage().bytes as f64 / f64::from(1 << 20),
    };
    println!("{}", serde_json::to_string(&served)?);
    Ok(())
}

/// Five real jobs recomputing and publishing the minute at `minute` of the first view, timed
/// (milliseconds, sorted).
async fn publish_more(
    config: &Config,
    recompute: &tandem_batch_layer::recompute::Recompute,
    minute: i64,
    tag: &str,
) -> anyhow::Result<Vec<f64>> {
    let mut publish = Vec::new();
    let mut published = 0;
    for run in 0..5 {
        let view = &config.views[0];
        let t = Instant::now();
        let outcome = recompute
            .run_view(
                view,
                Requested {
                    from: Some(EventTime(minute)),
                    to: Some(EventTime(minute + MINUTE)),
                },
                &format!("{tag}-{run}"),
                &CancellationToken::new(),
                &|_| {},
            )
            .await?;
        publish.push(t.elapsed().as_secs_f64() * 1e3);
        published += outcome.windows_published;
    }
    anyhow::ensure!(
        published == 5,
        "the extra jobs published {published} windows, not 5"
    );
    publish.sort_by(f64::total_cmp);
    Ok(publish)
}

fn serve_in_child(opts: &HistoryBench) -> anyhow::Result<Served> {
    let exe = std::env::current_exe()?;
    let out = std::process::Command::new(exe)
        .args(["history", "--serve-only", "--dir"])
        .arg(&opts.dir)
        .args(["--days", &opts.days.to_string()])
        .args(["--queries", &opts.queries.to_string()])
        .args(
            opts.cache_mib
                .map(|mib| vec!["--cache-mib".to_owned(), mib.to_string()])
                .unwrap_or_default(),
        )
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "serving process failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8_lossy(&out.stdout);
    let line = line
        .lines()
        .last()
        .context("no output from the serving process")?;
    Ok(serde_json::from_str(line)?)
}

pub async fn run(opts: HistoryBench) -> anyhow::Result<()> {
    if opts.serve_only {
        return serve(&opts).await;
    }
    if opts.publish_only {
        let config = config(&std::fs::canonicalize(&opts.dir)?)?;
        let store = tandem_store::open(&config.storage)?;
        let catalog = wiring::catalog(&config, &store);
        catalog.refresh_all().await?;
        let recompute = wiring::recompute(&config, &store, &catalog, Arc::new(SystemClock));
        let horizon = catalog
            .get(&config.views[0].name)
            .and_then(|p| p.coverage.horizon())
            .context("nothing published")?;
        // The minute the full run times: half an hour before the last synthesized day's end.
        let day_end = horizon.millis() - horizon.millis().rem_euclid(DAY);
        let publish = publish_more(&config, &recompute, day_end - 30 * MINUTE, "more").await?;
        println!(
            "publish one more job {:.0} ms (median of 5; all: {publish:.1?})",
            publish[2]
        );
        return Ok(());
    }
    if opts.dir.exists() {
        std::fs::remove_dir_all(&opts.dir)
            .with_context(|| format!("clearing {}", opts.dir.display()))?;
    }
    std::fs::create_dir_all(&opts.dir)?;
    let dir = std::fs::canonicalize(&opts.dir)?;
    let config = config(&dir)?;
    let store = tandem_store::open(&config.storage)?;
    let schema = Arc::new(config.schema.clone());
    let decoder = EventDecoder::new(Arc::clone(&schema));
    let catalog = wiring::catalog(&config, &store);
    let recompute = wiring::recompute(&config, &store, &catalog, Arc::new(SystemClock));
    let now = chrono::Utc::now().timestamp_millis();
    let first_day = now - now.rem_euclid(DAY) - i64::from(opts.days + 1) * DAY;
    let retention = Span::from_millis(7 * DAY);
    let mut rng = StdRng::seed_from_u64(7);
    let mut batches = PartitionBatches::new(&decoder, PARTITIONS, 1024);
    let mut seq = 0u64;
    println!(
        "# tandem-bench history: {} days, {} events/minute, minute-by-minute publications of {} views",
        opts.days,
        opts.events_per_minute,
        config.views.len()
    );
    let mut report = Vec::new();
    let synthesis = Instant::now();
    for day in 0..i64::from(opts.days) {
        let day_start = first_day + day * DAY;
        // 1. The day's events, archived.
        let mut minutes: Vec<Vec<(i64, &str, &str, f64)>> = vec![Vec::new(); 1440];
        for m in 0..1440i64 {
            for _ in 0..opts.events_per_minute {
                let ts = day_start + m * MINUTE + rng.random_range(0..MINUTE);
                let city = CITIES[rng.random_range(0..CITIES.len())];
                let event_type = if rng.random_ratio(7, 10) {
                    "order_placed"
                } else {
                    "payment_captured"
                };
                let amount = (rng.random_range(100..50_000) as f64) / 100.0;
                let user = rng.random_range(0..100_000u32);
                let json = order_json(seq, ts, city, &format!("u-{user}"), amount, event_type);
                seq += 1;
                let event = decoder.decode(json.as_bytes()).context("generated event")?;
                batches.append(&event, (user % PARTITIONS as u32) as i32);
                minutes[m as usize].push((ts, city, event_type, amount));
            }
        }
        import::import(&store, TOPIC, PARTITIONS, &batches.finish()).await?;
        let offsets: BTreeMap<i32, i64> = ArchiveSnapshot::load(&store, TOPIC)
            .await?
            .partitions
            .iter()
            .map(|(p, m)| (*p, m.next_offset))
            .collect();
        // 2. Every minute, each view's results are published.
        for (m, events) in minutes.iter().enumerate() {
            let start = day_start + m as i64 * MINUTE;
            let results = minute_batches(events, start)?;
            for view in &config.views {
                let Some(batch) = results.get(view.name.as_str()) else {
                    continue;
                };
                catalog
                    .publish(
                        view,
                        JobResult {
                            table_offsets: Default::default(),
                            job: &format!("d{day}-m{m}"),
                            covered: StartRange::new(EventTime(start), EventTime(start + MINUTE)),
                            incomplete: Vec::new(),
                            held: Vec::new(),
                            batches: std::slice::from_ref(batch),
                            archive_offsets: offsets.clone(),
                            published_at: EventTime(start + 2 * MINUTE),
                        },
                    )
                    .await?;
            }
        }
        // 3. The day closes: maintenance as the scheduler runs it.
        let cleanliness = recompute.cleanliness().await?;
        let clean = |view: &str, range| cleanliness.clean(view, range);
        let done = catalog
            .maintain(EventTime(day_start + DAY + MINUTE), retention, 2, &clean)
            .await?;
        let n = day + 1;
        if n == 1 || n == i64::from(opts.days) {
            // One more job: recompute and publish the day's minute half an hour before its end (ready), for real.
            let last = day_start + DAY - 30 * MINUTE;
            let publish = publish_more(&config, &recompute, last, &format!("extra-{day}")).await?;
            let served = serve_in_child(&HistoryBench {
                days: u32::try_from(n).unwrap_or(1),
                ..opts.clone()
            })?;
            let segments: usize = config
                .views
                .iter()
                .filter_map(|v| catalog.get(&v.name))
                .map(|p| p.manifest.segments.len())
                .sum();
            println!(
                "day {n}: publish one more job {:.0} ms (median of 5); serving: {:.0} MiB resident, load {:.0} ms, one-hour query p50 {:.2} ms p99 {:.2} ms ({} queries); {segments} segments; synthesis so far {:.0}s; last maintenance {done:?}",
                publish[2],
                served.rss_mib,
                served.load_ms,
                served.p50_ms,
                served.p99_ms,
                served.queries,
                synthesis.elapsed().as_secs_f64(),
            );
            report.push((n, publish[2], served));
        }
    }
    if let (Some(first), Some(last)) = (report.first(), report.last()) {
        let ratio = |a: f64, b: f64| if a > 0.0 { b / a } else { 0.0 };
        println!(
            "day {} vs day {}: memory {:.2}x, publication {:.2}x, query p99 {:.2}x",
            last.0,
            first.0,
            ratio(first.2.rss_mib, last.2.rss_mib),
            ratio(first.1, last.1),
            ratio(first.2.p99_ms, last.2.p99_ms),
        );
    }
    Ok(())
}
