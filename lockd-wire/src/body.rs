//! The request and response bodies of the `/v1` endpoints, and their conversions to lockcore's
//! types.
//!
//! | endpoint | request | response |
//! |---|---|---|
//! | `POST /v1/locks/acquire` | [`AcquireRequest`] | [`LeaseBody`] |
//! | `POST /v1/locks/release` | [`TokenRequest`] | [`ReleaseBody`] |
//! | `POST /v1/locks/renew` | [`RenewRequest`] | [`LeaseBody`] |
//! | `POST /v1/locks/validate` | [`TokenRequest`] | [`LockBody`] (no times) |
//! | `POST /v1/locks/inspect` | [`InspectRequest`] | [`LockBody`] |
//! | `GET /v1/locks` | [`ListParams`] (query) | [`ListBody`] |
//! | `GET /v1/events` | [`EventParams`] (query) | [`EventsBody`] |
//! | `GET /v1/events/stream` | [`EventParams`] (query) | server-sent [`Event`]s |
//!
//! Names and tokens travel as plain strings: the server checks them with lockcore's parsers, so
//! a bad one is refused naming the argument (`invalid_argument` with `field`), not as unreadable
//! JSON.

use std::time::{Duration, SystemTime};

use lockcore::{Fence, Lease, LockError, LockInfo, LockToken, ObjectId, OwnerId};
use serde::{Deserialize, Serialize};

use crate::event::Event;

/// `POST /v1/locks/acquire`: lock `object` for `owner` for `ttl_ms`, waiting up to `wait_ms`
/// while another owner holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcquireRequest {
    /// The object to lock.
    pub object: String,
    /// Who will hold it.
    pub owner: String,
    /// Lease length in milliseconds.
    pub ttl_ms: u64,
    /// How long to wait for the object in milliseconds; 0 (the default) fails at once.
    #[serde(default)]
    pub wait_ms: u64,
    /// A caller-chosen id that makes a retried acquire return the same lease instead of a
    /// second grant. Omitted when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

impl AcquireRequest {
    /// A non-blocking acquire without a request id.
    pub fn new(object: impl Into<String>, owner: impl Into<String>, ttl_ms: u64) -> Self {
        Self {
            object: object.into(),
            owner: owner.into(),
            ttl_ms,
            wait_ms: 0,
            request_id: None,
        }
    }
}

/// `POST /v1/locks/release` and `POST /v1/locks/validate`: an object and the token of its lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRequest {
    /// The locked object.
    pub object: String,
    /// The token the acquire returned.
    pub token: String,
}

/// `POST /v1/locks/renew`: extend a lease to `ttl_ms` from now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewRequest {
    /// The locked object.
    pub object: String,
    /// The token the acquire returned.
    pub token: String,
    /// New lease length from now, in milliseconds.
    pub ttl_ms: u64,
}

/// `POST /v1/locks/inspect`: who holds `object`, if anyone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InspectRequest {
    /// The object to look at.
    pub object: String,
}

/// The query of `GET /v1/locks`. Absent parameters are omitted from the query string.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ListParams {
    /// Only objects starting with this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Most locks in the page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// The `next` cursor of the previous page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

/// The query of `GET /v1/events` and `GET /v1/events/stream`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EventParams {
    /// Only events with a sequence number above this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<u64>,
    /// Most events in the page (`GET /v1/events` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// What acquire and renew return: the lease, with its token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseBody {
    /// The locked object.
    pub object: String,
    /// The holder.
    pub owner: String,
    /// The token that proves holding; present it to release, renew and validate.
    pub token: String,
    /// The grant's fence: hand it to storage, which refuses writes with an older one.
    pub fence: u64,
    /// Lease length in milliseconds, from when the server granted or renewed it.
    pub ttl_ms: u64,
}

/// What release returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseBody {
    /// The released object.
    pub object: String,
    /// The fence of the lease that was released.
    pub fence: u64,
}

/// A lock as validate, inspect and list describe it: never a token.
///
/// Inspect and list send the server's `acquired_at` and `expires_at`; validate does not (they
/// are omitted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockBody {
    /// The locked object.
    pub object: String,
    /// The holder.
    pub owner: String,
    /// The grant's fence.
    pub fence: u64,
    /// Lease length in milliseconds.
    pub ttl_ms: u64,
    /// When the lease was granted, by the backend's clock.
    #[serde(
        default,
        with = "crate::rfc3339",
        skip_serializing_if = "Option::is_none"
    )]
    pub acquired_at: Option<SystemTime>,
    /// When the lease runs out unless renewed, by the backend's clock.
    #[serde(
        default,
        with = "crate::rfc3339",
        skip_serializing_if = "Option::is_none"
    )]
    pub expires_at: Option<SystemTime>,
}

/// What `GET /v1/locks` returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListBody {
    /// The page, ordered by object.
    pub locks: Vec<LockBody>,
    /// Pass as `after` for the next page; `null` on the last page.
    #[serde(default)]
    pub next: Option<String>,
}

/// What `GET /v1/events` returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventsBody {
    /// Oldest first.
    pub events: Vec<Event>,
}

/// Whole milliseconds of `d`, saturating.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A name in a server's answer that lockcore refuses: the server misbehaves.
fn answered_name<T>(id: Result<T, LockError>) -> Result<T, LockError> {
    id.map_err(|e| LockError::Internal(format!("lockd answered with an invalid name: {e}")))
}

impl From<&Lease> for LeaseBody {
    fn from(lease: &Lease) -> Self {
        Self {
            object: lease.object.to_string(),
            owner: lease.owner.to_string(),
            token: lease.token.expose().to_owned(),
            fence: lease.fence.get(),
            ttl_ms: millis(lease.ttl),
        }
    }
}

impl LeaseBody {
    /// The lease this body describes; a malformed name or token is [`LockError::Internal`].
    pub fn into_lease(self) -> Result<Lease, LockError> {
        Ok(Lease {
            object: answered_name(ObjectId::new(&self.object))?,
            owner: answered_name(OwnerId::new(&self.owner))?,
            token: LockToken::parse(&self.token).map_err(|e| {
                LockError::Internal(format!("lockd answered with a malformed token: {e}"))
            })?,
            fence: Fence(self.fence),
            ttl: Duration::from_millis(self.ttl_ms),
        })
    }
}

impl From<&Lease> for LockBody {
    fn from(lease: &Lease) -> Self {
        Self {
            object: lease.object.to_string(),
            owner: lease.owner.to_string(),
            fence: lease.fence.get(),
            ttl_ms: millis(lease.ttl),
            acquired_at: None,
            expires_at: None,
        }
    }
}

impl From<&LockInfo> for LockBody {
    fn from(info: &LockInfo) -> Self {
        Self {
            object: info.object.to_string(),
            owner: info.owner.to_string(),
            fence: info.fence.get(),
            ttl_ms: millis(info.ttl),
            acquired_at: Some(info.acquired_at),
            expires_at: Some(info.expires_at),
        }
    }
}

impl LockBody {
    /// The lease this validate answer confirms, with the `token` the caller presented.
    pub fn into_lease(self, token: &LockToken) -> Result<Lease, LockError> {
        Ok(Lease {
            object: answered_name(ObjectId::new(&self.object))?,
            owner: answered_name(OwnerId::new(&self.owner))?,
            token: token.clone(),
            fence: Fence(self.fence),
            ttl: Duration::from_millis(self.ttl_ms),
        })
    }

    /// The lock this inspect or list answer describes. Missing times are derived from the
    /// reader's clock: `acquired_at` as now, `expires_at` as now + `ttl_ms`.
    pub fn into_info(self) -> Result<LockInfo, LockError> {
        let now = SystemTime::now();
        let ttl = Duration::from_millis(self.ttl_ms);
        Ok(LockInfo {
            object: answered_name(ObjectId::new(&self.object))?,
            owner: answered_name(OwnerId::new(&self.owner))?,
            fence: Fence(self.fence),
            acquired_at: self.acquired_at.unwrap_or(now),
            expires_at: self.expires_at.unwrap_or_else(|| now + ttl),
            ttl,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use serde_json::json;

    use super::*;

    /// An acquire request omits an absent request id and defaults an absent wait to zero.
    #[test]
    fn acquire_requests_omit_an_absent_request_id() {
        let mut request = AcquireRequest::new("a", "o", 1000);
        assert_eq!(
            serde_json::to_value(&request).unwrap(),
            json!({"object": "a", "owner": "o", "ttl_ms": 1000, "wait_ms": 0})
        );
        request.request_id = Some("r-1".into());
        assert_eq!(serde_json::to_value(&request).unwrap()["request_id"], "r-1");
        let read: AcquireRequest =
            serde_json::from_str(r#"{"object":"a","owner":"o","ttl_ms":5}"#).unwrap();
        assert_eq!(read, AcquireRequest::new("a", "o", 5));
    }

    /// Lock times are written as RFC 3339 with milliseconds and read back to the millisecond.
    #[test]
    fn lock_times_round_trip_as_rfc3339() {
        let body = LockBody {
            object: "a".into(),
            owner: "o".into(),
            fence: 7,
            ttl_ms: 5000,
            acquired_at: Some(UNIX_EPOCH + Duration::from_millis(1_767_225_600_123)),
            expires_at: None,
        };
        let json = serde_json::to_value(&body).unwrap();
        assert_eq!(json["acquired_at"], "2026-01-01T00:00:00.123Z");
        assert!(json.get("expires_at").is_none(), "{json}");
        let back: LockBody = serde_json::from_value(json).unwrap();
        assert_eq!(back, body);
    }

    /// Times missing from a lock body are derived from the reader's clock and the TTL.
    #[test]
    fn missing_lock_times_are_derived_from_the_ttl() {
        let before = SystemTime::now();
        let body: LockBody =
            serde_json::from_str(r#"{"object":"a","owner":"o","fence":7,"ttl_ms":5000}"#).unwrap();
        let info = body.into_info().unwrap();
        assert_eq!(info.fence, Fence(7));
        assert!(info.acquired_at >= before);
        assert!(info.expires_at >= before + Duration::from_secs(5));
        assert!(info.expires_at <= SystemTime::now() + Duration::from_secs(5));
    }

    /// A lease body with a malformed token or name is the server's fault: `Internal`.
    #[test]
    fn malformed_answers_are_internal() {
        let body = LeaseBody {
            object: "a".into(),
            owner: "o".into(),
            token: "nope".into(),
            fence: 1,
            ttl_ms: 10,
        };
        assert!(matches!(body.into_lease(), Err(LockError::Internal(_))));
        let body = LockBody {
            object: String::new(),
            owner: "o".into(),
            fence: 1,
            ttl_ms: 10,
            acquired_at: None,
            expires_at: None,
        };
        assert!(matches!(body.into_info(), Err(LockError::Internal(_))));
    }

    /// Query parameters that are absent are left out.
    #[test]
    fn absent_query_parameters_are_omitted() {
        let params = ListParams {
            limit: Some(3),
            ..ListParams::default()
        };
        assert_eq!(serde_json::to_value(&params).unwrap(), json!({"limit": 3}));
        assert_eq!(
            serde_json::to_value(EventParams::default()).unwrap(),
            json!({})
        );
    }
}
