//! Byte sizes written the way operators write them: `4096`, `"128K"`, `"8G"`, `"1MiB"`.
//!
//! Every unit is a power of 1024, as in SPDK's and fio's options: `K` = `KiB` = 1024.
//! Decimal units (`KB`, `MB`) are refused rather than guessed, because "4MB" means
//! 4 000 000 to some people and 4 194 304 to others, and a volume or transfer size
//! that is off by 5 % is a bug found much later. Fractions are refused for the same
//! reason. The same parser serves the config file and the CLI's `--size` flags, so the
//! error names the key or flag the text came from.

use std::fmt;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{value_error_message, ConfigError};

/// Units accepted after the number, in ascending order, with their shift.
const UNITS: [(&str, &str, u32); 4] = [("k", "kib", 10), ("m", "mib", 20), ("g", "gib", 30), ("t", "tib", 40)];

/// What a size may look like, for error messages.
pub const SIZE_EXPECTED: &str = "a size such as 4096, \"128K\", \"4M\", \"8G\" or \"1MiB\"";

/// Parses a size: plain bytes (`"4096"`, `"4096B"`), or an integer followed by `K`,
/// `M`, `G`, `T` or `KiB`, `MiB`, `GiB`, `TiB` (any case, optional space), all powers
/// of 1024. `key` names where the text came from (`target.max_transfer_size`,
/// `--size`) and appears in the error.
pub fn parse_size(key: &str, text: &str) -> Result<u64, ConfigError> {
    parse_size_text(text).ok_or_else(|| ConfigError::Invalid {
        key: key.to_string(),
        value: format!("{text:?}"),
        expected: SIZE_EXPECTED.to_string(),
        at: None,
    })
}

/// The parser proper: `None` for anything that is not a size.
fn parse_size_text(text: &str) -> Option<u64> {
    let text = text.trim();
    let digits_end = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    if digits_end == 0 {
        return None;
    }
    let number: u64 = text[..digits_end].parse().ok()?;
    let unit = text[digits_end..].trim_start().to_ascii_lowercase();
    if unit.is_empty() || unit == "b" {
        return Some(number);
    }
    let (_, _, shift) = UNITS.iter().find(|(short, long, _)| unit == *short || unit == *long)?;
    let bytes = number.checked_mul(1u64 << shift)?;
    assert!(bytes >= number);
    Some(bytes)
}

/// A size in bytes that deserializes from an integer or a size string and serializes
/// to the shortest exact string (`4194304` → `"4M"`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// The size in bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }

    /// `n` KiB.
    pub const fn kib(n: u64) -> ByteSize {
        ByteSize(n << 10)
    }

    /// `n` MiB.
    pub const fn mib(n: u64) -> ByteSize {
        ByteSize(n << 20)
    }

    /// `n` GiB.
    pub const fn gib(n: u64) -> ByteSize {
        ByteSize(n << 30)
    }
}

impl fmt::Display for ByteSize {
    /// The largest unit that divides the size exactly: `"4M"`, `"1536K"`, `"4095"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = UNITS.iter().rev().find(|(_, _, shift)| self.0 != 0 && self.0.is_multiple_of(1u64 << shift));
        match unit {
            Some((short, _, shift)) => {
                write!(f, "{}{}", self.0 >> shift, short.to_ascii_uppercase())
            }
            None => write!(f, "{}", self.0),
        }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<ByteSize, D::Error> {
        deserializer.deserialize_any(ByteSizeVisitor)
    }
}

struct ByteSizeVisitor;

impl de::Visitor<'_> for ByteSizeVisitor {
    type Value = ByteSize;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(SIZE_EXPECTED)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
        Ok(ByteSize(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
        u64::try_from(v).map(ByteSize).map_err(|_| E::custom(value_error_message(&v.to_string(), SIZE_EXPECTED)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
        parse_size_text(v).map(ByteSize).ok_or_else(|| E::custom(value_error_message(&format!("{v:?}"), SIZE_EXPECTED)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_bytes() {
        assert_eq!(parse_size("k", "0").unwrap(), 0);
        assert_eq!(parse_size("k", "4096").unwrap(), 4096);
        assert_eq!(parse_size("k", "4096B").unwrap(), 4096);
        assert_eq!(parse_size("k", " 512 ").unwrap(), 512);
    }

    #[test]
    fn binary_units_any_case() {
        assert_eq!(parse_size("k", "4K").unwrap(), 4096);
        assert_eq!(parse_size("k", "4k").unwrap(), 4096);
        assert_eq!(parse_size("k", "4KiB").unwrap(), 4096);
        assert_eq!(parse_size("k", "128K").unwrap(), 128 << 10);
        assert_eq!(parse_size("k", "4M").unwrap(), 4 << 20);
        assert_eq!(parse_size("k", "1 MiB").unwrap(), 1 << 20);
        assert_eq!(parse_size("k", "8G").unwrap(), 8 << 30);
        assert_eq!(parse_size("k", "8gib").unwrap(), 8 << 30);
        assert_eq!(parse_size("k", "2T").unwrap(), 2 << 40);
        assert_eq!(parse_size("k", "2TiB").unwrap(), 2 << 40);
    }

    #[test]
    fn refuses_decimal_units_fractions_signs_and_overflow() {
        for bad in ["", "K", "4MB", "4 kb", "1.5G", "-4K", "+4K", "4X", "4 M B", "99999999999T", "0x10"] {
            assert!(parse_size("k", bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn error_names_the_key_the_value_and_the_forms() {
        let err = parse_size("--size", "10X").unwrap_err().to_string();
        assert_eq!(err, format!("--size = \"10X\": expected {SIZE_EXPECTED}"));
    }

    #[test]
    fn display_uses_the_largest_exact_unit() {
        assert_eq!(ByteSize(0).to_string(), "0");
        assert_eq!(ByteSize(4095).to_string(), "4095");
        assert_eq!(ByteSize(4096).to_string(), "4K");
        assert_eq!(ByteSize(1536 << 10).to_string(), "1536K");
        assert_eq!(ByteSize::mib(4).to_string(), "4M");
        assert_eq!(ByteSize::gib(8).to_string(), "8G");
        assert_eq!(ByteSize(3 << 40).to_string(), "3T");
    }

    #[test]
    fn display_parses_back() {
        for bytes in [0, 1, 4095, 4096, 1 << 20, 3 << 30, (5 << 40) + 4096] {
            let text = ByteSize(bytes).to_string();
            assert_eq!(parse_size("k", &text).unwrap(), bytes, "{text}");
        }
    }
}
