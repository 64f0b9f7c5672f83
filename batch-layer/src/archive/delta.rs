//! The archive of a topic as a Delta table rooted at `archive/<topic>` (ADR 0009): each roll
//! of a partition, once its manifest is published, is one commit of its files with the
//! partition's manifest sequence as `txn` (app id `p<partition>`), so a retried commit adds
//! nothing twice. A partition loaded at start-up, or whose commit failed, is reconciled: every
//! file its manifests name that the log does not is committed then.
//!
//! ```text
//!  manifest <seq> published ─► commit: add (path relative to the root, date/hour partition
//!                               values, rows and time bounds) + txn(p<partition>, seq)
//!  partition loaded / commit failed ─► reconcile: the manifests' files − the log's files
//! ```
//!
//! Archive files are never deleted once published (garbage is only what no manifest names), so
//! the table only grows: no `remove` is written.

use std::collections::BTreeSet;
use std::sync::Arc;

use object_store::ObjectStore;
use tandem_shared::layout;
use tandem_shared::schema::EventSchema;
use tandem_shared::time::EventTime;

use super::{ArchivedFile, PartitionManifest};
use crate::delta::{self, Action, Add, DeltaLog, Metadata, Protocol, TableState};

/// Commits a roll tries before it leaves the partition to be reconciled.
const ATTEMPTS: usize = 5;

/// The archive's Delta table.
pub(super) struct ArchiveTable {
    log: DeltaLog,
    state: TableState,
    topic: String,
    time_field: String,
    /// The table's metadata, committed as version 0.
    metadata: Metadata,
    /// Partitions whose files the log may lack (loaded, or a commit failed).
    unsettled: BTreeSet<i32>,
}

impl std::fmt::Debug for ArchiveTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArchiveTable")
            .field("root", &self.log.root())
            .finish()
    }
}

impl ArchiveTable {
    /// The table of `topic`'s archive, whose files hold `schema`'s events.
    pub(super) fn new(
        store: Arc<dyn ObjectStore>,
        topic: &str,
        schema: &EventSchema,
        now: EventTime,
    ) -> Result<Self, delta::schema::Unsupported> {
        let schema_string =
            delta::schema::schema_string(&schema.arrow_schema(), &["date", "hour"])?;
        let root = layout::archive_root(topic);
        Ok(Self {
            log: DeltaLog::new(store, root.clone()),
            state: TableState::default(),
            topic: topic.to_owned(),
            time_field: schema.time_field.clone(),
            metadata: Metadata {
                // The first process to create the table names it; later ones find it.
                id: uuid::Uuid::new_v4().to_string(),
                format: delta::log::FileFormat {
                    provider: "parquet".into(),
                    options: Default::default(),
                },
                schema_string,
                partition_columns: vec!["date".into(), "hour".into()],
                configuration: Default::default(),
                created_time: Some(now.millis()),
            },
            unsettled: BTreeSet::new(),
        })
    }

    /// Creates the table (version 0: protocol and metadata) unless it exists.
    async fn ensure_created(&mut self) -> delta::Result<()> {
        self.log.catch_up(&mut self.state).await?;
        if self.state.metadata.is_some() {
            return Ok(());
        }
        let actions = vec![
            Action::Protocol(Protocol::default()),
            Action::Metadata(self.metadata.clone()),
        ];
        self.log
            .commit_once(&mut self.state, "tandem", 0, actions, ATTEMPTS)
            .await?;
        Ok(())
    }

    /// A loaded partition's files are reconciled before its next commit.
    pub(super) fn loaded(&mut self, partition: i32) {
        self.unsettled.insert(partition);
    }

    /// Commits what manifest `seq` of `partition` published: `files` (this roll's), or every
    /// file of `manifest` the log lacks when the partition is unsettled. A failure leaves the
    /// partition unsettled (the manifest is published: the next roll or start repairs the log).
    pub(super) async fn publish(
        &mut self,
        store: &Arc<dyn ObjectStore>,
        partition: i32,
        seq: u64,
        manifest: &PartitionManifest,
        files: &[ArchivedFile],
        now: EventTime,
    ) {
        let started = std::time::Instant::now();
        let result = self
            .commit(store, partition, seq, manifest, files, now)
            .await;
        metrics::histogram!("tandem_archive_delta_commit_seconds")
            .record(started.elapsed().as_secs_f64());
        match result {
            Ok(()) => {
                self.unsettled.remove(&partition);
            }
            Err(err) => {
                metrics::counter!("tandem_archive_delta_errors_total").increment(1);
                tracing::warn!(topic = %self.topic, partition, seq, %err, "delta commit failed; the partition is reconciled next time");
                self.unsettled.insert(partition);
            }
        }
    }

    async fn commit(
        &mut self,
        store: &Arc<dyn ObjectStore>,
        partition: i32,
        seq: u64,
        manifest: &PartitionManifest,
        files: &[ArchivedFile],
        now: EventTime,
    ) -> delta::Result<()> {
        self.ensure_created().await?;
        let all;
        let files = if self.unsettled.contains(&partition) {
            all = manifest
                .all_files(store)
                .await
                .map_err(|e| delta::Error::Files(e.to_string()))?;
            &all
        } else {
            files
        };
        let adds: Vec<Action> = files
            .iter()
            .filter_map(|f| self.add_of(f, now))
            .filter(|a| match a {
                Action::Add(add) => !self.state.files.contains_key(&add.path),
                _ => true,
            })
            .collect();
        if adds.is_empty() {
            return Ok(());
        }
        let app = format!("p{partition:05}");
        self.log
            .commit_once(&mut self.state, &app, seq as i64, adds, ATTEMPTS)
            .await?;
        Ok(())
    }

    /// The `add` of an archived file: its path below the root and its `date=…/hour=…`
    /// partition values (from the path the archive wrote), rows and time bounds.
    fn add_of(&self, file: &ArchivedFile, now: EventTime) -> Option<Action> {
        let root = format!("{}/", layout::archive_root(&self.topic));
        let path = file.path.strip_prefix(&root)?.to_owned();
        let partition_values = path
            .split('/')
            .filter_map(|part| part.split_once('='))
            .map(|(k, v)| (k.to_owned(), Some(v.to_owned())))
            .collect();
        let bound = |t: EventTime| {
            chrono::DateTime::<chrono::Utc>::from_timestamp_millis(t.millis())
                .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
                .unwrap_or_default()
        };
        Some(Action::Add(Add {
            path,
            partition_values,
            size: file.bytes as i64,
            modification_time: now.millis(),
            data_change: true,
            stats: Some(delta::log::stats(
                file.rows,
                Some((&self.time_field, bound(file.min_time), bound(file.max_time))),
            )),
        }))
    }
}
