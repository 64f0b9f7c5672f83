//! Running one job: the ranges it recomputes per view, the recompute on the dedicated runtime,
//! progress, and what happens after a failure.

use std::sync::Arc;
use std::time::Duration;

use tandem_shared::coverage::StartRange;
use tandem_shared::error::ErrorKind;
use tandem_shared::view::ViewDefinition;
use tokio_util::sync::CancellationToken;

use super::Scheduler;
use super::job::{JobRecord, JobStatus, Trigger};
use crate::recompute::{self, Progress, Requested};

/// What to do after an attempt of a job failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AfterFailure {
    /// Queue the job again after this delay.
    Retry(Duration),
    /// Fail the job now.
    Fail,
}

/// Retries only transient failures (the store or the broker), with exponential backoff, up to
/// `max_attempts` attempts in all. A user's error (an expression that fails on the data) or an
/// internal one would fail the same way again. Pure.
pub(crate) fn after_failure(
    kind: ErrorKind,
    attempts: u32,
    max_attempts: u32,
    backoff: Duration,
) -> AfterFailure {
    if !kind.is_retryable() || attempts >= max_attempts {
        return AfterFailure::Fail;
    }
    let doublings = attempts.saturating_sub(1).min(16);
    AfterFailure::Retry(backoff.saturating_mul(1 << doublings))
}

impl Scheduler {
    /// The ranges a job recomputes for one view: the requested one, or for a scheduled run the
    /// windows made dirty by late rows plus everything after the published horizon.
    async fn ranges(&self, job: &JobRecord, view: &ViewDefinition) -> Vec<Requested> {
        if job.trigger != Trigger::Schedule {
            return vec![Requested {
                from: job.from,
                to: job.to,
            }];
        }
        let recompute = &self.inner.recompute;
        let published = recompute.catalog().get(&view.name).unwrap_or_default();
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

    /// Runs one attempt of a queued job and records its outcome.
    pub(super) async fn execute(&self, id: &str) {
        let Some(job) = self.job(id) else { return };
        if job.status != JobStatus::Queued {
            return; // cancelled while queued
        }
        let token = CancellationToken::new();
        self.tokens().insert(id.to_owned(), token.clone());
        let views: Vec<ViewDefinition> = match &job.view {
            Some(v) => self.view(v).cloned().into_iter().collect(),
            None => self.inner.recompute.catalog().views().cloned().collect(),
        };
        let now = self.now();
        self.inner
            .book
            .update(id, |j| j.start_attempt(views.len(), now));
        self.inner.book.persist(id).await;
        let result = self.run_views(id, &job, &views, &token).await;
        self.tokens().remove(id);
        let book = &self.inner.book;
        match result {
            Ok(()) => book.finish(id, JobStatus::Succeeded, None, self.now()),
            Err(recompute::Error::Cancelled) => book.finish(
                id,
                JobStatus::Cancelled,
                Some((ErrorKind::User, "cancelled by request".into())),
                self.now(),
            ),
            Err(err) => {
                let kind = err.kind();
                let attempts = self.job(id).map_or(0, |j| j.attempts);
                let config = &self.inner.config;
                match after_failure(kind, attempts, config.max_attempts, config.retry_backoff) {
                    AfterFailure::Retry(delay) => {
                        tracing::warn!(job = id, %err, attempts, ?delay, "recompute failed; retrying");
                        book.update(id, |j| {
                            j.status = JobStatus::Queued;
                            j.error_kind = Some(kind);
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
                    }
                    AfterFailure::Fail => {
                        tracing::error!(job = id, %err, %kind, attempts, "recompute failed");
                        book.finish(
                            id,
                            JobStatus::Failed,
                            Some((kind, err.to_string())),
                            self.now(),
                        );
                    }
                }
            }
        }
        book.persist(id).await;
    }

    async fn run_views(
        &self,
        id: &str,
        job: &JobRecord,
        views: &[ViewDefinition],
        token: &CancellationToken,
    ) -> Result<(), recompute::Error> {
        let Some(handle) = self.runtime_handle() else {
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
                // DataFusion plans are CPU-heavy: they run on the recompute runtime, not on the
                // one that serves HTTP and consumes Kafka.
                let task = handle.spawn(async move {
                    let report = move |p: Progress| {
                        let within = if p.chunks_total == 0 {
                            0.0
                        } else {
                            p.chunks_done as f64 / p.chunks_total as f64
                        };
                        this.inner.book.update(&job_id, |j| {
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
                self.inner.book.update(id, |j| j.absorb(outcome));
            }
            self.inner.book.update(id, |j| {
                j.progress.views_done = done + 1;
                j.progress.fraction = (done + 1) as f64 / total as f64;
            });
            self.inner.book.persist(id).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BACKOFF: Duration = Duration::from_secs(2);

    #[test]
    fn only_transient_failures_are_retried_with_exponential_backoff() {
        use AfterFailure::*;
        assert_eq!(
            after_failure(ErrorKind::Transient, 1, 3, BACKOFF),
            Retry(BACKOFF)
        );
        assert_eq!(
            after_failure(ErrorKind::Transient, 2, 3, BACKOFF),
            Retry(2 * BACKOFF)
        );
        assert_eq!(after_failure(ErrorKind::Transient, 3, 3, BACKOFF), Fail);
        assert_eq!(after_failure(ErrorKind::User, 1, 3, BACKOFF), Fail);
        assert_eq!(after_failure(ErrorKind::Internal, 1, 3, BACKOFF), Fail);
    }

    #[test]
    fn backoff_does_not_overflow_after_many_attempts() {
        assert!(matches!(
            after_failure(ErrorKind::Transient, 60, u32::MAX, Duration::MAX),
            AfterFailure::Retry(Duration::MAX)
        ));
    }
}
