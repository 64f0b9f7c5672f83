//! Rows of a view as the layers hand them to the serving layer.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};

use serde::{Deserialize, Serialize};

use crate::time::EventTime;
use crate::value::AggregateValue;
use crate::window::Window;

/// One value of a group-by dimension.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum GroupValue {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Time(EventTime),
}

impl GroupValue {
    fn rank(&self) -> u8 {
        match self {
            GroupValue::Null => 0,
            GroupValue::Bool(_) => 1,
            GroupValue::Int(_) => 2,
            GroupValue::Float(_) => 3,
            GroupValue::Str(_) => 4,
            GroupValue::Time(_) => 5,
        }
    }

    /// The value as JSON: strings and numbers as themselves, timestamps as RFC 3339.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            GroupValue::Null => serde_json::Value::Null,
            GroupValue::Bool(b) => (*b).into(),
            GroupValue::Int(i) => (*i).into(),
            GroupValue::Float(f) => serde_json::Number::from_f64(*f)
                .map_or(serde_json::Value::Null, serde_json::Value::Number),
            GroupValue::Str(s) => s.clone().into(),
            GroupValue::Time(t) => t.to_rfc3339().into(),
        }
    }

    /// Whether this value equals a dimension filter given as query-string text.
    pub fn matches_text(&self, text: &str) -> bool {
        match self {
            GroupValue::Null => text.eq_ignore_ascii_case("null"),
            GroupValue::Bool(b) => text.parse::<bool>().is_ok_and(|t| t == *b),
            GroupValue::Int(i) => text.parse::<i64>().is_ok_and(|t| t == *i),
            GroupValue::Float(f) => text.parse::<f64>().is_ok_and(|t| t == *f),
            GroupValue::Str(s) => s == text,
            GroupValue::Time(t) => EventTime::parse(text).is_ok_and(|x| x == *t),
        }
    }
}

impl PartialEq for GroupValue {
    /// What [`Ord`] says is equal; strings and integers (what hash-map lookups of group keys
    /// compare) without computing an order.
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (GroupValue::Str(a), GroupValue::Str(b)) => a == b,
            (GroupValue::Int(a), GroupValue::Int(b)) => a == b,
            _ => self.cmp(other) == Ordering::Equal,
        }
    }
}

impl Eq for GroupValue {}

impl PartialOrd for GroupValue {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Nulls first, then by value; floats in IEEE total order so that grouping is well defined.
impl Ord for GroupValue {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (GroupValue::Bool(a), GroupValue::Bool(b)) => a.cmp(b),
            (GroupValue::Int(a), GroupValue::Int(b)) => a.cmp(b),
            (GroupValue::Float(a), GroupValue::Float(b)) => a.total_cmp(b),
            (GroupValue::Str(a), GroupValue::Str(b)) => a.cmp(b),
            (GroupValue::Time(a), GroupValue::Time(b)) => a.cmp(b),
            _ => self.rank().cmp(&other.rank()),
        }
    }
}

/// Hashes the value alone, one write per value (the speed layer hashes a group key per event and
/// view): equal values hash alike, and values of different kinds that hash alike are told apart
/// by equality (a view's dimension has one kind, or null). Hashes live in memory only.
impl Hash for GroupValue {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        match self {
            GroupValue::Null => state.write_u8(0),
            GroupValue::Bool(b) => state.write_u8(u8::from(*b)),
            GroupValue::Int(i) => state.write_i64(*i),
            GroupValue::Float(f) => state.write_u64(f.to_bits()),
            GroupValue::Str(s) => state.write(s.as_bytes()),
            GroupValue::Time(t) => state.write_i64(t.millis()),
        }
    }
}

impl fmt::Display for GroupValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GroupValue::Null => f.write_str("null"),
            GroupValue::Bool(b) => write!(f, "{b}"),
            GroupValue::Int(i) => write!(f, "{i}"),
            GroupValue::Float(x) => write!(f, "{x}"),
            GroupValue::Str(s) => f.write_str(s),
            GroupValue::Time(t) => write!(f, "{t}"),
        }
    }
}

/// The values of a view's group-by dimensions, in `group_by` order.
pub type GroupKey = Vec<GroupValue>;

/// Which layer produced a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Batch,
    Speed,
}

/// One window and group of a view with its final values, in aggregate order.
#[derive(Debug, Clone, PartialEq)]
pub struct ViewRow {
    pub window: Window,
    pub group: GroupKey,
    pub values: Vec<AggregateValue>,
}

impl ViewRow {
    /// Result order: by window start, then window end (sessions), then group.
    pub fn order(a: &ViewRow, b: &ViewRow) -> Ordering {
        a.window
            .start
            .cmp(&b.window.start)
            .then(a.window.end.cmp(&b.window.end))
            .then_with(|| a.group.cmp(&b.group))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_values_order_nulls_first_and_floats_totally() {
        let mut v = [
            GroupValue::Str("b".into()),
            GroupValue::Null,
            GroupValue::Str("a".into()),
        ];
        v.sort();
        assert_eq!(v[0], GroupValue::Null);
        assert_eq!(v[1], GroupValue::Str("a".into()));
        assert_eq!(GroupValue::Float(f64::NAN), GroupValue::Float(f64::NAN));
        assert!(GroupValue::Float(-0.0) < GroupValue::Float(0.0));
    }

    #[test]
    fn equality_is_what_the_order_calls_equal_and_equal_values_hash_alike() {
        let values = [
            GroupValue::Null,
            GroupValue::Bool(true),
            GroupValue::Int(7),
            GroupValue::Int(-7),
            GroupValue::Float(7.0),
            GroupValue::Float(-0.0),
            GroupValue::Float(0.0),
            GroupValue::Float(f64::NAN),
            GroupValue::Str("Pune".into()),
            GroupValue::Str("Pun".into()),
            GroupValue::Str(String::new()),
            GroupValue::Time(EventTime(7)),
        ];
        for a in &values {
            for b in &values {
                assert_eq!(a == b, a.cmp(b) == Ordering::Equal, "{a:?} vs {b:?}");
                if a == b {
                    let hash = |v: &GroupValue| {
                        use std::hash::BuildHasher;
                        std::hash::BuildHasherDefault::<std::hash::DefaultHasher>::default()
                            .hash_one(vec![v.clone(), GroupValue::Str("x".into())])
                    };
                    assert_eq!(hash(a), hash(b), "equal values hash alike: {a:?}");
                }
                assert!(a == &a.clone(), "{a:?}");
            }
        }
    }

    #[test]
    fn dimension_filters_compare_by_type() {
        assert!(GroupValue::Str("Chennai".into()).matches_text("Chennai"));
        assert!(GroupValue::Int(7).matches_text("7"));
        assert!(!GroupValue::Int(7).matches_text("seven"));
        assert!(GroupValue::Bool(true).matches_text("true"));
        assert!(GroupValue::Null.matches_text("null"));
    }
}
