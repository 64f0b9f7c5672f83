//! Published exact views: segments, view manifests and the in-memory copy the serving layer reads.
//!
//! ```text
//!  recompute output ──► segment::encode ──► views/<view>/<version>/segments/<job>.parquet
//!                                                   │ then
//!                   manifest::ViewManifest::with_segment ──► next view manifest (create-if-absent)
//!                                                   │ then
//!  refresh: newest manifest ─► effective ranges per segment ─► segment::decode_rows ─► PublishedView
//!                                                   │ swapped atomically, announced on a watch
//!                                                   ▼
//!                                         serving layer (seam, reconciliation)
//! ```
//!
//! The manifest is the only point of publication: a job that fails before it publishes changes
//! nothing a reader can see.
//!
//! - [`manifest`]: which segment answers which windows (pure).
//! - `segment`: segment objects to and from view rows.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use datafusion::arrow::array::RecordBatch;
use object_store::ObjectStore;
use tandem_shared::coverage::{Coverage, StartRange};
use tandem_shared::error::ErrorKind;
use tandem_shared::layout;
use tandem_shared::row::ViewRow;
use tandem_shared::time::EventTime;
use tandem_shared::view::ViewDefinition;
use tandem_store::manifest::{self as chain, ManifestChain};
use tandem_store::object;
use tokio::sync::watch;

pub mod manifest;
pub mod segment;

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
            Error::Segment { .. } | Error::UnknownView(_) => ErrorKind::Internal,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

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
            let decoded = segment::decode_rows(def, &batches).map_err(|source| Error::Segment {
                path: segment.path.clone(),
                source,
            })?;
            for row in decoded {
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
        let bytes = object::read(&self.store, path).await?;
        segment::decode(bytes).map_err(|source| Error::Segment {
            path: path.to_owned(),
            source,
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
        published_at: EventTime,
    ) -> Result<Publication> {
        let path = layout::view_segment(&view.name, &view.version.0, job);
        let bytes = segment::encode(batches).map_err(|source| Error::Segment {
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
