//! `tandem ballista scheduler` and `tandem ballista executor`: the processes of a remote
//! Ballista cluster that recompute jobs (`[batch] engine = "ballista"`, `ballista_url`) run on.
//!
//! ```text
//!  --config tandem.toml ──► [storage] ──► object store ──► scheduler | executor
//!                                          (tandem_batch_layer::recompute::ballista)
//! ```
//!
//! Both read the same configuration file as the batch process, so the scheduler plans and the
//! executors read the very archive the batch process archived. A build without the `ballista`
//! cargo feature answers these commands with an error saying so.
//!
//! Ballista has no authentication: whoever reaches a scheduler can run plans that read the
//! store. Both listen on loopback by default, and refuse another address unless
//! `--allow-unauthenticated` says the network around them is trusted (a private network,
//! a service mesh with its own authentication).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

/// `tandem ballista scheduler`.
#[derive(Debug, Clone, Args)]
pub struct SchedulerArgs {
    #[arg(long)]
    pub config: PathBuf,
    /// Address to listen on (loopback unless --allow-unauthenticated).
    #[arg(long, default_value = "127.0.0.1:50050")]
    pub bind: SocketAddr,
    /// The host name executors and batch processes reach this scheduler by.
    #[arg(long, default_value = "localhost")]
    pub external_host: String,
    /// Listen beyond loopback although Ballista authenticates nobody.
    #[arg(long)]
    pub allow_unauthenticated: bool,
}

/// `tandem ballista executor`.
#[derive(Debug, Clone, Args)]
pub struct ExecutorArgs {
    #[arg(long)]
    pub config: PathBuf,
    /// The scheduler, as HOST:PORT.
    #[arg(long, value_parser = parse_host_port, default_value = "localhost:50050")]
    pub scheduler: (String, u16),
    /// Host to listen on for result fetches (Arrow Flight; loopback unless
    /// --allow-unauthenticated).
    #[arg(long, default_value = "127.0.0.1")]
    pub bind_host: String,
    /// Listen beyond loopback although Ballista authenticates nobody.
    #[arg(long)]
    pub allow_unauthenticated: bool,
    /// The host name batch processes and other executors fetch results from.
    #[arg(long, default_value = "localhost")]
    pub external_host: String,
    /// The Arrow Flight port.
    #[arg(long, default_value_t = 50051)]
    pub port: u16,
    /// Tasks run at once (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub concurrent_tasks: usize,
    /// Shuffle and spill files (a temporary directory without it).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Seconds to keep retrying the first connection to the scheduler.
    #[arg(long, default_value_t = 30)]
    pub connect_timeout: u16,
}

/// Refuses a non-loopback address unless `allowed` (see the module docs).
pub fn check_bind(host: &str, allowed: bool) -> anyhow::Result<()> {
    let loopback = host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if loopback || allowed {
        return Ok(());
    }
    anyhow::bail!(
        "refusing to listen on {host}: Ballista authenticates nobody, so anyone who reaches it \
         could run plans over the store; listen on loopback, or pass --allow-unauthenticated on a \
         network you trust"
    )
}

/// `HOST:PORT`.
pub fn parse_host_port(text: &str) -> Result<(String, u16), String> {
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("`{text}`: expected HOST:PORT"))?;
    if host.is_empty() {
        return Err(format!("`{text}`: the host is empty"));
    }
    let port = port
        .parse::<u16>()
        .map_err(|e| format!("`{text}`: port: {e}"))?;
    Ok((host.to_owned(), port))
}

#[cfg(feature = "ballista")]
mod run {
    use anyhow::Context;
    use tandem_batch_layer::recompute::ballista::{
        ExecutorSettings, Scheduler, SchedulerSettings, run_executor,
    };
    use tokio_util::sync::CancellationToken;

    use super::{ExecutorArgs, SchedulerArgs};
    use crate::config::Config;

    /// Runs a scheduler until `cancel`.
    pub async fn scheduler(args: SchedulerArgs, cancel: CancellationToken) -> anyhow::Result<()> {
        super::check_bind(&args.bind.ip().to_string(), args.allow_unauthenticated)?;
        let config = Config::load(&args.config)?;
        let store = tandem_store::open(&config.storage)?;
        let scheduler = Scheduler::bind(
            &SchedulerSettings {
                bind: args.bind,
                external_host: args.external_host,
            },
            store,
        )
        .await?;
        println!("Ballista scheduler: {}", scheduler.url()?);
        scheduler.serve(cancel).await.context("Ballista scheduler")
    }

    /// Runs an executor until `cancel` (or SIGINT/SIGTERM, which Ballista handles itself).
    pub async fn executor(args: ExecutorArgs, cancel: CancellationToken) -> anyhow::Result<()> {
        super::check_bind(&args.bind_host, args.allow_unauthenticated)?;
        let config = Config::load(&args.config)?;
        let store = tandem_store::open(&config.storage)?;
        let (scheduler_host, scheduler_port) = args.scheduler;
        let settings = ExecutorSettings {
            scheduler_host,
            scheduler_port,
            bind_host: args.bind_host,
            external_host: args.external_host,
            flight_port: args.port,
            concurrent_tasks: args.concurrent_tasks,
            work_dir: args.work_dir,
            connect_timeout_seconds: args.connect_timeout,
        };
        run_executor(&settings, store, cancel)
            .await
            .context("Ballista executor")
    }
}

#[cfg(feature = "ballista")]
pub use run::{executor, scheduler};

#[cfg(not(feature = "ballista"))]
const UNAVAILABLE: &str =
    "this build of tandem has no Ballista support: build it with `--features ballista`";

/// Runs a scheduler until `cancel`.
#[cfg(not(feature = "ballista"))]
pub async fn scheduler(
    _args: SchedulerArgs,
    _cancel: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    anyhow::bail!(UNAVAILABLE)
}

/// Runs an executor until `cancel`.
#[cfg(not(feature = "ballista"))]
pub async fn executor(
    _args: ExecutorArgs,
    _cancel: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    anyhow::bail!(UNAVAILABLE)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        what: What,
    }

    #[derive(Debug, clap::Subcommand)]
    enum What {
        Scheduler(SchedulerArgs),
        Executor(ExecutorArgs),
    }

    #[test]
    fn host_port_is_split_at_the_last_colon() {
        assert_eq!(
            parse_host_port("scheduler:50050"),
            Ok(("scheduler".into(), 50050))
        );
        assert!(
            parse_host_port("scheduler")
                .unwrap_err()
                .contains("HOST:PORT")
        );
        assert!(
            parse_host_port(":50050")
                .unwrap_err()
                .contains("host is empty")
        );
        assert!(parse_host_port("s:99999").unwrap_err().contains("port"));
    }

    #[test]
    fn commands_parse_with_their_defaults() {
        let cli = Cli::parse_from(["t", "scheduler", "--config", "t.toml"]);
        let What::Scheduler(s) = cli.what else {
            panic!("scheduler expected")
        };
        assert_eq!(s.bind, "127.0.0.1:50050".parse().unwrap());
        assert!(!s.allow_unauthenticated);
        let cli = Cli::parse_from([
            "t",
            "executor",
            "--config",
            "t.toml",
            "--scheduler",
            "sched:7000",
            "--port",
            "7001",
        ]);
        let What::Executor(e) = cli.what else {
            panic!("executor expected")
        };
        assert_eq!(e.scheduler, ("sched".into(), 7000));
        assert_eq!((e.port, e.concurrent_tasks), (7001, 0));
        assert_eq!(e.bind_host, "127.0.0.1");
    }

    #[test]
    fn only_loopback_listens_without_saying_the_network_is_trusted() {
        for host in ["127.0.0.1", "localhost", "::1", "[::1]"] {
            assert!(check_bind(host, false).is_ok(), "{host}");
        }
        let err = check_bind("0.0.0.0", false).unwrap_err().to_string();
        assert!(err.contains("--allow-unauthenticated"), "{err}");
        assert!(check_bind("10.1.2.3", false).is_err());
        assert!(check_bind("0.0.0.0", true).is_ok());
    }

    #[cfg(not(feature = "ballista"))]
    #[tokio::test]
    async fn a_build_without_the_feature_says_so() {
        let args = SchedulerArgs {
            config: "t.toml".into(),
            bind: "127.0.0.1:0".parse().unwrap(),
            external_host: "localhost".into(),
            allow_unauthenticated: false,
        };
        let err = scheduler(args, tokio_util::sync::CancellationToken::new())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("--features ballista"), "{err}");
    }
}
