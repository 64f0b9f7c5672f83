//! The `events` table: the archive as SQL sees it, exact up to the archive's last roll.
//!
//! ```text
//!  scan(filters) ─► time range of the time field (bounds) ─► archive snapshot, loaded now
//!               ─► files whose event-time range overlaps it (sealed lists read only if they do)
//!               ─► Parquet scan of exactly those files (row groups pruned by the filters)
//! ```
//!
//! The files come from the partition manifests, never from listing the store: a file a crashed
//! roll left behind is not part of the archive and is never read.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::catalog::Session;
use datafusion::config::TableParquetOptions;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::datasource::{MemTable, TableProvider, TableType};
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;
use object_store::ObjectStore;
use tandem_shared::schema::EventSchema;
use url::Url;

use super::bounds;
use crate::archive::{ArchiveSnapshot, ArchivedFile};

/// The URL the object store is registered under in a DataFusion session.
pub const STORE_URL: &str = "tandem://store";

/// Registers `store` in `ctx` under [`STORE_URL`], where the archive's tables read it.
pub fn register_store(
    ctx: &SessionContext,
    store: &Arc<dyn ObjectStore>,
) -> Result<(), DataFusionError> {
    let url = Url::parse(STORE_URL).map_err(|e| DataFusionError::External(Box::new(e)))?;
    ctx.register_object_store(&url, Arc::clone(store));
    Ok(())
}

/// The events' Arrow schema as tables read it. Strings are read as views: DataFusion decodes
/// Parquet byte arrays into views without copying them, which is measurably faster for filters
/// and grouping on strings.
pub fn read_schema(schema: &EventSchema) -> SchemaRef {
    Arc::new(Schema::new(
        schema
            .arrow_schema()
            .fields()
            .iter()
            .map(|f| match f.data_type() {
                DataType::Utf8 => f.as_ref().clone().with_data_type(DataType::Utf8View),
                _ => f.as_ref().clone(),
            })
            .collect::<Vec<_>>(),
    ))
}

/// A table of exactly `files` (empty if there are none), read with `parquet` options (the
/// session's, so that settings such as filter pushdown apply).
pub fn files_table(
    schema: SchemaRef,
    files: &[&ArchivedFile],
    parquet: TableParquetOptions,
) -> Result<Arc<dyn TableProvider>, DataFusionError> {
    if files.is_empty() {
        return Ok(Arc::new(MemTable::try_new(schema, vec![vec![]])?));
    }
    let urls = files
        .iter()
        .map(|f| ListingTableUrl::parse(format!("{STORE_URL}/{}", f.path)))
        .collect::<Result<Vec<_>, _>>()?;
    let options = ListingOptions::new(Arc::new(ParquetFormat::default().with_options(parquet)))
        .with_file_extension(".parquet");
    let config = ListingTableConfig::new_with_multi_paths(urls)
        .with_listing_options(options)
        .with_schema(schema);
    Ok(Arc::new(ListingTable::try_new(config)?))
}

/// The archive of one topic as a table (see the module docs). The session it is scanned in
/// must have the store registered ([`register_store`]).
#[derive(Debug)]
pub struct EventsTable {
    store: Arc<dyn ObjectStore>,
    topic: String,
    time_field: String,
    schema: SchemaRef,
}

impl EventsTable {
    pub fn new(store: Arc<dyn ObjectStore>, topic: &str, schema: &EventSchema) -> Self {
        Self {
            store,
            topic: topic.to_owned(),
            time_field: schema.time_field.clone(),
            schema: read_schema(schema),
        }
    }
}

fn external(e: impl std::error::Error + Send + Sync + 'static) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

#[async_trait]
impl TableProvider for EventsTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    /// Every filter is used inexactly: the time field's to choose files, all of them to prune
    /// row groups by their statistics; DataFusion applies them again to the rows.
    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>, DataFusionError> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>, DataFusionError> {
        let range = bounds::time_range(filters, &self.time_field);
        let snapshot = ArchiveSnapshot::load(&self.store, &self.topic)
            .await
            .map_err(external)?;
        let files = if range.is_empty() {
            Vec::new()
        } else {
            snapshot
                .files_between(&self.store, range.from, range.to)
                .await
                .map_err(external)?
        };
        tracing::debug!(files = files.len(), ?range, "events table scan");
        let files: Vec<&ArchivedFile> = files.iter().collect();
        let parquet = state.default_table_options().parquet;
        files_table(Arc::clone(&self.schema), &files, parquet)?
            .scan(state, projection, filters, limit)
            .await
    }
}
