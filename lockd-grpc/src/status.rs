//! lockd's refusals as gRPC statuses, and back.
//!
//! | lockd code | gRPC status | why this status |
//! |---|---|---|
//! | `locked` | `ABORTED` | a concurrency conflict the caller retries later, as gRPC advises for ABORTED |
//! | `not_held` | `FAILED_PRECONDITION` | the lock is not in the state the call needs (HTTP 409) |
//! | `token_mismatch` | `PERMISSION_DENIED` | someone else's lease (HTTP 403) |
//! | `invalid_token` | `INVALID_ARGUMENT` | not a lockd token at all (HTTP 400); not `UNAUTHENTICATED`, which is kept for the API key |
//! | `invalid_argument` | `INVALID_ARGUMENT` | `field` names the argument |
//! | `not_found` | `NOT_FOUND` | Inspect of an object that is not locked |
//! | `unauthenticated` | `UNAUTHENTICATED` | missing or unknown API key |
//! | `unavailable` | `UNAVAILABLE` | backend down or a server cap reached; retry later |
//! | `internal` | `INTERNAL` | a bug; report it |
//!
//! Every refusal carries its details in the status details (`grpc-status-details-bin`): a
//! `google.rpc.Status` (same code and message) whose `details` hold a
//! [`pb::ErrorDetail`] packed as `type.googleapis.com/lockd.v1.ErrorDetail`, plus a
//! `google.rpc.RetryInfo` for `locked` (the first conflict's `retry_after_ms`) and
//! `unavailable` (1 s). gRPC libraries in every language decode that format (Go's
//! `status.FromError(err).Details()`, Python's `grpc_status.rpc_status.from_call`).

use std::time::Duration;

use lockcore::{Conflict, LockError, ObjectId, OwnerId};
use prost::Message;
use tonic::{Code, Status};

use crate::convert::{cause_from_pb, cause_to_pb};
use crate::pb;

/// The `type_url` of a packed [`pb::ErrorDetail`].
pub const ERROR_DETAIL_TYPE_URL: &str = "type.googleapis.com/lockd.v1.ErrorDetail";
/// The `type_url` of a packed `google.rpc.RetryInfo`.
pub const RETRY_INFO_TYPE_URL: &str = "type.googleapis.com/google.rpc.RetryInfo";

/// The pause suggested to a caller refused as `unavailable` (as HTTP's `Retry-After: 1`).
pub const UNAVAILABLE_RETRY_AFTER: Duration = Duration::from_secs(1);

/// `google.rpc.Status`, the standard payload of `grpc-status-details-bin`.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<prost_types::Any>,
}

/// `google.rpc.RetryInfo`: how long to wait before retrying.
#[derive(Clone, PartialEq, prost::Message)]
struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    retry_delay: Option<prost_types::Duration>,
}

/// The gRPC status code a lockd error code is answered with (the module table).
pub fn code_for(lockd_code: &str) -> Code {
    match lockd_code {
        "locked" => Code::Aborted,
        "not_held" => Code::FailedPrecondition,
        "token_mismatch" => Code::PermissionDenied,
        "invalid_token" | "invalid_argument" => Code::InvalidArgument,
        "not_found" => Code::NotFound,
        "unauthenticated" => Code::Unauthenticated,
        "payload_too_large" => Code::ResourceExhausted,
        "unavailable" => Code::Unavailable,
        _ => Code::Internal,
    }
}

/// Whole milliseconds of `d`, saturating.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The [`pb::ErrorDetail`] of a lock error: its code, message, and the fields a program acts
/// on (`holder`, `retry_after_ms` and `conflicts` for `locked`, `field` for
/// `invalid_argument`), as the HTTP error envelope has them.
pub fn error_detail(error: &LockError) -> pb::ErrorDetail {
    let mut detail = pb::ErrorDetail {
        code: error.code().to_owned(),
        message: error.to_string(),
        ..pb::ErrorDetail::default()
    };
    match error {
        LockError::Locked {
            object,
            holder,
            retry_after,
            conflicts,
        } => {
            detail.holder = holder.to_string();
            detail.retry_after_ms = millis(*retry_after);
            detail.conflicts = conflicts.iter().map(conflict_message).collect();
            if detail.conflicts.is_empty() {
                detail.conflicts.push(pb::Conflict {
                    object: object.to_string(),
                    holder: holder.to_string(),
                    retry_after_ms: millis(*retry_after),
                    cause: pb::ConflictCause::Held as i32,
                });
            }
        }
        LockError::InvalidArgument { field, .. } => detail.field = (*field).to_owned(),
        LockError::Unavailable { .. } => {
            detail.retry_after_ms = millis(UNAVAILABLE_RETRY_AFTER);
        }
        _ => {}
    }
    detail
}

fn conflict_message(conflict: &Conflict) -> pb::Conflict {
    pb::Conflict {
        object: conflict.object.to_string(),
        holder: conflict.holder.to_string(),
        retry_after_ms: millis(conflict.retry_after),
        cause: cause_to_pb(conflict.cause) as i32,
    }
}

/// The status answering `detail`: its code from [`code_for`], its message, and the details
/// described in the module docs.
pub fn status_of_detail(detail: pb::ErrorDetail) -> Status {
    let code = code_for(&detail.code);
    let message = detail.message.clone();
    let mut details = Vec::with_capacity(2);
    let retry_after = match detail.code.as_str() {
        "locked" | "unavailable" => Some(Duration::from_millis(detail.retry_after_ms)),
        _ => None,
    };
    details.push(prost_types::Any {
        type_url: ERROR_DETAIL_TYPE_URL.to_owned(),
        value: detail.encode_to_vec(),
    });
    if let Some(delay) = retry_after {
        let info = RetryInfo {
            retry_delay: Some(prost_types::Duration {
                seconds: i64::try_from(delay.as_secs()).unwrap_or(i64::MAX),
                nanos: i32::try_from(delay.subsec_nanos()).unwrap_or(0),
            }),
        };
        details.push(prost_types::Any {
            type_url: RETRY_INFO_TYPE_URL.to_owned(),
            value: info.encode_to_vec(),
        });
    }
    let status = RpcStatus {
        code: code as i32,
        message: message.clone(),
        details,
    };
    Status::with_details(code, message, status.encode_to_vec().into())
}

/// The status answering a lock error (the module table), with its details.
pub fn status_of(error: &LockError) -> Status {
    status_of_detail(error_detail(error))
}

/// The status of a refusal that is not a [`LockError`] (`not_found`, `unauthenticated`).
pub(crate) fn refusal(code: &str, message: impl Into<String>) -> Status {
    status_of_detail(pb::ErrorDetail {
        code: code.to_owned(),
        message: message.into(),
        ..pb::ErrorDetail::default()
    })
}

/// The [`pb::ErrorDetail`] in a status's details, if the server put one there.
pub fn detail_of(status: &Status) -> Option<pb::ErrorDetail> {
    let rpc = RpcStatus::decode(status.details()).ok()?;
    rpc.details
        .iter()
        .find(|any| any.type_url == ERROR_DETAIL_TYPE_URL)
        .and_then(|any| pb::ErrorDetail::decode(any.value.as_slice()).ok())
}

/// The `google.rpc.RetryInfo` delay in a status's details, if any.
pub fn retry_delay_of(status: &Status) -> Option<Duration> {
    let rpc = RpcStatus::decode(status.details()).ok()?;
    let any = rpc
        .details
        .iter()
        .find(|any| any.type_url == RETRY_INFO_TYPE_URL)?;
    let delay = RetryInfo::decode(any.value.as_slice()).ok()?.retry_delay?;
    Some(Duration::new(
        u64::try_from(delay.seconds).ok()?,
        u32::try_from(delay.nanos).ok()?,
    ))
}

/// Every argument name an `invalid_argument` may carry in `field`, as `'static` strings
/// ([`LockError::InvalidArgument`] holds a `&'static str`): the names lockcore, lockd and the
/// clients use.
pub const ARGUMENT_FIELDS: &[&str] = &[
    "object",
    "owner",
    "ttl",
    "wait",
    "token",
    "limit",
    "prefix",
    "after",
    // Events filters (`object`, `prefix` and `owner` are above).
    "kind",
    "request_id",
    "mode",
    "objects",
    "locks",
    "body",
    "api_key",
    "url",
    "scope",
    "lock_delay_ms",
];

/// The argument `name` stands for, as a `'static` string: an entry of [`ARGUMENT_FIELDS`]
/// (`lock_delay_ms` included), or a field of a request (`ttl_ms` is `ttl`, `wait_ms` is
/// `wait`); `None` for anything else.
pub fn argument_field(name: &str) -> Option<&'static str> {
    let known = |name: &str| {
        ARGUMENT_FIELDS
            .iter()
            .find(|known| **known == name)
            .copied()
    };
    known(name).or_else(|| known(name.strip_suffix("_ms")?))
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

/// The [`LockError`] a refusal's [`pb::ErrorDetail`] stands for; `object` is the object the
/// request named, `backend` the name a client reports `unavailable` under.
///
/// | code | error |
/// |---|---|
/// | `locked` | `Locked` with its `conflicts` (or `holder` and `retry_after_ms` of `object`) |
/// | `not_held` | `NotHeld` |
/// | `token_mismatch` | `TokenMismatch` |
/// | `invalid_token` | `InvalidToken` |
/// | `invalid_argument` | `InvalidArgument` naming `field` (`request` without a known one) |
/// | `payload_too_large` | `InvalidArgument { field: "body" }` |
/// | `unauthenticated` | `InvalidArgument { field: "api_key" }`: not retryable, fix the key |
/// | `unavailable` | `Unavailable` |
/// | `internal`, anything else | `Internal` |
pub fn lock_error_of_detail(
    detail: pb::ErrorDetail,
    object: Option<&ObjectId>,
    backend: &'static str,
) -> LockError {
    let pb::ErrorDetail {
        code,
        message,
        holder,
        retry_after_ms,
        conflicts,
        field,
    } = detail;
    let message = if message.is_empty() {
        format!("lockd refused the request ({code})")
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
            let listed: Option<Vec<Conflict>> = conflicts
                .iter()
                .map(|c| {
                    Some(Conflict {
                        object: ObjectId::new(&c.object).ok()?,
                        holder: OwnerId::new(&c.holder).ok()?,
                        retry_after: Duration::from_millis(c.retry_after_ms),
                        cause: cause_from_pb(c.cause),
                    })
                })
                .collect();
            if let Some(listed) = listed.filter(|l| !l.is_empty()) {
                return LockError::locked(listed);
            }
            match (object, OwnerId::new(&holder)) {
                // No conflict listed (an older server): nothing tells the cause, held is the
                // only one such a server knew.
                (Some(object), Ok(holder)) => LockError::locked(vec![Conflict {
                    object: object.clone(),
                    holder,
                    retry_after: Duration::from_millis(retry_after_ms),
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
        "invalid_argument" => {
            let field = argument_field(&field).unwrap_or("request");
            // The message is the server's `Display` of the error: keep only its reason.
            let prefix = format!("invalid argument `{field}`: ");
            LockError::InvalidArgument {
                field,
                reason: message
                    .strip_prefix(&prefix)
                    .map(str::to_owned)
                    .unwrap_or(message),
            }
        }
        "payload_too_large" => LockError::InvalidArgument {
            field: "body",
            reason: message,
        },
        "unauthenticated" => LockError::InvalidArgument {
            field: "api_key",
            reason: format!("lockd refused the API key: {message}"),
        },
        "unavailable" => LockError::unavailable(backend, message),
        _ => LockError::Internal(
            message
                .strip_prefix("internal error: ")
                .map(str::to_owned)
                .unwrap_or(message),
        ),
    }
}

/// The [`LockError`] a status stands for: from its [`pb::ErrorDetail`] when lockd put one in
/// ([`lock_error_of_detail`]), otherwise from the status code alone (a transport failure, a
/// proxy, a message over the size limit):
///
/// | status without details | error |
/// |---|---|
/// | `UNAVAILABLE`, `DEADLINE_EXCEEDED`, `CANCELLED` | `Unavailable` |
/// | `UNAUTHENTICATED` | `InvalidArgument { field: "api_key" }` |
/// | `RESOURCE_EXHAUSTED`, `OUT_OF_RANGE` | `InvalidArgument { field: "body" }` (message too large) |
/// | `INVALID_ARGUMENT` | `InvalidArgument { field: "request" }` |
/// | anything else | `Internal` |
pub fn lock_error_of(
    status: &Status,
    object: Option<&ObjectId>,
    backend: &'static str,
) -> LockError {
    if let Some(detail) = detail_of(status) {
        return lock_error_of_detail(detail, object, backend);
    }
    let message = format!("{:?}: {}", status.code(), status.message());
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => {
            LockError::unavailable(backend, message)
        }
        Code::Unauthenticated => LockError::InvalidArgument {
            field: "api_key",
            reason: format!("lockd refused the API key: {message}"),
        },
        Code::ResourceExhausted | Code::OutOfRange => LockError::InvalidArgument {
            field: "body",
            reason: message,
        },
        Code::InvalidArgument => LockError::InvalidArgument {
            field: "request",
            reason: message,
        },
        _ => LockError::Internal(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(name: &str) -> ObjectId {
        ObjectId::new(name).expect("valid")
    }

    fn round_trip(error: &LockError, named: &ObjectId) -> (Status, LockError) {
        let status = status_of(error);
        let back = lock_error_of(&status, Some(named), "grpc");
        (status, back)
    }

    /// A `locked` refusal is ABORTED and carries every conflict, the first one's holder and
    /// wait on top, and a RetryInfo of the first wait.
    #[test]
    fn locked_is_aborted_with_its_conflicts() {
        let conflict = |name: &str, holder: &str, ms| Conflict {
            object: object(name),
            holder: OwnerId::new(holder).expect("valid"),
            retry_after: Duration::from_millis(ms),
            cause: lockcore::ConflictCause::Held,
        };
        let error = LockError::locked(vec![conflict("/a", "n2", 1500), conflict("/c", "n3", 20)]);
        let (status, back) = round_trip(&error, &object("/a"));
        assert_eq!(status.code(), Code::Aborted);
        let detail = detail_of(&status).expect("details");
        assert_eq!(detail.code, "locked");
        assert_eq!(detail.holder, "n2");
        assert_eq!(detail.retry_after_ms, 1500);
        assert_eq!(detail.conflicts.len(), 2);
        assert_eq!(retry_delay_of(&status), Some(Duration::from_millis(1500)));
        assert_eq!(back, error);
    }

    /// Every lock error keeps its variant through a status, naming the requested object.
    #[test]
    fn every_lock_error_survives_a_status() {
        let a = object("/a");
        let cases = [
            (
                LockError::NotHeld { object: a.clone() },
                Code::FailedPrecondition,
            ),
            (
                LockError::TokenMismatch { object: a.clone() },
                Code::PermissionDenied,
            ),
            (
                LockError::InvalidToken {
                    reason: "has the wrong length",
                },
                Code::InvalidArgument,
            ),
            (
                LockError::invalid_argument("wait", "too long"),
                Code::InvalidArgument,
            ),
            (LockError::Internal("bug".into()), Code::Internal),
        ];
        for (error, code) in cases {
            let (status, back) = round_trip(&error, &a);
            assert_eq!(status.code(), code, "{error:?}");
            assert_eq!(back, error);
        }
        let (status, back) = round_trip(&LockError::unavailable("redis", "down"), &a);
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(retry_delay_of(&status), Some(UNAVAILABLE_RETRY_AFTER));
        assert!(matches!(
            back,
            LockError::Unavailable {
                backend: "grpc",
                ..
            }
        ));
    }

    /// A status without lockd's details (a transport failure, a proxy) maps by its code.
    #[test]
    fn bare_statuses_map_by_code() {
        let a = object("/a");
        let map = |status: Status| lock_error_of(&status, Some(&a), "grpc");
        assert!(matches!(
            map(Status::unavailable("connection refused")),
            LockError::Unavailable { .. }
        ));
        assert!(matches!(
            map(Status::unauthenticated("no")),
            LockError::InvalidArgument {
                field: "api_key",
                ..
            }
        ));
        assert!(matches!(
            map(Status::out_of_range("message too large")),
            LockError::InvalidArgument { field: "body", .. }
        ));
        assert!(matches!(map(Status::unknown("?")), LockError::Internal(_)));
        // Garbage in the details is ignored rather than trusted.
        let garbage = Status::with_details(Code::Aborted, "x", vec![0xff, 0x01].into());
        assert!(matches!(map(garbage), LockError::Internal(_)));
    }

    /// The type URL clients match on names the proto's own `ErrorDetail` message.
    #[test]
    fn the_error_detail_type_url_names_the_proto_message() {
        let set = prost_types::FileDescriptorSet::decode(crate::FILE_DESCRIPTOR_SET)
            .expect("the descriptor set decodes");
        let file = set
            .file
            .iter()
            .find(|file| file.name() == "lockd/v1/locks.proto")
            .expect("locks.proto is in the set");
        assert!(file
            .message_type
            .iter()
            .any(|message| message.name() == "ErrorDetail"));
        assert_eq!(
            ERROR_DETAIL_TYPE_URL,
            format!("type.googleapis.com/{}.ErrorDetail", file.package())
        );
    }

    #[test]
    fn argument_fields_are_static_names() {
        assert_eq!(argument_field("ttl_ms"), Some("ttl"));
        assert_eq!(argument_field("objects"), Some("objects"));
        assert_eq!(argument_field("scope"), Some("scope"));
        assert_eq!(argument_field("lock_delay_ms"), Some("lock_delay_ms"));
        assert_eq!(argument_field("kind"), Some("kind"));
        assert_eq!(argument_field("nonsense"), None);
    }

    /// Each conflict keeps its cause through a status, and a lock-delay's message says so.
    #[test]
    fn conflicts_keep_their_cause() {
        let conflict = |name: &str, cause| Conflict {
            object: object(name),
            holder: OwnerId::new("gone").expect("valid"),
            retry_after: Duration::from_millis(800),
            cause,
        };
        let error = LockError::locked(vec![
            conflict("/a", lockcore::ConflictCause::LockDelay),
            conflict("/b", lockcore::ConflictCause::Queued),
            conflict("/c", lockcore::ConflictCause::Held),
        ]);
        let (status, back) = round_trip(&error, &object("/a"));
        assert!(
            status.message().contains("lock-delay"),
            "{}",
            status.message()
        );
        let causes: Vec<i32> = detail_of(&status)
            .expect("details")
            .conflicts
            .iter()
            .map(|c| c.cause)
            .collect();
        assert_eq!(
            causes,
            [
                pb::ConflictCause::LockDelay as i32,
                pb::ConflictCause::Queued as i32,
                pb::ConflictCause::Held as i32
            ]
        );
        assert_eq!(back, error);
        assert_eq!(retry_delay_of(&status), Some(Duration::from_millis(800)));
    }
}
