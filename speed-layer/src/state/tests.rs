//! Window state against hand-computed windows.

use super::*;
use tandem_shared::event::EventDecoder;
use tandem_shared::testing;
use tandem_shared::value::AggregateValue;
use tandem_shared::window::WindowConfig;

fn state(window: WindowConfig, lateness: &str) -> ViewState {
    let schema = testing::orders_schema();
    let mut config = testing::view_config(
        "orders",
        window,
        &["city"],
        Some("event_type = 'order_placed'"),
        &[
            "count(*) AS orders",
            "sum(amount) AS revenue",
            "max(amount) AS biggest",
        ],
    );
    config.allowed_lateness = Some(lateness.into());
    let view = testing::define(&config, &schema);
    ViewState::new(Arc::new(ViewProgram::compile(&view, &schema).unwrap()))
}

fn tumbling() -> WindowConfig {
    testing::tumbling("1m")
}

fn sessions(gap: &str) -> WindowConfig {
    testing::sessions(gap)
}

fn batch(events: &[(i64, &str, f64, &str)]) -> RecordBatch {
    let decoder = EventDecoder::new(testing::orders_schema());
    let json: Vec<String> = events
        .iter()
        .map(|(ts, city, amount, ty)| {
            format!(r#"{{"ts":{ts},"city":"{city}","amount":{amount},"event_type":"{ty}"}}"#)
        })
        .collect();
    testing::batch(&decoder, 0, 0, &json)
}

fn placed(events: &[(i64, &str, f64)]) -> RecordBatch {
    let v: Vec<_> = events
        .iter()
        .map(|(t, c, a)| (*t, *c, *a, "order_placed"))
        .collect();
    batch(&v)
}

const ALL: StartRange = StartRange {
    from: EventTime::MIN,
    to: EventTime::MAX,
};

fn none() -> Coverage {
    Coverage::new()
}

#[test]
fn aggregates_per_window_and_group_after_filtering() {
    let mut s = state(tumbling(), "10s");
    let applied = s
        .apply(
            &batch(&[
                (1_000, "Pune", 10.0, "order_placed"),
                (2_000, "Pune", 5.0, "order_placed"),
                (3_000, "Agra", 7.0, "order_placed"),
                (4_000, "Pune", 99.0, "order_cancelled"),
                (61_000, "Pune", 1.0, "order_placed"),
            ]),
            None,
            &none(),
        )
        .unwrap();
    assert_eq!(applied.updated, 4);
    assert!(applied.late_rows.is_empty());
    let summary: Vec<_> = s
        .rows(ALL)
        .iter()
        .map(|r| {
            (
                r.window.start.millis(),
                r.group[0].to_string(),
                r.values.clone(),
            )
        })
        .collect();
    use AggregateValue::*;
    assert_eq!(
        summary,
        [
            (0, "Agra".into(), vec![Int(1), Float(7.0), Float(7.0)]),
            (0, "Pune".into(), vec![Int(2), Float(15.0), Float(10.0)]),
            (60_000, "Pune".into(), vec![Int(1), Float(1.0), Float(1.0)]),
        ]
    );
}

#[test]
fn events_within_lateness_update_closed_windows_and_later_ones_are_late() {
    let mut s = state(tumbling(), "10s");
    // Watermark: progress 125s minus 10s lateness = 115s. Window [60s,120s) is still open
    // (end 120s > 115s), window [0,60s) is closed.
    let applied = s
        .apply(
            &batch(&[
                (119_000, "Pune", 1.0, "order_placed"),
                (59_000, "Pune", 1.0, "order_placed"),
                (59_000, "Pune", 1.0, "order_cancelled"),
            ]),
            Some(EventTime(125_000)),
            &none(),
        )
        .unwrap();
    assert_eq!(applied.updated, 1);
    assert_eq!(applied.late_rows, [1], "filtered-out rows are never late");
}

#[test]
fn hopping_windows_receive_every_event_they_contain() {
    let mut s = state(testing::hopping("3m", "1m"), "0s");
    s.apply(&placed(&[(150_000, "Pune", 2.0)]), None, &none())
        .unwrap();
    let starts: Vec<_> = s
        .rows(ALL)
        .iter()
        .map(|r| r.window.start.millis())
        .collect();
    assert_eq!(starts, [0, 60_000, 120_000]);
}

#[test]
fn covered_windows_are_released_and_later_events_for_them_are_late() {
    let mut s = state(tumbling(), "1h");
    s.apply(
        &placed(&[(1_000, "Pune", 1.0), (61_000, "Pune", 2.0)]),
        None,
        &none(),
    )
    .unwrap();
    let coverage = Coverage::from_ranges([StartRange::new(EventTime(0), EventTime(60_000))]);
    let released = s.release(&coverage);
    assert_eq!(released.len(), 1);
    assert_eq!(released[0].window.start, EventTime(0));
    assert_eq!(s.size().0, 1);
    let applied = s
        .apply(&placed(&[(2_000, "Pune", 1.0)]), None, &coverage)
        .unwrap();
    assert_eq!(applied.late_rows, [0]);
    assert_eq!(s.rows(ALL).len(), 1);
}

#[test]
fn sessions_grow_split_by_the_gap_and_merge_when_an_event_bridges_them() {
    let mut s = state(sessions("10s"), "1h");
    // Two sessions of Pune ([0, 15s) and [30s, 40s)) and one of Agra.
    s.apply(
        &placed(&[
            (0, "Pune", 1.0),
            (5_000, "Pune", 2.0),
            (30_000, "Pune", 4.0),
            (1_000, "Agra", 8.0),
        ]),
        None,
        &none(),
    )
    .unwrap();
    let rows = s.rows(ALL);
    let got: Vec<_> = rows
        .iter()
        .map(|r| {
            (
                r.group[0].to_string(),
                r.window.start.millis(),
                r.window.end.millis(),
                r.values[0],
            )
        })
        .collect();
    use AggregateValue::Int;
    assert_eq!(
        got,
        [
            ("Pune".into(), 0, 15_000, Int(2)),
            ("Agra".into(), 1_000, 11_000, Int(1)),
            ("Pune".into(), 30_000, 40_000, Int(1)),
        ]
    );
    // An event at 21s is within 10s of neither... [21s, 31s) overlaps [30s, 40s) only.
    s.apply(&placed(&[(21_000, "Pune", 16.0)]), None, &none())
        .unwrap();
    assert_eq!(s.rows(ALL).len(), 3);
    // An event at 12s overlaps [0, 15s) and [21s, 40s) through [12s, 22s): one session.
    s.apply(&placed(&[(12_000, "Pune", 32.0)]), None, &none())
        .unwrap();
    let pune: Vec<_> = s
        .rows(ALL)
        .into_iter()
        .filter(|r| r.group[0].to_string() == "Pune")
        .collect();
    assert_eq!(pune.len(), 1);
    assert_eq!(
        (pune[0].window.start.millis(), pune[0].window.end.millis()),
        (0, 40_000)
    );
    assert_eq!(pune[0].values[0], Int(5));
    assert_eq!(pune[0].values[1], AggregateValue::Float(55.0));
    assert_eq!(s.size().1, 2, "merged sessions are one entry");
}

#[test]
fn session_fragments_from_partitions_merge_like_one_stream() {
    // The same events split over two partitions give the same sessions as one partition.
    let events = [
        (0, "Pune", 1.0),
        (8_000, "Pune", 1.0),
        (16_000, "Pune", 1.0),
        (40_000, "Pune", 1.0),
    ];
    let mut whole = state(sessions("10s"), "1h");
    whole.apply(&placed(&events), None, &none()).unwrap();
    let mut a = state(sessions("10s"), "1h");
    let mut b = state(sessions("10s"), "1h");
    a.apply(&placed(&[events[0], events[2]]), None, &none())
        .unwrap();
    b.apply(&placed(&[events[1], events[3]]), None, &none())
        .unwrap();
    let mut parts = a.partials(ALL);
    parts.extend(b.partials(ALL));
    assert_eq!(merge_partials(parts, true), whole.rows(ALL));
    assert_eq!(whole.rows(ALL).len(), 2);
}

#[test]
fn late_session_events_are_reported() {
    let mut s = state(sessions("10s"), "5s");
    // Progress 100s - 5s lateness = watermark 95s; an event at 80s has window [80s, 90s).
    let applied = s
        .apply(
            &placed(&[(80_000, "Pune", 1.0), (90_000, "Pune", 1.0)]),
            Some(EventTime(100_000)),
            &none(),
        )
        .unwrap();
    assert_eq!(applied.late_rows, [0]);
}

#[test]
fn snapshots_restore_identical_state() {
    for window in [tumbling(), sessions("10s")] {
        let mut s = state(window, "1h");
        s.apply(
            &placed(&[
                (0, "Pune", 1.5),
                (5_000, "Agra", 2.0),
                (70_000, "Pune", 4.0),
            ]),
            None,
            &none(),
        )
        .unwrap();
        let snapshot = s.snapshot();
        let restored = ViewState::restore(Arc::clone(s.program()), &snapshot).unwrap();
        assert_eq!(restored.rows(ALL), s.rows(ALL));
        assert_eq!(restored.size(), s.size());
    }
}

#[test]
fn pinned_windows_keep_their_values_while_the_state_moves_on() {
    use AggregateValue::Int;
    // Tumbling and session views alike: a reader's pinned copy is one consistent state, and the
    // live state (changed, then released) is unaffected by the pin.
    for window in [tumbling(), sessions("10s")] {
        let mut s = state(window, "1h");
        s.apply(&placed(&[(1_000, "Pune", 2.0)]), None, &none())
            .unwrap();
        let pinned = s.pin(ALL);
        let before = merge_partials(pinned.partials(), s.is_sessions());

        s.apply(
            &placed(&[(2_000, "Pune", 3.0), (3_000, "Delhi", 1.0)]),
            None,
            &none(),
        )
        .unwrap();
        let after = s.rows(ALL);
        assert_eq!(merge_partials(pinned.partials(), s.is_sessions()), before);
        assert_eq!(before.len(), 1);
        assert_eq!(before[0].values[0], Int(1));
        assert_eq!(after.len(), 2);
        let pune = after.iter().find(|r| r.group[0] == before[0].group[0]);
        assert_eq!(pune.unwrap().values[0], Int(2));

        let mut covered = Coverage::new();
        covered.insert(StartRange::new(EventTime::MIN, EventTime::MAX));
        assert_eq!(s.release(&covered).len(), 2);
        assert!(s.rows(ALL).is_empty());
        assert_eq!(merge_partials(pinned.partials(), s.is_sessions()), before);
    }
}

/// The budgeted bytes of `s`, recomputed from its entries.
fn recounted(s: &ViewState) -> usize {
    if matches!(s.windows, Windows::Panes(_)) {
        return super::pane_tests::recount(s);
    }
    s.partials(ALL)
        .iter()
        .map(|p| entry_bytes(&p.group, &p.accs))
        .sum()
}

#[test]
fn budgeted_bytes_follow_sketches_as_they_grow_and_return_to_zero_on_release() {
    let schema = testing::orders_schema();
    for window in [testing::hopping("5m", "1m"), sessions("2m")] {
        let view = testing::define(
            &testing::view_config(
                "sketches",
                window.clone(),
                &["city"],
                None,
                &[
                    "count(DISTINCT amount) AS amounts",
                    "percentile(amount, 0.9) AS p90",
                    "count(*) AS n",
                ],
            ),
            &schema,
        );
        let mut s = ViewState::new(Arc::new(ViewProgram::compile(&view, &schema).unwrap()));
        let small = {
            s.apply(&placed(&[(0, "A", 1.0)]), None, &none()).unwrap();
            s.size().2
        };
        // Thousands of distinct values per group (sessions bridged by a dense stream, and
        // later sessions merged into earlier ones by out-of-order events).
        for round in 0..6i64 {
            let events: Vec<(i64, &str, f64)> = (0..2_000i64)
                .map(|i| {
                    let t = (i * 97 + round * 13_001) % 1_200_000;
                    (
                        t,
                        ["A", "B", "C"][(i % 3) as usize],
                        (i * 31 + round) as f64,
                    )
                })
                .collect();
            s.apply(&placed(&events), None, &none()).unwrap();
            assert_eq!(s.size().2, recounted(&s), "{window:?} round {round}");
        }
        let grown = s.size().2 / s.size().1;
        assert!(
            grown > small * 5,
            "{window:?}: sketches grew from {small} to {grown} bytes per group"
        );
        s.release(&Coverage::from_ranges([ALL]));
        assert_eq!(s.size(), (0, 0, 0), "{window:?}");
    }
}

/// A session as the oracle computes it: start, end, count, sum, max.
type OracleSession = (i64, i64, i64, f64, f64);

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 128, ..Default::default() })]

    /// Sessions built from events in any order, in any batches, against sessions computed
    /// from each group's sorted events (a new session wherever the next event is at or past
    /// the current one's end): the same sessions, counts, sums and maxima, and the state's
    /// size counts one entry per session.
    #[test]
    fn sessions_from_events_in_any_order_match_sorted_splitting(
        events in proptest::collection::vec((0i64..120, 0usize..3, 1u32..100), 1..60),
        cuts in proptest::collection::vec(0usize..60, 0..4),
    ) {
        const GAP: i64 = 10_000;
        const CITIES: [&str; 3] = ["Pune", "Agra", "Lima"];
        let events: Vec<(i64, &str, f64)> = events
            .iter()
            .map(|(second, city, amount)| (second * 1_000, CITIES[*city], f64::from(*amount)))
            .collect();
        let mut s = state(sessions("10s"), "1h");
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(events.len())).collect();
        cuts.sort_unstable();
        let mut from = 0;
        for to in cuts.into_iter().chain([events.len()]) {
            if to > from {
                s.apply(&placed(&events[from..to]), None, &none()).unwrap();
                from = to;
            }
        }
        // The oracle.
        let mut want = Vec::new();
        for city in CITIES {
            let mut times: Vec<(i64, f64)> = events
                .iter()
                .filter(|e| e.1 == city)
                .map(|e| (e.0, e.2))
                .collect();
            times.sort_by_key(|t| t.0);
            let mut open: Option<OracleSession> = None;
            for (t, amount) in times {
                open = match open {
                    Some((start, end, n, sum, max)) if t < end => {
                        Some((start, end.max(t + GAP), n + 1, sum + amount, max.max(amount)))
                    }
                    done => {
                        want.extend(done.map(|d| (city.to_owned(), d)));
                        Some((t, t + GAP, 1, amount, amount))
                    }
                };
            }
            want.extend(open.map(|d| (city.to_owned(), d)));
        }
        want.sort_by(|a, b| (&a.0, a.1.0).cmp(&(&b.0, b.1.0)));
        use AggregateValue::{Float, Int};
        let mut got: Vec<(String, OracleSession)> = s
            .rows(ALL)
            .iter()
            .map(|r| {
                let (Int(n), Float(sum), Float(max)) = (r.values[0], r.values[1], r.values[2])
                else {
                    panic!("unexpected values {:?}", r.values);
                };
                (
                    r.group[0].to_string(),
                    (r.window.start.millis(), r.window.end.millis(), n, sum, max),
                )
            })
            .collect();
        got.sort_by(|a, b| (&a.0, a.1.0).cmp(&(&b.0, b.1.0)));
        proptest::prop_assert_eq!(&got, &want);
        // The state's own count of its sessions (kept as they are made and merged).
        proptest::prop_assert_eq!(s.size().0, want.len());
        proptest::prop_assert_eq!(s.size().0, want.len(), "sessions held");
        proptest::prop_assert_eq!(s.size().1, want.len(), "one entry per session");
    }
}
