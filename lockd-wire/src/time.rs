//! How times cross the wire: RFC 3339 UTC text with milliseconds.

/// `#[serde(with = "lockd_wire::rfc3339")]` for an `Option<SystemTime>`: written as
/// `2026-01-01T00:00:00.123Z` (or `null`), read from RFC 3339 UTC text.
pub mod rfc3339 {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes `time` as RFC 3339 UTC with milliseconds, or `null`.
    pub fn serialize<S: Serializer>(time: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
        match time {
            Some(time) => s.collect_str(&humantime::format_rfc3339_millis(*time)),
            None => s.serialize_none(),
        }
    }

    /// Reads RFC 3339 UTC text (any sub-second precision, ending in `Z`), or `null`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SystemTime>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(text) => humantime::parse_rfc3339_weak(&text)
                .map(Some)
                .map_err(serde::de::Error::custom),
        }
    }
}
