//! Turning Redis client errors into [`LockError`]s.

use lockcore::LockError;
use redis::{ErrorKind, RedisError, ServerErrorKind};

/// The backend name every error carries.
pub(crate) const BACKEND: &str = "redis";

/// Maps a Redis error: anything about reaching or using the server is `Unavailable` (retryable,
/// nothing was granted to the caller); a script failing on its own logic, or a reply of the
/// wrong type, is `Internal`.
pub(crate) fn from_redis(operation: &str, error: &RedisError) -> LockError {
    if is_script_bug(error) {
        LockError::Internal(format!("redis {operation}: {error}"))
    } else {
        LockError::unavailable(BACKEND, format!("{operation}: {error}"))
    }
}

/// Replies that mean Redis cannot serve right now, wherever they come from.
const SERVER_STATE_CODES: [&str; 9] = [
    "OOM",
    "BUSY",
    "LOADING",
    "READONLY",
    "MASTERDOWN",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "NOPERM",
    "NOAUTH",
];

/// A script failing on its own logic or on data it did not expect (a Lua error, the scripts'
/// own `ERR lockd: ...` replies, `WRONGTYPE` from a key a foreign writer put there), or a reply
/// of the wrong type: retrying will not help.
fn is_script_bug(error: &RedisError) -> bool {
    if error.kind() == ErrorKind::UnexpectedReturnType {
        return true;
    }
    let Some(code) = error.code() else {
        return false;
    };
    if SERVER_STATE_CODES.contains(&code) {
        return false;
    }
    let detail = error.detail().unwrap_or("");
    code == "WRONGTYPE"
        || detail.starts_with("lockd:")
        || (error.kind() == ErrorKind::Server(ServerErrorKind::ResponseError)
            && detail.contains("script"))
}

/// The error for an operation that did not finish within the operation timeout.
pub(crate) fn timed_out(operation: &str, after: std::time::Duration) -> LockError {
    LockError::unavailable(
        BACKEND,
        format!("{operation}: no answer from Redis within {after:?}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_are_unavailable() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let mapped = from_redis("acquire", &RedisError::from(io));
        assert!(matches!(
            mapped,
            LockError::Unavailable {
                backend: "redis",
                ..
            }
        ));
        assert!(mapped.is_retryable());
    }

    #[test]
    fn timeouts_are_unavailable() {
        let mapped = timed_out("release", std::time::Duration::from_millis(5));
        assert!(matches!(
            mapped,
            LockError::Unavailable {
                backend: "redis",
                ..
            }
        ));
    }
}
