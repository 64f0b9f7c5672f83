//! The speed layer: Kafka → event-time windows → approximate, always-fresh view state.
//!
//! ```text
//!  Kafka topic (consumer group; partitions restored from checkpoints on assignment)
//!      │ poll: one micro-batch of whatever is buffered
//!      ▼
//!  EventDecoder ──malformed / too far in the future──► dead-letter topic (reason header)
//!      │  (JSON, Avro, Protobuf; an unseen schema id waits for the schema registry;
//!      │   Debezium tombstones and excluded snapshots are counted skips)
//!      │ one Arrow RecordBatch per micro-batch (event schema; rows of every partition)
//!      │ with an id field: per partition, ids seen within the horizon ──► dropped (counted)
//!      │ a view with `join`: each row's `on` key looked up in the dimension tables (read from
//!      │   their topics to the end before any event) ──► columns `table.field`
//!      │ a view with `join_stream`: per partition, its rows and the second topic's rows of
//!      │   the same partition number (consumed beside the events) buffered within `within`
//!      │   ──► joined rows (`payments.amount`); `left`: unmatched rows once `within` passed
//!      ▼
//!  per view: ViewProgram (DataFusion filter + argument expressions), once per micro-batch
//!      │ per partition's rows: window assignment against the view watermark and coverage
//!      ├──no open window──► late-events topic (per view)
//!      ▼
//!  partition → view → ViewState (window → group → PartialAggregate; hopping: pane → group)
//!      │   every checkpoint interval (one partition at a time) and on revocation:
//!      │   PartitionSnapshot ─► object store
//!      ▼
//!  query(view, range): merge partials of all partitions ◄── serving (same process)
//!  owned_partials(view, range) ─► Arrow IPC ─► serving instances (any process in the group)
//!  release(view, coverage): drop what the batch layer covers ◄── serving
//! ```
//!
//! # Subsystems
//! - [`SpeedLayer`] (`layer`): the state of every view over every owned partition, and the
//!   operations on it (apply a micro-batch, query, release, assign, revoke, snapshot).
//! - [`aggregate`]: mergeable partial aggregates and sketches (update / merge / evaluate).
//! - [`program`]: compiles a view to DataFusion physical expressions, so filters and arguments
//!   mean what they mean in the batch layer.
//! - [`state`]: per-view, per-partition window state (tumbling windows, hopping windows as
//!   panes, sessions), lateness, and the partial → final merge.
//! - [`watermark`]: event-time progress per partition, idle partitions.
//! - [`checkpoint`]: per-partition checkpoints published through manifests.
//! - [`announce`]: the worker's heartbeat in the store (owned partitions, epochs, address).
//! - [`partials`]: a worker's partial state per owned partition as Arrow IPC, for serving
//!   instances that answer for the whole group.
//! - `ingest`: the consume loop on a dedicated thread, rebalance handling, backpressure.
//! - `micro_batch`: a micro-batch applied, expressions evaluated once for all its partitions.
//! - [`tables`]: dimension tables (the latest row per key, read from their topics) and the join
//!   of a micro-batch with them.
//! - [`interval`]: the interval join of two streams by key (pure state and rules).
//! - `joined`: a view's joined stream: the second topic's decoder, each partition's buffers
//!   as Arrow rows (checkpointed with the partition), the joined rows as a record batch.
//! - `dedup`: the ids a partition has seen within the de-duplication horizon.
//! - `pacing`: which partition the consume loop checkpoints when (a round spread over time).
//! - `replay` (feature `bench`): the consume loop's work after librdkafka, fed without Kafka
//!   (benchmarks and instruction counts).
//! - `dead_letter`: the dead-letter and late-events producers.
//! - `settings`: `[speed]`, [`SpeedSettings`] with its defaults.
//!
//! # Invariants
//! - State is kept per Kafka partition. A partition's state and the offset it reflects move
//!   together (checkpoint on revocation, restore on assignment), so across workers and restarts
//!   every event is counted exactly once.
//! - Window state lives until the batch layer covers the window; the serving layer then calls
//!   [`SpeedLayer::release`], and from then on the window is answered by the batch layer only.
//! - Every consumed message ends up in exactly one place per view: a window's state, the
//!   dead-letter topic, or the late-events topic. (A joined stream's event is in the window
//!   state through its joined rows, or in a join buffer until `within` passed.)

pub mod aggregate;
pub mod announce;
pub mod checkpoint;
mod dead_letter;
mod dedup;
mod ingest;
pub mod interval;
mod joined;
mod layer;
mod micro_batch;
mod pacing;
pub mod partials;
pub mod program;
#[cfg(any(test, feature = "bench"))]
pub mod replay;
mod settings;
pub mod state;
pub mod tables;
pub mod watermark;

pub use ingest::{CheckpointSettings, Error as IngestError, SpeedConfig, start};
pub use layer::SpeedLayer;
pub use settings::SpeedSettings;
