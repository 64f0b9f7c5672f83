//! Per-view window state: partial aggregates per window and group.
//!
//! Invariants:
//! - A window's state is kept after the window closes, until the batch layer covers it (see
//!   [`ViewState::release`]). That is what makes the seam between the layers exact: at every
//!   moment each window is answered entirely by one layer.
//! - Once a window is covered, later events for it are not applied here: the batch layer's exact
//!   result already answers it, and keeping them would only grow memory. Such events are reported
//!   as late so that they are never silently dropped.
//! - An event is applied to every window of the view that contains it and is still open, i.e.
//!   whose end is after the view's watermark. An event with no open window is late.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampMillisecondArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::cast::{
    as_boolean_array, as_float64_array, as_int64_array, as_string_array,
    as_timestamp_millisecond_array,
};
use tandem_shared::aggregate::{ArgumentType, Input, PartialAggregate};
use tandem_shared::coverage::{Coverage, StartRange};
use tandem_shared::row::{GroupKey, GroupValue, ViewRow};
use tandem_shared::time::EventTime;
use tandem_shared::window::Window;

use crate::program::ViewProgram;

/// Errors applying a batch. Internal: batches are built by the decoder against the schema the
/// program was compiled for, so these indicate a bug rather than bad input.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("view `{view}`: evaluating expressions: {source}")]
    Evaluate {
        view: String,
        source: datafusion::error::DataFusionError,
    },
    #[error("view `{view}`: column {column} has an unexpected type {ty}")]
    ColumnType {
        view: String,
        column: usize,
        ty: DataType,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The outcome of applying one batch to one view.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Rows that passed the filter and updated at least one window.
    pub updated: usize,
    /// Rows that passed the filter but found no open, uncovered window.
    pub late_rows: Vec<usize>,
}

#[derive(Debug)]
struct WindowGroups {
    end: EventTime,
    groups: HashMap<GroupKey, Vec<PartialAggregate>>,
}

/// The speed layer's state of one view.
#[derive(Debug)]
pub struct ViewState {
    program: Arc<ViewProgram>,
    windows: BTreeMap<EventTime, WindowGroups>,
    covered: Coverage,
    groups: usize,
    bytes: usize,
}

enum GroupColumn<'a> {
    Str(&'a StringArray),
    Int(&'a Int64Array),
    Float(&'a Float64Array),
    Bool(&'a BooleanArray),
    Time(&'a TimestampMillisecondArray),
}

impl GroupColumn<'_> {
    fn value(&self, row: usize) -> GroupValue {
        macro_rules! get {
            ($a:expr, $wrap:expr) => {
                if $a.is_null(row) {
                    GroupValue::Null
                } else {
                    $wrap($a.value(row))
                }
            };
        }
        match self {
            GroupColumn::Str(a) => get!(a, |s: &str| GroupValue::Str(s.to_owned())),
            GroupColumn::Int(a) => get!(a, GroupValue::Int),
            GroupColumn::Float(a) => get!(a, GroupValue::Float),
            GroupColumn::Bool(a) => get!(a, GroupValue::Bool),
            GroupColumn::Time(a) => get!(a, |t| GroupValue::Time(EventTime(t))),
        }
    }
}

enum ArgColumn<'a> {
    Star,
    Int(&'a Int64Array),
    Float(&'a Float64Array),
    Str(&'a StringArray),
}

impl ArgColumn<'_> {
    #[inline]
    fn input(&self, row: usize) -> Option<Input<'_>> {
        Some(match self {
            ArgColumn::Star => return None,
            ArgColumn::Int(a) if a.is_null(row) => Input::Null,
            ArgColumn::Int(a) => Input::Int(a.value(row)),
            ArgColumn::Float(a) if a.is_null(row) => Input::Null,
            ArgColumn::Float(a) => Input::Float(a.value(row)),
            ArgColumn::Str(a) if a.is_null(row) => Input::Null,
            ArgColumn::Str(a) => Input::Bytes(a.value(row).as_bytes()),
        })
    }
}

impl ViewState {
    pub fn new(program: Arc<ViewProgram>) -> Self {
        Self {
            program,
            windows: BTreeMap::new(),
            covered: Coverage::new(),
            groups: 0,
            bytes: 0,
        }
    }

    pub fn program(&self) -> &Arc<ViewProgram> {
        &self.program
    }

    /// Windows held, groups held, and approximate bytes of aggregate state.
    pub fn size(&self) -> (usize, usize, usize) {
        (self.windows.len(), self.groups, self.bytes)
    }

    /// The windows the batch layer covers, as last told by [`ViewState::release`].
    pub fn covered(&self) -> &Coverage {
        &self.covered
    }

    fn evaluate(&self, batch: &RecordBatch) -> Result<(Option<BooleanArray>, Vec<ArrayRef>)> {
        let view = &self.program.view.name;
        let eval = |expr: &Arc<dyn datafusion::physical_expr::PhysicalExpr>| {
            expr.evaluate(batch)
                .and_then(|v| v.into_array(batch.num_rows()))
                .map_err(|source| Error::Evaluate {
                    view: view.clone(),
                    source,
                })
        };
        let mask = match &self.program.filter {
            None => None,
            Some(f) => {
                let array = eval(f)?;
                let mask = as_boolean_array(&array).map_err(|source| Error::Evaluate {
                    view: view.clone(),
                    source,
                })?;
                Some(mask.clone())
            }
        };
        let mut args = Vec::with_capacity(self.program.arguments.len());
        for arg in self.program.arguments.iter().flatten() {
            let array = eval(&arg.expr)?;
            // `cast` is a no-op for arrays already of the target type; it guards against a
            // function whose declared and produced types differ (for example Utf8View).
            let target = match arg.ty {
                ArgumentType::Int64 => DataType::Int64,
                ArgumentType::Float64 => DataType::Float64,
                ArgumentType::Other => DataType::Utf8,
            };
            let array = if array.data_type() == &target {
                array
            } else {
                cast(&array, &target).map_err(|e| Error::Evaluate {
                    view: view.clone(),
                    source: e.into(),
                })?
            };
            args.push(array);
        }
        Ok((mask, args))
    }

    /// Applies a batch of decoded events. `event_watermark` is the minimum over partitions of the
    /// largest event time seen, before this batch; the view subtracts its allowed lateness.
    pub fn apply(
        &mut self,
        batch: &RecordBatch,
        event_watermark: Option<EventTime>,
    ) -> Result<Applied> {
        let view_name = self.program.view.name.clone();
        let (mask, arg_arrays) = self.evaluate(batch)?;
        let column_err = |column: usize, ty: &DataType| Error::ColumnType {
            view: view_name.clone(),
            column,
            ty: ty.clone(),
        };
        let times = as_timestamp_millisecond_array(batch.column(0))
            .map_err(|_| column_err(0, batch.column(0).data_type()))?;
        let mut group_columns = Vec::with_capacity(self.program.group_columns.len());
        for &i in &self.program.group_columns {
            let array = batch.column(i);
            let col = match array.data_type() {
                DataType::Utf8 => as_string_array(array).ok().map(GroupColumn::Str),
                DataType::Int64 => as_int64_array(array).ok().map(GroupColumn::Int),
                DataType::Float64 => as_float64_array(array).ok().map(GroupColumn::Float),
                DataType::Boolean => as_boolean_array(array).ok().map(GroupColumn::Bool),
                DataType::Timestamp(..) => as_timestamp_millisecond_array(array)
                    .ok()
                    .map(GroupColumn::Time),
                _ => None,
            };
            group_columns.push(col.ok_or_else(|| column_err(i, array.data_type()))?);
        }
        let mut arg_iter = arg_arrays.iter();
        let mut args = Vec::with_capacity(self.program.arguments.len());
        for arg in &self.program.arguments {
            let col = match arg {
                None => ArgColumn::Star,
                Some(a) => {
                    let Some(array) = arg_iter.next() else {
                        return Err(column_err(usize::MAX, &DataType::Null));
                    };
                    let col = match a.ty {
                        ArgumentType::Int64 => as_int64_array(array).ok().map(ArgColumn::Int),
                        ArgumentType::Float64 => as_float64_array(array).ok().map(ArgColumn::Float),
                        ArgumentType::Other => as_string_array(array).ok().map(ArgColumn::Str),
                    };
                    col.ok_or_else(|| column_err(usize::MAX, array.data_type()))?
                }
            };
            args.push(col);
        }

        let watermark =
            event_watermark.map(|w| w.saturating_sub(self.program.view.allowed_lateness));
        let spec = self.program.view.window;
        let mut applied = Applied::default();
        let mut key = Vec::with_capacity(group_columns.len());
        for row in 0..batch.num_rows() {
            if let Some(mask) = &mask
                && !(mask.is_valid(row) && mask.value(row))
            {
                continue;
            }
            let t = EventTime(times.value(row));
            key.clear();
            key.extend(group_columns.iter().map(|c| c.value(row)));
            let mut updated = false;
            for window in spec.windows_of(t) {
                if watermark.is_some_and(|w| window.end <= w) || self.covered.contains(window.start)
                {
                    continue;
                }
                updated = true;
                self.update(window, &key, &args, row);
            }
            if updated {
                applied.updated += 1;
            } else {
                applied.late_rows.push(row);
            }
        }
        Ok(applied)
    }

    fn update(&mut self, window: Window, key: &GroupKey, args: &[ArgColumn<'_>], row: usize) {
        let entry = self
            .windows
            .entry(window.start)
            .or_insert_with(|| WindowGroups {
                end: window.end,
                groups: HashMap::new(),
            });
        let accs = match entry.groups.get_mut(key) {
            Some(accs) => accs,
            None => {
                let accs: Vec<_> = self
                    .program
                    .view
                    .aggregates
                    .iter()
                    .zip(&self.program.arguments)
                    .map(|(spec, arg)| {
                        PartialAggregate::new(
                            spec.function,
                            arg.as_ref().map_or(ArgumentType::Other, |a| a.ty),
                        )
                    })
                    .collect();
                self.groups += 1;
                self.bytes += accs
                    .iter()
                    .map(PartialAggregate::approx_bytes)
                    .sum::<usize>()
                    + key.len() * 32
                    + 64;
                entry.groups.entry(key.clone()).or_insert(accs)
            }
        };
        for (acc, arg) in accs.iter_mut().zip(args) {
            match arg.input(row) {
                None => acc.update_row(),
                Some(input) => acc.update(input),
            }
        }
    }

    /// Rows of windows whose start lies in `range`, in result order.
    pub fn rows(&self, range: StartRange) -> Vec<ViewRow> {
        if range.is_empty() {
            return Vec::new();
        }
        let mut out = Vec::new();
        for (start, w) in self.windows.range(range.from..range.to) {
            collect_rows(*start, w, &mut out);
        }
        out.sort_by(ViewRow::order);
        out
    }

    /// Adopts the batch layer's coverage: drops the state of every covered window and returns
    /// its final rows (so the caller can measure drift against the exact results).
    pub fn release(&mut self, coverage: &Coverage) -> Vec<ViewRow> {
        self.covered.union(coverage);
        let covered: Vec<EventTime> = self
            .windows
            .keys()
            .copied()
            .filter(|s| self.covered.contains(*s))
            .collect();
        let mut out = Vec::new();
        for start in covered {
            if let Some(w) = self.windows.remove(&start) {
                self.groups -= w.groups.len();
                let freed: usize = w
                    .groups
                    .iter()
                    .map(|(k, accs)| {
                        accs.iter()
                            .map(PartialAggregate::approx_bytes)
                            .sum::<usize>()
                            + k.len() * 32
                            + 64
                    })
                    .sum();
                self.bytes = self.bytes.saturating_sub(freed);
                collect_rows(start, &w, &mut out);
            }
        }
        out.sort_by(ViewRow::order);
        out
    }
}

fn collect_rows(start: EventTime, w: &WindowGroups, out: &mut Vec<ViewRow>) {
    for (key, accs) in &w.groups {
        out.push(ViewRow {
            window: Window { start, end: w.end },
            group: key.clone(),
            values: accs.iter().map(PartialAggregate::evaluate).collect(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_shared::aggregate::AggregateValue;
    use tandem_shared::event::{EventBatchBuilder, EventDecoder};
    use tandem_shared::schema::{EventSchema, FieldType};
    use tandem_shared::view::{ViewConfig, ViewDefinition};
    use tandem_shared::window::WindowConfig;

    fn schema() -> Arc<EventSchema> {
        Arc::new(
            EventSchema::new(
                "ts",
                vec![
                    ("city".into(), FieldType::String),
                    ("amount".into(), FieldType::Float64),
                    ("event_type".into(), FieldType::String),
                ],
                None,
            )
            .unwrap(),
        )
    }

    fn state(window: WindowConfig, lateness: &str) -> ViewState {
        let view = ViewDefinition::from_config(
            &ViewConfig {
                name: "orders".into(),
                window,
                group_by: vec!["city".into()],
                filter: Some("event_type = 'order_placed'".into()),
                allowed_lateness: Some(lateness.into()),
                aggregates: vec![
                    "count(*) AS orders".into(),
                    "sum(amount) AS revenue".into(),
                    "max(amount) AS biggest".into(),
                ],
            },
            &schema(),
        )
        .unwrap();
        ViewState::new(Arc::new(ViewProgram::compile(&view, &schema()).unwrap()))
    }

    fn tumbling() -> WindowConfig {
        WindowConfig {
            tumbling: Some("1m".into()),
            ..Default::default()
        }
    }

    fn batch(events: &[(i64, &str, f64, &str)]) -> RecordBatch {
        let decoder = EventDecoder::new(schema());
        let mut b = EventBatchBuilder::new(&decoder, events.len());
        for (i, (ts, city, amount, ty)) in events.iter().enumerate() {
            let json =
                format!(r#"{{"ts":{ts},"city":"{city}","amount":{amount},"event_type":"{ty}"}}"#);
            let e = decoder.decode(json.as_bytes()).unwrap();
            b.append(&e, 0, i as i64);
        }
        b.finish()
    }

    fn all(s: &ViewState) -> Vec<ViewRow> {
        s.rows(StartRange::new(EventTime::MIN, EventTime::MAX))
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
            )
            .unwrap();
        assert_eq!(applied.updated, 4);
        assert!(applied.late_rows.is_empty());
        let rows = all(&s);
        let summary: Vec<_> = rows
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
        // Watermark: max event time 125s minus 10s lateness = 115s. Window [60s,120s) is still
        // open (end 120s > 115s), window [0,60s) is closed.
        let applied = s
            .apply(
                &batch(&[
                    (119_000, "Pune", 1.0, "order_placed"),
                    (59_000, "Pune", 1.0, "order_placed"),
                    (59_000, "Pune", 1.0, "order_cancelled"),
                ]),
                Some(EventTime(125_000)),
            )
            .unwrap();
        assert_eq!(applied.updated, 1);
        assert_eq!(applied.late_rows, [1], "filtered-out rows are never late");
    }

    #[test]
    fn hopping_windows_receive_every_event_they_contain() {
        let mut s = state(
            WindowConfig {
                hopping: Some("3m".into()),
                every: Some("1m".into()),
                ..Default::default()
            },
            "0s",
        );
        s.apply(&batch(&[(150_000, "Pune", 2.0, "order_placed")]), None)
            .unwrap();
        let starts: Vec<_> = all(&s).iter().map(|r| r.window.start.millis()).collect();
        assert_eq!(starts, [0, 60_000, 120_000]);
    }

    #[test]
    fn release_drops_covered_windows_and_ignores_later_events_for_them() {
        let mut s = state(tumbling(), "1h");
        s.apply(
            &batch(&[
                (1_000, "Pune", 1.0, "order_placed"),
                (61_000, "Pune", 2.0, "order_placed"),
            ]),
            None,
        )
        .unwrap();
        let coverage = Coverage::from_ranges([StartRange::new(EventTime(0), EventTime(60_000))]);
        let released = s.release(&coverage);
        assert_eq!(released.len(), 1);
        assert_eq!(released[0].window.start, EventTime(0));
        assert_eq!(s.size().0, 1);
        let applied = s
            .apply(&batch(&[(2_000, "Pune", 1.0, "order_placed")]), None)
            .unwrap();
        assert_eq!(applied.late_rows, [0]);
        assert_eq!(all(&s).len(), 1);
    }
}
