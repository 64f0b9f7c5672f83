//! Wiring the layers into one process, and shutting them down in order.
//!
//! Start-up: open storage → check the events topic and create missing side topics → compile every view for both layers (a bad expression stops start-up)
//! → load published batch results → hand their coverage to the speed layer → start the speed
//! layer, the archive, the job scheduler and reconciliation → serve HTTP.
//!
//! Shutdown (the InfluxDB 3 model): the backend is cancelled first and awaited — the archive
//! writes and publishes what it buffered, the scheduler finishes a running job, the speed layer
//! flushes its side topics — and only then does the HTTP frontend stop.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tandem_batch_layer::{
    Archive, ArchiveConfig, Recompute, Scheduler, SchedulerConfig, ViewCatalog,
};
use tandem_shared::event::EventDecoder;
use tandem_speed_layer::clock::SystemClock;
use tandem_speed_layer::program::ViewProgram;
use tandem_speed_layer::{CheckpointSettings, SpeedConfig, SpeedLayer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{self, AppState};
use crate::config::Config;
use crate::reconcile::Reconciler;
use crate::storage;
use crate::topics;

/// Errors starting Tandem. Configuration or environment; start-up stops with the message.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Storage(#[from] storage::Error),
    #[error(transparent)]
    View(#[from] tandem_speed_layer::program::Error),
    #[error("loading published views: {0}")]
    Catalog(#[from] tandem_batch_layer::catalog::Error),
    #[error(transparent)]
    Speed(#[from] tandem_speed_layer::IngestError),
    #[error(transparent)]
    Archive(#[from] tandem_batch_layer::archive::Error),
    #[error(transparent)]
    Scheduler(#[from] tandem_batch_layer::scheduler::Error),
    #[error(transparent)]
    Topics(#[from] topics::Error),
    #[error("binding HTTP on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("HTTP server: {0}")]
    Serve(#[source] std::io::Error),
}

/// Process-level options that are not part of the configuration file.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub http: String,
    pub metrics: Option<PrometheusHandle>,
}

/// A started Tandem: its HTTP address, and the handles needed to stop it.
#[derive(Debug)]
pub struct Running {
    pub http: SocketAddr,
    backend: CancellationToken,
    frontend: CancellationToken,
    tracker: TaskTracker,
    server: tokio::task::JoinHandle<Result<(), std::io::Error>>,
}

impl Running {
    /// Ordered shutdown: backend first (flushing), then the HTTP frontend.
    pub async fn shutdown(self) -> Result<(), Error> {
        self.backend.cancel();
        self.tracker.close();
        if tokio::time::timeout(Duration::from_secs(60), self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("backend did not stop within 60s");
        }
        self.frontend.cancel();
        match self.server.await {
            Ok(result) => result.map_err(Error::Serve),
            Err(err) => {
                tracing::error!(%err, "HTTP task failed");
                Ok(())
            }
        }
    }
}

/// Starts every layer for `config`.
pub async fn start(config: &Config, options: RunOptions) -> Result<Running, Error> {
    let store = storage::open(&config.storage_url)?;
    let found = topics::ensure(&config.kafka).await?;
    tracing::info!(
        topic = %config.kafka.topic,
        partitions = found.partitions,
        "events topic found"
    );
    let schema = Arc::new(config.schema.clone());
    let programs = config
        .views
        .iter()
        .map(|v| ViewProgram::compile(v, &schema))
        .collect::<Result<Vec<_>, _>>()?;

    let catalog = Arc::new(ViewCatalog::new(Arc::clone(&store), config.views.clone()));
    catalog.refresh_all().await?;
    let speed = SpeedLayer::new(programs);
    let reconciler = Reconciler::new(Arc::clone(&catalog), speed.clone());
    // Before consuming: windows the batch layer already covers are not rebuilt.
    reconciler.reconcile();

    let backend = CancellationToken::new();
    let frontend = CancellationToken::new();
    let tracker = TaskTracker::new();
    let decoder = Arc::new(EventDecoder::new(Arc::clone(&schema)));
    let kafka = &config.kafka;

    let speed_task = speed.start(
        SpeedConfig {
            brokers: kafka.brokers.clone(),
            topic: kafka.topic.clone(),
            group_id: format!("{}-speed", kafka.group_prefix),
            dead_letter_topic: kafka.dead_letter_topic.clone(),
            late_topic: kafka.late_topic.clone(),
            max_batch: config.max_batch,
            idle_timeout: config.idle_timeout,
            max_future: config.max_future,
            memory_budget: config.memory_budget,
            checkpoint: Some(CheckpointSettings {
                store: Arc::clone(&store),
                interval: config.checkpoint_interval.as_duration(),
            }),
            kafka_options: kafka.options.clone(),
        },
        Arc::clone(&decoder),
        Arc::new(SystemClock),
        backend.child_token(),
    )?;
    tracker.spawn(async move {
        if let Err(err) = speed_task.await {
            tracing::error!(%err, "speed layer task failed");
        }
    });

    let archive = Archive::new(
        ArchiveConfig {
            brokers: kafka.brokers.clone(),
            topic: kafka.topic.clone(),
            group_id: format!("{}-archive", kafka.group_prefix),
            roll_interval: config.roll_interval.as_duration(),
            roll_bytes: config.roll_bytes,
            max_future: config.max_future,
            kafka_options: kafka.options.clone(),
        },
        Arc::clone(&store),
        Arc::clone(&decoder),
    )?;
    tracker.spawn(archive.run(backend.child_token()));

    let recompute = Arc::new(Recompute {
        store: Arc::clone(&store),
        schema: Arc::clone(&schema),
        topic: kafka.topic.clone(),
        idle_timeout: config.idle_timeout,
        catalog: Arc::clone(&catalog),
    });
    let scheduler = Scheduler::new(
        recompute,
        config.views.clone(),
        SchedulerConfig {
            schedule: config.schedule.clone(),
            queue_capacity: config.job_queue,
            max_concurrent: config.max_concurrent_jobs,
            max_attempts: config.max_attempts,
            retry_backoff: config.retry_backoff.as_duration(),
        },
    )?;
    let requeued = scheduler.restore().await;
    if requeued > 0 {
        tracing::info!(requeued, "jobs from before the restart queued again");
    }
    for job in scheduler.backfill() {
        tracing::info!(view = ?job.view, id = %job.id, "no published results for this view version: backfill queued");
    }
    tracker.spawn(scheduler.clone().run(backend.child_token()));
    tracker.spawn(
        reconciler
            .clone()
            .run(backend.child_token(), Duration::from_secs(10)),
    );

    if let Some(handle) = options.metrics.clone() {
        let cancel = backend.child_token();
        tracker.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tick.tick() => handle.run_upkeep(),
                }
            }
        });
    }

    let state = AppState {
        views: Arc::new(
            config
                .views
                .iter()
                .map(|v| (v.name.clone(), v.clone()))
                .collect::<BTreeMap<_, _>>(),
        ),
        catalog,
        speed,
        scheduler,
        reconciler,
        metrics: options.metrics,
    };
    let listener = TcpListener::bind(&options.http)
        .await
        .map_err(|source| Error::Bind {
            addr: options.http.clone(),
            source,
        })?;
    let http = listener.local_addr().map_err(|source| Error::Bind {
        addr: options.http.clone(),
        source,
    })?;
    let stop = frontend.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, api::router(state))
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
    });
    Ok(Running {
        http,
        backend,
        frontend,
        tracker,
        server,
    })
}
