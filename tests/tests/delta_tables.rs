//! The archive as a Delta table, read by the tools users have while Tandem keeps writing: every
//! snapshot Python `deltalake` reads holds, per Kafka partition, exactly the offsets from 0 up
//! to some point (a prefix of what Tandem publishes: never a partial roll, never a row twice),
//! and once everything is archived its counts and sums per city equal DuckDB's over the
//! produced events, and `polars.read_delta` reads as many rows.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, ensure};
use rdkafka::producer::FutureRecord;
use tandem_tests::quarters::{TOPICS, event};
use tandem_tests::{RunFixture, eventually};

/// Per partition (rows, distinct offsets, smallest, largest), per city (rows, sum), and the
/// rows polars reads.
type Snapshot = (
    BTreeMap<String, (i64, i64, i64, i64)>,
    BTreeMap<String, (i64, f64)>,
    i64,
);

fn python() -> anyhow::Result<String> {
    std::env::var("TANDEM_PYTHON").context(
        "TANDEM_PYTHON (a Python with deltalake, polars and DuckDB) is not set: run ./scripts/test, which installs it",
    )
}

/// One snapshot of the table at `root`, as `deltalake` reads it.
fn read(root: &std::path::Path) -> anyhow::Result<Option<Snapshot>> {
    if !root.join("_delta_log").exists() {
        return Ok(None);
    }
    let script = r#"import json, sys, deltalake, duckdb, polars
t = deltalake.DeltaTable(sys.argv[1]).to_pyarrow_table()
q = lambda sql: duckdb.sql(sql).fetchall()
parts = {str(p): [n, d, lo, hi] for p, n, d, lo, hi in q("SELECT _kafka_partition, count(*), count(DISTINCT _kafka_offset), min(_kafka_offset), max(_kafka_offset) FROM t GROUP BY 1")}
cities = {c: [n, s] for c, n, s in q("SELECT city, count(*), sum(amount) FROM t GROUP BY 1")}
print(json.dumps([parts, cities, polars.read_delta(sys.argv[1]).height]))"#;
    let out = std::process::Command::new(python()?)
        .args(["-c", script, &root.display().to_string()])
        .output()?;
    ensure!(
        out.status.success(),
        "deltalake: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(Some(serde_json::from_slice(&out.stdout)?))
}

/// DuckDB over the produced events: per city, rows and the sum of amounts.
fn oracle(
    dir: &std::path::Path,
    events: &[String],
) -> anyhow::Result<BTreeMap<String, (i64, f64)>> {
    let path = dir.join("produced.jsonl");
    std::fs::write(&path, events.join("\n") + "\n")?;
    let script = r#"import json, sys, duckdb
rows = duckdb.sql(f"SELECT city, count(*), sum(amount) FROM read_json('{sys.argv[1]}', format = 'newline_delimited', columns = {{ts: 'BIGINT', city: 'VARCHAR', amount: 'DOUBLE'}}) GROUP BY 1").fetchall()
print(json.dumps({c: [n, s] for c, n, s in rows}))"#;
    let out = std::process::Command::new(python()?)
        .args(["-c", script, &path.display().to_string()])
        .output()?;
    ensure!(
        out.status.success(),
        "duckdb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Every partition's offsets are 0..n, each once.
fn is_prefix(parts: &BTreeMap<String, (i64, i64, i64, i64)>) -> bool {
    parts
        .values()
        .all(|(n, distinct, lo, hi)| n == distinct && *lo == 0 && *hi == n - 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_see_whole_rolls_while_tandem_writes_and_everything_at_the_end()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let fixture = RunFixture::new(dir.path(), TOPICS)?;
    let producer = fixture.producer()?;
    let server = fixture.start(&[])?;
    let root = fixture.store.join("archive/orders");
    let now = chrono::Utc::now().timestamp_millis();
    let base = now - 2 * 3_600_000;
    let total = 3_000;

    // Produced in ten bursts; a snapshot read after each (and while the archive rolls).
    let mut produced = Vec::new();
    let mut snapshots = 0;
    let mut seen = 0;
    for burst in 0..10 {
        let mut pending = Vec::new();
        for i in burst * total / 10..(burst + 1) * total / 10 {
            let (payload, ..) = event(i, base);
            let key = format!("k{}", i % 13);
            pending.push(
                producer
                    .send_result(FutureRecord::to("orders").key(&key).payload(&payload))
                    .map_err(|(e, _)| e)?,
            );
            produced.push(payload);
        }
        for p in pending {
            p.await?.map_err(|(e, _)| e)?;
        }
        // Read until the table has grown (the archive rolls every second); every snapshot read
        // on the way is checked.
        let grown = eventually(Duration::from_secs(30), || async {
            let (parts, _, height) = read(&root)?.context("no Delta table yet")?;
            ensure!(is_prefix(&parts), "a snapshot is not a prefix: {parts:?}");
            let rows: i64 = parts.values().map(|p| p.0).sum();
            ensure!(
                height == rows,
                "polars read {height} rows, deltalake {rows}"
            );
            ensure!(rows > seen, "still {rows} rows");
            Ok(rows)
        })
        .await?;
        seen = grown;
        snapshots += 1;
    }
    ensure!(
        snapshots == 10 && seen > 0,
        "{snapshots} snapshots, {seen} rows"
    );

    let want = oracle(dir.path(), &produced)?;
    ensure!(want.values().map(|v| v.0).sum::<i64>() == total, "{want:?}");
    eventually(Duration::from_secs(60), || async {
        let (parts, cities, height) = read(&root)?.context("no Delta table")?;
        ensure!(is_prefix(&parts), "{parts:?}");
        ensure!(height == total, "polars: {height} rows");
        ensure!(cities == want, "deltalake: {cities:?}\nDuckDB: {want:?}");
        Ok(())
    })
    .await?;
    let status = server.stop()?;
    ensure!(status.success(), "tandem exited with {status}");
    Ok(())
}
