//! An object-store outage during archive rolls and during a recompute job loses nothing and
//! publishes nothing partial.
//!
//! The archive runs in-process against the embedded broker (a child process) over a
//! `FlakyStore`. While every write fails, rolls fail and are retried with the partition paused;
//! the published manifests do not move. After the outage every valid produced event is in the
//! archive exactly once, by Kafka partition and offset as the producer's delivery reports give
//! them. A job whose manifest publication fails publishes nothing; after the outage the same job
//! publishes rows equal to counts computed from the produced events.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type};
use object_store::ObjectStore;
use object_store::memory::InMemory;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tandem_batch_layer::recompute::{Recompute, Requested};
use tandem_batch_layer::{Archive, ArchiveConfig, ArchiveSnapshot, ViewCatalog};
use tandem_shared::clock::SystemClock;
use tandem_shared::coverage::StartRange;
use tandem_shared::error::ErrorKind;
use tandem_shared::event::EventDecoder;
use tandem_shared::schema::FieldType;
use tandem_shared::testing;
use tandem_shared::time::{EventTime, Span};
use tandem_shared::value::AggregateValue;
use tandem_store::fault::FlakyStore;
use tandem_tests::{S3Server, TestServer};
use tokio_util::sync::CancellationToken;

const M: i64 = 60_000;

/// Produces `n` events (`ts`, `qty`) from `first` on, one a second; returns (partition, offset,
/// ts, qty) of each.
async fn produce(
    producer: &FutureProducer,
    base: i64,
    first: i64,
    n: i64,
) -> Vec<(i32, i64, i64, i64)> {
    let mut pending = Vec::new();
    for i in first..first + n {
        let (ts, qty) = (base + i * 1_000, i % 7 + 1);
        let payload = format!(r#"{{"ts":{ts},"qty":{qty}}}"#);
        let key = format!("k{}", i % 13);
        let delivery = producer
            .send_result(FutureRecord::to("orders").key(&key).payload(&payload))
            .map_err(|(e, _)| e)
            .unwrap();
        pending.push((delivery, ts, qty));
    }
    let mut out = Vec::new();
    for (d, ts, qty) in pending {
        let delivery = d.await.unwrap().map_err(|(e, _)| e).unwrap();
        out.push((delivery.partition, delivery.offset, ts, qty));
    }
    out
}

/// Next offset of each partition's published manifest.
async fn published(store: &Arc<dyn ObjectStore>) -> BTreeMap<i32, i64> {
    ArchiveSnapshot::load(store, "orders")
        .await
        .unwrap()
        .partitions
        .iter()
        .map(|(p, m)| (*p, m.next_offset))
        .collect()
}

async fn wait_archived(store: &Arc<dyn ObjectStore>, produced: &[(i32, i64, i64, i64)]) {
    let mut want: BTreeMap<i32, i64> = BTreeMap::new();
    for (p, o, _, _) in produced {
        let e = want.entry(*p).or_insert(0);
        *e = (*e).max(o + 1);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = published(store).await;
        if want.iter().all(|(p, n)| now.get(p).is_some_and(|m| m >= n)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not archived: want {want:?}, have {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// (partition, offset) of every row the published manifests name.
async fn archived_rows(store: &Arc<dyn ObjectStore>) -> Vec<(i32, i64)> {
    let snapshot = ArchiveSnapshot::load(store, "orders").await.unwrap();
    let files = snapshot
        .files_between(store, EventTime::MIN, EventTime::MAX)
        .await
        .unwrap();
    let mut rows = Vec::new();
    for f in files {
        let bytes = tandem_store::object::read(store, &f.path).await.unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .unwrap()
            .build()
            .unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            let partitions = batch
                .column_by_name("_kafka_partition")
                .unwrap()
                .as_primitive::<Int32Type>();
            let offsets = batch
                .column_by_name("_kafka_offset")
                .unwrap()
                .as_primitive::<Int64Type>();
            for i in 0..batch.num_rows() {
                rows.push((partitions.value(i), offsets.value(i)));
            }
        }
    }
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_store_outage_loses_nothing_and_publishes_nothing_partial() {
    let dir = tempfile::tempdir().unwrap();
    outage_over(Arc::new(InMemory::new()), dir.path()).await;
}

/// The same over a real S3-compatible server: the outage is injected in front of it, and every
/// object that is written, read, listed and conditionally created goes to the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_in_front_of_s3_loses_nothing_and_publishes_nothing_partial() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::start(dir.path()).await.unwrap();
    let store = tandem_store::open(&s3.settings("outage")).unwrap();
    tandem_store::check_create_if_absent(store.as_ref(), "s3://tandem/outage")
        .await
        .unwrap();
    outage_over(store, dir.path()).await;
    let keys = s3.keys("outage/").await.unwrap();
    assert!(
        keys.iter()
            .any(|k| k.starts_with("outage/archive/orders/_manifest/"))
            && keys.iter().any(|k| k.starts_with("outage/views/sales/")),
        "the archive and the view are on the server: {keys:?}"
    );
}

async fn outage_over(inner: Arc<dyn ObjectStore>, dir: &std::path::Path) {
    let broker = TestServer::broker(&["orders:2"], dir).unwrap();
    let flaky = Arc::new(FlakyStore::new(inner));
    let store: Arc<dyn ObjectStore> = flaky.clone();
    let schema = testing::schema(&[("qty", FieldType::Int64)]);
    let config = ArchiveConfig {
        brokers: broker.kafka.clone(),
        topic: "orders".into(),
        group_id: "outage-archive".into(),
        roll_interval: Duration::from_millis(300),
        roll_bytes: 64 << 20,
        seal_files: 2,
        max_future: Span::from_millis(3_600_000),
        kafka_options: BTreeMap::new(),
        registry: None,
        progress: Default::default(),
    };
    let archive = Archive::new(
        config,
        Arc::clone(&store),
        Arc::new(EventDecoder::new(Arc::clone(&schema))),
        Arc::new(SystemClock),
    )
    .unwrap();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(archive.run(cancel.clone()));
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &broker.kafka)
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    let base = now - now.rem_euclid(M) - 2 * 3_600_000;

    // Before the outage: archived.
    let mut produced = produce(&producer, base, 0, 200).await;
    wait_archived(&store, &produced).await;
    let before = published(&store).await;

    // During a write outage rolls fail and are retried; nothing is published.
    flaky.start_write_outage("");
    produced.extend(produce(&producer, base, 200, 300).await);
    // Wait until rolls were attempted and failed more than once (so at least one retry ran
    // into the outage too), then nothing may have been published.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while flaky.failed_writes() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "no roll was attempted during the outage"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(published(&store).await, before, "no manifest moved");

    // After it: every event exactly once.
    flaky.end_write_outage();
    wait_archived(&store, &produced).await;
    let rows = archived_rows(&store).await;
    let archived: BTreeSet<(i32, i64)> = rows.iter().copied().collect();
    assert_eq!(archived.len(), rows.len(), "duplicate rows");
    let want: BTreeSet<(i32, i64)> = produced.iter().map(|(p, o, _, _)| (*p, *o)).collect();
    assert_eq!(archived, want);
    let snapshot = ArchiveSnapshot::load(&store, "orders").await.unwrap();
    assert!(
        snapshot.partitions.values().all(|m| !m.lists.is_empty()),
        "sealed lists were exercised"
    );
    cancel.cancel();
    task.await.unwrap();

    // A job whose publication fails publishes nothing.
    let view = testing::view(
        &schema,
        "sales",
        testing::tumbling("1m"),
        &[],
        None,
        &["count(*) AS n", "sum(qty) AS qty"],
    );
    let catalog = Arc::new(ViewCatalog::new(Arc::clone(&store), [view.clone()]));
    let recompute = Recompute::new(
        Arc::clone(&store),
        Arc::clone(&schema),
        "orders",
        Span::from_millis(1_000),
        Arc::clone(&catalog),
        Arc::new(SystemClock),
    );
    let never = CancellationToken::new();
    let run = || recompute.run_view(&view, Requested::default(), "outage-job", &never, &|_| {});
    flaky.start_write_outage("_manifest");
    let err = run().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
    assert_eq!(catalog.get("sales").unwrap().seq, None, "nothing published");
    let fresh = Arc::new(ViewCatalog::new(Arc::clone(&store), [view.clone()]));
    fresh.refresh_all().await.unwrap();
    assert_eq!(
        fresh.get("sales").unwrap().seq,
        None,
        "nothing in the store"
    );

    // After the outage the job publishes the exact answer.
    flaky.end_write_outage();
    let outcome = run().await.unwrap();
    let covered = outcome.covered.expect("windows are ready");
    let published = catalog.get("sales").unwrap();
    let rows = catalog
        .rows(&published, StartRange::new(EventTime::MIN, EventTime::MAX))
        .await
        .unwrap();
    let mut oracle: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
    for (_, _, ts, qty) in &produced {
        let start = ts - ts.rem_euclid(M);
        if covered.contains(EventTime(start)) {
            let e = oracle.entry(start).or_default();
            e.0 += 1;
            e.1 += qty;
        }
    }
    let answered: BTreeMap<i64, (i64, i64)> = rows
        .iter()
        .map(|r| {
            let int = |v: &AggregateValue| match v {
                AggregateValue::Int(i) => *i,
                other => panic!("not an integer: {other:?}"),
            };
            (
                r.window.start.millis(),
                (int(&r.values[0]), int(&r.values[1])),
            )
        })
        .collect();
    assert!(oracle.len() >= 5, "{} windows compared", oracle.len());
    assert_eq!(answered, oracle);
}
