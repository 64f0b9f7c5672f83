//! Decimal states: exact sums, minimums, maximums and averages of `decimal(P, S)` arguments,
//! in integer units of 10^-S, with DataFusion's result types.

/// What a [`PartialAggregate::Decimal`] keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecimalOp {
    Sum,
    Min,
    Max,
}

/// Whether a decimal state holds a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filled {
    Empty,
    Value,
    /// A sum left the 38 digits of `Decimal128`: it evaluates to NULL, never to a wrong sum.
    Overflow,
}

/// An `i128` kept as two words, so a state holding one stays 8-byte aligned (the enum stays at
/// 24 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Units([u64; 2]);

impl Units {
    pub fn new(v: i128) -> Self {
        Units([v as u64, (v >> 64) as u64])
    }

    pub fn get(self) -> i128 {
        (i128::from(self.0[1] as i64) << 64) | i128::from(self.0[0])
    }
}

/// A decimal average's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecimalAvg {
    pub sum: i128,
    pub count: i64,
    pub scale: i8,
    pub overflow: bool,
}

/// DataFusion's result of `avg` over `decimal(P, S)`: `decimal(min(38, P + 4), min(38, S + 4))`,
/// the sum times 10^4 divided by the count, truncated toward zero.
pub fn decimal_avg_scale(scale: i8) -> i8 {
    scale.saturating_add(4).min(38)
}

/// The largest magnitude a `Decimal128` holds: 38 nines.
pub(super) const DECIMAL_MAX: i128 = 99_999_999_999_999_999_999_999_999_999_999_999_999;

/// Folds `v` into a decimal sum, min or max.
#[inline]
pub(super) fn fold_decimal(op: DecimalOp, units: &mut Units, filled: &mut Filled, v: i128) {
    match (*filled, op) {
        (Filled::Overflow, _) => {}
        (Filled::Empty, _) => {
            *units = Units::new(v);
            *filled = Filled::Value;
        }
        (Filled::Value, DecimalOp::Sum) => {
            match units
                .get()
                .checked_add(v)
                .filter(|s| s.abs() <= DECIMAL_MAX)
            {
                Some(sum) => *units = Units::new(sum),
                None => *filled = Filled::Overflow,
            }
        }
        (Filled::Value, DecimalOp::Min) if v < units.get() => *units = Units::new(v),
        (Filled::Value, DecimalOp::Max) if v > units.get() => *units = Units::new(v),
        (Filled::Value, _) => {}
    }
}
