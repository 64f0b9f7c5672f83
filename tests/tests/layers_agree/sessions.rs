//! Session views: every session that has ended (plus lateness) before the archive's horizon is
//! answered by the batch layer, whatever another group's sessions are doing; the seam answers
//! each session exactly once.
//!
//! One user keeps a session open through the whole stream (an event every minute, the gap is
//! three). With one coverage range for all groups that session would hold back every other
//! user's sessions; coverage per group holds back only that user.

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tandem_serving::seam;
use tandem_shared::row::Source;

use super::*;

const GAP: i64 = 3 * MINUTE;
const LATENESS: i64 = 5_000; // the view's allowed lateness (see `view`)

/// 300 users with bursts of activity over two hours, plus `marathon`, active every minute.
fn session_events() -> Vec<Event> {
    let mut rng = StdRng::seed_from_u64(11);
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
        let mut t = BASE + rng.random_range(0..10 * MINUTE);
        while t < BASE + 120 * MINUTE {
            for _ in 0..rng.random_range(1..6) {
                t += rng.random_range(1_000..2 * MINUTE);
                let e = event(&mut rng, format!("u{u}"), t);
                out.push(e);
            }
            t += rng.random_range(GAP..40 * MINUTE);
        }
    }
    for m in 0..125 {
        let e = event(&mut rng, "marathon".into(), BASE + m * MINUTE);
        out.push(e);
    }
    out.sort_by_key(|e| e.ts);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ended_session_is_exact_and_the_seam_answers_each_once() {
    let events = session_events();
    let schema = schema();
    let (batches, store) = archived(&schema, &events).await;
    let view = view(
        "user_sessions",
        testing::sessions("3m"),
        &["user_id"],
        None,
        &["count(*) AS n", "sum(price) AS paid", "max(qty) AS most"],
    );
    let user = |e: &Event| vec![GroupValue::Str(e.user.clone())];
    let oracle = session_oracle(
        &events,
        GAP,
        user,
        |_| true,
        &[&count, &sum_price, &max_qty],
    );

    // The archive is complete up to the least of the partitions' latest event times (none is
    // idle): a session has ended for good when its end plus the lateness is before that.
    let mut latest: BTreeMap<i32, i64> = BTreeMap::new();
    for e in &events {
        let t = latest.entry(e.partition).or_default();
        *t = (*t).max(e.ts);
    }
    let complete = latest.values().copied().min().unwrap();
    let ended: Oracle = oracle
        .iter()
        .filter(|(_, (end, _))| end + LATENESS <= complete)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let marathon = vec![GroupValue::Str("marathon".into())];
    assert!(
        !ended.keys().any(|(_, g)| *g == marathon),
        "the marathon session is still open at the horizon"
    );
    assert!(ended.len() >= 1_000, "only {} ended sessions", ended.len());

    // Batch: one job. Every ended session is published, exactly; nothing else is.
    let catalog = Arc::new(ViewCatalog::new(Arc::clone(&store), [view.clone()]));
    let outcome = recompute(&store, &schema, &catalog)
        .run_view(
            &view,
            Requested::default(),
            "sessions",
            &CancellationToken::new(),
            &|_| {},
        )
        .await
        .unwrap();
    assert_eq!(outcome.windows_published, ended.len() as u64);
    // Held back: the groups with a session that started before the horizon and is still open
    // (the marathon, and users active at the end of the stream).
    let open: std::collections::BTreeSet<&Vec<GroupValue>> = oracle
        .iter()
        .filter(|((start, _), (end, _))| *start < complete - LATENESS && end + LATENESS > complete)
        .map(|((_, g), _)| g)
        .collect();
    assert!(open.contains(&marathon));
    assert_eq!(outcome.groups_held, open.len() as u64);
    assert!(
        open.len() < 60,
        "{} users were active at the end",
        open.len()
    );
    let published = catalog.get("user_sessions").unwrap();
    let exact = catalog.rows(&published, ALL).await.unwrap();
    compare("user_sessions", "batch", &exact, &ended, None);
    let coverage = &published.coverage;
    let held: Vec<&Vec<GroupValue>> = coverage.held().iter().map(|h| &h.group).collect();
    assert_eq!(held, open.into_iter().collect::<Vec<_>>());
    // One range for all groups would have stopped at the marathon's start: nothing exact.
    let first = oracle.keys().map(|(s, _)| *s).min().unwrap();
    assert_eq!(coverage.horizon(), Some(EventTime(first)));

    // Speed: every event, then the release of what the batch layer covers.
    let program = Arc::new(ViewProgram::compile(&view, &schema).unwrap());
    let mut state = ViewState::new(program);
    for (_, batch) in &batches {
        state.apply(batch, None, &Coverage::new()).unwrap();
    }
    let fresh = state.rows(ALL);
    compare("user_sessions", "speed", &fresh, &oracle, None);

    // The seam, before and after the speed layer lets go of the covered sessions: every
    // session once, the ended ones from the batch layer, the open ones from the speed layer.
    let released = state.release(coverage);
    assert_eq!(
        released.len(),
        ended.len(),
        "the speed layer drops what batch answers"
    );
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

    // A late event of the marathon's open session still lands in the speed layer; one for an
    // ended session of another user is late (the batch layer answers that session).
    let (open_start, _) = oracle.keys().find(|(_, g)| *g == marathon).unwrap();
    let (ended_start, ended_user) = ended.keys().next().unwrap();
    let GroupValue::Str(ended_user) = &ended_user[0] else {
        unreachable!()
    };
    let decoder = EventDecoder::new(Arc::clone(&schema));
    let late = partitioned(
        &decoder,
        1,
        [
            (0, json_event("marathon", *open_start + 30_000)),
            (0, json_event(ended_user, *ended_start + 1_000)),
        ],
    );
    let applied = state.apply(&late[0].1, None, coverage).unwrap();
    assert_eq!(applied.late_rows, [1]);
}

fn json_event(user: &str, ts: i64) -> String {
    serde_json::json!({"ts": ts, "user_id": user, "city": "Lima", "qty": 1, "price": "1.00"})
        .to_string()
}
