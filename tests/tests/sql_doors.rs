//! The SQL doors on the running system: the same questions through `POST /v1/sql` (JSON, CSV,
//! Arrow), the PostgreSQL wire protocol (psql, psycopg, pandas through SQLAlchemy, Grafana's
//! queries) and Arrow Flight SQL (ADBC), each answer compared with an oracle computed here from
//! the produced events: money as `decimal(18, 2)` whose sums have 17 to 19 digits, summed
//! exactly in i128.
//!
//! Needs `psql` (Debian `postgresql-client`) and `$TANDEM_PYTHON` with psycopg, pandas,
//! SQLAlchemy and the ADBC Flight SQL driver: `scripts/test` installs them.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};
use tandem_tests::{TestServer, eventually, fixture};

const MINUTE: i64 = 60_000;
const TOKEN: &str = "door-test-token-5d1c";
const CITIES: [&str; 5] = ["Berlin", "Chennai", "Lagos", "Mumbai", "Tokyo"];
const VIEW_ROLLUP: &str = "SELECT city, sum(orders) AS orders, sum(revenue) AS revenue \
                           FROM revenue_by_city GROUP BY city ORDER BY city";
const EVENTS_ROLLUP: &str = "SELECT city, count(*) AS orders, sum(price) AS revenue \
                             FROM events GROUP BY city ORDER BY city";

/// One payment: its time, city and price in cents.
struct Payment {
    ts: i64,
    city: &'static str,
    cents: i128,
}

/// Cents as the decimal text of a `decimal(_, 2)`.
fn money(cents: i128) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let c = cents.abs();
    format!("{sign}{}.{:02}", c / 100, c % 100)
}

/// Payments over 15 minutes: prices of 16 digits in cents, so that a window's sum per city has
/// 17 or 18 digits and a city's total 19.
fn payments(base: i64) -> Vec<Payment> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(31);
    (0..1_500)
        .map(|i| Payment {
            ts: base + (i as i64 * 15 * MINUTE) / 1_500 + rng.random_range(0..500),
            city: CITIES[rng.random_range(0..CITIES.len())],
            cents: rng.random_range(1_000_000_000_000_000i128..9_999_999_999_999_999),
        })
        .collect()
}

/// The oracle: city → (orders, revenue text), and (window start, city) → orders.
type ByCity = BTreeMap<String, (i64, String)>;

fn by_city(payments: &[Payment]) -> ByCity {
    let mut sums: BTreeMap<String, (i64, i128)> = BTreeMap::new();
    for p in payments {
        let entry = sums.entry(p.city.to_owned()).or_default();
        entry.0 += 1;
        entry.1 += p.cents;
    }
    sums.into_iter()
        .map(|(city, (n, cents))| (city, (n, money(cents))))
        .collect()
}

fn by_window(payments: &[Payment]) -> BTreeMap<(i64, String), i64> {
    let mut out = BTreeMap::new();
    for p in payments {
        *out.entry((p.ts - p.ts.rem_euclid(MINUTE), p.city.to_owned()))
            .or_default() += 1;
    }
    out
}

async fn produce(server: &TestServer, payments: &[Payment]) -> anyhow::Result<()> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &server.kafka)
        .set("linger.ms", "5")
        .create()?;
    let mut deliveries = Vec::new();
    for (i, p) in payments.iter().enumerate() {
        // The price as a JSON number written exactly.
        let payload = format!(
            r#"{{"ts":{},"city":"{}","price":{},"kind":"{}","units":{},"express":{},"weight":{}}}"#,
            p.ts,
            p.city,
            money(p.cents),
            ["sale", "refund"][i % 2],
            i % 7,
            i % 3 == 0,
            (i % 11) as f64 / 4.0
        );
        let key = format!("p{i}");
        deliveries.push(
            producer
                .send_result(FutureRecord::to("payments").key(&key).payload(&payload))
                .map_err(|(e, _)| e)?,
        );
    }
    for d in deliveries {
        d.await?.map_err(|(e, _)| e)?;
    }
    Ok(())
}

/// `POST /v1/sql` in `accept`'s format.
async fn http_sql(
    client: &reqwest::Client,
    server: &TestServer,
    sql: &str,
    accept: &str,
) -> anyhow::Result<bytes::Bytes> {
    let resp = client
        .post(server.url("/v1/sql"))
        .bearer_auth(TOKEN)
        .header("accept", accept)
        .json(&json!({ "sql": sql }))
        .send()
        .await?;
    let status = resp.status();
    let body = resp.bytes().await?;
    ensure!(
        status.is_success(),
        "{sql}: {status} {}",
        String::from_utf8_lossy(&body)
    );
    Ok(body)
}

/// Rows of (city, orders, revenue) from JSON rows `[[city, orders, revenue], ...]`.
fn rows_of(value: &Value) -> anyhow::Result<ByCity> {
    let mut out = ByCity::new();
    for row in value.as_array().context("rows")? {
        let text = |v: &Value| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        out.insert(
            text(&row[0]),
            (text(&row[1]).parse().context("orders")?, text(&row[2])),
        );
    }
    Ok(out)
}

fn json_rows(body: &[u8]) -> anyhow::Result<ByCity> {
    let body: Value = serde_json::from_slice(body)?;
    rows_of(&body["rows"])
}

fn csv_rows(body: &[u8]) -> anyhow::Result<ByCity> {
    let text = std::str::from_utf8(body)?;
    let mut lines = text.lines();
    ensure!(
        lines.next() == Some("city,orders,revenue"),
        "CSV header: {text}"
    );
    let mut out = ByCity::new();
    for line in lines {
        let cells: Vec<&str> = line.split(',').collect();
        ensure!(cells.len() == 3, "CSV line {line}");
        out.insert(cells[0].into(), (cells[1].parse()?, cells[2].into()));
    }
    Ok(out)
}

fn arrow_rows(body: bytes::Bytes) -> anyhow::Result<ByCity> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Decimal128Type, Int64Type};
    let reader = arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(body), None)?;
    let mut out = ByCity::new();
    for batch in reader {
        let batch = batch?;
        let arrow_schema::DataType::Decimal128(_, scale) = batch.column(2).data_type() else {
            bail!("revenue is {}, not a decimal", batch.column(2).data_type());
        };
        ensure!(*scale == 2, "revenue's scale is {scale}");
        let cities = batch.column(0).as_string_view_opt().map_or_else(
            || {
                batch
                    .column(0)
                    .as_string::<i32>()
                    .iter()
                    .map(|c| c.unwrap_or_default().to_owned())
                    .collect::<Vec<_>>()
            },
            |v| v.iter().map(|c| c.unwrap_or_default().to_owned()).collect(),
        );
        let orders = batch.column(1).as_primitive::<Int64Type>();
        let revenue = batch.column(2).as_primitive::<Decimal128Type>();
        for (i, city) in cities.into_iter().enumerate() {
            out.insert(city, (orders.value(i), money(revenue.value(i))));
        }
    }
    Ok(out)
}

/// `psql` with the token as the password: `city|orders|revenue` lines.
fn psql(server: &TestServer, sql: &str) -> anyhow::Result<ByCity> {
    let output = Command::new("psql")
        .args([
            "-X",
            "-A",
            "-t",
            "-F",
            "|",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ])
        .arg(format!("postgresql://analyst@{}/tandem", server.postgres))
        .env("PGPASSWORD", TOKEN)
        .env("PGCONNECT_TIMEOUT", "30")
        .output()
        .context("running psql (Debian postgresql-client; scripts/test installs it)")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(
        output.status.success(),
        "psql: {}\n{stdout}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let mut out = ByCity::new();
    for line in stdout.lines().filter(|l| !l.is_empty()) {
        let cells: Vec<&str> = line.split('|').collect();
        ensure!(cells.len() == 3, "psql line {line}");
        out.insert(cells[0].into(), (cells[1].parse()?, cells[2].into()));
    }
    Ok(out)
}

/// How a login by hand ended.
#[derive(Debug, PartialEq, Eq)]
enum Login {
    /// In, after a password in clear or a SCRAM exchange.
    In(&'static str),
    /// Refused with this SQLSTATE.
    Refused(String),
}

fn hmac(key: &[u8], message: &[u8]) -> [u8; 32] {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("any key length");
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// A password message (`p`) with `body`.
fn password_message(body: &[u8]) -> Vec<u8> {
    let mut message = vec![b'p'];
    message.extend(((body.len() + 4) as i32).to_be_bytes());
    message.extend(body);
    message
}

/// Logs in with `password` speaking the protocol by hand (drivers do not show the SQLSTATE of a
/// failed login), in clear or by SCRAM-SHA-256, whichever the server asks for.
async fn login(addr: &str, password: &str) -> anyhow::Result<Login> {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use sha2::Digest;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(addr).await?;
    let mut startup = Vec::new();
    startup.extend(196_608i32.to_be_bytes()); // protocol 3.0
    for part in ["user", "x", "database", "tandem", ""] {
        startup.extend(part.as_bytes());
        startup.push(0);
    }
    let mut message = ((startup.len() + 4) as i32).to_be_bytes().to_vec();
    message.extend(startup);
    socket.write_all(&message).await?;
    let client_first_bare = "n=,r=tandemtestnonce";
    let mut how = "";
    let mut client_key = [0u8; 32];
    loop {
        let tag = socket.read_u8().await?;
        let len = socket.read_i32().await?;
        let mut body = vec![0; usize::try_from(len - 4)?];
        socket.read_exact(&mut body).await?;
        let code = body
            .get(..4)
            .map(|c| i32::from_be_bytes([c[0], c[1], c[2], c[3]]));
        match (tag, code) {
            // AuthenticationCleartextPassword.
            (b'R', Some(3)) => {
                how = "cleartext";
                let mut body = password.as_bytes().to_vec();
                body.push(0);
                socket.write_all(&password_message(&body)).await?;
            }
            // AuthenticationSASL: the client's first message.
            (b'R', Some(10)) => {
                how = "scram";
                let data = format!("n,,{client_first_bare}");
                let mut body = b"SCRAM-SHA-256\0".to_vec();
                body.extend((data.len() as i32).to_be_bytes());
                body.extend(data.as_bytes());
                socket.write_all(&password_message(&body)).await?;
            }
            // AuthenticationSASLContinue: the server's first message; the proof.
            (b'R', Some(11)) => {
                let server_first = String::from_utf8(body[4..].to_vec())?;
                let attr = |name: &str| {
                    server_first
                        .split(',')
                        .find_map(|a| a.strip_prefix(name))
                        .map(str::to_owned)
                        .context("server-first attribute")
                };
                let (nonce, salt) = (attr("r=")?, STANDARD.decode(attr("s=")?)?);
                let iterations: u32 = attr("i=")?.parse()?;
                let mut first = salt.clone();
                first.extend(1u32.to_be_bytes());
                let mut u = hmac(password.as_bytes(), &first);
                let mut salted = u;
                for _ in 1..iterations {
                    u = hmac(password.as_bytes(), &u);
                    salted.iter_mut().zip(u).for_each(|(s, b)| *s ^= b);
                }
                client_key = hmac(&salted, b"Client Key");
                let stored: [u8; 32] = sha2::Sha256::digest(client_key).into();
                let without_proof = format!("c=biws,r={nonce}");
                let auth = format!("{client_first_bare},{server_first},{without_proof}");
                let mut proof = hmac(&stored, auth.as_bytes());
                proof.iter_mut().zip(client_key).for_each(|(p, k)| *p ^= k);
                let data = format!("{without_proof},p={}", STANDARD.encode(proof));
                socket.write_all(&password_message(data.as_bytes())).await?;
            }
            // AuthenticationSASLFinal: the server proved it knows the token too.
            (b'R', Some(12)) => ensure!(client_key != [0; 32], "SASLFinal before a proof"),
            // AuthenticationOk.
            (b'R', Some(0)) => return Ok(Login::In(how)),
            (b'E', _) => {
                // Fields: a type byte, a NUL-terminated value; `C` is the SQLSTATE.
                for field in body.split(|b| *b == 0) {
                    if let Some(code) = field.strip_prefix(b"C") {
                        return Ok(Login::Refused(String::from_utf8_lossy(code).into_owned()));
                    }
                }
                bail!("an error without a SQLSTATE");
            }
            (other, code) => bail!("unexpected message {:?} {code:?}", other as char),
        }
    }
}

fn rfc3339(millis: i64) -> anyhow::Result<String> {
    Ok(chrono::DateTime::from_timestamp_millis(millis)
        .context("time")?
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_door_answers_exactly_what_the_oracle_says() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let server = TestServer::dev_with_env(
        &fixture("doors.toml"),
        data.path(),
        &[("TANDEM_TEST_TOKEN", TOKEN)],
    )?;
    let result = scenario(&server).await;
    if result.is_err() {
        eprintln!("---- tandem log ----\n{}", server.log());
    }
    result
}

async fn scenario(server: &TestServer) -> anyhow::Result<()> {
    ensure!(
        !server.postgres.is_empty() && !server.flight.is_empty(),
        "tandem dev printed no PostgreSQL or Flight SQL address"
    );
    let client = reqwest::Client::new();
    let now = chrono::Utc::now().timestamp_millis();
    let base = now - now.rem_euclid(MINUTE) - 30 * MINUTE;
    let payments = payments(base);
    produce(server, &payments).await?;
    let want = by_city(&payments);
    ensure!(
        want.values().all(|(_, r)| r.len() == 20),
        "each city's sum has 19 digits: {want:?}"
    );

    // Every event is in the speed layer and in the archive: the view and `events` answer the
    // oracle over HTTP (JSON).
    eventually(Duration::from_secs(90), || async {
        let view = json_rows(&http_sql(&client, server, VIEW_ROLLUP, "application/json").await?)?;
        ensure!(view == want, "view over HTTP: {view:?}\nwant {want:?}");
        let events =
            json_rows(&http_sql(&client, server, EVENTS_ROLLUP, "application/json").await?)?;
        ensure!(events == want, "events over HTTP: {events:?}");
        Ok(())
    })
    .await?;

    // The same questions through every door.
    for sql in [VIEW_ROLLUP, EVENTS_ROLLUP] {
        let csv = csv_rows(&http_sql(&client, server, sql, "text/csv").await?)?;
        ensure!(csv == want, "CSV {sql}: {csv:?}");
        let arrow = arrow_rows(
            http_sql(&client, server, sql, "application/vnd.apache.arrow.stream").await?,
        )?;
        ensure!(arrow == want, "Arrow {sql}: {arrow:?}");
        let psql = psql(server, sql)?;
        ensure!(psql == want, "psql {sql}: {psql:?}");
    }

    let windows = by_window(&payments);
    let (from, to) = (base + 3 * MINUTE, base + 6 * MINUTE);
    let python = std::env::var("TANDEM_PYTHON")
        .context("TANDEM_PYTHON (the test venv with psycopg, pandas, SQLAlchemy and ADBC) is not set; ./scripts/test sets it")?;
    let script = tandem_tests::crate_dir().join("scripts/sql_doors.py");
    let args = json!({
        "postgres": server.postgres,
        "flight": server.flight,
        "token": TOKEN,
        "from": rfc3339(from)?,
        "to": rfc3339(to)?,
        "connections": 200,
    });
    let output = Command::new(&python)
        .arg(&script)
        .arg(args.to_string())
        .output()?;
    ensure!(
        output.status.success(),
        "{}: {}\n{}",
        script.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let got: Value = serde_json::from_slice(&output.stdout)
        .with_context(|| String::from_utf8_lossy(&output.stdout).into_owned())?;

    // psycopg, pandas and ADBC read the oracle's numbers exactly.
    for key in [
        "psycopg_view",
        "pandas_view",
        "adbc_view",
        "adbc_events",
        "transaction_after_error",
    ] {
        let rows = rows_of(&got[key]).with_context(|| format!("{key}: {}", got[key]))?;
        ensure!(rows == want, "{key}: {rows:?}\nwant {want:?}");
    }
    ensure!(
        got["psycopg_types"] == json!(["str", "int", "Decimal"]),
        "psycopg reads {}",
        got["psycopg_types"]
    );
    ensure!(
        got["psycopg_window_types"] == json!(["datetime", "datetime"])
            && got["psycopg_window_offset"] == json!([0.0]),
        "windows read as {} at {}",
        got["psycopg_window_types"],
        got["psycopg_window_offset"]
    );
    ensure!(
        got["adbc_types"][2]
            .as_str()
            .is_some_and(|t| t.starts_with("decimal128(") && t.ends_with(", 2)")),
        "ADBC reads {}",
        got["adbc_types"]
    );
    let lagos = &want["Lagos"];
    ensure!(
        got["psycopg_parameterized"] == json!([["Lagos", lagos.0, lagos.1]]),
        "parameterized: {}",
        got["psycopg_parameterized"]
    );
    ensure!(got["pandas_columns"] == json!(["city", "orders", "revenue"]));

    // What clients send on connect was accepted; each refusal has its SQLSTATE, and the
    // connection answered on.
    ensure!(
        got["show_search_path"] == "public",
        "{}",
        got["show_search_path"]
    );
    ensure!(got["show_application_name"] == "tandem-test");
    ensure!(got["current_setting"] == "public");
    let errors = &got["errors"];
    for (what, code) in [
        ("syntax", "42601"),
        ("ddl", "25006"),
        ("dml", "25006"),
        ("copy", "25006"),
        ("engine_setting", "42501"),
        ("rows", "54000"),
        ("memory", "53200"),
        ("timeout", "57014"),
        ("missing_table", "42P01"),
    ] {
        ensure!(
            errors[what] == code,
            "{what}: {} (want {code})",
            errors[what]
        );
    }
    ensure!(got["answers_after_errors"] == 2);
    ensure!(got["transaction_error"] == "42P01");
    ensure!(
        got["bad_password"]
            .as_str()
            .is_some_and(|e| e.contains("Password authentication failed")),
        "a wrong password through psycopg: {}",
        got["bad_password"]
    );
    // Without TLS the token is proved by SCRAM-SHA-256, never sent.
    let wrong = login(&server.postgres, "wrong").await?;
    ensure!(
        wrong == Login::Refused("28P01".into()),
        "a wrong password: {wrong:?}"
    );
    let right = login(&server.postgres, TOKEN).await?;
    ensure!(right == Login::In("scram"), "the token: {right:?}");
    ensure!(
        got["adbc_bad_token"]
            .as_str()
            .is_some_and(|e| e.to_lowercase().contains("unauthenticated")),
        "a wrong Flight SQL token: {}",
        got["adbc_bad_token"]
    );

    // Grafana: the time series panel's query and the pickers of its query editor.
    let mut series = Vec::new();
    for ((start, city), orders) in windows.range((from, String::new())..) {
        if *start > to {
            break;
        }
        let time = chrono::DateTime::from_timestamp_millis(*start)
            .context("time")?
            .to_rfc3339();
        series.push(json!([time, city, orders]));
    }
    ensure!(
        got["grafana_series"] == Value::Array(series.clone()),
        "Grafana series: {}\nwant {}",
        got["grafana_series"],
        Value::Array(series)
    );
    let tables: Vec<&str> = got["grafana_tables"]
        .as_array()
        .context("tables")?
        .iter()
        .filter_map(|r| r[0].as_str())
        .collect();
    ensure!(
        tables.iter().any(|t| t.ends_with("revenue_by_city"))
            && tables.iter().any(|t| t.ends_with("events")),
        "Grafana's table picker: {tables:?}"
    );
    let columns: Vec<&str> = got["grafana_columns"]
        .as_array()
        .context("columns")?
        .iter()
        .filter_map(|r| r[0].as_str())
        .collect();
    for column in ["window_start", "window_end", "city", "orders", "revenue"] {
        ensure!(
            columns.contains(&column),
            "Grafana's column picker: {columns:?}"
        );
    }
    ensure!(
        got["pg_class"]
            .as_array()
            .is_some_and(|r| r.contains(&json!(["revenue_by_city"]))),
        "pg_class: {}",
        got["pg_class"]
    );

    // 200 connections at once, 150 allowed: each served with the right count, or refused with
    // a PostgreSQL error (too many connections, or every query slot busy); none dropped.
    let windows_count = windows.len().to_string();
    let mut served = 0;
    let mut refused = BTreeMap::<String, usize>::new();
    for outcome in got["connections"].as_array().context("connections")? {
        match (outcome[0].as_str(), outcome[1].as_str()) {
            (Some("served"), Some(n)) if n == windows_count => served += 1,
            (Some("refused"), Some(code)) => {
                let code = if code.contains("too many connections") {
                    "53300"
                } else {
                    code
                };
                *refused.entry(code.to_owned()).or_default() += 1;
            }
            _ => bail!("a connection: {outcome}"),
        }
    }
    ensure!(
        served + refused.values().sum::<usize>() == 200,
        "{served} served, {refused:?}"
    );
    ensure!(
        refused.keys().all(|c| c == "53300" || c == "53000"),
        "refusals {refused:?}"
    );
    ensure!(
        refused.get("53300") == Some(&50),
        "past the cap of 150: {refused:?}"
    );
    ensure!(served > 0, "nothing served: {refused:?}");
    // Every type a table has reads through both protocols' encodings and through ADBC.
    for (table, columns) in [
        (
            "events",
            json!({"ts": "datetime", "city": "str", "price": "Decimal", "units": "int",
                   "express": "bool", "weight": "float", "_kafka_partition": "int",
                   "_kafka_offset": "int"}),
        ),
        (
            "revenue_by_city",
            json!({"window_start": "datetime", "window_end": "datetime", "city": "str",
                   "orders": "int", "revenue": "Decimal", "complete": "bool"}),
        ),
        (
            "by_kind",
            json!({"kind": "str", "express": "bool", "cities": "int", "median_weight": "float",
                   "avg_price": "Decimal", "max_units": "int", "min_weight": "float"}),
        ),
    ] {
        let read = &got["types"][table];
        for encoding in ["text", "binary"] {
            for (column, want) in columns.as_object().context("columns")? {
                ensure!(
                    read[encoding][column] == *want,
                    "{table}.{column} in {encoding}: {} (all: {})",
                    read[encoding][column],
                    read[encoding]
                );
            }
        }
        ensure!(
            read["adbc_rows"].as_u64().is_some_and(|n| n > 0),
            "ADBC {table}: {read}"
        );
    }
    eprintln!("200 connections at once: {served} served, refused by SQLSTATE {refused:?}");
    ensure!(got["after_connections"] == windows_count.as_str());
    Ok(())
}

fn sha256_hex(value: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(value.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A self-signed certificate for `localhost` and 127.0.0.1 (Debian's `openssl`), and its key.
fn certificate(dir: &std::path::Path) -> anyhow::Result<(String, String)> {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let status = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .context("running openssl (Debian openssl; scripts/test installs it)")?;
    ensure!(status.success(), "openssl: {status}");
    Ok((cert.display().to_string(), key.display().to_string()))
}

/// Beyond loopback, a door needs tokens (as HTTP does); a password travels only under TLS:
/// psql and ADBC connect over TLS with the token; without TLS the token is proved by SCRAM, and
/// a token known only by its digest is refused (28000); with no tokens configured, the door is
/// not opened at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_loopback_the_doors_need_tokens_and_tls() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let (cert, key) = certificate(data.path())?;
    let config = std::fs::read_to_string(fixture("doors.toml"))?.replace(
        "[sql]\n",
        &format!(
            "[sql]\npostgres = \"0.0.0.0:0\"\nflight = \"0.0.0.0:0\"\n\
             tls_cert = \"{cert}\"\ntls_key = \"{key}\"\n"
        ),
    );
    let path = data.path().join("tls.toml");
    std::fs::write(&path, &config)?;
    let server = TestServer::dev_with_env(&path, data.path(), &[("TANDEM_TEST_TOKEN", TOKEN)])?;
    let port = |addr: &str| addr.rsplit(':').next().unwrap_or_default().to_owned();
    let postgres = format!("127.0.0.1:{}", port(&server.postgres));
    let flight = format!("localhost:{}", port(&server.flight));
    ensure!(
        server.postgres.starts_with("0.0.0.0:"),
        "{}",
        server.postgres
    );

    // psql over TLS, verifying the certificate.
    let output = Command::new("psql")
        .args(["-X", "-A", "-t", "-c", "SELECT 40 + 2"])
        .arg(format!(
            "postgresql://analyst@localhost:{}/tandem?sslmode=verify-full&sslrootcert={cert}",
            port(&postgres)
        ))
        .env("PGPASSWORD", TOKEN)
        .output()?;
    ensure!(
        output.status.success() && String::from_utf8_lossy(&output.stdout).trim() == "42",
        "psql over TLS: {} {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // Without TLS the password is not asked for: the token is proved by SCRAM.
    let plain = login(&postgres, TOKEN).await?;
    ensure!(
        plain == Login::In("scram"),
        "a login without TLS: {plain:?}"
    );

    // ADBC over TLS with the token; the same call without TLS fails.
    let python = std::env::var("TANDEM_PYTHON").context("TANDEM_PYTHON is not set")?;
    let script = format!(
        r#"
import adbc_driver_flightsql.dbapi as flightsql
def read(uri, **kw):
    try:
        with flightsql.connect(uri, db_kwargs={{"adbc.flight.sql.authorization_header": "Bearer {TOKEN}", **kw}}) as c:
            with c.cursor() as cur:
                cur.execute("SELECT 40 + 2 AS n")
                return str(cur.fetchone()[0])
    except Exception as e:
        return "error: " + str(e)
print(read("grpc+tls://{flight}", **{{"adbc.flight.sql.client_option.tls_root_certs": open("{cert}").read()}}))
print(read("grpc://{flight}"))
"#
    );
    let output = Command::new(&python).arg("-c").arg(&script).output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    ensure!(
        output.status.success() && lines.len() == 2,
        "ADBC: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    ensure!(lines[0] == "42", "ADBC over TLS: {}", lines[0]);
    ensure!(
        lines[1].starts_with("error"),
        "ADBC without TLS: {}",
        lines[1]
    );
    drop(server);

    // A token given only by its digest cannot be proved by SCRAM: without TLS it is refused
    // before any password is asked for.
    let digest = config.replace(
        "tokens = [{ name = \"analyst\", scope = \"read\", env = \"TANDEM_TEST_TOKEN\" }]\n",
        &format!(
            "tokens = [{{ name = \"analyst\", scope = \"read\", sha256 = \"{}\" }}]\n",
            sha256_hex(TOKEN)
        ),
    );
    ensure!(digest != config, "the fixture's tokens line changed");
    let digest_path = data.path().join("digest.toml");
    std::fs::write(&digest_path, &digest)?;
    let server = TestServer::dev_with_env(&digest_path, &data.path().join("digest"), &[])?;
    let postgres = format!("127.0.0.1:{}", port(&server.postgres));
    let plain = login(&postgres, TOKEN).await?;
    ensure!(
        plain == Login::Refused("28000".into()),
        "a digest token without TLS: {plain:?}"
    );
    drop(server);

    // No tokens: the doors may not listen beyond loopback.
    let open = config.replace(
        "tokens = [{ name = \"analyst\", scope = \"read\", env = \"TANDEM_TEST_TOKEN\" }]\n",
        "",
    );
    ensure!(open != config, "the fixture's tokens line changed");
    let open_path = data.path().join("open.toml");
    std::fs::write(&open_path, open)?;
    let refused = Command::new(tandem_tests::tandem_binary()?)
        .args(["dev", "--config"])
        .arg(&open_path)
        .args(["--http", "127.0.0.1:0", "--kafka-port", "0", "--data"])
        .arg(data.path().join("open"))
        .output()?;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    ensure!(
        !refused.status.success() && stderr.contains("refusing to serve an open API on 0.0.0.0:0"),
        "an open door beyond loopback: {} {stderr}",
        refused.status
    );
    Ok(())
}
