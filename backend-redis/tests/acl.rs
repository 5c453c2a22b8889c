//! The backend works as a Redis user holding only the permissions the README lists.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::PrivateRedis;
use lockcore::{
    AcquireRequest, ListQuery, LockError, LockMode, LockScope, LockService, LockSpec, ObjectId,
    OwnerId,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_works_with_the_documented_acl() {
    let Some(redis) = PrivateRedis::start() else {
        return;
    };
    let mut admin = redis::Client::open(redis.url())
        .and_then(|c| c.get_connection())
        .expect("admin connection");
    let mut config = common::test_config(&redis.url());
    let prefix = config.key_prefix.clone();
    let rules = "+evalsha +script|load +ping +subscribe +time +get +set +incr +pexpire +pttl \
                 +exists +publish +hget +hgetall +hset +hdel +zrange +zrangebyscore \
                 +zrangebylex +zscore +zcard +zadd +zrem +zremrangebyscore";
    let mut setuser = redis::cmd("ACL");
    setuser
        .arg("SETUSER")
        .arg("lockd")
        .arg("reset")
        .arg("on")
        .arg(">lockd-test-password")
        .arg(format!("~{prefix}*"))
        .arg(format!("&{prefix}released"));
    for rule in rules.split_whitespace() {
        setuser.arg(rule);
    }
    setuser.query::<()>(&mut admin).expect("ACL SETUSER");
    config.url = format!("redis://lockd:lockd-test-password@127.0.0.1:{}", redis.port);
    let service = Arc::new(
        common::connect(config)
            .await
            .expect("connects with the documented permissions"),
    );
    let object = ObjectId::new("acl/file").expect("valid");
    let (alice, bob) = (
        OwnerId::new("alice").expect("valid"),
        OwnerId::new("bob").expect("valid"),
    );
    let ttl = Duration::from_secs(30);
    let lease = service
        .acquire(&object, &alice, ttl, Duration::ZERO)
        .await
        .expect("acquire");
    let waiter = {
        let (service, object, bob) = (service.clone(), object.clone(), bob.clone());
        tokio::spawn(async move {
            service
                .acquire(&object, &bob, ttl, Duration::from_secs(10))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A waiter that gives up leaves the queue.
    let impatient = service
        .acquire(&object, &bob, ttl, Duration::from_millis(50))
        .await;
    assert!(
        matches!(impatient, Err(LockError::Locked { .. })),
        "{impatient:?}"
    );
    service
        .renew(&object, &lease.token, ttl)
        .await
        .expect("renew");
    service
        .validate(&object, &lease.token)
        .await
        .expect("validate");
    assert!(service.inspect(&object).await.expect("inspect").is_some());
    let page = service
        .list(&ListQuery::new("acl/", 10))
        .await
        .expect("list");
    assert_eq!(page.locks.len(), 1);
    service.health().await.expect("health");
    service
        .release(&object, &lease.token)
        .await
        .expect("release");
    let granted = waiter
        .await
        .expect("task")
        .expect("the waiter is woken by the release message");
    service
        .release(&object, &granted.token)
        .await
        .expect("release");

    // Several objects at once, shared and exclusive, downgrade and the batch operations.
    let (a, b) = (
        ObjectId::new("acl/a").expect("valid"),
        ObjectId::new("acl/b").expect("valid"),
    );
    let request = AcquireRequest::many(
        vec![LockSpec::exclusive(a.clone()), LockSpec::shared(b.clone())],
        alice.clone(),
        ttl,
    );
    let grant = service
        .acquire_with(&request)
        .await
        .expect("multi-object acquire");
    let shared = service
        .downgrade(&a, &grant.leases[0].token)
        .await
        .expect("downgrade");
    assert_eq!(shared.mode, LockMode::Shared);
    let locks: Vec<_> = grant
        .leases
        .iter()
        .map(|lease| (lease.object.clone(), lease.token.clone()))
        .collect();
    for renewed in service.renew_many(&locks, ttl).await.expect("renew_many") {
        renewed.expect("renewed");
    }
    for released in service.release_many(&locks).await.expect("release_many") {
        released.expect("released");
    }

    // A subtree lock: the scripts read the keys of what is locked under it, which they name
    // themselves from the index; a waiter under it is woken by its release.
    let (root, below) = (
        ObjectId::new("acl/dir").expect("valid"),
        ObjectId::new("acl/dir/file").expect("valid"),
    );
    let file = service
        .acquire(&below, &bob, ttl, Duration::ZERO)
        .await
        .expect("acquire under the subtree");
    let refused = service
        .acquire_with(
            &AcquireRequest::new(root.clone(), alice.clone(), ttl).with_scope(LockScope::Subtree),
        )
        .await;
    assert!(
        matches!(refused, Err(LockError::Locked { .. })),
        "{refused:?}"
    );
    service.release(&below, &file.token).await.expect("release");
    let tree = service
        .acquire_with(
            &AcquireRequest::new(root.clone(), alice.clone(), ttl).with_scope(LockScope::Subtree),
        )
        .await
        .expect("subtree acquire")
        .into_first();
    let waiter = {
        let (service, below, bob) = (service.clone(), below.clone(), bob.clone());
        tokio::spawn(async move {
            service
                .acquire(&below, &bob, ttl, Duration::from_secs(10))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    service.release(&root, &tree.token).await.expect("release");
    let granted = waiter
        .await
        .expect("task")
        .expect("the waiter under the subtree is woken by its release");
    service
        .release(&below, &granted.token)
        .await
        .expect("release");
}
