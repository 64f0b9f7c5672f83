//! The archive: every valid event on the topic, exactly once, as Parquet in object storage.
//!
//! ```text
//!  Kafka (consumer group `archive`) ──► consume: admit by the partition manifest's next_offset
//!        │  (offsets below it are archived already), buffer per partition and event hour
//!        ▼  roll: every `roll_interval`, at `roll_bytes`, and on shutdown
//!  publication: 1. intent  2. archive/<topic>/date=…/hour=…/p<partition>-o<first>-<last>.parquet
//!               3. manifest <seq+1> of the partition (create-if-absent: the point of publication)
//!               4. the Delta table's commit of the files (archive/<topic>/_delta_log, ADR 0009)
//!               5. commit the Kafka offset (progress information only)
//!  garbage: files of interrupted rolls, found through their intents
//! ```
//!
//! Exactly once: an event is archived when a published manifest lists a file holding it, and a
//! manifest also carries the offset to resume from, so files and offsets are published together.
//! A crash before step 3 leaves unlisted files (garbage, overwritten by a replay of the same range);
//! a crash between 3 and 4 replays offsets the manifest already covers, and those are skipped.
//! A writer that loses a create-if-absent race was fenced by a new owner of the partition: it
//! reloads the manifest and seeks back to its offset.
//!
//! Malformed events are skipped here (the speed layer routes them to the dead-letter topic) but
//! their offsets are still covered by the manifest, so they are never re-read.
//!
//! - `consume`: the consumer side (loading manifests, admitting and buffering, idle partitions).
//! - `roll`: per-partition state and the pure decisions about it.
//! - `publication`: writing a roll and publishing manifests.
//! - `garbage`: deleting files of interrupted rolls.
//! - `delta`: the archive as a Delta table, committed from the manifests.
//! - [`snapshot`]: what the archive holds, read back by the batch layer.
//! - [`import`]: archiving without Kafka, through the same files and manifests.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::ObjectStore;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use tandem_shared::clock::Clock;
use tandem_shared::event::EventDecoder;
use tandem_shared::time::Span;
use tandem_store::{manifest, object};
use tokio_util::sync::CancellationToken;

mod consume;
mod delta;
pub(crate) mod file;
mod garbage;
pub mod import;
mod publication;
mod roll;
pub(crate) mod snapshot;

pub use consume::ArchiveContext;
pub use snapshot::{
    ArchiveSnapshot, ArchivedFile, FileList, OffsetGap, PartitionManifest, SEAL_AT, between,
};

/// Errors of the archive.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Configuration or transient: the consumer could not be created or subscribed.
    #[error("archive consumer: {0}")]
    Consumer(#[source] KafkaError),
    /// Transient: the object store failed; the roll is retried.
    #[error("archive: {0}")]
    Write(#[from] object::Error),
    /// Internal: a roll intent does not serialize.
    #[error("encoding roll intent `{path}`: {source}")]
    Intent {
        path: String,
        source: serde_json::Error,
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
    /// Files a partition manifest lists before it seals them into a file list
    /// ([`SEAL_AT`] by default).
    pub seal_files: usize,
    /// Events more than this ahead of the wall clock are not archived (the speed layer
    /// dead-letters them).
    pub max_future: Span,
    pub kafka_options: BTreeMap<String, String>,
    /// Where writer schemas come from, when payloads name them (Avro, Protobuf).
    pub registry: Option<Arc<tandem_store::registry::Registry>>,
    /// Whether the archive keeps up with the broker, for readiness (shared across restarts).
    pub progress: ArchiveProgress,
}

/// Whether the archive is receiving what the broker holds: `Err(why)` while a partition's
/// consumer has received nothing for a while although the broker holds messages it has not
/// archived (the master dataset must never stall silently). Cheap to clone; clones share it.
#[derive(Debug, Clone, Default)]
pub struct ArchiveProgress(Arc<std::sync::Mutex<Option<String>>>);

impl ArchiveProgress {
    pub fn condition(&self) -> std::result::Result<(), String> {
        match &*self.0.lock().unwrap_or_else(|e| e.into_inner()) {
            None => Ok(()),
            Some(why) => Err(why.clone()),
        }
    }

    fn set(&self, trouble: Option<String>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = trouble;
    }
}

/// How often the archive compares what it received with what the broker holds.
const PROGRESS_CHECK: Duration = Duration::from_secs(10);

/// The archive task.
pub struct Archive {
    config: ArchiveConfig,
    store: Arc<dyn ObjectStore>,
    decoder: Arc<EventDecoder>,
    consumer: Arc<StreamConsumer<ArchiveContext>>,
    /// Asks the brokers for metadata and partitions' log ends (idle partitions, stall checks).
    /// A client of its own: watermark queries on the consumer's own handle, several a second
    /// while partitions were quiet, left the consumer's fetched messages undelivered (librdkafka
    /// had fetched to the log end and queued them; the application offset never moved) until
    /// the archive restarted.
    broker_client: Arc<rdkafka::consumer::BaseConsumer>,
    partitions: HashMap<i32, roll::PartitionState>,
    partition_count: i32,
    clock: Arc<dyn Clock>,
    /// The archive as a Delta table (`None`: its schema has a type Delta cannot name).
    delta: Option<delta::ArchiveTable>,
}

impl std::fmt::Debug for Archive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Archive")
            .field("topic", &self.config.topic)
            .finish()
    }
}

impl Archive {
    /// Creates the consumer and subscribes; nothing is consumed until [`Archive::run`].
    pub fn new(
        config: ArchiveConfig,
        store: Arc<dyn ObjectStore>,
        decoder: Arc<EventDecoder>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self> {
        let consumer: StreamConsumer<ArchiveContext> = tandem_store::kafka::consumer_config(
            &config.brokers,
            &config.group_id,
            // A fetch waits at most 100 ms for data (librdkafka's default is 500): against
            // tansu 0.6.0, fetches waiting 500 ms stopped being answered for good in about one
            // run of three, and the archive received nothing more.
            &[("fetch.wait.max.ms", "100")],
            &config.kafka_options,
        )
        .create_with_context(ArchiveContext {
            group: config.group_id.clone(),
        })
        .map_err(Error::Consumer)?;
        consumer
            .subscribe(&[config.topic.as_str()])
            .map_err(Error::Consumer)?;
        // Never subscribes, joins no group and commits nothing.
        let broker_client: rdkafka::consumer::BaseConsumer = tandem_store::kafka::client_config(
            &config.brokers,
            &[("group.id", &format!("{}-watermarks", config.group_id))],
            &config.kafka_options,
        )
        .create()
        .map_err(Error::Consumer)?;
        let delta = match delta::ArchiveTable::new(
            Arc::clone(&store),
            &config.topic,
            decoder.schema(),
            clock.now(),
        ) {
            Ok(table) => Some(table),
            Err(err) => {
                tracing::warn!(topic = %config.topic, %err, "the archive is not published as a Delta table");
                None
            }
        };
        Ok(Self {
            delta,
            config,
            store,
            decoder,
            consumer: Arc::new(consumer),
            broker_client: Arc::new(broker_client),
            partitions: HashMap::new(),
            partition_count: 0,
            clock,
        })
    }

    /// Runs until `cancel` fires, then writes every buffered event before returning.
    pub async fn run(mut self, cancel: CancellationToken) {
        tracing::info!(topic = %self.config.topic, "archive consuming");
        self.refresh_partition_count().await;
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_metadata = Instant::now();
        let mut last_progress_check = Instant::now();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                msg = self.consumer.recv() => match msg {
                    Ok(m) => {
                        let m = m.detach();
                        self.on_message(&m, &cancel).await;
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
                    if last_progress_check.elapsed() >= PROGRESS_CHECK {
                        self.check_progress().await;
                        last_progress_check = Instant::now();
                    }
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
}
