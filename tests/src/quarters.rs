//! A deterministic stream of orders whose amounts are quarters (sums exact in any order), the
//! `by_city` answer expected of it, and the answer read from `tandem run`: the oracle of the
//! tests that kill, restart and split Tandem processes (`fixtures/recovery.toml`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};

use crate::TestServer;

pub const MINUTE: i64 = 60_000;
/// The topics of [`crate::RunFixture`] for these tests.
pub const TOPICS: &[&str] = &["orders:4", "orders.dlq:1", "orders.late:1"];
const CITIES: [&str; 4] = ["Chennai", "Berlin", "Lagos", "Lima"];

/// Event `i`: deterministic, amounts in quarters so that sums are exact in any order.
pub fn event(i: i64, base: i64) -> (String, i64, &'static str, f64) {
    let ts = base + i * 250;
    let city = CITIES[(i * 7 % 4) as usize];
    let amount = ((i * 37) % 400 + 1) as f64 * 0.25;
    let payload = json!({"ts": ts, "city": city, "amount": amount}).to_string();
    (payload, ts, city, amount)
}

pub async fn produce(
    producer: &FutureProducer,
    base: i64,
    range: std::ops::Range<i64>,
) -> anyhow::Result<()> {
    let mut pending = Vec::new();
    for i in range {
        let (payload, ..) = event(i, base);
        let key = format!("k{}", i % 97);
        pending.push(
            producer
                .send_result(FutureRecord::to("orders").key(&key).payload(&payload))
                .map_err(|(e, _)| e)?,
        );
    }
    for p in pending {
        p.await?.map_err(|(e, _)| e)?;
    }
    Ok(())
}

pub type Answer = BTreeMap<(i64, String), (i64, f64, f64)>;

pub fn expected(base: i64, n: i64) -> Answer {
    let mut out: Answer = BTreeMap::new();
    for i in 0..n {
        let (_, ts, city, amount) = event(i, base);
        let e = out
            .entry((ts - ts.rem_euclid(MINUTE), city.to_owned()))
            .or_insert((0, 0.0, f64::MIN));
        e.0 += 1;
        e.1 += amount;
        e.2 = e.2.max(amount);
    }
    out
}

pub async fn answer(client: &reqwest::Client, server: &TestServer) -> anyhow::Result<Answer> {
    let body: Value = client
        .get(server.url("/v1/views/by_city"))
        .send()
        .await?
        .json()
        .await?;
    answer_of(&body)
}

/// The `by_city` rows of a `GET /v1/views/by_city` body.
pub fn answer_of(body: &Value) -> anyhow::Result<Answer> {
    let mut out = Answer::new();
    for row in body["rows"].as_array().context("rows")? {
        let start =
            chrono::DateTime::parse_from_rfc3339(row["window_start"].as_str().context("start")?)?
                .timestamp_millis();
        let city = row["group"]["city"].as_str().context("city")?.to_owned();
        let v = &row["values"];
        let values = (
            v["n"].as_i64().context("n")?,
            v["total"].as_f64().context("total")?,
            v["biggest"].as_f64().context("biggest")?,
        );
        ensure!(out.insert((start, city), values).is_none(), "duplicate row");
    }
    Ok(out)
}

pub fn total(a: &Answer) -> i64 {
    a.values().map(|v| v.0).sum()
}

/// Waits until the answer holds `n` events, failing if it ever holds more.
pub async fn wait_for_total(
    client: &reqwest::Client,
    server: &TestServer,
    n: i64,
    timeout: Duration,
) -> anyhow::Result<Answer> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(a) = answer(client, server).await {
            let seen = total(&a);
            ensure!(
                seen <= n,
                "{seen} events counted, only {n} produced: double counting"
            );
            if seen == n {
                return Ok(a);
            }
            if Instant::now() > deadline {
                bail!("only {seen} of {n} events after {timeout:?}");
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
