//! Test harness for Tandem's end-to-end tests: runs the real `tandem` binary.
//!
//! [`TestServer`] spawns `tandem dev` with a fixture configuration on free ports, waits for it to
//! print its Kafka bootstrap and HTTP addresses, and stops it when dropped. The binary must be
//! built (`cargo build --bin tandem`, which the README's test command does); a missing binary is
//! a test failure, never a skip.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, bail};

/// Path of a fixture file.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
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
            "{} does not exist: build it first with `cargo build --bin tandem` (or set TANDEM_BIN)",
            bin.display()
        );
    }
    Ok(bin)
}

/// A running `tandem dev` process.
#[derive(Debug)]
pub struct TestServer {
    child: Child,
    pub kafka: String,
    pub http: String,
    pub data: tempfile::TempDir,
    log: PathBuf,
}

impl TestServer {
    /// Starts `tandem dev --config <fixture>` on free ports.
    pub fn start(config: &Path) -> anyhow::Result<Self> {
        let data = tempfile::tempdir()?;
        let log = data.path().join("tandem.log");
        let stderr = std::fs::File::create(&log)?;
        let mut child = Command::new(tandem_binary()?)
            .args(["dev", "--config"])
            .arg(config)
            .args(["--http", "127.0.0.1:0", "--kafka-port", "0", "--data"])
            .arg(data.path().join("dev"))
            .env("RUST_LOG", "info,librdkafka=warn")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .context("spawning tandem")?;
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
        while kafka.is_none() || http.is_none() {
            let line = match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(line) => line,
                Err(_) => {
                    let _ = child.kill();
                    bail!(
                        "tandem did not print its addresses within 60s; log:\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
            };
            if let Some(rest) = line.strip_prefix("Kafka bootstrap: ") {
                kafka = Some(rest.trim().to_owned());
            } else if let Some(rest) = line.strip_prefix("HTTP: ") {
                http = Some(rest.trim().to_owned());
            }
        }
        Ok(Self {
            child,
            kafka: kafka.unwrap_or_default(),
            http: http.unwrap_or_default(),
            data,
            log,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.http)
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops the server with SIGTERM and waits for its ordered shutdown.
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
