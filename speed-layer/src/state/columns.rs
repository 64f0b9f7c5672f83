//! A batch's columns as one view reads them: the filter mask and aggregate arguments evaluated
//! by DataFusion, then every column the window state reads bound to its concrete Arrow type
//! once per batch, so the per-row loop never downcasts.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, Decimal128Array, Float64Array, Int64Array, RecordBatch,
    StringArray, TimestampMillisecondArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::cast::{
    as_boolean_array, as_decimal128_array, as_float64_array, as_int64_array, as_string_array,
    as_timestamp_millisecond_array,
};
use tandem_shared::row::{GroupKey, GroupValue};
use tandem_shared::time::EventTime;

use super::{Error, Result};
use crate::aggregate::{ArgumentType, Input};
use crate::program::ViewProgram;

pub(super) enum GroupColumn<'a> {
    Str(&'a StringArray),
    Int(&'a Int64Array),
    Float(&'a Float64Array),
    Bool(&'a BooleanArray),
    Time(&'a TimestampMillisecondArray),
}

impl GroupColumn<'_> {
    /// Stores the value of `row` in `slot`, reusing the slot's string buffer.
    pub(super) fn write(&self, row: usize, slot: &mut GroupValue) {
        if let (GroupColumn::Str(a), GroupValue::Str(s)) = (self, &mut *slot)
            && !a.is_null(row)
        {
            s.clear();
            s.push_str(a.value(row));
        } else {
            *slot = self.value(row);
        }
    }

    pub(super) fn value(&self, row: usize) -> GroupValue {
        macro_rules! get {
            ($a:expr, $wrap:expr) => {
                if $a.is_null(row) {
                    GroupValue::Null
                } else {
                    $wrap($a.value(row))
                }
            };
        }
        match self {
            GroupColumn::Str(a) => get!(a, |s: &str| GroupValue::Str(s.to_owned())),
            GroupColumn::Int(a) => get!(a, GroupValue::Int),
            GroupColumn::Float(a) => get!(a, GroupValue::Float),
            GroupColumn::Bool(a) => get!(a, GroupValue::Bool),
            GroupColumn::Time(a) => get!(a, |t| GroupValue::Time(EventTime(t))),
        }
    }
}

pub(super) enum ArgColumn<'a> {
    Star,
    Int(&'a Int64Array),
    Float(&'a Float64Array),
    Decimal(&'a Decimal128Array),
    Str(&'a StringArray),
}

impl ArgColumn<'_> {
    #[inline]
    pub(super) fn input(&self, row: usize) -> Option<Input<'_>> {
        Some(match self {
            ArgColumn::Star => return None,
            ArgColumn::Int(a) if a.is_null(row) => Input::Null,
            ArgColumn::Int(a) => Input::Int(a.value(row)),
            ArgColumn::Float(a) if a.is_null(row) => Input::Null,
            ArgColumn::Float(a) => Input::Float(a.value(row)),
            ArgColumn::Decimal(a) if a.is_null(row) => Input::Null,
            ArgColumn::Decimal(a) => Input::Decimal(a.value(row)),
            ArgColumn::Str(a) if a.is_null(row) => Input::Null,
            ArgColumn::Str(a) => Input::Bytes(a.value(row).as_bytes()),
        })
    }
}

/// The view's expressions evaluated over one batch.
pub(crate) struct Evaluated {
    /// Rows where the filter is true; `None` without a filter.
    mask: Option<BooleanArray>,
    /// One array per aggregate with an argument, in aggregate order.
    arguments: Vec<ArrayRef>,
}

impl Evaluated {
    pub(crate) fn new(program: &ViewProgram, batch: &RecordBatch) -> Result<Self> {
        let view = &program.view.name;
        let eval = |expr: &Arc<dyn datafusion::physical_expr::PhysicalExpr>| {
            expr.evaluate(batch)
                .and_then(|v| v.into_array(batch.num_rows()))
                .map_err(|source| Error::Evaluate {
                    view: view.clone(),
                    source,
                })
        };
        let mask = match &program.filter {
            None => None,
            Some(f) => {
                let array = eval(f)?;
                let mask = as_boolean_array(&array).map_err(|source| Error::Evaluate {
                    view: view.clone(),
                    source,
                })?;
                Some(mask.clone())
            }
        };
        let mut args = Vec::with_capacity(program.arguments.len());
        for arg in program.arguments.iter().flatten() {
            let array = eval(&arg.expr)?;
            // `cast` guards against a function whose produced type differs from its declared
            // one (Utf8View for Utf8, say); it is a no-op otherwise.
            let target = match arg.ty {
                ArgumentType::Int64 => DataType::Int64,
                ArgumentType::Float64 => DataType::Float64,
                ArgumentType::Decimal { precision, scale } => {
                    DataType::Decimal128(precision, scale)
                }
                ArgumentType::Other => DataType::Utf8,
            };
            let array = if array.data_type() == &target {
                array
            } else {
                cast(&array, &target).map_err(|e| Error::Evaluate {
                    view: view.clone(),
                    source: e.into(),
                })?
            };
            args.push(array);
        }
        Ok(Self {
            mask,
            arguments: args,
        })
    }

    /// Binds every column the state reads to its type.
    pub(crate) fn bind<'a>(
        &'a self,
        program: &ViewProgram,
        batch: &'a RecordBatch,
    ) -> Result<Bound<'a>> {
        let column_err = |column: usize, ty: &DataType| Error::ColumnType {
            view: program.view.name.clone(),
            column,
            ty: ty.clone(),
        };
        let times = as_timestamp_millisecond_array(batch.column(0))
            .map_err(|_| column_err(0, batch.column(0).data_type()))?;
        let mut groups = Vec::with_capacity(program.group_columns.len());
        for &i in &program.group_columns {
            let array = batch.column(i);
            let col = match array.data_type() {
                DataType::Utf8 => as_string_array(array).ok().map(GroupColumn::Str),
                DataType::Int64 => as_int64_array(array).ok().map(GroupColumn::Int),
                DataType::Float64 => as_float64_array(array).ok().map(GroupColumn::Float),
                DataType::Boolean => as_boolean_array(array).ok().map(GroupColumn::Bool),
                DataType::Timestamp(..) => as_timestamp_millisecond_array(array)
                    .ok()
                    .map(GroupColumn::Time),
                _ => None,
            };
            groups.push(col.ok_or_else(|| column_err(i, array.data_type()))?);
        }
        let mut evaluated = self.arguments.iter();
        let mut args = Vec::with_capacity(program.arguments.len());
        for arg in &program.arguments {
            let col = match arg {
                None => ArgColumn::Star,
                Some(a) => {
                    let Some(array) = evaluated.next() else {
                        return Err(column_err(usize::MAX, &DataType::Null));
                    };
                    let col = match a.ty {
                        ArgumentType::Int64 => as_int64_array(array).ok().map(ArgColumn::Int),
                        ArgumentType::Float64 => as_float64_array(array).ok().map(ArgColumn::Float),
                        ArgumentType::Decimal { .. } => {
                            as_decimal128_array(array).ok().map(ArgColumn::Decimal)
                        }
                        ArgumentType::Other => as_string_array(array).ok().map(ArgColumn::Str),
                    };
                    col.ok_or_else(|| column_err(usize::MAX, array.data_type()))?
                }
            };
            args.push(col);
        }
        Ok(Bound {
            times,
            mask: self.mask.as_ref(),
            groups,
            args,
        })
    }
}

/// Every column of a batch the window state reads, typed.
pub(crate) struct Bound<'a> {
    times: &'a TimestampMillisecondArray,
    mask: Option<&'a BooleanArray>,
    groups: Vec<GroupColumn<'a>>,
    pub(super) args: Vec<ArgColumn<'a>>,
}

impl Bound<'_> {
    /// Whether the view's filter keeps `row`.
    #[inline]
    pub(super) fn selected(&self, row: usize) -> bool {
        self.mask
            .is_none_or(|mask| mask.is_valid(row) && mask.value(row))
    }

    #[inline]
    pub(super) fn time(&self, row: usize) -> EventTime {
        EventTime(self.times.value(row))
    }

    /// Writes the group key of `row` into `key`, reusing its buffers.
    #[inline]
    pub(super) fn key(&self, row: usize, key: &mut GroupKey) {
        if key.len() == self.groups.len() {
            for (slot, c) in key.iter_mut().zip(&self.groups) {
                c.write(row, slot);
            }
        } else {
            key.clear();
            key.extend(self.groups.iter().map(|c| c.value(row)));
        }
    }

    pub(super) fn group_count(&self) -> usize {
        self.groups.len()
    }
}
