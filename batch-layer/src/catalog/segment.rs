//! Segment I/O: a job's result as one Parquet object, and back into view rows.

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::{cast, concat_batches, sort_to_indices, take_record_batch};
use datafusion::arrow::error::ArrowError;
use datafusion::common::ScalarValue;
use datafusion::error::DataFusionError;
use parquet::arrow::ArrowWriter;
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;
use tandem_shared::row::{GroupValue, ViewRow};
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
    #[error("expected {expected} columns, found {found}")]
    Columns { expected: usize, found: usize },
    #[error("reading column {column}: {source}")]
    Value {
        column: usize,
        source: DataFusionError,
    },
    #[error("column {column} is null")]
    Null { column: &'static str },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Encodes query output (`window_start, window_end, ...`) as one Parquet object, sorted by
/// window start in row groups of `row_group_rows`, so that each row group's `window_start`
/// statistics bound a narrow range of windows.
pub(crate) fn encode(batches: &[RecordBatch], row_group_rows: usize) -> Result<Vec<u8>> {
    let first = batches.first().ok_or(Error::NoBatches)?;
    let schema = first.schema();
    // Batches of one segment may come from segments written at different times (compaction),
    // whose column types can differ in representation (Utf8 and Utf8View, say): cast each to
    // the first one's schema.
    let aligned = batches
        .iter()
        .map(|b| {
            if b.schema().fields() == schema.fields() {
                return Ok(b.clone());
            }
            let columns = b
                .columns()
                .iter()
                .zip(schema.fields())
                .map(|(c, f)| cast(c, f.data_type()))
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
        if batch.num_columns() != expected {
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
            let start = scalar_i64(&scalar(0, row)?).ok_or(Error::Null {
                column: "window_start",
            })?;
            let end = scalar_i64(&scalar(1, row)?).ok_or(Error::Null {
                column: "window_end",
            })?;
            let group = (0..groups)
                .map(|g| scalar(2 + g, row).map(group_value))
                .collect::<Result<Vec<_>, _>>()?;
            let mut values = Vec::with_capacity(view.aggregates.len());
            for (i, agg) in view.aggregates.iter().enumerate() {
                let col = 2 + groups + i;
                let v = scalar(col, row)?;
                let is_int = batch.column(col).data_type().is_integer();
                values.push(match agg.function {
                    _ if v.is_null() => AggregateValue::Null,
                    AggregateFunction::Count | AggregateFunction::CountDistinct => {
                        scalar_i64(&v).map_or(AggregateValue::Null, AggregateValue::Int)
                    }
                    AggregateFunction::Avg | AggregateFunction::Percentile { .. } => {
                        scalar_f64(&v).map_or(AggregateValue::Null, AggregateValue::Float)
                    }
                    _ if is_int => scalar_i64(&v).map_or(AggregateValue::Null, AggregateValue::Int),
                    _ => scalar_f64(&v).map_or(AggregateValue::Null, AggregateValue::Float),
                });
            }
            out.push(ViewRow {
                window: Window {
                    start: EventTime(start),
                    end: EventTime(end),
                },
                group,
                values,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

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
}
