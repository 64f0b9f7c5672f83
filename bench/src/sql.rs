//! The SQL part of `tandem-bench batch`: a rollup over a day of published one-minute windows,
//! and five archive queries in the style of ClickBench's (filters, group-bys, distinct, top-N)
//! through Tandem's `events` table, next to DuckDB over the same Parquet files.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use object_store::ObjectStore;
use tandem_batch_layer::ViewCatalog;
use tandem_serving::rollup::{self, Granularity, RolledRow};
use tandem_serving::seam::{FreshStates, ViewQuery};
use tandem_serving::sql::{SqlEngine, SqlLimits};
use tandem_shared::coverage::StartRange;
use tandem_shared::time::{EventTime, Span};
use tandem_shared::view::ViewDefinition;
use tandem_speed_layer::state::Partial;

use tandem::config::Config;

/// Runs of each query; the median is reported.
const RUNS: usize = 5;
/// Runs of the rollup (it is short); the median is reported.
const ROLLUP_RUNS: usize = 50;

/// A query as Tandem and DuckDB each spell it (`FILES` stands for DuckDB's file list).
pub(super) struct Query {
    pub(super) name: &'static str,
    pub(super) tandem: String,
    pub(super) duckdb: String,
}

/// The five archive queries over a day starting at `day` (epoch ms).
pub(super) fn archive_queries(day: i64) -> Vec<Query> {
    let at = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_default()
    };
    let (from, to) = (at(day + 6 * 3_600_000), at(day + 12 * 3_600_000));
    let both = |name, sql: String| Query {
        name,
        tandem: sql.replace("FROM FILES", "FROM events"),
        duckdb: sql.replace("FROM FILES", "FROM read_parquet(FILES)"),
    };
    vec![
        both(
            "q1 filtered count",
            "SELECT count(*) FROM FILES WHERE event_type = 'order_placed'".into(),
        ),
        both(
            "q2 group-by",
            "SELECT city, count(*) AS n, sum(amount), avg(amount) FROM FILES \
             GROUP BY city ORDER BY n DESC"
                .into(),
        ),
        both(
            "q3 distinct",
            "SELECT count(DISTINCT user_id) FROM FILES".into(),
        ),
        both(
            "q4 top-N",
            "SELECT user_id, count(*) AS c, sum(amount) AS s FROM FILES \
             GROUP BY user_id ORDER BY c DESC, s DESC LIMIT 10"
                .into(),
        ),
        Query {
            name: "q5 time range",
            tandem: format!(
                "SELECT city, event_type, count(*) AS n FROM events WHERE amount > 250 \
                 AND ts >= TIMESTAMP '{from}Z' AND ts < TIMESTAMP '{to}Z' \
                 GROUP BY city, event_type ORDER BY n DESC LIMIT 10"
            ),
            duckdb: format!(
                "SELECT city, event_type, count(*) AS n FROM read_parquet(FILES) WHERE amount > 250 \
                 AND ts >= TIMESTAMPTZ '{from}+00' AND ts < TIMESTAMPTZ '{to}+00' \
                 GROUP BY city, event_type ORDER BY n DESC LIMIT 10"
            ),
        },
    ]
}

/// The SQL rollup of a day of `orders_by_city` to one row per city (`at` writes a time).
pub(super) fn rollup_sql(day: i64, at: &dyn Fn(i64) -> String) -> String {
    format!(
        "SELECT city, sum(orders) AS orders, sum(revenue) AS revenue, min(min_amount), \
         max(max_amount) FROM orders_by_city WHERE window_start >= '{}' AND window_start < '{}' \
         GROUP BY city ORDER BY city",
        at(day),
        at(day + 86_400_000)
    )
}

/// Median seconds of `runs` runs of `sql` after one warm-up, and the answer's row count.
async fn timed(engine: &SqlEngine, sql: &str, runs: usize) -> anyhow::Result<(f64, usize)> {
    let rows = engine
        .query(sql)
        .await
        .with_context(|| format!("running {sql}"))?
        .rows();
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        engine.query(sql).await?;
        times.push(started.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok((times[runs / 2], rows))
}

/// Tandem's side: the rollup, printed, and each archive query's (name, median s, rows).
pub(super) async fn run(
    config: &Config,
    store: &Arc<dyn ObjectStore>,
    day: i64,
) -> anyhow::Result<Vec<(&'static str, f64, usize)>> {
    let catalog = Arc::new(ViewCatalog::new(Arc::clone(store), config.views.clone()));
    catalog.refresh_all().await?;
    let engine = SqlEngine::new(
        Arc::clone(&catalog),
        None,
        Arc::clone(store),
        &config.kafka.topic,
        Arc::new(config.schema.clone()),
        SqlLimits::default(),
    )
    .await?;
    let at = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_default()
    };
    let rollup = rollup_sql(day, &at);
    let windows = engine
        .query(&format!(
            "SELECT count(*) FROM orders_by_city WHERE window_start >= '{}' AND window_start < '{}'",
            at(day),
            at(day + 86_400_000)
        ))
        .await?;
    let (median, rows) = timed(&engine, &rollup, ROLLUP_RUNS).await?;
    println!(
        "SQL rollup of a day of orders_by_city ({} one-minute window rows) to one row per city: \
         p50 {:.1} ms over {ROLLUP_RUNS} runs, {rows} rows",
        tandem_serving::sql::render::json(&windows)?.rows[0][0],
        median * 1e3
    );
    rollups(&catalog, &engine, config, day).await?;
    let mut out = Vec::new();
    for q in archive_queries(day) {
        let (seconds, rows) = timed(&engine, &q.tandem, RUNS).await?;
        out.push((q.name, seconds, rows));
    }
    Ok(out)
}

/// The speed layer's side of a rollup in the bench: nothing (every window is published).
struct NoSpeed;

impl FreshStates for NoSpeed {
    fn fresh_states<'a>(
        &'a self,
        _: &'a str,
        _: StartRange,
    ) -> futures::future::BoxFuture<'a, Option<tandem_serving::seam::FreshRows<Partial>>> {
        Box::pin(std::future::ready(None))
    }
}

/// `GET /v1/views/{name}?granularity=` without HTTP: the median time of rolling a day of
/// `view` up to `granularity`, and the rolled rows.
async fn rollup(
    catalog: &ViewCatalog,
    view: &ViewDefinition,
    granularity: Granularity,
    day: i64,
) -> anyhow::Result<(f64, Vec<RolledRow>)> {
    let query = ViewQuery {
        view: view.name.clone(),
        range: StartRange::new(EventTime(day), EventTime(day + 86_400_000)),
        filters: Vec::new(),
    };
    let mut times = Vec::with_capacity(ROLLUP_RUNS);
    let mut rows = Vec::new();
    for _ in 0..=ROLLUP_RUNS {
        let started = Instant::now();
        let answer = rollup::states(catalog, &NoSpeed, view, &query).await?;
        rows = rollup::roll(view, granularity, query.range, answer.rows);
        times.push(started.elapsed().as_secs_f64());
    }
    times.remove(0); // the warm-up
    times.sort_by(f64::total_cmp);
    Ok((times[times.len() / 2], rows))
}

/// Rollups through the seam: a day of one-minute windows to hours and to the global window, and
/// a day of hourly distinct counts merged from the stored sketches, checked against the exact
/// count over the archive.
async fn rollups(
    catalog: &ViewCatalog,
    engine: &SqlEngine,
    config: &Config,
    day: i64,
) -> anyhow::Result<()> {
    let view = |name: &str| {
        config
            .views
            .iter()
            .find(|v| v.name == name)
            .with_context(|| format!("bench view {name}"))
    };
    let minutes = view("orders_by_city")?;
    for (label, g) in [
        ("1h", Granularity::Every(Span::from_millis(3_600_000))),
        ("all", Granularity::All),
    ] {
        let (median, rows) = rollup(catalog, minutes, g, day).await?;
        println!(
            "rollup granularity={label} of a day of orders_by_city: p50 {:.1} ms over \
             {ROLLUP_RUNS} runs, {} rows",
            median * 1e3,
            rows.len()
        );
    }
    let buyers = view("buyers_per_city")?;
    let (median, rows) = rollup(catalog, buyers, Granularity::All, day).await?;
    // The published hours: the rollup answers those (no speed layer here), so does the oracle.
    let published = catalog
        .get(&buyers.name)
        .and_then(|p| p.coverage.horizon())
        .context("buyers_per_city is not published")?
        .min(EventTime(day + 86_400_000));
    let exact = engine
        .query(&format!(
            "SELECT city, count(DISTINCT user_id) FROM events WHERE ts >= TIMESTAMP '{}' \
             AND ts < TIMESTAMP '{}' GROUP BY city",
            EventTime(day).to_rfc3339(),
            published.to_rfc3339()
        ))
        .await?;
    let exact: std::collections::BTreeMap<String, i64> = tandem_serving::sql::render::json(&exact)?
        .rows
        .iter()
        .filter_map(|r| Some((r[0].as_str()?.to_owned(), r[1].as_i64()?)))
        .collect();
    let mut worst: f64 = 0.0;
    for row in &rows {
        let city = row
            .group
            .first()
            .map(ToString::to_string)
            .unwrap_or_default();
        let (Some(estimate), Some(truth)) = (row.values[0].as_f64(), exact.get(&city)) else {
            anyhow::bail!("no estimate or exact count for {city}");
        };
        worst = worst.max((estimate - *truth as f64).abs() / *truth as f64);
    }
    println!(
        "rollup granularity=all of a day of buyers_per_city (hourly HyperLogLog sketches merged, \
         covering the published hours): p50 {:.1} ms, {} rows; largest relative error against \
         count(DISTINCT) over the same hours' events: {:.3}%",
        median * 1e3,
        rows.len(),
        worst * 100.0
    );
    Ok(())
}
