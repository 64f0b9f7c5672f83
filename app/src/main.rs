//! The `tandem` binary.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tandem::config::Config;
use tandem::dev::{self, DevOptions, EmbeddedKafka};
use tandem::process::{self, RunOptions};
use tandem::{ballista_cluster, batch_run, bench};
use tandem_shared::event::PayloadFormat;
use tandem_shared::time::EventTime;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    name = "tandem",
    version,
    about = "Fresh and exact windowed analytics over Kafka"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Everything in one process, with an embedded Kafka broker and local storage.
    Dev(DevOptions),
    /// All layers against the configured Kafka brokers and storage.
    Run {
        #[arg(long)]
        config: PathBuf,
        #[arg(long, default_value = "127.0.0.1:8080")]
        http: String,
        /// What this process runs, comma-separated: speed, archive, batch, serve. Processes
        /// with split roles find each other through the object store ([cluster] settings).
        #[arg(long, value_parser = tandem::roles::Roles::parse, default_value = "speed,archive,batch,serve")]
        role: tandem::roles::Roles,
        /// This process's member name in a cluster (overrides cluster.instance).
        #[arg(long)]
        instance: Option<String>,
        /// Where the other processes reach this one's API (overrides cluster.advertise).
        #[arg(long)]
        advertise: Option<String>,
    },
    /// Runs one read-only SQL query against the store: the views (as published by the batch
    /// layer) and `events` (the archive).
    Sql {
        #[arg(long)]
        config: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: tandem::sql::Format,
        /// The query, e.g. "SELECT city, sum(orders) FROM orders_by_city GROUP BY city".
        query: String,
    },
    /// Validates a configuration file and exits.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// Batch-layer commands.
    Batch {
        #[command(subcommand)]
        what: BatchCommand,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
    /// The processes of a remote Ballista cluster for recompute jobs (cargo feature `ballista`):
    /// Ballista's scheduler and executor with Tandem's store and sketch functions.
    Ballista {
        #[command(subcommand)]
        what: BallistaCommand,
    },
    /// Only the embedded Kafka broker (librdkafka's mock cluster), for tests and experiments
    /// that restart Tandem while keeping the topic.
    Broker {
        #[arg(long, default_value_t = 9092)]
        port: u16,
        /// Topics to create, as NAME:PARTITIONS (repeatable).
        #[arg(long = "topic", value_name = "NAME:PARTITIONS")]
        topics: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum BallistaCommand {
    /// A scheduler (`[batch] ballista_url = "df://HOST:PORT"` names it).
    Scheduler(ballista_cluster::SchedulerArgs),
    /// An executor: polls the scheduler for tasks, reads the archive from `[storage]`.
    Executor(ballista_cluster::ExecutorArgs),
}

#[derive(Debug, Subcommand)]
enum BatchCommand {
    /// Recomputes a view (or all views) from the archive now, with a progress bar.
    Run {
        #[arg(long)]
        config: PathBuf,
        /// The view; all views without it.
        #[arg(long)]
        view: Option<String>,
        /// First window start (RFC 3339 or epoch ms); the first archived event without it.
        #[arg(long, value_parser = parse_time)]
        from: Option<EventTime>,
        /// End of the window starts (exclusive); the last ready window without it.
        #[arg(long, value_parser = parse_time)]
        to: Option<EventTime>,
    },
}

fn parse_time(text: &str) -> Result<EventTime, String> {
    EventTime::parse(text).map_err(|e| e.to_string())
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Speed-layer throughput (events per CPU-second) and event-to-queryable latency.
    Speed {
        /// Events for the throughput run.
        #[arg(long, default_value_t = 2_000_000)]
        events: u64,
        /// Events per second during the latency run.
        #[arg(long, default_value_t = 50_000)]
        rate: u64,
        /// Length of the latency run.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Payload format of the throughput run: json, avro or protobuf (Confluent-framed).
        #[arg(long, default_value = "json", value_parser = parse_format)]
        format: PayloadFormat,
        /// Workload: simple (one view, 8 groups) or mix (five views: hopping with distinct
        /// counts and percentiles, sessions per user, 1,000 groups per window).
        #[arg(long, default_value = "simple", value_parser = tandem::bench::profile::Profile::parse)]
        profile: tandem::bench::profile::Profile,
        /// Throughput runs over the same events; the median is reported.
        #[arg(long, default_value_t = 5)]
        runs: u32,
        /// Events of the instruction count under callgrind (0: none).
        #[arg(long, default_value_t = 200_000)]
        counted_events: u64,
        /// Compression of the throughput topic's batches: none, lz4, snappy or gzip.
        #[arg(long, default_value = "none", value_parser = ["none", "lz4", "snappy", "gzip"])]
        compression: String,
        /// Events per second of event time: the events' timestamps advance at this rate (how
        /// many events each window and group gets, as in a live stream at that rate).
        #[arg(long, default_value_t = 50_000)]
        event_rate: u64,
        /// How the producers key events: user (the event's user_id) or spread (a key unrelated
        /// to the event, so each user's events reach every partition).
        #[arg(long, default_value = "user", value_parser = tandem::bench::profile::Keying::parse)]
        key: tandem::bench::profile::Keying,
    },
    /// The speed layer's consume work without Kafka, once (what callgrind counts; see
    /// scripts/instructions).
    #[command(hide = true)]
    SpeedCore {
        #[arg(long, default_value = "simple", value_parser = tandem::bench::profile::Profile::parse)]
        profile: tandem::bench::profile::Profile,
        #[arg(long, default_value_t = 200_000)]
        events: u64,
        /// Payloads per micro-batch (of all partitions).
        #[arg(long, default_value_t = 8_000)]
        batch: usize,
        /// Partitions the payloads are spread over (state is kept per partition).
        #[arg(long, default_value_t = 8)]
        partitions: u32,
        /// Events per second of event time.
        #[arg(long, default_value_t = 50_000)]
        event_rate: u64,
        /// How events are keyed to partitions: user or spread.
        #[arg(long, default_value = "user", value_parser = tandem::bench::profile::Keying::parse)]
        key: tandem::bench::profile::Keying,
    },
    /// State bytes per group of one aggregate (one measurement of `bench speed`).
    #[command(hide = true)]
    SpeedState {
        #[arg(long)]
        aggregate: String,
        #[arg(long, default_value_t = 1)]
        per_group: u64,
    },
    /// Produce → alert-readable latency of an `[[outputs]]` rule, at a steady rate with a spike,
    /// and peak resident memory.
    Alerts {
        /// Events per second outside the spike.
        #[arg(long, default_value_t = 50_000)]
        rate: u64,
        /// Seconds at the steady rate (half before the spike, half after).
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// The spike's rate as a multiple of `--rate`.
        #[arg(long, default_value_t = 10)]
        spike_factor: u64,
        #[arg(long, default_value_t = 10)]
        spike_seconds: u64,
        /// Partitions of the input topic. The embedded broker keeps the last 5 MiB of each
        /// partition and finds a fetch offset by walking a partition's batches.
        #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(i32).range(1..=100_000))]
        partitions: i32,
        /// Kafka bootstrap servers of a broker of yours, instead of the embedded one; the bench
        /// creates its topics there (`live`, `alerts`, `live.dlq`, `live.late`).
        #[arg(long)]
        brokers: Option<String>,
    },
    /// Tandem split over processes: speed throughput with one and two workers, and the
    /// latency of a query a serving process answers by asking three workers.
    Scale {
        /// Orders produced before the workers start.
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        /// Sequential queries of the fan-out measurement.
        #[arg(long, default_value_t = 1_000)]
        queries: usize,
        /// Working directory for the stores (emptied first).
        #[arg(long, default_value = "./tandem-bench-scale")]
        dir: PathBuf,
    },
    /// Batch-layer recompute throughput next to DuckDB over the same Parquet files.
    Batch {
        /// Events to import into the archive.
        #[arg(long, default_value_t = 5_000_000)]
        events: u64,
        /// Working directory for the archive.
        #[arg(long, default_value = "./tandem-bench")]
        dir: PathBuf,
        /// Python interpreter with the duckdb package.
        #[arg(long, default_value = "python3")]
        python: String,
        /// The DuckDB side of the comparison.
        #[arg(long, default_value = "scripts/duckdb_bench.py")]
        script: PathBuf,
    },
    /// Cost over history: days of archive and minute-by-minute publications, then serving
    /// memory, the time to publish one more job and one-hour query latency, day 1 vs day N.
    History {
        #[arg(long, default_value_t = 30)]
        days: u32,
        /// Working directory for the store.
        #[arg(long, default_value = "./tandem-bench-history")]
        dir: PathBuf,
        #[arg(long, default_value_t = 100)]
        events_per_minute: u32,
        /// One-hour queries per measurement.
        #[arg(long, default_value_t = 2000)]
        queries: usize,
        /// Internal: the serving process the benchmark measures.
        #[arg(long, hide = true)]
        serve_only: bool,
        /// On the store a finished run left in `--dir`: time five more jobs of its last day
        /// (the publication figure), without synthesizing anything.
        #[arg(long)]
        publish_only: bool,
        /// The serving process's segment cache bound in MiB (default: `serving.cache_bytes`).
        #[arg(long)]
        cache_mib: Option<u64>,
    },
    /// View queries from a separate load process while the speed layer ingests: query latency,
    /// and ingestion with and without the query load.
    Load {
        /// Events per second produced throughout.
        #[arg(long, default_value_t = 50_000)]
        rate: u64,
        /// View queries per second in the loaded phase.
        #[arg(long, default_value_t = 5_000)]
        queries: u64,
        /// Length of each phase (idle, then loaded).
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Concurrent connections of the load process.
        #[arg(long, default_value_t = 32)]
        connections: usize,
    },
    /// Internal: the load process of `tandem bench load`.
    #[command(hide = true)]
    QueryLoad {
        #[arg(long)]
        url: String,
        #[arg(long)]
        queries: u64,
        #[arg(long)]
        seconds: u64,
        #[arg(long)]
        connections: usize,
    },
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

fn install_metrics() -> anyhow::Result<metrics_exporter_prometheus::PrometheusHandle> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .context("installing the metrics recorder")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,librdkafka=warn,rdkafka=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Sql {
            config,
            format,
            query,
        } => {
            let config = Config::load(&config)?;
            tandem::sql::run(&config, &query, format).await
        }
        Command::Check { config } => {
            let config = Config::load(&config)?;
            // Output rules are SQL over a view's row: compiled here as at start-up.
            tandem::outputs::compile(&config).await?;
            println!("configuration is valid: {} view(s)", config.views.len());
            Ok(())
        }
        Command::Batch {
            what:
                BatchCommand::Run {
                    config,
                    view,
                    from,
                    to,
                },
        } => {
            let config = Config::load(&config)?;
            batch_run::run(&config, view.as_deref(), from, to).await
        }
        Command::Bench {
            what:
                BenchCommand::Alerts {
                    rate,
                    seconds,
                    spike_factor,
                    spike_seconds,
                    partitions,
                    brokers,
                },
        } => {
            bench::alerts::run(bench::alerts::AlertsBench {
                rate,
                seconds,
                spike_factor: spike_factor.max(1),
                spike_seconds,
                partitions,
                brokers,
            })
            .await
        }
        Command::Bench {
            what:
                BenchCommand::Speed {
                    events,
                    rate,
                    seconds,
                    format,
                    profile,
                    runs,
                    counted_events,
                    compression,
                    event_rate,
                    key,
                },
        } => {
            bench::speed::run(bench::speed::SpeedBench {
                profile,
                events,
                runs,
                counted_events,
                compression,
                event_rate,
                keying: key,
                format,
                rate,
                seconds,
            })
            .await
        }
        Command::Bench {
            what:
                BenchCommand::SpeedCore {
                    profile,
                    events,
                    batch,
                    partitions,
                    event_rate,
                    key,
                },
        } => bench::instructions::core(bench::instructions::CoreBench {
            profile,
            events,
            batch,
            partitions,
            event_rate,
            keying: key,
        }),
        Command::Bench {
            what:
                BenchCommand::SpeedState {
                    aggregate,
                    per_group,
                },
        } => bench::state::measure(&bench::state::StateBench {
            aggregate,
            per_group,
        }),
        Command::Bench {
            what:
                BenchCommand::Batch {
                    events,
                    dir,
                    python,
                    script,
                },
        } => {
            bench::batch::run(bench::batch::BatchBench {
                events,
                dir,
                python,
                script,
            })
            .await
        }
        Command::Bench {
            what:
                BenchCommand::History {
                    days,
                    dir,
                    events_per_minute,
                    queries,
                    serve_only,
                    publish_only,
                    cache_mib,
                },
        } => {
            bench::history::run(bench::history::HistoryBench {
                days,
                dir,
                events_per_minute,
                queries,
                serve_only,
                publish_only,
                cache_mib,
            })
            .await
        }
        Command::Bench {
            what:
                BenchCommand::Scale {
                    events,
                    queries,
                    dir,
                },
        } => {
            bench::scale::run(bench::scale::ScaleBench {
                events,
                queries,
                dir,
            })
            .await
        }
        Command::Bench {
            what:
                BenchCommand::Load {
                    rate,
                    queries,
                    seconds,
                    connections,
                },
        } => {
            bench::load::run(bench::load::LoadBench {
                rate,
                queries,
                seconds,
                connections,
            })
            .await
        }
        Command::Bench {
            what:
                BenchCommand::QueryLoad {
                    url,
                    queries,
                    seconds,
                    connections,
                },
        } => {
            bench::load::query_load(bench::load::QueryLoad {
                url,
                queries,
                seconds,
                connections,
            })
            .await
        }
        Command::Broker { port, topics } => {
            let mut parsed = Vec::new();
            for t in &topics {
                let (name, partitions) = t
                    .split_once(':')
                    .and_then(|(n, p)| Some((n, p.parse::<i32>().ok()?)))
                    .with_context(|| format!("--topic {t}: expected NAME:PARTITIONS"))?;
                parsed.push((name, partitions));
            }
            let stop = CancellationToken::new();
            let kafka = EmbeddedKafka::start(port, &parsed, stop.clone()).await?;
            println!("Kafka bootstrap: {}", kafka.bootstrap());
            shutdown_signal().await;
            stop.cancel();
            drop(kafka);
            Ok(())
        }
        Command::Run {
            config,
            http,
            role,
            instance,
            advertise,
        } => {
            let mut config = Config::load(&config)?;
            if let Some(id) = &instance {
                tandem::config::check_instance(id)
                    .map_err(|e| anyhow::anyhow!("--instance {e}"))?;
            }
            if instance.is_some() || advertise.is_some() {
                let cluster = config.cluster.get_or_insert_with(Default::default);
                cluster.instance = instance.or(cluster.instance.take());
                cluster.advertise = advertise.or(cluster.advertise.take());
            }
            let running = process::start(
                &config,
                RunOptions {
                    http,
                    metrics: Some(install_metrics()?),
                    roles: role,
                },
            )
            .await?;
            println!("HTTP: http://{}", running.http);
            let fatal = running.fatal();
            let failed = tokio::select! {
                _ = shutdown_signal() => None,
                reason = fatal.wait() => Some(reason),
            };
            tracing::info!("shutting down");
            running.shutdown().await?;
            match failed {
                Some(reason) => {
                    anyhow::bail!("stopped because a layer task kept failing: {reason}")
                }
                None => Ok(()),
            }
        }
        Command::Ballista { what } => {
            let cancel = CancellationToken::new();
            let stop = cancel.clone();
            tokio::spawn(async move {
                shutdown_signal().await;
                stop.cancel();
            });
            match what {
                BallistaCommand::Scheduler(args) => ballista_cluster::scheduler(args, cancel).await,
                BallistaCommand::Executor(args) => ballista_cluster::executor(args, cancel).await,
            }
        }
        Command::Dev(options) => {
            dev::run(options, Some(install_metrics()?), shutdown_signal()).await
        }
    }
}

fn parse_format(text: &str) -> Result<PayloadFormat, String> {
    match text {
        "json" => Ok(PayloadFormat::Json),
        "avro" => Ok(PayloadFormat::Avro),
        "protobuf" => Ok(PayloadFormat::Protobuf),
        other => Err(format!("unknown format `{other}` (json, avro or protobuf)")),
    }
}
