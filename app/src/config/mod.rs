//! The configuration file: the user's contract.
//!
//! Parsing is two-step: TOML into plain structs (unknown keys are errors, with line and column),
//! then validation into typed definitions. Every error names the file and the part of the
//! configuration that is wrong.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

mod cluster;
mod engine;
mod format;
mod http;
mod outputs;
mod size;
mod storage;

pub use outputs::OutputConfig;

pub use cluster::{ClusterConfig, check_instance};
use cluster::{ClusterFile, cluster_config};
pub use http::HttpConfig;
use http::{HttpFile, http_config};
use size::{ByteSize, parse_size};
use storage::{StorageFile, storage_settings};
use tandem_shared::event::{Envelope, Format, OP_FIELD, PayloadFormat};
use tandem_shared::schema::{EventSchema, FieldType};
use tandem_shared::time::{EventTime, Span};
use tandem_shared::view::{ViewConfig, ViewDefinition};
use tandem_store::StorageSettings;
use tandem_store::registry::RegistrySettings;

/// Configuration errors. Always the user's: start-up stops with the message.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: String,
        source: Box<toml::de::Error>,
    },
    #[error("{path}: [schema]: {source}")]
    Schema {
        path: String,
        source: tandem_shared::schema::Error,
    },
    #[error("{path}: [[views]] entry {index} (`{name}`): {source}")]
    View {
        path: String,
        index: usize,
        name: String,
        source: tandem_shared::view::Error,
    },
    #[error("{path}: [[views]] entry {index}: a view named `{name}` is already defined")]
    DuplicateView {
        path: String,
        index: usize,
        name: String,
    },
    #[error("{path}: no views are defined; add at least one [[views]] table")]
    NoViews { path: String },
    #[error("{path}: {section}.{key}: {source}")]
    Span {
        path: String,
        section: &'static str,
        key: &'static str,
        source: tandem_shared::time::Error,
    },
    #[error("{path}: {section}.{key}: {source}")]
    Time {
        path: String,
        section: &'static str,
        key: &'static str,
        source: tandem_shared::time::Error,
    },
    #[error("{path}: {section}.{key}: {problem}")]
    Invalid {
        path: String,
        section: &'static str,
        key: &'static str,
        problem: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    kafka: KafkaFile,
    storage: StorageFile,
    schema: SchemaFile,
    #[serde(default)]
    views: Vec<ViewConfig>,
    #[serde(default)]
    batch: BatchFile,
    #[serde(default)]
    archive: ArchiveFile,
    #[serde(default)]
    speed: SpeedFile,
    #[serde(default)]
    http: HttpFile,
    #[serde(default)]
    serving: ServingFile,
    cluster: Option<ClusterFile>,
    #[serde(default)]
    outputs: Vec<outputs::OutputFile>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServingFile {
    /// Bound of the cache of published row groups.
    cache_bytes: Option<ByteSize>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct KafkaFile {
    #[serde(default = "default_brokers")]
    brokers: String,
    topic: String,
    dead_letter_topic: Option<String>,
    late_topic: Option<String>,
    #[serde(default = "default_group_prefix")]
    group_prefix: String,
    /// Partitions of the topic `tandem dev` creates on its embedded broker.
    #[serde(default = "default_partitions")]
    partitions: i32,
    /// A partition fully consumed and quiet for this long stops holding event-time progress
    /// back, in the speed layer's watermark and in the archive's completeness.
    idle_timeout: Option<String>,
    /// Extra librdkafka client properties (security settings, for example).
    #[serde(default)]
    options: BTreeMap<String, String>,
    /// Extra librdkafka client properties whose values come from environment variables
    /// (secrets: `{ "sasl.password" = "KAFKA_PASSWORD" }`).
    #[serde(default)]
    options_env: BTreeMap<String, String>,
}

fn default_brokers() -> String {
    "127.0.0.1:9092".into()
}
fn default_group_prefix() -> String {
    "tandem".into()
}
fn default_partitions() -> i32 {
    8
}

/// `options` and `options_env` together: a property given in both, or a variable that is not
/// set, is an error.
fn kafka_options(
    kafka: &KafkaFile,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<BTreeMap<String, String>> {
    let mut options = kafka.options.clone();
    for (property, var) in &kafka.options_env {
        let problem = if options.contains_key(property) {
            Some(format!(
                "`{property}` is in options and options_env: give it once"
            ))
        } else {
            match env(var) {
                Some(value) => {
                    options.insert(property.clone(), value);
                    None
                }
                None => Some(format!(
                    "`{property}`: environment variable {var} is not set"
                )),
            }
        };
        if let Some(problem) = problem {
            return Err(Error::Invalid {
                path: path.to_owned(),
                section: "kafka",
                key: "options_env",
                problem,
            });
        }
    }
    Ok(options)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct SchemaFile {
    time_field: String,
    fields: BTreeMap<String, FieldType>,
    id_field: Option<String>,
    /// Earlier event times are dead-lettered (`past`); default 2000-01-01T00:00:00Z.
    min_time: Option<String>,
    format: Option<PayloadFormat>,
    registry: Option<format::RegistryFile>,
    message: Option<String>,
    proto: Option<PathBuf>,
    envelope: Option<Envelope>,
    include_snapshot: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchFile {
    schedule: Option<String>,
    engine: Option<String>,
    ballista_url: Option<String>,
    job_queue: Option<usize>,
    max_concurrent_jobs: Option<usize>,
    max_attempts: Option<u32>,
    retry_backoff: Option<String>,
    retention: Option<String>,
    maintenance_interval: Option<String>,
    /// Memory every recompute query of the process shares.
    memory: Option<ByteSize>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ArchiveFile {
    roll_interval: Option<String>,
    roll_bytes: Option<usize>,
    seal_files: Option<usize>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpeedFile {
    max_batch: Option<usize>,
    checkpoint_interval: Option<String>,
    max_future: Option<String>,
    memory_budget: Option<ByteSize>,
}

/// Kafka settings.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    pub brokers: String,
    pub topic: String,
    pub dead_letter_topic: String,
    pub late_topic: String,
    pub group_prefix: String,
    pub partitions: i32,
    pub options: BTreeMap<String, String>,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub http: HttpConfig,
    pub storage: StorageSettings,
    pub schema: EventSchema,
    /// How the topic's payloads are written.
    pub format: Format,
    /// Where Avro and Protobuf writer schemas come from.
    pub registry: Option<RegistrySettings>,
    pub views: Vec<ViewDefinition>,
    pub schedule: Option<String>,
    /// Where recompute queries run (`[batch] engine`, `ballista_url`).
    pub engine: tandem_batch_layer::recompute::Engine,
    pub idle_timeout: Span,
    pub job_queue: usize,
    pub max_concurrent_jobs: usize,
    pub max_attempts: u32,
    pub retry_backoff: Span,
    /// Retired segments, old view versions and finished job records are kept this long.
    pub retention: Span,
    pub maintenance_interval: Span,
    /// Memory every recompute query of the process shares (`batch.memory`).
    pub batch_memory: usize,
    pub roll_interval: Span,
    pub roll_bytes: usize,
    /// Files a partition manifest lists before it seals them into a file list.
    pub seal_files: usize,
    pub max_batch: usize,
    pub checkpoint_interval: Span,
    pub max_future: Span,
    pub memory_budget: usize,
    /// Bound of the serving layer's cache of published rows.
    pub cache_bytes: usize,
    /// `[cluster]`: set when processes share the work (see [`ClusterConfig`]).
    pub cluster: Option<ClusterConfig>,
    /// `[[outputs]]`: views pushed to Kafka topics.
    pub outputs: Vec<OutputConfig>,
}

/// The configuration `tandem dev` uses without `--config`.
pub const DEMO: &str = include_str!("../../demo.toml");

impl Config {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses configuration text; `origin` names it in errors. Token values named by `env`
    /// come from the process environment.
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        Self::parse_with_env(text, origin, &|name| std::env::var(name).ok())
    }

    /// [`Config::parse`] with the environment given as a lookup function.
    pub fn parse_with_env(
        text: &str,
        origin: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self> {
        let path = origin.to_owned();
        let file: File = toml::from_str(text).map_err(|source| Error::Parse {
            path: path.clone(),
            source: Box::new(source),
        })?;
        let s = &file.schema;
        let (format, registry) = format::format_settings(
            format::FormatFile {
                format: s.format,
                registry: s.registry.clone(),
                message: s.message.clone(),
                proto: s.proto.clone(),
                envelope: s.envelope,
                include_snapshot: s.include_snapshot,
            },
            &path,
            env,
        )?;
        let mut fields = file.schema.fields.clone();
        // Change events carry their operation: a field every view may filter on.
        if format.envelope == Some(Envelope::Debezium) {
            let op = *fields
                .entry(OP_FIELD.to_owned())
                .or_insert(FieldType::String);
            if op != FieldType::String {
                return Err(Error::Invalid {
                    path,
                    section: "schema",
                    key: "fields",
                    problem: format!(
                        "`{OP_FIELD}` holds a change's operation: declare it a string"
                    ),
                });
            }
        }
        let schema = EventSchema::new(
            file.schema.time_field.clone(),
            fields,
            file.schema.id_field.clone(),
        )
        .map_err(|source| Error::Schema {
            path: path.clone(),
            source,
        })?;
        let schema = match &file.schema.min_time {
            None => schema,
            Some(text) => {
                let min_time = EventTime::parse(text).map_err(|source| Error::Time {
                    path: path.clone(),
                    section: "schema",
                    key: "min_time",
                    source,
                })?;
                schema.with_min_time(min_time)
            }
        };
        if file.views.is_empty() {
            return Err(Error::NoViews { path });
        }
        let mut names = BTreeSet::new();
        let mut views = Vec::with_capacity(file.views.len());
        for (index, v) in file.views.iter().enumerate() {
            if !names.insert(v.name.clone()) {
                return Err(Error::DuplicateView {
                    path,
                    index,
                    name: v.name.clone(),
                });
            }
            let def = ViewDefinition::from_config(v, &schema).map_err(|source| Error::View {
                path: path.clone(),
                index,
                name: v.name.clone(),
                source,
            })?;
            views.push(def);
        }
        let span = |value: &Option<String>, default: &str, section, key| {
            Span::parse(value.as_deref().unwrap_or(default)).map_err(|source| Error::Span {
                path: path.clone(),
                section,
                key,
                source,
            })
        };
        let roll_interval = span(
            &file.archive.roll_interval,
            "30s",
            "archive",
            "roll_interval",
        )?;
        let idle_timeout = span(&file.kafka.idle_timeout, "30s", "kafka", "idle_timeout")?;
        let invalid = |section, key, problem: &str| Error::Invalid {
            path: path.clone(),
            section,
            key,
            problem: problem.to_owned(),
        };
        if roll_interval.millis() == 0 {
            return Err(invalid(
                "archive",
                "roll_interval",
                "must be greater than zero",
            ));
        }
        if let Some(expr) = &file.batch.schedule
            && let Err(err) = expr.parse::<cron::Schedule>()
        {
            return Err(invalid(
                "batch",
                "schedule",
                &format!(
                    "`{expr}` is not a cron expression (sec min hour day month weekday): {err}"
                ),
            ));
        }
        let kafka = file.kafka;
        if kafka.topic.is_empty() {
            return Err(invalid("kafka", "topic", "must not be empty"));
        }
        if kafka.partitions < 1 {
            return Err(invalid("kafka", "partitions", "must be at least 1"));
        }
        let retry_backoff = span(&file.batch.retry_backoff, "2s", "batch", "retry_backoff")?;
        let retention = span(&file.batch.retention, "7d", "batch", "retention")?;
        let maintenance_interval = span(
            &file.batch.maintenance_interval,
            "10m",
            "batch",
            "maintenance_interval",
        )?;
        if maintenance_interval.millis() == 0 {
            return Err(invalid(
                "batch",
                "maintenance_interval",
                "must be greater than zero",
            ));
        }
        let batch_memory = match &file.batch.memory {
            None => tandem_batch_layer::recompute::DEFAULT_MEMORY,
            Some(size) => parse_size(size).filter(|n| *n > 0).ok_or_else(|| {
                invalid(
                    "batch",
                    "memory",
                    "expected a positive size such as \"1GiB\"",
                )
            })?,
        };
        let checkpoint_interval = span(
            &file.speed.checkpoint_interval,
            "10s",
            "speed",
            "checkpoint_interval",
        )?;
        let max_future = span(&file.speed.max_future, "1h", "speed", "max_future")?;
        let memory_budget = match &file.speed.memory_budget {
            None => 1 << 30,
            Some(size) => parse_size(size).ok_or_else(|| {
                invalid(
                    "speed",
                    "memory_budget",
                    "expected bytes or a size such as \"512MiB\"",
                )
            })?,
        };
        if checkpoint_interval.millis() == 0 {
            return Err(invalid(
                "speed",
                "checkpoint_interval",
                "must be greater than zero",
            ));
        }
        let max_batch = file.speed.max_batch.unwrap_or(4096);
        if max_batch == 0 {
            return Err(invalid("speed", "max_batch", "must be at least 1"));
        }
        let engine = engine::engine(
            file.batch.engine.as_deref(),
            file.batch.ballista_url.as_deref(),
            &path,
        )?;
        let http = http_config(file.http, &path, env)?;
        let cluster = file
            .cluster
            .map(|c| cluster_config(c, &path, env))
            .transpose()?;
        let storage = storage_settings(file.storage, &path, env)?;
        let cache_bytes = match &file.serving.cache_bytes {
            None => tandem_batch_layer::catalog::DEFAULT_CACHE_BYTES,
            Some(size) => parse_size(size).ok_or_else(|| {
                invalid(
                    "serving",
                    "cache_bytes",
                    "expected bytes or a size such as \"256MiB\"",
                )
            })?,
        };
        let dead_letter_topic = kafka
            .dead_letter_topic
            .clone()
            .unwrap_or_else(|| format!("{}.dlq", kafka.topic));
        let late_topic = kafka
            .late_topic
            .clone()
            .unwrap_or_else(|| format!("{}.late", kafka.topic));
        let outputs = outputs::outputs(
            file.outputs,
            &views,
            &[&kafka.topic, &dead_letter_topic, &late_topic],
            &path,
        )?;
        let options = kafka_options(&kafka, &path, env)?;
        Ok(Config {
            http,
            kafka: KafkaConfig {
                dead_letter_topic,
                late_topic,
                brokers: kafka.brokers,
                topic: kafka.topic,
                group_prefix: kafka.group_prefix,
                partitions: kafka.partitions,
                options,
            },
            storage,
            schema,
            format,
            registry,
            views,
            schedule: file.batch.schedule,
            engine,
            idle_timeout,
            job_queue: file.batch.job_queue.unwrap_or(64).max(1),
            max_concurrent_jobs: file.batch.max_concurrent_jobs.unwrap_or(2).max(1),
            max_attempts: file.batch.max_attempts.unwrap_or(3).max(1),
            retry_backoff,
            retention,
            maintenance_interval,
            batch_memory,
            roll_interval,
            roll_bytes: file.archive.roll_bytes.unwrap_or(64 << 20).max(1),
            seal_files: file
                .archive
                .seal_files
                .unwrap_or(tandem_batch_layer::archive::SEAL_AT)
                .max(1),
            max_batch,
            checkpoint_interval,
            max_future,
            memory_budget,
            cache_bytes,
            cluster,
            outputs,
        })
    }
}

#[cfg(test)]
mod tests;
