//! The contract between Tandem's layers.
//!
//! Everything in this crate crosses a layer boundary: on the wire (the JSON events on Kafka), on
//! disk (the object-store layout), or in a query (view definitions, final values, rows and the
//! batch layer's coverage). Nothing here does I/O. Partial aggregates are the speed layer's own
//! and live there; the sketches they use cross the boundary (the batch layer stores them for
//! rollups), so their parameters and hashing live here.
//!
//! ```text
//!  Kafka topic ──JSON──► event::EventDecoder ──Arrow batch──► speed layer (window state)
//!       │                      (same decoder)                 │ ViewRow (approximate)
//!       └──────────────► batch layer: archive (Parquet, layout) ──► recompute (DataFusion)
//!                                                                │ ViewRow (exact) + Coverage
//!                                       serving ◄────────────────┘
//!                   merge per window: Coverage says batch, otherwise speed
//! ```
//!
//! - [`schema`] and [`event`]: the declared event fields and the one decoder (JSON, Avro,
//!   Protobuf, Debezium envelopes) both consumers use, so an event is malformed for every layer
//!   or for none; and the one admission decision (`event::Admission`).
//! - [`view`] and [`window`]: view definitions and the one watermark rule
//!   (`ViewDefinition::watermark`). Filter and aggregate-argument expressions are kept
//!   as SQL text and evaluated by DataFusion in both layers.
//! - [`table`]: dimension tables a view joins (`merchants.category`), and the rules both
//!   layers follow: a row's validity time, a deleted row, qualified column names.
//! - [`join_stream`]: a view over two topics matched by key within an interval
//!   (`payments.amount`), and its rules: the match interval, the watermark it holds back.
//! - [`sketch`]: HyperLogLog and KLL as both layers build them, and the per-window state the
//!   batch layer stores for rollups.
//! - [`decimal`]: exact decimal values (`decimal(P, S)` fields, money) and their text form.
//! - [`value`]: final aggregate values, one JSON shape whichever layer computed them.
//! - [`error`]: whose problem an error is (user, transient, internal).
//! - [`coverage`]: the windows the batch layer has published; the single source of truth for
//!   which layer answers a window.
//! - [`row`]: the rows the layers hand to the serving layer.
//! - [`layout`]: every object-store key.
//! - [`time`]: event time in epoch milliseconds and spans of it; [`settings`]: sizes in bytes and
//!   the shape of a setting's problem, for each layer's settings.
//! - [`clock`]: wall-clock time, injected into both layers so time-dependent decisions are
//!   testable without sleeping.
//! - `testing` (feature `testing`): fixtures for the other crates' tests.

pub mod clock;
pub mod coverage;
pub mod decimal;
pub mod error;
pub mod event;
pub mod join_stream;
pub mod layout;
pub mod row;
pub mod schema;
pub mod settings;
pub mod sketch;
pub mod table;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod time;
pub mod value;
pub mod view;
pub mod window;
