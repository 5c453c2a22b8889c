//! The API's errors, answered in the error envelope of [`lockd_wire::ErrorEnvelope`]:
//! `{"error": {"code": CODE, "message": str, ...}}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use lockcore::LockError;
use lockd_wire::{ErrorBody, ErrorEnvelope};

use crate::limits::{LimitExceeded, RETRY_AFTER_SECS};

/// An error answered by the HTTP API, always in the JSON envelope.
#[derive(Debug)]
pub enum ApiError {
    /// A lock operation failed.
    Lock(LockError),
    /// `400 invalid_argument` for requests the API itself refuses (bad JSON, bad query...).
    BadRequest(String),
    /// `401 unauthenticated`.
    Unauthenticated,
    /// `404 not_found`.
    NotFound(String),
    /// `405` with code `invalid_argument`: the path exists, the method does not.
    MethodNotAllowed,
    /// `413 payload_too_large`.
    PayloadTooLarge(String),
    /// `503 unavailable` with `Retry-After`: a server limit was reached; nothing was done.
    Busy(LimitExceeded),
}

impl From<LimitExceeded> for ApiError {
    fn from(e: LimitExceeded) -> Self {
        ApiError::Busy(e)
    }
}

impl From<LockError> for ApiError {
    fn from(e: LockError) -> Self {
        ApiError::Lock(e)
    }
}

impl ApiError {
    /// The envelope's `code`, also the `outcome` label of the request metrics.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Lock(e) => e.code(),
            ApiError::BadRequest(_) | ApiError::MethodNotAllowed => "invalid_argument",
            ApiError::Unauthenticated => "unauthenticated",
            ApiError::NotFound(_) => "not_found",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::Busy(_) => "unavailable",
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Lock(e) => lock_status(e),
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthenticated => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// The HTTP status a [`LockError`] maps to.
pub(crate) fn lock_status(e: &LockError) -> StatusCode {
    match e {
        LockError::Locked { .. } | LockError::NotHeld { .. } => StatusCode::CONFLICT,
        LockError::TokenMismatch { .. } => StatusCode::FORBIDDEN,
        LockError::InvalidToken { .. } | LockError::InvalidArgument { .. } => {
            StatusCode::BAD_REQUEST
        }
        LockError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let code = self.code();
        let body = match &self {
            ApiError::Lock(LockError::Internal(detail)) => {
                tracing::error!(%detail, "internal error");
                ErrorBody::new(code, "internal error; see the server log")
            }
            ApiError::Lock(e) => ErrorBody::of_lock_error(e),
            ApiError::BadRequest(m) | ApiError::NotFound(m) | ApiError::PayloadTooLarge(m) => {
                ErrorBody::new(code, m.as_str())
            }
            ApiError::Busy(e) => ErrorBody::new(code, e.to_string()),
            ApiError::Unauthenticated => ErrorBody::new(
                code,
                "missing or unknown API key; send Authorization: Bearer KEY",
            ),
            ApiError::MethodNotAllowed => ErrorBody::new(code, "method not allowed on this path"),
        };
        let mut response = (status, axum::Json(ErrorEnvelope::from(body))).into_response();
        match &self {
            ApiError::Unauthenticated => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::Lock(LockError::Unavailable { .. }) | ApiError::Busy(_) => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
            }
            _ => {}
        }
        response
    }
}
