//! Hopping windows kept as panes against an oracle that applies every event to every window
//! containing it (the definition), through out-of-order and late events, watermarks, coverage,
//! releases and checkpoint round trips.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use tandem_shared::event::EventDecoder;
use tandem_shared::testing;
use tandem_shared::value::AggregateValue;
use tandem_shared::window::align_down;

const CITIES: [&str; 3] = ["Pune", "Agra", "Goa"];
const MINUTE: i64 = 60_000;

fn hopping_state(size: &str, every: &str) -> ViewState {
    let schema = testing::orders_schema();
    let mut config = testing::view_config(
        "orders",
        testing::hopping(size, every),
        &["city"],
        Some("event_type = 'order_placed'"),
        &[
            "count(*) AS orders",
            "sum(amount) AS revenue",
            "max(amount) AS biggest",
        ],
    );
    config.allowed_lateness = Some("30s".into());
    let view = testing::define(&config, &schema);
    let state = ViewState::new(Arc::new(ViewProgram::compile(&view, &schema).unwrap()));
    assert!(matches!(state.windows, Windows::Panes(_)));
    state
}

/// One generated event: time, city, whole amount (sums stay exact), placed or not.
type Generated = (i64, usize, i64, bool);

/// Events (times relative to progress), progress advance, coverage lag in minutes.
type Round = (Vec<Generated>, i64, Option<i64>);

fn batch(events: &[Generated]) -> RecordBatch {
    let decoder = EventDecoder::new(testing::orders_schema());
    let json: Vec<String> = events
        .iter()
        .map(|(ts, city, amount, placed)| {
            let ty = if *placed {
                "order_placed"
            } else {
                "order_cancelled"
            };
            format!(
                r#"{{"ts":{ts},"city":"{}","amount":{amount},"event_type":"{ty}"}}"#,
                CITIES[*city]
            )
        })
        .collect();
    testing::batch(&decoder, 0, 0, &json)
}

/// Count, sum and max per (window start, city): the definition, one window at a time.
#[derive(Debug, Default)]
struct Oracle {
    windows: BTreeMap<(i64, String), (i64, i64, i64)>,
}

impl Oracle {
    /// Applies a batch; returns the late rows.
    fn apply(
        &mut self,
        spec: WindowSpec,
        events: &[Generated],
        watermark: Option<i64>,
        covered: &Coverage,
    ) -> Vec<usize> {
        let mut late = Vec::new();
        for (row, (ts, city, amount, placed)) in events.iter().enumerate() {
            if !placed {
                continue;
            }
            let mut took = false;
            for w in spec.windows_of(EventTime(*ts)) {
                if watermark.is_some_and(|wm| w.end.millis() <= wm) || covered.contains(w.start) {
                    continue;
                }
                took = true;
                let e = self
                    .windows
                    .entry((w.start.millis(), CITIES[*city].to_owned()))
                    .or_insert((0, 0, i64::MIN));
                e.0 += 1;
                e.1 += amount;
                e.2 = e.2.max(*amount);
            }
            if !took {
                late.push(row);
            }
        }
        late
    }

    fn release(&mut self, covered: &Coverage) -> Vec<(i64, String, (i64, i64, i64))> {
        let gone: Vec<(i64, String)> = self
            .windows
            .keys()
            .filter(|(start, _)| covered.contains(EventTime(*start)))
            .cloned()
            .collect();
        gone.into_iter()
            .filter_map(|k| self.windows.remove(&k).map(|v| (k.0, k.1, v)))
            .collect()
    }

    fn rows(&self) -> Vec<(i64, String, (i64, i64, i64))> {
        self.windows
            .iter()
            .map(|((s, c), v)| (*s, c.clone(), *v))
            .collect()
    }
}

/// Rows as (window start, city, (count, sum, max)), sorted like the oracle's.
fn flat(rows: &[ViewRow]) -> Vec<(i64, String, (i64, i64, i64))> {
    let mut out: Vec<_> = rows
        .iter()
        .map(|r| {
            let GroupValue::Str(city) = &r.group[0] else {
                panic!("{r:?}")
            };
            let number = |v: &AggregateValue| match v {
                AggregateValue::Int(i) => *i,
                AggregateValue::Float(f) => *f as i64,
                other => panic!("{other:?}"),
            };
            (
                r.window.start.millis(),
                city.clone(),
                (
                    number(&r.values[0]),
                    number(&r.values[1]),
                    number(&r.values[2]),
                ),
            )
        })
        .collect();
    out.sort();
    out
}

/// A round: events around the stream's progress (some far behind it), how far progress moves
/// on, and how many minutes behind the watermark the batch layer's coverage reaches (if it
/// publishes this round).
fn round() -> impl Strategy<Value = Round> {
    (
        prop::collection::vec(
            (
                -600_000i64..30_000,
                0usize..3,
                1i64..100,
                prop::bool::weighted(0.8),
            ),
            0..25,
        ),
        0i64..90_000,
        prop::option::weighted(0.35, 0i64..8),
    )
}

fn check(size: &str, every: &str, rounds: &[Round]) {
    let mut s = hopping_state(size, every);
    let spec = s.program().view.window;
    let lateness = s.program().view.allowed_lateness.millis();
    let mut oracle = Oracle::default();
    let mut progress = 10 * MINUTE;
    let mut coverage = Coverage::new();
    for (i, (offsets, advance, publish)) in rounds.iter().enumerate() {
        let events: Vec<Generated> = offsets
            .iter()
            .map(|(dt, c, a, p)| ((progress + dt).max(0), *c, *a, *p))
            .collect();
        let watermark = Some(progress);
        let applied = s
            .apply(&batch(&events), watermark.map(EventTime), &coverage)
            .unwrap();
        let late = oracle.apply(spec, &events, Some(progress - lateness), &coverage);
        assert_eq!(applied.late_rows, late, "round {i}: late rows");
        assert_eq!(flat(&s.rows(ALL)), oracle.rows(), "round {i}: rows");
        let mut labels: Vec<_> = s
            .partials(ALL)
            .into_iter()
            .map(|p| (p.window.start, p.group))
            .collect();
        let partials = labels.len();
        labels.sort();
        labels.dedup();
        assert_eq!(
            labels.len(),
            partials,
            "round {i}: one partial per window and group"
        );
        progress += advance;
        if let Some(behind) = publish {
            let horizon = align_down(progress - lateness, MINUTE) - behind * MINUTE;
            if horizon > 0 {
                coverage.insert(StartRange::new(EventTime(0), EventTime(horizon)));
            }
            let released = merge_partials(s.release(&coverage), false);
            assert_eq!(
                flat(&released),
                oracle.release(&coverage),
                "round {i}: released"
            );
        }
        if i % 3 == 2 {
            let restored = ViewState::restore(Arc::clone(s.program()), &s.snapshot()).unwrap();
            assert_eq!(restored.rows(ALL), s.rows(ALL), "round {i}: restored");
            assert_eq!(restored.size(), s.size(), "round {i}: restored size");
            s = restored;
        }
        assert_eq!(s.size().2, recount(&s), "round {i}: budget");
    }
    coverage.insert(StartRange::new(EventTime::MIN, EventTime::MAX));
    let released = merge_partials(s.release(&coverage), false);
    assert_eq!(flat(&released), oracle.release(&coverage));
    assert_eq!(s.size(), (0, 0, 0), "everything released");
}

/// The budgeted bytes of `s`, recomputed from what it holds.
pub(super) fn recount(s: &ViewState) -> usize {
    let Windows::Panes(_) = &s.windows else {
        panic!("not panes")
    };
    match s.pin(ALL).windows {
        PinnedWindows::Panes(p) => p
            .entries()
            .into_iter()
            .filter_map(|(_, e)| e.map(|(k, a)| entry_bytes(k, a)))
            .sum(),
        _ => 0,
    }
}

const ALL: StartRange = StartRange {
    from: EventTime::MIN,
    to: EventTime::MAX,
};

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn panes_answer_what_every_window_would(rounds in prop::collection::vec(round(), 1..24)) {
        check("3m", "1m", &rounds);
        check("4m", "2m", &rounds);
    }
}

#[test]
fn a_window_shut_by_the_watermark_keeps_its_value_while_its_panes_change() {
    // 3m every 1m, lateness 30s. Window [0, 3m) closes when the watermark passes 3m; an event at
    // 2m30s arriving after that still counts for [1m, 4m) and [2m, 5m), not for [0, 3m).
    let mut s = hopping_state("3m", "1m");
    s.apply(&batch(&[(150_000, 0, 5, true)]), None, &Coverage::new())
        .unwrap();
    let applied = s
        .apply(
            &batch(&[(150_000, 0, 7, true)]),
            Some(EventTime(3 * MINUTE + 40_000)),
            &Coverage::new(),
        )
        .unwrap();
    assert!(applied.late_rows.is_empty());
    let rows = flat(&s.rows(ALL));
    assert_eq!(
        rows,
        [
            (0, "Pune".to_owned(), (1, 5, 5)),
            (MINUTE, "Pune".to_owned(), (2, 12, 7)),
            (2 * MINUTE, "Pune".to_owned(), (2, 12, 7)),
        ]
    );
    // One pane and one sealed window held, each with one group.
    assert_eq!(s.size().0, 2);
    assert_eq!(s.size().1, 2);
}

#[test]
fn a_reader_pinned_before_a_change_keeps_what_it_pinned() {
    let mut s = hopping_state("3m", "1m");
    s.apply(&batch(&[(30_000, 1, 2, true)]), None, &Coverage::new())
        .unwrap();
    let pinned = s.pin(ALL);
    let before = merge_partials(pinned.partials(), false);
    // The same pane changes: it is copied, not changed under the reader.
    s.apply(&batch(&[(45_000, 1, 3, true)]), None, &Coverage::new())
        .unwrap();
    assert_eq!(merge_partials(pinned.partials(), false), before);
    let agra = |v| {
        [-2 * MINUTE, -MINUTE, 0]
            .into_iter()
            .map(|start| (start, "Agra".to_owned(), v))
            .collect::<Vec<_>>()
    };
    assert_eq!(flat(&before), agra((1, 2, 2)));
    assert_eq!(flat(&s.rows(ALL)), agra((2, 5, 3)));
}

#[test]
fn a_checkpoint_entry_that_is_neither_a_pane_nor_a_window_is_refused() {
    let mut s = hopping_state("3m", "1m");
    s.apply(&batch(&[(30_000, 0, 2, true)]), None, &Coverage::new())
        .unwrap();
    let mut snapshot = s.snapshot();
    assert!(ViewState::restore(Arc::clone(s.program()), &snapshot).is_ok());
    // A 30-second span fits no pane (1m), window (3m) or marker (0) of this view.
    snapshot.entries[0].end = snapshot.entries[0].start + 30_000;
    let err = ViewState::restore(Arc::clone(s.program()), &snapshot)
        .err()
        .map(|e| e.to_string());
    assert!(
        err.as_deref()
            .is_some_and(|e| e.contains("neither a pane nor a window")),
        "{err:?}"
    );
}
