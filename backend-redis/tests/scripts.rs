//! The Lua scripts' own risks, against a real Redis: fences near 2^60 kept as exact decimal
//! strings (Lua numbers are doubles), holders that expired among live shared ones, queue
//! entries that expired, and keys of the wrong type or with malformed contents, which must
//! fail the whole request and change nothing (a failing Redis script keeps the writes it made
//! before the failure, so the scripts read everything before they write).

mod common;

use std::time::Duration;

use backend_redis::{RedisConfig, RedisLockService};
use lockcore::store::{Attempt, Attempted, Claim, Queueing, Ticket};
use lockcore::{
    AcquireRequest, Fence, LockError, LockMode, LockService, LockSpec, LockStore, ObjectId,
    OwnerId, TokenDigest,
};
use redis::aio::MultiplexedConnection;

fn object(name: &str) -> ObjectId {
    ObjectId::new(format!("lua/{name}")).expect("valid object id")
}

fn owner(name: &str) -> OwnerId {
    OwnerId::new(name).expect("valid owner id")
}

const TTL: Duration = Duration::from_secs(30);

/// A service and a plain connection to the same Redis, or `None` (skipped).
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

/// The key `{prefix}{lua/<name>}:<kind>` (no escaping needed for these names).
fn key(config: &RedisConfig, name: &str, kind: &str) -> String {
    format!("{}{{lua/{name}}}:{kind}", config.key_prefix)
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

/// A store-level attempt that queues for `keep_for` when refused (what a waiting acquire does).
async fn queue_attempt(
    service: &RedisLockService,
    who: &OwnerId,
    claims: &[Claim],
    ticket: Option<Ticket>,
    keep_for: Duration,
) -> lockcore::LockResult<Attempted> {
    service
        .store()
        .try_acquire(Attempt {
            owner: who,
            claims,
            ttl: TTL,
            queueing: Some(Queueing { ticket, keep_for }),
            lock_delay: std::time::Duration::ZERO,
        })
        .await
}

fn claim(name: &str, mode: LockMode, digest_byte: u8) -> Claim {
    Claim {
        object: object(name),
        mode,
        digest: TokenDigest::from_bytes(&[digest_byte; 32]).expect("32 bytes"),
        scope: lockcore::LockScope::Object,
    }
}

#[tokio::test]
async fn fences_near_two_to_the_sixty_stay_exact_strings_for_shared_and_multi_object_grants() {
    let Some((service, config, mut raw)) = setup().await else {
        return;
    };
    // Above today's clock floor (about 1.8e18) and far above 2^53, where doubles skip by 256:
    // a fence that went through a Lua number would come back rounded.
    let a_start: u64 = 2_305_843_009_213_693_951; // 2^61 - 1
    let b_start: u64 = 2_000_000_000_000_000_001;
    for (name, start) in [("big/a", a_start), ("big/b", b_start)] {
        let _: () = query(
            &mut raw,
            &cmd(
                "SET",
                &[
                    &key(&config, name, "fence"),
                    &start.to_string(),
                    "PX",
                    "60000",
                ],
            ),
        )
        .await;
    }
    let alice = service
        .acquire_in(
            &object("big/a"),
            LockMode::Shared,
            &owner("alice"),
            TTL,
            Duration::ZERO,
        )
        .await
        .expect("shared grant");
    assert_eq!(alice.fence, Fence(a_start + 1));
    let both = service
        .acquire_with(&AcquireRequest::many(
            vec![
                LockSpec::shared(object("big/a")),
                LockSpec::exclusive(object("big/b")),
            ],
            owner("bob"),
            TTL,
        ))
        .await
        .expect("multi-object grant next to alice's shared lease");
    assert_eq!(both.leases[0].fence, Fence(a_start + 2));
    assert_eq!(both.leases[1].fence, Fence(b_start + 1));

    let info = service
        .inspect(&object("big/a"))
        .await
        .expect("inspect")
        .expect("held");
    assert_eq!(info.mode, LockMode::Shared);
    let fences: Vec<Fence> = info.holders.iter().map(|h| h.fence).collect();
    assert_eq!(fences, [Fence(a_start + 1), Fence(a_start + 2)]);
    assert_eq!(
        (info.fence, &info.owner),
        (Fence(a_start + 2), &owner("bob"))
    );

    // The fence key is lost while both shared holders hold; renewing the older one restores it
    // to the highest live fence, exactly, so the next grant still goes above both.
    let _: () = query(&mut raw, &cmd("DEL", &[&key(&config, "big/a", "fence")])).await;
    service
        .renew(&object("big/a"), &alice.token, TTL)
        .await
        .expect("renewed");
    let stored: String = query(&mut raw, &cmd("GET", &[&key(&config, "big/a", "fence")])).await;
    assert_eq!(stored, (a_start + 2).to_string());
    let carol = service
        .acquire_in(
            &object("big/a"),
            LockMode::Shared,
            &owner("carol"),
            TTL,
            Duration::ZERO,
        )
        .await
        .expect("shared grant");
    assert_eq!(carol.fence, Fence(a_start + 3));
    // A batch names each object once: alice and carol release on their own.
    for lease in [&alice, &carol] {
        service
            .release(&object("big/a"), &lease.token)
            .await
            .expect("released");
    }
    let locks: Vec<_> = both
        .leases
        .iter()
        .map(|l| (l.object.clone(), l.token.clone()))
        .collect();
    let fences: Vec<Fence> = service
        .release_many(&locks)
        .await
        .expect("release_many")
        .into_iter()
        .map(|r| r.expect("released"))
        .collect();
    assert_eq!(fences, [Fence(a_start + 2), Fence(b_start + 1)]);
}

#[tokio::test]
async fn a_shared_holder_that_expired_among_live_ones_is_gone_for_every_operation() {
    let Some((service, config, mut raw)) = setup().await else {
        return;
    };
    let target = object("expired-shared");
    let holders_key = key(&config, "expired-shared", "holders");
    let alice = service
        .acquire_in(
            &target,
            LockMode::Shared,
            &owner("alice"),
            TTL,
            Duration::ZERO,
        )
        .await
        .expect("shared grant");
    let bob = service
        .acquire_in(
            &target,
            LockMode::Shared,
            &owner("bob"),
            Duration::from_millis(200),
            Duration::ZERO,
        )
        .await
        .expect("shared grant");
    // Bob's short lease does not shorten the hash's expiry: alice still holds for 30 s.
    let left: i64 = query(&mut raw, &cmd("PTTL", &[&holders_key])).await;
    assert!(
        left > 29_000,
        "the holders hash expires with its last holder: {left}"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;

    let info = service
        .inspect(&target)
        .await
        .expect("inspect")
        .expect("alice holds");
    assert_eq!(info.holders.len(), 1);
    assert_eq!(info.owner, owner("alice"));
    // Bob's lease is over; the object is held by others, so his token is a mismatch everywhere.
    fn mismatch<T>(result: &Result<T, LockError>) -> bool {
        matches!(result, Err(LockError::TokenMismatch { .. }))
    }
    assert!(mismatch(&service.validate(&target, &bob.token).await));
    assert!(mismatch(&service.renew(&target, &bob.token, TTL).await));
    assert!(mismatch(&service.downgrade(&target, &bob.token).await));
    assert!(mismatch(&service.release(&target, &bob.token).await));
    // An exclusive request is blocked by alice alone, with her time left, not bob's.
    match service
        .acquire(&target, &owner("carol"), TTL, Duration::ZERO)
        .await
    {
        Err(LockError::Locked {
            holder,
            retry_after,
            ..
        }) => {
            assert_eq!(holder, owner("alice"));
            assert!(retry_after > Duration::from_secs(25), "{retry_after:?}");
        }
        other => panic!("expected Locked by alice, got {other:?}"),
    }
    // The next change to the hash drops bob's record.
    let dave = service
        .acquire_in(
            &target,
            LockMode::Shared,
            &owner("dave"),
            TTL,
            Duration::ZERO,
        )
        .await
        .expect("shared grant");
    let bob_there: bool = query(
        &mut raw,
        &cmd("HEXISTS", &[&holders_key, &bob.token.digest().to_hex()]),
    )
    .await;
    assert!(!bob_there, "the expired record is dropped");
    let count: u64 = query(&mut raw, &cmd("HLEN", &[&holders_key])).await;
    assert_eq!(count, 2);
    for lease in [&alice, &dave] {
        service
            .release(&target, &lease.token)
            .await
            .expect("released");
    }
    let exists: bool = query(&mut raw, &cmd("EXISTS", &[&holders_key])).await;
    assert!(!exists, "the last release deletes the hash");
}

#[tokio::test]
async fn queue_entries_that_expired_block_nobody_and_are_dropped() {
    let Some((service, config, mut raw)) = setup().await else {
        return;
    };
    let queue_key = key(&config, "expired-queue", "queue");
    let holder = service
        .acquire(
            &object("expired-queue"),
            &owner("alice"),
            TTL,
            Duration::ZERO,
        )
        .await
        .expect("granted");
    let bob = [claim("expired-queue", LockMode::Exclusive, 1)];
    let eve = [claim("expired-queue", LockMode::Exclusive, 2)];
    let Attempted::Refused {
        ticket: Some(bob_ticket),
        ..
    } = queue_attempt(
        &service,
        &owner("bob"),
        &bob,
        None,
        Duration::from_millis(300),
    )
    .await
    .expect("attempt")
    else {
        panic!("bob must be refused with a ticket");
    };
    let Attempted::Refused {
        ticket: Some(eve_ticket),
        ..
    } = queue_attempt(&service, &owner("eve"), &eve, None, Duration::from_secs(10))
        .await
        .expect("attempt")
    else {
        panic!("eve must be refused with a ticket");
    };
    assert!(bob_ticket < eve_ticket, "tickets follow arrival");
    service
        .release(&object("expired-queue"), &holder.token)
        .await
        .expect("released");

    // While bob's entry lives, it blocks eve (who came later) and any newcomer.
    match queue_attempt(
        &service,
        &owner("eve"),
        &eve,
        Some(eve_ticket),
        Duration::from_secs(10),
    )
    .await
    .expect("attempt")
    {
        Attempted::Refused {
            conflicts, ticket, ..
        } => {
            assert_eq!(ticket, Some(eve_ticket));
            assert_eq!(conflicts[0].holder, owner("bob"));
            assert!(conflicts[0].retry_after <= Duration::from_millis(300));
        }
        other => panic!("eve must wait behind bob, got {other:?}"),
    }

    // Bob's process is gone: his entry lapses. A newcomer is now blocked by eve alone ...
    tokio::time::sleep(Duration::from_millis(400)).await;
    match service
        .acquire(
            &object("expired-queue"),
            &owner("carol"),
            TTL,
            Duration::ZERO,
        )
        .await
    {
        Err(LockError::Locked { holder, .. }) => assert_eq!(holder, owner("eve")),
        other => panic!("expected Locked by eve's queue entry, got {other:?}"),
    }
    // ... and that attempt dropped bob's entry.
    let entries: u64 = query(&mut raw, &cmd("ZCARD", &[&queue_key])).await;
    assert_eq!(entries, 1);
    // Eve is granted, and her entry leaves the queue with the grant.
    let Attempted::Granted(granted) = queue_attempt(
        &service,
        &owner("eve"),
        &eve,
        Some(eve_ticket),
        Duration::from_secs(10),
    )
    .await
    .expect("attempt") else {
        panic!("eve must be granted once bob's entry expired");
    };
    assert_eq!(granted.len(), 1);
    let exists: bool = query(&mut raw, &cmd("EXISTS", &[&queue_key])).await;
    assert!(!exists, "the queue is empty after eve's grant");
    assert_eq!(
        service
            .store()
            .abandon(&eve)
            .await
            .expect("abandon eve's unclaimed grant"),
        lockcore::Undo::TookBack
    );
}

#[tokio::test]
async fn leaving_the_queue_removes_every_entry_of_the_ticket() {
    let Some((service, config, mut raw)) = setup().await else {
        return;
    };
    let holder = service
        .acquire(&object("leave/a"), &owner("alice"), TTL, Duration::ZERO)
        .await
        .expect("granted");
    let claims = [
        claim("leave/a", LockMode::Shared, 3),
        claim("leave/b", LockMode::Exclusive, 3),
    ];
    let Attempted::Refused {
        ticket: Some(ticket),
        ..
    } = queue_attempt(
        &service,
        &owner("bob"),
        &claims,
        None,
        Duration::from_secs(10),
    )
    .await
    .expect("attempt")
    else {
        panic!("bob must be refused with a ticket");
    };
    // Bob waits for leave/b too: a newcomer there is held back by his entry.
    assert!(matches!(
        service
            .acquire(&object("leave/b"), &owner("carol"), TTL, Duration::ZERO)
            .await,
        Err(LockError::Locked { .. })
    ));
    service
        .store()
        .leave_queue(ticket, &[object("leave/a"), object("leave/b")])
        .await
        .expect("left");
    for name in ["leave/a", "leave/b"] {
        let exists: bool = query(&mut raw, &cmd("EXISTS", &[&key(&config, name, "queue")])).await;
        assert!(!exists, "{name} has no queue left");
    }
    let carol = service
        .acquire(&object("leave/b"), &owner("carol"), TTL, Duration::ZERO)
        .await
        .expect("free once bob left");
    for (name, lease) in [("leave/a", &holder), ("leave/b", &carol)] {
        service
            .release(&object(name), &lease.token)
            .await
            .expect("released");
    }
}

/// What a foreign writer can leave in the keys of object `lua/<name>`.
async fn corrupt(raw: &mut MultiplexedConnection, config: &RedisConfig, name: &str, how: &str) {
    let (kind, command): (&str, Vec<&str>) = match how {
        "holders is a string" => ("holders", vec!["SET", "", "a string"]),
        "holders record is malformed" => ("holders", vec!["HSET", "", "ab12", "garbage"]),
        "fence is a hash" => ("fence", vec!["HSET", "", "f", "1"]),
        "fence is not a number" => ("fence", vec!["SET", "", "12x"]),
        "queue is a string" => ("queue", vec!["SET", "", "a string"]),
        "queue entry is malformed" => ("queue", vec!["ZADD", "", "1", "garbage"]),
        other => panic!("unknown corruption {other}"),
    };
    let key = key(config, name, kind);
    let args: Vec<&str> = command[1..]
        .iter()
        .map(|a| if a.is_empty() { key.as_str() } else { a })
        .collect();
    let _: redis::Value = query(raw, &cmd(command[0], &args)).await;
}

#[tokio::test]
async fn keys_of_the_wrong_type_fail_the_whole_request_and_change_nothing() {
    let Some((service, config, mut raw)) = setup().await else {
        return;
    };
    for (i, how) in [
        "holders is a string",
        "holders record is malformed",
        "fence is a hash",
        "fence is not a number",
        "queue is a string",
        "queue entry is malformed",
    ]
    .into_iter()
    .enumerate()
    {
        let (healthy, broken) = (format!("typed/{i}/ok"), format!("typed/{i}/bad"));
        corrupt(&mut raw, &config, &broken, how).await;
        // The healthy object comes first: its writes would happen first if the script wrote
        // before reading everything.
        let request = AcquireRequest::many(
            vec![
                LockSpec::exclusive(object(&healthy)),
                LockSpec::exclusive(object(&broken)),
            ],
            owner("o"),
            TTL,
        );
        let result = service.acquire_with(&request).await;
        assert!(
            matches!(result, Err(LockError::Internal(_))),
            "{how}: {result:?}"
        );
        for kind in ["holders", "fence", "queue"] {
            let exists: bool =
                query(&mut raw, &cmd("EXISTS", &[&key(&config, &healthy, kind)])).await;
            assert!(
                !exists,
                "{how}: the failed request wrote the healthy object's {kind} key"
            );
        }
        if how.starts_with("holders") {
            let inspected = service.inspect(&object(&broken)).await;
            assert!(
                matches!(inspected, Err(LockError::Internal(_))),
                "{how}: {inspected:?}"
            );
        }
    }
}

#[tokio::test]
async fn a_ticket_counter_of_the_wrong_type_queues_nothing() {
    let Some((service, config, mut raw)) = setup().await else {
        return;
    };
    let holder = service
        .acquire(
            &object("tickets/held"),
            &owner("alice"),
            TTL,
            Duration::ZERO,
        )
        .await
        .expect("granted");
    let tickets = format!("{}tickets", config.key_prefix);
    let _: () = query(&mut raw, &cmd("HSET", &[&tickets, "n", "1"])).await;
    let claims = [
        claim("tickets/free", LockMode::Exclusive, 4),
        claim("tickets/held", LockMode::Exclusive, 4),
    ];
    let result = queue_attempt(
        &service,
        &owner("bob"),
        &claims,
        None,
        Duration::from_secs(5),
    )
    .await;
    assert!(matches!(result, Err(LockError::Internal(_))), "{result:?}");
    for name in ["tickets/free", "tickets/held"] {
        let exists: bool = query(&mut raw, &cmd("EXISTS", &[&key(&config, name, "queue")])).await;
        assert!(
            !exists,
            "{name}: a queue entry was written by the failed attempt"
        );
    }
    service
        .release(&object("tickets/held"), &holder.token)
        .await
        .expect("released");
}

#[tokio::test]
async fn a_batch_release_touching_a_broken_key_releases_nothing() {
    let Some((service, config, mut raw)) = setup().await else {
        return;
    };
    let healthy = service
        .acquire(&object("batch/ok"), &owner("o"), TTL, Duration::ZERO)
        .await
        .expect("granted");
    let broken = service
        .acquire(&object("batch/bad"), &owner("o"), TTL, Duration::ZERO)
        .await
        .expect("granted");
    let holders = key(&config, "batch/bad", "holders");
    let _: () = query(&mut raw, &cmd("DEL", &[&holders])).await;
    let _: () = query(&mut raw, &cmd("SET", &[&holders, "a string"])).await;
    let result = service
        .release_many(&[
            (object("batch/ok"), healthy.token.clone()),
            (object("batch/bad"), broken.token.clone()),
        ])
        .await;
    assert!(matches!(result, Err(LockError::Internal(_))), "{result:?}");
    service
        .validate(&object("batch/ok"), &healthy.token)
        .await
        .expect("the healthy lease is still held");
    service
        .release(&object("batch/ok"), &healthy.token)
        .await
        .expect("released");
}

#[tokio::test]
async fn thousands_of_expired_records_are_dropped_in_one_step() {
    let Some((service, config, mut raw)) = setup().await else {
        return;
    };
    let holders = key(&config, "crowd", "holders");
    let queue = key(&config, "crowd", "queue");
    // 10 000 shared holders and waiters whose time ran out long ago (expiry 1 ms after the
    // epoch), as a crowd of readers that vanished would leave them.
    let fill = "for i = 1, 10000 do \
                  redis.call('HSET', KEYS[1], string.format('%064d', i), 's 1 1 0 0 ghost') \
                  redis.call('ZADD', KEYS[2], i, i .. ' x 1 ghost') \
                end \
                redis.call('PEXPIRE', KEYS[1], 60000) \
                redis.call('PEXPIRE', KEYS[2], 60000)";
    let _: () = query(&mut raw, &cmd("EVAL", &[fill, "2", &holders, &queue])).await;
    // The expired waiters hold back nobody, not even an exclusive newcomer.
    let lease = service
        .acquire(&object("crowd"), &owner("alice"), TTL, Duration::ZERO)
        .await
        .expect("granted over 10 000 expired holders and waiters");
    let (left, waiting): (u64, u64) = (
        query(&mut raw, &cmd("HLEN", &[&holders])).await,
        query(&mut raw, &cmd("EXISTS", &[&queue])).await,
    );
    assert_eq!(
        (left, waiting),
        (1, 0),
        "the grant dropped every expired record"
    );
    service
        .release(&object("crowd"), &lease.token)
        .await
        .expect("released");
}
