//! Recompute jobs: submission, the queue, the cron schedule and job records.
//!
//! Jobs come from requests (`POST /v1/jobs`) and the cron schedule. They run one at a time, in
//! submission order, on a dedicated runtime: DataFusion plans are CPU-heavy and must not starve
//! the runtime that serves HTTP and consumes Kafka. The queue is bounded; a full queue refuses new
//! jobs rather than growing.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use serde::{Deserialize, Serialize};
use tandem_shared::coverage::StartRange;
use tandem_shared::time::EventTime;
use tandem_shared::view::ViewDefinition;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::recompute::{Recompute, Requested, ViewOutcome};

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
}

/// What started a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    Request,
    Schedule,
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

/// The record of a job, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    pub rows_read: u64,
    pub files_scanned: u64,
    pub bytes_scanned: u64,
    pub windows_published: u64,
    /// Requested windows left to the speed layer because the archive was not complete for them.
    pub windows_not_ready: Vec<NotReady>,
    /// Per-view detail.
    pub views: Vec<ViewOutcome>,
    pub error: Option<String>,
}

fn now() -> EventTime {
    EventTime(Utc::now().timestamp_millis())
}

/// Finished job records kept in memory.
const KEEP_FINISHED: usize = 1000;

/// The job scheduler. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

struct Inner {
    jobs: Mutex<BTreeMap<String, JobRecord>>,
    queue: mpsc::Sender<String>,
    receiver: Mutex<Option<mpsc::Receiver<String>>>,
    capacity: usize,
    recompute: Arc<Recompute>,
    views: BTreeMap<String, ViewDefinition>,
    schedule: Option<cron::Schedule>,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("capacity", &self.capacity)
            .field("schedule", &self.schedule.as_ref().map(|s| s.to_string()))
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
        schedule: Option<&str>,
        capacity: usize,
    ) -> Result<Self, Error> {
        let schedule = schedule
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
        let (queue, receiver) = mpsc::channel(capacity);
        Ok(Self {
            inner: Arc::new(Inner {
                jobs: Mutex::new(BTreeMap::new()),
                queue,
                receiver: Mutex::new(Some(receiver)),
                capacity,
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
                capacity: self.inner.capacity,
            });
        }
        self.publish_counts();
        Ok(record)
    }

    pub fn job(&self, id: &str) -> Option<JobRecord> {
        self.jobs().get(id).cloned()
    }

    /// All known jobs, newest first.
    pub fn list(&self) -> Vec<JobRecord> {
        // Ids are UUIDv7: their order is creation order.
        self.jobs().values().rev().cloned().collect()
    }

    fn update(&self, id: &str, f: impl FnOnce(&mut JobRecord)) {
        if let Some(job) = self.jobs().get_mut(id) {
            f(job);
        }
        self.publish_counts();
    }

    fn publish_counts(&self) {
        let mut counts: BTreeMap<JobStatus, u64> = JobStatus::ALL.iter().map(|s| (*s, 0)).collect();
        let mut jobs = self.jobs();
        for job in jobs.values() {
            *counts.entry(job.status).or_default() += 1;
        }
        for (status, n) in counts {
            metrics::gauge!("tandem_jobs", "status" => status.as_str()).set(n as f64);
        }
        // Forget the oldest finished jobs beyond the limit.
        let finished: Vec<String> = jobs
            .iter()
            .filter(|(_, j)| j.finished_at.is_some())
            .map(|(id, _)| id.clone())
            .collect();
        for id in finished
            .iter()
            .take(finished.len().saturating_sub(KEEP_FINISHED))
        {
            jobs.remove(id);
        }
    }

    /// Runs queued jobs and the cron schedule until `cancel` fires. A running job is finished
    /// first, so that shutdown never leaves a half-published view.
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
        loop {
            let next_cron = self.next_cron_delay();
            tokio::select! {
                _ = cancel.cancelled() => break,
                id = receiver.recv() => match id {
                    Some(id) => self.execute(&id).await,
                    None => break,
                },
                _ = tokio::time::sleep(next_cron.unwrap_or(Duration::from_secs(3600))), if next_cron.is_some() => {
                    let request = JobRequest { view: None, from: None, to: None, trigger: Trigger::Schedule };
                    match self.submit(request) {
                        Ok(job) => tracing::info!(id = %job.id, "scheduled recompute queued"),
                        Err(err) => tracing::warn!(%err, "scheduled recompute not queued"),
                    }
                }
            }
        }
        // Jobs still queued will not run in this process.
        while let Ok(id) = receiver.try_recv() {
            self.update(&id, |j| {
                j.status = JobStatus::Cancelled;
                j.finished_at = Some(now());
                j.error = Some("cancelled: Tandem shut down before the job ran".into());
            });
        }
    }

    fn next_cron_delay(&self) -> Option<Duration> {
        let next = self.inner.schedule.as_ref()?.upcoming(Utc).next()?;
        (next - Utc::now()).to_std().ok().or(Some(Duration::ZERO))
    }

    async fn execute(&self, id: &str) {
        let Some(job) = self.job(id) else { return };
        self.update(id, |j| {
            j.status = JobStatus::Running;
            j.started_at = Some(now());
        });
        let views: Vec<ViewDefinition> = match &job.view {
            Some(v) => self.inner.views.get(v).cloned().into_iter().collect(),
            None => self.inner.views.values().cloned().collect(),
        };
        let requested = Requested {
            from: job.from,
            to: job.to,
        };
        let handle = {
            let runtime = self.inner.runtime.lock().unwrap_or_else(|e| e.into_inner());
            runtime.as_ref().map(|rt| rt.handle().clone())
        };
        let Some(handle) = handle else { return };
        let mut error = None;
        for view in views {
            let recompute = Arc::clone(&self.inner.recompute);
            let job_id = id.to_owned();
            let task =
                handle.spawn(async move { recompute.run_view(&view, requested, &job_id).await });
            match task.await {
                Ok(Ok(outcome)) => {
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
                Ok(Err(err)) => {
                    tracing::error!(job = id, %err, "recompute failed");
                    error = Some(err.to_string());
                    break;
                }
                Err(err) => {
                    tracing::error!(job = id, %err, "recompute task failed");
                    error = Some(format!("internal error: {err}"));
                    break;
                }
            }
        }
        self.update(id, |j| {
            j.finished_at = Some(now());
            j.status = if error.is_some() {
                JobStatus::Failed
            } else {
                JobStatus::Succeeded
            };
            j.error = error;
        });
    }
}
