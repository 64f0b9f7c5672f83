//! The end-to-end scenario with the object store on a real S3-compatible server.

use anyhow::ensure;
use tandem_tests::s3::{SECRET_ACCESS_KEY, SECRET_ENV};
use tandem_tests::{Ready, S3Server, TestServer, fixture, run_args};

use super::run_scenario;

/// `tandem run` against the standalone embedded broker, its archive, checkpoints and views in
/// `s3://tandem/e2e` on `moto_server`, the secret key read from the environment variable the
/// configuration names. Every answer is checked as on the local store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tandem_run_with_its_store_on_s3() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let s3 = S3Server::start(data.path()).await?;
    let broker = TestServer::broker(&["orders:4"], data.path())?;
    let template = std::fs::read_to_string(fixture("orders.toml"))?;
    let local = "[storage]\nurl = \"memory://\"\n";
    ensure!(template.contains(local), "orders.toml's storage changed");
    let config = template
        .replacen(
            "[kafka]\n",
            &format!("[kafka]\nbrokers = \"{}\"\n", broker.kafka),
            1,
        )
        .replacen(local, &s3.storage_table("e2e", true), 1);
    let config_path = data.path().join("tandem.toml");
    std::fs::write(&config_path, config)?;
    let run = run_args(&config_path);

    // Without the environment variable the configuration names, start-up stops and says so.
    let missing = std::process::Command::new(tandem_tests::tandem_binary()?)
        .args(&run)
        .env_remove(SECRET_ENV)
        .output()?;
    let stderr = String::from_utf8_lossy(&missing.stderr);
    ensure!(
        !missing.status.success()
            && stderr.contains(&format!("environment variable {SECRET_ENV} is not set")),
        "expected a missing-secret error, got {}: {stderr}",
        missing.status
    );

    let mut server = TestServer::spawn(
        &run,
        &[(SECRET_ENV, SECRET_ACCESS_KEY)],
        data.path(),
        Ready::Http,
    )?;
    server.kafka = broker.kafka.clone();
    run_scenario(server).await?;

    // What Tandem wrote is on the server, under the prefix: the archive's Parquet files and
    // manifests, and the published views.
    let keys = s3.keys("e2e/").await?;
    for (what, prefix, suffix) in [
        ("archived events", "e2e/archive/orders/", ".parquet"),
        ("archive manifests", "e2e/archive/orders/_manifest/", ""),
        ("view segments", "e2e/views/", ".parquet"),
    ] {
        ensure!(
            keys.iter()
                .any(|k| k.starts_with(prefix) && k.ends_with(suffix)),
            "no {what} under {prefix} on the S3 server: {keys:?}"
        );
    }
    ensure!(
        !keys.iter().any(|k| k.starts_with("e2e/_probe/")),
        "the start-up probe object was left behind: {keys:?}"
    );
    Ok(())
}
