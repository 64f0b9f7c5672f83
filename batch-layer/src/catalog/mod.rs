//! Published exact views: segments, view manifests and the in-memory copy the serving layer reads.
//!
//! ```text
//!  recompute output ──► segment::encode ──► views/<view>/<version>/segments/<job>.parquet
//!                                                   │ then
//!                   manifest::ViewManifest::with_segment ──► next view manifest (create-if-absent)
//!                                                   │ then
//!  refresh: newest manifest ─► PublishedView (manifest + coverage; no rows), swapped
//!                                                   │ atomically, announced on a watch
//!                                                   ▼
//!  rows(published, range): effective segments overlapping the range ─► cache: footers and
//!          the row groups whose window_start statistics overlap ─► rows, in result order
//!                                                   ▼
//!                                         serving layer (seam, reconciliation)
//! ```
//!
//! Memory does not grow with history: the catalog holds manifests, and rows only in the
//! segment cache, bounded in bytes. Segments are written sorted by window start in row groups
//! of [`ROW_GROUP_ROWS`], so a query for an hour reads a few row groups of a day's segment.
//!
//! The manifest is the only point of publication: a job that fails before it publishes changes
//! nothing a reader can see.
//!
//! - [`manifest`]: which segment answers which windows (pure).
//! - `segment`: segment objects to and from view rows.
//! - [`cache`]: row groups read on demand, through a byte-bounded cache.
//! - `maintenance`: compaction of closed days, deletion of retired segments and of old view
//!   versions after the retention period.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use datafusion::arrow::array::RecordBatch;
use object_store::ObjectStore;
use tandem_shared::coverage::{Coverage, Held, StartRange};
use tandem_shared::error::ErrorKind;
use tandem_shared::layout;
use tandem_shared::row::ViewRow;
use tandem_shared::sketch::StatedRow;
use tandem_shared::time::EventTime;
use tandem_shared::view::ViewDefinition;
use tandem_store::manifest::{self as chain, ManifestChain};
use tandem_store::object;
use tokio::sync::watch;

use self::cache::{CacheUsage, SegmentCache};

pub(crate) mod cache;
mod maintenance;
pub(crate) mod manifest;
pub(crate) mod segment;

pub use maintenance::{CleanDays, Maintenance};
pub use manifest::{Segment, ViewManifest};

/// Errors reading or publishing views.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Manifest(#[from] chain::Error),
    /// Transient: the store failed.
    #[error("segment: {0}")]
    Store(#[from] object::Error),
    /// Internal: a segment does not have the shape its view implies.
    #[error("segment `{path}`: {source}")]
    Segment {
        path: String,
        source: segment::Error,
    },
    #[error("unknown view `{0}`")]
    UnknownView(String),
    #[error(transparent)]
    Read(#[from] cache::Error),
    /// Concurrent publications kept winning; the job should be retried.
    #[error("view `{view}`: gave up publishing after {attempts} conflicting attempts")]
    Contended { view: String, attempts: u32 },
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Manifest(e) => e.kind(),
            Error::Store(e) => e.kind(),
            Error::Contended { .. } => ErrorKind::Transient,
            Error::Read(cache::Error::Read { .. }) => ErrorKind::Transient,
            Error::Read(cache::Error::Decode { .. }) => ErrorKind::Internal,
            Error::Segment { .. } | Error::UnknownView(_) => ErrorKind::Internal,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Rows per row group of a segment: the unit a query reads and the cache holds.
pub const ROW_GROUP_ROWS: usize = 4096;

/// Default bound of the segment cache. A miss costs one ranged read of a row group (about a
/// millisecond on a local disk), so a small cache keeps the serving process's memory near its
/// first day's while its history grows; raise it when the store is remote (S3), where a miss is
/// a round trip.
pub const DEFAULT_CACHE_BYTES: usize = 16 << 20;

/// A view's published exact results, as served: which segment answers which windows. Rows
/// are read on demand ([`ViewCatalog::rows`]).
#[derive(Debug, Clone, Default)]
pub struct PublishedView {
    pub seq: Option<u64>,
    pub manifest: ViewManifest,
    pub coverage: Coverage,
    /// Covered window starts whose archive lost events (offset gaps): not exact.
    pub incomplete: Coverage,
}

/// A job's result for one view, to publish.
#[derive(Debug)]
pub struct JobResult<'a> {
    pub job: &'a str,
    /// The window starts the result answers.
    pub covered: StartRange,
    /// Of those, the ones the archive lost events of (offset gaps).
    pub incomplete: Vec<StartRange>,
    /// Session views: groups held back within `covered` (a session still open).
    pub held: Vec<Held>,
    /// Query output: `window_start, window_end, groups.., aggregates..`.
    pub batches: &'a [RecordBatch],
    /// The archive's next offset per partition when the job read it.
    pub archive_offsets: BTreeMap<i32, i64>,
    /// Each joined dimension table archive's, likewise.
    pub table_offsets: BTreeMap<String, BTreeMap<i32, i64>>,
    pub published_at: EventTime,
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
    cache: SegmentCache,
}

impl ViewCatalog {
    pub fn new(
        store: Arc<dyn ObjectStore>,
        views: impl IntoIterator<Item = ViewDefinition>,
    ) -> Self {
        Self::with_cache_bytes(store, views, DEFAULT_CACHE_BYTES)
    }

    /// A catalog whose segment cache holds at most `cache_bytes`.
    pub fn with_cache_bytes(
        store: Arc<dyn ObjectStore>,
        views: impl IntoIterator<Item = ViewDefinition>,
        cache_bytes: usize,
    ) -> Self {
        Self {
            cache: SegmentCache::new(Arc::clone(&store), cache_bytes),
            store,
            views: views.into_iter().map(|v| (v.name.clone(), v)).collect(),
            published: RwLock::new(HashMap::new()),
            changes: watch::Sender::new(0),
        }
    }

    /// What the segment cache holds.
    pub fn cache_usage(&self) -> CacheUsage {
        self.cache.usage()
    }

    /// Rows of `published` whose window starts in `range`, in result order: for each window,
    /// from the segment that answers it. Reads only segments and row groups the range needs.
    pub async fn rows(&self, published: &PublishedView, range: StartRange) -> Result<Vec<ViewRow>> {
        let def = self.definition(published)?;
        let mut rows = Vec::new();
        for (path, wanted) in reads(published, range) {
            rows.extend(self.cache.rows(def, path, &wanted).await?);
        }
        rows.sort_by(ViewRow::order);
        Ok(rows)
    }

    /// [`ViewCatalog::rows`] with each value's rollup state (sketches, an average's sum and
    /// count).
    pub async fn states(
        &self,
        published: &PublishedView,
        range: StartRange,
    ) -> Result<Vec<StatedRow>> {
        let def = self.definition(published)?;
        let mut rows = Vec::new();
        for (path, wanted) in reads(published, range) {
            rows.extend(self.cache.states(def, path, &wanted).await?);
        }
        rows.sort_by(|a, b| ViewRow::order(&a.row, &b.row));
        Ok(rows)
    }

    fn definition(&self, published: &PublishedView) -> Result<&ViewDefinition> {
        self.views
            .get(&published.manifest.view)
            .ok_or_else(|| Error::UnknownView(published.manifest.view.clone()))
    }

    /// [`ViewCatalog::rows`] of the view's current publication.
    pub async fn current_rows(&self, view: &str, range: StartRange) -> Result<Vec<ViewRow>> {
        let published = self
            .get(view)
            .ok_or_else(|| Error::UnknownView(view.to_owned()))?;
        if published.seq.is_none() {
            return Ok(Vec::new());
        }
        self.rows(&published, range).await
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
        let next = Arc::new(PublishedView {
            seq: Some(seq),
            coverage: manifest.coverage(),
            incomplete: manifest.incomplete(),
            manifest,
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

    /// Writes a job's result as a segment and publishes it, then installs it in memory.
    pub async fn publish(
        &self,
        view: &ViewDefinition,
        result: JobResult<'_>,
    ) -> Result<Publication> {
        let JobResult {
            job,
            covered,
            incomplete,
            held,
            batches,
            archive_offsets,
            table_offsets,
            published_at,
        } = result;
        let path = layout::view_segment(&view.name, &view.version.0, job);
        let bytes = segment::encode(batches, ROW_GROUP_ROWS).map_err(|source| Error::Segment {
            path: path.clone(),
            source,
        })?;
        object::write(&self.store, &path, bytes).await?;
        let rows: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
        let segment = Segment {
            path: path.clone(),
            job: job.to_owned(),
            covered,
            rows,
            published_at,
            archive_offsets,
            table_offsets,
            pieces: Vec::new(),
            incomplete,
            held,
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
                        retired: Vec::new(),
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
                Err(chain::Error::Conflict { .. }) => continue,
                Err(err) => return Err(err.into()),
            }
        }
        Err(Error::Contended {
            view: view.name.clone(),
            attempts: ATTEMPTS,
        })
    }
}

/// The segments of `published` that answer windows starting in `range`, each with the ranges of
/// window starts it answers there.
fn reads(published: &PublishedView, range: StartRange) -> Vec<(&str, Vec<StartRange>)> {
    published
        .manifest
        .effective()
        .into_iter()
        .filter_map(|(segment, ranges)| {
            let wanted: Vec<StartRange> = ranges
                .iter()
                .map(|r| StartRange::new(r.from.max(range.from), r.to.min(range.to)))
                .filter(|r| !r.is_empty())
                .collect();
            (!wanted.is_empty()).then_some((segment.path.as_str(), wanted))
        })
        .collect()
}
