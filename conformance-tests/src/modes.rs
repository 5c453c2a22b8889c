//! The checks for lock modes, multi-object requests, batches and downgrade. Each one's doc line
//! states the contract it enforces; each panics on failure.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lockcore::{
    AcquireRequest, Grant, Lease, LockError, LockMode, LockService, LockSpec, ObjectId, OwnerId,
    RequestId, MAX_OBJECTS_PER_REQUEST,
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

async fn shared(svc: &dyn LockService, object: &ObjectId, owner: &OwnerId, ttl: Duration) -> Lease {
    svc.acquire_in(object, LockMode::Shared, owner, ttl, Duration::ZERO)
        .await
        .unwrap_or_else(|e| {
            panic!("a shared acquire of {object} by {owner} should be granted: {e}")
        })
}

async fn exclusive(
    svc: &dyn LockService,
    object: &ObjectId,
    owner: &OwnerId,
    ttl: Duration,
) -> Lease {
    svc.acquire(object, owner, ttl, Duration::ZERO)
        .await
        .unwrap_or_else(|e| {
            panic!("an exclusive acquire of {object} by {owner} should be granted: {e}")
        })
}

fn request(specs: Vec<LockSpec>, owner: &OwnerId, ttl: Duration) -> AcquireRequest {
    AcquireRequest::many(specs, owner.clone(), ttl)
}

#[track_caller]
fn assert_locked<T: std::fmt::Debug>(result: Result<T, LockError>) -> Vec<lockcore::Conflict> {
    match result {
        Err(LockError::Locked { conflicts, .. }) => conflicts,
        other => panic!("expected Locked, got {other:?}"),
    }
}

/// Shared holders of one object coexist; an exclusive request is refused while any of them
/// holds, and granted once the last one is gone; a shared request is refused while an exclusive
/// holder holds.
pub async fn shared_holders_coexist_and_exclude_exclusive(
    svc: &dyn LockService,
    _caps: &Capabilities,
) {
    let scope = Scope::new("shared_coexist");
    let object = scope.object("file");
    let (r1, r2, w) = (scope.owner("r1"), scope.owner("r2"), scope.owner("w"));
    let a = shared(svc, &object, &r1, LONG).await;
    let b = shared(svc, &object, &r2, LONG).await;
    assert_eq!((a.mode, b.mode), (LockMode::Shared, LockMode::Shared));
    assert_ne!(a.token, b.token, "each shared grant has its own token");
    assert!(b.fence > a.fence, "fences increase over shared grants");
    let conflicts = assert_locked(svc.acquire(&object, &w, LONG, Duration::ZERO).await);
    assert_eq!(conflicts.len(), 1);
    assert_eq!(conflicts[0].object, object);
    assert!(conflicts[0].holder == r1 || conflicts[0].holder == r2);
    svc.release(&object, &a.token).await.expect("r1 releases");
    assert_locked(svc.acquire(&object, &w, LONG, Duration::ZERO).await);
    svc.release(&object, &b.token).await.expect("r2 releases");
    let x = exclusive(svc, &object, &w, LONG).await;
    assert_eq!(x.mode, LockMode::Exclusive);
    assert!(x.fence > b.fence, "fences increase over mixed grants");
    assert_locked(
        svc.acquire_in(&object, LockMode::Shared, &r1, LONG, Duration::ZERO)
            .await,
    );
    svc.release(&object, &x.token).await.expect("w releases");
    let c = shared(svc, &object, &r1, LONG).await;
    assert!(c.fence > x.fence);
    svc.release(&object, &c.token).await.expect("release");
}

/// Releasing or expiring one shared holder leaves the others holding, and inspect lists every
/// live holder (never a token), with the top-level fields describing the highest fence.
pub async fn one_shared_holder_leaving_leaves_the_others(
    svc: &dyn LockService,
    caps: &Capabilities,
) {
    let scope = Scope::new("shared_leave");
    let object = scope.object("file");
    let (r1, r2, r3) = (scope.owner("r1"), scope.owner("r2"), scope.owner("r3"));
    let brief = shared(svc, &object, &r1, caps.ttl(SHORT)).await;
    let stays = shared(svc, &object, &r2, LONG).await;
    let leaves = shared(svc, &object, &r3, LONG).await;
    let info = svc.inspect(&object).await.expect("inspect").expect("held");
    assert_eq!(info.mode, LockMode::Shared);
    assert_eq!(info.holders.len(), 3);
    assert_eq!(
        info.fence, leaves.fence,
        "the top level shows the highest fence"
    );
    assert_eq!(info.owner, r3);
    let fences: Vec<_> = info.holders.iter().map(|h| h.fence).collect();
    assert_eq!(fences, vec![brief.fence, stays.fence, leaves.fence]);
    svc.release(&object, &leaves.token)
        .await
        .expect("r3 releases");
    sleep(caps.past(caps.ttl(SHORT))).await;
    assert!(
        svc.validate(&object, &brief.token).await.is_err(),
        "r1's lease ran out"
    );
    let still = svc
        .validate(&object, &stays.token)
        .await
        .expect("r2 still holds");
    assert_eq!(still.mode, LockMode::Shared);
    let info = svc.inspect(&object).await.expect("inspect").expect("held");
    assert_eq!(info.holders.len(), 1);
    assert_eq!(info.owner, r2);
    svc.release(&object, &stays.token)
        .await
        .expect("r2 releases");
    assert_eq!(svc.inspect(&object).await.expect("inspect"), None);
}

/// Downgrade turns an exclusive lease into a shared one with the same token and fence, and the
/// shared waiters queued behind it are then granted together while it still holds.
pub async fn downgrade_keeps_the_lease_and_admits_shared_waiters(
    svc: Arc<dyn LockService>,
    _caps: &Capabilities,
) {
    let scope = Scope::new("downgrade");
    let object = scope.object("file");
    let writer = scope.owner("writer");
    let x = exclusive(&*svc, &object, &writer, LONG).await;
    let mut readers = Vec::new();
    for name in ["r1", "r2"] {
        let (svc, object, owner) = (svc.clone(), object.clone(), scope.owner(name));
        readers.push(tokio::spawn(async move {
            svc.acquire_in(&object, LockMode::Shared, &owner, LONG, PATIENT)
                .await
        }));
    }
    sleep(Duration::from_millis(300)).await;
    assert!(
        readers.iter().all(|r| !r.is_finished()),
        "shared waiters wait while the lock is exclusive"
    );
    let started = Instant::now();
    let down = svc.downgrade(&object, &x.token).await.expect("downgrade");
    assert_eq!(down.mode, LockMode::Shared);
    assert_eq!((down.token.clone(), down.fence), (x.token.clone(), x.fence));
    for reader in readers {
        let lease = reader
            .await
            .expect("task")
            .expect("granted after the downgrade");
        assert_eq!(lease.mode, LockMode::Shared);
        assert!(lease.fence > x.fence);
    }
    assert!(
        started.elapsed() < PROMPTLY,
        "waiters were granted promptly"
    );
    let info = svc.inspect(&object).await.expect("inspect").expect("held");
    assert_eq!((info.mode, info.holders.len()), (LockMode::Shared, 3));
    let again = svc
        .downgrade(&object, &x.token)
        .await
        .expect("a shared lease downgrades to itself");
    assert_eq!(again.mode, LockMode::Shared);
    assert!(matches!(
        svc.downgrade(&scope.object("free"), &x.token).await,
        Err(LockError::InvalidToken { .. })
    ));
    svc.release(&object, &x.token)
        .await
        .expect("the writer releases");
    assert!(matches!(
        svc.downgrade(&object, &x.token).await,
        Err(LockError::TokenMismatch { .. })
    ));
}

/// A waiting exclusive request holds back shared requests that arrive after it: a continuous
/// stream of readers delays it no longer than the leases granted before it started waiting.
pub async fn a_writer_is_not_starved_by_a_stream_of_readers(
    svc: Arc<dyn LockService>,
    caps: &Capabilities,
) {
    let reader_ttl = caps.ttl(Duration::from_millis(1000));
    let first_ttl = caps.ttl(Duration::from_millis(1500));
    const STREAM: Duration = Duration::from_secs(6);
    /// Scheduling noise allowed on top of the leases the writer must wait for.
    const NOISE: Duration = Duration::from_millis(1500);
    let scope = Scope::new("writer_starvation");
    let object = scope.object("file");
    shared(&*svc, &object, &scope.owner("first"), first_ttl).await;
    let stop = Instant::now() + STREAM;
    let mut stream = Vec::new();
    for i in 0..4 {
        let (svc, object, owner) = (svc.clone(), object.clone(), scope.owner(&format!("r{i}")));
        stream.push(tokio::spawn(async move {
            // Readers keep overlapping: each holds its lease to the end and asks again.
            while Instant::now() < stop {
                let _ = svc
                    .acquire_in(
                        &object,
                        LockMode::Shared,
                        &owner,
                        reader_ttl,
                        Duration::ZERO,
                    )
                    .await;
                sleep(Duration::from_millis(50)).await;
            }
        }));
    }
    sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let writer = svc
        .acquire(&object, &scope.owner("writer"), LONG, PATIENT)
        .await
        .expect("the writer is granted within its wait");
    let waited = started.elapsed();
    assert!(
        waited <= caps.past(first_ttl) + NOISE,
        "the writer waited {waited:?}: longer than the leases granted before it queued"
    );
    assert!(
        Instant::now() < stop,
        "the check must observe the writer while the reader stream still runs"
    );
    for task in stream {
        task.await.expect("reader task");
    }
    svc.release(&object, &writer.token).await.expect("release");
}

/// A multi-object request is all or nothing: when one object is held nothing is granted and
/// nothing is left held; once all are free, each object gets its own token and fence, in
/// request order, sharing the TTL.
pub async fn multi_object_requests_are_all_or_nothing(svc: &dyn LockService, _caps: &Capabilities) {
    let scope = Scope::new("multi_all_or_nothing");
    let (a, b, c) = (scope.object("a"), scope.object("b"), scope.object("c"));
    let (me, other) = (scope.owner("me"), scope.owner("other"));
    let blocker = exclusive(svc, &b, &other, LONG).await;
    let specs = vec![
        LockSpec::exclusive(a.clone()),
        LockSpec::shared(b.clone()),
        LockSpec::exclusive(c.clone()),
    ];
    let conflicts = assert_locked(svc.acquire_with(&request(specs.clone(), &me, LONG)).await);
    assert_eq!(conflicts.len(), 1, "only b is in conflict: {conflicts:?}");
    assert_eq!((&conflicts[0].object, &conflicts[0].holder), (&b, &other));
    assert_eq!(
        svc.inspect(&a).await.expect("inspect"),
        None,
        "nothing left held"
    );
    assert_eq!(
        svc.inspect(&c).await.expect("inspect"),
        None,
        "nothing left held"
    );
    svc.release(&b, &blocker.token).await.expect("release");
    let grant = svc
        .acquire_with(&request(specs, &me, LONG))
        .await
        .expect("all free: granted");
    assert_eq!(grant.owner, me);
    let objects: Vec<_> = grant.leases.iter().map(|l| l.object.clone()).collect();
    assert_eq!(
        objects,
        vec![a.clone(), b.clone(), c.clone()],
        "leases in request order"
    );
    let modes: Vec<_> = grant.leases.iter().map(|l| l.mode).collect();
    assert_eq!(
        modes,
        vec![LockMode::Exclusive, LockMode::Shared, LockMode::Exclusive]
    );
    assert!(grant.leases[1].fence > blocker.fence);
    for lease in &grant.leases {
        let valid = svc
            .validate(&lease.object, &lease.token)
            .await
            .expect("valid");
        assert_eq!(valid.fence, lease.fence);
    }
    let locks: Vec<_> = grant
        .leases
        .iter()
        .map(|l| (l.object.clone(), l.token.clone()))
        .collect();
    let released = svc.release_many(&locks).await.expect("batch release");
    for (result, lease) in released.iter().zip(&grant.leases) {
        assert_eq!(result, &Ok(lease.fence));
    }
    for object in [&a, &b, &c] {
        assert_eq!(svc.inspect(object).await.expect("inspect"), None);
    }
}

/// A refused multi-object request lists every object in conflict, in request order.
pub async fn a_refusal_lists_every_conflict(svc: &dyn LockService, _caps: &Capabilities) {
    let scope = Scope::new("multi_conflicts");
    let (a, b, c) = (scope.object("a"), scope.object("b"), scope.object("c"));
    let (me, x, y) = (scope.owner("me"), scope.owner("x"), scope.owner("y"));
    let held_c = exclusive(svc, &c, &y, LONG).await;
    let held_a = shared(svc, &a, &x, LONG).await;
    let specs = vec![
        LockSpec::exclusive(a.clone()),
        LockSpec::exclusive(b.clone()),
        LockSpec::shared(c.clone()),
    ];
    let result = svc.acquire_with(&request(specs, &me, LONG)).await;
    let Err(LockError::Locked {
        object,
        holder,
        conflicts,
        ..
    }) = result
    else {
        panic!("expected Locked, got {result:?}");
    };
    assert_eq!(
        (object, holder),
        (a.clone(), x.clone()),
        "the first conflict on top"
    );
    let named: Vec<_> = conflicts
        .iter()
        .map(|c| (c.object.clone(), c.holder.clone()))
        .collect();
    assert_eq!(named, vec![(a.clone(), x), (c.clone(), y)]);
    assert_eq!(svc.inspect(&b).await.expect("inspect"), None);
    svc.release(&a, &held_a.token).await.expect("release");
    svc.release(&c, &held_c.token).await.expect("release");
}

/// Requests naming the same objects in opposite orders, from many tasks and for many rounds,
/// never deadlock and never hold a partial set: every grant covers all its objects, and no two
/// grants of an object overlap.
pub async fn opposite_orders_never_deadlock_or_hold_partial_sets(
    svc: Arc<dyn LockService>,
    _caps: &Capabilities,
) {
    const TASKS_PER_ORDER: usize = 8;
    const ROUNDS: usize = 5;
    let scope = Scope::new("opposite_orders");
    let objects: Vec<ObjectId> = ["a", "b", "c"].iter().map(|n| scope.object(n)).collect();
    let holding: Arc<Mutex<HashMap<ObjectId, usize>>> = Arc::default();
    let mut tasks = Vec::new();
    for task in 0..2 * TASKS_PER_ORDER {
        let mut order = objects.clone();
        if task % 2 == 1 {
            order.reverse();
        }
        let (svc, holding, owner) = (
            svc.clone(),
            holding.clone(),
            scope.owner(&format!("t{task}")),
        );
        tasks.push(tokio::spawn(async move {
            for _ in 0..ROUNDS {
                let specs = order.iter().cloned().map(LockSpec::exclusive).collect();
                let grant: Grant = svc
                    .acquire_with(&request(specs, &owner, LONG).with_wait(PATIENT * 3))
                    .await
                    .expect("granted within the wait: no deadlock");
                assert_eq!(grant.leases.len(), 3, "never a partial set");
                {
                    let mut holding = holding.lock().expect("not poisoned");
                    for lease in &grant.leases {
                        let count = holding.entry(lease.object.clone()).or_default();
                        *count += 1;
                        assert_eq!(*count, 1, "two exclusive holders of {}", lease.object);
                    }
                }
                sleep(Duration::from_millis(2)).await;
                {
                    let mut holding = holding.lock().expect("not poisoned");
                    for lease in &grant.leases {
                        *holding.entry(lease.object.clone()).or_default() -= 1;
                    }
                }
                let locks: Vec<_> = grant
                    .leases
                    .iter()
                    .map(|l| (l.object.clone(), l.token.clone()))
                    .collect();
                for result in svc.release_many(&locks).await.expect("batch release") {
                    result.expect("each release succeeds");
                }
            }
        }));
    }
    let all = async {
        for task in tasks {
            task.await.expect("task did not panic");
        }
    };
    tokio::time::timeout(Duration::from_secs(120), all)
        .await
        .expect("all rounds finished: no deadlock");
}

/// A request naming an object twice, or more than 64 objects, or none, is refused as
/// `invalid_argument` and grants nothing; so is a batch naming an object twice.
pub async fn duplicate_and_too_many_objects_are_refused(
    svc: &dyn LockService,
    _caps: &Capabilities,
) {
    let scope = Scope::new("multi_invalid");
    let me = scope.owner("me");
    let a = scope.object("a");
    let twice = vec![LockSpec::exclusive(a.clone()), LockSpec::shared(a.clone())];
    assert!(matches!(
        svc.acquire_with(&request(twice, &me, LONG)).await,
        Err(LockError::InvalidArgument { .. })
    ));
    let too_many = (0..=MAX_OBJECTS_PER_REQUEST)
        .map(|i| LockSpec::exclusive(scope.object(&format!("o{i}"))))
        .collect();
    assert!(matches!(
        svc.acquire_with(&request(too_many, &me, LONG)).await,
        Err(LockError::InvalidArgument { .. })
    ));
    assert_eq!(svc.inspect(&a).await.expect("inspect"), None);
    assert_eq!(
        svc.inspect(&scope.object("o0")).await.expect("inspect"),
        None
    );
    let most: Vec<_> = (0..MAX_OBJECTS_PER_REQUEST)
        .map(|i| LockSpec::exclusive(scope.object(&format!("o{i}"))))
        .collect();
    let grant = svc
        .acquire_with(&request(most, &me, LONG))
        .await
        .expect("64 objects are granted");
    assert_eq!(grant.leases.len(), MAX_OBJECTS_PER_REQUEST);
    let first = &grant.leases[0];
    let doubled = [
        (first.object.clone(), first.token.clone()),
        (first.object.clone(), first.token.clone()),
    ];
    assert!(matches!(
        svc.release_many(&doubled).await,
        Err(LockError::InvalidArgument { .. })
    ));
    let locks: Vec<_> = grant
        .leases
        .iter()
        .map(|l| (l.object.clone(), l.token.clone()))
        .collect();
    for result in svc.release_many(&locks).await.expect("batch release") {
        result.expect("released");
    }
}

/// Batch release and renew report each entry's outcome in order: a held lease succeeds, an old
/// token is `token_mismatch` (the lock stays), a free object is `not_held`, a forged token is
/// `invalid_token`.
pub async fn batch_release_and_renew_report_each_outcome(
    svc: &dyn LockService,
    _caps: &Capabilities,
) {
    let scope = Scope::new("batches");
    let (a, b, c, d) = (
        scope.object("a"),
        scope.object("b"),
        scope.object("c"),
        scope.object("d"),
    );
    let me = scope.owner("me");
    let old_b = exclusive(svc, &b, &me, LONG).await;
    svc.release(&b, &old_b.token).await.expect("release");
    let old_c = exclusive(svc, &c, &me, LONG).await;
    svc.release(&c, &old_c.token).await.expect("release");
    let held_a = exclusive(svc, &a, &me, LONG).await;
    let held_b = shared(svc, &b, &me, LONG).await;
    let stranger = lockcore::TokenIssuer::random();
    let forged = stranger.seal(stranger.prepare(), &d, held_a.fence);
    let batch = [
        (a.clone(), held_a.token.clone()),
        (b.clone(), old_b.token.clone()),
        (c.clone(), old_c.token.clone()),
        (d.clone(), forged),
    ];
    let renewed = svc.renew_many(&batch, LONG * 2).await.expect("batch renew");
    assert_eq!(renewed.len(), 4);
    let lease = renewed[0].as_ref().expect("a is renewed");
    assert_eq!((lease.fence, lease.ttl), (held_a.fence, LONG * 2));
    assert!(
        matches!(renewed[1], Err(LockError::TokenMismatch { .. })),
        "{renewed:?}"
    );
    assert!(
        matches!(renewed[2], Err(LockError::NotHeld { .. })),
        "{renewed:?}"
    );
    assert!(
        matches!(renewed[3], Err(LockError::InvalidToken { .. })),
        "{renewed:?}"
    );
    let released = svc.release_many(&batch).await.expect("batch release");
    assert_eq!(released[0], Ok(held_a.fence));
    assert!(matches!(released[1], Err(LockError::TokenMismatch { .. })));
    assert!(matches!(released[2], Err(LockError::NotHeld { .. })));
    assert!(matches!(released[3], Err(LockError::InvalidToken { .. })));
    let still = svc.validate(&b, &held_b.token).await.expect("b stays held");
    assert_eq!(still.mode, LockMode::Shared);
    svc.release(&b, &held_b.token).await.expect("release");
}

/// A multi-object request retried with its request id gets the same leases back (tokens,
/// fences, modes), never second grants.
pub async fn a_retried_multi_object_request_gets_the_same_leases(
    svc: &dyn LockService,
    _caps: &Capabilities,
) {
    let scope = Scope::new("multi_retry");
    let (a, b) = (scope.object("a"), scope.object("b"));
    let me = scope.owner("me");
    let specs = vec![LockSpec::shared(a.clone()), LockSpec::exclusive(b.clone())];
    let first_request = request(specs, &me, LONG).with_request_id(RequestId::random());
    let first = svc.acquire_with(&first_request).await.expect("granted");
    let again = svc
        .acquire_with(&first_request)
        .await
        .expect("the same grant");
    assert_eq!(again.leases.len(), 2);
    for (one, two) in first.leases.iter().zip(&again.leases) {
        assert_eq!(
            (&one.token, one.fence, one.mode),
            (&two.token, two.fence, two.mode)
        );
    }
    let info = svc.inspect(&a).await.expect("inspect").expect("held");
    assert_eq!(
        info.holders.len(),
        1,
        "a retry adds no second shared holder"
    );
    let other = request(vec![LockSpec::exclusive(b.clone())], &me, LONG)
        .with_request_id(RequestId::random());
    assert_locked(svc.acquire_with(&other).await);
    let locks: Vec<_> = first
        .leases
        .iter()
        .map(|l| (l.object.clone(), l.token.clone()))
        .collect();
    for result in svc.release_many(&locks).await.expect("batch release") {
        result.expect("released");
    }
}

/// A blocking multi-object request is granted once all its objects are free together, and
/// holds none of them while it waits.
pub async fn a_blocking_multi_object_request_waits_holding_nothing(
    svc: Arc<dyn LockService>,
    _caps: &Capabilities,
) {
    let scope = Scope::new("multi_wait");
    let (a, b) = (scope.object("a"), scope.object("b"));
    let other = scope.owner("other");
    let held_b = exclusive(&*svc, &b, &other, LONG).await;
    let waiter = {
        let svc = svc.clone();
        let specs = vec![
            LockSpec::exclusive(a.clone()),
            LockSpec::exclusive(b.clone()),
        ];
        let me = scope.owner("me");
        tokio::spawn(async move {
            svc.acquire_with(&request(specs, &me, LONG).with_wait(PATIENT))
                .await
        })
    };
    sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished());
    assert_eq!(
        svc.inspect(&a).await.expect("inspect"),
        None,
        "a is not held while waiting"
    );
    let started = Instant::now();
    svc.release(&b, &held_b.token).await.expect("release");
    let grant = waiter
        .await
        .expect("task")
        .expect("granted after the release");
    assert!(started.elapsed() < PROMPTLY);
    assert_eq!(grant.leases.len(), 2);
    let locks: Vec<_> = grant
        .leases
        .iter()
        .map(|l| (l.object.clone(), l.token.clone()))
        .collect();
    for result in svc.release_many(&locks).await.expect("batch release") {
        result.expect("released");
    }
}

/// A waiter whose acquire is dropped (its caller gave up, its connection closed) gives up its
/// place in the queue at once: a later try-once request is not held back by it.
pub async fn a_dropped_waiter_gives_up_its_place(svc: Arc<dyn LockService>, _caps: &Capabilities) {
    let scope = Scope::new("dropped_waiter");
    let object = scope.object("file");
    let reader = shared(&*svc, &object, &scope.owner("reader"), LONG).await;
    let writer = {
        let (svc, object, owner) = (svc.clone(), object.clone(), scope.owner("writer"));
        tokio::spawn(async move { svc.acquire(&object, &owner, LONG, PATIENT).await })
    };
    sleep(Duration::from_millis(300)).await;
    // Queued behind the waiting writer, a new reader is held back...
    assert_locked(
        svc.acquire_in(
            &object,
            LockMode::Shared,
            &scope.owner("late"),
            LONG,
            Duration::ZERO,
        )
        .await,
    );
    writer.abort();
    let _ = writer.await;
    // ...and once the writer is gone, promptly let in (well before a lapsed place would be).
    let deadline = Instant::now() + Duration::from_secs(2);
    let late = loop {
        match svc
            .acquire_in(
                &object,
                LockMode::Shared,
                &scope.owner("late"),
                LONG,
                Duration::ZERO,
            )
            .await
        {
            Ok(lease) => break lease,
            Err(LockError::Locked { .. }) if Instant::now() < deadline => {
                sleep(Duration::from_millis(50)).await;
            }
            other => panic!("the dropped writer still holds its place: {other:?}"),
        }
    };
    svc.release(&object, &late.token).await.expect("release");
    svc.release(&object, &reader.token).await.expect("release");
}
