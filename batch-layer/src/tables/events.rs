//! The `events` table: the archive as SQL sees it, exact up to the archive's last roll.
//!
//! ```text
//!  scan(filters) ─► time range of the time field (bounds) ─► archive snapshot, loaded now
//!               ─► files whose event-time range overlaps it (sealed lists read only if they do)
//!               ─► Parquet scan of exactly those files (row groups pruned by the filters)
//! ```
//!
//! The files come from the partition manifests, never from listing the store: a file a crashed
//! roll left behind is not part of the archive and is never read. The scan is planned from the
//! manifests' own figures (size, rows, time range), so planning opens no file, and the page
//! index is read only when the time range cuts through a file.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::catalog::Session;
use datafusion::common::stats::Precision;
use datafusion::common::{ScalarValue, Statistics, project_schema};
use datafusion::config::TableParquetOptions;
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::table_schema::TableSchema;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::DataFusionError;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::prelude::SessionContext;
use object_store::ObjectStore;
use tandem_shared::coverage::StartRange;
use tandem_shared::schema::EventSchema;
use tandem_shared::time::EventTime;
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
    Ok(Arc::new(FilesTable {
        schema,
        files: files.iter().map(|f| (*f).clone()).collect(),
        parquet,
    }))
}

/// Archived files as a table. The scan is built from what the manifests already say about
/// each file (path, size, rows, event-time range): nothing is listed or stat'ed while
/// planning, and `count(*)` is answered from the row counts without opening a file.
#[derive(Debug)]
struct FilesTable {
    /// The time column first (see [`EventSchema::arrow_schema`]).
    schema: SchemaRef,
    files: Vec<ArchivedFile>,
    parquet: TableParquetOptions,
}

impl FilesTable {
    /// What the manifests know of the whole table: exact row counts and the time column's
    /// range.
    fn statistics(&self) -> Statistics {
        let mut stats = Statistics::new_unknown(&self.schema);
        stats.num_rows = Precision::Exact(self.files.iter().map(|f| f.rows as usize).sum());
        stats.total_byte_size =
            Precision::Inexact(self.files.iter().map(|f| f.bytes as usize).sum());
        if let (Some(min), Some(max), Some(time)) = (
            self.files.iter().map(|f| f.min_time).min(),
            self.files.iter().map(|f| f.max_time).max(),
            stats.column_statistics.first_mut(),
        ) {
            let zone = match self.schema.field(0).data_type() {
                DataType::Timestamp(_, zone) => zone.clone(),
                _ => None,
            };
            let at =
                |t: EventTime| ScalarValue::TimestampMillisecond(Some(t.millis()), zone.clone());
            time.min_value = Precision::Inexact(at(min));
            time.max_value = Precision::Inexact(at(max));
            time.null_count = Precision::Exact(0);
        }
        stats
    }

    /// The files in at most `groups` partitions of about equal size, each in manifest order.
    fn groups(&self, groups: usize) -> Vec<FileGroup> {
        let total: u64 = self.files.iter().map(|f| f.bytes).sum();
        let share = total.div_ceil(groups.max(1) as u64).max(1);
        let mut out: Vec<Vec<PartitionedFile>> = vec![Vec::new()];
        let mut filled = 0;
        for file in &self.files {
            if filled >= share && out.len() < groups {
                out.push(Vec::new());
                filled = 0;
            }
            filled += file.bytes;
            if let Some(group) = out.last_mut() {
                group.push(PartitionedFile::new(file.path.clone(), file.bytes));
            }
        }
        out.into_iter().map(FileGroup::new).collect()
    }
}

/// Whether reading the page index can skip anything for a scan of `range`: archive files are
/// sorted by event time, so their page statistics prune a range that cuts through a file;
/// a range that takes every file whole (no time filter, or whole hours) gains nothing from
/// the extra read per file.
fn page_index_prunes(files: &[ArchivedFile], range: StartRange) -> bool {
    files.iter().any(|f| {
        let whole = range.from <= f.min_time && f.max_time < range.to;
        !whole
    })
}

#[async_trait]
impl TableProvider for FilesTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    /// Filters prune row groups by their statistics (DataFusion hands them to the Parquet
    /// source) and are applied again to the rows.
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
        let range = bounds::time_range(filters, self.schema.field(0).name());
        let mut parquet = self.parquet.clone();
        // The archive writes no bloom filters: looking for them costs a read per row group.
        parquet.global.bloom_filter_on_read = false;
        parquet.global.enable_page_index &= page_index_prunes(&self.files, range);
        if self.files.is_empty() {
            return Ok(Arc::new(EmptyExec::new(project_schema(
                &self.schema,
                projection,
            )?)));
        }
        let source = ParquetSource::new(TableSchema::from(Arc::clone(&self.schema)))
            .with_table_parquet_options(parquet.clone());
        let config =
            FileScanConfigBuilder::new(ObjectStoreUrl::parse(STORE_URL)?, Arc::new(source))
                .with_file_groups(self.groups(state.config().target_partitions()))
                .with_statistics(self.statistics())
                .with_projection_indices(projection.cloned())?
                .with_limit(limit)
                .build();
        ParquetFormat::default()
            .with_options(parquet)
            .create_physical_plan(state, config)
            .await
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn file(min: i64, max: i64) -> ArchivedFile {
        ArchivedFile {
            path: format!("f{min}"),
            hour: EventTime(min - min % 3_600_000),
            first_offset: 0,
            last_offset: 9,
            rows: 10,
            bytes: 100,
            min_time: EventTime(min),
            max_time: EventTime(max),
        }
    }

    fn range(from: i64, to: i64) -> StartRange {
        StartRange::new(EventTime(from), EventTime(to))
    }

    #[test]
    fn the_page_index_is_read_only_for_a_range_that_cuts_through_a_file() {
        let files = [file(0, 3_599_999), file(3_600_000, 7_199_000)];
        let everything = range(i64::MIN, i64::MAX);
        assert!(!page_index_prunes(&files, everything));
        assert!(!page_index_prunes(&files, range(0, 7_200_000)));
        assert!(page_index_prunes(&files, range(0, 7_199_000)));
        assert!(page_index_prunes(&files, range(1_800_000, 7_200_000)));
        assert!(!page_index_prunes(&[], range(5, 6)));
    }

    #[test]
    fn statistics_are_the_manifests_row_counts_and_time_range() {
        let schema = read_schema(
            &EventSchema::new(
                "ts",
                vec![("city".into(), tandem_shared::schema::FieldType::String)],
                None,
            )
            .unwrap(),
        );
        let table = FilesTable {
            schema,
            files: vec![file(10, 20), file(5, 15), file(30, 40)],
            parquet: TableParquetOptions::default(),
        };
        let stats = table.statistics();
        assert_eq!(stats.num_rows, Precision::Exact(30));
        let time = &stats.column_statistics[0];
        let ms = |v: &Precision<ScalarValue>| match v {
            Precision::Inexact(ScalarValue::TimestampMillisecond(Some(t), _)) => *t,
            other => panic!("{other:?}"),
        };
        assert_eq!((ms(&time.min_value), ms(&time.max_value)), (5, 40));
        let groups = table.groups(2);
        assert_eq!(groups.len(), 2);
        assert_eq!(groups.iter().map(|g| g.len()).sum::<usize>(), 3);
    }
}
