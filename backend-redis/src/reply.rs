//! Reading script replies: every shape a script returns, checked, never trusted blindly.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lockcore::{Fence, LockError, LockMode, LockScope, OwnerId};
use redis::Value;

/// A reply that does not have the shape the script returns: a bug or a foreign writer.
pub(crate) fn malformed(what: &str) -> LockError {
    LockError::Internal(format!("unexpected reply from a Redis script: {what}"))
}

pub(crate) fn array(value: Value) -> Result<Vec<Value>, LockError> {
    match value {
        Value::Array(items) => Ok(items),
        _ => Err(malformed("expected an array")),
    }
}

pub(crate) fn int(value: &Value) -> Result<i64, LockError> {
    match value {
        Value::Int(n) => Ok(*n),
        _ => Err(malformed("expected an integer")),
    }
}

pub(crate) fn text(value: &Value) -> Result<&str, LockError> {
    match value {
        Value::BulkString(bytes) => {
            std::str::from_utf8(bytes).map_err(|_| malformed("expected UTF-8 text"))
        }
        Value::SimpleString(s) => Ok(s),
        _ => Err(malformed("expected a string")),
    }
}

pub(crate) fn owner(value: &Value) -> Result<OwnerId, LockError> {
    OwnerId::new(text(value)?).map_err(|_| malformed("stored owner is not a valid owner id"))
}

pub(crate) fn fence(value: &Value) -> Result<Fence, LockError> {
    text(value)?
        .parse::<u64>()
        .map(Fence)
        .map_err(|_| malformed("stored fence is not a number"))
}

/// A mode as the scripts store it: `x` or `s`.
pub(crate) fn mode(value: &Value) -> Result<LockMode, LockError> {
    match text(value)? {
        "x" => Ok(LockMode::Exclusive),
        "s" => Ok(LockMode::Shared),
        _ => Err(malformed("stored mode is neither x nor s")),
    }
}

/// A scope as the scripts store it: `o` (the object) or `t` (its subtree).
pub(crate) fn scope(value: &Value) -> Result<LockScope, LockError> {
    match text(value)? {
        "o" => Ok(LockScope::Object),
        "t" => Ok(LockScope::Subtree),
        _ => Err(malformed("stored scope is neither o nor t")),
    }
}

/// A decimal millisecond count (written by the scripts with `%.0f`).
pub(crate) fn millis_text(value: &Value) -> Result<u64, LockError> {
    text(value)?
        .parse::<u64>()
        .map_err(|_| malformed("expected a millisecond count"))
}

/// A `PTTL` reply as time left. A key without expiry (-1; only a foreign writer makes one)
/// counts as `no_expiry`; a missing key (-2) as zero.
pub(crate) fn pttl(value: &Value, no_expiry: Duration) -> Result<Duration, LockError> {
    let ms = int(value)?;
    Ok(match ms {
        -1 => no_expiry,
        ms => Duration::from_millis(u64::try_from(ms).unwrap_or(0)),
    })
}

pub(crate) fn unix_millis(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fences_parse_exactly_above_two_to_the_fifty_three() {
        let big = Value::BulkString(b"1836264012345678901".to_vec());
        assert_eq!(
            fence(&big).expect("fence"),
            Fence(1_836_264_012_345_678_901)
        );
        assert!(fence(&Value::BulkString(b"1.5e18".to_vec())).is_err());
        assert!(fence(&Value::Int(3)).is_err());
    }

    #[test]
    fn pttl_maps_missing_and_persistent_keys() {
        let cap = Duration::from_secs(9);
        assert_eq!(
            pttl(&Value::Int(1500), cap).expect("ttl"),
            Duration::from_millis(1500)
        );
        assert_eq!(pttl(&Value::Int(-2), cap).expect("ttl"), Duration::ZERO);
        assert_eq!(pttl(&Value::Int(-1), cap).expect("ttl"), cap);
    }

    #[test]
    fn wrong_shapes_are_internal_errors_not_panics() {
        assert!(matches!(array(Value::Nil), Err(LockError::Internal(_))));
        assert!(matches!(
            owner(&Value::BulkString(vec![])),
            Err(LockError::Internal(_))
        ));
        assert!(matches!(
            text(&Value::BulkString(vec![0xff])),
            Err(LockError::Internal(_))
        ));
    }
}
