//! The speed benchmarks' workloads: which views, over which generated events.
//!
//! - `simple`: the quick-start view `orders_by_city` (one-minute tumbling windows, 8 cities, a
//!   filter and five aggregates) over orders with float amounts.
//! - `mix`: the demo's views (`orders_by_city`, `events_by_type`, decimal amounts) plus, over
//!   1,000 merchants and 100,000 users, revenue per merchant and minute, a hopping view with
//!   `count(DISTINCT user_id)` and `percentile(amount, 0.99)` per merchant, and a session view
//!   per user: 1,000 groups per window, and 100,000 session keys.
//! - `dedup`: `simple` with `[schema] id_field = "order_id"` (every order id distinct, the
//!   worst case for memory: every id is remembered) and a 10-minute `[speed] dedup_horizon`.
//! - `enriched`: `simple`'s view grouped by the merchant's category instead of the city: every
//!   order carries one of 100,000 merchants, joined with a 100,000-row dimension table
//!   ([`MERCHANT_ROWS`], topic [`MERCHANTS_TOPIC`]) of 8 categories.
//! - `joined`: `simple`'s view over orders joined with their payments (topic
//!   [`PAYMENTS_TOPIC`], as many partitions, one payment per order up to 10 minutes after it,
//!   both keyed by the order id) within 15 minutes: the placed orders' paid amounts per city.

use rand::Rng;
use rand::rngs::StdRng;

use super::harness::CONFIG;
use super::{CITIES, ORDERS_BY_CITY, SCHEMA, order_json, order_values};
use tandem::config::Config;

/// A speed benchmark workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Simple,
    Mix,
    Dedup,
    Enriched,
    Joined,
}

/// The joined profile's second topic.
pub const PAYMENTS_TOPIC: &str = "bench-payments";

/// The joined profile's view: `orders_by_city`'s filter and grouping over orders joined with
/// their payments.
const JOINED: &str = r#"
[[views]]
name = "orders_by_city"
window = { tumbling = "1m" }
join_stream = { topic = "bench-payments", name = "payments", on = "order_id", within = "15m", fields = { amount = "float64" } }
group_by = ["city"]
filter = "event_type = 'order_placed'"
allowed_lateness = "10s"
aggregates = ["count(*) AS orders", "sum(payments.amount) AS paid", "max(payments.amount) AS max_paid"]
"#;

/// The payment of order `seq` placed at `ts`: up to 10 minutes later, keyed by the order id.
pub fn payment_json(seq: u64, ts: i64) -> (String, String) {
    let key = format!("o-{seq}");
    let json = format!(
        r#"{{"order_id":"{key}","ts":{},"amount":{:.2}}}"#,
        ts + (seq % 600) as i64 * 1_000,
        (seq % 500) as f64 + 0.5
    );
    (key, json)
}

/// Rows of the enriched profile's dimension table (and merchants its orders name).
pub const MERCHANT_ROWS: u64 = 100_000;
/// The enriched profile's dimension table's topic.
pub const MERCHANTS_TOPIC: &str = "bench-merchants";

/// The enriched profile's schema, table and view (`orders_by_city`'s filter and aggregates,
/// grouped by the joined category).
const ENRICHED: &str = r#"
[storage]
url = "memory://"

[schema]
time_field = "ts"
fields = { order_id = "string", city = "string", user_id = "string", merchant_id = "string", amount = "float64", event_type = "string" }

[[tables]]
name = "merchants"
topic = "bench-merchants"
key = "merchant_id"
fields = { merchant_id = "string", category = "string", fee = "float64" }

[[views]]
name = "orders_by_city"
window = { tumbling = "1m" }
join = [{ table = "merchants", on = "merchant_id" }]
group_by = ["merchants.category"]
filter = "event_type = 'order_placed'"
allowed_lateness = "10s"
aggregates = ["count(*) AS orders", "sum(amount) AS revenue", "min(amount) AS min_amount",
              "max(amount) AS max_amount", "avg(amount) AS avg_amount"]
"#;

/// Users of the mix.
const USERS: u64 = 100_000;
/// Merchants of the mix: the groups per window of its merchant views.
const MERCHANTS: u64 = 1_000;

/// The mix's storage, schema and views besides `orders_by_city` (the quick-start view, shared
/// with `simple`; over decimal amounts here, as in the demo).
const MIX: &str = r#"
[storage]
url = "memory://"

[schema]
time_field = "ts"
fields = { order_id = "string", city = "string", user_id = "string", merchant = "string", amount = "decimal(12, 2)", event_type = "string" }

[[views]]
name = "events_by_type"
window = { tumbling = "1m" }
group_by = ["event_type"]
allowed_lateness = "10s"
aggregates = ["count(*) AS events", "sum(amount) AS amount"]

[[views]]
name = "merchant_revenue"
window = { tumbling = "1m" }
group_by = ["merchant"]
filter = "event_type = 'payment_captured'"
allowed_lateness = "10s"
aggregates = ["count(*) AS payments", "sum(amount) AS revenue", "max(amount) AS largest"]

[[views]]
name = "merchant_reach"
window = { hopping = "5m", every = "1m" }
group_by = ["merchant"]
allowed_lateness = "10s"
aggregates = ["count(DISTINCT user_id) AS buyers", "percentile(amount, 0.99) AS p99_amount"]

[[views]]
name = "user_sessions"
window = { session_gap = "5m" }
group_by = ["user_id"]
allowed_lateness = "10s"
aggregates = ["count(*) AS events", "sum(amount) AS spent"]
"#;

impl Profile {
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "simple" => Ok(Self::Simple),
            "mix" => Ok(Self::Mix),
            "dedup" => Ok(Self::Dedup),
            "enriched" => Ok(Self::Enriched),
            "joined" => Ok(Self::Joined),
            other => Err(format!(
                "unknown profile `{other}`: use simple, mix, dedup, enriched or joined"
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Simple => "simple",
            Self::Mix => "mix",
            Self::Dedup => "dedup",
            Self::Enriched => "enriched",
            Self::Joined => "joined",
        }
    }

    /// The workload's Kafka settings (see [`CONFIG`]), storage, schema and views.
    pub(super) fn config(self) -> anyhow::Result<Config> {
        let text = match self {
            Self::Simple | Self::Dedup => format!("{CONFIG}{SCHEMA}{ORDERS_BY_CITY}"),
            Self::Mix => format!("{CONFIG}{MIX}{ORDERS_BY_CITY}"),
            Self::Enriched => format!("{CONFIG}{ENRICHED}"),
            Self::Joined => format!("{CONFIG}{SCHEMA}{JOINED}"),
        };
        let mut config = Config::parse(&text, "bench")?;
        if self == Self::Dedup {
            config.schema.id_field = Some("order_id".into());
            config.speed.dedup_horizon = Some(tandem_shared::time::Span::from_millis(600_000));
        }
        Ok(config)
    }

    /// Event `seq` at time `ts`: its JSON, its user and whether it is a placed order (what
    /// `orders_by_city` counts).
    pub(super) fn event(self, rng: &mut StdRng, seq: u64, ts: i64) -> Generated {
        let (user, amount, event_type) = order_values(rng);
        let city = CITIES[(seq % 8) as usize];
        let placed = event_type == "order_placed";
        let (json, user) = match self {
            Self::Simple | Self::Dedup | Self::Joined => {
                (order_json(seq, ts, city, &user, amount, event_type), user)
            }
            Self::Enriched => {
                let merchant = rng.random_range(0..MERCHANT_ROWS);
                let json = format!(
                    r#"{{"order_id":"o-{seq}","ts":{ts},"city":"{city}","user_id":"{user}","merchant_id":"m-{merchant}","amount":{amount:.2},"event_type":"{event_type}"}}"#
                );
                (json, user)
            }
            Self::Mix => {
                let user = format!("u-{}", rng.random_range(0..USERS));
                let merchant = rng.random_range(0..MERCHANTS);
                let json = format!(
                    r#"{{"order_id":"o-{seq}","ts":{ts},"city":"{city}","user_id":"{user}","merchant":"m-{merchant}","amount":{amount:.2},"event_type":"{event_type}"}}"#
                );
                (json, user)
            }
        };
        Generated { json, user, placed }
    }
}

/// The enriched profile's dimension table: (key, JSON row) per merchant, 8 categories.
pub fn merchant_rows() -> impl Iterator<Item = (String, String)> {
    (0..MERCHANT_ROWS).map(|m| {
        let key = format!("m-{m}");
        let json = format!(
            r#"{{"merchant_id":"{key}","category":"cat-{}","fee":{:.2}}}"#,
            m % 8,
            (m % 5) as f64 * 0.01
        );
        (key, json)
    })
}

/// Fills the enriched profile's table without Kafka (the replay benchmarks), as its reader
/// would: every row decoded with the table's decoder and applied.
pub fn load_tables(speed: &tandem_speed_layer::SpeedLayer) -> anyhow::Result<()> {
    for table in speed.tables() {
        let definition = table.definition();
        let decoder = tandem_shared::event::EventDecoder::with_format(
            std::sync::Arc::clone(definition.schema()),
            &definition.format(),
        )?;
        let mut builder =
            tandem_shared::event::EventBatchBuilder::new(&decoder, MERCHANT_ROWS as usize);
        for (offset, (_, json)) in merchant_rows().enumerate() {
            // Any record time after `schema.min_time`: the rows are valid from long ago.
            match decoder.read_record(Some(json.as_bytes()), Vec::new(), Some(1_000_000_000_000)) {
                tandem_shared::event::Read::Event(e) => builder.append(&e, 0, offset as i64),
                other => anyhow::bail!("table row {json}: {other:?}"),
            }
        }
        table.apply(&builder.finish())?;
        table.set_loaded();
    }
    Ok(())
}

/// One generated event.
#[derive(Debug, Clone)]
pub(super) struct Generated {
    pub(super) json: String,
    /// Its `user_id`.
    pub(super) user: String,
    /// Whether `orders_by_city` counts it.
    pub(super) placed: bool,
}

/// How the benchmarks' producers key their events, which decides each event's partition (the
/// speed layer keeps state per partition).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keying {
    /// By the event's user, as a producer that wants each user's events in order does: a
    /// user's session lives in one partition.
    User,
    /// By a key unrelated to the event (10,007 keys in turn): every user's events spread over
    /// every partition, and so does their session state.
    Spread,
}

impl Keying {
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "user" => Ok(Self::User),
            "spread" => Ok(Self::Spread),
            other => Err(format!("unknown keying `{other}`: use user or spread")),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Spread => "spread",
        }
    }

    /// The Kafka key of event `seq`.
    pub(super) fn key(self, seq: u64, event: &Generated) -> String {
        match self {
            Self::User => event.user.clone(),
            Self::Spread => format!("u{}", seq % 10_007),
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use tandem_shared::event::{EventDecoder, Read};

    use super::*;

    #[test]
    fn every_profile_compiles_and_decodes_its_own_events() {
        for profile in [Profile::Simple, Profile::Mix, Profile::Joined] {
            let config = profile.config().unwrap_or_else(|e| panic!("{e}"));
            let decoder = EventDecoder::new(std::sync::Arc::new(config.schema.clone()));
            let mut rng = StdRng::seed_from_u64(1);
            for seq in 0..100 {
                let json = profile.event(&mut rng, seq, 1_800_000_000_000).json;
                let Read::Event(event) = decoder.read(Some(json.as_bytes())) else {
                    panic!("{}: {json} does not decode", profile.name());
                };
                assert_eq!(event.time.millis(), 1_800_000_000_000);
            }
            assert_eq!(Profile::parse(profile.name()), Ok(profile));
        }
        assert_eq!(config_views(Profile::Mix), 5);
    }

    fn config_views(profile: Profile) -> usize {
        profile.config().map_or(0, |c| c.views.len())
    }
}
