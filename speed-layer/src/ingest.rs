//! The speed layer's Kafka consumer: poll, decode, window, repeat.
//!
//! Runs on a dedicated blocking thread (librdkafka's poll is blocking and the loop is CPU-bound).
//! Each iteration drains what the consumer has buffered into one micro-batch (up to
//! `max_batch` messages, never waiting once the first message has arrived), so an event becomes
//! queryable as soon as it is consumed and busy periods amortize per-batch costs.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::statistics::Statistics;
use tandem_shared::event::{EventBatchBuilder, EventDecoder};
use tandem_shared::time::{EventTime, Span};
use tokio_util::sync::CancellationToken;

use crate::SpeedLayer;
use crate::clock::Clock;
use crate::dead_letter::{Origin, SideTopics};
use crate::watermark::PartitionProgress;

/// Errors starting the consumer. Configuration or transient broker errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("creating the speed-layer consumer: {0}")]
    Consumer(#[source] KafkaError),
    #[error("subscribing to topic `{topic}`: {source}")]
    Subscribe { topic: String, source: KafkaError },
    #[error(transparent)]
    SideTopics(#[from] crate::dead_letter::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

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
    /// Extra librdkafka consumer properties.
    pub kafka_options: BTreeMap<String, String>,
}

/// A change of the consumer's partition assignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AssignmentChange {
    Assigned(i32),
    Revoked(i32),
}

/// Publishes per-partition consumer lag and tracks the assignment and which partitions are
/// fully consumed. Callbacks run inside `poll`, on the consume thread.
#[derive(Debug)]
pub struct SpeedContext {
    group: String,
    changes: Mutex<Vec<AssignmentChange>>,
    caught_up: Mutex<HashMap<i32, bool>>,
}

impl ClientContext for SpeedContext {
    fn stats(&self, statistics: Statistics) {
        for topic in statistics.topics.values() {
            let mut caught_up = self.caught_up.lock().unwrap_or_else(|e| e.into_inner());
            for (partition, stats) in &topic.partitions {
                if *partition >= 0 && stats.hi_offset >= 0 {
                    let done = if stats.app_offset >= 0 {
                        stats.app_offset >= stats.hi_offset
                    } else {
                        stats.hi_offset == stats.lo_offset
                    };
                    caught_up.insert(*partition, done);
                }
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

impl ConsumerContext for SpeedContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            let mut changes = self.changes.lock().unwrap_or_else(|e| e.into_inner());
            changes.extend(
                list.elements()
                    .iter()
                    .map(|e| AssignmentChange::Revoked(e.partition())),
            );
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            let mut changes = self.changes.lock().unwrap_or_else(|e| e.into_inner());
            changes.extend(
                list.elements()
                    .iter()
                    .map(|e| AssignmentChange::Assigned(e.partition())),
            );
        }
    }
}

pub(crate) struct Ingest {
    speed: SpeedLayer,
    config: SpeedConfig,
    decoder: Arc<EventDecoder>,
    consumer: BaseConsumer<SpeedContext>,
    side: SideTopics,
    progress: PartitionProgress,
    clock: Arc<dyn Clock>,
}

impl Ingest {
    pub(crate) fn new(
        speed: SpeedLayer,
        config: SpeedConfig,
        decoder: Arc<EventDecoder>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self> {
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", &config.brokers)
            .set("group.id", &config.group_id)
            // Offsets committed to Kafka would only be progress information; the speed layer
            // rebuilds its state from the retained topic, so it never commits.
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("fetch.wait.max.ms", "20")
            .set("statistics.interval.ms", "1000");
        for (k, v) in &config.kafka_options {
            client.set(k, v);
        }
        let consumer: BaseConsumer<SpeedContext> = client
            .create_with_context(SpeedContext {
                group: config.group_id.clone(),
                changes: Default::default(),
                caught_up: Default::default(),
            })
            .map_err(Error::Consumer)?;
        consumer
            .subscribe(&[config.topic.as_str()])
            .map_err(|source| Error::Subscribe {
                topic: config.topic.clone(),
                source,
            })?;
        let side = SideTopics::new(
            &config.brokers,
            config.dead_letter_topic.clone(),
            config.late_topic.clone(),
        )?;
        Ok(Self {
            speed,
            config,
            decoder,
            consumer,
            side,
            progress: PartitionProgress::default(),
            clock,
        })
    }

    /// The consume loop. Returns when `cancel` fires.
    pub(crate) fn run(mut self, cancel: CancellationToken) {
        tracing::info!(topic = %self.config.topic, group = %self.config.group_id, "speed layer consuming");
        let consumer = &self.consumer;
        let mut messages: Vec<BorrowedMessage<'_>> = Vec::with_capacity(self.config.max_batch);
        while !cancel.is_cancelled() {
            match consumer.poll(Duration::from_millis(100)) {
                None => {
                    track_partitions(consumer.context(), &mut self.progress, self.clock.now());
                    continue;
                }
                Some(Err(err)) => {
                    log_consume_error(&err);
                    continue;
                }
                Some(Ok(m)) => messages.push(m),
            }
            while messages.len() < self.config.max_batch {
                match consumer.poll(Duration::ZERO) {
                    Some(Ok(m)) => messages.push(m),
                    Some(Err(err)) => log_consume_error(&err),
                    None => break,
                }
            }
            track_partitions(consumer.context(), &mut self.progress, self.clock.now());
            process(
                &self.speed,
                &self.decoder,
                &self.side,
                &mut self.progress,
                Watermarking {
                    now: self.clock.now(),
                    idle_timeout: self.config.idle_timeout,
                },
                &self.config.topic,
                &messages,
            );
            messages.clear();
        }
        self.side.flush(Duration::from_secs(10));
        tracing::info!("speed layer stopped");
    }
}

/// Applies assignment changes and caught-up flags reported by the consumer callbacks.
fn track_partitions(context: &SpeedContext, progress: &mut PartitionProgress, now: EventTime) {
    let changes = std::mem::take(&mut *context.changes.lock().unwrap_or_else(|e| e.into_inner()));
    for change in changes {
        match change {
            AssignmentChange::Assigned(p) => progress.assign(p, now),
            AssignmentChange::Revoked(p) => progress.revoke(p),
        }
    }
    let caught_up = context.caught_up.lock().unwrap_or_else(|e| e.into_inner());
    for (p, done) in caught_up.iter() {
        progress.set_caught_up(*p, *done);
    }
}

/// Inputs of the watermark computation for one micro-batch.
#[derive(Debug, Clone, Copy)]
struct Watermarking {
    now: EventTime,
    idle_timeout: Span,
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

/// Decodes one micro-batch, sidelines malformed and late events, and applies the rest to every
/// view.
fn process(
    speed: &SpeedLayer,
    decoder: &EventDecoder,
    side: &SideTopics,
    progress: &mut PartitionProgress,
    watermarking: Watermarking,
    topic: &str,
    messages: &[BorrowedMessage<'_>],
) {
    let started = Instant::now();
    let origin = |m| origin(topic, m);
    let mut builder = EventBatchBuilder::new(decoder, messages.len());
    // Message index of each decoded row.
    let mut row_message = Vec::with_capacity(messages.len());
    let mut times = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let Some(payload) = m.payload() else {
            side.dead_letter(None, origin(m), "empty", "message has no payload");
            continue;
        };
        match decoder.decode(payload) {
            Ok(event) => {
                builder.append(&event, m.partition(), m.offset());
                row_message.push(i);
                times.push((m.partition(), event.time));
            }
            Err(err) => side.dead_letter(Some(payload), origin(m), err.kind(), &err.to_string()),
        }
    }
    if builder.is_empty() {
        return;
    }
    let batch = builder.finish();
    let watermark = progress.combined(watermarking.now, watermarking.idle_timeout);
    for view in speed.views() {
        let outcome = view.apply(&batch, watermark);
        for (row, reason) in outcome.rejected {
            let m = &messages[row_message[row]];
            side.dead_letter(
                m.payload(),
                origin(m),
                "expression",
                &format!("view `{}`: {reason}", view.name()),
            );
        }
        for row in outcome.late {
            let m = &messages[row_message[row]];
            let reason = match watermark {
                Some(w) => format!(
                    "every window of event time {} has closed (progress {w}) or is published by the batch layer",
                    times[row].1
                ),
                None => "every window is published by the batch layer".to_owned(),
            };
            side.late(
                m.payload().unwrap_or_default(),
                origin(m),
                view.name(),
                &reason,
            );
        }
    }
    for (partition, t) in times {
        progress.observe(partition, t, watermarking.now);
    }
    metrics::counter!("tandem_speed_events_total").increment(batch.num_rows() as u64);
    metrics::histogram!("tandem_speed_batch_seconds").record(started.elapsed().as_secs_f64());
    if let Some(combined) = progress.combined(watermarking.now, watermarking.idle_timeout) {
        metrics::gauge!("tandem_speed_event_time_progress_ms").set(combined.millis() as f64);
        for view in speed.views() {
            let wm: EventTime = combined.saturating_sub(view.allowed_lateness());
            metrics::gauge!("tandem_speed_watermark_ms", "view" => view.name().to_owned())
                .set(wm.millis() as f64);
        }
    }
}
