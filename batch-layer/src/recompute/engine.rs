//! Where recompute queries run: DataFusion in this process (the default), or Apache DataFusion
//! Ballista (cargo feature `ballista`).
//!
//! ```text
//!  DataFusion: SessionContext(config) + store at STORE_URL + sketch UDAFs + FilesTable
//!  Ballista:   ballista::session_state(runtime with the store at STORE_URL, config)
//!                ├─ ballista_url given: remote_with_state(url, state)
//!                └─ none: one standalone scheduler + executor started from that state, once
//!              events table = a ListingTable of exactly the job's files (the plan travels to
//!              the scheduler serialized; a ListingTable serializes, a custom provider does not)
//! ```
//!
//! The executors must have the object store and the UDAFs registered: the standalone executor
//! is built from the same state (its runtime environment and function registry), which is the
//! way around Ballista's "No object store available" trap. A remote cluster must run Tandem's
//! scheduler and executors ([`super::cluster`], `tandem ballista scheduler|executor`), which
//! register both from the same configuration.

#[cfg(not(feature = "ballista"))]
use datafusion::error::DataFusionError;

/// Where recompute queries run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Engine {
    /// DataFusion in this process.
    #[default]
    DataFusion,
    /// Apache DataFusion Ballista: the scheduler at `url` (`df://host:50050`), or a standalone
    /// scheduler and executor in this process when `None`.
    Ballista { url: Option<String> },
}

impl Engine {
    /// Whether this build can run the engine.
    pub fn available(&self) -> bool {
        match self {
            Engine::DataFusion => true,
            Engine::Ballista { .. } => cfg!(feature = "ballista"),
        }
    }
}

/// A standalone Ballista cluster in this process, started on first use.
#[derive(Debug, Default)]
pub(super) struct Standalone {
    #[cfg(feature = "ballista")]
    url: tokio::sync::OnceCell<String>,
}

#[cfg(feature = "ballista")]
mod ballista_engine {
    use std::sync::Arc;

    use ballista::prelude::SessionContextExt;
    use ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient;
    use datafusion::datasource::TableProvider;
    use datafusion::datasource::file_format::parquet::ParquetFormat;
    use datafusion::datasource::listing::{
        ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
    };
    use datafusion::error::DataFusionError;
    use datafusion::execution::SessionState;
    use datafusion::prelude::SessionContext;

    use super::Standalone;

    fn external(e: impl std::error::Error + Send + Sync + 'static) -> DataFusionError {
        DataFusionError::External(Box::new(e))
    }

    impl Standalone {
        /// The scheduler URL of the standalone cluster, starting it from `state` first.
        async fn url(&self, state: &SessionState) -> Result<String, DataFusionError> {
            self.url
                .get_or_try_init(|| async {
                    let addr =
                        ballista_scheduler::standalone::new_standalone_scheduler_from_state(state)
                            .await
                            .map_err(|e| DataFusionError::Configuration(e.to_string()))?;
                    let grpc = format!("http://localhost:{}", addr.port());
                    // The scheduler was just started in this process: it answers within moments.
                    let mut attempts = 0;
                    let scheduler = loop {
                        match SchedulerGrpcClient::connect(grpc.clone()).await {
                            Ok(s) => break s,
                            Err(err) if attempts >= 100 => {
                                return Err(DataFusionError::Configuration(format!(
                                    "the standalone Ballista scheduler at {grpc} did not answer: {err}"
                                )));
                            }
                            Err(_) => {
                                attempts += 1;
                                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                            }
                        }
                    };
                    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
                    ballista_executor::new_standalone_executor_from_state(scheduler, cores, state)
                        .await
                        .map_err(|e| DataFusionError::Configuration(e.to_string()))?;
                    tracing::info!(
                        port = addr.port(),
                        "standalone Ballista scheduler and executor started"
                    );
                    Ok(format!("df://localhost:{}", addr.port()))
                })
                .await
                .cloned()
        }
    }

    /// A Ballista session over `state`.
    pub(in crate::recompute) async fn session(
        state: SessionState,
        url: Option<&str>,
        standalone: &Standalone,
    ) -> Result<SessionContext, DataFusionError> {
        let url = match url {
            Some(url) => url.to_owned(),
            None => standalone.url(&state).await?,
        };
        SessionContext::remote_with_state(&url, state).await
    }

    /// The job's files as a ListingTable (serializable to the scheduler).
    pub(in crate::recompute) fn files_table(
        schema: datafusion::arrow::datatypes::SchemaRef,
        paths: &[String],
    ) -> Result<Arc<dyn TableProvider>, DataFusionError> {
        let urls = paths
            .iter()
            .map(|p| ListingTableUrl::parse(format!("{}/{p}", crate::tables::events::STORE_URL)))
            .collect::<Result<Vec<_>, _>>()?;
        let options =
            ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
        let config = ListingTableConfig::new_with_multi_paths(urls)
            .with_listing_options(options)
            .with_schema(schema);
        Ok(Arc::new(ListingTable::try_new(config).map_err(external)?))
    }
}

#[cfg(feature = "ballista")]
pub(super) use ballista_engine::{
    files_table as ballista_files_table, session as ballista_session,
};

/// What a build without the feature answers when asked for Ballista.
#[cfg(not(feature = "ballista"))]
pub(super) fn unavailable() -> DataFusionError {
    DataFusionError::Configuration(
        "this build has no Ballista support: build with `--features ballista`".into(),
    )
}
