//! The size of values a query builds: scalar functions whose answer can be far larger than
//! their arguments are admitted against the query's memory pool before they run.
//!
//! ```text
//!  repeat, lpad, rpad, concat, concat_ws, replace, regexp_replace, `||`
//!      ─► bound on the batch's answer, from the arguments' lengths (pure: `Growth::bound`)
//!      ─► the function's reservation in the query's memory pool resized to it
//!           ─► the function runs   └─► no room: ResourcesExhausted (413)
//! ```
//!
//! DataFusion reserves memory for operators (joins, sorts, aggregates), not for the values a
//! scalar function returns: `repeat('x', 400000000)` allocated 400 MB past a 256 MiB pool, and
//! a chain of `s || s` doubles a value per step. The other scalar functions answer in at most a
//! small constant times their arguments' size (`upper`, `translate`, `to_hex`, `overlay`), which
//! the operators and the answer's own accounting already bound.
//!
//! A value built from constants alone (every argument a literal) is folded into the plan while
//! it is optimized, and the plan is copied many times over: a 100 MB literal took 900 MB of
//! memory the pool never saw. So such a value may be at most [`MAX_CONSTANT_BYTES`].
//!
//! Array functions: those whose answer is at most as large as their arguments (`array_length`,
//! `string_to_array`, `array_to_string`, `make_array`, element access, membership: what
//! `= ANY(...)` and the PostgreSQL clients' catalog queries use) stay; the others are not
//! registered (`array_repeat(x, n)`, `range(0, n)` and `generate_series` as a scalar build `n`
//! elements at once; `array_concat` doubles like `||`).
//!
//! Each session registers its own wrapped functions, holding that session's pool. The bound is
//! an upper bound (a character counted at four bytes unless every byte is ASCII, say): a query
//! refused by it would at worst have needed close to that much.

use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::compute::kernels::concat_elements::concat_elements_dyn;
use datafusion::arrow::datatypes::{DataType, FieldRef};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Result, ScalarValue, plan_err};
use datafusion::error::DataFusionError;
use datafusion::execution::FunctionRegistry;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryPool, MemoryReservation};
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::{
    BinaryExpr, ColumnarValue, Documentation, Expr, LogicalPlan, Operator, ReturnFieldArgs,
    ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::optimizer::AnalyzerRule;
use datafusion::prelude::SessionContext;

/// How a function's answer can grow with its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Growth {
    /// `repeat(s, n)`: |s| × n.
    Repeat,
    /// `lpad(s, n[, fill])`, `rpad`: n characters.
    Pad,
    /// `concat(a, b, ...)` and `a || b`: the sum of the arguments.
    Concat,
    /// `concat_ws(sep, a, b, ...)`: the arguments and a separator between each two.
    ConcatWs,
    /// `replace(s, from, to)`: every `from` (or every boundary, if empty) becomes `to`.
    Replace,
    /// `regexp_replace(s, pattern, replacement[, flags])`: a match at every position, each
    /// replaced by the replacement with every `$n` as long as `s`.
    RegexpReplace,
}

/// The largest value a function may build from constant arguments alone (see the module docs).
pub(super) const MAX_CONSTANT_BYTES: u64 = 1 << 20;

/// The functions wrapped, by name.
const WRAPPED: [(&str, Growth); 7] = [
    ("repeat", Growth::Repeat),
    ("lpad", Growth::Pad),
    ("rpad", Growth::Pad),
    ("concat", Growth::Concat),
    ("concat_ws", Growth::ConcatWs),
    ("replace", Growth::Replace),
    ("regexp_replace", Growth::RegexpReplace),
];

/// The array functions a session keeps (see the module docs); the names are DataFusion's.
const ARRAY_FUNCTIONS_KEPT: [&str; 14] = [
    "array_length",
    "array_dims",
    "array_ndims",
    "array_element",
    "array_has",
    "array_has_all",
    "array_has_any",
    "array_position",
    "array_to_string",
    "array_empty",
    "cardinality",
    "make_array",
    "string_to_array",
    "array_distinct",
];

/// Byte lengths of a string argument, per row or the same for every row.
enum Lengths {
    Same(Option<usize>),
    Rows(Vec<Option<usize>>),
}

impl Lengths {
    fn of(value: &ColumnarValue) -> Self {
        match value {
            ColumnarValue::Scalar(s) => Lengths::Same(scalar_len(s)),
            ColumnarValue::Array(a) => Lengths::Rows(array_lens(a.as_ref())),
        }
    }

    fn at(&self, row: usize) -> usize {
        match self {
            Lengths::Same(n) => n.unwrap_or(0),
            Lengths::Rows(rows) => rows.get(row).copied().flatten().unwrap_or(0),
        }
    }
}

fn scalar_len(value: &ScalarValue) -> Option<usize> {
    match value {
        ScalarValue::Utf8(s) | ScalarValue::LargeUtf8(s) | ScalarValue::Utf8View(s) => {
            s.as_ref().map(String::len)
        }
        ScalarValue::Binary(b) | ScalarValue::LargeBinary(b) | ScalarValue::BinaryView(b) => {
            b.as_ref().map(Vec::len)
        }
        v if v.is_null() => None,
        // Numbers and other scalars become short strings.
        _ => Some(40),
    }
}

fn array_lens(array: &dyn Array) -> Vec<Option<usize>> {
    let lens = |n: usize, len: &dyn Fn(usize) -> usize| -> Vec<Option<usize>> {
        (0..n)
            .map(|i| (!array.is_null(i)).then(|| len(i)))
            .collect()
    };
    match array.data_type() {
        DataType::Utf8 => {
            let a = array.as_string::<i32>();
            lens(a.len(), &|i| a.value(i).len())
        }
        DataType::LargeUtf8 => {
            let a = array.as_string::<i64>();
            lens(a.len(), &|i| a.value(i).len())
        }
        DataType::Utf8View => {
            let a = array.as_string_view();
            lens(a.len(), &|i| a.value(i).len())
        }
        DataType::Binary => {
            let a = array.as_binary::<i32>();
            lens(a.len(), &|i| a.value(i).len())
        }
        DataType::LargeBinary => {
            let a = array.as_binary::<i64>();
            lens(a.len(), &|i| a.value(i).len())
        }
        DataType::BinaryView => {
            let a = array.as_binary_view();
            lens(a.len(), &|i| a.value(i).len())
        }
        _ => lens(array.len(), &|_| 40),
    }
}

/// An integer argument (a count or a length), per row or the same for every row.
enum Counts {
    Same(i64),
    Rows(Vec<i64>),
}

impl Counts {
    fn of(value: &ColumnarValue) -> Self {
        match value {
            ColumnarValue::Scalar(s) => Counts::Same(scalar_int(s)),
            ColumnarValue::Array(a) => Counts::Rows(
                (0..a.len())
                    .map(|i| {
                        ScalarValue::try_from_array(a.as_ref(), i)
                            .map(|s| scalar_int(&s))
                            .unwrap_or(0)
                    })
                    .collect(),
            ),
        }
    }

    fn at(&self, row: usize) -> u64 {
        let n = match self {
            Counts::Same(n) => *n,
            Counts::Rows(rows) => rows.get(row).copied().unwrap_or(0),
        };
        u64::try_from(n).unwrap_or(0)
    }
}

fn scalar_int(value: &ScalarValue) -> i64 {
    match value {
        ScalarValue::Int64(Some(n)) => *n,
        ScalarValue::Int32(Some(n)) => i64::from(*n),
        ScalarValue::Int16(Some(n)) => i64::from(*n),
        ScalarValue::Int8(Some(n)) => i64::from(*n),
        ScalarValue::UInt64(Some(n)) => i64::try_from(*n).unwrap_or(i64::MAX),
        ScalarValue::UInt32(Some(n)) => i64::from(*n),
        ScalarValue::UInt16(Some(n)) => i64::from(*n),
        ScalarValue::UInt8(Some(n)) => i64::from(*n),
        _ => 0,
    }
}

/// Whether every string of an argument is ASCII (a character is then one byte).
fn ascii(value: &ColumnarValue) -> bool {
    match value {
        ColumnarValue::Scalar(
            ScalarValue::Utf8(s) | ScalarValue::LargeUtf8(s) | ScalarValue::Utf8View(s),
        ) => s.as_deref().is_none_or(str::is_ascii),
        ColumnarValue::Array(a) => match a.data_type() {
            DataType::Utf8 => a.as_string::<i32>().values().is_ascii(),
            DataType::LargeUtf8 => a.as_string::<i64>().values().is_ascii(),
            DataType::Utf8View => a.as_string_view().iter().flatten().all(str::is_ascii),
            _ => false,
        },
        _ => false,
    }
}

/// The `$` signs of a replacement (each may insert a whole capture group).
fn dollars(value: &ColumnarValue, row: usize) -> u64 {
    let text = match value {
        ColumnarValue::Scalar(
            ScalarValue::Utf8(s) | ScalarValue::LargeUtf8(s) | ScalarValue::Utf8View(s),
        ) => s.clone(),
        ColumnarValue::Array(a) => match ScalarValue::try_from_array(a.as_ref(), row) {
            Ok(ScalarValue::Utf8(s) | ScalarValue::LargeUtf8(s) | ScalarValue::Utf8View(s)) => s,
            _ => None,
        },
        _ => None,
    };
    text.map_or(0, |t| t.matches('$').count() as u64)
}

fn global_flag(args: &[ColumnarValue]) -> bool {
    match args.get(3) {
        None => false,
        Some(ColumnarValue::Scalar(
            ScalarValue::Utf8(s) | ScalarValue::LargeUtf8(s) | ScalarValue::Utf8View(s),
        )) => s.as_deref().is_some_and(|f| f.contains('g')),
        // Flags per row: assume any row may be global.
        Some(_) => true,
    }
}

impl Growth {
    /// An upper bound on the bytes the function's answer holds for `rows` rows of `args`. Pure.
    pub(super) fn bound(self, args: &[ColumnarValue], rows: usize) -> u64 {
        let rows = rows.max(1);
        let len = |i: usize| args.get(i).map(Lengths::of);
        let mut total: u64 = 0;
        match self {
            Growth::Repeat => {
                let (Some(s), Some(n)) = (len(0), args.get(1).map(Counts::of)) else {
                    return 0;
                };
                for row in 0..rows {
                    total = total.saturating_add((s.at(row) as u64).saturating_mul(n.at(row)));
                }
            }
            Growth::Pad => {
                let Some(n) = args.get(1).map(Counts::of) else {
                    return 0;
                };
                let width = if args
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != 1)
                    .all(|(_, a)| ascii(a))
                {
                    1
                } else {
                    4
                };
                for row in 0..rows {
                    total = total.saturating_add(n.at(row).saturating_mul(width));
                }
            }
            Growth::Concat | Growth::ConcatWs => {
                let lens: Vec<Lengths> = args.iter().map(Lengths::of).collect();
                let separators = args.len().saturating_sub(2) as u64;
                for row in 0..rows {
                    for (i, l) in lens.iter().enumerate() {
                        let n = l.at(row) as u64;
                        let n = if self == Growth::ConcatWs && i == 0 {
                            n.saturating_mul(separators)
                        } else {
                            n
                        };
                        total = total.saturating_add(n);
                    }
                }
            }
            Growth::Replace => {
                let (Some(s), Some(from), Some(to)) = (len(0), len(1), len(2)) else {
                    return 0;
                };
                for row in 0..rows {
                    let s = s.at(row) as u64;
                    let places = s / (from.at(row).max(1) as u64) + 1;
                    total = total
                        .saturating_add(s)
                        .saturating_add(places.saturating_mul(to.at(row) as u64));
                }
            }
            Growth::RegexpReplace => {
                let (Some(s), Some(to), Some(replacement)) = (len(0), len(2), args.get(2)) else {
                    return 0;
                };
                let global = global_flag(args);
                for row in 0..rows {
                    let s = s.at(row) as u64;
                    let one = (to.at(row) as u64)
                        .saturating_add(dollars(replacement, row).saturating_mul(s));
                    let matches = if global { s + 1 } else { 1 };
                    total = total
                        .saturating_add(s)
                        .saturating_add(matches.saturating_mul(one));
                }
            }
        }
        total
    }
}

/// A scalar function admitted against a query's memory pool (see the module docs).
#[derive(Debug)]
struct Bounded {
    inner: Arc<ScalarUDF>,
    growth: Growth,
    reservation: Mutex<MemoryReservation>,
}

impl PartialEq for Bounded {
    fn eq(&self, other: &Self) -> bool {
        self.inner == other.inner && self.growth == other.growth
    }
}

impl Eq for Bounded {}

impl Hash for Bounded {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.inner.hash(state);
        self.growth.hash(state);
    }
}

/// Holds `bytes` of the pool for this function's answer, refusing them unless the pool has
/// room. A function keeps the reservation of its latest answer (until its next call, or the end
/// of the query): the intermediate values of one expression are alive together, so each counts
/// while the next is built (`repeat(..) || ..` cannot build its concatenation in room its
/// argument already takes).
fn admit(
    reservation: &Mutex<MemoryReservation>,
    name: &str,
    args: &[ColumnarValue],
    bytes: u64,
) -> Result<()> {
    let constant = args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_)));
    if constant && bytes > MAX_CONSTANT_BYTES {
        return Err(DataFusionError::ResourcesExhausted(format!(
            "{name} would build a constant of up to {bytes} bytes; values built from constants \
             alone are limited to {MAX_CONSTANT_BYTES} bytes"
        )));
    }
    let reservation = reservation.lock().unwrap_or_else(|e| e.into_inner());
    let wanted = usize::try_from(bytes).unwrap_or(usize::MAX);
    reservation.try_resize(wanted).map_err(|_| {
        DataFusionError::ResourcesExhausted(format!(
            "{name} would build values of up to {bytes} bytes in one batch, more than the query's memory pool has free"
        ))
    })
}

impl ScalarUDFImpl for Bounded {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn schema_name(&self, args: &[Expr]) -> Result<String> {
        self.inner.schema_name(args)
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn is_strict(&self) -> bool {
        self.inner.is_strict()
    }

    fn short_circuits(&self) -> bool {
        self.inner.short_circuits()
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }

    fn with_updated_config(&self, _config: &ConfigOptions) -> Option<ScalarUDF> {
        None
    }

    // `simplify` is not delegated: a function's own simplification builds calls of the
    // unwrapped function (concat folds its literals that way).

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        admit(
            &self.reservation,
            self.name(),
            &args.args,
            self.growth.bound(&args.args, args.number_rows),
        )?;
        self.inner.invoke_with_args(args)
    }
}

/// `a || b` on strings, admitted like `concat`; named and typed as the operator.
#[derive(Debug)]
struct ConcatOperator {
    signature: Signature,
    reservation: Mutex<MemoryReservation>,
}

impl PartialEq for ConcatOperator {
    fn eq(&self, _other: &Self) -> bool {
        true
    }
}

impl Eq for ConcatOperator {}

impl Hash for ConcatOperator {
    fn hash<H: Hasher>(&self, state: &mut H) {
        CONCAT_OPERATOR.hash(state);
    }
}

const CONCAT_OPERATOR: &str = "tandem_string_concat";

impl ScalarUDFImpl for ConcatOperator {
    fn name(&self) -> &str {
        CONCAT_OPERATOR
    }

    /// The operator's own name, so that a column called `a || b` keeps its name.
    fn schema_name(&self, args: &[Expr]) -> Result<String> {
        match args {
            [left, right] => Ok(format!("{} || {}", left.schema_name(), right.schema_name())),
            _ => plan_err!("{CONCAT_OPERATOR} takes two arguments"),
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        match arg_types {
            [left, _] => Ok(left.clone()),
            _ => plan_err!("{CONCAT_OPERATOR} takes two arguments"),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        admit(
            &self.reservation,
            "||",
            &args.args,
            Growth::Concat.bound(&args.args, rows),
        )?;
        let [left, right] = args.args.as_slice() else {
            return plan_err!("{CONCAT_OPERATOR} takes two arguments");
        };
        let both_scalar = matches!(
            (left, right),
            (ColumnarValue::Scalar(_), ColumnarValue::Scalar(_))
        );
        let size = if both_scalar { 1 } else { rows };
        let left: ArrayRef = left.to_array(size)?;
        let right: ArrayRef = right.to_array(size)?;
        let joined = concat_elements_dyn(left.as_ref(), right.as_ref())?;
        if both_scalar {
            return Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(
                joined.as_ref(),
                0,
            )?));
        }
        Ok(ColumnarValue::Array(joined))
    }
}

/// Rewrites `a || b` of strings into [`ConcatOperator`], after type coercion (both sides then
/// have one string type).
#[derive(Debug)]
struct ConcatOperatorRule {
    function: Arc<ScalarUDF>,
}

impl AnalyzerRule for ConcatOperatorRule {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> Result<LogicalPlan> {
        let function = &self.function;
        let rewritten = plan.transform_up_with_subqueries(|node| {
            node.map_expressions(|expr| {
                expr.transform_up(|e| match e {
                    Expr::BinaryExpr(BinaryExpr {
                        left,
                        op: Operator::StringConcat,
                        right,
                    }) => Ok(Transformed::yes(Expr::ScalarFunction(
                        ScalarFunction::new_udf(Arc::clone(function), vec![*left, *right]),
                    ))),
                    other => Ok(Transformed::no(other)),
                })
            })
        })?;
        Ok(rewritten.data)
    }

    fn name(&self) -> &str {
        "tandem_bounded_string_concat"
    }
}

/// Registers the admitted functions and the `||` rewrite in `ctx`, against its memory pool.
pub(super) fn bound_values(ctx: &SessionContext) -> Result<()> {
    for function in datafusion::functions_nested::all_default_nested_functions() {
        if !ARRAY_FUNCTIONS_KEPT.contains(&function.name()) {
            ctx.deregister_udf(function.name());
        }
    }
    let pool: Arc<dyn MemoryPool> = Arc::clone(&ctx.runtime_env().memory_pool);
    let reservation =
        |name: &str| Mutex::new(MemoryConsumer::new(format!("value of {name}")).register(&pool));
    for (name, growth) in WRAPPED {
        let Ok(inner) = ctx.udf(name) else {
            continue;
        };
        ctx.register_udf(ScalarUDF::new_from_impl(Bounded {
            inner,
            growth,
            reservation: reservation(name),
        }));
    }
    let function = Arc::new(ScalarUDF::new_from_impl(ConcatOperator {
        signature: Signature::any(2, Volatility::Immutable),
        reservation: reservation("||"),
    }));
    ctx.add_analyzer_rule(Arc::new(ConcatOperatorRule { function }));
    Ok(())
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{Int64Array, StringArray};

    use super::*;

    fn text(s: &str) -> ColumnarValue {
        ColumnarValue::Scalar(ScalarValue::Utf8(Some(s.to_owned())))
    }

    fn int(n: i64) -> ColumnarValue {
        ColumnarValue::Scalar(ScalarValue::Int64(Some(n)))
    }

    fn texts(values: &[Option<&str>]) -> ColumnarValue {
        ColumnarValue::Array(Arc::new(StringArray::from(values.to_vec())))
    }

    #[test]
    fn bounds_are_at_least_what_the_functions_build() {
        assert_eq!(
            Growth::Repeat.bound(&[text("ab"), int(1_000)], 1),
            2_000,
            "repeat"
        );
        // Per row: 3 × 4 and 1 × 4; a null string builds nothing.
        let counts = ColumnarValue::Array(Arc::new(Int64Array::from(vec![4, 4, 4])));
        assert_eq!(
            Growth::Repeat.bound(&[texts(&[Some("abc"), Some("x"), None]), counts], 3),
            16
        );
        assert_eq!(Growth::Repeat.bound(&[text("x"), int(-5)], 1), 0);
        assert_eq!(Growth::Pad.bound(&[text("x"), int(100)], 2), 200);
        assert_eq!(Growth::Pad.bound(&[text("x"), int(100), text("é")], 1), 400);
        assert_eq!(
            Growth::Concat.bound(&[texts(&[Some("ab"), Some("c")]), text("xyz")], 2),
            2 + 3 + 1 + 3
        );
        assert_eq!(
            Growth::ConcatWs.bound(&[text("--"), text("a"), text("b"), text("c")], 1),
            4 + 3
        );
        // "aaaa".replace("a", "bbb") is 12 bytes; "ab".replace("", "xy") is "xyaxybxy", 8.
        assert!(Growth::Replace.bound(&[text("aaaa"), text("a"), text("bbb")], 1) >= 12);
        assert!(Growth::Replace.bound(&[text("ab"), text(""), text("xy")], 1) >= 8);
        // Every position matches, each replaced by the whole string twice.
        let bound =
            Growth::RegexpReplace.bound(&[text("abcd"), text("(.*)"), text("$1$1"), text("g")], 1);
        assert!(bound >= 4 * 2 * 5, "{bound}");
        assert_eq!(
            Growth::Repeat.bound(&[text("x"), int(i64::MAX)], 8192),
            u64::MAX,
            "saturates, never wraps"
        );
    }
}
