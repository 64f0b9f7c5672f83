//! The seam: one answer from two layers. Pure: no I/O.
//!
//! For every window the batch layer's coverage decides the source: a covered window is answered
//! only from the batch layer's exact rows, any other window only from the speed layer's rows. The
//! same coverage value is used for both sides of one answer, so a window is never counted twice
//! and never missing.

use tandem_shared::coverage::{Coverage, StartRange};
use tandem_shared::row::{Source, ViewRow};

/// A row of a query answer with the layer it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct AnsweredRow {
    pub row: ViewRow,
    pub source: Source,
}

/// A filter on one group-by dimension: its position and the value as query text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DimensionFilter {
    pub position: usize,
    pub value: String,
}

/// Merges batch rows (already restricted to `range`) and speed rows for the windows in `range`.
pub fn merge(
    coverage: &Coverage,
    batch_rows: &[ViewRow],
    speed_rows: Vec<ViewRow>,
    filters: &[DimensionFilter],
    range: StartRange,
) -> Vec<AnsweredRow> {
    let keep = |row: &ViewRow| {
        range.contains(row.window.start)
            && filters.iter().all(|f| {
                row.group
                    .get(f.position)
                    .is_some_and(|v| v.matches_text(&f.value))
            })
    };
    let mut out: Vec<AnsweredRow> = batch_rows
        .iter()
        .filter(|r| coverage.contains(r.window.start) && keep(r))
        .map(|r| AnsweredRow {
            row: r.clone(),
            source: Source::Batch,
        })
        .chain(
            speed_rows
                .into_iter()
                .filter(|r| !coverage.contains(r.window.start) && keep(r))
                .map(|row| AnsweredRow {
                    row,
                    source: Source::Speed,
                }),
        )
        .collect();
    out.sort_by(|a, b| ViewRow::order(&a.row, &b.row));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_shared::aggregate::AggregateValue;
    use tandem_shared::row::GroupValue;
    use tandem_shared::time::EventTime;
    use tandem_shared::window::Window;

    const M: i64 = 60_000;

    fn row(minute: i64, city: &str, n: i64) -> ViewRow {
        ViewRow {
            window: Window {
                start: EventTime(minute * M),
                end: EventTime((minute + 1) * M),
            },
            group: vec![GroupValue::Str(city.into())],
            values: vec![AggregateValue::Int(n)],
        }
    }

    fn all() -> StartRange {
        StartRange::new(EventTime::MIN, EventTime::MAX)
    }

    #[test]
    fn covered_windows_come_from_batch_and_the_rest_from_speed() {
        let coverage = Coverage::from_ranges([StartRange::new(EventTime(0), EventTime(2 * M))]);
        let batch = vec![row(0, "A", 10), row(1, "A", 11), row(1, "B", 1)];
        // The speed layer still holds minute 1 (not yet released) and minutes 2 and 3.
        let speed = vec![row(1, "A", 9), row(2, "A", 5), row(3, "B", 7)];
        let out = merge(&coverage, &batch, speed, &[], all());
        let got: Vec<_> = out
            .iter()
            .map(|a| {
                (
                    a.row.window.start.millis() / M,
                    a.row.group[0].to_string(),
                    a.row.values[0],
                    a.source,
                )
            })
            .collect();
        use AggregateValue::Int;
        assert_eq!(
            got,
            [
                (0, "A".into(), Int(10), Source::Batch),
                (1, "A".into(), Int(11), Source::Batch),
                (1, "B".into(), Int(1), Source::Batch),
                (2, "A".into(), Int(5), Source::Speed),
                (3, "B".into(), Int(7), Source::Speed),
            ]
        );
    }

    #[test]
    fn no_window_is_counted_twice_or_lost_at_any_horizon() {
        // Both layers hold every window (as right before a release); for every possible horizon
        // each window must appear exactly once.
        let windows: Vec<i64> = (0..6).collect();
        let batch: Vec<_> = windows.iter().map(|m| row(*m, "A", 100 + m)).collect();
        let speed: Vec<_> = windows.iter().map(|m| row(*m, "A", *m)).collect();
        for horizon in 0..=6 {
            let coverage =
                Coverage::from_ranges([StartRange::new(EventTime(0), EventTime(horizon * M))]);
            let out = merge(&coverage, &batch, speed.clone(), &[], all());
            assert_eq!(out.len(), windows.len(), "horizon {horizon}");
            for (i, a) in out.iter().enumerate() {
                let expect = if (i as i64) < horizon {
                    Source::Batch
                } else {
                    Source::Speed
                };
                assert_eq!(a.source, expect, "horizon {horizon} window {i}");
            }
        }
    }

    #[test]
    fn filters_by_dimension_and_range() {
        let coverage = Coverage::new();
        let speed = vec![row(0, "A", 1), row(0, "B", 2), row(5, "A", 3)];
        let f = [DimensionFilter {
            position: 0,
            value: "A".into(),
        }];
        let out = merge(
            &coverage,
            &[],
            speed,
            &f,
            StartRange::new(EventTime(0), EventTime(M)),
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].row.values[0], AggregateValue::Int(1));
    }
}
