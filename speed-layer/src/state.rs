//! Window state of one view over one Kafka partition: partial aggregates per window and group.
//!
//! The speed layer keeps one [`ViewState`] per view *per partition*, so that a partition can move
//! to another worker together with exactly the state its checkpointed offset reflects. Queries
//! merge the partials of all partitions ([`merge_partials`]), the same partial → final shape as
//! DataFusion's two-phase aggregation.
//!
//! Invariants:
//! - A window's state is kept after the window closes, until the batch layer covers it. That is
//!   what makes the seam between the layers exact.
//! - Events for a covered window are not applied: the batch layer's exact result answers it.
//!   Such events are reported as late so that they are never silently dropped.
//! - An event is applied to every window of the view that contains it and is still open (its end
//!   is after the view's watermark). An event with no such window is late.
//! - Session windows (per group) are `[first event, last event + gap)`; an event joins every
//!   session its own window `[t, t + gap)` overlaps, merging them.

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
use serde::{Deserialize, Serialize};
use tandem_shared::aggregate::{ArgumentType, Input, PartialAggregate};
use tandem_shared::coverage::{Coverage, StartRange};
use tandem_shared::row::{GroupKey, GroupValue, ViewRow};
use tandem_shared::time::EventTime;
use tandem_shared::window::{Window, WindowSpec};

use crate::program::ViewProgram;

/// Errors of the window state. Evaluation errors come from the data (an expression failing on
/// an event); the others mean a bug or a corrupt checkpoint.
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
    #[error("view `{view}`: restoring state: {source}")]
    Restore {
        view: String,
        source: tandem_shared::aggregate::Error,
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

/// The partial state of one window and group.
#[derive(Debug, Clone)]
pub struct Partial {
    pub window: Window,
    pub group: GroupKey,
    pub accs: Vec<PartialAggregate>,
}

#[derive(Debug, Default)]
struct WindowGroups {
    end: EventTime,
    groups: GroupMap<Vec<PartialAggregate>>,
}

/// Per-group state. Group keys are hashed for every event, so the map uses foldhash (randomly
/// seeded like the default hasher, several times cheaper than SipHash on short keys).
type GroupMap<V> = HashMap<GroupKey, V, foldhash::fast::RandomState>;

#[derive(Debug)]
struct Session {
    end: EventTime,
    accs: Vec<PartialAggregate>,
}

#[derive(Debug)]
enum Windows {
    /// Tumbling and hopping windows, by start.
    Fixed(BTreeMap<EventTime, WindowGroups>),
    /// Sessions per group, by start; sessions of one group never overlap.
    Sessions(GroupMap<BTreeMap<EventTime, Session>>),
}

/// The speed layer's state of one view over one partition.
#[derive(Debug)]
pub struct ViewState {
    program: Arc<ViewProgram>,
    windows: Windows,
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
    /// Stores the value of `row` in `slot`, reusing the slot's string buffer.
    fn write(&self, row: usize, slot: &mut GroupValue) {
        if let (GroupColumn::Str(a), GroupValue::Str(s)) = (self, &mut *slot)
            && !a.is_null(row)
        {
            s.clear();
            s.push_str(a.value(row));
        } else {
            *slot = self.value(row);
        }
    }

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

/// Budgeted size of one group's state.
fn entry_bytes(key: &GroupKey, accs: &[PartialAggregate]) -> usize {
    accs.iter()
        .map(PartialAggregate::approx_bytes)
        .sum::<usize>()
        + key
            .iter()
            .map(|v| match v {
                GroupValue::Str(s) => 32 + s.len(),
                _ => 32,
            })
            .sum::<usize>()
        + 64
}

fn update_accs(accs: &mut [PartialAggregate], args: &[ArgColumn<'_>], row: usize) {
    for (acc, arg) in accs.iter_mut().zip(args) {
        match arg.input(row) {
            None => acc.update_row(),
            Some(input) => acc.update(input),
        }
    }
}

fn merge_accs(into: &mut [PartialAggregate], from: &[PartialAggregate]) {
    for (a, b) in into.iter_mut().zip(from) {
        // Both come from the same view program, so their kinds always match.
        if let Err(err) = a.merge(b) {
            tracing::error!(%err, "merging partial aggregates of one view");
        }
    }
}

impl ViewState {
    pub fn new(program: Arc<ViewProgram>) -> Self {
        let windows = match program.view.window {
            WindowSpec::Session { .. } => Windows::Sessions(GroupMap::default()),
            _ => Windows::Fixed(BTreeMap::new()),
        };
        Self {
            program,
            windows,
            groups: 0,
            bytes: 0,
        }
    }

    pub fn program(&self) -> &Arc<ViewProgram> {
        &self.program
    }

    /// Windows held, groups held, and budgeted bytes of aggregate state.
    pub fn size(&self) -> (usize, usize, usize) {
        let windows = match &self.windows {
            Windows::Fixed(w) => w.len(),
            Windows::Sessions(s) => s.values().map(BTreeMap::len).sum(),
        };
        (windows, self.groups, self.bytes)
    }

    fn empty_accs(program: &ViewProgram) -> Vec<PartialAggregate> {
        program
            .view
            .aggregates
            .iter()
            .zip(&program.arguments)
            .map(|(spec, arg)| {
                PartialAggregate::new(
                    spec.function,
                    arg.as_ref().map_or(ArgumentType::Other, |a| a.ty),
                )
            })
            .collect()
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
            // `cast` guards against a function whose produced type differs from its declared
            // one (Utf8View for Utf8, say); it is a no-op otherwise.
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

    /// Applies a batch of decoded events. `event_watermark` is the combined event-time progress
    /// of the consumer before this batch; the view subtracts its allowed lateness. `covered` is
    /// the batch layer's coverage of this view.
    pub fn apply(
        &mut self,
        batch: &RecordBatch,
        event_watermark: Option<EventTime>,
        covered: &Coverage,
    ) -> Result<Applied> {
        let view_name = &self.program.view.name;
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
            if key.len() == group_columns.len() {
                for (slot, c) in key.iter_mut().zip(&group_columns) {
                    c.write(row, slot);
                }
            } else {
                key.clear();
                key.extend(group_columns.iter().map(|c| c.value(row)));
            }
            let updated = match spec {
                WindowSpec::Session { gap } => {
                    let own = Window {
                        start: t,
                        end: t.saturating_add(gap),
                    };
                    if watermark.is_some_and(|w| own.end <= w) {
                        false
                    } else {
                        self.update_session(own, &key, &args, row, covered)
                    }
                }
                _ => {
                    let mut updated = false;
                    for window in spec.windows_of(t) {
                        if watermark.is_some_and(|w| window.end <= w)
                            || covered.contains(window.start)
                        {
                            continue;
                        }
                        updated = true;
                        self.update_fixed(window, &key, &args, row);
                    }
                    updated
                }
            };
            if updated {
                applied.updated += 1;
            } else {
                applied.late_rows.push(row);
            }
        }
        Ok(applied)
    }

    fn update_fixed(&mut self, window: Window, key: &GroupKey, args: &[ArgColumn<'_>], row: usize) {
        let Windows::Fixed(windows) = &mut self.windows else {
            return;
        };
        let entry = windows.entry(window.start).or_insert_with(|| WindowGroups {
            end: window.end,
            groups: GroupMap::default(),
        });
        let accs = match entry.groups.get_mut(key) {
            Some(accs) => accs,
            None => {
                let fresh = Self::empty_accs(&self.program);
                self.groups += 1;
                self.bytes += entry_bytes(key, &fresh);
                entry.groups.entry(key.clone()).or_insert(fresh)
            }
        };
        update_accs(accs, args, row);
    }

    /// Adds an event whose own window is `own` to its group's sessions. Returns false if the
    /// resulting session starts in a covered range (the batch layer has published it).
    fn update_session(
        &mut self,
        own: Window,
        key: &GroupKey,
        args: &[ArgColumn<'_>],
        row: usize,
        covered: &Coverage,
    ) -> bool {
        let fresh = Self::empty_accs(&self.program);
        let Windows::Sessions(groups) = &mut self.windows else {
            return false;
        };
        if !groups.contains_key(key) {
            groups.insert(key.clone(), BTreeMap::new());
        }
        let Some(sessions) = groups.get_mut(key) else {
            return false;
        };
        // Sessions overlapping [t, t + gap): they start before its end and end after its start.
        // Sessions of one group are disjoint, so walking back from the end finds them all.
        let overlapping: Vec<EventTime> = sessions
            .range(..own.end)
            .rev()
            .take_while(|(_, s)| s.end > own.start)
            .map(|(start, _)| *start)
            .collect();
        let start = overlapping.iter().copied().fold(own.start, EventTime::min);
        if covered.contains(start) {
            return false;
        }
        let mut merged = Session {
            end: own.end,
            accs: fresh,
        };
        if overlapping.is_empty() {
            self.groups += 1;
            self.bytes += entry_bytes(key, &merged.accs);
        }
        for s in &overlapping {
            if let Some(old) = sessions.remove(s) {
                merged.end = merged.end.max(old.end);
                merge_accs(&mut merged.accs, &old.accs);
            }
        }
        // Merging k sessions into one frees k - 1 entries.
        if overlapping.len() > 1 {
            let freed = overlapping.len() - 1;
            self.groups -= freed;
            self.bytes = self
                .bytes
                .saturating_sub(freed * entry_bytes(key, &merged.accs));
        }
        update_accs(&mut merged.accs, args, row);
        sessions.insert(start, merged);
        true
    }

    /// Partial states of windows whose start lies in `range`.
    pub fn partials(&self, range: StartRange) -> Vec<Partial> {
        let mut out = Vec::new();
        if range.is_empty() {
            return out;
        }
        match &self.windows {
            Windows::Fixed(windows) => {
                for (start, w) in windows.range(range.from..range.to) {
                    for (key, accs) in &w.groups {
                        out.push(Partial {
                            window: Window {
                                start: *start,
                                end: w.end,
                            },
                            group: key.clone(),
                            accs: accs.clone(),
                        });
                    }
                }
            }
            Windows::Sessions(groups) => {
                for (key, sessions) in groups {
                    for (start, s) in sessions.range(range.from..range.to) {
                        out.push(Partial {
                            window: Window {
                                start: *start,
                                end: s.end,
                            },
                            group: key.clone(),
                            accs: s.accs.clone(),
                        });
                    }
                }
            }
        }
        out
    }

    /// Final rows of this state alone (for a single partition).
    pub fn rows(&self, range: StartRange) -> Vec<ViewRow> {
        merge_partials(self.partials(range), self.is_sessions())
    }

    pub fn is_sessions(&self) -> bool {
        matches!(self.windows, Windows::Sessions(_))
    }

    /// Drops the state of every covered window and returns it.
    pub fn release(&mut self, coverage: &Coverage) -> Vec<Partial> {
        let mut out = Vec::new();
        match &mut self.windows {
            Windows::Fixed(windows) => {
                let covered: Vec<EventTime> = windows
                    .keys()
                    .copied()
                    .filter(|s| coverage.contains(*s))
                    .collect();
                for start in covered {
                    if let Some(w) = windows.remove(&start) {
                        for (key, accs) in w.groups {
                            self.groups -= 1;
                            self.bytes = self.bytes.saturating_sub(entry_bytes(&key, &accs));
                            out.push(Partial {
                                window: Window { start, end: w.end },
                                group: key,
                                accs,
                            });
                        }
                    }
                }
            }
            Windows::Sessions(groups) => {
                for (key, sessions) in groups.iter_mut() {
                    let covered: Vec<EventTime> = sessions
                        .keys()
                        .copied()
                        .filter(|s| coverage.contains(*s))
                        .collect();
                    for start in covered {
                        if let Some(s) = sessions.remove(&start) {
                            self.groups -= 1;
                            self.bytes = self.bytes.saturating_sub(entry_bytes(key, &s.accs));
                            out.push(Partial {
                                window: Window { start, end: s.end },
                                group: key.clone(),
                                accs: s.accs,
                            });
                        }
                    }
                }
                groups.retain(|_, s| !s.is_empty());
            }
        }
        out
    }

    /// A serializable copy of the state.
    pub fn snapshot(&self) -> ViewSnapshot {
        let entries = self
            .partials(StartRange::new(EventTime::MIN, EventTime::MAX))
            .into_iter()
            .map(|p| EntrySnapshot {
                start: p.window.start.millis(),
                end: p.window.end.millis(),
                group: p.group,
                accs: p.accs.iter().map(PartialAggregate::to_bytes).collect(),
            })
            .collect();
        ViewSnapshot {
            view: self.program.view.name.clone(),
            version: self.program.view.version.0.clone(),
            entries,
        }
    }

    /// Rebuilds state from a snapshot of the same view version.
    pub fn restore(program: Arc<ViewProgram>, snapshot: &ViewSnapshot) -> Result<Self> {
        let mut state = Self::new(program);
        let view = state.program.view.name.clone();
        for e in &snapshot.entries {
            let accs = e
                .accs
                .iter()
                .map(|b| PartialAggregate::from_bytes(b))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|source| Error::Restore {
                    view: view.clone(),
                    source,
                })?;
            state.groups += 1;
            state.bytes += entry_bytes(&e.group, &accs);
            let (start, end) = (EventTime(e.start), EventTime(e.end));
            match &mut state.windows {
                Windows::Fixed(windows) => {
                    windows
                        .entry(start)
                        .or_insert_with(|| WindowGroups {
                            end,
                            groups: GroupMap::default(),
                        })
                        .groups
                        .insert(e.group.clone(), accs);
                }
                Windows::Sessions(groups) => {
                    groups
                        .entry(e.group.clone())
                        .or_default()
                        .insert(start, Session { end, accs });
                }
            }
        }
        Ok(state)
    }
}

/// Serializable state of one view over one partition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ViewSnapshot {
    pub view: String,
    pub version: String,
    pub entries: Vec<EntrySnapshot>,
}

/// One window and group of a [`ViewSnapshot`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntrySnapshot {
    pub start: i64,
    pub end: i64,
    pub group: GroupKey,
    pub accs: Vec<Vec<u8>>,
}

/// Merges partials (of any number of partitions) into final rows, in result order. For session
/// views, fragments of one group that overlap are one session.
pub fn merge_partials(partials: Vec<Partial>, sessions: bool) -> Vec<ViewRow> {
    let mut merged: Vec<Partial> = if sessions {
        let mut by_group: HashMap<GroupKey, Vec<Partial>> = HashMap::new();
        for p in partials {
            by_group.entry(p.group.clone()).or_default().push(p);
        }
        let mut out = Vec::new();
        for (_, mut fragments) in by_group {
            fragments.sort_by_key(|p| p.window.start);
            let mut current: Option<Partial> = None;
            for f in fragments {
                match &mut current {
                    Some(c) if f.window.start < c.window.end => {
                        c.window.end = c.window.end.max(f.window.end);
                        merge_accs(&mut c.accs, &f.accs);
                    }
                    _ => {
                        if let Some(done) = current.replace(f) {
                            out.push(done);
                        }
                    }
                }
            }
            out.extend(current);
        }
        out
    } else {
        let mut by_key: HashMap<(Window, GroupKey), Partial> = HashMap::new();
        for p in partials {
            match by_key.get_mut(&(p.window, p.group.clone())) {
                Some(existing) => merge_accs(&mut existing.accs, &p.accs),
                None => {
                    by_key.insert((p.window, p.group.clone()), p);
                }
            }
        }
        by_key.into_values().collect()
    };
    let mut rows: Vec<ViewRow> = merged
        .drain(..)
        .map(|p| ViewRow {
            window: p.window,
            group: p.group,
            values: p.accs.iter().map(PartialAggregate::evaluate).collect(),
        })
        .collect();
    rows.sort_by(ViewRow::order);
    rows
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

    fn sessions(gap: &str) -> WindowConfig {
        WindowConfig {
            session_gap: Some(gap.into()),
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
        let mut s = state(
            WindowConfig {
                hopping: Some("3m".into()),
                every: Some("1m".into()),
                ..Default::default()
            },
            "0s",
        );
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
}
