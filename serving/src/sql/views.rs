//! A view as a SQL table, answered through the seam.
//!
//! ```text
//!  scan(filters) ─► window_start bounds, dimension equalities (pushed down, inexactly)
//!               ─► seam::answer (batch where covered, speed elsewhere) ─► Arrow rows
//! ```
//!
//! Columns: `window_start`, `window_end`, the group dimensions, the values (typed as the
//! recompute query types them), `source` (`batch` or `speed`) and `complete` (false for a batch
//! window the archive lost events of). The same rows `GET /v1/views/{name}` answers.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Decimal128Array, Float64Array, Int64Array, RecordBatch,
    RecordBatchOptions, StringArray, StringBuilder, TimestampMillisecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::Session;
use datafusion::common::ScalarValue;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::DataFusionError;
use datafusion::execution::memory_pool::MemoryConsumer;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use tandem_batch_layer::ViewCatalog;
use tandem_batch_layer::tables::bounds;
use tandem_shared::coverage::StartRange;
use tandem_shared::row::{GroupValue, Source, ViewRow};
use tandem_shared::time::EventTime;
use tandem_shared::value::AggregateValue;
use tandem_shared::view::ViewDefinition;

use futures::future::BoxFuture;

use crate::seam::{self, AnsweredRow, DimensionFilter, FreshRows, FreshViews, ViewQuery};

/// The speed layer's side, shared by every table of a session; `None` when there is no speed
/// layer (`tandem sql` reads the store only): then a window that is not published is absent.
#[derive(Clone)]
pub struct Fresh(pub Option<Arc<dyn FreshViews + Send + Sync>>);

impl FreshViews for Fresh {
    fn fresh<'a>(
        &'a self,
        view: &'a str,
        range: StartRange,
    ) -> BoxFuture<'a, Option<FreshRows<ViewRow>>> {
        match &self.0 {
            Some(speed) => speed.fresh(view, range),
            None => Box::pin(std::future::ready(None)),
        }
    }
}

impl std::fmt::Debug for Fresh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Fresh(speed layer)"
        } else {
            "Fresh(none)"
        })
    }
}

/// One view as a table (see the module docs).
#[derive(Debug)]
pub struct ViewTable {
    view: ViewDefinition,
    catalog: Arc<ViewCatalog>,
    speed: Fresh,
    /// The view's row columns plus `source` and `complete`.
    schema: SchemaRef,
}

impl ViewTable {
    /// `rows` are the view's row columns as the recompute query types them
    /// (`tandem_batch_layer::tables::results::view_schema`).
    pub fn new(
        view: ViewDefinition,
        rows: &SchemaRef,
        catalog: Arc<ViewCatalog>,
        speed: Fresh,
    ) -> Self {
        let mut fields: Vec<Field> = rows.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.push(Field::new("source", DataType::Utf8, false));
        fields.push(Field::new("complete", DataType::Boolean, false));
        Self {
            view,
            catalog,
            speed,
            schema: Arc::new(Schema::new(fields)),
        }
    }

    /// Equality filters on group dimensions, as the seam takes them (query text).
    fn dimension_filters(&self, filters: &[Expr]) -> Vec<DimensionFilter> {
        self.view
            .group_by
            .iter()
            .enumerate()
            .filter_map(|(position, name)| {
                let value = match bounds::equality(filters, name)? {
                    ScalarValue::Utf8(Some(s))
                    | ScalarValue::Utf8View(Some(s))
                    | ScalarValue::LargeUtf8(Some(s)) => s.clone(),
                    ScalarValue::Int64(Some(i)) => i.to_string(),
                    ScalarValue::Boolean(Some(b)) => b.to_string(),
                    _ => return None,
                };
                Some(DimensionFilter { position, value })
            })
            .collect()
    }

    fn pushable(&self, expr: &Expr) -> bool {
        bounds::bounds_column(expr, "window_start")
            || self
                .view
                .group_by
                .iter()
                .any(|g| bounds::equality(std::slice::from_ref(expr), g).is_some())
    }
}

/// A dimension column from rows' group values at `index`, in `data_type`.
fn dimension(rows: &[AnsweredRow], index: usize, data_type: &DataType) -> ArrayRef {
    fn value(r: &AnsweredRow, index: usize) -> &GroupValue {
        r.row.group.get(index).unwrap_or(&GroupValue::Null)
    }
    let value = |r| value(r, index);
    match data_type {
        DataType::Int64 => Arc::new(Int64Array::from_iter(rows.iter().map(|r| match value(r) {
            GroupValue::Int(i) => Some(*i),
            _ => None,
        }))),
        DataType::Float64 => Arc::new(Float64Array::from_iter(rows.iter().map(|r| {
            match value(r) {
                GroupValue::Float(f) => Some(*f),
                GroupValue::Int(i) => Some(*i as f64),
                _ => None,
            }
        }))),
        DataType::Boolean => Arc::new(BooleanArray::from_iter(rows.iter().map(|r| {
            match value(r) {
                GroupValue::Bool(b) => Some(*b),
                _ => None,
            }
        }))),
        DataType::Timestamp(_, _) => Arc::new(
            TimestampMillisecondArray::from_iter(rows.iter().map(|r| match value(r) {
                GroupValue::Time(t) => Some(t.millis()),
                _ => None,
            }))
            .with_timezone("UTC"),
        ),
        _ => {
            let mut out = StringBuilder::with_capacity(rows.len(), rows.len() * 8);
            for r in rows {
                match value(r) {
                    GroupValue::Null => out.append_null(),
                    GroupValue::Str(s) => out.append_value(s),
                    other => out.append_value(other.to_string()),
                }
            }
            Arc::new(out.finish())
        }
    }
}

/// A value column from rows' values at `index`: `Int64` or `Float64` (see `answered_type`). An
/// estimate of an integer (a sketch's count) is answered as the nearest integer.
fn value(rows: &[AnsweredRow], index: usize, data_type: &DataType) -> ArrayRef {
    let get = |r: &AnsweredRow| r.row.values.get(index).copied();
    if let DataType::Decimal128(precision, scale) = *data_type {
        let units = rows.iter().map(|r| match get(r) {
            Some(AggregateValue::Decimal(d)) => {
                tandem_shared::decimal::rescale(d.units, d.scale, precision, scale).ok()
            }
            Some(AggregateValue::Int(i)) => {
                tandem_shared::decimal::rescale(i128::from(i), 0, precision, scale).ok()
            }
            _ => None,
        });
        return Arc::new(
            Decimal128Array::from_iter(units)
                .with_precision_and_scale(precision, scale)
                .unwrap_or_else(|_| Decimal128Array::new_null(rows.len())),
        );
    }
    if *data_type == DataType::Int64 {
        Arc::new(Int64Array::from_iter(rows.iter().map(|r| match get(r) {
            Some(AggregateValue::Int(i)) => Some(i),
            Some(AggregateValue::Float(f)) => Some(f.round() as i64),
            _ => None,
        })))
    } else {
        Arc::new(Float64Array::from_iter(
            rows.iter().map(|r| get(r).and_then(|v| v.as_f64())),
        ))
    }
}

/// The column at `index` of `schema` (see [`ViewTable`]) from answered rows.
fn column(
    rows: &[AnsweredRow],
    view: &ViewDefinition,
    schema: &SchemaRef,
    index: usize,
) -> ArrayRef {
    let dims = view.group_by.len();
    let values = view.aggregates.len();
    let time = |t: fn(&AnsweredRow) -> EventTime| -> ArrayRef {
        Arc::new(
            TimestampMillisecondArray::from_iter_values(rows.iter().map(|r| t(r).millis()))
                .with_timezone("UTC"),
        )
    };
    let data_type = schema.field(index).data_type();
    match index {
        0 => time(|r| r.row.window.start),
        1 => time(|r| r.row.window.end),
        i if i < 2 + dims => dimension(rows, i - 2, data_type),
        i if i < 2 + dims + values => value(rows, i - 2 - dims, data_type),
        i if i == 2 + dims + values => Arc::new(StringArray::from_iter_values(rows.iter().map(
            |r| match r.source {
                Source::Batch => "batch",
                Source::Speed => "speed",
            },
        ))),
        _ => Arc::new(BooleanArray::from_iter(
            rows.iter().map(|r| Some(r.complete)),
        )),
    }
}

/// Answered rows as one batch of the `projection` of `schema`.
pub(crate) fn to_batch(
    rows: &[AnsweredRow],
    view: &ViewDefinition,
    schema: &SchemaRef,
    projection: Option<&Vec<usize>>,
) -> Result<RecordBatch, DataFusionError> {
    let all: Vec<usize> = (0..schema.fields().len()).collect();
    let projection = projection.unwrap_or(&all);
    let projected = Arc::new(schema.project(projection)?);
    let columns = projection
        .iter()
        .map(|i| column(rows, view, schema, *i))
        .collect();
    let options = RecordBatchOptions::new().with_row_count(Some(rows.len()));
    Ok(RecordBatch::try_new_with_options(
        projected, columns, &options,
    )?)
}

#[async_trait]
impl TableProvider for ViewTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>, DataFusionError> {
        Ok(filters
            .iter()
            .map(|f| {
                if self.pushable(f) {
                    TableProviderFilterPushDown::Inexact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>, DataFusionError> {
        let query = ViewQuery {
            view: self.view.name.clone(),
            range: bounds::time_range(filters, "window_start"),
            filters: self.dimension_filters(filters),
        };
        let answer = seam::answer(self.catalog.as_ref(), &self.speed, &query)
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let batch = to_batch(&answer.rows, &self.view, &self.schema, projection)?;
        // The answer is materialized before the plan runs: it must fit the query's memory pool
        // too, so that a view read over all of history fails with a memory error instead of
        // growing the process.
        let reservation = MemoryConsumer::new(format!("view {}", self.view.name))
            .register(&state.runtime_env().memory_pool);
        reservation.try_grow(batch.get_array_memory_size())?;
        drop(reservation);
        let projected = batch.schema();
        Ok(MemorySourceConfig::try_new_exec(
            &[vec![batch]],
            projected,
            None,
        )?)
    }
}
