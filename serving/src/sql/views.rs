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
use datafusion::arrow::array::{ArrayRef, BooleanArray, RecordBatch, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::Session;
use datafusion::common::ScalarValue;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use tandem_batch_layer::ViewCatalog;
use tandem_batch_layer::tables::bounds;
use tandem_shared::coverage::StartRange;
use tandem_shared::row::{GroupValue, Source, ViewRow};
use tandem_shared::time::EventTime;
use tandem_shared::value::AggregateValue;
use tandem_shared::view::ViewDefinition;

use crate::seam::{self, AnsweredRow, DimensionFilter, FreshViews, ViewQuery};

/// The speed layer's side, shared by every table of a session; `None` when there is no speed
/// layer (`tandem sql` reads the store only): then a window that is not published is absent.
#[derive(Clone)]
pub struct Fresh(pub Option<Arc<dyn FreshViews + Send + Sync>>);

impl FreshViews for Fresh {
    fn fresh(&self, view: &str, range: StartRange) -> Option<Vec<ViewRow>> {
        self.0.as_ref()?.fresh(view, range)
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

fn group_scalar(value: &GroupValue) -> ScalarValue {
    match value {
        GroupValue::Null => ScalarValue::Null,
        GroupValue::Bool(b) => ScalarValue::Boolean(Some(*b)),
        GroupValue::Int(i) => ScalarValue::Int64(Some(*i)),
        GroupValue::Float(f) => ScalarValue::Float64(Some(*f)),
        GroupValue::Str(s) => ScalarValue::Utf8(Some(s.clone())),
        GroupValue::Time(t) => {
            ScalarValue::TimestampMillisecond(Some(t.millis()), Some("UTC".into()))
        }
    }
}

fn value_scalar(value: &AggregateValue, data_type: &DataType) -> ScalarValue {
    match (value, data_type) {
        (AggregateValue::Int(i), DataType::Int64) => ScalarValue::Int64(Some(*i)),
        (AggregateValue::Int(i), _) => ScalarValue::Float64(Some(*i as f64)),
        // An estimate of an integer (a sketch's count) is answered as the nearest integer.
        (AggregateValue::Float(f), DataType::Int64) => ScalarValue::Int64(Some(f.round() as i64)),
        (AggregateValue::Float(f), _) => ScalarValue::Float64(Some(*f)),
        (AggregateValue::Null, _) => ScalarValue::Null,
    }
}

/// One column from scalars, in `data_type` (nulls and mixed representations cast).
fn column(values: Vec<ScalarValue>, data_type: &DataType) -> Result<ArrayRef, DataFusionError> {
    if values.is_empty() {
        return Ok(datafusion::arrow::array::new_empty_array(data_type));
    }
    let values = values.into_iter().map(|v| {
        if v.is_null() {
            ScalarValue::try_from(data_type)
        } else {
            Ok(v)
        }
    });
    let values = values.collect::<Result<Vec<_>, _>>()?;
    let array = ScalarValue::iter_to_array(values)?;
    Ok(if array.data_type() == data_type {
        array
    } else {
        cast(&array, data_type)?
    })
}

/// Answered rows as one batch of `schema` (see [`ViewTable`]).
fn to_batch(
    rows: &[AnsweredRow],
    view: &ViewDefinition,
    schema: &SchemaRef,
) -> Result<RecordBatch, DataFusionError> {
    let types: Vec<&DataType> = schema.fields().iter().map(|f| f.data_type()).collect();
    let time = |f: fn(&AnsweredRow) -> EventTime, t: &DataType| {
        column(
            rows.iter()
                .map(|r| ScalarValue::TimestampMillisecond(Some(f(r).millis()), Some("UTC".into())))
                .collect(),
            t,
        )
    };
    let mut columns = vec![
        time(|r| r.row.window.start, types[0])?,
        time(|r| r.row.window.end, types[1])?,
    ];
    let dims = view.group_by.len();
    for i in 0..dims {
        let values = rows
            .iter()
            .map(|r| r.row.group.get(i).map_or(ScalarValue::Null, group_scalar))
            .collect();
        columns.push(column(values, types[2 + i])?);
    }
    for i in 0..view.aggregates.len() {
        let t = types[2 + dims + i];
        let values = rows
            .iter()
            .map(|r| {
                r.row
                    .values
                    .get(i)
                    .map_or(ScalarValue::Null, |v| value_scalar(v, t))
            })
            .collect();
        columns.push(column(values, t)?);
    }
    columns.push(Arc::new(StringArray::from_iter_values(rows.iter().map(
        |r| match r.source {
            Source::Batch => "batch",
            Source::Speed => "speed",
        },
    ))));
    columns.push(Arc::new(BooleanArray::from_iter(
        rows.iter().map(|r| Some(r.complete)),
    )));
    Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
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
        _state: &dyn Session,
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
        let batch = to_batch(&answer.rows, &self.view, &self.schema)?;
        Ok(MemorySourceConfig::try_new_exec(
            &[vec![batch]],
            Arc::clone(&self.schema),
            projection.cloned(),
        )?)
    }
}
