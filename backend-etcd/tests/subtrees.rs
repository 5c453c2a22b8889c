//! etcd-specific checks of subtree locks and lock-delay: holders granted through two stores
//! (two lockd processes' worth, each with its own watch) never overlap across the tree, and
//! lock-delays run on etcd leases of whole seconds, follow renewals, and end with a release.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backend_etcd::{EtcdConfig, EtcdLockService};
use lockcore::path::conflicts;
use lockcore::{
    AcquireRequest, ConflictCause, LockError, LockMode, LockScope, LockService as _, LockSpec,
    ObjectId, OwnerId,
};

const LONG: Duration = Duration::from_secs(30);
/// How late etcd may delete an expired lease's keys: its leader revokes expired leases on a
/// 500 ms tick, through Raft.
const REVOCATION_LAG: Duration = Duration::from_millis(1500);
/// How early this process's clock may see an instant that etcd's lease clock places later.
const CLOCK_TOLERANCE: Duration = Duration::from_millis(100);

fn object(name: &str) -> ObjectId {
    ObjectId::new(name).expect("valid object")
}

fn owner(name: &str) -> OwnerId {
    OwnerId::new(name).expect("valid owner")
}

async fn two_services() -> Option<[Arc<EtcdLockService>; 2]> {
    let url = common::url_or_skip()?;
    let connect = || async {
        Arc::new(
            common::connect(EtcdConfig::from_url(&url))
                .await
                .expect("connects"),
        )
    };
    Some([connect().await, connect().await])
}

/// One grant as its holder saw it: from the return of the acquire to the sending of the
/// release, so the true hold contains it.
#[derive(Debug, Clone)]
struct Held {
    task: usize,
    claims: Vec<(String, LockScope, LockMode)>,
    from: Instant,
    until: Instant,
}

/// Twelve tasks, half on each of two stores, lock a small tree at random: single claims in
/// both modes and scopes, and renames (two exclusive subtrees in one request). Waiters are woken
/// by the watch of their own store, whichever store the holder released through. From the
/// holders' own records, no two conflicting grants ever overlap in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subtree_and_object_holders_of_two_stores_never_overlap() {
    let Some(services) = two_services().await else {
        return;
    };
    const TASKS: usize = 12;
    const CYCLES: usize = 25;
    const TREE: [&str; 7] = ["t", "t/a", "t/a/1", "t/a/2", "t/b", "t/b/1", "tb"];
    const RENAMES: [(&str, &str); 3] = [("t/a", "t/b"), ("t/a/1", "t/b/1"), ("t/b", "tb")];
    let root = format!("/subtree-stress-{:x}", rand::random::<u64>());
    let path = move |name: &str| format!("{root}/{name}");
    let records: Arc<Mutex<Vec<Held>>> = Arc::default();
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let (service, records) = (services[task % 2].clone(), records.clone());
        let path = path.clone();
        tasks.push(tokio::spawn(async move {
            let who = owner(&format!("task-{task}"));
            for cycle in 0..CYCLES {
                let claims: Vec<(String, LockScope, LockMode)> = if rand::random_range(0..6) == 0 {
                    let (from, to) = RENAMES[rand::random_range(0..RENAMES.len())];
                    [from, to]
                        .iter()
                        .map(|n| (path(n), LockScope::Subtree, LockMode::Exclusive))
                        .collect()
                } else {
                    let name = TREE[rand::random_range(0..TREE.len())];
                    let mode = if rand::random_range(0..5) < 2 {
                        LockMode::Shared
                    } else {
                        LockMode::Exclusive
                    };
                    let scope = if rand::random_range(0..3) == 0 {
                        LockScope::Subtree
                    } else {
                        LockScope::Object
                    };
                    vec![(path(name), scope, mode)]
                };
                let specs = claims
                    .iter()
                    .map(|(id, scope, mode)| LockSpec::new(object(id), *mode).with_scope(*scope))
                    .collect();
                let request = AcquireRequest::many(specs, who.clone(), LONG)
                    .with_wait(Duration::from_secs(60));
                let grant = service
                    .acquire_with(&request)
                    .await
                    .unwrap_or_else(|e| panic!("task {task} cycle {cycle}: {e}"));
                let from = Instant::now();
                tokio::time::sleep(Duration::from_millis(rand::random_range(0..10))).await;
                let until = Instant::now();
                let locks: Vec<_> = grant
                    .leases
                    .iter()
                    .map(|l| (l.object.clone(), l.token.clone()))
                    .collect();
                records.lock().expect("records").push(Held {
                    task,
                    claims,
                    from,
                    until,
                });
                let released = service.release_many(&locks).await.expect("release");
                assert!(released.iter().all(Result::is_ok), "{released:?}");
            }
        }));
    }
    for task in tasks {
        task.await.expect("stress task panicked");
    }
    let records = records.lock().expect("records");
    assert_eq!(records.len(), TASKS * CYCLES);
    for (i, a) in records.iter().enumerate() {
        for b in &records[i + 1..] {
            if a.until <= b.from || b.until <= a.from {
                continue;
            }
            for (x, x_scope, x_mode) in &a.claims {
                for (y, y_scope, y_mode) in &b.claims {
                    assert!(
                        !conflicts((x, *x_scope, *x_mode), (y, *y_scope, *y_mode)),
                        "task {} held {x_mode} {x_scope} {x} while task {} held {y_mode} \
                         {y_scope} {y}",
                        a.task,
                        b.task
                    );
                }
            }
        }
    }
}

/// etcd leases count whole seconds, so a lock-delay is rounded up to whole seconds: 300 ms
/// delays for a full second after the lease's expiry. Meanwhile a plain acquire is refused
/// with cause `lock_delay`, naming the lost holder, and at most two seconds as `retry_after`
/// (the marker lease's time left, counted in whole seconds by etcd, plus one); a blocking
/// acquire through another store is granted once the delay's marker is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_delay_counts_whole_seconds_rounded_up() {
    let Some([holder_side, waiter_side]) = two_services().await else {
        return;
    };
    let file = object(&format!("/delay-seconds-{:x}/f", rand::random::<u64>()));
    let ttl = backend_etcd::DEFAULT_MIN_TTL;
    let started = Instant::now();
    let request = AcquireRequest::new(file.clone(), owner("lost"), ttl)
        .with_lock_delay(Duration::from_millis(300));
    holder_side.acquire_with(&request).await.expect("granted");
    // Once etcd has revoked the holder's lease, its delay shows.
    let conflicts = loop {
        let refused = waiter_side
            .acquire(&file, &owner("next"), LONG, Duration::ZERO)
            .await;
        let Err(LockError::Locked { conflicts, .. }) = refused else {
            panic!("granted within the lease and its delay: {refused:?}");
        };
        if conflicts[0].cause != ConflictCause::Held {
            break conflicts;
        }
        assert!(
            started.elapsed() < ttl + REVOCATION_LAG,
            "the holder outlives its lease"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(conflicts[0].cause, ConflictCause::LockDelay);
    assert_eq!(conflicts[0].holder, owner("lost"));
    assert!(
        conflicts[0].retry_after <= Duration::from_secs(2),
        "{:?}",
        conflicts[0].retry_after
    );
    let shown = waiter_side
        .inspect(&file)
        .await
        .expect("inspect")
        .and_then(|info| info.delay)
        .expect("inspect shows the delay");
    assert!(shown.remaining <= Duration::from_secs(1), "{shown:?}");
    let won = waiter_side
        .acquire(&file, &owner("next"), LONG, Duration::from_secs(10))
        .await
        .expect("granted when the delay ends");
    let waited = started.elapsed();
    assert!(
        waited + CLOCK_TOLERANCE >= ttl + Duration::from_secs(1),
        "granted {waited:?} after the grant: the 300 ms delay counts as a whole second"
    );
    assert!(
        waited <= ttl + Duration::from_secs(1) + 2 * REVOCATION_LAG,
        "granted only {waited:?} after the grant: the watch should wake the waiter"
    );
    waiter_side
        .release(&file, &won.token)
        .await
        .expect("release");
}

/// A renewal keeps the lock-delay the grant was made with: the delay starts from the renewed
/// lease's expiry, not the first one's, and lasts as long.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_carries_the_lock_delay_along() {
    let Some([service, _]) = two_services().await else {
        return;
    };
    let file = object(&format!("/delay-renew-{:x}/f", rand::random::<u64>()));
    let (ttl, renewed_ttl, delay) = (
        Duration::from_secs(2),
        Duration::from_secs(4),
        Duration::from_secs(3),
    );
    let request = AcquireRequest::new(file.clone(), owner("renewer"), ttl).with_lock_delay(delay);
    let lease = service
        .acquire_with(&request)
        .await
        .expect("granted")
        .into_first();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let renewed_at = Instant::now();
    service
        .renew(&file, &lease.token, renewed_ttl)
        .await
        .expect("renewed");
    // Past the first lease and its revocation: still held, and no delay yet.
    tokio::time::sleep(ttl + REVOCATION_LAG - Duration::from_secs(1)).await;
    let info = service
        .inspect(&file)
        .await
        .expect("inspect")
        .expect("still held");
    assert_eq!(info.holders.len(), 1);
    assert!(info.delay.is_none(), "{info:?}");
    // Past the renewed lease: its delay is in force.
    tokio::time::sleep_until((renewed_at + renewed_ttl + REVOCATION_LAG).into()).await;
    let refused = service
        .acquire(&file, &owner("next"), LONG, Duration::ZERO)
        .await;
    assert!(
        matches!(
            &refused,
            Err(LockError::Locked { conflicts, .. }) if conflicts[0].cause == ConflictCause::LockDelay
        ),
        "{refused:?}"
    );
    let won = service
        .acquire(&file, &owner("next"), LONG, Duration::from_secs(10))
        .await
        .expect("granted when the delay ends");
    assert!(
        renewed_at.elapsed() + CLOCK_TOLERANCE >= renewed_ttl + delay,
        "granted {:?} after the renewal, before its TTL plus the delay",
        renewed_at.elapsed()
    );
    assert!(won.fence > lease.fence);
    service.release(&file, &won.token).await.expect("release");
}

/// A downgraded holder's lock-delay is a shared one: after it expires, shared requests are
/// granted at once and exclusive ones wait for the delay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_downgrade_makes_the_lock_delay_shared() {
    let Some([service, _]) = two_services().await else {
        return;
    };
    let dir = object(&format!("/delay-downgrade-{:x}", rand::random::<u64>()));
    let file = object(&format!("{dir}/f"));
    let ttl = backend_etcd::DEFAULT_MIN_TTL;
    let request = AcquireRequest::many(
        vec![LockSpec::subtree(dir.clone(), LockMode::Exclusive)],
        owner("writer"),
        ttl,
    )
    .with_lock_delay(Duration::from_secs(5));
    let lease = service
        .acquire_with(&request)
        .await
        .expect("granted")
        .into_first();
    service
        .downgrade(&dir, &lease.token)
        .await
        .expect("downgraded");
    tokio::time::sleep(ttl + REVOCATION_LAG).await;
    let reader = service
        .acquire_in(
            &file,
            LockMode::Shared,
            &owner("reader"),
            LONG,
            Duration::ZERO,
        )
        .await
        .expect("a shared lock-delay admits shared requests");
    let refused = service
        .acquire(
            &object(&format!("{dir}/g")),
            &owner("next"),
            LONG,
            Duration::ZERO,
        )
        .await;
    assert!(
        matches!(
            &refused,
            Err(LockError::Locked { conflicts, .. }) if conflicts[0].cause == ConflictCause::LockDelay
        ),
        "{refused:?}"
    );
    let shown = service
        .inspect(&dir)
        .await
        .expect("inspect")
        .and_then(|info| info.delay)
        .expect("the delay shows on the subtree's root");
    assert_eq!(
        (shown.mode, shown.scope),
        (LockMode::Shared, LockScope::Subtree)
    );
    service
        .release(&file, &reader.token)
        .await
        .expect("release");
}

/// The deepest ids in the largest request still make one decision: 64 objects 32 segments deep,
/// with no ancestor in common below the root, read 4 000 ranges (more than one transaction
/// holds) and guard far more than etcd's 128 compares (the guards are merged into fewer, wider
/// ones). Granted when free, refused when a subtree lock covers one of them from halfway up,
/// and granted to a waiter when it goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deepest_largest_request_fits_etcds_transaction_limits() {
    let Some([service, other_side]) = two_services().await else {
        return;
    };
    let root = format!("/deep-{:x}", rand::random::<u64>());
    let chain = |i: usize| {
        let mut id = format!("{root}/k{i}");
        for depth in 2..lockcore::MAX_OBJECT_DEPTH {
            id.push_str(&format!("/{depth}"));
        }
        object(&id)
    };
    let specs: Vec<LockSpec> = (0..lockcore::MAX_OBJECTS_PER_REQUEST)
        .map(|i| LockSpec::exclusive(chain(i)))
        .collect();
    let request = AcquireRequest::many(specs.clone(), owner("deep"), LONG);
    let first = service.acquire_with(&request).await.expect("granted");
    let locks: Vec<_> = first
        .leases
        .iter()
        .map(|l| (l.object.clone(), l.token.clone()))
        .collect();
    let released = service.release_many(&locks).await.expect("release");
    assert!(released.iter().all(Result::is_ok), "{released:?}");

    let halfway = lockcore::path::ancestors(chain(37).as_str())
        .nth(15)
        .map(object)
        .expect("deep enough");
    let cover = other_side
        .acquire_with(&AcquireRequest::many(
            vec![LockSpec::subtree(halfway.clone(), LockMode::Shared)],
            owner("snapshot"),
            LONG,
        ))
        .await
        .expect("granted")
        .into_first();
    let refused = service.acquire_with(&request).await;
    assert!(
        matches!(
            &refused,
            Err(LockError::Locked { conflicts, .. })
                if conflicts.len() == 1 && conflicts[0].holder == owner("snapshot")
        ),
        "{refused:?}"
    );
    let waiter = tokio::spawn({
        let service = service.clone();
        let request = request.clone().with_wait(Duration::from_secs(10));
        async move { service.acquire_with(&request).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    other_side
        .release(&halfway, &cover.token)
        .await
        .expect("release");
    let second = waiter
        .await
        .expect("waiter task")
        .expect("granted once the subtree lock goes");
    assert!(second
        .leases
        .iter()
        .zip(&first.leases)
        .all(|(b, a)| b.fence > a.fence));
    let locks: Vec<_> = second
        .leases
        .iter()
        .map(|l| (l.object.clone(), l.token.clone()))
        .collect();
    let released = service.release_many(&locks).await.expect("release");
    assert!(released.iter().all(Result::is_ok), "{released:?}");
}

/// Taking back a grant whose answer was lost is a release: each subtree holder still there and
/// its lock-delay marker go together (here, after one of the grant's two holders was already
/// released), so nothing delays the next claim under it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taking_back_a_lost_grant_leaves_no_lock_delay() {
    use lockcore::store::{Attempt, Attempted, Claim, HolderRef, LockStore as _, Verdict};
    use lockcore::{TokenDigest, Undo};
    let Some([service, _]) = two_services().await else {
        return;
    };
    let store = service.store();
    let run = rand::random::<u64>();
    let (gone, dir) = (
        object(&format!("/take-back-{run:x}/gone")),
        object(&format!("/take-back-{run:x}/dir")),
    );
    let claim = |object: &ObjectId, scope| Claim {
        object: object.clone(),
        mode: LockMode::Exclusive,
        scope,
        digest: TokenDigest::from_bytes(&rand::random::<[u8; 32]>()).expect("32 bytes"),
    };
    let claims = [
        claim(&gone, LockScope::Object),
        claim(&dir, LockScope::Subtree),
    ];
    let lost = owner("lost-reply");
    let attempted = store
        .try_acquire(Attempt {
            owner: &lost,
            claims: &claims,
            ttl: LONG,
            lock_delay: Duration::from_secs(30),
            queueing: None,
        })
        .await
        .expect("attempt");
    let Attempted::Granted(granted) = attempted else {
        panic!("{attempted:?}");
    };
    let released = store
        .release(&[HolderRef {
            object: gone.clone(),
            digest: claims[0].digest,
            fence: granted[0].fence,
        }])
        .await
        .expect("release");
    assert_eq!(released, [Verdict::Done(())]);
    assert_eq!(
        store.abandon(&claims).await.expect("abandon"),
        Undo::TookBack
    );
    assert_eq!(service.inspect(&dir).await.expect("inspect"), None);
    let file = object(&format!("{dir}/f"));
    let next = service
        .acquire(&file, &owner("next"), LONG, Duration::ZERO)
        .await
        .expect("no lock-delay after a take-back");
    service.release(&file, &next.token).await.expect("release");
}
