//! The batch layer: the immutable master dataset and exact views recomputed from it.
//!
//! ```text
//!  Kafka topic ──► archive (own consumer group)       dimension table topic ──► archive (its
//!                    │ Parquet files per partition      own group: the table's changelog, rows
//!                    │ and event hour, then a           timed by their validity)
//!                    ▼ partition manifest
//!                 object store: archive/<topic>/date=…/hour=…/*.parquet + _manifest/p…/
//!                    │
//!  scheduler ◄── POST /v1/jobs, cron
//!     │ job (view | all, from, to) on a dedicated runtime
//!     ▼
//!  recompute: plan (archive completeness, and each joined table's) ─► DataFusion SQL over
//!     pruned files (a joined view: each event as of its time with its tables' rows) ─► segment
//!     ▼
//!  catalog: view manifest (create-if-absent) ─► in-memory PublishedView ─► serving layer
//! ```
//!
//! # Subsystems
//! - [`archive`]: exactly-once archival of every valid event, with per-partition manifests.
//! - [`recompute`]: planning (which windows are ready), SQL generation and execution.
//! - [`catalog`]: publication and loading of exact view results.
//! - [`delta`]: Delta Lake transaction logs over published files (not wired yet, issue 33).
//! - [`scheduler`]: job queue, cron schedule and job records.
//! - [`tables`]: the archive as the SQL `events` table, with time pruning from query filters.
//! - `settings`: `[archive]` and `[batch]` ([`ArchiveSettings`], [`BatchSettings`]) with their
//!   defaults.
//!
//! Publication goes through `tandem_store`'s manifest chains; time comes from an injected
//! `tandem_shared::clock::Clock`. Errors say whose problem they are (`kind()`), which is what the
//! scheduler's retry decision reads.
//!
//! # Invariants
//! - A manifest is the only point of publication; objects it does not name are invisible.
//! - A window is published as exact only when the archive is complete past its end plus the
//!   view's allowed lateness on every partition of the topic (and of every table it joins).
//! - A segment records the archive offsets (and its tables') it read; rows archived after them
//!   make the windows they may change dirty.
//! - Results of one view version are never served for another: manifests live under the
//!   version's directory.

pub mod archive;
pub mod catalog;
pub mod delta;
pub mod recompute;
pub mod scheduler;
mod settings;
pub mod tables;

pub use archive::{Archive, ArchiveConfig, ArchiveProgress, ArchiveSnapshot};
pub use catalog::{PublishedView, ViewCatalog};
pub use recompute::Recompute;
pub use scheduler::{
    CancelError, JobRecord, JobRequest, JobStatus, Scheduler, SchedulerConfig, SubmitError, Trigger,
};
pub use settings::{ArchiveSettings, BatchSettings};
