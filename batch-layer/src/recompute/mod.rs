//! Recompute: the exact view, computed by DataFusion over the archive, published as a segment.
//!
//! ```text
//!  ArchiveSnapshot (partition manifests) ──► plan: covered / not-ready window starts (pure)
//!        │ files pruned by event time (date/hour layout + per-file min/max)
//!        ▼
//!  DataFusion, one query per chunk of window starts (about an hour each), over exactly the
//!  files the chunk needs ──► RecordBatches
//!        ▼
//!  ViewCatalog::publish: one segment Parquet, then the next view manifest
//! ```
//!
//! Chunks give jobs progress and a place to stop when cancelled; nothing is published until
//! every chunk succeeded. Session windows are computed in one query (sessions have no grid);
//! a session is published once it can no longer grow; a group with one that still can is held
//! back from it on, alone (see [`plan::session_coverage`]).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use datafusion::arrow::array::{BooleanArray, RecordBatch};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::error::DataFusionError;
use datafusion::execution::memory_pool::{FairSpillPool, MemoryPool};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use object_store::ObjectStore;
use serde::{Deserialize, Serialize};
use tandem_shared::clock::Clock;
use tandem_shared::coverage::{Held, StartRange};
use tandem_shared::error::ErrorKind;
use tandem_shared::schema::EventSchema;
use tandem_shared::time::{EventTime, Span};
use tandem_shared::view::ViewDefinition;
use tandem_shared::window::{WindowSpec, align_down};
use tokio_util::sync::CancellationToken;

use crate::archive::{self, ArchiveSnapshot, ArchivedFile};
use crate::catalog::{self, ViewCatalog};
use crate::tables;
use dimensions::DimensionFiles;
use tandem_store::manifest;

#[cfg(feature = "ballista")]
pub mod ballista;
mod dimensions;
mod dirty;
pub mod engine;
pub(crate) mod plan;
pub(crate) mod query;
mod rollup;
pub(crate) mod sketches;

pub use query::{EVENTS_TABLE, dimension_table};
pub use rollup::{ExactRollup, RollupError};

pub use dirty::Cleanliness;
pub use engine::Engine;

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
    #[error("publishing: {0}")]
    Publish(#[from] catalog::Error),
    #[error("cancelled")]
    Cancelled,
}

impl Error {
    /// Whose problem the failure is; the scheduler retries only transient ones.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Archive(e) => e.kind(),
            Error::Query { source, .. } => query_error_kind(source),
            Error::Publish(e) => e.kind(),
            Error::Cancelled => ErrorKind::User,
        }
    }
}

/// Classifies a DataFusion error. A view's expressions are the user's, so an error evaluating
/// them on real data (a division by zero, a failed cast) or planning them is the user's; the
/// store failing under the query is transient; anything else is internal.
fn query_error_kind(error: &DataFusionError) -> ErrorKind {
    use datafusion::arrow::error::ArrowError;
    match error {
        DataFusionError::ArrowError(e, _) => match e.as_ref() {
            ArrowError::DivideByZero
            | ArrowError::CastError(_)
            | ArrowError::ParseError(_)
            | ArrowError::ComputeError(_)
            | ArrowError::ArithmeticOverflow(_)
            | ArrowError::InvalidArgumentError(_) => ErrorKind::User,
            ArrowError::IoError(..) | ArrowError::ExternalError(_) => ErrorKind::Transient,
            _ => ErrorKind::Internal,
        },
        DataFusionError::SQL(..) | DataFusionError::Plan(_) | DataFusionError::SchemaError(..) => {
            ErrorKind::User
        }
        DataFusionError::ObjectStore(_)
        | DataFusionError::IoError(_)
        | DataFusionError::ParquetError(_)
        | DataFusionError::ExecutionJoin(_)
        | DataFusionError::ResourcesExhausted(_)
        | DataFusionError::External(_) => ErrorKind::Transient,
        DataFusionError::Context(_, inner) | DataFusionError::Diagnostic(_, inner) => {
            query_error_kind(inner)
        }
        DataFusionError::Shared(inner) => query_error_kind(inner),
        DataFusionError::Collection(errors) => {
            errors.first().map_or(ErrorKind::Internal, query_error_kind)
        }
        _ => ErrorKind::Internal,
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What recomputing one view did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
    /// Milliseconds spent planning the job and running its queries.
    #[serde(default)]
    pub query_ms: u64,
    /// Milliseconds spent writing the segment and publishing the manifest.
    #[serde(default)]
    pub publish_ms: u64,
    /// False when some published windows may lack events the archive lost (offset gaps).
    #[serde(default = "complete_by_default")]
    pub complete: bool,
    /// Published window starts that are not exact because of offset gaps.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub incomplete: Vec<StartRange>,
    /// Session views: groups held back from a session that can still grow (their later
    /// sessions stay with the speed layer until a job finds it ended).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub groups_held: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn complete_by_default() -> bool {
    true
}

impl Default for ViewOutcome {
    fn default() -> Self {
        Self {
            view: String::new(),
            covered: None,
            not_ready: None,
            windows_published: 0,
            files_scanned: 0,
            bytes_scanned: 0,
            rows_read: 0,
            result_rows: 0,
            query_ms: 0,
            publish_ms: 0,
            complete: true,
            incomplete: Vec::new(),
            groups_held: 0,
        }
    }
}

/// Progress of a running recompute, reported after each chunk.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Progress {
    pub chunks_done: usize,
    pub chunks_total: usize,
    pub files_read: u64,
    pub rows_read: u64,
}

/// Everything a recompute needs; shared by all jobs.
#[derive(Debug)]
pub struct Recompute {
    store: Arc<dyn ObjectStore>,
    schema: Arc<EventSchema>,
    topic: String,
    /// A partition quiet for this long no longer holds archive completeness back.
    idle_timeout: Span,
    catalog: Arc<ViewCatalog>,
    clock: Arc<dyn Clock>,
    engine: Engine,
    /// The memory every recompute query of this process shares (`batch.memory`): a query that
    /// needs more spills to disk where its operators can (sorts, grouping), else fails its job
    /// (retried later: other jobs may have freed memory by then). Without it one job's exact
    /// distinct count or percentile, held in memory, could take the whole process down, and the
    /// speed and serving layers with it.
    memory: Arc<dyn MemoryPool>,
    /// The in-process Ballista cluster of `Engine::Ballista { url: None }`, started once.
    #[cfg_attr(not(feature = "ballista"), allow(dead_code))]
    standalone: Arc<engine::Standalone>,
}

/// `batch.memory` unless configured.
pub const DEFAULT_MEMORY: usize = 1 << 30;

/// Rows one query should read: big enough that per-query costs (planning, opening files)
/// vanish, small enough that progress moves and a cancellation takes effect soon.
const CHUNK_ROWS: u64 = 20_000_000;

/// Splits `covered` into chunks of whole hours (at least one window each) holding about
/// [`CHUNK_ROWS`] archived rows, using `rows_in(scan)` to count the rows a chunk reads.
/// The event times a computation of the windows starting in `starts` reads: from the first start
/// to the end of the last window.
fn scan_of(starts: StartRange, size: Span, slide: Span) -> StartRange {
    StartRange::new(
        starts.from,
        EventTime(
            starts
                .to
                .millis()
                .saturating_sub(slide.millis())
                .saturating_add(size.millis()),
        ),
    )
}

fn chunks(
    view: &ViewDefinition,
    covered: StartRange,
    rows_in: impl Fn(StartRange) -> u64,
) -> Vec<StartRange> {
    let (Some(slide), Some(size)) = (view.window.slide(), view.window.size()) else {
        return vec![covered];
    };
    let (slide, size) = (slide.millis(), size.millis());
    let step = (3_600_000 / slide).max(1) * slide;
    let scan = |from: i64, to: i64| {
        StartRange::new(
            EventTime(from),
            EventTime(to.saturating_sub(slide).saturating_add(size)),
        )
    };
    let mut out = Vec::new();
    let mut from = covered.from.millis();
    while from < covered.to.millis() {
        let mut to = align_down(from, step)
            .saturating_add(step)
            .min(covered.to.millis());
        // Grow the chunk hour by hour while it stays under the row target.
        while to < covered.to.millis() {
            let next = to.saturating_add(step).min(covered.to.millis());
            if rows_in(scan(from, next)) > CHUNK_ROWS {
                break;
            }
            to = next;
        }
        out.push(StartRange::new(EventTime(from), EventTime(to)));
        from = to;
    }
    out
}

impl Recompute {
    /// Recomputes views of `catalog` from the archive of `topic` in `store`, publishing to
    /// `catalog`. `idle_timeout` is the archive's: a partition quiet for that long no longer
    /// holds completeness back.
    pub fn new(
        store: Arc<dyn ObjectStore>,
        schema: Arc<EventSchema>,
        topic: impl Into<String>,
        idle_timeout: Span,
        catalog: Arc<ViewCatalog>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            store,
            schema,
            topic: topic.into(),
            idle_timeout,
            catalog,
            clock,
            engine: Engine::default(),
            memory: Arc::new(FairSpillPool::new(DEFAULT_MEMORY)),
            standalone: Arc::default(),
        }
    }

    /// Runs recompute queries within `bytes` of memory, shared by every job of the process.
    pub fn with_memory(mut self, bytes: usize) -> Self {
        self.memory = Arc::new(FairSpillPool::new(bytes));
        self
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    pub fn catalog(&self) -> &Arc<ViewCatalog> {
        &self.catalog
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Runs recompute queries on `engine` (DataFusion in this process by default).
    pub fn with_engine(mut self, engine: Engine) -> Self {
        self.engine = engine;
        self
    }

    async fn session(&self) -> Result<SessionContext, DataFusionError> {
        let config = SessionConfig::new()
            .with_target_partitions(std::thread::available_parallelism().map_or(2, |n| n.get()));
        match &self.engine {
            Engine::DataFusion => {
                // Spill files go to the system's temporary directory.
                let runtime = RuntimeEnvBuilder::new()
                    .with_memory_pool(Arc::clone(&self.memory))
                    .build_arc()?;
                let ctx = SessionContext::new_with_config_rt(config, runtime);
                tables::register_store(&ctx, &self.store)?;
                sketches::register(&ctx);
                Ok(ctx)
            }
            #[cfg(feature = "ballista")]
            Engine::Ballista { url } => {
                // The scheduler and the executors resolve the sketch functions by name.
                let state = ballista::session_state(
                    ballista::runtime(Arc::clone(&self.store), None)?,
                    config,
                )?;
                let ctx = engine::ballista_session(state, url.as_deref(), &self.standalone).await?;
                sketches::register(&ctx);
                Ok(ctx)
            }
            #[cfg(not(feature = "ballista"))]
            Engine::Ballista { .. } => Err(engine::unavailable()),
        }
    }

    /// Registers exactly `files` as the events table, and each joined table's archived rows.
    fn register(
        &self,
        ctx: &SessionContext,
        files: &[&ArchivedFile],
        dimensions: &[DimensionFiles],
    ) -> Result<(), DataFusionError> {
        ctx.register_table(
            query::EVENTS_TABLE,
            self.files_table(ctx, &self.schema, files)?,
        )?;
        for d in dimensions {
            let files: Vec<&ArchivedFile> = d.files.iter().collect();
            ctx.register_table(
                query::dimension_table(&d.name),
                self.files_table(ctx, &d.schema, &files)?,
            )?;
        }
        Ok(())
    }

    fn files_table(
        &self,
        ctx: &SessionContext,
        schema: &EventSchema,
        files: &[&ArchivedFile],
    ) -> Result<Arc<dyn datafusion::catalog::TableProvider>, DataFusionError> {
        let schema = tables::events::read_schema(schema);
        match &self.engine {
            #[cfg(feature = "ballista")]
            Engine::Ballista { .. } => {
                let paths: Vec<String> = files.iter().map(|f| f.path.clone()).collect();
                engine::ballista_files_table(schema, &paths)
            }
            _ => {
                let parquet = ctx.state().default_table_options().parquet;
                tables::events::files_table(schema, files, parquet)
            }
        }
    }

    async fn run_sql(
        &self,
        view: &ViewDefinition,
        files: &[&ArchivedFile],
        dimensions: &[DimensionFiles],
        sql: &str,
        cancel: &CancellationToken,
    ) -> Result<Vec<RecordBatch>> {
        let query_err = |source| Error::Query {
            view: view.name.clone(),
            source,
        };
        let ctx = self.session().await.map_err(query_err)?;
        self.register(&ctx, files, dimensions).map_err(query_err)?;
        tracing::debug!(view = %view.name, %sql, "recompute query");
        let run = async {
            let df = ctx.sql(sql).await?;
            let schema = Arc::new(df.schema().as_arrow().clone());
            let mut batches = df.collect().await?;
            if batches.is_empty() {
                batches.push(RecordBatch::new_empty(schema));
            }
            Ok::<_, DataFusionError>(batches)
        };
        tokio::select! {
            _ = cancel.cancelled() => Err(Error::Cancelled),
            result = run => result.map_err(query_err),
        }
    }

    /// Recomputes `view` for `requested` windows and publishes what is ready.
    pub async fn run_view(
        &self,
        view: &ViewDefinition,
        requested: Requested,
        job: &str,
        cancel: &CancellationToken,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<ViewOutcome> {
        let started = std::time::Instant::now();
        let snapshot = ArchiveSnapshot::load(&self.store, &self.topic).await?;
        let now = self.clock.now();
        // A window is exact once the events and every joined table are archived past it.
        let (dimensions, tables_complete) = self.dimensions(view, now, EventTime::LATEST).await?;
        let complete = snapshot
            .complete_until(now, self.idle_timeout)
            .min(tables_complete);
        let extent = plan::ArchiveExtent {
            complete_until: complete,
            earliest: snapshot.earliest_event_time(),
            latest: snapshot.latest_event_time(),
        };
        let mut outcome = ViewOutcome {
            view: view.name.clone(),
            ..Default::default()
        };
        // The files this run may read (loaded once), and those it did.
        let pool: Vec<ArchivedFile>;
        let mut read: HashSet<String> = HashSet::new();
        let mut batches = Vec::new();
        let mut held: Vec<Held> = Vec::new();
        let covered = match view.window {
            WindowSpec::Session { gap } => {
                // Sessions start at events: none starts before the earliest archived one, so
                // an earlier requested start is clamped to it.
                let Some(earliest) = extent.earliest else {
                    return Ok(outcome);
                };
                let from = requested.from.map_or(earliest, |f| f.max(earliest));
                let scan_from = from.saturating_sub(gap);
                pool = snapshot
                    .files_between(&self.store, scan_from, EventTime::MAX)
                    .await?;
                let files: Vec<&ArchivedFile> = pool.iter().collect();
                let sql = query::session_query(
                    view,
                    &self.schema.time_field,
                    self.schema.id_field.as_deref(),
                    scan_from,
                )
                .unwrap_or_default();
                progress(Progress {
                    chunks_done: 0,
                    chunks_total: 1,
                    ..Default::default()
                });
                let all = self
                    .run_sql(view, &files, &dimensions, &sql, cancel)
                    .await?;
                read.extend(files.iter().map(|f| f.path.clone()));
                let sessions =
                    catalog::segment::decode_windows(view, &all).map_err(|e| Error::Query {
                        view: view.name.clone(),
                        source: DataFusionError::Internal(e.to_string()),
                    })?;
                let coverage = complete.and_then(|c| {
                    plan::session_coverage(
                        sessions.iter().map(|(w, g)| (w.start, w.end, g.as_slice())),
                        from,
                        requested.to,
                        view.watermark(c),
                    )
                });
                // Held groups' open sessions are left to the speed layer too (`groups_held`).
                let covered_to = coverage
                    .as_ref()
                    .and_then(|c| c.ranges().last())
                    .map(|r| r.to);
                outcome.not_ready = match (covered_to, requested.to) {
                    (Some(c), Some(t)) if t > c => Some(StartRange::new(c.max(from), t)),
                    (None, t) => Some(StartRange::new(from, t.unwrap_or(EventTime::LATEST))),
                    _ => None,
                };
                match coverage {
                    Some(c) => {
                        // Rows of the sessions this job answers: in the range, not held back.
                        let keep: Vec<bool> =
                            sessions.iter().map(|(w, g)| c.covers(g, w.start)).collect();
                        batches = keep_rows(&all, &keep).map_err(|source| Error::Query {
                            view: view.name.clone(),
                            source,
                        })?;
                        outcome.windows_published = keep.iter().filter(|k| **k).count() as u64;
                        outcome.groups_held = c.held().len() as u64;
                        if !c.held().is_empty() {
                            tracing::info!(view = %view.name, held = c.held().len(), "groups with a session still open: held back from it on");
                        }
                        held = c.held().to_vec();
                        c.ranges().first().copied()
                    }
                    None => None,
                }
            }
            _ => {
                let plan = plan::plan(view, requested, extent);
                outcome.not_ready = plan.not_ready;
                let Some(covered) = plan.covered else {
                    tracing::info!(view = %view.name, ?complete, "nothing ready to recompute");
                    return Ok(outcome);
                };
                let (Some(size), Some(slide)) = (view.window.size(), view.window.slide()) else {
                    return Ok(outcome);
                };
                // Every file the chunks may read, with only the sealed lists that overlap read.
                let whole = scan_of(covered, size, slide);
                pool = snapshot
                    .files_between(&self.store, whole.from, whole.to)
                    .await?;
                let parts = chunks(view, covered, |scan| {
                    archive::between(&pool, scan.from, scan.to)
                        .map(|f| f.rows)
                        .sum()
                });
                for (i, chunk) in parts.iter().enumerate() {
                    let scan = scan_of(*chunk, size, slide);
                    let files: Vec<&ArchivedFile> =
                        archive::between(&pool, scan.from, scan.to).collect();
                    let sql = query::window_query(
                        view,
                        &self.schema.time_field,
                        self.schema.id_field.as_deref(),
                        *chunk,
                        scan,
                    )
                    .unwrap_or_default();
                    batches.extend(
                        self.run_sql(view, &files, &dimensions, &sql, cancel)
                            .await?,
                    );
                    read.extend(files.iter().map(|f| f.path.clone()));
                    let (files_read, rows_read) = totals(&pool, &read);
                    progress(Progress {
                        chunks_done: i + 1,
                        chunks_total: parts.len(),
                        files_read,
                        rows_read,
                    });
                }
                outcome.windows_published = plan::window_count(view, covered);
                Some(covered)
            }
        };
        let scanned: Vec<&ArchivedFile> = pool
            .iter()
            .filter(|f| read.contains(f.path.as_str()))
            .collect();
        outcome.files_scanned = scanned.len() as u64;
        outcome.bytes_scanned = scanned.iter().map(|f| f.bytes).sum();
        outcome.rows_read = scanned.iter().map(|f| f.rows).sum();
        outcome.covered = covered;
        let Some(covered) = covered else {
            return Ok(outcome);
        };
        outcome.result_rows = batches.iter().map(|b| b.num_rows() as u64).sum();
        // The last moment to stop: after this the publication is all or nothing.
        if cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        outcome.query_ms = started.elapsed().as_millis() as u64;
        let publishing = std::time::Instant::now();
        let offsets: BTreeMap<i32, i64> = snapshot
            .partitions
            .iter()
            .map(|(p, m)| (*p, m.next_offset))
            .collect();
        outcome.incomplete = plan::incomplete(view, covered, snapshot.gaps().map(|g| g.times()));
        outcome.complete = outcome.incomplete.is_empty();
        if !outcome.complete {
            tracing::warn!(view = %view.name, incomplete = ?outcome.incomplete, "publishing windows the archive lost events of (offset gaps): not exact");
        }
        self.catalog
            .publish(
                view,
                catalog::JobResult {
                    job,
                    covered,
                    incomplete: outcome.incomplete.clone(),
                    held,
                    batches: &batches,
                    archive_offsets: offsets,
                    table_offsets: dimensions
                        .iter()
                        .map(|d| (d.name.clone(), d.offsets.clone()))
                        .collect(),
                    published_at: now,
                },
            )
            .await?;
        outcome.publish_ms = publishing.elapsed().as_millis() as u64;
        Ok(outcome)
    }
}

fn totals(pool: &[ArchivedFile], read: &HashSet<String>) -> (u64, u64) {
    let files: Vec<&ArchivedFile> = pool
        .iter()
        .filter(|f| read.contains(f.path.as_str()))
        .collect();
    (files.len() as u64, files.iter().map(|f| f.rows).sum())
}

/// The rows of `batches` whose entry of `keep` (one per row, in order) is true.
fn keep_rows(batches: &[RecordBatch], keep: &[bool]) -> Result<Vec<RecordBatch>, DataFusionError> {
    let mut offset = 0;
    batches
        .iter()
        .map(|b| {
            let mask: BooleanArray = keep
                .get(offset..offset + b.num_rows())
                .unwrap_or_default()
                .iter()
                .map(|k| Some(*k))
                .collect();
            offset += b.num_rows();
            if mask.len() != b.num_rows() {
                return Err(DataFusionError::Internal(
                    "a row without a publication decision".into(),
                ));
            }
            Ok(filter_record_batch(b, &mask)?)
        })
        .collect()
}
