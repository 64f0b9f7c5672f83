//! `tandem-bench speed`: the speed layer's throughput and event-to-queryable latency.
//!
//! Throughput: `--events N` events of the `--profile` (see [`super::profile`]), their times
//! advancing at `--event-rate` and keyed as `--key` says (see [`super::producers`]), are produced
//! to an embedded broker running in a child process (so its CPU is not counted), then the speed layer
//! consumes them from the start of the topic, `--runs` times (a fresh layer and consumer group
//! each); the figure is events divided by the CPU time this process spent consuming, decoding,
//! windowing and checkpointing them (user + system time of all its threads, from /proc), as the
//! median of the runs with their spread. Next to it: instructions per event and per byte
//! counted by callgrind (see [`super::instructions`]), and the state bytes per group of each
//! aggregate kind (see [`super::state`]).
//!
//! Latency: the speed layer and the HTTP API keep running while a producer sends `--rate`
//! events per second for `--seconds`; every 20 ms a probe event with a unique group value is
//! produced and `GET /v1/views/...?city=<probe>` is polled until it is visible. The figure is the
//! distribution of produce → visible times.
//!
//! The topic gets enough partitions that the broker's per-partition retention (about 5 MiB)
//! keeps every event.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use object_store::ObjectStore;
use object_store::memory::InMemory;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{DefaultProducerContext, Producer, ThreadedProducer};
use tandem_batch_layer::Scheduler;
use tandem_serving::{AppState, Reconciler};
use tandem_shared::clock::SystemClock;
use tandem_shared::event::{EventDecoder, PayloadFormat};
use tandem_speed_layer::SpeedLayer;
use tokio_util::sync::CancellationToken;

use super::CITIES;
use super::harness::{counted, on_topic, spawn_broker};
use super::instructions;
use super::measure::{cpu_seconds, peak_rss_mib, percentile, thread_cpu, thread_cpu_delta};
use super::order_values;
use super::payloads;
use super::producers::{Keys, event_span_ms, producer_config, send, steady_load_of};
use super::profile::{Keying, Profile};
use tandem::config::Config;
use tandem::{process, wiring};
use tandem_shared::testing::orders::{Encoder, Order};

/// Options of `tandem-bench speed`.
#[derive(Debug, Clone)]
pub struct SpeedBench {
    pub profile: Profile,
    pub events: u64,
    /// Throughput runs over the same produced events (the median is reported).
    pub runs: u32,
    /// Events of the callgrind run (0: no instruction count).
    pub counted_events: u64,
    /// The payload format of the throughput run (latency probes are JSON).
    pub format: PayloadFormat,
    pub rate: u64,
    pub seconds: u64,
    /// Events per second of event time: the produced events' timestamps advance at this rate
    /// (the density of a live stream at that rate: events per window and group).
    pub event_rate: u64,
    /// How events are keyed, and so partitioned.
    pub keying: Keying,
    /// The throughput topic's compression (`compression.type` of its producer): `none`, or
    /// `lz4`, `snappy` or `gzip` (librdkafka's bundled codecs here).
    pub compression: String,
}

/// Runs the benchmark and prints its report.
pub async fn run(opts: SpeedBench) -> anyhow::Result<()> {
    if matches!(
        opts.profile,
        Profile::Mix | Profile::Enriched | Profile::Joined
    ) && opts.format != PayloadFormat::Json
    {
        bail!("the {} profile is JSON only", opts.profile.name());
    }
    let mut config = opts.profile.config()?;
    // State is kept per partition, and the topic needs many partitions only because the
    // embedded broker keeps 5 MiB per partition: the mix's hopping sketches and sessions over
    // them exceed the default budget, which would pause consumption. Throughput is measured
    // here; backpressure has tests of its own.
    config.speed.memory_budget = config
        .speed
        .memory_budget
        .max(tandem_shared::settings::ByteSize(16 << 30));
    // About 170 bytes per event; keep each partition under 4 MiB of the broker's 5 MiB.
    let partitions = (opts.events * 170 / (4 << 20) + 1).max(8);
    // The latency run gets a topic of its own: the broker's fetch path slows down as a
    // partition's log grows, and the throughput backlog should not weigh on the live path.
    let live_partitions = (opts.rate * opts.seconds * 170 / (4 << 20) + 1).max(8);
    let (mut broker, brokers) = spawn_broker(&[
        &format!("bench:{partitions}"),
        &format!("live:{live_partitions}"),
        "bench.dlq:1",
        "bench.late:1",
        // The enriched profile's dimension table (100,000 rows, ~7 MB).
        &format!("{}:4", crate::profile::MERCHANTS_TOPIC),
        // The joined profile's payments: as many partitions as its orders.
        &format!("{}:{partitions}", crate::profile::PAYMENTS_TOPIC),
    ])?;
    println!(
        "# tandem-bench speed --profile {} --compression {} --event-rate {} --key {}: {} events on {partitions} partitions ({} runs), then {} events/s for {}s on {live_partitions} partitions",
        opts.profile.name(),
        opts.compression,
        opts.event_rate,
        opts.keying.name(),
        opts.events,
        opts.runs,
        opts.rate,
        opts.seconds
    );
    let result = async {
        throughput(&config, &brokers, &opts).await?;
        latency(&config, &brokers, &opts).await
    }
    .await;
    let _ = broker.kill();
    let _ = broker.wait();
    result?;
    println!(
        "peak resident memory of this process: {:.0} MiB",
        peak_rss_mib()
    );
    if opts.counted_events > 0 && opts.profile == Profile::Joined {
        println!("instructions: not counted for the joined profile (the replay feeds one topic)");
    } else if opts.counted_events > 0 {
        if instructions::valgrind_available() {
            let out =
                std::env::temp_dir().join(format!("tandem-callgrind-{}.out", std::process::id()));
            let counted = instructions::count(
                opts.profile,
                opts.counted_events,
                opts.event_rate,
                opts.keying,
                &out,
            );
            let _ = std::fs::remove_file(&out);
            let counted = counted?;
            println!(
                "instructions (callgrind, {} events, {:.0} bytes per event): {:.0} per event, {:.1} per byte",
                counted.events,
                counted.bytes as f64 / counted.events.max(1) as f64,
                counted.per_event(),
                counted.per_byte()
            );
        } else {
            println!(
                "instructions: valgrind is not installed (scripts/instructions installs it and counts)"
            );
        }
    }
    super::state::report()
}

fn speed_layer(config: &Config) -> anyhow::Result<SpeedLayer> {
    Ok(SpeedLayer::compile(&config.views, &config.schema)?
        .with_dedup_horizon(config.speed.dedup_horizon))
}

/// Pre-produces the stream, then measures the CPU time of consuming it, `opts.runs` times.
async fn throughput(config: &Config, brokers: &str, opts: &SpeedBench) -> anyhow::Result<()> {
    // Event times in order, advancing at `--event-rate` (see `event_span_ms`).
    let p: ThreadedProducer<DefaultProducerContext> = producer_config(brokers)
        .set("compression.type", &opts.compression)
        .create()
        .with_context(|| format!("a producer with compression `{}`", opts.compression))?;
    let mut rng = StdRng::seed_from_u64(1);
    let span = event_span_ms(opts.events, opts.event_rate);
    // The events start on a minute boundary, so that every run sees the same windows whatever
    // the wall clock (all in the past).
    let first = (chrono::Utc::now().timestamp_millis() - span).div_euclid(60_000) * 60_000;
    let started = Instant::now();
    let mut placed = 0u64;
    let encoder = Encoder::new(opts.format)?;
    // Every payload is encoded before any is sent, so that the producer batches alike whatever
    // the encoder's speed (the embedded broker's fetch cost grows with its batch count).
    let mut payloads = Vec::with_capacity(opts.events as usize);
    // Keys end to end in one string (a `String` each would add about 50 bytes per event to the
    // process's peak memory).
    let mut keys = Keys::default();
    for i in 0..opts.events {
        let ts = first + (i as i64 * span) / opts.events.max(1) as i64;
        let payload = match opts.profile {
            // The de-duplicating profile's events are the simple profile's (distinct ids).
            Profile::Simple | Profile::Dedup => {
                let (user, amount, event_type) = order_values(&mut rng);
                placed += u64::from(event_type == "order_placed");
                match opts.keying {
                    Keying::User => keys.push(&user),
                    Keying::Spread => keys.push(&format!("u{}", i % 10_007)),
                }
                encoder.encode(&Order {
                    seq: i,
                    ts,
                    city: CITIES[(i % 8) as usize],
                    user: &user,
                    amount,
                    event_type,
                })?
            }
            Profile::Mix | Profile::Enriched | Profile::Joined => {
                let event = opts.profile.event(&mut rng, i, ts);
                placed += u64::from(event.placed);
                if opts.profile == Profile::Joined {
                    // An order and its payment meet in one partition number.
                    keys.push(&format!("o-{i}"));
                } else {
                    keys.push(&opts.keying.key(i, &event));
                }
                event.json.into_bytes()
            }
        };
        payloads.push(payload);
    }
    let bytes: usize = payloads.iter().map(Vec::len).sum();
    if opts.profile == Profile::Enriched {
        // The dimension table first: every run's speed layer reads it to its end.
        for (key, row) in crate::profile::merchant_rows() {
            send(&p, crate::profile::MERCHANTS_TOPIC, &key, row.as_bytes());
        }
    }
    for (key, payload) in keys.iter().zip(&payloads) {
        send(&p, "bench", key, payload.as_slice());
    }
    if opts.profile == Profile::Joined {
        for i in 0..opts.events {
            let ts = first + (i as i64 * span) / opts.events.max(1) as i64;
            let (key, json) = crate::profile::payment_json(i, ts);
            send(&p, crate::profile::PAYMENTS_TOPIC, &key, json.as_bytes());
        }
    }
    drop(keys);
    // A sample of the payloads, for the decode-only measurement.
    payloads.truncate(100_000);
    let sample = payloads;
    p.flush(Duration::from_secs(120))?;
    // Its polling thread would count in the consumer's CPU time.
    drop(p);
    println!(
        "produced {} events ({:.0} bytes each) in {:.1}s",
        opts.events,
        bytes as f64 / opts.events.max(1) as f64,
        started.elapsed().as_secs_f64()
    );
    let mut per_cpu_second = Vec::new();
    for run in 1..=opts.runs.max(1) {
        let rate = consume(config, brokers, opts, placed, run).await?;
        per_cpu_second.push(rate);
    }
    per_cpu_second.sort_by(f64::total_cmp);
    println!(
        "throughput ({}, {}): median {:.0} events per CPU-second over {} runs (spread {:.0}–{:.0})",
        opts.profile.name(),
        opts.format,
        percentile(&per_cpu_second, 0.5),
        per_cpu_second.len(),
        per_cpu_second.first().copied().unwrap_or(f64::NAN),
        per_cpu_second.last().copied().unwrap_or(f64::NAN),
    );
    if opts.profile == Profile::Simple {
        payloads::decode_cost(&config.schema, opts.format, &sample)?;
    }
    Ok(())
}

/// One throughput run: a fresh speed layer consumes the whole topic from the start (a consumer
/// group of its own). Returns events per CPU-second.
async fn consume(
    config: &Config,
    brokers: &str,
    opts: &SpeedBench,
    placed: u64,
    run: u32,
) -> anyhow::Result<f64> {
    let speed = speed_layer(config)?;
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let cancel = CancellationToken::new();
    let mut on = on_topic(config, brokers, "bench");
    on.kafka.group_prefix = format!("bench-run{run}");
    let cpu_start = cpu_seconds()?;
    let wall_start = Instant::now();
    let task = tandem_speed_layer::start(
        &speed,
        wiring::speed_config(&on, &store, None),
        Arc::new(payloads::decoder(&config.schema, opts.format)?),
        Arc::new(SystemClock),
        cancel.clone(),
    )?;
    // Events wait for the dimension tables: reading them is measured apart.
    if !speed.tables().is_empty() {
        while !speed.tables_ready() {
            if wall_start.elapsed() > Duration::from_secs(600) {
                bail!("the dimension tables were not read within 10 minutes");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let rows: usize = speed.tables().iter().map(|t| t.len()).sum();
        let bytes: usize = speed.tables().iter().map(|t| t.bytes()).sum();
        println!(
            "run {run}: dimension tables read ({rows} keys, {bytes} bytes: {:.0} per key) in {:.2}s wall, {:.2}s CPU",
            bytes as f64 / rows.max(1) as f64,
            wall_start.elapsed().as_secs_f64(),
            cpu_seconds()? - cpu_start
        );
    }
    let cpu0 = cpu_seconds()?;
    let threads0 = thread_cpu();
    let wall0 = Instant::now();
    // Watch consumed offsets (cheap), not the view, so the measurement is the consumer's work;
    // the joined profile's view, which counts an order once its payment is read too.
    loop {
        let consumed = speed.consumed();
        let done = match opts.profile {
            Profile::Joined => counted(&speed) >= placed,
            _ => consumed >= opts.events as i64,
        };
        if done {
            break;
        }
        if wall0.elapsed() > Duration::from_secs(600) {
            bail!(
                "only {consumed} of {} events consumed after 10 minutes",
                opts.events
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cpu = cpu_seconds()? - cpu0;
    let threads = thread_cpu_delta(&threads0, &thread_cpu());
    let wall = wall0.elapsed().as_secs_f64();
    let seen = counted(&speed);
    if seen != placed {
        bail!("the view counts {seen} orders, {placed} were produced");
    }
    // The joined profile reads an order and a payment per event of the other profiles.
    let read = match opts.profile {
        Profile::Joined => 2 * opts.events,
        _ => opts.events,
    };
    let rate = read as f64 / cpu;
    println!(
        "run {run}: {read} events in {wall:.2}s wall, {cpu:.2}s CPU: {rate:.0} events per CPU-second, {:.0} events/s, state {:.0} MiB",
        read as f64 / wall,
        speed.state_bytes() as f64 / 1_048_576.0
    );
    if opts.profile == Profile::Joined {
        let (rows, bytes) = speed.join_memory();
        println!(
            "run {run}: joined stream buffers {rows} rows in {:.1} MiB ({:.0} bytes per row)",
            bytes as f64 / 1_048_576.0,
            bytes as f64 / rows.max(1) as f64
        );
    }
    let (ids, id_bytes) = speed.dedup_memory();
    if ids > 0 {
        println!(
            "run {run}: de-duplication remembers {ids} ids in {:.0} MiB ({:.0} bytes per id)",
            id_bytes as f64 / 1_048_576.0,
            id_bytes as f64 / ids as f64
        );
    }
    let batches = speed.micro_batches();
    println!(
        "run {run}: {batches} micro-batches ({:.0} events each); CPU by thread: {threads}",
        opts.events as f64 / batches.max(1) as f64
    );
    cancel.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(60), task).await;
    Ok(rate)
}

/// The speed layer consuming `config`'s topic and the HTTP API as `tandem run` serves it, with a
/// batch layer that publishes nothing: queries are answered by the speed layer through the seam.
pub(super) async fn serve_speed(
    config: &Config,
    cancel: &CancellationToken,
) -> anyhow::Result<(
    std::net::SocketAddr,
    SpeedLayer,
    tokio::task::JoinHandle<Result<(), tandem_speed_layer::IngestError>>,
)> {
    let speed = speed_layer(config)?;
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let task = tandem_speed_layer::start(
        &speed,
        wiring::speed_config(config, &store, None),
        Arc::new(EventDecoder::new(Arc::new(config.schema.clone()))),
        Arc::new(SystemClock),
        cancel.clone(),
    )?;
    let catalog = wiring::catalog(config, &store);
    let recompute = wiring::recompute(config, &store, &catalog, Arc::new(SystemClock));
    let scheduler = Scheduler::new(Arc::new(recompute), wiring::scheduler_config(config))?;
    let reconciler = Reconciler::new(Arc::clone(&catalog), speed.clone());
    let state = AppState::new(
        catalog,
        speed.clone(),
        scheduler,
        reconciler,
        None,
        tandem_serving::Readiness::default(),
    );
    let (addr, _server) = process::serve(
        "127.0.0.1:0",
        state,
        &tandem_serving::HttpPolicy::default(),
        cancel.clone(),
    )
    .await?;
    Ok((addr, speed, task))
}

/// Measures produce → visible-over-HTTP latency under a steady load on a fresh topic.
async fn latency(config: &Config, brokers: &str, opts: &SpeedBench) -> anyhow::Result<()> {
    if opts.profile == Profile::Enriched {
        // A probe is found by its own group (`city`); this profile groups by category.
        println!(
            "latency: not measured for the enriched profile (its view is grouped by a joined category, so a probe has no group of its own)"
        );
        return Ok(());
    }
    if opts.profile == Profile::Joined {
        println!("latency: not measured for the joined profile (a probe would need a payment)");
        return Ok(());
    }
    let config = on_topic(config, brokers, "live");
    let cancel = CancellationToken::new();
    let (addr, _speed, task) = serve_speed(&config, &cancel).await?;
    let load = steady_load_of(brokers, "live", opts.rate, opts.profile, opts.keying)?;
    // Probes go out immediately (no lingering); delivery is not awaited, since visibility in
    // the view is what is measured.
    let probes: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "0")
        .create()?;
    let client = reqwest::Client::new();
    let mut latencies = Vec::new();
    // Give the consumer a moment to join and reach the live end of the topic.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let deadline = Instant::now() + Duration::from_secs(opts.seconds);
    let mut n = 0u64;
    while Instant::now() < deadline {
        n += 1;
        let city = format!("probe-{n}");
        let ts = chrono::Utc::now().timestamp_millis();
        let from = ts - ts.rem_euclid(60_000);
        let payload = format!(
            r#"{{"order_id":"p-{n}","ts":{ts},"city":"{city}","user_id":"probe","amount":1.0,"event_type":"order_placed"}}"#
        );
        let url = format!("http://{addr}/v1/views/orders_by_city?city={city}&from={from}");
        let sent_at = Instant::now();
        send(&probes, "live", &city, &payload);
        loop {
            let body: serde_json::Value = client.get(&url).send().await?.json().await?;
            if body["rows"].as_array().is_some_and(|r| !r.is_empty()) {
                latencies.push(sent_at.elapsed().as_secs_f64() * 1000.0);
                break;
            }
            if sent_at.elapsed() > Duration::from_secs(10) {
                bail!("probe {n} not visible after 10s");
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let achieved = load.stop() as f64 / (opts.seconds + 3) as f64;
    if std::env::var_os("TANDEM_BENCH_TRACE").is_some() {
        let trace: Vec<String> = latencies.iter().map(|l| format!("{l:.0}")).collect();
        println!("latencies in order (ms): {}", trace.join(" "));
    }
    latencies.sort_by(f64::total_cmp);
    println!(
        "latency at {achieved:.0} events/s ({} probes): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        latencies.len(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(f64::NAN)
    );
    cancel.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
    Ok(())
}
