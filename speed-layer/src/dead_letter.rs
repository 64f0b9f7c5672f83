//! Side topics for events the speed layer cannot count: malformed events go to the dead-letter
//! topic, events too late for every window of a view go to the late-events topic. Nothing is
//! dropped silently: each message keeps its original payload and key and carries the reason and
//! its origin (topic, partition, offset) in headers, and every send is counted.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, ProducerContext};

/// Errors creating the side-topic producer. Transient or configuration (brokers).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("creating the dead-letter producer: {0}")]
    Create(#[from] KafkaError),
}

pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;

/// Counts deliveries that failed after librdkafka's own retries.
#[derive(Debug, Default)]
pub(crate) struct DeliveryContext;

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((err, msg)) = result {
            metrics::counter!("tandem_side_topic_delivery_errors_total").increment(1);
            tracing::error!(topic = rdkafka::Message::topic(msg), %err, "side-topic delivery failed");
        }
    }
}

/// Where a sidelined event came from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Origin<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
}

/// Producer of dead-letter and late-event messages. Its delivery reports are served on the
/// consume thread ([`SideTopics::serve`], once per poll), not by a polling thread of its own:
/// the crate's `ThreadedProducer` spins through the last millisecond of every 100 ms poll (a
/// timeout under 1 ms rounds down to a non-blocking poll), about 1 % of a core while idle.
pub(crate) struct SideTopics {
    producer: BaseProducer<DeliveryContext>,
    dead_letter_topic: String,
    late_topic: String,
}

impl std::fmt::Debug for SideTopics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SideTopics")
            .field("dead_letter_topic", &self.dead_letter_topic)
            .field("late_topic", &self.late_topic)
            .finish()
    }
}

impl SideTopics {
    /// The producer's configuration: the user's `kafka.options` apply, so side-topic messages
    /// reach a secured cluster like everything else.
    fn client_config(brokers: &str, options: &BTreeMap<String, String>) -> ClientConfig {
        tandem_store::kafka::client_config(
            brokers,
            &[("linger.ms", "5"), ("message.timeout.ms", "300000")],
            options,
        )
    }

    pub(crate) fn new(
        brokers: &str,
        dead_letter_topic: String,
        late_topic: String,
        options: &BTreeMap<String, String>,
    ) -> Result<Self> {
        let producer =
            Self::client_config(brokers, options).create_with_context(DeliveryContext)?;
        Ok(Self {
            producer,
            dead_letter_topic,
            late_topic,
        })
    }

    /// Sends an event to the dead-letter topic; a message without payload stays without one.
    pub(crate) fn dead_letter(
        &self,
        payload: Option<&[u8]>,
        origin: Origin<'_>,
        kind: &str,
        reason: &str,
    ) {
        metrics::counter!("tandem_dead_letter_events_total", "reason" => kind.to_owned())
            .increment(1);
        let headers = origin_headers(origin)
            .insert(Header {
                key: "reason",
                value: Some(reason),
            })
            .insert(Header {
                key: "error_kind",
                value: Some(kind),
            });
        self.send(&self.dead_letter_topic, payload, origin.key, headers);
    }

    pub(crate) fn late(&self, payload: &[u8], origin: Origin<'_>, view: &str, reason: &str) {
        metrics::counter!("tandem_late_events_total", "view" => view.to_owned()).increment(1);
        let headers = origin_headers(origin)
            .insert(Header {
                key: "reason",
                value: Some(reason),
            })
            .insert(Header {
                key: "view",
                value: Some(view),
            });
        self.send(&self.late_topic, Some(payload), origin.key, headers);
    }

    fn send(&self, topic: &str, payload: Option<&[u8]>, key: Option<&[u8]>, headers: OwnedHeaders) {
        let mut record = BaseRecord::<[u8], [u8]>::to(topic).headers(headers);
        if let Some(payload) = payload {
            record = record.payload(payload);
        }
        if let Some(key) = key {
            record = record.key(key);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => return,
                // The local queue is full: wait for deliveries instead of dropping. This slows
                // consumption, which is the backpressure we want.
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    self.producer.poll(Duration::from_millis(10));
                }
                Err((err, _)) => {
                    metrics::counter!("tandem_side_topic_delivery_errors_total").increment(1);
                    tracing::error!(topic, %err, "cannot enqueue side-topic message");
                    return;
                }
            }
        }
    }

    /// Serves delivery reports that have arrived (failed deliveries are counted and logged);
    /// never blocks.
    pub(crate) fn serve(&self) {
        self.producer.poll(Duration::ZERO);
    }

    /// Waits for queued messages to be delivered.
    pub(crate) fn flush(&self, timeout: Duration) {
        if let Err(err) = rdkafka::producer::Producer::flush(&self.producer, timeout) {
            tracing::warn!(%err, "side-topic producer did not flush in time");
        }
    }
}

fn origin_headers(origin: Origin<'_>) -> OwnedHeaders {
    OwnedHeaders::new()
        .insert(Header {
            key: "source_topic",
            value: Some(origin.topic),
        })
        .insert(Header {
            key: "source_partition",
            value: Some(&origin.partition.to_string()),
        })
        .insert(Header {
            key: "source_offset",
            value: Some(&origin.offset.to_string()),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_side_topic_producer_gets_the_users_kafka_options() {
        let options: BTreeMap<String, String> =
            [("security.protocol".to_owned(), "ssl".to_owned())]
                .into_iter()
                .collect();
        let c = SideTopics::client_config("b:9092", &options);
        assert_eq!(c.get("security.protocol"), Some("ssl"));
        assert_eq!(c.get("bootstrap.servers"), Some("b:9092"));
        assert_eq!(c.get("linger.ms"), Some("5"));
    }
}
