//! `tandem bench`: the layers measured on generated order events.
//!
//! - [`speed`]: events per CPU-second through the speed layer (JSON, Avro or Protobuf payloads;
//!   the [`profile`]s `simple` and `mix`), produce → queryable latency, instructions per event
//!   ([`instructions`], by callgrind) and state bytes per group ([`state`]).
//! - [`alerts`]: produce → alert-readable latency of an output rule under a load with a spike.
//! - [`scale`]: speed throughput with one and two worker processes, and fan-out query latency
//!   with three.
//! - [`batch`]: recompute throughput next to DuckDB over the same Parquet files.
//! - [`history`]: serving memory, publication time and query latency on day 1 and day N.
//! - [`load`]: view query latency from a separate load process while the speed layer ingests,
//!   and ingestion with and without that query load.

pub mod alerts;
pub mod batch;
pub mod history;
pub mod instructions;
pub mod load;
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

/// The JSON of one generated order event.
pub(crate) fn order_json(
    seq: u64,
    ts: i64,
    city: &str,
    user: &str,
    amount: f64,
    event_type: &str,
) -> String {
    format!(
        r#"{{"order_id":"o-{seq}","ts":{ts},"city":"{city}","user_id":"{user}","amount":{amount:.2},"event_type":"{event_type}"}}"#
    )
}
