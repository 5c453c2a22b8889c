//! The one error type every [`LockService`](crate::LockService) returns.

use std::time::Duration;

use crate::id::{ObjectId, OwnerId};

/// Shorthand for results of lock operations.
pub type LockResult<T> = Result<T, LockError>;

/// What went wrong with a lock operation, in terms a DFS can act on.
///
/// Backends keep their own private error types and convert them into this one; a DFS only ever
/// matches on these variants. [`LockError::is_retryable`] says whether trying again later may
/// succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// The object is held by another, unexpired lease.
    #[error("object {object} is locked by {holder} for another {retry_after:?}")]
    Locked {
        /// The object asked for.
        object: ObjectId,
        /// The current holder's owner id.
        holder: OwnerId,
        /// How long until the current lease expires unless it is renewed.
        retry_after: Duration,
    },
    /// The object is not locked (never was, was released, or its lease expired).
    #[error("object {object} is not locked")]
    NotHeld {
        /// The object named in the request.
        object: ObjectId,
    },
    /// The object is locked, but the token presented is not the current holder's.
    #[error("token does not belong to the current holder of {object}")]
    TokenMismatch {
        /// The object named in the request.
        object: ObjectId,
    },
    /// The token is not in lockd's token format at all.
    #[error("invalid token: {reason}")]
    InvalidToken {
        /// Why the token was rejected.
        reason: &'static str,
    },
    /// An argument is out of its allowed range or shape.
    #[error("invalid argument `{field}`: {reason}")]
    InvalidArgument {
        /// Which argument was rejected.
        field: &'static str,
        /// Why it was rejected.
        reason: String,
    },
    /// The backend could not be reached or did not answer in time. Nothing was granted.
    #[error("backend {backend} unavailable: {cause}")]
    Unavailable {
        /// Which backend (`memory`, `redis`, `postgres`, `http`).
        backend: &'static str,
        /// What failed, for operators.
        cause: String,
    },
    /// A bug or an unexpected state; report it.
    #[error("internal error: {0}")]
    Internal(String),
}

impl LockError {
    /// Whether the same request may succeed if tried again later.
    ///
    /// `Locked` may clear when the holder releases or expires; `Unavailable` when the backend
    /// comes back. Everything else needs a different request.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            LockError::Locked { .. } | LockError::Unavailable { .. }
        )
    }

    /// A short, stable machine-readable code for this error (used by the HTTP API).
    pub fn code(&self) -> &'static str {
        match self {
            LockError::Locked { .. } => "locked",
            LockError::NotHeld { .. } => "not_held",
            LockError::TokenMismatch { .. } => "token_mismatch",
            LockError::InvalidToken { .. } => "invalid_token",
            LockError::InvalidArgument { .. } => "invalid_argument",
            LockError::Unavailable { .. } => "unavailable",
            LockError::Internal(_) => "internal",
        }
    }

    /// Builds an [`LockError::InvalidArgument`].
    pub fn invalid_argument(field: &'static str, reason: impl Into<String>) -> Self {
        LockError::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }

    /// Builds an [`LockError::Unavailable`].
    pub fn unavailable(backend: &'static str, cause: impl std::fmt::Display) -> Self {
        LockError::Unavailable {
            backend,
            cause: cause.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_locked_and_unavailable_are_retryable() {
        let object = ObjectId::new("a").expect("valid");
        let holder = OwnerId::new("o").expect("valid");
        assert!(LockError::Locked {
            object: object.clone(),
            holder,
            retry_after: Duration::from_secs(1)
        }
        .is_retryable());
        assert!(LockError::unavailable("redis", "connection refused").is_retryable());
        assert!(!LockError::NotHeld {
            object: object.clone()
        }
        .is_retryable());
        assert!(!LockError::TokenMismatch { object }.is_retryable());
        assert!(!LockError::InvalidToken { reason: "x" }.is_retryable());
        assert!(!LockError::invalid_argument("ttl", "too long").is_retryable());
        assert!(!LockError::Internal("bug".into()).is_retryable());
    }
}
