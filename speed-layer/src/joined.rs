//! Joined streams in the speed layer: a view's second topic, the per-partition buffers of
//! both sides (an [`IntervalJoin`] of Arrow rows), and the joined rows they make, as one
//! record batch in the view's input schema.
//!
//! ```text
//!  first-topic rows of a partition (after de-duplication) ─┐ time < horizon ─► late topic
//!  second-topic rows of the same partition number ─────────┤
//!                                                          ▼
//!              IntervalJoin (key → rows; rows as arrow::row bytes) ─► pairs
//!  pairs ─► RecordBatch: first-topic columns, `payments` struct, `payments.amount`, … ─► view
//!  event-time progress ─► advance(horizon) ─► `left`: events never matched, NULL columns
//! ```
//!
//! The horizon is the view's `join_horizon` (progress − allowed lateness): a row before it
//! may have lost matches already dropped, so it is late for the view; a joined row's time is
//! the first side's, at least `horizon − within`, and the view's watermark is held back by
//! `within` (`ViewDefinition::watermark`), so no joined row is late for its window. Left rows
//! are emitted after a micro-batch moved progress, against the watermark before it moved.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, Int64Array, RecordBatch, StructArray, TimestampMillisecondArray,
    UInt32Array, new_null_array,
};
use datafusion::arrow::compute::take_record_batch;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::arrow::row::{OwnedRow, RowConverter, SortField};
use serde::{Deserialize, Serialize};
use tandem_shared::event::EventDecoder;
use tandem_shared::join_stream::{JoinKind, JoinStream};
use tandem_shared::schema::EventSchema;
use tandem_shared::time::EventTime;

use crate::interval::IntervalJoin;
use crate::micro_batch::{Evaluation, IdColumn, evaluate};
use crate::program::ViewProgram;

/// A join key: the `on` value's bytes (a string's UTF-8, an integer's little-endian bytes);
/// `None` for NULL, which matches nothing.
type Key = Option<Box<[u8]>>;

/// Per-row bookkeeping a buffered row costs beyond its bytes (the row's header, its place in
/// the key's list and the expiry index).
const ROW_OVERHEAD: usize = 96;

/// The buffers of one view's join over one partition.
#[derive(Debug)]
pub(crate) struct JoinState {
    buffer: IntervalJoin<Key, OwnedRow, OwnedRow>,
    /// The horizon the buffers were last advanced to; rows before it are late.
    horizon: Option<EventTime>,
}

impl JoinState {
    pub(crate) fn bytes(&self) -> usize {
        self.buffer.bytes()
    }

    pub(crate) fn rows(&self) -> usize {
        self.buffer.len()
    }
}

/// A checkpoint of a [`JoinState`]: each side's buffered rows as Arrow IPC (their columns,
/// `__time`, and for the first side `__matched`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JoinSnapshot {
    pub horizon: Option<i64>,
    pub first: Vec<u8>,
    pub second: Vec<u8>,
}

/// What one partition's micro-batch made of one view's join.
#[derive(Debug, Default)]
pub(crate) struct Joined {
    /// The joined rows, in the view's input schema (`None`: none).
    pub(crate) batch: Option<RecordBatch>,
    /// First-topic rows (numbered as the micro-batch's) before the horizon.
    pub(crate) late_first: Vec<usize>,
    /// Second-topic rows (numbered as the second batch's) before the horizon.
    pub(crate) late_second: Vec<usize>,
}

/// A view's joined stream as the speed layer runs it.
#[derive(Debug)]
pub(crate) struct StreamSide {
    pub(crate) stream: JoinStream,
    /// The second topic's index among the consumer's topics (0 is the events').
    pub(crate) topic: usize,
    /// Decodes the second topic.
    pub(crate) decoder: Arc<EventDecoder>,
    events: SchemaRef,
    time_field: String,
    first: RowConverter,
    second: RowConverter,
    /// The view's input: the event columns, then the side's struct and flat columns.
    input: SchemaRef,
}

fn rows_of(converter: &RowConverter, columns: &[ArrayRef]) -> Result<Vec<OwnedRow>, ArrowError> {
    let rows = converter.convert_columns(columns)?;
    Ok(rows.iter().map(|r| r.owned()).collect())
}

fn times(batch: &RecordBatch, field: &str) -> Result<TimestampMillisecondArray, ArrowError> {
    batch
        .column_by_name(field)
        .and_then(|c| c.as_any().downcast_ref::<TimestampMillisecondArray>())
        .cloned()
        .ok_or_else(|| ArrowError::SchemaError(format!("no event-time column `{field}`")))
}

fn keys(batch: &RecordBatch, on: &str) -> Result<Vec<Key>, ArrowError> {
    let column = batch
        .column_by_name(on)
        .ok_or_else(|| ArrowError::SchemaError(format!("no join column `{on}`")))?;
    let ids = IdColumn::of(column)
        .ok_or_else(|| ArrowError::SchemaError("a join key is a string or an int64".into()))?;
    Ok((0..batch.num_rows())
        .map(|r| ids.id(r).map(|k| Box::from(k.as_ref())))
        .collect())
}

impl StreamSide {
    /// The side of a view whose input schema is `input`, over events of `schema`.
    pub(crate) fn new(
        stream: &JoinStream,
        topic: usize,
        schema: &EventSchema,
        input: SchemaRef,
    ) -> Result<Self, ArrowError> {
        let events = schema.arrow_schema();
        let sort = |fields: Vec<DataType>| {
            RowConverter::new(fields.into_iter().map(SortField::new).collect())
        };
        let first = sort(
            events
                .fields()
                .iter()
                .map(|f| f.data_type().clone())
                .collect(),
        )?;
        let second = sort(
            stream
                .side
                .fields
                .iter()
                .map(|(_, t)| t.arrow_type())
                .collect(),
        )?;
        let decoder =
            EventDecoder::with_format(Arc::clone(stream.side.schema()), &stream.side.format())
                .map_err(|e| ArrowError::SchemaError(e.to_string()))?;
        Ok(Self {
            stream: stream.clone(),
            topic,
            decoder: Arc::new(decoder),
            events,
            time_field: schema.time_field.clone(),
            first,
            second,
            input,
        })
    }

    /// A fresh partition's buffers.
    pub(crate) fn state(&self) -> JoinState {
        JoinState {
            buffer: IntervalJoin::new(self.stream.within.millis()),
            horizon: None,
        }
    }

    /// The side's declared columns of a decoded second-topic batch.
    fn side_columns(&self, batch: &RecordBatch) -> Result<Vec<ArrayRef>, ArrowError> {
        self.stream
            .side
            .fields
            .iter()
            .map(|(name, _)| {
                batch
                    .column_by_name(name)
                    .cloned()
                    .ok_or_else(|| ArrowError::SchemaError(format!("no column `{name}`")))
            })
            .collect()
    }

    /// Feeds one partition's rows of a micro-batch: `first_rows` of the events' batch and
    /// `second_rows` of the second topic's; returns the pairs they made as joined rows, and
    /// the rows that came too late to be joined.
    pub(crate) fn join(
        &self,
        state: &mut JoinState,
        first: Option<(&RecordBatch, &[usize])>,
        second: Option<(&RecordBatch, &[usize])>,
    ) -> Result<Joined, ArrowError> {
        let mut out = Joined::default();
        let mut pairs = Vec::new();
        let late = |t: i64| state.horizon.is_some_and(|h| t < h.millis());
        if let Some((batch, rows)) = first.filter(|(_, r)| !r.is_empty()) {
            let taken = take(batch, rows)?;
            let (t, k) = (
                times(&taken, &self.time_field)?,
                keys(&taken, &self.stream.on)?,
            );
            let owned = rows_of(&self.first, taken.columns())?;
            for (i, (row, key)) in owned.into_iter().zip(k).enumerate() {
                if late(t.value(i)) {
                    out.late_first.push(rows[i]);
                    continue;
                }
                let size = row.as_ref().len() + ROW_OVERHEAD;
                pairs.extend(state.buffer.first(key, t.value(i), row, size));
            }
        }
        if let Some((batch, rows)) = second.filter(|(_, r)| !r.is_empty()) {
            let taken = take(batch, rows)?;
            let t = times(&taken, &self.stream.side.schema().time_field)?;
            let k = keys(&taken, &self.stream.on)?;
            let owned = rows_of(&self.second, &self.side_columns(&taken)?)?;
            for (i, (row, key)) in owned.into_iter().zip(k).enumerate() {
                if late(t.value(i)) {
                    out.late_second.push(rows[i]);
                    continue;
                }
                // A NULL key matches nothing: not buffered (nothing is lost).
                if key.is_some() {
                    let size = row.as_ref().len() + ROW_OVERHEAD;
                    pairs.extend(state.buffer.second(key, t.value(i), row, size));
                }
            }
        }
        if !pairs.is_empty() {
            let (firsts, seconds): (Vec<OwnedRow>, Vec<OwnedRow>) = pairs.into_iter().unzip();
            out.batch = Some(self.build(&firsts, Some(seconds.as_slice()))?);
        }
        Ok(out)
    }

    /// Moves the buffers to `horizon`: drops what no later row can match; for a `left` join,
    /// returns the first-topic rows dropped without a match, their second-side columns NULL.
    pub(crate) fn advance(
        &self,
        state: &mut JoinState,
        horizon: EventTime,
    ) -> Result<Option<RecordBatch>, ArrowError> {
        if state.horizon.is_some_and(|h| h >= horizon) {
            return Ok(None);
        }
        state.horizon = Some(horizon);
        let unmatched = state.buffer.advance(horizon.millis());
        if self.stream.kind == JoinKind::Inner || unmatched.is_empty() {
            return Ok(None);
        }
        self.build(&unmatched, None).map(Some)
    }

    /// Joined rows: the first side's columns, then the side's struct and flat columns (NULL
    /// without `seconds`).
    fn build(
        &self,
        firsts: &[OwnedRow],
        seconds: Option<&[OwnedRow]>,
    ) -> Result<RecordBatch, ArrowError> {
        let mut columns = self.first.convert_rows(firsts.iter().map(OwnedRow::row))?;
        let side: Vec<ArrayRef> = match seconds {
            Some(seconds) => self
                .second
                .convert_rows(seconds.iter().map(OwnedRow::row))?,
            None => self
                .stream
                .side
                .fields
                .iter()
                .map(|(_, t)| new_null_array(&t.arrow_type(), firsts.len()))
                .collect(),
        };
        let DataType::Struct(fields) = self.input.field(columns.len()).data_type() else {
            return Err(ArrowError::SchemaError(format!(
                "joined stream `{}`: no struct column in the view's input",
                self.stream.side.name
            )));
        };
        columns.push(Arc::new(StructArray::try_new(
            fields.clone(),
            side.clone(),
            None,
        )?));
        columns.extend(side);
        RecordBatch::try_new(Arc::clone(&self.input), columns)
    }

    /// The buffers as a checkpoint keeps them.
    pub(crate) fn snapshot(&self, state: &JoinState) -> Result<JoinSnapshot, ArrowError> {
        let firsts: Vec<(i64, bool, &OwnedRow)> = state.buffer.firsts().collect();
        let mut first = self
            .first
            .convert_rows(firsts.iter().map(|(_, _, r)| r.row()))?;
        first.push(Arc::new(Int64Array::from_iter_values(
            firsts.iter().map(|(t, _, _)| *t),
        )));
        first.push(Arc::new(BooleanArray::from(
            firsts.iter().map(|(_, m, _)| *m).collect::<Vec<_>>(),
        )));
        let mut fields: Vec<Field> = self
            .events
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect();
        fields.push(Field::new("__time", DataType::Int64, false));
        fields.push(Field::new("__matched", DataType::Boolean, false));
        let first = ipc(Arc::new(Schema::new(fields)), first)?;

        let seconds: Vec<(i64, &OwnedRow)> = state.buffer.seconds().collect();
        let mut second = self
            .second
            .convert_rows(seconds.iter().map(|(_, r)| r.row()))?;
        second.push(Arc::new(Int64Array::from_iter_values(
            seconds.iter().map(|(t, _)| *t),
        )));
        let mut fields: Vec<Field> = self
            .stream
            .side
            .fields
            .iter()
            .map(|(n, t)| Field::new(n, t.arrow_type(), true))
            .collect();
        fields.push(Field::new("__time", DataType::Int64, false));
        let second = ipc(Arc::new(Schema::new(fields)), second)?;
        Ok(JoinSnapshot {
            horizon: state.horizon.map(EventTime::millis),
            first,
            second,
        })
    }

    /// Buffers restored from a checkpoint.
    pub(crate) fn restore(&self, snapshot: &JoinSnapshot) -> Result<JoinState, ArrowError> {
        let mut state = self.state();
        state.horizon = snapshot.horizon.map(EventTime);
        for batch in read_ipc(&snapshot.first)? {
            let n = batch.num_columns();
            let t = int64(&batch, n - 2)?;
            let matched = batch
                .column(n - 1)
                .as_any()
                .downcast_ref::<BooleanArray>()
                .cloned()
                .ok_or_else(|| ArrowError::SchemaError("`__matched` is not a boolean".into()))?;
            let k = keys(&batch, &self.stream.on)?;
            let rows = rows_of(&self.first, &batch.columns()[..n - 2])?;
            for (i, (row, key)) in rows.into_iter().zip(k).enumerate() {
                let size = row.as_ref().len() + ROW_OVERHEAD;
                state
                    .buffer
                    .restore_first(key, t.value(i), row, matched.value(i), size);
            }
        }
        for batch in read_ipc(&snapshot.second)? {
            let n = batch.num_columns();
            let t = int64(&batch, n - 1)?;
            let k = keys(&batch, &self.stream.on)?;
            let rows = rows_of(&self.second, &batch.columns()[..n - 1])?;
            for (i, (row, key)) in rows.into_iter().zip(k).enumerate() {
                let size = row.as_ref().len() + ROW_OVERHEAD;
                state.buffer.restore_second(key, t.value(i), row, size);
            }
        }
        Ok(state)
    }
}

/// Applies a joined stream's rows (made by [`crate::joined`]) to a view's state of one
/// partition. A joined row is a pair of events, neither of which is a message of its own: a
/// row an expression fails on, or one late for its window (only when the batch layer
/// published the window already: the view's watermark waits for `within`), is counted and
/// logged, the messages themselves having been taken.
pub(crate) fn apply_joined(
    program: &ViewProgram,
    view: &mut crate::state::ViewState,
    rows: &RecordBatch,
    watermark: Option<EventTime>,
    covered: &tandem_shared::coverage::Coverage,
) {
    let name = || program.view.name.clone();
    let mut evaluation = Evaluation::default();
    evaluate(program, rows, 0, rows.num_rows(), &mut evaluation);
    let mut late = 0;
    let mut rejected = evaluation.failed.len();
    for piece in &evaluation.pieces {
        match piece.evaluated.bind(program, &piece.batch) {
            Ok(columns) => {
                let applied =
                    view.apply_rows(&columns, 0..piece.batch.num_rows(), watermark, covered);
                late += applied.late_rows.len();
            }
            Err(_) => rejected += piece.batch.num_rows(),
        }
    }
    if late > 0 {
        metrics::counter!("tandem_speed_join_late_total", "view" => name()).increment(late as u64);
    }
    if rejected > 0 {
        metrics::counter!("tandem_speed_join_rejected_total", "view" => name())
            .increment(rejected as u64);
        if let Some((_, err)) = evaluation.failed.first() {
            tracing::warn!(view = %name(), rejected, %err, "joined rows an expression fails on");
        }
    }
}

fn take(batch: &RecordBatch, rows: &[usize]) -> Result<RecordBatch, ArrowError> {
    let indices = UInt32Array::from_iter_values(rows.iter().map(|&r| r as u32));
    take_record_batch(batch, &indices)
}

fn int64(batch: &RecordBatch, column: usize) -> Result<Int64Array, ArrowError> {
    batch
        .column(column)
        .as_any()
        .downcast_ref::<Int64Array>()
        .cloned()
        .ok_or_else(|| ArrowError::SchemaError("`__time` is not an int64".into()))
}

fn ipc(schema: SchemaRef, columns: Vec<ArrayRef>) -> Result<Vec<u8>, ArrowError> {
    let batch = RecordBatch::try_new(Arc::clone(&schema), columns)?;
    let mut out = Vec::new();
    let mut writer = StreamWriter::try_new(&mut out, &schema)?;
    writer.write(&batch)?;
    writer.finish()?;
    drop(writer);
    Ok(out)
}

fn read_ipc(bytes: &[u8]) -> Result<Vec<RecordBatch>, ArrowError> {
    StreamReader::try_new(std::io::Cursor::new(bytes), None)?.collect()
}

#[cfg(test)]
mod tests;
