//! The request and response bodies of the `/v1` endpoints, and their conversions to lockcore's
//! types.
//!
//! | endpoint | request | response |
//! |---|---|---|
//! | `POST /v1/locks/acquire` | [`AcquireRequest`] | [`LeaseBody`] (`object`) or [`GrantBody`] (`objects`) |
//! | `POST /v1/locks/release` | [`ReleaseRequest`] | [`ReleaseBody`] (`object`) or [`ResultsBody`] of [`ReleaseBody`] (`locks`) |
//! | `POST /v1/locks/renew` | [`RenewRequest`] | [`LeaseBody`] (`object`) or [`ResultsBody`] of [`LeaseBody`] (`locks`) |
//! | `POST /v1/locks/downgrade` | [`TokenRequest`] | [`LeaseBody`] (`"mode": "shared"`) |
//! | `POST /v1/locks/validate` | [`TokenRequest`] | [`LockBody`] (no times, no holders) |
//! | `POST /v1/locks/inspect` | [`InspectRequest`] | [`LockBody`] |
//! | `GET /v1/locks` | [`ListParams`] (query) | [`ListBody`] |
//! | `GET /v1/events` | [`EventParams`] and [`EventFilter`](crate::EventFilter) (query) | [`EventsBody`] |
//! | `GET /v1/events/stream` | [`EventParams`] and [`EventFilter`](crate::EventFilter) (query) | server-sent [`Event`]s |
//!
//! Names and tokens travel as plain strings: the server checks them with lockcore's parsers, so
//! a bad one is refused naming the argument (`invalid_argument` with `field`), not as unreadable
//! JSON. Modes travel as `"exclusive"` or `"shared"`; an omitted mode is exclusive, so a
//! request or an answer of an older version reads as it always did. Scopes travel the same way:
//! `"object"` (the default, also when omitted) or `"subtree"` (the object and every id under it,
//! see [`lockcore::path`]).
//!
//! A request names one lock the way it always did (`object`, plus `token` for release and
//! renew) or several: `objects` for acquire, `locks` for release and renew. The answer has the
//! request's form: a several-lock request is answered with one entry per lock, in request order.

use std::time::{Duration, SystemTime};

use lockcore::{
    Fence, Grant, HolderInfo, Lease, LockDelayInfo, LockError, LockInfo, LockMode, LockScope,
    LockSpec, LockToken, ObjectId, OwnerId, RequestId,
};
use serde::{Deserialize, Serialize};

use crate::envelope::ErrorBody;
use crate::event::Event;

/// `POST /v1/locks/acquire`: lock `object` (or every one of `objects`, all or nothing) for
/// `owner` for `ttl_ms`, waiting up to `wait_ms` while they cannot be granted.
///
/// Exactly one of `object` and `objects` is given. `mode` and `scope` go with `object`; each
/// entry of `objects` has its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcquireRequest {
    /// The object to lock (the one-object form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    /// The mode of `object`; exclusive when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<LockMode>,
    /// What the lock on `object` covers: the object alone (`object`, the default when omitted)
    /// or its whole subtree (`subtree`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<LockScope>,
    /// The objects to lock together (the several-object form), 1 to 64 distinct ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objects: Option<Vec<ObjectSpec>>,
    /// Who will hold them.
    pub owner: String,
    /// Lease length in milliseconds.
    pub ttl_ms: u64,
    /// How long to wait for the objects in milliseconds; 0 (the default) fails at once.
    #[serde(default)]
    pub wait_ms: u64,
    /// A caller-chosen id that makes a retried acquire return the same leases instead of
    /// second grants. Omitted when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The leases' lock-delay in milliseconds, 0 to 60 000: when one of them ends by expiry
    /// rather than release, nothing conflicting with it is granted for this long after the
    /// expiry. Omitted: the server's default (`--default-lock-delay`, 0 unless configured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_delay_ms: Option<u64>,
}

/// One entry of [`AcquireRequest::objects`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectSpec {
    /// The object to lock.
    pub object: String,
    /// Its mode; exclusive when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<LockMode>,
    /// What its lock covers: the object alone when omitted, or its whole `subtree`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<LockScope>,
}

impl ObjectSpec {
    /// `object` in `mode`, the object alone; an exclusive mode is written out too, the object
    /// scope is not.
    pub fn new(object: impl Into<String>, mode: LockMode) -> Self {
        Self {
            object: object.into(),
            mode: Some(mode),
            scope: None,
        }
    }

    /// The same entry covering `scope` (written out only for a subtree).
    pub fn with_scope(mut self, scope: LockScope) -> Self {
        self.scope = written_scope(scope);
        self
    }
}

impl From<&LockSpec> for ObjectSpec {
    fn from(spec: &LockSpec) -> Self {
        Self::new(spec.object.as_str(), spec.mode).with_scope(spec.scope)
    }
}

/// A scope as a request writes it: omitted for the object scope, the default, so a request
/// without subtree locks reads as it did before scopes existed.
fn written_scope(scope: LockScope) -> Option<LockScope> {
    (scope != LockScope::Object).then_some(scope)
}

impl AcquireRequest {
    /// A non-blocking exclusive acquire of one object, without a request id.
    pub fn new(object: impl Into<String>, owner: impl Into<String>, ttl_ms: u64) -> Self {
        Self {
            object: Some(object.into()),
            mode: None,
            scope: None,
            objects: None,
            owner: owner.into(),
            ttl_ms,
            wait_ms: 0,
            request_id: None,
            lock_delay_ms: None,
        }
    }

    /// A non-blocking acquire of all of `objects` together, without a request id.
    pub fn many(objects: Vec<ObjectSpec>, owner: impl Into<String>, ttl_ms: u64) -> Self {
        Self {
            object: None,
            mode: None,
            scope: None,
            objects: Some(objects),
            owner: owner.into(),
            ttl_ms,
            wait_ms: 0,
            request_id: None,
            lock_delay_ms: None,
        }
    }

    /// The body of `request`: the one-object form for a request naming one object (with `mode`
    /// only when shared and `scope` only when subtree), the several-object form otherwise.
    /// `ttl_ms` and `wait_ms` are given by the caller, who decides how to round.
    ///
    /// A zero lock-delay is omitted, so the server's default applies to it (lockcore's request
    /// cannot tell "zero" from "not given"); any other is sent in whole milliseconds, rounded
    /// up.
    pub fn of(request: &lockcore::AcquireRequest, ttl_ms: u64, wait_ms: u64) -> Self {
        let mut body = match request.objects.as_slice() {
            [one] => {
                let mut body = Self::new(one.object.as_str(), request.owner.as_str(), ttl_ms);
                body.mode = (one.mode != LockMode::Exclusive).then_some(one.mode);
                body.scope = written_scope(one.scope);
                body
            }
            specs => Self::many(
                specs.iter().map(ObjectSpec::from).collect(),
                request.owner.as_str(),
                ttl_ms,
            ),
        };
        body.wait_ms = wait_ms;
        body.request_id = request.request_id.as_ref().map(|id| id.as_str().to_owned());
        body.lock_delay_ms =
            (!request.lock_delay.is_zero()).then(|| ceil_millis(request.lock_delay));
        body
    }

    /// Whether the request uses the several-object form (and is answered with a
    /// [`GrantBody`]).
    pub fn is_many(&self) -> bool {
        self.objects.is_some()
    }

    /// The lockcore request this body asks for, with no lock-delay when the body gives none
    /// (see [`AcquireRequest::to_request_with_default`]).
    pub fn to_request(&self) -> Result<lockcore::AcquireRequest, LockError> {
        self.to_request_with_default(Duration::ZERO)
    }

    /// The lockcore request this body asks for, with the lock-delay `default_lock_delay` when
    /// the body omits `lock_delay_ms` (a server passes its `--default-lock-delay`). Refuses a
    /// body naming both or neither of `object` and `objects`, a `mode` or `scope` next to
    /// `objects`, and any name lockcore refuses, as [`LockError::InvalidArgument`]. Limits
    /// (TTL, wait, lock-delay, number of objects, duplicates and overlaps) are the lock
    /// service's to check.
    pub fn to_request_with_default(
        &self,
        default_lock_delay: Duration,
    ) -> Result<lockcore::AcquireRequest, LockError> {
        let specs = match (&self.object, &self.objects) {
            (Some(object), None) => {
                vec![
                    LockSpec::new(ObjectId::new(object)?, self.mode.unwrap_or_default())
                        .with_scope(self.scope.unwrap_or_default()),
                ]
            }
            (None, Some(objects)) => {
                if self.mode.is_some() {
                    return Err(LockError::invalid_argument(
                        "mode",
                        "goes with `object`; give each entry of `objects` its own mode",
                    ));
                }
                if self.scope.is_some() {
                    return Err(LockError::invalid_argument(
                        "scope",
                        "goes with `object`; give each entry of `objects` its own scope",
                    ));
                }
                objects
                    .iter()
                    .map(|spec| {
                        Ok(LockSpec::new(
                            ObjectId::new(&spec.object)?,
                            spec.mode.unwrap_or_default(),
                        )
                        .with_scope(spec.scope.unwrap_or_default()))
                    })
                    .collect::<Result<_, LockError>>()?
            }
            (None, None) => {
                return Err(LockError::invalid_argument(
                    "object",
                    "missing field `object` (or `objects`)",
                ))
            }
            (Some(_), Some(_)) => {
                return Err(LockError::invalid_argument(
                    "objects",
                    "name either `object` or `objects`, not both",
                ))
            }
        };
        let mut request = lockcore::AcquireRequest::many(
            specs,
            OwnerId::new(&self.owner)?,
            Duration::from_millis(self.ttl_ms),
        )
        .with_wait(Duration::from_millis(self.wait_ms))
        .with_lock_delay(
            self.lock_delay_ms
                .map_or(default_lock_delay, Duration::from_millis),
        );
        if let Some(id) = &self.request_id {
            request = request.with_request_id(RequestId::new(id)?);
        }
        Ok(request)
    }
}

/// `POST /v1/locks/validate` and `POST /v1/locks/downgrade`, and one entry of the `locks` of
/// release and renew: an object and the token of its lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRequest {
    /// The locked object.
    pub object: String,
    /// The token the acquire returned.
    pub token: String,
}

impl TokenRequest {
    /// The request for `token`'s lease on `object`.
    pub fn new(object: &ObjectId, token: &LockToken) -> Self {
        Self {
            object: object.as_str().to_owned(),
            token: token.expose().to_owned(),
        }
    }
}

/// What a release or renew names: one lock, or several.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Named {
    /// `object` and `token`: answered with one body, or an error envelope.
    One(TokenRequest),
    /// `locks`: answered with a [`ResultsBody`], one entry per lock.
    Several(Vec<TokenRequest>),
}

/// Which of the two forms a release or renew body uses; both or neither is `invalid_argument`.
fn named(
    object: Option<String>,
    token: Option<String>,
    locks: Option<Vec<TokenRequest>>,
) -> Result<Named, LockError> {
    match (object, token, locks) {
        (Some(object), Some(token), None) => Ok(Named::One(TokenRequest { object, token })),
        (None, None, Some(locks)) => Ok(Named::Several(locks)),
        (None, _, None) => Err(LockError::invalid_argument(
            "object",
            "missing field `object` (or `locks`)",
        )),
        (Some(_), None, None) => Err(LockError::invalid_argument(
            "token",
            "missing field `token`",
        )),
        (_, _, Some(_)) => Err(LockError::invalid_argument(
            "locks",
            "name either `object` and `token`, or `locks`, not both",
        )),
    }
}

/// `POST /v1/locks/release`: release one lease (`object`, `token`) or several (`locks`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseRequest {
    /// The locked object (the one-lock form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    /// The token the acquire returned (the one-lock form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Several leases, each released on its own (the several-lock form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locks: Option<Vec<TokenRequest>>,
}

impl ReleaseRequest {
    /// Releases `token`'s lease on `object`.
    pub fn one(object: &ObjectId, token: &LockToken) -> Self {
        Self {
            object: Some(object.as_str().to_owned()),
            token: Some(token.expose().to_owned()),
            locks: None,
        }
    }

    /// Releases every lease of `locks`.
    pub fn many(locks: &[(ObjectId, LockToken)]) -> Self {
        Self {
            object: None,
            token: None,
            locks: Some(locks.iter().map(|(o, t)| TokenRequest::new(o, t)).collect()),
        }
    }

    /// The form used: both or neither is [`LockError::InvalidArgument`].
    pub fn named(self) -> Result<Named, LockError> {
        named(self.object, self.token, self.locks)
    }
}

/// `POST /v1/locks/renew`: extend one lease (`object`, `token`) or several (`locks`) to
/// `ttl_ms` from now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewRequest {
    /// The locked object (the one-lock form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    /// The token the acquire returned (the one-lock form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Several leases, each renewed on its own (the several-lock form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locks: Option<Vec<TokenRequest>>,
    /// New lease length from now, in milliseconds.
    pub ttl_ms: u64,
}

impl RenewRequest {
    /// Renews `token`'s lease on `object` to `ttl_ms`.
    pub fn one(object: &ObjectId, token: &LockToken, ttl_ms: u64) -> Self {
        Self {
            object: Some(object.as_str().to_owned()),
            token: Some(token.expose().to_owned()),
            locks: None,
            ttl_ms,
        }
    }

    /// Renews every lease of `locks` to `ttl_ms`.
    pub fn many(locks: &[(ObjectId, LockToken)], ttl_ms: u64) -> Self {
        Self {
            object: None,
            token: None,
            locks: Some(locks.iter().map(|(o, t)| TokenRequest::new(o, t)).collect()),
            ttl_ms,
        }
    }

    /// The form used: both or neither is [`LockError::InvalidArgument`].
    pub fn named(&self) -> Result<Named, LockError> {
        named(self.object.clone(), self.token.clone(), self.locks.clone())
    }
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

/// The query of `GET /v1/events` and `GET /v1/events/stream`, beside the filter parameters
/// ([`EventFilter`](crate::EventFilter): repeatable, so not part of this struct).
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

/// What a one-object acquire, renew and downgrade return: the lease, with its token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseBody {
    /// The locked object.
    pub object: String,
    /// The holder.
    pub owner: String,
    /// `exclusive` or `shared` (read as exclusive when omitted).
    #[serde(default)]
    pub mode: LockMode,
    /// The token that proves holding; present it to release, renew and validate.
    pub token: String,
    /// The grant's fence: hand it to storage, which refuses writes with an older one.
    pub fence: u64,
    /// Lease length in milliseconds, from when the server granted or renewed it.
    pub ttl_ms: u64,
    /// What the lease covers, `object` or `subtree`: in an acquire's answer, as the request
    /// asked; omitted from renew and downgrade answers (the lease keeps its scope).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<LockScope>,
}

/// What a several-object acquire returns: one lock per requested object, in request order,
/// sharing the owner and the TTL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantBody {
    /// The holder of every lock.
    pub owner: String,
    /// Lease length in milliseconds, from when the server granted them.
    pub ttl_ms: u64,
    /// One per requested object, in request order.
    pub locks: Vec<GrantedLock>,
}

/// One lock of a [`GrantBody`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantedLock {
    /// The locked object.
    pub object: String,
    /// `exclusive` or `shared`.
    #[serde(default)]
    pub mode: LockMode,
    /// This lock's token.
    pub token: String,
    /// This grant's fence.
    pub fence: u64,
    /// What it covers, as the request asked: `object` (also when omitted) or `subtree`.
    #[serde(default)]
    pub scope: LockScope,
}

/// What a one-lock release returns; also the entry of a released lock in a several-lock
/// release's [`ResultsBody`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseBody {
    /// The released object.
    pub object: String,
    /// The fence of the lease that was released.
    pub fence: u64,
}

/// What a several-lock release or renew returns, with HTTP 200 even when some entries failed:
/// one entry per lock, in request order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultsBody<T> {
    /// One outcome per lock named, in request order.
    pub results: Vec<EntryResult<T>>,
}

/// The outcome of one lock of a several-lock release or renew: `T` ([`ReleaseBody`] or
/// [`LeaseBody`]) or `{"object", "error": {"code", "message"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EntryResult<T> {
    /// This lock was refused (read first: only a refusal has `error`).
    Failed(FailedEntry),
    /// This lock was released or renewed.
    Done(T),
}

/// A refused entry of a several-lock request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedEntry {
    /// The object named.
    pub object: String,
    /// Why it was refused, as the error envelope would say (`not_held`, `token_mismatch`,
    /// `invalid_token`, ...).
    pub error: ErrorBody,
}

impl<T> EntryResult<T> {
    /// The refusal of `object` with `error`.
    pub fn failed(object: impl Into<String>, error: &LockError) -> Self {
        EntryResult::Failed(FailedEntry {
            object: object.into(),
            error: ErrorBody::of_lock_error(error),
        })
    }
}

/// A lock as validate, inspect and list describe it: never a token.
///
/// Inspect and list send the server's `acquired_at` and `expires_at`, and `holders`; validate
/// does not (they are omitted). The top-level `owner`, `fence`, `ttl_ms` and times describe
/// the holder with the highest fence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockBody {
    /// The locked object.
    pub object: String,
    /// The holder (with the highest fence).
    pub owner: String,
    /// `exclusive` or `shared` (read as exclusive when omitted).
    #[serde(default)]
    pub mode: LockMode,
    /// The grant's fence (the highest among the holders).
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
    /// Every holder, by increasing fence (inspect and list only): one for an exclusive lock,
    /// one or more when shared, none when only a lock-delay is in force (`delay`). Never a
    /// token.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub holders: Vec<HolderBody>,
    /// How many requests wait in the object's queue (inspect and list only; those waiting for
    /// a subtree lock on the object count, those waiting for objects under it do not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiters: Option<u32>,
    /// The lock-delay in force on the object, when a lease granted with one expired less than
    /// its delay ago (inspect and list only). With no holder left, the top-level fields
    /// describe that expired lease (its `ttl_ms` is 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<DelayBody>,
}

/// One holder in a [`LockBody`]: never a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HolderBody {
    /// Who holds it.
    pub owner: String,
    /// What this grant covers: `object` (also when omitted, as from an older server) or
    /// `subtree`.
    #[serde(default)]
    pub scope: LockScope,
    /// This grant's fence.
    pub fence: u64,
    /// Time left on this lease in milliseconds, when the server answered.
    pub ttl_ms: u64,
    /// When this grant was made, by the backend's clock.
    #[serde(default, with = "crate::rfc3339")]
    pub acquired_at: Option<SystemTime>,
    /// When this lease runs out unless renewed, by the backend's clock.
    #[serde(default, with = "crate::rfc3339")]
    pub expires_at: Option<SystemTime>,
}

/// The lock-delay in force on an object ([`LockBody::delay`]): nothing conflicting with the
/// expired lease it describes is granted before `until`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DelayBody {
    /// Who held the lease that expired.
    pub owner: String,
    /// That lease's fence.
    pub fence: u64,
    /// That lease's mode: an expired shared lease delays exclusive requests only.
    #[serde(default)]
    pub mode: LockMode,
    /// That lease's scope: an expired subtree lease delays its whole subtree.
    #[serde(default)]
    pub scope: LockScope,
    /// When the delay ends, by the backend's clock.
    #[serde(default, with = "crate::rfc3339")]
    pub until: Option<SystemTime>,
    /// Milliseconds left on the delay when the server answered.
    pub remaining_ms: u64,
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
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A name in a server's answer that lockcore refuses: the server misbehaves.
fn answered_name<T>(id: Result<T, LockError>) -> Result<T, LockError> {
    id.map_err(|e| LockError::Internal(format!("lockd answered with an invalid name: {e}")))
}

/// A token in a server's answer that lockcore cannot read: the server misbehaves.
fn answered_token(token: &str) -> Result<LockToken, LockError> {
    LockToken::parse(token)
        .map_err(|e| LockError::Internal(format!("lockd answered with a malformed token: {e}")))
}

/// Whole milliseconds of `d`, rounded up (so a sub-millisecond lock-delay is not lost).
fn ceil_millis(d: Duration) -> u64 {
    let whole = millis(d);
    if Duration::from_millis(whole) < d {
        whole.saturating_add(1)
    } else {
        whole
    }
}

/// The scope `object` was asked in by `request` (object when the request does not name it).
fn scope_asked(request: &lockcore::AcquireRequest, object: &ObjectId) -> LockScope {
    request
        .objects
        .iter()
        .find(|spec| spec.object == *object)
        .map_or(LockScope::Object, |spec| spec.scope)
}

/// A lease without its scope (renew and downgrade answers): `lockcore`'s [`Lease`] does not
/// carry one. An acquire's answer uses [`LeaseBody::granted`].
impl From<&Lease> for LeaseBody {
    fn from(lease: &Lease) -> Self {
        Self {
            object: lease.object.to_string(),
            owner: lease.owner.to_string(),
            mode: lease.mode,
            token: lease.token.expose().to_owned(),
            fence: lease.fence.get(),
            ttl_ms: millis(lease.ttl),
            scope: None,
        }
    }
}

impl LeaseBody {
    /// The answer to the one-object acquire `request` that was granted `lease`: the lease with
    /// the scope the request asked for.
    pub fn granted(request: &lockcore::AcquireRequest, lease: &Lease) -> Self {
        Self {
            scope: Some(scope_asked(request, &lease.object)),
            ..Self::from(lease)
        }
    }

    /// The lease this body describes; a malformed name or token is [`LockError::Internal`].
    pub fn into_lease(self) -> Result<Lease, LockError> {
        Ok(Lease {
            object: answered_name(ObjectId::new(&self.object))?,
            owner: answered_name(OwnerId::new(&self.owner))?,
            mode: self.mode,
            token: answered_token(&self.token)?,
            fence: Fence(self.fence),
            ttl: Duration::from_millis(self.ttl_ms),
        })
    }
}

impl GrantBody {
    /// The answer to the several-object acquire `request` that was granted `grant`: each lock
    /// with the scope the request asked for it (lockcore's [`Lease`] carries none).
    pub fn granted(request: &lockcore::AcquireRequest, grant: &Grant) -> Self {
        Self {
            owner: grant.owner.to_string(),
            ttl_ms: millis(grant.ttl),
            locks: grant
                .leases
                .iter()
                .map(|lease| GrantedLock {
                    object: lease.object.to_string(),
                    mode: lease.mode,
                    token: lease.token.expose().to_owned(),
                    fence: lease.fence.get(),
                    scope: scope_asked(request, &lease.object),
                })
                .collect(),
        }
    }

    /// The grant this body describes, each lease with the body's TTL; a malformed name or
    /// token, or no lock at all, is [`LockError::Internal`].
    pub fn into_grant(self) -> Result<Grant, LockError> {
        let owner = answered_name(OwnerId::new(&self.owner))?;
        let ttl = Duration::from_millis(self.ttl_ms);
        if self.locks.is_empty() {
            return Err(LockError::Internal(
                "lockd answered a grant of no lock".into(),
            ));
        }
        let leases = self
            .locks
            .into_iter()
            .map(|lock| {
                Ok(Lease {
                    object: answered_name(ObjectId::new(&lock.object))?,
                    owner: owner.clone(),
                    mode: lock.mode,
                    token: answered_token(&lock.token)?,
                    fence: Fence(lock.fence),
                    ttl,
                })
            })
            .collect::<Result<_, LockError>>()?;
        Ok(Grant { owner, ttl, leases })
    }
}

impl From<&Lease> for LockBody {
    fn from(lease: &Lease) -> Self {
        Self {
            object: lease.object.to_string(),
            owner: lease.owner.to_string(),
            mode: lease.mode,
            fence: lease.fence.get(),
            ttl_ms: millis(lease.ttl),
            acquired_at: None,
            expires_at: None,
            holders: Vec::new(),
            waiters: None,
            delay: None,
        }
    }
}

impl From<&HolderInfo> for HolderBody {
    fn from(holder: &HolderInfo) -> Self {
        Self {
            owner: holder.owner.to_string(),
            scope: holder.scope,
            fence: holder.fence.get(),
            ttl_ms: millis(holder.ttl),
            acquired_at: Some(holder.acquired_at),
            expires_at: Some(holder.expires_at),
        }
    }
}

impl From<&LockInfo> for LockBody {
    fn from(info: &LockInfo) -> Self {
        Self {
            object: info.object.to_string(),
            owner: info.owner.to_string(),
            mode: info.mode,
            fence: info.fence.get(),
            ttl_ms: millis(info.ttl),
            acquired_at: Some(info.acquired_at),
            expires_at: Some(info.expires_at),
            holders: info.holders.iter().map(HolderBody::from).collect(),
            waiters: Some(info.waiters),
            delay: info.delay.as_ref().map(DelayBody::from),
        }
    }
}

impl From<&LockDelayInfo> for DelayBody {
    fn from(delay: &LockDelayInfo) -> Self {
        Self {
            owner: delay.owner.to_string(),
            fence: delay.fence.get(),
            mode: delay.mode,
            scope: delay.scope,
            until: Some(delay.until),
            remaining_ms: millis(delay.remaining),
        }
    }
}

impl DelayBody {
    /// The lock-delay this body describes; a missing `until` is derived from `now` and
    /// `remaining_ms`.
    fn into_delay(self, now: SystemTime) -> Result<LockDelayInfo, LockError> {
        let remaining = Duration::from_millis(self.remaining_ms);
        Ok(LockDelayInfo {
            owner: answered_name(OwnerId::new(&self.owner))?,
            fence: Fence(self.fence),
            mode: self.mode,
            scope: self.scope,
            until: self.until.unwrap_or(now + remaining),
            remaining,
        })
    }
}

impl HolderBody {
    /// The holder this body describes; missing times are derived from `now` and the TTL.
    fn into_holder(self, now: SystemTime) -> Result<HolderInfo, LockError> {
        let ttl = Duration::from_millis(self.ttl_ms);
        Ok(HolderInfo {
            owner: answered_name(OwnerId::new(&self.owner))?,
            fence: Fence(self.fence),
            acquired_at: self.acquired_at.unwrap_or(now),
            expires_at: self.expires_at.unwrap_or_else(|| now + ttl),
            ttl,
            scope: self.scope,
        })
    }
}

impl LockBody {
    /// The lease this validate answer confirms, with the `token` the caller presented.
    pub fn into_lease(self, token: &LockToken) -> Result<Lease, LockError> {
        Ok(Lease {
            object: answered_name(ObjectId::new(&self.object))?,
            owner: answered_name(OwnerId::new(&self.owner))?,
            mode: self.mode,
            token: token.clone(),
            fence: Fence(self.fence),
            ttl: Duration::from_millis(self.ttl_ms),
        })
    }

    /// The lock this inspect or list answer describes. Missing times are derived from the
    /// reader's clock: `acquired_at` as now, `expires_at` as now + `ttl_ms`; missing `waiters`
    /// as 0. Missing `holders` are read as the one top-level holder only from an older server,
    /// one that sends neither `waiters` nor `delay`: a newer one lists every holder, none when
    /// the object only has a lock-delay in force or requests waiting for it.
    pub fn into_info(self) -> Result<LockInfo, LockError> {
        let now = SystemTime::now();
        let top = HolderBody {
            owner: self.owner,
            scope: LockScope::Object,
            fence: self.fence,
            ttl_ms: self.ttl_ms,
            acquired_at: self.acquired_at,
            expires_at: self.expires_at,
        }
        .into_holder(now)?;
        let mut holders = self
            .holders
            .into_iter()
            .map(|holder| holder.into_holder(now))
            .collect::<Result<Vec<_>, LockError>>()?;
        let delay = self.delay.map(|delay| delay.into_delay(now)).transpose()?;
        let older_server = self.waiters.is_none() && delay.is_none();
        if holders.is_empty() && older_server {
            holders.push(top.clone());
        }
        holders.sort_by_key(|holder| holder.fence);
        Ok(LockInfo {
            object: answered_name(ObjectId::new(&self.object))?,
            mode: self.mode,
            owner: top.owner,
            fence: top.fence,
            acquired_at: top.acquired_at,
            expires_at: top.expires_at,
            ttl: top.ttl,
            holders,
            delay,
            waiters: self.waiters.unwrap_or(0),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use lockcore::TokenIssuer;
    use serde_json::json;

    use super::*;

    fn token(object: &ObjectId, fence: u64) -> LockToken {
        let issuer = TokenIssuer::random();
        issuer.seal(issuer.prepare(), object, Fence(fence))
    }

    /// An acquire request omits an absent request id and mode, and defaults an absent wait to
    /// zero: a one-object exclusive request is written exactly as before modes existed.
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

    /// A one-object body carries its mode next to `object`; several objects travel as
    /// `objects`, each with its mode, and both read back as lockcore requests in order.
    #[test]
    fn acquire_bodies_carry_modes_and_several_objects() {
        let object = |name| ObjectId::new(name).unwrap();
        let owner = OwnerId::new("o").unwrap();
        let shared =
            lockcore::AcquireRequest::new(object("a"), owner.clone(), Duration::from_secs(1))
                .with_mode(LockMode::Shared);
        let body = AcquireRequest::of(&shared, 1000, 0);
        assert_eq!(
            serde_json::to_value(&body).unwrap(),
            json!({"object": "a", "mode": "shared", "owner": "o", "ttl_ms": 1000, "wait_ms": 0})
        );
        assert_eq!(body.to_request().unwrap(), shared);

        let many = lockcore::AcquireRequest::many(
            vec![
                LockSpec::exclusive(object("b")),
                LockSpec::shared(object("a")),
            ],
            owner,
            Duration::from_secs(2),
        )
        .with_wait(Duration::from_millis(30))
        .with_request_id(RequestId::new("request-00000001").unwrap());
        let body = AcquireRequest::of(&many, 2000, 30);
        assert!(body.is_many());
        assert_eq!(
            serde_json::to_value(&body).unwrap(),
            json!({"objects": [{"object": "b", "mode": "exclusive"}, {"object": "a", "mode": "shared"}],
                   "owner": "o", "ttl_ms": 2000, "wait_ms": 30, "request_id": "request-00000001"})
        );
        assert_eq!(body.to_request().unwrap(), many);
        let read: AcquireRequest = serde_json::from_str(
            r#"{"objects":[{"object":"x"},{"object":"y","mode":"shared"}],"owner":"o","ttl_ms":5}"#,
        )
        .unwrap();
        let request = read.to_request().unwrap();
        assert_eq!(
            request.objects.iter().map(|s| s.mode).collect::<Vec<_>>(),
            vec![LockMode::Exclusive, LockMode::Shared]
        );
    }

    /// A body naming both or neither of `object` and `objects`, or a mode beside `objects`,
    /// is an invalid argument naming the field at fault; an unknown mode does not deserialize.
    #[test]
    fn acquire_bodies_name_one_form() {
        let field = |json: &str| match serde_json::from_str::<AcquireRequest>(json)
            .unwrap()
            .to_request()
        {
            Err(LockError::InvalidArgument { field, .. }) => field,
            other => panic!("{json}: {other:?}"),
        };
        assert_eq!(field(r#"{"owner":"o","ttl_ms":5}"#), "object");
        assert_eq!(
            field(r#"{"object":"a","objects":[{"object":"b"}],"owner":"o","ttl_ms":5}"#),
            "objects"
        );
        assert_eq!(
            field(r#"{"objects":[{"object":"b"}],"mode":"shared","owner":"o","ttl_ms":5}"#),
            "mode"
        );
        assert_eq!(field(r#"{"object":"","owner":"o","ttl_ms":5}"#), "object");
        assert!(serde_json::from_str::<AcquireRequest>(
            r#"{"object":"a","mode":"read","owner":"o","ttl_ms":5}"#
        )
        .is_err());
    }

    /// A subtree and a lock-delay travel next to `object`, or per entry of `objects` for the
    /// scope; the object scope and a zero lock-delay are left out, so such a request is written
    /// as before scopes and lock-delays existed.
    #[test]
    fn acquire_bodies_carry_scopes_and_lock_delays() {
        let object = |name| ObjectId::new(name).unwrap();
        let owner = OwnerId::new("o").unwrap();
        let rename_dir =
            lockcore::AcquireRequest::new(object("/vol/a"), owner.clone(), Duration::from_secs(1))
                .with_scope(LockScope::Subtree)
                .with_lock_delay(Duration::from_millis(1500));
        let body = AcquireRequest::of(&rename_dir, 1000, 0);
        assert_eq!(
            serde_json::to_value(&body).unwrap(),
            json!({"object": "/vol/a", "scope": "subtree", "owner": "o", "ttl_ms": 1000,
                   "wait_ms": 0, "lock_delay_ms": 1500})
        );
        assert_eq!(body.to_request().unwrap(), rename_dir);

        let rename = lockcore::AcquireRequest::many(
            vec![
                LockSpec::subtree(object("/vol/a"), LockMode::Exclusive),
                LockSpec::exclusive(object("/vol/b/new")),
            ],
            owner.clone(),
            Duration::from_secs(1),
        );
        let body = AcquireRequest::of(&rename, 1000, 0);
        assert_eq!(
            serde_json::to_value(&body).unwrap()["objects"],
            json!([{"object": "/vol/a", "mode": "exclusive", "scope": "subtree"},
                   {"object": "/vol/b/new", "mode": "exclusive"}])
        );
        assert!(serde_json::to_value(&body)
            .unwrap()
            .get("lock_delay_ms")
            .is_none());
        assert_eq!(body.to_request().unwrap(), rename);

        let plain = AcquireRequest::of(
            &lockcore::AcquireRequest::new(object("a"), owner, Duration::from_secs(1)),
            1000,
            0,
        );
        assert_eq!(
            serde_json::to_value(&plain).unwrap(),
            json!({"object": "a", "owner": "o", "ttl_ms": 1000, "wait_ms": 0})
        );
    }

    /// A body without `lock_delay_ms` takes the default the server passes; one with it keeps
    /// its own, zero included.
    #[test]
    fn an_omitted_lock_delay_is_the_servers_default() {
        let default = Duration::from_secs(3);
        let omitted = AcquireRequest::new("a", "o", 1000);
        assert_eq!(
            omitted.to_request_with_default(default).unwrap().lock_delay,
            default
        );
        assert_eq!(omitted.to_request().unwrap().lock_delay, Duration::ZERO);
        for (given, expected) in [(0, Duration::ZERO), (250, Duration::from_millis(250))] {
            let body = AcquireRequest {
                lock_delay_ms: Some(given),
                ..AcquireRequest::new("a", "o", 1000)
            };
            assert_eq!(
                body.to_request_with_default(default).unwrap().lock_delay,
                expected
            );
        }
    }

    /// A scope beside `objects` is refused naming `scope`, and an unknown scope does not
    /// deserialize (the server answers it as `invalid_argument` on `scope`).
    #[test]
    fn scopes_go_with_their_object() {
        let read = |json: &str| serde_json::from_str::<AcquireRequest>(json);
        let beside =
            read(r#"{"objects":[{"object":"b"}],"scope":"subtree","owner":"o","ttl_ms":5}"#)
                .unwrap()
                .to_request();
        assert!(
            matches!(
                beside,
                Err(LockError::InvalidArgument { field: "scope", .. })
            ),
            "{beside:?}"
        );
        assert!(read(r#"{"object":"a","scope":"tree","owner":"o","ttl_ms":5}"#).is_err());
        assert!(
            read(r#"{"objects":[{"object":"a","scope":"dir"}],"owner":"o","ttl_ms":5}"#).is_err()
        );
        let request = read(
            r#"{"objects":[{"object":"/v/a","scope":"subtree"},{"object":"/v/b","scope":"object"}],"owner":"o","ttl_ms":5}"#,
        )
        .unwrap()
        .to_request()
        .unwrap();
        let scopes: Vec<LockScope> = request.objects.iter().map(|s| s.scope).collect();
        assert_eq!(scopes, [LockScope::Subtree, LockScope::Object]);
    }

    /// An acquire's answer carries the scope each lease was asked in; a renew's answer, which
    /// lockcore's lease cannot tell, leaves it out.
    #[test]
    fn granted_leases_carry_their_scope() {
        let a = ObjectId::new("/vol/a").unwrap();
        let lease = Lease {
            object: a.clone(),
            owner: OwnerId::new("o").unwrap(),
            mode: LockMode::Exclusive,
            token: token(&a, 3),
            fence: Fence(3),
            ttl: Duration::from_secs(1),
        };
        let request = lockcore::AcquireRequest::new(a, lease.owner.clone(), Duration::from_secs(1))
            .with_scope(LockScope::Subtree);
        let json = serde_json::to_value(LeaseBody::granted(&request, &lease)).unwrap();
        assert_eq!(json["scope"], "subtree");
        let back: LeaseBody = serde_json::from_value(json).unwrap();
        assert_eq!(back.into_lease().unwrap(), lease);
        let renewed = serde_json::to_value(LeaseBody::from(&lease)).unwrap();
        assert!(renewed.get("scope").is_none(), "{renewed}");
    }

    /// Inspect answers carry the waiters, each holder's scope and a lock-delay in force, and
    /// read back to the same description, an object with only a delay included (no holder is
    /// invented for it).
    #[test]
    fn waiters_scopes_and_delays_round_trip() {
        let at = UNIX_EPOCH + Duration::from_secs(1_767_225_600);
        let object = ObjectId::new("/vol/a").unwrap();
        let delay = LockDelayInfo {
            owner: OwnerId::new("gone").unwrap(),
            fence: Fence(4),
            mode: LockMode::Exclusive,
            scope: LockScope::Subtree,
            until: at + Duration::from_millis(2500),
            remaining: Duration::from_millis(1200),
        };
        let delayed = LockInfo::delayed(object.clone(), delay.clone(), at).with_waiters(2);
        let json = serde_json::to_value(LockBody::from(&delayed)).unwrap();
        assert_eq!(json["waiters"], 2);
        assert!(json.get("holders").is_none(), "{json}");
        assert_eq!(
            json["delay"],
            json!({"owner": "gone", "fence": 4, "mode": "exclusive", "scope": "subtree",
                   "until": "2026-01-01T00:00:02.500Z", "remaining_ms": 1200})
        );
        let back: LockBody = serde_json::from_value(json).unwrap();
        assert_eq!(back.into_info().unwrap(), delayed);

        let holder = HolderInfo {
            owner: OwnerId::new("r1").unwrap(),
            scope: LockScope::Subtree,
            fence: Fence(9),
            acquired_at: at,
            expires_at: at + Duration::from_secs(9),
            ttl: Duration::from_secs(9),
        };
        let held = LockInfo::from_holders(object, LockMode::Shared, vec![holder])
            .unwrap()
            .with_waiters(1)
            .with_delay(Some(LockDelayInfo {
                mode: LockMode::Shared,
                ..delay
            }));
        let json = serde_json::to_value(LockBody::from(&held)).unwrap();
        assert_eq!(json["holders"][0]["scope"], "subtree");
        let back: LockBody = serde_json::from_value(json).unwrap();
        assert_eq!(back.into_info().unwrap(), held);
    }

    /// Release and renew bodies name one lock or several, never both or neither.
    #[test]
    fn release_and_renew_bodies_name_one_lock_or_several() {
        let a = ObjectId::new("a").unwrap();
        let t = token(&a, 3);
        let one = ReleaseRequest::one(&a, &t);
        assert_eq!(
            serde_json::to_value(&one).unwrap(),
            json!({"object": "a", "token": t.expose()})
        );
        assert_eq!(one.named().unwrap(), Named::One(TokenRequest::new(&a, &t)));
        let several = RenewRequest::many(&[(a.clone(), t.clone())], 500);
        assert_eq!(
            serde_json::to_value(&several).unwrap(),
            json!({"locks": [{"object": "a", "token": t.expose()}], "ttl_ms": 500})
        );
        assert_eq!(
            several.named().unwrap(),
            Named::Several(vec![TokenRequest::new(&a, &t)])
        );
        let field = |json: &str| match serde_json::from_str::<ReleaseRequest>(json)
            .unwrap()
            .named()
        {
            Err(LockError::InvalidArgument { field, .. }) => field,
            other => panic!("{json}: {other:?}"),
        };
        assert_eq!(field("{}"), "object");
        assert_eq!(field(r#"{"object":"a"}"#), "token");
        assert_eq!(field(r#"{"object":"a","token":"t","locks":[]}"#), "locks");
    }

    /// A several-object grant lists its locks in order and reads back as a grant.
    #[test]
    fn grants_round_trip() {
        let (a, b) = (ObjectId::new("a").unwrap(), ObjectId::new("b").unwrap());
        let owner = OwnerId::new("o").unwrap();
        let lease = |object: &ObjectId, mode, fence| Lease {
            object: object.clone(),
            owner: owner.clone(),
            mode,
            token: token(object, fence),
            fence: Fence(fence),
            ttl: Duration::from_secs(2),
        };
        let grant = Grant {
            owner: owner.clone(),
            ttl: Duration::from_secs(2),
            leases: vec![
                lease(&b, LockMode::Exclusive, 7),
                lease(&a, LockMode::Shared, 4),
            ],
        };
        let request = lockcore::AcquireRequest::many(
            vec![
                LockSpec::subtree(b.clone(), LockMode::Exclusive),
                LockSpec::shared(a.clone()),
            ],
            owner.clone(),
            Duration::from_secs(2),
        );
        let body = GrantBody::granted(&request, &grant);
        let json = serde_json::to_value(&body).unwrap();
        assert_eq!(json["locks"][0]["scope"], "subtree");
        assert_eq!(json["locks"][1]["scope"], "object");
        assert_eq!(json["owner"], "o");
        assert_eq!(json["ttl_ms"], 2000);
        assert_eq!(json["locks"][0]["object"], "b");
        assert_eq!(json["locks"][1]["mode"], "shared");
        assert_eq!(json["locks"][1]["fence"], 4);
        let back: GrantBody = serde_json::from_value(json).unwrap();
        assert_eq!(back.into_grant().unwrap(), grant);
    }

    /// Several-lock answers hold one entry per lock: the body of a success or a refusal with
    /// its code, told apart by `error`.
    #[test]
    fn results_entries_are_successes_or_refusals() {
        let results: ResultsBody<ReleaseBody> = ResultsBody {
            results: vec![
                EntryResult::Done(ReleaseBody {
                    object: "a".into(),
                    fence: 3,
                }),
                EntryResult::failed(
                    "b",
                    &LockError::NotHeld {
                        object: ObjectId::new("b").unwrap(),
                    },
                ),
            ],
        };
        let json = serde_json::to_value(&results).unwrap();
        assert_eq!(json["results"][0], json!({"object": "a", "fence": 3}));
        assert_eq!(json["results"][1]["object"], "b");
        assert_eq!(json["results"][1]["error"]["code"], "not_held");
        assert!(json["results"][1].get("fence").is_none());
        let back: ResultsBody<ReleaseBody> = serde_json::from_value(json).unwrap();
        assert_eq!(back, results);
    }

    /// Lock times are written as RFC 3339 with milliseconds and read back to the millisecond.
    #[test]
    fn lock_times_round_trip_as_rfc3339() {
        let body = LockBody {
            object: "a".into(),
            owner: "o".into(),
            mode: LockMode::Exclusive,
            fence: 7,
            ttl_ms: 5000,
            acquired_at: Some(UNIX_EPOCH + Duration::from_millis(1_767_225_600_123)),
            expires_at: None,
            holders: Vec::new(),
            waiters: None,
            delay: None,
        };
        let json = serde_json::to_value(&body).unwrap();
        assert_eq!(json["acquired_at"], "2026-01-01T00:00:00.123Z");
        assert_eq!(json["mode"], "exclusive");
        assert!(json.get("expires_at").is_none(), "{json}");
        assert!(json.get("holders").is_none(), "{json}");
        assert!(json.get("waiters").is_none(), "{json}");
        assert!(json.get("delay").is_none(), "{json}");
        let back: LockBody = serde_json::from_value(json).unwrap();
        assert_eq!(back, body);
    }

    /// An inspect answer lists every holder, without tokens, the top level describing the
    /// holder with the highest fence.
    #[test]
    fn shared_locks_list_their_holders() {
        let at = UNIX_EPOCH + Duration::from_secs(1_767_225_600);
        let holder = |owner: &str, fence| HolderInfo {
            owner: OwnerId::new(owner).unwrap(),
            fence: Fence(fence),
            acquired_at: at,
            expires_at: at + Duration::from_secs(fence),
            ttl: Duration::from_secs(fence),
            scope: lockcore::LockScope::Object,
        };
        let info = LockInfo::from_holders(
            ObjectId::new("a").unwrap(),
            LockMode::Shared,
            vec![holder("r2", 9), holder("r1", 5)],
        )
        .unwrap();
        let json = serde_json::to_value(LockBody::from(&info)).unwrap();
        assert_eq!(json["mode"], "shared");
        assert_eq!(json["owner"], "r2");
        assert_eq!(json["fence"], 9);
        assert_eq!(json["holders"].as_array().unwrap().len(), 2);
        assert_eq!(json["waiters"], 0);
        assert_eq!(
            json["holders"][0],
            json!({"owner": "r1", "scope": "object", "fence": 5, "ttl_ms": 5000,
                   "acquired_at": "2026-01-01T00:00:00.000Z",
                   "expires_at": "2026-01-01T00:00:05.000Z"})
        );
        assert!(!json.to_string().contains("token"));
        let back: LockBody = serde_json::from_value(json).unwrap();
        assert_eq!(back.into_info().unwrap(), info);
    }

    /// Times missing from a lock body are derived from the reader's clock and the TTL, and a
    /// body without holders from an older server (no `waiters`, no `delay`) has its one
    /// top-level holder; a newer server's body without holders has none (only waiters).
    #[test]
    fn missing_lock_times_are_derived_from_the_ttl() {
        let before = SystemTime::now();
        let body: LockBody =
            serde_json::from_str(r#"{"object":"a","owner":"o","fence":7,"ttl_ms":5000}"#).unwrap();
        let info = body.into_info().unwrap();
        assert_eq!(info.fence, Fence(7));
        assert_eq!(info.mode, LockMode::Exclusive);
        assert_eq!(info.holders.len(), 1);
        assert_eq!(info.holders[0].fence, Fence(7));
        assert!(info.acquired_at >= before);
        assert!(info.expires_at >= before + Duration::from_secs(5));
        assert!(info.expires_at <= SystemTime::now() + Duration::from_secs(5));

        let only_waiters: LockBody =
            serde_json::from_str(r#"{"object":"a","owner":"w","fence":0,"ttl_ms":0,"waiters":1}"#)
                .unwrap();
        let info = only_waiters.into_info().unwrap();
        assert!(info.holders.is_empty(), "{info:?}");
        assert_eq!(info.waiters, 1);
    }

    /// A lease body with a malformed token or name is the server's fault: `Internal`.
    #[test]
    fn malformed_answers_are_internal() {
        let body = LeaseBody {
            object: "a".into(),
            owner: "o".into(),
            mode: LockMode::Exclusive,
            token: "nope".into(),
            fence: 1,
            ttl_ms: 10,
            scope: None,
        };
        assert!(matches!(body.into_lease(), Err(LockError::Internal(_))));
        let body = LockBody {
            object: String::new(),
            owner: "o".into(),
            mode: LockMode::Exclusive,
            fence: 1,
            ttl_ms: 10,
            acquired_at: None,
            expires_at: None,
            holders: Vec::new(),
            waiters: None,
            delay: None,
        };
        assert!(matches!(body.into_info(), Err(LockError::Internal(_))));
        let empty = GrantBody {
            owner: "o".into(),
            ttl_ms: 1,
            locks: Vec::new(),
        };
        assert!(matches!(empty.into_grant(), Err(LockError::Internal(_))));
    }

    /// A lease body without a mode (an older server) reads as exclusive.
    #[test]
    fn a_lease_without_a_mode_is_exclusive() {
        let a = ObjectId::new("a").unwrap();
        let t = token(&a, 2);
        let body: LeaseBody = serde_json::from_value(
            json!({"object": "a", "owner": "o", "token": t.expose(), "fence": 2, "ttl_ms": 10}),
        )
        .unwrap();
        assert_eq!(body.into_lease().unwrap().mode, LockMode::Exclusive);
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
