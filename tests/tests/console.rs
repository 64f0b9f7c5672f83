//! The web console in a real browser: headless Chromium (Debian's, driven through Playwright by
//! `tests/console/drive.py`) against `tandem dev --demo` with tokens configured. The page must
//! show a chart with batch and speed windows and the batch horizon, the same rows as the API,
//! and submit a job the API then knows; it must fetch nothing from anywhere else. A screenshot
//! is saved under the test's output directory.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, ensure};
use serde_json::{Value, json};
use tandem_tests::{Ready, TestServer, eventually, view_rows};

const TOKEN: &str = "console-admin-token";
const VIEW: &str = "orders_by_city";
const FROM: &str = "2000-01-01T00:00:00Z";

/// (window start, group) → (values, source).
type Rows = BTreeMap<(String, String), (Value, String)>;

fn keyed<'a>(rows: impl IntoIterator<Item = &'a Value>) -> anyhow::Result<Rows> {
    rows.into_iter()
        .map(|r| {
            Ok((
                (
                    r["window_start"]
                        .as_str()
                        .context("window_start")?
                        .to_owned(),
                    r["group"].to_string(),
                ),
                (
                    r["values"].clone(),
                    r["source"].as_str().context("source")?.to_owned(),
                ),
            ))
        })
        .collect()
}

/// Equal rows: the same source, and values equal up to float summation order (a batch window
/// recomputed again may add its floats in another order).
fn same(a: Option<&(Value, String)>, b: Option<&(Value, String)>) -> bool {
    let (Some((va, sa)), Some((vb, sb))) = (a, b) else {
        return false;
    };
    let (Some(va), Some(vb)) = (va.as_object(), vb.as_object()) else {
        return false;
    };
    sa == sb
        && va.len() == vb.len()
        && va.iter().all(|(k, x)| {
            vb.get(k).is_some_and(|y| match (x.as_f64(), y.as_f64()) {
                (Some(x), Some(y)) => (x - y).abs() <= 1e-9 * x.abs().max(1.0),
                _ => x == y,
            })
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_the_apis_rows_live_and_submits_jobs() -> anyhow::Result<()> {
    let python = std::env::var("TANDEM_PYTHON").context(
        "TANDEM_PYTHON (a Python with Playwright) is not set: run ./scripts/test, which installs it",
    )?;
    let dir = tempfile::tempdir()?;
    let demo = std::fs::read_to_string(tandem_tests::crate_dir().join("../app/demo.toml"))?;
    let config = dir.path().join("console.toml");
    std::fs::write(
        &config,
        format!(
            "{demo}\n[[http.tokens]]\nname = \"console\"\nscope = \"admin\"\nenv = \"TANDEM_TOKEN_CONSOLE\"\n"
        ),
    )?;
    let args: Vec<String> = [
        "dev",
        "--config",
        &config.display().to_string(),
        "--demo",
        "--demo-rate",
        "100",
        "--http",
        "127.0.0.1:0",
        "--kafka-port",
        "0",
        "--data",
        &dir.path().join("data").display().to_string(),
    ]
    .map(String::from)
    .to_vec();
    let server = TestServer::spawn(
        &args,
        &[("TANDEM_TOKEN_CONSOLE", TOKEN)],
        dir.path(),
        Ready::Both,
    )?;
    let mut auth = reqwest::header::HeaderMap::new();
    auth.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {TOKEN}").parse()?,
    );
    let client = reqwest::Client::builder().default_headers(auth).build()?;

    // Batch windows to show: recompute until the first ones are published.
    eventually(Duration::from_secs(150), || async {
        client
            .post(server.url("/v1/jobs"))
            .json(&json!({ "view": VIEW }))
            .send()
            .await?
            .error_for_status()?;
        tokio::time::sleep(Duration::from_secs(5)).await;
        let rows = view_rows(&client, &server, VIEW).await?;
        ensure!(
            rows.iter().any(|r| r["source"] == "batch")
                && rows.iter().any(|r| r["source"] == "speed"),
            "no batch and speed rows yet"
        );
        Ok(())
    })
    .await
    .with_context(|| format!("batch rows; log:\n{}", server.log()))?;
    let before = keyed(&view_rows(&client, &server, VIEW).await?)?;

    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("console");
    let driver = tandem_tests::crate_dir().join("console/drive.py");
    let output = tokio::process::Command::new(&python)
        .arg(&driver)
        .args([&server.http, TOKEN, VIEW, FROM])
        .arg(&out)
        .output()
        .await
        .context("running the browser driver")?;
    ensure!(
        output.status.success(),
        "the browser driver failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let seen: Value = serde_json::from_slice(&output.stdout)?;
    let after = keyed(&view_rows(&client, &server, VIEW).await?)?;

    ensure!(
        seen["errors"] == json!([]),
        "script errors: {}",
        seen["errors"]
    );
    ensure!(
        seen["elsewhere"] == json!([]),
        "fetched elsewhere: {}",
        seen["elsewhere"]
    );
    // The views table lists every view with its horizon.
    let views = seen["views"].as_array().context("views")?;
    ensure!(views.len() == 2, "views: {views:?}");
    ensure!(
        views.iter().any(|v| v[0] == VIEW && v[1] != "none yet"),
        "{views:?}"
    );
    // A chart per group, batch and speed windows drawn differently, the horizon marked.
    let chart = &seen["chart"];
    ensure!(
        chart["batch"].as_u64() > Some(0) && chart["speed"].as_u64() > Some(0),
        "{chart}"
    );
    ensure!(
        chart["lines"].as_u64() >= Some(2) && chart["horizon"] == 1,
        "{chart}"
    );

    // The same rows as the API: every batch row the API had before the page loaded is on the
    // page with the same values, and every batch row on the page is the API's.
    let page = keyed(seen["rows"].as_array().context("rows")?)?;
    let batch = |rows: &Rows| -> Rows {
        rows.iter()
            .filter(|(_, (_, s))| s == "batch")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    let (page_batch, before_batch) = (batch(&page), batch(&before));
    ensure!(!before_batch.is_empty());
    for (key, row) in &before_batch {
        ensure!(
            same(page_batch.get(key), Some(row)),
            "{key:?}: API {row:?}, page {:?}",
            page.get(key)
        );
    }
    for (key, row) in &page_batch {
        ensure!(
            same(after.get(key), Some(row)),
            "{key:?}: page {row:?}, API {:?}",
            after.get(key)
        );
    }
    // Speed rows on the page are windows the API answers too (values move while events arrive).
    let speed_on_page = page.iter().filter(|(_, (_, s))| s == "speed").count();
    ensure!(speed_on_page > 0);
    for key in page.keys() {
        ensure!(
            after.contains_key(key) || before.contains_key(key),
            "page row {key:?} unknown to the API"
        );
    }

    // The job submitted from the page exists.
    let job = seen["job"].as_str().context("job id")?;
    let record: Value = client
        .get(server.url(&format!("/v1/jobs/{job}")))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    ensure!(
        record["view"] == VIEW && record["trigger"] == "request",
        "{record}"
    );
    ensure!(
        seen["counts"]["dead_letters"]
            .as_str()
            .is_some_and(|c| c.parse::<u64>().is_ok())
    );
    ensure!(
        out.join("console.png").metadata()?.len() > 10_000,
        "no screenshot"
    );
    server.stop()?;
    Ok(())
}
