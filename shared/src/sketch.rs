//! The sketches both layers build, so that a window's sketch from the batch layer and one from
//! the speed layer merge into one estimate.
//!
//! Two sketches only merge meaningfully if they were built with the same parameters and fed the
//! same bytes for the same value: this module is that contract. The speed layer keeps these
//! sketches as window state; the batch layer stores them next to each window's exact value
//! (DataFusion aggregate functions that call the same `update_*` functions), and a rollup merges
//! the two across the seam.

use datasketches::hll::{HllSketch, HllType};
use datasketches::kll::{KllFloat, KllSketch};

/// log2 of the HyperLogLog register count. 2^14 registers give the (order-independent)
/// composite estimator a relative standard error of 1.04 / sqrt(2^14) ≈ 0.81%, under the 1% the
/// speed layer promises for distinct counts.
pub const HLL_LG_K: u8 = 14;
/// KLL accuracy parameter. k = 400 gives a single-sided normalized rank error of about 0.7%
/// (k = 200, the library default, is about 1.3%).
pub const KLL_K: u16 = 400;

/// The percentile sketch: KLL over doubles.
pub type Quantiles = KllSketch<KllFloat<f64>>;

/// An empty distinct-count sketch.
pub fn new_hll() -> HllSketch {
    // lg_k 14 is within the library's valid range, so construction cannot fail.
    HllSketch::new(HLL_LG_K, HllType::Hll8).unwrap_or_else(|e| panic!("HLL lg_k {HLL_LG_K}: {e}"))
}

/// An empty percentile sketch.
pub fn new_kll() -> Quantiles {
    KllSketch::new(KLL_K).unwrap_or_else(|e| panic!("KLL k {KLL_K}: {e}"))
}

/// The relative standard error of a distinct count (HyperLogLog: 1.04 / sqrt(2^lg_k)).
pub fn distinct_rse() -> f64 {
    1.04 / f64::from(1u32 << HLL_LG_K).sqrt()
}

/// Counts an integer. Integers and floats hash by value so that 3 and 3.0 from differently
/// typed columns never meet; one column has one type.
#[inline]
pub fn hll_int(sketch: &mut HllSketch, v: i64) {
    sketch.update(v);
}

/// Counts a float, `-0.0` and `0.0` as one value.
#[inline]
pub fn hll_float(sketch: &mut HllSketch, v: f64) {
    sketch.update(if v == 0.0 { 0 } else { v.to_bits() });
}

/// Counts any other value by the bytes of its text form (UTF-8).
#[inline]
pub fn hll_bytes(sketch: &mut HllSketch, v: &[u8]) {
    sketch.update(v);
}

/// Adds a value to a percentile sketch; NaN is not a value and is skipped.
#[inline]
pub fn kll_value(sketch: &mut Quantiles, v: f64) {
    if let Ok(v) = KllFloat::<f64>::new(v) {
        sketch.update(v);
    }
}

/// What the batch layer stores next to one window's exact value so that windows combine into
/// coarser ones (rollups): exact values of count, sum, min and max combine by themselves; an
/// average needs its sum and count, a distinct count and a percentile their sketches.
#[derive(Debug, Clone, PartialEq)]
pub enum WindowState {
    /// The exact value is its own state (count, sum, min, max).
    Value,
    /// An average's sum and count of non-null arguments.
    Avg { sum: f64, count: i64 },
    /// A decimal average's exact sum (units of 10^-scale) and count.
    DecimalAvg { sum: i128, count: i64, scale: i8 },
    /// A serialized distinct-count sketch (built with [`new_hll`] and the `hll_*` updates).
    Distinct(Vec<u8>),
    /// A serialized percentile sketch (built with [`new_kll`] and [`kll_value`]).
    Quantiles(Vec<u8>),
    /// Not stored: a session view, or a segment written before states were stored.
    Missing,
}

/// A batch-layer row with the state of each of its values (in aggregate order).
#[derive(Debug, Clone, PartialEq)]
pub struct StatedRow {
    pub row: crate::row::ViewRow,
    pub states: Vec<WindowState>,
}
