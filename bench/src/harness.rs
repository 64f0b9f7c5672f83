//! What every Kafka benchmark sets up: the embedded broker in a child process, the benchmark's
//! Kafka settings pointed at a topic, and what the view has counted.
//!
//! ```text
//!  tandem-bench broker (child) ─► bootstrap address ─► Config on a topic ─► speed layer
//! ```

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use anyhow::Context;
use tandem::config::Config;
use tandem_shared::coverage::StartRange;
use tandem_shared::time::EventTime;
use tandem_speed_layer::SpeedLayer;

/// The speed benchmarks' Kafka settings (the topic is replaced per run by [`on_topic`]).
pub(super) const CONFIG: &str = r#"
[kafka]
topic = "bench"
idle_timeout = "5s"
dead_letter_topic = "bench.dlq"
late_topic = "bench.late"
"#;

/// Starts the embedded broker in a child process (so that its CPU is not counted) with `topics`
/// (`NAME:PARTITIONS`); returns it and its bootstrap address.
pub(super) fn spawn_broker(topics: &[&str]) -> anyhow::Result<(std::process::Child, String)> {
    let exe = std::env::current_exe()?;
    let mut broker = Command::new(exe)
        .args(["broker", "--port", "0"])
        .args(topics.iter().flat_map(|t| ["--topic", t]))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the broker process")?;
    let stdout = broker.stdout.take().context("broker stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let brokers = line
        .trim()
        .strip_prefix("Kafka bootstrap: ")
        .context("the broker did not print its address")?
        .to_owned();
    Ok((broker, brokers))
}

/// The bench configuration pointed at `brokers` and `topic` (consumer group `<topic>-speed`).
pub(super) fn on_topic(config: &Config, brokers: &str, topic: &str) -> Config {
    let mut config = config.clone();
    config.kafka.brokers = brokers.to_owned();
    config.kafka.topic = topic.to_owned();
    config.kafka.group_prefix = topic.to_owned();
    config
}

/// Orders counted by the view, over all windows.
pub(super) fn counted(speed: &SpeedLayer) -> u64 {
    speed
        .query(
            "orders_by_city",
            StartRange::new(EventTime::MIN, EventTime::MAX),
        )
        .unwrap_or_default()
        .iter()
        .filter_map(|r| r.values[0].as_f64())
        .sum::<f64>() as u64
}
