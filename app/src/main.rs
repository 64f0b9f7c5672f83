//! The `tandem` binary.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tandem::config::Config;
use tandem::dev::{self, DevOptions};
use tandem::process::{self, RunOptions};
use tandem::{ballista, batch_run};
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
    Scheduler(ballista::SchedulerArgs),
    /// An executor: polls the scheduler for tasks, reads the archive from `[storage]`.
    Executor(ballista::ExecutorArgs),
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
    tandem::init_logging();
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
        Command::Broker { port, topics } => {
            dev::serve_broker(port, &topics, shutdown_signal()).await
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
            running.print_addresses();
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
                BallistaCommand::Scheduler(args) => ballista::scheduler(args, cancel).await,
                BallistaCommand::Executor(args) => ballista::executor(args, cancel).await,
            }
        }
        Command::Dev(options) => {
            dev::run(options, Some(install_metrics()?), shutdown_signal()).await
        }
    }
}
