//! Applying a micro-batch: the decoded events of every partition polled together, in one
//! record batch, each view's expressions evaluated once for all of them, then each partition's
//! rows folded into that partition's state.
//!
//! ```text
//!  RecordBatch (rows of partitions 3, 7, 3, 12, …) ─► per view: filter + arguments (DataFusion)
//!      │ once, outside the state lock                  typed columns (Bound)
//!      ▼
//!  per partition: write lock ─► offsets, then ViewState::apply_rows(its rows) ─► ViewOutcome
//! ```
//!
//! State stays per partition (a partition moves between workers with exactly the state its
//! checkpointed offset reflects); only the evaluation is shared. A micro-batch spread over many
//! partitions used to pay the batch's fixed costs (building Arrow arrays, evaluating each
//! expression) once per partition: 27,000 instructions each (BENCHMARKS.md).

use std::collections::BTreeMap;

use datafusion::arrow::array::RecordBatch;
use tandem_shared::event::{DecodedEvent, EventBatchBuilder, EventDecoder};
use tandem_shared::time::EventTime;

use crate::SpeedLayer;
use crate::state::{Bound, Evaluated};

/// What applying a micro-batch did to one view, by batch row.
#[derive(Debug, Default)]
pub(crate) struct ViewOutcome {
    pub late: Vec<usize>,
    /// Rows an expression failed on, with the error.
    pub rejected: Vec<(usize, String)>,
}

/// One partition's part of a micro-batch.
#[derive(Debug, Clone, Default)]
pub(crate) struct PartitionRows {
    pub partition: i32,
    /// Its rows of the batch, in offset order.
    pub rows: Vec<usize>,
    /// The last offset polled (decoded or not): the partition resumes after it.
    pub last_offset: i64,
    /// The latest event time among its rows.
    pub max_event_time: Option<EventTime>,
}

/// A micro-batch being read: one record batch for the decoded events of every partition, and
/// which rows are whose.
pub(crate) struct MicroBatch {
    builder: EventBatchBuilder,
    /// Per partition seen: its part, or `None` for a partition this layer does not own.
    index: BTreeMap<i32, Option<usize>>,
    pub(crate) parts: Vec<PartitionRows>,
    /// Per batch row: the message it came from (its position in the poll) and its event time.
    pub(crate) rows: Vec<(usize, EventTime)>,
}

impl MicroBatch {
    pub(crate) fn new(decoder: &EventDecoder, capacity: usize) -> Self {
        Self {
            builder: EventBatchBuilder::new(decoder, capacity),
            index: BTreeMap::new(),
            parts: Vec::new(),
            rows: Vec::with_capacity(capacity),
        }
    }

    /// Notes a polled message of `partition` at `offset`; returns its part, or `None` if
    /// `owned` says the partition is not this layer's (asked once per partition).
    pub(crate) fn polled(
        &mut self,
        partition: i32,
        offset: i64,
        owned: impl FnOnce() -> bool,
    ) -> Option<usize> {
        let parts = &mut self.parts;
        let at = (*self.index.entry(partition).or_insert_with(|| {
            owned().then(|| {
                parts.push(PartitionRows {
                    partition,
                    last_offset: offset,
                    ..PartitionRows::default()
                });
                parts.len() - 1
            })
        }))?;
        let part = &mut self.parts[at];
        part.last_offset = part.last_offset.max(offset);
        Some(at)
    }

    /// Adds a decoded event of part `at` (from [`MicroBatch::polled`]), the poll's message
    /// number `message`.
    pub(crate) fn push(
        &mut self,
        at: usize,
        event: &DecodedEvent<'_>,
        offset: i64,
        message: usize,
    ) {
        let part = &mut self.parts[at];
        self.builder.append(event, part.partition, offset);
        part.rows.push(self.rows.len());
        part.max_event_time = part.max_event_time.max(Some(event.time));
        self.rows.push((message, event.time));
    }

    /// The batch of every decoded event (`None`: none was decoded).
    pub(crate) fn finish(&mut self) -> Option<RecordBatch> {
        (!self.builder.is_empty()).then(|| self.builder.finish())
    }
}

impl SpeedLayer {
    /// Applies one partition's batch (every row) to every view and advances its offset past
    /// `last_offset` (tests' shorthand for a micro-batch of one partition).
    #[cfg(test)]
    pub(crate) fn apply(
        &self,
        partition: i32,
        batch: Option<&RecordBatch>,
        watermark: Option<EventTime>,
        last_offset: i64,
        max_event_time: Option<EventTime>,
    ) -> Vec<ViewOutcome> {
        let part = PartitionRows {
            partition,
            rows: (0..batch.map_or(0, RecordBatch::num_rows)).collect(),
            last_offset,
            max_event_time,
        };
        self.apply_micro_batch(batch, &[part], watermark)
            .pop()
            .unwrap_or_default()
    }

    /// Applies a micro-batch of several partitions: per part, the outcome of each view (none
    /// for a partition this layer does not own). Row numbers are the batch's. If an expression
    /// fails on the batch (a division by zero in one event, say), that view retries row by row
    /// so that only the rows it fails on are rejected.
    pub(crate) fn apply_micro_batch(
        &self,
        batch: Option<&RecordBatch>,
        parts: &[PartitionRows],
        watermark: Option<EventTime>,
    ) -> Vec<Vec<ViewOutcome>> {
        self.count_micro_batch();
        let programs = self.programs();
        // Evaluated before the lock is taken; `None` where evaluation failed.
        let evaluated: Vec<Option<Evaluated>> = match batch {
            None => Vec::new(),
            Some(batch) => programs
                .iter()
                .map(|program| Evaluated::new(program, batch).ok())
                .collect(),
        };
        let bound: Vec<Option<Bound<'_>>> = match batch {
            None => Vec::new(),
            Some(batch) => evaluated
                .iter()
                .zip(programs)
                .map(|(e, program)| e.as_ref().and_then(|e| e.bind(program, batch).ok()))
                .collect(),
        };
        let coverage = self.coverage_read().clone();
        let mut out = Vec::with_capacity(parts.len());
        for part in parts {
            // Locked per partition, as before: a query pins windows between two partitions
            // instead of waiting for the whole micro-batch.
            let mut partitions = self.partitions_write();
            let Some(p) = partitions.get_mut(&part.partition) else {
                out.push(Vec::new());
                continue;
            };
            p.next_offset = Some(part.last_offset + 1);
            p.max_event_time = p.max_event_time.max(part.max_event_time);
            p.dirty = true;
            let Some(batch) = batch else {
                out.push(Vec::new());
                continue;
            };
            let mut outcomes = Vec::with_capacity(programs.len());
            for (v, (view, covered)) in p.views.iter_mut().zip(&coverage).enumerate() {
                let outcome = match bound.get(v).and_then(Option::as_ref) {
                    Some(columns) => ViewOutcome {
                        late: view
                            .apply_rows(columns, part.rows.iter().copied(), watermark, covered)
                            .late_rows,
                        rejected: Vec::new(),
                    },
                    None => {
                        let mut outcome = ViewOutcome::default();
                        for &row in &part.rows {
                            match view.apply(&batch.slice(row, 1), watermark, covered) {
                                Ok(applied) if !applied.late_rows.is_empty() => {
                                    outcome.late.push(row)
                                }
                                Ok(_) => {}
                                Err(err) => outcome.rejected.push((row, err.to_string())),
                            }
                        }
                        outcome
                    }
                };
                outcomes.push(outcome);
            }
            out.push(outcomes);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use tandem_shared::schema::FieldType;
    use tandem_shared::testing;

    use super::*;

    /// Two views: one whose filter fails on some rows (b = 0), one per-group session view.
    fn layer() -> (SpeedLayer, EventDecoder) {
        let schema = testing::schema(&[
            ("a", FieldType::Int64),
            ("b", FieldType::Int64),
            ("user", FieldType::String),
        ]);
        let ratio = testing::view(
            &schema,
            "ratio",
            testing::tumbling("1m"),
            &["user"],
            Some("a / b > 1"),
            &["count(*) AS n", "sum(a) AS a"],
        );
        let sessions = testing::view(
            &schema,
            "sessions",
            testing::sessions("30s"),
            &["user"],
            None,
            &["count(*) AS n", "max(a) AS top"],
        );
        let speed =
            SpeedLayer::compile(&[ratio, sessions], &schema).unwrap_or_else(|e| panic!("{e}"));
        (speed, EventDecoder::new(schema))
    }

    /// Each partition's snapshot, entries in a fixed order (group maps iterate in hash order).
    fn state(speed: &SpeedLayer, partition: i32) -> String {
        let mut snapshot = speed
            .snapshot(partition, true)
            .unwrap_or_else(|| panic!("partition {partition} is owned"));
        for view in &mut snapshot.views {
            view.entries.sort_by_key(|e| format!("{e:?}"));
        }
        format!("{:?} {:?}", snapshot.next_offset, snapshot.views)
    }

    #[test]
    fn one_evaluation_for_all_partitions_equals_one_per_partition() {
        // Events of partitions 0, 1 and 5 interleaved, as a poll returns them; partition 5 is not
        // owned. Some are late (before the watermark), some fail the filter's division.
        let events: Vec<(i32, String)> = (0..60)
            .map(|i| {
                let partition = [0, 1, 5][i % 3];
                let ts = 1_000 * i as i64 + if i % 7 == 0 { -40_000 } else { 0 };
                let json = format!(
                    r#"{{"ts":{ts},"a":{},"b":{},"user":"u{}"}}"#,
                    i * 3,
                    i % 4,
                    i % 5
                );
                (partition, json)
            })
            .collect();
        let watermark = Some(EventTime(20_000));
        let (together, decoder) = layer();
        let (apart, _) = layer();
        for speed in [&together, &apart] {
            speed.assign(0, None, 0);
            speed.assign(1, None, 0);
        }

        // One batch of the owned partitions' events, in poll order.
        let mut micro = MicroBatch::new(&decoder, events.len());
        for (i, (partition, json)) in events.iter().enumerate() {
            let Some(at) = micro.polled(*partition, i as i64, || *partition != 5) else {
                continue;
            };
            let event = decoder
                .decode(json.as_bytes())
                .unwrap_or_else(|e| panic!("{e}"));
            micro.push(at, &event, i as i64, i);
        }
        let batch = micro.finish();
        let parts = micro.parts.clone();
        assert_eq!(parts.len(), 2, "partition 5 is not owned");
        let outcomes = together.apply_micro_batch(batch.as_ref(), &parts, watermark);
        assert_eq!(outcomes.len(), 2);

        // The oracle: each partition's events in a batch of their own.
        for (part, outcome) in parts.iter().zip(&outcomes) {
            let own: Vec<&str> = part
                .rows
                .iter()
                .map(|&row| events[micro.rows[row].0].1.as_str())
                .collect();
            let alone = testing::batch(&decoder, part.partition, 0, &own);
            let expected = apart.apply(
                part.partition,
                Some(&alone),
                watermark,
                part.last_offset,
                part.max_event_time,
            );
            // Same rows late and rejected, numbered by the shared batch vs the partition's own.
            for (got, want) in outcome.iter().zip(&expected) {
                let late: Vec<usize> = want.late.iter().map(|&r| part.rows[r]).collect();
                assert_eq!(got.late, late);
                let rejected: Vec<(usize, String)> = want
                    .rejected
                    .iter()
                    .map(|(r, e)| (part.rows[*r], e.clone()))
                    .collect();
                assert_eq!(got.rejected, rejected);
            }
            assert_eq!(
                state(&together, part.partition),
                state(&apart, part.partition)
            );
        }
        // The workload exercises what it claims to: late rows, rejected rows, applied rows.
        let count =
            |f: fn(&ViewOutcome) -> usize| -> usize { outcomes.iter().flatten().map(f).sum() };
        assert!(count(|o| o.late.len()) > 0);
        assert!(count(|o| o.rejected.len()) > 0);
        let ratio_rows = together
            .query(
                "ratio",
                tandem_shared::coverage::StartRange::new(EventTime::MIN, EventTime::MAX),
            )
            .unwrap_or_default();
        assert!(!ratio_rows.is_empty());
    }
}
