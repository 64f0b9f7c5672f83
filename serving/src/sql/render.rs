//! A SQL answer as JSON (`{"columns": [{"name", "type"}], "rows": [[...]]}`), CSV with a header,
//! or an Arrow IPC stream.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{Field, Schema};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::json::writer::{JsonArray, WriterBuilder};
use serde::Serialize;

use super::SqlAnswer;

/// The media types a SQL answer is rendered in.
pub const CSV: &str = "text/csv";
pub const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

/// One column of a JSON answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Column {
    pub name: String,
    /// The Arrow type, as Arrow writes it (`Int64`, `Utf8`, `Timestamp(ms, "UTC")`, ...).
    #[serde(rename = "type")]
    pub data_type: String,
}

/// The JSON shape of an answer.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct JsonAnswer {
    pub columns: Vec<Column>,
    pub rows: Vec<Vec<serde_json::Value>>,
}

/// Rows as arrays of JSON values in column order. Columns are written under positional names so
/// that two columns of one name (`SELECT a, a`) stay two values.
pub fn json(answer: &SqlAnswer) -> Result<JsonAnswer, ArrowError> {
    let columns = answer
        .schema
        .fields()
        .iter()
        .map(|f| Column {
            name: f.name().clone(),
            data_type: f.data_type().to_string(),
        })
        .collect();
    let positional = Arc::new(Schema::new(
        answer
            .schema
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| Field::new(format!("c{i}"), f.data_type().clone(), true))
            .collect::<Vec<_>>(),
    ));
    let width = answer.schema.fields().len();
    let mut rows = Vec::with_capacity(answer.rows());
    for batch in &answer.batches {
        let batch = RecordBatch::try_new(Arc::clone(&positional), batch.columns().to_vec())?;
        let mut writer = WriterBuilder::new()
            .with_explicit_nulls(true)
            .build::<_, JsonArray>(Vec::new());
        writer.write(&batch)?;
        writer.finish()?;
        let objects: Vec<serde_json::Map<String, serde_json::Value>> =
            serde_json::from_slice(&writer.into_inner())
                .map_err(|e| ArrowError::JsonError(e.to_string()))?;
        for mut object in objects {
            rows.push(
                (0..width)
                    .map(|i| object.remove(&format!("c{i}")).unwrap_or_default())
                    .collect(),
            );
        }
    }
    Ok(JsonAnswer { columns, rows })
}

/// CSV with a header row.
pub fn csv(answer: &SqlAnswer) -> Result<Vec<u8>, ArrowError> {
    let mut writer = datafusion::arrow::csv::WriterBuilder::new()
        .with_header(true)
        .build(Vec::new());
    if answer.batches.is_empty() {
        writer.write(&RecordBatch::new_empty(answer.schema.clone()))?;
    }
    for batch in &answer.batches {
        writer.write(batch)?;
    }
    Ok(writer.into_inner())
}

/// An Arrow IPC stream: the schema, then the batches.
pub fn arrow_stream(answer: &SqlAnswer) -> Result<Vec<u8>, ArrowError> {
    let mut writer =
        datafusion::arrow::ipc::writer::StreamWriter::try_new(Vec::new(), &answer.schema)?;
    for batch in &answer.batches {
        writer.write(batch)?;
    }
    writer.finish()?;
    writer.into_inner()
}
