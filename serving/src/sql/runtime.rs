//! Where SQL runs: a runtime of its own, apart from the one that serves HTTP, consumes Kafka and
//! writes checkpoints, with a bounded number of queries at once.
//!
//! ```text
//!  door (HTTP, CLI, rollups, ...) ─► admission: a slot of `max_concurrent`, waiting within the
//!        query's timeout (at most `max_waiting` wait; more are refused: busy)
//!      ─► spawned on the SQL runtime (its own threads, at a lower scheduling priority)
//!      ─► the caller waits on its own runtime, with the query's timeout: past it the task is
//!         aborted (DataFusion's operators yield to tokio's cooperative budget, so even a
//!         CPU-bound plan stops within a batch) and the caller answers at once
//! ```
//!
//! A CPU-bound query on the serving runtime held every worker thread of it: timers did not
//! fire, so neither `/healthz` nor the query's own timeout answered until the plan ended. Here
//! the caller's runtime only waits on a join handle.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;

/// How the SQL runtime is sized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqlRuntimeLimits {
    /// Threads of the SQL runtime.
    pub threads: usize,
    /// Queries running at once.
    pub max_concurrent: usize,
    /// Queries waiting for a slot; more are refused at once (busy).
    pub max_waiting: usize,
}

impl Default for SqlRuntimeLimits {
    fn default() -> Self {
        // A thread per core, so that a query alone uses the machine; they run at a lower
        // priority (see `lower_priority`), so that ingestion, checkpoints and the HTTP runtime
        // keep their share while queries run.
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            threads: cores.max(1),
            max_concurrent: 4,
            max_waiting: 16,
        }
    }
}

/// Why a query did not run to its end on the runtime.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Every slot is taken and too many queries wait already, or no slot came free within the
    /// query's timeout (transient).
    #[error("{running} SQL queries are running and {waiting} waiting: try again later")]
    Busy { running: usize, waiting: usize },
    /// The query ran past its timeout and was stopped.
    #[error("the query ran longer than {0:?}")]
    TimedOut(Duration),
    /// The query's task ended without an answer (a panic inside DataFusion).
    #[error("the query's task failed: {0}")]
    Failed(String),
    /// The runtime could not be started.
    #[error("starting the SQL runtime: {0}")]
    Start(String),
}

/// The SQL runtime (see the module docs). Cheap to clone; the threads stop when the last clone
/// is dropped.
#[derive(Debug, Clone)]
pub struct SqlRuntime {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    runtime: Option<tokio::runtime::Runtime>,
    slots: Arc<Semaphore>,
    limits: SqlRuntimeLimits,
    waiting: AtomicUsize,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Dropped from async code (a test, a shutdown): do not block a runtime thread waiting
        // for queries; aborted tasks end on their own.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Lowers the calling thread's scheduling priority (a higher nice value): when the machine is
/// busy, a query takes CPU only after ingestion, checkpoints and the HTTP runtime. Best effort.
fn lower_priority() {
    use thread_priority::{ThreadPriority, ThreadPriorityValue};
    // 30 of 0..=99 maps to a nice value of about +7 under the normal policy.
    if let Ok(value) = ThreadPriorityValue::try_from(30u8)
        && let Err(err) =
            thread_priority::set_current_thread_priority(ThreadPriority::Crossplatform(value))
    {
        tracing::debug!(?err, "could not lower the SQL threads' priority");
    }
}

/// A running query's slot: counted in `tandem_sql_running` until its task ends or is dropped.
struct Slot {
    _permit: OwnedSemaphorePermit,
}

impl Slot {
    fn take(permit: OwnedSemaphorePermit) -> Self {
        metrics::gauge!("tandem_sql_running").increment(1.0);
        Self { _permit: permit }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        metrics::gauge!("tandem_sql_running").decrement(1.0);
    }
}

/// Counts a waiting query while it waits.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl SqlRuntime {
    pub fn new(limits: SqlRuntimeLimits) -> Result<Self, Refusal> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(limits.threads.max(1))
            .max_blocking_threads(limits.threads.max(1) * 4)
            .thread_name("tandem-sql")
            .on_thread_start(lower_priority)
            .enable_all()
            .build()
            .map_err(|e| Refusal::Start(e.to_string()))?;
        Ok(Self {
            inner: Arc::new(Inner {
                runtime: Some(runtime),
                slots: Arc::new(Semaphore::new(limits.max_concurrent.max(1))),
                limits,
                waiting: AtomicUsize::new(0),
            }),
        })
    }

    pub fn limits(&self) -> SqlRuntimeLimits {
        self.inner.limits
    }

    /// Queries running now.
    pub fn running(&self) -> usize {
        self.inner
            .limits
            .max_concurrent
            .max(1)
            .saturating_sub(self.inner.slots.available_permits())
    }

    fn busy(&self) -> Refusal {
        Refusal::Busy {
            running: self.running(),
            waiting: self.inner.waiting.load(Ordering::Relaxed),
        }
    }

    /// Runs `query` on the SQL runtime within `timeout` (waiting for a slot included). The
    /// caller's runtime only waits; past the timeout the query is aborted.
    pub async fn run<F, T>(&self, timeout: Duration, query: F) -> Result<T, Refusal>
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let deadline = Instant::now() + timeout;
        let inner = &self.inner;
        let permit = match Arc::clone(&inner.slots).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if inner.waiting.fetch_add(1, Ordering::Relaxed) >= inner.limits.max_waiting {
                    inner.waiting.fetch_sub(1, Ordering::Relaxed);
                    metrics::counter!("tandem_sql_refused_total", "reason" => "busy").increment(1);
                    return Err(self.busy());
                }
                let waiting = Waiting(&inner.waiting);
                let acquired =
                    tokio::time::timeout_at(deadline, Arc::clone(&inner.slots).acquire_owned())
                        .await;
                drop(waiting);
                match acquired {
                    Ok(Ok(permit)) => permit,
                    _ => {
                        metrics::counter!("tandem_sql_refused_total", "reason" => "busy")
                            .increment(1);
                        return Err(self.busy());
                    }
                }
            }
        };
        let Some(runtime) = &inner.runtime else {
            return Err(Refusal::Start("the SQL runtime has stopped".into()));
        };
        let slot = Slot::take(permit);
        // The slot lives with the task: an aborted query holds its slot until its task has
        // really stopped, so aborted plans cannot pile up past the limit.
        // A caller that goes away (its request timed out, its client left) aborts the query.
        let mut task = AbortOnDropHandle::new(runtime.spawn(async move {
            let answer = tokio::time::timeout_at(deadline, query).await;
            drop(slot);
            answer
        }));
        match tokio::time::timeout_at(deadline, &mut task).await {
            Ok(Ok(Ok(answer))) => Ok(answer),
            Ok(Ok(Err(_))) => {
                metrics::counter!("tandem_sql_refused_total", "reason" => "timeout").increment(1);
                Err(Refusal::TimedOut(timeout))
            }
            Ok(Err(err)) => Err(Refusal::Failed(err.to_string())),
            Err(_) => {
                task.abort();
                metrics::counter!("tandem_sql_refused_total", "reason" => "timeout").increment(1);
                Err(Refusal::TimedOut(timeout))
            }
        }
    }
}

/// Makes a plan stop soon after its query's deadline, whatever its operators do.
///
/// DataFusion's leaves yield to tokio's cooperative budget once per batch, so an aborted query
/// normally stops within a batch. A join can work for long between two batches of its inputs:
/// a nested loop join evaluates its filter over every row of the buffered side for each
/// probe batch (a cross join of two 200,000-row series ran for minutes on one probe batch,
/// holding its thread after the caller had answered 408). So each join's output is made
/// cooperative (it yields every budget's worth of batches), and a nested loop join's filter
/// refuses to evaluate past the deadline, which ends the plan with an error.
#[derive(Debug)]
pub(crate) struct StoppablePlans {
    pub(crate) deadline: std::time::Instant,
}

/// The error a plan stopped by [`StoppablePlans`] ends with.
#[derive(Debug, thiserror::Error)]
#[error("stopped: the query ran past its timeout")]
pub(crate) struct PastDeadline;

/// A join filter that fails once its deadline has passed (see [`StoppablePlans`]).
#[derive(Debug, Clone)]
struct UntilDeadline {
    inner: std::sync::Arc<dyn datafusion::physical_expr::PhysicalExpr>,
    deadline: std::time::Instant,
}

impl PartialEq for UntilDeadline {
    fn eq(&self, other: &Self) -> bool {
        self.inner.as_ref() == other.inner.as_ref() && self.deadline == other.deadline
    }
}

impl Eq for UntilDeadline {}

impl std::hash::Hash for UntilDeadline {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.inner.hash(state);
        self.deadline.hash(state);
    }
}

impl std::fmt::Display for UntilDeadline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.inner)
    }
}

impl datafusion::physical_expr::PhysicalExpr for UntilDeadline {
    fn return_field(
        &self,
        input_schema: &datafusion::arrow::datatypes::Schema,
    ) -> datafusion::common::Result<datafusion::arrow::datatypes::FieldRef> {
        self.inner.return_field(input_schema)
    }

    fn evaluate(
        &self,
        batch: &datafusion::arrow::array::RecordBatch,
    ) -> datafusion::common::Result<datafusion::logical_expr::ColumnarValue> {
        if std::time::Instant::now() >= self.deadline {
            return Err(datafusion::error::DataFusionError::External(Box::new(
                PastDeadline,
            )));
        }
        self.inner.evaluate(batch)
    }

    fn children(&self) -> Vec<&std::sync::Arc<dyn datafusion::physical_expr::PhysicalExpr>> {
        vec![&self.inner]
    }

    fn with_new_children(
        self: std::sync::Arc<Self>,
        mut children: Vec<std::sync::Arc<dyn datafusion::physical_expr::PhysicalExpr>>,
    ) -> datafusion::common::Result<std::sync::Arc<dyn datafusion::physical_expr::PhysicalExpr>>
    {
        Ok(std::sync::Arc::new(Self {
            inner: children.swap_remove(0),
            deadline: self.deadline,
        }))
    }

    fn fmt_sql(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt_sql(f)
    }
}

impl datafusion::physical_optimizer::PhysicalOptimizerRule for StoppablePlans {
    fn optimize(
        &self,
        plan: std::sync::Arc<dyn datafusion::physical_plan::ExecutionPlan>,
        _config: &datafusion::common::config::ConfigOptions,
    ) -> datafusion::common::Result<std::sync::Arc<dyn datafusion::physical_plan::ExecutionPlan>>
    {
        use datafusion::common::tree_node::{Transformed, TreeNode};
        use datafusion::physical_plan::coop::CooperativeExec;
        use datafusion::physical_plan::joins::NestedLoopJoinExec;
        use datafusion::physical_plan::joins::utils::JoinFilter;

        let deadline = self.deadline;
        plan.transform_up(|node| {
            let mut node = node;
            if let Some(join) = node.downcast_ref::<NestedLoopJoinExec>()
                && let Some(filter) = join.filter()
            {
                let checked = JoinFilter::new(
                    std::sync::Arc::new(UntilDeadline {
                        inner: std::sync::Arc::clone(filter.expression()),
                        deadline,
                    }),
                    filter.column_indices().to_vec(),
                    std::sync::Arc::clone(filter.schema()),
                );
                node = std::sync::Arc::new(NestedLoopJoinExec::try_new(
                    std::sync::Arc::clone(join.left()),
                    std::sync::Arc::clone(join.right()),
                    Some(checked),
                    join.join_type(),
                    join.projection().as_ref().map(|p| p.to_vec()),
                )?);
            }
            // A join (two inputs or more) yields per output batch.
            if node.children().len() >= 2 {
                return Ok(Transformed::yes(std::sync::Arc::new(CooperativeExec::new(
                    node,
                ))));
            }
            Ok(Transformed::no(node))
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "tandem_stoppable_plans"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_concurrent: usize, max_waiting: usize) -> SqlRuntimeLimits {
        SqlRuntimeLimits {
            threads: 1,
            max_concurrent,
            max_waiting,
        }
    }

    #[tokio::test]
    async fn a_busy_loop_is_stopped_at_the_timeout_and_frees_its_slot() {
        let runtime = SqlRuntime::new(limits(1, 0)).unwrap();
        // A loop that never finishes but yields to the cooperative budget, as DataFusion's
        // operators do.
        let spin = async {
            loop {
                tokio::task::consume_budget().await;
            }
        };
        let answer = runtime.run(Duration::from_millis(200), spin).await;
        assert_eq!(answer, Err(Refusal::TimedOut(Duration::from_millis(200))));
        // The caller's runtime kept running meanwhile (this test's own timer fired), and the
        // slot comes back once the aborted task has stopped.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match runtime.run(Duration::from_secs(5), async { 7 }).await {
                Ok(v) => {
                    assert_eq!(v, 7);
                    break;
                }
                Err(Refusal::Busy { .. }) if Instant::now() < deadline => {
                    tokio::task::yield_now().await;
                }
                other => panic!("{other:?}"),
            }
        }
    }

    /// The SQL threads run at a lower priority than the rest of the process (a positive nice
    /// value, read from /proc as the scheduler sees it).
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn queries_run_at_a_lower_priority() {
        let nice = |stat: String| -> i64 {
            // Fields after the command (in parentheses): the 17th of them is the nice value.
            let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
            rest.split_whitespace()
                .nth(16)
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        let runtime = SqlRuntime::new(limits(1, 0)).unwrap();
        let inside = runtime
            .run(Duration::from_secs(10), async {
                std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default()
            })
            .await
            .unwrap();
        let outside = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
        assert!(nice(inside) > nice(outside));
    }

    #[tokio::test]
    async fn queries_past_the_slots_and_the_queue_are_refused_as_busy() {
        let runtime = SqlRuntime::new(limits(1, 1)).unwrap();
        let (release, hold) = tokio::sync::oneshot::channel::<()>();
        let first = {
            let runtime = runtime.clone();
            tokio::spawn(async move {
                runtime
                    .run(Duration::from_secs(30), async move {
                        let _ = hold.await;
                        1
                    })
                    .await
            })
        };
        // Wait until the first query holds the slot.
        let deadline = Instant::now() + Duration::from_secs(10);
        while runtime.running() == 0 {
            assert!(Instant::now() < deadline, "the first query never started");
            tokio::task::yield_now().await;
        }
        let second = {
            let runtime = runtime.clone();
            tokio::spawn(async move { runtime.run(Duration::from_secs(30), async { 2 }).await })
        };
        while runtime.inner.waiting.load(Ordering::Relaxed) == 0 {
            assert!(Instant::now() < deadline, "the second query never queued");
            tokio::task::yield_now().await;
        }
        // One runs, one waits: a third is refused at once.
        assert!(matches!(
            runtime.run(Duration::from_secs(30), async { 3 }).await,
            Err(Refusal::Busy {
                running: 1,
                waiting: 1
            })
        ));
        release.send(()).unwrap();
        assert_eq!(first.await.unwrap(), Ok(1));
        assert_eq!(second.await.unwrap(), Ok(2));
    }

    #[tokio::test]
    async fn a_query_that_waits_past_its_timeout_for_a_slot_is_busy() {
        let runtime = SqlRuntime::new(limits(1, 4)).unwrap();
        let (_keep, hold) = tokio::sync::oneshot::channel::<()>();
        let held = runtime.clone();
        let first = tokio::spawn(async move {
            held.run(Duration::from_secs(60), async move {
                let _ = hold.await;
            })
            .await
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while runtime.running() == 0 {
            assert!(Instant::now() < deadline, "the first query never started");
            tokio::task::yield_now().await;
        }
        assert!(matches!(
            runtime.run(Duration::from_millis(100), async {}).await,
            Err(Refusal::Busy { running: 1, .. })
        ));
        first.abort();
    }
}
