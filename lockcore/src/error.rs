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
    /// An object asked for is held by a conflicting, unexpired lease (or reserved by an
    /// earlier waiter in a conflicting mode). Nothing was granted.
    #[error("{}", locked_message(object, holder, retry_after, conflicts))]
    Locked {
        /// The first object asked for that is in conflict.
        object: ObjectId,
        /// Who holds it (or waits for it ahead of this request).
        holder: OwnerId,
        /// How long until that lease expires unless it is renewed.
        retry_after: Duration,
        /// Every object of the request in conflict, in request order, starting with `object`.
        conflicts: Vec<Conflict>,
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

/// The message of [`LockError::Locked`]: it names a lock-delay or a queue when one is the cause.
fn locked_message(
    object: &ObjectId,
    holder: &OwnerId,
    retry_after: &Duration,
    conflicts: &[Conflict],
) -> String {
    match conflicts.first().map(|c| c.cause).unwrap_or_default() {
        ConflictCause::Held => {
            format!("object {object} is locked by {holder} for another {retry_after:?}")
        }
        ConflictCause::Queued => format!(
            "object {object} is wanted by {holder}, who waits ahead of this request (for up to another {retry_after:?})"
        ),
        ConflictCause::LockDelay => format!(
            "object {object} is in its lock-delay after the lease of {holder} expired: free in {retry_after:?}"
        ),
    }
}

/// One object of a refused acquire and what blocks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The object asked for.
    pub object: ObjectId,
    /// Who holds it, or waits for it ahead of the request, or held it until its lease expired
    /// (a lock-delay).
    pub holder: OwnerId,
    /// How long until that lease (or that waiter's wait, or that lock-delay) ends at the
    /// latest, unless renewed.
    pub retry_after: Duration,
    /// Which of the three blocks it.
    pub cause: ConflictCause,
}

/// What kind of thing blocks a [`Conflict`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ConflictCause {
    /// A holder in a conflicting mode, on the object or covering it.
    #[default]
    Held,
    /// An earlier waiter in a conflicting mode.
    Queued,
    /// The lock-delay of a lease that expired (see
    /// [`AcquireRequest::lock_delay`](crate::AcquireRequest::lock_delay)).
    LockDelay,
}

impl ConflictCause {
    /// The cause's name on the wire: `held`, `queued` or `lock_delay`.
    pub fn as_str(self) -> &'static str {
        match self {
            ConflictCause::Held => "held",
            ConflictCause::Queued => "queued",
            ConflictCause::LockDelay => "lock_delay",
        }
    }

    /// Parses a name of [`ConflictCause::as_str`]; anything else reads as `held`, so that an
    /// older peer's answers still parse.
    pub fn from_wire(text: &str) -> Self {
        match text {
            "queued" => ConflictCause::Queued,
            "lock_delay" => ConflictCause::LockDelay,
            _ => ConflictCause::Held,
        }
    }
}

impl LockError {
    /// A [`LockError::Locked`] listing `conflicts` (at least one).
    ///
    /// # Panics
    ///
    /// If `conflicts` is empty.
    pub fn locked(conflicts: Vec<Conflict>) -> Self {
        let first = conflicts
            .first()
            .expect("a refusal names at least one conflict")
            .clone();
        LockError::Locked {
            object: first.object,
            holder: first.holder,
            retry_after: first.retry_after,
            conflicts,
        }
    }

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
        assert!(LockError::locked(vec![Conflict {
            object: object.clone(),
            holder,
            retry_after: Duration::from_secs(1),
            cause: ConflictCause::Held,
        }])
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
