//! The speed layer's Kafka consumer: poll, decode, window, checkpoint, repeat.
//!
//! Runs on a dedicated blocking thread (librdkafka's poll is blocking and the loop is CPU-bound).
//! Each iteration drains what the consumer has buffered into one micro-batch (up to `max_batch`
//! messages, never waiting once the first message has arrived), so an event becomes queryable as
//! soon as it is consumed, and busy periods amortize per-batch costs.
//!
//! Rebalances are handled in the consumer's rebalance callback, which runs inside `poll` on this
//! thread between micro-batches: a revoked partition is checkpointed (and the callback waits for
//! the upload) before it is given up; an assigned partition is restored from its newest
//! checkpoint and assigned at the checkpoint's offset.
//!
//! ```text
//!  mod (the poll loop, backpressure, checkpoints by pace) ─► routing::process (one micro-batch)
//!  assignment (consumer callbacks: rebalances, epochs, caught-up) ─► track_partitions
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::ObjectStore;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use tandem_shared::event::EventDecoder;
use tandem_shared::time::{EventTime, Span};
use tandem_store::members::Membership;
use tandem_store::registry::Registry;
use tokio_util::sync::CancellationToken;

mod assignment;
mod routing;

use assignment::{SpeedContext, track_partitions};
use routing::{Schemas, process};

use crate::SpeedLayer;
use crate::checkpoint::Checkpointer;
use crate::dead_letter::{SideTopics, Unsettled};
use crate::pacing::CheckpointPacer;
use crate::watermark::PartitionProgress;
use tandem_shared::clock::Clock;

/// Errors starting the consumer. Configuration or transient broker errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("creating the speed-layer consumer: {0}")]
    Consumer(#[source] KafkaError),
    #[error("subscribing to topic `{topic}`: {source}")]
    Subscribe { topic: String, source: KafkaError },
    #[error(transparent)]
    SideTopics(#[from] crate::dead_letter::Error),
    #[error(transparent)]
    Table(#[from] crate::tables::ReaderError),
    /// Transient: side-topic messages were not delivered; the loop stops so that it restarts
    /// from the last checkpoint, before them, and sends them again.
    #[error("stopping to resend from the last checkpoint: {0}")]
    Undelivered(String),
}

/// How long a checkpoint waits for side-topic messages sent before it to be delivered.
const SETTLE: Duration = Duration::from_secs(5);

pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;

/// Where and how often to checkpoint.
#[derive(Debug, Clone)]
pub struct CheckpointSettings {
    pub store: Arc<dyn ObjectStore>,
    pub interval: Duration,
}

/// Speed-layer consumer settings.
#[derive(Debug, Clone)]
pub struct SpeedConfig {
    pub brokers: String,
    pub topic: String,
    pub group_id: String,
    pub dead_letter_topic: String,
    pub late_topic: String,
    /// Most messages folded into one micro-batch.
    pub max_batch: usize,
    /// A partition fully consumed and quiet for this long stops holding the watermark back.
    pub idle_timeout: Span,
    /// Events more than this ahead of the wall clock are dead-lettered.
    pub max_future: Span,
    /// Budget of window state; consumption pauses above it until the batch layer releases
    /// windows.
    pub memory_budget: usize,
    /// `None` disables checkpoints: the speed layer then rebuilds from the topic on start.
    pub checkpoint: Option<CheckpointSettings>,
    /// Extra librdkafka consumer properties.
    pub kafka_options: BTreeMap<String, String>,
    /// Where writer schemas come from, when payloads name them (Avro, Protobuf).
    pub registry: Option<Arc<Registry>>,
    /// Set when this worker shares the group with others: every assignment claims an ownership
    /// epoch, so that serving instances can tell the newest owner of a partition.
    pub membership: Option<(Arc<Membership>, String)>,
    /// The consumer's `group.instance.id` (static membership: a restarted worker with the same
    /// id takes its partitions back without a rebalance, on brokers that support it).
    pub static_member: Option<String>,
}

/// Starts consuming `speed`'s topic on a dedicated blocking thread; the returned task ends
/// after `cancel` fires, final checkpoints are written and side-topic messages are flushed.
///
/// Partition state left by an earlier run (one that failed) is dropped first: each partition
/// is restored from its checkpoint again when it is assigned.
pub fn start(
    speed: &SpeedLayer,
    config: SpeedConfig,
    decoder: Arc<EventDecoder>,
    clock: Arc<dyn Clock>,
    cancel: CancellationToken,
) -> Result<tokio::task::JoinHandle<Result<()>>> {
    // Dimension tables are read from their start on threads of their own; events wait until
    // every one has reached its end (see `Ingest::run`).
    let group_prefix = config
        .group_id
        .strip_suffix("-speed")
        .unwrap_or(&config.group_id)
        .to_owned();
    for table in speed.tables() {
        let reader = crate::tables::TableReader::new(
            Arc::clone(table),
            &config.brokers,
            &group_prefix,
            &config.kafka_options,
            config.registry.clone(),
            config.max_future,
            Arc::clone(&clock),
        )?;
        let cancel = cancel.clone();
        tokio::task::spawn_blocking(move || reader.run(cancel));
    }
    let ingest = Ingest::new(speed.clone(), config, decoder, clock)?;
    speed.partitions_write().clear();
    speed.publish_size();
    Ok(tokio::task::spawn_blocking(move || ingest.run(cancel)))
}

pub(crate) struct Ingest {
    speed: SpeedLayer,
    config: SpeedConfig,
    decoder: Arc<EventDecoder>,
    consumer: BaseConsumer<SpeedContext>,
    side: Arc<SideTopics>,
    progress: PartitionProgress<routing::Source>,
    clock: Arc<dyn Clock>,
    checkpointer: Option<Arc<Checkpointer>>,
    /// The runtime the registry client runs on (this loop is a blocking thread).
    runtime: tokio::runtime::Handle,
}

impl Ingest {
    pub(crate) fn new(
        speed: SpeedLayer,
        config: SpeedConfig,
        decoder: Arc<EventDecoder>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self> {
        let checkpointer = config.checkpoint.as_ref().map(|c| {
            Checkpointer::start(
                Arc::clone(&c.store),
                config.group_id.clone(),
                config.topic.clone(),
                tokio::runtime::Handle::current(),
            )
        });
        let mut consumer_config = tandem_store::kafka::consumer_config(
            &config.brokers,
            &config.group_id,
            &[
                ("partition.assignment.strategy", "range,roundrobin"),
                // Freshness: a fetch returns within 10 ms even when little has arrived.
                ("fetch.wait.max.ms", "10"),
            ],
            &config.kafka_options,
        );
        if let Some(id) = &config.static_member {
            consumer_config.set("group.instance.id", id);
        }
        let side = Arc::new(SideTopics::new(
            &config.brokers,
            config.dead_letter_topic.clone(),
            config.late_topic.clone(),
            &config.kafka_options,
        )?);
        // The events' topic first, then joined streams' second topics (range assignment gives
        // a member the same partition numbers of each: they must have as many partitions).
        let topics: Vec<String> = std::iter::once(config.topic.clone())
            .chain(speed.stream_topics().iter().cloned())
            .collect();
        let consumer: BaseConsumer<SpeedContext> = consumer_config
            .create_with_context(SpeedContext::new(
                config.group_id.clone(),
                topics.clone(),
                speed.clone(),
                checkpointer.clone(),
                config.membership.clone(),
                Arc::clone(&side),
            ))
            .map_err(Error::Consumer)?;
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&names)
            .map_err(|source| Error::Subscribe {
                topic: names.join(", "),
                source,
            })?;
        Ok(Self {
            speed,
            config,
            decoder,
            consumer,
            side,
            progress: PartitionProgress::default(),
            clock,
            checkpointer,
            runtime: tokio::runtime::Handle::current(),
        })
    }

    /// The consume loop. Returns when `cancel` fires, or with an error when side-topic messages
    /// could not be delivered (see [`crate::dead_letter`]).
    pub(crate) fn run(mut self, cancel: CancellationToken) -> Result<()> {
        tracing::info!(topic = %self.config.topic, group = %self.config.group_id, "speed layer consuming");
        let consumer = &self.consumer;
        let mut messages: Vec<BorrowedMessage<'_>> = Vec::with_capacity(self.config.max_batch);
        let mut pacer = self
            .config
            .checkpoint
            .as_ref()
            .map(|c| CheckpointPacer::new(c.interval, Instant::now()));
        let mut paused = false;
        // An event is joined with its tables' rows only once they hold their topics.
        let waiting = Instant::now();
        for table in self.speed.tables() {
            // Woken when the reader reaches the end; the timeout only looks at `cancel`.
            while !table.wait_ready(Duration::from_millis(200)) {
                if cancel.is_cancelled() {
                    return Ok(());
                }
            }
        }
        if !self.speed.tables().is_empty() {
            tracing::info!(
                waited_ms = waiting.elapsed().as_millis() as u64,
                "dimension tables read: consuming events"
            );
        }
        while !cancel.is_cancelled() {
            match consumer.poll(Duration::from_millis(100)) {
                None => {}
                Some(Err(err)) => log_consume_error(&err),
                Some(Ok(m)) => messages.push(m),
            }
            while !messages.is_empty() && messages.len() < self.config.max_batch {
                match consumer.poll(Duration::ZERO) {
                    Some(Ok(m)) => messages.push(m),
                    Some(Err(err)) => log_consume_error(&err),
                    None => break,
                }
            }
            track_partitions(consumer.context(), &mut self.progress, self.clock.now());
            if !messages.is_empty() {
                let schemas = Schemas {
                    decoder: &self.decoder,
                    registry: self.config.registry.as_deref(),
                    runtime: &self.runtime,
                    cancel: &cancel,
                };
                process(
                    &self.speed,
                    &schemas,
                    &self.side,
                    &mut self.progress,
                    Watermarking {
                        now: self.clock.now(),
                        idle_timeout: self.config.idle_timeout,
                        max_future: self.config.max_future,
                    },
                    &self.config.topic,
                    &messages,
                );
                messages.clear();
            } else {
                // Quiet: partitions turning idle move progress (a `left` join's rows wait
                // for it).
                routing::publish_progress(
                    &self.speed,
                    &self.progress,
                    Watermarking {
                        now: self.clock.now(),
                        idle_timeout: self.config.idle_timeout,
                        max_future: self.config.max_future,
                    },
                );
            }
            self.side.serve();
            if let (Some(checkpointer), Some(pacer)) = (&self.checkpointer, &mut pacer)
                && let Some(partition) =
                    pacer.next(Instant::now(), || self.speed.assigned_partitions())
            {
                // A checkpoint commits past the side-topic messages sent so far: only once
                // they are delivered.
                match self.side.settle(SETTLE) {
                    Ok(()) => {
                        if let Some(snapshot) = self.speed.snapshot(partition, false)
                            && let Err(err) = checkpointer.submit(&snapshot, false)
                        {
                            tracing::warn!(partition, %err, "checkpoint not queued");
                        }
                    }
                    Err(pending @ Unsettled::Pending(_)) => {
                        metrics::counter!("tandem_speed_checkpoints_deferred_total").increment(1);
                        tracing::warn!(partition, %pending, "checkpoint deferred to the next round");
                    }
                    Err(failed @ Unsettled::Failed(_)) => {
                        tracing::error!(%failed, "side-topic deliveries failed: restarting from the last checkpoint");
                        return Err(Error::Undelivered(failed.to_string()));
                    }
                }
            }
            paused = apply_backpressure(consumer, &self.speed, self.config.memory_budget, paused);
        }
        // Shutting down: a final checkpoint makes the restart cheap, once every side-topic
        // message it commits past is delivered.
        let settled = self.side.settle(Duration::from_secs(10));
        if let Err(err) = &settled {
            tracing::warn!(%err, "no final checkpoints: the restart sends them again");
        }
        if let (Some(checkpointer), Ok(())) = (&self.checkpointer, &settled) {
            for p in self.speed.assigned_partitions() {
                if let Some(snapshot) = self.speed.snapshot(p, false)
                    && let Err(err) = checkpointer.submit(&snapshot, true)
                {
                    tracing::warn!(partition = p, %err, "final checkpoint failed");
                }
            }
        }
        tracing::info!("speed layer stopped");
        Ok(())
    }
}

/// Pauses consumption while window state exceeds its budget; resumes below 90% of it.
fn apply_backpressure(
    consumer: &BaseConsumer<SpeedContext>,
    speed: &SpeedLayer,
    budget: usize,
    paused: bool,
) -> bool {
    let bytes = speed.state_bytes();
    let over = bytes > budget;
    let under = bytes < budget / 10 * 9;
    let Ok(assignment) = consumer.assignment() else {
        return paused;
    };
    if !paused && over {
        tracing::warn!(
            bytes,
            budget,
            "speed-layer state is over its memory budget: consumption paused until the batch layer covers more windows"
        );
        metrics::counter!("tandem_speed_pauses_total").increment(1);
        metrics::gauge!("tandem_speed_paused").set(1.0);
        if let Err(err) = consumer.pause(&assignment) {
            tracing::error!(%err, "cannot pause partitions");
        }
        return true;
    }
    if paused && under {
        tracing::info!(
            bytes,
            budget,
            "speed-layer state back under budget: consumption resumed"
        );
        metrics::gauge!("tandem_speed_paused").set(0.0);
        if let Err(err) = consumer.resume(&assignment) {
            tracing::error!(%err, "cannot resume partitions");
        }
        return false;
    }
    paused
}

/// Inputs of the per-batch decisions that depend on time.
#[derive(Debug, Clone, Copy)]
struct Watermarking {
    now: EventTime,
    idle_timeout: Span,
    max_future: Span,
}

fn log_consume_error(err: &KafkaError) {
    metrics::counter!("tandem_speed_consume_errors_total").increment(1);
    tracing::warn!(%err, "speed-layer consume error");
}
