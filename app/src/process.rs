//! One Tandem process: the layers started in order, and shut down in order.
//!
//! ```text
//!  start: open storage → check the events topic, create missing side topics
//!         → compile every view for both layers (a bad expression stops start-up)
//!         → load published batch results → hand their coverage to the speed layer
//!         → start speed layer, archive, job scheduler, reconciliation → serve HTTP
//!  shutdown: backend (cancel, await: archive publishes its buffers, scheduler finishes a
//!            running job, speed layer checkpoints and flushes side topics) → HTTP frontend
//! ```
//!
//! Shutdown follows the InfluxDB 3 model: the backend is cancelled first and awaited, and only
//! then does the HTTP frontend stop, so nothing a reader can see is left half-published.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tandem_batch_layer::{Archive, Scheduler};
use tandem_serving::{AppState, Reconciler, router};
use tandem_shared::clock::{Clock, SystemClock};
use tandem_shared::event::EventDecoder;
use tandem_speed_layer::SpeedLayer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::{topics, wiring};

/// Errors starting Tandem. Configuration or environment; start-up stops with the message.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Storage(#[from] tandem_store::backend::Error),
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
    server: Server,
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
    let store = tandem_store::open(&config.storage_url)?;
    let found = topics::ensure(&config.kafka).await?;
    tracing::info!(
        topic = %config.kafka.topic,
        partitions = found.partitions,
        "events topic found"
    );
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let schema = Arc::new(config.schema.clone());
    let speed = SpeedLayer::compile(&config.views, &schema)?;
    let catalog = wiring::catalog(config, &store);
    catalog.refresh_all().await?;
    let reconciler = Reconciler::new(Arc::clone(&catalog), speed.clone());
    // Before consuming: windows the batch layer already covers are not rebuilt.
    reconciler.reconcile();

    let backend = CancellationToken::new();
    let frontend = CancellationToken::new();
    let tracker = TaskTracker::new();
    let decoder = Arc::new(EventDecoder::new(Arc::clone(&schema)));

    let speed_task = speed.start(
        wiring::speed_config(config, &store),
        Arc::clone(&decoder),
        Arc::clone(&clock),
        backend.child_token(),
    )?;
    tracker.spawn(async move {
        if let Err(err) = speed_task.await {
            tracing::error!(%err, "speed layer task failed");
        }
    });

    let archive = Archive::new(
        wiring::archive_config(config),
        Arc::clone(&store),
        Arc::clone(&decoder),
        Arc::clone(&clock),
    )?;
    tracker.spawn(archive.run(backend.child_token()));

    let recompute = Arc::new(wiring::recompute(config, &store, &catalog, clock));
    let scheduler = Scheduler::new(recompute, wiring::scheduler_config(config))?;
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

    let state = AppState::new(catalog, speed, scheduler, reconciler, options.metrics);
    let (http, server) = serve(&options.http, state, frontend.clone()).await?;
    Ok(Running {
        http,
        backend,
        frontend,
        tracker,
        server,
    })
}

/// The HTTP server task; it ends when its stop token fires.
pub type Server = tokio::task::JoinHandle<Result<(), std::io::Error>>;

/// Serves the API on `addr` until `stop` fires.
pub async fn serve(
    addr: &str,
    state: AppState,
    stop: CancellationToken,
) -> Result<(SocketAddr, Server), Error> {
    let bind_err = |source| Error::Bind {
        addr: addr.to_owned(),
        source,
    };
    let listener = TcpListener::bind(addr).await.map_err(bind_err)?;
    let http = listener.local_addr().map_err(bind_err)?;
    let server = tokio::spawn(async move {
        axum::serve(listener, router(state))
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
    });
    Ok((http, server))
}
