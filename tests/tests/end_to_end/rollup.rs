//! Rollups on the running system: the global window adds up exactly what the view answers per
//! window, and `exact=true` recomputes from the archive what the batch layer published.

use std::collections::BTreeMap;

use anyhow::{Context, ensure};
use serde_json::Value;
use tandem_tests::{TestServer, millis, view_rows};

async fn rollup(
    client: &reqwest::Client,
    server: &TestServer,
    query: &[(&str, &str)],
) -> anyhow::Result<Vec<Value>> {
    let resp = client
        .get(server.url("/v1/views/orders_by_city"))
        .query(&[("from", "2000-01-01T00:00:00Z")])
        .query(query)
        .send()
        .await?;
    let status = resp.status();
    let body: Value = resp.json().await?;
    ensure!(status.is_success(), "{query:?}: {status} {body}");
    Ok(body["rows"].as_array().context("rows")?.clone())
}

fn city(row: &Value) -> anyhow::Result<String> {
    Ok(row["group"]["city"].as_str().context("city")?.to_owned())
}

fn orders(row: &Value) -> anyhow::Result<i64> {
    row["values"]["orders"].as_i64().context("orders")
}

pub(crate) async fn check(client: &reqwest::Client, server: &TestServer) -> anyhow::Result<()> {
    // The scenario has stopped producing, so the view is settled: its windows, added up per city,
    // are the global window's counts.
    let windows = view_rows(client, server, "orders_by_city").await?;
    let mut per_city: BTreeMap<String, i64> = BTreeMap::new();
    for w in &windows {
        *per_city.entry(city(w)?).or_default() += orders(w)?;
    }
    let global = rollup(client, server, &[("granularity", "all")]).await?;
    let mut got: BTreeMap<String, i64> = BTreeMap::new();
    for row in &global {
        got.insert(city(row)?, orders(row)?);
    }
    ensure!(
        got == per_city,
        "global window {got:?}, windows added up {per_city:?}"
    );

    // exact=true at the view's own grain: every window the archive holds completely is
    // recomputed from raw events; those the batch layer published must agree with it.
    let exact = rollup(client, server, &[("granularity", "1m"), ("exact", "true")]).await?;
    let recomputed: BTreeMap<(i64, String), &Value> = exact
        .iter()
        .filter(|r| r["source"] == "archive")
        .map(|r| Ok(((millis(&r["window_start"])?, city(r)?), r)))
        .collect::<anyhow::Result<_>>()?;
    ensure!(
        !recomputed.is_empty(),
        "no bucket recomputed from the archive: {exact:?}"
    );
    let mut compared = 0;
    for w in windows.iter().filter(|w| w["source"] == "batch") {
        let key = (millis(&w["window_start"])?, city(w)?);
        let Some(r) = recomputed.get(&key) else {
            continue;
        };
        ensure!(
            r["values"]["orders"] == w["values"]["orders"]
                && r["values"]["min_amount"] == w["values"]["min_amount"]
                && r["values"]["max_amount"] == w["values"]["max_amount"],
            "window {key:?}: published {}, recomputed {}",
            w["values"],
            r["values"]
        );
        compared += 1;
    }
    ensure!(compared > 0, "no published window was recomputed");
    Ok(())
}
