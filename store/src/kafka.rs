//! The Kafka client set-up every Tandem client shares, and the lag statistics the consumers
//! publish.
//!
//! Every client (both consumers, the side-topic producer, the admin client) is configured through
//! [`client_config`], so the user's `kafka.options` (TLS, SASL, …) reach all of them: a client
//! that missed them would fail, or lose messages, on a secured cluster.
//!
//! The speed layer and the archive each consume the events topic in their own consumer group.
//! Both keep their progress in the object store (checkpoints, partition manifests), not in
//! Kafka's committed offsets, so both consumers are configured alike: no auto-commit, read from
//! the earliest offset when a group is new, and librdkafka statistics every second so lag is
//! measured from what this process consumed.

use std::collections::BTreeMap;

use rdkafka::config::ClientConfig;
use rdkafka::statistics::Statistics;

/// Properties of any Tandem client: the brokers, the client's own `tuning`, then the user's
/// `kafka.options`, which come last so they override anything set here.
pub fn client_config(
    brokers: &str,
    tuning: &[(&str, &str)],
    options: &BTreeMap<String, String>,
) -> ClientConfig {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", brokers);
    for (key, value) in tuning {
        client.set(*key, *value);
    }
    for (key, value) in options {
        client.set(key, value);
    }
    client
}

/// Properties of every Tandem consumer: [`client_config`] with the group and the settings both
/// consumers share, then the consumer's own `tuning`.
pub fn consumer_config(
    brokers: &str,
    group_id: &str,
    tuning: &[(&str, &str)],
    options: &BTreeMap<String, String>,
) -> ClientConfig {
    let shared = [
        ("group.id", group_id),
        // Progress lives in the object store; offsets in Kafka would be a second, weaker copy.
        ("enable.auto.commit", "false"),
        // Nor stored per message (the default would store every polled offset, under the
        // partition's lock, for a commit that never comes; explicit commits name their offsets).
        ("enable.auto.offset.store", "false"),
        ("auto.offset.reset", "earliest"),
        ("enable.partition.eof", "false"),
        ("statistics.interval.ms", "1000"),
    ];
    let all: Vec<(&str, &str)> = shared.iter().chain(tuning).copied().collect();
    client_config(brokers, &all, options)
}

/// How recently a partition's leader must have answered for its log end (and so "caught up") to
/// be believed. A consumer's fetch is answered at least every `fetch.wait.max.ms` (at most
/// 500 ms in Tandem's consumers), so a longer silence means an outage: the log end in the report
/// is stale, and the partition may hold events this process has not heard of.
const HEARD_WITHIN_MICROS: i64 = 5_000_000;

/// Where one partition's consumer stands, from a statistics report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionPosition {
    pub topic: String,
    pub partition: i32,
    /// Messages between what this process consumed and the log end; `None` before the first
    /// message was consumed.
    pub lag: Option<i64>,
    /// Whether everything the partition holds has been consumed, as its leader said recently
    /// (false while the leader is silent: a partition is not known to be idle during an outage).
    pub caught_up: bool,
}

/// Positions of every partition in `statistics`.
pub fn positions(statistics: &Statistics) -> Vec<PartitionPosition> {
    let heard: BTreeMap<i32, bool> = statistics
        .brokers
        .values()
        .filter(|b| b.nodeid >= 0)
        .map(|b| {
            let recent = b.state == "UP" && (0..=HEARD_WITHIN_MICROS).contains(&b.rxidle);
            (b.nodeid, recent)
        })
        .collect();
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
            let at_end = match consumed {
                Some(c) => c >= stats.hi_offset,
                None => stats.hi_offset == stats.lo_offset,
            };
            out.push(PartitionPosition {
                topic: topic.topic.clone(),
                partition: *partition,
                lag: consumed.map(|c| (stats.hi_offset - c).max(0)),
                caught_up: at_end && heard.get(&stats.leader).copied().unwrap_or(false),
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
                "topic" => p.topic.clone(),
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
    fn every_client_gets_the_users_options() {
        let options: BTreeMap<String, String> = [
            ("security.protocol".to_owned(), "sasl_ssl".to_owned()),
            ("sasl.mechanism".to_owned(), "PLAIN".to_owned()),
        ]
        .into_iter()
        .collect();
        let producer = client_config("b:9092", &[("linger.ms", "5")], &options);
        let consumer = consumer_config("b:9092", "g", &[], &options);
        for c in [&producer, &consumer] {
            assert_eq!(c.get("bootstrap.servers"), Some("b:9092"));
            assert_eq!(c.get("security.protocol"), Some("sasl_ssl"));
            assert_eq!(c.get("sasl.mechanism"), Some("PLAIN"));
        }
        assert_eq!(producer.get("linger.ms"), Some("5"));
        assert_eq!(producer.get("group.id"), None);
    }

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
        use rdkafka::statistics::{Broker, Partition, Topic};
        let partition = |id: i32, app_offset: i64, lo_offset: i64, hi_offset: i64| {
            let p = Partition {
                partition: id,
                leader: 1,
                app_offset,
                lo_offset,
                hi_offset,
                ..Default::default()
            };
            (id, p)
        };
        let topic = Topic {
            topic: "t".into(),
            partitions: [
                partition(0, 7, 0, 10),
                partition(1, -1, 4, 4),
                partition(-1, -1, -1, -1),
            ]
            .into_iter()
            .collect(),
            ..Default::default()
        };
        let broker = |state: &str, rxidle: i64| Broker {
            nodeid: 1,
            state: state.to_owned(),
            rxidle,
            ..Default::default()
        };
        let stats = |broker: Broker| Statistics {
            topics: [("t".to_owned(), topic.clone())].into_iter().collect(),
            brokers: [("b:9092/1".to_owned(), broker)].into_iter().collect(),
            ..Default::default()
        };
        let mut got = positions(&stats(broker("UP", 20_000)));
        got.sort_by_key(|p| p.partition);
        assert_eq!(
            got,
            [
                PartitionPosition {
                    topic: "t".into(),
                    partition: 0,
                    lag: Some(3),
                    caught_up: false
                },
                PartitionPosition {
                    topic: "t".into(),
                    partition: 1,
                    lag: None,
                    caught_up: true
                },
            ]
        );
        // A leader silent for longer than a fetch wait, reconnecting, or never heard on this
        // connection: its last log end is stale, so no partition it leads is known caught up.
        for silent in [
            broker("UP", HEARD_WITHIN_MICROS + 1),
            broker("CONNECT", 20_000),
            broker("UP", -1),
        ] {
            let got = positions(&stats(silent));
            assert_eq!(got.len(), 2);
            assert!(got.iter().all(|p| !p.caught_up), "{got:?}");
            assert!(got.iter().any(|p| p.lag == Some(3)), "{got:?}");
        }
    }
}
