//! Compiling a view definition into DataFusion physical expressions over event batches.
//!
//! The filter and every aggregate argument are parsed, type-checked and coerced by DataFusion
//! against the event Arrow schema — the same schema the archive's Parquet files have — so the speed
//! layer evaluates exactly the expression the batch layer's query evaluates.

use std::sync::Arc;

use crate::aggregate::ArgumentType;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::DFSchema;
use datafusion::common::tree_node::TreeNode;
use datafusion::logical_expr::{Expr, ExprSchemable};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::prelude::SessionContext;
use tandem_shared::schema::EventSchema;
use tandem_shared::view::{AggregateFunction, AggregateSpec, ViewDefinition};

/// Errors compiling a view. Always the user's configuration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("view `{view}`: filter `{filter}`: {detail}")]
    Filter {
        view: String,
        filter: String,
        detail: String,
    },
    #[error("view `{view}`: aggregate `{aggregate}`: {detail}")]
    Argument {
        view: String,
        aggregate: String,
        detail: String,
    },
    #[error("view `{view}`: {detail}")]
    Unsupported { view: String, detail: String },
    #[error("view `{view}`: joined stream: {detail}")]
    Stream { view: String, detail: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A compiled aggregate argument: the expression and the type its values are read as.
#[derive(Debug, Clone)]
pub struct Argument {
    pub expr: Arc<dyn PhysicalExpr>,
    pub ty: ArgumentType,
}

/// A view ready to run over decoded event batches.
#[derive(Debug)]
pub struct ViewProgram {
    pub view: ViewDefinition,
    pub filter: Option<Arc<dyn PhysicalExpr>>,
    /// Column index in the event batch of each group-by field.
    pub group_columns: Vec<usize>,
    /// One entry per aggregate; `None` for `count(*)`.
    pub arguments: Vec<Option<Argument>>,
    /// The columns the expressions read: the event's, then the joined tables' (`table.field`).
    pub input: datafusion::arrow::datatypes::SchemaRef,
}

fn contains_aggregate(expr: &Expr) -> bool {
    expr.exists(|e| {
        Ok(matches!(
            e,
            Expr::AggregateFunction(_) | Expr::WindowFunction(_)
        ))
    })
    .unwrap_or(true)
}

impl ViewProgram {
    pub fn compile(view: &ViewDefinition, schema: &EventSchema) -> Result<Self> {
        let arrow = input_schema(view, schema);
        let ctx = SessionContext::new();
        let df_schema =
            DFSchema::try_from(arrow.as_ref().clone()).map_err(|e| Error::Unsupported {
                view: view.name.clone(),
                detail: e.to_string(),
            })?;

        let filter = match &view.filter {
            None => None,
            Some(text) => {
                let bad = |detail: String| Error::Filter {
                    view: view.name.clone(),
                    filter: text.clone(),
                    detail,
                };
                let expr = ctx
                    .parse_sql_expr(text, &df_schema)
                    .map_err(|e| bad(e.strip_backtrace().to_string()))?;
                if contains_aggregate(&expr) {
                    return Err(bad(
                        "a filter cannot use aggregate or window functions".into()
                    ));
                }
                let ty = expr
                    .get_type(&df_schema)
                    .map_err(|e| bad(e.strip_backtrace().to_string()))?;
                if ty != DataType::Boolean {
                    return Err(bad(format!(
                        "a filter must be a boolean expression, this is {ty}"
                    )));
                }
                Some(
                    ctx.create_physical_expr(expr, &df_schema)
                        .map_err(|e| bad(e.strip_backtrace().to_string()))?,
                )
            }
        };

        let group_columns = view
            .group_by
            .iter()
            .map(|field| {
                let i = arrow.index_of(field).map_err(|e| Error::Unsupported {
                    view: view.name.clone(),
                    detail: e.to_string(),
                })?;
                if let DataType::Decimal128(..) = arrow.field(i).data_type() {
                    return Err(Error::Unsupported {
                        view: view.name.clone(),
                        detail: format!(
                            "`{field}` is a decimal: group by a dimension, not an amount"
                        ),
                    });
                }
                Ok(i)
            })
            .collect::<Result<Vec<_>>>()?;

        let arguments = view
            .aggregates
            .iter()
            .map(|spec| compile_argument(view, spec, &ctx, &df_schema))
            .collect::<Result<Vec<_>>>()?;

        Ok(Self {
            view: view.clone(),
            filter,
            group_columns,
            arguments,
            input: arrow,
        })
    }

    /// Whether the view joins dimension tables.
    pub fn joins(&self) -> bool {
        !self.view.joins.is_empty()
    }
}

/// The columns a view's expressions read: the event schema's, then each joined table's, then
/// a joined stream's.
fn input_schema(
    view: &ViewDefinition,
    schema: &EventSchema,
) -> datafusion::arrow::datatypes::SchemaRef {
    let events = schema.arrow_schema();
    if view.joins.is_empty() && view.join_stream.is_none() {
        return events;
    }
    let mut fields: Vec<_> = events.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.extend(tandem_shared::table::joined_fields(&view.joins));
    if let Some(stream) = &view.join_stream {
        fields.extend(tandem_shared::table::side_fields(&stream.side));
    }
    Arc::new(datafusion::arrow::datatypes::Schema::new(fields))
}

fn compile_argument(
    view: &ViewDefinition,
    spec: &AggregateSpec,
    ctx: &SessionContext,
    df_schema: &DFSchema,
) -> Result<Option<Argument>> {
    let Some(text) = &spec.argument else {
        return Ok(None);
    };
    let bad = |detail: String| Error::Argument {
        view: view.name.clone(),
        aggregate: spec.text.clone(),
        detail,
    };
    let expr = ctx
        .parse_sql_expr(text, df_schema)
        .map_err(|e| bad(e.strip_backtrace().to_string()))?;
    if contains_aggregate(&expr) {
        return Err(bad(
            "aggregate arguments cannot nest aggregate functions".into()
        ));
    }
    let ty = expr
        .get_type(df_schema)
        .map_err(|e| bad(e.strip_backtrace().to_string()))?;
    // Normalize the argument to the shapes the accumulators read: every integer type as Int64,
    // a Decimal128 as itself for sum, min, max and avg (exact, in integers, as DataFusion
    // computes them), every float or other decimal as Float64 (the types DataFusion's sum and
    // avg widen to), anything else as text (only counted, so its text form identifies it).
    let exact_decimal = matches!(
        spec.function,
        AggregateFunction::Sum
            | AggregateFunction::Min
            | AggregateFunction::Max
            | AggregateFunction::Avg
    );
    let (target, arg_ty) = if ty.is_integer() {
        (DataType::Int64, ArgumentType::Int64)
    } else if let (DataType::Decimal128(precision, scale), true) = (&ty, exact_decimal) {
        (
            ty.clone(),
            ArgumentType::Decimal {
                precision: *precision,
                scale: *scale,
            },
        )
    } else if ty.is_floating() || matches!(ty, DataType::Decimal128(..) | DataType::Decimal256(..))
    {
        (DataType::Float64, ArgumentType::Float64)
    } else {
        (DataType::Utf8, ArgumentType::Other)
    };
    if arg_ty == ArgumentType::Other && spec.function.needs_numeric_argument() {
        return Err(bad(format!(
            "{} needs a numeric argument, `{text}` is {ty}",
            spec.function
        )));
    }
    let expr = if ty == target {
        expr
    } else {
        expr.cast_to(&target, df_schema)
            .map_err(|e| bad(e.strip_backtrace().to_string()))?
    };
    let physical = ctx
        .create_physical_expr(expr, df_schema)
        .map_err(|e| bad(e.strip_backtrace().to_string()))?;
    Ok(Some(Argument {
        expr: physical,
        ty: arg_ty,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_shared::testing;

    fn schema() -> Arc<EventSchema> {
        testing::orders_schema()
    }

    fn view(filter: Option<&str>, aggregates: &[&str]) -> ViewDefinition {
        testing::view(
            &schema(),
            "v",
            testing::tumbling("1m"),
            &["city"],
            filter,
            aggregates,
        )
    }

    #[test]
    fn compiles_filters_and_normalizes_argument_types() {
        let p = ViewProgram::compile(
            &view(
                Some("event_type = 'order_placed' AND amount > 0"),
                &[
                    "count(*) AS n",
                    "sum(qty) AS q",
                    "avg(amount * 2) AS a",
                    "count(DISTINCT city) AS c",
                ],
            ),
            &schema(),
        )
        .unwrap();
        assert!(p.filter.is_some());
        assert_eq!(p.group_columns, [1]);
        assert!(p.arguments[0].is_none());
        let tys: Vec<_> = p.arguments[1..]
            .iter()
            .map(|a| a.as_ref().unwrap().ty)
            .collect();
        assert_eq!(
            tys,
            [
                ArgumentType::Int64,
                ArgumentType::Float64,
                ArgumentType::Other
            ]
        );
    }

    #[test]
    fn expressions_name_joined_columns_qualified() {
        use tandem_shared::schema::FieldType;
        use tandem_shared::table::JoinConfig;
        let table = testing::table(
            "merchants",
            "id",
            &[
                ("id", FieldType::String),
                ("category", FieldType::String),
                ("fee", FieldType::Float64),
            ],
            None,
        );
        let mut config = testing::view_config(
            "v",
            testing::tumbling("1m"),
            &["merchants.category"],
            Some("merchants.category <> 'toys' AND merchants.fee > 0"),
            &["sum(amount * merchants.fee) AS fees"],
        );
        config.join = vec![JoinConfig {
            table: "merchants".into(),
            on: "city".into(),
        }];
        let view = ViewDefinition::with_tables(&config, &schema(), &[table]).unwrap();
        let p = ViewProgram::compile(&view, &schema()).unwrap();
        assert!(p.joins());
        assert_eq!(
            p.input.field(p.group_columns[0]).name(),
            "merchants.category"
        );
    }

    #[test]
    fn reports_bad_expressions_with_the_view_and_text() {
        let cases: [(Option<&str>, &[&str], &str); 5] = [
            (Some("colour = 'red'"), &["count(*)"], "colour"),
            (Some("amount + 1"), &["count(*)"], "boolean"),
            (Some("sum(amount) > 1"), &["count(*)"], "aggregate"),
            (None, &["sum(city) AS s"], "numeric"),
            (None, &["sum(nope) AS s"], "nope"),
        ];
        for (filter, aggs, needle) in cases {
            let err = ViewProgram::compile(&view(filter, aggs), &schema())
                .unwrap_err()
                .to_string();
            assert!(err.contains("view `v`"), "{err}");
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }
}
