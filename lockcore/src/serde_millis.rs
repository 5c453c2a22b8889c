//! Serde helpers for `Duration` fields written as whole milliseconds, shared by every config.
//!
//! Use with `#[serde(with = "lockcore::serde_millis")]`.

use std::time::Duration;

/// Writes a duration as its whole milliseconds (saturating at `u64::MAX`).
pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Reads a duration from whole milliseconds.
pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let ms = <u64 as serde::Deserialize>::deserialize(d)?;
    Ok(Duration::from_millis(ms))
}
