//! A SQL answer as JSON (`{"columns": [{"name", "type"}], "rows": [[...]]}`), CSV with a header,
//! or an Arrow IPC stream, written a batch at a time so that the caller can count the bytes
//! against the query's memory pool as they grow.
//!
//! Decimals keep every digit in every format: Arrow IPC carries them as they are, CSV writes
//! their digits, and JSON writes them as strings with the column's scale (`"0.30"`,
//! `"113363401279198816.58"`): a JSON number is read as a float64 by most clients, which keeps
//! about 16 significant digits.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, RecordBatch, StructArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, SchemaRef};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::arrow::json::StructMode;
use datafusion::arrow::json::writer::{EncoderOptions, make_encoder};
use serde::{Deserialize, Serialize};

use super::SqlAnswer;

/// The media types a SQL answer is rendered in.
pub const JSON: &str = "application/json";
pub const CSV: &str = "text/csv";
pub const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

/// How an answer is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Csv,
    ArrowStream,
}

impl Format {
    /// The format an `Accept` header asks for (JSON unless CSV or Arrow is named).
    pub fn from_accept(accept: &str) -> Self {
        if accept.contains(CSV) {
            Format::Csv
        } else if accept.contains(ARROW_STREAM) {
            Format::ArrowStream
        } else {
            Format::Json
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => JSON,
            Format::Csv => "text/csv; charset=utf-8",
            Format::ArrowStream => ARROW_STREAM,
        }
    }
}

/// One column of a JSON answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Column {
    pub name: String,
    /// The Arrow type, as Arrow writes it (`Int64`, `Utf8`, `Timestamp(ms, "UTC")`,
    /// `Decimal128(22, 2)`, ...). A decimal's values are strings of its exact digits.
    #[serde(rename = "type")]
    pub data_type: String,
}

/// The JSON shape of an answer. Values are JSON numbers, strings, booleans and nulls; a
/// timestamp is an RFC 3339 string; a decimal is a string with the column's scale (`"0.30"`),
/// so that no digit is lost to a float.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JsonAnswer {
    pub columns: Vec<Column>,
    pub rows: Vec<Vec<serde_json::Value>>,
}

fn is_decimal(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Decimal32(..)
            | DataType::Decimal64(..)
            | DataType::Decimal128(..)
            | DataType::Decimal256(..)
    )
}

/// The batch as JSON rows: decimals as their exact digits in strings.
fn json_rows(batch: &RecordBatch, out: &mut Vec<u8>, first: &mut bool) -> Result<(), ArrowError> {
    let columns: Vec<ArrayRef> = batch
        .columns()
        .iter()
        .map(|c| {
            if is_decimal(c.data_type()) {
                cast(c, &DataType::Utf8)
            } else {
                Ok(Arc::clone(c))
            }
        })
        .collect::<Result<_, _>>()?;
    // Positional names: `SELECT a, a` is two values of one row.
    let fields: Vec<FieldRef> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| Arc::new(Field::new(format!("c{i}"), c.data_type().clone(), true)))
        .collect();
    let rows = StructArray::try_new_with_length(fields.into(), columns, None, batch.num_rows())?;
    let field: FieldRef = Arc::new(Field::new("row", rows.data_type().clone(), false));
    let options = EncoderOptions::default()
        .with_explicit_nulls(true)
        .with_struct_mode(StructMode::ListOnly);
    let mut encoder = make_encoder(&field, &rows, &options)?;
    for i in 0..rows.len() {
        if !std::mem::take(first) {
            out.push(b',');
        }
        encoder.encode(i, out);
    }
    Ok(())
}

/// Writes an answer a batch at a time into one buffer.
pub struct Writer {
    format: Format,
    schema: SchemaRef,
    out: Vec<u8>,
    /// No row written yet (JSON: no comma before the next; CSV: write the header).
    first: bool,
    arrow: Option<StreamWriter<Vec<u8>>>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("format", &self.format)
            .field("bytes", &self.len())
            .finish_non_exhaustive()
    }
}

impl Writer {
    pub fn new(format: Format, schema: SchemaRef) -> Result<Self, ArrowError> {
        let mut out = Vec::new();
        let mut arrow = None;
        match format {
            Format::Json => {
                let columns: Vec<Column> = schema
                    .fields()
                    .iter()
                    .map(|f| Column {
                        name: f.name().clone(),
                        data_type: f.data_type().to_string(),
                    })
                    .collect();
                out.extend_from_slice(b"{\"columns\":");
                serde_json::to_writer(&mut out, &columns)
                    .map_err(|e| ArrowError::JsonError(e.to_string()))?;
                out.extend_from_slice(b",\"rows\":[");
            }
            Format::Csv => {}
            Format::ArrowStream => arrow = Some(StreamWriter::try_new(Vec::new(), &schema)?),
        }
        Ok(Self {
            format,
            schema,
            out,
            first: true,
            arrow,
        })
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.out.len() + self.arrow.as_ref().map_or(0, |w| w.get_ref().len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), ArrowError> {
        match self.format {
            Format::Json => json_rows(batch, &mut self.out, &mut self.first),
            Format::Csv => {
                let header = std::mem::take(&mut self.first);
                let mut writer = datafusion::arrow::csv::WriterBuilder::new()
                    .with_header(header)
                    .build(&mut self.out);
                writer.write(batch)
            }
            Format::ArrowStream => match &mut self.arrow {
                Some(writer) => writer.write(batch),
                None => Ok(()),
            },
        }
    }

    pub fn finish(mut self) -> Result<Vec<u8>, ArrowError> {
        match self.format {
            Format::Json => {
                self.out.extend_from_slice(b"]}");
                Ok(self.out)
            }
            Format::Csv => {
                if self.first {
                    // No rows: the header alone.
                    let schema = Arc::clone(&self.schema);
                    self.write(&RecordBatch::new_empty(schema))?;
                }
                Ok(self.out)
            }
            Format::ArrowStream => match self.arrow {
                Some(mut writer) => {
                    writer.finish()?;
                    writer.into_inner()
                }
                None => Ok(self.out),
            },
        }
    }
}

fn whole(answer: &SqlAnswer, format: Format) -> Result<Vec<u8>, ArrowError> {
    let mut writer = Writer::new(format, Arc::clone(&answer.schema))?;
    for batch in &answer.batches {
        writer.write(batch)?;
    }
    writer.finish()
}

/// The answer as JSON text.
pub fn json_bytes(answer: &SqlAnswer) -> Result<Vec<u8>, ArrowError> {
    whole(answer, Format::Json)
}

/// The answer's JSON shape, read back from [`json_bytes`].
pub fn json(answer: &SqlAnswer) -> Result<JsonAnswer, ArrowError> {
    serde_json::from_slice(&json_bytes(answer)?).map_err(|e| ArrowError::JsonError(e.to_string()))
}

/// CSV with a header row.
pub fn csv(answer: &SqlAnswer) -> Result<Vec<u8>, ArrowError> {
    whole(answer, Format::Csv)
}

/// An Arrow IPC stream: the schema, then the batches.
pub fn arrow_stream(answer: &SqlAnswer) -> Result<Vec<u8>, ArrowError> {
    whole(answer, Format::ArrowStream)
}
