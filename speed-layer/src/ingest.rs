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

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use object_store::ObjectStore;
use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use tandem_shared::event::{Admission, EventDecoder, Read, Slot};
use tandem_shared::time::{EventTime, Span};
use tandem_store::members::Membership;
use tandem_store::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::SpeedLayer;
use crate::checkpoint::Checkpointer;
use crate::dead_letter::{Origin, SideTopics, Unsettled};
use crate::micro_batch::MicroBatch;
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

/// A change of the consumer's partition assignment, for the watermark tracker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AssignmentChange {
    Assigned(i32, Option<EventTime>),
    Revoked(i32),
}

/// Consumer callbacks: lag and caught-up tracking from statistics, and rebalances with
/// checkpoint hand-over. Callbacks run inside `poll`, on the consume thread.
pub(crate) struct SpeedContext {
    group: String,
    speed: SpeedLayer,
    checkpointer: Option<Arc<Checkpointer>>,
    membership: Option<(Arc<Membership>, String)>,
    runtime: tokio::runtime::Handle,
    changes: Mutex<Vec<AssignmentChange>>,
    caught_up: Mutex<HashMap<i32, bool>>,
    /// The side-topic producer (shared with the loop), settled before a revoked partition's
    /// final checkpoint.
    side: Arc<SideTopics>,
}

impl std::fmt::Debug for SpeedContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpeedContext")
            .field("group", &self.group)
            .finish()
    }
}

impl ClientContext for SpeedContext {
    fn stats(&self, statistics: Statistics) {
        let positions = tandem_store::kafka::record_lag(&self.group, &statistics);
        let mut caught_up = self.caught_up.lock().unwrap_or_else(|e| e.into_inner());
        for p in positions {
            caught_up.insert(p.partition, p.caught_up);
        }
    }
}

impl SpeedContext {
    fn push(&self, change: AssignmentChange) {
        self.changes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(change);
    }

    /// The ownership epoch of a new assignment: claimed in the store when this worker shares
    /// its group (retried briefly), 0 otherwise.
    fn claim_epoch(&self) -> u64 {
        let Some((membership, id)) = &self.membership else {
            return 0;
        };
        for attempt in 0..5u32 {
            match self.runtime.block_on(membership.claim_epoch(id)) {
                Ok(epoch) => return epoch,
                Err(err) => {
                    tracing::warn!(%err, attempt, "claiming an ownership epoch failed");
                    std::thread::sleep(Duration::from_millis(200 << attempt));
                }
            }
        }
        // Serving instances then prefer any other claimant of these partitions; one that still
        // answers for them is a worker the group dropped, whose state is older.
        tracing::error!("no ownership epoch claimed; announcing epoch 0");
        0
    }

    /// Restores each partition and returns the list with the offsets to start from.
    fn on_assign(&self, tpl: &TopicPartitionList) -> TopicPartitionList {
        let mut out = TopicPartitionList::new();
        let epoch = if tpl.count() > 0 {
            self.claim_epoch()
        } else {
            0
        };
        for elem in tpl.elements() {
            let partition = elem.partition();
            let snapshot = match &self.checkpointer {
                None => None,
                Some(c) => match c.load(partition) {
                    Ok(s) => s,
                    Err(err) => {
                        // Without the checkpoint the partition is rebuilt from the topic:
                        // correct within the topic's retention.
                        tracing::error!(partition, %err, "cannot load checkpoint; rebuilding from the topic");
                        None
                    }
                },
            };
            let offset = self.speed.assign(partition, snapshot, epoch);
            let start = offset.map_or(Offset::Beginning, Offset::Offset);
            tracing::info!(partition, ?start, "partition assigned");
            if let Err(err) = out.add_partition_offset(elem.topic(), partition, start) {
                tracing::error!(partition, %err, "cannot set the start offset");
            }
            self.push(AssignmentChange::Assigned(
                partition,
                self.speed.max_event_time(partition),
            ));
        }
        out
    }

    /// Checkpoints and drops each revoked partition.
    fn on_revoke(&self, tpl: &TopicPartitionList) {
        for elem in tpl.elements() {
            let partition = elem.partition();
            // Without every side-topic message delivered, the next owner starts from the
            // previous checkpoint and sends them again.
            let settled = match self.side.settle(SETTLE) {
                Ok(()) => true,
                Err(err) => {
                    tracing::warn!(partition, %err, "no final checkpoint of the revoked partition");
                    false
                }
            };
            if settled
                && let Some(c) = &self.checkpointer
                && let Some(snapshot) = self.speed.snapshot(partition, false)
                && let Err(err) = c.submit(&snapshot, true)
            {
                // The next owner restores the previous checkpoint and re-reads the rest.
                tracing::error!(partition, %err, "final checkpoint failed");
            }
            self.speed.revoke(partition);
            self.push(AssignmentChange::Revoked(partition));
            tracing::info!(partition, "partition revoked");
        }
    }
}

impl ConsumerContext for SpeedContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let with_offsets = self.on_assign(tpl);
                if let Err(err) = consumer.assign(&with_offsets) {
                    tracing::error!(%err, "assign failed");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.on_revoke(tpl);
                if let Err(err) = consumer.unassign() {
                    tracing::error!(%err, "unassign failed");
                }
            }
            other => {
                tracing::error!(?other, "rebalance error; giving up the assignment");
                self.on_revoke(tpl);
                let _ = consumer.unassign();
            }
        }
    }
}

pub(crate) struct Ingest {
    speed: SpeedLayer,
    config: SpeedConfig,
    decoder: Arc<EventDecoder>,
    consumer: BaseConsumer<SpeedContext>,
    side: Arc<SideTopics>,
    progress: PartitionProgress,
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
        let consumer: BaseConsumer<SpeedContext> = consumer_config
            .create_with_context(SpeedContext {
                group: config.group_id.clone(),
                speed: speed.clone(),
                checkpointer: checkpointer.clone(),
                membership: config.membership.clone(),
                runtime: tokio::runtime::Handle::current(),
                changes: Default::default(),
                caught_up: Default::default(),
                side: Arc::clone(&side),
            })
            .map_err(Error::Consumer)?;
        consumer
            .subscribe(&[config.topic.as_str()])
            .map_err(|source| Error::Subscribe {
                topic: config.topic.clone(),
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

/// Applies assignment changes and caught-up flags reported by the consumer callbacks.
fn track_partitions(context: &SpeedContext, progress: &mut PartitionProgress, now: EventTime) {
    let changes = std::mem::take(&mut *context.changes.lock().unwrap_or_else(|e| e.into_inner()));
    for change in changes {
        match change {
            AssignmentChange::Assigned(p, max) => {
                progress.assign(p, now);
                if let Some(t) = max {
                    progress.observe(p, t, now);
                }
            }
            AssignmentChange::Revoked(p) => progress.revoke(p),
        }
    }
    let caught_up = context.caught_up.lock().unwrap_or_else(|e| e.into_inner());
    for (p, done) in caught_up.iter() {
        progress.set_caught_up(*p, *done);
    }
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

fn origin<'a>(topic: &'a str, m: &'a BorrowedMessage<'_>) -> Origin<'a> {
    Origin {
        topic,
        partition: m.partition(),
        offset: m.offset(),
        key: m.key(),
    }
}

/// The decoder and where it learns writer schemas.
struct Schemas<'a> {
    decoder: &'a EventDecoder,
    registry: Option<&'a Registry>,
    runtime: &'a tokio::runtime::Handle,
    cancel: &'a CancellationToken,
}

impl Schemas<'_> {
    /// Reads a message; a payload naming an unseen writer schema waits for the registry.
    /// `None`: cancelled while waiting.
    /// `spare`: slots of an earlier event to read into.
    fn read<'p>(&self, payload: Option<&'p [u8]>, spare: Vec<Slot<'p>>) -> Option<Read<'p>> {
        match self.decoder.read_into(payload, spare) {
            Read::Unresolved(_) => self.runtime.block_on(tandem_store::registry::read_resolved(
                self.decoder,
                self.registry,
                payload,
                self.cancel,
            )),
            read => Some(read),
        }
    }
}

/// Decodes one micro-batch, sidelines malformed and late events, and applies the rest to every
/// view (one record batch for all partitions, see [`crate::micro_batch`]). Applies nothing when
/// cancelled while waiting for the schema registry: the batch is read again after the restart.
fn process(
    speed: &SpeedLayer,
    schemas: &Schemas<'_>,
    side: &SideTopics,
    progress: &mut PartitionProgress,
    time: Watermarking,
    topic: &str,
    messages: &[BorrowedMessage<'_>],
) {
    let started = Instant::now();
    // A partition polled before its revocation is skipped: the new owner re-reads it from the
    // checkpoint's offset. (Rebalances run inside `poll`, so assignment cannot change while a
    // micro-batch is processed; it is looked up once per partition.)
    let mut micro = MicroBatch::new(schemas.decoder, messages.len());
    let mut spare = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let partition = m.partition();
        let Some(at) = micro.polled(partition, m.offset(), || speed.assigned(partition)) else {
            continue;
        };
        let payload = m.payload();
        let record_time = m.timestamp().to_millis();
        let Some(read) = schemas.read(payload, std::mem::take(&mut spare)) else {
            return;
        };
        match read {
            Read::Event(event) => {
                match Admission::of(event.time, record_time, time.now, time.max_future) {
                    Admission::Future { from, .. } => {
                        side.dead_letter(
                            payload,
                            origin(topic, m),
                            "future",
                            &format!(
                                "event time {} is more than {} ahead of the message's Kafka timestamp ({from})",
                                event.time, time.max_future,
                            ),
                        );
                        continue;
                    }
                    Admission::AheadOfClock => {
                        metrics::counter!("tandem_speed_future_events_total").increment(1)
                    }
                    Admission::Admitted => {}
                }
                micro.push(at, &event, m.offset(), i);
                spare = event.values;
            }
            Read::Skip(skip) => {
                metrics::counter!("tandem_speed_skipped_total", "reason" => skip.kind())
                    .increment(1);
            }
            Read::Malformed(err) => {
                side.dead_letter(payload, origin(topic, m), err.kind(), &err.to_string())
            }
            Read::Unresolved(id) => side.dead_letter(
                payload,
                origin(topic, m),
                "unknown_schema",
                &format!("schema id {id} is still unknown after asking the registry"),
            ),
        }
    }
    let decoded = micro.rows.len() as u64;
    let watermark = progress.combined(time.now, time.idle_timeout);
    let batch = micro.finish();
    let outcomes = speed.apply_micro_batch(batch.as_ref(), &micro.parts, watermark);
    let rows = &micro.rows;
    for (part, outcomes) in micro.parts.iter().zip(outcomes) {
        for (program, outcome) in speed.programs().iter().zip(outcomes) {
            let view = &program.view.name;
            for (row, reason) in outcome.rejected {
                let m = &messages[rows[row].0];
                side.dead_letter(
                    m.payload(),
                    origin(topic, m),
                    "expression",
                    &format!("view `{view}`: {reason}"),
                );
            }
            for row in outcome.late {
                let (message, event_time) = rows[row];
                let m = &messages[message];
                let reason = match watermark {
                    Some(w) => format!(
                        "every window of event time {event_time} has closed (progress {w}, allowed lateness {}) or is published by the batch layer",
                        program.view.allowed_lateness
                    ),
                    None => "every window of the event is published by the batch layer".to_owned(),
                };
                side.late(
                    m.payload().unwrap_or_default(),
                    origin(topic, m),
                    view,
                    &reason,
                );
            }
        }
        if let Some(max_time) = part.max_event_time {
            progress.observe(part.partition, max_time, time.now);
        }
    }
    metrics::counter!("tandem_speed_events_total").increment(decoded);
    metrics::histogram!("tandem_speed_batch_seconds").record(started.elapsed().as_secs_f64());
    if let Some(combined) = progress.combined(time.now, time.idle_timeout) {
        speed.set_progress(combined);
        metrics::gauge!("tandem_speed_event_time_progress_ms").set(combined.millis() as f64);
        for program in speed.programs() {
            let wm = program.view.watermark(combined);
            metrics::gauge!("tandem_speed_watermark_ms", "view" => program.view.name.clone())
                .set(wm.millis() as f64);
        }
    }
    speed.publish_size();
}
