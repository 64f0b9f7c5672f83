//! How Tandem uses the systems below both layers: the object store and the Kafka consumer.
//!
//! ```text
//!  speed layer ──checkpoint objects──┐          ┌──partition manifests── archive
//!                                    ▼          ▼
//!                ManifestChain: write immutable objects, then create manifest <seq>
//!                (create-if-absent: the one point of publication; the loser is fenced)
//!                                    ▲
//!  view catalog ──segments───────────┘
//!
//!  backend::open(storage settings) ──► Arc<dyn ObjectStore>: file:// (default, durable:
//!                                      fsync before a write returns), memory://, s3://
//!  backend::check_create_if_absent ◄── start-up: refuse a store that would not fence writers
//!  kafka::consumer_config / record_lag ◄── the speed and archive consumers
//!  registry::read_resolved ◄── both consumers: writer schemas fetched by id, waited for
//!  members: heartbeats and ownership epochs ◄── speed workers announce, serving fans out
//!  lease: one term object per holder's term ◄── the batch scheduler, one process at a time
//!  fault::crash_point ◄── every publication protocol, for recovery tests
//! ```
//!
//! - [`manifest`]: the generic manifest chain and what the store must guarantee for it.
//! - [`object`]: single-object reads and writes with the path in every error.
//! - [`backend`]: opening the store the settings name, and checking it honours create-if-absent.
//! - [`durable`]: the local filesystem with every write on disk before it returns.
//! - [`kafka`]: the consumer configuration and lag statistics both consumers share.
//! - [`lease`]: a lease built on create-if-absent terms (which process schedules batch jobs).
//! - [`members`]: speed workers' heartbeats, ownership epochs, and who owns which partition.
//! - [`registry`]: the schema registry client (Avro and Protobuf writer schemas by id).
//! - [`fault`]: crash points and, with the `testing` feature, a store that fails on purpose.
//!
//! # Invariants
//! - An object is visible to readers only once a manifest names it; every writer publishes by
//!   creating the next manifest of a chain, never by overwriting one. (A speed worker's heartbeat
//!   in [`members`] is overwritten: a liveness signal, never a publication.)
//! - Paths come from `tandem_shared::layout`; nothing here formats a key of its own except the
//!   manifest file name inside a chain's directory.

pub mod backend;
pub mod durable;
pub mod fault;
pub mod kafka;
pub mod lease;
pub mod manifest;
pub mod members;
pub mod object;
pub mod registry;

pub use backend::{StorageSettings, check_create_if_absent, open};
pub use manifest::ManifestChain;
