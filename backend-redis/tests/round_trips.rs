//! Every operation is one command on the wire: `INFO commandstats` on a private
//! `redis-server` counts exactly one `EVALSHA` per acquire, release, renew and validate, and
//! nothing else but the commands the scripts themselves run inside Redis.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use backend_redis::RedisLockService;
use common::PrivateRedis;
use lockcore::{LockService, ObjectId, OwnerId};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_operation_is_exactly_one_evalsha() {
    let Some(redis) = PrivateRedis::start() else {
        return;
    };
    let mut config = common::test_config(&redis.url());
    // Keep the listener's keep-alive pings out of the counts.
    config.listener_ping_interval = Duration::from_secs(3600);
    let service = common::connect(config)
        .await
        .expect("connects");
    let mut admin = redis::Client::open(redis.url())
        .and_then(|c| c.get_connection())
        .expect("admin connection");
    let object = ObjectId::new("rt/file").expect("valid");
    let owner = OwnerId::new("rt-owner").expect("valid");
    let ttl = Duration::from_secs(30);

    // A first acquire: the clock floor decides the fence (SET of the fence key).
    reset(&mut admin);
    let lease = service
        .acquire(&object, &owner, ttl, Duration::ZERO)
        .await
        .expect("granted");
    assert_eq!(
        command_stats(&mut admin),
        expected(&[
            ("evalsha", 1),
            ("hmget", 1),
            ("time", 1),
            ("get", 1),
            ("set", 1),
            ("hset", 1),
            ("pexpire", 1),
        ]),
        "acquire"
    );

    reset(&mut admin);
    service
        .renew(&object, &lease.token, ttl)
        .await
        .expect("renewed");
    assert_eq!(
        command_stats(&mut admin),
        expected(&[("evalsha", 1), ("hmget", 1), ("pexpire", 2)]),
        "renew"
    );

    reset(&mut admin);
    service
        .validate(&object, &lease.token)
        .await
        .expect("valid");
    assert_eq!(
        command_stats(&mut admin),
        expected(&[("evalsha", 1), ("hmget", 1), ("pttl", 1)]),
        "validate"
    );

    reset(&mut admin);
    service
        .release(&object, &lease.token)
        .await
        .expect("released");
    assert_eq!(
        command_stats(&mut admin),
        expected(&[("evalsha", 1), ("hmget", 1), ("del", 1), ("exists", 1)]),
        "release"
    );

    // A refused acquire is one command too.
    let held = service
        .acquire(&object, &owner, ttl, Duration::ZERO)
        .await
        .expect("granted");
    reset(&mut admin);
    let refused = service
        .acquire(
            &object,
            &OwnerId::new("other").expect("valid"),
            ttl,
            Duration::ZERO,
        )
        .await;
    assert!(refused.is_err());
    assert_eq!(
        command_stats(&mut admin),
        expected(&[("evalsha", 1), ("hmget", 1), ("pttl", 1)]),
        "refused acquire"
    );
    service
        .release(&object, &held.token)
        .await
        .expect("released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flushed_script_cache_is_reloaded_and_the_operation_succeeds() {
    let Some(redis) = PrivateRedis::start() else {
        return;
    };
    let mut config = common::test_config(&redis.url());
    config.listener_ping_interval = Duration::from_secs(3600);
    let service = common::connect(config)
        .await
        .expect("connects");
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
