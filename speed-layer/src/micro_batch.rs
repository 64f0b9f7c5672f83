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

use datafusion::arrow::array::{
    Array, ArrayRef, Int64Array, RecordBatch, StringArray, StringViewArray,
    TimestampMillisecondArray,
};
use tandem_shared::event::{DecodedEvent, EventBatchBuilder, EventDecoder};
use tandem_shared::time::EventTime;

use crate::SpeedLayer;
use crate::program::ViewProgram;
use crate::state::{Bound, Evaluated};
use crate::tables::{Enriched, Lookup};

/// What applying a micro-batch did to one view, by batch row.
#[derive(Debug, Default)]
pub(crate) struct ViewOutcome {
    pub late: Vec<usize>,
    /// A joined stream's second-topic rows (numbered as their [`SecondBatch`]'s) too late
    /// to be joined.
    pub late_second: Vec<usize>,
    /// Rows an expression failed on, with the error.
    pub rejected: Vec<(usize, String)>,
}

/// A joined stream's second topic in a micro-batch: its decoded events and whose they are.
#[derive(Debug, Default)]
pub(crate) struct SecondBatch {
    /// The topic's index among the consumer's (`≥ 1`).
    pub topic: usize,
    pub batch: Option<RecordBatch>,
    pub parts: Vec<PartitionRows>,
}

/// One partition's part of a micro-batch.
#[derive(Debug, Clone, Default)]
pub(crate) struct PartitionRows {
    pub partition: i32,
    /// Its rows of the batch, in offset order.
    pub rows: Vec<usize>,
    /// The last offset polled (decoded or not): the partition resumes after it; negative
    /// for a part with no message of this topic (only a second topic's).
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
    /// `owned` says the partition is not this layer's (asked once per partition). Inlined:
    /// it runs once per message (callgrind: +30 instructions per event when it was not).
    #[inline]
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

    /// Makes sure owned `partition` has a part, polled or not (a partition with messages of a
    /// second topic only).
    pub(crate) fn touch(&mut self, partition: i32) {
        let parts = &mut self.parts;
        self.index.entry(partition).or_insert_with(|| {
            parts.push(PartitionRows {
                partition,
                last_offset: -1,
                ..PartitionRows::default()
            });
            Some(parts.len() - 1)
        });
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

/// Applies one partition's batch (every row) to every view and advances its offset past
/// `last_offset` (tests' shorthand for a micro-batch of one partition).
#[cfg(test)]
pub(crate) fn apply_one(
    speed: &SpeedLayer,
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
    apply(speed, batch, &[part], &[], watermark)
        .pop()
        .unwrap_or_default()
}

/// Applies a micro-batch of several partitions: per part, the outcome of each view (none
/// for a partition this layer does not own). Row numbers are the batch's. If an expression
/// fails on some events (a division by zero, say), only those rows are rejected (see
/// [`evaluate`]).
pub(crate) fn apply(
    speed: &SpeedLayer,
    batch: Option<&RecordBatch>,
    parts: &[PartitionRows],
    seconds: &[SecondBatch],
    watermark: Option<EventTime>,
) -> Vec<Vec<ViewOutcome>> {
    speed.count_micro_batch();
    let programs = speed.programs();
    // Evaluated before the lock is taken.
    // Views with the same joins share one joined micro-batch (the same columns appended).
    let mut joined: Vec<(&[Lookup], Result<Enriched, String>)> = Vec::new();
    let mut evaluations: Vec<Evaluation> = Vec::with_capacity(programs.len());
    for (v, program) in programs.iter().enumerate() {
        let mut evaluation = Evaluation::default();
        // A joined stream's view evaluates its joined rows, per partition (below).
        if let Some(batch) = batch.filter(|_| program.view.join_stream.is_none()) {
            let lookups = speed.lookups(v);
            if lookups.is_empty() {
                evaluate(program, batch, 0, batch.num_rows(), &mut evaluation);
            } else {
                let at = match joined.iter().position(|(l, _)| same_joins(l, lookups)) {
                    Some(at) => at,
                    None => {
                        let enriched = crate::tables::enrich(batch, lookups, &program.input)
                            .map_err(|e| format!("joining dimension tables: {e}"));
                        joined.push((lookups, enriched));
                        joined.len() - 1
                    }
                };
                evaluate_joined(program, &joined[at].1, batch, &mut evaluation);
            }
        }
        evaluations.push(evaluation);
    }
    // Each piece bound to its types once; evaluation checked that binding succeeds.
    let bound: Vec<Vec<BoundPiece<'_>>> = evaluations
        .iter()
        .zip(programs)
        .map(|(evaluation, program)| {
            evaluation
                .pieces
                .iter()
                .map(|piece| {
                    let columns = piece
                        .evaluated
                        .bind(program, &piece.batch)
                        .map_err(|e| e.to_string());
                    (piece.start, piece.batch.num_rows(), columns)
                })
                .collect()
        })
        .collect();
    let coverage = speed.coverage_read().clone();
    // De-duplication's columns: each row's id and event time.
    let dedup = speed.dedup().and_then(|d| {
        let batch = batch?;
        let ids = IdColumn::of(batch.column_by_name(&d.field)?)?;
        let times = batch
            .column_by_name(&d.time_field)?
            .as_any()
            .downcast_ref::<TimestampMillisecondArray>()?;
        Some((d.horizon, ids, times))
    });
    let mut out = Vec::with_capacity(parts.len());
    for part in parts {
        // Locked per partition, as before: a query pins windows between two partitions
        // instead of waiting for the whole micro-batch.
        let mut partitions = speed.partitions_write();
        let Some(p) = partitions.get_mut(&part.partition) else {
            out.push(Vec::new());
            continue;
        };
        if part.last_offset >= 0 {
            p.next_offset = Some(part.last_offset + 1);
        }
        p.max_event_time = p.max_event_time.max(part.max_event_time);
        p.dirty = true;
        for second in seconds {
            if let Some(q) = second.parts.iter().find(|q| q.partition == part.partition) {
                let at = p.seconds.entry(second.topic).or_default();
                at.next_offset = Some(q.last_offset + 1);
                at.max_event_time = at.max_event_time.max(q.max_event_time);
            }
        }
        // Copies of an event seen within the horizon are dropped before any view counts them.
        let kept: std::borrow::Cow<'_, [usize]> = match &dedup {
            None => std::borrow::Cow::Borrowed(&part.rows),
            Some((horizon, ids, times)) => {
                let cutoff = p.max_event_time.map_or(EventTime::MIN, |t| {
                    EventTime(t.millis().saturating_sub(horizon.millis()))
                });
                let mut kept = Vec::with_capacity(part.rows.len());
                let mut copies = 0u64;
                for &row in &part.rows {
                    let new = match ids.id(row) {
                        // Events without an id are all kept, as the batch layer keeps them.
                        None => true,
                        Some(id) => p.seen.admit(&id, EventTime(times.value(row)), cutoff),
                    };
                    if new {
                        kept.push(row);
                    } else {
                        copies += 1;
                    }
                }
                if copies > 0 {
                    for program in programs {
                        metrics::counter!("tandem_speed_duplicates_total", "view" => program.view.name.clone())
                            .increment(copies);
                    }
                }
                std::borrow::Cow::Owned(kept)
            }
        };
        let mut outcomes = Vec::with_capacity(programs.len());
        for (v, (view, covered)) in p.views.iter_mut().zip(&coverage).enumerate() {
            let mut outcome = ViewOutcome::default();
            for (start, len, columns) in bound.get(v).into_iter().flatten() {
                // The part's rows in this piece (rows are in batch order).
                let from = kept.partition_point(|r| r < start);
                let to = kept.partition_point(|r| *r < start + len);
                let mut rows = &kept[from..to];
                // `on_missing = "drop"`: rows a joined table has no row for are not counted.
                let matched: Vec<usize>;
                if let Some(m) = evaluations.get(v).and_then(|e| e.matched.as_ref()) {
                    matched = rows.iter().copied().filter(|r| m[*r]).collect();
                    rows = &matched;
                }
                match columns {
                    Ok(columns) => {
                        let local = rows.iter().map(|r| r - start);
                        let applied = view.apply_rows(columns, local, watermark, covered);
                        outcome
                            .late
                            .extend(applied.late_rows.iter().map(|r| r + start));
                    }
                    Err(err) => outcome
                        .rejected
                        .extend(rows.iter().map(|r| (*r, err.clone()))),
                }
            }
            if let (Some(side), Some(Some(state))) = (speed.stream(v), p.joins.get_mut(v)) {
                let second = seconds
                    .iter()
                    .find(|s| s.topic == side.topic)
                    .and_then(|s| {
                        let rows = &s.parts.iter().find(|q| q.partition == part.partition)?.rows;
                        Some((s.batch.as_ref()?, rows.as_slice()))
                    });
                match side.join(state, batch.map(|b| (b, &kept[..])), second) {
                    Ok(joined) => {
                        outcome.late.extend(joined.late_first);
                        outcome.late_second = joined.late_second;
                        if let Some(rows) = &joined.batch {
                            crate::joined::apply_joined(
                                &programs[v],
                                view,
                                rows,
                                watermark,
                                covered,
                            );
                        }
                    }
                    Err(err) => {
                        let err = format!("joined stream: {err}");
                        outcome
                            .rejected
                            .extend(kept.iter().map(|r| (*r, err.clone())));
                    }
                }
            }
            if let Some(evaluation) = evaluations.get(v) {
                outcome.rejected.extend(
                    evaluation
                        .failed
                        .iter()
                        .filter(|(row, _)| kept.binary_search(row).is_ok())
                        .cloned(),
                );
            }
            outcome.late.sort_unstable();
            outcome.rejected.sort_by_key(|(row, _)| *row);
            outcomes.push(outcome);
        }
        out.push(outcomes);
    }
    out
}

/// The id column of a micro-batch, its type resolved once per batch (an id field is a string
/// or an int64; see the schema's check).
pub(crate) enum IdColumn<'a> {
    Utf8(&'a StringArray),
    Utf8View(&'a StringViewArray),
    Int64(&'a Int64Array),
}

impl<'a> IdColumn<'a> {
    pub(crate) fn of(ids: &'a ArrayRef) -> Option<Self> {
        let any = ids.as_any();
        if let Some(a) = any.downcast_ref::<StringArray>() {
            return Some(Self::Utf8(a));
        }
        if let Some(a) = any.downcast_ref::<StringViewArray>() {
            return Some(Self::Utf8View(a));
        }
        any.downcast_ref::<Int64Array>().map(Self::Int64)
    }

    /// The id of `row` as bytes (a string's UTF-8, an integer's little-endian bytes); `None`
    /// for a null id.
    pub(crate) fn id(&self, row: usize) -> Option<std::borrow::Cow<'a, [u8]>> {
        use std::borrow::Cow;
        match self {
            Self::Utf8(a) => a
                .is_valid(row)
                .then(|| Cow::Borrowed(a.value(row).as_bytes())),
            Self::Utf8View(a) => a
                .is_valid(row)
                .then(|| Cow::Borrowed(a.value(row).as_bytes())),
            Self::Int64(a) => a
                .is_valid(row)
                .then(|| Cow::Owned(a.value(row).to_le_bytes().to_vec())),
        }
    }
}

/// A view's expressions over a micro-batch, in pieces around the rows they fail on.
#[derive(Default)]
pub(crate) struct Evaluation {
    pub(crate) pieces: Vec<Piece>,
    /// Rows an expression fails on, with the error.
    pub(crate) failed: Vec<(usize, String)>,
    /// A view that drops events without a joined row: per row, whether it has every one.
    matched: Option<Vec<bool>>,
}

/// Whether two views join the same tables on the same columns.
fn same_joins(a: &[Lookup], b: &[Lookup]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| std::sync::Arc::ptr_eq(&x.table, &y.table) && x.on == y.on)
}

/// [`evaluate`] over the micro-batch joined with the view's dimension tables.
fn evaluate_joined(
    program: &ViewProgram,
    enriched: &Result<Enriched, String>,
    batch: &RecordBatch,
    evaluation: &mut Evaluation,
) {
    match enriched {
        Ok(enriched) => {
            if enriched.missing > 0 {
                metrics::counter!("tandem_join_missing_total", "view" => program.view.name.clone())
                    .increment(enriched.missing);
            }
            evaluation.matched =
                crate::tables::kept(program.view.on_missing, enriched).map(<[bool]>::to_vec);
            evaluate(
                program,
                &enriched.batch,
                0,
                enriched.batch.num_rows(),
                evaluation,
            );
        }
        Err(err) => {
            evaluation.failed = (0..batch.num_rows()).map(|r| (r, err.clone())).collect();
        }
    }
}

/// A piece's first row, its row count, and its columns bound to their types.
type BoundPiece<'a> = (usize, usize, Result<Bound<'a>, String>);

/// The expressions evaluated over the rows `start..start + batch.num_rows()`.
pub(crate) struct Piece {
    start: usize,
    pub(crate) batch: RecordBatch,
    pub(crate) evaluated: Evaluated,
}

/// Evaluates `program` over `len` rows of `batch` from `start`. Where that fails (an expression
/// failing on some event), over each half, down to single rows: a failing row is rejected with
/// its error, and each failing row costs about two evaluations per halving (log2 of the batch),
/// not one evaluation per row of the batch.
pub(crate) fn evaluate(
    program: &ViewProgram,
    batch: &RecordBatch,
    start: usize,
    len: usize,
    out: &mut Evaluation,
) {
    if len == 0 {
        return;
    }
    let slice = batch.slice(start, len);
    let evaluated = Evaluated::new(program, &slice).and_then(|evaluated| {
        evaluated.bind(program, &slice)?;
        Ok(evaluated)
    });
    match evaluated {
        Ok(evaluated) => out.pieces.push(Piece {
            start,
            batch: slice,
            evaluated,
        }),
        Err(err) if len == 1 => out.failed.push((start, err.to_string())),
        Err(_) => {
            let half = len / 2;
            evaluate(program, batch, start, half, out);
            evaluate(program, batch, start + half, len - half, out);
        }
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
        let outcomes = apply(&together, batch.as_ref(), &parts, &[], watermark);
        assert_eq!(outcomes.len(), 2);

        // The oracle: each partition's events in a batch of their own.
        for (part, outcome) in parts.iter().zip(&outcomes) {
            let own: Vec<&str> = part
                .rows
                .iter()
                .map(|&row| events[micro.rows[row].0].1.as_str())
                .collect();
            let alone = testing::batch(&decoder, part.partition, 0, &own);
            let expected = apply_one(
                &apart,
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
        // Exactly the events with b = 0 fail `a / b` (the ratio view is the first), whatever
        // their neighbours: the halving around failing rows loses and rejects nothing else.
        let mut rejected: Vec<usize> = outcomes
            .iter()
            .flat_map(|views| &views[0].rejected)
            .map(|(row, _)| micro.rows[*row].0)
            .collect();
        rejected.sort_unstable();
        let zero_b: Vec<usize> = (0..events.len())
            .filter(|i| i % 4 == 0 && i % 3 != 2)
            .collect();
        assert_eq!(rejected, zero_b);
        assert!(outcomes.iter().all(|views| views[1].rejected.is_empty()));
        let ratio_rows = together
            .query(
                "ratio",
                tandem_shared::coverage::StartRange::new(EventTime::MIN, EventTime::MAX),
            )
            .unwrap_or_default();
        assert!(!ratio_rows.is_empty());
    }
}
