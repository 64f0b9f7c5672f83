//! Side topics for events the speed layer cannot count: malformed events go to the dead-letter
//! topic, events too late for every window of a view go to the late-events topic. Nothing is
//! dropped silently: each message keeps its original payload and key and carries the reason and
//! its origin (topic, partition, offset) in headers, and every send is counted.
//!
//! A checkpoint commits the speed layer past the messages it read, so it is written only once
//! every side-topic message sent before it is delivered ([`SideTopics::settle`]): otherwise a
//! crash after the checkpoint would lose messages still queued in the producer (for up to its
//! five-minute delivery timeout). A delivery that fails after the producer's own retries stops
//! the consume loop: it restarts from the last checkpoint, which is before the message, and
//! sends it again.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};

/// Errors creating the side-topic producer. Transient or configuration (brokers).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("creating the dead-letter producer: {0}")]
    Create(#[from] KafkaError),
}

pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;

/// Counts deliveries that failed after librdkafka's own retries.
#[derive(Debug, Default)]
pub(crate) struct DeliveryContext {
    failed: AtomicU64,
}

impl DeliveryContext {
    fn fail(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("tandem_side_topic_delivery_errors_total").increment(1);
    }
}

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((err, msg)) = result {
            self.fail();
            tracing::error!(topic = rdkafka::Message::topic(msg), %err, "side-topic delivery failed");
        }
    }
}

/// Why side-topic messages are not all delivered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Unsettled {
    /// Still queued after the wait (transient: checkpoint later).
    #[error("{0} side-topic messages are not delivered yet")]
    Pending(i32),
    /// Deliveries failed after the producer's retries (restart from the last checkpoint).
    #[error("{0} side-topic messages could not be delivered")]
    Failed(u64),
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
    /// Failed deliveries already reported by [`SideTopics::settle`].
    failed_seen: AtomicU64,
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
            Self::client_config(brokers, options).create_with_context(DeliveryContext::default())?;
        Ok(Self {
            producer,
            dead_letter_topic,
            late_topic,
            failed_seen: AtomicU64::new(0),
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
                    self.producer.context().fail();
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

    /// Waits up to `timeout` for every message sent so far to be delivered; `Ok` when all
    /// were, since the last call. Call before a checkpoint (see the module docs).
    pub(crate) fn settle(&self, timeout: Duration) -> Result<(), Unsettled> {
        if self.producer.in_flight_count() > 0 {
            let _ = Producer::flush(&self.producer, timeout);
        } else {
            self.serve();
        }
        let failed = self.producer.context().failed.load(Ordering::Relaxed);
        let seen = self.failed_seen.swap(failed, Ordering::Relaxed);
        if failed > seen {
            return Err(Unsettled::Failed(failed - seen));
        }
        match self.producer.in_flight_count() {
            0 => Ok(()),
            n => Err(Unsettled::Pending(n)),
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

    fn origin(offset: i64) -> Origin<'static> {
        Origin {
            topic: "orders",
            partition: 0,
            offset,
            key: None,
        }
    }

    /// A checkpoint waits for side-topic messages, and a delivery that fails is reported, not
    /// only counted (the consume loop then restarts from its last checkpoint).
    #[test]
    fn settling_waits_for_deliveries_and_reports_failures() {
        use rdkafka::mocking::MockCluster;
        use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("orders.dlq", 1, 1).unwrap();
        cluster.create_topic("orders.late", 1, 1).unwrap();
        let side = SideTopics::new(
            &cluster.bootstrap_servers(),
            "orders.dlq".into(),
            "orders.late".into(),
            &[("message.timeout.ms".to_owned(), "2000".to_owned())]
                .into_iter()
                .collect(),
        )
        .unwrap();
        side.dead_letter(Some(b"{"), origin(1), "bad_payload", "not JSON");
        side.late(b"{}", origin(2), "v", "too late");
        assert_eq!(side.settle(Duration::from_secs(30)), Ok(()));
        assert_eq!(
            rdkafka::producer::Producer::in_flight_count(&side.producer),
            0,
            "settled means delivered"
        );
        // The broker refuses every produce request for good: the delivery fails once its
        // timeout passes, and settling says so (once).
        cluster.request_errors(
            RDKafkaApiKey::Produce,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 64],
        );
        side.dead_letter(Some(b"{"), origin(3), "bad_payload", "not JSON");
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let outcome = loop {
            match side.settle(Duration::from_millis(500)) {
                Err(Unsettled::Pending(_)) if std::time::Instant::now() < deadline => continue,
                other => break other,
            }
        };
        assert_eq!(outcome, Err(Unsettled::Failed(1)));
        assert_eq!(side.settle(Duration::from_secs(1)), Ok(()), "reported once");
    }
}
