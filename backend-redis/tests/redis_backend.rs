//! Redis-specific behaviour beyond the shared suite: exact fences above 2^53, fences after
//! lost keys, the key layout, several backends (processes) sharing one Redis, listing with
//! awkward names, and connection failures. The scripts' own risks (fences near 2^60 as
//! strings, expired holders and queue entries, keys of the wrong type) are in `scripts.rs`.

mod common;

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use backend_redis::{RedisConfig, RedisLockService};
use lockcore::{Fence, ListQuery, LockError, LockService, ObjectId, OwnerId};

fn object(name: &str) -> ObjectId {
    ObjectId::new(name).expect("valid object id")
}

fn owner(name: &str) -> OwnerId {
    OwnerId::new(name).expect("valid owner id")
}

const TTL: Duration = Duration::from_secs(30);

/// A backend and a plain connection to the same Redis, or `None` (skipped).
async fn setup() -> Option<(
    RedisLockService,
    RedisConfig,
    redis::aio::MultiplexedConnection,
)> {
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

fn fence_key(config: &RedisConfig, object: &str) -> String {
    format!("{}{{{object}}}:fence", config.key_prefix)
}

fn holders_key(config: &RedisConfig, object: &str) -> String {
    format!("{}{{{object}}}:holders", config.key_prefix)
}

#[tokio::test]
async fn fences_above_two_to_the_fifty_three_increase_by_exactly_one() {
    let Some((service, config, mut raw)) = setup().await else {
        return;
    };
    // A stored fence far above the clock floor and above 2^53, where doubles skip by 256.
    let start: u64 = 4_000_000_000_000_000_001;
    let _: () = redis::cmd("SET")
        .arg(fence_key(&config, "big"))
        .arg(start.to_string())
        .arg("PX")
        .arg(60_000)
        .query_async(&mut raw)
        .await
        .expect("SET");
    let first = service
        .acquire(&object("big"), &owner("o"), TTL, Duration::ZERO)
        .await
        .expect("granted");
    assert_eq!(first.fence, Fence(start + 1));
    service
        .release(&object("big"), &first.token)
        .await
        .expect("released");
    let second = service
        .acquire(&object("big"), &owner("o"), TTL, Duration::ZERO)
        .await
        .expect("granted");
    assert_eq!(second.fence, Fence(start + 2));
    service
        .release(&object("big"), &second.token)
        .await
        .expect("released");
}

#[tokio::test]
async fn fences_follow_redis_time_and_stay_above_earlier_ones_when_keys_are_lost() {
    let Some((service, config, mut raw)) = setup().await else {
        return;
    };
    let (secs, micros): (u64, u64) = redis::cmd("TIME")
        .query_async(&mut raw)
        .await
        .expect("TIME");
    let floor_before = Fence::clock_floor(secs * 1_000_000 + micros);
    let lease = service
        .acquire(&object("lost"), &owner("o"), TTL, Duration::ZERO)
        .await
        .expect("granted");
    let (secs, micros): (u64, u64) = redis::cmd("TIME")
        .query_async(&mut raw)
        .await
        .expect("TIME");
    let floor_after = Fence::clock_floor(secs * 1_000_000 + micros);
    // A fresh object's first fence is exactly the floor at the grant: Redis's TIME in
    // microseconds, shifted by FENCE_CLOCK_SHIFT, computed without rounding.
    assert!(
        floor_before <= lease.fence && lease.fence <= floor_after,
        "{floor_before} <= {} <= {floor_after}",
        lease.fence
    );
    assert_eq!(
        lease.fence.get() % (1 << lockcore::fence::FENCE_CLOCK_SHIFT),
        0
    );
    // Redis loses both keys (as after FLUSHALL or a restart without persistence).
    let _: () = redis::cmd("DEL")
        .arg(holders_key(&config, "lost"))
        .arg(fence_key(&config, "lost"))
        .query_async(&mut raw)
        .await
        .expect("DEL");
    let after = service
        .acquire(&object("lost"), &owner("o"), TTL, Duration::ZERO)
        .await
        .expect("granted: the lost lock is gone");
    assert!(after.fence > lease.fence);
    service
        .release(&object("lost"), &after.token)
        .await
        .expect("released");
}

#[tokio::test]
async fn a_released_object_keeps_only_its_fence_key_with_a_bounded_expiry() {
    let Some((service, config, mut raw)) = setup().await else {
        return;
    };
    let lease = service
        .acquire(&object("gc"), &owner("o"), TTL, Duration::ZERO)
        .await
        .expect("granted");
    let lock_ttl: i64 = redis::cmd("PTTL")
        .arg(holders_key(&config, "gc"))
        .query_async(&mut raw)
        .await
        .expect("PTTL");
    assert!(
        lock_ttl > 0 && lock_ttl <= 30_000,
        "the lock key expires with the lease: {lock_ttl}"
    );
    service
        .release(&object("gc"), &lease.token)
        .await
        .expect("released");
    let lock_exists: bool = redis::cmd("EXISTS")
        .arg(holders_key(&config, "gc"))
        .query_async(&mut raw)
        .await
        .expect("EXISTS");
    assert!(!lock_exists, "release deletes the lock key");
    let fence_ttl: i64 = redis::cmd("PTTL")
        .arg(fence_key(&config, "gc"))
        .query_async(&mut raw)
        .await
        .expect("PTTL");
    let bound = i64::try_from((TTL + config.fence_retention).as_millis()).expect("fits");
    assert!(
        fence_ttl > 0 && fence_ttl <= bound,
        "the fence key expires: {fence_ttl} of {bound}"
    );
}

#[tokio::test]
async fn objects_with_braces_and_glob_characters_lock_list_and_stay_in_one_hash_tag() {
    let Some((service, config, mut raw)) = setup().await else {
        return;
    };
    let names = ["odd/a}b{c", "odd/*?[x]\\", "odd/%7D", "odd/plain"];
    let mut leases = Vec::new();
    for name in names {
        leases.push(
            service
                .acquire(&object(name), &owner("o"), TTL, Duration::ZERO)
                .await
                .expect("granted"),
        );
    }
    // The braces are escaped inside the hash tag.
    let escaped = format!("{}{{odd/a%7Db%7Bc}}:holders", config.key_prefix);
    let exists: bool = redis::cmd("EXISTS")
        .arg(&escaped)
        .query_async(&mut raw)
        .await
        .expect("EXISTS");
    assert!(exists, "{escaped} holds the lock on odd/a}}b{{c");

    let listed = list_all(&service, "odd/", 1).await;
    assert_eq!(listed, names.iter().map(|n| (*n).to_owned()).collect());
    // Glob characters in the prefix are literal.
    assert_eq!(
        list_all(&service, "odd/*", 10).await,
        BTreeSet::from(["odd/*?[x]\\".to_owned()])
    );
    assert_eq!(
        list_all(&service, "odd/a}", 10).await,
        BTreeSet::from(["odd/a}b{c".to_owned()])
    );
    for (name, lease) in names.iter().zip(&leases) {
        service
            .release(&object(name), &lease.token)
            .await
            .expect("released");
    }
    assert!(list_all(&service, "odd/", 10).await.is_empty());
}

/// Every object listed under `prefix`, following cursors; each page within the limit.
async fn list_all(service: &RedisLockService, prefix: &str, limit: usize) -> BTreeSet<String> {
    let mut query = ListQuery::new(prefix, limit);
    let mut out = BTreeSet::new();
    for _ in 0..10_000 {
        let page = service.list(&query).await.expect("list");
        assert!(page.locks.len() <= limit);
        for lock in page.locks {
            assert!(lock.object.as_str().starts_with(prefix));
            out.insert(lock.object.as_str().to_owned());
        }
        match page.next {
            Some(next) => query.after = Some(next),
            None => return out,
        }
    }
    panic!("listing did not end");
}

#[tokio::test]
async fn paging_with_small_limits_finds_every_lock() {
    let Some((service, _config, _raw)) = setup().await else {
        return;
    };
    let names: Vec<String> = (0..40).map(|i| format!("many/{i:02}")).collect();
    let mut leases = Vec::new();
    for name in &names {
        leases.push(
            service
                .acquire(&object(name), &owner("o"), TTL, Duration::ZERO)
                .await
                .expect("granted"),
        );
    }
    for limit in [1, 3, 1000] {
        assert_eq!(
            list_all(&service, "many/", limit).await,
            names.iter().cloned().collect(),
            "limit {limit}"
        );
    }
    let info = service
        .inspect(&object("many/07"))
        .await
        .expect("inspect")
        .expect("held");
    assert_eq!(info.owner, owner("o"));
    assert!(info.expires_at > info.acquired_at);
    for (name, lease) in names.iter().zip(&leases) {
        service
            .release(&object(name), &lease.token)
            .await
            .expect("released");
    }
}

#[tokio::test]
async fn a_cursor_from_elsewhere_is_an_invalid_argument() {
    let Some((service, _config, _raw)) = setup().await else {
        return;
    };
    let mut query = ListQuery::new("x/", 10);
    query.after = Some("not-a-cursor".into());
    assert!(matches!(
        service.list(&query).await,
        Err(LockError::InvalidArgument { field: "after", .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_backends_on_one_redis_exclude_each_other_and_wake_each_others_waiters() {
    let Some(url) = common::url_or_skip() else {
        return;
    };
    let config = common::test_config(&url);
    let node_a = common::connect(config.clone()).await.expect("connects");
    let node_b = Arc::new(common::connect(config).await.expect("connects"));
    let shared = object("shared/file");
    let lease = node_a
        .acquire(&shared, &owner("a"), TTL, Duration::ZERO)
        .await
        .expect("granted on node a");
    match node_b
        .acquire(&shared, &owner("b"), TTL, Duration::ZERO)
        .await
    {
        Err(LockError::Locked {
            holder,
            retry_after,
            ..
        }) => {
            assert_eq!(holder, owner("a"));
            assert!(retry_after <= TTL && retry_after > Duration::ZERO);
        }
        other => panic!("node b must see node a's lock, got {other:?}"),
    }
    let waiter = {
        let node_b = node_b.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            node_b
                .acquire(&shared, &owner("b"), TTL, Duration::from_secs(20))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    node_a
        .release(&shared, &lease.token)
        .await
        .expect("released on node a");
    // Node a's lease had 30 s left and node b waits 20 s: only the release published by
    // node a's script can have woken node b's waiter.
    let granted = waiter
        .await
        .expect("task")
        .expect("node b granted after node a's release");
    assert!(granted.fence > lease.fence);
    // Either node can check a token (both store and compare digests).
    node_a
        .validate(&shared, &granted.token)
        .await
        .expect("valid on node a too");
    node_b
        .release(&shared, &granted.token)
        .await
        .expect("released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_in_different_processes_are_served_in_arrival_order() {
    let Some(url) = common::url_or_skip() else {
        return;
    };
    let config = common::test_config(&url);
    // Three backends, like three lockd processes: the holder's, and one per waiter.
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(Arc::new(
            common::connect(config.clone()).await.expect("connects"),
        ));
    }
    let target = object("fair/file");
    let lease = nodes[0]
        .acquire(&target, &owner("holder"), TTL, Duration::ZERO)
        .await
        .expect("granted");
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut waiters = Vec::new();
    // The later waiter lives on the node that releases, so its process hears the release first:
    // only the queue in Redis can make the earlier one win.
    for (name, node) in [("first", 2), ("second", 0), ("third", 1)] {
        let (node, target, order) = (nodes[node].clone(), target.clone(), order.clone());
        waiters.push(tokio::spawn(async move {
            let lease = node
                .acquire(
                    &target,
                    &owner(name),
                    Duration::from_secs(5),
                    Duration::from_secs(20),
                )
                .await
                .expect("granted in turn");
            order.lock().expect("not poisoned").push(name);
            tokio::time::sleep(Duration::from_millis(50)).await;
            node.release(&target, &lease.token).await.expect("released");
        }));
        // Let each waiter queue before the next one arrives.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    nodes[0]
        .release(&target, &lease.token)
        .await
        .expect("released");
    for waiter in waiters {
        waiter.await.expect("waiter task");
    }
    assert_eq!(
        *order.lock().expect("not poisoned"),
        ["first", "second", "third"]
    );
}

#[tokio::test]
async fn connecting_to_a_closed_port_is_unavailable() {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let mut config = RedisConfig::from_url(format!("redis://127.0.0.1:{port}"));
    config.connect_timeout = Duration::from_millis(300);
    let result = common::connect(config).await;
    assert!(matches!(
        result,
        Err(LockError::Unavailable {
            backend: "redis",
            ..
        })
    ));
}

#[tokio::test]
async fn a_malformed_url_or_prefix_is_an_invalid_argument() {
    let result = common::connect(RedisConfig::from_url("http://nope")).await;
    assert!(matches!(
        result,
        Err(LockError::InvalidArgument { field: "url", .. })
    ));
    let mut config = RedisConfig::default();
    config.key_prefix = "bad{".into();
    let result = common::connect(config).await;
    assert!(matches!(
        result,
        Err(LockError::InvalidArgument {
            field: "key_prefix",
            ..
        })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn several_backends_contending_never_overlap_and_fences_increase_in_grant_order() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;

    let Some(url) = common::url_or_skip() else {
        return;
    };
    let config = common::test_config(&url);
    // Three backends: each its own connections, listener and wait queue, like three processes.
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(Arc::new(
            common::connect(config.clone()).await.expect("connects"),
        ));
    }
    let objects: Vec<ObjectId> = (0..3).map(|i| object(&format!("contend/{i}"))).collect();
    let busy: Arc<Vec<AtomicBool>> = Arc::new((0..3).map(|_| AtomicBool::new(false)).collect());
    let grants: Arc<Vec<Mutex<Vec<Fence>>>> =
        Arc::new((0..3).map(|_| Mutex::new(Vec::new())).collect());
    let mut tasks = Vec::new();
    for worker in 0..12usize {
        let node = nodes[worker % 3].clone();
        let (objects, busy, grants) = (objects.clone(), busy.clone(), grants.clone());
        tasks.push(tokio::spawn(async move {
            for round in 0..25usize {
                let which = (worker + round) % 3;
                let lease = node
                    .acquire(
                        &objects[which],
                        &owner(&format!("w{worker}")),
                        Duration::from_secs(10),
                        Duration::from_secs(20),
                    )
                    .await
                    .expect("granted within the wait");
                assert!(
                    !busy[which].swap(true, Ordering::SeqCst),
                    "two holders of {} at once",
                    objects[which]
                );
                grants[which]
                    .lock()
                    .expect("not poisoned")
                    .push(lease.fence);
                tokio::time::sleep(Duration::from_micros(200)).await;
                busy[which].store(false, Ordering::SeqCst);
                node.release(&objects[which], &lease.token)
                    .await
                    .expect("released");
            }
        }));
    }
    for task in tasks {
        task.await.expect("worker succeeded");
    }
    for (object, fences) in objects.iter().zip(grants.iter()) {
        let fences = fences.lock().expect("not poisoned");
        assert_eq!(fences.len(), 100, "{object}");
        assert!(
            fences.windows(2).all(|w| w[0] < w[1]),
            "fences of {object} increase in grant order"
        );
    }
}

/// TLS to a plain port is `Unavailable`, not a panic, with no crypto provider installed by
/// anyone: rustls picks `ring` from the crate features.
#[tokio::test]
async fn tls_to_a_plain_port_is_unavailable_not_a_panic() {
    let Some(url) = common::url_or_skip() else {
        return;
    };
    let Some(rest) = url.strip_prefix("redis://") else {
        return;
    };
    let mut config = common::test_config(&format!("rediss://{rest}"));
    config.connect_timeout = Duration::from_millis(500);
    let result = common::connect(config).await;
    assert!(
        matches!(
            result,
            Err(LockError::Unavailable {
                backend: "redis",
                ..
            })
        ),
        "{result:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_queued_behind_a_granted_waiter_gets_the_lock_when_that_lease_expires() {
    let Some((service, _config, _raw)) = setup().await else {
        return;
    };
    let service = Arc::new(service);
    let target = object("queued/expiry");
    let first = service
        .acquire(&target, &owner("first"), TTL, Duration::ZERO)
        .await
        .expect("granted");
    // Two blocking waiters in this process: the second queues behind the first.
    let short_lease = Duration::from_millis(300);
    let w1 = {
        let (service, target) = (service.clone(), target.clone());
        tokio::spawn(async move {
            service
                .acquire(&target, &owner("w1"), short_lease, Duration::from_secs(10))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let w2 = {
        let (service, target) = (service.clone(), target.clone());
        tokio::spawn(async move {
            service
                .acquire(&target, &owner("w2"), TTL, Duration::from_secs(10))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    service
        .release(&target, &first.token)
        .await
        .expect("released");
    // w1 gets the lock and never releases it: its lease expires after 300 ms.
    let w1_lease = w1.await.expect("task").expect("w1 granted on release");
    assert_eq!(w1_lease.owner, owner("w1"));
    // Well after w1's expiry (and long before w2's 10 s wait ends) w2 must hold the object:
    // nothing publishes an expiry, so only a timer at w1's expiry can have woken w2.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    match service
        .acquire(&target, &owner("latecomer"), TTL, Duration::ZERO)
        .await
    {
        Err(LockError::Locked { holder, .. }) => assert_eq!(holder, owner("w2")),
        other => panic!("w2 should hold the object after w1's lease expired, got {other:?}"),
    }
    let w2_lease = w2.await.expect("task").expect("w2 granted");
    service
        .release(&target, &w2_lease.token)
        .await
        .expect("released");
}
