//! The Kafka consumer set-up both layers share, and the lag statistics they publish.
//!
//! The speed layer and the archive each consume the events topic in their own consumer group.
//! Both keep their progress in the object store (checkpoints, partition manifests), not in
//! Kafka's committed offsets, so both consumers are configured alike: no auto-commit, read from
//! the earliest offset when a group is new, and librdkafka statistics every second so lag is
//! measured from what this process consumed.

use std::collections::BTreeMap;

use rdkafka::config::ClientConfig;
use rdkafka::statistics::Statistics;

/// Properties of every Tandem consumer. `tuning` holds a consumer's own settings; the user's
/// `kafka.options` come last, so they override anything set here.
pub fn consumer_config(
    brokers: &str,
    group_id: &str,
    tuning: &[(&str, &str)],
    options: &BTreeMap<String, String>,
) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", brokers)
        .set("group.id", group_id)
        // Progress lives in the object store; offsets in Kafka would be a second, weaker copy.
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("statistics.interval.ms", "1000");
    for (key, value) in tuning {
        client.set(*key, *value);
    }
    for (key, value) in options {
        client.set(key, value);
    }
    client
}

/// Where one partition's consumer stands, from a statistics report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionPosition {
    pub partition: i32,
    /// Messages between what this process consumed and the log end; `None` before the first
    /// message was consumed.
    pub lag: Option<i64>,
    /// Whether everything the partition holds has been consumed.
    pub caught_up: bool,
}

/// Positions of every partition in `statistics`.
pub fn positions(statistics: &Statistics) -> Vec<PartitionPosition> {
    let mut out = Vec::new();
    for topic in statistics.topics.values() {
        for (partition, stats) in &topic.partitions {
            // librdkafka reports an internal partition -1, and -1 offsets for unknown ones.
            if *partition < 0 || stats.hi_offset < 0 {
                continue;
            }
            // Lag behind the log end by what this process has consumed, not by committed
            // offsets (which are only progress information here).
            let consumed = (stats.app_offset >= 0).then_some(stats.app_offset);
            out.push(PartitionPosition {
                partition: *partition,
                lag: consumed.map(|c| (stats.hi_offset - c).max(0)),
                caught_up: match consumed {
                    Some(c) => c >= stats.hi_offset,
                    None => stats.hi_offset == stats.lo_offset,
                },
            });
        }
    }
    out
}

/// Publishes `tandem_consumer_lag` per partition for consumer group `group`, and returns the
/// positions it read.
pub fn record_lag(group: &str, statistics: &Statistics) -> Vec<PartitionPosition> {
    let positions = positions(statistics);
    for p in &positions {
        if let Some(lag) = p.lag {
            metrics::gauge!(
                "tandem_consumer_lag",
                "group" => group.to_owned(),
                "partition" => p.partition.to_string()
            )
            .set(lag as f64);
        }
    }
    positions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_options_override_the_defaults() {
        let options = [("auto.offset.reset".to_owned(), "latest".to_owned())]
            .into_iter()
            .collect();
        let c = consumer_config("b:9092", "g", &[("fetch.wait.max.ms", "10")], &options);
        assert_eq!(c.get("auto.offset.reset"), Some("latest"));
        assert_eq!(c.get("enable.auto.commit"), Some("false"));
        assert_eq!(c.get("fetch.wait.max.ms"), Some("10"));
        assert_eq!(c.get("group.id"), Some("g"));
    }

    #[test]
    fn positions_measure_lag_from_what_was_consumed() {
        use rdkafka::statistics::{Partition, Topic};
        let partition = |id: i32, app_offset: i64, lo_offset: i64, hi_offset: i64| {
            let p = Partition {
                partition: id,
                app_offset,
                lo_offset,
                hi_offset,
                ..Default::default()
            };
            (id, p)
        };
        let topic = Topic {
            partitions: [
                partition(0, 7, 0, 10),
                partition(1, -1, 4, 4),
                partition(-1, -1, -1, -1),
            ]
            .into_iter()
            .collect(),
            ..Default::default()
        };
        let stats = Statistics {
            topics: [("t".to_owned(), topic)].into_iter().collect(),
            ..Default::default()
        };
        let mut got = positions(&stats);
        got.sort_by_key(|p| p.partition);
        assert_eq!(
            got,
            [
                PartitionPosition {
                    partition: 0,
                    lag: Some(3),
                    caught_up: false
                },
                PartitionPosition {
                    partition: 1,
                    lag: None,
                    caught_up: true
                },
            ]
        );
    }
}
