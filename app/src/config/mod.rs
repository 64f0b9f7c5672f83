//! The configuration file: the user's contract.
//!
//! Parsing is two-step: TOML into plain structs (unknown keys are errors, with line and column),
//! then validation into typed definitions. Every error names the file and the part of the
//! configuration that is wrong.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

mod cluster;
mod engine;
mod format;
mod http;
mod outputs;
mod storage;

pub use outputs::OutputConfig;

pub use cluster::{CLUSTER_TOKEN_ENV, ClusterConfig, check_instance};
use cluster::{ClusterFile, cluster_config};
pub use http::HttpConfig;
use http::http_config;
use storage::{StorageFile, storage_settings};
use tandem_batch_layer::{ArchiveSettings, BatchSettings};
use tandem_serving::{HttpSettings, ServingSettings, SqlSettings};
use tandem_shared::event::{Envelope, Format, OP_FIELD, PayloadFormat};
use tandem_shared::schema::{EventSchema, FieldType};
use tandem_shared::settings::Invalid;
use tandem_shared::table::{TableConfig, TableDefinition};
use tandem_shared::time::{EventTime, Span};
use tandem_shared::view::{ViewConfig, ViewDefinition};
use tandem_speed_layer::SpeedSettings;
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
    #[error("{path}: [[views]] entry {index} (`{name}`): join_stream: {problem}")]
    JoinStream {
        path: String,
        index: usize,
        name: String,
        problem: String,
    },
    #[error("{path}: [[views]] entry {index}: a view named `{name}` is already defined")]
    DuplicateView {
        path: String,
        index: usize,
        name: String,
    },
    #[error("{path}: [[tables]] entry {index} (`{name}`): {source}")]
    Table {
        path: String,
        index: usize,
        name: String,
        source: Box<tandem_shared::table::Error>,
    },
    #[error("{path}: [[tables]] entry {index}: {problem}")]
    TableConflict {
        path: String,
        index: usize,
        problem: String,
    },
    #[error("{path}: no views are defined; add at least one [[views]] table")]
    NoViews { path: String },
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
    tables: Vec<TableConfig>,
    #[serde(default)]
    batch: BatchSettings,
    #[serde(default)]
    archive: ArchiveSettings,
    #[serde(default)]
    speed: SpeedSettings,
    #[serde(default)]
    http: HttpSettings,
    #[serde(default)]
    serving: ServingSettings,
    #[serde(default)]
    sql: SqlSettings,
    cluster: Option<ClusterFile>,
    #[serde(default)]
    outputs: Vec<outputs::OutputFile>,
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
    #[serde(default = "default_idle_timeout")]
    idle_timeout: Span,
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
fn default_idle_timeout() -> Span {
    Span::from_millis(30_000)
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

/// Kafka settings.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    pub brokers: String,
    pub topic: String,
    pub dead_letter_topic: String,
    pub late_topic: String,
    pub group_prefix: String,
    pub partitions: i32,
    /// A partition fully consumed and quiet for this long stops holding event-time progress
    /// back (the speed layer's watermark, the archive's completeness).
    pub idle_timeout: Span,
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
    /// `[[tables]]`: dimension tables views may join.
    pub tables: Vec<Arc<TableDefinition>>,
    /// `[speed]`.
    pub speed: SpeedSettings,
    /// `[archive]`.
    pub archive: ArchiveSettings,
    /// `[batch]`; where its recompute queries run is [`Config::engine`].
    pub batch: BatchSettings,
    /// Where recompute queries run (`[batch] engine`, `ballista_url`).
    pub engine: tandem_batch_layer::recompute::Engine,
    /// `[serving]`.
    pub serving: ServingSettings,
    /// `[sql]`: the PostgreSQL and Flight SQL doors.
    pub sql: SqlSettings,
    /// `[cluster]`: set when processes share the work (see [`ClusterConfig`]).
    pub cluster: Option<ClusterConfig>,
    /// The token processes send each other when `cluster.token_env` does not name one: the
    /// [`CLUSTER_TOKEN_ENV`] variable, read with the rest of the environment at parse.
    pub cluster_token: Option<String>,
    /// `[[outputs]]`: views pushed to Kafka topics.
    pub outputs: Vec<OutputConfig>,
}

/// The configuration `tandem dev` uses without `--config`.
pub const DEMO: &str = include_str!("../../demo.toml");

impl Config {
    /// The second topics of the views' joined streams, one per topic (views joining a topic
    /// declare it alike).
    pub fn stream_sides(&self) -> Vec<Arc<TableDefinition>> {
        let mut out: Vec<Arc<TableDefinition>> = Vec::new();
        for stream in self.views.iter().filter_map(|v| v.join_stream.as_ref()) {
            if !out.iter().any(|s| s.topic == stream.side.topic) {
                out.push(Arc::clone(&stream.side));
            }
        }
        out
    }

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
        let tables = tables_section(&file.tables, &file.kafka.topic, &path)?;
        let avro = Some(tandem_shared::event::PayloadFormat::Avro);
        let avro_tables = tables.iter().any(|t| Some(t.payload) == avro)
            || file
                .views
                .iter()
                .any(|v| v.join_stream.as_ref().is_some_and(|j| j.format == avro));
        let (schema, format, registry) = schema_section(&file.schema, avro_tables, &path, env)?;
        let views = views_section(&file.views, &schema, &tables, &file.kafka.topic, &path)?;
        let invalid = |section, key, problem: &str| Error::Invalid {
            path: path.clone(),
            section,
            key,
            problem: problem.to_owned(),
        };
        // Each layer checks its own section; the sections are named here.
        let checks = [
            ("speed", file.speed.check()),
            ("archive", file.archive.check()),
            ("batch", file.batch.check()),
            ("sql", file.sql.check()),
        ];
        for (section, check) in checks {
            if let Err(Invalid { key, problem }) = check {
                return Err(invalid(section, key, &problem));
            }
        }
        let kafka = file.kafka;
        if kafka.topic.is_empty() {
            return Err(invalid("kafka", "topic", "must not be empty"));
        }
        if kafka.partitions < 1 {
            return Err(invalid("kafka", "partitions", "must be at least 1"));
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
                idle_timeout: kafka.idle_timeout,
                options,
            },
            storage,
            schema,
            format,
            registry,
            views,
            tables,
            engine,
            speed: file.speed,
            archive: file.archive,
            batch: file.batch,
            serving: file.serving,
            sql: file.sql,
            cluster,
            cluster_token: env(CLUSTER_TOKEN_ENV),
            outputs,
        })
    }
}

/// `[schema]`: the event schema, how payloads are written and where writer schemas come from.
fn schema_section(
    s: &SchemaFile,
    tables_need_registry: bool,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(EventSchema, Format, Option<RegistrySettings>)> {
    let (format, registry) = format::format_settings(
        format::FormatFile {
            format: s.format,
            registry: s.registry.clone(),
            message: s.message.clone(),
            proto: s.proto.clone(),
            envelope: s.envelope,
            include_snapshot: s.include_snapshot,
        },
        tables_need_registry,
        path,
        env,
    )?;
    let mut fields = s.fields.clone();
    // Change events carry their operation: a field every view may filter on.
    if format.envelope == Some(Envelope::Debezium) {
        let op = *fields
            .entry(OP_FIELD.to_owned())
            .or_insert(FieldType::String);
        if op != FieldType::String {
            return Err(Error::Invalid {
                path: path.to_owned(),
                section: "schema",
                key: "fields",
                problem: format!("`{OP_FIELD}` holds a change's operation: declare it a string"),
            });
        }
    }
    let schema =
        EventSchema::new(s.time_field.clone(), fields, s.id_field.clone()).map_err(|source| {
            Error::Schema {
                path: path.to_owned(),
                source,
            }
        })?;
    let schema = match &s.min_time {
        None => schema,
        Some(text) => {
            let min_time = EventTime::parse(text).map_err(|source| Error::Time {
                path: path.to_owned(),
                section: "schema",
                key: "min_time",
                source,
            })?;
            schema.with_min_time(min_time)
        }
    };
    Ok((schema, format, registry))
}

/// `[[views]]`: each view validated against the schema, names unique.
/// `[[tables]]`: each dimension table validated, names and topics unique and not the events'.
fn tables_section(
    tables: &[TableConfig],
    events_topic: &str,
    path: &str,
) -> Result<Vec<Arc<TableDefinition>>> {
    let mut out: Vec<Arc<TableDefinition>> = Vec::with_capacity(tables.len());
    for (index, t) in tables.iter().enumerate() {
        let def = TableDefinition::from_config(t).map_err(|source| Error::Table {
            path: path.to_owned(),
            index,
            name: t.name.clone(),
            source: Box::new(source),
        })?;
        let conflict = if out.iter().any(|o| o.name == def.name) {
            Some(format!("a table named `{}` is already defined", def.name))
        } else if def.topic == events_topic || out.iter().any(|o| o.topic == def.topic) {
            Some(format!(
                "topic `{}` is already read as events or as another table",
                def.topic
            ))
        } else {
            None
        };
        if let Some(problem) = conflict {
            return Err(Error::TableConflict {
                path: path.to_owned(),
                index,
                problem,
            });
        }
        out.push(Arc::new(def));
    }
    Ok(out)
}

fn views_section(
    views: &[ViewConfig],
    schema: &EventSchema,
    tables: &[Arc<TableDefinition>],
    events_topic: &str,
    path: &str,
) -> Result<Vec<ViewDefinition>> {
    if views.is_empty() {
        return Err(Error::NoViews {
            path: path.to_owned(),
        });
    }
    let mut names = BTreeSet::new();
    let mut definitions = Vec::with_capacity(views.len());
    for (index, v) in views.iter().enumerate() {
        if !names.insert(v.name.clone()) {
            return Err(Error::DuplicateView {
                path: path.to_owned(),
                index,
                name: v.name.clone(),
            });
        }
        let def = ViewDefinition::with_tables(v, schema, tables).map_err(|source| Error::View {
            path: path.to_owned(),
            index,
            name: v.name.clone(),
            source,
        })?;
        if let Some(problem) = stream_conflict(&def, &definitions, tables, events_topic) {
            return Err(Error::JoinStream {
                path: path.to_owned(),
                index,
                name: v.name.clone(),
                problem,
            });
        }
        definitions.push(def);
    }
    Ok(definitions)
}

/// What is wrong with a view's joined stream beside the other parts of the configuration:
/// its topic read as events or as a table, declared otherwise by an earlier view (the
/// consumer decodes a topic one way), or joined with tables in the same view (not yet).
fn stream_conflict(
    view: &ViewDefinition,
    earlier: &[ViewDefinition],
    tables: &[Arc<TableDefinition>],
    events_topic: &str,
) -> Option<String> {
    let stream = view.join_stream.as_ref()?;
    let topic = &stream.side.topic;
    if topic == events_topic || tables.iter().any(|t| &t.topic == topic) {
        return Some(format!(
            "topic `{topic}` is read as events or as a table; a joined stream is another topic"
        ));
    }
    if !view.joins.is_empty() {
        return Some("a view joins dimension tables or a stream, not both (yet)".into());
    }
    if tables.iter().any(|t| t.name == stream.side.name) {
        return Some(format!(
            "`{}` names a dimension table too; name the joined side apart (`name`)",
            stream.side.name
        ));
    }
    let other = earlier
        .iter()
        .filter_map(|v| v.join_stream.as_ref())
        .find(|s| &s.side.topic == topic && s.side != stream.side)?;
    Some(format!(
        "topic `{topic}` is joined by another view with other fields, time field, name or format (`{}`); views joining one topic declare it alike",
        other.side.name
    ))
}

#[cfg(test)]
mod tests;
