//! What a job is: its request, status, progress and the record the API shows.

use serde::{Deserialize, Serialize};
use tandem_shared::error::ErrorKind;
use tandem_shared::time::EventTime;

use crate::recompute::ViewOutcome;

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NotReady {
    pub view: String,
    pub from: EventTime,
    pub to: EventTime,
}

/// How far a running job is.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobProgress {
    pub views_done: usize,
    pub views_total: usize,
    /// Fraction of the job's work done, from 0 to 1.
    pub fraction: f64,
}

/// The record of a job, as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
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
    /// Whose problem the last failure was: a user's error fails the job at once, a transient one
    /// is retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<ErrorKind>,
}

impl JobRecord {
    /// A newly queued job.
    pub fn queued(id: String, request: JobRequest, now: EventTime) -> Self {
        Self {
            id,
            view: request.view,
            from: request.from,
            to: request.to,
            trigger: request.trigger,
            status: JobStatus::Queued,
            created_at: now,
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
            error_kind: None,
        }
    }

    /// Starts an attempt: counters restart with each one.
    pub fn start_attempt(&mut self, views_total: usize, now: EventTime) {
        self.status = JobStatus::Running;
        self.started_at = Some(now);
        self.attempts += 1;
        self.rows_read = 0;
        self.files_scanned = 0;
        self.bytes_scanned = 0;
        self.windows_published = 0;
        self.windows_not_ready.clear();
        self.views.clear();
        self.progress = JobProgress {
            views_done: 0,
            views_total,
            fraction: 0.0,
        };
    }

    /// Adds what recomputing one view (or range) did.
    pub fn absorb(&mut self, outcome: ViewOutcome) {
        self.rows_read += outcome.rows_read;
        self.files_scanned += outcome.files_scanned;
        self.bytes_scanned += outcome.bytes_scanned;
        self.windows_published += outcome.windows_published;
        if let Some(range) = outcome.not_ready {
            self.windows_not_ready.push(NotReady {
                view: outcome.view.clone(),
                from: range.from,
                to: range.to,
            });
        }
        self.views.push(outcome);
    }
}
