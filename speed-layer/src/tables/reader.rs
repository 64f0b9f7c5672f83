//! Reading a dimension table's topic: every partition from its start, on a thread of its own;
//! the table is ready once the reader has reached the end each partition had when it started,
//! and it follows the topic from then on.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tandem_shared::clock::Clock;
use tandem_shared::event::{Admission, EventBatchBuilder, EventDecoder, FormatError, Read};
use tandem_shared::time::Span;
use tokio_util::sync::CancellationToken;

use super::Dimension;

/// Most rows decoded into one update of the table.
const MAX_ROWS: usize = 10_000;
const METADATA_TIMEOUT: Duration = Duration::from_secs(15);

/// Errors starting a table's reader. Configuration (a missing topic) or transient.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("table `{table}`: {source}")]
    Kafka { table: String, source: KafkaError },
    #[error("table `{table}`: topic `{topic}` does not exist")]
    MissingTopic { table: String, topic: String },
    #[error("table `{table}`: {source}")]
    Format { table: String, source: FormatError },
}

/// A table's reader, ready to run.
pub struct TableReader {
    dimension: Arc<Dimension>,
    decoder: EventDecoder,
    /// Where an Avro table's writer schemas come from, and the runtime its client runs on
    /// (this reader is a blocking thread).
    registry: Option<Arc<tandem_store::registry::Registry>>,
    runtime: tokio::runtime::Handle,
    /// Rows timed more than this past their record are skipped, as the archive skips them.
    max_future: Span,
    clock: Arc<dyn Clock>,
    consumer: BaseConsumer,
    /// Per partition, the offset it ended at when reading started.
    ends: BTreeMap<i32, i64>,
}

impl std::fmt::Debug for TableReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableReader")
            .field("table", &self.dimension.definition().name)
            .field("ends", &self.ends)
            .finish_non_exhaustive()
    }
}

impl TableReader {
    /// Assigns every partition of the table's topic from its start.
    pub fn new(
        dimension: Arc<Dimension>,
        brokers: &str,
        group_prefix: &str,
        options: &BTreeMap<String, String>,
        registry: Option<Arc<tandem_store::registry::Registry>>,
        max_future: Span,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, Error> {
        let definition = Arc::clone(dimension.definition());
        let table = definition.name.clone();
        let kafka = |source| Error::Kafka {
            table: table.clone(),
            source,
        };
        let decoder =
            EventDecoder::with_format(Arc::clone(definition.schema()), &definition.format())
                .map_err(|source| Error::Format {
                    table: table.clone(),
                    source,
                })?;
        // The group is never joined (partitions are assigned, offsets never committed): it
        // only names the client in the broker's logs.
        let consumer: BaseConsumer = tandem_store::kafka::consumer_config(
            brokers,
            &format!("{group_prefix}-table-{}", definition.name),
            &[("fetch.wait.max.ms", "100")],
            options,
        )
        .create()
        .map_err(kafka)?;
        let metadata = consumer
            .fetch_metadata(Some(&definition.topic), METADATA_TIMEOUT)
            .map_err(kafka)?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if partitions.is_empty() {
            return Err(Error::MissingTopic {
                table,
                topic: definition.topic.clone(),
            });
        }
        let mut ends = BTreeMap::new();
        let mut assignment = TopicPartitionList::new();
        for p in partitions {
            let (low, high) = consumer
                .fetch_watermarks(&definition.topic, p, METADATA_TIMEOUT)
                .map_err(kafka)?;
            if high > low {
                ends.insert(p, high);
            }
            assignment
                .add_partition_offset(&definition.topic, p, Offset::Beginning)
                .map_err(kafka)?;
        }
        consumer.assign(&assignment).map_err(kafka)?;
        dimension.set_ready(false);
        Ok(Self {
            dimension,
            decoder,
            registry,
            runtime: tokio::runtime::Handle::current(),
            max_future,
            clock,
            consumer,
            ends,
        })
    }

    /// Reads until `cancel` fires: to the end (then the table is ready), then as rows arrive.
    pub fn run(self, cancel: CancellationToken) {
        let definition = Arc::clone(self.dimension.definition());
        let name = definition.name.clone();
        tracing::info!(table = %name, topic = %definition.topic, "reading dimension table");
        let mut builder = EventBatchBuilder::new(&self.decoder, MAX_ROWS);
        while !cancel.is_cancelled() {
            let mut polled = 0;
            while polled < MAX_ROWS {
                let wait = if polled == 0 {
                    Duration::from_millis(100)
                } else {
                    Duration::ZERO
                };
                let message = match self.consumer.poll(wait) {
                    None => break,
                    Some(Err(err)) => {
                        tracing::warn!(table = %name, %err, "dimension table consume error");
                        break;
                    }
                    Some(Ok(m)) => m,
                };
                polled += 1;
                let mut read = self.decoder.read_record(
                    message.payload(),
                    Vec::new(),
                    message.timestamp().to_millis(),
                );
                if let Read::Unresolved(_) = read {
                    // An unseen writer schema: asked of the registry (with backoff while it is
                    // unreachable), then the row is read again.
                    match self.runtime.block_on(tandem_store::registry::read_resolved(
                        &self.decoder,
                        self.registry.as_deref(),
                        message.payload(),
                        message.timestamp().to_millis(),
                        &cancel,
                    )) {
                        Some(again) => read = again,
                        None => return,
                    }
                }
                match read {
                    // Admitted as the archive admits it, so both layers hold the same rows.
                    Read::Event(event)
                        if matches!(
                            Admission::of(
                                event.time,
                                message.timestamp().to_millis(),
                                self.clock.now(),
                                self.max_future
                            ),
                            Admission::Future { .. }
                        ) =>
                    {
                        metrics::counter!("tandem_table_malformed_total", "table" => name.clone(), "reason" => "future")
                            .increment(1);
                        tracing::warn!(table = %name, partition = message.partition(), offset = message.offset(), time = %event.time, "dimension row too far in the future skipped");
                    }
                    Read::Event(event) => {
                        builder.append(&event, message.partition(), message.offset());
                    }
                    Read::Skip(_) => {}
                    Read::Malformed(err) => {
                        // Counted and logged; a malformed row never replaces a good one.
                        metrics::counter!("tandem_table_malformed_total", "table" => name.clone(), "reason" => err.kind())
                            .increment(1);
                        tracing::warn!(table = %name, partition = message.partition(), offset = message.offset(), %err, "malformed dimension row skipped");
                    }
                    Read::Unresolved(_) => {}
                }
            }
            if !builder.is_empty() {
                let batch = builder.finish();
                match self.dimension.apply(&batch) {
                    Ok(0) => {}
                    Ok(keyless) => {
                        metrics::counter!("tandem_table_malformed_total", "table" => name.clone(), "reason" => "no_key")
                            .increment(keyless as u64);
                        tracing::warn!(table = %name, keyless, "dimension rows without a key skipped");
                    }
                    Err(err) => tracing::error!(table = %name, %err, "dimension rows not applied"),
                }
            }
            if polled == 0 && !self.dimension.is_ready() && self.at_end(&definition.topic) {
                self.dimension.set_ready(true);
                tracing::info!(table = %name, keys = self.dimension.len(), "dimension table read to its end");
            }
        }
    }

    /// Whether every partition's position has reached the end it had when reading started.
    fn at_end(&self, topic: &str) -> bool {
        let Ok(positions) = self.consumer.position() else {
            return false;
        };
        self.ends.iter().all(|(p, end)| {
            positions
                .find_partition(topic, *p)
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o >= *end),
                    _ => None,
                })
                .unwrap_or(false)
        })
    }
}
