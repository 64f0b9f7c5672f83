//! Exactly-once archive.
//!
//! Tandem is killed before, during and after a roll's file upload and manifest write (through
//! the `TANDEM_CRASH_AT` hook and SIGKILL) while events are produced. Afterwards the rows the
//! manifests name must be exactly the valid produced events, compared by Kafka partition and
//! offset as the producer's delivery reports give them: none lost, none duplicated. Files left by
//! interrupted rolls must be cleaned up. The fixture seals every roll's files into a file list
//! (`archive.seal_files = 1`), so the files are named by lists the manifests name. The archive's
//! Delta table (`archive/orders/_delta_log`), read by Python `deltalake` and `polars`, names the
//! same files and holds the same rows: a crash between a manifest and its Delta commit is
//! repaired when the partition is next loaded.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};
use tandem_tests::RunFixture;

/// Produces events `range` (every 50th malformed); returns (partition, offset, valid).
async fn produce(
    producer: &FutureProducer,
    base: i64,
    range: std::ops::Range<i64>,
) -> anyhow::Result<Vec<(i32, i64, bool)>> {
    let mut pending = Vec::new();
    for i in range {
        let valid = i % 50 != 49;
        let payload = if valid {
            json!({"ts": base + i * 100, "city": format!("c{}", i % 5), "amount": i}).to_string()
        } else {
            format!("not json {i}")
        };
        let key = format!("k{}", i % 31);
        let delivery = producer
            .send_result(FutureRecord::to("orders").key(&key).payload(&payload))
            .map_err(|(e, _)| e)?;
        pending.push((delivery, valid));
    }
    let mut out = Vec::new();
    for (d, valid) in pending {
        let delivery = d.await?.map_err(|(e, _)| e)?;
        out.push((delivery.partition, delivery.offset, valid));
    }
    Ok(out)
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// The newest manifest of each partition.
fn manifests(store: &Path) -> anyhow::Result<BTreeMap<i32, Value>> {
    let mut out = BTreeMap::new();
    let root = store.join("archive/orders/_manifest");
    let Ok(dirs) = std::fs::read_dir(&root) else {
        return Ok(out);
    };
    for dir in dirs.flatten() {
        let name = dir.file_name().to_string_lossy().into_owned();
        let partition: i32 = name.trim_start_matches('p').parse()?;
        let newest = files_under(&dir.path())
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .max();
        if let Some(path) = newest {
            out.insert(partition, serde_json::from_slice(&std::fs::read(path)?)?);
        }
    }
    Ok(out)
}

/// Waits until every partition's manifest has passed its last produced offset.
async fn wait_archived(
    store: &Path,
    produced: &[(i32, i64, bool)],
    timeout: Duration,
) -> anyhow::Result<BTreeMap<i32, Value>> {
    let mut want: BTreeMap<i32, i64> = BTreeMap::new();
    for (p, o, _) in produced {
        let e = want.entry(*p).or_insert(0);
        *e = (*e).max(o + 1);
    }
    let deadline = Instant::now() + timeout;
    loop {
        let m = manifests(store)?;
        let done = want.iter().all(|(p, next)| {
            m.get(p)
                .and_then(|m| m["next_offset"].as_i64())
                .is_some_and(|n| n >= *next)
        });
        if done {
            return Ok(m);
        }
        if Instant::now() > deadline {
            bail!("archive did not catch up: want {want:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A Delta table as read: its files, its rows' (partition, offset), and the row count
/// `polars.read_delta` reads.
type DeltaRead = (Vec<String>, Vec<(i32, i64)>, usize);

/// The Delta table at `root` as Python `deltalake` reads it.
fn delta_rows(root: &Path) -> anyhow::Result<DeltaRead> {
    let python = std::env::var("TANDEM_PYTHON").context(
        "TANDEM_PYTHON (a Python with deltalake and polars) is not set: run ./scripts/test, which installs it",
    )?;
    let script = "import json, sys, deltalake, polars\n\
t = deltalake.DeltaTable(sys.argv[1])\n\
a = t.to_pyarrow_table(columns=['_kafka_partition', '_kafka_offset']).to_pydict()\n\
print(json.dumps([t.file_uris(), list(zip(a['_kafka_partition'], a['_kafka_offset'])), polars.read_delta(sys.argv[1]).height]))";
    let out = std::process::Command::new(python)
        .args(["-c", script, &root.display().to_string()])
        .output()?;
    ensure!(
        out.status.success(),
        "deltalake: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_holds_every_valid_event_exactly_once_across_crashes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let fixture = RunFixture::new(dir.path(), &["orders:3", "orders.dlq:1", "orders.late:1"])?;
    let start = |env: &[(&str, &str)]| fixture.start(env);
    let store = fixture.store.clone();
    let producer = fixture.producer()?;
    let now = chrono::Utc::now().timestamp_millis();
    let base = now - 3 * 3_600_000; // three hours ago: files land in several hour directories
    let mut produced = Vec::new();

    // 1. A clean run, then SIGKILL after everything is archived (the Kafka commit may lag).
    let server = start(&[])?;
    produced.extend(produce(&producer, base, 0..1_000).await?);
    wait_archived(&store, &produced, Duration::from_secs(60)).await?;
    server.kill()?;

    // 2.-4. Crash at each step of a roll.
    let mut next = 1_000;
    for point in [
        "archive.before_files",
        "archive.after_files",
        "archive.after_list",
        "archive.after_manifest",
    ] {
        let mut server = start(&[("TANDEM_CRASH_AT", point)])?;
        produced.extend(produce(&producer, base, next..next + 500).await?);
        next += 500;
        server
            .wait_exit(Duration::from_secs(60))
            .await
            .with_context(|| point.to_owned())?;
    }
    let garbage_before = files_under(&store.join("archive/orders"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .count();

    // 5. SIGKILL while rolling.
    let server = start(&[])?;
    produced.extend(produce(&producer, base, next..next + 500).await?);
    next += 500;
    tokio::time::sleep(Duration::from_millis(700)).await;
    server.kill()?;

    // 6. A clean run archives the rest.
    let server = start(&[])?;
    produced.extend(produce(&producer, base, next..next + 500).await?);
    let manifests = wait_archived(&store, &produced, Duration::from_secs(90))
        .await
        .with_context(|| server.log())?;

    // Every row the manifests name (themselves or through their file lists), by (partition,
    // offset).
    let mut listed = BTreeSet::new();
    let mut lists = BTreeSet::new();
    let mut rows = Vec::new();
    for m in manifests.values() {
        let mut files: Vec<Value> = m["files"].as_array().context("files")?.clone();
        for list in m["lists"].as_array().into_iter().flatten() {
            let path = store.join(list["path"].as_str().context("list path")?);
            let sealed: Vec<Value> = serde_json::from_slice(&std::fs::read(&path)?)?;
            ensure!(
                sealed.len() as u64 == list["files"].as_u64().context("list files")?,
                "list {path:?} holds {} files",
                sealed.len()
            );
            lists.insert(path);
            files.extend(sealed);
        }
        for f in &files {
            let path = store.join(f["path"].as_str().context("path")?);
            listed.insert(path.clone());
            let reader =
                ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&path)?)?.build()?;
            for batch in reader {
                let batch = batch?;
                let partitions = batch
                    .column_by_name("_kafka_partition")
                    .context("partition column")?
                    .as_primitive::<Int32Type>();
                let offsets = batch
                    .column_by_name("_kafka_offset")
                    .context("offset column")?
                    .as_primitive::<Int64Type>();
                for i in 0..batch.num_rows() {
                    rows.push((partitions.value(i), offsets.value(i)));
                }
            }
        }
    }
    ensure!(lists.len() > 3, "the fixture seals every roll: {lists:?}");
    let archived: BTreeSet<(i32, i64)> = rows.iter().copied().collect();
    ensure!(
        archived.len() == rows.len(),
        "{} duplicate rows in the archive",
        rows.len() - archived.len()
    );
    let valid: BTreeSet<(i32, i64)> = produced
        .iter()
        .filter(|(_, _, v)| *v)
        .map(|(p, o, _)| (*p, *o))
        .collect();
    let missing: Vec<_> = valid.difference(&archived).take(10).collect();
    let extra: Vec<_> = archived.difference(&valid).take(10).collect();
    ensure!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, unexpected {extra:?}"
    );
    ensure!(
        valid.len() == 4_000 - 4_000 / 50,
        "{} valid events",
        valid.len()
    );

    // The Delta table: the same files, every row once (its commits may trail the manifests by
    // a moment).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let last = match delta_rows(&store.join("archive/orders")) {
            Ok((files, rows, polars)) => {
                let files: BTreeSet<PathBuf> = files.into_iter().map(PathBuf::from).collect();
                let set: BTreeSet<(i32, i64)> = rows.iter().copied().collect();
                if files == listed
                    && set.len() == rows.len()
                    && set == archived
                    && polars == rows.len()
                {
                    break;
                }
                format!(
                    "{} files (want {}), {} rows, {} distinct (want {}), polars {polars}",
                    files.len(),
                    listed.len(),
                    rows.len(),
                    set.len(),
                    archived.len()
                )
            }
            Err(err) => err.to_string(),
        };
        if Instant::now() > deadline {
            bail!("the Delta table does not match the manifests: {last}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Files of interrupted rolls are gone once the new owner has published.
    let unlisted: Vec<_> = files_under(&store.join("archive/orders"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "parquet") && !listed.contains(p))
        .collect();
    ensure!(
        unlisted.is_empty(),
        "garbage left: {unlisted:?} (there were {garbage_before} files before)"
    );
    let unnamed: Vec<_> = files_under(&store.join("archive/orders/_lists"))
        .into_iter()
        .filter(|p| !lists.contains(p))
        .collect();
    ensure!(
        unnamed.is_empty(),
        "file lists no manifest names: {unnamed:?}"
    );
    let status = server.stop()?;
    ensure!(status.success(), "tandem exited with {status}");
    Ok(())
}
