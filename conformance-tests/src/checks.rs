//! The checks. Each one's doc line states the contract it enforces; each panics on failure.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lockcore::{
    AcquireRequest, Fence, Grant, Lease, ListQuery, LockError, LockService, LockToken, ObjectId,
    OwnerId, RequestId, TokenIssuer,
};
use tokio::time::{sleep, Instant};

use crate::{Capabilities, Scope};

/// A lease long enough never to expire during a check.
const LONG: Duration = Duration::from_secs(30);
/// A lease short enough to watch expire.
const SHORT: Duration = Duration::from_millis(300);
/// A wait long enough that a waiter woken by an event is clearly not woken by its timeout.
const PATIENT: Duration = Duration::from_secs(10);
/// A generous bound for "promptly": far below `PATIENT`, far above any scheduling hiccup.
const PROMPTLY: Duration = Duration::from_secs(4);

async fn grant(svc: &dyn LockService, object: &ObjectId, owner: &OwnerId, ttl: Duration) -> Lease {
    svc.acquire(object, owner, ttl, Duration::ZERO)
        .await
        .unwrap_or_else(|e| panic!("acquire of {object} by {owner} should be granted: {e}"))
}

/// A well-formed token for `object` and `fence`, signed with a key lockd does not have.
fn forged_token(object: &ObjectId, fence: Fence) -> LockToken {
    let stranger = TokenIssuer::random();
    stranger.seal(stranger.prepare(), object, fence)
}

/// Characters of a token's text (after `lk2.`) that encode only fence bits, and only MAC bits.
const FENCE_CHAR: usize = 4 + 2;
const MAC_CHAR: usize = 4 + 50;

/// `token` with the base64 character at `index` replaced by another: still well-formed, but no
/// longer the token lockd issued.
fn tampered(token: &LockToken, index: usize) -> LockToken {
    let mut text = token.expose().as_bytes().to_vec();
    text[index] = if text[index] == b'A' { b'B' } else { b'A' };
    let text = String::from_utf8(text).expect("base64 text");
    LockToken::parse(&text).expect("a tampered token is still well-formed")
}

#[track_caller]
fn assert_locked_by(result: Result<Lease, LockError>, holder: &OwnerId) {
    match result {
        Err(LockError::Locked {
            holder: actual,
            retry_after,
            ..
        }) => {
            assert_eq!(&actual, holder, "Locked should name the current holder");
            assert!(
                retry_after <= LONG,
                "retry_after {retry_after:?} exceeds the lease"
            );
        }
        other => panic!("expected Locked by {holder}, got {other:?}"),
    }
}

#[track_caller]
fn assert_not_held<T: std::fmt::Debug>(result: Result<T, LockError>) {
    assert!(
        matches!(result, Err(LockError::NotHeld { .. })),
        "expected NotHeld, got {result:?}"
    );
}

#[track_caller]
fn assert_mismatch<T: std::fmt::Debug>(result: Result<T, LockError>) {
    assert!(
        matches!(result, Err(LockError::TokenMismatch { .. })),
        "expected TokenMismatch, got {result:?}"
    );
}

#[track_caller]
fn assert_invalid_token<T: std::fmt::Debug>(result: Result<T, LockError>) {
    assert!(
        matches!(result, Err(LockError::InvalidToken { .. })),
        "expected InvalidToken, got {result:?}"
    );
}

#[track_caller]
fn assert_invalid_argument<T: std::fmt::Debug>(result: Result<T, LockError>, field: &str) {
    match result {
        Err(LockError::InvalidArgument { field: f, .. }) => {
            assert_eq!(f, field, "InvalidArgument should name the field")
        }
        other => panic!("expected InvalidArgument({field}), got {other:?}"),
    }
}

async fn assert_still_held_by(svc: &dyn LockService, lease: &Lease) {
    let current = svc
        .validate(&lease.object, &lease.token)
        .await
        .unwrap_or_else(|e| panic!("{} should still be held by its lease: {e}", lease.object));
    assert_eq!(current.fence, lease.fence);
    assert_eq!(current.owner, lease.owner);
}

/// Acquire grants a free object and release frees it for the next owner.
pub async fn acquire_then_release_succeeds(svc: &dyn LockService, _caps: &Capabilities) {
    let scope = Scope::new("acquire_then_release");
    let object = scope.object("file");
    let lease = grant(svc, &object, &scope.owner("alice"), LONG).await;
    assert_eq!(lease.object, object);
    assert_eq!(lease.owner, scope.owner("alice"));
    assert!(
        lease.ttl <= LONG && lease.ttl > LONG / 2,
        "ttl {:?}",
        lease.ttl
    );
    svc.release(&object, &lease.token)
        .await
        .expect("the holder's release succeeds");
    let again = grant(svc, &object, &scope.owner("bob"), LONG).await;
    svc.release(&object, &again.token).await.expect("release");
}

/// A lease's token parses back to the same token and carries the lease's fence.
pub async fn lease_carries_a_token_bound_to_its_fence(svc: &dyn LockService, _caps: &Capabilities) {
    let scope = Scope::new("token_fence");
    let lease = grant(svc, &scope.object("f"), &scope.owner("alice"), LONG).await;
    assert_eq!(lease.token.fence(), lease.fence);
    let reparsed = LockToken::parse(lease.token.expose()).expect("tokens are well-formed");
    assert_eq!(reparsed, lease.token);
    assert!(!format!("{:?}", lease.token).contains(lease.token.expose()));
}

/// While a lock is held, another owner's acquire is refused as Locked, naming the holder.
pub async fn second_owner_is_refused_while_held(svc: &dyn LockService, _caps: &Capabilities) {
    let scope = Scope::new("second_owner");
    let object = scope.object("f");
    let lease = grant(svc, &object, &scope.owner("alice"), LONG).await;
    let refused = svc
        .acquire(&object, &scope.owner("bob"), LONG, Duration::ZERO)
        .await;
    assert_locked_by(refused, &scope.owner("alice"));
    assert_still_held_by(svc, &lease).await;
}

/// Locks are not reentrant: the holder asking again is refused like anyone else.
pub async fn same_owner_is_refused_because_locks_are_not_reentrant(
    svc: &dyn LockService,
    _caps: &Capabilities,
) {
    let scope = Scope::new("reentrant");
    let object = scope.object("f");
    let lease = grant(svc, &object, &scope.owner("alice"), LONG).await;
    let again = svc
        .acquire(&object, &scope.owner("alice"), LONG, Duration::ZERO)
        .await;
    assert_locked_by(again, &scope.owner("alice"));
    assert_still_held_by(svc, &lease).await;
}

/// Releasing an object that is not locked is refused: NotHeld with a token lockd issued for it
/// earlier, InvalidToken with one it never issued (checked before the lock is even looked at).
pub async fn release_of_an_unlocked_object_is_not_held(
    svc: &dyn LockService,
    _caps: &Capabilities,
) {
    let scope = Scope::new("release_unlocked");
    let object = scope.object("once-locked");
    let lease = grant(svc, &object, &scope.owner("alice"), LONG).await;
    svc.release(&object, &lease.token).await.expect("release");
    assert_not_held(svc.release(&object, &lease.token).await);
    let never = scope.object("never-locked");
    assert_invalid_token(svc.release(&never, &forged_token(&never, Fence(1))).await);
}

/// Releasing with a token issued for another object is refused as InvalidToken and both locks
/// stay held.
pub async fn release_with_another_objects_token_is_refused_and_lock_stays(
    svc: &dyn LockService,
    _caps: &Capabilities,
) {
    let scope = Scope::new("release_foreign_token");
    let (a, b) = (scope.object("a"), scope.object("b"));
    let lease_a = grant(svc, &a, &scope.owner("alice"), LONG).await;
    let lease_b = grant(svc, &b, &scope.owner("bob"), LONG).await;
    assert_invalid_token(svc.release(&a, &lease_b.token).await);
    assert_still_held_by(svc, &lease_a).await;
    assert_still_held_by(svc, &lease_b).await;
}

/// Releasing with a forged token (well-formed, wrong key) is refused as InvalidToken and the lock
/// stays held.
pub async fn release_with_a_forged_token_is_refused_and_lock_stays(
    svc: &dyn LockService,
    _caps: &Capabilities,
) {
    let scope = Scope::new("release_forged");
    let object = scope.object("f");
    let lease = grant(svc, &object, &scope.owner("alice"), LONG).await;
    let forged = forged_token(&object, lease.fence);
    assert_invalid_token(svc.release(&object, &forged).await);
    assert_still_held_by(svc, &lease).await;
}

/// A token whose MAC or fence was changed, or one issued for another object, is refused as
/// InvalidToken by release, renew and validate, and the lock stays held.
pub async fn tampered_tokens_are_refused_as_invalid_and_lock_stays(
    svc: &dyn LockService,
    _caps: &Capabilities,
) {
    let scope = Scope::new("tampered_token");
    let (object, other) = (scope.object("f"), scope.object("g"));
    let lease = grant(svc, &object, &scope.owner("alice"), LONG).await;
    let elsewhere = grant(svc, &other, &scope.owner("alice"), LONG).await;
    let changed_mac = tampered(&lease.token, MAC_CHAR);
    let changed_fence = tampered(&lease.token, FENCE_CHAR);
    assert_ne!(
        changed_fence.fence(),
        lease.fence,
        "the fence bytes changed"
    );
    assert_eq!(changed_mac.fence(), lease.fence, "only the MAC changed");
    for bad in [&changed_mac, &changed_fence, &elsewhere.token] {
        assert_invalid_token(svc.validate(&object, bad).await);
        assert_invalid_token(svc.renew(&object, bad, LONG).await);
        assert_invalid_token(svc.release(&object, bad).await);
    }
    assert_still_held_by(svc, &lease).await;
    assert_still_held_by(svc, &elsewhere).await;
}

/// Retrying an acquire with the same request id returns the same lease (token and fence) while
/// it is held, never a second grant; another owner's request with that id is refused as Locked;
/// once the lease is released the id asks for a new grant.
pub async fn a_retried_request_gets_the_same_lease_and_never_a_second_grant(
    svc: &dyn LockService,
    _caps: &Capabilities,
) {
    let scope = Scope::new("request_id");
    let (object, alice) = (scope.object("f"), scope.owner("alice"));
    let id = RequestId::random();
    let request =
        AcquireRequest::new(object.clone(), alice.clone(), LONG).with_request_id(id.clone());
    let first = svc
        .acquire_with(&request)
        .await
        .map(Grant::into_first)
        .expect("granted");
    let retried = svc
        .acquire_with(&request)
        .await
        .map(Grant::into_first)
        .expect("the same lease again");
    assert_eq!(retried.token, first.token);
    assert_eq!(retried.fence, first.fence);
    assert_eq!(retried.owner, alice);
    assert!(
        retried.ttl <= LONG && retried.ttl > LONG / 2,
        "{:?}",
        retried.ttl
    );
    let waiting = request.clone().with_wait(PATIENT);
    let started = Instant::now();
    let again = svc
        .acquire_with(&waiting)
        .await
        .map(Grant::into_first)
        .expect("answered at once");
    assert_eq!(again.token, first.token);
    assert!(
        started.elapsed() < PROMPTLY,
        "a retry does not wait for itself"
    );
    // Same id, another owner: another request, refused while the lock is held.
    let bob = AcquireRequest::new(object.clone(), scope.owner("bob"), LONG).with_request_id(id);
    assert_locked_by(svc.acquire_with(&bob).await.map(Grant::into_first), &alice);
    // Without the request id, the holder is refused like anyone else.
    assert_locked_by(
        svc.acquire(&object, &alice, LONG, Duration::ZERO).await,
        &alice,
    );
    assert_still_held_by(svc, &first).await;
    assert_eq!(svc.release(&object, &retried.token).await, Ok(first.fence));
    let fresh = svc
        .acquire_with(&request)
        .await
        .map(Grant::into_first)
        .expect("a new grant after release");
    assert!(fresh.fence > first.fence);
    assert_ne!(fresh.token, first.token);
    svc.release(&object, &fresh.token).await.expect("release");
}

/// An acquire dropped at any point (a timeout swept from zero to past one acquire's latency)
/// leaves its object free, or held by a lease whose token the caller has: never an orphan.
pub async fn dropped_acquires_leave_no_orphaned_lock(svc: &dyn LockService, _caps: &Capabilities) {
    const STEPS: u32 = 24;
    let scope = Scope::new("dropped_acquire");
    let owner = scope.owner("alice");
    let probe = scope.object("probe");
    let started = Instant::now();
    let lease = grant(svc, &probe, &owner, LONG).await;
    let latency = started.elapsed();
    svc.release(&probe, &lease.token).await.expect("release");
    let mut cut_off = Vec::new();
    for step in 0..=STEPS {
        let object = scope.object(&format!("o{step}"));
        let timeout = latency * 3 / 2 * step / STEPS;
        let request = AcquireRequest::new(object.clone(), owner.clone(), LONG)
            .with_request_id(RequestId::random());
        match tokio::time::timeout(timeout, svc.acquire_with(&request)).await {
            Ok(granted) => {
                let lease = granted
                    .expect("an uncontended acquire is granted")
                    .into_first();
                svc.release(&object, &lease.token).await.expect("release");
            }
            Err(_) => cut_off.push(object),
        }
    }
    // Taking a lost grant back runs in the background; give it a few seconds, far less than the
    // lease, so the object is not simply expiring.
    let deadline = Instant::now() + PATIENT;
    for object in &cut_off {
        while let Some(held) = svc.inspect(object).await.expect("inspect") {
            assert!(
                Instant::now() < deadline,
                "{object} is still held by {held:?}, a grant nobody has the token for"
            );
            sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Malformed tokens never parse into a `LockToken`, so they cannot touch any lock.
pub async fn malformed_tokens_are_refused_before_reaching_the_lock(
    svc: &dyn LockService,
    _caps: &Capabilities,
) {
    let scope = Scope::new("malformed_token");
    let object = scope.object("f");
    let lease = grant(svc, &object, &scope.owner("alice"), LONG).await;
    let mut truncated = lease.token.expose().to_owned();
    truncated.pop();
    for raw in [
        "",
        "not-a-token",
        truncated.as_str(),
        &lease.token.expose().replace("lk2.", "lk1."),
    ] {
        assert!(
            matches!(LockToken::parse(raw), Err(LockError::InvalidToken { .. })),
            "{raw:?} should be an invalid token"
        );
    }
    assert_still_held_by(svc, &lease).await;
}

/// A token from an earlier grant of the same object cannot release the current holder.
pub async fn release_with_an_old_token_is_refused_and_lock_stays(
    svc: &dyn LockService,
    _caps: &Capabilities,
) {
    let scope = Scope::new("release_old_token");
    let object = scope.object("f");
    let old = grant(svc, &object, &scope.owner("alice"), LONG).await;
    svc.release(&object, &old.token).await.expect("release");
    let current = grant(svc, &object, &scope.owner("bob"), LONG).await;
    assert_mismatch(svc.release(&object, &old.token).await);
    assert_still_held_by(svc, &current).await;
}

/// A second release with the same token is refused as NotHeld.
pub async fn double_release_is_not_held(svc: &dyn LockService, _caps: &Capabilities) {
    let scope = Scope::new("double_release");
    let object = scope.object("f");
    let lease = grant(svc, &object, &scope.owner("alice"), LONG).await;
    svc.release(&object, &lease.token)
        .await
        .expect("first release");
    assert_not_held(svc.release(&object, &lease.token).await);
}

/// Release returns the fence of the grant it ended.
pub async fn release_returns_the_released_fence(svc: &dyn LockService, _caps: &Capabilities) {
    let scope = Scope::new("release_fence");
    let object = scope.object("f");
    let lease = grant(svc, &object, &scope.owner("alice"), LONG).await;
    let fence = svc.release(&object, &lease.token).await.expect("release");
    assert_eq!(fence, lease.fence);
}

/// Each grant of an object gets a higher fence than the one before, across releases.
pub async fn fences_increase_across_release(svc: &dyn LockService, _caps: &Capabilities) {
    let scope = Scope::new("fence_release");
    let object = scope.object("f");
    let mut last = Fence(0);
    for round in 0..5 {
        let owner = scope.owner(if round % 2 == 0 { "alice" } else { "bob" });
        let lease = grant(svc, &object, &owner, LONG).await;
        assert!(lease.fence > last, "fence {} after {}", lease.fence, last);
        last = lease.fence;
        svc.release(&object, &lease.token).await.expect("release");
    }
}

/// A grant after the previous holder's lease expired gets a higher fence.
pub async fn fences_increase_across_expiry(svc: &dyn LockService, caps: &Capabilities) {
    let scope = Scope::new("fence_expiry");
    let object = scope.object("f");
    let first = grant(svc, &object, &scope.owner("alice"), caps.ttl(SHORT)).await;
    sleep(caps.past(caps.ttl(SHORT))).await;
    let second = grant(svc, &object, &scope.owner("bob"), LONG).await;
    assert!(
        second.fence > first.fence,
        "{} !> {}",
        second.fence,
        first.fence
    );
    svc.release(&object, &second.token).await.expect("release");
}

/// Fences of different objects are unrelated, but each object's own sequence increases.
pub async fn fences_are_independent_per_object_but_always_increase(
    svc: &dyn LockService,
    _caps: &Capabilities,
) {
    let scope = Scope::new("fence_objects");
    let objects: Vec<_> = (0..3).map(|i| scope.object(&format!("o{i}"))).collect();
    let mut last: HashMap<ObjectId, Fence> = HashMap::new();
    for round in 0..3 {
        for object in &objects {
            let lease = grant(svc, object, &scope.owner(&format!("w{round}")), LONG).await;
            if let Some(previous) = last.insert(object.clone(), lease.fence) {
                assert!(lease.fence > previous);
            }
            svc.release(object, &lease.token).await.expect("release");
        }
    }
}

/// Once a lease expires, another owner is granted the object.
pub async fn expiry_lets_another_owner_in(svc: &dyn LockService, caps: &Capabilities) {
    let scope = Scope::new("expiry");
    let object = scope.object("f");
    grant(svc, &object, &scope.owner("alice"), caps.ttl(SHORT)).await;
    assert_locked_by(
        svc.acquire(&object, &scope.owner("bob"), LONG, Duration::ZERO)
            .await,
        &scope.owner("alice"),
    );
    sleep(caps.past(caps.ttl(SHORT))).await;
    let bob = grant(svc, &object, &scope.owner("bob"), LONG).await;
    assert_eq!(bob.owner, scope.owner("bob"));
}

/// An expired holder's release fails (NotHeld when free, TokenMismatch once re-granted) and
/// leaves the new holder's lock alone.
pub async fn expired_holder_cannot_release_and_new_holder_is_undisturbed(
    svc: &dyn LockService,
    caps: &Capabilities,
) {
    let scope = Scope::new("expired_release");
    let object = scope.object("f");
    let stale = grant(svc, &object, &scope.owner("alice"), caps.ttl(SHORT)).await;
    sleep(caps.past(caps.ttl(SHORT))).await;
    assert_not_held(svc.release(&object, &stale.token).await);
    let fresh = grant(svc, &object, &scope.owner("bob"), LONG).await;
    assert_mismatch(svc.release(&object, &stale.token).await);
    assert_still_held_by(svc, &fresh).await;
}

/// An expired holder cannot renew its way back in, whether the object is free or re-granted.
pub async fn expired_holder_cannot_renew(svc: &dyn LockService, caps: &Capabilities) {
    let scope = Scope::new("expired_renew");
    let object = scope.object("f");
    let stale = grant(svc, &object, &scope.owner("alice"), caps.ttl(SHORT)).await;
    sleep(caps.past(caps.ttl(SHORT))).await;
    assert_not_held(svc.renew(&object, &stale.token, LONG).await);
    let fresh = grant(svc, &object, &scope.owner("bob"), LONG).await;
    assert_mismatch(svc.renew(&object, &stale.token, LONG).await);
    assert_still_held_by(svc, &fresh).await;
}

/// Renew keeps the fence and pushes the expiry out: the lease outlives its original TTL.
pub async fn renew_extends_the_lease_and_keeps_the_fence(
    svc: &dyn LockService,
    caps: &Capabilities,
) {
    let scope = Scope::new("renew");
    let object = scope.object("f");
    let first_ttl = caps.ttl(Duration::from_millis(600));
    let lease = grant(svc, &object, &scope.owner("alice"), first_ttl).await;
    sleep(Duration::from_millis(200)).await;
    let renewed = svc
        .renew(&object, &lease.token, Duration::from_secs(5))
        .await
        .expect("the holder may renew");
    assert_eq!(renewed.fence, lease.fence);
    assert_eq!(renewed.owner, lease.owner);
    assert!(
        renewed.ttl > Duration::from_secs(4),
        "ttl {:?}",
        renewed.ttl
    );
    // Past the original expiry.
    sleep(caps.past(first_ttl) - Duration::from_millis(100)).await;
    assert_still_held_by(svc, &lease).await;
    assert_locked_by(
        svc.acquire(&object, &scope.owner("bob"), LONG, Duration::ZERO)
            .await,
        &scope.owner("alice"),
    );
}

/// Renewing an object nobody holds is refused as NotHeld.
pub async fn renew_of_an_unlocked_object_is_not_held(svc: &dyn LockService, _caps: &Capabilities) {
    let scope = Scope::new("renew_unlocked");
    let object = scope.object("f");
    let lease = grant(svc, &object, &scope.owner("alice"), LONG).await;
    svc.release(&object, &lease.token).await.expect("release");
    assert_not_held(svc.renew(&object, &lease.token, LONG).await);
}

/// Renewing with a token that is not the holder's is refused and changes nothing.
pub async fn renew_with_another_holders_token_is_refused(
    svc: &dyn LockService,
    _caps: &Capabilities,
) {
    let scope = Scope::new("renew_foreign");
    let object = scope.object("f");
    let old = grant(svc, &object, &scope.owner("alice"), LONG).await;
    svc.release(&object, &old.token).await.expect("release");
    let current = grant(svc, &object, &scope.owner("bob"), LONG).await;
    assert_mismatch(svc.renew(&object, &old.token, LONG).await);
    let forged = forged_token(&object, current.fence);
    assert_invalid_token(svc.renew(&object, &forged, LONG).await);
    assert_still_held_by(svc, &current).await;
}

/// Validate returns the lease for the current holder's token.
pub async fn validate_accepts_the_current_token(svc: &dyn LockService, _caps: &Capabilities) {
    let scope = Scope::new("validate");
    let object = scope.object("f");
    let lease = grant(svc, &object, &scope.owner("alice"), LONG).await;
    let checked = svc.validate(&object, &lease.token).await.expect("valid");
    assert_eq!(checked.object, object);
    assert_eq!(checked.owner, lease.owner);
    assert_eq!(checked.fence, lease.fence);
    assert!(checked.ttl > Duration::ZERO && checked.ttl <= LONG);
}

/// Validate refuses an earlier holder's token (TokenMismatch), and a forged one and another
/// object's (InvalidToken).
pub async fn validate_refuses_old_forged_and_foreign_tokens(
    svc: &dyn LockService,
    _caps: &Capabilities,
) {
    let scope = Scope::new("validate_refuses");
    let (object, other) = (scope.object("f"), scope.object("g"));
    let old = grant(svc, &object, &scope.owner("alice"), LONG).await;
    svc.release(&object, &old.token).await.expect("release");
    let current = grant(svc, &object, &scope.owner("bob"), LONG).await;
    let elsewhere = grant(svc, &other, &scope.owner("bob"), LONG).await;
    assert_mismatch(svc.validate(&object, &old.token).await);
    assert_invalid_token(
        svc.validate(&object, &forged_token(&object, current.fence))
            .await,
    );
    assert_invalid_token(svc.validate(&object, &elsewhere.token).await);
    assert_still_held_by(svc, &current).await;
}

/// Validate refuses a token whose lease has expired.
pub async fn validate_refuses_after_expiry(svc: &dyn LockService, caps: &Capabilities) {
    let scope = Scope::new("validate_expired");
    let object = scope.object("f");
    let lease = grant(svc, &object, &scope.owner("alice"), caps.ttl(SHORT)).await;
    sleep(caps.past(caps.ttl(SHORT))).await;
    assert_not_held(svc.validate(&object, &lease.token).await);
}

/// A blocked acquire is granted as soon as the holder releases, not when its wait runs out.
pub async fn blocking_acquire_is_granted_promptly_on_release(
    svc: &dyn LockService,
    _caps: &Capabilities,
) {
    let scope = Scope::new("block_release");
    let object = scope.object("f");
    let holder = grant(svc, &object, &scope.owner("alice"), LONG).await;
    let started = Instant::now();
    let waiter = async {
        let lease = svc
            .acquire(&object, &scope.owner("bob"), LONG, PATIENT)
            .await;
        (lease, started.elapsed())
    };
    let releaser = async {
        sleep(Duration::from_millis(200)).await;
        svc.release(&object, &holder.token).await
    };
    let ((lease, waited), released) = tokio::join!(waiter, releaser);
    released.expect("release");
    let lease = lease.expect("the waiter is granted after the release");
    assert!(lease.fence > holder.fence);
    assert!(
        waited < PROMPTLY,
        "waiter took {waited:?}: not woken by the release"
    );
}

/// A blocked acquire is granted when the holder's lease expires.
pub async fn blocking_acquire_is_granted_on_expiry(svc: &dyn LockService, caps: &Capabilities) {
    let scope = Scope::new("block_expiry");
    let object = scope.object("f");
    let holder_ttl = caps.ttl(Duration::from_millis(400));
    let holder = grant(svc, &object, &scope.owner("alice"), holder_ttl).await;
    let started = Instant::now();
    let lease = svc
        .acquire(&object, &scope.owner("bob"), LONG, PATIENT)
        .await
        .expect("granted once the holder expires");
    let waited = started.elapsed();
    assert!(lease.fence > holder.fence);
    assert!(
        waited < holder_ttl + PROMPTLY,
        "waiter took {waited:?}: not woken at the expiry"
    );
}

/// A blocked acquire whose wait elapses fails as Locked, having waited the whole time.
pub async fn blocking_acquire_times_out_as_locked(svc: &dyn LockService, _caps: &Capabilities) {
    let scope = Scope::new("block_timeout");
    let object = scope.object("f");
    let holder = grant(svc, &object, &scope.owner("alice"), LONG).await;
    let started = Instant::now();
    let result = svc
        .acquire(
            &object,
            &scope.owner("bob"),
            LONG,
            Duration::from_millis(300),
        )
        .await;
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "gave up early"
    );
    assert_locked_by(result, &scope.owner("alice"));
    assert_still_held_by(svc, &holder).await;
}

/// Waiters on one object are granted in the order they started waiting.
pub async fn waiters_are_served_first_come_first_served(
    svc: &dyn LockService,
    caps: &Capabilities,
) {
    let scope = Scope::new("fifo");
    let object = scope.object("f");
    let holder = grant(svc, &object, &scope.owner("alice"), LONG).await;
    let order = Mutex::new(Vec::new());
    let waiter = |name: &'static str, delay: Duration| {
        let (object, order, owner) = (&object, &order, scope.owner(name));
        async move {
            sleep(delay).await;
            let lease = svc
                .acquire(object, &owner, LONG, PATIENT)
                .await
                .unwrap_or_else(|e| panic!("{name} should be granted: {e}"));
            order.lock().expect("order").push(name);
            sleep(Duration::from_millis(50)).await;
            svc.release(object, &lease.token).await.expect("release");
        }
    };
    let releaser = async {
        sleep(Duration::from_millis(600)).await;
        svc.release(&object, &holder.token).await.expect("release");
    };
    tokio::join!(
        waiter("first", Duration::ZERO),
        waiter("second", Duration::from_millis(150)),
        waiter("third", Duration::from_millis(300)),
        releaser
    );
    let order = order.into_inner().expect("order");
    if caps.fifo_waiters {
        assert_eq!(order, ["first", "second", "third"]);
    } else {
        assert_eq!(order.len(), 3);
    }
}

/// A waiter that gives up leaves the queue without holding up the waiters behind it.
pub async fn a_waiter_that_times_out_does_not_block_the_next(
    svc: &dyn LockService,
    _caps: &Capabilities,
) {
    let scope = Scope::new("waiter_timeout");
    let object = scope.object("f");
    let holder = grant(svc, &object, &scope.owner("alice"), LONG).await;
    let bob = scope.owner("bob");
    let impatient = svc.acquire(&object, &bob, LONG, Duration::from_millis(200));
    let patient = async {
        sleep(Duration::from_millis(50)).await;
        let result = svc
            .acquire(&object, &scope.owner("carol"), LONG, PATIENT)
            .await;
        (result, Instant::now())
    };
    let releaser = async {
        sleep(Duration::from_millis(500)).await;
        svc.release(&object, &holder.token).await.expect("release");
        Instant::now()
    };
    let (impatient, (patient, granted_at), released_at) =
        tokio::join!(impatient, patient, releaser);
    assert_locked_by(impatient, &scope.owner("alice"));
    let lease = patient.expect("the patient waiter is granted");
    assert_eq!(lease.owner, scope.owner("carol"));
    let delay = granted_at.saturating_duration_since(released_at);
    assert!(delay < PROMPTLY, "granted {delay:?} after the release");
}

/// Inspect shows the holder, fence and remaining time, and never the token.
pub async fn inspect_shows_the_holder_and_no_token(svc: &dyn LockService, _caps: &Capabilities) {
    let scope = Scope::new("inspect");
    let object = scope.object("f");
    let lease = grant(svc, &object, &scope.owner("alice"), LONG).await;
    let info = svc
        .inspect(&object)
        .await
        .expect("inspect")
        .expect("the lock is held");
    assert_eq!(info.object, object);
    assert_eq!(info.owner, lease.owner);
    assert_eq!(info.fence, lease.fence);
    assert!(info.ttl > Duration::ZERO && info.ttl <= LONG);
    assert!(info.expires_at > info.acquired_at);
    assert!(!format!("{info:?}").contains(lease.token.expose()));
}

/// Inspect of an object nobody holds (never, released or expired) is None.
pub async fn inspect_of_a_free_object_is_none(svc: &dyn LockService, caps: &Capabilities) {
    let scope = Scope::new("inspect_free");
    assert_eq!(
        svc.inspect(&scope.object("never")).await.expect("inspect"),
        None
    );
    let released = scope.object("released");
    let lease = grant(svc, &released, &scope.owner("alice"), LONG).await;
    svc.release(&released, &lease.token).await.expect("release");
    assert_eq!(svc.inspect(&released).await.expect("inspect"), None);
    let expired = scope.object("expired");
    grant(svc, &expired, &scope.owner("alice"), caps.ttl(SHORT)).await;
    sleep(caps.past(caps.ttl(SHORT))).await;
    assert_eq!(svc.inspect(&expired).await.expect("inspect"), None);
}

async fn list_all(svc: &dyn LockService, prefix: &str, page: usize) -> Vec<lockcore::LockInfo> {
    let mut query = ListQuery::new(prefix, page);
    let mut all = Vec::new();
    for _ in 0..1000 {
        let result = svc.list(&query).await.expect("list");
        assert!(result.locks.len() <= page, "page larger than its limit");
        all.extend(result.locks);
        match result.next {
            Some(next) => query.after = Some(next),
            None => return all,
        }
    }
    panic!("listing under {prefix} did not end");
}

/// List pages through every lock under a prefix, with holders and fences, and no tokens.
pub async fn list_shows_holders_under_a_prefix_page_by_page(
    svc: &dyn LockService,
    _caps: &Capabilities,
) {
    let scope = Scope::new("list");
    let outside = Scope::new("list_outside");
    let mut leases = HashMap::new();
    for i in 0..5 {
        let object = scope.object(&format!("dir/{i}"));
        let lease = grant(svc, &object, &scope.owner(&format!("owner-{i}")), LONG).await;
        leases.insert(object, lease);
    }
    let stranger = grant(svc, &outside.object("x"), &scope.owner("z"), LONG).await;
    let listed = list_all(svc, scope.prefix(), 2).await;
    let objects: BTreeSet<_> = listed.iter().map(|l| l.object.clone()).collect();
    let expected: BTreeSet<_> = leases.keys().cloned().collect();
    assert_eq!(objects, expected);
    for info in &listed {
        let lease = &leases[&info.object];
        assert_eq!(info.owner, lease.owner);
        assert_eq!(info.fence, lease.fence);
        assert!(!format!("{info:?}").contains(lease.token.expose()));
    }
    assert!(!objects.contains(&stranger.object));
}

/// Released and expired locks drop out of the listing.
pub async fn list_leaves_out_released_and_expired_locks(
    svc: &dyn LockService,
    caps: &Capabilities,
) {
    let scope = Scope::new("list_gone");
    let kept = grant(svc, &scope.object("kept"), &scope.owner("a"), LONG).await;
    let released = grant(svc, &scope.object("released"), &scope.owner("b"), LONG).await;
    grant(
        svc,
        &scope.object("expired"),
        &scope.owner("c"),
        caps.ttl(SHORT),
    )
    .await;
    svc.release(&released.object, &released.token)
        .await
        .expect("release");
    sleep(caps.past(caps.ttl(SHORT))).await;
    let listed = list_all(svc, scope.prefix(), 10).await;
    let objects: Vec<_> = listed.iter().map(|l| l.object.clone()).collect();
    assert_eq!(objects, vec![kept.object]);
}

/// TTLs below 1 ms or above the configured maximum are refused, for acquire and renew.
pub async fn invalid_ttls_are_refused(svc: &dyn LockService, caps: &Capabilities) {
    let scope = Scope::new("invalid_ttl");
    let object = scope.object("f");
    let owner = scope.owner("alice");
    let too_long = caps.limits.max_ttl + Duration::from_millis(1);
    for ttl in [Duration::ZERO, too_long] {
        assert_invalid_argument(
            svc.acquire(&object, &owner, ttl, Duration::ZERO).await,
            "ttl",
        );
    }
    assert_eq!(
        svc.inspect(&object).await.expect("inspect"),
        None,
        "nothing granted"
    );
    let lease = grant(svc, &object, &owner, LONG).await;
    for ttl in [Duration::ZERO, too_long] {
        assert_invalid_argument(svc.renew(&object, &lease.token, ttl).await, "ttl");
    }
    assert_still_held_by(svc, &lease).await;
}

/// Waits above the configured maximum are refused without granting anything.
pub async fn invalid_waits_are_refused(svc: &dyn LockService, caps: &Capabilities) {
    let scope = Scope::new("invalid_wait");
    let object = scope.object("f");
    let too_long = caps.limits.max_wait + Duration::from_millis(1);
    assert_invalid_argument(
        svc.acquire(&object, &scope.owner("alice"), LONG, too_long)
            .await,
        "wait",
    );
    assert_eq!(svc.inspect(&object).await.expect("inspect"), None);
}

/// Empty, oversized or control-character ids and out-of-range list limits are refused.
pub async fn invalid_ids_and_list_queries_are_refused(svc: &dyn LockService, _caps: &Capabilities) {
    for bad in [
        "",
        "nul\0inside",
        "line\nbreak",
        &"x".repeat(lockcore::MAX_OBJECT_LEN + 1),
    ] {
        assert_invalid_argument(ObjectId::new(bad), "object");
    }
    for bad in ["", "tab\there", &"o".repeat(lockcore::MAX_OWNER_LEN + 1)] {
        assert_invalid_argument(OwnerId::new(bad), "owner");
    }
    let scope = Scope::new("invalid_list");
    for limit in [0, lockcore::MAX_LIST_LIMIT + 1] {
        assert_invalid_argument(
            svc.list(&ListQuery::new(scope.prefix(), limit)).await,
            "limit",
        );
    }
    assert_invalid_argument(
        svc.list(&ListQuery::new("bad\u{1}prefix", 10)).await,
        "prefix",
    );
}

/// Locks on different objects do not affect each other.
pub async fn objects_are_independent(svc: &dyn LockService, _caps: &Capabilities) {
    let scope = Scope::new("independent");
    let (x, y) = (scope.object("x"), scope.object("y"));
    let on_x = grant(svc, &x, &scope.owner("alice"), LONG).await;
    let on_y = grant(svc, &y, &scope.owner("bob"), LONG).await;
    assert_invalid_token(svc.release(&y, &on_x.token).await);
    svc.release(&y, &on_y.token).await.expect("release y");
    assert_still_held_by(svc, &on_x).await;
    let again = grant(svc, &y, &scope.owner("carol"), LONG).await;
    assert_still_held_by(svc, &again).await;
}

/// Under 32 tasks x 200 cycles on a few objects, no two holders of one object ever overlap and
/// each object's fences strictly increase (checked by an independent tracker).
pub async fn stress_holders_never_overlap_and_fences_increase(
    svc: Arc<dyn LockService>,
    _caps: &Capabilities,
) {
    const TASKS: usize = 32;
    const CYCLES: usize = 200;
    const OBJECTS: usize = 4;
    let scope = Scope::new("stress");
    let objects: Arc<Vec<ObjectId>> = Arc::new(
        (0..OBJECTS)
            .map(|i| scope.object(&format!("o{i}")))
            .collect(),
    );
    #[derive(Default)]
    struct Tracker {
        holder: HashMap<ObjectId, usize>,
        last_fence: HashMap<ObjectId, Fence>,
        grants: usize,
    }
    let tracker = Arc::new(Mutex::new(Tracker::default()));
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let (svc, objects, tracker) = (svc.clone(), objects.clone(), tracker.clone());
        let owner = scope.owner(&format!("task-{task}"));
        tasks.push(tokio::spawn(async move {
            for cycle in 0..CYCLES {
                let object = &objects[(task * 7 + cycle * 13) % OBJECTS];
                let lease = svc
                    .acquire(object, &owner, LONG, Duration::from_secs(60))
                    .await
                    .unwrap_or_else(|e| panic!("task {task} cycle {cycle}: {e}"));
                {
                    let mut t = tracker.lock().expect("tracker");
                    if let Some(other) = t.holder.insert(object.clone(), task) {
                        panic!("task {task} granted {object} while task {other} holds it");
                    }
                    if let Some(previous) = t.last_fence.insert(object.clone(), lease.fence) {
                        assert!(
                            lease.fence > previous,
                            "fence went from {previous} to {}",
                            lease.fence
                        );
                    }
                    t.grants += 1;
                }
                tokio::task::yield_now().await;
                tracker.lock().expect("tracker").holder.remove(object);
                svc.release(object, &lease.token)
                    .await
                    .unwrap_or_else(|e| panic!("task {task} release: {e}"));
            }
        }));
    }
    for task in tasks {
        task.await.expect("stress task panicked");
    }
    assert_eq!(tracker.lock().expect("tracker").grants, TASKS * CYCLES);
}
