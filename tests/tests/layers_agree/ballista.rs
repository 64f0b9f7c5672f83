//! The batch layer on Apache DataFusion Ballista: every view of the oracle test recomputed on
//! Ballista agrees with the oracle exactly as the in-process engine does, and with the
//! in-process engine's published rows. Twice: on a standalone scheduler and executor started in
//! this process from Tandem's session state, and on a cluster of Tandem's own scheduler and
//! executor (what `tandem ballista scheduler|executor` run), each with its own object store
//! over the same directory, as separate processes would have. Built only with the `ballista`
//! feature.

use std::path::Path;

use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use object_store::local::LocalFileSystem;
use tandem_batch_layer::recompute::Engine;
use tandem_batch_layer::recompute::ballista::{
    ExecutorSettings, Scheduler, SchedulerSettings, run_executor,
};
use tandem_shared::row::ViewRow;

use crate::*;

/// Every case's coverage and published rows, recomputed on `engine` over the archive in `store`.
async fn published(
    engine: Engine,
    store: Arc<dyn ObjectStore>,
    schema: &Arc<EventSchema>,
    cases: &[Case],
) -> BTreeMap<String, (Coverage, Vec<ViewRow>)> {
    let views: Vec<ViewDefinition> = cases.iter().map(|c| c.view.clone()).collect();
    let catalog = Arc::new(ViewCatalog::new(Arc::clone(&store), views.clone()));
    let recompute = recompute(&store, schema, &catalog).with_engine(engine);
    let mut out = BTreeMap::new();
    for view in &views {
        let outcome = recompute
            .run_view(
                view,
                Requested::default(),
                &format!("job-{}", view.name),
                &CancellationToken::new(),
                &|_| {},
            )
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", view.name));
        assert!(
            outcome.covered.is_some(),
            "{}: some windows are ready",
            view.name
        );
        let published = catalog.get(&view.name).unwrap();
        out.insert(
            view.name.clone(),
            (
                published.coverage.clone(),
                catalog.rows(&published, ALL).await.unwrap(),
            ),
        );
    }
    out
}

/// Ballista's answers equal the oracle and the in-process engine's.
fn assert_agree(
    engine: &str,
    cases: &[Case],
    remote: &BTreeMap<String, (Coverage, Vec<ViewRow>)>,
    local: &BTreeMap<String, (Coverage, Vec<ViewRow>)>,
) {
    for case in cases {
        let name = &case.view.name;
        let (covered, rows) = &remote[name];
        // The oracle's windows the publication covers (per group for session views).
        let want: Oracle = case
            .oracle
            .iter()
            .filter(|((start, g), _)| covered.covers(g, EventTime(*start)))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let n = compare(name, "batch", rows, &want, None);
        assert!(n >= 10, "{name}: only {n} windows compared on {engine}");
        let (local_covered, local_rows) = &local[name];
        assert_eq!(covered, local_covered, "{name} on {engine}: coverage");
        let keys = |rows: &[ViewRow]| {
            rows.iter()
                .map(|r| (r.window, r.group.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            keys(rows),
            keys(local_rows),
            "{name} on {engine}: windows and groups"
        );
        // Float sums may differ in their last bits (both engines add in parallel); integers and
        // everything else must be equal.
        for (a, b) in rows.iter().zip(local_rows) {
            for (x, y) in a.values.iter().zip(&b.values) {
                match (x, y) {
                    (AggregateValue::Float(x), AggregateValue::Float(y)) => {
                        assert!(
                            (x - y).abs() <= 1e-9 * y.abs().max(1.0),
                            "{name} on {engine}: {x} vs {y}"
                        )
                    }
                    _ => assert_eq!(x, y, "{name} on {engine}"),
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recomputing_on_ballista_equals_the_in_process_engine_and_the_oracle() {
    let events = events(4_000);
    let schema = schema();
    let cases = cases(&events);
    let (_, store) = archived(&schema, &events).await;
    let local = published(Engine::DataFusion, store, &schema, &cases).await;
    let (_, store) = archived(&schema, &events).await;
    let remote = published(Engine::Ballista { url: None }, store, &schema, &cases).await;
    assert_agree("standalone Ballista", &cases, &remote, &local);
}

/// A store of its own over `dir`, as another process would open it.
fn directory_store(dir: &Path) -> Arc<dyn ObjectStore> {
    Arc::new(LocalFileSystem::new_with_prefix(dir).unwrap())
}

/// Copies every object of `from` into `to`.
async fn copy(from: &Arc<dyn ObjectStore>, to: &Arc<dyn ObjectStore>) {
    let objects: Vec<_> = from.list(None).try_collect().await.unwrap();
    assert!(!objects.is_empty());
    for meta in objects {
        let bytes = from
            .get(&meta.location)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        to.put(&meta.location, bytes.into()).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recomputing_on_tandems_scheduler_and_executor_equals_the_oracle() {
    let events = events(4_000);
    let schema = schema();
    let cases = cases(&events);
    let (_, archive) = archived(&schema, &events).await;
    let local = published(Engine::DataFusion, Arc::clone(&archive), &schema, &cases).await;

    // The archive in a directory that the batch process, the scheduler and the executor each
    // open on their own.
    let dir = tempfile::tempdir().unwrap();
    copy(&archive, &directory_store(dir.path())).await;

    let cancel = CancellationToken::new();
    let scheduler = Scheduler::bind(
        &SchedulerSettings {
            bind: "127.0.0.1:0".parse().unwrap(),
            external_host: "127.0.0.1".into(),
        },
        directory_store(dir.path()),
    )
    .await
    .unwrap();
    let url = scheduler.url().unwrap();
    let scheduler_port = scheduler.addr().unwrap().port();
    let serving = tokio::spawn(scheduler.serve(cancel.clone()));
    let flight_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let work = tempfile::tempdir().unwrap();
    let settings = ExecutorSettings {
        scheduler_host: "127.0.0.1".into(),
        scheduler_port,
        bind_host: "127.0.0.1".into(),
        external_host: "127.0.0.1".into(),
        flight_port,
        concurrent_tasks: 2,
        work_dir: Some(work.path().to_owned()),
        connect_timeout_seconds: 10,
    };
    let executor_store = directory_store(dir.path());
    let executor_cancel = cancel.clone();
    let executing =
        tokio::spawn(async move { run_executor(&settings, executor_store, executor_cancel).await });

    let remote = published(
        Engine::Ballista { url: Some(url) },
        directory_store(dir.path()),
        &schema,
        &cases,
    )
    .await;
    assert_agree("Tandem's Ballista cluster", &cases, &remote, &local);

    // Both processes were still up (a failure to start would have ended them early).
    assert!(!serving.is_finished() && !executing.is_finished());
    cancel.cancel();
    serving.await.unwrap().unwrap();
    executing.await.unwrap().unwrap();
}

/// A child process killed when the test ends, whatever the outcome.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The same cluster as above, as `tandem ballista scheduler` and `tandem ballista executor`
/// processes (the `tandem` binary built with the `ballista` feature), reading the archive from
/// the store their configuration names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recomputing_on_tandem_ballista_processes_equals_the_oracle() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let events = events(4_000);
    let schema = schema();
    let cases = cases(&events);
    let (_, archive) = archived(&schema, &events).await;
    let local = published(Engine::DataFusion, Arc::clone(&archive), &schema, &cases).await;
    let dir = tempfile::tempdir().unwrap();
    copy(&archive, &directory_store(dir.path())).await;
    // What the processes read of it is `[storage]`; the rest only has to be valid.
    let config = dir.path().join("tandem.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\ntopic = \"orders\"\n\n[storage]\nurl = \"file://{}\"\n\n[schema]\n\
             time_field = \"ts\"\nfields = {{ city = \"string\" }}\n\n[[views]]\n\
             name = \"n\"\nwindow = {{ tumbling = \"1m\" }}\naggregates = [\"count(*) AS n\"]\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let tandem = tandem_tests::tandem_binary().unwrap();

    let mut scheduler = Child(
        Command::new(&tandem)
            .args(["ballista", "scheduler", "--config"])
            .arg(&config)
            .args(["--bind", "127.0.0.1:0", "--external-host", "127.0.0.1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(scheduler.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("Ballista scheduler: ")
        .unwrap_or_else(|| {
            panic!("the scheduler printed {line:?} (is `tandem` built with `--features ballista`?)")
        })
        .to_owned();
    let scheduler_port = url.rsplit_once(':').unwrap().1.to_owned();
    let flight_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let work = tempfile::tempdir().unwrap();
    let mut executor = Child(
        Command::new(&tandem)
            .args(["ballista", "executor", "--config"])
            .arg(&config)
            .args(["--scheduler", &format!("127.0.0.1:{scheduler_port}")])
            .args(["--bind-host", "127.0.0.1", "--external-host", "127.0.0.1"])
            .args([
                "--port",
                &flight_port.to_string(),
                "--concurrent-tasks",
                "2",
            ])
            .arg("--work-dir")
            .arg(work.path())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );

    let remote = published(
        Engine::Ballista { url: Some(url) },
        directory_store(dir.path()),
        &schema,
        &cases,
    )
    .await;
    assert_agree("tandem ballista processes", &cases, &remote, &local);
    // Both processes were still up: the plans ran on them, not on a fallback.
    assert!(
        scheduler.0.try_wait().unwrap().is_none(),
        "scheduler exited"
    );
    assert!(executor.0.try_wait().unwrap().is_none(), "executor exited");
}
