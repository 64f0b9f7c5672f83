//! The speed layer's engine: the state of every view over every partition this worker owns,
//! and the operations the consume thread, the checkpointer and the serving layer call on it.
//!
//! State is one `RwLock` over partition → view → window state. The consume thread takes the
//! write lock once per partition per micro-batch. A query holds the read lock only to pin the
//! windows in its range (a pointer copy per window, see [`crate::state`]) and merges them after
//! releasing it, so the consume thread never waits for a query's work; a window a query has
//! pinned is copied before it changes. Checkpoints pin the same way and serialize unlocked. The
//! serving layer's release of covered windows takes the write lock.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use tandem_shared::coverage::{Coverage, StartRange};
use tandem_shared::row::ViewRow;
use tandem_shared::schema::EventSchema;
use tandem_shared::time::{EventTime, Span};
use tandem_shared::view::ViewDefinition;
use tandem_shared::window::WindowSpec;
use tandem_store::members::Owned;

use crate::checkpoint::{self, SecondPosition};
use crate::dedup::{self, Seen};
use crate::joined::{JoinState, StreamSide};
use crate::partials::OwnedPartials;
use crate::program::{self, ViewProgram};
use crate::state::{self, Partial, Pinned, ViewState, merge_states};
use crate::tables::{Dimension, Lookup};

/// The state of every view over one Kafka partition, and the offset it reflects.
#[derive(Debug)]
pub(crate) struct PartitionState {
    pub(crate) views: Vec<ViewState>,
    /// The next offset to consume; `None` before anything was consumed.
    pub(crate) next_offset: Option<i64>,
    pub(crate) max_event_time: Option<EventTime>,
    /// Changed since the last checkpoint.
    pub(crate) dirty: bool,
    /// Ownership epoch of the assignment that gave this worker the partition.
    epoch: u64,
    /// Ids seen within the de-duplication horizon (empty without an id field).
    pub(crate) seen: Seen,
    /// Joined streams: per second topic (its index among the consumer's topics), the same
    /// partition number's next offset and latest event time.
    pub(crate) seconds: BTreeMap<usize, Second>,
    /// Per view, a joined stream's buffers.
    pub(crate) joins: Vec<Option<JoinState>>,
}

/// Where a partition of a second topic stands.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Second {
    pub(crate) next_offset: Option<i64>,
    pub(crate) max_event_time: Option<EventTime>,
}

/// De-duplication by the schema's id field within an event-time horizon (see [`crate::dedup`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Dedup {
    pub(crate) field: String,
    /// The event-time column of a micro-batch.
    pub(crate) time_field: String,
    pub(crate) horizon: Span,
}

#[derive(Debug)]
struct Inner {
    programs: Vec<Arc<ViewProgram>>,
    names: BTreeMap<String, usize>,
    fingerprint: String,
    /// Per view, what the batch layer covers: shared, so that each micro-batch takes it with
    /// a pointer copy (a session view's held groups can be many).
    coverage: RwLock<Vec<Arc<Coverage>>>,
    partitions: RwLock<BTreeMap<i32, PartitionState>>,
    /// Combined event-time progress of the assigned partitions, epoch ms; `i64::MIN` before any.
    progress: AtomicI64,
    /// Micro-batches applied.
    micro_batches: AtomicU64,
    dedup: Option<Dedup>,
    /// The dimension tables the views join, one per table.
    tables: Vec<Arc<Dimension>>,
    /// Per view, its joins resolved to the tables.
    lookups: Vec<Vec<Lookup>>,
    /// Per view, its joined stream.
    streams: Vec<Option<Arc<StreamSide>>>,
    /// The joined streams' second topics; topic `i` here is the consumer's topic `i + 1`.
    stream_topics: Vec<String>,
}

/// Handle to the speed layer's state. Cheap to clone; all clones share state.
#[derive(Debug, Clone)]
pub struct SpeedLayer {
    inner: Arc<Inner>,
}

impl SpeedLayer {
    /// Compiles `views` against `schema` and creates the layer for them; a bad expression is the
    /// user's error and names the view. Nothing is consumed until [`SpeedLayer::start`].
    pub fn compile(views: &[ViewDefinition], schema: &EventSchema) -> Result<Self, program::Error> {
        let programs = views
            .iter()
            .map(|v| ViewProgram::compile(v, schema))
            .collect::<Result<Vec<_>, _>>()?;
        let mut layer = Self::new(programs);
        if let Some(inner) = Arc::get_mut(&mut layer.inner) {
            for (v, program) in inner.programs.iter().enumerate() {
                let Some(stream) = &program.view.join_stream else {
                    continue;
                };
                let topic = match inner
                    .stream_topics
                    .iter()
                    .position(|t| *t == stream.side.topic)
                {
                    Some(at) => at + 1,
                    None => {
                        inner.stream_topics.push(stream.side.topic.clone());
                        inner.stream_topics.len()
                    }
                };
                let side = StreamSide::new(stream, topic, schema, Arc::clone(&program.input))
                    .map_err(|e| program::Error::Stream {
                        view: program.view.name.clone(),
                        detail: e.to_string(),
                    })?;
                inner.streams[v] = Some(Arc::new(side));
            }
        }
        if let (Some(field), Some(inner)) = (&schema.id_field, Arc::get_mut(&mut layer.inner)) {
            inner.dedup = Some(Dedup {
                field: field.clone(),
                time_field: schema.time_field.clone(),
                horizon: dedup::default_horizon(views),
            });
        }
        Ok(layer)
    }

    /// The de-duplication horizon instead of the default (`[speed] dedup_horizon`); no effect
    /// without an id field, or once the layer is shared.
    pub fn with_dedup_horizon(mut self, horizon: Option<Span>) -> Self {
        if let (Some(horizon), Some(inner)) = (horizon, Arc::get_mut(&mut self.inner))
            && let Some(dedup) = &mut inner.dedup
        {
            dedup.horizon = horizon;
        }
        self
    }

    pub(crate) fn dedup(&self) -> Option<&Dedup> {
        self.inner.dedup.as_ref()
    }

    /// Ids remembered for de-duplication over all partitions, and the bytes they hold.
    pub fn dedup_memory(&self) -> (usize, usize) {
        self.partitions_read()
            .values()
            .fold((0, 0), |(n, b), p| (n + p.seen.len(), b + p.seen.bytes()))
    }

    /// Creates the layer for compiled views. Nothing is consumed until [`SpeedLayer::start`].
    pub fn new(programs: Vec<ViewProgram>) -> Self {
        let programs: Vec<Arc<ViewProgram>> = programs.into_iter().map(Arc::new).collect();
        let names = programs
            .iter()
            .enumerate()
            .map(|(i, p)| (p.view.name.clone(), i))
            .collect();
        let fingerprint = programs
            .iter()
            .map(|p| format!("{}@{}", p.view.name, p.view.version))
            .collect::<Vec<_>>()
            .join(",");
        let mut tables: Vec<Arc<Dimension>> = Vec::new();
        let lookups = programs
            .iter()
            .map(|p| {
                p.view
                    .joins
                    .iter()
                    .map(|join| {
                        let table = match tables
                            .iter()
                            .find(|t| t.definition().name == join.table.name)
                        {
                            Some(t) => Arc::clone(t),
                            None => {
                                let t = Arc::new(Dimension::new(Arc::clone(&join.table)));
                                tables.push(Arc::clone(&t));
                                t
                            }
                        };
                        Lookup {
                            table,
                            on: join.on.clone(),
                        }
                    })
                    .collect()
            })
            .collect();
        let n = programs.len();
        let coverage = RwLock::new(
            (0..programs.len())
                .map(|_| Arc::new(Coverage::new()))
                .collect(),
        );
        Self {
            inner: Arc::new(Inner {
                programs,
                names,
                fingerprint,
                coverage,
                partitions: RwLock::new(BTreeMap::new()),
                progress: AtomicI64::new(i64::MIN),
                micro_batches: AtomicU64::new(0),
                dedup: None,
                tables,
                lookups,
                streams: vec![None; n],
                stream_topics: Vec::new(),
            }),
        }
    }

    /// Micro-batches applied since the layer was created.
    pub fn micro_batches(&self) -> u64 {
        self.inner.micro_batches.load(Ordering::Relaxed)
    }

    pub(crate) fn count_micro_batch(&self) {
        self.inner.micro_batches.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn programs(&self) -> &[Arc<ViewProgram>] {
        &self.inner.programs
    }

    /// The dimension tables the views join (read by [`crate::tables::TableReader`]s).
    pub fn tables(&self) -> &[Arc<Dimension>] {
        &self.inner.tables
    }

    /// Whether every joined table has been read to its end (events wait for it).
    pub fn tables_ready(&self) -> bool {
        self.inner.tables.iter().all(|t| t.is_ready())
    }

    /// View `v`'s joins.
    pub(crate) fn lookups(&self, v: usize) -> &[Lookup] {
        self.inner.lookups.get(v).map_or(&[], Vec::as_slice)
    }

    fn partitions_read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<i32, PartitionState>> {
        self.inner
            .partitions
            .read()
            .unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn partitions_write(
        &self,
    ) -> std::sync::RwLockWriteGuard<'_, BTreeMap<i32, PartitionState>> {
        self.inner
            .partitions
            .write()
            .unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn coverage_read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Arc<Coverage>>> {
        self.inner
            .coverage
            .read()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Rows of `view` whose window starts in `range`, merged over all partitions; `None` for an
    /// unknown view.
    pub fn query(&self, view: &str, range: StartRange) -> Option<Vec<ViewRow>> {
        let pinned = self.pin(view, range)?;
        Some(Self::rows_of(&pinned))
    }

    /// The partial state of `view`'s windows starting in `range`, merged over partitions: one
    /// per window and group, for rollups that combine windows further. `None` for an unknown
    /// view.
    pub fn query_states(&self, view: &str, range: StartRange) -> Option<Vec<Partial>> {
        let (partials, sessions) = Self::partials_of(&self.pin(view, range)?);
        Some(state::merge_states(partials, sessions))
    }

    /// The first half of a query: the windows of `view` in `range` of every partition, pinned
    /// under the read lock (pointer copies only); `None` for an unknown view.
    pub(crate) fn pin(&self, view: &str, range: StartRange) -> Option<Vec<Pinned>> {
        let index = *self.inner.names.get(view)?;
        Some(
            self.partitions_read()
                .values()
                .map(|p| p.views[index].pin(range))
                .collect(),
        )
    }

    /// The second half of a query, with no lock held: pinned windows merged into rows.
    pub(crate) fn rows_of(pinned: &[Pinned]) -> Vec<ViewRow> {
        let (partials, sessions) = Self::partials_of(pinned);
        state::merge_partials(partials, sessions)
    }

    /// Every partition's partials of the pinned windows, and whether they are sessions.
    fn partials_of(pinned: &[Pinned]) -> (Vec<Partial>, bool) {
        let sessions = pinned
            .first()
            .is_some_and(|p| matches!(p.program().view.window, WindowSpec::Session { .. }));
        (pinned.iter().flat_map(Pinned::partials).collect(), sessions)
    }

    /// Hands the batch layer's coverage of `view` to the speed layer: covered windows are
    /// dropped and returned (for drift measurement), and later events for them are late.
    pub fn release(&self, view: &str, coverage: &Coverage) -> Option<Vec<ViewRow>> {
        let index = *self.inner.names.get(view)?;
        let sessions = matches!(
            self.inner.programs[index].view.window,
            WindowSpec::Session { .. }
        );
        let covered = {
            let mut all = self
                .inner
                .coverage
                .write()
                .unwrap_or_else(|e| e.into_inner());
            let mut next = Coverage::clone(&all[index]);
            next.union(coverage);
            all[index] = Arc::new(next);
            Arc::clone(&all[index])
        };
        let mut partials = Vec::new();
        let mut partitions = self.partitions_write();
        for p in partitions.values_mut() {
            let released = p.views[index].release(&covered);
            if !released.is_empty() {
                p.dirty = true;
            }
            partials.extend(released);
        }
        drop(partitions);
        self.publish_size();
        Some(state::merge_partials(partials, sessions))
    }

    /// The batch layer's coverage of `view` handed to [`SpeedLayer::release`] so far: windows
    /// this worker no longer holds. `None` for an unknown view.
    pub fn released(&self, view: &str) -> Option<Coverage> {
        let index = *self.inner.names.get(view)?;
        Some(Coverage::clone(&self.coverage_read()[index]))
    }

    /// Messages consumed so far, over the partitions this worker owns (the sum of their next
    /// offsets): a cheap progress signal.
    pub fn consumed(&self) -> i64 {
        self.partitions_read()
            .values()
            .filter_map(|p| p.next_offset)
            .sum()
    }

    /// Budgeted bytes of all window state. The ids remembered for de-duplication are not in
    /// the budget: they are bounded by the horizon and forgotten as event time advances, which
    /// a consumer paused for the budget would never do.
    pub fn state_bytes(&self) -> usize {
        self.partitions_read()
            .values()
            .flat_map(|p| p.views.iter())
            .map(|v| v.size().2)
            .sum()
    }

    /// Records the combined event-time progress the consume thread computed.
    pub(crate) fn set_progress(&self, progress: EventTime) {
        self.inner
            .progress
            .store(progress.millis(), std::sync::atomic::Ordering::Relaxed);
    }

    /// Event-time progress of the owned partitions (the slowest one's); `None` before any.
    pub fn progress(&self) -> Option<EventTime> {
        let progress = self
            .inner
            .progress
            .load(std::sync::atomic::Ordering::Relaxed);
        (progress != i64::MIN).then_some(EventTime(progress))
    }

    /// The view's watermark: event-time progress minus its allowed lateness. A window that
    /// ends at or before it is closed: it takes no more on-time events. `None` before any
    /// progress, or for an unknown view.
    pub fn watermark(&self, view: &str) -> Option<EventTime> {
        let progress = self
            .inner
            .progress
            .load(std::sync::atomic::Ordering::Relaxed);
        if progress == i64::MIN {
            return None;
        }
        let program = self.inner.programs.get(*self.inner.names.get(view)?)?;
        Some(program.view.watermark(EventTime(progress)))
    }

    pub(crate) fn publish_size(&self) {
        let partitions = self.partitions_read();
        for (i, program) in self.inner.programs.iter().enumerate() {
            let (mut windows, mut groups, mut bytes) = (0, 0, 0);
            for p in partitions.values() {
                let (w, g, b) = p.views[i].size();
                windows += w;
                groups += g;
                bytes += b;
            }
            let view = program.view.name.clone();
            metrics::gauge!("tandem_speed_open_windows", "view" => view.clone())
                .set(windows as f64);
            metrics::gauge!("tandem_speed_groups", "view" => view.clone()).set(groups as f64);
            metrics::gauge!("tandem_speed_state_bytes", "view" => view).set(bytes as f64);
        }
        if self.inner.dedup.is_some() {
            let (ids, bytes) = partitions
                .values()
                .fold((0, 0), |(n, b), p| (n + p.seen.len(), b + p.seen.bytes()));
            metrics::gauge!("tandem_speed_dedup_ids").set(ids as f64);
            metrics::gauge!("tandem_speed_dedup_bytes").set(bytes as f64);
        }
        for (v, side) in self.inner.streams.iter().enumerate() {
            if side.is_none() {
                continue;
            }
            let (rows, bytes) = partitions
                .values()
                .filter_map(|p| p.joins.get(v)?.as_ref())
                .fold((0, 0), |(n, b), j| (n + j.rows(), b + j.bytes()));
            let view = self.inner.programs[v].view.name.clone();
            metrics::gauge!("tandem_speed_join_rows", "view" => view.clone()).set(rows as f64);
            metrics::gauge!("tandem_speed_join_bytes", "view" => view).set(bytes as f64);
        }
    }

    /// Installs a partition's state: restored from `snapshot` if it matches the current views,
    /// empty otherwise. Returns the offset to resume from.
    pub(crate) fn assign(
        &self,
        partition: i32,
        snapshot: Option<checkpoint::PartitionSnapshot>,
        epoch: u64,
    ) -> Option<i64> {
        let fresh = || PartitionState {
            views: self
                .inner
                .programs
                .iter()
                .map(|p| ViewState::new(Arc::clone(p)))
                .collect(),
            next_offset: None,
            max_event_time: None,
            dirty: false,
            epoch,
            seen: Seen::default(),
            seconds: BTreeMap::new(),
            joins: self.fresh_joins(),
        };
        let state = match snapshot {
            Some(s) if s.fingerprint == self.inner.fingerprint => {
                let views: Result<Vec<ViewState>, _> = self
                    .inner
                    .programs
                    .iter()
                    .zip(&s.views)
                    .map(|(p, v)| ViewState::restore(Arc::clone(p), v))
                    .collect();
                let joins = self.restore_joins(&s.joins);
                match views.and_then(|views| Ok((views, joins?))) {
                    Ok((views, joins)) => PartitionState {
                        views,
                        next_offset: s.next_offset,
                        max_event_time: s.max_event_time.map(EventTime),
                        dirty: false,
                        epoch,
                        seen: Seen::restore(s.seen),
                        seconds: self.restore_seconds(&s.seconds),
                        joins,
                    },
                    Err(err) => {
                        tracing::error!(partition, %err, "checkpoint unusable; rebuilding the partition from the topic");
                        fresh()
                    }
                }
            }
            Some(_) => {
                tracing::warn!(
                    partition,
                    "checkpoint was written for other view definitions; rebuilding the partition from the topic"
                );
                fresh()
            }
            None => fresh(),
        };
        let offset = state.next_offset;
        self.partitions_write().insert(partition, state);
        self.publish_size();
        offset
    }

    /// Removes a partition's state (revoked).
    pub(crate) fn revoke(&self, partition: i32) {
        self.partitions_write().remove(&partition);
        self.publish_size();
    }

    pub(crate) fn assigned(&self, partition: i32) -> bool {
        self.partitions_read().contains_key(&partition)
    }

    /// Partitions the consumer holds now.
    pub fn assigned_partition_count(&self) -> usize {
        self.partitions_read().len()
    }

    /// The partitions this worker owns, with the epoch of the assignment that gave each.
    pub fn owned(&self) -> Vec<Owned> {
        self.partitions_read()
            .iter()
            .map(|(partition, p)| Owned {
                partition: *partition,
                epoch: p.epoch,
            })
            .collect()
    }

    /// Like [`SpeedLayer::pin`], per partition, with the partition's ownership.
    pub(crate) fn pin_owned(&self, view: &str, range: StartRange) -> Option<Vec<(Owned, Pinned)>> {
        let index = *self.inner.names.get(view)?;
        Some(
            self.partitions_read()
                .iter()
                .map(|(partition, p)| {
                    let owned = Owned {
                        partition: *partition,
                        epoch: p.epoch,
                    };
                    (owned, p.views[index].pin(range))
                })
                .collect(),
        )
    }

    pub(crate) fn assigned_partitions(&self) -> Vec<i32> {
        self.partitions_read().keys().copied().collect()
    }

    pub(crate) fn max_event_time(&self, partition: i32) -> Option<EventTime> {
        self.partitions_read()
            .get(&partition)
            .and_then(|p| p.max_event_time)
    }

    /// A snapshot of a partition's state, if it changed since the last one (or `force`).
    pub(crate) fn snapshot(
        &self,
        partition: i32,
        force: bool,
    ) -> Option<checkpoint::PartitionSnapshot> {
        let all = StartRange::new(EventTime::MIN, EventTime::MAX);
        let (next_offset, max_event_time, pinned, seen, seconds, joins) = {
            let mut partitions = self.partitions_write();
            let p = partitions.get_mut(&partition)?;
            if !p.dirty && !force {
                return None;
            }
            // The ids and a joined stream's buffers are copied under the lock (they change
            // with every micro-batch).
            let mut joins = Vec::with_capacity(p.joins.len());
            for (side, state) in self.inner.streams.iter().zip(&p.joins) {
                joins.push(match (side, state) {
                    (Some(side), Some(state)) => match side.snapshot(state) {
                        Ok(s) => Some(s),
                        Err(err) => {
                            tracing::error!(partition, %err, "joined stream's buffers not checkpointed; no checkpoint");
                            return None;
                        }
                    },
                    _ => None,
                });
            }
            p.dirty = false;
            let pinned: Vec<Pinned> = p.views.iter().map(|v| v.pin(all)).collect();
            let seconds = p
                .seconds
                .iter()
                .filter_map(|(topic, s)| {
                    Some(SecondPosition {
                        topic: self.inner.stream_topics.get(topic.checked_sub(1)?)?.clone(),
                        next_offset: s.next_offset,
                        max_event_time: s.max_event_time.map(EventTime::millis),
                    })
                })
                .collect();
            (
                p.next_offset,
                p.max_event_time,
                pinned,
                p.seen.snapshot(),
                seconds,
                joins,
            )
        };
        // Serialized with no lock held.
        Some(checkpoint::PartitionSnapshot {
            format: checkpoint::FORMAT,
            fingerprint: self.inner.fingerprint.clone(),
            partition,
            next_offset,
            max_event_time: max_event_time.map(|t| t.millis()),
            views: pinned.iter().map(Pinned::snapshot).collect(),
            seen,
            seconds,
            joins,
        })
    }

    /// The partial state of `view`'s windows starting in `range`, merged over the owned
    /// partitions among `asked` (every owned partition for `None`); `None` for an unknown view.
    pub fn owned_partials(
        &self,
        view: &str,
        range: StartRange,
        asked: Option<&[i32]>,
    ) -> Option<OwnedPartials> {
        let pinned = self.pin_owned(view, range)?;
        let mut out = OwnedPartials::default();
        let mut sessions = false;
        let mut partials = Vec::new();
        for (owned, pinned) in pinned {
            if asked.is_some_and(|a| !a.contains(&owned.partition)) {
                continue;
            }
            sessions = matches!(pinned.program().view.window, WindowSpec::Session { .. });
            out.owned.push(owned);
            partials.extend(pinned.partials());
        }
        out.partials = merge_states(partials, sessions);
        out.released = self.released(view).unwrap_or_default();
        Some(out)
    }
}

mod joins;
#[cfg(test)]
mod tests;
