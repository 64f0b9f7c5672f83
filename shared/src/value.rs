//! Final aggregate values: what a view answers for one window, group and aggregate.
//!
//! Both layers produce these (the speed layer by evaluating its partial state, the batch layer by
//! reading DataFusion's output) and the serving layer renders them, so a value has one JSON shape
//! whichever layer answered. Result types follow DataFusion's: `count` is an integer, `sum` keeps
//! its argument's type, `avg` is a float (a decimal of scale S + 4 over a `decimal(P, S)`),
//! `min`/`max` keep their argument's type. A decimal renders as an exact string (`"10344.78"`).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::decimal::Decimal;

/// A final aggregate value.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AggregateValue {
    Int(i64),
    Float(f64),
    Null,
    /// Exact: a sum, min, max or avg of a `decimal(P, S)` argument.
    Decimal(Decimal),
}

impl AggregateValue {
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            AggregateValue::Int(v) => Some(*v as f64),
            AggregateValue::Float(v) => Some(*v),
            AggregateValue::Decimal(d) => Some(d.to_f64()),
            AggregateValue::Null => None,
        }
    }
}

impl fmt::Display for AggregateValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AggregateValue::Int(v) => write!(f, "{v}"),
            AggregateValue::Float(v) => write!(f, "{v}"),
            AggregateValue::Null => f.write_str("null"),
            AggregateValue::Decimal(d) => write!(f, "{d}"),
        }
    }
}
