//! SQL over the views and the archive, read only and bounded.
//!
//! ```text
//!  sql ─► plan (DataFusion) ─► read-only check ─► execute under a memory pool, a row cap
//!          │ tables:                              and a timeout ─► columns + Arrow batches
//!          ├ <view> : ViewTable (the seam: batch where covered, speed elsewhere)
//!          └ events : the archive (batch layer), exact up to its last roll
//! ```
//!
//! Every query gets its own session: a table reads the current publication and archive
//! snapshot when it is scanned, so there is nothing to keep in sync between queries.
//!
//! Every query, whichever door it came through (HTTP, the PostgreSQL wire protocol, Arrow
//! Flight SQL, rollups, the shell), runs on the SQL runtime ([`runtime`]): its own threads, a
//! bounded number of queries at once, and a timeout that stops CPU-bound plans. Its memory is
//! one pool: operators reserve from it, scalar functions that build large values are admitted
//! against it ([`values`]), and so are the collected answer and its rendering.
//!
//! A door hands over a [`Statement`]: SQL text, or a statement its own parser read (the
//! PostgreSQL door rewrites what clients send to `pg_catalog`) with the values of its
//! parameters. A PostgreSQL session also knows `pg_catalog` ([`pg_catalog`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::ParamValues;
use datafusion::error::DataFusionError;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::cache::cache_manager::CacheManagerConfig;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use datafusion::sql::sqlparser::ast;
use futures::StreamExt;
use object_store::ObjectStore;
use tandem_batch_layer::recompute::EVENTS_TABLE;
use tandem_batch_layer::tables::{self, EventsTable};
use tandem_batch_layer::{ArchiveSnapshot, ViewCatalog};
use tandem_shared::clock::{Clock, SystemClock};
use tandem_shared::schema::EventSchema;
use tandem_shared::time::{EventTime, Span};

use crate::seam::FreshViews;

mod error;
pub(crate) mod pg_catalog;
pub mod render;
pub mod runtime;
mod values;
pub(crate) mod views;

pub use error::{Error, Position};
use error::{classify, refused, refused_statement};
pub use runtime::{Refusal, SqlRuntime, SqlRuntimeLimits};

pub use views::{Fresh, ViewTable};

/// Bounds on one query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqlLimits {
    /// A query that runs longer is stopped (408).
    pub timeout: Duration,
    /// DataFusion's memory pool for the query; an operator that needs more fails the query (413).
    pub memory_bytes: usize,
    /// A result with more rows is refused (413): add a `LIMIT` or aggregate.
    pub max_rows: usize,
    /// Queries at once, and the runtime they run on.
    pub runtime: SqlRuntimeLimits,
}

impl Default for SqlLimits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            memory_bytes: 256 << 20,
            max_rows: 100_000,
            runtime: SqlRuntimeLimits::default(),
        }
    }
}

/// A query's answer: the columns and the rows as Arrow batches.
#[derive(Debug, Clone)]
pub struct SqlAnswer {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
}

impl SqlAnswer {
    pub fn rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }
}

/// What a door asks: SQL text, or a statement its parser already read, with the values of its
/// parameters (`$1`, `$2`, ...).
#[derive(Debug, Clone)]
pub enum Statement {
    Text(String),
    Parsed {
        statement: Box<ast::Statement>,
        params: Option<ParamValues>,
    },
}

impl From<&str> for Statement {
    fn from(sql: &str) -> Self {
        Statement::Text(sql.to_owned())
    }
}

/// Which catalog a query's session shows besides the tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dialect {
    /// The tables and `information_schema`.
    #[default]
    Standard,
    /// Also `pg_catalog` and the functions PostgreSQL clients call on connect (database
    /// `tandem`, schema `public`).
    Postgres,
}

/// One query as a door asks it: the statement, the catalog, and a timeout of the client's own
/// (never longer than the engine's).
#[derive(Debug, Clone)]
pub struct Request {
    pub statement: Statement,
    pub dialect: Dialect,
    pub timeout: Option<Duration>,
}

impl Request {
    pub fn new(statement: Statement, dialect: Dialect) -> Self {
        Self {
            statement,
            dialect,
            timeout: None,
        }
    }
}

/// A planned, checked statement: the types of its parameters and of its answer, for a client
/// that prepares a statement before it runs it.
#[derive(Debug, Clone)]
pub struct Described {
    /// `$1`, `$2`, ... in order; `None` where the plan does not tell.
    pub params: Vec<Option<datafusion::arrow::datatypes::DataType>>,
    pub schema: SchemaRef,
}

/// The database name PostgreSQL clients see.
pub const DATABASE: &str = "tandem";

/// Answers SQL over the views of `catalog` (with `speed` for fresh windows, if given) and the
/// archive of `topic` in `store`.
#[derive(Clone)]
pub struct SqlEngine {
    catalog: Arc<ViewCatalog>,
    speed: Fresh,
    store: Arc<dyn ObjectStore>,
    topic: String,
    schema: Arc<EventSchema>,
    /// Each view's row columns, typed once at start-up.
    view_rows: BTreeMap<String, SchemaRef>,
    limits: SqlLimits,
    /// How long a quiet partition waits before the archive counts it complete (the batch
    /// layer's rule, for exact rollups).
    idle_timeout: Span,
    /// Parquet footers, file statistics and file listings, shared by every query's session:
    /// archive files are immutable, so what one query read about a file holds for the next.
    caches: CacheManagerConfig,
    /// Where queries run.
    runtime: SqlRuntime,
}

impl std::fmt::Debug for SqlEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlEngine")
            .field("topic", &self.topic)
            .field("views", &self.view_rows.keys().collect::<Vec<_>>())
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// Caches that outlive one query's session (see [`SqlEngine`]).
fn shared_caches() -> Result<CacheManagerConfig, DataFusionError> {
    let runtime = RuntimeEnvBuilder::new()
        .with_cache_manager(CacheManagerConfig::default().with_list_files_cache_limit(4 << 20))
        .build()?;
    let caches = &runtime.cache_manager;
    Ok(CacheManagerConfig::default()
        .with_file_metadata_cache(Some(caches.get_file_metadata_cache()))
        .with_file_statistics_cache(caches.get_file_statistic_cache())
        .with_list_files_cache(caches.get_list_files_cache())
        .with_list_files_cache_limit(4 << 20))
}

impl SqlEngine {
    pub async fn new(
        catalog: Arc<ViewCatalog>,
        speed: Option<Arc<dyn FreshViews + Send + Sync>>,
        store: Arc<dyn ObjectStore>,
        topic: &str,
        schema: Arc<EventSchema>,
        limits: SqlLimits,
    ) -> Result<Self, Error> {
        let mut view_rows = BTreeMap::new();
        for view in catalog.views() {
            let rows = tables::results::view_schema(view, &schema)
                .await
                .map_err(|e| Error::Internal(format!("typing view {}: {e}", view.name)))?;
            view_rows.insert(view.name.clone(), rows);
        }
        Ok(Self {
            catalog,
            speed: Fresh(speed),
            store,
            topic: topic.to_owned(),
            schema,
            view_rows,
            limits,
            idle_timeout: Span::from_millis(30_000),
            caches: shared_caches().map_err(|e| Error::Internal(e.strip_backtrace()))?,
            runtime: SqlRuntime::new(limits.runtime).map_err(|e| Error::Internal(e.to_string()))?,
        })
    }

    pub fn limits(&self) -> SqlLimits {
        self.limits
    }

    /// The configured `kafka.idle_timeout` (default 30 s), for [`SqlEngine::archive_complete_until`].
    pub fn with_idle_timeout(mut self, idle_timeout: Span) -> Self {
        self.idle_timeout = idle_timeout;
        self
    }

    /// The event time up to which the archive holds every event, by the rule the batch layer's
    /// jobs use; `None` while nothing is complete.
    pub async fn archive_complete_until(&self) -> Result<Option<EventTime>, Error> {
        let snapshot = ArchiveSnapshot::load(&self.store, &self.topic)
            .await
            .map_err(|e| Error::Internal(format!("reading the archive's manifests: {e}")))?;
        Ok(snapshot.complete_until(SystemClock.now(), self.idle_timeout))
    }

    /// The archive's event schema.
    pub fn schema(&self) -> &EventSchema {
        &self.schema
    }

    fn session(
        &self,
        deadline: std::time::Instant,
        dialect: Dialect,
    ) -> Result<SessionContext, DataFusionError> {
        // No spilling: a query that needs more than its pool fails (413) rather than writing
        // temporary files from the serving process.
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_limit(self.limits.memory_bytes, 1.0)
            .with_cache_manager(self.caches.clone())
            .with_disk_manager_builder(
                DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
            )
            .build_arc()?;
        // (Parquet filter pushdown, `execution.parquet.pushdown_filters`, was measured slower on
        // the bench's archive queries: 3.1x DuckDB against 1.5x for a filtered count.)
        let mut config = SessionConfig::new()
            .with_target_partitions(std::thread::available_parallelism().map_or(2, |n| n.get()))
            .with_information_schema(true);
        if dialect == Dialect::Postgres {
            config = config.with_default_catalog_and_schema(DATABASE, "public");
        }
        let state = SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(runtime)
            .with_default_features()
            .with_physical_optimizer_rule(Arc::new(runtime::StoppablePlans { deadline }))
            .build();
        let ctx = SessionContext::new_with_state(state);
        values::bound_values(&ctx)?;
        if dialect == Dialect::Postgres {
            pg_catalog::install(&ctx, DATABASE)?;
        }
        tables::register_store(&ctx, &self.store)?;
        ctx.register_table(
            EVENTS_TABLE,
            Arc::new(EventsTable::new(
                Arc::clone(&self.store),
                &self.topic,
                &self.schema,
            )),
        )?;
        // The archives of joined dimension tables and streams, which a joined view's exact
        // rollup reads.
        for side in self.catalog.views().flat_map(|v| v.joined_sides()) {
            let name = tandem_batch_layer::recompute::dimension_table(&side.name);
            if !ctx.table_exist(name.as_str())? {
                ctx.register_table(
                    name.as_str(),
                    Arc::new(EventsTable::new(
                        Arc::clone(&self.store),
                        &side.topic,
                        side.schema(),
                    )),
                )?;
            }
        }
        for view in self.catalog.views() {
            if view.name == EVENTS_TABLE {
                continue;
            }
            let Some(rows) = self.view_rows.get(&view.name) else {
                continue;
            };
            ctx.register_table(
                view.name.as_str(),
                Arc::new(ViewTable::new(
                    view.clone(),
                    rows,
                    Arc::clone(&self.catalog),
                    self.speed.clone(),
                )),
            )?;
        }
        Ok(ctx)
    }

    /// Plans, checks and runs one query on the SQL runtime (see the module docs): its rows, for
    /// callers that use them here (rollups, the shell). The rows were counted against the
    /// query's pool while they were collected.
    pub async fn query(&self, sql: &str) -> Result<SqlAnswer, Error> {
        self.answer(Request::new(sql.into(), Dialect::Standard))
            .await
    }

    /// Plans, checks and runs one request of a door on the SQL runtime (see
    /// [`SqlEngine::query`]).
    pub async fn answer(&self, request: Request) -> Result<SqlAnswer, Error> {
        let engine = self.clone();
        let timeout = self.timeout_of(&request);
        let deadline = std::time::Instant::now() + timeout;
        self.on_runtime(timeout, async move {
            let (answer, _reservation) = engine
                .collect(request.statement, request.dialect, deadline)
                .await?;
            Ok(answer)
        })
        .await
    }

    /// Plans and checks a statement without running it, on the SQL runtime within the query
    /// timeout: the types of its parameters and of its answer.
    pub async fn describe(&self, request: Request) -> Result<Described, Error> {
        let engine = self.clone();
        let timeout = self.timeout_of(&request);
        let deadline = std::time::Instant::now() + timeout;
        self.on_runtime(timeout, async move {
            let limits = engine.limits;
            let ctx = engine
                .session(deadline, request.dialect)
                .map_err(|e| Error::Internal(e.strip_backtrace()))?;
            let plan = engine.plan(&ctx, request.statement).await?;
            let types = plan
                .get_parameter_types()
                .map_err(|e| classify(e, &limits))?;
            let mut params: Vec<(usize, Option<_>)> = types
                .into_iter()
                .filter_map(|(name, t)| Some((name.strip_prefix('$')?.parse().ok()?, t)))
                .collect();
            params.sort_by_key(|(i, _)| *i);
            let count = params.last().map_or(0, |(i, _)| *i);
            let mut ordered = vec![None; count];
            for (i, t) in params {
                if let Some(slot) = i.checked_sub(1).and_then(|i| ordered.get_mut(i)) {
                    *slot = t;
                }
            }
            Ok(Described {
                params: ordered,
                schema: Arc::new(plan.schema().as_arrow().clone()),
            })
        })
        .await
    }

    /// The request's timeout: the client's, if it asked for less than the engine's.
    fn timeout_of(&self, request: &Request) -> Duration {
        request
            .timeout
            .filter(|t| !t.is_zero())
            .map_or(self.limits.timeout, |t| t.min(self.limits.timeout))
    }

    /// Runs one query and renders its answer in `format`, on the SQL runtime: the rendered
    /// bytes count against the query's pool as they grow, and each batch is released once it
    /// is written.
    pub async fn render(&self, sql: &str, format: render::Format) -> Result<Vec<u8>, Error> {
        let engine = self.clone();
        let statement = Statement::from(sql);
        let timeout = self.limits.timeout;
        let deadline = std::time::Instant::now() + timeout;
        self.on_runtime(timeout, async move {
            let (answer, reservation) = engine
                .collect(statement, Dialect::Standard, deadline)
                .await?;
            let limits = engine.limits;
            let failed = |e: datafusion::arrow::error::ArrowError| {
                Error::Internal(format!("rendering the answer: {e}"))
            };
            let mut writer =
                render::Writer::new(format, Arc::clone(&answer.schema)).map_err(failed)?;
            let mut counted = writer.len();
            reservation
                .try_grow(counted)
                .map_err(|e| classify(e, &limits))?;
            for batch in answer.batches {
                writer.write(&batch).map_err(failed)?;
                let written = writer.len();
                reservation
                    .try_grow(written.saturating_sub(counted))
                    .map_err(|e| classify(e, &limits))?;
                counted = written;
                reservation.shrink(batch.get_array_memory_size().min(reservation.size()));
            }
            writer.finish().map_err(failed)
        })
        .await
    }

    /// Runs `work` on the SQL runtime within `timeout`.
    async fn on_runtime<T: Send + 'static>(
        &self,
        timeout: Duration,
        work: impl std::future::Future<Output = Result<T, Error>> + Send + 'static,
    ) -> Result<T, Error> {
        match self.runtime.run(timeout, work).await {
            Ok(answer) => answer,
            Err(Refusal::TimedOut(d)) => Err(Error::Timeout(d)),
            Err(refusal @ Refusal::Busy { .. }) => Err(Error::Busy(refusal)),
            Err(other) => Err(Error::Internal(other.to_string())),
        }
    }

    /// Plans a statement in `ctx`, with its parameters' values if it has them, and checks that
    /// it only reads.
    async fn plan(&self, ctx: &SessionContext, statement: Statement) -> Result<LogicalPlan, Error> {
        let limits = &self.limits;
        let state = ctx.state();
        let plan = match statement {
            Statement::Text(sql) => state.create_logical_plan(&sql).await,
            Statement::Parsed { statement, .. }
                if !matches!(
                    *statement,
                    ast::Statement::Query(_)
                        | ast::Statement::Explain { .. }
                        | ast::Statement::ShowTables { .. }
                        | ast::Statement::ShowColumns { .. }
                ) =>
            {
                return Err(Error::ReadOnly(refused_statement(&statement)));
            }
            Statement::Parsed { statement, params } => {
                let plan = state
                    .statement_to_plan(datafusion::sql::parser::Statement::Statement(statement))
                    .await;
                match (plan, params) {
                    (Ok(plan), Some(values)) => plan.replace_params_with_values(&values),
                    (plan, _) => plan,
                }
            }
        }
        .map_err(|e| classify(e, limits))?;
        let read_only = SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false);
        if read_only.verify_plan(&plan).is_err() {
            return Err(Error::ReadOnly(refused(&plan)));
        }
        Ok(plan)
    }

    /// Plans, checks and runs one query, collecting its batches under a reservation of the
    /// query's memory pool (see the module docs). Runs on the SQL runtime.
    async fn collect(
        &self,
        statement: Statement,
        dialect: Dialect,
        deadline: std::time::Instant,
    ) -> Result<(SqlAnswer, MemoryReservation), Error> {
        let limits = self.limits;
        let ctx = self
            .session(deadline, dialect)
            .map_err(|e| Error::Internal(e.strip_backtrace()))?;
        let plan = self.plan(&ctx, statement).await?;
        let plan = match plan.get_parameter_types() {
            Ok(params) if !params.is_empty() => {
                return Err(Error::Plan {
                    message: format!(
                        "the query has {} parameters and no values for them",
                        params.len()
                    ),
                    position: None,
                });
            }
            _ => plan,
        };
        // EXPLAIN [ANALYZE] must stay the plan's root; it answers a few rows anyway.
        let explains = matches!(plan, LogicalPlan::Explain(_) | LogicalPlan::Analyze(_));
        let mut frame = ctx
            .execute_logical_plan(plan)
            .await
            .map_err(|e| classify(e, &limits))?;
        if !explains {
            // One row past the cap is enough to know the cap is exceeded.
            frame = frame
                .limit(0, Some(limits.max_rows.saturating_add(1)))
                .map_err(|e| classify(e, &limits))?;
        }
        let schema: SchemaRef = Arc::new(frame.schema().as_arrow().clone());
        let reservation =
            MemoryConsumer::new("the answer").register(&ctx.runtime_env().memory_pool);
        let mut stream = frame
            .execute_stream()
            .await
            .map_err(|e| classify(e, &limits))?;
        let mut batches = Vec::new();
        let mut rows = 0usize;
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(|e| classify(e, &limits))?;
            rows += batch.num_rows();
            if rows > limits.max_rows {
                return Err(Error::TooManyRows(limits.max_rows));
            }
            reservation
                .try_grow(batch.get_array_memory_size())
                .map_err(|e| classify(e, &limits))?;
            batches.push(batch);
        }
        Ok((SqlAnswer { schema, batches }, reservation))
    }
}

#[cfg(test)]
mod tests;
