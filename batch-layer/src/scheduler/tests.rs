//! The scheduler against a real recompute over an in-memory archive.

use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStore;
use object_store::memory::InMemory;
use tandem_shared::clock::SystemClock;
use tandem_shared::coverage::StartRange;
use tandem_shared::error::ErrorKind;
use tandem_shared::event::EventDecoder;
use tandem_shared::layout;
use tandem_shared::schema::{EventSchema, FieldType};
use tandem_shared::testing;
use tandem_shared::time::{EventTime, Span};
use tandem_shared::value::AggregateValue;
use tandem_shared::view::ViewDefinition;
use tandem_store::fault::FlakyStore;
use tandem_store::object;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::archive::import::import as seed_archive;
use crate::catalog::ViewCatalog;
use crate::recompute::{self, Requested};

const BASE: i64 = 1_795_255_200_000; // 2026-11-21T10:00:00Z
const M: i64 = 60_000;

fn schema() -> Arc<EventSchema> {
    testing::schema(&[("qty", FieldType::Int64), ("price", FieldType::Int64)])
}

fn view(filter: Option<&str>) -> ViewDefinition {
    testing::view(
        &schema(),
        "sales",
        testing::tumbling("1m"),
        &[],
        filter,
        &["count(*) AS n", "sum(qty) AS qty"],
    )
}

/// Archives `events` (ts, qty) on partition 0 starting at `offset`.
async fn archive(store: &Arc<dyn ObjectStore>, events: &[(i64, i64)], offset: i64) {
    let decoder = EventDecoder::new(schema());
    let json: Vec<String> = events
        .iter()
        .map(|(ts, qty)| format!(r#"{{"ts":{ts},"qty":{qty},"price":10}}"#))
        .collect();
    let batch = testing::batch(&decoder, 0, offset, &json);
    seed_archive(store, "orders", 1, &[(0, batch)])
        .await
        .unwrap();
}

fn scheduler(store: &Arc<dyn ObjectStore>, view: ViewDefinition) -> (Scheduler, Arc<ViewCatalog>) {
    let catalog = Arc::new(ViewCatalog::new(Arc::clone(store), [view]));
    let recompute = Arc::new(Recompute::new(
        Arc::clone(store),
        schema(),
        "orders",
        Span::from_millis(60_000),
        Arc::clone(&catalog),
        Arc::new(SystemClock),
    ));
    let config = SchedulerConfig {
        retry_backoff: Duration::from_millis(10),
        ..Default::default()
    };
    (Scheduler::new(recompute, config).unwrap(), catalog)
}

async fn wait_finished(s: &Scheduler, id: &str) -> JobRecord {
    for _ in 0..500 {
        if let Some(j) = s.job(id)
            && j.status.is_finished()
        {
            return j;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("job {id} did not finish: {:?}", s.job(id));
}

fn request(trigger: Trigger) -> JobRequest {
    JobRequest {
        view: None,
        from: None,
        to: None,
        trigger,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_expression_fails_the_job_at_once_and_its_record_survives_a_restart() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    // price / qty divides by zero on the second event: the user's filter fails on real data.
    archive(
        &store,
        &[(BASE, 1), (BASE + 1_000, 0), (BASE + 5 * M, 1)],
        0,
    )
    .await;
    let (s, catalog) = scheduler(&store, view(Some("price / qty > 1")));
    let cancel = CancellationToken::new();
    let running = tokio::spawn(s.clone().run(cancel.clone()));
    let job = s.submit(request(Trigger::Request)).unwrap();
    let done = wait_finished(&s, &job.id).await;
    assert_eq!(done.status, JobStatus::Failed);
    assert_eq!(done.attempts, 1, "a user's error is not retried");
    assert_eq!(done.error_kind, Some(ErrorKind::User));
    assert!(
        done.error
            .as_deref()
            .is_some_and(|e| e.to_lowercase().contains("divide by zero")),
        "{done:?}"
    );
    assert_eq!(
        catalog.get("sales").unwrap().seq,
        None,
        "a failed job publishes nothing"
    );
    cancel.cancel();
    running.await.unwrap();

    // A new process sees the record; a job that was queued is queued again.
    let mut pending = done.clone();
    pending.id = "01900000-0000-7000-8000-000000000000".into();
    pending.status = JobStatus::Queued;
    object::write(
        &store,
        &layout::job_record(&pending.id),
        serde_json::to_vec(&pending).unwrap(),
    )
    .await
    .unwrap();
    let (restarted, _) = scheduler(&store, view(Some("price / qty > 1")));
    assert_eq!(restarted.restore().await, 1);
    assert_eq!(restarted.job(&done.id).unwrap().status, JobStatus::Failed);
    assert_eq!(restarted.list(Some(JobStatus::Queued), None).len(), 1);

    // Retention: finished records older than the cutoff go, from the store and from memory;
    // a queued one stays whatever its age.
    let far = EventTime(i64::MAX / 2);
    assert_eq!(restarted.inner.book.collect(EventTime(0)).await, 0);
    assert_eq!(restarted.inner.book.collect(far).await, 1);
    assert!(restarted.job(&done.id).is_none());
    assert!(
        object::read(&store, &layout::job_record(&done.id))
            .await
            .is_err()
    );
    assert!(restarted.job(&pending.id).is_some());
    assert!(
        object::read(&store, &layout::job_record(&pending.id))
            .await
            .is_ok()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_store_failure_is_retried_until_the_job_succeeds() {
    let flaky = Arc::new(FlakyStore::new(Arc::new(InMemory::new())));
    let store: Arc<dyn ObjectStore> = flaky.clone();
    archive(&store, &[(BASE, 1), (BASE + 5 * M, 1)], 0).await;
    let (s, catalog) = scheduler(&store, view(None));
    let cancel = CancellationToken::new();
    tokio::spawn(s.clone().run(cancel.clone()));
    // The first two attempts fail reading the archive's manifest; the third succeeds.
    flaky.fail_reads(2);
    let job = s.submit(request(Trigger::Request)).unwrap();
    let done = wait_finished(&s, &job.id).await;
    assert_eq!(done.status, JobStatus::Succeeded, "{done:?}");
    assert_eq!(done.attempts, 3);
    assert_eq!(flaky.failing_reads(), 0);
    assert!(catalog.get("sales").unwrap().seq.is_some());

    // More failures than attempts: the job fails, marked transient.
    flaky.fail_reads(10);
    let job = s.submit(request(Trigger::Request)).unwrap();
    let done = wait_finished(&s, &job.id).await;
    assert_eq!(done.status, JobStatus::Failed);
    assert_eq!(done.attempts, 3);
    assert_eq!(done.error_kind, Some(ErrorKind::Transient));
    flaky.fail_reads(0);
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_job_publishes_nothing() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    archive(&store, &[(BASE, 1), (BASE + 5 * M, 1)], 0).await;
    let (s, catalog) = scheduler(&store, view(None));
    let recompute = Arc::clone(&s.inner.recompute);
    let cancelled = CancellationToken::new();
    cancelled.cancel();
    let result = recompute
        .run_view(&view(None), Requested::default(), "j", &cancelled, &|_| {})
        .await;
    assert!(matches!(result, Err(recompute::Error::Cancelled)));
    assert_eq!(catalog.get("sales").unwrap().seq, None);
    // Cancelled while queued: it never runs.
    let job = s.submit(request(Trigger::Request)).unwrap();
    assert_eq!(s.cancel(&job.id).unwrap().status, JobStatus::Cancelled);
    // A job queued after it, over a range without events (it publishes nothing): once it has
    // finished, the queue has handed the cancelled job to the loop before it.
    let after = s
        .submit(JobRequest {
            from: Some(EventTime(BASE - 2 * M)),
            to: Some(EventTime(BASE - M)),
            ..request(Trigger::Request)
        })
        .unwrap();
    let stop = CancellationToken::new();
    let running = tokio::spawn(s.clone().run(stop.clone()));
    wait_finished(&s, &after.id).await;
    // The loop is stopped and has waited for every job it took.
    stop.cancel();
    running.await.unwrap();
    assert_eq!(s.job(&job.id).unwrap().status, JobStatus::Cancelled);
    assert_eq!(s.job(&job.id).unwrap().attempts, 0, "it never ran");
    assert_eq!(catalog.get("sales").unwrap().seq, None);
    assert!(matches!(
        s.cancel(&job.id),
        Err(CancelError::Finished { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_runs_recompute_dirty_and_new_windows_only() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    // Minutes 0..5 with 2 events each; the archive is complete until minute 5 and a half.
    let first: Vec<(i64, i64)> = (0..6)
        .flat_map(|m| [(BASE + m * M, 1), (BASE + m * M + 30_000, 1)])
        .collect();
    archive(&store, &first, 0).await;
    let (s, catalog) = scheduler(&store, view(None));
    let stop = CancellationToken::new();
    tokio::spawn(s.clone().run(stop.clone()));
    let full = s.submit(request(Trigger::Request)).unwrap();
    assert_eq!(
        wait_finished(&s, &full.id).await.status,
        JobStatus::Succeeded
    );
    let published = catalog.get("sales").unwrap();
    assert_eq!(published.coverage.horizon(), Some(EventTime(BASE + 5 * M)));

    // A late event for minute 2 and new events up to minute 9 are archived.
    let later: Vec<(i64, i64)> = vec![(BASE + 2 * M + 10, 5), (BASE + 7 * M, 1), (BASE + 9 * M, 1)];
    archive(&store, &later, first.len() as i64).await;
    let job = s.submit(request(Trigger::Schedule)).unwrap();
    let done = wait_finished(&s, &job.id).await;
    assert_eq!(done.status, JobStatus::Succeeded, "{done:?}");
    let ranges: Vec<_> = done.views.iter().filter_map(|v| v.covered).collect();
    assert_eq!(
        ranges,
        [
            StartRange::new(EventTime(BASE + 2 * M), EventTime(BASE + 3 * M)),
            StartRange::new(EventTime(BASE + 5 * M), EventTime(BASE + 9 * M)),
        ],
        "only the dirty minute and the newly ready ones"
    );
    let published = catalog.get("sales").unwrap();
    let rows = catalog
        .rows(&published, StartRange::new(EventTime::MIN, EventTime::MAX))
        .await
        .unwrap();
    let minute2 = rows
        .iter()
        .find(|r| r.window.start == EventTime(BASE + 2 * M))
        .unwrap();
    assert_eq!(
        minute2.values,
        [AggregateValue::Int(3), AggregateValue::Int(7)]
    );
    assert_eq!(published.coverage.horizon(), Some(EventTime(BASE + 9 * M)));
    // Nothing is dirty any more.
    let again = s.submit(request(Trigger::Schedule)).unwrap();
    let again = wait_finished(&s, &again.id).await;
    assert!(again.views.iter().all(|v| v.covered.is_none()), "{again:?}");
    stop.cancel();
}

/// A job whose exact percentile (every value held) needs more than `batch.memory` fails cleanly
/// (retried as transient, nothing published) instead of growing the process; with room it
/// succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_past_its_memory_pool_fails_cleanly_and_publishes_nothing() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    // 200,000 quantities in one minute.
    let events: Vec<(i64, i64)> = (0..200_000).map(|i| (BASE + i % 50_000, i)).collect();
    archive(&store, &events, 0).await;
    archive(&store, &[(BASE + 10 * M, 1)], 200_000).await;
    let distinct = testing::view(
        &schema(),
        "sales",
        testing::tumbling("1m"),
        &[],
        None,
        &["percentile(qty, 0.5) AS median"],
    );
    let run = |memory: usize| {
        let store = Arc::clone(&store);
        let distinct = distinct.clone();
        async move {
            let catalog = Arc::new(ViewCatalog::new(Arc::clone(&store), [distinct]));
            let recompute = Arc::new(
                Recompute::new(
                    Arc::clone(&store),
                    schema(),
                    "orders",
                    Span::from_millis(60_000),
                    Arc::clone(&catalog),
                    Arc::new(SystemClock),
                )
                .with_memory(memory),
            );
            let config = SchedulerConfig {
                retry_backoff: Duration::from_millis(10),
                max_attempts: 2,
                ..Default::default()
            };
            let s = Scheduler::new(recompute, config).unwrap();
            let cancel = CancellationToken::new();
            tokio::spawn(s.clone().run(cancel.clone()));
            let job = s.submit(request(Trigger::Request)).unwrap();
            let done = wait_finished(&s, &job.id).await;
            cancel.cancel();
            (done, catalog)
        }
    };
    let (done, catalog) = run(256 << 10).await;
    assert_eq!(done.status, JobStatus::Failed, "{done:?}");
    assert_eq!(done.error_kind, Some(ErrorKind::Transient), "{done:?}");
    assert_eq!(done.attempts, 2, "retried, as memory may free up");
    assert!(
        done.error
            .as_deref()
            .is_some_and(|e| e.contains("esources")),
        "{done:?}"
    );
    assert_eq!(catalog.get("sales").unwrap().seq, None, "nothing published");
    let (done, catalog) = run(256 << 20).await;
    assert_eq!(done.status, JobStatus::Succeeded, "{done:?}");
    let rows = catalog
        .current_rows(
            "sales",
            StartRange::new(EventTime(BASE), EventTime(BASE + M)),
        )
        .await
        .unwrap();
    // The exact median of 0..200,000.
    assert_eq!(rows.len(), 1);
    assert!(
        matches!(rows[0].values[0], AggregateValue::Float(m) if (m - 99_999.5).abs() < 1e-9),
        "{:?}",
        rows[0].values
    );
}
