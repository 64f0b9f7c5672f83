//! Sizes in the configuration: bytes as an integer, or text with a unit.

use serde::Deserialize;

/// A size in bytes: an integer, or a string such as `"512MiB"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(super) enum ByteSize {
    Bytes(u64),
    Text(String),
}

/// Parses `1024`, `"64KiB"`, `"512MiB"`, `"2GiB"` (also `KB`/`MB`/`GB`, powers of 1000).
pub(super) fn parse_size(size: &ByteSize) -> Option<usize> {
    let text = match size {
        ByteSize::Bytes(n) => return usize::try_from(*n).ok(),
        ByteSize::Text(t) => t.trim(),
    };
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
    usize::try_from(number.checked_mul(factor)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_accept_bytes_and_binary_or_decimal_units() {
        assert_eq!(parse_size(&ByteSize::Bytes(10)), Some(10));
        assert_eq!(
            parse_size(&ByteSize::Text("512MiB".into())),
            Some(512 << 20)
        );
        assert_eq!(
            parse_size(&ByteSize::Text("2 GB".into())),
            Some(2_000_000_000)
        );
        assert_eq!(parse_size(&ByteSize::Text("lots".into())), None);
    }
}
