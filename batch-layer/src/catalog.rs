//! Published exact views: segments, view manifests and the in-memory copy the serving layer reads.
//!
//! A recompute job writes its result as an immutable segment
//! (`views/<view>/<version>/segments/<job>.parquet`) and then publishes the next view manifest,
//! which lists the segments in publication order, each with the window starts it covers. For
//! every window the newest segment covering it is the answer; segments entirely shadowed by newer
//! ones are dropped from the manifest. The manifest is the only point of publication: a job that
//! fails before it publishes changes nothing a reader can see.
//!
//! The catalog keeps the latest published state of each view in memory as a [`PublishedView`]
//! (coverage plus rows), swapped atomically, and announces every change on a watch channel.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use chrono::Utc;
use datafusion::arrow::array::RecordBatch;
use datafusion::common::ScalarValue;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::{Deserialize, Serialize};
use tandem_shared::aggregate::AggregateValue;
use tandem_shared::coverage::{Coverage, StartRange};
use tandem_shared::layout;
use tandem_shared::row::{GroupValue, ViewRow};
use tandem_shared::time::EventTime;
use tandem_shared::view::{AggregateFunction, ViewDefinition};
use tandem_shared::window::Window;
use tokio::sync::watch;

use crate::manifest::{self, ManifestChain};

/// Errors reading or publishing views.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Manifest(#[from] manifest::Error),
    /// Transient: the store failed.
    #[error("segment `{path}`: {source}")]
    Store {
        path: String,
        source: object_store::Error,
    },
    /// Internal: a segment does not have the shape its view implies.
    #[error("segment `{path}` is unreadable: {detail}")]
    Segment { path: String, detail: String },
    #[error("unknown view `{0}`")]
    UnknownView(String),
    /// Concurrent publications kept winning; the job should be retried.
    #[error("view `{view}`: gave up publishing after {attempts} conflicting attempts")]
    Contended { view: String, attempts: u32 },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One job's result for a range of window starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    pub path: String,
    pub job: String,
    pub covered: StartRange,
    pub rows: u64,
    pub published_at: EventTime,
    /// The archive's next offset per partition when the job read it: what the segment includes.
    #[serde(default)]
    pub archive_offsets: BTreeMap<i32, i64>,
}

impl Segment {
    /// How much of the archive the segment saw. Archive offsets only grow, so of two segments
    /// the one that saw more was computed from a newer archive.
    fn recency(&self) -> i128 {
        self.archive_offsets.values().map(|o| i128::from(*o)).sum()
    }
}

/// The published state of one view version: its segments, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewManifest {
    pub view: String,
    pub version: String,
    pub segments: Vec<Segment>,
}

impl ViewManifest {
    /// For each segment, newest first, the window starts it answers (newest segment wins).
    pub fn effective(&self) -> Vec<(&Segment, Vec<StartRange>)> {
        let mut claimed = Coverage::new();
        let mut out = Vec::with_capacity(self.segments.len());
        for seg in self.segments.iter().rev() {
            let mine: Vec<StartRange> = claimed.gaps(seg.covered);
            claimed.insert(seg.covered);
            out.push((seg, mine));
        }
        out
    }

    /// The manifest with `segment` added in recency order (a job that read an older archive
    /// never overrides one that read a newer archive, whatever order they finish in); segments
    /// left with nothing to answer are dropped.
    pub fn with_segment(&self, segment: Segment) -> Self {
        let mut next = self.clone();
        let at = next
            .segments
            .iter()
            .rposition(|s| s.recency() <= segment.recency())
            .map_or(0, |i| i + 1);
        next.segments.insert(at, segment);
        let live: Vec<String> = next
            .effective()
            .into_iter()
            .filter(|(_, ranges)| !ranges.is_empty())
            .map(|(s, _)| s.path.clone())
            .collect();
        next.segments.retain(|s| live.contains(&s.path));
        next
    }

    pub fn coverage(&self) -> Coverage {
        Coverage::from_ranges(self.segments.iter().map(|s| s.covered))
    }
}

/// A view's published exact results, as served.
#[derive(Debug, Clone, Default)]
pub struct PublishedView {
    pub seq: Option<u64>,
    pub manifest: ViewManifest,
    pub coverage: Coverage,
    /// Sorted in result order.
    pub rows: Vec<ViewRow>,
}

impl PublishedView {
    /// Rows whose window starts in `range`.
    pub fn rows_in(&self, range: StartRange) -> &[ViewRow] {
        let lo = self.rows.partition_point(|r| r.window.start < range.from);
        let hi = self.rows.partition_point(|r| r.window.start < range.to);
        &self.rows[lo..hi.max(lo)]
    }
}

/// What a publication did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    pub seq: u64,
    pub segment: String,
    pub rows: u64,
}

/// The published views, shared by the job runner (writer) and the serving layer (reader).
#[derive(Debug)]
pub struct ViewCatalog {
    store: Arc<dyn ObjectStore>,
    views: BTreeMap<String, ViewDefinition>,
    published: RwLock<HashMap<String, Arc<PublishedView>>>,
    changes: watch::Sender<u64>,
}

impl ViewCatalog {
    pub fn new(
        store: Arc<dyn ObjectStore>,
        views: impl IntoIterator<Item = ViewDefinition>,
    ) -> Self {
        Self {
            store,
            views: views.into_iter().map(|v| (v.name.clone(), v)).collect(),
            published: RwLock::new(HashMap::new()),
            changes: watch::Sender::new(0),
        }
    }

    pub fn view(&self, name: &str) -> Option<&ViewDefinition> {
        self.views.get(name)
    }

    pub fn views(&self) -> impl Iterator<Item = &ViewDefinition> {
        self.views.values()
    }

    /// The view's published state (empty if nothing is published yet).
    pub fn get(&self, view: &str) -> Option<Arc<PublishedView>> {
        if !self.views.contains_key(view) {
            return None;
        }
        let published = self.published.read().unwrap_or_else(|e| e.into_inner());
        Some(published.get(view).cloned().unwrap_or_default())
    }

    /// A counter bumped on every change to any view; receivers re-read what they need.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn chain(&self, view: &ViewDefinition) -> ManifestChain {
        ManifestChain::new(
            Arc::clone(&self.store),
            layout::view_manifest_dir(&view.name, &view.version.0),
        )
    }

    /// Reloads every view whose manifest changed (publications by other instances included).
    pub async fn refresh_all(&self) -> Result<()> {
        for name in self.views.keys() {
            self.refresh(name).await?;
        }
        Ok(())
    }

    /// Reloads `view` if a newer manifest exists. Returns whether anything changed.
    pub async fn refresh(&self, view: &str) -> Result<bool> {
        let def = self
            .views
            .get(view)
            .ok_or_else(|| Error::UnknownView(view.to_owned()))?;
        let Some((seq, manifest)) = self.chain(def).latest::<ViewManifest>().await? else {
            return Ok(false);
        };
        if self.get(view).and_then(|p| p.seq).is_some_and(|s| s >= seq) {
            return Ok(false);
        }
        let mut rows = Vec::new();
        for (segment, ranges) in manifest.effective() {
            if ranges.is_empty() {
                continue;
            }
            let batches = self.read_segment(&segment.path).await?;
            let coverage = Coverage::from_ranges(ranges);
            for row in decode_rows(def, &batches).map_err(|detail| Error::Segment {
                path: segment.path.clone(),
                detail,
            })? {
                if coverage.contains(row.window.start) {
                    rows.push(row);
                }
            }
        }
        rows.sort_by(ViewRow::order);
        let next = Arc::new(PublishedView {
            seq: Some(seq),
            coverage: manifest.coverage(),
            manifest,
            rows,
        });
        {
            let mut published = self.published.write().unwrap_or_else(|e| e.into_inner());
            // Another refresh may have installed something newer meanwhile.
            if published
                .get(view)
                .and_then(|p| p.seq)
                .is_some_and(|s| s >= seq)
            {
                return Ok(false);
            }
            published.insert(view.to_owned(), next);
        }
        self.changes.send_modify(|n| *n += 1);
        Ok(true)
    }

    async fn read_segment(&self, path: &str) -> Result<Vec<RecordBatch>> {
        let bytes = self
            .store
            .get(&Path::from(path))
            .await
            .map_err(|source| Error::Store {
                path: path.to_owned(),
                source,
            })?
            .bytes()
            .await
            .map_err(|source| Error::Store {
                path: path.to_owned(),
                source,
            })?;
        read_parquet(bytes).map_err(|detail| Error::Segment {
            path: path.to_owned(),
            detail,
        })
    }

    /// Writes a job's result as a segment and publishes it, then installs it in memory.
    pub async fn publish(
        &self,
        view: &ViewDefinition,
        job: &str,
        covered: StartRange,
        batches: &[RecordBatch],
        archive_offsets: BTreeMap<i32, i64>,
    ) -> Result<Publication> {
        let path = layout::view_segment(&view.name, &view.version.0, job);
        let bytes = write_parquet(batches).map_err(|detail| Error::Segment {
            path: path.clone(),
            detail,
        })?;
        self.store
            .put(&Path::from(path.as_str()), PutPayload::from(bytes))
            .await
            .map_err(|source| Error::Store {
                path: path.clone(),
                source,
            })?;
        let rows: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
        let segment = Segment {
            path: path.clone(),
            job: job.to_owned(),
            covered,
            rows,
            published_at: EventTime(Utc::now().timestamp_millis()),
            archive_offsets,
        };
        let chain = self.chain(view);
        const ATTEMPTS: u32 = 10;
        for _ in 0..ATTEMPTS {
            let (seq, current) = match chain.latest::<ViewManifest>().await? {
                Some((seq, m)) => (seq + 1, m),
                None => (
                    0,
                    ViewManifest {
                        view: view.name.clone(),
                        version: view.version.0.clone(),
                        segments: Vec::new(),
                    },
                ),
            };
            let next = current.with_segment(segment.clone());
            match chain.publish(seq, &next).await {
                Ok(()) => {
                    chain.prune(seq.saturating_sub(1)).await;
                    self.refresh(&view.name).await?;
                    return Ok(Publication {
                        seq,
                        segment: path,
                        rows,
                    });
                }
                Err(manifest::Error::Conflict { .. }) => continue,
                Err(err) => return Err(err.into()),
            }
        }
        Err(Error::Contended {
            view: view.name.clone(),
            attempts: ATTEMPTS,
        })
    }
}

fn write_parquet(batches: &[RecordBatch]) -> Result<Vec<u8>, String> {
    let Some(first) = batches.first() else {
        return Err("a segment needs a schema; the query returned no batches".into());
    };
    let mut out = Vec::new();
    let mut writer =
        ArrowWriter::try_new(&mut out, first.schema(), None).map_err(|e| e.to_string())?;
    for b in batches {
        writer.write(b).map_err(|e| e.to_string())?;
    }
    writer.close().map_err(|e| e.to_string())?;
    Ok(out)
}

fn read_parquet(bytes: Bytes) -> Result<Vec<RecordBatch>, String> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .and_then(|b| b.build())
        .map_err(|e| e.to_string())?;
    reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())
}

fn scalar_i64(v: &ScalarValue) -> Option<i64> {
    match v {
        ScalarValue::Int8(x) => x.map(i64::from),
        ScalarValue::Int16(x) => x.map(i64::from),
        ScalarValue::Int32(x) => x.map(i64::from),
        ScalarValue::Int64(x) => *x,
        ScalarValue::UInt8(x) => x.map(i64::from),
        ScalarValue::UInt16(x) => x.map(i64::from),
        ScalarValue::UInt32(x) => x.map(i64::from),
        ScalarValue::UInt64(x) => x.and_then(|v| i64::try_from(v).ok()),
        _ => None,
    }
}

fn scalar_f64(v: &ScalarValue) -> Option<f64> {
    match v {
        ScalarValue::Float16(x) => x.map(f64::from),
        ScalarValue::Float32(x) => x.map(f64::from),
        ScalarValue::Float64(x) => *x,
        ScalarValue::Decimal128(Some(x), _, scale) => {
            Some(*x as f64 / 10f64.powi(i32::from(*scale)))
        }
        other => scalar_i64(other).map(|i| i as f64),
    }
}

fn group_value(v: ScalarValue) -> GroupValue {
    if v.is_null() {
        return GroupValue::Null;
    }
    match v {
        ScalarValue::Utf8(Some(s))
        | ScalarValue::Utf8View(Some(s))
        | ScalarValue::LargeUtf8(Some(s)) => GroupValue::Str(s),
        ScalarValue::Boolean(Some(b)) => GroupValue::Bool(b),
        ScalarValue::Float64(Some(f)) => GroupValue::Float(f),
        ScalarValue::TimestampMillisecond(Some(t), _) => GroupValue::Time(EventTime(t)),
        other => match scalar_i64(&other) {
            Some(i) => GroupValue::Int(i),
            None => GroupValue::Str(other.to_string()),
        },
    }
}

/// Converts query output (`window_start, window_end, g0.., a0..`) into rows.
pub fn decode_rows(view: &ViewDefinition, batches: &[RecordBatch]) -> Result<Vec<ViewRow>, String> {
    let groups = view.group_by.len();
    let mut out = Vec::new();
    for batch in batches {
        if batch.num_columns() != 2 + groups + view.aggregates.len() {
            return Err(format!(
                "expected {} columns, found {}",
                2 + groups + view.aggregates.len(),
                batch.num_columns()
            ));
        }
        let scalar = |col: usize, row: usize| {
            ScalarValue::try_from_array(batch.column(col).as_ref(), row).map_err(|e| e.to_string())
        };
        for row in 0..batch.num_rows() {
            let start = scalar_i64(&scalar(0, row)?).ok_or("null window_start")?;
            let end = scalar_i64(&scalar(1, row)?).ok_or("null window_end")?;
            let group = (0..groups)
                .map(|g| scalar(2 + g, row).map(group_value))
                .collect::<Result<Vec<_>, _>>()?;
            let mut values = Vec::with_capacity(view.aggregates.len());
            for (i, agg) in view.aggregates.iter().enumerate() {
                let col = 2 + groups + i;
                let v = scalar(col, row)?;
                let is_int = batch.column(col).data_type().is_integer();
                values.push(match agg.function {
                    _ if v.is_null() => AggregateValue::Null,
                    AggregateFunction::Count | AggregateFunction::CountDistinct => {
                        scalar_i64(&v).map_or(AggregateValue::Null, AggregateValue::Int)
                    }
                    AggregateFunction::Avg | AggregateFunction::Percentile { .. } => {
                        scalar_f64(&v).map_or(AggregateValue::Null, AggregateValue::Float)
                    }
                    _ if is_int => scalar_i64(&v).map_or(AggregateValue::Null, AggregateValue::Int),
                    _ => scalar_f64(&v).map_or(AggregateValue::Null, AggregateValue::Float),
                });
            }
            out.push(ViewRow {
                window: Window {
                    start: EventTime(start),
                    end: EventTime(end),
                },
                group,
                values,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(name: &str, a: i64, b: i64) -> Segment {
        seen(name, a, b, 0)
    }

    fn seen(name: &str, a: i64, b: i64, offset: i64) -> Segment {
        Segment {
            path: name.into(),
            job: name.into(),
            covered: StartRange::new(EventTime(a), EventTime(b)),
            rows: 0,
            published_at: EventTime(0),
            archive_offsets: [(0, offset)].into_iter().collect(),
        }
    }

    #[test]
    fn an_older_job_finishing_last_never_overrides_a_newer_one() {
        // The job that read offsets up to 100 publishes after the one that read up to 200.
        let m = ViewManifest::default()
            .with_segment(seen("newer", 0, 100, 200))
            .with_segment(seen("older", 0, 100, 100));
        assert_eq!(
            m.segments.len(),
            1,
            "the older segment is entirely shadowed"
        );
        assert_eq!(m.segments[0].path, "newer");
        let m = ViewManifest::default()
            .with_segment(seen("newer", 50, 100, 200))
            .with_segment(seen("older", 0, 100, 100));
        let eff: Vec<_> = m
            .effective()
            .into_iter()
            .map(|(s, r)| (s.path.clone(), r))
            .collect();
        assert_eq!(eff[0].0, "newer");
        assert_eq!(
            eff[1],
            (
                "older".to_string(),
                vec![StartRange::new(EventTime(0), EventTime(50))]
            )
        );
    }

    #[test]
    fn newest_segment_wins_and_shadowed_segments_are_dropped() {
        let m = ViewManifest::default()
            .with_segment(seg("a", 0, 100))
            .with_segment(seg("b", 50, 150));
        let eff: Vec<_> = m
            .effective()
            .into_iter()
            .map(|(s, r)| (s.path.clone(), r))
            .collect();
        assert_eq!(
            eff,
            [
                (
                    "b".to_string(),
                    vec![StartRange::new(EventTime(50), EventTime(150))]
                ),
                (
                    "a".to_string(),
                    vec![StartRange::new(EventTime(0), EventTime(50))]
                ),
            ]
        );
        let m = m.with_segment(seg("c", 0, 200));
        assert_eq!(m.segments.len(), 1, "c shadows a and b entirely");
        assert_eq!(m.coverage().horizon(), Some(EventTime(200)));
    }
}
