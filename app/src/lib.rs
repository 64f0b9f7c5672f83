//! The `tandem` binary's library: configuration, wiring, the process lifecycle and the tooling
//! around it (embedded broker, demo generator). The benchmarks are the `tandem-bench` crate.
//!
//! ```text
//!  tandem.toml ──► config (parse, validate) ──► wiring (each layer's settings)
//!                                                   │
//!   run / dev ──► process::start: topics ─► speed layer, archive, scheduler, reconciler ─► HTTP
//!                                                                     └► doors: PostgreSQL, Flight SQL
//!                 process::Running::shutdown: backend first, then the HTTP frontend
//!   dev ────────► dev: embedded Kafka (mock cluster) + demo generator around process::start
//!   ballista ───► ballista: Ballista scheduler / executor with Tandem's store, functions
//!   batch run ──► batch_run: one recompute with a progress bar, no Kafka
//!   sql ────────► sql: one read-only query against the store (the serving layer's engine)
//! ```
//!
//! - [`config`]: the TOML contract and its validation.
//! - [`wiring`]: configuration into components, in one place.
//! - [`process`]: start-up and ordered shutdown of one process.
//! - [`roles`]: `--role speed,archive,batch,serve`: which parts one process runs.
//! - [`supervise`]: failed layer tasks restarted with backoff, or the process gives up.
//! - [`outputs`]: `[[outputs]]`, views pushed to Kafka topics (rules compiled, tasks started).
//! - [`probe`]: readiness conditions no task reports itself (assignment, object store).
//! - [`topics`]: the events topic checked and the side topics created at start-up.
//! - [`batch_run`]: `tandem batch run`.
//! - [`ballista`]: `tandem ballista scheduler|executor` (a remote recompute cluster).
//! - [`sql`]: `tandem sql`.
//! - [`doors`]: `[sql]`, the PostgreSQL and Flight SQL listeners.
//! - [`dev`]: `tandem dev` and `tandem broker` (the embedded broker, the demo generator).

pub mod ballista;
pub mod batch_run;
pub mod config;
pub mod dev;
pub mod doors;
pub mod outputs;
pub mod probe;
pub mod process;
pub mod roles;
pub mod sql;
pub mod supervise;
pub mod topics;
pub mod wiring;

/// Logs to standard error, filtered by `RUST_LOG` (info, librdkafka's own lines at warn, by
/// default); colored on a terminal.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,librdkafka=warn,rdkafka=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
