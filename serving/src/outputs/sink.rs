//! The Kafka side of outputs: records from a bounded channel to their topics through an
//! idempotent producer (librdkafka retries without duplicating or reordering within a
//! partition; the key puts every record of a row on one partition, in order).

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Record;

/// Creating the producer failed (brokers, options).
#[derive(Debug, thiserror::Error)]
#[error("creating the output producer: {0}")]
pub struct Error(#[from] KafkaError);

/// Counts deliveries that failed after librdkafka's own retries.
#[derive(Debug, Default)]
pub struct Deliveries;

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((err, msg)) = result {
            metrics::counter!("tandem_output_delivery_errors_total").increment(1);
            tracing::error!(topic = rdkafka::Message::topic(msg), %err, "output delivery failed");
        }
    }
}

/// An idempotent producer of output records.
pub struct KafkaSink {
    producer: ThreadedProducer<Deliveries>,
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink").finish_non_exhaustive()
    }
}

impl KafkaSink {
    /// A producer to `brokers` with the user's `kafka.options`; idempotent, and lingering only
    /// 1 ms: an alert is worth more early than batched.
    pub fn new(brokers: &str, options: &BTreeMap<String, String>) -> Result<Self, Error> {
        let producer = tandem_store::kafka::client_config(
            brokers,
            &[
                ("enable.idempotence", "true"),
                ("acks", "all"),
                ("linger.ms", "1"),
                ("message.timeout.ms", "300000"),
            ],
            options,
        )
        .create_with_context(Deliveries)?;
        Ok(Self { producer })
    }

    /// Sends records from `records` until it closes or `cancel`, then flushes.
    pub async fn run(self, mut records: mpsc::Receiver<Record>, cancel: CancellationToken) {
        loop {
            let record = tokio::select! {
                () = cancel.cancelled() => break,
                r = records.recv() => match r { Some(r) => r, None => break },
            };
            let payload = record.payload.to_string();
            let mut message = BaseRecord::to(&record.topic)
                .key(&record.key)
                .payload(&payload);
            // A full local queue: wait for deliveries to make room, never drop.
            loop {
                match self.producer.send(message) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        message = back;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((err, _)) => {
                        metrics::counter!("tandem_output_delivery_errors_total").increment(1);
                        tracing::error!(topic = %record.topic, %err, "an output record was not sent");
                        break;
                    }
                }
            }
        }
        let producer = self.producer;
        let _ = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(10))).await;
    }
}
