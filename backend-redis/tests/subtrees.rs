//! Subtree locks and lock-delay on Redis, beyond the shared suite: the lock-delay decided on
//! Redis's clock from the records the scripts keep, key expiries that cover it, the index that
//! finds what is under a subtree (kept through renewals, swept of objects whose locks lapsed),
//! blockers, wake-ups across processes, and a stress through two backends (two processes)
//! sharing one Redis.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backend_redis::{RedisConfig, RedisLockService};
use lockcore::store::{Attempt, Attempted, Claim, Queueing};
use lockcore::{
    AcquireRequest, ConflictCause, Grant, LockError, LockMode, LockScope, LockService, LockSpec,
    LockStore, ObjectId, OwnerId, TokenDigest,
};
use rand::Rng;
use redis::aio::MultiplexedConnection;
use tokio::time::{sleep, Instant};

use LockMode::{Exclusive, Shared};
use LockScope::{Object, Subtree};

const LONG: Duration = Duration::from_secs(30);
/// How soon a release message wakes a waiter: far above any scheduling hiccup, and below the
/// 1.7 s after which the waiter would try again anyway (it renews its queue entries every
/// `QUEUE_KEEPALIVE`, 2 s, and [`waiting`] releases 0.3 s after its first attempt).
const PROMPTLY: Duration = Duration::from_millis(1_000);

fn object(name: &str) -> ObjectId {
    ObjectId::new(name).expect("valid object id")
}

fn owner(name: &str) -> OwnerId {
    OwnerId::new(name).expect("valid owner id")
}

fn spec(name: &str, mode: LockMode, scope: LockScope) -> LockSpec {
    LockSpec::new(object(name), mode).with_scope(scope)
}

/// A backend, its config and a plain connection to the same Redis, or `None` (skipped).
async fn setup() -> Option<(RedisLockService, RedisConfig, MultiplexedConnection)> {
    let url = common::url_or_skip()?;
    let config = common::test_config(&url);
    let service = common::connect(config.clone()).await.expect("connects");
    let raw = redis::Client::open(url)
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("raw connection");
    Some((service, config, raw))
}

async fn query<T: redis::FromRedisValue>(raw: &mut MultiplexedConnection, cmd: &redis::Cmd) -> T {
    cmd.query_async(raw).await.expect("raw command")
}

fn cmd(name: &str, args: &[&str]) -> redis::Cmd {
    let mut cmd = redis::cmd(name);
    for arg in args {
        cmd.arg(*arg);
    }
    cmd
}

/// Redis's clock, in ms.
async fn redis_now_ms(raw: &mut MultiplexedConnection) -> u64 {
    let (secs, micros): (u64, u64) = query(raw, &redis::cmd("TIME")).await;
    secs * 1000 + micros / 1000
}

/// The holders key of an object whose name needs no escaping.
fn holders_key(config: &RedisConfig, name: &str) -> String {
    format!("{}{{{name}}}:holders", config.key_prefix)
}

fn index_key(config: &RedisConfig) -> String {
    format!("{}index", config.key_prefix)
}

fn deadlines_key(config: &RedisConfig) -> String {
    format!("{}deadlines", config.key_prefix)
}

async fn indexed(raw: &mut MultiplexedConnection, config: &RedisConfig) -> BTreeSet<String> {
    query(raw, &cmd("ZRANGE", &[&index_key(config), "0", "-1"])).await
}

async fn grant(svc: &RedisLockService, specs: Vec<LockSpec>, who: &str, ttl: Duration) -> Grant {
    svc.acquire_with(&AcquireRequest::many(specs, owner(who), ttl))
        .await
        .unwrap_or_else(|e| panic!("{who} should be granted: {e}"))
}

async fn release_all(svc: &RedisLockService, grant: &Grant) {
    for lease in &grant.leases {
        svc.release(&lease.object, &lease.token)
            .await
            .unwrap_or_else(|e| panic!("releasing {} should succeed: {e}", lease.object));
    }
}

#[track_caller]
fn refused<T: std::fmt::Debug>(result: Result<T, LockError>) -> Vec<lockcore::Conflict> {
    match result {
        Err(LockError::Locked { conflicts, .. }) => conflicts,
        other => panic!("expected Locked, got {other:?}"),
    }
}

#[tokio::test]
async fn a_lock_delay_is_decided_from_the_records_on_redis_clock() {
    let Some((service, config, mut raw)) = setup().await else {
        return;
    };
    // Records as the scripts write them, timed by Redis's own clock: a lease that expired
    // 100 ms ago with a 5 s lock-delay, and one whose 1 s delay ended 1 s ago.
    let now = redis_now_ms(&mut raw).await;
    let fence = "1000000000000000001";
    for (name, expires, delay) in [("ld/in", now - 100, 5_000), ("ld/over", now - 2_000, 1_000)] {
        let record = format!("x o {fence} {expires} {} 0 {delay} ghost", expires - 1_000);
        let key = holders_key(&config, name);
        let _: () = query(&mut raw, &cmd("HSET", &[&key, &"ab".repeat(32), &record])).await;
        let _: () = query(&mut raw, &cmd("PEXPIRE", &[&key, "60000"])).await;
    }

    let conflicts = refused(
        service
            .acquire_in(
                &object("ld/in"),
                Shared,
                &owner("next"),
                LONG,
                Duration::ZERO,
            )
            .await,
    );
    assert_eq!(conflicts[0].cause, ConflictCause::LockDelay);
    assert_eq!(conflicts[0].holder, owner("ghost"));
    let left = conflicts[0].retry_after;
    assert!(
        left > Duration::from_millis(4_000) && left <= Duration::from_millis(4_900),
        "the delay ends 5 s after the expiry on Redis's clock: {left:?} left"
    );
    let info = service
        .inspect(&object("ld/in"))
        .await
        .expect("inspect")
        .expect("a delay in force is shown");
    assert!(info.holders.is_empty());
    let delay = info.delay.expect("the delay");
    assert_eq!(
        (&delay.owner, delay.mode, delay.scope, delay.fence.get()),
        (
            &owner("ghost"),
            Exclusive,
            Object,
            1_000_000_000_000_000_001
        )
    );
    assert!(delay.remaining <= left + Duration::from_millis(50));

    // The other delay is over: the object is granted and the dead record dropped.
    let lease = service
        .acquire(&object("ld/over"), &owner("next"), LONG, Duration::ZERO)
        .await
        .expect("a lock-delay that ended blocks nobody");
    let fields: u64 = query(&mut raw, &cmd("HLEN", &[&holders_key(&config, "ld/over")])).await;
    assert_eq!(fields, 1, "the dead record was dropped");
    service
        .release(&object("ld/over"), &lease.token)
        .await
        .expect("released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_keeps_its_lock_delay_with_keys_that_outlive_it() {
    let Some((service, config, mut raw)) = setup().await else {
        return;
    };
    let service = Arc::new(service);
    let (ttl, delay) = (Duration::from_millis(300), Duration::from_millis(1_500));
    let lease = service
        .acquire_with(
            &AcquireRequest::new(object("ldk/d/f"), owner("vanishing"), ttl).with_lock_delay(delay),
        )
        .await
        .expect("granted")
        .into_first();
    // The holders hash and the object's deadline cover expiry + delay, not just the TTL.
    let pttl: i64 = query(&mut raw, &cmd("PTTL", &[&holders_key(&config, "ldk/d/f")])).await;
    assert!(
        (1_600..=1_800).contains(&pttl),
        "the holders hash lives for ttl + delay: {pttl}"
    );
    let deadline: f64 = query(
        &mut raw,
        &cmd("ZSCORE", &[&deadlines_key(&config), "ldk/d/f"]),
    )
    .await;
    let now = redis_now_ms(&mut raw).await as f64;
    assert!(
        deadline > now + 1_600.0 && deadline <= now + 1_800.0,
        "the deadline is expiry + delay: {deadline} vs now {now}"
    );

    sleep(Duration::from_millis(400)).await;
    // Expired: no holder any more, for every operation...
    for result in [
        service.validate(&lease.object, &lease.token).await.err(),
        service.renew(&lease.object, &lease.token, LONG).await.err(),
        service.release(&lease.object, &lease.token).await.err(),
    ] {
        assert!(
            matches!(result, Some(LockError::NotHeld { .. })),
            "{result:?}"
        );
    }
    // ... but the release did not lift the delay: it blocks the object and the subtrees above.
    for (what, request) in [
        (
            "the object",
            AcquireRequest::new(object("ldk/d/f"), owner("next"), LONG),
        ),
        (
            "a subtree above it",
            AcquireRequest::new(object("ldk/d"), owner("next"), LONG).with_scope(Subtree),
        ),
    ] {
        let conflicts = refused(service.acquire_with(&request).await);
        assert_eq!(conflicts[0].cause, ConflictCause::LockDelay, "{what}");
        assert!(
            conflicts[0].retry_after <= Duration::from_millis(1_400),
            "{what}"
        );
    }
    // A blocking acquire is granted when the delay ends, by its own timer (nothing publishes
    // the end of a delay), not before.
    let started = Instant::now();
    let next = service
        .acquire(
            &object("ldk/d/f"),
            &owner("next"),
            LONG,
            Duration::from_secs(5),
        )
        .await
        .expect("granted when the delay ends");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_millis(1_500),
        "granted {waited:?} after asking, with about 1.1 s of delay left"
    );
    service
        .release(&next.object, &next.token)
        .await
        .expect("released");
}

#[tokio::test]
async fn a_renewal_keeps_an_object_indexed_past_its_first_deadline() {
    let Some((service, config, mut raw)) = setup().await else {
        return;
    };
    let lease = service
        .acquire(
            &object("ix/d/f"),
            &owner("keeper"),
            Duration::from_millis(300),
            Duration::ZERO,
        )
        .await
        .expect("granted");
    service
        .renew(&lease.object, &lease.token, LONG)
        .await
        .expect("renewed");
    sleep(Duration::from_millis(500)).await;
    // Acquires sweep objects past their deadline out of the index: a renewed one is not past it.
    for i in 0..5 {
        let other = service
            .acquire(
                &object(&format!("ix/other/{i}")),
                &owner("o"),
                LONG,
                Duration::ZERO,
            )
            .await
            .expect("granted");
        service
            .release(&other.object, &other.token)
            .await
            .expect("released");
    }
    assert!(indexed(&mut raw, &config).await.contains("ix/d/f"));
    let conflicts = refused(
        service
            .acquire_with(
                &AcquireRequest::new(object("ix/d"), owner("renamer"), LONG).with_scope(Subtree),
            )
            .await,
    );
    assert_eq!(conflicts[0].holder, owner("keeper"));
    service
        .release(&lease.object, &lease.token)
        .await
        .expect("released");
    assert!(
        indexed(&mut raw, &config).await.is_empty(),
        "the last release leaves an empty index"
    );
}

#[tokio::test]
async fn objects_whose_locks_lapsed_leave_the_index() {
    let Some((service, config, mut raw)) = setup().await else {
        return;
    };
    let live = grant(
        &service,
        vec![spec("sw/live", Exclusive, Object)],
        "o",
        LONG,
    )
    .await;
    let vanished: Vec<LockSpec> = (0..40)
        .map(|i| spec(&format!("sw/gone/{i:02}"), Shared, Object))
        .collect();
    grant(&service, vanished, "crashed", Duration::from_millis(100)).await;
    let lazy: Vec<LockSpec> = (0..10)
        .map(|i| spec(&format!("lz/{i}"), Exclusive, Object))
        .collect();
    grant(&service, lazy, "crashed", Duration::from_millis(100)).await;
    assert_eq!(indexed(&mut raw, &config).await.len(), 51);
    sleep(Duration::from_millis(300)).await;

    // A listing that meets objects without any live record drops them from the index.
    let page = service
        .list(&lockcore::ListQuery::new("lz/", 100))
        .await
        .expect("list");
    assert!(page.locks.is_empty());
    assert_eq!(page.next, None);
    let left = indexed(&mut raw, &config).await;
    assert!(left.iter().all(|m| !m.starts_with("lz/")), "{left:?}");

    // Each acquire sweeps up to 16 (plus two per claim) objects past their deadline.
    for _ in 0..3 {
        let other = service
            .acquire(&object("sw/other"), &owner("o"), LONG, Duration::ZERO)
            .await
            .expect("granted");
        service
            .release(&other.object, &other.token)
            .await
            .expect("released");
    }
    assert_eq!(
        indexed(&mut raw, &config).await,
        BTreeSet::from(["sw/live".to_owned()])
    );
    let deadlines: u64 = query(&mut raw, &cmd("ZCARD", &[&deadlines_key(&config)])).await;
    assert_eq!(deadlines, 1);
    release_all(&service, &live).await;
}

/// A store-level attempt that queues (what a waiting acquire does), for `who` with `claims`.
async fn queue_attempt(
    service: &RedisLockService,
    who: &str,
    claims: &[Claim],
    ticket: Option<lockcore::store::Ticket>,
) -> Attempted {
    service
        .store()
        .try_acquire(Attempt {
            owner: &owner(who),
            claims,
            ttl: LONG,
            lock_delay: Duration::ZERO,
            queueing: Some(Queueing {
                ticket,
                keep_for: Duration::from_secs(5),
            }),
        })
        .await
        .expect("attempt")
}

fn claim(name: &str, mode: LockMode, scope: LockScope) -> Claim {
    Claim {
        object: object(name),
        mode,
        scope,
        digest: TokenDigest::from_bytes(&[9; 32]).expect("32 bytes"),
    }
}

#[tokio::test]
async fn blockers_name_each_live_holder_in_conflict_once_when_the_ticket_is_drawn() {
    let Some((service, _config, _raw)) = setup().await else {
        return;
    };
    let holders = [
        (spec("bl/d", Shared, Subtree), "above", true),
        (spec("bl/d/e", Shared, Object), "on", true),
        (spec("bl/d/e/x", Shared, Object), "under", true),
        (spec("bl/d/e/y/z", Shared, Subtree), "deep", true),
        // Not in conflict with a subtree lock on bl/d/e: beside it, an object lock above it,
        // and a sibling whose name extends it.
        (spec("bl/d/f", Shared, Object), "beside", false),
        (spec("bl", Exclusive, Object), "root-object", false),
        (spec("bl/d/ee", Shared, Subtree), "sibling-prefix", false),
    ];
    let mut grants = Vec::new();
    let mut expected = BTreeSet::new();
    for (spec, who, blocks) in holders {
        let name = spec.object.clone();
        let granted = grant(&service, vec![spec], who, LONG).await;
        if blocks {
            expected.insert((name, owner(who), granted.leases[0].fence, "exclusive"));
        }
        grants.push(granted);
    }
    let claims = [claim("bl/d/e", Exclusive, Subtree)];
    let Attempted::Refused {
        ticket: Some(ticket),
        blockers,
        ..
    } = queue_attempt(&service, "renamer", &claims, None).await
    else {
        panic!("the rename must be refused with a ticket");
    };
    let found: BTreeSet<_> = blockers
        .into_iter()
        .map(|b| (b.object, b.owner, b.fence, b.wanted.as_str()))
        .collect();
    assert_eq!(found, expected);
    // Once it waits, later attempts need not report them again.
    let Attempted::Refused { blockers, .. } =
        queue_attempt(&service, "renamer", &claims, Some(ticket)).await
    else {
        panic!("still refused");
    };
    assert!(blockers.is_empty(), "{blockers:?}");
    service
        .store()
        .leave_queue(ticket, &[object("bl/d/e")])
        .await
        .expect("left");
    for granted in &grants {
        release_all(&service, granted).await;
    }
}

#[tokio::test]
async fn blockers_are_capped() {
    let Some((service, _config, _raw)) = setup().await else {
        return;
    };
    let mut grants = Vec::new();
    for batch in 0..2 {
        let specs = (0..40)
            .map(|i| spec(&format!("cap/d/{batch}/{i}"), Shared, Object))
            .collect();
        grants.push(grant(&service, specs, "reader", LONG).await);
    }
    let claims = [claim("cap/d", Exclusive, Subtree)];
    let Attempted::Refused {
        ticket: Some(ticket),
        blockers,
        ..
    } = queue_attempt(&service, "renamer", &claims, None).await
    else {
        panic!("refused with a ticket");
    };
    assert_eq!(blockers.len(), lockcore::store::MAX_BLOCKERS);
    service
        .store()
        .leave_queue(ticket, &[object("cap/d")])
        .await
        .expect("left");
    for granted in &grants {
        release_all(&service, granted).await;
    }
}

/// Two backends on one Redis and prefix: two processes, each with its own listener.
async fn two_nodes() -> Option<(Arc<RedisLockService>, Arc<RedisLockService>)> {
    let url = common::url_or_skip()?;
    let config = common::test_config(&url);
    let a = common::connect(config.clone()).await.expect("connects");
    let b = common::connect(config).await.expect("connects");
    Some((Arc::new(a), Arc::new(b)))
}

/// Starts `request` waiting on `node` (10 s at most) and gives it time to queue.
async fn waiting(
    node: &Arc<RedisLockService>,
    request: AcquireRequest,
) -> tokio::task::JoinHandle<Result<Grant, LockError>> {
    let node = node.clone();
    let task = tokio::spawn(async move {
        node.acquire_with(&request.with_wait(Duration::from_secs(10)))
            .await
    });
    sleep(Duration::from_millis(300)).await;
    assert!(!task.is_finished(), "it waits");
    task
}

/// Awaits a waiter that only a release message from the other node can have woken this soon:
/// every lease it waited for had 30 s left, and its keep-alive is not due yet.
async fn woken_promptly(
    task: tokio::task::JoinHandle<Result<Grant, LockError>>,
    what: &str,
) -> Grant {
    tokio::time::timeout(PROMPTLY, task)
        .await
        .unwrap_or_else(|_| panic!("{what}: not woken promptly"))
        .expect("task")
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releases_wake_waiters_across_the_tree_in_other_processes() {
    assert!(PROMPTLY + Duration::from_millis(300) < lockcore::QUEUE_KEEPALIVE);
    let Some((a, b)) = two_nodes().await else {
        return;
    };
    // A subtree released on one node wakes a waiter under it on the other.
    let tree = grant(&a, vec![spec("wk/d", Exclusive, Subtree)], "renamer", LONG).await;
    let under = waiting(
        &b,
        AcquireRequest::new(object("wk/d/x/y"), owner("writer"), LONG),
    )
    .await;
    release_all(&a, &tree).await;
    let writer = woken_promptly(under, "a waiter under a released subtree").await;
    release_all(&b, &writer).await;

    // An object released under a waiting subtree request wakes it.
    let file = grant(&b, vec![spec("wk/e/x", Exclusive, Object)], "writer", LONG).await;
    let above = waiting(
        &a,
        AcquireRequest::new(object("wk/e"), owner("renamer"), LONG).with_scope(Subtree),
    )
    .await;
    release_all(&b, &file).await;
    let renamer = woken_promptly(above, "a subtree waiter above a released object").await;
    release_all(&a, &renamer).await;

    // A subtree holder turned shared wakes a shared waiter under it.
    let tree = grant(&a, vec![spec("wk/g", Exclusive, Subtree)], "snapshot", LONG).await;
    let reader = waiting(
        &b,
        AcquireRequest::new(object("wk/g/r"), owner("reader"), LONG).with_mode(Shared),
    )
    .await;
    a.downgrade(&tree.leases[0].object, &tree.leases[0].token)
        .await
        .expect("downgraded");
    let read = woken_promptly(reader, "a shared waiter under a downgraded subtree").await;
    release_all(&b, &read).await;
    release_all(&a, &tree).await;

    // A subtree waiter that gives up frees the later waiters under it that queued behind it.
    let held = grant(&a, vec![spec("wk/f/x", Exclusive, Object)], "holder", LONG).await;
    let impatient = {
        let b = b.clone();
        tokio::spawn(async move {
            let request = AcquireRequest::new(object("wk/f"), owner("impatient"), LONG)
                .with_scope(Subtree)
                .with_wait(Duration::from_millis(800));
            b.acquire_with(&request).await
        })
    };
    sleep(Duration::from_millis(200)).await;
    let behind = waiting(
        &a,
        AcquireRequest::new(object("wk/f/y"), owner("later"), LONG),
    )
    .await;
    assert!(matches!(
        impatient.await.expect("task"),
        Err(LockError::Locked { .. })
    ));
    let later = woken_promptly(behind, "a waiter behind a subtree waiter that left").await;
    release_all(&a, &later).await;
    release_all(&a, &held).await;
}

/// Whether two locks conflict, by lockcore's rule.
fn conflict(a: (&str, LockScope, LockMode), b: (&str, LockScope, LockMode)) -> bool {
    lockcore::path::conflicts(a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_processes_never_grant_overlapping_conflicting_locks() {
    let Some((a, b)) = two_nodes().await else {
        return;
    };
    const TASKS: usize = 16;
    const CYCLES: usize = 30;
    const TREE: [&str; 8] = [
        "st", "st/a", "st/a/1", "st/a/2", "st/b", "st/b/1", "st/b/1/x", "stb",
    ];
    /// Who holds what right now, by the holders' own records: (task, object, scope, mode).
    type Held = Vec<(usize, &'static str, LockScope, LockMode)>;
    let held: Arc<Mutex<Held>> = Arc::default();
    let grants = Arc::new(Mutex::new(0usize));
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let node = if task % 2 == 0 { a.clone() } else { b.clone() };
        let (held, grants) = (held.clone(), grants.clone());
        tasks.push(tokio::spawn(async move {
            for cycle in 0..CYCLES {
                // One claim, or two that do not overlap (a rename of one directory into
                // another, say), each in a random mode and scope.
                let mut claims: Vec<(&'static str, LockScope, LockMode)> = Vec::new();
                let count = if rand::rng().random_bool(0.3) { 2 } else { 1 };
                while claims.len() < count {
                    let mut rng = rand::rng();
                    let name = TREE[rng.random_range(0..TREE.len())];
                    let scope = if rng.random_bool(0.4) {
                        Subtree
                    } else {
                        Object
                    };
                    let mode = if rng.random_bool(0.4) {
                        Shared
                    } else {
                        Exclusive
                    };
                    let overlaps = claims.iter().any(|&(other, other_scope, _)| {
                        lockcore::path::overlaps(name, scope, other, other_scope)
                    });
                    if !overlaps {
                        claims.push((name, scope, mode));
                    }
                }
                let specs = claims
                    .iter()
                    .map(|&(name, scope, mode)| spec(name, mode, scope))
                    .collect();
                let request = AcquireRequest::many(specs, owner(&format!("task-{task}")), LONG)
                    .with_wait(Duration::from_secs(60));
                let granted = node
                    .acquire_with(&request)
                    .await
                    .unwrap_or_else(|e| panic!("task {task} cycle {cycle}: {e}"));
                {
                    let mut now_held = held.lock().expect("records");
                    for &mine in &claims {
                        for &(other, name, scope, mode) in now_held.iter() {
                            assert!(
                                !conflict(mine, (name, scope, mode)),
                                "task {task} was granted {mine:?} while task {other} holds \
                                 {mode} {scope} {name}"
                            );
                        }
                    }
                    now_held.extend(claims.iter().map(|&(n, s, m)| (task, n, s, m)));
                    *grants.lock().expect("count") += 1;
                }
                tokio::task::yield_now().await;
                held.lock().expect("records").retain(|&(t, ..)| t != task);
                release_all(&node, &granted).await;
            }
        }));
    }
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(120), task)
            .await
            .expect("the stress ends: waiters never deadlock")
            .expect("stress task panicked");
    }
    assert_eq!(*grants.lock().expect("count"), TASKS * CYCLES);
}
