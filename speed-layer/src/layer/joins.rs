//! The layer's joined streams (see [`crate::joined`]): which views join which second topic,
//! where each partition of a second topic stands, the buffers' memory, and their advance as
//! event time moves.

use std::collections::BTreeMap;
use std::sync::Arc;

use tandem_shared::time::EventTime;

use super::{Second, SpeedLayer};
use crate::checkpoint::{self, SecondPosition};
use crate::joined::{JoinState, StreamSide};
use crate::state;

impl SpeedLayer {
    /// View `v`'s joined stream.
    pub(crate) fn stream(&self, v: usize) -> Option<&Arc<StreamSide>> {
        self.inner.streams.get(v)?.as_ref()
    }

    /// The second topics of the views' joined streams; the consumer reads them beside the
    /// events (topic `i` here is its topic `i + 1`).
    pub fn stream_topics(&self) -> &[String] {
        &self.inner.stream_topics
    }

    /// The decoder of the consumer's topic `topic` (`≥ 1`: a second topic).
    pub(crate) fn stream_side(&self, topic: usize) -> Option<&Arc<StreamSide>> {
        self.inner
            .streams
            .iter()
            .flatten()
            .find(|s| s.topic == topic)
    }

    /// Where partition `partition` of the consumer's topic `topic` (`≥ 1`) resumes, and its
    /// latest event time.
    pub(crate) fn second(&self, partition: i32, topic: usize) -> Option<Second> {
        self.partitions_read()
            .get(&partition)?
            .seconds
            .get(&topic)
            .copied()
    }

    /// Bytes buffered by joined streams over all partitions.
    pub fn join_bytes(&self) -> usize {
        self.join_memory().1
    }

    /// Rows buffered by joined streams over all partitions (both sides), and their bytes.
    pub fn join_memory(&self) -> (usize, usize) {
        self.partitions_read()
            .values()
            .flat_map(|p| p.joins.iter().flatten())
            .fold((0, 0), |(n, b), j| (n + j.rows(), b + j.bytes()))
    }

    /// After a micro-batch moved event-time progress to `progress`: every partition's joined
    /// streams forget what no later row can match, and a `left` join's rows that never matched
    /// count, against `watermark`, the progress before the micro-batch (see
    /// [`crate::joined`]).
    pub(crate) fn advance_joins(&self, progress: EventTime, watermark: Option<EventTime>) {
        if self.inner.streams.iter().all(Option::is_none) {
            return;
        }
        let coverage = self.coverage_read().clone();
        let mut partitions = self.partitions_write();
        for p in partitions.values_mut() {
            for (v, side) in self.inner.streams.iter().enumerate() {
                let (Some(side), Some(Some(state))) = (side, p.joins.get_mut(v)) else {
                    continue;
                };
                let program = &self.inner.programs[v];
                let horizon = program.view.join_horizon(progress);
                match side.advance(state, horizon) {
                    Ok(None) => {}
                    Ok(Some(left)) => {
                        crate::joined::apply_joined(
                            program,
                            &mut p.views[v],
                            &left,
                            watermark,
                            &coverage[v],
                        );
                        p.dirty = true;
                    }
                    Err(err) => {
                        tracing::error!(view = %program.view.name, %err, "joined stream: left rows not built");
                    }
                }
            }
        }
    }

    pub(super) fn fresh_joins(&self) -> Vec<Option<JoinState>> {
        self.inner
            .streams
            .iter()
            .map(|s| s.as_ref().map(|s| s.state()))
            .collect()
    }

    pub(super) fn restore_joins(
        &self,
        snapshots: &[Option<checkpoint::JoinSnapshot>],
    ) -> Result<Vec<Option<JoinState>>, state::Error> {
        self.inner
            .streams
            .iter()
            .enumerate()
            .map(
                |(v, side)| match (side, snapshots.get(v).and_then(Option::as_ref)) {
                    (Some(side), Some(snapshot)) => {
                        side.restore(snapshot)
                            .map(Some)
                            .map_err(|e| state::Error::Checkpoint {
                                view: self.inner.programs[v].view.name.clone(),
                                detail: format!("joined stream's buffers: {e}"),
                            })
                    }
                    (Some(side), None) => Ok(Some(side.state())),
                    (None, _) => Ok(None),
                },
            )
            .collect()
    }

    pub(super) fn restore_seconds(&self, positions: &[SecondPosition]) -> BTreeMap<usize, Second> {
        positions
            .iter()
            .filter_map(|s| {
                let at = self
                    .inner
                    .stream_topics
                    .iter()
                    .position(|t| *t == s.topic)?;
                Some((
                    at + 1,
                    Second {
                        next_offset: s.next_offset,
                        max_event_time: s.max_event_time.map(EventTime),
                    },
                ))
            })
            .collect()
    }
}
