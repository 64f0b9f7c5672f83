//! The demo generator of `tandem dev --demo`: realistic order events produced through Kafka.
//!
//! Orders from a fixed set of cities and users, log-normally distributed amounts, a mix of event
//! types, event times up to a few seconds in the past (so events arrive slightly out of order,
//! within the demo views' allowed lateness), and an occasional malformed message so the
//! dead-letter topic has something to show.

use std::time::Duration;

use chrono::Utc;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, ThreadedProducer};
use tokio_util::sync::CancellationToken;

const CITIES: [&str; 8] = [
    "Chennai",
    "Mumbai",
    "Bengaluru",
    "Berlin",
    "São Paulo",
    "Lagos",
    "Tokyo",
    "Toronto",
];
const EVENT_TYPES: [(&str, u32); 4] = [
    ("order_placed", 70),
    ("payment_captured", 18),
    ("order_cancelled", 8),
    ("refund_issued", 4),
];

/// One generated message: key and payload.
fn next_event(rng: &mut StdRng, seq: u64) -> (String, String) {
    let user = rng.random_range(0..5_000u32);
    let key = format!("u-{user:05}");
    if seq % 250 == 249 {
        let payload = match (seq / 250) % 3 {
            0 => "{\"ts\": \"not-a-time\", \"city\": \"Chennai\"}".to_owned(),
            1 => format!("{{\"city\": \"Tokyo\", \"user_id\": \"{key}\", \"amount\": \"12.50\"}}"),
            _ => "order placed in Berlin for 12 EUR".to_owned(),
        };
        return (key, payload);
    }
    let city = CITIES[rng.random_range(0..CITIES.len())];
    let mut pick = rng.random_range(0..100u32);
    let mut event_type = EVENT_TYPES[0].0;
    for (name, weight) in EVENT_TYPES {
        if pick < weight {
            event_type = name;
            break;
        }
        pick -= weight;
    }
    // Log-normal amounts via Box-Muller: median around 33, a long tail of large orders.
    let (u1, u2): (f64, f64) = (rng.random_range(1e-9..1.0), rng.random());
    let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
    let amount = ((3.5 + 0.8 * z).exp() * 100.0).round() / 100.0;
    let delay_ms = if rng.random_ratio(1, 20) {
        rng.random_range(2_000..8_000)
    } else {
        rng.random_range(0..2_000)
    };
    let ts = Utc::now().timestamp_millis() - delay_ms;
    let payload = serde_json::json!({
        "order_id": format!("o-{seq:09}"),
        "ts": ts,
        "city": city,
        "user_id": key,
        "amount": amount,
        "event_type": event_type,
    })
    .to_string();
    (key, payload)
}

/// Produces about `rate` events per second to `topic` until cancelled.
pub async fn run(brokers: String, topic: String, rate: u32, cancel: CancellationToken) {
    let producer: ThreadedProducer<DefaultProducerContext> = match ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "5")
        .create()
    {
        Ok(p) => p,
        Err(err) => {
            tracing::error!(%err, "demo generator cannot create a producer");
            return;
        }
    };
    tracing::info!(%topic, rate, "demo generator producing");
    let mut rng = StdRng::from_os_rng();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let per_tick = (rate / 10).max(1);
    let mut seq = 0u64;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        for _ in 0..per_tick {
            let (key, payload) = next_event(&mut rng, seq);
            seq += 1;
            let record = BaseRecord::to(&topic).key(&key).payload(&payload);
            match producer.send(record) {
                Ok(()) => {}
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => break,
                Err((err, _)) => tracing::warn!(%err, "demo event not produced"),
            }
        }
    }
    let _ = rdkafka::producer::Producer::flush(&producer, Duration::from_secs(5));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_mostly_valid_events_and_some_malformed_ones() {
        let mut rng = StdRng::seed_from_u64(7);
        let events: Vec<_> = (0..1000).map(|i| next_event(&mut rng, i).1).collect();
        let valid: Vec<serde_json::Value> = events
            .iter()
            .filter_map(|p| serde_json::from_str::<serde_json::Value>(p).ok())
            .filter(|v| v.get("ts").is_some_and(|t| t.is_i64()))
            .collect();
        assert_eq!(valid.len(), 996);
        let cities: std::collections::BTreeSet<_> =
            valid.iter().map(|v| v["city"].to_string()).collect();
        assert_eq!(cities.len(), CITIES.len());
        assert!(
            valid
                .iter()
                .all(|v| v["amount"].as_f64().is_some_and(|a| a > 0.0))
        );
    }
}
