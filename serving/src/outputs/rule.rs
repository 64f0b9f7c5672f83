//! An output's `when`: a SQL boolean expression over a row of the view, evaluated by
//! DataFusion over the rows of one poll at once.
//!
//! The row's columns are those of the view as a SQL table (`window_start`, `window_end`, the
//! group dimensions, the values by alias, `source`, `complete`), typed as the recompute query
//! types them, so `amount_total > 10000` compares an exact decimal with an exact decimal.

use std::sync::Arc;

use datafusion::arrow::array::{Array, BooleanArray};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::DFSchema;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::prelude::SessionContext;
use tandem_shared::view::ViewDefinition;

use crate::seam::AnsweredRow;
use crate::sql::views::to_batch;

/// A bad rule: always the user's configuration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("output of view `{view}`: when `{rule}`: {detail}")]
    Compile {
        view: String,
        rule: String,
        detail: String,
    },
    #[error("output of view `{view}`: evaluating when: {detail}")]
    Evaluate { view: String, detail: String },
}

/// A compiled `when`.
#[derive(Debug, Clone)]
pub struct Rule {
    view: ViewDefinition,
    schema: SchemaRef,
    expr: Arc<dyn PhysicalExpr>,
}

impl Rule {
    /// Compiles `text` against `schema`, the view's SQL table schema.
    pub fn compile(view: &ViewDefinition, schema: SchemaRef, text: &str) -> Result<Self, Error> {
        let bad = |detail: String| Error::Compile {
            view: view.name.clone(),
            rule: text.to_owned(),
            detail,
        };
        let ctx = SessionContext::new();
        let df_schema = DFSchema::try_from(schema.as_ref().clone())
            .map_err(|e| bad(e.strip_backtrace().to_string()))?;
        let expr = ctx
            .parse_sql_expr(text, &df_schema)
            .map_err(|e| bad(e.strip_backtrace().to_string()))?;
        let ty = datafusion::logical_expr::ExprSchemable::get_type(&expr, &df_schema)
            .map_err(|e| bad(e.strip_backtrace().to_string()))?;
        if ty != DataType::Boolean {
            return Err(bad(format!(
                "a rule must be a boolean expression, this is {ty}"
            )));
        }
        let expr = ctx
            .create_physical_expr(expr, &df_schema)
            .map_err(|e| bad(e.strip_backtrace().to_string()))?;
        Ok(Self {
            view: view.clone(),
            schema,
            expr,
        })
    }

    /// Whether the rule holds for each of `rows` (NULL is false).
    pub fn holds(&self, rows: &[AnsweredRow]) -> Result<Vec<bool>, Error> {
        let bad = |detail: String| Error::Evaluate {
            view: self.view.name.clone(),
            detail,
        };
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let batch = to_batch(rows, &self.view, &self.schema, None)
            .map_err(|e| bad(e.strip_backtrace().to_string()))?;
        let array = self
            .expr
            .evaluate(&batch)
            .and_then(|v| v.into_array(batch.num_rows()))
            .map_err(|e| bad(e.strip_backtrace().to_string()))?;
        let mask = array
            .as_any()
            .downcast_ref::<BooleanArray>()
            .ok_or_else(|| bad(format!("the rule gave {}", array.data_type())))?;
        Ok((0..mask.len())
            .map(|i| mask.is_valid(i) && mask.value(i))
            .collect())
    }
}
