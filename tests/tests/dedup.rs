//! De-duplication in both layers: a producer that retries sends 20% of its events twice, some
//! copies seconds after the original, some after Tandem restarted. The speed layer drops every
//! copy within its horizon (the ids it remembers are checkpointed with its windows), the batch
//! layer de-duplicates the archive, and both answer what the oracle counts over distinct ids.

use std::time::Duration;

use anyhow::ensure;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;
use tandem_tests::quarters::{MINUTE, TOPICS, answer, event, expected, wait_for_total};
use tandem_tests::{RunFixture, TestServer, eventually, metric, metrics_text, run_job};

/// Events `ids` with their id `o-<i>`, keyed by it (copies meet in one partition).
async fn produce(producer: &FutureProducer, base: i64, ids: &[i64]) -> anyhow::Result<()> {
    let mut pending = Vec::new();
    for &i in ids {
        let (_, ts, city, amount) = event(i, base);
        let id = format!("o-{i}");
        let payload = json!({"order_id": id, "ts": ts, "city": city, "amount": amount}).to_string();
        pending.push(
            producer
                .send_result(FutureRecord::to("orders").key(&id).payload(&payload))
                .map_err(|(e, _)| e)?,
        );
    }
    for p in pending {
        p.await?.map_err(|(e, _)| e)?;
    }
    Ok(())
}

/// Waits until the process has dropped `n` copies (its own count since it started).
async fn dropped(client: &reqwest::Client, server: &TestServer, n: f64) -> anyhow::Result<()> {
    eventually(Duration::from_secs(60), || async {
        let text = metrics_text(client, server).await?;
        let seen = metric(&text, "tandem_speed_duplicates_total{view=\"by_city\"}");
        ensure!(seen == n, "{seen} copies dropped, {n} expected");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_are_dropped_across_a_restart_and_both_layers_agree() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let fixture = RunFixture::with_fixture(dir.path(), TOPICS, "dedup.toml")?;
    let producer = fixture.producer()?;
    let client = reqwest::Client::new();
    let now = chrono::Utc::now().timestamp_millis();
    // Two hours back: the windows close (end plus the fixture's hour of lateness) once an
    // event of now reaches the archive.
    let base = now - now.rem_euclid(MINUTE) - 120 * MINUTE;
    let all: Vec<i64> = (0..1_000).collect();
    let want = expected(base, 1_000);

    // 1. The originals, then copies of 100 of them seconds later.
    let server = fixture.start(&[])?;
    produce(&producer, base, &all).await?;
    wait_for_total(&client, &server, 1_000, Duration::from_secs(60)).await?;
    let early: Vec<i64> = all.iter().copied().filter(|i| i % 10 == 0).collect();
    produce(&producer, base, &early).await?;
    dropped(&client, &server, 100.0).await?;
    ensure!(
        answer(&client, &server).await? == want,
        "the speed layer counted a copy"
    );
    let status = server.stop()?;
    ensure!(status.success(), "tandem exited with {status}");

    // 2. After a restart, copies of another 100 (and again of the first 100): the ids came back
    //    with the checkpoint.
    let server = fixture.start(&[])?;
    let late: Vec<i64> = all.iter().copied().filter(|i| i % 10 == 5).collect();
    produce(&producer, base, &late).await?;
    produce(&producer, base, &early).await?;
    dropped(&client, &server, 200.0).await?;
    ensure!(
        answer(&client, &server).await? == want,
        "the speed layer counted a copy after the restart"
    );

    // 3. The batch layer, over the archive with every copy, publishes the same. One event of
    //    now (without an id: counted, and left out of the comparison) makes the windows ready.
    let advance = json!({"ts": now, "city": "Advance", "amount": 1.0}).to_string();
    producer
        .send(
            FutureRecord::to("orders").key("advance").payload(&advance),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)?;
    // Once the archive holds the copies (1 s rolls), a job publishes the windows before the
    // latest event; until then a job publishes nothing new, and is asked again.
    eventually(Duration::from_secs(180), || async {
        run_job(&client, &server, json!({}), Duration::from_secs(120)).await?;
        let body: serde_json::Value = client
            .get(server.url("/v1/views/by_city"))
            .send()
            .await?
            .json()
            .await?;
        let batch = body["rows"]
            .as_array()
            .map_or(0, |r| r.iter().filter(|r| r["source"] == "batch").count());
        ensure!(batch > 0, "no window answered by the batch layer yet");
        let mut answer = tandem_tests::quarters::answer_of(&body)?;
        answer.retain(|(_, city), _| city != "Advance");
        ensure!(answer == want, "after the job: {body}");
        Ok(())
    })
    .await?;
    let status = server.stop()?;
    ensure!(status.success(), "tandem exited with {status}");
    Ok(())
}
