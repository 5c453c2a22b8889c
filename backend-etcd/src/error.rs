//! Turning etcd client errors into [`LockError`]s.

use lockcore::LockError;

/// The backend name every error carries.
pub(crate) const BACKEND: &str = "etcd";

/// Maps an etcd client error: anything about reaching etcd or etcd being unable to serve (no
/// leader, timeouts, a member going away) is `Unavailable` (retryable, nothing was granted to
/// the caller); a request etcd refuses as malformed (too many operations in a transaction, a
/// duplicate key) is `Internal`: retrying will not help.
pub(crate) fn from_etcd(operation: &str, error: &etcd_client::Error) -> LockError {
    use etcd_client::Error;
    match error {
        // gRPC INVALID_ARGUMENT (3) and OUT_OF_RANGE (11): etcd refused the request itself.
        Error::GRpcStatus(status) if matches!(status.code() as i32, 3 | 11) => {
            LockError::Internal(format!("etcd {operation}: {error}"))
        }
        Error::InvalidArgs(_) | Error::InvalidUri(_) => {
            LockError::Internal(format!("etcd {operation}: {error}"))
        }
        _ => LockError::unavailable(BACKEND, format!("{operation}: {error}")),
    }
}

/// The error for an operation that did not finish within the operation timeout.
pub(crate) fn timed_out(operation: &str, after: std::time::Duration) -> LockError {
    LockError::unavailable(
        BACKEND,
        format!("{operation}: no answer from etcd within {after:?}"),
    )
}

/// The error for data under the key prefix that this backend did not write.
pub(crate) fn malformed(what: &str) -> LockError {
    LockError::Internal(format!("etcd: malformed {what} under the key prefix"))
}
