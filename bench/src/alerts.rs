//! `tandem-bench alerts`: time from producing an event to its alert record being readable on
//! the output topic, under a steady load with a 10× spike, and the memory it takes.
//!
//! ```text
//!  broker (child process) ◄── load: --rate events/s, --spike-factor × for --spike-seconds
//!      │                  ◄── probes: one order of a fresh city every 20 ms (linger 0)
//!      ▼
//!  this process: speed layer ─► outputs (poll 50 ms, rule `orders >= 1 AND city LIKE 'probe-%'`)
//!      ─► idempotent producer ─► alerts topic ─► consumer thread: alert seen ⇒ latency
//! ```
//!
//! A probe's latency is from just before its produce call to the moment the consumer reads its
//! alert. Resident memory is sampled every 100 ms; its peak is reported with the probes'
//! percentiles before, during and after the spike.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use object_store::ObjectStore;
use object_store::memory::InMemory;
use rdkafka::Message;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{DefaultProducerContext, ThreadedProducer};
use tandem_serving::fleet::SpeedSide;
use tandem_serving::outputs::{self, KafkaSink, Timing};
use tandem_shared::clock::{Clock, SystemClock};
use tandem_shared::event::EventDecoder;
use tandem_shared::time::Span;
use tokio_util::sync::CancellationToken;

use super::harness::{CONFIG, counted, on_topic, spawn_broker};
use super::measure::{percentile, rss_mib};
use super::producers::{Produced, send, steady_load};
use super::{ORDERS_BY_CITY, SCHEMA};
use tandem::config::Config;
use tandem::wiring;

/// Options of `tandem-bench alerts`.
#[derive(Debug, Clone)]
pub struct AlertsBench {
    pub rate: u64,
    pub seconds: u64,
    pub spike_factor: u64,
    pub spike_seconds: u64,
    /// Partitions of the input topic (at least 1).
    pub partitions: i32,
    /// A broker of the user's instead of the embedded one.
    pub brokers: Option<String>,
}

const OUTPUTS: &str = r#"
[[outputs]]
view = "orders_by_city"
topic = "alerts"
when = "orders >= 1 AND city LIKE 'probe-%'"
lookback = "2m"
"#;

/// Runs the benchmark and prints its report.
pub async fn run(opts: AlertsBench) -> anyhow::Result<()> {
    let topics = [
        ("live", opts.partitions),
        ("alerts", 8),
        ("live.dlq", 1),
        ("live.late", 1),
    ];
    let (mut broker, brokers) = match &opts.brokers {
        None => {
            let specs: Vec<String> = topics.iter().map(|(t, n)| format!("{t}:{n}")).collect();
            let specs: Vec<&str> = specs.iter().map(String::as_str).collect();
            let (child, brokers) = spawn_broker(&specs)?;
            (Some(child), brokers)
        }
        Some(brokers) => {
            create_topics(brokers, &topics).await?;
            (None, brokers.clone())
        }
    };
    let config = Config::parse(
        &format!("{CONFIG}{SCHEMA}{ORDERS_BY_CITY}{OUTPUTS}"),
        "bench",
    )?;
    let mut config = on_topic(&config, &brokers, "live");
    config.kafka.dead_letter_topic = "live.dlq".into();
    config.kafka.late_topic = "live.late".into();
    let result = measure(&config, &brokers, &opts).await;
    if let Some(broker) = &mut broker {
        let _ = broker.kill();
        let _ = broker.wait();
    }
    result
}

/// Creates the bench's topics on a broker of the user's (which must not have them yet).
async fn create_topics(brokers: &str, topics: &[(&str, i32)]) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(1)))
        .collect();
    for result in admin.create_topics(&new, &AdminOptions::new()).await? {
        result.map_err(|(topic, code)| {
            anyhow::anyhow!("creating topic `{topic}` on {brokers}: {code} (the bench needs a broker without its topics)")
        })?;
    }
    Ok(())
}

async fn measure(config: &Config, brokers: &str, opts: &AlertsBench) -> anyhow::Result<()> {
    let cancel = CancellationToken::new();
    let speed = tandem_speed_layer::SpeedLayer::compile(&config.views, &config.schema)?;
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let speed_task = tandem_speed_layer::start(
        &speed,
        wiring::speed_config(config, &store, None),
        Arc::new(EventDecoder::new(Arc::new(config.schema.clone()))),
        Arc::clone(&clock),
        cancel.clone(),
    )?;
    let catalog = wiring::catalog(config, &store);
    let compiled = tandem::outputs::compile(config).await?;
    let sink = KafkaSink::new(brokers, &config.kafka.options)?;
    let (tx, rx) = tokio::sync::mpsc::channel(4096);
    let outputs_task = tokio::spawn(outputs::run(
        compiled,
        catalog,
        SpeedSide::Local(speed.clone()),
        clock,
        Timing {
            poll: tandem::outputs::POLL,
            lookback: Span::from_millis(120_000),
        },
        tx,
        cancel.clone(),
    ));
    let sink_task = tokio::spawn(sink.run(rx, cancel.clone()));

    // Alerts read as soon as they are readable.
    let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let reading = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let reader = {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", "bench-alerts")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "5")
            .create()?;
        consumer.subscribe(&["alerts"])?;
        let seen = Arc::clone(&seen);
        let reading = Arc::clone(&reading);
        std::thread::spawn(move || {
            while reading.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(Ok(msg)) = consumer.poll(Duration::from_millis(10))
                    && let Some(payload) = msg.payload()
                    && let Ok(v) = serde_json::from_slice::<serde_json::Value>(payload)
                    && let Some(city) = v["group"]["city"].as_str()
                    && let Ok(mut seen) = seen.lock()
                {
                    seen.entry(city.to_owned()).or_insert_with(Instant::now);
                }
            }
        })
    };
    let probes: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "0")
        .create()?;
    let load = steady_load(brokers, "live", opts.rate)?;
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Phases: steady (first half), spike, steady again.
    let before = opts.seconds / 2;
    let phases = [
        ("steady", before, false),
        ("spike", opts.spike_seconds, true),
        ("after", opts.seconds - before, false),
    ];
    let mut sent: Vec<(String, Instant, &str)> = Vec::new();
    let mut peak_mib = rss_mib();
    let mut n = 0u64;
    let mut spiked = Produced::default();
    for (phase, seconds, spike) in phases {
        let extra = if spike {
            Some(steady_load(
                brokers,
                "live",
                opts.rate * (opts.spike_factor - 1),
            )?)
        } else {
            None
        };
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let mut last_sample = Instant::now();
        while Instant::now() < deadline {
            n += 1;
            let city = format!("probe-{n}");
            let ts = chrono::Utc::now().timestamp_millis();
            let payload = format!(
                r#"{{"order_id":"p-{n}","ts":{ts},"city":"{city}","user_id":"probe","amount":1.0,"event_type":"order_placed"}}"#
            );
            let at = Instant::now();
            send(&probes, "live", &city, &payload);
            sent.push((city, at, phase));
            if last_sample.elapsed() >= Duration::from_millis(100) {
                peak_mib = peak_mib.max(rss_mib());
                last_sample = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Some(extra) = extra {
            spiked = extra.stop_counted();
        }
    }
    // Late alerts still count (as late as they are), up to 30 s.
    let wait_until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < wait_until {
        let all = seen.lock().map(|s| s.len()).unwrap_or(0);
        if all >= sent.len() {
            break;
        }
        peak_mib = peak_mib.max(rss_mib());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let produced = load.stop_counted();
    reading.store(false, std::sync::atomic::Ordering::Relaxed);
    // Every placed order counted once: the embedded broker keeps only the last 5 MiB of each
    // partition, so a consumer that fell further behind would lose events (and the figures).
    let expected = produced.placed + spiked.placed + sent.len() as u64;
    let wait_until = Instant::now() + Duration::from_secs(30);
    let mut orders = counted(&speed);
    while orders < expected && Instant::now() < wait_until {
        tokio::time::sleep(Duration::from_millis(100)).await;
        orders = counted(&speed);
    }
    let _ = reader.join();
    let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
    println!(
        "alerts at {} events/s with a {}x spike for {} s ({} steady load events, {} probes):",
        opts.rate,
        opts.spike_factor,
        opts.spike_seconds,
        produced.events,
        sent.len()
    );
    // What the spike's extra producer achieved: on a small machine it cannot reach its rate.
    println!(
        "  spike: {} extra events, {:.0} events/s on top of the steady {} (asked: {})",
        spiked.events,
        spiked.events as f64 / opts.spike_seconds.max(1) as f64,
        opts.rate,
        opts.rate * (opts.spike_factor - 1)
    );
    let mut all = Vec::new();
    for phase in ["steady", "spike", "after"] {
        let mut lat: Vec<f64> = sent
            .iter()
            .filter(|(_, _, p)| *p == phase)
            .filter_map(|(city, at, _)| {
                seen.get(city)
                    .map(|t| t.duration_since(*at).as_secs_f64() * 1000.0)
            })
            .collect();
        let missing = sent.iter().filter(|(_, _, p)| *p == phase).count() - lat.len();
        lat.sort_by(f64::total_cmp);
        println!(
            "  {phase:>6}: {} alerts, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, {missing} not seen within 30 s",
            lat.len(),
            percentile(&lat, 0.5),
            percentile(&lat, 0.99),
            lat.last().copied().unwrap_or(f64::NAN)
        );
        all.extend(lat);
    }
    all.sort_by(f64::total_cmp);
    println!(
        "  all: p50 {:.1} ms, p99 {:.1} ms; peak resident memory {peak_mib:.0} MiB",
        percentile(&all, 0.5),
        percentile(&all, 0.99),
    );
    // Events the speed layer set aside: late ones and dead-lettered ones (one partition each).
    let side: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let set_aside = |topic: &str| {
        side.fetch_watermarks(topic, 0, Duration::from_secs(5))
            .map_or_else(|err| format!("? ({err})"), |(_, high)| high.to_string())
    };
    println!(
        "  counted: {orders} of {expected} placed orders ({} input partitions); {} late, {} dead-lettered",
        opts.partitions,
        set_aside("live.late"),
        set_aside("live.dlq"),
    );
    cancel.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), async {
        let _ = speed_task.await;
        let _ = outputs_task.await;
        let _ = sink_task.await;
    })
    .await;
    anyhow::ensure!(
        orders == expected,
        "the speed layer counted {orders} of {expected} placed orders: events were lost or \
         counted twice (with fewer --partitions the embedded broker drops older data sooner)"
    );
    Ok(())
}
