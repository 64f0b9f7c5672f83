//! The archive: every valid event on the topic, exactly once, as Parquet in object storage.
//!
//! ```text
//!  Kafka (consumer group `archive`) ──► per partition buffer, split by event hour
//!        │  offsets below the partition manifest's next_offset are skipped (already archived)
//!        ▼  roll: every `roll_interval`, at `roll_bytes`, and on shutdown
//!  1. write archive/<topic>/date=…/hour=…/p<partition>-o<first>-<last>.parquet (deterministic)
//!  2. create manifest <seq+1> of the partition (create-if-absent: the point of publication)
//!  3. commit the Kafka offset (progress information only)
//! ```
//!
//! Exactly once: an event is archived when a published manifest lists a file holding it, and a
//! manifest also carries the offset to resume from, so files and offsets are published together.
//! A crash before step 2 leaves unlisted files (garbage, overwritten by a replay of the same range);
//! a crash between 2 and 3 replays offsets the manifest already covers, and those are skipped.
//! A writer that loses a create-if-absent race was fenced by a new owner of the partition: it
//! reloads the manifest and seeks back to its offset.
//!
//! Malformed events are skipped here (the speed layer routes them to the dead-letter topic) but
//! their offsets are still covered by the manifest, so they are never re-read.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tandem_shared::event::{EventBatchBuilder, EventDecoder};
use tandem_shared::layout;
use tandem_shared::time::EventTime;
use tokio_util::sync::CancellationToken;

use crate::manifest::{self, ManifestChain};

pub(crate) mod file;
pub mod import;
pub mod snapshot;

pub use snapshot::{ArchiveSnapshot, ArchivedFile, PartitionManifest};

/// Errors of the archive.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Configuration or transient: the consumer could not be created or subscribed.
    #[error("archive consumer: {0}")]
    Consumer(#[source] KafkaError),
    /// Transient: the object store failed; the roll is retried.
    #[error("writing `{path}`: {source}")]
    Write {
        path: String,
        source: object_store::Error,
    },
    /// Internal: Parquet encoding failed.
    #[error("encoding Parquet for partition {partition}: {source}")]
    Encode { partition: i32, source: file::Error },
    #[error(transparent)]
    Manifest(#[from] manifest::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Archive settings.
#[derive(Debug, Clone)]
pub struct ArchiveConfig {
    pub brokers: String,
    pub topic: String,
    pub group_id: String,
    /// Longest time an event waits in a buffer before its file is written.
    pub roll_interval: Duration,
    /// Buffered bytes of one partition that trigger a roll.
    pub roll_bytes: usize,
    /// Events more than this ahead of the wall clock are not archived (the speed layer
    /// dead-letters them).
    pub max_future: tandem_shared::time::Span,
    pub kafka_options: BTreeMap<String, String>,
}

/// Publishes the archive consumer's lag.
#[derive(Debug)]
pub struct ArchiveContext {
    group: String,
}

impl ClientContext for ArchiveContext {
    fn stats(&self, statistics: Statistics) {
        for topic in statistics.topics.values() {
            for (partition, stats) in &topic.partitions {
                // Lag behind the log end by what this process has consumed, not by committed
                // offsets (which are only progress information here).
                if *partition >= 0 && stats.hi_offset >= 0 && stats.app_offset >= 0 {
                    metrics::gauge!(
                        "tandem_consumer_lag",
                        "group" => self.group.clone(),
                        "partition" => partition.to_string()
                    )
                    .set((stats.hi_offset - stats.app_offset).max(0) as f64);
                }
            }
        }
    }
}

impl ConsumerContext for ArchiveContext {}

/// Rows of one event hour, waiting for their file.
struct HourBuffer {
    builder: EventBatchBuilder,
    min_time: EventTime,
    max_time: EventTime,
}

/// Events of one partition read since its last roll.
struct Buffer {
    first_offset: i64,
    last_offset: i64,
    hours: BTreeMap<EventTime, HourBuffer>,
    opened: Instant,
    bytes: usize,
}

/// A buffer whose rows are final, ready to be written (kept until its publication succeeds).
struct SealedRoll {
    first_offset: i64,
    last_offset: i64,
    hours: Vec<(
        EventTime,
        datafusion::arrow::array::RecordBatch,
        EventTime,
        EventTime,
    )>,
}

struct PartitionState {
    manifest: PartitionManifest,
    seq: Option<u64>,
    /// Whether intents left by earlier owners were cleaned up (only after our own first
    /// publication, which proves they can no longer publish).
    cleaned: bool,
    /// Whether we already moved the consumer back to the manifest's offset once.
    sought: bool,
    buffer: Option<Buffer>,
    pending: Option<SealedRoll>,
    last_message: Instant,
    retry_at: Option<Instant>,
    paused: bool,
}

/// The archive task.
pub struct Archive {
    config: ArchiveConfig,
    store: Arc<dyn ObjectStore>,
    decoder: Arc<EventDecoder>,
    consumer: Arc<StreamConsumer<ArchiveContext>>,
    partitions: HashMap<i32, PartitionState>,
    partition_count: i32,
}

impl std::fmt::Debug for Archive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Archive")
            .field("topic", &self.config.topic)
            .finish()
    }
}

fn now() -> EventTime {
    EventTime(Utc::now().timestamp_millis())
}

impl Archive {
    pub fn new(
        config: ArchiveConfig,
        store: Arc<dyn ObjectStore>,
        decoder: Arc<EventDecoder>,
    ) -> Result<Self> {
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", &config.brokers)
            .set("group.id", &config.group_id)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("statistics.interval.ms", "1000");
        for (k, v) in &config.kafka_options {
            client.set(k, v);
        }
        let consumer: StreamConsumer<ArchiveContext> = client
            .create_with_context(ArchiveContext {
                group: config.group_id.clone(),
            })
            .map_err(Error::Consumer)?;
        consumer
            .subscribe(&[config.topic.as_str()])
            .map_err(Error::Consumer)?;
        Ok(Self {
            config,
            store,
            decoder,
            consumer: Arc::new(consumer),
            partitions: HashMap::new(),
            partition_count: 0,
        })
    }

    /// Runs until `cancel` fires, then writes every buffered event before returning.
    pub async fn run(mut self, cancel: CancellationToken) {
        tracing::info!(topic = %self.config.topic, "archive consuming");
        self.refresh_partition_count().await;
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let mut last_metadata = Instant::now();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                msg = self.consumer.recv() => match msg {
                    Ok(m) => {
                        let m = m.detach();
                        self.on_message(&m).await;
                    }
                    Err(err) => {
                        metrics::counter!("tandem_archive_consume_errors_total").increment(1);
                        tracing::warn!(%err, "archive consume error");
                    }
                },
                _ = tick.tick() => {
                    if last_metadata.elapsed() > Duration::from_secs(60) {
                        self.refresh_partition_count().await;
                        last_metadata = Instant::now();
                    }
                    self.on_tick().await;
                }
            }
        }
        // Ordered shutdown: everything consumed is written and published before we return.
        let partitions: Vec<i32> = self.partitions.keys().copied().collect();
        for p in partitions {
            self.roll(p).await;
        }
        tracing::info!("archive stopped");
    }

    async fn refresh_partition_count(&mut self) {
        let consumer = Arc::clone(&self.consumer);
        let topic = self.config.topic.clone();
        let result = tokio::task::spawn_blocking(move || {
            consumer
                .fetch_metadata(Some(&topic), Duration::from_secs(10))
                .map(|md| {
                    md.topics()
                        .iter()
                        .find(|t| t.name() == topic)
                        .map_or(0, |t| t.partitions().len() as i32)
                })
        })
        .await;
        match result {
            Ok(Ok(n)) if n > 0 => self.partition_count = self.partition_count.max(n),
            Ok(Ok(_)) => tracing::warn!(topic = %self.config.topic, "topic has no partitions yet"),
            Ok(Err(err)) => tracing::warn!(%err, "archive could not fetch topic metadata"),
            Err(err) => tracing::warn!(%err, "metadata task failed"),
        }
    }

    fn chain(&self, partition: i32) -> ManifestChain {
        ManifestChain::new(
            Arc::clone(&self.store),
            layout::archive_manifest_dir(&self.config.topic, partition),
        )
    }

    /// Loads the partition's manifest the first time the partition is seen.
    async fn ensure_loaded(&mut self, partition: i32) -> bool {
        if self.partitions.contains_key(&partition) {
            return true;
        }
        match self.chain(partition).latest::<PartitionManifest>().await {
            Ok(found) => {
                let (seq, manifest) = match found {
                    Some((seq, m)) => (Some(seq), m),
                    None => (
                        None,
                        PartitionManifest::empty(
                            &self.config.topic,
                            partition,
                            self.partition_count,
                            now(),
                        ),
                    ),
                };
                self.partitions.insert(
                    partition,
                    PartitionState {
                        manifest,
                        seq,
                        cleaned: false,
                        sought: false,
                        buffer: None,
                        pending: None,
                        last_message: Instant::now(),
                        retry_at: None,
                        paused: false,
                    },
                );
                true
            }
            Err(err) => {
                tracing::warn!(partition, %err, "cannot load archive manifest; will retry");
                false
            }
        }
    }

    async fn on_message(&mut self, m: &rdkafka::message::OwnedMessage) {
        let partition = m.partition();
        let offset = m.offset();
        if !self.ensure_loaded(partition).await {
            // Could not read the manifest: re-read this message later rather than guess.
            self.seek(partition, offset);
            return;
        }
        let roll_bytes = self.config.roll_bytes;
        let Some(state) = self.partitions.get_mut(&partition) else {
            return;
        };
        if offset < state.manifest.next_offset {
            // Already archived: the Kafka commit lagged behind the manifest (a crash between
            // the two), so these offsets are replayed and skipped.
            metrics::counter!("tandem_archive_skipped_total").increment(1);
            return;
        }
        if state.buffer.is_none() && offset > state.manifest.next_offset && !state.sought {
            // Kafka's committed offset is ahead of the manifest (offsets reset by hand, say):
            // resume from the manifest, which is the archive's own record of progress. Offsets
            // may also have gaps (compaction, transaction markers), hence only once.
            state.sought = true;
            let next = state.manifest.next_offset;
            self.seek(partition, next);
            return;
        }
        state.sought = true;
        if let Some(buffer) = &state.buffer
            && offset <= buffer.last_offset
        {
            return;
        }
        state.last_message = Instant::now();
        let woke_up = state.manifest.idle_since.is_some();
        let buffer = state.buffer.get_or_insert_with(|| Buffer {
            first_offset: offset,
            last_offset: offset,
            hours: BTreeMap::new(),
            opened: Instant::now(),
            bytes: 0,
        });
        buffer.last_offset = offset;
        let future_limit = now().saturating_add(self.config.max_future);
        match m.payload().map(|p| self.decoder.decode(p)) {
            Some(Ok(event)) if event.time > future_limit => {
                metrics::counter!("tandem_archive_rejected_total", "reason" => "future")
                    .increment(1);
            }
            Some(Ok(event)) => {
                let hour = layout::hour_start(event.time);
                let decoder = &self.decoder;
                let h = buffer.hours.entry(hour).or_insert_with(|| HourBuffer {
                    builder: EventBatchBuilder::new(decoder, 1024),
                    min_time: event.time,
                    max_time: event.time,
                });
                h.builder.append(&event, partition, offset);
                h.min_time = h.min_time.min(event.time);
                h.max_time = h.max_time.max(event.time);
                buffer.bytes += m.payload().map_or(0, <[u8]>::len);
                metrics::counter!("tandem_archive_events_total").increment(1);
            }
            Some(Err(_)) | None => {
                metrics::counter!("tandem_archive_rejected_total", "reason" => "malformed")
                    .increment(1);
            }
        }
        let full = buffer.bytes >= roll_bytes;
        if woke_up {
            // The partition was published as idle; say it is busy before anything relies on it.
            self.publish_progress(partition, None).await;
        }
        if full {
            self.roll(partition).await;
        }
    }

    async fn on_tick(&mut self) {
        let interval = self.config.roll_interval;
        let due: Vec<i32> = self
            .partitions
            .iter()
            .filter(|(_, s)| {
                s.buffer
                    .as_ref()
                    .is_some_and(|b| b.opened.elapsed() >= interval)
                    || (s.pending.is_some() && s.retry_at.is_none_or(|t| Instant::now() >= t))
            })
            .map(|(p, _)| *p)
            .collect();
        for p in due {
            self.roll(p).await;
        }
        self.mark_idle(interval).await;
    }

    /// Publishes an idle marker for assigned partitions that are fully archived and quiet.
    async fn mark_idle(&mut self, quiet_for: Duration) {
        let assigned: Vec<i32> = match self.consumer.assignment() {
            Ok(list) => list
                .elements()
                .iter()
                .filter(|e| e.topic() == self.config.topic)
                .map(|e| e.partition())
                .collect(),
            Err(_) => return,
        };
        for p in assigned {
            if !self.ensure_loaded(p).await {
                continue;
            }
            let Some(state) = self.partitions.get(&p) else {
                continue;
            };
            if state.buffer.is_some()
                || state.pending.is_some()
                || state.manifest.idle_since.is_some()
                || state.last_message.elapsed() < quiet_for
            {
                continue;
            }
            let next_offset = state.manifest.next_offset;
            let consumer = Arc::clone(&self.consumer);
            let topic = self.config.topic.clone();
            let watermarks = tokio::task::spawn_blocking(move || {
                consumer.fetch_watermarks(&topic, p, Duration::from_secs(5))
            })
            .await;
            let Ok(Ok((_, high))) = watermarks else {
                continue;
            };
            // Everything the partition holds is archived: nothing can hold completeness back
            // until a new event arrives (which clears the marker before it is buffered).
            if high <= next_offset {
                self.publish_progress(p, Some(now())).await;
            }
        }
    }

    /// Publishes a manifest that only changes the idle marker.
    async fn publish_progress(&mut self, partition: i32, idle_since: Option<EventTime>) {
        let chain = self.chain(partition);
        let count = self.partition_count;
        let Some(state) = self.partitions.get_mut(&partition) else {
            return;
        };
        let mut next = state.manifest.clone();
        next.idle_since = idle_since;
        next.partition_count = next.partition_count.max(count);
        next.published_at = now();
        let seq = state.seq.map_or(0, |s| s + 1);
        match chain.publish(seq, &next).await {
            Ok(()) => {
                state.manifest = next;
                state.seq = Some(seq);
                chain.prune(seq.saturating_sub(1)).await;
            }
            Err(err) => {
                tracing::warn!(partition, %err, "could not publish archive progress");
                self.fenced(partition).await;
            }
        }
    }

    fn seek(&self, partition: i32, offset: i64) {
        if let Err(err) = self.consumer.seek(
            &self.config.topic,
            partition,
            Offset::Offset(offset),
            Duration::from_secs(5),
        ) {
            tracing::debug!(partition, offset, %err, "seek failed (partition probably revoked)");
        }
    }

    /// Another writer published first: reload and continue from its offset.
    async fn fenced(&mut self, partition: i32) {
        metrics::counter!("tandem_archive_fenced_total").increment(1);
        self.partitions.remove(&partition);
        if self.ensure_loaded(partition).await
            && let Some(state) = self.partitions.get(&partition)
        {
            self.seek(partition, state.manifest.next_offset);
        }
    }

    /// Writes a partition's buffer and publishes it.
    async fn roll(&mut self, partition: i32) {
        let Some(state) = self.partitions.get_mut(&partition) else {
            return;
        };
        if state.pending.is_none() {
            let Some(buffer) = state.buffer.take() else {
                return;
            };
            state.pending = Some(seal(buffer));
        }
        let Some(roll) = state.pending.take() else {
            return;
        };
        let started = Instant::now();
        match self.publish_roll(partition, &roll).await {
            Ok(()) => {
                metrics::histogram!("tandem_archive_roll_seconds")
                    .record(started.elapsed().as_secs_f64());
                if let Some(state) = self.partitions.get_mut(&partition) {
                    state.retry_at = None;
                    if state.paused {
                        state.paused = false;
                        self.resume(partition);
                    }
                }
                self.commit(partition, roll.last_offset + 1);
            }
            Err(Error::Manifest(manifest::Error::Conflict { .. })) => {
                tracing::warn!(partition, "archive fenced by another writer; reloading");
                self.fenced(partition).await;
            }
            Err(err) => {
                metrics::counter!("tandem_archive_roll_errors_total").increment(1);
                tracing::error!(partition, %err, "archive roll failed; will retry");
                let pause = match self.partitions.get_mut(&partition) {
                    Some(state) => {
                        state.pending = Some(roll);
                        state.retry_at = Some(Instant::now() + Duration::from_secs(2));
                        // Bound memory: stop reading this partition until the roll succeeds.
                        !std::mem::replace(&mut state.paused, true)
                    }
                    None => false,
                };
                if pause {
                    self.pause(partition);
                }
            }
        }
    }

    async fn publish_roll(&mut self, partition: i32, roll: &SealedRoll) -> Result<()> {
        let topic = self.config.topic.clone();
        // 1. The intent names the files before they exist, so a crash leaves a record of them.
        let intent_path =
            layout::archive_intent(&topic, partition, roll.first_offset, roll.last_offset);
        let intent = Intent {
            files: roll
                .hours
                .iter()
                .map(|(hour, ..)| {
                    layout::archive_file(
                        &topic,
                        *hour,
                        partition,
                        roll.first_offset,
                        roll.last_offset,
                    )
                })
                .collect(),
        };
        self.put_json(&intent_path, &intent).await?;
        crash_point("archive.before_files");
        // 2. The files.
        let mut files = Vec::with_capacity(roll.hours.len());
        for (hour, batch, min_time, max_time) in &roll.hours {
            let path = layout::archive_file(
                &topic,
                *hour,
                partition,
                roll.first_offset,
                roll.last_offset,
            );
            let bytes =
                file::encode(batch).map_err(|source| Error::Encode { partition, source })?;
            let size = bytes.len() as u64;
            self.store
                .put(&Path::from(path.as_str()), PutPayload::from(bytes))
                .await
                .map_err(|source| Error::Write {
                    path: path.clone(),
                    source,
                })?;
            files.push(ArchivedFile {
                path,
                hour: *hour,
                first_offset: roll.first_offset,
                last_offset: roll.last_offset,
                rows: batch.num_rows() as u64,
                bytes: size,
                min_time: *min_time,
                max_time: *max_time,
            });
        }
        crash_point("archive.after_files");
        // 3. The manifest: the point of publication.
        let chain = self.chain(partition);
        let count = self.partition_count;
        let Some(state) = self.partitions.get_mut(&partition) else {
            return Ok(());
        };
        let mut next = state.manifest.clone();
        let rows: u64 = files.iter().map(|f| f.rows).sum();
        let bytes: u64 = files.iter().map(|f| f.bytes).sum();
        next.max_event_time = files
            .iter()
            .map(|f| f.max_time)
            .chain(next.max_event_time)
            .max();
        next.files.extend(files);
        next.next_offset = roll.last_offset + 1;
        next.idle_since = None;
        next.partition_count = next.partition_count.max(count);
        next.published_at = now();
        let seq = state.seq.map_or(0, |s| s + 1);
        chain.publish(seq, &next).await?;
        state.manifest = next;
        state.seq = Some(seq);
        metrics::counter!("tandem_archive_rows_published_total").increment(rows);
        metrics::counter!("tandem_archive_bytes_published_total").increment(bytes);
        crash_point("archive.after_manifest");
        // 4. Housekeeping: the intent is fulfilled; older manifests and garbage go.
        if let Err(err) = self.store.delete(&Path::from(intent_path.as_str())).await {
            tracing::debug!(%err, "could not delete a fulfilled intent");
        }
        // Keep the previous manifest for readers that listed just before this publication.
        chain.prune(seq.saturating_sub(1)).await;
        self.collect_garbage(partition).await;
        Ok(())
    }

    async fn put_json<T: serde::Serialize>(&self, path: &str, value: &T) -> Result<()> {
        let bytes = serde_json::to_vec(value).map_err(|e| Error::Write {
            path: path.to_owned(),
            source: object_store::Error::Generic {
                store: "archive",
                source: Box::new(e),
            },
        })?;
        self.store
            .put(&Path::from(path), PutPayload::from(bytes))
            .await
            .map_err(|source| Error::Write {
                path: path.to_owned(),
                source,
            })?;
        Ok(())
    }

    /// Deletes files named by intents of interrupted rolls that no manifest lists. Runs once per
    /// partition, after our first publication: earlier owners are fenced by then, so none of
    /// their intents can still be published.
    async fn collect_garbage(&mut self, partition: i32) {
        let Some(state) = self.partitions.get_mut(&partition) else {
            return;
        };
        if state.cleaned {
            return;
        }
        state.cleaned = true;
        let listed: std::collections::HashSet<String> = state
            .manifest
            .files
            .iter()
            .map(|f| f.path.clone())
            .collect();
        let dir = Path::from(layout::archive_intent_dir(&self.config.topic, partition));
        let intents: Vec<_> =
            match futures::TryStreamExt::try_collect(self.store.list(Some(&dir))).await {
                Ok(v) => v,
                Err(err) => {
                    tracing::warn!(partition, %err, "cannot list roll intents");
                    return;
                }
            };
        for meta in intents {
            let Ok(got) = self.store.get(&meta.location).await else {
                continue;
            };
            let Ok(bytes) = got.bytes().await else {
                continue;
            };
            if let Ok(intent) = serde_json::from_slice::<Intent>(&bytes) {
                for file in intent.files.iter().filter(|f| !listed.contains(*f)) {
                    match self.store.delete(&Path::from(file.as_str())).await {
                        Ok(()) => {
                            metrics::counter!("tandem_archive_garbage_files_deleted_total")
                                .increment(1);
                            tracing::info!(file, "deleted an unpublished archive file");
                        }
                        Err(object_store::Error::NotFound { .. }) => {}
                        Err(err) => tracing::warn!(file, %err, "cannot delete garbage"),
                    }
                }
            }
            let _ = self.store.delete(&meta.location).await;
        }
    }

    fn commit(&self, partition: i32, next_offset: i64) {
        let mut tpl = TopicPartitionList::new();
        if tpl
            .add_partition_offset(&self.config.topic, partition, Offset::Offset(next_offset))
            .is_ok()
            && let Err(err) = self.consumer.commit(&tpl, CommitMode::Async)
        {
            // Progress information only: the manifest already holds the offset.
            tracing::debug!(partition, %err, "offset commit failed");
        }
    }

    fn partition_list(&self, partition: i32) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.config.topic, partition);
        tpl
    }

    fn pause(&self, partition: i32) {
        metrics::counter!("tandem_archive_paused_total").increment(1);
        if let Err(err) = self.consumer.pause(&self.partition_list(partition)) {
            tracing::warn!(partition, %err, "could not pause partition");
        }
    }

    fn resume(&self, partition: i32) {
        if let Err(err) = self.consumer.resume(&self.partition_list(partition)) {
            tracing::warn!(partition, %err, "could not resume partition");
        }
    }
}

/// The files a roll is about to write.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Intent {
    files: Vec<String>,
}

/// A test hook: `TANDEM_CRASH_AT=<point>` aborts the process at that point, so that tests can
/// kill the archive in the middle of a roll deterministically.
fn crash_point(point: &str) {
    if std::env::var("TANDEM_CRASH_AT").is_ok_and(|p| p == point) {
        eprintln!("TANDEM_CRASH_AT={point}: aborting");
        std::process::abort();
    }
}

fn seal(mut buffer: Buffer) -> SealedRoll {
    SealedRoll {
        first_offset: buffer.first_offset,
        last_offset: buffer.last_offset,
        hours: std::mem::take(&mut buffer.hours)
            .into_iter()
            .map(|(hour, mut h)| (hour, h.builder.finish(), h.min_time, h.max_time))
            .collect(),
    }
}
