//! Every operation is one command on the wire: `INFO commandstats` on a private
//! `redis-server` counts exactly one `EVALSHA` per acquire (object or subtree), release, renew,
//! validate, downgrade, inspect and list page, whatever the number of objects (up to 64), and
//! nothing else but the commands the scripts themselves run inside Redis: those read the
//! objects named, their ancestors, and what is under a subtree claim or in a listed prefix,
//! and do not grow with locks held elsewhere.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use backend_redis::RedisLockService;
use common::PrivateRedis;
use lockcore::{
    AcquireRequest, ListQuery, LockError, LockMode, LockScope, LockService, LockSpec, ObjectId,
    OwnerId, MAX_OBJECTS_PER_REQUEST,
};

/// Commands per name (`cmdstat_<name>:calls=N`).
fn command_stats(admin: &mut redis::Connection) -> BTreeMap<String, u64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(admin)
        .expect("INFO commandstats");
    info.lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest.split(',').find_map(|f| f.strip_prefix("calls="))?;
            Some((name.to_owned(), calls.parse().ok()?))
        })
        // The admin connection's own commands.
        .filter(|(name, _)| name != "config|resetstat" && name != "info")
        .collect()
}

fn reset(admin: &mut redis::Connection) {
    redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query::<()>(admin)
        .expect("CONFIG RESETSTAT");
}

fn expected(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(n, c)| ((*n).to_owned(), *c)).collect()
}

/// A service on a private `redis-server` with the listener's keep-alive pings out of the
/// counts, and an admin connection to the same server.
async fn setup() -> Option<(PrivateRedis, RedisLockService, redis::Connection)> {
    let redis = PrivateRedis::start()?;
    let mut config = common::test_config(&redis.url());
    config.listener_ping_interval = Duration::from_secs(3600);
    let service = common::connect(config).await.expect("connects");
    let admin = redis::Client::open(redis.url())
        .and_then(|c| c.get_connection())
        .expect("admin connection");
    Some((redis, service, admin))
}

/// Runs `operation` on `objects` objects and returns the commands Redis counted for it.
///
/// `PEXPIRE` is left out of the counts (after checking there are at most two per object): the scripts
/// only ever extend an expiry, so whether they need to depends on whether a millisecond has
/// passed since the key's expiry was last set.
async fn counted<T>(
    admin: &mut redis::Connection,
    objects: u64,
    operation: impl std::future::Future<Output = T>,
) -> (T, BTreeMap<String, u64>) {
    reset(admin);
    let out = operation.await;
    let mut stats = command_stats(admin);
    let refreshed = stats.remove("pexpire").unwrap_or(0);
    assert!(
        refreshed <= 2 * objects,
        "{refreshed} PEXPIRE for {objects} objects"
    );
    (out, stats)
}

fn object(name: &str) -> ObjectId {
    ObjectId::new(name).expect("valid")
}

fn owner(name: &str) -> OwnerId {
    OwnerId::new(name).expect("valid")
}

const TTL: Duration = Duration::from_secs(30);

/// The commands every acquire runs besides reading its objects: `TIME`, a type check of the
/// index and waiting sets (`ZCARD`, so a key of the wrong type fails the script before it writes)
/// and the sweep of objects whose records all lapsed (`ZRANGEBYSCORE` on the deadlines).
const ACQUIRE_BASE: [(&str, u64); 4] = [
    ("evalsha", 1),
    ("time", 1),
    ("zcard", 2),
    ("zrangebyscore", 1),
];

fn with_base(base: &[(&str, u64)], more: &[(&str, u64)]) -> BTreeMap<String, u64> {
    let mut out = expected(base);
    for (name, calls) in more {
        *out.entry((*name).to_owned()).or_default() += calls;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_operation_is_exactly_one_evalsha() {
    let Some((_redis, service, mut admin)) = setup().await else {
        return;
    };
    // One ancestor, `rt`: every claim reads its holders (for subtree locks on `rt`) and, when
    // nothing else blocks it, its queue (for subtree waiters on `rt`).
    let target = object("rt/file");

    // A first acquire: the clock floor decides the fence (SET of the fence key); the object
    // enters the index and the deadlines.
    let (lease, stats) = counted(
        &mut admin,
        1,
        service.acquire(&target, &owner("rt-owner"), TTL, Duration::ZERO),
    )
    .await;
    let lease = lease.expect("granted");
    assert_eq!(
        stats,
        with_base(
            &ACQUIRE_BASE,
            &[
                ("hgetall", 2),
                ("zrange", 2),
                ("get", 1),
                ("set", 1),
                ("pttl", 2),
                ("hset", 1),
                ("zadd", 2),
            ]
        ),
        "acquire"
    );

    // Renew raises the object's deadline (and keeps it indexed).
    let (renewed, stats) = counted(&mut admin, 1, service.renew(&target, &lease.token, TTL)).await;
    renewed.expect("renewed");
    assert_eq!(
        stats,
        expected(&[
            ("evalsha", 1),
            ("time", 1),
            ("zcard", 2),
            ("hgetall", 1),
            ("pttl", 3),
            ("hset", 1),
            ("zadd", 2),
        ]),
        "renew"
    );

    let (valid, stats) = counted(&mut admin, 1, service.validate(&target, &lease.token)).await;
    valid.expect("valid");
    assert_eq!(
        stats,
        expected(&[("evalsha", 1), ("time", 1), ("hgetall", 1)]),
        "validate"
    );

    // Inspect reads the holders and counts the waiters.
    let (info, stats) = counted(&mut admin, 1, service.inspect(&target)).await;
    assert!(info.expect("inspect").is_some());
    assert_eq!(
        stats,
        expected(&[("evalsha", 1), ("time", 1), ("hgetall", 1), ("zrange", 1)]),
        "inspect"
    );

    // A refused acquire is one command too, writes nothing and publishes nothing; once a
    // holder blocks it, it does not read the ancestor's queue.
    let (refused, stats) = counted(
        &mut admin,
        1,
        service.acquire(&target, &owner("other"), TTL, Duration::ZERO),
    )
    .await;
    assert!(
        matches!(refused, Err(LockError::Locked { .. })),
        "{refused:?}"
    );
    assert_eq!(
        stats,
        with_base(&ACQUIRE_BASE, &[("hgetall", 2), ("zrange", 1)]),
        "refused acquire"
    );

    // Nobody waits anywhere (the waiting set is empty): the downgrade publishes nothing.
    let (shared, stats) = counted(&mut admin, 1, service.downgrade(&target, &lease.token)).await;
    assert_eq!(shared.expect("downgraded").mode, LockMode::Shared);
    assert_eq!(
        stats,
        expected(&[
            ("evalsha", 1),
            ("time", 1),
            ("hgetall", 1),
            ("zcard", 1),
            ("hset", 1),
            ("exists", 1),
        ]),
        "downgrade"
    );

    // The last holder leaves: the object leaves the index and the deadlines.
    let (released, stats) = counted(&mut admin, 1, service.release(&target, &lease.token)).await;
    released.expect("released");
    assert_eq!(
        stats,
        expected(&[
            ("evalsha", 1),
            ("time", 1),
            ("zcard", 3),
            ("hgetall", 1),
            ("hdel", 1),
            ("exists", 2),
            ("zrem", 2),
        ]),
        "release"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subtree_acquire_is_one_evalsha_reading_its_ancestors_and_what_is_under_it() {
    let Some((_redis, service, mut admin)) = setup().await else {
        return;
    };
    let root = object("rt/tree");
    let mut held = Vec::new();
    // Two objects under the root, and neighbours that are not under it: a sibling whose name
    // extends the root's (`rt/treehouse`), one sorting just before the range (`rt/tree-x`),
    // and a cousin.
    for name in [
        "rt/tree/a/x",
        "rt/tree/b",
        "rt/treehouse/c",
        "rt/tree-x",
        "rt/other/d",
    ] {
        let lease = service
            .acquire_in(
                &object(name),
                LockMode::Shared,
                &owner("reader"),
                TTL,
                Duration::ZERO,
            )
            .await
            .expect("granted");
        held.push((object(name), lease.token));
    }
    let shared_tree =
        AcquireRequest::new(root.clone(), owner("snapshot"), TTL).with_scope(LockScope::Subtree);
    let (grant, stats) = counted(
        &mut admin,
        1,
        service.acquire_with(&shared_tree.clone().with_mode(LockMode::Shared)),
    )
    .await;
    let grant = grant.expect("a shared subtree lock admits shared locks under it");
    assert_eq!(
        stats,
        with_base(
            &ACQUIRE_BASE,
            &[
                // The objects under the root, from the index: one range read.
                ("zrangebylex", 1),
                // The root, its ancestor `rt`, and the two objects under the root.
                ("hgetall", 4),
                ("zrange", 4),
                ("get", 1),
                ("set", 1),
                ("pttl", 2),
                ("hset", 1),
                ("zadd", 2),
            ]
        ),
        "shared subtree acquire"
    );

    // An exclusive subtree lock is refused by the shared holders under the root; it reads the
    // same holders, and no queue beyond the root's own once a holder blocks it.
    let (refused, stats) = counted(
        &mut admin,
        1,
        service.acquire_with(
            &AcquireRequest::new(object("rt/tree/a"), owner("renamer"), TTL)
                .with_scope(LockScope::Subtree),
        ),
    )
    .await;
    match refused {
        Err(LockError::Locked { holder, .. }) => assert_eq!(holder, owner("snapshot")),
        other => panic!("expected Locked, got {other:?}"),
    }
    assert_eq!(
        stats,
        with_base(
            &ACQUIRE_BASE,
            &[
                ("zrangebylex", 1),
                // rt/tree/a, its ancestors rt and rt/tree, and rt/tree/a/x under it.
                ("hgetall", 4),
                ("zrange", 1),
            ]
        ),
        "refused exclusive subtree acquire"
    );

    // Releasing a subtree lock when nobody waits anywhere publishes nothing.
    let lease = grant.into_first();
    let (released, stats) = counted(&mut admin, 1, service.release(&root, &lease.token)).await;
    released.expect("released");
    assert_eq!(stats.get("publish"), None, "{stats:?}");
    assert_eq!(stats.get("evalsha"), Some(&1), "{stats:?}");
    for (name, token) in held {
        service.release(&name, &token).await.expect("released");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_objects_are_one_evalsha_per_operation() {
    let Some((_redis, service, mut admin)) = setup().await else {
        return;
    };
    assert_eq!(MAX_OBJECTS_PER_REQUEST, 64);
    let specs: Vec<LockSpec> = (0..MAX_OBJECTS_PER_REQUEST)
        .map(|i| {
            let name = object(&format!("rt/many/{i:02}"));
            if i % 2 == 0 {
                LockSpec::exclusive(name)
            } else {
                LockSpec::shared(name)
            }
        })
        .collect();
    let request = AcquireRequest::many(specs.clone(), owner("many"), TTL);
    let (grant, stats) = counted(&mut admin, 64, service.acquire_with(&request)).await;
    let grant = grant.expect("all 64 granted");
    assert_eq!(grant.leases.len(), 64);
    assert_eq!(stats.get("evalsha"), Some(&1), "acquire of 64: {stats:?}");
    assert_eq!(
        stats.get("hgetall"),
        Some(&66),
        "one read per object, and one per ancestor they share (rt, rt/many): {stats:?}"
    );

    // Refused as a whole (one object is taken): still one command.
    let mut blocked = specs.clone();
    blocked.push(LockSpec::exclusive(object("rt/many/taken")));
    blocked.remove(0);
    let taken = service
        .acquire(
            &object("rt/many/taken"),
            &owner("taker"),
            TTL,
            Duration::ZERO,
        )
        .await
        .expect("granted");
    let refused = AcquireRequest::many(blocked, owner("late"), TTL);
    let (result, stats) = counted(&mut admin, 64, service.acquire_with(&refused)).await;
    assert!(
        matches!(result, Err(LockError::Locked { .. })),
        "{result:?}"
    );
    assert_eq!(
        stats.get("evalsha"),
        Some(&1),
        "refused acquire of 64: {stats:?}"
    );

    let locks: Vec<_> = grant
        .leases
        .iter()
        .map(|l| (l.object.clone(), l.token.clone()))
        .collect();
    let (renewed, stats) = counted(&mut admin, 64, service.renew_many(&locks, TTL)).await;
    assert!(renewed.expect("renew_many").iter().all(Result::is_ok));
    assert_eq!(stats.get("evalsha"), Some(&1), "renew of 64: {stats:?}");
    let (released, stats) = counted(&mut admin, 64, service.release_many(&locks)).await;
    assert!(released.expect("release_many").iter().all(Result::is_ok));
    assert_eq!(stats.get("evalsha"), Some(&1), "release of 64: {stats:?}");
    service
        .release(&object("rt/many/taken"), &taken.token)
        .await
        .expect("released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cost_of_an_operation_does_not_grow_with_locks_held_on_other_objects() {
    let Some((_redis, service, mut admin)) = setup().await else {
        return;
    };
    let target = object("rt/alone");
    let root = object("rt/dir");
    // One lock under the subtree the cycle takes: it is read every time, alone or crowded.
    let inside = service
        .acquire_in(
            &object("rt/dir/held"),
            LockMode::Shared,
            &owner("inside"),
            TTL,
            Duration::ZERO,
        )
        .await
        .expect("granted");
    // Commands for acquire, renew, validate, release of one object, then acquire, inspect and
    // release of a shared subtree lock.
    async fn cycle(
        service: &RedisLockService,
        admin: &mut redis::Connection,
        target: &ObjectId,
        root: &ObjectId,
    ) -> Vec<BTreeMap<String, u64>> {
        let (lease, acquire) = counted(
            admin,
            1,
            service.acquire(target, &owner("o"), TTL, Duration::ZERO),
        )
        .await;
        let lease = lease.expect("granted");
        let (renewed, renew) = counted(admin, 1, service.renew(target, &lease.token, TTL)).await;
        renewed.expect("renewed");
        let (valid, validate) = counted(admin, 1, service.validate(target, &lease.token)).await;
        valid.expect("valid");
        let (released, release) = counted(admin, 1, service.release(target, &lease.token)).await;
        released.expect("released");
        let tree = AcquireRequest::new(root.clone(), owner("o"), TTL)
            .with_scope(LockScope::Subtree)
            .with_mode(LockMode::Shared);
        let (grant, subtree_acquire) = counted(admin, 1, service.acquire_with(&tree)).await;
        let lease = grant.expect("granted").into_first();
        let (info, subtree_inspect) = counted(admin, 1, service.inspect(root)).await;
        assert!(info.expect("inspect").is_some());
        let (released, subtree_release) =
            counted(admin, 1, service.release(root, &lease.token)).await;
        released.expect("released");
        vec![
            acquire,
            renew,
            validate,
            release,
            subtree_acquire,
            subtree_inspect,
            subtree_release,
        ]
    }
    let alone = cycle(&service, &mut admin, &target, &root).await;
    let mut crowd: Vec<LockSpec> = Vec::new();
    for batch in 0..4 {
        crowd.extend((0..50).map(|i| LockSpec::shared(object(&format!("rt/others/{batch}/{i}")))));
    }
    // Neighbours of the subtree in the index's byte order, on both sides of its range
    // `[rt/dir/, rt/dir0)`, and subtree locks elsewhere.
    for neighbour in ["rt/dir-x", "rt/dir0", "rt/dirt", "rt/di"] {
        crowd.extend((0..25).map(|i| LockSpec::shared(object(&format!("{neighbour}/{i}")))));
    }
    crowd.push(LockSpec::subtree(object("rt/others/0"), LockMode::Shared));
    crowd.push(LockSpec::subtree(
        object("rt/aloneish"),
        LockMode::Exclusive,
    ));
    for chunk in crowd.chunks(50) {
        service
            .acquire_with(&AcquireRequest::many(chunk.to_vec(), owner("others"), TTL))
            .await
            .expect("granted");
    }
    let crowded = cycle(&service, &mut admin, &target, &root).await;
    assert_eq!(
        alone, crowded,
        "302 locks held elsewhere changed the work done"
    );
    service
        .release(&object("rt/dir/held"), &inside.token)
        .await
        .expect("released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_page_reads_only_the_objects_under_its_prefix() {
    let Some((_redis, service, mut admin)) = setup().await else {
        return;
    };
    let mut mine: Vec<LockSpec> = (0..5)
        .map(|i| LockSpec::shared(object(&format!("rt/list/{i}"))))
        .collect();
    mine.push(LockSpec::subtree(object("rt/list/tree"), LockMode::Shared));
    service
        .acquire_with(&AcquireRequest::many(mine, owner("o"), TTL))
        .await
        .expect("granted");
    let query = ListQuery::new("rt/list/", 10);
    let (listed, alone) = counted(&mut admin, 0, service.list(&query)).await;
    assert_eq!(listed.expect("list").locks.len(), 6);
    assert_eq!(
        alone,
        expected(&[
            ("evalsha", 1),
            ("time", 1),
            ("zcard", 2),
            // One range read of the index: fewer members than asked for, so the last.
            ("zrangebylex", 1),
            // Holders and waiters of each listed object.
            ("hgetall", 6),
            ("zrange", 6),
        ]),
        "list page"
    );
    // Locks on either side of the prefix's range in the index's byte order, and elsewhere.
    for neighbour in ["rt/lis", "rt/lisu", "rt/list0", "rt/list-", "rt/other"] {
        let specs = (0..40)
            .map(|i| LockSpec::shared(object(&format!("{neighbour}/{i}"))))
            .collect();
        service
            .acquire_with(&AcquireRequest::many(specs, owner("others"), TTL))
            .await
            .expect("granted");
    }
    let (listed, crowded) = counted(&mut admin, 0, service.list(&query)).await;
    assert_eq!(listed.expect("list").locks.len(), 6);
    assert_eq!(
        alone, crowded,
        "200 locks held elsewhere changed the page's work"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flushed_script_cache_is_reloaded_and_the_operation_succeeds() {
    let Some(redis) = PrivateRedis::start() else {
        return;
    };
    let mut config = common::test_config(&redis.url());
    config.listener_ping_interval = Duration::from_secs(3600);
    let service = common::connect(config).await.expect("connects");
    let mut admin = redis::Client::open(redis.url())
        .and_then(|c| c.get_connection())
        .expect("admin connection");
    redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query::<()>(&mut admin)
        .expect("SCRIPT FLUSH");
    reset(&mut admin);
    let object = ObjectId::new("rt/flushed").expect("valid");
    let lease = service
        .acquire(
            &object,
            &OwnerId::new("o").expect("valid"),
            Duration::from_secs(5),
            Duration::ZERO,
        )
        .await
        .expect("granted after reloading the script");
    let stats = command_stats(&mut admin);
    assert_eq!(
        stats.get("evalsha"),
        Some(&2),
        "NOSCRIPT, then the retry: {stats:?}"
    );
    assert_eq!(stats.get("script|load"), Some(&1), "{stats:?}");
    service
        .release(&object, &lease.token)
        .await
        .expect("released");
}
