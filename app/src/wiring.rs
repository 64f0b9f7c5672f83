//! The configuration turned into each component: the one place the app is wired. `tandem run`,
//! `tandem dev`, `tandem batch run` and the benchmarks all build their parts here, so a setting
//! means the same thing in each.

use std::sync::Arc;

use object_store::ObjectStore;
use tandem_batch_layer::{ArchiveConfig, Recompute, SchedulerConfig, ViewCatalog};
use tandem_shared::clock::Clock;
use tandem_shared::event::{EventDecoder, FormatError};
use tandem_speed_layer::{CheckpointSettings, SpeedConfig};
use tandem_store::registry::{self, Registry};

use std::net::SocketAddr;
use std::time::Duration;

use tandem_serving::fleet::FleetSettings;
use tandem_store::members::Membership;

use crate::config::Config;
use crate::roles::Roles;

/// The speed layer's consumer settings; checkpoints go to `store`.
pub fn speed_config(
    config: &Config,
    store: &Arc<dyn ObjectStore>,
    registry: Option<&Arc<Registry>>,
) -> SpeedConfig {
    let kafka = &config.kafka;
    SpeedConfig {
        brokers: kafka.brokers.clone(),
        topic: kafka.topic.clone(),
        group_id: format!("{}-speed", kafka.group_prefix),
        dead_letter_topic: kafka.dead_letter_topic.clone(),
        late_topic: kafka.late_topic.clone(),
        max_batch: config.speed.max_batch,
        idle_timeout: kafka.idle_timeout,
        max_future: config.speed.max_future,
        memory_budget: config.speed.memory_budget.bytes(),
        checkpoint: Some(CheckpointSettings {
            store: Arc::clone(store),
            interval: config.speed.checkpoint_interval.as_duration(),
        }),
        kafka_options: kafka.options.clone(),
        registry: registry.cloned(),
        membership: None,
        static_member: None,
    }
}

/// How this process takes part in a cluster of processes.
#[derive(Debug)]
pub struct Cluster {
    pub membership: Arc<Membership>,
    /// This process's member id (and static group instance id).
    pub instance: String,
    /// Where the others reach this process's API.
    pub advertise: String,
    pub heartbeat: Duration,
    /// Use the instance as the speed consumer's static group membership id.
    pub static_membership: bool,
    pub fleet: FleetSettings,
}

/// The cluster settings, when this process shares the work with others: `[cluster]` is
/// configured or the roles are split. `http` is the address the API is bound to.
pub fn cluster(
    config: &Config,
    roles: &Roles,
    http: SocketAddr,
    store: &Arc<dyn ObjectStore>,
) -> Option<Cluster> {
    if config.cluster.is_none() && roles.is_all() {
        return None;
    }
    let settings = config.cluster.clone().unwrap_or_default();
    let host = host_name();
    let instance = settings
        .instance
        .unwrap_or_else(|| format!("{host}-{}", http.port()));
    let advertise = settings.advertise.unwrap_or_else(|| {
        if http.ip().is_unspecified() {
            format!("http://{host}:{}", http.port())
        } else {
            format!("http://{http}")
        }
    });
    let group = format!("{}-speed", config.kafka.group_prefix);
    Some(Cluster {
        membership: Arc::new(Membership::new(Arc::clone(store), &group)),
        instance,
        advertise,
        heartbeat: settings.heartbeat.as_duration(),
        static_membership: settings.static_membership,
        fleet: FleetSettings {
            member_ttl: settings.member_ttl.as_duration(),
            token: settings.token.or_else(|| config.cluster_token.clone()),
            ..FleetSettings::default()
        },
    })
}

/// This machine's name, for default instance ids (`tandem` when it cannot be read).
fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| {
            !h.is_empty()
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'))
        })
        .unwrap_or_else(|| "tandem".to_owned())
}

/// The decoder of the topic's payloads, shared by the speed layer and the archive.
pub fn decoder(config: &Config) -> Result<Arc<EventDecoder>, FormatError> {
    EventDecoder::with_format(Arc::new(config.schema.clone()), &config.format).map(Arc::new)
}

/// The schema registry client, when payloads name writer schemas.
pub fn registry(config: &Config) -> Result<Option<Arc<Registry>>, registry::Error> {
    config
        .registry
        .clone()
        .map(|settings| Registry::new(settings).map(Arc::new))
        .transpose()
}

/// The archive's settings.
pub fn archive_config(config: &Config, registry: Option<&Arc<Registry>>) -> ArchiveConfig {
    let kafka = &config.kafka;
    ArchiveConfig {
        brokers: kafka.brokers.clone(),
        topic: kafka.topic.clone(),
        group_id: format!("{}-archive", kafka.group_prefix),
        roll_interval: config.archive.roll_interval.as_duration(),
        roll_bytes: config.archive.roll_bytes.bytes(),
        seal_files: config.archive.seal_files,
        max_future: config.speed.max_future,
        kafka_options: kafka.options.clone(),
        registry: registry.cloned(),
        progress: Default::default(),
    }
}

/// The archive's settings for a dimension table's topic: the events' with the table's topic
/// and a group of its own.
pub fn table_archive_config(
    config: &Config,
    table: &tandem_shared::table::TableDefinition,
    registry: Option<&Arc<Registry>>,
) -> ArchiveConfig {
    ArchiveConfig {
        topic: table.topic.clone(),
        group_id: format!("{}-archive-table-{}", config.kafka.group_prefix, table.name),
        ..archive_config(config, registry)
    }
}

/// The catalog of the configured views in `store` (nothing loaded yet).
pub fn catalog(config: &Config, store: &Arc<dyn ObjectStore>) -> Arc<ViewCatalog> {
    Arc::new(ViewCatalog::with_cache_bytes(
        Arc::clone(store),
        config.views.clone(),
        config.serving.cache_bytes.bytes(),
    ))
}

/// Recompute over the archive of the events topic in `store`, publishing to `catalog`.
pub fn recompute(
    config: &Config,
    store: &Arc<dyn ObjectStore>,
    catalog: &Arc<ViewCatalog>,
    clock: Arc<dyn Clock>,
) -> Recompute {
    Recompute::new(
        Arc::clone(store),
        Arc::new(config.schema.clone()),
        config.kafka.topic.clone(),
        config.kafka.idle_timeout,
        Arc::clone(catalog),
        clock,
    )
    .with_engine(config.engine.clone())
    .with_memory(config.batch.memory.bytes())
}

/// The job scheduler's settings.
pub fn scheduler_config(config: &Config) -> SchedulerConfig {
    config.batch.scheduler()
}
