//! Session views: every session that has ended (plus lateness) before the archive's horizon is
//! answered by the batch layer, whatever another group's sessions are doing; the seam answers
//! each session exactly once.
//!
//! One user keeps a session open through the whole stream (an event every minute, the gap is
//! three). With one coverage range for all groups that session would hold back every other
//! user's sessions; coverage per group holds back only that user.

use std::collections::{BTreeMap, BTreeSet};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tandem_serving::seam;
use tandem_shared::row::Source;

use super::*;

const GAP: i64 = 3 * MINUTE;
const LATENESS: i64 = 5_000; // the view's allowed lateness (see `view`)

/// 300 users with bursts of activity over `[from, to)` minutes after `BASE`, plus (with
/// `marathon`) one user active every minute for the first 125 minutes.
fn session_events(seed: u64, from: i64, to: i64, marathon: bool) -> Vec<Event> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::new();
    let event = |rng: &mut StdRng, user: String, ts: i64| Event {
        partition: rng.random_range(0..PARTITIONS),
        ts,
        city: CITIES[rng.random_range(0..CITIES.len())],
        user,
        amount: Some(rng.random_range(1.0..500.0)),
        qty: rng.random_range(1..10),
        coupon: None,
        event_type: TYPES[0],
        price: (!rng.random_ratio(1, 10)).then(|| rng.random_range(-5_000..10_000_000)),
    };
    for u in 0..300 {
        let mut t = BASE + from * MINUTE + rng.random_range(0..10 * MINUTE);
        while t < BASE + to * MINUTE {
            for _ in 0..rng.random_range(1..6) {
                t += rng.random_range(1_000..2 * MINUTE);
                let e = event(&mut rng, format!("u{u}"), t);
                out.push(e);
            }
            t += rng.random_range(GAP..40 * MINUTE);
        }
    }
    if marathon {
        for m in 0..125 {
            let e = event(&mut rng, "marathon".into(), BASE + m * MINUTE);
            out.push(e);
        }
    }
    out.sort_by_key(|e| e.ts);
    out
}

fn user(e: &Event) -> Vec<GroupValue> {
    vec![GroupValue::Str(e.user.clone())]
}

/// The sessions of `oracle` that ended for good by the time the archive is complete to the
/// least of the partitions' latest event times (none is idle), and the groups of those that
/// started before that horizon and are still open.
fn ended_and_open(events: &[Event], oracle: &Oracle) -> (Oracle, BTreeSet<Vec<GroupValue>>) {
    let mut latest: BTreeMap<i32, i64> = BTreeMap::new();
    for e in events {
        let t = latest.entry(e.partition).or_default();
        *t = (*t).max(e.ts);
    }
    let complete = latest.values().copied().min().unwrap();
    let ended = oracle
        .iter()
        .filter(|(_, (end, _))| end + LATENESS <= complete)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let open = oracle
        .iter()
        .filter(|((start, _), (end, _))| *start < complete - LATENESS && end + LATENESS > complete)
        .map(|((_, g), _)| g.clone())
        .collect();
    (ended, open)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ended_session_is_exact_and_the_seam_answers_each_once() {
    let schema = schema();
    let view = view(
        "user_sessions",
        testing::sessions("3m"),
        &["user_id"],
        None,
        &["count(*) AS n", "sum(price) AS paid", "max(qty) AS most"],
    );
    let marathon = vec![GroupValue::Str("marathon".into())];
    let decoder = EventDecoder::new(Arc::clone(&schema));
    let mut partitions = PartitionBatches::new(&decoder, PARTITIONS, 1024);
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let catalog = Arc::new(ViewCatalog::new(Arc::clone(&store), [view.clone()]));
    let recompute = recompute(&store, &schema, &catalog);
    let mut state = ViewState::new(Arc::new(ViewProgram::compile(&view, &schema).unwrap()));
    let mut events = Vec::new();
    // Two hours with the marathon, then 40 more minutes of other users: the second job, from
    // the first one's horizon (as the scheduler runs it), finds the marathon ended.
    for (phase, arrived) in [
        session_events(11, 0, 120, true),
        session_events(12, 130, 170, false),
    ]
    .into_iter()
    .enumerate()
    {
        for e in &arrived {
            assert!(partitions.append(&decoder.decode(e.json().as_bytes()).unwrap(), e.partition));
        }
        let batches = partitions.finish();
        import::import(&store, "orders", PARTITIONS, &batches)
            .await
            .unwrap();
        events.extend(arrived);
        // Speed: every event as it arrives, checked against the batch layer's coverage so far.
        let released = catalog
            .get("user_sessions")
            .map(|p| p.coverage.clone())
            .unwrap_or_default();
        for (_, batch) in &batches {
            let applied = state.apply(batch, None, &released).unwrap();
            assert!(applied.late_rows.is_empty());
        }
        let oracle = session_oracle(
            &events,
            GAP,
            user,
            |_| true,
            &[&count, &sum_price, &max_qty],
        );
        let (ended, open) = ended_and_open(&events, &oracle);
        assert_eq!(open.contains(&marathon), phase == 0);
        assert!(ended.len() >= 1_000, "only {} ended sessions", ended.len());
        assert!(
            (1..60).contains(&open.len()),
            "{} users were active at the end",
            open.len()
        );

        // Batch: every ended session is published, exactly; nothing else is. Only the groups
        // with an open session are held back.
        let from = catalog
            .get("user_sessions")
            .and_then(|p| p.coverage.horizon());
        let outcome = recompute
            .run_view(
                &view,
                Requested { from, to: None },
                &format!("sessions-{phase}"),
                &CancellationToken::new(),
                &|_| {},
            )
            .await
            .unwrap();
        assert_eq!(outcome.groups_held, open.len() as u64);
        let published = catalog.get("user_sessions").unwrap();
        let coverage = &published.coverage;
        let exact = catalog.rows(&published, ALL).await.unwrap();
        compare("user_sessions", "batch", &exact, &ended, None);
        let held: BTreeSet<Vec<GroupValue>> =
            coverage.held().iter().map(|h| h.group.clone()).collect();
        assert_eq!(held, open);
        if phase == 0 {
            assert_eq!(outcome.windows_published, ended.len() as u64);
            // One range for all groups would stop at the marathon's start: nothing exact.
            let first = oracle.keys().map(|(s, _)| *s).min().unwrap();
            assert_eq!(coverage.horizon(), Some(EventTime(first)));
        }

        // The seam, before and after the speed layer lets go of the covered sessions: every
        // session once, the ended ones from the batch layer, the open ones from the speed
        // layer.
        let fresh = state.rows(ALL);
        let released = state.release(coverage);
        assert!(!released.is_empty());
        for speed_rows in [fresh, state.rows(ALL)] {
            let answer = seam::merge(coverage, exact.clone(), speed_rows, &[], ALL);
            let rows: Vec<ViewRow> = answer.iter().map(|a| a.row.clone()).collect();
            compare("user_sessions", "seam", &rows, &oracle, None);
            for a in &answer {
                let key = (a.row.window.start.millis(), a.row.group.clone());
                let want = if ended.contains_key(&key) {
                    Source::Batch
                } else {
                    Source::Speed
                };
                assert_eq!(a.source, want, "session {key:?}");
            }
        }
        assert_eq!(
            state.rows(ALL).len(),
            oracle.len() - ended.len(),
            "the speed layer holds the open sessions only"
        );

        if phase == 0 {
            continue;
        }
        // A late event of an open session still lands in the speed layer; one for an ended
        // session is late (the batch layer answers that session).
        let (open_start, open_group) = oracle
            .keys()
            .find(|k| open.contains(&k.1) && !ended.contains_key(*k))
            .cloned()
            .unwrap();
        let (ended_start, ended_group) = ended.keys().next().unwrap();
        let name = |g: &[GroupValue]| g[0].to_string();
        let late = partitioned(
            &decoder,
            1,
            [
                (0, json_event(&name(&open_group), open_start + 1_000)),
                (0, json_event(&name(ended_group), *ended_start + 1_000)),
            ],
        );
        let applied = state.apply(&late[0].1, None, coverage).unwrap();
        assert_eq!(applied.late_rows, [1]);
    }
}

fn json_event(user: &str, ts: i64) -> String {
    serde_json::json!({"ts": ts, "user_id": user, "city": "Lima", "qty": 1, "price": "1.00"})
        .to_string()
}
