//! `tandem-bench`: the layers measured on generated order events, apart from the shipped
//! `tandem` binary (as DataFusion keeps its benchmarks apart from its command line).
//!
//! ```text
//!  generated orders ─► producers (JSON, Avro, Protobuf) ─► embedded broker (child process)
//!        │                                                     │
//!        │                      speed layer in this process ◄──┘  ─► events per CPU-second,
//!        │                                                           produce → queryable latency
//!        └─► archive (Parquet, imported) ─► recompute ◄─ DuckDB over the same files
//!  `tandem run` children (scale), a serving child (history), a query-load child (load)
//! ```
//!
//! - [`speed`]: events per CPU-second through the speed layer (JSON, Avro or Protobuf payloads;
//!   the [`profile`]s `simple` and `mix`), produce → queryable latency, instructions per event
//!   ([`instructions`], by callgrind) and state bytes per group ([`state`]).
//! - [`alerts`]: produce → alert-readable latency of an output rule under a load with a spike.
//! - [`scale`]: speed throughput with one and two worker processes, and fan-out query latency
//!   with three.
//! - [`batch`]: recompute throughput next to DuckDB over the same Parquet files.
//! - [`doors`]: the SQL benchmark's queries through `POST /v1/sql` and the PostgreSQL protocol,
//!   and a large scan through Flight SQL and JSON.
//! - [`history`]: serving memory, publication time and query latency on day 1 and day N.
//! - [`load`]: view query latency from a separate load process while the speed layer ingests,
//!   and ingestion with and without that query load.
//!
//! - `harness` (the broker child, the Kafka settings on a topic) and `measure` (CPU, memory,
//!   percentiles of this process) are what the benchmarks share; `producers` writes the load.
//!
//! Child processes: the embedded broker and the internal measurements are this binary's own
//! hidden commands; `tandem run` is the shipped binary, found by [`tandem_exe`].

pub mod alerts;
pub mod batch;
pub mod doors;
mod harness;
pub mod history;
pub mod instructions;
pub mod load;
mod measure;
mod payloads;
pub mod producers;
pub mod profile;
pub mod scale;
pub mod speed;
mod sql;
pub mod state;

/// The storage and schema both benchmarks use, as configuration text: the store is replaced
/// where a benchmark needs files.
const SCHEMA: &str = r#"
[storage]
url = "memory://"

[schema]
time_field = "ts"
fields = { order_id = "string", city = "string", user_id = "string", amount = "float64", event_type = "string" }
"#;

/// The view both benchmarks compute: orders per city and minute.
const ORDERS_BY_CITY: &str = r#"
[[views]]
name = "orders_by_city"
window = { tumbling = "1m" }
group_by = ["city"]
filter = "event_type = 'order_placed'"
allowed_lateness = "10s"
aggregates = ["count(*) AS orders", "sum(amount) AS revenue", "min(amount) AS min_amount",
              "max(amount) AS max_amount", "avg(amount) AS avg_amount"]
"#;

/// Cities of generated orders.
const CITIES: [&str; 8] = [
    "Chennai",
    "Mumbai",
    "Bengaluru",
    "Berlin",
    "Sao Paulo",
    "Lagos",
    "Tokyo",
    "Toronto",
];

use rand::Rng;
use rand::rngs::StdRng;
pub(crate) use tandem_shared::testing::orders::order_json;

/// The random parts of an order: user, amount, event type.
pub(crate) fn order_values(rng: &mut StdRng) -> (String, f64, &'static str) {
    let event_type = if rng.random_ratio(7, 10) {
        "order_placed"
    } else {
        "payment_captured"
    };
    let user = format!("u-{}", rng.random_range(0..100_000));
    let amount = rng.random_range(1.0..500.0f64);
    (user, amount, event_type)
}

/// The shipped `tandem` binary the scale benchmark runs as worker processes: `TANDEM_BIN` if
/// set, else `tandem` next to this binary (`cargo build --release --bin tandem --bin
/// tandem-bench` puts both there).
pub fn tandem_exe() -> anyhow::Result<std::path::PathBuf> {
    if let Some(path) = std::env::var_os("TANDEM_BIN") {
        return Ok(path.into());
    }
    let exe = std::env::current_exe()?;
    let sibling = exe.with_file_name("tandem");
    anyhow::ensure!(
        sibling.is_file(),
        "{} not found: build it (cargo build --release --bin tandem) or set TANDEM_BIN",
        sibling.display()
    );
    Ok(sibling)
}
