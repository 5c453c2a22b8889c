//! The checks for subtree locks, lock-delay, waiter counts and `wanted` notices (issue 12).
//! Each one's doc line states the contract it enforces; each panics on failure.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lockcore::{
    AcquireRequest, ConflictCause, Grant, LockError, LockMode, LockScope, LockService, LockSpec,
    ObjectId, OwnerId, WaitNotice,
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
/// How early a backend's clock may end a lease or a delay compared to this process's clock.
const CLOCK_TOLERANCE: Duration = Duration::from_millis(30);

use LockMode::{Exclusive, Shared};
use LockScope::{Object, Subtree};

/// For a backend declared without subtree locks and lock-delay
/// ([`Capabilities::without_subtrees`]): checks that it refuses both as `invalid_argument`
/// rather than grant them as plain locks, says so on stderr, and returns `true` (the caller then
/// skips its check). `false` for a backend that has them.
pub async fn unsupported(svc: &dyn LockService, caps: &Capabilities) -> bool {
    if caps.subtrees {
        return false;
    }
    let scope = Scope::new("no_subtrees");
    let owner = scope.owner("o");
    let subtree = AcquireRequest::many(
        vec![spec(&scope.object("d"), Exclusive, Subtree)],
        owner.clone(),
        LONG,
    );
    let delayed = AcquireRequest::new(scope.object("f"), owner, LONG).with_lock_delay(SHORT);
    for request in [subtree, delayed] {
        assert!(
            matches!(
                svc.acquire_with(&request).await,
                Err(LockError::InvalidArgument { .. })
            ),
            "a backend without subtrees must refuse {request:?}"
        );
    }
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "SKIP: {} has no subtree locks or lock-delay; checked that it refuses them",
        svc.backend()
    );
    true
}

fn spec(object: &ObjectId, mode: LockMode, scope: LockScope) -> LockSpec {
    LockSpec::new(object.clone(), mode).with_scope(scope)
}

async fn try_one(
    svc: &dyn LockService,
    spec: LockSpec,
    owner: &OwnerId,
    ttl: Duration,
) -> Result<Grant, LockError> {
    svc.acquire_with(&AcquireRequest::many(vec![spec], owner.clone(), ttl))
        .await
}

async fn granted(svc: &dyn LockService, spec: LockSpec, owner: &OwnerId, ttl: Duration) -> Grant {
    let what = format!("{} {} {}", spec.mode, spec.scope, spec.object);
    try_one(svc, spec, owner, ttl)
        .await
        .unwrap_or_else(|e| panic!("{what} by {owner} should be granted: {e}"))
}

async fn release_all(svc: &dyn LockService, grant: &Grant) {
    for lease in &grant.leases {
        svc.release(&lease.object, &lease.token)
            .await
            .unwrap_or_else(|e| panic!("releasing {} should succeed: {e}", lease.object));
    }
}

#[track_caller]
fn assert_locked<T: std::fmt::Debug>(result: Result<T, LockError>) -> Vec<lockcore::Conflict> {
    match result {
        Err(LockError::Locked { conflicts, .. }) => conflicts,
        other => panic!("expected Locked, got {other:?}"),
    }
}

/// The ids of `universe` a lock on `id` in `scope` covers, written out from the rule
/// ("the object plus every object whose id starts with the object's id followed by `/`")
/// rather than taken from lockcore.
fn covered<'a>(id: &str, scope: LockScope, universe: &[&'a str]) -> Vec<&'a str> {
    universe
        .iter()
        .copied()
        .filter(|other| *other == id || (scope == Subtree && other.starts_with(&format!("{id}/"))))
        .collect()
}

/// Every pair of locks, in both orders and all four mode pairs, conflicts exactly when the
/// modes conflict and the sets of ids they cover intersect: object/object on the same id,
/// subtree/object on the root or anything under it, subtree/subtree when one root is under the
/// other or they are equal; `d` never covers its sibling `db`.
pub async fn every_conflict_pair_follows_the_coverage_rule(
    svc: &dyn LockService,
    _caps: &Capabilities,
) {
    let scope = Scope::new("subtree_pairs");
    let names = ["d", "d/x", "d/x/y", "db"];
    let ids: Vec<String> = names.iter().map(|n| scope.object(n).to_string()).collect();
    let universe: Vec<&str> = ids.iter().map(String::as_str).collect();
    let locks: Vec<(usize, LockScope)> = vec![
        (0, Subtree),
        (0, Object),
        (1, Object),
        (1, Subtree),
        (2, Object),
        (3, Object),
        (3, Subtree),
    ];
    let (first, second) = (scope.owner("first"), scope.owner("second"));
    for &(held_at, held_scope) in &locks {
        for &(asked_at, asked_scope) in &locks {
            for held_mode in [Exclusive, Shared] {
                for asked_mode in [Exclusive, Shared] {
                    let held_id = scope.object(names[held_at]);
                    let asked_id = scope.object(names[asked_at]);
                    let overlap = covered(held_id.as_str(), held_scope, &universe)
                        .iter()
                        .any(|id| covered(asked_id.as_str(), asked_scope, &universe).contains(id));
                    let expected = overlap && (held_mode == Exclusive || asked_mode == Exclusive);
                    let case = format!(
                        "{held_mode} {held_scope} {} held, {asked_mode} {asked_scope} {} asked",
                        names[held_at], names[asked_at]
                    );
                    let held =
                        granted(svc, spec(&held_id, held_mode, held_scope), &first, LONG).await;
                    let outcome =
                        try_one(svc, spec(&asked_id, asked_mode, asked_scope), &second, LONG).await;
                    match (expected, outcome) {
                        (true, Err(LockError::Locked { conflicts, .. })) => {
                            assert_eq!(conflicts.len(), 1, "{case}");
                            assert_eq!(conflicts[0].object, asked_id, "{case}");
                            assert_eq!(conflicts[0].holder, first, "{case}");
                            assert_eq!(conflicts[0].cause, ConflictCause::Held, "{case}");
                        }
                        (false, Ok(grant)) => release_all(svc, &grant).await,
                        (expected, outcome) => panic!(
                            "{case}: expected {}, got {outcome:?}",
                            if expected { "a conflict" } else { "a grant" }
                        ),
                    }
                    release_all(svc, &held).await;
                }
            }
        }
    }
}

/// An exclusive subtree request waits for every lock under its root, holding nothing while it
/// waits, and is granted promptly once the last of them is released; while it holds, a write
/// anywhere under the root is refused.
pub async fn a_subtree_lock_waits_for_every_lock_under_it(
    svc: Arc<dyn LockService>,
    _caps: &Capabilities,
) {
    let scope = Scope::new("subtree_waits");
    let (dir, file, deep) = (
        scope.object("vol/a"),
        scope.object("vol/a/f"),
        scope.object("vol/a/x/y"),
    );
    let (writer, reader, renamer) = (
        scope.owner("writer"),
        scope.owner("reader"),
        scope.owner("renamer"),
    );
    let write = granted(&*svc, spec(&file, Exclusive, Object), &writer, LONG).await;
    let read = granted(&*svc, spec(&deep, Shared, Object), &reader, LONG).await;
    let rename = {
        let svc = svc.clone();
        let (dir, renamer) = (dir.clone(), renamer.clone());
        tokio::spawn(async move {
            let request = AcquireRequest::many(vec![spec(&dir, Exclusive, Subtree)], renamer, LONG)
                .with_wait(PATIENT);
            svc.acquire_with(&request).await
        })
    };
    sleep(Duration::from_millis(300)).await;
    assert!(
        !rename.is_finished(),
        "the rename waits for the write and the read"
    );
    assert!(
        svc.inspect(&dir)
            .await
            .expect("inspect")
            .is_none_or(|i| i.holders.is_empty()),
        "a waiting request holds nothing"
    );
    release_all(&*svc, &write).await;
    sleep(Duration::from_millis(300)).await;
    assert!(
        !rename.is_finished(),
        "the read under the root still blocks it"
    );
    let released = Instant::now();
    release_all(&*svc, &read).await;
    let grant = tokio::time::timeout(PROMPTLY, rename)
        .await
        .expect("granted promptly once the last lock under the root is gone")
        .expect("task")
        .expect("granted");
    assert!(released.elapsed() < PROMPTLY);
    assert_eq!(grant.leases[0].object, dir);
    for (object, mode) in [(&file, Exclusive), (&deep, Shared)] {
        let conflicts =
            assert_locked(try_one(&*svc, spec(object, mode, Object), &writer, LONG).await);
        assert_eq!(
            conflicts[0].holder, renamer,
            "the subtree holder blocks {object}"
        );
    }
    release_all(&*svc, &grant).await;
    let after = granted(&*svc, spec(&file, Exclusive, Object), &writer, LONG).await;
    assert!(after.leases[0].fence > write.leases[0].fence);
    release_all(&*svc, &after).await;
}

/// A shared subtree lock (a snapshot) admits shared locks and shared subtree locks below it but
/// no exclusive lock anywhere in it, and no exclusive subtree lock above it.
pub async fn a_shared_subtree_admits_shared_locks_below_but_no_exclusive(
    svc: &dyn LockService,
    _caps: &Capabilities,
) {
    let scope = Scope::new("subtree_snapshot");
    let (vol, file, sub, above) = (
        scope.object("top/vol"),
        scope.object("top/vol/a/f"),
        scope.object("top/vol/a"),
        scope.object("top"),
    );
    let (snap, node) = (scope.owner("snapshot"), scope.owner("node"));
    let snapshot = granted(svc, spec(&vol, Shared, Subtree), &snap, LONG).await;
    let read = granted(svc, spec(&file, Shared, Object), &node, LONG).await;
    let sub_read = granted(svc, spec(&sub, Shared, Subtree), &node, LONG).await;
    for refused in [
        spec(&file, Exclusive, Object),
        spec(&sub, Exclusive, Object),
        spec(&vol, Exclusive, Object),
        spec(&above, Exclusive, Subtree),
    ] {
        let what = format!("{} {} {}", refused.mode, refused.scope, refused.object);
        let conflicts = assert_locked(try_one(svc, refused, &node, LONG).await);
        assert_eq!(conflicts.len(), 1, "{what}");
    }
    let beside = granted(svc, spec(&above, Exclusive, Object), &node, LONG).await;
    for grant in [&snapshot, &read, &sub_read, &beside] {
        release_all(svc, grant).await;
    }
}

/// A rename takes exclusive subtree locks on its source and target in one request: all or
/// nothing (a lock under the target refuses it and leaves the source free), and once granted it
/// excludes writes under both.
pub async fn a_rename_locks_source_and_target_subtrees_together(
    svc: &dyn LockService,
    _caps: &Capabilities,
) {
    let scope = Scope::new("subtree_rename");
    let (source, target) = (scope.object("vol/src"), scope.object("vol/dst"));
    let (in_source, in_target) = (scope.object("vol/src/f"), scope.object("vol/dst/g"));
    let (mover, writer) = (scope.owner("mover"), scope.owner("writer"));
    let rename = AcquireRequest::many(
        vec![
            spec(&source, Exclusive, Subtree),
            spec(&target, Exclusive, Subtree),
        ],
        mover.clone(),
        LONG,
    );
    let blocking = granted(svc, spec(&in_target, Shared, Object), &writer, LONG).await;
    let conflicts = assert_locked(svc.acquire_with(&rename).await);
    assert_eq!(conflicts.len(), 1);
    assert_eq!(conflicts[0].object, target);
    let write = granted(svc, spec(&in_source, Exclusive, Object), &writer, LONG).await;
    release_all(svc, &write).await;
    release_all(svc, &blocking).await;
    let grant = svc.acquire_with(&rename).await.expect("granted together");
    assert_eq!(grant.leases.len(), 2);
    for object in [&in_source, &in_target] {
        assert_locked(try_one(svc, spec(object, Shared, Object), &writer, LONG).await);
    }
    release_all(svc, &grant).await;
}

/// A waiter is woken by the release of any lock that blocked it, wherever that lock is in the
/// tree: an object waiter by the release of a subtree lock above it, a subtree waiter by the
/// release of an object lock under it.
pub async fn waiters_are_woken_across_the_tree(svc: Arc<dyn LockService>, _caps: &Capabilities) {
    let scope = Scope::new("subtree_wake");
    let (dir, file) = (scope.object("d"), scope.object("d/x/f"));
    let (holder, waiter) = (scope.owner("holder"), scope.owner("waiter"));
    for (held, wanted) in [
        (
            spec(&dir, Exclusive, Subtree),
            spec(&file, Exclusive, Object),
        ),
        (spec(&file, Shared, Object), spec(&dir, Exclusive, Subtree)),
    ] {
        let case = format!(
            "{} {} waits for {} {}",
            wanted.scope, wanted.object, held.scope, held.object
        );
        let grant = granted(&*svc, held, &holder, LONG).await;
        let task = {
            let (svc, waiter) = (svc.clone(), waiter.clone());
            tokio::spawn(async move {
                let request = AcquireRequest::many(vec![wanted], waiter, LONG).with_wait(PATIENT);
                let started = Instant::now();
                (svc.acquire_with(&request).await, started)
            })
        };
        sleep(Duration::from_millis(300)).await;
        assert!(!task.is_finished(), "{case}: it waits");
        let released = Instant::now();
        release_all(&*svc, &grant).await;
        let (outcome, _) = tokio::time::timeout(PROMPTLY, task)
            .await
            .unwrap_or_else(|_| panic!("{case}: woken promptly by the release"))
            .expect("task");
        let won = outcome.unwrap_or_else(|e| panic!("{case}: granted, not {e}"));
        assert!(released.elapsed() < PROMPTLY, "{case}");
        release_all(&*svc, &won).await;
    }
}

/// Waiters are served in arrival order across the tree: while an exclusive subtree request
/// waits for a lock under its root, a later request for anything it covers is refused as
/// queued behind it, even where nothing is held.
pub async fn a_waiting_subtree_request_holds_back_later_requests_under_it(
    svc: Arc<dyn LockService>,
    _caps: &Capabilities,
) {
    let scope = Scope::new("subtree_fair");
    let (dir, held, free) = (
        scope.object("d"),
        scope.object("d/held"),
        scope.object("d/free"),
    );
    let (holder, renamer, late) = (
        scope.owner("holder"),
        scope.owner("renamer"),
        scope.owner("late"),
    );
    let grant = granted(&*svc, spec(&held, Shared, Object), &holder, LONG).await;
    let rename = {
        let (svc, renamer, dir) = (svc.clone(), renamer.clone(), dir.clone());
        tokio::spawn(async move {
            let request = AcquireRequest::many(vec![spec(&dir, Exclusive, Subtree)], renamer, LONG)
                .with_wait(PATIENT);
            svc.acquire_with(&request).await
        })
    };
    // The renamer has drawn its ticket once a later request for a free object under its root
    // is refused as queued behind it (until then such a request is granted, and let go).
    let deadline = Instant::now() + PROMPTLY;
    loop {
        match try_one(&*svc, spec(&free, Shared, Object), &late, LONG).await {
            Err(LockError::Locked { conflicts, .. }) => {
                assert_eq!(conflicts[0].holder, renamer, "refused behind the renamer");
                assert_eq!(conflicts[0].cause, ConflictCause::Queued);
                break;
            }
            Ok(early) => release_all(&*svc, &early).await,
            Err(e) => panic!("a request under the root should be granted or locked: {e}"),
        }
        assert!(
            Instant::now() < deadline,
            "the rename should queue on {dir}"
        );
        sleep(Duration::from_millis(20)).await;
    }
    let conflicts = assert_locked(try_one(&*svc, spec(&held, Shared, Object), &late, LONG).await);
    assert_eq!(
        (conflicts[0].holder.clone(), conflicts[0].cause),
        (renamer.clone(), ConflictCause::Queued),
        "a shared request that the holder alone would admit is refused behind the renamer"
    );
    let beside = granted(
        &*svc,
        spec(&scope.object("e/x"), Exclusive, Object),
        &late,
        LONG,
    )
    .await;
    release_all(&*svc, &beside).await;
    release_all(&*svc, &grant).await;
    let won = tokio::time::timeout(PROMPTLY, rename)
        .await
        .expect("granted promptly")
        .expect("task")
        .expect("granted");
    release_all(&*svc, &won).await;
}

/// One request never names two objects one of which covers the other: a subtree and something
/// under it (or the same subtree twice) is `invalid_argument`, and nothing is held.
pub async fn a_request_covering_an_object_twice_is_refused(
    svc: &dyn LockService,
    _caps: &Capabilities,
) {
    let scope = Scope::new("subtree_overlap");
    let (dir, file) = (scope.object("d"), scope.object("d/f"));
    let owner = scope.owner("o");
    let nested = AcquireRequest::many(
        vec![spec(&file, Shared, Object), spec(&dir, Shared, Subtree)],
        owner.clone(),
        LONG,
    );
    assert!(matches!(
        svc.acquire_with(&nested).await,
        Err(LockError::InvalidArgument { .. })
    ));
    assert!(svc.inspect(&file).await.expect("inspect").is_none());
    assert!(svc.inspect(&dir).await.expect("inspect").is_none());
}

/// The lock-delay a test asks for: long enough to be observed after the backend shows the
/// expiry, in whole seconds where the backend counts seconds.
fn lock_delay(caps: &Capabilities) -> Duration {
    caps.lock_delay(caps.expiry_slack * 2 + Duration::from_millis(500))
}

/// A lease granted with a lock-delay that expires keeps its object from any conflicting grant
/// until the delay ends: a plain acquire is refused as `locked` with cause `lock_delay`, the
/// expired holder's owner, and at most the delay as `retry_after`; inspect shows the delay and
/// no holder; the expired token is not held; a blocking acquire is granted when the delay ends,
/// not before, with a higher fence.
pub async fn lock_delay_follows_an_expiry(svc: &dyn LockService, caps: &Capabilities) {
    let scope = Scope::new("delay_expiry");
    let object = scope.object("f");
    let (vanished, next) = (scope.owner("vanished"), scope.owner("next"));
    let (ttl, delay) = (caps.ttl(SHORT), lock_delay(caps));
    let started = Instant::now();
    let request = AcquireRequest::new(object.clone(), vanished.clone(), ttl).with_lock_delay(delay);
    let lost = svc
        .acquire_with(&request)
        .await
        .expect("granted")
        .into_first();
    sleep(caps.past(ttl)).await;
    let conflicts = assert_locked(svc.acquire(&object, &next, LONG, Duration::ZERO).await);
    assert_eq!(conflicts[0].cause, ConflictCause::LockDelay);
    assert_eq!(conflicts[0].holder, vanished);
    assert!(conflicts[0].retry_after <= delay);
    let message = LockError::locked(conflicts).to_string();
    assert!(
        message.contains("lock-delay"),
        "the refusal names the lock-delay: {message}"
    );
    let info = svc
        .inspect(&object)
        .await
        .expect("inspect")
        .expect("the delay shows");
    assert!(info.holders.is_empty(), "an expired lease is no holder");
    let shown = info.delay.expect("inspect shows the delay in force");
    assert_eq!((shown.owner, shown.fence), (vanished.clone(), lost.fence));
    assert!(shown.remaining <= delay);
    assert!(matches!(
        svc.validate(&object, &lost.token).await,
        Err(LockError::NotHeld { .. })
    ));
    assert!(matches!(
        svc.release(&object, &lost.token).await,
        Err(LockError::NotHeld { .. })
    ));
    let won = svc
        .acquire(&object, &next, LONG, PATIENT)
        .await
        .expect("a blocking acquire is granted when the delay ends");
    assert!(
        started.elapsed() + CLOCK_TOLERANCE >= ttl + delay,
        "granted after {:?}, before the lease's TTL {ttl:?} plus its delay {delay:?}",
        started.elapsed()
    );
    assert!(won.fence > lost.fence);
    svc.release(&object, &won.token).await.expect("release");
}

/// A release ends a lease at once, whatever its lock-delay: the object is free immediately.
pub async fn a_released_lease_has_no_lock_delay(svc: &dyn LockService, caps: &Capabilities) {
    let scope = Scope::new("delay_release");
    let object = scope.object("f");
    let (first, next) = (scope.owner("first"), scope.owner("next"));
    let request =
        AcquireRequest::new(object.clone(), first, LONG).with_lock_delay(lock_delay(caps));
    let lease = svc
        .acquire_with(&request)
        .await
        .expect("granted")
        .into_first();
    svc.release(&object, &lease.token).await.expect("release");
    let won = svc
        .acquire(&object, &next, LONG, Duration::ZERO)
        .await
        .expect("free at once after a release");
    assert!(svc
        .inspect(&object)
        .await
        .expect("inspect")
        .is_some_and(|i| i.delay.is_none()));
    svc.release(&object, &won.token).await.expect("release");
}

/// A lock-delay blocks what its lease would have conflicted with, and only that: an expired
/// exclusive subtree lease delays every object under its root; an expired shared lease delays
/// exclusive requests but admits shared ones.
pub async fn lock_delay_covers_what_the_lease_covered(svc: &dyn LockService, caps: &Capabilities) {
    let scope = Scope::new("delay_cover");
    let (dir, file, shared_file) = (scope.object("d"), scope.object("d/x/f"), scope.object("s"));
    let (vanished, next) = (scope.owner("vanished"), scope.owner("next"));
    let (ttl, delay) = (caps.ttl(SHORT), lock_delay(caps));
    let subtree = AcquireRequest::many(
        vec![
            spec(&dir, Exclusive, Subtree),
            spec(&shared_file, Shared, Object),
        ],
        vanished.clone(),
        ttl,
    )
    .with_lock_delay(delay);
    svc.acquire_with(&subtree).await.expect("granted");
    sleep(caps.past(ttl)).await;
    let conflicts = assert_locked(try_one(svc, spec(&file, Shared, Object), &next, LONG).await);
    assert_eq!(conflicts[0].cause, ConflictCause::LockDelay);
    let conflicts =
        assert_locked(try_one(svc, spec(&shared_file, Exclusive, Object), &next, LONG).await);
    assert_eq!(conflicts[0].cause, ConflictCause::LockDelay);
    let reader = granted(svc, spec(&shared_file, Shared, Object), &next, LONG).await;
    let beside = granted(
        svc,
        spec(&scope.object("db"), Exclusive, Object),
        &next,
        LONG,
    )
    .await;
    release_all(svc, &reader).await;
    release_all(svc, &beside).await;
}

/// `inspect` and `list` count the requests waiting in an object's queue, and the count falls
/// when they leave.
pub async fn waiters_are_counted_by_inspect_and_list(
    svc: Arc<dyn LockService>,
    _caps: &Capabilities,
) {
    let scope = Scope::new("waiters_count");
    let object = scope.object("f");
    let holder = scope.owner("holder");
    let lease = svc
        .acquire(&object, &holder, LONG, Duration::ZERO)
        .await
        .expect("granted");
    let wait = Duration::from_secs(2);
    let tasks: Vec<_> = (0..2)
        .map(|i| {
            let (svc, object, owner) = (svc.clone(), object.clone(), scope.owner(&format!("w{i}")));
            tokio::spawn(async move { svc.acquire(&object, &owner, LONG, wait).await })
        })
        .collect();
    let deadline = Instant::now() + PROMPTLY;
    loop {
        let info = svc.inspect(&object).await.expect("inspect").expect("held");
        if info.waiters == 2 {
            break;
        }
        assert!(
            info.waiters <= 2,
            "{} waiters counted, 2 wait",
            info.waiters
        );
        assert!(Instant::now() < deadline, "two waiters should be counted");
        sleep(Duration::from_millis(20)).await;
    }
    let page = svc
        .list(&lockcore::ListQuery::new(scope.prefix(), 10))
        .await
        .expect("list");
    assert_eq!(page.locks.len(), 1);
    assert_eq!(page.locks[0].waiters, 2, "list counts the waiters too");
    for task in tasks {
        assert!(matches!(
            task.await.expect("task"),
            Err(LockError::Locked { .. })
        ));
    }
    let info = svc.inspect(&object).await.expect("inspect").expect("held");
    assert_eq!(
        info.waiters, 0,
        "waiters that gave up are no longer counted"
    );
    svc.release(&object, &lease.token).await.expect("release");
}

/// A request that starts waiting tells each holder it waits behind, once (not once per
/// retry): a `wanted` notice with the holder's object, owner and fence, the waiter, and the mode
/// it asks for. A service that does not wait itself (a client of a remote server) reports no
/// notices; its server's event tests check them.
pub async fn a_waiter_tells_each_holder_it_waits_behind_once(
    svc: Arc<dyn LockService>,
    _caps: &Capabilities,
) {
    let notices: Arc<Mutex<Vec<WaitNotice>>> = Arc::default();
    let sink = {
        let notices = notices.clone();
        Arc::new(move |notice| notices.lock().expect("notices").push(notice))
    };
    if !svc.report_waits(sink) {
        return;
    }
    let scope = Scope::new("wanted");
    let (dir, a, b) = (
        scope.object("d"),
        scope.object("d/a"),
        scope.object("d/b/c"),
    );
    let (r1, r2, w) = (scope.owner("r1"), scope.owner("r2"), scope.owner("w"));
    let first = granted(&*svc, spec(&a, Shared, Object), &r1, LONG).await;
    let second = granted(&*svc, spec(&b, Shared, Object), &r2, LONG).await;
    let rename = {
        let (svc, dir, w) = (svc.clone(), dir.clone(), w.clone());
        tokio::spawn(async move {
            let request = AcquireRequest::many(vec![spec(&dir, Exclusive, Subtree)], w, LONG)
                .with_wait(PATIENT);
            svc.acquire_with(&request).await
        })
    };
    // Longer than a queue keep-alive, so the waiter has attempted again.
    sleep(lockcore::QUEUE_KEEPALIVE + Duration::from_millis(500)).await;
    let wanted: HashMap<(ObjectId, OwnerId), (lockcore::Fence, OwnerId, LockMode, usize)> = {
        let mut seen = HashMap::new();
        for notice in notices.lock().expect("notices").iter() {
            if let WaitNotice::Wanted {
                object,
                owner,
                fence,
                waiter,
                mode,
            } = notice
            {
                seen.entry((object.clone(), owner.clone()))
                    .or_insert((*fence, waiter.clone(), *mode, 0))
                    .3 += 1;
            }
        }
        seen
    };
    assert_eq!(
        wanted.len(),
        2,
        "one notice per blocking holder: {wanted:?}"
    );
    for (grant, owner) in [(&first, &r1), (&second, &r2)] {
        let lease = &grant.leases[0];
        let (fence, waiter, mode, count) = wanted
            .get(&(lease.object.clone(), owner.clone()))
            .unwrap_or_else(|| panic!("{owner} on {} is told", lease.object));
        assert_eq!(
            (*fence, waiter, *mode, *count),
            (lease.fence, &w, Exclusive, 1)
        );
    }
    release_all(&*svc, &first).await;
    release_all(&*svc, &second).await;
    let won = tokio::time::timeout(PROMPTLY, rename)
        .await
        .expect("granted promptly")
        .expect("task")
        .expect("granted");
    release_all(&*svc, &won).await;
    let contended = notices
        .lock()
        .expect("notices")
        .iter()
        .filter(|n| matches!(n, WaitNotice::Contended { objects, granted: true, .. } if objects == &vec![dir.clone()]))
        .count();
    assert_eq!(contended, 1, "the contended grant is reported once");
}

/// Sixteen tasks lock a small tree at random, in both modes and both scopes, each waiting for
/// its turn; from the holders' own records (taken after each grant returns and before each
/// release is sent), no two conflicting holders ever overlap, and every grant's fence is above
/// the fence of every grant of its object that was released before it was asked for.
pub async fn subtree_holders_never_overlap(svc: Arc<dyn LockService>, _caps: &Capabilities) {
    const TASKS: usize = 16;
    const CYCLES: usize = 40;
    const TREE: [&str; 7] = ["t", "t/a", "t/a/1", "t/a/2", "t/b", "t/b/1", "tb"];
    let scope = Scope::new("subtree_stress");
    let ids: Vec<String> = TREE.iter().map(|n| scope.object(n).to_string()).collect();
    let universe: Arc<Vec<String>> = Arc::new(ids);
    /// Who holds what right now: (task, object index, mode, scope).
    type Held = Vec<(usize, usize, LockMode, LockScope)>;
    #[derive(Default)]
    struct Records {
        held: Held,
        /// Per object, the highest fence of a grant whose holder has let go of it.
        retired: HashMap<usize, lockcore::Fence>,
        grants: usize,
    }
    let records = Arc::new(Mutex::new(Records::default()));
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let (svc, universe, records) = (svc.clone(), universe.clone(), records.clone());
        let owner = scope.owner(&format!("task-{task}"));
        tasks.push(tokio::spawn(async move {
            for cycle in 0..CYCLES {
                let draw = (task * 31 + cycle * 17 + task * cycle) % 97;
                let at = draw % TREE.len();
                let mode = if draw % 5 < 2 { Shared } else { Exclusive };
                let lock_scope = if draw % 3 == 0 { Subtree } else { Object };
                let object = ObjectId::new(&universe[at]).expect("valid");
                let request = AcquireRequest::many(
                    vec![spec(&object, mode, lock_scope)],
                    owner.clone(),
                    LONG,
                )
                .with_wait(Duration::from_secs(60));
                let floor = records.lock().expect("records").retired.get(&at).copied();
                let grant = svc
                    .acquire_with(&request)
                    .await
                    .unwrap_or_else(|e| panic!("task {task} cycle {cycle}: {e}"));
                let fence = grant.leases[0].fence;
                {
                    let mut r = records.lock().expect("records");
                    let all: Vec<&str> = universe.iter().map(String::as_str).collect();
                    for &(other, other_at, other_mode, other_scope) in &r.held {
                        let overlap = covered(&universe[at], lock_scope, &all)
                            .iter()
                            .any(|id| covered(&universe[other_at], other_scope, &all).contains(id));
                        assert!(
                            !(overlap && (mode == Exclusive || other_mode == Exclusive)),
                            "task {task} was granted {mode} {lock_scope} {} while task {other} \
                             holds {other_mode} {other_scope} {}",
                            TREE[at],
                            TREE[other_at]
                        );
                    }
                    if let Some(floor) = floor {
                        assert!(
                            fence > floor,
                            "fence {fence} of {} is not above {floor}, released before",
                            TREE[at]
                        );
                    }
                    r.held.push((task, at, mode, lock_scope));
                    r.grants += 1;
                }
                tokio::task::yield_now().await;
                {
                    let mut r = records.lock().expect("records");
                    r.held.retain(|&(t, _, _, _)| t != task);
                    let retired = r.retired.entry(at).or_insert(fence);
                    *retired = (*retired).max(fence);
                }
                release_all(&*svc, &grant).await;
            }
        }));
    }
    for task in tasks {
        task.await.expect("stress task panicked");
    }
    assert_eq!(records.lock().expect("records").grants, TASKS * CYCLES);
}
