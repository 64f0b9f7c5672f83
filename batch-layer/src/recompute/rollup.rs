//! The exact rollup the serving layer asks for (`exact=true`): the batch layer's query over the
//! archive's `events` table and the decoding of its answer, behind one face. The serving layer
//! runs the query on its own bounded SQL runtime (I/O at the edge); what to ask and how to read
//! the answer stay here, beside the recompute that publishes the same values.
//!
//! ```text
//!  ExactRollup::new(view, schema, window starts, bucket) ─► sql() ─► (serving runs it)
//!      ─► rows(batches) ─► ViewRow per bucket and group, exact
//! ```

use datafusion::arrow::array::RecordBatch;
use tandem_shared::coverage::StartRange;
use tandem_shared::row::ViewRow;
use tandem_shared::schema::EventSchema;
use tandem_shared::time::Span;
use tandem_shared::view::ViewDefinition;

use crate::catalog::segment;

/// The answer of an exact rollup's query was not of the view's shape (a bug, not the user's).
pub type RollupError = segment::Error;

/// One exact rollup of a view over a range of bucket starts.
#[derive(Debug)]
pub struct ExactRollup<'a> {
    view: &'a ViewDefinition,
    sql: String,
}

impl<'a> ExactRollup<'a> {
    /// The rollup of `view` over buckets of `bucket` (a multiple of its tumbling window) whose
    /// starts are in `range` (bucket-aligned), or with `None` over `range` as one bucket. Only
    /// the archive's files that hold `range` are read.
    pub fn new(
        view: &'a ViewDefinition,
        schema: &EventSchema,
        range: StartRange,
        bucket: Option<Span>,
    ) -> Self {
        let sql = super::query::rollup_query(
            view,
            &schema.time_field,
            schema.id_field.as_deref(),
            range,
            bucket,
        );
        Self { view, sql }
    }

    /// The SQL to run against the archive's `events` table.
    pub fn sql(&self) -> &str {
        &self.sql
    }

    /// The exact rows of the query's answer.
    pub fn rows(&self, batches: &[RecordBatch]) -> Result<Vec<ViewRow>, RollupError> {
        segment::decode_rows(self.view, batches)
    }
}
