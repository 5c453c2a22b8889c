//! Subtree locks and lock-delays, as only the in-memory backend can be checked: its ordered
//! index, its set of subtree roots and its timers stay consistent with the slots through
//! grants, releases, expiries and sweeps; lock-delay records live exactly as long as the delay;
//! and under many concurrent tasks no two conflicting holders ever overlap.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lockcore::store::{Attempt, Attempted, Claim, LockStore, Queueing, MAX_BLOCKERS};
use lockcore::{
    AcquireRequest, ConflictCause, Grant, LeaseEnd, LockError, LockMode, LockScope, LockService,
    LockSpec, ObjectId, OwnerId, TokenIssuer,
};
use tokio::time::{sleep, Instant};

use crate::{MemoryConfig, MemoryLockService, MemoryStore};

use LockMode::{Exclusive, Shared};
use LockScope::{Object, Subtree};

const LONG: Duration = Duration::from_secs(60);

fn service() -> MemoryLockService {
    MemoryLockService::new(
        MemoryStore::new(MemoryConfig::default()),
        TokenIssuer::random(),
    )
}

fn object(name: &str) -> ObjectId {
    ObjectId::new(name).expect("valid object")
}

fn owner(name: &str) -> OwnerId {
    OwnerId::new(name).expect("valid owner")
}

fn spec(name: &str, mode: LockMode, scope: LockScope) -> LockSpec {
    LockSpec::new(object(name), mode).with_scope(scope)
}

async fn take(locks: &MemoryLockService, spec: LockSpec, who: &str, ttl: Duration) -> Grant {
    let what = format!("{} {} {}", spec.mode, spec.scope, spec.object);
    locks
        .acquire_with(&AcquireRequest::many(vec![spec], owner(who), ttl))
        .await
        .unwrap_or_else(|e| panic!("{what} should be granted: {e}"))
}

async fn take_with_delay(
    locks: &MemoryLockService,
    spec: LockSpec,
    who: &str,
    ttl: Duration,
    delay: Duration,
) -> Grant {
    locks
        .acquire_with(&AcquireRequest::many(vec![spec], owner(who), ttl).with_lock_delay(delay))
        .await
        .expect("granted")
}

async fn release(locks: &MemoryLockService, grant: &Grant) {
    for lease in &grant.leases {
        locks
            .release(&lease.object, &lease.token)
            .await
            .expect("holder releases");
    }
}

/// Waits (up to 5 s of real time) until `done` holds, checking every few milliseconds.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn the_index_and_the_roots_follow_grants_and_releases() {
    let locks = service();
    let store = locks.store();
    let dir = take(&locks, spec("/v/a", Exclusive, Subtree), "renamer", LONG).await;
    let beside = take(&locks, spec("/v/b/f", Exclusive, Object), "writer", LONG).await;
    let snapshot = take(&locks, spec("/w", Shared, Subtree), "snap", LONG).await;
    let reader = take(&locks, spec("/w/x/y", Shared, Object), "reader", LONG).await;
    store.assert_index_consistent();
    assert_eq!(store.held(), 4);
    assert_eq!(store.roots(), 2, "/v/a and /w hold subtree locks");

    release(&locks, &dir).await;
    store.assert_index_consistent();
    assert_eq!(store.roots(), 1, "a released subtree lock leaves the roots");
    release(&locks, &snapshot).await;
    release(&locks, &reader).await;
    release(&locks, &beside).await;
    store.assert_index_consistent();
    assert_eq!((store.held(), store.roots()), (0, 0));
}

#[tokio::test]
async fn the_sweeper_empties_the_index_and_the_roots_as_leases_expire() {
    let locks = service();
    let store = locks.store();
    let short = Duration::from_millis(40);
    for n in 0..20 {
        let scope = if n % 3 == 0 { Subtree } else { Object };
        let mode = if n % 2 == 0 { Shared } else { Exclusive };
        take(&locks, spec(&format!("/s/{n}/d"), mode, scope), "h", short).await;
        if mode == Shared {
            take(
                &locks,
                spec(&format!("/s/{n}/d/f"), Shared, Object),
                "h",
                short,
            )
            .await;
        }
    }
    store.assert_index_consistent();
    assert!(store.roots() > 0);
    // Nobody touches these objects again: only the sweeper can clear them.
    eventually("every expired lease is reclaimed", || store.held() == 0).await;
    store.assert_index_consistent();
    assert_eq!(store.roots(), 0, "expired subtree leases leave the roots");
    assert_eq!(store.timers_live(), 0);
}

#[tokio::test]
async fn a_lock_delay_record_lives_until_the_delay_ends_then_the_sweeper_drops_it() {
    let locks = service();
    let store = locks.store();
    let (ttl, delay) = (Duration::from_millis(50), Duration::from_millis(300));
    let granted_at = Instant::now();
    let lost = take_with_delay(&locks, spec("/d/f", Exclusive, Object), "gone", ttl, delay).await;
    sleep(ttl + Duration::from_millis(60)).await;
    // The sweeper has seen the expiry (nobody touched the object): the record remains.
    assert_eq!(store.held(), 1, "the delay keeps its slot");
    assert_eq!(store.timers_live(), 1, "the delay keeps the holder's timer");
    store.assert_index_consistent();
    let info = locks
        .inspect(&object("/d/f"))
        .await
        .expect("inspect")
        .expect("the delay shows");
    assert!(info.holders.is_empty());
    let shown = info.delay.expect("delay in force");
    assert_eq!(shown.fence, lost.leases[0].fence);
    assert!(shown.remaining <= delay);
    eventually("the delay record is dropped", || store.held() == 0).await;
    assert!(
        granted_at.elapsed() >= ttl + delay,
        "dropped only once the delay ended"
    );
    assert_eq!(store.timers_live(), 0);
    store.assert_index_consistent();
    assert!(locks
        .inspect(&object("/d/f"))
        .await
        .expect("inspect")
        .is_none());
}

#[tokio::test]
async fn a_refusal_during_a_delay_says_how_long_the_delay_has_left() {
    let locks = service();
    let (ttl, delay) = (Duration::from_millis(30), Duration::from_millis(400));
    take_with_delay(&locks, spec("/d", Exclusive, Subtree), "gone", ttl, delay).await;
    sleep(ttl + Duration::from_millis(20)).await;
    let refused = locks
        .acquire_with(&AcquireRequest::many(
            vec![spec("/d/x/f", Shared, Object)],
            owner("next"),
            LONG,
        ))
        .await;
    let Err(LockError::Locked { conflicts, .. }) = refused else {
        panic!("expected Locked, got {refused:?}");
    };
    assert_eq!(conflicts[0].cause, ConflictCause::LockDelay);
    assert_eq!(conflicts[0].holder, owner("gone"));
    assert!(conflicts[0].retry_after <= delay - Duration::from_millis(20));
    assert!(conflicts[0].retry_after >= Duration::from_millis(100));
    assert_eq!(
        locks.store().roots(),
        1,
        "the subtree delay is still a root"
    );
    eventually("the subtree delay ends", || locks.store().roots() == 0).await;
    locks.store().assert_index_consistent();
}

#[tokio::test]
async fn a_blocking_acquire_is_granted_when_the_delay_ends() {
    let locks = Arc::new(service());
    let (ttl, delay) = (Duration::from_millis(30), Duration::from_millis(250));
    let started = Instant::now();
    let lost = take_with_delay(&locks, spec("/d", Exclusive, Subtree), "gone", ttl, delay).await;
    let won = locks
        .acquire(
            &object("/d/f"),
            &owner("next"),
            LONG,
            Duration::from_secs(5),
        )
        .await
        .expect("granted after the delay");
    let waited = started.elapsed();
    assert!(waited >= ttl + delay, "granted after {waited:?}");
    assert!(
        waited < ttl + delay + Duration::from_millis(500),
        "granted promptly: {waited:?}"
    );
    assert!(won.fence > lost.leases[0].fence);
    locks
        .release(&won.object, &won.token)
        .await
        .expect("release");
    locks.store().assert_index_consistent();
}

#[tokio::test]
async fn an_expiry_into_a_lock_delay_is_reported_once_when_the_lease_ends() {
    let locks = service();
    let ends: Arc<Mutex<Vec<LeaseEnd>>> = Arc::default();
    let sink = {
        let ends = ends.clone();
        Arc::new(move |end: LeaseEnd| ends.lock().expect("ends").push(end))
    };
    assert!(locks.report_lease_ends(sink));
    let (ttl, delay) = (Duration::from_millis(30), Duration::from_millis(200));
    take_with_delay(&locks, spec("/r/f", Exclusive, Object), "gone", ttl, delay).await;
    eventually("the expiry is reported", || {
        !ends.lock().expect("ends").is_empty()
    })
    .await;
    assert!(
        locks.store().held() == 1,
        "reported while the delay still runs"
    );
    eventually("the delay ends", || locks.store().held() == 0).await;
    let ends = ends.lock().expect("ends");
    assert_eq!(ends.len(), 1, "one report per lease: {ends:?}");
    assert!(ends[0].expired);
}

#[tokio::test]
async fn a_release_leaves_no_delay_record() {
    let locks = service();
    let grant = take_with_delay(
        &locks,
        spec("/d", Exclusive, Subtree),
        "h",
        LONG,
        Duration::from_secs(30),
    )
    .await;
    release(&locks, &grant).await;
    assert_eq!((locks.store().held(), locks.store().roots()), (0, 0));
    assert_eq!(locks.store().timers_live(), 0);
    take(&locks, spec("/d/x", Exclusive, Object), "next", LONG).await;
}

#[tokio::test]
async fn list_skips_objects_that_are_only_waited_for_or_delayed() {
    let locks = Arc::new(service());
    let mut held = Vec::new();
    for n in 0..6 {
        held.push(
            take(
                &locks,
                spec(&format!("/p/h{n}"), Exclusive, Object),
                "h",
                LONG,
            )
            .await,
        );
    }
    // Objects under the prefix that have no holder: a lock-delay, and queue entries of a
    // subtree waiter behind a holder.
    take_with_delay(
        &locks,
        spec("/p/h2x", Exclusive, Object),
        "gone",
        Duration::from_millis(10),
        Duration::from_secs(30),
    )
    .await;
    let blocker = take(&locks, spec("/p/q/held", Shared, Object), "h", LONG).await;
    let waiter = {
        let locks = locks.clone();
        tokio::spawn(async move {
            locks
                .acquire_with(
                    &AcquireRequest::many(vec![spec("/p/q", Exclusive, Subtree)], owner("w"), LONG)
                        .with_wait(Duration::from_secs(5)),
                )
                .await
        })
    };
    eventually("the subtree waiter is queued", || {
        locks.store().waiting() == 1
    })
    .await;
    sleep(Duration::from_millis(20)).await;
    let mut listed = Vec::new();
    let mut query = lockcore::ListQuery::new("/p/", 2);
    loop {
        let page = locks.list(&query).await.expect("list");
        assert!(page.locks.len() <= 2);
        listed.extend(page.locks.iter().map(|info| info.object.to_string()));
        match page.next {
            Some(next) => query.after = Some(next),
            None => break,
        }
    }
    let mut expected: Vec<String> = (0..6).map(|n| format!("/p/h{n}")).collect();
    expected.push("/p/q/held".into());
    assert_eq!(listed, expected, "holders only, each once, in id order");
    release(&locks, &blocker).await;
    let won = waiter.await.expect("task").expect("granted");
    release(&locks, &won).await;
    for grant in &held {
        release(&locks, grant).await;
    }
    locks.store().assert_index_consistent();
}

/// The claims of one request, with digests from a real issuer.
fn claims(specs: &[LockSpec], who: &OwnerId) -> Vec<Claim> {
    let issuer = TokenIssuer::random();
    specs
        .iter()
        .map(|spec| Claim {
            object: spec.object.clone(),
            mode: spec.mode,
            scope: spec.scope,
            digest: issuer.prepare_for(spec, who, None).digest(),
        })
        .collect()
}

#[tokio::test]
async fn a_request_that_starts_waiting_names_its_blockers_across_the_tree_up_to_the_cap() {
    let locks = service();
    let mut holders = HashMap::new();
    let above = take(&locks, spec("/b", Shared, Subtree), "above", LONG).await;
    holders.insert(object("/b"), above.leases[0].fence);
    for n in 0..MAX_BLOCKERS + 6 {
        let grant = take(
            &locks,
            spec(&format!("/b/d/f{n:03}"), Shared, Object),
            "r",
            LONG,
        )
        .await;
        holders.insert(grant.leases[0].object.clone(), grant.leases[0].fence);
    }
    let store = locks.store();
    let who = owner("renamer");
    let claims = claims(&[spec("/b/d", Exclusive, Subtree)], &who);
    let attempt = |queueing| Attempt {
        owner: &who,
        claims: &claims,
        ttl: LONG,
        lock_delay: Duration::ZERO,
        queueing,
    };
    let Attempted::Refused {
        conflicts,
        ticket: None,
        blockers,
    } = store.try_acquire(attempt(None)).await.expect("attempt")
    else {
        panic!("refused without a ticket");
    };
    assert_eq!(conflicts.len(), 1);
    assert!(blockers.is_empty(), "no blockers without a ticket drawn");

    let queueing = Queueing {
        ticket: None,
        keep_for: Duration::from_secs(1),
    };
    let Attempted::Refused {
        ticket: Some(ticket),
        blockers,
        ..
    } = store
        .try_acquire(attempt(Some(queueing)))
        .await
        .expect("attempt")
    else {
        panic!("refused with a ticket");
    };
    assert_eq!(blockers.len(), MAX_BLOCKERS, "capped");
    assert!(
        blockers.iter().any(|b| b.object == object("/b")),
        "the subtree holder above counts"
    );
    for blocker in &blockers {
        assert_eq!(holders.get(&blocker.object), Some(&blocker.fence));
        assert_eq!(blocker.wanted, Exclusive);
    }
    let again = Queueing {
        ticket: Some(ticket),
        keep_for: Duration::from_secs(1),
    };
    let Attempted::Refused { blockers, .. } = store
        .try_acquire(attempt(Some(again)))
        .await
        .expect("attempt")
    else {
        panic!("still refused");
    };
    assert!(blockers.is_empty(), "told once, when the ticket is drawn");
    store
        .leave_queue(ticket, &[object("/b/d")])
        .await
        .expect("leave");
    store.assert_index_consistent();
}

/// A record a task keeps of what it holds, from its grant to just before its release.
#[derive(Debug, Clone)]
struct Held {
    task: usize,
    object: String,
    scope: LockScope,
    mode: LockMode,
}

/// The issue's rule, written out independently of lockcore: two locks conflict when a mode is
/// exclusive and what they cover intersects.
fn in_conflict(a: &Held, b: &Held) -> bool {
    let under = |id: &str, root: &str| id.starts_with(&format!("{root}/"));
    let intersect = a.object == b.object
        || (a.scope == Subtree && under(&b.object, &a.object))
        || (b.scope == Subtree && under(&a.object, &b.object));
    intersect && (a.mode == Exclusive || b.mode == Exclusive)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subtree_and_object_locks_from_many_tasks_never_overlap_in_conflict() {
    const TASKS: usize = 16;
    const ROUNDS: usize = 150;
    let tree = [
        "/t", "/t/a", "/t/a/x", "/t/a/x/1", "/t/a/y", "/t/b", "/t/b/x", "/t/ab", "/u",
    ];
    let locks = Arc::new(service());
    let records: Arc<Mutex<Vec<Held>>> = Arc::default();
    let violations: Arc<Mutex<Vec<String>>> = Arc::default();
    let granted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let (locks, records, violations, granted) = (
                locks.clone(),
                records.clone(),
                violations.clone(),
                granted.clone(),
            );
            tokio::spawn(async move {
                let mut seed = 0x9e37_79b9_7f4a_7c15_u64 ^ ((task as u64 + 1) * 0x2545_f491);
                let mut next = move |bound: usize| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    (seed % bound as u64) as usize
                };
                let who = owner(&format!("task{task}"));
                for _ in 0..ROUNDS {
                    // One or two objects per request, never covering each other.
                    let mut specs: Vec<LockSpec> = Vec::new();
                    for _ in 0..1 + next(2) {
                        let name = tree[next(tree.len())];
                        let scope = if next(3) == 0 { Subtree } else { Object };
                        let mode = if next(2) == 0 { Shared } else { Exclusive };
                        let candidate = spec(name, mode, scope);
                        let overlaps = specs.iter().any(|s| {
                            lockcore::path::overlaps(
                                s.object.as_str(),
                                s.scope,
                                candidate.object.as_str(),
                                candidate.scope,
                            )
                        });
                        if !overlaps {
                            specs.push(candidate);
                        }
                    }
                    let wait = if next(4) == 0 {
                        Duration::ZERO
                    } else {
                        Duration::from_secs(10)
                    };
                    let request =
                        AcquireRequest::many(specs.clone(), who.clone(), LONG).with_wait(wait);
                    let grant = match locks.acquire_with(&request).await {
                        Ok(grant) => grant,
                        Err(LockError::Locked { .. }) => continue,
                        Err(other) => panic!("unexpected error: {other}"),
                    };
                    granted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let mine: Vec<Held> = specs
                        .iter()
                        .map(|s| Held {
                            task,
                            object: s.object.to_string(),
                            scope: s.scope,
                            mode: s.mode,
                        })
                        .collect();
                    {
                        let mut records = records.lock().expect("records");
                        for held in &mine {
                            for other in records.iter() {
                                if in_conflict(held, other) {
                                    violations
                                        .lock()
                                        .expect("violations")
                                        .push(format!("{held:?} granted while {other:?} held"));
                                }
                            }
                        }
                        records.extend(mine);
                    }
                    tokio::task::yield_now().await;
                    if next(3) == 0 {
                        sleep(Duration::from_micros(200)).await;
                    }
                    records
                        .lock()
                        .expect("records")
                        .retain(|held| held.task != task);
                    let leases: Vec<_> = grant
                        .leases
                        .iter()
                        .map(|l| (l.object.clone(), l.token.clone()))
                        .collect();
                    for result in locks.release_many(&leases).await.expect("release") {
                        result.expect("released");
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
    let violations = violations.lock().expect("violations").clone();
    assert!(violations.is_empty(), "{violations:#?}");
    assert!(
        granted.load(std::sync::atomic::Ordering::Relaxed) > TASKS * ROUNDS / 4,
        "most requests were granted"
    );
    eventually("waiters that gave up have left the queues", || {
        locks.store().held() == 0
    })
    .await;
    let store = locks.store();
    store.assert_index_consistent();
    assert_eq!(store.roots(), 0);
}
