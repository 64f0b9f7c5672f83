//! What every layer's settings are made of: sizes that deserialize themselves, and the one
//! shape of a setting's problem. Each layer owns its section's settings struct (serde
//! defaults, then [`Invalid`] from its own checks); the app names the section.
//!
//! ```text
//!  1048576 | "64KiB" | "512MiB" | "2GiB" | "2 GB" ──► ByteSize (bytes)
//!  "30s" | "10m" | "7d" ──► time::Span (deserializes itself)
//!  a layer's check ──► Invalid { key, problem } ──► app: "<file>: <section>.<key>: <problem>"
//! ```

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A setting of a section that is not acceptable, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {problem}")]
pub struct Invalid {
    pub key: &'static str,
    pub problem: String,
}

impl Invalid {
    pub fn new(key: &'static str, problem: impl Into<String>) -> Self {
        Self {
            key,
            problem: problem.into(),
        }
    }
}

/// A size in bytes. Deserializes from an integer or from text such as `"512MiB"` (binary
/// units `KiB`, `MiB`, `GiB`; decimal `KB`, `MB`, `GB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub usize);

impl ByteSize {
    pub const fn bytes(self) -> usize {
        self.0
    }

    /// `1024`, `"64KiB"`, `"512MiB"`, `"2GiB"` (also `KB`/`MB`/`GB`, powers of 1000); `None`
    /// for anything else or a size past `usize`.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: u64 = number.parse().ok()?;
        let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kib" => 1 << 10,
            "mib" => 1 << 20,
            "gib" => 1 << 30,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            _ => return None,
        };
        usize::try_from(number.checked_mul(factor)?).ok().map(Self)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes", self.0)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0 as u64)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Bytes(u64),
            Text(String),
        }
        let invalid =
            || serde::de::Error::custom("expected bytes or a size such as \"512MiB\" or \"1GiB\"");
        match Written::deserialize(d)? {
            Written::Bytes(n) => usize::try_from(n).map(Self).map_err(|_| invalid()),
            Written::Text(text) => Self::parse(&text).ok_or_else(invalid),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_accept_bytes_and_binary_or_decimal_units() {
        assert_eq!(ByteSize::parse("10"), Some(ByteSize(10)));
        assert_eq!(ByteSize::parse("512MiB"), Some(ByteSize(512 << 20)));
        assert_eq!(ByteSize::parse("2 GB"), Some(ByteSize(2_000_000_000)));
        assert_eq!(ByteSize::parse("lots"), None);
        let n: ByteSize = serde_json::from_str("1024").unwrap();
        assert_eq!(n, ByteSize(1024));
        let t: ByteSize = serde_json::from_str("\"64KiB\"").unwrap();
        assert_eq!(t, ByteSize(64 << 10));
        assert!(serde_json::from_str::<ByteSize>("\"a lot\"").is_err());
    }
}
