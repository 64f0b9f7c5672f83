//! Tandem's own Ballista scheduler and executor (cargo feature `ballista`): what a remote
//! cluster (`[batch] engine = "ballista"` with `ballista_url`) runs.
//!
//! ```text
//!  batch process ── logical plan (tandem_hll, tandem_kll, events at tandem://store/…) ──►
//!    scheduler: session_state(store, client's config) decodes the plan and plans it
//!       │ tasks (pulled by the executors)
//!       ▼
//!    executors: a runtime with the store at tandem://store, the sketch functions by name
//!       │ results over Arrow Flight
//!       ▼
//!  batch process
//! ```
//!
//! A stock Ballista scheduler cannot decode a recompute plan (it does not know the sketch
//! functions) and a stock executor cannot read the archive ("No object store available"): both
//! sides need [`session_state`]'s store and functions, which is what these processes add to
//! Ballista's own. Scheduling is pull-based: executors poll the scheduler, so only the
//! scheduler's port and each executor's Flight port need to be reachable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use ballista_core::RuntimeProducer;
use ballista_core::config::TaskSchedulingPolicy;
use ballista_core::registry::BallistaFunctionRegistry;
use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::scheduler_process::{create_scheduler, start_grpc_service_with_listener};
use datafusion::error::DataFusionError;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::{FunctionRegistry, SessionState, SessionStateBuilder};
use datafusion::prelude::SessionConfig;
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};
use object_store::ObjectStore;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::recompute::sketches;
use crate::tables::events::STORE_URL;

/// Errors of a scheduler or executor process.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("binding {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("Ballista: {0}")]
    Ballista(#[from] ballista_core::error::BallistaError),
    #[error("DataFusion: {0}")]
    DataFusion(#[from] DataFusionError),
}

/// A runtime environment with `store` registered under [`STORE_URL`] (spill files in
/// `temp_dir` when given).
pub fn runtime(
    store: Arc<dyn ObjectStore>,
    temp_dir: Option<&str>,
) -> Result<Arc<RuntimeEnv>, DataFusionError> {
    let mut builder = RuntimeEnvBuilder::new();
    if let Some(dir) = temp_dir {
        builder = builder.with_temp_file_path(dir);
    }
    let runtime = builder.build_arc()?;
    let url = url::Url::parse(STORE_URL).map_err(|e| DataFusionError::External(Box::new(e)))?;
    runtime.register_object_store(&url, store);
    Ok(runtime)
}

/// The session state every side of a Ballista recompute shares: `config`, a runtime with the
/// store, DataFusion's functions, Ballista's optimizer rules and Tandem's sketch functions.
pub fn session_state(
    runtime: Arc<RuntimeEnv>,
    config: SessionConfig,
) -> Result<SessionState, DataFusionError> {
    let mut state = SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(runtime)
        .with_default_features()
        .with_optimizer_rules(ballista_core::optimizer::ballista_default_optimizer_rules())
        .build();
    for f in sketches::functions() {
        state.register_udaf(Arc::new(f))?;
    }
    Ok(state)
}

/// Where a scheduler listens.
#[derive(Debug, Clone)]
pub struct SchedulerSettings {
    /// Address to bind (`0.0.0.0:50050`; port 0 picks a free one).
    pub bind: SocketAddr,
    /// The host name executors and clients reach this scheduler by.
    pub external_host: String,
}

/// A scheduler bound to its port, not yet serving.
pub struct Scheduler {
    listener: TcpListener,
    config: SchedulerConfig,
    runtime: Arc<RuntimeEnv>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("listener", &self.listener)
            .field("external_host", &self.config.external_host)
            .finish_non_exhaustive()
    }
}

impl Scheduler {
    /// Binds the scheduler's port; the scheduler plans with `store` at [`STORE_URL`].
    pub async fn bind(
        settings: &SchedulerSettings,
        store: Arc<dyn ObjectStore>,
    ) -> Result<Self, Error> {
        let listener = TcpListener::bind(settings.bind)
            .await
            .map_err(|source| Error::Bind {
                addr: settings.bind.to_string(),
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| Error::Bind {
            addr: settings.bind.to_string(),
            source,
        })?;
        let runtime = runtime(store, None)?;
        let builder_runtime = Arc::clone(&runtime);
        let config = SchedulerConfig {
            bind_host: addr.ip().to_string(),
            bind_port: addr.port(),
            external_host: settings.external_host.clone(),
            scheduling_policy: TaskSchedulingPolicy::PullStaged,
            override_session_builder: Some(Arc::new(move |config: SessionConfig| {
                session_state(Arc::clone(&builder_runtime), config)
            })),
            ..SchedulerConfig::default()
        };
        Ok(Scheduler {
            listener,
            config,
            runtime,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> Result<SocketAddr, Error> {
        self.listener.local_addr().map_err(|source| Error::Bind {
            addr: self.config.bind_host.clone(),
            source,
        })
    }

    /// The URL a batch process names in `ballista_url`.
    pub fn url(&self) -> Result<String, Error> {
        Ok(format!(
            "df://{}:{}",
            self.config.external_host,
            self.addr()?.port()
        ))
    }

    /// Serves until `cancel`.
    pub async fn serve(self, cancel: CancellationToken) -> Result<(), Error> {
        self.config.validate()?;
        let cluster = BallistaCluster::new_from_config(&self.config).await?;
        let scheduler =
            create_scheduler::<LogicalPlanNode, PhysicalPlanNode>(cluster, Arc::new(self.config))
                .await?;
        tracing::info!(
            addr = %self.listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            "Ballista scheduler with Tandem's store and sketch functions serving"
        );
        // The runtime (and the store in it) lives as long as the scheduler.
        let _runtime = self.runtime;
        tokio::select! {
            served = start_grpc_service_with_listener(self.listener, scheduler) => Ok(served?),
            () = cancel.cancelled() => Ok(()),
        }
    }
}

/// How an executor reaches its scheduler and is reached.
#[derive(Debug, Clone)]
pub struct ExecutorSettings {
    /// The scheduler's host and port.
    pub scheduler_host: String,
    pub scheduler_port: u16,
    /// Host to bind the Flight service on.
    pub bind_host: String,
    /// The host name clients and other executors fetch results from.
    pub external_host: String,
    /// The Flight port results are fetched from.
    pub flight_port: u16,
    /// Tasks run at once (0: one per core).
    pub concurrent_tasks: usize,
    /// Shuffle and spill files; a temporary directory when `None`.
    pub work_dir: Option<PathBuf>,
    /// Seconds to keep retrying the first connection to the scheduler.
    pub connect_timeout_seconds: u16,
}

/// Runs an executor that reads `store` at [`STORE_URL`] until `cancel`, SIGINT or SIGTERM.
pub async fn run_executor(
    settings: &ExecutorSettings,
    store: Arc<dyn ObjectStore>,
    cancel: CancellationToken,
) -> Result<(), Error> {
    let work_dir = settings
        .work_dir
        .as_ref()
        .map(|d| d.to_string_lossy().into_owned());
    let runtime = runtime(store, work_dir.as_deref())?;
    let producer_runtime = Arc::clone(&runtime);
    let runtime_producer: RuntimeProducer = Arc::new(move |_| Ok(Arc::clone(&producer_runtime)));
    // The executor resolves functions in plans by name from this registry.
    let functions = BallistaFunctionRegistry::from(&session_state(
        runtime,
        ballista_core::utils::default_config_producer(),
    )?);
    let config = ExecutorProcessConfig {
        bind_host: settings.bind_host.clone(),
        external_host: Some(settings.external_host.clone()),
        port: settings.flight_port,
        scheduler_host: settings.scheduler_host.clone(),
        scheduler_port: settings.scheduler_port,
        scheduler_connect_timeout_seconds: settings.connect_timeout_seconds,
        vcores: settings.concurrent_tasks,
        task_scheduling_policy: TaskSchedulingPolicy::PullStaged,
        work_dir,
        override_runtime_producer: Some(runtime_producer),
        override_function_registry: Some(Arc::new(functions)),
        ..ExecutorProcessConfig::default()
    };
    tracing::info!(
        scheduler = %format!("{}:{}", settings.scheduler_host, settings.scheduler_port),
        flight = %format!("{}:{}", settings.external_host, settings.flight_port),
        "Ballista executor with Tandem's store and sketch functions starting"
    );
    tokio::select! {
        ran = start_executor_process(Arc::new(config)) => Ok(ran?),
        () = cancel.cancelled() => Ok(()),
    }
}
