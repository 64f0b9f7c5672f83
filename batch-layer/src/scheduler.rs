//! Recompute jobs: submission, the queue, the cron schedule, retries and job records.
//!
//! Sources of jobs: requests (`POST /v1/jobs`), the cron schedule (`batch.schedule`), and a
//! backfill for every view version that has no published results yet (queued at start-up, so a
//! changed definition is recomputed from the archive). A scheduled run is *incremental*: per
//! view it recomputes the windows made dirty by rows archived after their publication (late
//! events) and the windows that became ready since the last publication, never the clean ones.
//!
//! Jobs run on a dedicated runtime, at most `max_concurrent` at a time: DataFusion plans are
//! CPU-heavy and must not starve the runtime that serves HTTP and consumes Kafka. The queue is
//! bounded; a full queue refuses new jobs. A failed job is retried with exponential backoff up to
//! `max_attempts`; since publication is a manifest swap at the very end, a failure never
//! publishes anything. Records are written to the object store on every change and reloaded at
//! start-up; jobs that were queued or running when the process stopped are queued again.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use tandem_shared::coverage::StartRange;
use tandem_shared::layout;
use tandem_shared::time::EventTime;
use tandem_shared::view::ViewDefinition;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::recompute::{self, Progress, Recompute, Requested, ViewOutcome};

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub const ALL: [JobStatus; 5] = [
        JobStatus::Queued,
        JobStatus::Running,
        JobStatus::Succeeded,
        JobStatus::Failed,
        JobStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    pub fn is_finished(self) -> bool {
        matches!(
            self,
            JobStatus::Succeeded | JobStatus::Failed | JobStatus::Cancelled
        )
    }
}

/// What started a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    /// `POST /v1/jobs` or `tandem batch run`.
    Request,
    /// The cron schedule: incremental (dirty and newly ready windows).
    Schedule,
    /// A view version without published results, at start-up.
    Backfill,
}

/// A request for a job: one view or all, over an optional range of window starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRequest {
    pub view: Option<String>,
    pub from: Option<EventTime>,
    pub to: Option<EventTime>,
    pub trigger: Trigger,
}

/// Requested windows of one view that were not ready.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotReady {
    pub view: String,
    pub from: EventTime,
    pub to: EventTime,
}

/// How far a running job is.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobProgress {
    pub views_done: usize,
    pub views_total: usize,
    /// Fraction of the job's work done, from 0 to 1.
    pub fraction: f64,
}

/// The record of a job, as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: String,
    pub view: Option<String>,
    pub from: Option<EventTime>,
    pub to: Option<EventTime>,
    pub trigger: Trigger,
    pub status: JobStatus,
    pub created_at: EventTime,
    pub started_at: Option<EventTime>,
    pub finished_at: Option<EventTime>,
    pub attempts: u32,
    pub progress: JobProgress,
    pub rows_read: u64,
    pub files_scanned: u64,
    pub bytes_scanned: u64,
    pub windows_published: u64,
    /// Requested windows left to the speed layer because the archive was not complete for them.
    pub windows_not_ready: Vec<NotReady>,
    /// Per-view (and, for scheduled runs, per-range) detail.
    pub views: Vec<ViewOutcome>,
    pub error: Option<String>,
}

fn now() -> EventTime {
    EventTime(Utc::now().timestamp_millis())
}

/// Finished job records kept in memory.
const KEEP_FINISHED: usize = 1000;

/// Scheduler settings.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    pub schedule: Option<String>,
    pub queue_capacity: usize,
    pub max_concurrent: usize,
    pub max_attempts: u32,
    /// Backoff before the first retry; doubled for each further one.
    pub retry_backoff: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            schedule: None,
            queue_capacity: 64,
            max_concurrent: 2,
            max_attempts: 3,
            retry_backoff: Duration::from_secs(2),
        }
    }
}

/// The job scheduler. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

struct Inner {
    jobs: Mutex<BTreeMap<String, JobRecord>>,
    tokens: Mutex<HashMap<String, CancellationToken>>,
    queue: mpsc::Sender<String>,
    receiver: Mutex<Option<mpsc::Receiver<String>>>,
    config: SchedulerConfig,
    recompute: Arc<Recompute>,
    views: BTreeMap<String, ViewDefinition>,
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
    pub fn new(
        recompute: Arc<Recompute>,
        views: impl IntoIterator<Item = ViewDefinition>,
        config: SchedulerConfig,
    ) -> Result<Self, Error> {
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
                jobs: Mutex::new(BTreeMap::new()),
                tokens: Mutex::new(HashMap::new()),
                queue,
                receiver: Mutex::new(Some(receiver)),
                config,
                recompute,
                views: views.into_iter().map(|v| (v.name.clone(), v)).collect(),
                schedule,
                runtime: Mutex::new(Some(runtime)),
            }),
        })
    }

    fn jobs(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, JobRecord>> {
        self.inner.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.inner.recompute.store
    }

    /// Writes a job's record to the object store. Failures are logged: records are history.
    async fn persist(&self, id: &str) {
        let Some(record) = self.job(id) else { return };
        let path = layout::job_record(id);
        match serde_json::to_vec_pretty(&record) {
            Ok(bytes) => {
                if let Err(err) = self
                    .store()
                    .put(&Path::from(path.as_str()), PutPayload::from(bytes))
                    .await
                {
                    tracing::warn!(job = id, %err, "cannot persist job record");
                }
            }
            Err(err) => tracing::warn!(job = id, %err, "cannot encode job record"),
        }
    }

    /// Loads job records from the object store; jobs that were queued or running are queued
    /// again. Returns how many were re-queued.
    pub async fn restore(&self) -> usize {
        let prefix = Path::from(layout::job_dir());
        let Ok(objects) = self
            .store()
            .list(Some(&prefix))
            .try_collect::<Vec<_>>()
            .await
        else {
            return 0;
        };
        let mut requeue = Vec::new();
        for meta in objects {
            let Ok(got) = self.store().get(&meta.location).await else {
                continue;
            };
            let Ok(bytes) = got.bytes().await else {
                continue;
            };
            let Ok(mut record) = serde_json::from_slice::<JobRecord>(&bytes) else {
                tracing::warn!(path = %meta.location, "ignoring an unreadable job record");
                continue;
            };
            if !record.status.is_finished() {
                record.status = JobStatus::Queued;
                record.error = Some("re-queued: Tandem restarted while the job was pending".into());
                requeue.push(record.id.clone());
            }
            self.jobs().insert(record.id.clone(), record);
        }
        let mut queued = 0;
        for id in requeue {
            if self.inner.queue.try_send(id.clone()).is_ok() {
                queued += 1;
            } else {
                self.finish(
                    &id,
                    JobStatus::Failed,
                    Some("the job queue was full at start-up".into()),
                );
            }
        }
        self.trim_and_count();
        queued
    }

    /// Validates and queues a job.
    pub fn submit(&self, request: JobRequest) -> Result<JobRecord, SubmitError> {
        if let Some(view) = &request.view
            && !self.inner.views.contains_key(view)
        {
            return Err(SubmitError::UnknownView(view.clone()));
        }
        if let (Some(from), Some(to)) = (request.from, request.to)
            && from >= to
        {
            return Err(SubmitError::EmptyRange { from, to });
        }
        let id = uuid::Uuid::now_v7().to_string();
        let record = JobRecord {
            id: id.clone(),
            view: request.view,
            from: request.from,
            to: request.to,
            trigger: request.trigger,
            status: JobStatus::Queued,
            created_at: now(),
            started_at: None,
            finished_at: None,
            attempts: 0,
            progress: JobProgress::default(),
            rows_read: 0,
            files_scanned: 0,
            bytes_scanned: 0,
            windows_published: 0,
            windows_not_ready: Vec::new(),
            views: Vec::new(),
            error: None,
        };
        self.jobs().insert(id.clone(), record.clone());
        if self.inner.queue.try_send(id.clone()).is_err() {
            self.jobs().remove(&id);
            return Err(SubmitError::QueueFull {
                capacity: self.inner.config.queue_capacity,
            });
        }
        self.trim_and_count();
        let this = self.clone();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move { this.persist(&id).await });
        }
        Ok(record)
    }

    /// Queues a backfill for every view version without published results.
    pub fn backfill(&self) -> Vec<JobRecord> {
        let missing: Vec<String> = self
            .inner
            .views
            .keys()
            .filter(|v| {
                self.inner
                    .recompute
                    .catalog
                    .get(v)
                    .is_some_and(|p| p.seq.is_none())
            })
            .cloned()
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
                self.finish(
                    id,
                    JobStatus::Cancelled,
                    Some("cancelled by request".into()),
                );
            }
            JobStatus::Running => {
                if let Some(token) = self
                    .inner
                    .tokens
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(id)
                {
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
        self.jobs().get(id).cloned()
    }

    /// Jobs, newest first, optionally filtered by status and view.
    pub fn list(&self, status: Option<JobStatus>, view: Option<&str>) -> Vec<JobRecord> {
        // Ids are UUIDv7: their order is creation order.
        self.jobs()
            .values()
            .rev()
            .filter(|j| status.is_none_or(|s| j.status == s))
            .filter(|j| view.is_none_or(|v| j.view.as_deref() == Some(v)))
            .cloned()
            .collect()
    }

    fn update(&self, id: &str, f: impl FnOnce(&mut JobRecord)) {
        if let Some(job) = self.jobs().get_mut(id) {
            f(job);
        }
        self.trim_and_count();
    }

    fn finish(&self, id: &str, status: JobStatus, error: Option<String>) {
        self.update(id, |j| {
            j.status = status;
            j.finished_at = Some(now());
            j.error = error;
            if status == JobStatus::Succeeded {
                j.progress.fraction = 1.0;
            }
        });
    }

    fn trim_and_count(&self) {
        let mut counts: BTreeMap<JobStatus, u64> = JobStatus::ALL.iter().map(|s| (*s, 0)).collect();
        let mut jobs = self.jobs();
        for job in jobs.values() {
            *counts.entry(job.status).or_default() += 1;
        }
        for (status, n) in counts {
            metrics::gauge!("tandem_jobs", "status" => status.as_str()).set(n as f64);
        }
        let finished: Vec<String> = jobs
            .iter()
            .filter(|(_, j)| j.status.is_finished())
            .map(|(id, _)| id.clone())
            .collect();
        for id in finished
            .iter()
            .take(finished.len().saturating_sub(KEEP_FINISHED))
        {
            jobs.remove(id);
        }
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
        // Jobs still queued stay queued in their records and run after the next start.
        tracing::info!("scheduler stopped");
    }

    fn next_cron_delay(&self) -> Option<Duration> {
        let next = self.inner.schedule.as_ref()?.upcoming(Utc).next()?;
        (next - Utc::now()).to_std().ok().or(Some(Duration::ZERO))
    }

    /// The ranges a job recomputes for one view.
    async fn ranges(&self, job: &JobRecord, view: &ViewDefinition) -> Vec<Requested> {
        if job.trigger != Trigger::Schedule {
            return vec![Requested {
                from: job.from,
                to: job.to,
            }];
        }
        let recompute = &self.inner.recompute;
        let published = recompute.catalog.get(&view.name).unwrap_or_default();
        let mut ranges: Vec<Requested> =
            match recompute.dirty_ranges(view, &published.manifest).await {
                Ok(dirty) => dirty
                    .into_iter()
                    .map(|StartRange { from, to }| Requested {
                        from: Some(from),
                        to: Some(to),
                    })
                    .collect(),
                Err(err) => {
                    tracing::warn!(view = %view.name, %err, "cannot look for dirty windows");
                    Vec::new()
                }
            };
        if !ranges.is_empty() {
            tracing::info!(view = %view.name, dirty = ranges.len(), "recomputing windows with late rows");
        }
        ranges.push(Requested {
            from: published.coverage.horizon(),
            to: None,
        });
        ranges
    }

    async fn execute(&self, id: &str) {
        let Some(job) = self.job(id) else { return };
        if job.status != JobStatus::Queued {
            return; // cancelled while queued
        }
        let token = CancellationToken::new();
        self.inner
            .tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_owned(), token.clone());
        let views: Vec<ViewDefinition> = match &job.view {
            Some(v) => self.inner.views.get(v).cloned().into_iter().collect(),
            None => self.inner.views.values().cloned().collect(),
        };
        let total = views.len();
        self.update(id, |j| {
            j.status = JobStatus::Running;
            j.started_at = Some(now());
            j.attempts += 1;
            // Counters restart with each attempt.
            j.rows_read = 0;
            j.files_scanned = 0;
            j.bytes_scanned = 0;
            j.windows_published = 0;
            j.windows_not_ready.clear();
            j.views.clear();
            j.progress = JobProgress {
                views_done: 0,
                views_total: total,
                fraction: 0.0,
            };
        });
        self.persist(id).await;
        let result = self.run_views(id, &job, &views, &token).await;
        self.inner
            .tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        match result {
            Ok(()) => self.finish(id, JobStatus::Succeeded, None),
            Err(recompute::Error::Cancelled) => {
                self.finish(
                    id,
                    JobStatus::Cancelled,
                    Some("cancelled by request".into()),
                );
            }
            Err(err) => {
                let attempts = self.job(id).map_or(0, |j| j.attempts);
                if attempts < self.inner.config.max_attempts {
                    let delay = self.inner.config.retry_backoff * 2u32.saturating_pow(attempts - 1);
                    tracing::warn!(job = id, %err, attempts, ?delay, "recompute failed; retrying");
                    self.update(id, |j| {
                        j.status = JobStatus::Queued;
                        j.error = Some(format!(
                            "attempt {attempts} failed: {err}; retrying in {delay:?}"
                        ));
                    });
                    let queue = self.inner.queue.clone();
                    let id = id.to_owned();
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        let _ = queue.send(id).await;
                    });
                } else {
                    tracing::error!(job = id, %err, attempts, "recompute failed");
                    self.finish(id, JobStatus::Failed, Some(err.to_string()));
                }
            }
        }
        self.persist(id).await;
    }

    async fn run_views(
        &self,
        id: &str,
        job: &JobRecord,
        views: &[ViewDefinition],
        token: &CancellationToken,
    ) -> Result<(), recompute::Error> {
        let handle = {
            let runtime = self.inner.runtime.lock().unwrap_or_else(|e| e.into_inner());
            runtime.as_ref().map(|rt| rt.handle().clone())
        };
        let Some(handle) = handle else {
            return Err(recompute::Error::Cancelled);
        };
        let total = views.len().max(1);
        for (done, view) in views.iter().enumerate() {
            for requested in self.ranges(job, view).await {
                let recompute = Arc::clone(&self.inner.recompute);
                let view_def = view.clone();
                let job_id = id.to_owned();
                let token = token.clone();
                let this = self.clone();
                let segment = format!("{}-{}", job.id, uuid::Uuid::new_v4().simple());
                let task = handle.spawn(async move {
                    let report = move |p: Progress| {
                        let within = if p.chunks_total == 0 {
                            0.0
                        } else {
                            p.chunks_done as f64 / p.chunks_total as f64
                        };
                        this.update(&job_id, |j| {
                            j.progress.fraction = (done as f64 + within) / total as f64;
                        });
                    };
                    recompute
                        .run_view(&view_def, requested, &segment, &token, &report)
                        .await
                });
                let outcome = match task.await {
                    Ok(result) => result?,
                    Err(err) => {
                        return Err(recompute::Error::Query {
                            view: view.name.clone(),
                            source: datafusion::error::DataFusionError::External(Box::new(err)),
                        });
                    }
                };
                tracing::info!(job = id, view = %outcome.view, windows = outcome.windows_published, "view recomputed");
                self.update(id, |j| {
                    j.rows_read += outcome.rows_read;
                    j.files_scanned += outcome.files_scanned;
                    j.bytes_scanned += outcome.bytes_scanned;
                    j.windows_published += outcome.windows_published;
                    if let Some(StartRange { from, to }) = outcome.not_ready {
                        j.windows_not_ready.push(NotReady {
                            view: outcome.view.clone(),
                            from,
                            to,
                        });
                    }
                    j.views.push(outcome);
                });
            }
            self.update(id, |j| {
                j.progress.views_done = done + 1;
                j.progress.fraction = (done + 1) as f64 / total as f64;
            });
            self.persist(id).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::import::import as seed_archive;
    use crate::catalog::ViewCatalog;
    use object_store::memory::InMemory;
    use tandem_shared::aggregate::AggregateValue;
    use tandem_shared::event::{EventBatchBuilder, EventDecoder};
    use tandem_shared::schema::{EventSchema, FieldType};
    use tandem_shared::time::Span;
    use tandem_shared::view::ViewConfig;
    use tandem_shared::window::WindowConfig;

    const BASE: i64 = 1_795_255_200_000; // 2026-11-21T10:00:00Z
    const M: i64 = 60_000;

    fn schema() -> Arc<tandem_shared::schema::EventSchema> {
        Arc::new(
            EventSchema::new(
                "ts",
                vec![
                    ("qty".into(), FieldType::Int64),
                    ("price".into(), FieldType::Int64),
                ],
                None,
            )
            .unwrap(),
        )
    }

    fn view(filter: Option<&str>) -> ViewDefinition {
        ViewDefinition::from_config(
            &ViewConfig {
                name: "sales".into(),
                window: WindowConfig {
                    tumbling: Some("1m".into()),
                    ..Default::default()
                },
                group_by: vec![],
                filter: filter.map(str::to_owned),
                allowed_lateness: None,
                aggregates: vec!["count(*) AS n".into(), "sum(qty) AS qty".into()],
            },
            &schema(),
        )
        .unwrap()
    }

    /// Archives `events` (ts, qty) on partition 0 starting at `offset`.
    async fn archive(store: &Arc<dyn ObjectStore>, events: &[(i64, i64)], offset: i64) {
        let decoder = EventDecoder::new(schema());
        let mut b = EventBatchBuilder::new(&decoder, events.len());
        for (i, (ts, qty)) in events.iter().enumerate() {
            let json = format!(r#"{{"ts":{ts},"qty":{qty},"price":10}}"#);
            b.append(
                &decoder.decode(json.as_bytes()).unwrap(),
                0,
                offset + i as i64,
            );
        }
        seed_archive(store, "orders", 1, &[(0, b.finish())])
            .await
            .unwrap();
    }

    fn scheduler(
        store: &Arc<dyn ObjectStore>,
        view: ViewDefinition,
    ) -> (Scheduler, Arc<ViewCatalog>) {
        let catalog = Arc::new(ViewCatalog::new(Arc::clone(store), [view.clone()]));
        let recompute = Arc::new(Recompute {
            store: Arc::clone(store),
            schema: schema(),
            topic: "orders".into(),
            idle_timeout: Span::from_millis(60_000),
            catalog: Arc::clone(&catalog),
        });
        let config = SchedulerConfig {
            retry_backoff: Duration::from_millis(10),
            ..Default::default()
        };
        (Scheduler::new(recompute, [view], config).unwrap(), catalog)
    }

    async fn wait_finished(s: &Scheduler, id: &str) -> JobRecord {
        for _ in 0..500 {
            if let Some(j) = s.job(id)
                && j.status.is_finished()
            {
                return j;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("job {id} did not finish: {:?}", s.job(id));
    }

    fn request(trigger: Trigger) -> JobRequest {
        JobRequest {
            view: None,
            from: None,
            to: None,
            trigger,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failing_jobs_retry_then_fail_and_their_records_survive_a_restart() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        // price / qty divides by zero on the second event: the query fails on real data.
        archive(
            &store,
            &[(BASE, 1), (BASE + 1_000, 0), (BASE + 5 * M, 1)],
            0,
        )
        .await;
        let (s, catalog) = scheduler(&store, view(Some("price / qty > 1")));
        let cancel = CancellationToken::new();
        tokio::spawn(s.clone().run(cancel.clone()));
        let job = s.submit(request(Trigger::Request)).unwrap();
        let done = wait_finished(&s, &job.id).await;
        assert_eq!(done.status, JobStatus::Failed);
        assert_eq!(done.attempts, 3);
        assert!(
            done.error
                .as_deref()
                .is_some_and(|e| e.to_lowercase().contains("divide by zero")),
            "{done:?}"
        );
        assert_eq!(
            catalog.get("sales").unwrap().seq,
            None,
            "a failed job publishes nothing"
        );
        cancel.cancel();
        tokio::time::sleep(Duration::from_millis(100)).await;

        // A new process sees the record; a job that was queued is queued again.
        let mut pending = done.clone();
        pending.id = "01900000-0000-7000-8000-000000000000".into();
        pending.status = JobStatus::Queued;
        store
            .put(
                &Path::from(layout::job_record(&pending.id).as_str()),
                PutPayload::from(serde_json::to_vec(&pending).unwrap()),
            )
            .await
            .unwrap();
        let (restarted, _) = scheduler(&store, view(Some("price / qty > 1")));
        assert_eq!(restarted.restore().await, 1);
        assert_eq!(restarted.job(&done.id).unwrap().status, JobStatus::Failed);
        assert_eq!(restarted.list(Some(JobStatus::Queued), None).len(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancelled_job_publishes_nothing() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        archive(&store, &[(BASE, 1), (BASE + 5 * M, 1)], 0).await;
        let (s, catalog) = scheduler(&store, view(None));
        let recompute = Arc::clone(&s.inner.recompute);
        let cancelled = CancellationToken::new();
        cancelled.cancel();
        let result = recompute
            .run_view(&view(None), Requested::default(), "j", &cancelled, &|_| {})
            .await;
        assert!(matches!(result, Err(recompute::Error::Cancelled)));
        assert_eq!(catalog.get("sales").unwrap().seq, None);
        // Cancelled while queued: it never runs.
        let job = s.submit(request(Trigger::Request)).unwrap();
        assert_eq!(s.cancel(&job.id).unwrap().status, JobStatus::Cancelled);
        let stop = CancellationToken::new();
        tokio::spawn(s.clone().run(stop.clone()));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(s.job(&job.id).unwrap().status, JobStatus::Cancelled);
        assert_eq!(catalog.get("sales").unwrap().seq, None);
        assert!(matches!(
            s.cancel(&job.id),
            Err(CancelError::Finished { .. })
        ));
        stop.cancel();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn scheduled_runs_recompute_dirty_and_new_windows_only() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        // Minutes 0..5 with 2 events each; the archive is complete until minute 5 and a half.
        let first: Vec<(i64, i64)> = (0..6)
            .flat_map(|m| [(BASE + m * M, 1), (BASE + m * M + 30_000, 1)])
            .collect();
        archive(&store, &first, 0).await;
        let (s, catalog) = scheduler(&store, view(None));
        let stop = CancellationToken::new();
        tokio::spawn(s.clone().run(stop.clone()));
        let full = s.submit(request(Trigger::Request)).unwrap();
        assert_eq!(
            wait_finished(&s, &full.id).await.status,
            JobStatus::Succeeded
        );
        let published = catalog.get("sales").unwrap();
        assert_eq!(published.coverage.horizon(), Some(EventTime(BASE + 5 * M)));

        // A late event for minute 2 and new events up to minute 9 are archived.
        let later: Vec<(i64, i64)> =
            vec![(BASE + 2 * M + 10, 5), (BASE + 7 * M, 1), (BASE + 9 * M, 1)];
        archive(&store, &later, first.len() as i64).await;
        let job = s.submit(request(Trigger::Schedule)).unwrap();
        let done = wait_finished(&s, &job.id).await;
        assert_eq!(done.status, JobStatus::Succeeded, "{done:?}");
        let ranges: Vec<_> = done.views.iter().filter_map(|v| v.covered).collect();
        assert_eq!(
            ranges,
            [
                StartRange::new(EventTime(BASE + 2 * M), EventTime(BASE + 3 * M)),
                StartRange::new(EventTime(BASE + 5 * M), EventTime(BASE + 9 * M)),
            ],
            "only the dirty minute and the newly ready ones"
        );
        let published = catalog.get("sales").unwrap();
        let minute2 = published
            .rows
            .iter()
            .find(|r| r.window.start == EventTime(BASE + 2 * M))
            .unwrap();
        assert_eq!(
            minute2.values,
            [AggregateValue::Int(3), AggregateValue::Int(7)]
        );
        assert_eq!(published.coverage.horizon(), Some(EventTime(BASE + 9 * M)));
        // Nothing is dirty any more.
        let again = s.submit(request(Trigger::Schedule)).unwrap();
        let again = wait_finished(&s, &again.id).await;
        assert!(again.views.iter().all(|v| v.covered.is_none()), "{again:?}");
        stop.cancel();
    }
}
