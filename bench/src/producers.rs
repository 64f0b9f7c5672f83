//! The benchmarks' producers: generated orders, how they are keyed and timed, and a steady
//! load at a given rate.
//!
//! ```text
//!  order_values / Profile::event ─► keyed (Keying) ─► send ─► embedded broker
//!  steady_load: a thread sending `rate` events per second until stopped
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

use super::profile::{Keying, Profile};

pub(super) fn producer(brokers: &str) -> anyhow::Result<ThreadedProducer<DefaultProducerContext>> {
    Ok(producer_config(brokers).create()?)
}

pub(super) fn producer_config(brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "2")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000");
    config
}

pub(super) fn send<P: rdkafka::message::ToBytes + ?Sized>(
    p: &ThreadedProducer<DefaultProducerContext>,
    topic: &str,
    key: &str,
    payload: &P,
) {
    let mut record = BaseRecord::to(topic).key(key).payload(payload);
    loop {
        match p.send(record) {
            Ok(()) => return,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err((err, _)) => {
                tracing::warn!(%err, "bench event not produced");
                return;
            }
        }
    }
}

/// Message keys stored end to end.
#[derive(Debug, Default)]
pub(super) struct Keys {
    text: String,
    ends: Vec<usize>,
}

impl Keys {
    pub(super) fn push(&mut self, key: &str) {
        self.text.push_str(key);
        self.ends.push(self.text.len());
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &str> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts
            .zip(&self.ends)
            .map(|(start, end)| self.text.get(start..*end).unwrap_or_default())
    }
}

/// Milliseconds of event time `events` cover at `rate` events per second.
pub(super) fn event_span_ms(events: u64, rate: u64) -> i64 {
    i64::try_from(events.saturating_mul(1000) / rate.max(1))
        .unwrap_or(i64::MAX)
        .max(1)
}

/// Events produced at a steady rate by a thread of their own, until stopped.
pub(super) struct SteadyLoad {
    running: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    placed: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<()>,
}

impl SteadyLoad {
    /// Events sent so far.
    pub(super) fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Stops producing; returns the events sent.
    pub(super) fn stop(self) -> u64 {
        self.stop_counted().events
    }

    /// Stops producing; returns the events sent and how many of them `orders_by_city` counts.
    pub(super) fn stop_counted(self) -> Produced {
        self.running.store(false, Ordering::Relaxed);
        let _ = self.thread.join();
        Produced {
            events: self.sent.load(Ordering::Relaxed),
            placed: self.placed.load(Ordering::Relaxed),
        }
    }
}

/// What a stopped [`SteadyLoad`] sent.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Produced {
    pub(super) events: u64,
    /// Placed orders: the events `orders_by_city` counts.
    pub(super) placed: u64,
}

/// Starts producing generated orders to `topic` at `rate` events per second.
pub(super) fn steady_load(brokers: &str, topic: &str, rate: u64) -> anyhow::Result<SteadyLoad> {
    steady_load_of(brokers, topic, rate, Profile::Simple, Keying::Spread)
}

/// Starts producing `profile`'s events to `topic` at `rate` events per second.
pub(super) fn steady_load_of(
    brokers: &str,
    topic: &str,
    rate: u64,
    profile: Profile,
    keying: Keying,
) -> anyhow::Result<SteadyLoad> {
    // The steady load batches like a high-throughput producer would (50 ms linger): the embedded
    // broker finds a fetch offset by scanning a partition's batches, so thousands of tiny
    // batches would measure the broker rather than Tandem. Probes are sent unbatched.
    let load: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "50")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    let running = Arc::new(AtomicBool::new(true));
    let sent = Arc::new(AtomicU64::new(0));
    let placed = Arc::new(AtomicU64::new(0));
    let thread = {
        let running = Arc::clone(&running);
        let sent = Arc::clone(&sent);
        let placed_sent = Arc::clone(&placed);
        let topic = topic.to_owned();
        std::thread::spawn(move || {
            let mut rng = StdRng::seed_from_u64(2);
            let start = Instant::now();
            let mut i = 0u64;
            let mut placed = 0u64;
            while running.load(Ordering::Relaxed) {
                // Pace in 1 ms steps: send what is due, then sleep.
                let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
                while i < due {
                    let ts = chrono::Utc::now().timestamp_millis();
                    let event = profile.event(&mut rng, i, ts);
                    send(&load, &topic, &keying.key(i, &event), &event.json);
                    placed += u64::from(event.placed);
                    i += 1;
                }
                placed_sent.store(placed, Ordering::Relaxed);
                sent.store(i, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(1));
            }
            // Dropping a producer purges what it still holds: deliver it first, so that
            // what this load reports sent is what the broker received.
            if let Err(err) = load.flush(Duration::from_secs(30)) {
                tracing::warn!(%err, "bench load not delivered in full");
            }
        })
    };
    Ok(SteadyLoad {
        running,
        sent,
        placed,
        thread,
    })
}
