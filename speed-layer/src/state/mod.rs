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
//! - Hopping windows are kept as panes one hop wide ([`panes`]): an event updates its one pane,
//!   a window is the merge of its panes, and a window that closes or is covered is sealed (copied
//!   out of its panes) before a later event changes one of them.
//! - Session windows (per group) are `[first event, last event + gap)`; an event joins every
//!   session its own window `[t, t + gap)` overlaps, merging them.
//! - Readers never hold up the consume thread: a query *pins* the windows it reads (shares them
//!   behind `Arc`s, a pointer copy per window) and merges them after every lock is released. The
//!   consume thread changes a window in place when nobody has it pinned and copies it first when
//!   somebody has (copy on write), so a query sees each window as of one micro-batch.
//!
//! ```text
//!  RecordBatch ─► columns: filter mask + arguments (DataFusion), typed once per batch
//!       │ per selected row: group key, windows_of(t) vs watermark and coverage
//!       ▼
//!  Windows: Fixed(start → Arc<group → accs>) | Panes(pane start → Arc<group → accs>, sealed)
//!         | Sessions(shard → Arc<group → start → session>)
//!       │ pin(range): Arc clones under the lock          │ release(coverage)
//!       ▼                                                ▼
//!  Pinned ─► partials ─► merge over partitions → ViewRow; snapshot → checkpoints
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
#[cfg(test)]
mod pane_tests;
mod panes;
mod sessions;
mod snapshot;
#[cfg(test)]
mod tests;

use columns::ArgColumn;
pub(crate) use columns::{Bound, Evaluated};
use merge::merge_accs;
pub use merge::{merge_partials, merge_states};
use panes::{Panes, PinnedPanes};
use sessions::GroupSessions;
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
    #[error("view `{view}`: restoring state: {detail}")]
    Checkpoint { view: String, detail: String },
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

#[derive(Debug, Default, Clone)]
struct WindowGroups {
    end: EventTime,
    groups: GroupMap<Vec<PartialAggregate>>,
}

/// Per-group state. Group keys are hashed for every event, so the map uses foldhash (randomly
/// seeded like the default hasher, several times cheaper than SipHash on short keys).
type GroupMap<V> = HashMap<GroupKey, V, foldhash::fast::RandomState>;

#[derive(Debug, Clone)]
struct Session {
    end: EventTime,
    accs: Vec<PartialAggregate>,
}

/// Sessions of some groups, each group's by start ([`GroupSessions`]).
type SessionShard = GroupMap<GroupSessions>;

/// Session state is split by group hash into this many shards, so that a write to a pinned
/// shard copies a small part of the state.
const SESSION_SHARDS: usize = 64;

#[derive(Debug)]
enum Windows {
    /// Tumbling windows, by start; each shared with the readers that pinned it.
    Fixed(BTreeMap<EventTime, Arc<WindowGroups>>),
    /// Hopping windows as panes one hop wide ([`panes`]).
    Panes(Panes),
    /// Sessions in [`SESSION_SHARDS`] shards by group hash.
    Sessions(Vec<Arc<SessionShard>>),
}

/// The session shard of a group: a fixed hash, so that it is the same in every process.
fn shard_of(key: &GroupKey) -> usize {
    use std::hash::BuildHasher;
    (foldhash::fast::FixedState::default().hash_one(key) % SESSION_SHARDS as u64) as usize
}

/// The speed layer's state of one view over one partition.
#[derive(Debug)]
pub struct ViewState {
    program: Arc<ViewProgram>,
    windows: Windows,
    tally: Tally,
}

/// Groups held and their budgeted bytes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Tally {
    groups: usize,
    bytes: usize,
}

impl Tally {
    fn add(&mut self, key: &GroupKey, accs: &[PartialAggregate]) {
        self.groups += 1;
        self.bytes += entry_bytes(key, accs);
    }

    fn remove(&mut self, key: &GroupKey, accs: &[PartialAggregate]) {
        self.groups = self.groups.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(entry_bytes(key, accs));
    }

    fn grow(&mut self, bytes: isize) {
        self.bytes = self.bytes.saturating_add_signed(bytes);
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

/// Updates a group's aggregates with `row`; returns how much their sketches grew (or shrank,
/// when KLL compacts), in bytes.
fn update_accs(accs: &mut [PartialAggregate], args: &[ArgColumn<'_>], row: usize) -> isize {
    let mut grown = 0isize;
    for (acc, arg) in accs.iter_mut().zip(args) {
        let before = if acc.grows() { acc.approx_bytes() } else { 0 };
        match arg.input(row) {
            None => acc.update_row(),
            Some(input) => acc.update(input),
        }
        if acc.grows() {
            grown += acc.approx_bytes() as isize - before as isize;
        }
    }
    grown
}

/// Applies `row` to `key`'s aggregates in `window` (a fixed window or a pane), adding the
/// group with fresh aggregates if it is new.
fn update_group(
    window: &mut WindowGroups,
    key: &GroupKey,
    args: &[ArgColumn<'_>],
    row: usize,
    program: &ViewProgram,
    tally: &mut Tally,
) {
    let accs = match window.groups.get_mut(key) {
        Some(accs) => accs,
        None => {
            let fresh = ViewState::empty_accs(program);
            tally.add(key, &fresh);
            window.groups.entry(key.clone()).or_insert(fresh)
        }
    };
    tally.grow(update_accs(accs, args, row));
}

impl ViewState {
    pub fn new(program: Arc<ViewProgram>) -> Self {
        let windows = match program.view.window {
            WindowSpec::Session { .. } => Windows::Sessions(
                (0..SESSION_SHARDS)
                    .map(|_| Arc::new(SessionShard::default()))
                    .collect(),
            ),
            WindowSpec::Hopping { size, every } if size.millis() > every.millis() => {
                Windows::Panes(Panes::new(size, every))
            }
            _ => Windows::Fixed(BTreeMap::new()),
        };
        Self {
            program,
            windows,
            tally: Tally::default(),
        }
    }

    pub fn program(&self) -> &Arc<ViewProgram> {
        &self.program
    }

    /// Windows held, groups held, and budgeted bytes of aggregate state.
    pub fn size(&self) -> (usize, usize, usize) {
        let windows = match &self.windows {
            Windows::Fixed(w) => w.len(),
            Windows::Panes(panes) => panes.held(),
            // One tally entry per session: counting them would walk every group, and this
            // is asked after every micro-batch.
            Windows::Sessions(_) => self.tally.groups,
        };
        (windows, self.tally.groups, self.tally.bytes)
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
        Ok(self.apply_rows(&columns, 0..batch.num_rows(), event_watermark, covered))
    }

    /// Applies `rows` of a batch whose columns this view's program evaluated and bound (once
    /// for a micro-batch of many partitions, see [`crate::micro_batch`]).
    pub(crate) fn apply_rows(
        &mut self,
        columns: &Bound<'_>,
        rows: impl IntoIterator<Item = usize>,
        event_watermark: Option<EventTime>,
        covered: &Coverage,
    ) -> Applied {
        let program = Arc::clone(&self.program);
        let watermark = event_watermark.map(|progress| program.view.watermark(progress));
        let spec = program.view.window;
        let mut applied = Applied::default();
        let mut key = Vec::with_capacity(columns.group_count());
        let mut last_pane: Option<(EventTime, bool)> = None;
        for row in rows {
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
                _ if let Some(pane) = self.pane_of(t) => {
                    // Rows of one pane follow each other: whether it is open is asked once
                    // (the watermark and coverage hold for the whole call).
                    let open = match last_pane {
                        Some((at, open)) if at == pane => open,
                        _ => {
                            let open = self.open_pane(pane, watermark, covered);
                            last_pane = Some((pane, open));
                            open
                        }
                    };
                    if open {
                        self.update_in_pane(pane, &key, &columns.args, row);
                    }
                    open
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
        applied
    }

    fn update_fixed(&mut self, window: Window, key: &GroupKey, args: &[ArgColumn<'_>], row: usize) {
        let Windows::Fixed(windows) = &mut self.windows else {
            return;
        };
        let entry = windows.entry(window.start).or_insert_with(|| {
            Arc::new(WindowGroups {
                end: window.end,
                groups: GroupMap::default(),
            })
        });
        // Copies the window only if a reader has it pinned.
        update_group(
            Arc::make_mut(entry),
            key,
            args,
            row,
            &self.program,
            &mut self.tally,
        );
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
        let Windows::Sessions(shards) = &mut self.windows else {
            return false;
        };
        // Copies the shard only if a reader has it pinned.
        let groups = Arc::make_mut(&mut shards[shard_of(key)]);
        let sessions = match groups.get_mut(key) {
            Some(sessions) => sessions,
            None => {
                // The group's first session.
                if covered.covers(key, own.start) {
                    return false;
                }
                let mut accs = Self::empty_accs(&self.program);
                let _ = update_accs(&mut accs, args, row); // counted whole below
                self.tally.add(key, &accs);
                let mut sessions = GroupSessions::default();
                sessions.insert(own.start, Session { end: own.end, accs });
                groups.insert(key.clone(), sessions);
                return true;
            }
        };
        // Sessions overlapping [t, t + gap) become one session with the event in it.
        let overlapping = sessions.overlapping(own.start, own.end);
        let first = sessions
            .start_of(overlapping.start)
            .filter(|_| !overlapping.is_empty());
        let start = first.map_or(own.start, |first| first.min(own.start));
        if covered.covers(key, start) {
            return false;
        }
        if overlapping.len() == 1
            && first == Some(start)
            && let Some(session) = sessions.session_mut(overlapping.start)
        {
            // The common case: the event lies in, or extends, one session that keeps its start.
            session.end = session.end.max(own.end);
            self.tally.grow(update_accs(&mut session.accs, args, row));
            return true;
        }
        // A new session, or several merged (the earliest one's state absorbs the others).
        let merged_count = overlapping.len();
        let mut merged: Option<Session> = None;
        let mut freed = 0;
        for old in sessions.take(overlapping) {
            freed += entry_bytes(key, &old.accs);
            match &mut merged {
                None => merged = Some(old),
                Some(into) => {
                    into.end = into.end.max(old.end);
                    merge_accs(&mut into.accs, &old.accs);
                }
            }
        }
        let mut merged = merged.unwrap_or_else(|| Session {
            end: own.end,
            accs: Self::empty_accs(&self.program),
        });
        merged.end = merged.end.max(own.end);
        let _ = update_accs(&mut merged.accs, args, row); // counted whole below
        self.tally.groups = (self.tally.groups + 1).saturating_sub(merged_count);
        self.tally.bytes =
            (self.tally.bytes + entry_bytes(key, &merged.accs)).saturating_sub(freed);
        sessions.insert(start, merged);
        true
    }

    /// Shares the windows whose start lies in `range` with a reader: a pointer copy per window
    /// (per shard for sessions). Later changes to this state do not show in the result.
    pub fn pin(&self, range: StartRange) -> Pinned {
        let windows = if range.is_empty() {
            PinnedWindows::Fixed(Vec::new())
        } else {
            match &self.windows {
                Windows::Fixed(windows) => PinnedWindows::Fixed(
                    windows
                        .range(range.from..range.to)
                        .map(|(start, w)| (*start, Arc::clone(w)))
                        .collect(),
                ),
                Windows::Panes(panes) => PinnedWindows::Panes(panes.pin(range)),
                Windows::Sessions(shards) => {
                    PinnedWindows::Sessions(shards.iter().map(Arc::clone).collect())
                }
            }
        };
        Pinned {
            program: Arc::clone(&self.program),
            range,
            windows,
        }
    }

    /// Partial states of windows whose start lies in `range`.
    pub fn partials(&self, range: StartRange) -> Vec<Partial> {
        self.pin(range).partials()
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
            Windows::Panes(panes) => out = panes.release(coverage, &mut self.tally),
            Windows::Fixed(windows) => {
                let covered: Vec<EventTime> = windows
                    .keys()
                    .copied()
                    .filter(|s| coverage.contains(*s))
                    .collect();
                for start in covered {
                    if let Some(w) = windows.remove(&start) {
                        let w = Arc::try_unwrap(w).unwrap_or_else(|shared| (*shared).clone());
                        for (key, accs) in w.groups {
                            self.tally.remove(&key, &accs);
                            out.push(Partial {
                                window: Window { start, end: w.end },
                                group: key,
                                accs,
                            });
                        }
                    }
                }
            }
            Windows::Sessions(shards) => {
                for shard in shards.iter_mut() {
                    let any = shard
                        .iter()
                        .any(|(key, sessions)| sessions.keys().any(|s| coverage.covers(key, *s)));
                    if !any {
                        continue;
                    }
                    let groups = Arc::make_mut(shard);
                    for (key, sessions) in groups.iter_mut() {
                        let covered: Vec<EventTime> = sessions
                            .keys()
                            .copied()
                            .filter(|s| coverage.covers(key, *s))
                            .collect();
                        for start in covered {
                            if let Some(s) = sessions.remove(&start) {
                                self.tally.remove(key, &s.accs);
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
        }
        out
    }
}

/// Windows of one view over one partition, shared with the live state as of the moment they were
/// pinned ([`ViewState::pin`]): read without any lock.
#[derive(Debug)]
pub struct Pinned {
    program: Arc<ViewProgram>,
    range: StartRange,
    windows: PinnedWindows,
}

#[derive(Debug)]
enum PinnedWindows {
    Fixed(Vec<(EventTime, Arc<WindowGroups>)>),
    Panes(PinnedPanes),
    Sessions(Vec<Arc<SessionShard>>),
}

impl Pinned {
    /// Partial states of the pinned windows whose start lies in the pinned range, one per
    /// window and group.
    pub fn partials(&self) -> Vec<Partial> {
        let mut out = Vec::new();
        match &self.windows {
            PinnedWindows::Panes(panes) => panes.partials(&mut out),
            PinnedWindows::Fixed(windows) => {
                for (start, w) in windows {
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
            PinnedWindows::Sessions(shards) => {
                for (key, sessions) in shards.iter().flat_map(|s| s.iter()) {
                    for (start, s) in sessions.range(self.range.from..self.range.to) {
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

    pub fn program(&self) -> &Arc<ViewProgram> {
        &self.program
    }
}
