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

use tandem_shared::decimal::{Decimal, pow10};

mod decimal;
use decimal::{DECIMAL_MAX, fold_decimal};
pub use decimal::{DecimalAvg, DecimalOp, Filled, Units, decimal_avg_scale};
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
    /// `Decimal128(precision, scale)`: summed, compared and averaged exactly, in integers.
    Decimal {
        precision: u8,
        scale: i8,
    },
    /// Any other type: only valid for `count` and `count(DISTINCT ..)`.
    Other,
}

/// One input value, already extracted from an Arrow column.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Input<'a> {
    Null,
    Int(i64),
    Float(f64),
    /// Units of a decimal argument (its scale is the aggregate's).
    Decimal(i128),
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
    /// A decimal sum, min or max in units of 10^-scale.
    Decimal {
        op: DecimalOp,
        units: Units,
        scale: i8,
        filled: Filled,
    },
    /// A decimal average's exact sum and count (boxed: rare, and it keeps the enum small).
    DecimalAvg(Box<DecimalAvg>),
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
        let decimal = |op, scale| Self::Decimal {
            op,
            units: Units::default(),
            scale,
            filled: Filled::Empty,
        };
        match (function, arg) {
            (F::Count, _) => Self::Count(0),
            (F::Sum, ArgumentType::Decimal { scale, .. }) => decimal(DecimalOp::Sum, scale),
            (F::Min, ArgumentType::Decimal { scale, .. }) => decimal(DecimalOp::Min, scale),
            (F::Max, ArgumentType::Decimal { scale, .. }) => decimal(DecimalOp::Max, scale),
            (F::Avg, ArgumentType::Decimal { scale, .. }) => {
                Self::DecimalAvg(Box::new(DecimalAvg {
                    sum: 0,
                    count: 0,
                    scale,
                    overflow: false,
                }))
            }
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
            Self::Decimal {
                op: DecimalOp::Sum, ..
            } => "decimal_sum",
            Self::Decimal {
                op: DecimalOp::Min, ..
            } => "decimal_min",
            Self::Decimal {
                op: DecimalOp::Max, ..
            } => "decimal_max",
            Self::DecimalAvg(_) => "decimal_avg",
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
            (AggregateFunction::Avg, WindowState::DecimalAvg { sum, count, scale }) => {
                Some(Self::DecimalAvg(Box::new(DecimalAvg {
                    sum: *sum,
                    count: *count,
                    scale: *scale,
                    overflow: false,
                })))
            }
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
            Input::Decimal(v) => return self.update_decimal(v),
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
                Input::Null | Input::Decimal(_) => {}
            },
            Self::Percentile { sketch: s, .. } => sketch::kll_value(s, f),
            // Decimal states read decimal arguments only (see `ViewProgram`).
            Self::Decimal { .. } | Self::DecimalAvg(_) => {}
        }
    }

    /// Folds in the units of one decimal argument.
    #[inline]
    fn update_decimal(&mut self, v: i128) {
        match self {
            Self::Count(n) => *n += 1,
            Self::Decimal {
                op, units, filled, ..
            } => fold_decimal(*op, units, filled, v),
            Self::DecimalAvg(a) => {
                a.count += 1;
                match a.sum.checked_add(v).filter(|s| s.abs() <= DECIMAL_MAX) {
                    Some(sum) => a.sum = sum,
                    None => a.overflow = true,
                }
            }
            // Other states take a decimal argument as a float (see `ViewProgram`).
            _ => {}
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
            (
                Self::Decimal {
                    op,
                    units,
                    scale,
                    filled,
                },
                Self::Decimal {
                    op: op2,
                    units: u2,
                    scale: s2,
                    filled: f2,
                },
            ) if op == op2 && scale == s2 => match f2 {
                Filled::Empty => {}
                Filled::Overflow => *filled = Filled::Overflow,
                Filled::Value => fold_decimal(*op, units, filled, u2.get()),
            },
            (Self::DecimalAvg(a), Self::DecimalAvg(b)) if a.scale == b.scale => {
                a.count += b.count;
                a.overflow |= b.overflow;
                match a.sum.checked_add(b.sum).filter(|s| s.abs() <= DECIMAL_MAX) {
                    Some(sum) => a.sum = sum,
                    None => a.overflow = true,
                }
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
            Self::Decimal {
                units,
                scale,
                filled: Filled::Value,
                ..
            } => V::Decimal(Decimal::new(units.get(), *scale)),
            Self::Decimal { .. } => V::Null,
            Self::DecimalAvg(a) if a.count == 0 || a.overflow => V::Null,
            Self::DecimalAvg(a) => {
                let target = decimal_avg_scale(a.scale);
                let up = u32::try_from(target - a.scale).unwrap_or(0);
                match a.sum.checked_mul(pow10(up)) {
                    Some(v) => V::Decimal(Decimal::new(v / i128::from(a.count), target)),
                    None => V::Null,
                }
            }
        }
    }

    /// Heap and inline size, for the speed layer's memory budget. Sketches start small and
    /// grow with their input up to a bound (a dense HyperLogLog, KLL's ~3k retained items): the
    /// state tracks their growth as events update them (see [`PartialAggregate::grows`]).
    pub fn approx_bytes(&self) -> usize {
        let inline = std::mem::size_of::<Self>();
        match self {
            Self::Distinct(s) => inline + std::mem::size_of::<HllSketch>() + s.estimated_size(),
            // Retained items (8 bytes each) in vectors grown by doubling, plus the levels.
            Self::Percentile { sketch, .. } => {
                inline
                    + std::mem::size_of::<KllSketch<KllFloat<f64>>>()
                    + sketch.num_retained().max(1).next_power_of_two() * 8
                    + 64
            }
            Self::DecimalAvg(_) => inline + std::mem::size_of::<DecimalAvg>(),
            _ => inline,
        }
    }

    /// Whether updates can change [`PartialAggregate::approx_bytes`] (a sketch).
    #[inline]
    pub fn grows(&self) -> bool {
        matches!(self, Self::Distinct(_) | Self::Percentile { .. })
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
            Self::Decimal {
                op,
                units,
                scale,
                filled,
            } => {
                let op = match op {
                    DecimalOp::Sum => 0u8,
                    DecimalOp::Min => 1,
                    DecimalOp::Max => 2,
                };
                let filled = match filled {
                    Filled::Empty => 0u8,
                    Filled::Value => 1,
                    Filled::Overflow => 2,
                };
                put(
                    10,
                    &[
                        &[op, *scale as u8, filled][..],
                        &units.get().to_le_bytes()[..],
                    ]
                    .concat(),
                )
            }
            Self::DecimalAvg(a) => put(
                11,
                &[
                    &[a.scale as u8, u8::from(a.overflow)][..],
                    &a.sum.to_le_bytes()[..],
                    &a.count.to_le_bytes()[..],
                ]
                .concat(),
            ),
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
            10 => {
                let head = rest.get(..3).ok_or_else(|| corrupt("truncated"))?;
                let units = rest
                    .get(3..19)
                    .and_then(|b| <[u8; 16]>::try_from(b).ok())
                    .ok_or_else(|| corrupt("truncated"))?;
                Self::Decimal {
                    op: match head[0] {
                        0 => DecimalOp::Sum,
                        1 => DecimalOp::Min,
                        2 => DecimalOp::Max,
                        _ => return Err(corrupt("bad decimal op")),
                    },
                    units: Units::new(i128::from_le_bytes(units)),
                    scale: head[1] as i8,
                    filled: match head[2] {
                        0 => Filled::Empty,
                        1 => Filled::Value,
                        2 => Filled::Overflow,
                        _ => return Err(corrupt("bad decimal state")),
                    },
                }
            }
            11 => {
                let head = rest.get(..2).ok_or_else(|| corrupt("truncated"))?;
                let sum = rest
                    .get(2..18)
                    .and_then(|b| <[u8; 16]>::try_from(b).ok())
                    .ok_or_else(|| corrupt("truncated"))?;
                Self::DecimalAvg(Box::new(DecimalAvg {
                    sum: i128::from_le_bytes(sum),
                    count: i64::from_le_bytes(word(rest, 18)?),
                    scale: head[0] as i8,
                    overflow: head[1] != 0,
                }))
            }
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
mod tests;
