//! Recompute jobs: submission, the queue, the cron schedule, retries and job records.
//!
//! ```text
//!  POST /v1/jobs ─┐
//!  cron ──────────┼─► submit: validate, record (job), bounded queue ──full──► QueueFull
//!  backfill ──────┘          │
//!                            ▼ run: at most max_concurrent at a time
//!                  execution: ranges per view ─► Recompute on the recompute runtime
//!                            │ failure: after_failure(kind) ─► retry (transient) or fail
//!                            ▼
//!                  record: every change in memory and in the object store (jobs/<id>.json)
//! ```
//!
//! Sources of jobs: requests (`POST /v1/jobs`), the cron schedule (`batch.schedule`), and a
//! backfill for every view version that has no published results yet (queued at start-up, so a
//! changed definition is recomputed from the archive). A scheduled run is *incremental*: per
//! view it recomputes the windows made dirty by rows archived after their publication (late
//! events) and the windows that became ready since the last publication, never the clean ones.
//!
//! Jobs run on a dedicated runtime, at most `max_concurrent` at a time: DataFusion plans are
//! CPU-heavy and must not starve the runtime that serves HTTP and consumes Kafka. The queue is
//! bounded; a full queue refuses new jobs. A failure that may pass (the store failed) is retried
//! with exponential backoff up to `max_attempts`; a user's error (a view expression failing on
//! the data) fails the job at once with its message. Since publication is a manifest swap at the
//! very end, a failure never publishes anything. Records are reloaded at start-up; jobs that were
//! queued or running when the process stopped are queued again.
//!
//! - [`job`]: job types (request, status, record).
//! - `record`: the records in memory and in the object store.
//! - `execution`: one attempt of a job, and the retry decision.
//! - [`leadership`]: with several batch processes, only the holder of the scheduler lease runs
//!   jobs.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::DateTime;
use tandem_shared::error::ErrorKind;
use tandem_shared::time::{EventTime, Span};
use tandem_shared::view::ViewDefinition;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::recompute::Recompute;

mod execution;
pub(crate) mod job;
pub mod leadership;
mod record;
#[cfg(test)]
mod tests;

pub use job::{JobProgress, JobRecord, JobRequest, JobStatus, NotReady, Trigger};
use record::JobBook;

/// Errors submitting a job. The first two are the user's; a full queue is transient.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubmitError {
    #[error("unknown view `{0}`")]
    UnknownView(String),
    #[error("`from` ({from}) must be before `to` ({to})")]
    EmptyRange { from: EventTime, to: EventTime },
    #[error("the job queue is full ({capacity} jobs); try again later")]
    QueueFull { capacity: usize },
}

impl SubmitError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            SubmitError::UnknownView(_) | SubmitError::EmptyRange { .. } => ErrorKind::User,
            SubmitError::QueueFull { .. } => ErrorKind::Transient,
        }
    }
}

/// Errors cancelling a job. Both are the user's.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CancelError {
    #[error("unknown job `{0}`")]
    UnknownJob(String),
    #[error("job `{id}` already {status}")]
    Finished { id: String, status: &'static str },
}

/// Errors building the scheduler. Configuration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("batch.schedule `{expr}` is not a valid cron expression: {source}")]
    Cron {
        expr: String,
        source: cron::error::Error,
    },
    #[error("starting the recompute runtime: {0}")]
    Runtime(#[from] std::io::Error),
}

/// Scheduler settings.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    pub schedule: Option<String>,
    pub queue_capacity: usize,
    pub max_concurrent: usize,
    pub max_attempts: u32,
    /// Backoff before the first retry; doubled for each further one.
    pub retry_backoff: Duration,
    /// Retired segments, old view versions and finished job records older than this are
    /// deleted.
    pub retention: Span,
    /// How often published views are compacted and old objects collected.
    pub maintenance_interval: Duration,
}

impl Default for SchedulerConfig {
    /// What `[batch]`'s defaults give (`BatchSettings`).
    fn default() -> Self {
        crate::settings::BatchSettings::default().scheduler()
    }
}

/// The job scheduler. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

struct Inner {
    book: JobBook,
    tokens: Mutex<HashMap<String, CancellationToken>>,
    queue: mpsc::Sender<String>,
    receiver: Mutex<Option<mpsc::Receiver<String>>>,
    config: SchedulerConfig,
    recompute: Arc<Recompute>,
    schedule: Option<cron::Schedule>,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("config", &self.config)
            .finish()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // A runtime must not be dropped from async context; shut it down without blocking.
        if let Some(rt) = self.runtime.get_mut().ok().and_then(Option::take) {
            rt.shutdown_background();
        }
    }
}

impl Scheduler {
    /// A scheduler of the views of `recompute`'s catalog. Nothing runs until [`Scheduler::run`].
    pub fn new(recompute: Arc<Recompute>, config: SchedulerConfig) -> Result<Self, Error> {
        let schedule = config
            .schedule
            .as_deref()
            .map(|expr| {
                cron::Schedule::from_str(expr).map_err(|source| Error::Cron {
                    expr: expr.to_owned(),
                    source,
                })
            })
            .transpose()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(std::thread::available_parallelism().map_or(2, |n| n.get()))
            .thread_name("tandem-recompute")
            .enable_all()
            .build()?;
        let (queue, receiver) = mpsc::channel(config.queue_capacity.max(1));
        Ok(Self {
            inner: Arc::new(Inner {
                book: JobBook::new(Arc::clone(recompute.store())),
                tokens: Mutex::new(HashMap::new()),
                queue,
                receiver: Mutex::new(Some(receiver)),
                config,
                recompute,
                schedule,
                runtime: Mutex::new(Some(runtime)),
            }),
        })
    }

    fn now(&self) -> EventTime {
        self.inner.recompute.clock().now()
    }

    fn view(&self, name: &str) -> Option<&ViewDefinition> {
        self.inner.recompute.catalog().view(name)
    }

    fn tokens(&self) -> MutexGuard<'_, HashMap<String, CancellationToken>> {
        self.inner.tokens.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn runtime_handle(&self) -> Option<tokio::runtime::Handle> {
        let runtime = self.inner.runtime.lock().unwrap_or_else(|e| e.into_inner());
        runtime.as_ref().map(|rt| rt.handle().clone())
    }

    /// Loads job records from the object store; jobs that were queued or running are queued
    /// again. Returns how many were re-queued.
    pub async fn restore(&self) -> usize {
        let mut queued = 0;
        for id in self.inner.book.load().await {
            if self.inner.queue.try_send(id.clone()).is_ok() {
                queued += 1;
            } else {
                self.inner.book.finish(
                    &id,
                    JobStatus::Failed,
                    Some((
                        ErrorKind::Transient,
                        "the job queue was full at start-up".into(),
                    )),
                    self.now(),
                );
            }
        }
        queued
    }

    /// Validates and queues a job.
    pub fn submit(&self, request: JobRequest) -> Result<JobRecord, SubmitError> {
        if let Some(view) = &request.view
            && self.view(view).is_none()
        {
            return Err(SubmitError::UnknownView(view.clone()));
        }
        if let (Some(from), Some(to)) = (request.from, request.to)
            && from >= to
        {
            return Err(SubmitError::EmptyRange { from, to });
        }
        let id = uuid::Uuid::now_v7().to_string();
        let record = JobRecord::queued(id.clone(), request, self.now());
        self.inner.book.insert(record.clone());
        if self.inner.queue.try_send(id.clone()).is_err() {
            self.inner.book.remove(&id);
            return Err(SubmitError::QueueFull {
                capacity: self.inner.config.queue_capacity,
            });
        }
        let this = self.clone();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move { this.inner.book.persist(&id).await });
        }
        Ok(record)
    }

    /// Queues a backfill for every view version without published results.
    pub fn backfill(&self) -> Vec<JobRecord> {
        let catalog = self.inner.recompute.catalog();
        let missing: Vec<String> = catalog
            .views()
            .filter(|v| catalog.get(&v.name).is_some_and(|p| p.seq.is_none()))
            .map(|v| v.name.clone())
            .collect();
        missing
            .into_iter()
            .filter_map(|view| {
                self.submit(JobRequest {
                    view: Some(view),
                    from: None,
                    to: None,
                    trigger: Trigger::Backfill,
                })
                .ok()
            })
            .collect()
    }

    /// Cancels a queued or running job. A running job stops at its next chunk boundary and
    /// publishes nothing.
    pub fn cancel(&self, id: &str) -> Result<JobRecord, CancelError> {
        let status = self
            .job(id)
            .map(|j| j.status)
            .ok_or_else(|| CancelError::UnknownJob(id.to_owned()))?;
        match status {
            JobStatus::Queued => {
                self.inner.book.finish(
                    id,
                    JobStatus::Cancelled,
                    Some((ErrorKind::User, "cancelled by request".into())),
                    self.now(),
                );
            }
            JobStatus::Running => {
                if let Some(token) = self.tokens().get(id) {
                    token.cancel();
                }
            }
            finished => {
                return Err(CancelError::Finished {
                    id: id.to_owned(),
                    status: finished.as_str(),
                });
            }
        }
        self.job(id)
            .ok_or_else(|| CancelError::UnknownJob(id.to_owned()))
    }

    pub fn job(&self, id: &str) -> Option<JobRecord> {
        self.inner.book.get(id)
    }

    /// Jobs, newest first, optionally filtered by status and view.
    pub fn list(&self, status: Option<JobStatus>, view: Option<&str>) -> Vec<JobRecord> {
        self.inner.book.list(status, view)
    }

    /// Runs queued jobs and the cron schedule until `cancel` fires; then waits for running jobs
    /// so that shutdown never leaves a half-published view.
    pub async fn run(self, cancel: CancellationToken) {
        let Some(mut receiver) = self
            .inner
            .receiver
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            tracing::error!("scheduler already running");
            return;
        };
        let slots = Arc::new(Semaphore::new(self.inner.config.max_concurrent.max(1)));
        let running = TaskTracker::new();
        let every = self.inner.config.maintenance_interval;
        let mut maintenance = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        maintenance.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let maintaining = Arc::new(std::sync::atomic::AtomicBool::new(false));
        loop {
            let next_cron = self.next_cron_delay();
            tokio::select! {
                _ = cancel.cancelled() => break,
                id = receiver.recv() => {
                    let Some(id) = id else { break };
                    let Ok(permit) = Arc::clone(&slots).acquire_owned().await else { break };
                    let this = self.clone();
                    running.spawn(async move {
                        this.execute(&id).await;
                        drop(permit);
                    });
                }
                _ = maintenance.tick() => {
                    // One round at a time, beside the jobs (both publish by manifest swap).
                    if !maintaining.swap(true, std::sync::atomic::Ordering::SeqCst) {
                        let this = self.clone();
                        let flag = Arc::clone(&maintaining);
                        running.spawn(async move {
                            this.maintain().await;
                            flag.store(false, std::sync::atomic::Ordering::SeqCst);
                        });
                    }
                }
                _ = tokio::time::sleep(next_cron.unwrap_or(Duration::from_secs(3600))), if next_cron.is_some() => {
                    let request = JobRequest { view: None, from: None, to: None, trigger: Trigger::Schedule };
                    match self.submit(request) {
                        Ok(job) => tracing::info!(id = %job.id, "scheduled recompute queued"),
                        Err(err) => tracing::warn!(%err, "scheduled recompute not queued"),
                    }
                }
            }
        }
        running.close();
        running.wait().await;
        // Jobs still queued stay queued in their records and run after the next start (or
        // when this process leads again: the queue is handed back).
        *self
            .inner
            .receiver
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(receiver);
        tracing::info!("scheduler stopped");
    }

    /// One maintenance round: compaction and retention of published views, and deletion of
    /// finished job records older than the retention. Failures are logged and retried next
    /// round: nothing a reader sees depends on it.
    pub async fn maintain(&self) {
        let now = self.now();
        let retention = self.inner.config.retention;
        // Without knowing which windows are dirty, compaction keeps every piece.
        let cleanliness = match self.inner.recompute.cleanliness().await {
            Ok(c) => c,
            Err(err) => {
                tracing::warn!(%err, "cannot tell clean windows; compacting without coalescing");
                Default::default()
            }
        };
        let clean = |view: &str, range| cleanliness.clean(view, range);
        if let Err(err) = self
            .inner
            .recompute
            .catalog()
            .maintain(now, retention, 2, &clean)
            .await
        {
            tracing::warn!(%err, "catalog maintenance failed");
        }
        let deleted = self.inner.book.collect(now.saturating_sub(retention)).await;
        if deleted > 0 {
            tracing::info!(deleted, "job records past the retention deleted");
        }
    }

    /// Time until the next cron firing, from the injected clock.
    fn next_cron_delay(&self) -> Option<Duration> {
        let now = DateTime::from_timestamp_millis(self.now().millis())?;
        let next = self.inner.schedule.as_ref()?.after(&now).next()?;
        (next - now).to_std().ok().or(Some(Duration::ZERO))
    }
}
