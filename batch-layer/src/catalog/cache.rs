//! Reading published rows: only the segments and row groups a range needs, through a cache
//! bounded in bytes.
//!
//! ```text
//!  rows(segment, range) ─► footer (cached) ─► row groups whose window_start statistics
//!      overlap the range ─► each: cached Arrow batches, or a ranged read of that row group
//!      ─► rows whose window_start is in range, filtered in Arrow, decoded into ViewRows
//!  least recently used entries evicted while the cache is over its budget
//! ```
//!
//! Row groups are cached columnar, as read: compact (several times smaller than decoded rows)
//! and measured exactly by Arrow; a query decodes only the rows it answers.
//!
//! ```text
//! ```
//!
//! Segments are immutable, so a cached entry never goes stale; an entry of a segment that is no
//! longer published is simply never asked for again and ages out.

use std::ops::Range;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use datafusion::arrow::array::{AsArray, BooleanArray, RecordBatch};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::Int64Type;
use futures::future::BoxFuture;
use futures::{FutureExt, TryStreamExt};
use lru::LruCache;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
use parquet::arrow::async_reader::{AsyncFileReader, ParquetRecordBatchStreamBuilder};
use parquet::errors::ParquetError;
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};
use parquet::file::statistics::Statistics;
use tandem_shared::coverage::StartRange;
use tandem_shared::row::ViewRow;
use tandem_shared::sketch::StatedRow;
use tandem_shared::time::EventTime;
use tandem_shared::view::ViewDefinition;

use super::segment;

/// Errors reading a segment.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Transient: the store failed.
    #[error("reading segment `{path}`: {source}")]
    Read {
        path: String,
        source: parquet::errors::ParquetError,
    },
    /// Internal: the segment does not have its view's shape.
    #[error("segment `{path}`: {source}")]
    Decode {
        path: String,
        source: segment::Error,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Footer(String),
    /// A row group's batches: the view's own columns only, or (true) with the rollup state
    /// columns too, which hold sketches and are only read for rollups.
    Group(String, usize, bool),
}

#[derive(Debug, Clone)]
enum Entry {
    Footer(ArrowReaderMetadata),
    Group(Arc<Vec<RecordBatch>>),
}

#[derive(Debug)]
struct Lru {
    entries: LruCache<Key, (Entry, usize)>,
    bytes: usize,
}

/// Decoded segment row groups and footers, least recently used evicted beyond `capacity` bytes.
#[derive(Debug)]
pub(crate) struct SegmentCache {
    store: Arc<dyn ObjectStore>,
    capacity: usize,
    lru: Mutex<Lru>,
}

/// What the cache holds, for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheUsage {
    pub bytes: usize,
    pub entries: usize,
}

impl SegmentCache {
    pub(crate) fn new(store: Arc<dyn ObjectStore>, capacity: usize) -> Self {
        Self {
            store,
            capacity,
            lru: Mutex::new(Lru {
                entries: LruCache::unbounded(),
                bytes: 0,
            }),
        }
    }

    pub(crate) fn usage(&self) -> CacheUsage {
        let lru = self.lru.lock().unwrap_or_else(|e| e.into_inner());
        CacheUsage {
            bytes: lru.bytes,
            entries: lru.entries.len(),
        }
    }

    fn get(&self, key: &Key) -> Option<Entry> {
        let mut lru = self.lru.lock().unwrap_or_else(|e| e.into_inner());
        lru.entries.get(key).map(|(e, _)| e.clone())
    }

    fn put(&self, key: Key, entry: Entry, bytes: usize) {
        let mut lru = self.lru.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, old)) = lru.entries.put(key, (entry, bytes)) {
            lru.bytes -= old;
        }
        lru.bytes += bytes;
        while lru.bytes > self.capacity {
            match lru.entries.pop_lru() {
                Some((_, (_, freed))) => lru.bytes -= freed,
                None => break,
            }
        }
        metrics::gauge!("tandem_catalog_cache_bytes").set(lru.bytes as f64);
    }

    async fn footer(&self, path: &str) -> Result<ArrowReaderMetadata, Error> {
        let key = Key::Footer(path.to_owned());
        if let Some(Entry::Footer(m)) = self.get(&key) {
            return Ok(m);
        }
        let mut reader = SegmentReader::new(&self.store, path);
        let metadata = ArrowReaderMetadata::load_async(&mut reader, ArrowReaderOptions::new())
            .await
            .map_err(|source| Error::Read {
                path: path.to_owned(),
                source,
            })?;
        let bytes = metadata.metadata().memory_size();
        self.put(key, Entry::Footer(metadata.clone()), bytes);
        Ok(metadata)
    }

    async fn group(
        &self,
        path: &str,
        footer: &ArrowReaderMetadata,
        index: usize,
        columns: Columns,
    ) -> Result<Arc<Vec<RecordBatch>>, Error> {
        let key = Key::Group(path.to_owned(), index, columns == Columns::WithStates);
        if let Some(Entry::Group(rows)) = self.get(&key) {
            metrics::counter!("tandem_catalog_cache_hits_total").increment(1);
            return Ok(rows);
        }
        metrics::counter!("tandem_catalog_cache_misses_total").increment(1);
        let read = |source| Error::Read {
            path: path.to_owned(),
            source,
        };
        let reader = SegmentReader::new(&self.store, path);
        let mut builder =
            ParquetRecordBatchStreamBuilder::new_with_metadata(reader, footer.clone())
                .with_row_groups(vec![index]);
        if let Columns::Values(n) = columns {
            let parquet = footer.metadata().file_metadata().schema_descr();
            let n = n.min(parquet.root_schema().get_fields().len());
            builder = builder.with_projection(ProjectionMask::roots(parquet, 0..n));
        }
        let batches: Vec<_> = builder
            .build()
            .map_err(read)?
            .try_collect()
            .await
            .map_err(read)?;
        let bytes = batches
            .iter()
            .map(RecordBatch::get_array_memory_size)
            .sum::<usize>()
            + 64;
        let batches = Arc::new(batches);
        self.put(key, Entry::Group(Arc::clone(&batches)), bytes);
        Ok(batches)
    }

    /// Rows of the segment at `path` whose window starts in one of `ranges` (sorted,
    /// disjoint), reading only the row groups that can hold them.
    pub(crate) async fn rows(
        &self,
        view: &ViewDefinition,
        path: &str,
        ranges: &[StartRange],
    ) -> Result<Vec<ViewRow>, Error> {
        let values = 2 + view.group_by.len() + view.aggregates.len();
        self.read(
            view,
            path,
            ranges,
            Columns::Values(values),
            segment::decode_rows,
        )
        .await
    }

    /// [`SegmentCache::rows`] with each value's rollup state.
    pub(crate) async fn states(
        &self,
        view: &ViewDefinition,
        path: &str,
        ranges: &[StartRange],
    ) -> Result<Vec<StatedRow>, Error> {
        self.read(
            view,
            path,
            ranges,
            Columns::WithStates,
            segment::decode_states,
        )
        .await
    }

    async fn read<T>(
        &self,
        view: &ViewDefinition,
        path: &str,
        ranges: &[StartRange],
        columns: Columns,
        decode_batches: fn(&ViewDefinition, &[RecordBatch]) -> segment::Result<Vec<T>>,
    ) -> Result<Vec<T>, Error> {
        let (Some(first), Some(last)) = (ranges.first(), ranges.last()) else {
            return Ok(Vec::new());
        };
        let span = StartRange::new(first.from, last.to);
        let footer = self.footer(path).await?;
        let mut out = Vec::new();
        for (index, group) in footer.metadata().row_groups().iter().enumerate() {
            let bounds = group
                .columns()
                .first()
                .and_then(|c| c.statistics())
                .and_then(start_bounds);
            if let Some((min, max)) = bounds
                && (max < span.from || min >= span.to)
            {
                continue;
            }
            let batches = self.group(path, &footer, index, columns).await?;
            let decode = |source| Error::Decode {
                path: path.to_owned(),
                source,
            };
            let wanted = batches
                .iter()
                .map(|b| in_ranges(b, ranges))
                .collect::<Result<Vec<_>, _>>()
                .map_err(decode)?;
            out.extend(decode_batches(view, &wanted).map_err(decode)?);
        }
        Ok(out)
    }
}

/// Which columns of a row group to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Columns {
    /// The first `n`: window bounds, groups and values.
    Values(usize),
    /// All, with the rollup state columns.
    WithStates,
}

/// Ranged reads of one segment object, for the Parquet reader.
struct SegmentReader {
    store: Arc<dyn ObjectStore>,
    path: Path,
}

impl SegmentReader {
    fn new(store: &Arc<dyn ObjectStore>, path: &str) -> Self {
        Self {
            store: Arc::clone(store),
            path: Path::from(path),
        }
    }
}

fn external(err: object_store::Error) -> ParquetError {
    ParquetError::External(Box::new(err))
}

impl AsyncFileReader for SegmentReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        async move {
            self.store
                .get_range(&self.path, range)
                .await
                .map_err(external)
        }
        .boxed()
    }

    /// A row group's column chunks in one request (the default asks for each chunk in turn,
    /// which on a local disk is one blocking open and read per column).
    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        async move {
            self.store
                .get_ranges(&self.path, &ranges)
                .await
                .map_err(external)
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        _options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            let size = self.store.head(&self.path).await.map_err(external)?.size;
            let metadata = ParquetMetaDataReader::new()
                .with_prefetch_hint(Some(64 << 10))
                .load_and_finish(self, size)
                .await?;
            Ok(Arc::new(metadata))
        }
        .boxed()
    }
}

/// The window_start column's min and max in a row group, when its statistics say.
fn start_bounds(statistics: &Statistics) -> Option<(EventTime, EventTime)> {
    match statistics {
        Statistics::Int64(s) => Some((EventTime(*s.min_opt()?), EventTime(*s.max_opt()?))),
        _ => None,
    }
}

/// The rows of `batch` whose window start (its first column) lies in one of `ranges`.
fn in_ranges(batch: &RecordBatch, ranges: &[StartRange]) -> Result<RecordBatch, segment::Error> {
    let starts = batch
        .column(0)
        .as_primitive_opt::<Int64Type>()
        .ok_or(segment::Error::Null {
            column: "window_start",
        })?;
    let keep: BooleanArray = starts
        .iter()
        .map(|s| Some(s.is_some_and(|s| ranges.iter().any(|r| r.contains(EventTime(s))))))
        .collect();
    Ok(filter_record_batch(batch, &keep)?)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Int64Array, RecordBatch, StringArray};
    use object_store::memory::InMemory;
    use tandem_shared::schema::FieldType;
    use tandem_shared::testing;
    use tandem_store::object;

    use super::*;

    const M: i64 = 60_000;

    /// A segment of `minutes` one-minute windows for two cities, in row groups of 10 rows.
    async fn segment(store: &Arc<dyn ObjectStore>, minutes: i64) -> ViewDefinition {
        let schema = testing::schema(&[("city", FieldType::String)]);
        let view = testing::view(
            &schema,
            "v",
            testing::tumbling("1m"),
            &["city"],
            None,
            &["count(*) AS n"],
        );
        let starts: Vec<i64> = (0..minutes).flat_map(|m| [m * M, m * M]).collect();
        let ends: Vec<i64> = starts.iter().map(|s| s + M).collect();
        let cities: Vec<&str> = (0..minutes).flat_map(|_| ["A", "B"]).collect();
        let counts: Vec<i64> = (0..2 * minutes).collect();
        // Written out of order: encoding sorts by window start.
        let batch = RecordBatch::try_from_iter([
            (
                "window_start",
                Arc::new(Int64Array::from_iter_values(starts.into_iter().rev())) as _,
            ),
            (
                "window_end",
                Arc::new(Int64Array::from_iter_values(ends.into_iter().rev())) as _,
            ),
            (
                "city",
                Arc::new(StringArray::from_iter_values(cities.into_iter().rev())) as _,
            ),
            (
                "n",
                Arc::new(Int64Array::from_iter_values(counts.into_iter().rev())) as _,
            ),
        ])
        .unwrap();
        let bytes = segment::encode(&[batch], 10).unwrap();
        object::write(store, "seg.parquet", bytes).await.unwrap();
        view
    }

    #[tokio::test]
    async fn a_narrow_range_reads_only_the_row_groups_that_can_hold_it() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let view = segment(&store, 50).await; // 100 rows: 10 row groups
        let cache = SegmentCache::new(Arc::clone(&store), 1 << 30);
        let range = [StartRange::new(EventTime(20 * M), EventTime(22 * M))];
        let rows = cache.rows(&view, "seg.parquet", &range).await.unwrap();
        let starts: Vec<i64> = rows.iter().map(|r| r.window.start.0 / M).collect();
        assert_eq!(starts, [20, 20, 21, 21]);
        // Rows 40..44 of the sorted segment: one row group of ten, plus the footer.
        assert_eq!(cache.usage().entries, 2, "{:?}", cache.usage());
        // Again, from the cache: nothing more is held.
        let again = cache.rows(&view, "seg.parquet", &range).await.unwrap();
        assert_eq!(again, rows);
        assert_eq!(cache.usage().entries, 2);
        // Every row, each once.
        let all = [StartRange::new(EventTime::MIN, EventTime::MAX)];
        assert_eq!(
            cache.rows(&view, "seg.parquet", &all).await.unwrap().len(),
            100
        );
        assert_eq!(cache.usage().entries, 11);
    }

    #[tokio::test]
    async fn the_cache_stays_within_its_byte_budget() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let view = segment(&store, 50).await;
        let budget = 8 << 10;
        let cache = SegmentCache::new(Arc::clone(&store), budget);
        let all = [StartRange::new(EventTime::MIN, EventTime::MAX)];
        for _ in 0..3 {
            let rows = cache.rows(&view, "seg.parquet", &all).await.unwrap();
            assert_eq!(
                rows.len(),
                100,
                "answers stay whole when entries are evicted"
            );
            assert!(cache.usage().bytes <= budget, "{:?}", cache.usage());
        }
        assert!(cache.usage().entries < 11, "some entries were evicted");
    }
}
