//! Encoding archive files.

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::{SortOptions, sort_to_indices, take_record_batch};
use datafusion::arrow::error::ArrowError;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;

/// Errors encoding a file. Internal: the batch was built against the archive schema.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("sorting rows by event time: {0}")]
    Sort(#[from] ArrowError),
    #[error("writing Parquet: {0}")]
    Parquet(#[from] ParquetError),
}

/// Encodes `batch` as one Parquet file, rows sorted by event time (column 0) so that row-group
/// and page statistics prune time-range queries well.
pub(crate) fn encode(batch: &RecordBatch) -> Result<Vec<u8>, Error> {
    let order = sort_to_indices(batch.column(0), Some(SortOptions::default()), None)?;
    let sorted = take_record_batch(batch, &order)?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(1)?))
        .set_max_row_group_row_count(Some(1 << 20))
        .build();
    let mut out = Vec::with_capacity(sorted.get_array_memory_size() / 4);
    let mut writer = ArrowWriter::try_new(&mut out, sorted.schema(), Some(props))?;
    writer.write(&sorted)?;
    writer.close()?;
    Ok(out)
}
