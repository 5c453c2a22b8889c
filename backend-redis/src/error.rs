//! Turning Redis client errors into [`LockError`]s.

use lockcore::LockError;
use redis::{ErrorKind, RedisError, ServerErrorKind};

/// The backend name every error carries.
pub(crate) const BACKEND: &str = "redis";

/// Maps a Redis error: anything about reaching or using the server is `Unavailable` (retryable,
/// nothing was granted to the caller); a script failing on its own logic, or a reply of the
/// wrong type, is `Internal`.
pub(crate) fn from_redis(operation: &str, error: &RedisError) -> LockError {
    let script_bug = match error.kind() {
        ErrorKind::UnexpectedReturnType => true,
        // A Lua error or the scripts' own `ERR lockd: ...` replies. Other replies (OOM, BUSY,
        // LOADING, READONLY, NOPERM, `ERR max number of clients`, ...) mean Redis cannot
        // serve right now.
        ErrorKind::Server(ServerErrorKind::ResponseError) => error
            .detail()
            .is_some_and(|detail| detail.starts_with("lockd:") || detail.contains("script")),
        _ => false,
    };
    if script_bug {
        LockError::Internal(format!("redis {operation}: {error}"))
    } else {
        LockError::unavailable(BACKEND, format!("{operation}: {error}"))
    }
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
