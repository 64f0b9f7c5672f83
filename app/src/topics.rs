//! The Kafka topics Tandem reads and writes, checked before any layer starts.
//!
//! The events topic belongs to the producers: if it does not exist, start-up stops with a message
//! that says so (Tandem does not guess its partition count). The dead-letter and late-events
//! topics belong to Tandem: missing ones are created, with the broker's default replication
//! factor and as many partitions as the events topic (so keys keep their partition).
//!
//! ```text
//! metadata(events topic) ──missing──▶ Error::MissingTopic
//!        │ partitions = n
//!        ▼
//! metadata(side topics) ──missing──▶ CreateTopics(n partitions) ──▶ ready
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::config::KafkaConfig;

const TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kafka at {brokers}: {source}")]
    Kafka {
        brokers: String,
        #[source]
        source: KafkaError,
    },
    #[error(
        "topic `{topic}` does not exist on {brokers}: create it (Tandem reads it, the producers own it)"
    )]
    MissingTopic { topic: String, brokers: String },
    #[error(
        "topic `{topic}` has {partitions} partitions and the events' topic {events}: a joined stream's topic needs as many, keyed by the join key"
    )]
    PartitionCount {
        topic: String,
        partitions: usize,
        events: usize,
    },
    #[error("creating topic `{topic}` on {brokers}: {code}")]
    Create {
        topic: String,
        brokers: String,
        code: RDKafkaErrorCode,
    },
}

/// What [`ensure`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    /// Partitions of the events topic.
    pub partitions: usize,
    /// Side topics this call created.
    pub created: Vec<String>,
}

/// Checks the events topic, the dimension tables' topics (`tables`: the producers' too) and
/// joined streams' second topics (`streams`: they must have the events' partition count, so
/// that a key's events of both topics meet in one partition number), and creates missing
/// side topics.
pub async fn ensure(
    kafka: &KafkaConfig,
    outputs: &[String],
    tables: &[String],
    streams: &[String],
) -> Result<Topics, Error> {
    let brokers = kafka.brokers.clone();
    let kafka_err = |source| Error::Kafka {
        brokers: brokers.clone(),
        source,
    };
    let admin: AdminClient<DefaultClientContext> =
        tandem_store::kafka::client_config(&kafka.brokers, &[], &kafka.options)
            .create()
            .map_err(kafka_err)?;
    let mut names = vec![kafka.topic.clone()];
    for side in [&kafka.dead_letter_topic, &kafka.late_topic]
        .into_iter()
        .chain(outputs)
        .chain(tables)
        .chain(streams)
    {
        if !names.contains(side) {
            names.push(side.clone());
        }
    }
    // Metadata requests block; they run off the async workers.
    let (admin, found) = tokio::task::spawn_blocking(move || {
        let found = partitions(&admin, &names);
        (admin, found)
    })
    .await
    .map_err(|_| kafka_err(KafkaError::Canceled))?;
    let found = found.map_err(kafka_err)?;
    let partitions = match found.get(&kafka.topic) {
        Some(&n) if n > 0 => n,
        _ => {
            return Err(Error::MissingTopic {
                topic: kafka.topic.clone(),
                brokers: kafka.brokers.clone(),
            });
        }
    };
    if let Some(table) = tables
        .iter()
        .chain(streams)
        .find(|t| found.get(*t).is_none_or(|n| *n == 0))
    {
        return Err(Error::MissingTopic {
            topic: table.clone(),
            brokers: kafka.brokers.clone(),
        });
    }
    if let Some((stream, n)) = streams
        .iter()
        .filter_map(|s| Some((s, *found.get(s)?)))
        .find(|(_, n)| *n != partitions)
    {
        return Err(Error::PartitionCount {
            topic: stream.clone(),
            partitions: n,
            events: partitions,
        });
    }
    let missing: Vec<&String> = found
        .iter()
        .filter(|(name, n)| **name != kafka.topic && **n == 0)
        .map(|(name, _)| name)
        .collect();
    let mut created = Vec::new();
    if !missing.is_empty() {
        let partitions = i32::try_from(partitions).unwrap_or(i32::MAX);
        let new: Vec<NewTopic<'_>> = missing
            .iter()
            // -1: the broker's default replication factor.
            .map(|name| {
                let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(-1));
                // Output records are keyed by row: compaction keeps each row's latest.
                if outputs.contains(*name) {
                    topic.set("cleanup.policy", "compact")
                } else {
                    topic
                }
            })
            .collect();
        let results = admin
            .create_topics(&new, &AdminOptions::new().operation_timeout(Some(TIMEOUT)))
            .await
            .map_err(kafka_err)?;
        for result in results {
            match result {
                Ok(name) => {
                    tracing::info!(topic = %name, partitions, "created topic");
                    created.push(name);
                }
                // Created concurrently by another Tandem process: fine.
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(Error::Create {
                        topic,
                        brokers: kafka.brokers.clone(),
                        code,
                    });
                }
            }
        }
    }
    Ok(Topics {
        partitions,
        created,
    })
}

/// Partition count of each topic; 0 for a topic the cluster does not know.
fn partitions(
    admin: &AdminClient<DefaultClientContext>,
    names: &[String],
) -> Result<BTreeMap<String, usize>, KafkaError> {
    let mut out = BTreeMap::new();
    for name in names {
        let metadata = admin.inner().fetch_metadata(Some(name), TIMEOUT)?;
        let n = metadata
            .topics()
            .iter()
            .find(|t| t.name() == name)
            .map_or(0, |t| t.partitions().len());
        out.insert(name.clone(), n);
    }
    Ok(out)
}
