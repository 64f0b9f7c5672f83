//! Recompute: the exact view, computed by DataFusion over the archive, published as a segment.
//!
//! ```text
//!  ArchiveSnapshot (partition manifests) ──► plan: covered / not-ready window starts (pure)
//!        │ files pruned by event time (date/hour layout + per-file min/max)
//!        ▼
//!  DataFusion: ListingTable over exactly those files ──► window_query SQL ──► RecordBatches
//!        ▼
//!  ViewCatalog::publish: segment Parquet, then the next view manifest
//! ```

use std::sync::Arc;

use chrono::Utc;
use datafusion::datasource::MemTable;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::error::DataFusionError;
use datafusion::prelude::{SessionConfig, SessionContext};
use object_store::ObjectStore;
use serde::{Deserialize, Serialize};
use tandem_shared::coverage::StartRange;
use tandem_shared::schema::EventSchema;
use tandem_shared::time::{EventTime, Span};
use tandem_shared::view::ViewDefinition;
use url::Url;

use crate::archive::ArchiveSnapshot;
use crate::catalog::{self, ViewCatalog};
use crate::manifest;

pub mod plan;
pub mod query;

pub use plan::Requested;

/// Errors of a recompute.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading the archive: {0}")]
    Archive(#[from] manifest::Error),
    /// The query failed: a bad expression over real data (a user problem) or an internal error.
    #[error("view `{view}`: query failed: {source}")]
    Query {
        view: String,
        source: DataFusionError,
    },
    #[error("view `{view}`: {detail}")]
    Unsupported { view: String, detail: String },
    #[error("publishing: {0}")]
    Publish(#[from] catalog::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What recomputing one view did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewOutcome {
    pub view: String,
    /// Window starts published.
    pub covered: Option<StartRange>,
    /// Requested window starts left to the speed layer because the archive is not complete.
    pub not_ready: Option<StartRange>,
    pub windows_published: u64,
    pub files_scanned: u64,
    pub bytes_scanned: u64,
    pub rows_read: u64,
    pub result_rows: u64,
}

/// Everything a recompute needs; shared by all jobs.
#[derive(Debug)]
pub struct Recompute {
    pub store: Arc<dyn ObjectStore>,
    pub schema: Arc<EventSchema>,
    pub topic: String,
    /// A partition quiet for this long no longer holds archive completeness back.
    pub idle_timeout: Span,
    pub catalog: Arc<ViewCatalog>,
}

const STORE_URL: &str = "tandem://store";

impl Recompute {
    fn session(&self) -> Result<SessionContext, DataFusionError> {
        let config = SessionConfig::new()
            .with_target_partitions(std::thread::available_parallelism().map_or(2, |n| n.get()));
        let ctx = SessionContext::new_with_config(config);
        let url = Url::parse(STORE_URL).map_err(|e| DataFusionError::External(Box::new(e)))?;
        ctx.register_object_store(&url, Arc::clone(&self.store));
        Ok(ctx)
    }

    /// Recomputes `view` for `requested` windows and publishes what is ready.
    pub async fn run_view(
        &self,
        view: &ViewDefinition,
        requested: Requested,
        job: &str,
    ) -> Result<ViewOutcome> {
        let snapshot = ArchiveSnapshot::load(&self.store, &self.topic).await?;
        let now = EventTime(Utc::now().timestamp_millis());
        let complete = snapshot.complete_until(now, self.idle_timeout);
        let plan = plan::plan(
            view,
            requested,
            plan::ArchiveExtent {
                complete_until: complete,
                earliest: snapshot.earliest_event_time(),
                latest: snapshot.latest_event_time(),
            },
        );
        let mut outcome = ViewOutcome {
            view: view.name.clone(),
            covered: plan.covered,
            not_ready: plan.not_ready,
            ..Default::default()
        };
        let (Some(covered), Some(scan)) = (plan.covered, plan.scan) else {
            tracing::info!(view = %view.name, ?complete, "nothing ready to recompute");
            return Ok(outcome);
        };
        let files = snapshot.files_between(scan.from, scan.to);
        outcome.files_scanned = files.len() as u64;
        outcome.bytes_scanned = files.iter().map(|f| f.bytes).sum();
        outcome.rows_read = files.iter().map(|f| f.rows).sum();

        let sql =
            query::window_query(view, &self.schema.time_field, covered, scan).ok_or_else(|| {
                Error::Unsupported {
                    view: view.name.clone(),
                    detail: "session windows cannot be recomputed by this version".into(),
                }
            })?;
        let query_err = |source| Error::Query {
            view: view.name.clone(),
            source,
        };
        let ctx = self.session().map_err(query_err)?;
        let schema = self.schema.arrow_schema();
        if files.is_empty() {
            let table = MemTable::try_new(Arc::clone(&schema), vec![vec![]]).map_err(query_err)?;
            ctx.register_table(query::EVENTS_TABLE, Arc::new(table))
                .map_err(query_err)?;
        } else {
            let urls = files
                .iter()
                .map(|f| ListingTableUrl::parse(format!("{STORE_URL}/{}", f.path)))
                .collect::<Result<Vec<_>, _>>()
                .map_err(query_err)?;
            let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
                .with_file_extension(".parquet");
            let config = ListingTableConfig::new_with_multi_paths(urls)
                .with_listing_options(options)
                .with_schema(Arc::clone(&schema));
            let table = ListingTable::try_new(config).map_err(query_err)?;
            ctx.register_table(query::EVENTS_TABLE, Arc::new(table))
                .map_err(query_err)?;
        }
        tracing::debug!(view = %view.name, %sql, "recompute query");
        let df = ctx.sql(&sql).await.map_err(query_err)?;
        let result_schema = Arc::new(df.schema().as_arrow().clone());
        let mut batches = df.collect().await.map_err(query_err)?;
        if batches.is_empty() {
            batches.push(datafusion::arrow::array::RecordBatch::new_empty(
                result_schema,
            ));
        }
        outcome.result_rows = batches.iter().map(|b| b.num_rows() as u64).sum();
        self.catalog.publish(view, job, covered, &batches).await?;
        outcome.windows_published = plan::window_count(view, covered);
        Ok(outcome)
    }
}
