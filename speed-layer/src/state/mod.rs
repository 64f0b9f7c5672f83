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
//!
//! ```text
//!  RecordBatch ─► columns: filter mask + arguments (DataFusion), typed once per batch
//!       │ per selected row: group key, windows_of(t) vs watermark and coverage
//!       ▼
//!  Windows: Fixed(start → group → accs) | Sessions(group → start → session)
//!       │ partials(range) / release(coverage)           │ snapshot / restore
//!       ▼                                               ▼
//!  merge: partials of all partitions → ViewRow      checkpoints
//! ```

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::DataType;
use tandem_shared::coverage::{Coverage, StartRange};
use tandem_shared::row::{GroupKey, GroupValue, ViewRow};
use tandem_shared::time::EventTime;
use tandem_shared::window::{Window, WindowSpec};

use crate::aggregate::{ArgumentType, PartialAggregate};
use crate::program::ViewProgram;

mod columns;
mod merge;
mod snapshot;
#[cfg(test)]
mod tests;

use columns::{ArgColumn, Evaluated};
use merge::merge_accs;
pub use merge::merge_partials;
pub use snapshot::{EntrySnapshot, ViewSnapshot};

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
        source: crate::aggregate::Error,
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

    /// Applies a batch of decoded events. `event_watermark` is the combined event-time progress
    /// of the consumer before this batch; the view subtracts its allowed lateness. `covered` is
    /// the batch layer's coverage of this view.
    pub fn apply(
        &mut self,
        batch: &RecordBatch,
        event_watermark: Option<EventTime>,
        covered: &Coverage,
    ) -> Result<Applied> {
        let program = Arc::clone(&self.program);
        let evaluated = Evaluated::new(&program, batch)?;
        let columns = evaluated.bind(&program, batch)?;
        let watermark = event_watermark.map(|w| w.saturating_sub(program.view.allowed_lateness));
        let spec = program.view.window;
        let mut applied = Applied::default();
        let mut key = Vec::with_capacity(columns.group_count());
        for row in 0..batch.num_rows() {
            if !columns.selected(row) {
                continue;
            }
            let t = columns.time(row);
            columns.key(row, &mut key);
            let updated = match spec {
                WindowSpec::Session { gap } => {
                    let own = Window {
                        start: t,
                        end: t.saturating_add(gap),
                    };
                    if watermark.is_some_and(|w| own.end <= w) {
                        false
                    } else {
                        self.update_session(own, &key, &columns.args, row, covered)
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
                        self.update_fixed(window, &key, &columns.args, row);
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
}
