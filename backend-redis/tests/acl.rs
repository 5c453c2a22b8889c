//! The backend works as a Redis user holding only the permissions the README lists.

mod common;

use std::sync::Arc;
use std::time::Duration;

use backend_redis::RedisLockService;
use common::PrivateRedis;
use lockcore::{ListQuery, LockService, ObjectId, OwnerId};

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
    let rules = "+evalsha +script|load +scan +ping +subscribe +hget +hmget +hset +time +get +set \
                 +incr +pexpire +pttl +del +exists +publish";
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
        RedisLockService::connect(config, common::issuer())
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
}
