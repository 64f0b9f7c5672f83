//! The common case of a JSON payload, read without serde: a flat or nested object whose
//! declared values have their declared types and whose strings have no escapes.
//!
//! ```text
//!  payload ─► scan (one pass: keys compared, undeclared values skipped, numbers by their text)
//!     ├─ Some: the slots, exactly as the serde reader would fill them
//!     └─ None: anything else (an escape, a wrong type, bad JSON) ─► the serde reader decides
//! ```
//!
//! The scanner accepts a payload only if it is valid JSON and every declared value is usable,
//! and then fills the same slots the serde reader would (the differential tests hold it to
//! that). Everything it does not take — escapes, type errors, malformed JSON, numbers outside
//! its integer fast path — goes to the serde reader, which also writes every error message:
//! the scanner has no error paths of its own. It does about a third of the serde reader's work
//! per byte on events of the benchmark profiles (BENCHMARKS.md).

use std::borrow::Cow;

use super::super::Slot;
use super::super::paths::{Fields, Leaf, Node};
use super::parse_rfc3339;
use crate::schema::FieldType;

/// Nesting an undeclared value may have before the serde reader takes over (which allows 128).
const MAX_DEPTH: u32 = 64;

/// Fills `scratch` from the object `text`, or returns `None` (with `scratch` partly written)
/// for anything but the common case.
pub(super) fn scan<'a>(root: &Fields, text: &'a str, scratch: &mut [Slot<'a>]) -> Option<()> {
    let mut scanner = Scanner { text, pos: 0 };
    if scanner.peek()? != b'{' {
        return None;
    }
    scanner.record(root, scratch)?;
    scanner.skip_whitespace();
    (scanner.pos == text.len()).then_some(())
}

struct Scanner<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Scanner<'a> {
    #[inline]
    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    #[inline]
    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.bytes().get(self.pos) {
            self.pos += 1;
        }
    }

    /// The next byte that is not whitespace (not consumed).
    #[inline]
    fn peek(&mut self) -> Option<u8> {
        self.skip_whitespace();
        self.bytes().get(self.pos).copied()
    }

    #[inline]
    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.pos += 1)
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.pos + word.len();
        (self.bytes().get(self.pos..end)? == word).then(|| self.pos = end)
    }

    /// A string without escapes, at its opening quote.
    #[inline]
    fn string(&mut self) -> Option<&'a str> {
        let bytes = self.bytes();
        let start = self.pos + 1;
        let mut at = start;
        // Eight bytes at a time up to the first byte that needs a look.
        while let Some(word) = bytes.get(at..at + 8) {
            let word = u64::from_le_bytes(word.try_into().ok()?);
            let found = needs_a_look(word);
            if found != 0 {
                at += (found.trailing_zeros() / 8) as usize;
                break;
            }
            at += 8;
        }
        loop {
            match *bytes.get(at)? {
                b'"' => break,
                b'\\' => return None,
                c if c < 0x20 => return None,
                _ => at += 1,
            }
        }
        self.pos = at + 1;
        // The payload is UTF-8 and quotes are ASCII, so both ends are char boundaries.
        self.text.get(start..at)
    }

    /// A number, checked against JSON's grammar; its digits are read on the way.
    fn number(&mut self) -> Option<Number<'a>> {
        let bytes = self.bytes();
        let start = self.pos;
        let mut at = start;
        let mut number = Number::default();
        // Digits from `at` on, into the number's significand.
        let digits = |mut at: usize, number: &mut Number<'_>| {
            while let Some(&d @ b'0'..=b'9') = bytes.get(at) {
                number.significand = number
                    .significand
                    .wrapping_mul(10)
                    .wrapping_add(u64::from(d - b'0'));
                number.digits += 1;
                at += 1;
            }
            at
        };
        if bytes.get(at) == Some(&b'-') {
            number.negative = true;
            at += 1;
        }
        match bytes.get(at)? {
            b'0' => {
                number.digits = 1;
                at += 1;
            }
            b'1'..=b'9' => at = digits(at, &mut number),
            _ => return None,
        }
        if bytes.get(at) == Some(&b'.') {
            let whole = number.digits;
            let end = digits(at + 1, &mut number);
            if end == at + 1 {
                return None;
            }
            number.fraction = Some(number.digits - whole);
            at = end;
        }
        if let Some(b'e' | b'E') = bytes.get(at) {
            number.exponent = true;
            at += 1;
            if let Some(b'+' | b'-') = bytes.get(at) {
                at += 1;
            }
            let end = at
                + bytes[at..]
                    .iter()
                    .take_while(|b| b.is_ascii_digit())
                    .count();
            if end == at {
                return None;
            }
            at = end;
        }
        self.pos = at;
        number.text = self.text.get(start..at)?;
        Some(number)
    }

    /// One object at its `{`: declared values into their slots, the rest skipped.
    fn record(&mut self, fields: &Fields, scratch: &mut [Slot<'a>]) -> Option<()> {
        self.pos += 1;
        if self.peek()? == b'}' {
            self.pos += 1;
            return Some(());
        }
        loop {
            if self.peek()? != b'"' {
                return None;
            }
            let key = self.string()?;
            self.expect(b':')?;
            match fields.get(key) {
                None => self.skip(0)?,
                Some(Node::Leaf(leaf)) => scratch[leaf.slot] = self.leaf(leaf)?,
                // A nested record that is null leaves its fields NULL.
                Some(Node::Record(inner)) => match self.peek()? {
                    b'{' => self.record(inner, scratch)?,
                    b'n' => self.literal(b"null")?,
                    _ => return None,
                },
            }
            match self.peek()? {
                b',' => self.pos += 1,
                b'}' => {
                    self.pos += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// A declared value of its declared type (or null).
    fn leaf(&mut self, leaf: &Leaf) -> Option<Slot<'a>> {
        match self.peek()? {
            b'n' => self.literal(b"null").map(|()| Slot::Null),
            b't' if leaf.ty == FieldType::Bool => self.literal(b"true").map(|()| Slot::Bool(true)),
            b'f' if leaf.ty == FieldType::Bool => {
                self.literal(b"false").map(|()| Slot::Bool(false))
            }
            b'"' => {
                let text = self.string()?;
                match leaf.ty {
                    FieldType::String => Some(Slot::Str(Cow::Borrowed(text))),
                    FieldType::Timestamp => parse_rfc3339(text).map(Slot::Time),
                    FieldType::Decimal { precision, scale } => {
                        crate::decimal::parse_units(text.trim(), precision, scale)
                            .ok()
                            .map(Slot::Decimal)
                    }
                    _ => None,
                }
            }
            b'-' | b'0'..=b'9' => {
                let number = self.number()?;
                match leaf.ty {
                    FieldType::Int64 => number.integer().map(Slot::Int),
                    FieldType::Timestamp => number.integer().map(Slot::Time),
                    FieldType::Float64 => number.float().map(Slot::Float),
                    FieldType::Decimal { precision, scale } => number
                        .decimal_units(precision, scale)
                        .or_else(|| crate::decimal::parse_units(number.text, precision, scale).ok())
                        .map(Slot::Decimal),
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// Any JSON value, validated and skipped.
    fn skip(&mut self, depth: u32) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'-' | b'0'..=b'9' => self.number().map(drop),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            open @ (b'{' | b'[') if depth < MAX_DEPTH => {
                let close = if open == b'{' { b'}' } else { b']' };
                self.pos += 1;
                if self.peek()? == close {
                    self.pos += 1;
                    return Some(());
                }
                loop {
                    if open == b'{' {
                        if self.peek()? != b'"' {
                            return None;
                        }
                        self.string()?;
                        self.expect(b':')?;
                    }
                    self.skip(depth + 1)?;
                    match self.peek()? {
                        b',' => self.pos += 1,
                        c if c == close => {
                            self.pos += 1;
                            return Some(());
                        }
                        _ => return None,
                    }
                }
            }
            _ => None,
        }
    }
}

/// The high bit of every byte of `word` (little-endian) that is a quote, a backslash or a
/// control character, and maybe of bytes after the first such byte (the subtraction borrows
/// from the byte above a match): exact for the lowest flagged byte, which is all it is used for.
#[inline]
pub(super) fn needs_a_look(word: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let zero_byte = |v: u64| v.wrapping_sub(ONES) & !v;
    let quote = zero_byte(word ^ (ONES * u64::from(b'"')));
    let backslash = zero_byte(word ^ (ONES * u64::from(b'\\')));
    let control = word.wrapping_sub(ONES * 0x20) & !word;
    (quote | backslash | control) & HIGHS
}

/// A JSON number as the scanner read it.
#[derive(Debug, Default)]
struct Number<'a> {
    text: &'a str,
    negative: bool,
    /// The integer and fraction digits as one integer (wrapped past 19 digits).
    significand: u64,
    /// How many digits `significand` has.
    digits: u32,
    /// Digits after the point, if there is one.
    fraction: Option<u32>,
    exponent: bool,
}

/// Exact powers of ten as doubles (every one up to 10^22 is representable).
const POWERS_OF_TEN: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

impl Number<'_> {
    /// The value of an integer that serde_json reads as an `i64` of the same value: at most
    /// 18 digits, so it cannot overflow, and not `-0` (which serde_json reads as a float).
    fn integer(&self) -> Option<i64> {
        if self.fraction.is_some() || self.exponent || self.digits > 18 {
            return None;
        }
        let magnitude = i64::try_from(self.significand).ok()?;
        match (self.negative, magnitude) {
            (true, 0) => None,
            (true, m) => Some(-m),
            (false, m) => Some(m),
        }
    }

    /// A finite value, correctly rounded as serde_json's `float_roundtrip` parser reads it
    /// (an integer through `i64`, as serde_json does).
    fn float(&self) -> Option<f64> {
        if self.fraction.is_none() && !self.exponent {
            return self.integer().map(|v| v as f64);
        }
        self.short_decimal()
            .or_else(|| self.text.parse::<f64>().ok())
            .filter(|v| v.is_finite())
    }

    /// The units of `decimal(precision, scale)` in the common case, from the digits already
    /// read: no exponent, at most 18 digits, no more fraction digits than the scale, and the
    /// value fits. `None` for anything else, which `parse_units` then decides (and words).
    fn decimal_units(&self, precision: u8, scale: i8) -> Option<i128> {
        let fraction = self.fraction.unwrap_or(0);
        let scale = u32::try_from(scale).ok()?;
        if self.exponent || self.digits > 18 || fraction > scale {
            return None;
        }
        let units =
            i128::from(self.significand).checked_mul(crate::decimal::pow10(scale - fraction))?;
        crate::decimal::fits(units, precision).then_some(if self.negative { -units } else { units })
    }

    /// The common case of a float, `-?digits.digits` with at most 2^53 as its digits: the digits
    /// and the power of ten are exact doubles, so one (correctly rounded) division gives the
    /// correctly rounded value (Clinger's fast path). `None` for anything else.
    fn short_decimal(&self) -> Option<f64> {
        let fraction = self.fraction? as usize;
        if self.exponent || self.digits > 16 || self.significand > 1 << 53 {
            return None;
        }
        let value = self.significand as f64 / POWERS_OF_TEN.get(fraction)?;
        Some(if self.negative { -value } else { value })
    }
}
