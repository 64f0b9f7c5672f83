//! Protobuf payloads: a message descriptor compiled once into a reading plan, then each message
//! read straight off the wire into the decoder's slots.
//!
//! ```text
//!  .proto text (registry, by id; or a local file) ──protox──► descriptors
//!  descriptor + declared paths ──compile──► MessagePlan (field number → slot)
//!  message bytes ──MessagePlan::read──► slots (strings borrowed from the payload)
//! ```
//!
//! Fields nobody declared are skipped by wire type; a declared field the writer's message lacks
//! stays NULL; a declared scalar absent from a message takes the Protobuf default (0, "", false)
//! unless the field tracks presence (`optional`, messages), when it is NULL; a declared field
//! whose type cannot become the declared type is `schema_mismatch`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use prost_reflect::{DescriptorPool, FieldDescriptor, Kind, MessageDescriptor};

use super::paths::{Fields, Leaf, Node};
use super::wire::{take, varint};
use super::{DecodeError, Slot};
use crate::schema::FieldType;

const MAX_DEPTH: usize = 32;
const TIMESTAMP: &str = "google.protobuf.Timestamp";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wire {
    Varint,
    I64,
    Len,
    I32,
}

/// How a written scalar is read and what it becomes.
#[derive(Debug, Clone)]
enum Scalar {
    /// Varint of a signed type (int32, int64), sign-extended.
    Signed,
    Unsigned32,
    Unsigned64,
    /// sint32, sint64.
    Zigzag,
    Fixed32,
    Fixed64,
    Sfixed32,
    Sfixed64,
    Float,
    Double,
    Bool,
    Text,
    Enum(Arc<HashMap<i32, String>>),
    /// A google.protobuf.Timestamp message.
    Timestamp,
}

impl Scalar {
    fn wire(&self) -> Wire {
        match self {
            Scalar::Signed
            | Scalar::Unsigned32
            | Scalar::Unsigned64
            | Scalar::Zigzag
            | Scalar::Bool
            | Scalar::Enum(_) => Wire::Varint,
            Scalar::Fixed64 | Scalar::Sfixed64 | Scalar::Double => Wire::I64,
            Scalar::Fixed32 | Scalar::Sfixed32 | Scalar::Float => Wire::I32,
            Scalar::Text | Scalar::Timestamp => Wire::Len,
        }
    }
}

#[derive(Debug, Clone)]
enum Step {
    Value { scalar: Scalar, leaf: Arc<Leaf> },
    Message(Arc<MessagePlan>),
    Mismatch(Arc<DecodeError>),
}

/// How to read one message type.
#[derive(Debug)]
pub(super) struct MessagePlan {
    /// Declared fields by field number, sorted.
    fields: Vec<(u32, Step)>,
    /// Slots of declared scalars without presence, and the value they hold when absent.
    defaults: Vec<(usize, Slot<'static>)>,
    /// Field number → 1 + its index in `fields` (0: not declared), for numbers below
    /// [`DIRECT`]; larger numbers are looked up by binary search.
    direct: Vec<u8>,
}

/// Field numbers below this are found by direct indexing.
const DIRECT: u32 = 128;

/// The message types of one registered schema, by their Confluent message indexes.
#[derive(Debug)]
pub(super) struct SchemaPlans {
    messages: Vec<(Vec<i32>, Compiled)>,
}

/// A message type's plan, or why messages of that type cannot be read.
type Compiled = Result<Arc<MessagePlan>, DecodeError>;

impl SchemaPlans {
    /// Compiles a registered `.proto` text. With `message`, only that type is accepted.
    pub(super) fn compile(
        text: &str,
        root: &Fields,
        message: Option<&str>,
    ) -> Result<Self, DecodeError> {
        let pool = compile_text(text).map_err(|detail| DecodeError::SchemaMismatch {
            field: String::new(),
            detail,
        })?;
        let Some(file) = pool.files().find(|f| f.name() == REGISTERED_FILE) else {
            return Err(DecodeError::SchemaMismatch {
                field: String::new(),
                detail: "the registered schema has no file".into(),
            });
        };
        let mut messages = Vec::new();
        let mut stack: Vec<(Vec<i32>, MessageDescriptor)> = file
            .messages()
            .enumerate()
            .map(|(i, m)| (vec![i as i32], m))
            .collect();
        while let Some((indexes, m)) = stack.pop() {
            for (i, child) in m.child_messages().enumerate() {
                if !child.is_map_entry() {
                    let mut path = indexes.clone();
                    path.push(i as i32);
                    stack.push((path, child));
                }
            }
            let plan = match message {
                Some(wanted) if wanted != m.full_name() => Err(DecodeError::SchemaMismatch {
                    field: String::new(),
                    detail: format!(
                        "the payload is a `{}`, the configured message is `{wanted}`",
                        m.full_name()
                    ),
                }),
                _ => MessagePlan::compile(&m, root, 0).map(Arc::new),
            };
            messages.push((indexes, plan));
        }
        Ok(Self { messages })
    }

    pub(super) fn get(&self, indexes: &[i32]) -> Result<&Arc<MessagePlan>, DecodeError> {
        match self.messages.iter().find(|(i, _)| i == indexes) {
            Some((_, Ok(plan))) => Ok(plan),
            Some((_, Err(err))) => Err(err.clone()),
            None => Err(DecodeError::SchemaMismatch {
                field: String::new(),
                detail: format!("the schema has no message at indexes {indexes:?}"),
            }),
        }
    }
}

/// The name the registered text is compiled under.
const REGISTERED_FILE: &str = "registered.proto";

struct RegisteredText(String);

impl protox::file::FileResolver for RegisteredText {
    fn open_file(&self, name: &str) -> Result<protox::file::File, protox::Error> {
        if name == REGISTERED_FILE {
            return protox::file::File::from_source(name, &self.0);
        }
        protox::file::GoogleFileResolver::new().open_file(name)
    }
}

fn compile_text(text: &str) -> Result<DescriptorPool, String> {
    let mut compiler = protox::Compiler::with_file_resolver(RegisteredText(text.to_owned()));
    compiler.include_imports(true);
    compiler
        .open_file(REGISTERED_FILE)
        .map_err(|err| format!("the registered schema does not compile: {err}"))?;
    Ok(compiler.descriptor_pool())
}

#[cfg(test)]
pub(super) fn compile_text_for_tests(text: &str) -> DescriptorPool {
    compile_text(text).unwrap_or_else(|err| panic!("{err}"))
}

/// The message `name` of a local `.proto` file (imports resolved next to it).
pub(super) fn local_message(path: &Path, name: &str) -> Result<MessageDescriptor, String> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let set = protox::compile([path], [dir]).map_err(|err| err.to_string())?;
    let pool = DescriptorPool::from_file_descriptor_set(set).map_err(|err| err.to_string())?;
    pool.get_message_by_name(name).ok_or_else(|| {
        format!(
            "no message `{name}` in {} (messages: {})",
            path.display(),
            pool.all_messages()
                .map(|m| m.full_name().to_owned())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

impl MessagePlan {
    pub(super) fn compile(
        message: &MessageDescriptor,
        wanted: &Fields,
        depth: usize,
    ) -> Result<MessagePlan, DecodeError> {
        if depth > MAX_DEPTH {
            return Err(DecodeError::SchemaMismatch {
                field: wanted.path.clone(),
                detail: format!("declared deeper than {MAX_DEPTH} messages"),
            });
        }
        let mut fields = Vec::new();
        let mut defaults = Vec::new();
        for (name, node) in &wanted.entries {
            // A declared field the writer's message lacks stays NULL.
            let Some(field) = message.get_field_by_name(name) else {
                continue;
            };
            let step = match node {
                Node::Leaf(leaf) => {
                    let step = leaf_step(&field, leaf);
                    if let (Step::Value { scalar, leaf }, false) =
                        (&step, field.supports_presence())
                        && let Some(default) = default_value(scalar, leaf.ty)
                    {
                        defaults.push((leaf.slot, default));
                    }
                    step
                }
                Node::Record(inner) => match field.kind() {
                    Kind::Message(m) if !field.is_list() && !field.is_map() => {
                        Step::Message(Arc::new(MessagePlan::compile(&m, inner, depth + 1)?))
                    }
                    _ => Step::Mismatch(Arc::new(DecodeError::SchemaMismatch {
                        field: inner.path.clone(),
                        detail: "declared as a record of fields, written as a single value".into(),
                    })),
                },
            };
            fields.push((field.number(), step));
        }
        fields.sort_by_key(|(n, _)| *n);
        // (More than 254 declared fields in one message: every lookup searches.)
        let mut direct = if fields.len() < 255 {
            vec![0u8; DIRECT as usize]
        } else {
            Vec::new()
        };
        for (i, (number, _)) in fields.iter().enumerate() {
            if let (Some(entry), Ok(i)) = (direct.get_mut(*number as usize), u8::try_from(i + 1)) {
                *entry = i;
            }
        }
        Ok(MessagePlan {
            fields,
            defaults,
            direct,
        })
    }

    /// Reads one message into `scratch`.
    pub(super) fn read<'a>(
        &self,
        mut buf: &'a [u8],
        scratch: &mut [Slot<'a>],
    ) -> Result<(), DecodeError> {
        for (slot, value) in &self.defaults {
            scratch[*slot] = value.clone();
        }
        while !buf.is_empty() {
            let key = varint(&mut buf)?;
            let number = u32::try_from(key >> 3).unwrap_or(0);
            let wire = match key & 7 {
                0 => Wire::Varint,
                1 => Wire::I64,
                2 => Wire::Len,
                5 => Wire::I32,
                other => {
                    return Err(DecodeError::BadPayload {
                        detail: format!(
                            "field {number}: wire type {other} (groups are not supported)"
                        ),
                    });
                }
            };
            if number == 0 {
                return Err(DecodeError::BadPayload {
                    detail: "field number 0".into(),
                });
            }
            let index = match self.direct.get(number as usize) {
                Some(0) => None,
                Some(i) => Some(usize::from(*i) - 1),
                None => self.fields.binary_search_by_key(&number, |(n, _)| *n).ok(),
            };
            let step = index.map(|i| &self.fields[i].1);
            match step {
                None => skip(&mut buf, wire)?,
                Some(Step::Mismatch(err)) => return Err(DecodeError::clone(err)),
                Some(Step::Message(plan)) => {
                    expect(number, wire, Wire::Len)?;
                    let len = length(&mut buf)?;
                    plan.read(take(&mut buf, len)?, scratch)?;
                }
                Some(Step::Value { scalar, leaf }) => {
                    expect(number, wire, scalar.wire())?;
                    scratch[leaf.slot] = value(scalar, leaf, &mut buf)?;
                }
            }
        }
        Ok(())
    }
}

fn expect(number: u32, got: Wire, want: Wire) -> Result<(), DecodeError> {
    if got == want {
        return Ok(());
    }
    Err(DecodeError::BadPayload {
        detail: format!("field {number}: wire type {got:?}, the schema says {want:?}"),
    })
}

fn length(buf: &mut &[u8]) -> Result<usize, DecodeError> {
    let len = varint(buf)?;
    usize::try_from(len).map_err(|_| DecodeError::BadPayload {
        detail: format!("length {len}"),
    })
}

fn skip(buf: &mut &[u8], wire: Wire) -> Result<(), DecodeError> {
    match wire {
        Wire::Varint => {
            varint(buf)?;
        }
        Wire::I64 => {
            take(buf, 8)?;
        }
        Wire::I32 => {
            take(buf, 4)?;
        }
        Wire::Len => {
            let len = length(buf)?;
            take(buf, len)?;
        }
    }
    Ok(())
}

fn leaf_step(field: &FieldDescriptor, leaf: &Leaf) -> Step {
    let leaf = Arc::new(leaf.clone());
    let mismatch = |written: &str| {
        Step::Mismatch(Arc::new(DecodeError::SchemaMismatch {
            field: leaf.path.clone(),
            detail: format!("declared {}, written as {written}", leaf.ty),
        }))
    };
    if field.is_list() || field.is_map() {
        return mismatch("a repeated field");
    }
    let scalar = match field.kind() {
        Kind::Int32 | Kind::Int64 => Scalar::Signed,
        Kind::Uint32 => Scalar::Unsigned32,
        Kind::Uint64 => Scalar::Unsigned64,
        Kind::Sint32 | Kind::Sint64 => Scalar::Zigzag,
        Kind::Fixed32 => Scalar::Fixed32,
        Kind::Fixed64 => Scalar::Fixed64,
        Kind::Sfixed32 => Scalar::Sfixed32,
        Kind::Sfixed64 => Scalar::Sfixed64,
        Kind::Float => Scalar::Float,
        Kind::Double => Scalar::Double,
        Kind::Bool => Scalar::Bool,
        Kind::String => Scalar::Text,
        Kind::Bytes => return mismatch("bytes"),
        Kind::Enum(e) => Scalar::Enum(Arc::new(
            e.values()
                .map(|v| (v.number(), v.name().to_owned()))
                .collect(),
        )),
        Kind::Message(m) if m.full_name() == TIMESTAMP => Scalar::Timestamp,
        Kind::Message(m) => return mismatch(&format!("a `{}` message", m.full_name())),
    };
    let fits = match (&scalar, leaf.ty) {
        (Scalar::Float | Scalar::Double, ty) => ty == FieldType::Float64,
        (Scalar::Bool, ty) => ty == FieldType::Bool,
        (Scalar::Text, ty) => matches!(
            ty,
            FieldType::String | FieldType::Timestamp | FieldType::Decimal { .. }
        ),
        (Scalar::Enum(_), ty) => ty == FieldType::String,
        (Scalar::Timestamp, ty) => ty == FieldType::Timestamp,
        (_, ty) => matches!(
            ty,
            FieldType::Int64
                | FieldType::Float64
                | FieldType::Timestamp
                | FieldType::Decimal { .. }
        ),
    };
    if !fits {
        return mismatch(&format!("{:?}", field.kind()).to_lowercase());
    }
    Step::Value { scalar, leaf }
}

/// The value a declared scalar has when a message leaves it out (proto3 semantics).
fn default_value(scalar: &Scalar, ty: FieldType) -> Option<Slot<'static>> {
    Some(match (scalar, ty) {
        (Scalar::Timestamp, _) => return None,
        (Scalar::Enum(values), _) => Slot::Str(Cow::Owned(values.get(&0)?.clone())),
        (Scalar::Text, FieldType::String) => Slot::Str(Cow::Borrowed("")),
        (Scalar::Text, _) => return None,
        (_, FieldType::Int64) => Slot::Int(0),
        (_, FieldType::Float64) => Slot::Float(0.0),
        (_, FieldType::Bool) => Slot::Bool(false),
        (_, FieldType::Timestamp) => Slot::Time(0),
        (_, FieldType::Decimal { .. }) => Slot::Decimal(0),
        (_, FieldType::String) => return None,
    })
}

fn value<'a>(scalar: &Scalar, leaf: &Leaf, buf: &mut &'a [u8]) -> Result<Slot<'a>, DecodeError> {
    let int = |v: i64| match leaf.ty {
        FieldType::Float64 => Ok(Slot::Float(v as f64)),
        FieldType::Timestamp => Ok(Slot::Time(v)),
        FieldType::Decimal { precision, scale } => {
            crate::decimal::rescale(i128::from(v), 0, precision, scale)
                .map(Slot::Decimal)
                .map_err(|source| DecodeError::Decimal {
                    field: leaf.path.clone(),
                    source,
                })
        }
        _ => Ok(Slot::Int(v)),
    };
    let fixed = |buf: &mut &[u8], n: usize| -> Result<u64, DecodeError> {
        let bytes = take(buf, n)?;
        let mut b = [0u8; 8];
        b[..n].copy_from_slice(bytes);
        Ok(u64::from_le_bytes(b))
    };
    Ok(match scalar {
        Scalar::Signed => int(varint(buf)? as i64)?,
        Scalar::Unsigned32 => int(i64::from(varint(buf)? as u32))?,
        Scalar::Unsigned64 => {
            let v = varint(buf)?;
            match i64::try_from(v) {
                Ok(v) => int(v)?,
                Err(_) if leaf.ty == FieldType::Float64 => Slot::Float(v as f64),
                Err(_) => return Err(leaf.wrong(format!("number {v} (out of int64 range)"))),
            }
        }
        Scalar::Zigzag => {
            let n = varint(buf)?;
            int(((n >> 1) as i64) ^ -((n & 1) as i64))?
        }
        Scalar::Fixed32 => int(fixed(buf, 4)? as i64)?,
        Scalar::Sfixed32 => int(i64::from(fixed(buf, 4)? as u32 as i32))?,
        Scalar::Fixed64 => {
            let v = fixed(buf, 8)?;
            match i64::try_from(v) {
                Ok(v) => int(v)?,
                Err(_) if leaf.ty == FieldType::Float64 => Slot::Float(v as f64),
                Err(_) => return Err(leaf.wrong(format!("number {v} (out of int64 range)"))),
            }
        }
        Scalar::Sfixed64 => int(fixed(buf, 8)? as i64)?,
        Scalar::Float => Slot::Float(f64::from(f32::from_bits(fixed(buf, 4)? as u32))),
        Scalar::Double => Slot::Float(f64::from_bits(fixed(buf, 8)?)),
        Scalar::Bool => Slot::Bool(varint(buf)? != 0),
        Scalar::Enum(values) => {
            let n = varint(buf)? as i32;
            match values.get(&n) {
                Some(name) => Slot::Str(Cow::Owned(name.clone())),
                // An open enum may carry a number the writer's schema does not name.
                None => Slot::Str(Cow::Owned(n.to_string())),
            }
        }
        Scalar::Text => {
            let len = length(buf)?;
            let bytes = take(buf, len)?;
            let s = std::str::from_utf8(bytes).map_err(|err| DecodeError::BadPayload {
                detail: format!("field `{}`: a string that is not UTF-8: {err}", leaf.path),
            })?;
            if leaf.ty == FieldType::Timestamp {
                match super::json::parse_rfc3339(s) {
                    Some(ms) => Slot::Time(ms),
                    None => return Err(leaf.wrong(format!("string {s:?}"))),
                }
            } else if let FieldType::Decimal { precision, scale } = leaf.ty {
                match crate::decimal::parse_units(s.trim(), precision, scale) {
                    Ok(units) => Slot::Decimal(units),
                    Err(crate::decimal::Error::Syntax { .. }) => {
                        return Err(leaf.wrong(format!("string {s:?}")));
                    }
                    Err(source) => {
                        return Err(DecodeError::Decimal {
                            field: leaf.path.clone(),
                            source,
                        });
                    }
                }
            } else {
                Slot::Str(Cow::Borrowed(s))
            }
        }
        Scalar::Timestamp => {
            let len = length(buf)?;
            let mut body = take(buf, len)?;
            let (mut seconds, mut nanos) = (0i64, 0i64);
            while !body.is_empty() {
                let key = varint(&mut body)?;
                match (key >> 3, key & 7) {
                    (1, 0) => seconds = varint(&mut body)? as i64,
                    (2, 0) => nanos = i64::from(varint(&mut body)? as i32),
                    (_, 0) => {
                        varint(&mut body)?;
                    }
                    (n, w) => {
                        return Err(DecodeError::BadPayload {
                            detail: format!("google.protobuf.Timestamp field {n}: wire type {w}"),
                        });
                    }
                }
            }
            Slot::Time(
                seconds
                    .saturating_mul(1000)
                    .saturating_add(nanos / 1_000_000),
            )
        }
    })
}
