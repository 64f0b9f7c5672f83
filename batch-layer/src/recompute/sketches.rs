//! Sketch aggregate functions for recompute queries: `tandem_hll(x)` and `tandem_kll(x)` build,
//! per window and group, the same HyperLogLog and KLL sketches the speed layer keeps (same
//! parameters, same bytes hashed for the same value, see [`tandem_shared::sketch`]) and return
//! them serialized. A segment stores them next to the exact values, so a rollup can merge a
//! batch window's sketch with a speed window's.
//!
//! Argument types follow the speed layer's: `Int64` hashes as an integer, `Float64` as a float,
//! anything else by its text.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Float64Type, Int64Type};
use datafusion::common::{Result, ScalarValue};
use datafusion::error::DataFusionError;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Signature, Volatility,
};
use datafusion::prelude::SessionContext;
use datasketches::hll::{HllSketch, HllType, HllUnion};
use tandem_shared::sketch::{self, HLL_LG_K, Quantiles};

/// The SQL name of the distinct-count sketch function.
pub(crate) const HLL: &str = "tandem_hll";
/// The SQL name of the percentile sketch function.
pub(crate) const KLL: &str = "tandem_kll";

/// Registers both sketch functions with `ctx`.
pub(crate) fn register(ctx: &SessionContext) {
    for f in functions() {
        ctx.register_udaf(f);
    }
}

/// Both sketch functions.
pub(crate) fn functions() -> [AggregateUDF; 2] {
    [
        AggregateUDF::from(SketchFunction::new(Kind::Hll)),
        AggregateUDF::from(SketchFunction::new(Kind::Kll)),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Hll,
    Kll,
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct SketchFunction {
    kind: Kind,
    signature: Signature,
}

impl SketchFunction {
    fn new(kind: Kind) -> Self {
        Self {
            kind,
            signature: Signature::any(1, Volatility::Immutable),
        }
    }
}

impl AggregateUDFImpl for SketchFunction {
    fn name(&self) -> &str {
        match self.kind {
            Kind::Hll => HLL,
            Kind::Kll => KLL,
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Binary)
    }

    fn accumulator(&self, _: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(match self.kind {
            Kind::Hll => Box::new(HllAccumulator(sketch::new_hll())),
            Kind::Kll => Box::new(KllAccumulator(sketch::new_kll())),
        })
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![Arc::new(Field::new(
            format!("{}[sketch]", args.name),
            DataType::Binary,
            true,
        ))])
    }
}

fn corrupt(err: impl std::fmt::Display) -> DataFusionError {
    DataFusionError::Execution(format!("corrupt sketch state: {err}"))
}

/// Serialized sketches of a state column.
fn serialized(states: &[ArrayRef]) -> Result<impl Iterator<Item = &[u8]>> {
    let column = states
        .first()
        .ok_or_else(|| DataFusionError::Internal("sketch state has no column".into()))?;
    let binary = column
        .as_binary_opt::<i32>()
        .ok_or_else(|| DataFusionError::Internal("sketch state is not binary".into()))?;
    Ok(binary.iter().flatten())
}

#[derive(Debug)]
struct HllAccumulator(HllSketch);

impl Accumulator for HllAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let Some(values) = values.first() else {
            return Ok(());
        };
        match values.data_type() {
            DataType::Int64 => values
                .as_primitive::<Int64Type>()
                .iter()
                .flatten()
                .for_each(|v| sketch::hll_int(&mut self.0, v)),
            DataType::Float64 => values
                .as_primitive::<Float64Type>()
                .iter()
                .flatten()
                .for_each(|v| sketch::hll_float(&mut self.0, v)),
            _ => {
                let text = cast(values, &DataType::Utf8)?;
                text.as_string::<i32>()
                    .iter()
                    .flatten()
                    .for_each(|v| sketch::hll_bytes(&mut self.0, v.as_bytes()));
            }
        }
        Ok(())
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let mut union = HllUnion::new(HLL_LG_K).map_err(corrupt)?;
        union.update(&self.0);
        for bytes in serialized(states)? {
            union.update(&HllSketch::deserialize(bytes).map_err(corrupt)?);
        }
        self.0 = union.to_sketch(HllType::Hll8);
        Ok(())
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![self.evaluate()?])
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(ScalarValue::Binary(Some(self.0.serialize())))
    }

    fn size(&self) -> usize {
        std::mem::size_of::<Self>() + (1 << HLL_LG_K)
    }
}

#[derive(Debug)]
struct KllAccumulator(Quantiles);

impl Accumulator for KllAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let Some(values) = values.first() else {
            return Ok(());
        };
        let floats = cast(values, &DataType::Float64)?;
        floats
            .as_primitive::<Float64Type>()
            .iter()
            .flatten()
            .for_each(|v| sketch::kll_value(&mut self.0, v));
        Ok(())
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        for bytes in serialized(states)? {
            let other = Quantiles::deserialize(bytes).map_err(corrupt)?;
            self.0.merge(&other).map_err(corrupt)?;
        }
        Ok(())
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![self.evaluate()?])
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(ScalarValue::Binary(Some(self.0.serialize())))
    }

    fn size(&self) -> usize {
        std::mem::size_of::<Self>() + 3 * usize::from(sketch::KLL_K) * 8
    }
}
