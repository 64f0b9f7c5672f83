//! `tandem dev`: everything in one process, with an embedded Kafka broker, local storage and an
//! optional demo event generator.
//!
//! ```text
//!  EmbeddedKafka (mock cluster + forwarder on 127.0.0.1:PORT) ◄── demo generator (--demo)
//!        │ bootstrap address into the configuration
//!        ▼
//!  process::start (every layer, storage under --data) ──► HTTP
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio_util::sync::CancellationToken;

use crate::config::{self, Config};
use crate::process::{self, RunOptions};

pub mod broker;
pub mod demo;

pub use broker::EmbeddedKafka;

/// `tandem broker`: the embedded broker alone with `topics` (`NAME:PARTITIONS`), its address
/// printed as `Kafka bootstrap: HOST:PORT`, until `shutdown` resolves.
pub async fn serve_broker(
    port: u16,
    topics: &[String],
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut parsed = Vec::new();
    for t in topics {
        let (name, partitions) = t
            .split_once(':')
            .and_then(|(n, p)| Some((n, p.parse::<i32>().ok()?)))
            .with_context(|| format!("--topic {t}: expected NAME:PARTITIONS"))?;
        parsed.push((name, partitions));
    }
    let stop = CancellationToken::new();
    let kafka = EmbeddedKafka::start(port, &parsed, stop.clone()).await?;
    println!("Kafka bootstrap: {}", kafka.bootstrap());
    shutdown.await;
    stop.cancel();
    drop(kafka);
    Ok(())
}

/// Options of `tandem dev`.
#[derive(Debug, Clone, clap::Args)]
pub struct DevOptions {
    /// Configuration file; the built-in demo configuration without it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Produce realistic demo order events to the topic.
    #[arg(long)]
    pub demo: bool,
    /// Demo events per second.
    #[arg(long, default_value_t = 200)]
    pub demo_rate: u32,
    /// HTTP listen address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http: String,
    /// PostgreSQL protocol listen address (`[sql] postgres` of the configuration, else a free
    /// port on loopback).
    #[arg(long)]
    pub postgres: Option<String>,
    /// Arrow Flight SQL listen address (`[sql] flight` of the configuration, else a free port
    /// on loopback).
    #[arg(long)]
    pub flight: Option<String>,
    /// Port of the embedded Kafka broker's bootstrap address on 127.0.0.1.
    #[arg(long, default_value_t = 9092)]
    pub kafka_port: u16,
    /// Directory for the archive and published views.
    #[arg(long, default_value = "./tandem-data")]
    pub data: PathBuf,
}

const DEV_MARKER: &str = ".tandem-dev";

/// Prepares the data directory of `tandem dev`. The embedded broker starts empty every time, so
/// archive state from an earlier run (whose offsets no longer exist) is cleared.
fn prepare_data_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    if dir.exists() {
        let marked = dir.join(DEV_MARKER).exists();
        let empty = std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .next()
            .is_none();
        if !marked && !empty {
            bail!(
                "{} is not empty and was not created by `tandem dev`; choose another --data directory",
                dir.display()
            );
        }
        let store = dir.join("store");
        if store.exists() {
            std::fs::remove_dir_all(&store)
                .with_context(|| format!("clearing {}", store.display()))?;
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join(DEV_MARKER), "created by tandem dev\n")?;
    let store = dir.join("store");
    std::fs::create_dir_all(&store)?;
    Ok(std::fs::canonicalize(store)?)
}

/// Runs `tandem dev` until `shutdown` completes.
pub async fn run(
    options: DevOptions,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut config = match &options.config {
        Some(path) => Config::load(path)?,
        None => Config::parse(config::DEMO, "built-in demo configuration")?,
    };
    // The SQL doors are on in development: at the given address, the configured one, or a free
    // port on loopback.
    for (given, door) in [
        (&options.postgres, &mut config.sql.postgres),
        (&options.flight, &mut config.sql.flight),
    ] {
        if let Some(addr) = given {
            *door = Some(addr.clone());
        } else if door.is_none() {
            *door = Some("127.0.0.1:0".to_owned());
        }
    }
    let store = prepare_data_dir(&options.data)?;
    config.storage = tandem_store::StorageSettings::at(format!("file://{}", store.display()));
    let stop_broker = CancellationToken::new();
    let mut topics = vec![
        (config.kafka.topic.as_str(), config.kafka.partitions),
        (config.kafka.dead_letter_topic.as_str(), 1),
        (config.kafka.late_topic.as_str(), 1),
    ];
    // Dimension tables' topics, empty until something writes rows to them.
    topics.extend(config.tables.iter().map(|t| (t.topic.as_str(), 1)));
    // Joined streams' second topics: as many partitions as the events'.
    let streams = config.stream_sides();
    topics.extend(
        streams
            .iter()
            .map(|s| (s.topic.as_str(), config.kafka.partitions)),
    );
    let kafka = EmbeddedKafka::start(options.kafka_port, &topics, stop_broker.clone()).await?;
    config.kafka.brokers = kafka.bootstrap();
    println!("Kafka bootstrap: {}", kafka.bootstrap());
    let running = process::start(
        &config,
        RunOptions {
            http: options.http.clone(),
            metrics,
            roles: crate::roles::Roles::default(),
        },
    )
    .await?;
    running.print_addresses();
    let stop_demo = CancellationToken::new();
    let generator = options.demo.then(|| {
        tokio::spawn(demo::run(
            config.kafka.brokers.clone(),
            config.kafka.topic.clone(),
            options.demo_rate,
            stop_demo.clone(),
        ))
    });
    if let Some(view) = config.views.first() {
        println!(
            "Try: curl -s 'http://{}/v1/views/{}'",
            running.http, view.name
        );
    }
    let fatal = running.fatal();
    let failed = tokio::select! {
        _ = shutdown => None,
        reason = fatal.wait() => Some(reason),
    };
    tracing::info!("shutting down");
    stop_demo.cancel();
    if let Some(g) = generator {
        let _ = tokio::time::timeout(Duration::from_secs(10), g).await;
    }
    running.shutdown().await?;
    stop_broker.cancel();
    drop(kafka);
    match failed {
        Some(reason) => anyhow::bail!("stopped because a layer task kept failing: {reason}"),
        None => Ok(()),
    }
}
