//! Logging of refused requests that may be attacks, written once for every backend.

use crate::error::LockError;
use crate::id::ObjectId;
use crate::token::{LockToken, TokenIssuer};

/// Checks that `issuer` issued `token` for `object` ([`TokenIssuer::check`]) and logs a refusal
/// like [`log_refusal`]: what every backend does first in release and renew.
pub fn check_token(
    issuer: &TokenIssuer,
    operation: &'static str,
    object: &ObjectId,
    token: &LockToken,
) -> Result<(), LockError> {
    issuer
        .check(object, token)
        .inspect_err(|refused| log_refusal(operation, object, token, refused))
}

/// Logs a refused release or renew at `warn`: the object, the reason and a short token
/// fingerprint, never the token. Backends call it for `NotHeld`, `TokenMismatch` and
/// `InvalidToken` outcomes (a token lockd never issued for that object: likely forged).
pub fn log_refusal(
    operation: &'static str,
    object: &ObjectId,
    token: &LockToken,
    error: &LockError,
) {
    if matches!(
        error,
        LockError::NotHeld { .. }
            | LockError::TokenMismatch { .. }
            | LockError::InvalidToken { .. }
    ) {
        tracing::warn!(
            target: "lockd::audit",
            operation,
            object = %object,
            token_fp = %token.fingerprint(),
            reason = error.code(),
            "refused {operation}: possible misuse or attack"
        );
    }
}
