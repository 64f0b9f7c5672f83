//! A real S3-compatible server for the tests: `moto_server` (PyPI `moto[server]`, which
//! `scripts/test` installs beside the tests' Python), in memory, on a free port, with one bucket.
//! A missing server is a test failure, never a skip.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use tandem_store::StorageSettings;

/// The bucket every test store lives in; tests keep apart by prefix.
pub const BUCKET: &str = "tandem";
/// The access key the tests configure (the server accepts any).
pub const ACCESS_KEY_ID: &str = "tandem-test";
/// The secret, given to Tandem as a value or through this environment variable.
pub const SECRET_ACCESS_KEY: &str = "tandem-test-secret";
pub const SECRET_ENV: &str = "TANDEM_TEST_S3_SECRET";

/// A running `moto_server`, killed when dropped.
#[derive(Debug)]
pub struct S3Server {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
}

/// `$MOTO_SERVER`, or `moto_server` beside `$TANDEM_PYTHON` (the tests' virtual environment).
fn binary() -> anyhow::Result<PathBuf> {
    if let Ok(path) = std::env::var("MOTO_SERVER") {
        return Ok(PathBuf::from(path));
    }
    let python = std::env::var("TANDEM_PYTHON").context(
        "set TANDEM_PYTHON (scripts/test does) or MOTO_SERVER to find moto_server, the S3 test server",
    )?;
    Ok(Path::new(&python)
        .parent()
        .context("TANDEM_PYTHON has no directory")?
        .join("moto_server"))
}

impl S3Server {
    /// Starts the server and creates [`BUCKET`].
    pub async fn start(log_dir: &Path) -> anyhow::Result<Self> {
        let binary = binary()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        std::fs::create_dir_all(log_dir)?;
        let log = std::fs::File::create(log_dir.join("moto.log"))?;
        let child = Command::new(&binary)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (install it with scripts/test or set MOTO_SERVER)",
                    binary.display()
                )
            })?;
        let server = Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            // An unsigned bucket creation: the server does not check signatures.
            match client
                .put(format!("{}/{BUCKET}", server.endpoint))
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => break,
                Ok(r) => bail!("creating bucket {BUCKET}: {}", r.status()),
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => bail!("moto_server did not answer within 60s: {e}"),
            }
        }
        Ok(server)
    }

    /// The `[storage]` table of a store under `prefix`, with the secret as a value, or named by
    /// [`SECRET_ENV`] (`secret_from_env`), which the process must then have set.
    pub fn storage_table(&self, prefix: &str, secret_from_env: bool) -> String {
        let secret = if secret_from_env {
            format!("secret_access_key_env = \"{SECRET_ENV}\"")
        } else {
            format!("secret_access_key = \"{SECRET_ACCESS_KEY}\"")
        };
        format!(
            "[storage]\nurl = \"s3://{BUCKET}/{prefix}\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\n\
             allow_http = true\naccess_key_id = \"{ACCESS_KEY_ID}\"\n{secret}\n",
            self.endpoint
        )
    }

    /// The settings of a store under `prefix`, for reading it from a test.
    pub fn settings(&self, prefix: &str) -> StorageSettings {
        StorageSettings {
            endpoint: Some(self.endpoint.clone()),
            region: Some("us-east-1".into()),
            allow_http: Some(true),
            access_key_id: Some(ACCESS_KEY_ID.into()),
            secret_access_key: Some(SECRET_ACCESS_KEY.into()),
            ..StorageSettings::at(format!("s3://{BUCKET}/{prefix}"))
        }
    }

    /// Object keys under `prefix` of the store, as the server lists them (for checks that do
    /// not go through Tandem's own code).
    pub async fn keys(&self, prefix: &str) -> anyhow::Result<Vec<String>> {
        let body = reqwest::Client::new()
            .get(format!(
                "{}/{BUCKET}?list-type=2&prefix={prefix}",
                self.endpoint
            ))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        ensure!(body.contains("ListBucketResult"), "not a listing: {body}");
        Ok(body
            .split("<Key>")
            .skip(1)
            .filter_map(|s| s.split("</Key>").next())
            .map(str::to_owned)
            .collect())
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
