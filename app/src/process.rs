//! One Tandem process: the layers started in order, and shut down in order.
//!
//! ```text
//!  start: open storage, check it honours create-if-absent → check the events topic,
//!         create missing side topics
//!         → compile every view for both layers (a bad expression stops start-up)
//!         → load published batch results → hand their coverage to the speed layer
//!         → start speed layer, archive, job scheduler, reconciliation (each supervised:
//!           restarted with backoff when it fails) and the readiness probes → serve HTTP
//!  shutdown: backend (cancel, await: archive publishes its buffers, scheduler finishes a
//!            running job, speed layer checkpoints and flushes side topics) → HTTP frontend
//! ```
//!
//! Shutdown follows the InfluxDB 3 model: the backend is cancelled first and awaited, and only
//! then does the HTTP frontend stop, so nothing a reader can see is left half-published.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use object_store::ObjectStore;
use tandem_batch_layer::archive::ArchiveProgress;
use tandem_batch_layer::scheduler::leadership;
use tandem_batch_layer::{Archive, Scheduler};
use tandem_serving::fleet::{Fleet, SpeedSide};
use tandem_serving::sql::SqlEngine;
use tandem_serving::{AppState, HttpLimits, HttpPolicy, Readiness, Reconciler, router};
use tandem_shared::clock::{Clock, SystemClock};
use tandem_shared::event::EventDecoder;
use tandem_shared::layout;
use tandem_speed_layer::SpeedLayer;
use tandem_speed_layer::announce::Announcement;
use tandem_store::lease::{Lease, Standing};
use tandem_store::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, HttpConfig};
use crate::probe;
use crate::roles::{self, Role, Roles};
use crate::supervise::{Fatal, RestartPolicy, Supervisor};
use crate::{topics, wiring};

/// Errors starting Tandem. Configuration or environment; start-up stops with the message.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Storage(#[from] tandem_store::backend::Error),
    #[error(transparent)]
    Outputs(#[from] crate::outputs::Error),
    #[error(transparent)]
    View(#[from] tandem_speed_layer::program::Error),
    #[error("loading published views: {0}")]
    Catalog(#[from] tandem_batch_layer::catalog::Error),
    #[error(transparent)]
    Speed(#[from] tandem_speed_layer::IngestError),
    #[error(transparent)]
    Archive(#[from] tandem_batch_layer::archive::Error),
    #[error(transparent)]
    Scheduler(#[from] tandem_batch_layer::scheduler::Error),
    #[error(transparent)]
    Topics(#[from] topics::Error),
    #[error("[schema]: {0}")]
    Format(#[from] tandem_shared::event::FormatError),
    #[error("[[tables]]: {0}")]
    Table(String),
    #[error(transparent)]
    Registry(#[from] tandem_store::registry::Error),
    #[error("preparing SQL: {0}")]
    Sql(#[from] tandem_serving::sql::Error),
    #[error("binding HTTP on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("HTTP server: {0}")]
    Serve(#[source] std::io::Error),
    #[error(
        "the API has tokens, so the processes of a cluster need one to ask each other: set \
         cluster.token_env or TANDEM_CLUSTER_TOKEN to a token of read scope"
    )]
    ClusterToken,
    #[error(
        "refusing to serve an open API on {addr}, which is not a loopback address: configure \
         [[http.tokens]], or set http.allow_anonymous = true to allow anyone who reaches it"
    )]
    Exposed { addr: String },
    #[error("[sql] TLS: {0}")]
    Tls(#[source] std::io::Error),
}

/// How long after a publication a worker of a cluster releases the windows it covers: longer
/// than the serving members take to notice it (their 10 s poll), so they measure drift first.
const RELEASE_GRACE: Duration = Duration::from_secs(30);

/// How long a scheduler lease term lasts: a dead scheduler's jobs move within about this long.
const SCHEDULER_LEASE: Duration = Duration::from_secs(10);

/// Process-level options that are not part of the configuration file.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub http: String,
    pub metrics: Option<PrometheusHandle>,
    /// What this process runs; all four by default.
    pub roles: Roles,
}

/// A started Tandem: its HTTP address, and the handles needed to stop it.
#[derive(Debug)]
pub struct Running {
    pub http: SocketAddr,
    /// The SQL doors' addresses (`[sql]`).
    pub postgres: Option<SocketAddr>,
    pub flight: Option<SocketAddr>,
    doors: crate::doors::Doors,
    fatal: Fatal,
    backend: CancellationToken,
    frontend: CancellationToken,
    tracker: TaskTracker,
    server: Server,
}

impl Running {
    /// Prints where clients connect, one line each, the HTTP address last (scripts and tests
    /// wait for it).
    pub fn print_addresses(&self) {
        if let Some(addr) = self.postgres {
            println!("Postgres: postgresql://tandem@{addr}/tandem");
        }
        if let Some(addr) = self.flight {
            println!("Flight SQL: grpc://{addr}");
        }
        println!("HTTP: http://{}", self.http);
    }

    /// Completes, with the reason, when a layer task failed too often in a row: the caller
    /// shuts down and exits non-zero so that its own supervisor restarts the process.
    pub fn fatal(&self) -> Fatal {
        self.fatal.clone()
    }

    /// Ordered shutdown: backend first (flushing), then the HTTP frontend.
    pub async fn shutdown(self) -> Result<(), Error> {
        self.backend.cancel();
        self.tracker.close();
        if tokio::time::timeout(Duration::from_secs(60), self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("backend did not stop within 60s");
        }
        self.frontend.cancel();
        self.doors.closed().await;
        match self.server.await {
            Ok(result) => result.map_err(Error::Serve),
            Err(err) => {
                tracing::error!(%err, "HTTP task failed");
                Ok(())
            }
        }
    }
}

/// Starts the layers of `options.roles` for `config`.
pub async fn start(config: &Config, options: RunOptions) -> Result<Running, Error> {
    check_exposure(&options.http, &config.http).await?;
    for door in crate::doors::addresses(config) {
        check_exposure(door, &config.http).await?;
    }
    let roles = options.roles.clone();
    let store = tandem_store::open(&config.storage)?;
    // Every publication is a create-if-absent write: refuse a store that would not fence.
    tandem_store::check_create_if_absent(store.as_ref(), &config.storage.url).await?;
    let output_topics: Vec<String> = config.outputs.iter().map(|o| o.topic.clone()).collect();
    let table_topics: Vec<String> = config.tables.iter().map(|t| t.topic.clone()).collect();
    let stream_topics: Vec<String> = config
        .stream_sides()
        .iter()
        .map(|s| s.topic.clone())
        .collect();
    let found =
        topics::ensure(&config.kafka, &output_topics, &table_topics, &stream_topics).await?;
    tracing::info!(
        topic = %config.kafka.topic,
        partitions = found.partitions,
        %roles,
        "events topic found"
    );
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let schema = Arc::new(config.schema.clone());
    let speed =
        SpeedLayer::compile(&config.views, &schema)?.with_dedup_horizon(config.speed.dedup_horizon);
    let catalog = wiring::catalog(config, &store);
    catalog.refresh_all().await?;
    // Bind first: a worker announces the address it is reachable at.
    let listener = bind(&options.http).await?;
    let http = listener.local_addr().map_err(|source| Error::Bind {
        addr: options.http.clone(),
        source,
    })?;
    let cluster = wiring::cluster(config, &roles, http, &store);
    if let Some(cluster) = &cluster
        && !config.http.policy.access.is_open()
        && cluster.fleet.token.is_none()
    {
        return Err(Error::ClusterToken);
    }
    let partition_count = i32::try_from(found.partitions).unwrap_or(i32::MAX);
    // A serving member of a cluster answers for every partition by asking the workers.
    let fleet = match &cluster {
        Some(cluster) if roles.has(Role::Serve) => {
            let fleet = Arc::new(Fleet::new(
                Arc::clone(&cluster.membership),
                &config.views,
                roles
                    .has(Role::Speed)
                    .then(|| (cluster.instance.clone(), speed.clone())),
                partition_count,
                Arc::clone(&clock),
                cluster.fleet.clone(),
            ));
            fleet.refresh().await;
            Some(fleet)
        }
        _ => None,
    };
    // Drift compares the speed layer's state of a window with batch truth: a process that owns
    // every partition measures what it releases; in a cluster, serving members measure the
    // group's rows and workers release a little later, so that those rows are still there.
    let mut reconciler = Reconciler::new(
        Arc::clone(&catalog),
        roles.has(Role::Speed).then(|| speed.clone()),
    );
    if cluster.is_some() {
        reconciler = reconciler.in_group(fleet.clone(), RELEASE_GRACE);
    }
    // Before consuming: windows the batch layer already covers are not rebuilt.
    reconciler.start().await;

    let backend = CancellationToken::new();
    let frontend = CancellationToken::new();
    let tracker = TaskTracker::new();
    let decoder = wiring::decoder(config)?;
    let registry = wiring::registry(config)?;

    let readiness = Readiness::new(roles.components());
    let supervisor = Supervisor::new(readiness.clone(), RestartPolicy::default());

    let starting = Starting {
        config,
        store: &store,
        clock: &clock,
        decoder: &decoder,
        registry: registry.as_ref(),
        tracker: &tracker,
        supervisor: &supervisor,
        backend: &backend,
    };
    if roles.has(Role::Speed) {
        starting.speed(&speed, cluster.as_ref(), partition_count);
    }
    let archive_progress = if roles.has(Role::Archive) {
        Some(starting.archive()?)
    } else {
        None
    };

    let scheduler = Scheduler::new(
        Arc::new(wiring::recompute(
            config,
            &store,
            &catalog,
            Arc::clone(&clock),
        )),
        wiring::scheduler_config(config),
    )?;
    let jobs_leader = starting
        .jobs(&scheduler, cluster.as_ref(), &roles, &readiness)
        .await;
    let reconciler_run = reconciler.clone();
    tracker.spawn(supervisor.clone().run(
        "reconciler",
        move |cancel| {
            let run = reconciler_run.clone().run(cancel, Duration::from_secs(10));
            Ok(async move {
                run.await;
                Ok(())
            })
        },
        backend.child_token(),
    ));
    tracker.spawn(probe::run(
        readiness.clone(),
        roles.has(Role::Speed).then(|| speed.clone()),
        Arc::clone(&store),
        registry.clone(),
        archive_progress,
        backend.child_token(),
    ));

    if let Some(handle) = options.metrics.clone() {
        starting.metrics_upkeep(handle);
    }

    let speed_side = match fleet {
        Some(fleet) => {
            tracker.spawn(Arc::clone(&fleet).run(backend.child_token()));
            SpeedSide::Group(fleet)
        }
        None => SpeedSide::Local(speed.clone()),
    };
    if roles.has(Role::Serve) {
        crate::outputs::start(
            config,
            Arc::clone(&catalog),
            speed_side.clone(),
            Arc::clone(&clock),
            &tracker,
            backend.child_token(),
        )
        .await?;
    }
    let sql = SqlEngine::new(
        Arc::clone(&catalog),
        Some(Arc::new(speed_side.clone())),
        Arc::clone(&store),
        &config.kafka.topic,
        Arc::new(config.schema.clone()),
        config.http.sql,
    )
    .await?
    .with_idle_timeout(config.kafka.idle_timeout);
    let doors_engine = sql.clone();
    let state = AppState::new(
        catalog,
        speed_side,
        scheduler,
        reconciler,
        options.metrics,
        readiness,
    )
    .with_sql(sql)
    .with_shutdown(frontend.clone());
    let state = match jobs_leader {
        Some(standing) => state.with_jobs_leader(standing, Arc::clone(&clock)),
        None => state,
    };
    let mut policy = config.http.policy.clone();
    policy.forward_key = cluster
        .as_ref()
        .and_then(|c| c.fleet.token.as_deref())
        .map(tandem_serving::access::ForwardKey::new);
    let mut app = router(state, &policy);
    if !roles.has(Role::Serve) {
        app = app.layer(axum::middleware::from_fn(roles::without_serve));
    }
    let server = serve_on(listener, app, policy.limits.clone(), frontend.clone());
    let doors = if roles.has(Role::Serve) {
        crate::doors::open(config, &doors_engine, &policy.access, &frontend).await?
    } else {
        crate::doors::Doors::default()
    };
    Ok(Running {
        http,
        postgres: doors.postgres,
        flight: doors.flight,
        doors,
        fatal: supervisor.fatal(),
        backend,
        frontend,
        tracker,
        server,
    })
}

/// What the layer tasks of one process share while they are started.
struct Starting<'a> {
    config: &'a Config,
    store: &'a Arc<dyn ObjectStore>,
    clock: &'a Arc<dyn Clock>,
    decoder: &'a Arc<EventDecoder>,
    registry: Option<&'a Arc<Registry>>,
    tracker: &'a TaskTracker,
    supervisor: &'a Supervisor,
    backend: &'a CancellationToken,
}

impl Starting<'_> {
    /// The speed layer's consumer, supervised; in a cluster, its announcements too.
    fn speed(&self, speed: &SpeedLayer, cluster: Option<&wiring::Cluster>, partition_count: i32) {
        let (config, store, tracker, backend) =
            (self.config, self.store, self.tracker, self.backend);
        let (clock, decoder, registry, supervisor) =
            (self.clock, self.decoder, self.registry, self.supervisor);
        let mut speed_config = wiring::speed_config(config, store, registry);
        if let Some(cluster) = cluster {
            speed_config.membership =
                Some((Arc::clone(&cluster.membership), cluster.instance.clone()));
            // Static membership: a restarted worker takes its partitions back without waiting
            // for the group to notice it left (on brokers that support it).
            speed_config.static_member =
                cluster.static_membership.then(|| cluster.instance.clone());
            tracker.spawn(tandem_speed_layer::announce::announce(
                speed.clone(),
                Arc::clone(&cluster.membership),
                Announcement {
                    id: cluster.instance.clone(),
                    address: cluster.advertise.clone(),
                    partition_count,
                    interval: cluster.heartbeat,
                },
                Arc::clone(clock),
                backend.child_token(),
            ));
        }
        let speed_run = speed.clone();
        let speed_decoder = Arc::clone(decoder);
        let speed_clock = Arc::clone(clock);
        tracker.spawn(supervisor.clone().run(
            "speed",
            move |cancel| {
                let task = tandem_speed_layer::start(
                    &speed_run,
                    speed_config.clone(),
                    Arc::clone(&speed_decoder),
                    Arc::clone(&speed_clock),
                    cancel,
                )
                .map_err(|e| e.to_string())?;
                Ok(async move {
                    match task.await {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(err)) => Err(err.to_string()),
                        Err(err) => Err(err.to_string()),
                    }
                })
            },
            backend.child_token(),
        ));
    }

    /// The archive's consumer, supervised (created once here so that a configuration error
    /// stops start-up); its progress, for readiness.
    fn archive(&self) -> Result<ArchiveProgress, Error> {
        // Each dimension table's changelog, and each joined stream's second topic, is
        // archived like the events, under its own topic.
        for table in self.config.tables.iter().chain(&self.config.stream_sides()) {
            let decoder = tandem_shared::event::EventDecoder::with_format(
                Arc::clone(table.schema()),
                &table.format(),
            )
            .map_err(|e| Error::Table(format!("table `{}`: {e}", table.name)))?;
            self.archive_of(
                wiring::table_archive_config(self.config, table, self.registry),
                &Arc::new(decoder),
            )?;
        }
        self.archive_of(
            wiring::archive_config(self.config, self.registry),
            self.decoder,
        )
    }

    /// One topic's archive consumer, supervised; its progress.
    fn archive_of(
        &self,
        archive_config: tandem_batch_layer::ArchiveConfig,
        decoder: &Arc<tandem_shared::event::EventDecoder>,
    ) -> Result<ArchiveProgress, Error> {
        let (store, tracker, backend) = (self.store, self.tracker, self.backend);
        let (clock, supervisor) = (self.clock, self.supervisor);
        let progress = archive_config.progress.clone();
        let archive_store = Arc::clone(store);
        let archive_decoder = Arc::clone(decoder);
        let archive_clock = Arc::clone(clock);
        let mut first_archive = Some(Archive::new(
            archive_config.clone(),
            Arc::clone(store),
            Arc::clone(decoder),
            Arc::clone(clock),
        )?);
        tracker.spawn(supervisor.clone().run(
            "archive",
            move |cancel| {
                let archive = match first_archive.take() {
                    Some(archive) => archive,
                    None => Archive::new(
                        archive_config.clone(),
                        Arc::clone(&archive_store),
                        Arc::clone(&archive_decoder),
                        Arc::clone(&archive_clock),
                    )
                    .map_err(|e| e.to_string())?,
                };
                Ok(async move {
                    archive.run(cancel).await;
                    Ok(())
                })
            },
            backend.child_token(),
        ));
        Ok(progress)
    }

    /// Jobs: with several processes one holds the scheduler lease and runs them, the rest
    /// forward (the receiver says who leads); alone, the scheduler runs here, supervised,
    /// after re-queuing what was queued before a restart and queuing backfills.
    async fn jobs(
        &self,
        scheduler: &Scheduler,
        cluster: Option<&wiring::Cluster>,
        roles: &Roles,
        readiness: &Readiness,
    ) -> Option<watch::Receiver<Standing>> {
        let (store, tracker, backend, clock, supervisor) = (
            self.store,
            self.tracker,
            self.backend,
            self.clock,
            self.supervisor,
        );
        // With several processes, one holds the scheduler lease and runs jobs; the rest forward.
        let jobs_leader = cluster.map(|cluster| {
            let lease = Lease::new(
                Arc::clone(store),
                layout::scheduler_lease_dir(),
                cluster.instance.clone(),
                cluster.advertise.clone(),
                SCHEDULER_LEASE,
            );
            let (tx, rx) = watch::channel(Standing::Vacant);
            if roles.has(Role::Batch) {
                tracker.spawn(leadership::lead(
                    scheduler.clone(),
                    lease,
                    Arc::clone(clock),
                    tx,
                    backend.child_token(),
                ));
                // Ready whether it leads or stands by.
                readiness.ready("scheduler");
            } else {
                tracker.spawn(leadership::follow(
                    lease,
                    Arc::clone(clock),
                    tx,
                    backend.child_token(),
                ));
            }
            rx
        });
        if roles.has(Role::Batch) && jobs_leader.is_none() {
            let requeued = scheduler.restore().await;
            if requeued > 0 {
                tracing::info!(requeued, "jobs from before the restart queued again");
            }
            for job in scheduler.backfill() {
                tracing::info!(view = ?job.view, id = %job.id, "no published results for this view version: backfill queued");
            }
            let scheduler_run = scheduler.clone();
            tracker.spawn(supervisor.clone().run(
                "scheduler",
                move |cancel| {
                    let run = scheduler_run.clone().run(cancel);
                    Ok(async move {
                        run.await;
                        Ok(())
                    })
                },
                backend.child_token(),
            ));
        }
        jobs_leader
    }

    /// Prometheus upkeep (histogram windows), every 5 s until the backend stops.
    fn metrics_upkeep(&self, handle: PrometheusHandle) {
        let cancel = self.backend.child_token();
        self.tracker.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tick.tick() => handle.run_upkeep(),
                }
            }
        });
    }
}

/// The HTTP server task; it ends when its stop token fires.
pub type Server = tokio::task::JoinHandle<Result<(), std::io::Error>>;

/// An API without tokens listens only on loopback, unless the configuration allows anyone.
async fn check_exposure(addr: &str, http: &HttpConfig) -> Result<(), Error> {
    if !http.policy.access.is_open() || http.allow_anonymous {
        return Ok(());
    }
    let resolved: Vec<SocketAddr> = tokio::net::lookup_host(addr)
        .await
        .map_err(|source| Error::Bind {
            addr: addr.to_owned(),
            source,
        })?
        .collect();
    if resolved.is_empty() || resolved.iter().any(|a| !a.ip().is_loopback()) {
        return Err(Error::Exposed {
            addr: addr.to_owned(),
        });
    }
    Ok(())
}

async fn bind(addr: &str) -> Result<TcpListener, Error> {
    TcpListener::bind(addr).await.map_err(|source| Error::Bind {
        addr: addr.to_owned(),
        source,
    })
}

/// Serves `app` on `listener` within `limits` until `stop` fires.
fn serve_on(
    listener: TcpListener,
    app: axum::Router,
    limits: HttpLimits,
    stop: CancellationToken,
) -> Server {
    tokio::spawn(async move { tandem_serving::server::serve(listener, app, &limits, stop).await })
}

/// Serves the API on `addr`, behind `policy`, until `stop` fires.
pub async fn serve(
    addr: &str,
    state: AppState,
    policy: &HttpPolicy,
    stop: CancellationToken,
) -> Result<(SocketAddr, Server), Error> {
    let listener = bind(addr).await?;
    let http = listener.local_addr().map_err(|source| Error::Bind {
        addr: addr.to_owned(),
        source,
    })?;
    Ok((
        http,
        serve_on(listener, router(state, policy), policy.limits.clone(), stop),
    ))
}

#[cfg(test)]
mod tests {
    use tandem_serving::{Access, Scope, Token};

    use super::*;

    #[tokio::test]
    async fn an_open_api_listens_beyond_loopback_only_when_allowed() {
        let open = HttpConfig::default();
        assert!(check_exposure("127.0.0.1:0", &open).await.is_ok());
        assert!(check_exposure("[::1]:0", &open).await.is_ok());
        let err = check_exposure("0.0.0.0:8080", &open).await.unwrap_err();
        assert!(matches!(err, Error::Exposed { .. }), "{err}");
        assert!(err.to_string().contains("http.allow_anonymous"));
        let allowed = HttpConfig {
            allow_anonymous: true,
            ..HttpConfig::default()
        };
        assert!(check_exposure("0.0.0.0:8080", &allowed).await.is_ok());
        let mut closed = HttpConfig::default();
        closed.policy.access =
            Access::with_tokens(vec![Token::from_secret("t", Scope::Read, "v").unwrap()]);
        assert!(check_exposure("0.0.0.0:8080", &closed).await.is_ok());
    }
}
