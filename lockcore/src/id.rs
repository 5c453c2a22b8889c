//! Validated names: what is locked ([`ObjectId`]) and who holds it ([`OwnerId`]).

use std::borrow::Cow;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use crate::error::LockError;

/// Longest object id accepted, in bytes.
pub const MAX_OBJECT_LEN: usize = 1024;
/// Longest owner id accepted, in bytes.
pub const MAX_OWNER_LEN: usize = 256;

fn validate(field: &'static str, value: &str, max: usize) -> Result<(), LockError> {
    if value.is_empty() {
        return Err(LockError::invalid_argument(field, "must not be empty"));
    }
    if value.len() > max {
        return Err(LockError::invalid_argument(
            field,
            format!("is {} bytes, at most {max} are allowed", value.len()),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(LockError::invalid_argument(
            field,
            "must not contain NUL or other control characters",
        ));
    }
    Ok(())
}

macro_rules! validated_id {
    ($(#[$doc:meta])* $name:ident, $field:literal, $max:expr, $extra:path) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Validates `value` and wraps it.
            pub fn new(value: impl AsRef<str>) -> Result<Self, LockError> {
                let value = value.as_ref();
                validate($field, value, $max)?;
                $extra($field, value)?;
                Ok(Self(Arc::from(value)))
            }

            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = LockError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = LockError;
            fn try_from(s: &str) -> Result<Self, Self::Error> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = LockError;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                Self::new(s)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(d)?;
                Self::new(raw).map_err(serde::de::Error::custom)
            }
        }
    };
}

validated_id!(
    /// The name of a lockable object (a file, a directory, a chunk): non-empty, at most
    /// [`MAX_OBJECT_LEN`] bytes of UTF-8, no NUL or control characters, and a path with one
    /// spelling: no empty, `.` or `..` segment, at most
    /// [`MAX_OBJECT_DEPTH`](crate::path::MAX_OBJECT_DEPTH) segments (see [`crate::path`]).
    ///
    /// ```
    /// use lockcore::ObjectId;
    /// assert!(ObjectId::new("/volumes/a/file.txt").is_ok());
    /// assert!(ObjectId::new("chunk-7").is_ok());
    /// assert!(ObjectId::new("").is_err());
    /// assert!(ObjectId::new("bad\0name").is_err());
    /// assert!(ObjectId::new("/volumes/a/").is_err());
    /// assert!(ObjectId::new("/volumes/a/../b").is_err());
    /// ```
    ObjectId,
    "object",
    MAX_OBJECT_LEN,
    crate::path::check_path
);

/// Lets maps keyed by [`ObjectId`] be searched by a plain `&str` (an ancestor's id, the bounds
/// of a subtree's range) without building an id: equality, order and hash are the string's.
impl std::borrow::Borrow<str> for ObjectId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

validated_id!(
    /// Who holds a lock (a DFS client or node id): non-empty, at most [`MAX_OWNER_LEN`] bytes,
    /// no NUL or control characters.
    OwnerId,
    "owner",
    MAX_OWNER_LEN,
    no_more_checks
);

fn no_more_checks(_field: &'static str, _value: &str) -> Result<(), LockError> {
    Ok(())
}

/// Shortest request id accepted, in bytes.
pub const MIN_REQUEST_ID_LEN: usize = 16;
/// Longest request id accepted, in bytes.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// A caller-chosen name for one acquire request, which makes retrying it safe.
///
/// Retrying an acquire with the same request id, object and owner returns the same lease (same
/// token, same fence) for as long as that lease is held, instead of a second grant; so a caller
/// whose reply was lost can retry without leaving an orphaned lock. It is remembered exactly as
/// long as the lease it produced: once that lease is released or has expired, the same request
/// id asks for a new grant.
///
/// Anyone who sends the same request gets the token, so a request id must be as unguessable as
/// a token: at least [`MIN_REQUEST_ID_LEN`] and at most [`MAX_REQUEST_ID_LEN`] bytes of ASCII
/// letters, digits, `-`, `_`, `.` or `:` (128 random bits, as [`RequestId::random`] draws, is
/// plenty).
///
/// ```
/// use lockcore::RequestId;
/// assert!(RequestId::new("7c1f0e2a9b3d4c5e8f60718293a4b5c6").is_ok());
/// assert!(RequestId::new("retry-1").is_err()); // too short to be unguessable
/// assert_ne!(RequestId::random(), RequestId::random());
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RequestId(Arc<str>);

impl RequestId {
    /// Validates `value` and wraps it.
    pub fn new(value: impl AsRef<str>) -> Result<Self, LockError> {
        let value = value.as_ref();
        if value.len() < MIN_REQUEST_ID_LEN || value.len() > MAX_REQUEST_ID_LEN {
            return Err(LockError::invalid_argument(
                "request_id",
                format!(
                    "is {} bytes, must be {MIN_REQUEST_ID_LEN} to {MAX_REQUEST_ID_LEN}",
                    value.len()
                ),
            ));
        }
        if !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        {
            return Err(LockError::invalid_argument(
                "request_id",
                "may contain only ASCII letters, digits, '-', '_', '.' and ':'",
            ));
        }
        Ok(Self(Arc::from(value)))
    }

    /// A fresh id of 128 random bits (32 hex digits), as lockd-client sends with every acquire.
    pub fn random() -> Self {
        let bits: u128 = rand::random();
        Self(Arc::from(format!("{bits:032x}")))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for RequestId {
    /// Shows a prefix only: a request id is as secret as the token it can fetch.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RequestId({}..)", &self.0[..6])
    }
}

/// Something a DFS locks: the spec's `Data` with `ID()`.
///
/// DFS types implement it to name themselves; [`LockData::object_id`] validates the name.
///
/// ```
/// use lockcore::LockData;
/// use std::path::Path;
/// assert_eq!(Path::new("/a/b").object_id().unwrap().as_str(), "/a/b");
/// assert_eq!("chunk-7".object_id().unwrap().as_str(), "chunk-7");
/// ```
pub trait LockData {
    /// The raw name of the object to lock.
    fn lock_name(&self) -> Cow<'_, str>;

    /// The validated [`ObjectId`] for this object.
    fn object_id(&self) -> Result<ObjectId, LockError> {
        ObjectId::new(self.lock_name())
    }
}

impl LockData for str {
    fn lock_name(&self) -> Cow<'_, str> {
        Cow::Borrowed(self)
    }
}

impl LockData for String {
    fn lock_name(&self) -> Cow<'_, str> {
        Cow::Borrowed(self.as_str())
    }
}

impl LockData for Path {
    /// Paths that are not valid UTF-8 are named lossily; two such paths may then share a lock,
    /// which errs on the side of safety.
    fn lock_name(&self) -> Cow<'_, str> {
        self.to_string_lossy()
    }
}

impl LockData for ObjectId {
    fn lock_name(&self) -> Cow<'_, str> {
        Cow::Borrowed(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_ids_are_bounded_and_printable() {
        assert!(ObjectId::new("a").is_ok());
        assert!(ObjectId::new("x".repeat(MAX_OBJECT_LEN)).is_ok());
        assert!(ObjectId::new("x".repeat(MAX_OBJECT_LEN + 1)).is_err());
        assert!(ObjectId::new("/a//b").is_err());
        assert!(ObjectId::new("").is_err());
        assert!(ObjectId::new("a\nb").is_err());
        assert!(ObjectId::new("a\u{7f}b").is_err());
        assert!(ObjectId::new("ünïcode/ok").is_ok());
    }

    #[test]
    fn owner_ids_are_bounded() {
        assert!(OwnerId::new("x".repeat(MAX_OWNER_LEN)).is_ok());
        let err = OwnerId::new("x".repeat(MAX_OWNER_LEN + 1)).unwrap_err();
        assert!(matches!(
            err,
            LockError::InvalidArgument { field: "owner", .. }
        ));
    }

    #[test]
    fn request_ids_are_long_plain_ascii_and_redacted_in_debug() {
        let id = RequestId::new("abcdef0123456789").expect("16 bytes");
        assert!(!format!("{id:?}").contains("0123456789"));
        assert!(RequestId::new("x".repeat(MAX_REQUEST_ID_LEN)).is_ok());
        for bad in [
            "short".to_owned(),
            "x".repeat(MAX_REQUEST_ID_LEN + 1),
            "abcdef0123456789 space".to_owned(),
            "abcdef0123456789/slash".to_owned(),
            "ünïcode-ünïcode-ünïcode".to_owned(),
        ] {
            assert!(
                matches!(
                    RequestId::new(&bad),
                    Err(LockError::InvalidArgument {
                        field: "request_id",
                        ..
                    })
                ),
                "{bad:?}"
            );
        }
        assert_eq!(RequestId::random().as_str().len(), 32);
    }

    #[test]
    fn serde_rejects_invalid_ids() {
        #[derive(serde::Deserialize)]
        struct Wrap {
            #[allow(dead_code)]
            object: ObjectId,
        }
        let bad: Result<Wrap, _> = serde_json_like("");
        assert!(bad.is_err());
    }

    // A tiny deserializer check without pulling serde_json into lockcore.
    fn serde_json_like<T: serde::de::DeserializeOwned>(
        object: &str,
    ) -> Result<T, serde::de::value::Error> {
        use serde::de::value::{MapDeserializer, StrDeserializer};
        let pairs = vec![("object", object)];
        let map = MapDeserializer::<_, serde::de::value::Error>::new(
            pairs
                .into_iter()
                .map(|(k, v)| (StrDeserializer::new(k), StrDeserializer::new(v))),
        );
        T::deserialize(map)
    }
}
