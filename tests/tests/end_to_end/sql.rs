//! `POST /v1/sql` on the running system: a view's table answers exactly what
//! `GET /v1/views/{name}` answers (one seam), and every window the batch layer published equals
//! a SQL aggregation of the raw `events` table (the archive) computed another way.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, ensure};
use serde_json::{Value, json};
use tandem_tests::{TestServer, eventually, millis, view_rows};

async fn sql(client: &reqwest::Client, server: &TestServer, query: &str) -> anyhow::Result<Value> {
    let resp = client
        .post(server.url("/v1/sql"))
        .json(&json!({ "sql": query }))
        .send()
        .await?;
    let status = resp.status();
    let body: Value = resp.json().await?;
    ensure!(status.is_success(), "{query}: {status} {body}");
    Ok(body)
}

type Rows = BTreeMap<(i64, String), (i64, String)>;

/// (window start ms, city) → (orders, source) of `orders_by_city` through the view API.
async fn api_rows(client: &reqwest::Client, server: &TestServer) -> anyhow::Result<Rows> {
    let mut out = Rows::new();
    for row in view_rows(client, server, "orders_by_city").await? {
        out.insert(
            (
                millis(&row["window_start"])?,
                row["group"]["city"].as_str().context("city")?.to_owned(),
            ),
            (
                row["values"]["orders"].as_i64().context("orders")?,
                row["source"].as_str().context("source")?.to_owned(),
            ),
        );
    }
    Ok(out)
}

pub(crate) async fn check(client: &reqwest::Client, server: &TestServer) -> anyhow::Result<()> {
    let rows = eventually(Duration::from_secs(30), || async {
        let before = api_rows(client, server).await?;
        let body = sql(
            client,
            server,
            "SELECT CAST(window_start AS BIGINT) AS s, city, orders, source \
             FROM orders_by_city ORDER BY s, city",
        )
        .await?;
        let mut got = Rows::new();
        for r in body["rows"].as_array().context("rows")? {
            got.insert(
                (
                    r[0].as_i64().context("s")?,
                    r[1].as_str().context("city")?.to_owned(),
                ),
                (
                    r[2].as_i64().context("orders")?,
                    r[3].as_str().context("source")?.to_owned(),
                ),
            );
        }
        let after = api_rows(client, server).await?;
        // Settled (the API answers the same before and after), and SQL agrees with it.
        ensure!(before == after, "the view changed while it was read");
        ensure!(got == after, "SQL {got:?}\nAPI {after:?}");
        Ok(after)
    })
    .await?;
    let body = sql(
        client,
        server,
        "SELECT CAST(ts AS BIGINT) - CAST(ts AS BIGINT) % 60000 AS s, city, count(*) AS n \
         FROM events WHERE event_type = 'order_placed' GROUP BY 1, 2",
    )
    .await?;
    let mut archived: BTreeMap<(i64, String), i64> = BTreeMap::new();
    for r in body["rows"].as_array().context("rows")? {
        archived.insert(
            (
                r[0].as_i64().context("s")?,
                r[1].as_str().context("city")?.to_owned(),
            ),
            r[2].as_i64().context("n")?,
        );
    }
    let batch: Vec<_> = rows.iter().filter(|(_, (_, s))| s == "batch").collect();
    ensure!(!batch.is_empty(), "no batch windows to compare");
    for ((start, city), (orders, _)) in batch {
        ensure!(
            archived.get(&(*start, city.clone())) == Some(orders),
            "window {start} {city}: published {orders}, events table {:?}",
            archived.get(&(*start, city.clone()))
        );
    }
    // A refused statement is a 400 naming why.
    let resp = client
        .post(server.url("/v1/sql"))
        .json(&json!({"sql": "DELETE FROM events"}))
        .send()
        .await?;
    ensure!(resp.status().as_u16() == 400, "DELETE: {}", resp.status());
    let body: Value = resp.json().await?;
    ensure!(body["error"]["code"] == "read_only", "{body}");
    Ok(())
}

/// `tandem sql` from the shell: the answer on stdout in the chosen format, a refused statement
/// on stderr with a non-zero exit.
#[test]
fn tandem_sql_answers_from_the_shell() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = std::fs::read_to_string(tandem_tests::fixture("orders.toml"))?.replace(
        "url = \"memory://\"",
        &format!("url = \"file://{}\"", dir.path().display()),
    );
    let path = dir.path().join("tandem.toml");
    std::fs::write(&path, config)?;
    let run = |query: &str| {
        std::process::Command::new(tandem_tests::tandem_binary()?)
            .args(["sql", "--config"])
            .arg(&path)
            .args(["--format", "csv", query])
            .output()
            .context("running tandem sql")
    };
    let out =
        run("SELECT count(*) AS n FROM events UNION ALL SELECT count(*) FROM orders_by_city")?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.stdout == b"n\n0\n0\n",
        "{:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = run("DROP TABLE events")?;
    ensure!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(stderr.contains("only queries"), "{stderr}");
    Ok(())
}
