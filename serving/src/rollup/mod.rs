//! Rollups: a tumbling view's windows combined into coarser buckets (`granularity=1h`) or into
//! one row per group over the whole range (`granularity=all`, the global window).
//!
//! ```text
//!  seam::answer_with(StateRows) ─► one StateRow per window and group, batch where covered,
//!      speed elsewhere (the seam's rules, unchanged)
//!  roll (pure) ─► per bucket and group: exact values combine exactly (count and sum add,
//!      min and max compare, avg from its sum and count); distinct counts and percentiles
//!      merge their sketches (the batch layer stores one per window, the speed layer keeps
//!      one) and answer an estimate with its error bound
//! ```
//!
//! A bucket of a single batch window answers that window's exact values. A value whose state a
//! window lacks (a segment written before states were stored) is null and named unavailable,
//! never silently wrong.

use std::collections::BTreeMap;

use tandem_shared::coverage::StartRange;
use tandem_shared::decimal::Decimal;
use tandem_shared::row::{GroupValue, Source};
use tandem_shared::sketch::{StatedRow, WindowState};
use tandem_shared::time::{EventTime, Span};
use tandem_shared::value::AggregateValue;
use tandem_shared::view::{AggregateFunction, ViewDefinition};
use tandem_shared::window::{Window, WindowSpec, align_down};
use tandem_speed_layer::aggregate::PartialAggregate;
use tandem_speed_layer::state::Partial;

pub mod exact;

use crate::seam::{self, Answered, FreshStates, PublishedStates, PublishedViews, SeamRow};

/// The coarsest bucket of a rollup: a thousand years (of 365.25 days). Every bucket of a time
/// Tandem accepts then ends at a time that can be written.
pub const MAX_GRANULARITY: Span = Span::from_millis(1_000 * 31_557_600_000);

/// How coarse a rollup is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granularity {
    /// Buckets of this span, aligned to the epoch; a multiple of the view's window.
    Every(Span),
    /// One bucket: the whole range.
    All,
}

impl Granularity {
    /// Parses `all` or a span (`1h`) for `view`, which must have tumbling windows that the span
    /// is a multiple of. The error says why not.
    /// `all`, or a span that is a multiple of the view's windows and at most
    /// [`MAX_GRANULARITY`].
    pub fn parse(text: &str, view: &ViewDefinition) -> Result<Self, String> {
        let WindowSpec::Tumbling { size } = view.window else {
            return Err(format!(
                "view `{}` does not have tumbling windows: its windows overlap or are sessions, \
                 so they cannot be added up into coarser ones",
                view.name
            ));
        };
        if text == "all" {
            return Ok(Self::All);
        }
        let span = Span::parse_positive(text).map_err(|e| e.to_string())?;
        if span > MAX_GRANULARITY {
            return Err(format!(
                "`{text}` is longer than {MAX_GRANULARITY}: a bucket must end at a time that can \
                 be written; use `all` for one bucket"
            ));
        }
        if span.millis() % size.millis() != 0 {
            return Err(format!(
                "`{text}` is not a multiple of the view's {size} windows"
            ));
        }
        Ok(Self::Every(span))
    }

    /// `range` widened to whole buckets.
    pub fn widen(self, range: StartRange) -> StartRange {
        match self {
            Self::All => range,
            Self::Every(span) => {
                let g = span.millis();
                let up = |t: EventTime| {
                    if t == EventTime::MAX || t.millis() % g == 0 {
                        t
                    } else {
                        EventTime(align_down(t.millis(), g).saturating_add(g))
                    }
                };
                let down = |t: EventTime| {
                    if t == EventTime::MIN {
                        t
                    } else {
                        EventTime(align_down(t.millis(), g))
                    }
                };
                StartRange::new(down(range.from), up(range.to))
            }
        }
    }
}

/// One value's input to a rollup.
#[derive(Debug, Clone)]
pub enum Cell {
    /// An exact value that combines by itself (count, sum, min, max).
    Value(AggregateValue),
    /// A partial state (avg, distinct count, percentile).
    State(PartialAggregate),
    /// The window's state is not available.
    Missing,
}

/// One window and group with what a rollup needs of each value.
#[derive(Debug, Clone)]
pub struct StateRow {
    pub window: Window,
    pub group: Vec<GroupValue>,
    /// The window's own final values.
    pub values: Vec<AggregateValue>,
    pub cells: Vec<Cell>,
}

impl SeamRow for StateRow {
    fn window(&self) -> Window {
        self.window
    }
    fn group(&self) -> &[GroupValue] {
        &self.group
    }
}

fn needs_state(function: AggregateFunction) -> bool {
    matches!(
        function,
        AggregateFunction::Avg
            | AggregateFunction::CountDistinct
            | AggregateFunction::Percentile { .. }
    )
}

impl StateRow {
    /// A batch-layer row and its stored states.
    pub fn from_batch(view: &ViewDefinition, stated: StatedRow) -> Self {
        let cells = view
            .aggregates
            .iter()
            .zip(&stated.states)
            .zip(&stated.row.values)
            .map(|((a, state), value)| match state {
                WindowState::Value => Cell::Value(*value),
                WindowState::Missing => Cell::Missing,
                stored => match PartialAggregate::from_stored(a.function, stored) {
                    Ok(Some(p)) => Cell::State(p),
                    Ok(None) => Cell::Missing,
                    Err(err) => {
                        tracing::error!(%err, view = %view.name, "a stored window state");
                        Cell::Missing
                    }
                },
            })
            .collect();
        Self {
            window: stated.row.window,
            group: stated.row.group,
            values: stated.row.values,
            cells,
        }
    }

    /// A speed-layer partial.
    pub fn from_speed(view: &ViewDefinition, partial: Partial) -> Self {
        let values = partial
            .accs
            .iter()
            .map(PartialAggregate::evaluate)
            .collect();
        let cells = view
            .aggregates
            .iter()
            .zip(partial.accs)
            .map(|(a, acc)| {
                if needs_state(a.function) {
                    Cell::State(acc)
                } else {
                    Cell::Value(acc.evaluate())
                }
            })
            .collect();
        Self {
            window: partial.window,
            group: partial.group,
            values,
            cells,
        }
    }
}

/// Both layers' window states of one view, for [`seam::answer_with`].
struct StateRows<'a, B, S> {
    view: &'a ViewDefinition,
    batch: &'a B,
    speed: &'a S,
}

impl<B: PublishedStates + Sync, S: FreshStates + Sync> seam::SeamRows for StateRows<'_, B, S> {
    type Row = StateRow;

    async fn exact(
        &self,
        published: &tandem_batch_layer::PublishedView,
        range: StartRange,
    ) -> Result<Vec<StateRow>, seam::Error> {
        let stated = self.batch.states(published, range).await?;
        Ok(stated
            .into_iter()
            .map(|s| StateRow::from_batch(self.view, s))
            .collect())
    }

    async fn fresh(&self, view: &str, range: StartRange) -> seam::FreshRows<StateRow> {
        let fresh = self
            .speed
            .fresh_states(view, range)
            .await
            .unwrap_or_else(|| seam::FreshRows::complete(Vec::new()));
        let mut rows: Vec<StateRow> = fresh
            .rows
            .into_iter()
            .map(|p| StateRow::from_speed(self.view, p))
            .collect();
        rows.sort_by(|a, b| {
            (a.window.start, a.window.end, &a.group).cmp(&(b.window.start, b.window.end, &b.group))
        });
        seam::FreshRows {
            rows,
            missing: fresh.missing,
        }
    }
}

/// Answers `query` as windows' states from both layers (the seam decides which per window).
pub async fn states(
    batch: &(impl PublishedViews + PublishedStates + Sync),
    speed: &(impl FreshStates + Sync),
    view: &ViewDefinition,
    query: &seam::ViewQuery,
) -> Result<seam::Answer<StateRow>, seam::Error> {
    seam::answer_with(batch, &StateRows { view, batch, speed }, query).await
}

/// One bucket and group of a rollup.
#[derive(Debug, Clone, PartialEq)]
pub struct RolledRow {
    pub window: Window,
    pub group: Vec<GroupValue>,
    pub values: Vec<AggregateValue>,
    /// Per value: an estimate merged from sketches (true) or exact (false).
    pub approximate: Vec<bool>,
    /// Per value: a window's state was not available, so the value is null.
    pub unavailable: Vec<bool>,
    /// Windows answered by the batch layer and by the speed layer.
    pub batch_windows: u64,
    pub speed_windows: u64,
    /// False if a batch window of the bucket lost events (an archive gap).
    pub complete: bool,
    /// Recomputed exactly from the archive (`exact=true`).
    pub archive: bool,
}

impl RolledRow {
    /// `archive` when recomputed from the raw events, else `batch`, `speed`, or `mixed` when both layers answered windows of the bucket.
    pub fn source(&self) -> &'static str {
        if self.archive {
            return "archive";
        }
        match (self.batch_windows, self.speed_windows) {
            (_, 0) => "batch",
            (0, _) => "speed",
            _ => "mixed",
        }
    }
}

struct Bucket {
    window: Window,
    cells: Vec<Option<Cell>>,
    first: Option<(Source, Vec<AggregateValue>)>,
    batch_windows: u64,
    speed_windows: u64,
    complete: bool,
}

fn combine(function: AggregateFunction, into: &mut Option<Cell>, cell: Cell) {
    use AggregateValue as V;
    let Some(current) = into.take() else {
        *into = Some(cell);
        return;
    };
    *into = Some(match (current, cell) {
        (Cell::Missing, _) | (_, Cell::Missing) => Cell::Missing,
        (Cell::Value(a), Cell::Value(b)) => Cell::Value(match (a, b) {
            (V::Null, x) | (x, V::Null) => x,
            (a, b) => match function {
                AggregateFunction::Count | AggregateFunction::Sum => match (a, b) {
                    (V::Int(x), V::Int(y)) => V::Int(x.wrapping_add(y)),
                    (V::Decimal(x), V::Decimal(y)) if x.scale == y.scale => {
                        match x.units.checked_add(y.units) {
                            Some(units) => V::Decimal(Decimal::new(units, x.scale)),
                            None => V::Null,
                        }
                    }
                    (x, y) => V::Float(x.as_f64().unwrap_or(0.0) + y.as_f64().unwrap_or(0.0)),
                },
                AggregateFunction::Min | AggregateFunction::Max => {
                    let first = match (a, b) {
                        (V::Decimal(x), V::Decimal(y)) if x.scale == y.scale => x.units <= y.units,
                        _ => a.as_f64() <= b.as_f64(),
                    };
                    if first == (function == AggregateFunction::Min) {
                        a
                    } else {
                        b
                    }
                }
                _ => V::Null,
            },
        }),
        (Cell::State(mut a), Cell::State(b)) => match a.merge(&b) {
            Ok(()) => Cell::State(a),
            Err(err) => {
                tracing::error!(%err, "merging window states of a rollup");
                Cell::Missing
            }
        },
        _ => Cell::Missing,
    });
}

/// Combines answered windows into buckets of `granularity` over `range` (pure). Rows come out
/// by bucket start, then group.
pub fn roll(
    view: &ViewDefinition,
    granularity: Granularity,
    range: StartRange,
    rows: Vec<Answered<StateRow>>,
) -> Vec<RolledRow> {
    let all_window = || {
        let start = if range.from == EventTime::MIN {
            rows.iter().map(|r| r.row.window.start).min()
        } else {
            Some(range.from)
        };
        let end = if range.to == EventTime::MAX {
            rows.iter().map(|r| r.row.window.end).max()
        } else {
            Some(range.to)
        };
        Window {
            start: start.unwrap_or(range.from),
            end: end.unwrap_or(range.to),
        }
    };
    let whole = all_window();
    let mut buckets: BTreeMap<(EventTime, Vec<GroupValue>), Bucket> = BTreeMap::new();
    for answered in rows {
        let row = answered.row;
        let window = match granularity {
            Granularity::All => whole,
            Granularity::Every(span) => {
                let start = align_down(row.window.start.millis(), span.millis());
                Window {
                    start: EventTime(start),
                    end: EventTime(start.saturating_add(span.millis())),
                }
            }
        };
        let bucket = buckets
            .entry((window.start, row.group))
            .or_insert_with(|| Bucket {
                window,
                cells: vec![None; view.aggregates.len()],
                first: None,
                batch_windows: 0,
                speed_windows: 0,
                complete: true,
            });
        match answered.source {
            Source::Batch => bucket.batch_windows += 1,
            Source::Speed => bucket.speed_windows += 1,
        }
        bucket.complete &= answered.complete;
        if bucket.first.is_none() {
            bucket.first = Some((answered.source, row.values));
        }
        for ((slot, cell), a) in bucket.cells.iter_mut().zip(row.cells).zip(&view.aggregates) {
            combine(a.function, slot, cell);
        }
    }
    buckets
        .into_iter()
        .map(|((_, group), b)| {
            let single_batch = b.batch_windows + b.speed_windows == 1
                && matches!(b.first, Some((Source::Batch, _)));
            let mut values = Vec::with_capacity(b.cells.len());
            let mut approximate = Vec::with_capacity(b.cells.len());
            let mut unavailable = Vec::with_capacity(b.cells.len());
            for (i, (cell, a)) in b.cells.iter().zip(&view.aggregates).enumerate() {
                let exact_single = single_batch
                    .then(|| b.first.as_ref().and_then(|(_, v)| v.get(i).copied()))
                    .flatten();
                let (value, approx, missing) = match (exact_single, cell) {
                    (Some(v), _) => (v, false, false),
                    (None, Some(Cell::Value(v))) => (*v, false, false),
                    (None, Some(Cell::State(p))) => (
                        p.evaluate(),
                        a.function.is_approximate_in_speed_layer(),
                        false,
                    ),
                    (None, Some(Cell::Missing) | None) => (AggregateValue::Null, false, true),
                };
                values.push(value);
                approximate.push(approx);
                unavailable.push(missing);
            }
            RolledRow {
                window: b.window,
                group,
                values,
                approximate,
                unavailable,
                batch_windows: b.batch_windows,
                speed_windows: b.speed_windows,
                complete: b.complete,
                archive: false,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_shared::testing;

    const M: i64 = 60_000;

    fn view(window: tandem_shared::window::WindowConfig) -> ViewDefinition {
        testing::view(
            &testing::orders_schema(),
            "v",
            window,
            &["city"],
            None,
            &["count(*) AS n", "min(qty) AS lo", "max(amount) AS hi"],
        )
    }

    #[test]
    fn granularity_is_all_or_a_multiple_of_a_tumbling_window() {
        let v = view(testing::tumbling("5m"));
        assert_eq!(Granularity::parse("all", &v), Ok(Granularity::All));
        assert_eq!(
            Granularity::parse("1h", &v),
            Ok(Granularity::Every(Span::from_millis(60 * M)))
        );
        assert!(
            Granularity::parse("7m", &v)
                .unwrap_err()
                .contains("multiple")
        );
        assert!(Granularity::parse("-1h", &v).is_err());
        for window in [testing::hopping("5m", "1m"), testing::sessions("5m")] {
            let err = Granularity::parse("1h", &view(window)).unwrap_err();
            assert!(err.contains("tumbling"), "{err}");
        }
    }

    #[test]
    fn a_range_widens_to_whole_buckets() {
        let hourly = Granularity::Every(Span::from_millis(60 * M));
        let range = StartRange::new(EventTime(61 * M), EventTime(121 * M));
        assert_eq!(
            hourly.widen(range),
            StartRange::new(EventTime(60 * M), EventTime(180 * M))
        );
        let open = StartRange::new(EventTime::MIN, EventTime::MAX);
        assert_eq!(hourly.widen(open), open);
        assert_eq!(Granularity::All.widen(range), range);
    }

    fn window(minute: i64, n: i64, lo: i64, hi: f64, source: Source) -> Answered<StateRow> {
        use AggregateValue::{Float, Int};
        Answered {
            row: StateRow {
                window: Window {
                    start: EventTime(minute * M),
                    end: EventTime((minute + 1) * M),
                },
                group: vec![GroupValue::Str("A".into())],
                values: vec![Int(n), Int(lo), Float(hi)],
                cells: vec![
                    Cell::Value(Int(n)),
                    Cell::Value(Int(lo)),
                    Cell::Value(Float(hi)),
                ],
            },
            source,
            complete: source == Source::Speed || minute != 1,
        }
    }

    #[test]
    fn exact_values_combine_exactly_and_say_where_they_came_from() {
        let v = view(testing::tumbling("1m"));
        let rows = vec![
            window(0, 3, 5, 1.5, Source::Batch),
            window(1, 4, 2, 9.25, Source::Batch),
            window(2, 1, 7, 0.5, Source::Speed),
            window(60, 2, 1, 3.0, Source::Speed),
        ];
        let all = StartRange::new(EventTime::MIN, EventTime::MAX);
        let hourly = roll(
            &v,
            Granularity::Every(Span::from_millis(60 * M)),
            all,
            rows.clone(),
        );
        use AggregateValue::{Float, Int};
        assert_eq!(hourly.len(), 2);
        assert_eq!(hourly[0].values, [Int(8), Int(2), Float(9.25)]);
        assert_eq!((hourly[0].batch_windows, hourly[0].speed_windows), (2, 1));
        assert_eq!(hourly[0].source(), "mixed");
        assert!(!hourly[0].complete, "minute 1 lost events");
        assert_eq!(hourly[1].source(), "speed");
        assert_eq!(hourly[1].window.start, EventTime(60 * M));
        let global = roll(&v, Granularity::All, all, rows);
        assert_eq!(global.len(), 1);
        assert_eq!(global[0].values, [Int(10), Int(1), Float(9.25)]);
        assert_eq!(
            global[0].window,
            Window {
                start: EventTime(0),
                end: EventTime(61 * M)
            }
        );
    }
}
