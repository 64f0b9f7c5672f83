//! Column builders: decoded events appended into an Arrow record batch of the event schema,
//! with the Kafka partition and offset of each row.

use std::fmt;
use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, Decimal128Builder, Float64Builder, Int32Builder, Int64Builder, StringBuilder,
    TimestampMillisecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::SchemaRef;

use super::{DecodedEvent, EventDecoder, Slot};
use crate::schema::FieldType;

enum ColumnBuilder {
    Str(StringBuilder),
    Int(Int64Builder),
    Float(Float64Builder),
    Bool(BooleanBuilder),
    Time(TimestampMillisecondBuilder),
    Decimal(Decimal128Builder),
}

impl ColumnBuilder {
    fn new(ty: FieldType, capacity: usize) -> Self {
        match ty {
            FieldType::String => Self::Str(StringBuilder::with_capacity(capacity, capacity * 8)),
            FieldType::Int64 => Self::Int(Int64Builder::with_capacity(capacity)),
            FieldType::Float64 => Self::Float(Float64Builder::with_capacity(capacity)),
            FieldType::Bool => Self::Bool(BooleanBuilder::with_capacity(capacity)),
            FieldType::Timestamp => Self::Time(
                TimestampMillisecondBuilder::with_capacity(capacity).with_timezone("UTC"),
            ),
            FieldType::Decimal { .. } => Self::Decimal(
                Decimal128Builder::with_capacity(capacity).with_data_type(ty.arrow_type()),
            ),
        }
    }

    /// Appends a slot already validated against this column's type; returns its rough size.
    #[inline]
    fn append(&mut self, slot: &Slot<'_>) -> usize {
        match (self, slot) {
            (Self::Str(b), Slot::Str(s)) => {
                b.append_value(s);
                return s.len() + 4;
            }
            (Self::Int(b), Slot::Int(v)) => b.append_value(*v),
            (Self::Float(b), Slot::Float(v)) => b.append_value(*v),
            (Self::Bool(b), Slot::Bool(v)) => b.append_value(*v),
            (Self::Time(b), Slot::Time(v)) => b.append_value(*v),
            (Self::Decimal(b), Slot::Decimal(v)) => {
                b.append_value(*v);
                return 16;
            }
            (Self::Str(b), _) => b.append_null(),
            (Self::Int(b), _) => b.append_null(),
            (Self::Float(b), _) => b.append_null(),
            (Self::Bool(b), _) => b.append_null(),
            (Self::Time(b), _) => b.append_null(),
            (Self::Decimal(b), _) => b.append_null(),
        }
        8
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Self::Str(b) => Arc::new(b.finish()),
            Self::Int(b) => Arc::new(b.finish()),
            Self::Float(b) => Arc::new(b.finish()),
            Self::Bool(b) => Arc::new(b.finish()),
            Self::Time(b) => Arc::new(b.finish()),
            Self::Decimal(b) => Arc::new(b.finish()),
        }
    }
}

/// Accumulates decoded events into a record batch of [`EventSchema::arrow_schema`].
pub struct EventBatchBuilder {
    arrow: SchemaRef,
    time: TimestampMillisecondBuilder,
    columns: Vec<ColumnBuilder>,
    partitions: Int32Builder,
    offsets: Int64Builder,
    rows: usize,
    /// Rough payload bytes appended, for size-based rolling.
    bytes: usize,
}

impl fmt::Debug for EventBatchBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventBatchBuilder")
            .field("rows", &self.rows)
            .field("bytes", &self.bytes)
            .finish()
    }
}

impl EventBatchBuilder {
    pub fn new(decoder: &EventDecoder, capacity: usize) -> Self {
        Self {
            arrow: Arc::clone(&decoder.arrow),
            time: TimestampMillisecondBuilder::with_capacity(capacity).with_timezone("UTC"),
            columns: decoder
                .schema
                .fields
                .iter()
                .map(|(_, ty)| ColumnBuilder::new(*ty, capacity))
                .collect(),
            partitions: Int32Builder::with_capacity(capacity),
            offsets: Int64Builder::with_capacity(capacity),
            rows: 0,
            bytes: 0,
        }
    }

    pub fn append(&mut self, event: &DecodedEvent<'_>, partition: i32, offset: i64) {
        self.time.append_value(event.time.millis());
        let mut bytes = 16;
        for (column, slot) in self.columns.iter_mut().zip(&event.values) {
            bytes += column.append(slot);
        }
        self.partitions.append_value(partition);
        self.offsets.append_value(offset);
        self.rows += 1;
        self.bytes += bytes;
    }

    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Approximate in-memory size of the rows appended so far.
    pub fn approx_bytes(&self) -> usize {
        self.bytes
    }

    /// Builds the batch and resets the builder for reuse.
    pub fn finish(&mut self) -> RecordBatch {
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(self.columns.len() + 3);
        arrays.push(Arc::new(self.time.finish()));
        arrays.extend(self.columns.iter_mut().map(ColumnBuilder::finish));
        arrays.push(Arc::new(self.partitions.finish()));
        arrays.push(Arc::new(self.offsets.finish()));
        self.rows = 0;
        self.bytes = 0;
        // The arrays are built from the same field list as the schema, so this cannot fail
        // unless the builder is internally inconsistent.
        RecordBatch::try_new(Arc::clone(&self.arrow), arrays)
            .unwrap_or_else(|e| panic!("event batch does not match its own schema: {e}"))
    }
}
