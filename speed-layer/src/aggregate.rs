//! Mergeable partial aggregates: the state the speed layer keeps per window and group.
//!
//! The contract follows DataFusion's `Accumulator`: `update` folds in one input value, `merge`
//! combines two partial states of disjoint inputs, `evaluate` produces the final value. Merge is
//! associative and commutative, and merging the partials of a partitioned input equals aggregating
//! the whole input (exactly for count/sum/min/max/avg over integers; up to floating-point
//! summation order for float sums; within the sketch's error bound for distinct counts and
//! percentiles).
//!
//! Result types follow DataFusion's, so a speed-layer value and a batch-layer value of the same
//! aggregate have the same JSON shape: `count` is an integer, `sum` keeps its argument's type,
//! `avg` is a float, `min`/`max` keep their argument's type.

use std::fmt;

use datasketches::common::SearchCriteria;
use datasketches::hll::{HllSketch, HllType, HllUnion};
use datasketches::kll::{KllFloat, KllSketch};
use serde::{Deserialize, Serialize};

use tandem_shared::value::AggregateValue;
use tandem_shared::view::AggregateFunction;

use tandem_shared::sketch::{self, WindowState, new_hll, new_kll};
pub use tandem_shared::sketch::{HLL_LG_K, KLL_K};

/// How far a speed-layer estimate may be from the exact value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ErrorBound {
    /// A distinct count's relative standard error (HyperLogLog: 1.04 / sqrt(2^lg_k)).
    RelativeStandardError(f64),
    /// A percentile's normalized rank error (KLL, single-sided, 99% confidence).
    RankError(f64),
}

/// The error bound of `function`'s speed-layer value; `None` for exact aggregates.
pub fn error_bound(function: AggregateFunction) -> Option<ErrorBound> {
    match function {
        AggregateFunction::CountDistinct => {
            Some(ErrorBound::RelativeStandardError(sketch::distinct_rse()))
        }
        AggregateFunction::Percentile { .. } => {
            Some(ErrorBound::RankError(new_kll().normalized_rank_error()))
        }
        _ => None,
    }
}

/// Errors from restoring serialized state. Internal: state is only written by Tandem itself.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot merge a {left} state with a {right} state")]
    Mismatch {
        left: &'static str,
        right: &'static str,
    },
    #[error("corrupt sketch state: {detail}")]
    Sketch { detail: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The type of an aggregate's argument after DataFusion type checking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ArgumentType {
    Int64,
    Float64,
    /// Any other type: only valid for `count` and `count(DISTINCT ..)`.
    Other,
}

/// One input value, already extracted from an Arrow column.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Input<'a> {
    Null,
    Int(i64),
    Float(f64),
    /// Any other non-null value, as bytes that identify it (for distinct counting).
    Bytes(&'a [u8]),
}

/// Partial state of one aggregate over one window and group.
#[derive(Clone)]
pub enum PartialAggregate {
    Count(i64),
    SumInt(Option<i64>),
    SumFloat(Option<f64>),
    MinInt(Option<i64>),
    MaxInt(Option<i64>),
    MinFloat(Option<f64>),
    MaxFloat(Option<f64>),
    Avg {
        sum: f64,
        count: i64,
    },
    Distinct(Box<HllSketch>),
    Percentile {
        q: f64,
        sketch: Box<KllSketch<KllFloat<f64>>>,
    },
}

impl fmt::Debug for PartialAggregate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.kind(), self.evaluate())
    }
}

impl PartialAggregate {
    /// The empty state of `function` over an argument of type `arg`.
    pub fn new(function: AggregateFunction, arg: ArgumentType) -> Self {
        use AggregateFunction as F;
        match (function, arg) {
            (F::Count, _) => Self::Count(0),
            (F::CountDistinct, _) => Self::Distinct(Box::new(new_hll())),
            (F::Sum, ArgumentType::Int64) => Self::SumInt(None),
            (F::Sum, _) => Self::SumFloat(None),
            (F::Min, ArgumentType::Int64) => Self::MinInt(None),
            (F::Min, _) => Self::MinFloat(None),
            (F::Max, ArgumentType::Int64) => Self::MaxInt(None),
            (F::Max, _) => Self::MaxFloat(None),
            (F::Avg, _) => Self::Avg { sum: 0.0, count: 0 },
            (F::Percentile { q }, _) => Self::Percentile {
                q,
                sketch: Box::new(new_kll()),
            },
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::Count(_) => "count",
            Self::SumInt(_) => "sum_int",
            Self::SumFloat(_) => "sum_float",
            Self::MinInt(_) => "min_int",
            Self::MaxInt(_) => "max_int",
            Self::MinFloat(_) => "min_float",
            Self::MaxFloat(_) => "max_float",
            Self::Avg { .. } => "avg",
            Self::Distinct(_) => "distinct",
            Self::Percentile { .. } => "percentile",
        }
    }

    /// The state the batch layer stored for `function` over one window, as a partial that
    /// merges with the speed layer's: `None` for aggregates whose exact value is their state
    /// (count, sum, min, max) and for a state that was not stored.
    pub fn from_stored(function: AggregateFunction, stored: &WindowState) -> Result<Option<Self>> {
        let corrupt = |e: &dyn fmt::Display| Error::Sketch {
            detail: e.to_string(),
        };
        Ok(match (function, stored) {
            (AggregateFunction::Avg, WindowState::Avg { sum, count }) => Some(Self::Avg {
                sum: *sum,
                count: *count,
            }),
            (AggregateFunction::CountDistinct, WindowState::Distinct(bytes)) => {
                Some(Self::Distinct(Box::new(
                    HllSketch::deserialize(bytes).map_err(|e| corrupt(&e))?,
                )))
            }
            (AggregateFunction::Percentile { q }, WindowState::Quantiles(bytes)) => {
                Some(Self::Percentile {
                    q,
                    sketch: Box::new(KllSketch::deserialize(bytes).map_err(|e| corrupt(&e))?),
                })
            }
            _ => None,
        })
    }

    /// Counts one row for `count(*)`.
    #[inline]
    pub fn update_row(&mut self) {
        if let Self::Count(n) = self {
            *n += 1;
        }
    }

    /// Folds in one argument value. Nulls are ignored, as in SQL.
    #[inline]
    pub fn update(&mut self, input: Input<'_>) {
        let (i, f) = match input {
            Input::Null => return,
            Input::Int(v) => (Some(v), v as f64),
            Input::Float(v) => (None, v),
            Input::Bytes(_) => (None, f64::NAN),
        };
        match self {
            Self::Count(n) => *n += 1,
            Self::SumInt(s) => *s = Some(s.unwrap_or(0).wrapping_add(i.unwrap_or(f as i64))),
            Self::SumFloat(s) => *s = Some(s.unwrap_or(0.0) + f),
            Self::MinInt(m) => {
                *m = Some(m.map_or(i.unwrap_or(f as i64), |m| m.min(i.unwrap_or(f as i64))))
            }
            Self::MaxInt(m) => {
                *m = Some(m.map_or(i.unwrap_or(f as i64), |m| m.max(i.unwrap_or(f as i64))))
            }
            Self::MinFloat(m) => *m = Some(m.map_or(f, |m| m.min(f))),
            Self::MaxFloat(m) => *m = Some(m.map_or(f, |m| m.max(f))),
            Self::Avg { sum, count } => {
                *sum += f;
                *count += 1;
            }
            Self::Distinct(s) => match input {
                Input::Int(v) => sketch::hll_int(s, v),
                Input::Float(v) => sketch::hll_float(s, v),
                Input::Bytes(b) => sketch::hll_bytes(s, b),
                Input::Null => {}
            },
            Self::Percentile { sketch: s, .. } => sketch::kll_value(s, f),
        }
    }

    /// Combines the state of disjoint inputs into `self`.
    pub fn merge(&mut self, other: &PartialAggregate) -> Result<()> {
        match (&mut *self, other) {
            (Self::Count(a), Self::Count(b)) => *a += b,
            (Self::SumInt(a), Self::SumInt(b)) => *a = merge_opt(*a, *b, i64::wrapping_add),
            (Self::SumFloat(a), Self::SumFloat(b)) => *a = merge_opt(*a, *b, |x, y| x + y),
            (Self::MinInt(a), Self::MinInt(b)) => *a = merge_opt(*a, *b, i64::min),
            (Self::MaxInt(a), Self::MaxInt(b)) => *a = merge_opt(*a, *b, i64::max),
            (Self::MinFloat(a), Self::MinFloat(b)) => *a = merge_opt(*a, *b, f64::min),
            (Self::MaxFloat(a), Self::MaxFloat(b)) => *a = merge_opt(*a, *b, f64::max),
            (Self::Avg { sum, count }, Self::Avg { sum: s2, count: c2 }) => {
                *sum += s2;
                *count += c2;
            }
            (Self::Distinct(a), Self::Distinct(b)) => {
                let mut union = HllUnion::new(HLL_LG_K).map_err(|e| Error::Sketch {
                    detail: e.to_string(),
                })?;
                union.update(a);
                union.update(b);
                **a = union.to_sketch(HllType::Hll8);
            }
            (Self::Percentile { sketch: a, .. }, Self::Percentile { sketch: b, .. }) => {
                a.merge(b).map_err(|e| Error::Sketch {
                    detail: e.to_string(),
                })?;
            }
            (a, b) => {
                return Err(Error::Mismatch {
                    left: a.kind(),
                    right: b.kind(),
                });
            }
        }
        Ok(())
    }

    /// The final value.
    pub fn evaluate(&self) -> AggregateValue {
        use AggregateValue as V;
        let int = |v: &Option<i64>| v.map_or(V::Null, V::Int);
        let float = |v: &Option<f64>| v.map_or(V::Null, V::Float);
        match self {
            Self::Count(n) => V::Int(*n),
            Self::SumInt(v) | Self::MinInt(v) | Self::MaxInt(v) => int(v),
            Self::SumFloat(v) | Self::MinFloat(v) | Self::MaxFloat(v) => float(v),
            Self::Avg { sum, count } => {
                if *count == 0 {
                    V::Null
                } else {
                    V::Float(sum / *count as f64)
                }
            }
            // The composite estimator depends only on the registers, not on insertion order, so
            // merging partials in any order gives the same answer.
            Self::Distinct(sketch) => V::Int(sketch.composite_estimate().round() as i64),
            Self::Percentile { q, sketch } => {
                match sketch.quantile(*q, SearchCriteria::Inclusive) {
                    Ok(Some(v)) => V::Float(v.into_inner()),
                    _ => V::Null,
                }
            }
        }
    }

    /// Upper bound of the heap and inline size, for the speed layer's memory budget. Sketches
    /// start small and grow; budgeting their largest size keeps the budget a bound.
    pub fn approx_bytes(&self) -> usize {
        let inline = std::mem::size_of::<Self>();
        match self {
            // Dense HLL8: one byte per register.
            Self::Distinct(_) => inline + (1 << HLL_LG_K) + 256,
            // KLL retains about 3k items once it compacts, 8 bytes each, plus level bookkeeping.
            Self::Percentile { .. } => inline + 3 * usize::from(KLL_K) * 8 + 256,
            _ => inline,
        }
    }

    /// Serializes to a self-describing byte string (for checkpoints).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(17);
        let mut put = |tag: u8, payload: &[u8]| {
            out.push(tag);
            out.extend_from_slice(payload);
        };
        let opt_i = |v: &Option<i64>| match v {
            Some(v) => [&[1u8][..], &v.to_le_bytes()].concat(),
            None => vec![0],
        };
        let opt_f = |v: &Option<f64>| match v {
            Some(v) => [&[1u8][..], &v.to_le_bytes()].concat(),
            None => vec![0],
        };
        match self {
            Self::Count(n) => put(0, &n.to_le_bytes()),
            Self::SumInt(v) => put(1, &opt_i(v)),
            Self::SumFloat(v) => put(2, &opt_f(v)),
            Self::MinInt(v) => put(3, &opt_i(v)),
            Self::MaxInt(v) => put(4, &opt_i(v)),
            Self::MinFloat(v) => put(5, &opt_f(v)),
            Self::MaxFloat(v) => put(6, &opt_f(v)),
            Self::Avg { sum, count } => put(7, &[sum.to_le_bytes(), count.to_le_bytes()].concat()),
            Self::Distinct(s) => put(8, &s.serialize()),
            Self::Percentile { q, sketch } => {
                put(9, &[&q.to_le_bytes()[..], &sketch.serialize()].concat())
            }
        }
        out
    }

    /// Restores state written by [`PartialAggregate::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let corrupt = |detail: &str| Error::Sketch {
            detail: detail.to_owned(),
        };
        let (&tag, rest) = bytes.split_first().ok_or_else(|| corrupt("empty"))?;
        let word = |b: &[u8], at: usize| -> Result<[u8; 8]> {
            b.get(at..at + 8)
                .and_then(|s| s.try_into().ok())
                .ok_or_else(|| corrupt("truncated"))
        };
        let opt_i = |b: &[u8]| -> Result<Option<i64>> {
            match b.first() {
                Some(0) => Ok(None),
                Some(1) => Ok(Some(i64::from_le_bytes(word(b, 1)?))),
                _ => Err(corrupt("bad option tag")),
            }
        };
        let opt_f = |b: &[u8]| -> Result<Option<f64>> {
            Ok(opt_i(b)?.map(|bits| f64::from_bits(bits as u64)))
        };
        Ok(match tag {
            0 => Self::Count(i64::from_le_bytes(word(rest, 0)?)),
            1 => Self::SumInt(opt_i(rest)?),
            2 => Self::SumFloat(opt_f(rest)?),
            3 => Self::MinInt(opt_i(rest)?),
            4 => Self::MaxInt(opt_i(rest)?),
            5 => Self::MinFloat(opt_f(rest)?),
            6 => Self::MaxFloat(opt_f(rest)?),
            7 => Self::Avg {
                sum: f64::from_le_bytes(word(rest, 0)?),
                count: i64::from_le_bytes(word(rest, 8)?),
            },
            8 => Self::Distinct(Box::new(
                HllSketch::deserialize(rest).map_err(|e| corrupt(&e.to_string()))?,
            )),
            9 => Self::Percentile {
                q: f64::from_le_bytes(word(rest, 0)?),
                sketch: Box::new(
                    KllSketch::deserialize(&rest[8..]).map_err(|e| corrupt(&e.to_string()))?,
                ),
            },
            _ => return Err(corrupt("unknown state tag")),
        })
    }
}

fn merge_opt<T: Copy>(a: Option<T>, b: Option<T>, f: impl Fn(T, T) -> T) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(f(a, b)),
        (x, None) | (None, x) => x,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fold(function: AggregateFunction, arg: ArgumentType, values: &[i64]) -> PartialAggregate {
        let mut acc = PartialAggregate::new(function, arg);
        for v in values {
            match arg {
                ArgumentType::Int64 => acc.update(Input::Int(*v)),
                _ => acc.update(Input::Float(*v as f64)),
            }
        }
        acc
    }

    const EXACT: [AggregateFunction; 5] = [
        AggregateFunction::Count,
        AggregateFunction::Sum,
        AggregateFunction::Min,
        AggregateFunction::Max,
        AggregateFunction::Avg,
    ];

    /// The exact oracle, computed directly from the values.
    fn oracle(function: AggregateFunction, values: &[i64]) -> Option<f64> {
        let n = values.len();
        match function {
            AggregateFunction::Count => Some(n as f64),
            _ if n == 0 => None,
            AggregateFunction::Sum => Some(values.iter().sum::<i64>() as f64),
            AggregateFunction::Min => values.iter().min().map(|v| *v as f64),
            AggregateFunction::Max => values.iter().max().map(|v| *v as f64),
            AggregateFunction::Avg => Some(values.iter().sum::<i64>() as f64 / n as f64),
            _ => unreachable!(),
        }
    }

    #[test]
    fn error_bounds_are_the_sketches_own() {
        let Some(ErrorBound::RelativeStandardError(rse)) =
            error_bound(AggregateFunction::CountDistinct)
        else {
            panic!("distinct counts have a relative standard error");
        };
        assert!((rse - 0.008125).abs() < 1e-6, "{rse}");
        let Some(ErrorBound::RankError(e)) = error_bound(AggregateFunction::Percentile { q: 0.5 })
        else {
            panic!("percentiles have a rank error");
        };
        assert!(e > 0.001 && e < 0.01, "{e}");
        assert_eq!(error_bound(AggregateFunction::Sum), None);
    }

    #[test]
    fn sql_semantics_for_nulls_and_empty_input() {
        let mut sum = PartialAggregate::new(AggregateFunction::Sum, ArgumentType::Float64);
        assert_eq!(sum.evaluate(), AggregateValue::Null);
        sum.update(Input::Null);
        assert_eq!(sum.evaluate(), AggregateValue::Null);
        let mut count = PartialAggregate::new(AggregateFunction::Count, ArgumentType::Float64);
        count.update(Input::Null);
        count.update(Input::Float(1.0));
        assert_eq!(count.evaluate(), AggregateValue::Int(1));
        count.update_row();
        assert_eq!(count.evaluate(), AggregateValue::Int(2));
        let avg = PartialAggregate::new(AggregateFunction::Avg, ArgumentType::Int64);
        assert_eq!(avg.evaluate(), AggregateValue::Null);
    }

    #[test]
    fn result_types_follow_the_argument() {
        let s = fold(AggregateFunction::Sum, ArgumentType::Int64, &[1, 2]);
        assert_eq!(s.evaluate(), AggregateValue::Int(3));
        let s = fold(AggregateFunction::Sum, ArgumentType::Float64, &[1, 2]);
        assert_eq!(s.evaluate(), AggregateValue::Float(3.0));
        let a = fold(AggregateFunction::Avg, ArgumentType::Int64, &[1, 2]);
        assert_eq!(a.evaluate(), AggregateValue::Float(1.5));
    }

    #[test]
    fn mismatched_merges_are_errors() {
        let mut a = PartialAggregate::new(AggregateFunction::Sum, ArgumentType::Int64);
        let b = PartialAggregate::new(AggregateFunction::Max, ArgumentType::Int64);
        assert!(matches!(a.merge(&b), Err(Error::Mismatch { .. })));
    }

    proptest! {
        /// Merging the partials of any split equals aggregating the whole, which equals the oracle.
        #[test]
        fn merge_of_parts_equals_aggregate_of_whole(
            values in proptest::collection::vec(-1_000_000i64..1_000_000, 0..200),
            cut in 0usize..200,
        ) {
            let cut = cut.min(values.len());
            for function in EXACT {
                for arg in [ArgumentType::Int64, ArgumentType::Float64] {
                    let whole = fold(function, arg, &values);
                    let mut left = fold(function, arg, &values[..cut]);
                    left.merge(&fold(function, arg, &values[cut..])).unwrap();
                    prop_assert_eq!(left.evaluate().as_f64(), whole.evaluate().as_f64());
                    prop_assert_eq!(whole.evaluate().as_f64(), oracle(function, &values));
                }
            }
        }

        #[test]
        fn merge_is_commutative_and_associative(
            a in proptest::collection::vec(-1000i64..1000, 0..50),
            b in proptest::collection::vec(-1000i64..1000, 0..50),
            c in proptest::collection::vec(-1000i64..1000, 0..50),
        ) {
            for function in EXACT {
                let p = |v: &[i64]| fold(function, ArgumentType::Int64, v);
                let mut ab = p(&a);
                ab.merge(&p(&b)).unwrap();
                let mut ba = p(&b);
                ba.merge(&p(&a)).unwrap();
                prop_assert_eq!(ab.evaluate(), ba.evaluate());
                let mut ab_c = ab.clone();
                ab_c.merge(&p(&c)).unwrap();
                let mut bc = p(&b);
                bc.merge(&p(&c)).unwrap();
                let mut a_bc = p(&a);
                a_bc.merge(&bc).unwrap();
                prop_assert_eq!(ab_c.evaluate(), a_bc.evaluate());
            }
        }

        /// HyperLogLog: merge is commutative, and merging sketches of any split of the input
        /// estimates the whole input within the error bound.
        #[test]
        fn distinct_merge_of_parts_equals_the_whole(
            values in proptest::collection::vec(0i64..50_000, 0..3_000),
            cut in 0usize..3_000,
        ) {
            let cut = cut.min(values.len());
            let whole = fold(AggregateFunction::CountDistinct, ArgumentType::Int64, &values);
            let left = fold(AggregateFunction::CountDistinct, ArgumentType::Int64, &values[..cut]);
            let right = fold(AggregateFunction::CountDistinct, ArgumentType::Int64, &values[cut..]);
            let mut lr = left.clone();
            lr.merge(&right).unwrap();
            let mut rl = right.clone();
            rl.merge(&left).unwrap();
            prop_assert_eq!(lr.evaluate(), rl.evaluate());
            let exact = values.iter().collect::<std::collections::HashSet<_>>().len() as f64;
            for est in [whole.evaluate(), lr.evaluate()] {
                let est = est.as_f64().unwrap();
                // 3 sigma of the 0.81% relative standard error, plus one for tiny sets.
                prop_assert!((est - exact).abs() <= 0.0243 * exact + 1.0, "estimate {est}, exact {exact}");
            }
        }

        /// KLL: the merge of parts answers within the rank error bound of the whole.
        #[test]
        fn percentile_merge_of_parts_stays_within_rank_error(
            values in proptest::collection::vec(-1e6f64..1e6, 1..5_000),
            cut in 0usize..5_000,
            q in 0.0f64..=1.0,
        ) {
            let cut = cut.min(values.len());
            let part = |v: &[f64]| {
                let mut acc = PartialAggregate::new(AggregateFunction::Percentile { q }, ArgumentType::Float64);
                for x in v {
                    acc.update(Input::Float(*x));
                }
                acc
            };
            let mut merged = part(&values[..cut]);
            merged.merge(&part(&values[cut..])).unwrap();
            let est = merged.evaluate().as_f64().unwrap();
            let mut sorted = values.clone();
            sorted.sort_by(f64::total_cmp);
            let rank_lo = sorted.partition_point(|x| *x < est) as f64 / sorted.len() as f64;
            let rank_hi = sorted.partition_point(|x| *x <= est) as f64 / sorted.len() as f64;
            prop_assert!(rank_lo - 0.01 <= q && q <= rank_hi + 0.01, "q {q}: estimate {est} has rank [{rank_lo}, {rank_hi}]");
        }

        #[test]
        fn state_survives_a_byte_round_trip(
            values in proptest::collection::vec(-1000i64..1000, 0..100),
        ) {
            for function in EXACT.into_iter().chain([
                AggregateFunction::CountDistinct,
                AggregateFunction::Percentile { q: 0.5 },
            ]) {
                for arg in [ArgumentType::Int64, ArgumentType::Float64] {
                    let acc = fold(function, arg, &values);
                    let back = PartialAggregate::from_bytes(&acc.to_bytes()).unwrap();
                    prop_assert_eq!(back.evaluate(), acc.evaluate());
                }
            }
        }
    }

    /// Error bounds against an exact oracle over 10^6 items, with the input split over 8 partial
    /// states (as partitions are) and merged.
    #[test]
    fn sketches_meet_their_error_bounds_over_a_million_items() {
        const N: i64 = 1_000_000;
        const PARTS: i64 = 8;
        // Distinct: 10^6 distinct values, each seen twice, hashed through a random-looking map.
        let mut parts: Vec<PartialAggregate> = (0..PARTS)
            .map(|_| PartialAggregate::new(AggregateFunction::CountDistinct, ArgumentType::Int64))
            .collect();
        for i in 0..2 * N {
            let v = (i % N).wrapping_mul(0x9E37_79B9_7F4A_7C15u64 as i64);
            parts[(i % PARTS) as usize].update(Input::Int(v));
        }
        let mut distinct = parts.remove(0);
        for p in &parts {
            distinct.merge(p).unwrap();
        }
        let est = distinct.evaluate().as_f64().unwrap();
        let err = (est - N as f64).abs() / N as f64;
        // lg_k = 14: relative standard error 0.81%; 3 sigma.
        assert!(
            err <= 3.0 * 0.0081,
            "distinct estimate {est} for {N}: error {err}"
        );

        // Percentiles: a skewed distribution (squares of a permutation), exact ranks known.
        let mut parts: Vec<PartialAggregate> = (0..PARTS)
            .map(|_| {
                PartialAggregate::new(
                    AggregateFunction::Percentile { q: 0.0 },
                    ArgumentType::Float64,
                )
            })
            .collect();
        for i in 0..N {
            let v = ((i * 7_919) % N) as f64;
            parts[(i % PARTS) as usize].update(Input::Float(v * v));
        }
        let mut merged = parts.remove(0);
        for p in &parts {
            merged.merge(p).unwrap();
        }
        for q in [0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99] {
            let PartialAggregate::Percentile { sketch, .. } = &merged else {
                unreachable!()
            };
            let est = sketch
                .quantile(q, SearchCriteria::Inclusive)
                .unwrap()
                .unwrap()
                .into_inner();
            // Values are the squares of 0..N, so the rank of `est` is sqrt(est) / N.
            let rank = (est.sqrt().floor() + 1.0) / N as f64;
            assert!(
                (rank - q).abs() <= 0.01,
                "q {q}: estimate {est} has rank {rank}"
            );
        }
    }
}
