//! Avro payloads: a writer schema compiled once into a reading plan, then each datum read
//! straight into the decoder's slots.
//!
//! ```text
//!  writer schema (registry, by id) ──compile with the declared paths──► Plan
//!  datum bytes ──Plan::read──► slots (strings borrowed from the payload)
//! ```
//!
//! The plan is the writer schema with the declared fields marked: fields nobody asked for are
//! skipped (their bytes walked, nothing built), declared fields are converted to their declared
//! type. Schema evolution follows from reading with the writer's schema: a field the writer
//! added is skipped, a declared field the writer lacks stays NULL, and a declared field whose
//! writer type cannot become the declared type fails with `schema_mismatch` when it is read.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use apache_avro::Schema;
use apache_avro::schema::{Name, RecordSchema, UuidSchema};

use super::paths::{Fields, Leaf, Node};
use super::wire::{take, zigzag};
use super::{DecodeError, Slot};
use crate::schema::FieldType;

/// Deeper schemas are refused: a recursive type would otherwise compile forever.
const MAX_DEPTH: usize = 32;
/// Items in one array or map block: more is a corrupt count, not data.
const MAX_BLOCK: i64 = 1 << 24;

/// How a written value becomes a declared one.
#[derive(Debug, Clone, Copy)]
enum Convert {
    Str,
    Int,
    IntToFloat,
    Float,
    Bool,
    /// A long or int of epoch time units, divided into milliseconds (1 for millis).
    TimeDiv(i64),
    /// Days since the epoch.
    Days,
    /// An RFC 3339 string.
    TimeText,
    /// Into `decimal(P, S)`: an integer, a decimal's text, or (`Some(scale)`) a written Avro
    /// decimal of that scale, rescaled exactly.
    Decimal {
        precision: u8,
        scale: i8,
        written_scale: Option<i8>,
    },
}

#[derive(Debug, Clone)]
struct Target {
    slot: usize,
    convert: Convert,
    leaf: Arc<Leaf>,
}

/// One writer type, with the slot it fills when the reader declared it.
#[derive(Debug, Clone)]
enum Step {
    Null,
    Bool(Option<Target>),
    /// `int` and `long` (and their logical types) are both zigzag varints.
    Long(Option<Target>),
    Float(Option<Target>),
    Double(Option<Target>),
    Bytes,
    /// An Avro decimal: bytes (`None`) or a fixed of that size, big-endian two's complement.
    Decimal(Option<usize>, Option<Target>),
    Str(Option<Target>),
    Enum(Arc<[String]>, Option<Target>),
    Fixed(usize),
    Record(Vec<Step>),
    Array(Box<Step>),
    Map(Box<Step>),
    Union(Vec<Step>),
    /// A declared field whose written type cannot become the declared one.
    Mismatch(Arc<DecodeError>),
}

/// A compiled writer schema.
#[derive(Debug)]
pub(super) struct Plan {
    root: Step,
}

impl Plan {
    /// Compiles `text`, a writer schema, against the declared paths.
    pub(super) fn compile(text: &str, root: &Fields) -> Result<Plan, DecodeError> {
        let schema = Schema::parse_str(text).map_err(|err| DecodeError::SchemaMismatch {
            field: String::new(),
            detail: format!("the writer schema does not parse: {err}"),
        })?;
        let mut names = HashMap::new();
        collect_names(&schema, None, &mut names);
        let compiler = Compiler { names: &names };
        let Schema::Record(record) = &schema else {
            return Err(DecodeError::SchemaMismatch {
                field: String::new(),
                detail: "the writer schema is not a record".into(),
            });
        };
        let root = compiler.record(record, record.name.namespace(), Some(root), 0)?;
        Ok(Plan { root })
    }

    /// Reads one datum into `scratch`. The whole body must be the datum.
    pub(super) fn read<'a>(
        &self,
        mut body: &'a [u8],
        scratch: &mut [Slot<'a>],
    ) -> Result<(), DecodeError> {
        read(&self.root, &mut body, scratch)?;
        if !body.is_empty() {
            return Err(DecodeError::BadPayload {
                detail: format!(
                    "{} bytes left after the record: the payload was not written with this schema",
                    body.len()
                ),
            });
        }
        Ok(())
    }
}

/// Every named type, by its full name.
fn collect_names<'s>(schema: &'s Schema, ns: Option<&str>, names: &mut HashMap<Name, &'s Schema>) {
    match schema {
        Schema::Record(r) => {
            let full = r.name.fully_qualified_name(ns);
            names.insert(full.into_owned(), schema);
            let ns = r.name.namespace().or(ns);
            for f in &r.fields {
                collect_names(&f.schema, ns, names);
            }
        }
        Schema::Enum(e) => {
            names.insert(e.name.fully_qualified_name(ns).into_owned(), schema);
        }
        Schema::Fixed(f) | Schema::Duration(f) => {
            names.insert(f.name.fully_qualified_name(ns).into_owned(), schema);
        }
        Schema::Array(a) => collect_names(&a.items, ns, names),
        Schema::Map(m) => collect_names(&m.types, ns, names),
        Schema::Union(u) => {
            for v in u.variants() {
                collect_names(v, ns, names);
            }
        }
        _ => {}
    }
}

struct Compiler<'n, 's> {
    names: &'n HashMap<Name, &'s Schema>,
}

/// What the reader wants of one written value.
#[derive(Clone, Copy)]
enum Want<'f> {
    Nothing,
    Value(&'f Leaf),
    Record(&'f Fields),
}

impl Compiler<'_, '_> {
    fn record(
        &self,
        record: &RecordSchema,
        ns: Option<&str>,
        wanted: Option<&Fields>,
        depth: usize,
    ) -> Result<Step, DecodeError> {
        let ns = record.name.namespace().or(ns);
        let steps = record
            .fields
            .iter()
            .map(|f| {
                let want = match wanted.and_then(|w| w.get(&f.name)) {
                    None => Want::Nothing,
                    Some(Node::Leaf(leaf)) => Want::Value(leaf),
                    Some(Node::Record(fields)) => Want::Record(fields),
                };
                self.step(&f.schema, ns, want, depth + 1)
            })
            .collect::<Result<_, _>>()?;
        Ok(Step::Record(steps))
    }

    fn step(
        &self,
        schema: &Schema,
        ns: Option<&str>,
        want: Want<'_>,
        depth: usize,
    ) -> Result<Step, DecodeError> {
        if depth > MAX_DEPTH {
            return Err(DecodeError::SchemaMismatch {
                field: String::new(),
                detail: format!(
                    "the writer schema nests deeper than {MAX_DEPTH} levels (recursive types are not supported)"
                ),
            });
        }
        let leaf = match want {
            Want::Value(leaf) => Some(leaf),
            _ => None,
        };
        let target = |convert: Result<Convert, &str>| -> Result<Option<Target>, DecodeError> {
            match (leaf, convert) {
                (None, _) => Ok(None),
                (Some(leaf), Ok(convert)) => Ok(Some(Target {
                    slot: leaf.slot,
                    convert,
                    leaf: Arc::new(leaf.clone()),
                })),
                (Some(leaf), Err(written)) => Err(mismatch(leaf, written)),
            }
        };
        let ty = leaf.map(|l| l.ty);
        let step = match schema {
            Schema::Union(u) => {
                return Ok(Step::Union(
                    u.variants()
                        .iter()
                        .map(|v| self.step(v, ns, want, depth + 1))
                        .collect::<Result<_, _>>()?,
                ));
            }
            Schema::Ref { name } => {
                let full = name.fully_qualified_name(ns);
                return match self.names.get(full.as_ref()) {
                    Some(schema) => self.step(schema, ns, want, depth + 1),
                    None => Err(DecodeError::SchemaMismatch {
                        field: String::new(),
                        detail: format!("the writer schema names an unknown type `{name}`"),
                    }),
                };
            }
            Schema::Record(r) => {
                return match want {
                    Want::Value(leaf) => Ok(Step::Mismatch(Arc::new(mismatch(leaf, "a record")))),
                    Want::Record(fields) => self.record(r, ns, Some(fields), depth),
                    Want::Nothing => self.record(r, ns, None, depth),
                };
            }
            Schema::Null => Step::Null,
            _ if matches!(want, Want::Record(_)) => {
                // A declared `a.b` where the writer's `a` is no record: nothing to read there.
                if let Want::Record(fields) = want {
                    return Ok(Step::Mismatch(Arc::new(DecodeError::SchemaMismatch {
                        field: fields.path.clone(),
                        detail: "declared as a record of fields, written as a single value".into(),
                    })));
                }
                unreachable!("matched above")
            }
            Schema::Boolean => Step::Bool(target(match ty {
                Some(FieldType::Bool) | None => Ok(Convert::Bool),
                _ => Err("a boolean"),
            })?),
            Schema::Int | Schema::Long => Step::Long(target(match ty {
                Some(FieldType::Int64) | None => Ok(Convert::Int),
                Some(FieldType::Float64) => Ok(Convert::IntToFloat),
                Some(FieldType::Timestamp) => Ok(Convert::TimeDiv(1)),
                Some(FieldType::Decimal { precision, scale }) => Ok(Convert::Decimal {
                    precision,
                    scale,
                    written_scale: None,
                }),
                _ => Err("an integer"),
            })?),
            Schema::TimestampMillis | Schema::LocalTimestampMillis => {
                Step::Long(target(time_or(ty, 1, "a timestamp-millis"))?)
            }
            Schema::TimestampMicros | Schema::LocalTimestampMicros => {
                Step::Long(target(time_or(ty, 1_000, "a timestamp-micros"))?)
            }
            Schema::TimestampNanos | Schema::LocalTimestampNanos => {
                Step::Long(target(time_or(ty, 1_000_000, "a timestamp-nanos"))?)
            }
            Schema::Date => Step::Long(target(match ty {
                Some(FieldType::Timestamp) | None => Ok(Convert::Days),
                _ => Err("a date"),
            })?),
            Schema::TimeMillis | Schema::TimeMicros => Step::Long(target(match ty {
                Some(FieldType::Int64) | None => Ok(Convert::Int),
                _ => Err("a time of day"),
            })?),
            Schema::Float | Schema::Double => {
                let t = target(match ty {
                    Some(FieldType::Float64) | None => Ok(Convert::Float),
                    _ => Err("a floating-point number"),
                })?;
                if matches!(schema, Schema::Float) {
                    Step::Float(t)
                } else {
                    Step::Double(t)
                }
            }
            Schema::String | Schema::Uuid(UuidSchema::String) => Step::Str(target(match ty {
                Some(FieldType::String) | None => Ok(Convert::Str),
                Some(FieldType::Timestamp) => Ok(Convert::TimeText),
                Some(FieldType::Decimal { precision, scale }) => Ok(Convert::Decimal {
                    precision,
                    scale,
                    written_scale: None,
                }),
                _ => Err("a string"),
            })?),
            Schema::Enum(e) => Step::Enum(
                e.symbols.clone().into(),
                target(match ty {
                    Some(FieldType::String) | None => Ok(Convert::Str),
                    _ => Err("an enum"),
                })?,
            ),
            Schema::Bytes | Schema::BigDecimal | Schema::Uuid(UuidSchema::Bytes) => {
                target(Err("bytes"))?;
                Step::Bytes
            }
            Schema::Decimal(d) => {
                let t = target(match ty {
                    Some(FieldType::Decimal { precision, scale }) => Ok(Convert::Decimal {
                        precision,
                        scale,
                        written_scale: Some(i8::try_from(d.scale).unwrap_or(i8::MAX)),
                    }),
                    _ => Err("a decimal"),
                })?;
                match &d.inner {
                    apache_avro::schema::InnerDecimalSchema::Fixed(f) => {
                        Step::Decimal(Some(f.size), t)
                    }
                    apache_avro::schema::InnerDecimalSchema::Bytes => Step::Decimal(None, t),
                }
            }
            Schema::Fixed(f) | Schema::Duration(f) | Schema::Uuid(UuidSchema::Fixed(f)) => {
                target(Err("a fixed"))?;
                Step::Fixed(f.size)
            }
            Schema::Array(a) => {
                target(Err("an array"))?;
                Step::Array(Box::new(self.step(
                    &a.items,
                    ns,
                    Want::Nothing,
                    depth + 1,
                )?))
            }
            Schema::Map(m) => {
                target(Err("a map"))?;
                Step::Map(Box::new(self.step(
                    &m.types,
                    ns,
                    Want::Nothing,
                    depth + 1,
                )?))
            }
        };
        Ok(step)
    }
}

fn time_or(
    ty: Option<FieldType>,
    div: i64,
    written: &'static str,
) -> Result<Convert, &'static str> {
    match ty {
        Some(FieldType::Timestamp) | None => Ok(Convert::TimeDiv(div)),
        Some(FieldType::Int64) => Ok(Convert::Int),
        _ => Err(written),
    }
}

/// A compile-time mismatch is kept in the plan and reported when a datum reaches it: a union
/// branch that cannot convert may never be written.
fn mismatch(leaf: &Leaf, written: &str) -> DecodeError {
    DecodeError::SchemaMismatch {
        field: leaf.path.clone(),
        detail: format!("declared {}, written as {written}", leaf.ty),
    }
}

fn read<'a>(step: &Step, buf: &mut &'a [u8], scratch: &mut [Slot<'a>]) -> Result<(), DecodeError> {
    match step {
        Step::Null => {}
        Step::Bool(t) => {
            let b = match take(buf, 1)? {
                [0] => false,
                [1] => true,
                [other] => {
                    return Err(DecodeError::BadPayload {
                        detail: format!("boolean byte {other}"),
                    });
                }
                _ => unreachable!("take(1) returns one byte"),
            };
            if let Some(t) = t {
                scratch[t.slot] = Slot::Bool(b);
            }
        }
        Step::Long(t) => {
            let v = zigzag(buf)?;
            if let Some(t) = t {
                scratch[t.slot] = match t.convert {
                    Convert::Decimal {
                        precision, scale, ..
                    } => decimal(&t.leaf, i128::from(v), 0, precision, scale)?,
                    Convert::IntToFloat => Slot::Float(v as f64),
                    Convert::TimeDiv(div) => Slot::Time(v.div_euclid(div)),
                    Convert::Days => Slot::Time(v.saturating_mul(86_400_000)),
                    _ => Slot::Int(v),
                };
            }
        }
        Step::Float(t) => {
            let bytes = take(buf, 4)?;
            if let Some(t) = t {
                let v = f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
                scratch[t.slot] = Slot::Float(f64::from(v));
            }
        }
        Step::Double(t) => {
            let bytes = take(buf, 8)?;
            if let Some(t) = t {
                let mut b = [0u8; 8];
                b.copy_from_slice(bytes);
                scratch[t.slot] = Slot::Float(f64::from_le_bytes(b));
            }
        }
        Step::Bytes => {
            let len = length(buf)?;
            take(buf, len)?;
        }
        Step::Str(t) => {
            let len = length(buf)?;
            let bytes = take(buf, len)?;
            if let Some(t) = t {
                let s = std::str::from_utf8(bytes).map_err(|err| DecodeError::BadPayload {
                    detail: format!("a string that is not UTF-8: {err}"),
                })?;
                scratch[t.slot] = match t.convert {
                    Convert::TimeText => match super::json::parse_rfc3339(s) {
                        Some(ms) => Slot::Time(ms),
                        None => return Err(t.leaf.wrong(format!("string {s:?}"))),
                    },
                    Convert::Decimal {
                        precision, scale, ..
                    } => match crate::decimal::parse_units(s.trim(), precision, scale) {
                        Ok(units) => Slot::Decimal(units),
                        Err(crate::decimal::Error::Syntax { .. }) => {
                            return Err(t.leaf.wrong(format!("string {s:?}")));
                        }
                        Err(source) => {
                            return Err(DecodeError::Decimal {
                                field: t.leaf.path.clone(),
                                source,
                            });
                        }
                    },
                    _ => Slot::Str(Cow::Borrowed(s)),
                };
            }
        }
        Step::Enum(symbols, t) => {
            let i = zigzag(buf)?;
            let symbol = usize::try_from(i)
                .ok()
                .and_then(|i| symbols.get(i))
                .ok_or_else(|| DecodeError::BadPayload {
                    detail: format!("enum index {i} of {} symbols", symbols.len()),
                })?;
            if let Some(t) = t {
                scratch[t.slot] = Slot::Str(Cow::Owned(symbol.clone()));
            }
        }
        Step::Fixed(size) => {
            take(buf, *size)?;
        }
        Step::Decimal(size, t) => {
            let len = match size {
                Some(size) => *size,
                None => length(buf)?,
            };
            let bytes = take(buf, len)?;
            if let Some(t) = t
                && let Convert::Decimal {
                    precision,
                    scale,
                    written_scale,
                } = t.convert
            {
                let overflow = || DecodeError::Decimal {
                    field: t.leaf.path.clone(),
                    source: crate::decimal::Error::Overflow {
                        text: format!("{len}-byte decimal"),
                        precision,
                        scale,
                    },
                };
                let units = crate::decimal::from_be_bytes(bytes).ok_or_else(overflow)?;
                scratch[t.slot] =
                    decimal(&t.leaf, units, written_scale.unwrap_or(0), precision, scale)?;
            }
        }
        Step::Record(fields) => {
            for f in fields {
                read(f, buf, scratch)?;
            }
        }
        Step::Array(item) => blocks(buf, |buf| read(item, buf, scratch))?,
        Step::Map(value) => blocks(buf, |buf| {
            let len = length(buf)?;
            take(buf, len)?;
            read(value, buf, scratch)
        })?,
        Step::Union(branches) => {
            let i = zigzag(buf)?;
            let branch = usize::try_from(i)
                .ok()
                .and_then(|i| branches.get(i))
                .ok_or_else(|| DecodeError::BadPayload {
                    detail: format!("union branch {i} of {}", branches.len()),
                })?;
            read(branch, buf, scratch)?;
        }
        Step::Mismatch(err) => return Err(DecodeError::clone(err)),
    }
    Ok(())
}

/// `units` at `from` scale as the declared `decimal(precision, scale)`, exactly.
fn decimal(
    leaf: &Leaf,
    units: i128,
    from: i8,
    precision: u8,
    scale: i8,
) -> Result<Slot<'static>, DecodeError> {
    crate::decimal::rescale(units, from, precision, scale)
        .map(Slot::Decimal)
        .map_err(|source| DecodeError::Decimal {
            field: leaf.path.clone(),
            source,
        })
}

fn length(buf: &mut &[u8]) -> Result<usize, DecodeError> {
    let len = zigzag(buf)?;
    usize::try_from(len).map_err(|_| DecodeError::BadPayload {
        detail: format!("negative length {len}"),
    })
}

/// Array and map items come in blocks: a count (negative: followed by the block's byte size),
/// the items, and a zero count at the end.
fn blocks<'a>(
    buf: &mut &'a [u8],
    mut item: impl FnMut(&mut &'a [u8]) -> Result<(), DecodeError>,
) -> Result<(), DecodeError> {
    loop {
        let count = zigzag(buf)?;
        if count == 0 {
            return Ok(());
        }
        if count < 0 {
            let size = length(buf)?;
            take(buf, size)?;
            continue;
        }
        if count > MAX_BLOCK {
            return Err(DecodeError::BadPayload {
                detail: format!("a block of {count} array or map items"),
            });
        }
        for _ in 0..count {
            if buf.is_empty() {
                return Err(DecodeError::Truncated {
                    detail: format!("an array or map of {count} items ends early"),
                });
            }
            item(buf)?;
        }
    }
}
