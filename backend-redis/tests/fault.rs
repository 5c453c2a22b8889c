//! Redis going away and coming back: operations fail as `Unavailable` (never a grant, never a
//! panic) while it is down, the same backend object works again once it is back, and fences
//! issued after the restart (which lost every key) are above every fence issued before.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backend_redis::RedisLockService;
use common::PrivateRedis;
use lockcore::{
    AcquireRequest, Fence, ListQuery, LockError, LockService, LockSpec, ObjectId, OwnerId,
};

fn object(name: &str) -> ObjectId {
    ObjectId::new(format!("fault/{name}")).expect("valid object id")
}

fn owner(name: &str) -> OwnerId {
    OwnerId::new(name).expect("valid owner id")
}

fn is_unavailable<T: std::fmt::Debug>(result: &Result<T, LockError>) -> bool {
    matches!(
        result,
        Err(LockError::Unavailable {
            backend: "redis",
            ..
        })
    )
}

const TTL: Duration = Duration::from_secs(60);

/// Retries `acquire` until Redis answers again (bounded), returning the lease.
async fn acquire_once_back(service: &RedisLockService, name: &str, who: &str) -> lockcore::Lease {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let result = service
            .acquire(&object(name), &owner(who), TTL, Duration::ZERO)
            .await;
        match result {
            Ok(lease) => return lease,
            Err(LockError::Unavailable { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => panic!("expected a grant once Redis is back, got {other:?}"),
        }
    }
}

/// Polls `health` until Redis answers again (bounded). A single probe may still time out while
/// the connection manager finishes reconnecting on a loaded machine; anything but `Unavailable`
/// in the meantime is a failure.
async fn healthy_once_back(service: &RedisLockService) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match service.health().await {
            Ok(()) => return,
            Err(LockError::Unavailable { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => panic!("expected health to recover once Redis is back, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_fail_as_unavailable_while_redis_is_down_and_recover_with_higher_fences() {
    let Some(mut redis) = PrivateRedis::start() else {
        return;
    };
    let mut config = common::test_config(&redis.url());
    config.operation_timeout = Duration::from_millis(500);
    config.connect_timeout = Duration::from_millis(500);
    config.listener_ping_interval = Duration::from_millis(200);
    let service = Arc::new(
        common::connect(config)
            .await
            .expect("connects to the private redis-server"),
    );

    // Before the outage: a few grants per object; remember the highest fence of each.
    let mut highest: HashMap<&str, Fence> = HashMap::new();
    for name in ["a", "b"] {
        for _ in 0..3 {
            let lease = service
                .acquire(&object(name), &owner("before"), TTL, Duration::ZERO)
                .await
                .expect("granted while Redis is up");
            highest.insert(name, lease.fence);
            service
                .release(&object(name), &lease.token)
                .await
                .expect("released while Redis is up");
        }
    }
    let held = service
        .acquire(&object("held"), &owner("before"), TTL, Duration::ZERO)
        .await
        .expect("granted while Redis is up");

    // A worker keeps acquiring and releasing through the outage, logging what it saw.
    let worker = {
        let service = service.clone();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            let stop = Instant::now() + Duration::from_secs(4);
            while Instant::now() < stop {
                let started = Instant::now();
                let result = service
                    .acquire(&object("busy"), &owner("worker"), TTL, Duration::ZERO)
                    .await;
                let ended = Instant::now();
                if let Ok(lease) = &result {
                    let _ = service.release(&object("busy"), &lease.token).await;
                }
                seen.push((started, ended, result.map(|lease| lease.fence)));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            seen
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    redis.kill();
    let down_since = Instant::now();

    // While down, every operation is Unavailable: never a grant, never another error.
    let a = object("a");
    let results = [
        is_unavailable(&service.acquire(&a, &owner("x"), TTL, Duration::ZERO).await),
        is_unavailable(
            &service
                .acquire(&a, &owner("x"), TTL, Duration::from_secs(1))
                .await,
        ),
        is_unavailable(&service.release(&object("held"), &held.token).await),
        is_unavailable(&service.renew(&object("held"), &held.token, TTL).await),
        is_unavailable(&service.validate(&object("held"), &held.token).await),
        is_unavailable(&service.downgrade(&object("held"), &held.token).await),
        is_unavailable(
            &service
                .release_many(&[(object("held"), held.token.clone())])
                .await,
        ),
        is_unavailable(
            &service
                .acquire_with(&AcquireRequest::many(
                    vec![
                        LockSpec::shared(a.clone()),
                        LockSpec::exclusive(object("b")),
                    ],
                    owner("x"),
                    TTL,
                ))
                .await,
        ),
        is_unavailable(&service.inspect(&a).await),
        is_unavailable(&service.list(&ListQuery::new("fault/", 10)).await),
        is_unavailable(&service.health().await),
    ];
    assert_eq!(
        results, [true; 11],
        "acquire, blocking acquire, release, renew, validate, downgrade, release_many, \
         multi-object acquire, inspect, list, health"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    let up_again = Instant::now();
    redis
        .restart()
        .expect("redis-server starts again on the same port");

    // The same backend object works again, and fences are above every fence from before even
    // though the restart lost every key.
    for name in ["a", "b"] {
        let lease = acquire_once_back(&service, name, "after").await;
        assert!(
            lease.fence > highest[name],
            "fence {} after the restart is not above {} from before",
            lease.fence,
            highest[name]
        );
        service
            .release(&object(name), &lease.token)
            .await
            .expect("released after the restart");
    }
    let regranted = acquire_once_back(&service, "held", "after").await;
    assert!(regranted.fence > held.fence);
    assert!(matches!(
        service.release(&object("held"), &held.token).await,
        Err(LockError::TokenMismatch { .. })
    ));
    healthy_once_back(&service).await;

    let seen = worker.await.expect("worker finished");
    let mut last_fence = Fence(0);
    for (started, ended, result) in &seen {
        match result {
            Ok(fence) => {
                assert!(
                    !(*started > down_since && *ended < up_again),
                    "a grant was asked for and answered while Redis was down"
                );
                assert!(*fence > last_fence, "worker fences went backwards");
                last_fence = *fence;
            }
            Err(e) => assert!(
                matches!(e, LockError::Unavailable { .. }),
                "the worker saw {e:?}, not Unavailable"
            ),
        }
    }
    assert!(
        seen.iter().any(|(_, _, r)| r.is_err()),
        "the worker should have run into the outage"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_are_woken_by_releases_after_the_listener_reconnects() {
    let Some(mut redis) = PrivateRedis::start() else {
        return;
    };
    let mut config = common::test_config(&redis.url());
    config.operation_timeout = Duration::from_millis(500);
    config.connect_timeout = Duration::from_millis(500);
    config.listener_ping_interval = Duration::from_millis(200);
    let holder_side = common::connect(config.clone()).await.expect("connects");
    let waiter_side = Arc::new(common::connect(config).await.expect("connects"));

    redis.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.restart().expect("restarts");

    let lease = {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match holder_side
                .acquire(&object("w"), &owner("holder"), TTL, Duration::ZERO)
                .await
            {
                Ok(lease) => break lease,
                Err(LockError::Unavailable { .. }) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                other => panic!("expected a grant, got {other:?}"),
            }
        }
    };
    let waiter = {
        let waiter_side = waiter_side.clone();
        tokio::spawn(async move {
            waiter_side
                .acquire(&object("w"), &owner("waiter"), TTL, Duration::from_secs(20))
                .await
        })
    };
    // Give the waiter time to queue (and its listener time to resubscribe).
    tokio::time::sleep(Duration::from_secs(3)).await;
    holder_side
        .release(&object("w"), &lease.token)
        .await
        .expect("released");
    // The holder's lease runs for a minute and the waiter waits 20 s: only the release
    // message (or the reconnect's wake-up) can have granted it.
    let granted = waiter
        .await
        .expect("waiter task")
        .expect("waiter granted after the release");
    assert!(granted.fence > lease.fence);
}

/// A backend giving up on operations after 1 s, with `dedicated_connections`, whose acquire of
/// `names` (one request for all of them) Redis holds back for 1.5 s (`CLIENT PAUSE WRITE`), so
/// it fails as unavailable before Redis has run it. Returns the backend, an admin connection
/// and the backend's key prefix.
async fn acquire_cut_off_by_a_write_pause(
    redis: &PrivateRedis,
    dedicated_connections: usize,
    names: &[&str],
) -> (RedisLockService, redis::Connection, String) {
    let mut config = common::test_config(&redis.url());
    // Its connection manager would drop the connection (and with it the paused command) only
    // after twice that.
    config.operation_timeout = Duration::from_secs(1);
    config.dedicated_connections = dedicated_connections;
    let prefix = config.key_prefix.clone();
    let service = common::connect(config).await.expect("connects");
    let mut admin = redis::Client::open(redis.url())
        .and_then(|c| c.get_connection())
        .expect("admin connection");
    redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(1500)
        .arg("WRITE")
        .query::<()>(&mut admin)
        .expect("CLIENT PAUSE");
    let specs = names
        .iter()
        .map(|name| LockSpec::exclusive(object(name)))
        .collect();
    let result = service
        .acquire_with(&AcquireRequest::many(specs, owner("first"), TTL))
        .await;
    assert!(is_unavailable(&result), "{result:?}");
    (service, admin, prefix)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_granted_after_their_acquire_timed_out_are_all_taken_back() {
    let Some(redis) = PrivateRedis::start() else {
        return;
    };
    // On the multiplexed connection, which stays open after a timeout, so Redis runs the paused
    // script. A dedicated connection is closed at the timeout, and Redis drops the command
    // with it (the next test).
    let names = ["lost-reply/a", "lost-reply/b", "lost-reply/c"];
    let (service, mut admin, prefix) = acquire_cut_off_by_a_write_pause(&redis, 0, &names).await;

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut check = redis::pipe();
        for name in names {
            check
                .cmd("EXISTS")
                .arg(format!("{prefix}{{fault/{name}}}:fence"))
                .cmd("EXISTS")
                .arg(format!("{prefix}{{fault/{name}}}:holders"));
        }
        let exists: Vec<bool> = check.query(&mut admin).expect("EXISTS");
        let fences = exists.iter().step_by(2).all(|e| *e);
        let holders = exists.iter().skip(1).step_by(2).filter(|e| **e).count();
        // The fence keys prove the script did grant; the holders keys' absence, long before
        // the one-minute TTL, that the backend took every unowned grant back.
        if fences && holders == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the grant made after the timeout was not taken back (fence keys: {fences}, holders keys left: {holders})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for name in names {
        service
            .acquire(&object(name), &owner("second"), TTL, Duration::ZERO)
            .await
            .expect("the object is free again long before the lost grant's TTL");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acquire_timed_out_on_a_dedicated_connection_leaves_the_object_free() {
    let Some(redis) = PrivateRedis::start() else {
        return;
    };
    let (service, _admin, _prefix) =
        acquire_cut_off_by_a_write_pause(&redis, 1, &["cut-off"]).await;

    // Whether Redis dropped the paused script with its connection or ran it, nobody holds the
    // object long before the lost grant's one-minute TTL.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match service
            .acquire(&object("cut-off"), &owner("second"), TTL, Duration::ZERO)
            .await
        {
            Ok(_) => break,
            Err(LockError::Locked { .. } | LockError::Unavailable { .. })
                if Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("the object stayed taken after a cut-off acquire: {other:?}"),
        }
    }
}
