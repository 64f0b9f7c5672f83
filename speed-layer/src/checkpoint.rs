//! Checkpoints: the speed layer's state, per Kafka partition, in the object store.
//!
//! A checkpoint of partition `p` is the window state of every view over `p` plus the offset and
//! event-time progress that state reflects. It is written as an immutable object and then
//! published by creating the next manifest of the partition's chain (create-if-absent). Restoring
//! reads the newest manifest, loads its object and seeks the partition to its offset, so every
//! event is counted exactly once: those before the offset are in the state, those after are
//! consumed again. Offsets committed to Kafka are never used for this.
//!
//! A crash before the manifest leaves an unreferenced object (garbage, pruned later) and the
//! previous checkpoint in force. A worker that loses the create-if-absent race was fenced by a new
//! owner of the partition.
//!
//! Uploads run on the Tokio runtime, off the consume thread; they are ordered per partition by a
//! single writer task. On revocation the consume thread waits for the partition's final
//! checkpoint before giving the partition up.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use object_store::ObjectStore;
use serde::{Deserialize, Serialize};
use tandem_shared::layout;
use tandem_shared::time::EventTime;
use tandem_store::fault::crash_point;
use tandem_store::manifest::{self, ManifestChain};
use tandem_store::object;
use tokio::sync::{mpsc, oneshot};

pub use crate::joined::JoinSnapshot;
use crate::state::ViewSnapshot;

/// Format version of checkpoint objects. 4: joined streams' buffers and second-topic offsets;
/// 3: the ids remembered for de-duplication; 2: hopping
/// views keep panes, sealed windows and release markers (1 kept whole windows); a checkpoint
/// of another format is not restored and its partitions are rebuilt from the topic.
pub const FORMAT: u32 = 4;

/// Errors of checkpointing. Transient (the store) or internal (a corrupt object).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("checkpoint: {0}")]
    Store(#[from] object::Error),
    #[error("checkpoint manifest: {0}")]
    Manifest(manifest::Error),
    #[error("checkpoint `{path}` is corrupt: {detail}")]
    Corrupt { path: String, detail: String },
    #[error("checkpoint manifest `{path}` already exists: the partition has a new owner")]
    Fenced { path: String },
    #[error("checkpoint writer stopped")]
    WriterGone,
    #[error("checkpoint of partition {partition} did not finish within {seconds}s")]
    Timeout { partition: i32, seconds: u64 },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<manifest::Error> for Error {
    fn from(err: manifest::Error) -> Self {
        match err {
            manifest::Error::Conflict { path } => Error::Fenced { path },
            other => Error::Manifest(other),
        }
    }
}

/// The state of one partition at one offset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartitionSnapshot {
    pub format: u32,
    /// Names and versions of the views; a checkpoint of other definitions is not restored.
    pub fingerprint: String,
    pub partition: i32,
    /// The next offset to consume; `None` if nothing was consumed.
    pub next_offset: Option<i64>,
    pub max_event_time: Option<i64>,
    pub views: Vec<ViewSnapshot>,
    /// Ids seen within the de-duplication horizon, with their latest event times.
    pub seen: Vec<(Vec<u8>, i64)>,
    /// Joined streams: the same partition number of each second topic, where it stands.
    pub seconds: Vec<SecondPosition>,
    /// Per view, a joined stream's buffers (`None` for a view without one).
    pub joins: Vec<Option<JoinSnapshot>>,
}

/// Where a partition of a joined stream's second topic stands (its number is the
/// partition's): the offset its buffered rows reflect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecondPosition {
    pub topic: String,
    pub next_offset: Option<i64>,
    pub max_event_time: Option<i64>,
}

/// The published pointer to a checkpoint object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointManifest {
    pub object: String,
    pub partition: i32,
    pub next_offset: Option<i64>,
    pub max_event_time: Option<i64>,
    pub fingerprint: String,
    pub bytes: u64,
    pub written_at: EventTime,
}

struct Upload {
    partition: i32,
    seq: u64,
    bytes: Vec<u8>,
    manifest: CheckpointManifest,
    done: Option<oneshot::Sender<Result<()>>>,
}

/// Writes and loads checkpoints of one consumer group's partitions.
pub struct Checkpointer {
    store: Arc<dyn ObjectStore>,
    group: String,
    topic: String,
    runtime: tokio::runtime::Handle,
    uploads: mpsc::Sender<Upload>,
    /// Next sequence number per partition.
    seqs: Mutex<HashMap<i32, u64>>,
}

impl std::fmt::Debug for Checkpointer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpointer")
            .field("group", &self.group)
            .field("topic", &self.topic)
            .finish()
    }
}

fn chain(store: &Arc<dyn ObjectStore>, group: &str, topic: &str, partition: i32) -> ManifestChain {
    ManifestChain::new(
        Arc::clone(store),
        layout::checkpoint_manifest_dir(group, topic, partition),
    )
}

/// Deletes checkpoint objects of a partition older than sequence `keep_from`. Failures only
/// leave garbage behind.
async fn prune_objects(store: &Arc<dyn ObjectStore>, dir: &str, keep_from: u64) {
    let Ok(objects) = object::list(store, dir).await else {
        return;
    };
    for o in objects {
        let name = o.location.filename().unwrap_or_default();
        let seq = name
            .split(['-', '.'])
            .next()
            .and_then(|s| s.parse::<u64>().ok());
        if seq.is_some_and(|s| s < keep_from) {
            let _ = object::delete(store, o.location.as_ref()).await;
        }
    }
}

impl Checkpointer {
    /// Starts the writer task on `runtime`.
    pub fn start(
        store: Arc<dyn ObjectStore>,
        group: String,
        topic: String,
        runtime: tokio::runtime::Handle,
    ) -> Arc<Self> {
        let (uploads, rx) = mpsc::channel(64);
        runtime.spawn(write_loop(
            Arc::clone(&store),
            group.clone(),
            topic.clone(),
            rx,
        ));
        Arc::new(Self {
            store,
            group,
            topic,
            runtime,
            uploads,
            seqs: Mutex::new(HashMap::new()),
        })
    }

    /// Loads the newest checkpoint of `partition`. Blocks; call from the consume thread.
    pub fn load(&self, partition: i32) -> Result<Option<PartitionSnapshot>> {
        let chain = chain(&self.store, &self.group, &self.topic, partition);
        // The sequence continues past the newest manifest present, even if that manifest or its
        // object cannot be read: otherwise every later checkpoint would lose the
        // create-if-absent race to it, and a restart would restore older state.
        let newest = self.runtime.block_on(chain.sequences())?.last().copied();
        self.seqs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(partition, newest.map_or(0, |s| s + 1));
        if newest.is_none() {
            return Ok(None);
        }
        let found = self.runtime.block_on(async {
            let Some((_, manifest)) = chain.latest::<CheckpointManifest>().await? else {
                return Ok::<_, Error>(None);
            };
            let bytes = object::read(&self.store, &manifest.object).await?;
            Ok(Some((manifest, bytes)))
        })?;
        let Some((manifest, bytes)) = found else {
            return Ok(None);
        };
        let snapshot: PartitionSnapshot =
            postcard::from_bytes(&bytes).map_err(|e| Error::Corrupt {
                path: manifest.object.clone(),
                detail: e.to_string(),
            })?;
        if snapshot.format != FORMAT {
            return Err(Error::Corrupt {
                path: manifest.object,
                detail: format!("format {} is not {FORMAT}", snapshot.format),
            });
        }
        Ok(Some(snapshot))
    }

    /// Queues a checkpoint. With `wait`, blocks until it is published (or failed).
    pub fn submit(&self, snapshot: &PartitionSnapshot, wait: bool) -> Result<()> {
        let partition = snapshot.partition;
        let seq = {
            let mut seqs = self.seqs.lock().unwrap_or_else(|e| e.into_inner());
            let seq = seqs.entry(partition).or_insert(0);
            let current = *seq;
            *seq += 1;
            current
        };
        let bytes = postcard::to_allocvec(snapshot).map_err(|e| Error::Corrupt {
            path: format!("partition {partition}"),
            detail: e.to_string(),
        })?;
        let object = layout::checkpoint_object(
            &self.group,
            &self.topic,
            partition,
            seq,
            &uuid::Uuid::new_v4().simple().to_string(),
        );
        let manifest = CheckpointManifest {
            object,
            partition,
            next_offset: snapshot.next_offset,
            max_event_time: snapshot.max_event_time,
            fingerprint: snapshot.fingerprint.clone(),
            bytes: bytes.len() as u64,
            written_at: EventTime(chrono::Utc::now().timestamp_millis()),
        };
        let (done, wait_for) = if wait {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let upload = Upload {
            partition,
            seq,
            bytes,
            manifest,
            done,
        };
        // Blocking send: a slow store slows consumption instead of queueing without bound.
        self.uploads
            .blocking_send(upload)
            .map_err(|_| Error::WriterGone)?;
        if let Some(rx) = wait_for {
            const SECONDS: u64 = 60;
            let result = self
                .runtime
                .block_on(async { tokio::time::timeout(Duration::from_secs(SECONDS), rx).await });
            return match result {
                Ok(Ok(r)) => r,
                Ok(Err(_)) => Err(Error::WriterGone),
                Err(_) => Err(Error::Timeout {
                    partition,
                    seconds: SECONDS,
                }),
            };
        }
        Ok(())
    }
}

async fn write_loop(
    store: Arc<dyn ObjectStore>,
    group: String,
    topic: String,
    mut rx: mpsc::Receiver<Upload>,
) {
    while let Some(upload) = rx.recv().await {
        let started = std::time::Instant::now();
        let size = upload.bytes.len();
        let result = write_one(&store, &group, &topic, &upload).await;
        match &result {
            Ok(()) => {
                metrics::histogram!("tandem_checkpoint_seconds")
                    .record(started.elapsed().as_secs_f64());
                metrics::gauge!("tandem_checkpoint_bytes", "partition" => upload.partition.to_string())
                    .set(size as f64);
                metrics::counter!("tandem_checkpoints_total").increment(1);
            }
            Err(err) => {
                metrics::counter!("tandem_checkpoint_errors_total").increment(1);
                tracing::error!(partition = upload.partition, %err, "checkpoint failed");
            }
        }
        if let Some(done) = upload.done {
            let _ = done.send(result);
        }
    }
}

async fn write_one(
    store: &Arc<dyn ObjectStore>,
    group: &str,
    topic: &str,
    upload: &Upload,
) -> Result<()> {
    crash_point("checkpoint.before_object");
    object::write(store, &upload.manifest.object, upload.bytes.clone()).await?;
    crash_point("checkpoint.after_object");
    let chain = chain(store, group, topic, upload.partition);
    chain.publish(upload.seq, &upload.manifest).await?;
    crash_point("checkpoint.after_manifest");
    let data_dir = format!(
        "{}/data",
        layout::checkpoint_dir(group, topic, upload.partition)
    );
    // Keep the previous checkpoint for a reader that listed just before this one.
    let keep_from = upload.seq.saturating_sub(1);
    chain.prune(keep_from).await;
    prune_objects(store, &data_dir, keep_from).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    fn snapshot(next_offset: i64) -> PartitionSnapshot {
        PartitionSnapshot {
            format: FORMAT,
            fingerprint: "v@1".into(),
            partition: 3,
            next_offset: Some(next_offset),
            max_event_time: None,
            views: Vec::new(),
            seen: Vec::new(),
            seconds: Vec::new(),
            joins: Vec::new(),
        }
    }

    #[test]
    fn a_torn_checkpoint_manifest_is_skipped_and_later_ones_never_lose_to_it() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let started = || {
            Checkpointer::start(
                Arc::clone(&store),
                "g".into(),
                "t".into(),
                runtime.handle().clone(),
            )
        };
        let first = started();
        assert_eq!(first.load(3).unwrap(), None);
        first.submit(&snapshot(10), true).unwrap();
        first.submit(&snapshot(20), true).unwrap();

        // A corrupt manifest lands above them (a torn write by another tool, say).
        let dir = layout::checkpoint_manifest_dir("g", "t", 3);
        runtime
            .block_on(object::write(&store, &layout::manifest_file(&dir, 7), "{"))
            .unwrap();
        let restarted = started();
        // The torn manifest was never a publication: the newest one that parses is restored.
        assert_eq!(restarted.load(3).unwrap().unwrap().next_offset, Some(20));
        // The next checkpoint goes above the corrupt one and is the one restored.
        restarted.submit(&snapshot(30), true).unwrap();
        let again = started();
        assert_eq!(again.load(3).unwrap().unwrap().next_offset, Some(30));
    }
}
