//! Segment I/O: a job's result as one Parquet object, and back into view rows.

use datafusion::arrow::array::{Array, AsArray, RecordBatch, new_null_array};
use std::sync::Arc;

use datafusion::arrow::compute::{cast, concat_batches, sort_to_indices, take_record_batch};
use datafusion::arrow::datatypes::{DataType, Decimal128Type, Float64Type, Int64Type, Schema};
use datafusion::arrow::error::ArrowError;
use datafusion::common::ScalarValue;
use datafusion::error::DataFusionError;
use parquet::arrow::ArrowWriter;
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;
use tandem_shared::decimal::Decimal;
use tandem_shared::row::{GroupKey, GroupValue, ViewRow};
use tandem_shared::sketch::{StatedRow, WindowState};
use tandem_shared::time::EventTime;
use tandem_shared::value::AggregateValue;
use tandem_shared::view::{AggregateFunction, ViewDefinition};
use tandem_shared::window::Window;

/// Errors encoding or decoding a segment. Internal: segments are written by Tandem from query
/// output of the view's own shape.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("a segment needs a schema; the query returned no batches")]
    NoBatches,
    #[error("Parquet: {0}")]
    Parquet(#[from] ParquetError),
    #[error("Arrow: {0}")]
    Arrow(#[from] ArrowError),
    #[error("expected at least {expected} columns, found {found}")]
    Columns { expected: usize, found: usize },
    #[error("reading column {column}: {source}")]
    Value {
        column: usize,
        source: DataFusionError,
    },
    #[error("column {column} is null")]
    Null { column: &'static str },
}

pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;

/// Encodes query output (`window_start, window_end, ...`) as one Parquet object, sorted by
/// window start in row groups of `row_group_rows`, so that each row group's `window_start`
/// statistics bound a narrow range of windows.
pub(crate) fn encode(batches: &[RecordBatch], row_group_rows: usize) -> Result<Vec<u8>> {
    // Batches of one segment may come from segments written at different times (compaction),
    // whose column types can differ in representation (Utf8 and Utf8View, say), and older ones
    // may lack the rollup state columns: take the widest schema, cast each batch's columns to
    // it by name and fill missing ones with nulls.
    let widest = batches
        .iter()
        .map(RecordBatch::schema)
        .max_by_key(|s| s.fields().len())
        .ok_or(Error::NoBatches)?;
    // A column some batch lacks is filled with nulls there, so it must be nullable.
    let schema = Arc::new(Schema::new(
        widest
            .fields()
            .iter()
            .map(|f| {
                let everywhere = batches.iter().all(|b| b.column_by_name(f.name()).is_some());
                f.as_ref()
                    .clone()
                    .with_nullable(f.is_nullable() || !everywhere)
            })
            .collect::<Vec<_>>(),
    ));
    let aligned = batches
        .iter()
        .map(|b| {
            if b.schema().fields() == schema.fields() {
                return Ok(b.clone());
            }
            let columns = schema
                .fields()
                .iter()
                .map(|f| match b.column_by_name(f.name()) {
                    Some(c) => cast(c, f.data_type()),
                    None => Ok(new_null_array(f.data_type(), b.num_rows())),
                })
                .collect::<Result<Vec<_>, _>>()?;
            RecordBatch::try_new(schema.clone(), columns)
        })
        .collect::<Result<Vec<_>, ArrowError>>()?;
    let all = concat_batches(&schema, &aligned)?;
    let sorted = if all.num_columns() > 0 && all.num_rows() > 0 {
        let order = sort_to_indices(all.column(0), None, None)?;
        take_record_batch(&all, &order)?
    } else {
        all
    };
    let properties = WriterProperties::builder()
        .set_max_row_group_row_count(Some(row_group_rows.max(1)))
        .build();
    let mut out = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut out, schema, Some(properties))?;
    writer.write(&sorted)?;
    writer.close()?;
    Ok(out)
}

fn scalar_i64(v: &ScalarValue) -> Option<i64> {
    match v {
        ScalarValue::Int8(x) => x.map(i64::from),
        ScalarValue::Int16(x) => x.map(i64::from),
        ScalarValue::Int32(x) => x.map(i64::from),
        ScalarValue::Int64(x) => *x,
        ScalarValue::UInt8(x) => x.map(i64::from),
        ScalarValue::UInt16(x) => x.map(i64::from),
        ScalarValue::UInt32(x) => x.map(i64::from),
        ScalarValue::UInt64(x) => x.and_then(|v| i64::try_from(v).ok()),
        _ => None,
    }
}

fn scalar_f64(v: &ScalarValue) -> Option<f64> {
    match v {
        ScalarValue::Float16(x) => x.map(f64::from),
        ScalarValue::Float32(x) => x.map(f64::from),
        ScalarValue::Float64(x) => *x,
        ScalarValue::Decimal128(Some(x), _, scale) => {
            Some(*x as f64 / 10f64.powi(i32::from(*scale)))
        }
        other => scalar_i64(other).map(|i| i as f64),
    }
}

fn group_value(v: ScalarValue) -> GroupValue {
    if v.is_null() {
        return GroupValue::Null;
    }
    match v {
        ScalarValue::Utf8(Some(s))
        | ScalarValue::Utf8View(Some(s))
        | ScalarValue::LargeUtf8(Some(s)) => GroupValue::Str(s),
        ScalarValue::Boolean(Some(b)) => GroupValue::Bool(b),
        ScalarValue::Float64(Some(f)) => GroupValue::Float(f),
        ScalarValue::TimestampMillisecond(Some(t), _) => GroupValue::Time(EventTime(t)),
        other => match scalar_i64(&other) {
            Some(i) => GroupValue::Int(i),
            None => GroupValue::Str(other.to_string()),
        },
    }
}

/// Converts query output (`window_start, window_end, g0.., a0..`) into rows.
pub(crate) fn decode_rows(view: &ViewDefinition, batches: &[RecordBatch]) -> Result<Vec<ViewRow>> {
    let groups = view.group_by.len();
    let expected = 2 + groups + view.aggregates.len();
    let mut out = Vec::new();
    for batch in batches {
        // Columns after the values hold rollup state (see `decode_states`).
        if batch.num_columns() < expected {
            return Err(Error::Columns {
                expected,
                found: batch.num_columns(),
            });
        }
        let scalar = |column: usize, row: usize| {
            ScalarValue::try_from_array(batch.column(column).as_ref(), row)
                .map_err(|source| Error::Value { column, source })
        };
        for row in 0..batch.num_rows() {
            let (window, group) = window_and_group(batch, row, groups)?;
            let mut values = Vec::with_capacity(view.aggregates.len());
            for (i, agg) in view.aggregates.iter().enumerate() {
                let col = 2 + groups + i;
                let v = scalar(col, row)?;
                let is_int = batch.column(col).data_type().is_integer();
                values.push(match (agg.function, &v) {
                    _ if v.is_null() => AggregateValue::Null,
                    // Exact money: a sum, min, max or avg over a decimal stays a decimal.
                    (_, ScalarValue::Decimal128(Some(units), _, scale)) => {
                        AggregateValue::Decimal(Decimal::new(*units, *scale))
                    }
                    (f, _) => match f {
                        AggregateFunction::Count | AggregateFunction::CountDistinct => {
                            scalar_i64(&v).map_or(AggregateValue::Null, AggregateValue::Int)
                        }
                        AggregateFunction::Avg | AggregateFunction::Percentile { .. } => {
                            scalar_f64(&v).map_or(AggregateValue::Null, AggregateValue::Float)
                        }
                        _ if is_int => {
                            scalar_i64(&v).map_or(AggregateValue::Null, AggregateValue::Int)
                        }
                        _ => scalar_f64(&v).map_or(AggregateValue::Null, AggregateValue::Float),
                    },
                });
            }
            out.push(ViewRow {
                window,
                group,
                values,
            });
        }
    }
    Ok(out)
}

/// The window and group of every row of query output (`window_start, window_end, g0..`), in
/// order: what a job needs to decide which rows it may publish.
pub(crate) fn decode_windows(
    view: &ViewDefinition,
    batches: &[RecordBatch],
) -> Result<Vec<(Window, GroupKey)>> {
    let groups = view.group_by.len();
    let mut out = Vec::new();
    for batch in batches {
        if batch.num_columns() < 2 + groups {
            return Err(Error::Columns {
                expected: 2 + groups,
                found: batch.num_columns(),
            });
        }
        for row in 0..batch.num_rows() {
            out.push(window_and_group(batch, row, groups)?);
        }
    }
    Ok(out)
}

fn window_and_group(batch: &RecordBatch, row: usize, groups: usize) -> Result<(Window, GroupKey)> {
    let scalar = |column: usize| {
        ScalarValue::try_from_array(batch.column(column).as_ref(), row)
            .map_err(|source| Error::Value { column, source })
    };
    let start = scalar_i64(&scalar(0)?).ok_or(Error::Null {
        column: "window_start",
    })?;
    let end = scalar_i64(&scalar(1)?).ok_or(Error::Null {
        column: "window_end",
    })?;
    let group = (0..groups)
        .map(|g| scalar(2 + g).map(group_value))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((
        Window {
            start: EventTime(start),
            end: EventTime(end),
        },
        group,
    ))
}

/// Converts query output into rows with the rollup state of each value (see
/// `query::state_columns`); a state column a segment lacks is [`WindowState::Missing`].
pub(crate) fn decode_states(
    view: &ViewDefinition,
    batches: &[RecordBatch],
) -> Result<Vec<StatedRow>> {
    let mut out = Vec::new();
    for batch in batches {
        let rows = decode_rows(view, std::slice::from_ref(batch))?;
        let column = |name: String| batch.column_by_name(&name);
        let states: Vec<Box<dyn Fn(usize) -> WindowState + '_>> = view
            .aggregates
            .iter()
            .enumerate()
            .map(|(i, a)| -> Box<dyn Fn(usize) -> WindowState + '_> {
                let p = column(format!("p{i}"));
                let s = column(format!("s{i}"));
                match (a.function, p, s) {
                    (AggregateFunction::Avg, Some(p), Some(s))
                        if matches!(s.data_type(), DataType::Decimal128(..)) =>
                    {
                        // A decimal average keeps its exact sum (and its scale).
                        let DataType::Decimal128(_, scale) = *s.data_type() else {
                            unreachable!("matched above")
                        };
                        match (
                            p.as_primitive_opt::<Int64Type>(),
                            s.as_primitive_opt::<Decimal128Type>(),
                        ) {
                            (Some(n), Some(sums)) => Box::new(move |r| WindowState::DecimalAvg {
                                sum: if sums.is_null(r) { 0 } else { sums.value(r) },
                                count: if n.is_null(r) { 0 } else { n.value(r) },
                                scale,
                            }),
                            _ => Box::new(|_| WindowState::Missing),
                        }
                    }
                    (AggregateFunction::Avg, Some(p), Some(s)) => {
                        // The sum has the argument's type: integer or float.
                        let sums = cast(s, &DataType::Float64).ok();
                        match (p.as_primitive_opt::<Int64Type>(), sums) {
                            (Some(n), Some(sums)) => Box::new(move |r| {
                                let s = sums.as_primitive::<Float64Type>();
                                WindowState::Avg {
                                    sum: if s.is_null(r) { 0.0 } else { s.value(r) },
                                    count: if n.is_null(r) { 0 } else { n.value(r) },
                                }
                            }),
                            _ => Box::new(|_| WindowState::Missing),
                        }
                    }
                    (
                        f @ (AggregateFunction::CountDistinct
                        | AggregateFunction::Percentile { .. }),
                        Some(p),
                        _,
                    ) => match p.as_binary_opt::<i32>() {
                        Some(b) => Box::new(move |r| {
                            if b.is_null(r) {
                                WindowState::Missing
                            } else if f == AggregateFunction::CountDistinct {
                                WindowState::Distinct(b.value(r).to_vec())
                            } else {
                                WindowState::Quantiles(b.value(r).to_vec())
                            }
                        }),
                        None => Box::new(|_| WindowState::Missing),
                    },
                    (AggregateFunction::Avg, ..)
                    | (AggregateFunction::CountDistinct, ..)
                    | (AggregateFunction::Percentile { .. }, ..) => {
                        Box::new(|_| WindowState::Missing)
                    }
                    _ => Box::new(|_| WindowState::Value),
                }
            })
            .collect();
        out.extend(rows.into_iter().enumerate().map(|(r, row)| StatedRow {
            row,
            states: states.iter().map(|s| s(r)).collect(),
        }));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{Array, Int64Array, StringArray, StringViewArray};

    use super::*;

    #[test]
    fn batches_of_differently_typed_strings_encode_as_one_segment() {
        let plain = RecordBatch::try_from_iter([
            (
                "window_start",
                Arc::new(Int64Array::from(vec![60_000])) as _,
            ),
            (
                "city",
                Arc::new(StringArray::from(vec!["A"])) as Arc<dyn Array>,
            ),
        ])
        .unwrap();
        let view = RecordBatch::try_from_iter([
            ("window_start", Arc::new(Int64Array::from(vec![0])) as _),
            (
                "city",
                Arc::new(StringViewArray::from(vec!["B"])) as Arc<dyn Array>,
            ),
        ])
        .unwrap();
        let bytes = encode(&[plain, view], 10).unwrap();
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            bytes::Bytes::from(bytes),
        )
        .unwrap()
        .build()
        .unwrap();
        let rows: usize = reader.map(|b| b.unwrap().num_rows()).sum();
        assert_eq!(rows, 2);
    }

    #[test]
    fn a_segment_compacted_from_old_and_new_ones_keeps_the_states_it_has() {
        use datafusion::arrow::array::BinaryArray;
        let schema = tandem_shared::testing::orders_schema();
        let view = tandem_shared::testing::view(
            &schema,
            "v",
            tandem_shared::testing::tumbling("1m"),
            &[],
            None,
            &["count(*) AS n", "count(DISTINCT city) AS cities"],
        );
        let column = |v: Vec<i64>| Arc::new(Int64Array::from(v)) as Arc<dyn Array>;
        // Written before states were stored: no `p1`.
        let old = RecordBatch::try_from_iter([
            ("window_start", column(vec![0])),
            ("window_end", column(vec![60_000])),
            ("a0", column(vec![3])),
            ("a1", column(vec![2])),
        ])
        .unwrap();
        let mut sketch = tandem_shared::sketch::new_hll();
        tandem_shared::sketch::hll_bytes(&mut sketch, b"Lima");
        let bytes = sketch.serialize();
        let new = RecordBatch::try_from_iter([
            ("window_start", column(vec![60_000])),
            ("window_end", column(vec![120_000])),
            ("a0", column(vec![1])),
            ("a1", column(vec![1])),
            (
                "p1",
                Arc::new(BinaryArray::from(vec![Some(bytes.as_slice())])) as Arc<dyn Array>,
            ),
        ])
        .unwrap();
        let encoded = encode(&[old, new], 10).unwrap();
        let batches: Vec<RecordBatch> =
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
                bytes::Bytes::from(encoded),
            )
            .unwrap()
            .build()
            .unwrap()
            .map(|b| b.unwrap())
            .collect();
        let rows = decode_states(&view, &batches).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].states, [WindowState::Value, WindowState::Missing]);
        assert_eq!(
            rows[1].states,
            [WindowState::Value, WindowState::Distinct(bytes)]
        );
        assert_eq!(rows[1].row.values[1], AggregateValue::Int(1));
    }
}
