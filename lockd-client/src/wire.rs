//! lockd's refusals: reading the error envelope ([`lockd_wire::ErrorEnvelope`]) of a non-2xx
//! answer and mapping it to [`LockError`].

use std::time::Duration;

use lockcore::{Conflict, LockError, ObjectId, OwnerId};
use lockd_wire::{argument_field, ErrorBody, ErrorEnvelope};

use crate::BACKEND;

/// Reads an error response; a body that is not the envelope (a proxy's HTML page, say) is
/// described by its status alone.
pub(crate) fn parse_error(status: u16, body: &[u8]) -> ErrorBody {
    match serde_json::from_slice::<ErrorEnvelope>(body) {
        Ok(envelope) => envelope.error,
        Err(_) => ErrorBody::new(
            "",
            format!(
                "HTTP {status} without lockd's error envelope: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)]).trim()
            ),
        ),
    }
}

/// The [`LockError`] a refusal stands for; `object` is the object the request named.
///
/// | code | error |
/// |---|---|
/// | `locked` | `Locked` with its `conflicts` (or, from an older server, `holder` and `retry_after_ms` of `object`) |
/// | `not_held` | `NotHeld` |
/// | `token_mismatch` | `TokenMismatch` |
/// | `invalid_token` | `InvalidToken` |
/// | `invalid_argument` | `InvalidArgument` naming the envelope's `field` (`request` without one) |
/// | `payload_too_large` | `InvalidArgument { field: "body" }` |
/// | `unauthenticated` | `InvalidArgument { field: "api_key" }`: not retryable, fix the key |
/// | `unavailable`, HTTP 502/503/504 | `Unavailable { backend: "http" }` |
/// | `internal`, anything else | `Internal` |
pub(crate) fn lock_error(error: ErrorBody, status: u16, object: Option<&ObjectId>) -> LockError {
    let ErrorBody {
        code,
        message,
        holder,
        retry_after_ms,
        conflicts,
        field,
    } = error;
    let message = if message.is_empty() {
        format!("lockd refused the request with HTTP {status} ({code})")
    } else {
        message
    };
    let for_object = |make: fn(ObjectId) -> LockError| match object {
        Some(object) => make(object.clone()),
        None => LockError::Internal(format!(
            "lockd answered `{code}` to a request naming no object: {message}"
        )),
    };
    match code.as_str() {
        "locked" => {
            let listed = ErrorBody {
                conflicts,
                ..ErrorBody::default()
            }
            .to_conflicts();
            if let Some(conflicts) = listed {
                return LockError::locked(conflicts);
            }
            let Some(object) = object else {
                return LockError::Internal(format!("unexpected `locked`: {message}"));
            };
            // No `conflicts` (a server older than them): nothing tells the cause, and `held`
            // is the only one such a server knew.
            match holder.as_deref().map(OwnerId::new) {
                Some(Ok(holder)) => LockError::locked(vec![Conflict {
                    object: object.clone(),
                    holder,
                    retry_after: Duration::from_millis(retry_after_ms.unwrap_or(0)),
                    cause: lockcore::ConflictCause::Held,
                }]),
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
            field: field
                .as_deref()
                .and_then(argument_field)
                .unwrap_or("request"),
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
        lock_error(
            parse_error(status, body.as_bytes()),
            status,
            Some(&object()),
        )
    }

    /// Without `conflicts` (an older server), `locked` names the requested object.
    #[test]
    fn locked_carries_holder_and_retry_after() {
        let err = map(
            409,
            r#"{"error":{"code":"locked","message":"object /vol/a is locked","holder":"node-2","retry_after_ms":1500}}"#,
        );
        assert_eq!(
            err,
            LockError::locked(vec![Conflict {
                object: object(),
                holder: OwnerId::new("node-2").unwrap(),
                retry_after: Duration::from_millis(1500),
                cause: lockcore::ConflictCause::Held,
            }])
        );
    }

    /// With `conflicts`, `locked` lists every object in conflict, the first one on top.
    #[test]
    fn locked_lists_every_conflict() {
        let err = map(
            409,
            r#"{"error":{"code":"locked","message":"m","holder":"n2","retry_after_ms":15,
                "conflicts":[{"object":"/vol/b","holder":"n2","retry_after_ms":15},
                             {"object":"/vol/c","holder":"n3","retry_after_ms":7}]}}"#,
        );
        let LockError::Locked {
            object,
            holder,
            conflicts,
            ..
        } = err
        else {
            panic!("{err:?}");
        };
        assert_eq!(object.as_str(), "/vol/b");
        assert_eq!(holder.as_str(), "n2");
        let objects: Vec<&str> = conflicts.iter().map(|c| c.object.as_str()).collect();
        assert_eq!(objects, ["/vol/b", "/vol/c"]);
        assert_eq!(conflicts[1].retry_after, Duration::from_millis(7));
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

    /// An `invalid_argument` names the envelope's `field`; the message is never read for it.
    #[test]
    fn invalid_argument_names_the_envelopes_field_not_the_messages() {
        let err = map(
            400,
            r#"{"error":{"code":"invalid_argument","message":"invalid argument `owner`: x","field":"wait"}}"#,
        );
        assert!(
            matches!(&err, LockError::InvalidArgument { field: "wait", reason } if reason.contains("`owner`")),
            "{err:?}"
        );
        for body in [
            r#"{"error":{"code":"invalid_argument","message":"invalid argument `ttl`: must be at least 1 ms"}}"#,
            r#"{"error":{"code":"invalid_argument","message":"bad","field":"no-such-argument"}}"#,
        ] {
            let err = map(400, body);
            assert!(
                matches!(
                    err,
                    LockError::InvalidArgument {
                        field: "request",
                        ..
                    }
                ),
                "{body}: {err:?}"
            );
        }
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
}
