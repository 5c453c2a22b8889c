//! Conversions between the proto messages and lockcore's types, for both sides.
//!
//! The server reads requests with lockcore's parsers, so a bad name or token is refused naming
//! the argument (`invalid_argument` with `field`), as on HTTP. The client reads answers the
//! same way, and treats a malformed answer as the server's fault ([`LockError::Internal`]).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lockcore::{
    ConflictCause, Fence, Grant, HolderInfo, Lease, LockDelayInfo, LockError, LockInfo, LockMode,
    LockScope, LockSpec, LockToken, ObjectId, OwnerId, RequestId,
};

use crate::pb;
use crate::status::millis;

/// The proto value of a mode.
pub fn mode_to_pb(mode: LockMode) -> pb::LockMode {
    match mode {
        LockMode::Exclusive => pb::LockMode::Exclusive,
        LockMode::Shared => pb::LockMode::Shared,
    }
}

/// The mode a request's raw enum value asks for: unspecified is exclusive; an unknown value
/// is [`LockError::InvalidArgument`] on `mode`.
pub fn mode_from_pb(raw: i32) -> Result<LockMode, LockError> {
    match pb::LockMode::try_from(raw) {
        Ok(pb::LockMode::Unspecified | pb::LockMode::Exclusive) => Ok(LockMode::Exclusive),
        Ok(pb::LockMode::Shared) => Ok(LockMode::Shared),
        Err(_) => Err(LockError::invalid_argument(
            "mode",
            "must be LOCK_MODE_EXCLUSIVE or LOCK_MODE_SHARED",
        )),
    }
}

/// The proto value of a scope.
pub fn scope_to_pb(scope: LockScope) -> pb::LockScope {
    match scope {
        LockScope::Object => pb::LockScope::Object,
        LockScope::Subtree => pb::LockScope::Subtree,
    }
}

/// The scope a request's raw enum value asks for: unspecified is the object alone; an unknown
/// value is [`LockError::InvalidArgument`] on `scope`.
pub fn scope_from_pb(raw: i32) -> Result<LockScope, LockError> {
    match pb::LockScope::try_from(raw) {
        Ok(pb::LockScope::Unspecified | pb::LockScope::Object) => Ok(LockScope::Object),
        Ok(pb::LockScope::Subtree) => Ok(LockScope::Subtree),
        Err(_) => Err(LockError::invalid_argument(
            "scope",
            "must be LOCK_SCOPE_OBJECT or LOCK_SCOPE_SUBTREE",
        )),
    }
}

/// The proto value of a conflict's cause.
pub fn cause_to_pb(cause: ConflictCause) -> pb::ConflictCause {
    match cause {
        ConflictCause::Held => pb::ConflictCause::Held,
        ConflictCause::Queued => pb::ConflictCause::Queued,
        ConflictCause::LockDelay => pb::ConflictCause::LockDelay,
    }
}

/// The cause a conflict's raw enum value names: unspecified (an older server) and values this
/// version does not know (a newer one) read as held, as [`ConflictCause::from_wire`] does.
pub fn cause_from_pb(raw: i32) -> ConflictCause {
    match pb::ConflictCause::try_from(raw) {
        Ok(pb::ConflictCause::Queued) => ConflictCause::Queued,
        Ok(pb::ConflictCause::LockDelay) => ConflictCause::LockDelay,
        _ => ConflictCause::Held,
    }
}

/// A protobuf timestamp of a system time (times before 1970 are clamped to it).
pub fn timestamp(time: SystemTime) -> prost_types::Timestamp {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(since.subsec_nanos()).unwrap_or(0),
    }
}

/// The system time of a protobuf timestamp, if it is a valid one after 1970.
pub fn system_time(timestamp: &prost_types::Timestamp) -> Option<SystemTime> {
    let seconds = u64::try_from(timestamp.seconds).ok()?;
    let nanos = u32::try_from(timestamp.nanos)
        .ok()
        .filter(|n| *n < 1_000_000_000)?;
    UNIX_EPOCH.checked_add(Duration::new(seconds, nanos))
}

/// The proto kind of an event kind named as lockd's event log and HTTP API name it (`grant`,
/// `release`, `renew`, `downgrade`, `expiry`, `release_refused`, `wanted`); unspecified for any
/// other name.
pub fn event_kind(name: &str) -> pb::EventKind {
    match name {
        "grant" => pb::EventKind::Grant,
        "release" => pb::EventKind::Release,
        "renew" => pb::EventKind::Renew,
        "downgrade" => pb::EventKind::Downgrade,
        "expiry" => pb::EventKind::Expiry,
        "release_refused" => pb::EventKind::ReleaseRefused,
        "wanted" => pb::EventKind::Wanted,
        _ => pb::EventKind::Unspecified,
    }
}

/// The name lockd's HTTP API gives a proto event kind's raw value (the reverse of
/// [`event_kind`]); `None` for unspecified and for values this version does not know.
pub fn event_kind_name(raw: i32) -> Option<&'static str> {
    match pb::EventKind::try_from(raw).ok()? {
        pb::EventKind::Unspecified => None,
        pb::EventKind::Grant => Some("grant"),
        pb::EventKind::Release => Some("release"),
        pb::EventKind::Renew => Some("renew"),
        pb::EventKind::Downgrade => Some("downgrade"),
        pb::EventKind::Expiry => Some("expiry"),
        pb::EventKind::ReleaseRefused => Some("release_refused"),
        pb::EventKind::Wanted => Some("wanted"),
    }
}

/// The names of the kinds an `Events` request's `kinds` filter selects; an unspecified or
/// unknown value is [`LockError::InvalidArgument`] on `kind`, as an unknown `kind=` is on HTTP.
pub fn event_kinds_from_pb(raw: &[i32]) -> Result<Vec<&'static str>, LockError> {
    raw.iter()
        .map(|&value| {
            event_kind_name(value).ok_or_else(|| {
                LockError::invalid_argument(
                    "kind",
                    format!("{value} is not an event kind this server knows"),
                )
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Server side: requests in, answers out.

/// The lockcore request an [`pb::AcquireRequest`] asks for, with the lock-delay
/// `default_lock_delay` when the message has no `lock_delay_ms` (a server passes its
/// `--default-lock-delay`). Refuses a request naming both or neither of `object` and
/// `objects`, a `mode` or `scope` beside `objects`, an unknown mode or scope, and any name
/// lockcore refuses, as [`LockError::InvalidArgument`]; limits (lock-delay included) are the
/// lock service's to check.
pub fn acquire_request(
    request: &pb::AcquireRequest,
    default_lock_delay: Duration,
) -> Result<lockcore::AcquireRequest, LockError> {
    let specs = match (request.object.is_empty(), request.objects.is_empty()) {
        (false, true) => {
            vec![
                LockSpec::new(ObjectId::new(&request.object)?, mode_from_pb(request.mode)?)
                    .with_scope(scope_from_pb(request.scope)?),
            ]
        }
        (true, false) => {
            if request.mode != pb::LockMode::Unspecified as i32 {
                return Err(LockError::invalid_argument(
                    "mode",
                    "goes with `object`; give each entry of `objects` its own mode",
                ));
            }
            if request.scope != pb::LockScope::Unspecified as i32 {
                return Err(LockError::invalid_argument(
                    "scope",
                    "goes with `object`; give each entry of `objects` its own scope",
                ));
            }
            request
                .objects
                .iter()
                .map(|spec| {
                    Ok(
                        LockSpec::new(ObjectId::new(&spec.object)?, mode_from_pb(spec.mode)?)
                            .with_scope(scope_from_pb(spec.scope)?),
                    )
                })
                .collect::<Result<_, LockError>>()?
        }
        (true, true) => {
            return Err(LockError::invalid_argument(
                "object",
                "missing field `object` (or `objects`)",
            ))
        }
        (false, false) => {
            return Err(LockError::invalid_argument(
                "objects",
                "name either `object` or `objects`, not both",
            ))
        }
    };
    let mut acquire = lockcore::AcquireRequest::many(
        specs,
        OwnerId::new(&request.owner)?,
        Duration::from_millis(request.ttl_ms),
    )
    .with_wait(Duration::from_millis(request.wait_ms))
    .with_lock_delay(
        request
            .lock_delay_ms
            .map_or(default_lock_delay, Duration::from_millis),
    );
    if !request.request_id.is_empty() {
        acquire = acquire.with_request_id(RequestId::new(&request.request_id)?);
    }
    Ok(acquire)
}

/// What a release or renew names: one lock, or several.
#[derive(Debug)]
pub(crate) enum Named<'a> {
    /// `object` and `token`: answered with one lease, or a status.
    One(&'a str, &'a str),
    /// `locks`: answered with one result per lock.
    Several(&'a [pb::LockRef]),
}

/// Which of the two forms a release or renew uses; both or neither is `invalid_argument`.
pub(crate) fn named<'a>(
    object: &'a str,
    token: &'a str,
    locks: &'a [pb::LockRef],
) -> Result<Named<'a>, LockError> {
    match (object.is_empty(), token.is_empty(), locks.is_empty()) {
        (false, false, true) => Ok(Named::One(object, token)),
        (true, true, false) => Ok(Named::Several(locks)),
        (true, _, true) => Err(LockError::invalid_argument(
            "object",
            "missing field `object` (or `locks`)",
        )),
        (false, true, true) => Err(LockError::invalid_argument(
            "token",
            "missing field `token`",
        )),
        (_, _, false) => Err(LockError::invalid_argument(
            "locks",
            "name either `object` and `token`, or `locks`, not both",
        )),
    }
}

/// The proto lease of a lease, without a scope (lockcore's [`Lease`] has none: renew answers
/// leave it unspecified; [`grant_to_pb`] fills it in from the request).
pub fn lease_to_pb(lease: &Lease) -> pb::Lease {
    pb::Lease {
        object: lease.object.to_string(),
        owner: lease.owner.to_string(),
        mode: mode_to_pb(lease.mode) as i32,
        token: lease.token.expose().to_owned(),
        fence: lease.fence.get(),
        ttl_ms: millis(lease.ttl),
        scope: pb::LockScope::Unspecified as i32,
    }
}

/// The proto answer to the acquire `request` that was granted `grant`: each lease with the
/// scope the request asked for it.
pub fn grant_to_pb(request: &lockcore::AcquireRequest, grant: &Grant) -> pb::AcquireResponse {
    let scope_of = |object: &ObjectId| {
        request
            .objects
            .iter()
            .find(|spec| spec.object == *object)
            .map_or(LockScope::Object, |spec| spec.scope)
    };
    pb::AcquireResponse {
        owner: grant.owner.to_string(),
        ttl_ms: millis(grant.ttl),
        locks: grant
            .leases
            .iter()
            .map(|lease| pb::Lease {
                scope: scope_to_pb(scope_of(&lease.object)) as i32,
                ..lease_to_pb(lease)
            })
            .collect(),
    }
}

/// The proto holder of a holder.
pub fn holder_to_pb(holder: &HolderInfo) -> pb::Holder {
    pb::Holder {
        owner: holder.owner.to_string(),
        fence: holder.fence.get(),
        ttl_ms: millis(holder.ttl),
        acquired_at: Some(timestamp(holder.acquired_at)),
        expires_at: Some(timestamp(holder.expires_at)),
        scope: scope_to_pb(holder.scope) as i32,
    }
}

/// The proto lock-delay of a lock-delay in force.
pub fn delay_to_pb(delay: &LockDelayInfo) -> pb::LockDelay {
    pb::LockDelay {
        owner: delay.owner.to_string(),
        fence: delay.fence.get(),
        mode: mode_to_pb(delay.mode) as i32,
        scope: scope_to_pb(delay.scope) as i32,
        until: Some(timestamp(delay.until)),
        remaining_ms: millis(delay.remaining),
    }
}

/// The proto lock of a lock description.
pub fn lock_to_pb(info: &LockInfo) -> pb::Lock {
    pb::Lock {
        object: info.object.to_string(),
        owner: info.owner.to_string(),
        mode: mode_to_pb(info.mode) as i32,
        fence: info.fence.get(),
        ttl_ms: millis(info.ttl),
        acquired_at: Some(timestamp(info.acquired_at)),
        expires_at: Some(timestamp(info.expires_at)),
        holders: info.holders.iter().map(holder_to_pb).collect(),
        waiters: info.waiters,
        delay: info.delay.as_ref().map(delay_to_pb),
    }
}

// ---------------------------------------------------------------------------------------------
// Client side: answers in.

/// A name in a server's answer that lockcore refuses: the server misbehaves.
fn answered_name<T>(id: Result<T, LockError>) -> Result<T, LockError> {
    id.map_err(|e| LockError::Internal(format!("lockd answered with an invalid name: {e}")))
}

/// A mode in a server's answer: unspecified reads as exclusive (an older server).
fn answered_mode(raw: i32) -> Result<LockMode, LockError> {
    mode_from_pb(raw)
        .map_err(|_| LockError::Internal(format!("lockd answered with an unknown mode {raw}")))
}

/// A scope in a server's answer: unspecified reads as the object alone (an older server).
fn answered_scope(raw: i32) -> Result<LockScope, LockError> {
    scope_from_pb(raw)
        .map_err(|_| LockError::Internal(format!("lockd answered with an unknown scope {raw}")))
}

/// A token in a server's answer that lockcore cannot read: the server misbehaves.
fn answered_token(token: &str) -> Result<LockToken, LockError> {
    LockToken::parse(token)
        .map_err(|e| LockError::Internal(format!("lockd answered with a malformed token: {e}")))
}

/// The lease a proto lease describes.
pub fn lease_from_pb(lease: pb::Lease) -> Result<Lease, LockError> {
    Ok(Lease {
        object: answered_name(ObjectId::new(&lease.object))?,
        owner: answered_name(OwnerId::new(&lease.owner))?,
        mode: answered_mode(lease.mode)?,
        token: answered_token(&lease.token)?,
        fence: Fence(lease.fence),
        ttl: Duration::from_millis(lease.ttl_ms),
    })
}

/// The grant an acquire answer describes; no lock at all is [`LockError::Internal`].
pub fn grant_from_pb(answer: pb::AcquireResponse) -> Result<Grant, LockError> {
    if answer.locks.is_empty() {
        return Err(LockError::Internal(
            "lockd answered a grant of no lock".into(),
        ));
    }
    let owner = answered_name(OwnerId::new(&answer.owner))?;
    let ttl = Duration::from_millis(answer.ttl_ms);
    let leases = answer
        .locks
        .into_iter()
        .map(lease_from_pb)
        .collect::<Result<_, _>>()?;
    Ok(Grant { owner, ttl, leases })
}

fn holder_from_pb(holder: pb::Holder, now: SystemTime) -> Result<HolderInfo, LockError> {
    let ttl = Duration::from_millis(holder.ttl_ms);
    Ok(HolderInfo {
        owner: answered_name(OwnerId::new(&holder.owner))?,
        fence: Fence(holder.fence),
        acquired_at: holder
            .acquired_at
            .as_ref()
            .and_then(system_time)
            .unwrap_or(now),
        expires_at: holder
            .expires_at
            .as_ref()
            .and_then(system_time)
            .unwrap_or_else(|| now + ttl),
        ttl,
        scope: answered_scope(holder.scope)?,
    })
}

fn delay_from_pb(delay: pb::LockDelay, now: SystemTime) -> Result<LockDelayInfo, LockError> {
    let remaining = Duration::from_millis(delay.remaining_ms);
    Ok(LockDelayInfo {
        owner: answered_name(OwnerId::new(&delay.owner))?,
        fence: Fence(delay.fence),
        mode: answered_mode(delay.mode)?,
        scope: answered_scope(delay.scope)?,
        until: delay
            .until
            .as_ref()
            .and_then(system_time)
            .unwrap_or(now + remaining),
        remaining,
    })
}

/// The lock a proto lock describes. Missing times are derived from the reader's clock and the
/// TTL. Missing `holders` are read as the one top-level holder only from an older server, one
/// that sends neither `waiters` nor `delay`: a newer one lists every holder, none when the
/// object only has a lock-delay in force or requests waiting for it.
pub fn lock_from_pb(lock: pb::Lock) -> Result<LockInfo, LockError> {
    let now = SystemTime::now();
    let top = holder_from_pb(
        pb::Holder {
            owner: lock.owner,
            fence: lock.fence,
            ttl_ms: lock.ttl_ms,
            acquired_at: lock.acquired_at,
            expires_at: lock.expires_at,
            scope: pb::LockScope::Unspecified as i32,
        },
        now,
    )?;
    let mut holders = lock
        .holders
        .into_iter()
        .map(|holder| holder_from_pb(holder, now))
        .collect::<Result<Vec<_>, _>>()?;
    let delay = lock
        .delay
        .map(|delay| delay_from_pb(delay, now))
        .transpose()?;
    let older_server = lock.waiters == 0 && delay.is_none();
    if holders.is_empty() && older_server {
        holders.push(top.clone());
    }
    holders.sort_by_key(|holder| holder.fence);
    Ok(LockInfo {
        object: answered_name(ObjectId::new(&lock.object))?,
        mode: answered_mode(lock.mode)?,
        owner: top.owner,
        fence: top.fence,
        acquired_at: top.acquired_at,
        expires_at: top.expires_at,
        ttl: top.ttl,
        holders,
        delay,
        waiters: lock.waiters,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(request: pb::AcquireRequest) -> &'static str {
        match acquire_request(&request, Duration::ZERO) {
            Err(LockError::InvalidArgument { field, .. }) => field,
            other => panic!("{request:?}: {other:?}"),
        }
    }

    fn base() -> pb::AcquireRequest {
        pb::AcquireRequest {
            owner: "o".into(),
            ttl_ms: 5,
            ..pb::AcquireRequest::default()
        }
    }

    /// An acquire names `object` or `objects`; a mode beside `objects`, an unknown mode and a
    /// bad name or request id are refused naming the field at fault.
    #[test]
    fn acquire_requests_name_one_form() {
        assert_eq!(field(base()), "object");
        let both = pb::AcquireRequest {
            object: "a".into(),
            objects: vec![pb::ObjectSpec {
                object: "b".into(),
                mode: 0,
                ..pb::ObjectSpec::default()
            }],
            ..base()
        };
        assert_eq!(field(both), "objects");
        let mode_beside_objects = pb::AcquireRequest {
            objects: vec![pb::ObjectSpec {
                object: "b".into(),
                mode: 0,
                ..pb::ObjectSpec::default()
            }],
            mode: pb::LockMode::Shared as i32,
            ..base()
        };
        assert_eq!(field(mode_beside_objects), "mode");
        let unknown_mode = pb::AcquireRequest {
            object: "a".into(),
            mode: 7,
            ..base()
        };
        assert_eq!(field(unknown_mode), "mode");
        let bad_owner = pb::AcquireRequest {
            object: "a".into(),
            owner: "a\nb".into(),
            ..base()
        };
        assert_eq!(field(bad_owner), "owner");
        let short_id = pb::AcquireRequest {
            object: "a".into(),
            request_id: "short".into(),
            ..base()
        };
        assert_eq!(field(short_id), "request_id");
        let good = acquire_request(
            &pb::AcquireRequest {
                objects: vec![
                    pb::ObjectSpec {
                        object: "b".into(),
                        mode: pb::LockMode::Shared as i32,
                        ..pb::ObjectSpec::default()
                    },
                    pb::ObjectSpec {
                        object: "a".into(),
                        mode: 0,
                        ..pb::ObjectSpec::default()
                    },
                ],
                wait_ms: 30,
                ..base()
            },
            Duration::ZERO,
        )
        .expect("valid");
        assert_eq!(good.objects[0].mode, LockMode::Shared);
        assert_eq!(good.objects[1].mode, LockMode::Exclusive);
        assert_eq!(good.wait, Duration::from_millis(30));
    }

    /// A scope goes with its object (unspecified is the object alone), an unknown one or one
    /// beside `objects` is refused naming `scope`, and an absent lock-delay is the default
    /// passed in while a given one, zero included, is kept.
    #[test]
    fn acquire_requests_carry_scopes_and_lock_delays() {
        let subtree = pb::AcquireRequest {
            object: "/vol/a".into(),
            scope: pb::LockScope::Subtree as i32,
            ..base()
        };
        let default = Duration::from_secs(4);
        let read = acquire_request(&subtree, default).expect("valid");
        assert_eq!(read.objects[0].scope, LockScope::Subtree);
        assert_eq!(read.lock_delay, default);
        let explicit = pb::AcquireRequest {
            lock_delay_ms: Some(0),
            ..subtree.clone()
        };
        assert_eq!(
            acquire_request(&explicit, default)
                .expect("valid")
                .lock_delay,
            Duration::ZERO
        );
        let unknown = pb::AcquireRequest {
            scope: 3,
            ..subtree.clone()
        };
        assert_eq!(field(unknown), "scope");
        let beside_objects = pb::AcquireRequest {
            object: String::new(),
            objects: vec![pb::ObjectSpec {
                object: "/vol/b".into(),
                ..pb::ObjectSpec::default()
            }],
            ..subtree
        };
        assert_eq!(field(beside_objects), "scope");
        let per_entry = acquire_request(
            &pb::AcquireRequest {
                objects: vec![
                    pb::ObjectSpec {
                        object: "/vol/a".into(),
                        scope: pb::LockScope::Subtree as i32,
                        ..pb::ObjectSpec::default()
                    },
                    pb::ObjectSpec {
                        object: "/vol/b".into(),
                        scope: pb::LockScope::Object as i32,
                        ..pb::ObjectSpec::default()
                    },
                ],
                ..base()
            },
            Duration::ZERO,
        )
        .expect("valid");
        let scopes: Vec<LockScope> = per_entry.objects.iter().map(|s| s.scope).collect();
        assert_eq!(scopes, [LockScope::Subtree, LockScope::Object]);
    }

    /// A granted lease answers with the scope it was asked in.
    #[test]
    fn grants_answer_with_the_scopes_asked() {
        let issuer = lockcore::TokenIssuer::random();
        let a = ObjectId::new("/vol/a").expect("valid");
        let owner = OwnerId::new("o").expect("valid");
        let request =
            lockcore::AcquireRequest::new(a.clone(), owner.clone(), Duration::from_secs(1))
                .with_scope(LockScope::Subtree);
        let grant = Grant {
            owner: owner.clone(),
            ttl: Duration::from_secs(1),
            leases: vec![Lease {
                object: a.clone(),
                owner,
                mode: LockMode::Exclusive,
                token: issuer.seal(issuer.prepare(), &a, Fence(3)),
                fence: Fence(3),
                ttl: Duration::from_secs(1),
            }],
        };
        let answer = grant_to_pb(&request, &grant);
        assert_eq!(answer.locks[0].scope, pb::LockScope::Subtree as i32);
        assert_eq!(grant_from_pb(answer).expect("valid"), grant);
    }

    /// Locks keep their waiters, holders' scopes and lock-delay through the proto; an object
    /// with only a delay reads back without holders.
    #[test]
    fn locks_round_trip_with_waiters_scopes_and_delays() {
        let at = UNIX_EPOCH + Duration::from_millis(1_767_225_600_123);
        let delay = LockDelayInfo {
            owner: OwnerId::new("gone").expect("valid"),
            fence: Fence(8),
            mode: LockMode::Shared,
            scope: LockScope::Subtree,
            until: at + Duration::from_secs(3),
            remaining: Duration::from_millis(2900),
        };
        let object = ObjectId::new("/vol/a").expect("valid");
        let delayed = LockInfo::delayed(object.clone(), delay.clone(), at).with_waiters(5);
        let message = lock_to_pb(&delayed);
        assert!(message.holders.is_empty());
        assert_eq!(message.waiters, 5);
        assert_eq!(lock_from_pb(message).expect("valid"), delayed);

        let holder = HolderInfo {
            owner: OwnerId::new("h").expect("valid"),
            scope: LockScope::Subtree,
            fence: Fence(9),
            acquired_at: at,
            expires_at: at + Duration::from_secs(9),
            ttl: Duration::from_secs(9),
        };
        let held = LockInfo::from_holders(object, LockMode::Exclusive, vec![holder])
            .expect("one holder")
            .with_waiters(2)
            .with_delay(Some(delay));
        assert_eq!(lock_from_pb(lock_to_pb(&held)).expect("valid"), held);

        let only_waiters = LockInfo {
            holders: Vec::new(),
            delay: None,
            fence: Fence(0),
            ..held
        };
        assert_eq!(
            lock_from_pb(lock_to_pb(&only_waiters)).expect("valid"),
            only_waiters
        );
    }

    #[test]
    fn conflict_causes_map_both_ways_and_unknown_ones_read_as_held() {
        for cause in [
            ConflictCause::Held,
            ConflictCause::Queued,
            ConflictCause::LockDelay,
        ] {
            assert_eq!(cause_from_pb(cause_to_pb(cause) as i32), cause);
        }
        assert_eq!(cause_from_pb(0), ConflictCause::Held);
        assert_eq!(cause_from_pb(42), ConflictCause::Held);
    }

    #[test]
    fn releases_name_one_lock_or_several() {
        let lock = [pb::LockRef {
            object: "a".into(),
            token: "t".into(),
        }];
        assert!(matches!(named("a", "t", &[]), Ok(Named::One("a", "t"))));
        assert!(matches!(named("", "", &lock), Ok(Named::Several(_))));
        let field = |r: Result<Named<'_>, LockError>| match r {
            Err(LockError::InvalidArgument { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(field(named("", "", &[])), "object");
        assert_eq!(field(named("a", "", &[])), "token");
        assert_eq!(field(named("a", "t", &lock)), "locks");
    }

    #[test]
    fn event_kinds_are_named_as_on_http() {
        assert_eq!(event_kind("release_refused"), pb::EventKind::ReleaseRefused);
        assert_eq!(event_kind("grant"), pb::EventKind::Grant);
        assert_eq!(event_kind("wanted"), pb::EventKind::Wanted);
        assert_eq!(event_kind("exploded"), pb::EventKind::Unspecified);
        for name in [
            "grant",
            "release",
            "renew",
            "downgrade",
            "expiry",
            "release_refused",
            "wanted",
        ] {
            assert_eq!(event_kind_name(event_kind(name) as i32), Some(name));
        }
        assert_eq!(event_kind_name(pb::EventKind::Unspecified as i32), None);
        assert_eq!(event_kind_name(99), None);
    }

    /// A request's kinds filter is refused on `kind` for unspecified or unknown values.
    #[test]
    fn requested_event_kinds_must_be_known() {
        assert_eq!(
            event_kinds_from_pb(&[pb::EventKind::Wanted as i32, pb::EventKind::Grant as i32]),
            Ok(vec!["wanted", "grant"])
        );
        for refused in [pb::EventKind::Unspecified as i32, 42] {
            assert!(matches!(
                event_kinds_from_pb(&[refused]),
                Err(LockError::InvalidArgument { field: "kind", .. })
            ));
        }
    }

    #[test]
    fn timestamps_round_trip_and_refuse_nonsense() {
        let at = UNIX_EPOCH + Duration::new(1_767_225_600, 123_000_000);
        assert_eq!(system_time(&timestamp(at)), Some(at));
        let negative = prost_types::Timestamp {
            seconds: -1,
            nanos: 0,
        };
        assert_eq!(system_time(&negative), None);
        let bad_nanos = prost_types::Timestamp {
            seconds: 1,
            nanos: 2_000_000_000,
        };
        assert_eq!(system_time(&bad_nanos), None);
    }

    #[test]
    fn malformed_answers_are_internal() {
        let lease = pb::Lease {
            object: "a".into(),
            owner: "o".into(),
            mode: 0,
            token: "nope".into(),
            fence: 1,
            ttl_ms: 10,
            scope: 0,
        };
        assert!(matches!(lease_from_pb(lease), Err(LockError::Internal(_))));
        let empty = pb::AcquireResponse {
            owner: "o".into(),
            ttl_ms: 1,
            locks: Vec::new(),
        };
        assert!(matches!(grant_from_pb(empty), Err(LockError::Internal(_))));
        let nameless = pb::Lock::default();
        assert!(matches!(
            lock_from_pb(nameless),
            Err(LockError::Internal(_))
        ));
    }
}
