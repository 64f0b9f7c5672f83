//! Dimension tables in the speed layer: the latest row per key of each joined table, and a
//! micro-batch's events joined with it.
//!
//! ```text
//!  table topic ──reader (its own thread: every partition from the start; ready at the end)──►
//!      decoded rows ──Dimension::apply──► TableRows: chunks of Arrow columns + key → (chunk, row)
//!  micro-batch ──enrich(view's joins): per join, each event's `on` value looked up (read lock),
//!      the table's columns gathered (`interleave`) as `table.field` ──► the view's expressions
//! ```
//!
//! An event is joined with the row its key has when the micro-batch is applied: the speed
//! layer's answer is the freshest, and the batch layer's as-of join replaces it with the row
//! valid at the event's time. Rows are not checkpointed: a restart reads the (compacted) topic
//! again before any event, so the state is the topic's, whatever the checkpoint.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, RwLock};

use datafusion::arrow::array::{Array, ArrayRef, RecordBatch, StructArray, new_null_array};
use datafusion::arrow::compute::interleave;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::error::ArrowError;
use tandem_shared::event::OP_FIELD;
use tandem_shared::table::{OnMissing, TableDefinition};

use crate::micro_batch::IdColumn;

mod reader;

pub use reader::{Error as ReaderError, TableReader};

/// Rows kept in chunks before they are compacted into one.
const MAX_CHUNKS: usize = 64;

/// The latest row of every key: the columns of the rows received, in chunks as they came, and
/// where each key's latest row is. Chunk 0 is one row of NULLs (a missing key's row).
#[derive(Debug)]
struct TableRows {
    chunks: Vec<Vec<ArrayRef>>,
    index: HashMap<Box<[u8]>, (usize, usize), foldhash::fast::RandomState>,
    /// Rows held over every chunk but the first (superseded ones included).
    held: usize,
}

impl TableRows {
    fn new(definition: &TableDefinition) -> Self {
        let nulls = definition
            .fields
            .iter()
            .map(|(_, ty)| new_null_array(&ty.arrow_type(), 1))
            .collect();
        Self {
            chunks: vec![nulls],
            index: HashMap::default(),
            held: 0,
        }
    }

    fn bytes(&self) -> usize {
        /// A map slot: the boxed key (16), its place (16), a control byte, at 7/8 load.
        const SLOT: usize = (16 + 16 + 1) * 8 / 7;
        let columns: usize = self
            .chunks
            .iter()
            .flatten()
            .map(|a| a.get_array_memory_size())
            .sum();
        let keys: usize = self.index.keys().map(|k| k.len() + SLOT).sum();
        columns + keys
    }

    /// Keeps only the latest rows, in one chunk after the NULL row.
    fn compact(&mut self) -> Result<(), ArrowError> {
        let mut keys: Vec<(&[u8], (usize, usize))> =
            self.index.iter().map(|(k, at)| (k.as_ref(), *at)).collect();
        keys.sort_unstable_by_key(|(_, at)| *at);
        let at: Vec<(usize, usize)> = keys.iter().map(|(_, at)| *at).collect();
        let columns = (0..self.chunks[0].len())
            .map(|c| {
                let arrays: Vec<&dyn Array> = self.chunks.iter().map(|ch| ch[c].as_ref()).collect();
                interleave(&arrays, &at)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let index = keys
            .into_iter()
            .enumerate()
            .map(|(row, (key, _))| (Box::<[u8]>::from(key), (1, row)))
            .collect();
        self.chunks.truncate(1);
        self.chunks.push(columns);
        self.index = index;
        self.held = at.len();
        Ok(())
    }
}

/// One dimension table: its definition and the latest row per key.
#[derive(Debug)]
pub struct Dimension {
    definition: Arc<TableDefinition>,
    rows: RwLock<TableRows>,
    /// The reader has reached the end the topic had when it started.
    ready: Mutex<bool>,
    /// Signalled when `ready` changes.
    readiness: Condvar,
}

impl Dimension {
    pub fn new(definition: Arc<TableDefinition>) -> Self {
        Self {
            rows: RwLock::new(TableRows::new(&definition)),
            definition,
            ready: Mutex::new(false),
            readiness: Condvar::new(),
        }
    }

    pub fn definition(&self) -> &Arc<TableDefinition> {
        &self.definition
    }

    /// Whether the table holds its topic up to where the topic ended when reading started.
    pub fn is_ready(&self) -> bool {
        *self.ready.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits up to `timeout` for the table to be ready; whether it is.
    pub fn wait_ready(&self, timeout: std::time::Duration) -> bool {
        let ready = self.ready.lock().unwrap_or_else(|e| e.into_inner());
        let (ready, _) = self
            .readiness
            .wait_timeout_while(ready, timeout, |r| !*r)
            .unwrap_or_else(|e| e.into_inner());
        *ready
    }

    pub(crate) fn set_ready(&self, ready: bool) {
        *self.ready.lock().unwrap_or_else(|e| e.into_inner()) = ready;
        self.readiness.notify_all();
    }

    /// Marks the table read to its end when its rows were applied without a reader (replays
    /// and benchmarks).
    pub fn set_loaded(&self) {
        self.set_ready(true);
    }

    /// Keys with a row.
    pub fn len(&self) -> usize {
        self.read().index.len()
    }

    /// Bytes the table holds: its rows' Arrow buffers (superseded rows until compacted) and
    /// an index entry per key (the key's bytes, the boxed slice, its place, the map's slot).
    pub fn bytes(&self) -> usize {
        self.read().bytes()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, TableRows> {
        self.rows.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies decoded rows of the table's schema, in offset order: each row becomes its key's
    /// latest, a deleting change removes its key. A row without a key is ignored (counted by
    /// the reader).
    pub fn apply(&self, batch: &RecordBatch) -> Result<usize, ArrowError> {
        let missing = |name: &str| ArrowError::SchemaError(format!("no column `{name}`"));
        let key_column = batch
            .column_by_name(&self.definition.key)
            .ok_or_else(|| missing(&self.definition.key))?;
        let keys = IdColumn::of(key_column)
            .ok_or_else(|| ArrowError::SchemaError("a key is a string or an int64".into()))?;
        let ops = batch.column_by_name(OP_FIELD).and_then(IdColumn::of);
        let columns = self
            .definition
            .fields
            .iter()
            .map(|(f, _)| batch.column_by_name(f).cloned().ok_or_else(|| missing(f)))
            .collect::<Result<Vec<_>, _>>()?;
        let mut rows = self.rows.write().unwrap_or_else(|e| e.into_inner());
        let chunk = rows.chunks.len();
        let mut keyless = 0;
        for row in 0..batch.num_rows() {
            let Some(key) = keys.id(row) else {
                keyless += 1;
                continue;
            };
            let op = ops.as_ref().and_then(|o| o.id(row));
            if TableDefinition::deletes(op.as_deref().and_then(|o| std::str::from_utf8(o).ok())) {
                rows.index.remove(key.as_ref());
            } else {
                rows.index.insert(key.into_owned().into(), (chunk, row));
            }
        }
        rows.chunks.push(columns);
        rows.held += batch.num_rows();
        if rows.chunks.len() > MAX_CHUNKS || rows.held > 2 * rows.index.len() + 4096 {
            rows.compact()?;
        }
        metrics::gauge!("tandem_table_rows", "table" => self.definition.name.clone())
            .set(rows.index.len() as f64);
        metrics::gauge!("tandem_table_bytes", "table" => self.definition.name.clone())
            .set(rows.bytes() as f64);
        Ok(keyless)
    }
}

/// One join of a view, resolved: the table and the event column its key is in.
#[derive(Debug, Clone)]
pub(crate) struct Lookup {
    pub table: Arc<Dimension>,
    pub on: String,
}

/// A micro-batch joined with a view's tables.
pub(crate) struct Enriched {
    pub batch: RecordBatch,
    /// Per row: every join found a row.
    pub matched: Vec<bool>,
    /// Rows some join found no row for.
    pub missing: u64,
}

/// Joins `batch` with `lookups` (the view's joins in order), appending each table's columns
/// as the view's input schema `schema` names them (the event columns, then the joined ones).
pub(crate) fn enrich(
    batch: &RecordBatch,
    lookups: &[Lookup],
    schema: &SchemaRef,
) -> Result<Enriched, ArrowError> {
    let n = batch.num_rows();
    let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
    let mut matched = vec![true; n];
    for lookup in lookups {
        let on = batch
            .column_by_name(&lookup.on)
            .ok_or_else(|| ArrowError::SchemaError(format!("no column `{}`", lookup.on)))?;
        let keys = IdColumn::of(on)
            .ok_or_else(|| ArrowError::SchemaError("a join key is a string or an int64".into()))?;
        let rows = lookup.table.read();
        let at: Vec<(usize, usize)> = (0..n)
            .map(|row| {
                let found = keys
                    .id(row)
                    .and_then(|k| rows.index.get(k.as_ref()).copied());
                if found.is_none() {
                    matched[row] = false;
                }
                found.unwrap_or((0, 0))
            })
            .collect();
        let children = (0..rows.chunks[0].len())
            .map(|c| {
                let arrays: Vec<&dyn Array> = rows.chunks.iter().map(|ch| ch[c].as_ref()).collect();
                interleave(&arrays, &at)
            })
            .collect::<Result<Vec<_>, _>>()?;
        // The table as a struct (for expressions), then its columns flat (for `group_by`).
        let DataType::Struct(fields) = schema.field(columns.len()).data_type() else {
            return Err(ArrowError::SchemaError(format!(
                "table `{}`: no struct column in the view's input",
                lookup.table.definition.name
            )));
        };
        columns.push(Arc::new(StructArray::try_new(
            fields.clone(),
            children.clone(),
            None,
        )?));
        columns.extend(children);
    }
    let missing = matched.iter().filter(|m| !**m).count() as u64;
    Ok(Enriched {
        batch: RecordBatch::try_new(Arc::clone(schema), columns)?,
        matched,
        missing,
    })
}

/// Which rows of an enriched batch a view counts: all, or with `drop` only the matched ones.
pub(crate) fn kept(on_missing: OnMissing, enriched: &Enriched) -> Option<&[bool]> {
    (on_missing == OnMissing::Drop).then_some(enriched.matched.as_slice())
}

#[cfg(test)]
mod tests;
