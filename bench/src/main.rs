//! The `tandem-bench` binary: Tandem's benchmarks (BENCHMARKS.md says what each one measured).

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use tandem::dev;
use tandem_shared::event::PayloadFormat;

#[derive(Debug, Parser)]
#[command(
    name = "tandem-bench",
    version,
    about = "Tandem's benchmarks: the layers measured on generated order events"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
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
        /// Workload: simple (one view, 8 groups), mix (five views: hopping with distinct
        /// counts and percentiles, sessions per user, 1,000 groups per window), dedup
        /// (simple with an id field and a 10-minute de-duplication horizon), enriched (simple
        /// joined with a 100,000-row dimension table) or joined (orders joined with their
        /// payments within 15 minutes).
        #[arg(long, default_value = "simple", value_parser = tandem_bench::profile::Profile::parse)]
        profile: tandem_bench::profile::Profile,
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
        #[arg(long, default_value = "user", value_parser = tandem_bench::profile::Keying::parse)]
        key: tandem_bench::profile::Keying,
    },
    /// The speed layer's consume work without Kafka, once (what callgrind counts; see
    /// scripts/instructions).
    #[command(hide = true)]
    SpeedCore {
        #[arg(long, default_value = "simple", value_parser = tandem_bench::profile::Profile::parse)]
        profile: tandem_bench::profile::Profile,
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
        #[arg(long, default_value = "user", value_parser = tandem_bench::profile::Keying::parse)]
        key: tandem_bench::profile::Keying,
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
    /// The SQL benchmark's queries through `POST /v1/sql` and the PostgreSQL protocol
    /// (psycopg), and a large `events` scan through Flight SQL (ADBC) and JSON over HTTP.
    Doors {
        /// Events to import into the archive.
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        /// Working directory for the archive.
        #[arg(long, default_value = "./tandem-bench-doors")]
        dir: PathBuf,
        /// Runs of each query.
        #[arg(long, default_value_t = 50)]
        runs: usize,
        /// Python interpreter with psycopg and the ADBC Flight SQL driver.
        #[arg(long, default_value = "python3")]
        python: String,
        /// The clients' side of the comparison.
        #[arg(long, default_value = "scripts/doors_bench.py")]
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
    /// Internal: the load process of `tandem-bench load`.
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
    /// Internal: the embedded Kafka broker in a child process (its CPU is not the speed layer's).
    #[command(hide = true)]
    Broker {
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// Topics to create, as NAME:PARTITIONS (repeatable).
        #[arg(long = "topic", value_name = "NAME:PARTITIONS")]
        topics: Vec<String>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tandem::init_logging();
    match Cli::parse().command {
        Command::Alerts {
            rate,
            seconds,
            spike_factor,
            spike_seconds,
            partitions,
            brokers,
        } => {
            tandem_bench::alerts::run(tandem_bench::alerts::AlertsBench {
                rate,
                seconds,
                spike_factor: spike_factor.max(1),
                spike_seconds,
                partitions,
                brokers,
            })
            .await
        }
        Command::Speed {
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
        } => {
            tandem_bench::speed::run(tandem_bench::speed::SpeedBench {
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
        Command::SpeedCore {
            profile,
            events,
            batch,
            partitions,
            event_rate,
            key,
        } => tandem_bench::instructions::core(tandem_bench::instructions::CoreBench {
            profile,
            events,
            batch,
            partitions,
            event_rate,
            keying: key,
        }),
        Command::SpeedState {
            aggregate,
            per_group,
        } => tandem_bench::state::measure(&tandem_bench::state::StateBench {
            aggregate,
            per_group,
        }),
        Command::Batch {
            events,
            dir,
            python,
            script,
        } => {
            tandem_bench::batch::run(tandem_bench::batch::BatchBench {
                events,
                dir,
                python,
                script,
            })
            .await
        }
        Command::Doors {
            events,
            dir,
            runs,
            python,
            script,
        } => {
            tandem_bench::doors::run(tandem_bench::doors::DoorsBench {
                events,
                dir,
                runs,
                python,
                script,
            })
            .await
        }
        Command::History {
            days,
            dir,
            events_per_minute,
            queries,
            serve_only,
            publish_only,
            cache_mib,
        } => {
            tandem_bench::history::run(tandem_bench::history::HistoryBench {
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
        Command::Scale {
            events,
            queries,
            dir,
        } => {
            tandem_bench::scale::run(tandem_bench::scale::ScaleBench {
                events,
                queries,
                dir,
            })
            .await
        }
        Command::Load {
            rate,
            queries,
            seconds,
            connections,
        } => {
            tandem_bench::load::run(tandem_bench::load::LoadBench {
                rate,
                queries,
                seconds,
                connections,
            })
            .await
        }
        Command::QueryLoad {
            url,
            queries,
            seconds,
            connections,
        } => {
            tandem_bench::load::query_load(tandem_bench::load::QueryLoad {
                url,
                queries,
                seconds,
                connections,
            })
            .await
        }
        Command::Broker { port, topics } => {
            dev::serve_broker(port, &topics, async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
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
