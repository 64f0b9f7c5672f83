//! Exact decimal numbers (money): the `decimal(P, S)` field type's values, as Arrow's
//! `Decimal128(P, S)` keeps them: an integer count of units of 10^-S.
//!
//! ```text
//!  "10344.78" / 10344.78 (JSON) ──parse(P=18, S=2)──► 1034478 (units)
//!  sums: integer addition of units ──► Decimal { units, scale } ──Display──► "10344.78"
//! ```
//!
//! Parsing is exact: a value with more integer digits than `P - S` allows is an overflow, one
//! with non-zero digits past the scale is refused rather than rounded (`12.345` is not a
//! `decimal(10, 2)`), and no float is involved anywhere.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The largest precision of `Decimal128`.
pub const MAX_PRECISION: u8 = 38;

/// Why a text is not a value of a decimal type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("`{text}` is not a decimal number")]
    Syntax { text: String },
    #[error("`{text}` does not fit decimal({precision}, {scale})")]
    Overflow {
        text: String,
        precision: u8,
        scale: i8,
    },
    #[error("`{text}` has more than {scale} decimal places")]
    Scale { text: String, scale: i8 },
}

/// An exact decimal value: `units` × 10^-`scale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Decimal {
    pub units: i128,
    pub scale: i8,
}

impl Decimal {
    pub fn new(units: i128, scale: i8) -> Self {
        Self { units, scale }
    }

    /// The nearest float (for comparisons that tolerate it, such as drift ratios).
    pub fn to_f64(self) -> f64 {
        self.units as f64 / 10f64.powi(i32::from(self.scale))
    }

    /// Parses text with an exact value (`-12.5`, `1e3`) as `scale`.
    pub fn parse(text: &str, scale: i8) -> Result<Self, Error> {
        parse_units(text, MAX_PRECISION, scale).map(|units| Self { units, scale })
    }
}

/// 10^0 to 10^38: every power of ten an `i128` holds.
const POWERS_OF_TEN: [i128; MAX_PRECISION as usize + 1] = {
    let mut powers = [1i128; MAX_PRECISION as usize + 1];
    let mut i = 1;
    while i < powers.len() {
        powers[i] = powers[i - 1] * 10;
        i += 1;
    }
    powers
};

/// 10^`exp` for `exp` ≤ 38 (what callers ask for); `i128::MAX` past that rather than a
/// wrapped value.
#[inline]
pub fn pow10(exp: u32) -> i128 {
    POWERS_OF_TEN
        .get(exp as usize)
        .copied()
        .unwrap_or(i128::MAX)
}

/// Whether `units` has at most `precision` digits.
#[inline]
pub fn fits(units: i128, precision: u8) -> bool {
    units.unsigned_abs() < pow10(u32::from(precision.min(MAX_PRECISION))).unsigned_abs()
}

/// The units of `text` in `decimal(precision, scale)`: `[-+]digits[.digits][e[-+]digits]`,
/// surrounding quotes not included. Exact or an error.
pub fn parse_units(text: &str, precision: u8, scale: i8) -> Result<i128, Error> {
    let syntax = || Error::Syntax {
        text: text.to_owned(),
    };
    let overflow = || Error::Overflow {
        text: text.to_owned(),
        precision,
        scale,
    };
    let bytes = text.as_bytes();
    let (negative, rest) = match bytes.first() {
        Some(b'-') => (true, &bytes[1..]),
        Some(b'+') => (false, &bytes[1..]),
        _ => (false, bytes),
    };
    let (mantissa, exponent) = match rest.iter().position(|b| *b == b'e' || *b == b'E') {
        Some(at) => {
            let exp = std::str::from_utf8(&rest[at + 1..])
                .ok()
                .and_then(|e| e.parse::<i32>().ok())
                .ok_or_else(syntax)?;
            (&rest[..at], exp)
        }
        None => (rest, 0),
    };
    let (int, frac) = match mantissa.iter().position(|b| *b == b'.') {
        Some(at) => (&mantissa[..at], &mantissa[at + 1..]),
        None => (mantissa, &mantissa[mantissa.len()..]),
    };
    if int.is_empty() && frac.is_empty()
        || !int.iter().chain(frac).all(u8::is_ascii_digit)
        || mantissa.is_empty()
    {
        return Err(syntax());
    }
    // digits × 10^(exponent - frac.len()) expressed in units of 10^-scale: the digit string
    // shifted by `shift` places.
    let shift = i64::from(exponent) - frac.len() as i64 + i64::from(scale);
    let digits = || int.iter().chain(frac).skip_while(|b| **b == b'0');
    let keep = usize::try_from(digits().count() as i64 + shift.min(0)).unwrap_or(0);
    let mut units: i128 = 0;
    for (i, d) in digits().enumerate() {
        if i < keep {
            units = units
                .checked_mul(10)
                .and_then(|u| u.checked_add(i128::from(d - b'0')))
                .ok_or_else(overflow)?;
        } else if *d != b'0' {
            // Digits dropped by a negative shift must all be zero: no rounding.
            return Err(Error::Scale {
                text: text.to_owned(),
                scale,
            });
        }
    }
    if shift > 0 {
        let shift = u32::try_from(shift).map_err(|_| overflow())?;
        if units != 0 {
            units = if shift > u32::from(MAX_PRECISION) {
                return Err(overflow());
            } else {
                units.checked_mul(pow10(shift)).ok_or_else(overflow)?
            };
        }
    }
    if !fits(units, precision) {
        return Err(overflow());
    }
    Ok(if negative { -units } else { units })
}

/// `units` at `from` scale, exactly at `scale` and within `precision`.
pub fn rescale(units: i128, from: i8, precision: u8, scale: i8) -> Result<i128, Error> {
    let text = || Decimal::new(units, from).to_string();
    let out = match i32::from(scale) - i32::from(from) {
        0 => Some(units),
        up if up > 0 => u32::try_from(up)
            .ok()
            .filter(|up| *up <= u32::from(MAX_PRECISION))
            .and_then(|up| units.checked_mul(pow10(up))),
        down => {
            let div = pow10(down.unsigned_abs().min(u32::from(MAX_PRECISION)));
            if units % div != 0 {
                return Err(Error::Scale {
                    text: text(),
                    scale,
                });
            }
            Some(units / div)
        }
    };
    match out {
        Some(v) if fits(v, precision) => Ok(v),
        _ => Err(Error::Overflow {
            text: text(),
            precision,
            scale,
        }),
    }
}

/// The units of a big-endian two's-complement integer (Avro's and Parquet's decimal bytes).
pub fn from_be_bytes(bytes: &[u8]) -> Option<i128> {
    let negative = bytes.first().is_some_and(|b| b & 0x80 != 0);
    let fill = if negative { 0xff } else { 0 };
    let (high, low) = bytes.split_at(bytes.len().saturating_sub(16));
    if high.iter().any(|b| *b != fill) {
        return None;
    }
    let mut buf = [fill; 16];
    buf[16 - low.len()..].copy_from_slice(low);
    let v = i128::from_be_bytes(buf);
    // The sign of what was kept must be the sign of what was written.
    (high.is_empty() || (v < 0) == negative).then_some(v)
}

impl fmt::Display for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.scale <= 0 {
            let zeros = pow10(u32::from(self.scale.unsigned_abs()));
            return write!(f, "{}", self.units.saturating_mul(zeros));
        }
        let scale = self.scale as usize;
        let digits = self.units.unsigned_abs().to_string();
        let sign = if self.units < 0 { "-" } else { "" };
        if digits.len() > scale {
            let (int, frac) = digits.split_at(digits.len() - scale);
            write!(f, "{sign}{int}.{frac}")
        } else {
            write!(f, "{sign}0.{digits:0>scale$}")
        }
    }
}

impl Serialize for Decimal {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Decimal {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        let scale = text
            .split_once('.')
            .map_or(0, |(_, frac)| frac.len())
            .min(usize::from(MAX_PRECISION)) as i8;
        Decimal::parse(&text, scale).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_exactly_or_refuses() {
        let ok = [
            ("10344.78", 1034478),
            ("-0.5", -50),
            ("+3", 300),
            ("1e2", 10000),
            ("1.5E-1", 15),
            ("12.340", 1234),
            ("0", 0),
            (".25", 25),
            ("7.", 700),
            ("000012.30", 1230),
        ];
        for (text, units) in ok {
            assert_eq!(parse_units(text, 10, 2), Ok(units), "{text}");
        }
        assert!(matches!(
            parse_units("12.345", 10, 2),
            Err(Error::Scale { .. })
        ));
        assert!(matches!(
            parse_units("123456789.0", 10, 2),
            Err(Error::Overflow { .. })
        ));
        assert_eq!(parse_units("99999999.99", 10, 2), Ok(9_999_999_999));
        for bad in [
            "", "-", ".", "1.2.3", "abc", "1e", "1e2.5", "--1", "1 ", "0x10",
        ] {
            assert!(
                matches!(parse_units(bad, 10, 2), Err(Error::Syntax { .. })),
                "{bad}"
            );
        }
        assert!(matches!(
            parse_units("1e400", 38, 2),
            Err(Error::Overflow { .. })
        ));
        assert_eq!(parse_units("0e400", 38, 2), Ok(0));
    }

    #[test]
    fn renders_every_digit() {
        let cases = [
            (1034478, 2, "10344.78"),
            (-5, 2, "-0.05"),
            (0, 2, "0.00"),
            (7, 0, "7"),
            (12, -2, "1200"),
            (i128::MAX, 38, "1.70141183460469231731687303715884105727"),
        ];
        for (units, scale, text) in cases {
            assert_eq!(Decimal::new(units, scale).to_string(), text);
        }
        let json = serde_json::to_string(&Decimal::new(1034478, 2)).unwrap();
        assert_eq!(json, "\"10344.78\"");
        assert_eq!(
            serde_json::from_str::<Decimal>(&json).unwrap(),
            Decimal::new(1034478, 2)
        );
    }

    #[test]
    fn rescales_exactly_and_reads_big_endian_bytes() {
        assert_eq!(rescale(1234, 2, 10, 4), Ok(123400));
        assert_eq!(rescale(123400, 4, 10, 2), Ok(1234));
        assert!(matches!(
            rescale(123401, 4, 10, 2),
            Err(Error::Scale { .. })
        ));
        assert!(matches!(
            rescale(10i128.pow(9), 0, 10, 2),
            Err(Error::Overflow { .. })
        ));
        assert_eq!(from_be_bytes(&[0x04, 0xd2]), Some(1234));
        assert_eq!(from_be_bytes(&[0xfb, 0x2e]), Some(-1234));
        assert_eq!(from_be_bytes(&[]), Some(0));
        let mut wide = vec![0xff; 4];
        wide.extend_from_slice(&(-5i128).to_be_bytes());
        assert_eq!(from_be_bytes(&wide), Some(-5));
        let mut too_wide = vec![0x01];
        too_wide.extend_from_slice(&[0; 16]);
        assert_eq!(from_be_bytes(&too_wide), None);
    }

    proptest! {
        #[test]
        fn display_and_parse_round_trip(units in -(10i128.pow(30))..10i128.pow(30), scale in 0i8..12) {
            let text = Decimal::new(units, scale).to_string();
            prop_assert_eq!(parse_units(&text, 38, scale), Ok(units));
        }
    }
}
