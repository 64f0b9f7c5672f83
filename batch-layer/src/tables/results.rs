//! The Arrow types of a view's results, as a recompute job computes them.
//!
//! A view's values are typed by DataFusion planning the view's own recompute query over an
//! empty `events` table: `sum` of an integer expression is an integer, `avg` a float, and so on,
//! exactly as the batch layer's exact results are typed. Tables that answer a view (the SQL
//! interface) use these types for rows from either layer.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::datasource::MemTable;
use datafusion::error::DataFusionError;
use datafusion::prelude::SessionContext;
use tandem_shared::coverage::StartRange;
use tandem_shared::schema::EventSchema;
use tandem_shared::time::EventTime;
use tandem_shared::view::ViewDefinition;

use super::events::read_schema;
use crate::recompute::query;

/// The type a dimension or value column is answered in: strings as `Utf8`, any integer as
/// `Int64`, any other number as `Float64`; booleans and timestamps as themselves.
fn answered_type(data_type: &DataType) -> DataType {
    match data_type {
        DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
        DataType::Boolean => DataType::Boolean,
        DataType::Timestamp(_, _) => timestamp(),
        // Exact money stays exact: every decimal value column as Decimal128(38, scale).
        DataType::Decimal128(_, scale) => DataType::Decimal128(38, *scale),
        t if t.is_integer() => DataType::Int64,
        _ => DataType::Float64,
    }
}

/// Window bounds and timestamp dimensions: epoch milliseconds, UTC.
pub fn timestamp() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

/// Columns of a view's rows: `window_start`, `window_end`, the group dimensions by name, then
/// the values by alias. Nullable where a value can be null.
pub async fn view_schema(
    view: &ViewDefinition,
    schema: &EventSchema,
) -> Result<SchemaRef, DataFusionError> {
    let ctx = SessionContext::new();
    crate::recompute::sketches::register(&ctx);
    let events = read_schema(schema);
    ctx.register_table(
        query::EVENTS_TABLE,
        Arc::new(MemTable::try_new(events, vec![vec![]])?),
    )?;
    for side in view.joined_sides() {
        ctx.register_table(
            query::dimension_table(&side.name),
            Arc::new(MemTable::try_new(read_schema(side.schema()), vec![vec![]])?),
        )?;
    }
    let all = StartRange::new(EventTime(0), EventTime(1));
    let sql = query::window_query(view, &schema.time_field, None, all, all)
        .or_else(|| query::session_query(view, &schema.time_field, None, EventTime(0)))
        .ok_or_else(|| DataFusionError::Internal(format!("no query for view {}", view.name)))?;
    let planned = ctx.sql(&sql).await?;
    let planned = planned.schema();
    let mut fields = vec![
        Field::new("window_start", timestamp(), false),
        Field::new("window_end", timestamp(), false),
    ];
    for (i, name) in view.group_by.iter().enumerate() {
        let t = planned
            .field_with_unqualified_name(&format!("g{i}"))?
            .data_type();
        fields.push(Field::new(name, answered_type(t), true));
    }
    for (i, a) in view.aggregates.iter().enumerate() {
        let t = planned
            .field_with_unqualified_name(&format!("a{i}"))?
            .data_type();
        fields.push(Field::new(&a.alias, answered_type(t), true));
    }
    Ok(Arc::new(Schema::new(fields)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_shared::testing;

    #[tokio::test]
    async fn values_are_typed_as_the_recompute_query_types_them() {
        let schema = testing::orders_schema();
        let view = testing::view(
            &schema,
            "v",
            testing::tumbling("1m"),
            &["city"],
            None,
            &[
                "count(*) AS n",
                "count(DISTINCT city) AS cities",
                "sum(qty) AS units",
                "sum(amount) AS total",
                "max(qty * 2) AS most",
                "avg(qty) AS mean",
                "percentile(amount, 0.5) AS median",
            ],
        );
        let got = view_schema(&view, &schema).await.unwrap();
        let types: Vec<(&str, &DataType)> = got
            .fields()
            .iter()
            .map(|f| (f.name().as_str(), f.data_type()))
            .collect();
        assert_eq!(
            types,
            [
                ("window_start", &timestamp()),
                ("window_end", &timestamp()),
                ("city", &DataType::Utf8),
                ("n", &DataType::Int64),
                ("cities", &DataType::Int64),
                ("units", &DataType::Int64),
                ("total", &DataType::Float64),
                ("most", &DataType::Int64),
                ("mean", &DataType::Float64),
                ("median", &DataType::Float64),
            ]
        );
    }
}
