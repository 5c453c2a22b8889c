//! The error envelope: `{"error": {"code": CODE, "message": TEXT, ...}}`, lockd's answer to
//! every refused request.
//!
//! | code | HTTP | extra fields |
//! |---|---|---|
//! | `locked` | 409 | `holder`, `retry_after_ms` (of the first object in conflict), `conflicts` (each with its `cause`: `held`, `queued` or `lock_delay`) |
//! | `not_held` | 409 | |
//! | `token_mismatch` | 403 | |
//! | `invalid_token` | 400 | |
//! | `invalid_argument` | 400 (405 for a wrong method) | `field`, when one argument is at fault |
//! | `unauthenticated` | 401 | |
//! | `not_found` | 404 | |
//! | `payload_too_large` | 413 | |
//! | `unavailable` | 503 | |
//! | `internal` | 500 | |

use std::time::Duration;

use lockcore::{Conflict, ConflictCause, LockError, ObjectId, OwnerId};
use serde::{Deserialize, Serialize};

/// `{"error": {...}}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorEnvelope {
    /// What went wrong.
    pub error: ErrorBody,
}

impl From<ErrorBody> for ErrorEnvelope {
    fn from(error: ErrorBody) -> Self {
        Self { error }
    }
}

/// The inside of the error envelope.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// A stable machine-readable code (see the module table); [`LockError::code`] for lock
    /// errors.
    #[serde(default)]
    pub code: String,
    /// What went wrong, for people. Programs act on `code` and the fields below, never on this.
    #[serde(default)]
    pub message: String,
    /// For `locked`: the current holder's owner id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
    /// For `locked`: milliseconds until the current lease runs out unless renewed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// For `locked`: every requested object in conflict, in request order (the first is the
    /// one `holder` and `retry_after_ms` describe).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conflicts: Option<Vec<ConflictBody>>,
    /// For `invalid_argument`: the argument at fault, named as in
    /// [`LockError::InvalidArgument`] (one of [`ARGUMENT_FIELDS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ErrorBody {
    /// An error with `code` and `message` and no extra fields.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
            ..Self::default()
        }
    }

    /// The envelope of a lock error: its code, its message, and the fields a program needs to
    /// act on it (`holder`, `retry_after_ms` and `conflicts` for `locked`, `field` for
    /// `invalid_argument`).
    pub fn of_lock_error(error: &LockError) -> Self {
        let mut body = Self::new(error.code(), error.to_string());
        match error {
            LockError::Locked {
                object,
                holder,
                retry_after,
                conflicts,
            } => {
                body.holder = Some(holder.to_string());
                body.retry_after_ms = Some(millis(*retry_after));
                let mut listed: Vec<ConflictBody> =
                    conflicts.iter().map(ConflictBody::from).collect();
                if listed.is_empty() {
                    listed.push(ConflictBody {
                        object: object.to_string(),
                        holder: holder.to_string(),
                        retry_after_ms: millis(*retry_after),
                        cause: ConflictCause::Held.as_str().to_owned(),
                    });
                }
                body.conflicts = Some(listed);
            }
            LockError::InvalidArgument { field, .. } => body.field = Some((*field).to_owned()),
            _ => {}
        }
        body
    }

    /// The conflicts of a `locked` envelope as lockcore's; `None` when the envelope lists none
    /// (an older server) or names an object or holder lockcore refuses.
    pub fn to_conflicts(&self) -> Option<Vec<Conflict>> {
        let listed = self.conflicts.as_ref().filter(|c| !c.is_empty())?;
        listed.iter().map(ConflictBody::to_conflict).collect()
    }
}

/// One object of a refused acquire and what blocks it, in a `locked` envelope.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConflictBody {
    /// The object asked for.
    pub object: String,
    /// Who holds it, or waits for it ahead of the request, or held it until its lease expired
    /// (a lock-delay).
    pub holder: String,
    /// Milliseconds until that lease (or that wait, or that lock-delay) ends unless renewed.
    pub retry_after_ms: u64,
    /// What blocks it: `held` (a holder), `queued` (an earlier waiter) or `lock_delay` (the
    /// lock-delay of an expired lease). Read as `held` when missing or unknown (an older or a
    /// newer server), see [`ConflictCause::from_wire`].
    #[serde(default)]
    pub cause: String,
}

impl From<&Conflict> for ConflictBody {
    fn from(conflict: &Conflict) -> Self {
        Self {
            object: conflict.object.to_string(),
            holder: conflict.holder.to_string(),
            retry_after_ms: millis(conflict.retry_after),
            cause: conflict.cause.as_str().to_owned(),
        }
    }
}

impl ConflictBody {
    /// The conflict as lockcore's, if its names are valid.
    pub fn to_conflict(&self) -> Option<Conflict> {
        Some(Conflict {
            object: ObjectId::new(&self.object).ok()?,
            holder: OwnerId::new(&self.holder).ok()?,
            retry_after: Duration::from_millis(self.retry_after_ms),
            cause: ConflictCause::from_wire(&self.cause),
        })
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Every argument name an `invalid_argument` may carry in `field`: the names lockcore, lockd
/// and the client put in [`LockError::InvalidArgument`].
///
/// [`LockError::InvalidArgument`] holds a `&'static str`, so a reader maps the envelope's text
/// back to one of these with [`argument_field`].
pub const ARGUMENT_FIELDS: &[&str] = &[
    "object",
    "owner",
    "ttl",
    "wait",
    "token",
    "limit",
    "prefix",
    "after",
    // Event filters (`object`, `prefix` and `owner` are above).
    "kind",
    "request_id",
    "mode",
    "objects",
    "locks",
    "body",
    "api_key",
    "scope",
    "lock_delay_ms",
];

/// The argument `name` stands for, as a `'static` string: an entry of [`ARGUMENT_FIELDS`], or a
/// JSON field of a request body (`ttl_ms` is `ttl`, `wait_ms` is `wait`). `None` for anything
/// else.
pub fn argument_field(name: &str) -> Option<&'static str> {
    let known = |name: &str| {
        ARGUMENT_FIELDS
            .iter()
            .find(|known| **known == name)
            .copied()
    };
    known(name).or_else(|| known(name.strip_suffix("_ms")?))
}

#[cfg(test)]
mod tests {
    use lockcore::{ListQuery, ObjectId, OwnerId};
    use serde_json::json;

    use super::*;

    /// A `locked` error carries the holder of its first conflict, when to retry, and every
    /// conflict in request order.
    #[test]
    fn locked_carries_holder_and_retry_after() {
        let conflict = |object: &str, holder: &str, ms| Conflict {
            object: ObjectId::new(object).unwrap(),
            holder: OwnerId::new(holder).unwrap(),
            retry_after: Duration::from_millis(ms),
            cause: ConflictCause::Held,
        };
        let conflicts = vec![
            conflict("/vol/a", "node-2", 1500),
            conflict("/vol/c", "node-3", 20),
        ];
        let error = LockError::locked(conflicts.clone());
        let body = ErrorBody::of_lock_error(&error);
        let json = serde_json::to_value(ErrorEnvelope::from(body.clone()));
        let json = json.unwrap();
        assert_eq!(json["error"]["code"], "locked");
        assert_eq!(json["error"]["holder"], "node-2");
        assert_eq!(json["error"]["retry_after_ms"], 1500);
        assert_eq!(
            json["error"]["conflicts"],
            json!([{"object": "/vol/a", "holder": "node-2", "retry_after_ms": 1500, "cause": "held"},
                   {"object": "/vol/c", "holder": "node-3", "retry_after_ms": 20, "cause": "held"}])
        );
        assert!(json["error"].get("field").is_none(), "{json}");
        assert_eq!(body.to_conflicts(), Some(conflicts));
        assert_eq!(ErrorBody::new("locked", "m").to_conflicts(), None);
    }

    /// Each conflict names its cause, and reads back with it; a lock-delay's message says so.
    /// A conflict without a cause (an older server) or with one this version does not know
    /// reads as `held`.
    #[test]
    fn conflicts_carry_their_cause() {
        let conflict = |object: &str, cause| Conflict {
            object: ObjectId::new(object).unwrap(),
            holder: OwnerId::new("node-2").unwrap(),
            retry_after: Duration::from_millis(250),
            cause,
        };
        let conflicts = vec![
            conflict("/vol/a", ConflictCause::LockDelay),
            conflict("/vol/b", ConflictCause::Queued),
            conflict("/vol/c", ConflictCause::Held),
        ];
        let body = ErrorBody::of_lock_error(&LockError::locked(conflicts.clone()));
        assert!(body.message.contains("lock-delay"), "{}", body.message);
        let json = serde_json::to_value(&body).unwrap();
        let causes: Vec<&str> = json["conflicts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["cause"].as_str().unwrap())
            .collect();
        assert_eq!(causes, ["lock_delay", "queued", "held"]);
        let back: ErrorBody = serde_json::from_value(json).unwrap();
        assert_eq!(back.to_conflicts(), Some(conflicts));

        let older: ConflictBody =
            serde_json::from_str(r#"{"object":"/a","holder":"n","retry_after_ms":1}"#).unwrap();
        assert_eq!(older.to_conflict().unwrap().cause, ConflictCause::Held);
        let newer: ConflictBody = serde_json::from_str(
            r#"{"object":"/a","holder":"n","retry_after_ms":1,"cause":"quota"}"#,
        )
        .unwrap();
        assert_eq!(newer.to_conflict().unwrap().cause, ConflictCause::Held);
    }

    /// An `invalid_argument` error names its argument in `field`.
    #[test]
    fn invalid_argument_names_its_field() {
        let body = ErrorBody::of_lock_error(&LockError::invalid_argument("wait", "too long"));
        assert_eq!(body.field.as_deref(), Some("wait"));
        assert_eq!(body.code, "invalid_argument");
        assert_eq!(
            serde_json::to_value(ErrorBody::new("not_found", "no such endpoint")).unwrap(),
            json!({"code": "not_found", "message": "no such endpoint"})
        );
    }

    /// Every argument lockcore's own checks refuse is one the envelope's readers know.
    #[test]
    fn lockcores_argument_names_are_known() {
        let refusals = [
            ObjectId::new("").map(|_| ()),
            OwnerId::new("").map(|_| ()),
            ListQuery::new("", 0).check(),
            lockcore::Limits::default().check_ttl(Duration::ZERO),
            lockcore::Limits::default().check_wait(Duration::MAX),
            "tree".parse::<lockcore::LockScope>().map(|_| ()),
            lockcore::AcquireRequest::new(
                ObjectId::new("a").unwrap(),
                OwnerId::new("o").unwrap(),
                Duration::from_secs(1),
            )
            .with_lock_delay(lockcore::MAX_LOCK_DELAY * 2)
            .check(&lockcore::Limits::default()),
        ];
        for refusal in refusals {
            match refusal {
                Err(LockError::InvalidArgument { field, .. }) => {
                    assert_eq!(argument_field(field), Some(field), "{field} is unknown")
                }
                other => panic!("expected an invalid argument, got {other:?}"),
            }
        }
        assert_eq!(argument_field("ttl_ms"), Some("ttl"));
        assert_eq!(argument_field("wait_ms"), Some("wait"));
        assert_eq!(argument_field("lock_delay_ms"), Some("lock_delay_ms"));
        assert_eq!(argument_field("nonsense"), None);
    }
}
