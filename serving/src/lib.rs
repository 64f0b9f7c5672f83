//! The serving layer: one answer from two layers, reconciliation, and the HTTP API.
//!
//! ```text
//!   GET /v1/views/{name} ──► api (parse) ──► seam::answer ──► catalog snapshot (coverage + exact rows)
//!                                                 │        └► speed layer rows (fresh)
//!                                                 ▼ re-check, then merge: covered windows from
//!                           api (render) ◄── Answer  batch, every other window from speed
//!   GET /v1/views/{name}?granularity= ──► seam::answer_with(window states) ──► rollup::roll
//!   POST /v1/sql ──► sql (DataFusion) ──► view tables (seam::answer) + events (archive)
//!   PostgreSQL protocol (postgres) ──┤ the same engine, runtime and limits
//!   Arrow Flight SQL (flight) ───────┘
//!   POST /v1/jobs ──────► scheduler (batch layer) ──► publication ──► catalog
//!                                                                      │ change
//!                        reconcile: release covered speed state, measure drift
//!   outputs: every 50 ms seam::answer ──► tracker (pure) ──► records ──► Kafka (idempotent)
//! ```
//!
//! - [`fleet`]: the speed side when workers share the partitions: every partition asked of its
//!   newest owner (Arrow IPC over HTTP), merged, or named missing.
//! - [`seam`]: the one function that answers a view query from both layers, and the pure merge.
//! - [`rollup`]: windows combined into coarser buckets or the global window: exact values
//!   exactly, sketches (stored by the batch layer, kept by the speed layer) merged.
//! - [`reconcile`]: speed-state release and drift measurement after each publication.
//! - [`outputs`]: views pushed to Kafka topics: updates, closes, batch corrections, alerts.
//! - [`access`]: bearer tokens with scopes, and request limits, in front of every route.
//! - [`server`]: connections accepted within a cap, with header and write-stall timeouts.
//! - [`page`]: answers a page at a time, with a position cursor.
//! - [`readiness`]: each component's condition, read by `/readyz`.
//! - [`sources`]: which layer answers which windows of a range (`/coverage`).
//! - `settings`: `[serving]` and `[http]` ([`ServingSettings`], [`HttpSettings`]) with their
//!   defaults.
//! - [`sql`]: read-only SQL over the views (through the seam) and the archive's `events`.
//! - [`postgres`], [`flight`]: the SQL doors for the tools people already use (psql, drivers,
//!   BI tools; ADBC and Flight SQL drivers), with TLS from [`tls`].
//! - [`api`]: the axum router; handlers parse and render, with `Serialize` response types; the
//!   OpenAPI description (`/openapi.json`, `/docs`) generated from the handlers, and the web
//!   console (`/`), one embedded page that reads the same API.
//!
//! # Invariants
//! - A window is answered by exactly one layer in one answer: the coverage read for the answer
//!   decides, for batch rows and speed rows alike.
//! - The speed layer releases a window only after the catalog installed the publication that
//!   covers it, so a reader never finds a window in neither layer.

pub mod access;
pub mod api;
pub mod fleet;
pub mod flight;
pub mod outputs;
pub mod page;
pub mod postgres;
pub mod readiness;
pub mod reconcile;
pub mod rollup;
pub mod seam;
pub mod server;
mod settings;
pub mod sources;
pub mod sql;
pub mod tls;

pub use access::{Access, HttpLimits, HttpPolicy, Scope, Token};
pub use api::{AppState, router};
pub use readiness::Readiness;
pub use reconcile::Reconciler;
pub use settings::{HttpSettings, ServingSettings, SqlSettings, TokenSettings};
