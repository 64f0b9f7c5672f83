//! Test harness for Tandem's end-to-end tests: runs the real `tandem` binary.
//!
//! ```text
//!  TestServer::dev / ::broker / ::spawn ──► `tandem <command>` on free ports (log to a file)
//!  RunFixture: standalone broker + fixtures/recovery.toml ──► `tandem run`, killed and restarted
//!  ExternalBroker: tansu, a Kafka-protocol broker other than librdkafka's mock
//!  S3Server: moto_server, a real S3-compatible server, for the same tests on s3://
//!  SchemaRegistry: a Confluent REST stand-in; formats: orders written by apache-avro and prost
//! ```
//!
//! [`TestServer`] spawns `tandem` (`dev`, `run` or `broker`) on free ports, waits for it to print
//! its addresses, and kills it when dropped. The binary must be built: `cargo test --workspace`
//! builds it (the `tandem` package's own CLI tests need it), which the README's test command
//! runs; a missing binary is a test failure, never a skip.
//!
//! Beside the end-to-end tests, `tests/layers_agree/` checks the speed and batch layers against
//! an independent oracle in-process.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, bail};
use rdkafka::config::ClientConfig;
use rdkafka::producer::FutureProducer;
use tandem_store::StorageSettings;

pub mod formats;
pub mod quarters;
pub mod registry;
pub mod s3;
pub use registry::SchemaRegistry;
pub use s3::S3Server;

/// This crate's directory, read at run time (`cargo test` sets `CARGO_MANIFEST_DIR`): a test
/// binary reused from a shared target directory may have been compiled in another checkout.
pub fn crate_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
}

/// Path of a fixture file.
pub fn fixture(name: &str) -> PathBuf {
    crate_dir().join("fixtures").join(name)
}

/// The `tandem` binary: `$TANDEM_BIN`, or `tandem` in the target directory of this test.
pub fn tandem_binary() -> anyhow::Result<PathBuf> {
    if let Ok(path) = std::env::var("TANDEM_BIN") {
        return Ok(PathBuf::from(path));
    }
    // target/<profile>/deps/<test> -> target/<profile>/tandem
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("unexpected test executable location")?;
    let bin = profile_dir.join("tandem");
    if !bin.exists() {
        bail!(
            "{} does not exist: build it first with `cargo test --workspace --no-run` or `cargo build --bin tandem` (or set TANDEM_BIN)",
            bin.display()
        );
    }
    Ok(bin)
}

/// A running `tandem` process.
#[derive(Debug)]
pub struct TestServer {
    child: Child,
    /// Kafka bootstrap address, if the process printed one.
    pub kafka: String,
    /// `http://host:port`, if the process serves HTTP.
    pub http: String,
    /// `host:port` of the PostgreSQL and Flight SQL doors, if the process opened them (they
    /// are printed before the HTTP address).
    pub postgres: String,
    pub flight: String,
    log: PathBuf,
}

/// What to wait for before a process counts as started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ready {
    Kafka,
    Http,
    Both,
}

impl TestServer {
    /// Starts `tandem dev --config <config>` on free ports with data under `data`.
    pub fn dev(config: &Path, data: &Path) -> anyhow::Result<Self> {
        Self::dev_with_env(config, data, &[])
    }

    /// [`TestServer::dev`] with extra environment variables (token values, say).
    pub fn dev_with_env(config: &Path, data: &Path, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let mut args: Vec<String> = vec!["dev".into(), "--config".into()];
        args.push(config.display().to_string());
        args.extend(["--http", "127.0.0.1:0", "--kafka-port", "0", "--data"].map(String::from));
        args.push(data.join("dev").display().to_string());
        Self::spawn(&args, env, data, Ready::Both)
    }

    /// Starts `tandem broker` (the embedded broker alone, so that `tandem` processes can be
    /// killed and restarted against the same topics) with `topics` as `NAME:PARTITIONS`.
    pub fn broker(topics: &[&str], log_dir: &Path) -> anyhow::Result<Self> {
        let mut args: Vec<String> = ["broker", "--port", "0"].map(String::from).to_vec();
        for topic in topics {
            args.extend(["--topic".to_owned(), (*topic).to_owned()]);
        }
        Self::spawn(&args, &[], log_dir, Ready::Kafka)
    }

    /// Waits for the process to exit by itself (at a `TANDEM_CRASH_AT` crash point).
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if self.exited()?.is_some() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!(
            "tandem did not reach its crash point within {timeout:?}; log:\n{}",
            self.log()
        )
    }

    /// Starts `tandem <args>` with extra environment variables, logging to `log_dir`.
    pub fn spawn(
        args: &[String],
        env: &[(&str, &str)],
        log_dir: &Path,
        ready: Ready,
    ) -> anyhow::Result<Self> {
        Self::spawn_within(args, env, log_dir, ready, None)
    }

    /// [`TestServer::spawn`] under a limit of `open_files` file descriptors (soft and hard), as
    /// a process started by a shell with `ulimit -n` runs.
    pub fn spawn_within(
        args: &[String],
        env: &[(&str, &str)],
        log_dir: &Path,
        ready: Ready,
        open_files: Option<u64>,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(log_dir)?;
        let log = log_dir.join(format!(
            "tandem-{}-{}.log",
            args.first().map_or("x", String::as_str),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        let stderr = std::fs::File::create(&log)?;
        let mut command = match open_files {
            None => Command::new(tandem_binary()?),
            Some(n) => {
                let mut sh = Command::new("sh");
                sh.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(tandem_binary()?);
                sh
            }
        };
        command
            .args(args)
            .env("RUST_LOG", "info,librdkafka=warn")
            .stdout(Stdio::piped())
            .stderr(stderr);
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().context("spawning tandem")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut kafka = None;
        let mut http = None;
        let (mut postgres, mut flight) = (String::new(), String::new());
        let done = |k: &Option<String>, h: &Option<String>| match ready {
            Ready::Kafka => k.is_some(),
            Ready::Http => h.is_some(),
            Ready::Both => k.is_some() && h.is_some(),
        };
        while !done(&kafka, &http) {
            let line = match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(line) => line,
                Err(_) => {
                    let _ = child.kill();
                    bail!(
                        "tandem {args:?} did not print its addresses within 60s; log:\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
            };
            if let Some(rest) = line.strip_prefix("Kafka bootstrap: ") {
                kafka = Some(rest.trim().to_owned());
            } else if let Some(rest) = line.strip_prefix("HTTP: ") {
                http = Some(rest.trim().to_owned());
            } else if let Some(rest) = line.strip_prefix("Postgres: postgresql://tandem@") {
                postgres = rest.trim().trim_end_matches("/tandem").to_owned();
            } else if let Some(rest) = line.strip_prefix("Flight SQL: grpc://") {
                flight = rest.trim().to_owned();
            }
        }
        Ok(Self {
            child,
            kafka: kafka.unwrap_or_default(),
            http: http.unwrap_or_default(),
            postgres,
            flight,
            log,
        })
    }

    /// The process id (of the shell's exec, the same process, under a file limit).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.http)
    }

    /// The process's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the process has exited (for example at a crash point).
    pub fn exited(&mut self) -> anyhow::Result<Option<std::process::ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// Kills the process with SIGKILL: no shutdown code runs.
    pub fn kill(mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// Stops the process with SIGTERM and waits for its ordered shutdown.
    pub fn stop(mut self) -> anyhow::Result<std::process::ExitStatus> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status()?;
        for _ in 0..300 {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.child.kill()?;
        bail!("tandem did not stop within 30s after SIGTERM")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A standalone embedded broker and a `tandem run` configuration against it, for tests that
/// kill and restart Tandem (or run several workers) while the topics and the store stay.
#[derive(Debug)]
pub struct RunFixture {
    pub broker: TestServer,
    /// The object store's directory (of a `file://` store).
    pub store: PathBuf,
    /// The object store, for reading it from the test.
    pub storage: StorageSettings,
    run: Vec<String>,
    dir: PathBuf,
}

impl RunFixture {
    /// Starts a broker with `topics` (`NAME:PARTITIONS`) and writes `fixtures/recovery.toml`
    /// pointed at it and at a store, all under `dir`.
    pub fn new(dir: &Path, topics: &[&str]) -> anyhow::Result<Self> {
        Self::with_store(dir, topics, None, "recovery.toml")
    }

    /// [`RunFixture::new`] with another fixture of the same shape (`@BROKERS@`, `@STORE@`).
    pub fn with_fixture(dir: &Path, topics: &[&str], fixture_name: &str) -> anyhow::Result<Self> {
        Self::with_store(dir, topics, None, fixture_name)
    }

    /// [`RunFixture::new`] with the store under `prefix` on the S3 server `s3`.
    pub fn on_s3(dir: &Path, topics: &[&str], s3: &S3Server, prefix: &str) -> anyhow::Result<Self> {
        Self::with_store(dir, topics, Some((s3, prefix)), "recovery.toml")
    }

    fn with_store(
        dir: &Path,
        topics: &[&str],
        s3: Option<(&S3Server, &str)>,
        fixture_name: &str,
    ) -> anyhow::Result<Self> {
        let broker = TestServer::broker(topics, dir)?;
        let store = dir.join("store");
        let config_path = dir.join("tandem.toml");
        let mut config = std::fs::read_to_string(fixture(fixture_name))?;
        let storage = match s3 {
            Some((s3, prefix)) => {
                config = config.replace(
                    "[storage]\nurl = \"file://@STORE@\"\n",
                    &s3.storage_table(prefix, false),
                );
                s3.settings(prefix)
            }
            None => StorageSettings::at(format!("file://{}", store.display())),
        };
        let config = config
            .replace("@BROKERS@", &broker.kafka)
            .replace("@STORE@", &store.display().to_string());
        std::fs::write(&config_path, config)?;
        let run = ["run", "--config", &config_path.display().to_string()]
            .into_iter()
            .chain(["--http", "127.0.0.1:0"])
            .map(str::to_owned)
            .collect();
        Ok(Self {
            broker,
            store,
            storage,
            run,
            dir: dir.to_owned(),
        })
    }

    /// Starts `tandem run` with extra environment variables and waits for its HTTP address.
    pub fn start(&self, env: &[(&str, &str)]) -> anyhow::Result<TestServer> {
        TestServer::spawn(&self.run, env, &self.dir, Ready::Http)
    }

    /// Starts `tandem run` with extra arguments (`--role speed,serve`, say).
    pub fn start_with(&self, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<TestServer> {
        let mut run = self.run.clone();
        run.extend(args.iter().map(|a| (*a).to_owned()));
        TestServer::spawn(&run, env, &self.dir, Ready::Http)
    }

    /// A producer to the broker.
    pub fn producer(&self) -> anyhow::Result<FutureProducer> {
        Ok(ClientConfig::new()
            .set("bootstrap.servers", &self.broker.kafka)
            .set("linger.ms", "5")
            .create()?)
    }
}

/// A real Kafka-protocol broker (tansu, in memory) for tests of `tandem run` outside the
/// embedded mock cluster. The binary is `$TANSU_BIN` or `tansu` on the `PATH`; `scripts/test`
/// installs it. A missing binary is a test failure.
#[derive(Debug)]
pub struct ExternalBroker {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub bootstrap: String,
}

impl ExternalBroker {
    pub fn start(log_dir: &Path) -> anyhow::Result<Self> {
        let binary = std::env::var("TANSU_BIN").unwrap_or_else(|_| "tansu".to_owned());
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let url = format!("tcp://127.0.0.1:{port}");
        std::fs::create_dir_all(log_dir)?;
        let log = log_dir.join("tansu.log");
        let child = Command::new(&binary)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::create(log_dir.join("tansu.err"))?)
            .spawn()
            .with_context(|| {
                format!("starting `{binary}` (install it with scripts/test or set TANSU_BIN)")
            })?;
        let broker = Self {
            child,
            bootstrap: format!("127.0.0.1:{port}"),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&broker.bootstrap).is_err() {
            if std::time::Instant::now() > deadline {
                bail!("tansu did not listen on {} within 30s", broker.bootstrap);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(broker)
    }
}

impl ExternalBroker {
    /// Creates topic `name` with `partitions` partitions (the broker creates none by itself).
    pub async fn create_topic(&self, name: &str, partitions: i32) -> anyhow::Result<()> {
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        use rdkafka::client::DefaultClientContext;
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create()?;
        let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        for result in admin.create_topics(&[topic], &AdminOptions::new()).await? {
            result.map_err(|(topic, code)| anyhow::anyhow!("creating {topic}: {code}"))?;
        }
        Ok(())
    }

    /// Stops the broker process (SIGSTOP): connections stay open and nothing is answered, as
    /// with a broker that hangs or a network partition. Nothing is lost.
    pub fn pause(&self) -> anyhow::Result<()> {
        self.signal("-STOP")
    }

    /// Continues a paused broker (SIGCONT).
    pub fn resume(&self) -> anyhow::Result<()> {
        self.signal("-CONT")
    }

    fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill {signal} failed: {status}");
        Ok(())
    }
}

impl Drop for ExternalBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The arguments of `tandem run --config <config> --http 127.0.0.1:0`.
pub fn run_args(config: &Path) -> Vec<String> {
    ["run", "--config", &config.display().to_string()]
        .into_iter()
        .chain(["--http", "127.0.0.1:0"])
        .map(String::from)
        .collect()
}

/// The Prometheus text of `GET /metrics`.
pub async fn metrics_text(client: &reqwest::Client, server: &TestServer) -> anyhow::Result<String> {
    Ok(client
        .get(server.url("/metrics"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// A metric's value in Prometheus text (summed over its labels), 0 when absent.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Every row of `view` from `GET /v1/views/{view}` (windows from 2000 on, one page of up to
/// 10,000 rows).
pub async fn view_rows(
    client: &reqwest::Client,
    server: &TestServer,
    view: &str,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let body: serde_json::Value = client
        .get(server.url(&format!("/v1/views/{view}")))
        .query(&[("from", "2000-01-01T00:00:00Z"), ("limit", "10000")])
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(body["rows"].as_array().context("rows")?.clone())
}

/// An RFC 3339 timestamp of an answer as epoch milliseconds.
pub fn millis(v: &serde_json::Value) -> anyhow::Result<i64> {
    let s = v.as_str().context("timestamp is not a string")?;
    Ok(chrono::DateTime::parse_from_rfc3339(s)?.timestamp_millis())
}

/// Polls `check` every 250 ms until it succeeds or `timeout` passes, returning the last error on
/// timeout.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match check().await {
            Ok(v) => return Ok(v),
            Err(e) if std::time::Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// Submits a job (`POST /v1/jobs` with `body`), checks it is accepted (202) and queued, and waits
/// up to `timeout` for it to succeed; returns its record. A 503 (no scheduler while the lease
/// moves, a full queue) is retried within `timeout`, as the API asks of a client.
pub async fn run_job(
    client: &reqwest::Client,
    server: &TestServer,
    body: serde_json::Value,
    timeout: Duration,
) -> anyhow::Result<serde_json::Value> {
    let deadline = std::time::Instant::now() + timeout;
    let resp = loop {
        let resp = client
            .post(server.url("/v1/jobs"))
            .json(&body)
            .send()
            .await?;
        let status = resp.status();
        if status.as_u16() == 202 {
            break resp;
        }
        let text = resp.text().await.unwrap_or_default();
        if status.as_u16() != 503 || std::time::Instant::now() > deadline {
            bail!("POST /v1/jobs: {status}: {text}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let job: serde_json::Value = resp.json().await?;
    anyhow::ensure!(job["status"] == "queued", "new job: {job}");
    let id = job["id"].as_str().context("job id")?.to_owned();
    eventually(timeout, || async {
        let j: serde_json::Value = client
            .get(server.url(&format!("/v1/jobs/{id}")))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        match j["status"].as_str() {
            Some("succeeded") => Ok(j),
            Some("failed") => bail!("job failed: {j}"),
            _ => bail!("job not finished: {j}"),
        }
    })
    .await
}
