//! The serving layer: one HTTP answer from two layers, and the `tandem` process.
//!
//! ```text
//!   GET /v1/views/{name} ──► api ──► catalog snapshot (batch rows + coverage)
//!                                 └► speed layer rows
//!                                 └► merge: covered windows from batch, the rest from speed
//!   POST /v1/jobs ─────────► scheduler (batch layer) ──► publication ──► catalog
//!                                                                          │ change
//!                                          reconcile: release covered speed state, measure drift
//! ```
//!
//! - [`config`]: the TOML contract and its validation.
//! - [`app`]: wiring and ordered shutdown.
//! - [`api`]: the axum router.
//! - [`merge`]: the seam between the layers (pure).
//! - [`reconcile`]: speed-state release and drift measurement.
//! - [`broker`], [`demo`]: the embedded Kafka broker and demo generator of `tandem dev`.
//! - [`bench`]: `tandem bench speed`; [`batch_run`]: `tandem batch run`.
//! - [`storage`]: opening the object store.
//! - [`topics`]: the events topic checked and the side topics created at start-up.

pub mod api;
pub mod app;
pub mod batch_run;
pub mod bench;
pub mod bench_batch;
pub mod broker;
pub mod config;
pub mod demo;
pub mod merge;
pub mod reconcile;
pub mod storage;
pub mod topics;
