//! Scale-out on loopback: two speed workers share the events topic's partitions and a third
//! process serves and runs the batch layer; every process answers for every partition.
//!
//! The embedded broker runs alone (`tandem broker`) so a worker can be SIGKILLed while the
//! topic stays. Answers are compared with the oracle computed here from the produced events
//! (`tandem_tests::quarters`): while a killed worker's partitions move, answers name the
//! missing partitions and mark speed rows partial, never silently short; afterwards nothing is
//! lost or counted twice.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde_json::Value;
use tandem_shared::layout;
use tandem_tests::quarters::{MINUTE, TOPICS, answer_of, expected, produce, total};
use tandem_tests::{RunFixture, TestServer, run_job};

async fn body(client: &reqwest::Client, server: &TestServer) -> anyhow::Result<Value> {
    let resp = client.get(server.url("/v1/views/by_city")).send().await?;
    let status = resp.status();
    let body: Value = resp.json().await?;
    ensure!(status.is_success(), "{status}: {body}");
    Ok(body)
}

/// The partitions a worker announced in its heartbeat.
async fn announced(fixture: &RunFixture) -> anyhow::Result<Vec<(String, BTreeSet<i64>)>> {
    let store = tandem_store::open(&fixture.storage)?;
    let mut out = Vec::new();
    for meta in tandem_store::object::list(&store, &layout::member_dir("tandem-speed")).await? {
        let bytes = tandem_store::object::read(&store, meta.location.as_ref()).await?;
        let member: Value = serde_json::from_slice(&bytes)?;
        let owned = member["owned"]
            .as_array()
            .context("owned")?
            .iter()
            .filter_map(|o| o["partition"].as_i64())
            .collect();
        out.push((
            member["address"].as_str().context("address")?.to_owned(),
            owned,
        ));
    }
    Ok(out)
}

/// Waits until `server`'s answer is whole and equals the oracle for `n` events; fails at once
/// on any answer counting more than `n` or on rows that are partial without a named partition.
async fn wait_whole(
    client: &reqwest::Client,
    server: &TestServer,
    base: i64,
    n: i64,
    timeout: Duration,
) -> anyhow::Result<()> {
    let want = expected(base, n);
    let deadline = Instant::now() + timeout;
    loop {
        let b = body(client, server).await?;
        let got = answer_of(&b)?;
        ensure!(
            total(&got) <= n,
            "{} counted, {n} produced: double counting",
            total(&got)
        );
        if b.get("missing_partitions").is_none() && got == want {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("not whole after {timeout:?}: {b}\nlog:\n{}", server.log());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A standalone broker, a store and a producer for one test, and the minute its events start
/// at (`minutes_back` before now).
struct Scene {
    dir: tempfile::TempDir,
    fixture: RunFixture,
    producer: rdkafka::producer::FutureProducer,
    client: reqwest::Client,
    now: i64,
    base: i64,
}

fn scene(minutes_back: i64) -> anyhow::Result<Scene> {
    let dir = tempfile::tempdir()?;
    let fixture = RunFixture::new(dir.path(), TOPICS)?;
    let producer = fixture.producer()?;
    let now = chrono::Utc::now().timestamp_millis();
    Ok(Scene {
        dir,
        fixture,
        producer,
        client: reqwest::Client::new(),
        now,
        base: now - now.rem_euclid(MINUTE) - minutes_back * MINUTE,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_instance_answers_for_every_partition_and_a_killed_worker_is_named_then_replaced()
-> anyhow::Result<()> {
    // Three hours back: the batch job below can publish these windows once an event of now
    // has moved the archive's event time past their lateness (1 h).
    let Scene {
        dir: _dir,
        fixture,
        producer,
        client,
        now,
        base,
    } = scene(180)?;

    let a = fixture.start_with(&["--role", "speed,serve"], &[])?;
    let b = fixture.start_with(&["--role", "speed,serve"], &[])?;
    let serving = fixture.start_with(&["--role", "serve,batch,archive"], &[])?;
    produce(&producer, base, 0..2_000).await?;

    // Every instance answers for all four partitions, equal to the oracle.
    for server in [&serving, &a, &b] {
        wait_whole(&client, server, base, 2_000, Duration::from_secs(90)).await?;
    }
    let members = announced(&fixture).await?;
    let owned_a = members
        .iter()
        .find(|(address, _)| *address == a.http)
        .map(|(_, owned)| owned.clone())
        .with_context(|| format!("no heartbeat of worker A: {members:?}"))?;
    let all: BTreeSet<i64> = members.iter().flat_map(|(_, o)| o.clone()).collect();
    ensure!(
        members.len() == 2 && !owned_a.is_empty() && all.len() == 4,
        "the two workers should split the four partitions: {members:?}"
    );
    // A process without the speed role has no worker to ask.
    let internal = client
        .get(serving.url("/v1/internal/partials/by_city"))
        .send()
        .await?;
    ensure!(internal.status() == 404, "{}", internal.status());

    // SIGKILL worker A mid-stream.
    produce(&producer, base, 2_000..3_000).await?;
    let killed = Instant::now();
    a.kill()?;
    produce(&producer, base, 3_000..4_000).await?;

    // While its partitions move, answers name them and mark speed rows partial.
    let mut saw_partial = false;
    let deadline = Instant::now() + Duration::from_secs(90);
    let want = expected(base, 4_000);
    loop {
        let b_body = body(&client, &serving).await?;
        let got = answer_of(&b_body)?;
        ensure!(total(&got) <= 4_000, "double counting: {}", total(&got));
        match b_body.get("missing_partitions") {
            Some(missing) => {
                let missing: BTreeSet<i64> = missing
                    .as_array()
                    .context("missing_partitions")?
                    .iter()
                    .filter_map(Value::as_i64)
                    .collect();
                ensure!(!missing.is_empty(), "an empty missing list is not rendered");
                let rows = b_body["rows"].as_array().context("rows")?;
                ensure!(
                    rows.iter()
                        .filter(|r| r["source"] == "speed")
                        .all(|r| r["partial"] == true),
                    "speed rows of a partial answer must say so: {b_body}"
                );
                saw_partial = true;
            }
            None if got == want => break,
            None => {}
        }
        if Instant::now() > deadline {
            bail!(
                "answers not whole after the kill: {b_body}\n{}",
                serving.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let recovered = killed.elapsed();
    eprintln!("scale-out: answers whole again {recovered:?} after SIGKILL of a speed worker");
    ensure!(
        saw_partial,
        "the killed worker's partitions were never reported missing"
    );
    // The surviving worker owns every partition now and answers the same.
    wait_whole(&client, &b, base, 4_000, Duration::from_secs(30)).await?;
    let members = announced(&fixture).await?;
    ensure!(
        members
            .iter()
            .any(|(address, owned)| *address == b.http && owned.len() == 4),
        "worker B should own all four partitions: {members:?}"
    );

    // The batch layer (on the serving process) agrees once it publishes. One event of now
    // makes the windows above ready; the job is asked of worker B, which has no batch role: it
    // forwards to the scheduler lease's holder.
    let advance = serde_json::json!({"ts": now, "city": "Advance", "amount": 1.0}).to_string();
    producer
        .send(
            rdkafka::producer::FutureRecord::to("orders")
                .key("advance")
                .payload(&advance),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)?;
    // Once the archive holds it (1 s rolls), a job publishes the windows before it; until
    // then a job publishes nothing new, and is asked again.
    let final_body = tandem_tests::eventually(Duration::from_secs(180), || async {
        run_job(&client, &b, serde_json::json!({}), Duration::from_secs(120)).await?;
        let final_body = body(&client, &serving).await?;
        ensure!(
            final_body["rows"]
                .as_array()
                .context("rows")?
                .iter()
                .any(|r| r["source"] == "batch"),
            "the job published nothing: {final_body}"
        );
        Ok(final_body)
    })
    .await?;
    let mut after = answer_of(&final_body)?;
    after.retain(|(_, city), _| city != "Advance");
    ensure!(after == want, "after the batch job: {final_body}");
    // The serving process measured drift over the group's rows of the published windows before
    // the worker released them: counts, sums and maxima are exact in the speed layer.
    let report = tandem_tests::eventually(Duration::from_secs(30), || async {
        let views: Value = client
            .get(serving.url("/v1/views"))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let report = views["views"][0]["reconciliation"].clone();
        ensure!(report["rows_compared"].as_u64().unwrap_or(0) > 0, "{views}");
        Ok(report)
    })
    .await
    .with_context(|| serving.log())?;
    for value in ["n", "total", "biggest"] {
        ensure!(
            report["max_relative_drift"][value].as_f64() == Some(0.0),
            "drift of {value}: {report}"
        );
    }
    ensure!(report["speed_only_rows"] == 0, "{report}");
    Ok(())
}

/// Two processes with the batch role: one holds the scheduler lease and runs jobs; when it is
/// SIGKILLed the other takes the lease over, and job requests sent to a third process follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_lease_moves_when_its_holder_dies() -> anyhow::Result<()> {
    let Scene {
        dir: _dir,
        fixture,
        producer,
        client,
        base,
        ..
    } = scene(30)?;

    let worker = fixture.start_with(&["--role", "speed,archive,serve"], &[])?;
    let first = fixture.start_with(&["--role", "batch,serve"], &[])?;
    produce(&producer, base, 0..500).await?;
    wait_whole(&client, &worker, base, 500, Duration::from_secs(90)).await?;
    let holder = |fixture: &RunFixture| {
        let storage = fixture.storage.clone();
        async move {
            let store = tandem_store::open(&storage)?;
            let lease = tandem_store::lease::Lease::new(
                store,
                layout::scheduler_lease_dir(),
                "observer",
                "",
                Duration::from_secs(10),
            );
            let newest = lease.newest().await?;
            anyhow::Ok(newest.map(|(_, t)| t.address))
        }
    };
    tandem_tests::eventually(Duration::from_secs(30), || async {
        let h = holder(&fixture).await?;
        ensure!(h.as_deref() == Some(first.http.as_str()), "holder {h:?}");
        Ok(())
    })
    .await?;
    let second = fixture.start_with(&["--role", "batch,serve"], &[])?;
    let job = run_job(
        &client,
        &worker,
        serde_json::json!({}),
        Duration::from_secs(120),
    )
    .await?;
    ensure!(job["status"] == "succeeded", "{job}");

    let killed = Instant::now();
    first.kill()?;
    tandem_tests::eventually(Duration::from_secs(60), || async {
        let h = holder(&fixture).await?;
        ensure!(h.as_deref() == Some(second.http.as_str()), "holder {h:?}");
        Ok(())
    })
    .await
    .with_context(|| second.log())?;
    eprintln!(
        "scheduler lease taken over {:?} after SIGKILL of its holder",
        killed.elapsed()
    );
    produce(&producer, base, 500..1_000).await?;
    wait_whole(&client, &worker, base, 1_000, Duration::from_secs(90)).await?;
    run_job(
        &client,
        &worker,
        serde_json::json!({}),
        Duration::from_secs(120),
    )
    .await
    .with_context(|| second.log())?;
    let final_body = body(&client, &second).await?;
    ensure!(
        answer_of(&final_body)? == expected(base, 1_000),
        "after the new holder's job: {final_body}"
    );
    Ok(())
}

/// The no-kill scenario on a real Kafka-protocol broker (tansu): two speed workers split the
/// partitions through the broker's consumer group (with static membership ids), and every
/// instance answers for all of them. Fail-over is tested on the embedded broker only: tansu
/// 0.6.0 never hands a SIGKILLed member's partitions to another member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_split_the_partitions_of_a_real_broker_and_every_instance_answers()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = tandem_tests::ExternalBroker::start(dir.path())?;
    for topic in TOPICS {
        let (name, partitions) = topic.split_once(':').context("topic")?;
        broker.create_topic(name, partitions.parse()?).await?;
    }
    let store = dir.path().join("store");
    let config = std::fs::read_to_string(tandem_tests::fixture("recovery.toml"))?
        .replace("@BROKERS@", &broker.bootstrap)
        .replace("@STORE@", &store.display().to_string());
    let config_path = dir.path().join("tandem.toml");
    std::fs::write(&config_path, config)?;
    let start = |roles: &str| {
        let mut args = tandem_tests::run_args(&config_path);
        args.extend(["--role".to_owned(), roles.to_owned()]);
        TestServer::spawn(&args, &[], dir.path(), tandem_tests::Ready::Http)
    };
    let a = start("speed,serve")?;
    let b = start("speed,serve")?;
    let serving = start("serve")?;
    let producer: rdkafka::producer::FutureProducer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .create()?;
    let now = chrono::Utc::now().timestamp_millis();
    let base = now - now.rem_euclid(MINUTE) - 30 * MINUTE;
    produce(&producer, base, 0..2_000).await?;
    // The second worker's join makes the group split the partitions (a rebalance may follow
    // the first assignment by a few seconds).
    let storage = tandem_store::StorageSettings::at(format!("file://{}", store.display()));
    let membership =
        tandem_store::members::Membership::new(tandem_store::open(&storage)?, "tandem-speed");
    tandem_tests::eventually(Duration::from_secs(60), || async {
        let members = membership
            .live(
                chrono::Utc::now().timestamp_millis(),
                Duration::from_secs(10),
            )
            .await?;
        let owned: Vec<usize> = members.iter().map(|m| m.owned.len()).collect();
        ensure!(
            owned.len() == 2 && owned.iter().all(|n| *n > 0) && owned.iter().sum::<usize>() == 4,
            "both workers should own partitions: {members:?}"
        );
        Ok(())
    })
    .await
    .with_context(|| format!("worker A:\n{}\nworker B:\n{}", a.log(), b.log()))?;
    for server in [&serving, &a, &b] {
        wait_whole(&client(), server, base, 2_000, Duration::from_secs(120))
            .await
            .with_context(|| format!("worker A:\n{}\nworker B:\n{}", a.log(), b.log()))?;
    }
    Ok(())
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

/// A planned stop (SIGTERM) of a speed worker: it checkpoints and leaves the group, so its
/// partitions move at once instead of after the session timeout, and answers stay whole or name
/// what is moving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_worker_hands_its_partitions_over_within_seconds() -> anyhow::Result<()> {
    let Scene {
        dir: _dir,
        fixture,
        producer,
        client,
        base,
        ..
    } = scene(30)?;
    let a = fixture.start_with(&["--role", "speed,serve"], &[])?;
    let b = fixture.start_with(&["--role", "speed,serve"], &[])?;
    produce(&producer, base, 0..1_000).await?;
    tandem_tests::eventually(Duration::from_secs(60), || async {
        let members = announced(&fixture).await?;
        ensure!(
            members.len() == 2 && members.iter().all(|(_, owned)| !owned.is_empty()),
            "{members:?}"
        );
        Ok(())
    })
    .await?;
    wait_whole(&client, &b, base, 1_000, Duration::from_secs(60)).await?;
    let stopped = Instant::now();
    let status = a.stop()?;
    ensure!(status.success(), "worker A exited with {status}");
    wait_whole(&client, &b, base, 1_000, Duration::from_secs(60)).await?;
    let moved = stopped.elapsed();
    eprintln!("scale-out: answers whole again {moved:?} after SIGTERM of a speed worker");
    let members = announced(&fixture).await?;
    ensure!(
        members.len() == 1 && members[0].1.len() == 4,
        "the stopped worker withdrew its heartbeat and B owns every partition: {members:?}"
    );
    Ok(())
}
