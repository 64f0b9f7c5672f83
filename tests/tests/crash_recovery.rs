//! Exactly-once recovery of the speed layer.
//!
//! The embedded broker runs in its own process (`tandem broker`) so that the topic survives
//! Tandem being killed. Tandem (`tandem run`) is killed with SIGKILL while it consumes, and made
//! to abort in the middle of a checkpoint (before and after the checkpoint object is written)
//! through the `TANDEM_CRASH_AT` hook. After the last restart its answers must equal the values
//! computed here from the produced events: nothing lost, nothing counted twice.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use futures::TryStreamExt;
use tandem_tests::quarters::{
    Answer, MINUTE, TOPICS, answer, expected, produce, total, wait_for_total,
};
use tandem_tests::{RunFixture, S3Server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speed_layer_survives_kills_without_losing_or_double_counting() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    survives_kills(&RunFixture::new(dir.path(), TOPICS)?).await
}

/// The same on a real S3-compatible server: checkpoints and manifests are S3 objects, and a
/// manifest is published by a conditional (`If-None-Match`) write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speed_layer_survives_kills_on_s3() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let s3 = S3Server::start(dir.path()).await?;
    let fixture = RunFixture::on_s3(dir.path(), TOPICS, &s3, "crash")?;
    survives_kills(&fixture).await?;
    // The objects are really on the server, under the configured prefix.
    let keys = s3.keys("crash/checkpoints/").await?;
    ensure!(
        keys.iter().any(|k| k.ends_with(".ckpt")),
        "no checkpoint objects on the S3 server: {keys:?}"
    );
    Ok(())
}

async fn survives_kills(fixture: &RunFixture) -> anyhow::Result<()> {
    let start = |env: &[(&str, &str)]| fixture.start(env);
    let producer = fixture.producer()?;
    let client = reqwest::Client::new();
    let now = chrono::Utc::now().timestamp_millis();
    let base = now - now.rem_euclid(MINUTE) - 30 * MINUTE;

    // 1. Consume, checkpoint, then SIGKILL.
    let server = start(&[])?;
    produce(&producer, base, 0..1_000).await?;
    wait_for_total(&client, &server, 1_000, Duration::from_secs(60)).await?;
    // Every partition checkpointed after the events were counted: a manifest published for
    // each that was not there before (the last run must resume all four from checkpoints).
    let store = tandem_store::open(&fixture.storage)?;
    let manifests = || async {
        let listed: Vec<String> = store
            .list(Some(&object_store::path::Path::from("checkpoints")))
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await?;
        anyhow::Ok(
            listed
                .into_iter()
                .filter(|p| p.contains("/_manifest/"))
                .collect::<std::collections::BTreeSet<_>>(),
        )
    };
    let before = manifests().await?;
    tandem_tests::eventually(Duration::from_secs(30), || async {
        let partitions: std::collections::BTreeSet<String> = manifests()
            .await?
            .difference(&before)
            .filter_map(|p| p.split("/_manifest/").next().map(str::to_owned))
            .collect();
        ensure!(partitions.len() == 4, "checkpointed since: {partitions:?}");
        Ok(())
    })
    .await?;
    server.kill()?;

    // 2. Abort after writing a checkpoint object but before publishing its manifest.
    let mut server = start(&[("TANDEM_CRASH_AT", "checkpoint.after_object")])?;
    produce(&producer, base, 1_000..2_000).await?;
    server.wait_exit(Duration::from_secs(60)).await?;

    // 3. Abort before writing the checkpoint object.
    let mut server = start(&[("TANDEM_CRASH_AT", "checkpoint.before_object")])?;
    produce(&producer, base, 2_000..3_000).await?;
    server.wait_exit(Duration::from_secs(60)).await?;

    // 4. Abort right after publishing a manifest (the checkpoint is complete).
    let mut server = start(&[("TANDEM_CRASH_AT", "checkpoint.after_manifest")])?;
    server.wait_exit(Duration::from_secs(60)).await?;

    // 5. SIGKILL while consuming a new batch of events.
    let server = start(&[])?;
    produce(&producer, base, 3_000..3_500).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.kill()?;

    // 6. The last run sees every event exactly once.
    let server = start(&[])?;
    produce(&producer, base, 3_500..4_000).await?;
    let got = wait_for_total(&client, &server, 4_000, Duration::from_secs(90))
        .await
        .with_context(|| server.log())?;
    let want = expected(base, 4_000);
    ensure!(
        got == want,
        "answers differ from the produced events:\n got {got:?}\nwant {want:?}"
    );
    // Checkpoints were really taken (the recovery above did not rebuild from the topic alone).
    let store = tandem_store::open(&fixture.storage)?;
    let checkpoints: Vec<String> = store
        .list(Some(&object_store::path::Path::from("checkpoints")))
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await?;
    ensure!(
        checkpoints.iter().any(|p| p.ends_with(".ckpt")),
        "no checkpoint objects: {checkpoints:?}"
    );
    // The last run resumed from checkpointed offsets on every partition: a rebuild from the
    // start of the topic would also give the right totals here, so check how it got them.
    let log = server.log();
    let resumed = log
        .lines()
        .filter(|l| l.contains("partition assigned") && l.contains("start=Offset("))
        .count();
    ensure!(
        resumed == 4 && !log.contains("rebuilding"),
        "the last run should restore all 4 partitions from checkpoints:\n{log}"
    );
    let status = server.stop()?;
    ensure!(status.success(), "tandem exited with {status}");
    Ok(())
}

/// Adds two workers' answers: each event must be counted by exactly one of them.
fn combine(a: &Answer, b: &Answer) -> BTreeMap<(i64, String), i64> {
    let mut out = BTreeMap::new();
    for (k, v) in a.iter().chain(b.iter()) {
        *out.entry(k.clone()).or_insert(0) += v.0;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_move_between_workers_with_their_state() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let fixture = RunFixture::new(dir.path(), TOPICS)?;
    let producer = fixture.producer()?;
    let client = reqwest::Client::new();
    let now = chrono::Utc::now().timestamp_millis();
    let base = now - now.rem_euclid(MINUTE) - 30 * MINUTE;

    let a = fixture.start(&[])?;
    produce(&producer, base, 0..1_000).await?;
    wait_for_total(&client, &a, 1_000, Duration::from_secs(60)).await?;

    // A second worker joins the group: the partitions are split, each with its state.
    let b = fixture.start(&[])?;
    produce(&producer, base, 1_000..2_000).await?;
    let want: BTreeMap<(i64, String), i64> = expected(base, 2_000)
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (ra, rb) = (answer(&client, &a).await?, answer(&client, &b).await?);
        let both = combine(&ra, &rb);
        let seen: i64 = both.values().sum();
        ensure!(
            seen <= 2_000,
            "{seen} events counted by the two workers, 2000 produced"
        );
        if seen == 2_000 && total(&ra) > 0 && total(&rb) > 0 {
            ensure!(
                both == want,
                "split answers differ from the produced events"
            );
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "workers hold {} + {} of 2000 events\nA:\n{}\nB:\n{}",
                total(&ra),
                total(&rb),
                a.log(),
                b.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // The second worker leaves: its partitions come back to the first with their state.
    let status = b.stop()?;
    ensure!(status.success(), "worker B exited with {status}");
    produce(&producer, base, 2_000..2_500).await?;
    let got = wait_for_total(&client, &a, 2_500, Duration::from_secs(90))
        .await
        .with_context(|| a.log())?;
    ensure!(
        got == expected(base, 2_500),
        "answers after hand-back differ from the produced events"
    );
    Ok(())
}
