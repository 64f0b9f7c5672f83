//! Event-time bounds a query's filters put on a time column, for pruning. Pure.
//!
//! The bounds are a superset of what the filters admit (a table that prunes with them and then
//! lets DataFusion apply the filters again answers exactly): only comparisons of the column
//! itself with a literal are read, anything else leaves the range open.

use datafusion::common::ScalarValue;
use datafusion::logical_expr::{Between, BinaryExpr, Expr, Operator};
use tandem_shared::coverage::StartRange;
use tandem_shared::time::EventTime;

/// The literal as epoch milliseconds, rounded down and up (equal when it is whole).
fn millis(value: &ScalarValue) -> Option<(i64, i64)> {
    let (v, per_ms): (i64, i64) = match value {
        ScalarValue::TimestampSecond(Some(v), _) => {
            return Some((v.checked_mul(1000)?, v.checked_mul(1000)?));
        }
        ScalarValue::TimestampMillisecond(Some(v), _) => (*v, 1),
        ScalarValue::TimestampMicrosecond(Some(v), _) => (*v, 1_000),
        ScalarValue::TimestampNanosecond(Some(v), _) => (*v, 1_000_000),
        ScalarValue::Date32(Some(d)) => {
            let ms = i64::from(*d).checked_mul(86_400_000)?;
            return Some((ms, ms));
        }
        ScalarValue::Date64(Some(ms)) => (*ms, 1),
        _ => return None,
    };
    let floor = v.div_euclid(per_ms);
    let ceil = if v.rem_euclid(per_ms) == 0 {
        floor
    } else {
        floor + 1
    };
    Some((floor, ceil))
}

fn is_column(expr: &Expr, column: &str) -> bool {
    matches!(expr, Expr::Column(c) if c.name == column)
}

fn literal(expr: &Expr) -> Option<&ScalarValue> {
    match expr {
        Expr::Literal(v, _) => Some(v),
        _ => None,
    }
}

/// The range `expr` bounds `column` to, if it bounds it at all.
fn bound(expr: &Expr, column: &str) -> Option<StartRange> {
    let open = StartRange::new(EventTime::MIN, EventTime::MAX);
    match expr {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            if *op == Operator::And {
                let (l, r) = (bound(left, column), bound(right, column));
                return match (l, r) {
                    (None, None) => None,
                    (l, r) => Some(intersect(l.unwrap_or(open), r.unwrap_or(open))),
                };
            }
            // `column op literal`, or `literal op column` read the other way round.
            let (op, value) = if is_column(left, column) {
                (*op, literal(right)?)
            } else if is_column(right, column) {
                (op.swap()?, literal(left)?)
            } else {
                return None;
            };
            let (floor, ceil) = millis(value)?;
            let (from, to) = match op {
                Operator::Eq => (floor, floor.checked_add(1)?),
                Operator::Gt | Operator::GtEq => (floor, i64::MAX),
                Operator::Lt => (i64::MIN, ceil),
                Operator::LtEq => (i64::MIN, floor.checked_add(1)?),
                _ => return None,
            };
            Some(StartRange::new(EventTime(from), EventTime(to)))
        }
        Expr::Between(Between {
            expr,
            negated: false,
            low,
            high,
        }) if is_column(expr, column) => {
            let (low, _) = millis(literal(low)?)?;
            let (high, _) = millis(literal(high)?)?;
            Some(StartRange::new(
                EventTime(low),
                EventTime(high.checked_add(1)?),
            ))
        }
        _ => None,
    }
}

fn intersect(a: StartRange, b: StartRange) -> StartRange {
    StartRange::new(a.from.max(b.from), a.to.min(b.to))
}

/// Whether `expr` bounds `column` (so a table can push it down, inexactly).
pub fn bounds_column(expr: &Expr, column: &str) -> bool {
    bound(expr, column).is_some()
}

/// The range of `column` the conjunction of `filters` admits, at most.
pub fn time_range(filters: &[Expr], column: &str) -> StartRange {
    filters
        .iter()
        .filter_map(|f| bound(f, column))
        .fold(StartRange::new(EventTime::MIN, EventTime::MAX), intersect)
}

/// The literal `filters` require `column` to equal, if one does.
pub fn equality<'a>(filters: &'a [Expr], column: &str) -> Option<&'a ScalarValue> {
    filters.iter().find_map(|f| match f {
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Eq,
            right,
        }) if is_column(left, column) => literal(right),
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Eq,
            right,
        }) if is_column(right, column) => literal(left),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::{col, lit};

    fn ts_ms(v: i64) -> Expr {
        lit(ScalarValue::TimestampMillisecond(
            Some(v),
            Some("UTC".into()),
        ))
    }

    fn ts_ns(v: i64) -> Expr {
        lit(ScalarValue::TimestampNanosecond(Some(v), None))
    }

    fn range(from: i64, to: i64) -> StartRange {
        StartRange::new(EventTime(from), EventTime(to))
    }

    #[test]
    fn comparisons_bound_the_column_from_both_sides() {
        let filters = [col("ts").gt_eq(ts_ms(1_000)), col("ts").lt(ts_ms(5_000))];
        assert_eq!(time_range(&filters, "ts"), range(1_000, 5_000));
        // Reversed operands, <=, and a conjunction in one expression.
        let filters = [ts_ms(1_000)
            .lt(col("ts"))
            .and(col("ts").lt_eq(ts_ms(4_999)))];
        assert_eq!(time_range(&filters, "ts"), range(1_000, 5_000));
        let filters = [col("ts").between(ts_ms(10), ts_ms(20))];
        assert_eq!(time_range(&filters, "ts"), range(10, 21));
        assert_eq!(time_range(&[col("ts").eq(ts_ms(7))], "ts"), range(7, 8));
    }

    #[test]
    fn finer_units_round_outwards() {
        // 1.5 ms and 2.5 ms in nanoseconds: whole milliseconds 1 and 2 may still match.
        let filters = [
            col("ts").gt(ts_ns(1_500_000)),
            col("ts").lt(ts_ns(2_500_000)),
        ];
        assert_eq!(time_range(&filters, "ts"), range(1, 3));
        let filters = [col("ts").lt_eq(ts_ns(-1_500_000))];
        assert_eq!(time_range(&filters, "ts"), range(i64::MIN, -1));
    }

    #[test]
    fn anything_else_leaves_the_range_open() {
        let open = range(i64::MIN, i64::MAX);
        let other = [
            col("other").gt(ts_ms(5)),
            col("ts").not_eq(ts_ms(5)),
            col("ts").gt(lit(5i64)),
            col("ts").gt(ts_ms(1)).or(col("ts").lt(ts_ms(0))),
            col("ts").not_between(ts_ms(1), ts_ms(2)),
        ];
        for f in &other {
            assert_eq!(time_range(std::slice::from_ref(f), "ts"), open, "{f}");
            assert!(!bounds_column(f, "ts"), "{f}");
        }
        assert!(bounds_column(&col("ts").gt(ts_ms(1)), "ts"));
    }

    #[test]
    fn equalities_are_found_either_way_round() {
        let filters = [col("ts").gt(ts_ms(1)), lit("Oslo").eq(col("city"))];
        assert_eq!(equality(&filters, "city"), Some(&ScalarValue::from("Oslo")));
        assert_eq!(equality(&filters, "ts"), None);
    }
}
