//! The JSON bodies of lockd's HTTP API and the mapping of its error envelope to [`LockError`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lockcore::{Fence, Lease, LockError, LockInfo, LockToken, ObjectId, OwnerId};
use serde::{Deserialize, Serialize};

use crate::BACKEND;

#[derive(Debug, Serialize)]
pub(crate) struct AcquireRequest<'a> {
    pub(crate) object: &'a str,
    pub(crate) owner: &'a str,
    pub(crate) ttl_ms: u64,
    pub(crate) wait_ms: u64,
    pub(crate) request_id: &'a str,
}

#[derive(Debug, Serialize)]
pub(crate) struct TokenRequest<'a> {
    pub(crate) object: &'a str,
    pub(crate) token: &'a str,
}

#[derive(Debug, Serialize)]
pub(crate) struct RenewRequest<'a> {
    pub(crate) object: &'a str,
    pub(crate) token: &'a str,
    pub(crate) ttl_ms: u64,
}

#[derive(Debug, Serialize)]
pub(crate) struct ObjectRequest<'a> {
    pub(crate) object: &'a str,
}

/// Body of a successful acquire or renew.
#[derive(Debug, Deserialize)]
pub(crate) struct GrantResponse {
    object: String,
    owner: String,
    token: String,
    fence: u64,
    ttl_ms: u64,
}

impl GrantResponse {
    pub(crate) fn into_lease(self) -> Result<Lease, LockError> {
        Ok(Lease {
            object: server_id(ObjectId::new(&self.object))?,
            owner: server_id(OwnerId::new(&self.owner))?,
            token: LockToken::parse(&self.token).map_err(|e| {
                LockError::Internal(format!("lockd answered with a malformed token: {e}"))
            })?,
            fence: Fence(self.fence),
            ttl: Duration::from_millis(self.ttl_ms),
        })
    }
}

/// Body of a successful release.
#[derive(Debug, Deserialize)]
pub(crate) struct ReleaseResponse {
    pub(crate) fence: u64,
}

/// Body of a successful validate: the lease without its token (the caller has that).
#[derive(Debug, Deserialize)]
pub(crate) struct ValidateResponse {
    object: String,
    owner: String,
    fence: u64,
    ttl_ms: u64,
}

impl ValidateResponse {
    pub(crate) fn into_lease(self, token: &LockToken) -> Result<Lease, LockError> {
        Ok(Lease {
            object: server_id(ObjectId::new(&self.object))?,
            owner: server_id(OwnerId::new(&self.owner))?,
            token: token.clone(),
            fence: Fence(self.fence),
            ttl: Duration::from_millis(self.ttl_ms),
        })
    }
}

/// A lock as inspect and list describe it.
///
/// `acquired_at` / `expires_at` are optional: lockd may send them as RFC 3339 strings or as
/// milliseconds since the Unix epoch. When absent, `expires_at` is derived as now + `ttl_ms` and
/// `acquired_at` as now (the client's clock).
#[derive(Debug, Deserialize)]
pub(crate) struct LockInfoBody {
    object: String,
    owner: String,
    fence: u64,
    ttl_ms: u64,
    #[serde(default, deserialize_with = "opt_time")]
    acquired_at: Option<SystemTime>,
    #[serde(default, deserialize_with = "opt_time")]
    expires_at: Option<SystemTime>,
    #[serde(default, deserialize_with = "opt_time")]
    acquired_at_ms: Option<SystemTime>,
    #[serde(default, deserialize_with = "opt_time")]
    expires_at_ms: Option<SystemTime>,
}

impl LockInfoBody {
    pub(crate) fn into_info(self) -> Result<LockInfo, LockError> {
        let now = SystemTime::now();
        let ttl = Duration::from_millis(self.ttl_ms);
        let expires_at = self
            .expires_at
            .or(self.expires_at_ms)
            .unwrap_or_else(|| now + ttl);
        let acquired_at = self.acquired_at.or(self.acquired_at_ms).unwrap_or(now);
        Ok(LockInfo {
            object: server_id(ObjectId::new(&self.object))?,
            owner: server_id(OwnerId::new(&self.owner))?,
            fence: Fence(self.fence),
            acquired_at,
            expires_at,
            ttl,
        })
    }
}

/// Body of `GET /v1/locks`.
#[derive(Debug, Deserialize)]
pub(crate) struct ListResponse {
    pub(crate) locks: Vec<LockInfoBody>,
    #[serde(default)]
    pub(crate) next: Option<String>,
}

fn server_id<T>(id: Result<T, LockError>) -> Result<T, LockError> {
    id.map_err(|e| LockError::Internal(format!("lockd answered with an invalid name: {e}")))
}

/// Reads a time written as RFC 3339 text or as integer milliseconds since the Unix epoch.
pub(crate) fn opt_time<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<SystemTime>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Millis(u64),
        Text(String),
    }
    match Option::<Raw>::deserialize(d)? {
        None => Ok(None),
        Some(Raw::Millis(ms)) => Ok(Some(UNIX_EPOCH + Duration::from_millis(ms))),
        Some(Raw::Text(text)) => humantime::parse_rfc3339_weak(&text)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

/// `{"error": {...}}`, lockd's answer to every refused request.
#[derive(Debug, Deserialize)]
pub(crate) struct ErrorEnvelope {
    pub(crate) error: ErrorBody,
}

/// The inside of the error envelope.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ErrorBody {
    #[serde(default)]
    pub(crate) code: String,
    #[serde(default)]
    pub(crate) message: String,
    #[serde(default)]
    pub(crate) holder: Option<String>,
    #[serde(default)]
    pub(crate) retry_after_ms: Option<u64>,
    #[serde(default)]
    pub(crate) field: Option<String>,
}

impl ErrorBody {
    /// Reads an error response; a body that is not the envelope (a proxy's HTML page, say) is
    /// described by its status alone.
    pub(crate) fn parse(status: u16, body: &[u8]) -> ErrorBody {
        match serde_json::from_slice::<ErrorEnvelope>(body) {
            Ok(envelope) => envelope.error,
            Err(_) => ErrorBody {
                code: String::new(),
                message: format!(
                    "HTTP {status} without lockd's error envelope: {}",
                    String::from_utf8_lossy(&body[..body.len().min(200)]).trim()
                ),
                ..ErrorBody::default()
            },
        }
    }

    /// The [`LockError`] this error stands for; `object` is the object the request named.
    ///
    /// | code | error |
    /// |---|---|
    /// | `locked` | `Locked` with `holder` and `retry_after_ms` |
    /// | `not_held` | `NotHeld` |
    /// | `token_mismatch` | `TokenMismatch` |
    /// | `invalid_token` | `InvalidToken` |
    /// | `invalid_argument` | `InvalidArgument` (field from the envelope or the message) |
    /// | `payload_too_large` | `InvalidArgument { field: "body" }` |
    /// | `unauthenticated` | `InvalidArgument { field: "api_key" }`: not retryable, fix the key |
    /// | `unavailable`, HTTP 502/503/504 | `Unavailable { backend: "http" }` |
    /// | `internal`, anything else | `Internal` |
    pub(crate) fn into_lock_error(self, status: u16, object: Option<&ObjectId>) -> LockError {
        let message = if self.message.is_empty() {
            format!(
                "lockd refused the request with HTTP {status} ({})",
                self.code
            )
        } else {
            self.message
        };
        let for_object = |make: fn(ObjectId) -> LockError| match object {
            Some(object) => make(object.clone()),
            None => LockError::Internal(format!(
                "lockd answered `{}` to a request naming no object: {message}",
                self.code
            )),
        };
        match self.code.as_str() {
            "locked" => {
                let Some(object) = object else {
                    return LockError::Internal(format!("unexpected `locked`: {message}"));
                };
                match self.holder.as_deref().map(OwnerId::new) {
                    Some(Ok(holder)) => LockError::Locked {
                        object: object.clone(),
                        holder,
                        retry_after: Duration::from_millis(self.retry_after_ms.unwrap_or(0)),
                    },
                    _ => LockError::Internal(format!(
                        "lockd answered `locked` without a valid holder: {message}"
                    )),
                }
            }
            "not_held" => for_object(|object| LockError::NotHeld { object }),
            "token_mismatch" => for_object(|object| LockError::TokenMismatch { object }),
            "invalid_token" => LockError::InvalidToken {
                reason: token_reason(&message),
            },
            "invalid_argument" => LockError::InvalidArgument {
                field: argument_field(self.field.as_deref(), &message),
                reason: message,
            },
            "payload_too_large" => LockError::InvalidArgument {
                field: "body",
                reason: message,
            },
            "unauthenticated" => LockError::InvalidArgument {
                field: "api_key",
                reason: format!("lockd refused the API key: {message}"),
            },
            "unavailable" => LockError::unavailable(BACKEND, message),
            "internal" => LockError::Internal(message),
            _ if matches!(status, 502..=504) => LockError::unavailable(BACKEND, message),
            _ if status == 401 => LockError::InvalidArgument {
                field: "api_key",
                reason: format!("lockd refused the API key: {message}"),
            },
            _ if status == 413 => LockError::InvalidArgument {
                field: "body",
                reason: message,
            },
            _ => LockError::Internal(message),
        }
    }
}

/// The argument fields lockd may name, as the `'static` strings [`LockError`] carries.
const FIELDS: &[&str] = &[
    "object", "owner", "ttl", "wait", "token", "limit", "prefix", "after", "body", "api_key",
];

/// Finds which argument an `invalid_argument` is about: the envelope's `field` when lockd sends
/// one, else the first `` `name` `` in the message (lockcore's wording), else `request`.
fn argument_field(field: Option<&str>, message: &str) -> &'static str {
    let from_message = message.split('`').nth(1);
    for candidate in [field, from_message].into_iter().flatten() {
        let candidate = candidate
            .strip_suffix("_ms")
            .unwrap_or(candidate)
            .trim_start_matches('$')
            .trim_start_matches('.');
        if let Some(known) = FIELDS.iter().find(|known| **known == candidate) {
            return known;
        }
    }
    "request"
}

/// lockcore's reasons for refusing a token, as `'static` strings.
const TOKEN_REASONS: &[&str] = &[
    "does not start with lk2.",
    "has the wrong length",
    "is not URL-safe base64",
    "was not issued for this object by this lock service",
];

fn token_reason(message: &str) -> &'static str {
    TOKEN_REASONS
        .iter()
        .find(|reason| message.contains(**reason))
        .copied()
        .unwrap_or("refused by lockd as not one of its tokens")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object() -> ObjectId {
        ObjectId::new("/vol/a").unwrap()
    }

    fn map(status: u16, body: &str) -> LockError {
        ErrorBody::parse(status, body.as_bytes()).into_lock_error(status, Some(&object()))
    }

    #[test]
    fn locked_carries_holder_and_retry_after() {
        let err = map(
            409,
            r#"{"error":{"code":"locked","message":"object /vol/a is locked","holder":"node-2","retry_after_ms":1500}}"#,
        );
        assert_eq!(
            err,
            LockError::Locked {
                object: object(),
                holder: OwnerId::new("node-2").unwrap(),
                retry_after: Duration::from_millis(1500),
            }
        );
    }

    #[test]
    fn locked_without_a_holder_is_not_invented() {
        let err = map(409, r#"{"error":{"code":"locked","message":"x"}}"#);
        assert!(matches!(err, LockError::Internal(_)), "{err:?}");
    }

    #[test]
    fn refusals_name_the_requested_object() {
        assert_eq!(
            map(409, r#"{"error":{"code":"not_held","message":"m"}}"#),
            LockError::NotHeld { object: object() }
        );
        assert_eq!(
            map(403, r#"{"error":{"code":"token_mismatch","message":"m"}}"#),
            LockError::TokenMismatch { object: object() }
        );
    }

    #[test]
    fn invalid_token_keeps_lockcores_reason() {
        let err = map(
            400,
            r#"{"error":{"code":"invalid_token","message":"invalid token: has the wrong length"}}"#,
        );
        assert_eq!(
            err,
            LockError::InvalidToken {
                reason: "has the wrong length"
            }
        );
        let err = map(
            400,
            r#"{"error":{"code":"invalid_token","message":"nope"}}"#,
        );
        assert!(matches!(err, LockError::InvalidToken { .. }));
    }

    #[test]
    fn invalid_argument_names_the_field() {
        let err = map(
            400,
            r#"{"error":{"code":"invalid_argument","message":"invalid argument `ttl`: must be at least 1 ms"}}"#,
        );
        assert!(
            matches!(&err, LockError::InvalidArgument { field: "ttl", reason } if reason.contains("at least 1 ms")),
            "{err:?}"
        );
        let err = map(
            400,
            r#"{"error":{"code":"invalid_argument","message":"bad","field":"wait_ms"}}"#,
        );
        assert!(
            matches!(err, LockError::InvalidArgument { field: "wait", .. }),
            "{err:?}"
        );
        let err = map(
            400,
            r#"{"error":{"code":"invalid_argument","message":"expected value at line 1"}}"#,
        );
        assert!(
            matches!(
                err,
                LockError::InvalidArgument {
                    field: "request",
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn auth_and_size_errors_are_invalid_arguments() {
        let err = map(
            401,
            r#"{"error":{"code":"unauthenticated","message":"missing key"}}"#,
        );
        assert!(
            matches!(
                err,
                LockError::InvalidArgument {
                    field: "api_key",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(!err.is_retryable());
        let err = map(
            413,
            r#"{"error":{"code":"payload_too_large","message":"too big"}}"#,
        );
        assert!(
            matches!(err, LockError::InvalidArgument { field: "body", .. }),
            "{err:?}"
        );
    }

    #[test]
    fn unavailable_and_gateway_errors_are_retryable() {
        let err = map(
            503,
            r#"{"error":{"code":"unavailable","message":"redis down"}}"#,
        );
        assert_eq!(err, LockError::unavailable("http", "redis down"));
        let err = map(502, "<html>Bad Gateway</html>");
        assert!(
            matches!(
                err,
                LockError::Unavailable {
                    backend: "http",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.is_retryable());
    }

    #[test]
    fn internal_and_unknown_answers_are_internal() {
        assert_eq!(
            map(500, r#"{"error":{"code":"internal","message":"bug"}}"#),
            LockError::Internal("bug".into())
        );
        let err = map(418, "teapot");
        assert!(
            matches!(&err, LockError::Internal(m) if m.contains("418") && m.contains("teapot")),
            "{err:?}"
        );
    }

    #[test]
    fn lock_info_times_are_read_or_derived() {
        let body: LockInfoBody = serde_json::from_str(
            r#"{"object":"a","owner":"o","fence":7,"ttl_ms":5000,"acquired_at":"2026-01-01T00:00:00Z","expires_at_ms":1767225605000}"#,
        )
        .unwrap();
        let info = body.into_info().unwrap();
        assert_eq!(info.fence, Fence(7));
        assert_eq!(info.ttl, Duration::from_secs(5));
        assert_eq!(
            info.acquired_at,
            UNIX_EPOCH + Duration::from_secs(1_767_225_600)
        );
        assert_eq!(
            info.expires_at,
            UNIX_EPOCH + Duration::from_secs(1_767_225_605)
        );

        let before = SystemTime::now();
        let body: LockInfoBody =
            serde_json::from_str(r#"{"object":"a","owner":"o","fence":7,"ttl_ms":5000}"#).unwrap();
        let info = body.into_info().unwrap();
        assert!(info.acquired_at >= before);
        assert!(info.expires_at >= before + Duration::from_secs(5));
        assert!(info.expires_at <= SystemTime::now() + Duration::from_secs(5));
    }

    #[test]
    fn a_grant_with_a_malformed_token_is_internal() {
        let body: GrantResponse = serde_json::from_str(
            r#"{"object":"a","owner":"o","token":"nope","fence":1,"ttl_ms":10}"#,
        )
        .unwrap();
        assert!(matches!(body.into_lease(), Err(LockError::Internal(_))));
    }
}
