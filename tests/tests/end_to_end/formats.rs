//! Avro through a schema registry, end to end: `tandem run` reads orders written by apache-avro
//! in three schema versions on one topic, dead-letters each kind of bad payload with its reason,
//! waits out a registry outage without losing an event, and the batch layer's archive holds the
//! same rows.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context, ensure};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};
use tandem_tests::formats::{ORDER_V1, ORDER_V2, ORDER_V3, Order, SUBJECT, avro, framed};
use tandem_tests::{Ready, SchemaRegistry, TestServer, eventually, fixture, run_args, run_job};

use super::read_topic;

const MINUTE: i64 = 60_000;

/// The fixture configuration for `broker`, a file store under `dir` and the `[schema]` keys.
fn config(
    dir: &std::path::Path,
    broker: &str,
    schema_keys: &str,
) -> anyhow::Result<std::path::PathBuf> {
    let text = std::fs::read_to_string(fixture("formats.toml"))?
        .replace("@BROKERS@", broker)
        .replace("@STORE@", &dir.join("store").display().to_string())
        .replace("@FORMAT@", schema_keys);
    let path = dir.join("tandem.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

async fn send(producer: &FutureProducer, payloads: &[Vec<u8>]) -> anyhow::Result<()> {
    let mut pending = Vec::new();
    for (i, p) in payloads.iter().enumerate() {
        let key = format!("k{}", i % 5);
        pending.push(
            producer
                .send_result(FutureRecord::to("orders").key(&key).payload(p))
                .map_err(|(e, _)| e)?,
        );
    }
    for p in pending {
        p.await?.map_err(|(e, _)| e)?;
    }
    Ok(())
}

const CITIES: [&str; 3] = ["Pune", "Goa", "Agra"];

fn order(i: i64, base: i64) -> Order {
    Order {
        ts: base + i * 7_000,
        city: CITIES[(i % 3) as usize],
        amount: (i % 11 + 1) as f64 * 2.5,
        qty: (i % 4 + 1) as i32,
        tier: match i % 3 {
            0 => Some("GOLD"),
            1 => Some("BASIC"),
            _ => None,
        },
    }
}

/// by_city (window start, city) → (n, total, items), and by_tier (window start, tier) → n,
/// computed from the orders and what each schema version writes.
type ByCity = BTreeMap<(i64, String), (i64, Option<f64>, Option<i64>)>;
type ByTier = BTreeMap<(i64, String), i64>;

fn expected(orders: &[(u8, Order)]) -> (ByCity, ByTier) {
    let mut by_city = ByCity::new();
    let mut by_tier = ByTier::new();
    for (version, o) in orders {
        let start = o.ts - o.ts.rem_euclid(MINUTE);
        let e = by_city
            .entry((start, o.city.to_owned()))
            .or_insert((0, None, None));
        e.0 += 1;
        if *version < 3 {
            e.1 = Some(e.1.unwrap_or(0.0) + o.amount);
        }
        if *version >= 2 {
            e.2 = Some(e.2.unwrap_or(0) + i64::from(o.qty));
            if let Some(tier) = o.tier {
                *by_tier.entry((start, tier.to_owned())).or_default() += 1;
            }
        }
    }
    (by_city, by_tier)
}

async fn rows(
    client: &reqwest::Client,
    server: &TestServer,
    view: &str,
) -> anyhow::Result<Vec<Value>> {
    tandem_tests::view_rows(client, server, view).await
}

fn start(row: &Value) -> anyhow::Result<i64> {
    tandem_tests::millis(&row["window_start"])
}

async fn by_city(
    client: &reqwest::Client,
    server: &TestServer,
) -> anyhow::Result<(ByCity, BTreeSet<String>)> {
    let mut out = ByCity::new();
    let mut sources = BTreeSet::new();
    for row in rows(client, server, "by_city").await? {
        let v = &row["values"];
        let city = row["group"]["city"].as_str().context("city")?.to_owned();
        out.insert(
            (start(&row)?, city),
            (
                v["n"].as_i64().context("n")?,
                v["total"].as_f64(),
                v["items"].as_i64(),
            ),
        );
        sources.insert(row["source"].as_str().unwrap_or_default().to_owned());
    }
    Ok((out, sources))
}

async fn by_tier(client: &reqwest::Client, server: &TestServer) -> anyhow::Result<ByTier> {
    let mut out = ByTier::new();
    for row in rows(client, server, "by_tier").await? {
        let tier = row["group"]["customer.tier"]
            .as_str()
            .context("tier")?
            .to_owned();
        out.insert(
            (start(&row)?, tier),
            row["values"]["n"].as_i64().context("n")?,
        );
    }
    Ok(out)
}

fn total(a: &ByCity) -> i64 {
    a.values().map(|v| v.0).sum()
}

fn close(a: &ByCity, b: &ByCity) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|((ka, va), (kb, vb))| {
            ka == kb
                && va.0 == vb.0
                && va.2 == vb.2
                && match (va.1, vb.1) {
                    (Some(x), Some(y)) => (x - y).abs() < 1e-9,
                    (x, y) => x == y,
                }
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn avro_orders_evolve_survive_a_registry_outage_and_reach_both_layers() -> anyhow::Result<()>
{
    let data = tempfile::tempdir()?;
    let registry = SchemaRegistry::start().await?;
    let v1 = registry.register(SUBJECT, "AVRO", ORDER_V1).await?;
    let v2 = registry.register(SUBJECT, "AVRO", ORDER_V2).await?;
    let v3 = registry.register(SUBJECT, "AVRO", ORDER_V3).await?;
    // A writer that sends `amount` as a string: it cannot become the declared float64.
    let v4_text = ORDER_V1.replace(
        r#""name":"amount","type":"double""#,
        r#""name":"amount","type":"string""#,
    );
    let v4 = registry.register(SUBJECT, "AVRO", &v4_text).await?;
    ensure!(
        registry.register(SUBJECT, "AVRO", ORDER_V1).await? == v1,
        "re-registering returns the id"
    );
    let latest: Value = reqwest::get(format!(
        "{}/subjects/{SUBJECT}/versions/latest",
        registry.url
    ))
    .await?
    .json()
    .await?;
    ensure!(
        latest["id"] == json!(v4)
            && latest["version"] == json!(4)
            && latest["schema"] == json!(v4_text),
        "latest version of {SUBJECT}: {latest}"
    );

    let broker = TestServer::broker(&["orders:2", "orders.dlq:1"], data.path())?;
    let keys = format!(
        "format = \"avro\"\nregistry = {{ url = \"{}\" }}",
        registry.url
    );
    let config_path = config(data.path(), &broker.kafka, &keys)?;
    let mut server = TestServer::spawn(&run_args(&config_path), &[], data.path(), Ready::Http)?;
    server.kafka = broker.kafka.clone();
    let client = reqwest::Client::new();
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &broker.kafka)
        .set("linger.ms", "5")
        .create()?;

    let base = chrono::Utc::now().timestamp_millis() / MINUTE * MINUTE - 180 * MINUTE;
    let mut produced: Vec<(u8, Order)> = (0..40).map(|i| (1, order(i, base))).collect();
    let mut payloads: Vec<Vec<u8>> = produced.iter().map(|(_, o)| o.avro(1, v1)).collect();
    // Bad payloads, one of each kind.
    let good = order(0, base).avro(1, v1);
    let bad = [
        br#"{"ts": 1, "city": "Pune"}"#.to_vec(),
        good[..3].to_vec(),
        good[..good.len() - 4].to_vec(),
        framed(9_999, &good[5..]),
        avro(
            &v4_text,
            v4,
            vec![
                ("ts", apache_avro::types::Value::TimestampMillis(base)),
                ("city", apache_avro::types::Value::String("Pune".into())),
                ("amount", apache_avro::types::Value::String("12.50".into())),
            ],
        ),
    ];
    payloads.extend(bad.iter().cloned());
    send(&producer, &payloads).await?;
    let (want, _) = expected(&produced);
    eventually(Duration::from_secs(60), || async {
        let (got, _) = by_city(&client, &server).await?;
        ensure!(
            close(&got, &want),
            "v1 orders: got {} of {} events",
            total(&got),
            total(&want)
        );
        Ok(())
    })
    .await?;

    // The registry goes down; orders written with schemas Tandem has not seen wait for it.
    registry.set_available(false);
    let later: Vec<(u8, Order)> = (40..120)
        .map(|i| (if i < 80 { 2 } else { 3 }, order(i, base)))
        .collect();
    let payloads: Vec<Vec<u8>> = later
        .iter()
        .map(|(v, o)| o.avro(*v, if *v == 2 { v2 } else { v3 }))
        .collect();
    send(&producer, &payloads).await?;
    let readyz = eventually(Duration::from_secs(30), || async {
        let resp = client.get(server.url("/readyz")).send().await?;
        let status = resp.status().as_u16();
        let body: Value = resp.json().await?;
        let registry = body["reasons"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["component"] == "registry"))
            .cloned();
        ensure!(
            status == 503 && registry.is_some(),
            "readyz {status}: {body}"
        );
        Ok(registry.unwrap_or_default())
    })
    .await?;
    let reason = readyz["reason"].as_str().unwrap_or_default();
    ensure!(
        reason.contains("schema id") && reason.contains("waits"),
        "{readyz}"
    );
    // The consume thread is blocked on the unknown schema id (readiness says it waits), so
    // nothing after it can be applied until the registry answers: what the view holds now is
    // final for the outage.
    let (during, _) = by_city(&client, &server).await?;
    ensure!(
        total(&during) == 40,
        "nothing past the unknown schema is applied during the outage: {}",
        total(&during)
    );

    registry.set_available(true);
    produced.extend(later);
    let (want, want_tiers) = expected(&produced);
    eventually(Duration::from_secs(60), || async {
        let (got, _) = by_city(&client, &server).await?;
        ensure!(
            close(&got, &want),
            "after the outage: {} of {} events",
            total(&got),
            total(&want)
        );
        ensure!(by_tier(&client, &server).await? == want_tiers, "by_tier");
        Ok(())
    })
    .await?;
    eventually(Duration::from_secs(20), || async {
        let resp = client.get(server.url("/readyz")).send().await?;
        let status = resp.status();
        let body = resp.text().await?;
        ensure!(
            status.is_success(),
            "ready again after the outage: {status} {body}"
        );
        Ok(())
    })
    .await?;
    // Each schema is fetched once per consumer at most (both consumers share the decoder).
    for id in [v1, v2, v3] {
        ensure!(
            (1..=2).contains(&registry.lookups(id)),
            "schema {id}: {} lookups",
            registry.lookups(id)
        );
    }

    // Bad payloads went to the dead-letter topic, each with its reason; no good one did.
    let letters = read_topic(&server, "orders.dlq", bad.len()).await?;
    let reasons: BTreeSet<String> = letters
        .iter()
        .map(|(_, h)| h.get("error_kind").cloned().unwrap_or_default())
        .collect();
    let expected_reasons: BTreeSet<String> = [
        "wrong_magic_byte",
        "truncated",
        "unknown_schema",
        "schema_mismatch",
    ]
    .map(String::from)
    .into();
    ensure!(
        reasons == expected_reasons,
        "dead-letter reasons {reasons:?}"
    );
    ensure!(
        letters
            .iter()
            .filter(|(_, h)| h.get("error_kind").map(String::as_str) == Some("truncated"))
            .count()
            == 2,
        "two truncated payloads: {letters:?}"
    );

    // The batch layer recomputes from the archive of the decoded rows: the same answer, exact.
    // (Once the archive has rolled the events, the windows before the last are ready for it;
    // the last stays with the speed layer.)
    let got = eventually(Duration::from_secs(90), || async {
        let job = run_job(
            &client,
            &server,
            json!({"view": "by_city"}),
            Duration::from_secs(60),
        )
        .await?;
        let (got, sources) = by_city(&client, &server).await?;
        ensure!(
            sources.contains("batch"),
            "rows answered by {sources:?} after {job}"
        );
        Ok(got)
    })
    .await
    .map_err(|e| e.context(format!("log:\n{}", server.log())))?;
    run_job(
        &client,
        &server,
        json!({"view": "by_tier"}),
        Duration::from_secs(60),
    )
    .await?;
    ensure!(close(&got, &want), "after the recompute: {got:?}");
    ensure!(
        by_tier(&client, &server).await? == want_tiers,
        "by_tier after the recompute"
    );
    server.stop()?;
    Ok(())
}

/// Protobuf orders through the registry (`shop.Order`, message indexes `[0]`), written by prost:
/// every declared field arrives, `customer.tier` from the nested message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protobuf_orders_through_the_registry() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let registry = SchemaRegistry::start().await?;
    let id = registry
        .register(SUBJECT, "PROTOBUF", tandem_tests::formats::ORDER_PROTO)
        .await?;
    let broker = TestServer::broker(&["orders:2"], data.path())?;
    let keys = format!(
        "format = \"protobuf\"\nregistry = {{ url = \"{}\" }}\nmessage = \"shop.Order\"",
        registry.url
    );
    let config_path = config(data.path(), &broker.kafka, &keys)?;
    let mut server = TestServer::spawn(&run_args(&config_path), &[], data.path(), Ready::Http)?;
    server.kafka = broker.kafka.clone();
    let client = reqwest::Client::new();
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &broker.kafka)
        .create()?;
    let base = chrono::Utc::now().timestamp_millis() / MINUTE * MINUTE - 180 * MINUTE;
    // Protobuf carries every field of v2 (amount, qty and the customer).
    let orders: Vec<(u8, Order)> = (0..60).map(|i| (2, order(i, base))).collect();
    let payloads: Vec<Vec<u8>> = orders.iter().map(|(_, o)| o.protobuf(id)).collect();
    send(&producer, &payloads).await?;
    let (want, want_tiers) = expected(&orders);
    eventually(Duration::from_secs(60), || async {
        let (got, _) = by_city(&client, &server).await?;
        ensure!(
            close(&got, &want),
            "{} of {} events",
            total(&got),
            total(&want)
        );
        ensure!(by_tier(&client, &server).await? == want_tiers, "by_tier");
        Ok(())
    })
    .await
    .map_err(|e| e.context(format!("log:\n{}", server.log())))?;
    ensure!(
        registry.lookups(id) >= 1,
        "the schema came from the registry"
    );
    server.stop()?;
    Ok(())
}
