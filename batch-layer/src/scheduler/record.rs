//! Job records: kept in memory for the API and written to the object store on every change, so
//! a restarted process knows every job and queues the unfinished ones again.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use object_store::ObjectStore;
use tandem_shared::error::ErrorKind;
use tandem_shared::layout;
use tandem_shared::time::EventTime;
use tandem_store::object;

use super::job::{JobRecord, JobStatus};

/// Finished job records kept in memory.
const KEEP_FINISHED: usize = 1000;

/// Every job this process knows, by id (UUIDv7, so in creation order).
#[derive(Debug)]
pub(crate) struct JobBook {
    jobs: Mutex<BTreeMap<String, JobRecord>>,
    store: Arc<dyn ObjectStore>,
}

impl JobBook {
    pub(crate) fn new(store: Arc<dyn ObjectStore>) -> Self {
        Self {
            jobs: Mutex::new(BTreeMap::new()),
            store,
        }
    }

    fn jobs(&self) -> MutexGuard<'_, BTreeMap<String, JobRecord>> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn get(&self, id: &str) -> Option<JobRecord> {
        self.jobs().get(id).cloned()
    }

    pub(crate) fn insert(&self, record: JobRecord) {
        self.jobs().insert(record.id.clone(), record);
        self.trim_and_count();
    }

    pub(crate) fn remove(&self, id: &str) {
        self.jobs().remove(id);
        self.trim_and_count();
    }

    /// Jobs, newest first, optionally filtered by status and view.
    pub(crate) fn list(&self, status: Option<JobStatus>, view: Option<&str>) -> Vec<JobRecord> {
        self.jobs()
            .values()
            .rev()
            .filter(|j| status.is_none_or(|s| j.status == s))
            .filter(|j| view.is_none_or(|v| j.view.as_deref() == Some(v)))
            .cloned()
            .collect()
    }

    pub(crate) fn update(&self, id: &str, f: impl FnOnce(&mut JobRecord)) {
        if let Some(job) = self.jobs().get_mut(id) {
            f(job);
        }
        self.trim_and_count();
    }

    pub(crate) fn finish(
        &self,
        id: &str,
        status: JobStatus,
        error: Option<(ErrorKind, String)>,
        now: EventTime,
    ) {
        self.update(id, |j| {
            j.status = status;
            j.finished_at = Some(now);
            j.error_kind = error.as_ref().map(|(kind, _)| *kind);
            j.error = error.map(|(_, message)| message);
            if status == JobStatus::Succeeded {
                j.progress.fraction = 1.0;
            }
        });
    }

    /// Publishes the count per status and forgets the oldest finished jobs beyond
    /// [`KEEP_FINISHED`] (their records stay in the store).
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

    /// Writes a job's record to the object store. Failures are logged: records are history.
    pub(crate) async fn persist(&self, id: &str) {
        let Some(record) = self.get(id) else { return };
        match serde_json::to_vec_pretty(&record) {
            Ok(bytes) => {
                if let Err(err) = object::write(&self.store, &layout::job_record(id), bytes).await {
                    tracing::warn!(job = id, %err, "cannot persist job record");
                }
            }
            Err(err) => tracing::warn!(job = id, %err, "cannot encode job record"),
        }
    }

    /// Deletes the records of jobs finished before `cutoff`, from the store and from memory.
    /// Records in the store this process does not hold are judged by their last write.
    /// Returns how many were deleted.
    pub(crate) async fn collect(&self, cutoff: EventTime) -> usize {
        let Ok(objects) = object::list(&self.store, &layout::job_dir()).await else {
            return 0;
        };
        let mut deleted = 0;
        for meta in objects {
            let path = meta.location.as_ref();
            let id = path
                .rsplit('/')
                .next()
                .and_then(|f| f.strip_suffix(".json"))
                .unwrap_or_default()
                .to_owned();
            let expired = match self.get(&id) {
                Some(job) => {
                    job.status.is_finished() && job.finished_at.is_some_and(|t| t < cutoff)
                }
                None => meta.last_modified.timestamp_millis() < cutoff.millis(),
            };
            if expired && object::delete(&self.store, path).await.is_ok() {
                self.jobs().remove(&id);
                deleted += 1;
            }
        }
        deleted
    }

    /// Loads every record from the object store. Jobs that were queued or running when the
    /// process stopped are marked queued again; their ids are returned, oldest first.
    pub(crate) async fn load(&self) -> Vec<String> {
        let Ok(objects) = object::list(&self.store, &layout::job_dir()).await else {
            return Vec::new();
        };
        let mut requeue = Vec::new();
        for meta in objects {
            let Ok(bytes) = object::read(&self.store, meta.location.as_ref()).await else {
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
        requeue.sort();
        self.trim_and_count();
        requeue
    }
}
