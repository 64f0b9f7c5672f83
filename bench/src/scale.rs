//! `tandem-bench scale`: Tandem split over processes on this machine.
//!
//! ```text
//!  tandem broker (child) ◄── N generated orders, produced before any worker starts
//!  throughput, W = 1 and 2:  W × `tandem run --role speed,serve` (children, one consumer group)
//!                            ─► until the view counts every order: events per CPU-second of the
//!                               workers (user + system time from /proc) and events per second
//!  fan-out: 3 workers + `tandem run --role serve` ─► sequential GET /v1/views/… to the serving
//!           process, which asks all three workers (Arrow IPC over HTTP) and merges: p50/p99
//! ```
//!
//! Every process is this binary (build it in release). The workers share the machine's cores
//! with each other and with the broker, so two workers on two cores do not double the rate of
//! one: the per-CPU-second figure is the one that extrapolates (see docs/scaling.md).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rdkafka::producer::Producer;

use tandem_store::StorageSettings;
use tandem_store::members::Membership;

use super::harness::spawn_broker;
use super::measure::percentile;
use super::order_values;
use super::producers::{producer, send};
use super::{CITIES, ORDERS_BY_CITY, order_json};

/// Options of `tandem-bench scale`.
#[derive(Debug, Clone)]
pub struct ScaleBench {
    pub events: u64,
    /// Sequential queries of the fan-out measurement.
    pub queries: usize,
    /// Working directory for the stores (emptied first).
    pub dir: PathBuf,
}

/// One `tandem run` child process.
struct Worker {
    child: Child,
    http: String,
}

impl Worker {
    fn start(config: &Path, roles: &str) -> anyhow::Result<Self> {
        let mut child = Command::new(super::tandem_exe()?)
            .args(["run", "--config"])
            .arg(config)
            .args(["--http", "127.0.0.1:0", "--role", roles])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting tandem run")?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                bail!("tandem run exited before serving HTTP");
            }
            if let Some(http) = line.trim().strip_prefix("HTTP: ") {
                return Ok(Self {
                    child,
                    http: http.to_owned(),
                });
            }
        }
    }

    /// User + system CPU seconds of the process so far.
    fn cpu_seconds(&self) -> anyhow::Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))?;
        let rest = stat.rsplit_once(')').map(|(_, r)| r).context("stat")?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| -> anyhow::Result<f64> {
            Ok(fields.get(i).context("short stat")?.parse::<f64>()?)
        };
        Ok((ticks(11)? + ticks(12)?) / 100.0)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Orders the view counts and whether the answer is whole (no partition missing).
async fn counted(client: &reqwest::Client, http: &str) -> anyhow::Result<(u64, bool)> {
    let body: serde_json::Value = client
        .get(format!("{http}/v1/views/orders_by_city"))
        .query(&[("from", "2000-01-01T00:00:00Z"), ("limit", "10000")])
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let rows = body["rows"].as_array().context("rows")?;
    let n = rows
        .iter()
        .filter_map(|r| r["values"]["orders"].as_f64())
        .sum::<f64>() as u64;
    Ok((n, body.get("missing_partitions").is_none()))
}

fn config_text(brokers: &str, group: &str, store: &Path) -> String {
    format!(
        r#"
[kafka]
brokers = "{brokers}"
topic = "{group}"
group_prefix = "{group}"
dead_letter_topic = "scale.dlq"
late_topic = "scale.late"
idle_timeout = "5s"

[storage]
url = "file://{store}"

[schema]
time_field = "ts"
fields = {{ order_id = "string", city = "string", user_id = "string", amount = "float64", event_type = "string" }}
{ORDERS_BY_CITY}
"#,
        store = store.display()
    )
}

/// Runs the benchmark and prints its report.
pub async fn run(opts: ScaleBench) -> anyhow::Result<()> {
    let partitions = (opts.events * 170 / (4 << 20) + 1).max(8);
    let topics: Vec<String> = ["scale-1w", "scale-2w", "scale-fanout"]
        .iter()
        .map(|t| format!("{t}:{partitions}"))
        .chain(["scale.dlq:1".to_owned(), "scale.late:1".to_owned()])
        .collect();
    let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
    let (mut broker, brokers) = spawn_broker(&topics)?;
    println!(
        "# tandem-bench scale: {} events on {partitions} partitions per run",
        opts.events
    );
    let result = async {
        if opts.dir.exists() {
            std::fs::remove_dir_all(&opts.dir)?;
        }
        std::fs::create_dir_all(&opts.dir)?;
        let dir = std::fs::canonicalize(&opts.dir)?;
        let client = reqwest::Client::new();
        let payloads = Payloads::new(opts.events);
        for workers in [1usize, 2] {
            let group = format!("scale-{workers}w");
            let (running, cpu, wall) = start_and_consume(
                &client, &brokers, &dir, &group, workers, partitions, &payloads,
            )
            .await?;
            drop(running);
            println!(
                "throughput with {workers} speed worker(s): {} events, {cpu:.2}s CPU over the \
                 workers: {:.0} events per CPU-second; {:.0} events/s wall from the first send \
                 to every event counted ({wall:.2}s, the producer on the same cores)",
                opts.events,
                opts.events as f64 / cpu,
                opts.events as f64 / wall
            );
        }
        let (workers, ..) = start_and_consume(
            &client,
            &brokers,
            &dir,
            "scale-fanout",
            3,
            partitions,
            &payloads,
        )
        .await?;
        fan_out(&client, &dir, &workers, payloads.placed, opts.queries).await
    }
    .await;
    let _ = broker.kill();
    let _ = broker.wait();
    result
}

/// Generated orders over the last 30 minutes, encoded before any is sent.
struct Payloads {
    json: Vec<String>,
    /// Orders the view counts.
    placed: u64,
}

impl Payloads {
    fn new(events: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(3);
        let now = chrono::Utc::now().timestamp_millis();
        let span = 30 * 60_000;
        let mut placed = 0;
        let json = (0..events)
            .map(|i| {
                let ts = now - span + (i as i64 * span) / events.max(1) as i64;
                let (user, amount, event_type) = order_values(&mut rng);
                placed += u64::from(event_type == "order_placed");
                order_json(i, ts, CITIES[(i % 8) as usize], &user, amount, event_type)
            })
            .collect();
        Self { json, placed }
    }

    fn send(&self, brokers: &str, topic: &str) -> anyhow::Result<()> {
        let p = producer(brokers)?;
        for (i, payload) in self.json.iter().enumerate() {
            send(&p, topic, &format!("u{}", i % 10_007), payload);
        }
        p.flush(Duration::from_secs(120))?;
        Ok(())
    }
}

/// Starts `n` workers in group `group` on topic `group`, waits until they own every partition,
/// then sends the events and waits until a worker answers all of them, whole. Returns the
/// workers, their CPU seconds from the first send, and the wall seconds.
async fn start_and_consume(
    client: &reqwest::Client,
    brokers: &str,
    dir: &Path,
    group: &str,
    n: usize,
    partitions: u64,
    payloads: &Payloads,
) -> anyhow::Result<(Vec<Worker>, f64, f64)> {
    let store = dir.join(group);
    let config = dir.join(format!("{group}.toml"));
    std::fs::write(&config, config_text(brokers, group, &store))?;
    let workers = (0..n)
        .map(|_| Worker::start(&config, "speed,serve"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let membership = Membership::new(
        tandem_store::open(&StorageSettings::at(format!("file://{}", store.display())))?,
        &format!("{group}-speed"),
    );
    // Settled: every worker owns partitions, all of them, twice in a row a second apart.
    let started = Instant::now();
    let mut last = None;
    loop {
        let now = chrono::Utc::now().timestamp_millis();
        let members = membership.live(now, Duration::from_secs(6)).await?;
        let mut owned: Vec<Vec<i32>> = members
            .iter()
            .map(|m| m.owned.iter().map(|o| o.partition).collect())
            .collect();
        owned.sort();
        let total: usize = owned.iter().map(Vec::len).sum();
        let settled = owned.len() == n && total as u64 == partitions;
        if settled && last.as_ref() == Some(&owned) {
            break;
        }
        last = settled.then_some(owned);
        if started.elapsed() > Duration::from_secs(120) {
            bail!("{n} workers did not settle on the partitions within 2 minutes");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let cpu = |workers: &[Worker]| -> anyhow::Result<f64> {
        Ok(workers
            .iter()
            .map(Worker::cpu_seconds)
            .collect::<anyhow::Result<Vec<_>>>()?
            .iter()
            .sum())
    };
    let cpu0 = cpu(&workers)?;
    let wall0 = Instant::now();
    let sending = {
        let brokers = brokers.to_owned();
        let group = group.to_owned();
        let json = payloads.json.clone();
        tokio::task::spawn_blocking(move || Payloads { json, placed: 0 }.send(&brokers, &group))
    };
    loop {
        if let Ok((seen, whole)) = counted(client, &workers[0].http).await {
            if seen == payloads.placed && whole {
                break;
            }
            if seen > payloads.placed {
                bail!("{seen} orders counted, {} produced", payloads.placed);
            }
        }
        if wall0.elapsed() > Duration::from_secs(900) {
            bail!("not every order counted after 15 minutes");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let wall = wall0.elapsed().as_secs_f64();
    let used = cpu(&workers)? - cpu0;
    sending.await??;
    Ok((workers, used, wall))
}

async fn fan_out(
    client: &reqwest::Client,
    dir: &Path,
    workers: &[Worker],
    placed: u64,
    queries: usize,
) -> anyhow::Result<()> {
    let group = "scale-fanout";
    let serving = Worker::start(&dir.join(format!("{group}.toml")), "serve")?;
    // The serving process reads the member list in the background: wait for a whole answer.
    let deadline = Instant::now() + Duration::from_secs(30);
    while counted(client, &serving.http).await.ok() != Some((placed, true)) {
        if Instant::now() > deadline {
            bail!("the serving process never answered for every partition");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut millis = Vec::with_capacity(queries);
    for _ in 0..queries {
        let t = Instant::now();
        let (seen, whole) = counted(client, &serving.http).await?;
        millis.push(t.elapsed().as_secs_f64() * 1e3);
        if seen != placed || !whole {
            bail!("a fan-out answer counted {seen} of {placed} orders (whole: {whole})");
        }
    }
    millis.sort_by(f64::total_cmp);
    // The parts of it: one worker's partials over HTTP, and the same query answered by a
    // worker (its own partitions in place, the others' over HTTP).
    let mut direct = Vec::with_capacity(queries);
    let mut bytes = 0;
    for _ in 0..queries {
        let t = Instant::now();
        let body = client
            .get(format!(
                "{}/v1/internal/partials/orders_by_city",
                workers[0].http
            ))
            .send()
            .await?
            .error_for_status()?
            .bytes()
            .await?;
        direct.push(t.elapsed().as_secs_f64() * 1e3);
        bytes = body.len();
    }
    direct.sort_by(f64::total_cmp);
    let mut on_worker = Vec::with_capacity(queries);
    for _ in 0..queries {
        let t = Instant::now();
        counted(client, &workers[0].http).await?;
        on_worker.push(t.elapsed().as_secs_f64() * 1e3);
    }
    on_worker.sort_by(f64::total_cmp);
    println!(
        "one worker's partials over HTTP ({bytes} bytes of Arrow IPC): p50 {:.2} ms, p99 {:.2} ms; \
         the query asked of a worker: p50 {:.2} ms, p99 {:.2} ms",
        percentile(&direct, 0.5),
        percentile(&direct, 0.99),
        percentile(&on_worker, 0.5),
        percentile(&on_worker, 0.99),
    );
    let rows = 8 * 30;
    println!(
        "fan-out query (serving process asking {} workers, about {rows} rows): {queries} queries, \
         p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        workers.len(),
        percentile(&millis, 0.5),
        percentile(&millis, 0.99),
        millis.last().copied().unwrap_or(f64::NAN)
    );
    Ok(())
}
