//! Behaviour specific to the in-memory backend: the sweeper, fences, metrics.

use std::sync::Arc;
use std::time::Duration;

use lockcore::{Fence, LockError, LockMode, LockService, ObjectId, OwnerId, TokenIssuer};
use tokio::time::{sleep, Instant};

use crate::{MemoryConfig, MemoryLockService, MemoryStore};

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

/// Waits (up to 5 s of real time) until `done` holds, checking every few milliseconds.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn the_sweeper_reclaims_expired_locks_nobody_touches_again() {
    let locks = service();
    let holder = owner("h");
    for n in 0..100 {
        locks
            .acquire(
                &object(&format!("f{n}")),
                &holder,
                Duration::from_millis(30),
                Duration::ZERO,
            )
            .await
            .expect("free object");
    }
    assert_eq!(locks.store().held(), 100);
    // No operation touches these objects again: only the sweeper can empty the table.
    eventually("every expired lock is reclaimed", || {
        locks.store().held() == 0
    })
    .await;
    assert_eq!(locks.store().timers_live(), 0, "their timers are freed too");
    locks.store().assert_timers_consistent();
}

#[tokio::test]
async fn the_sweeper_leaves_renewed_locks_alone() {
    let locks = service();
    let holder = owner("h");
    let short = Duration::from_millis(50);
    let renewed = locks
        .acquire(&object("renewed"), &holder, short, Duration::ZERO)
        .await
        .expect("free");
    locks
        .acquire(&object("left"), &holder, short, Duration::ZERO)
        .await
        .expect("free");
    locks
        .renew(&object("renewed"), &renewed.token, Duration::from_secs(30))
        .await
        .expect("holder renews");
    eventually("the unrenewed lock is reclaimed", || {
        locks.store().held() == 1
    })
    .await;
    // The renewed lock's first deadline has passed too: the sweeper looked and re-armed it.
    let still = locks
        .validate(&object("renewed"), &renewed.token)
        .await
        .expect("renewed lease is still valid");
    assert_eq!(still.fence, renewed.fence);
    assert!(locks
        .inspect(&object("left"))
        .await
        .expect("inspect")
        .is_none());
    assert_eq!(locks.store().timers_live(), 1);
    locks.store().assert_timers_consistent();
}

#[tokio::test]
async fn a_lease_shortened_by_renew_is_reclaimed_at_its_new_expiry() {
    let locks = service();
    let lease = locks
        .acquire(
            &object("f"),
            &owner("h"),
            Duration::from_secs(60),
            Duration::ZERO,
        )
        .await
        .expect("free");
    locks
        .renew(&object("f"), &lease.token, Duration::from_millis(20))
        .await
        .expect("holder renews");
    eventually("the shortened lease is reclaimed", || {
        locks.store().held() == 0
    })
    .await;
    locks.store().assert_timers_consistent();
}

#[tokio::test]
async fn the_sweeper_wakes_a_waiter_when_the_lease_it_waits_for_expires() {
    let locks = Arc::new(service());
    locks
        .acquire(
            &object("f"),
            &owner("a"),
            Duration::from_millis(50),
            Duration::ZERO,
        )
        .await
        .expect("free");
    let waiter = {
        let locks = locks.clone();
        tokio::spawn(async move {
            locks
                .acquire(
                    &object("f"),
                    &owner("b"),
                    Duration::from_secs(5),
                    Duration::from_secs(5),
                )
                .await
        })
    };
    eventually("the waiter is queued", || locks.store().waiting() == 1).await;
    let lease = waiter.await.expect("task").expect("granted after expiry");
    assert_eq!(lease.owner, owner("b"));
    assert_eq!(locks.store().waiting(), 0);
}

#[tokio::test]
async fn an_expired_lock_taken_over_before_the_sweeper_saw_it_stays_consistent() {
    let locks = service();
    let first = locks
        .acquire(
            &object("f"),
            &owner("a"),
            Duration::from_millis(1),
            Duration::ZERO,
        )
        .await
        .expect("free");
    sleep(Duration::from_millis(3)).await;
    // Whether or not the sweeper got there first, the object is free and the new grant wins.
    let second = locks
        .acquire(
            &object("f"),
            &owner("b"),
            Duration::from_secs(30),
            Duration::ZERO,
        )
        .await
        .expect("expired lease is free");
    assert!(second.fence > first.fence);
    sleep(Duration::from_millis(20)).await;
    assert_eq!(
        locks.store().held(),
        1,
        "the sweeper did not reclaim the new grant"
    );
    assert_eq!(locks.store().timers_live(), 1);
    locks.store().assert_timers_consistent();
    let refused = locks.release(&object("f"), &first.token).await;
    assert!(matches!(refused, Err(LockError::TokenMismatch { .. })));
    locks
        .release(&object("f"), &second.token)
        .await
        .expect("holder releases");
    assert_eq!((locks.store().held(), locks.store().timers_live()), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_with_tiny_ttls_leaves_no_locks_or_timers_behind() {
    let locks = Arc::new(service());
    let mut tasks = Vec::new();
    for t in 0..8 {
        let locks = locks.clone();
        tasks.push(tokio::spawn(async move {
            let me = owner(&format!("t{t}"));
            for i in 0..400u32 {
                let name = object(&format!("o{}", i % 5));
                let ttl = Duration::from_millis(u64::from(1 + i % 3));
                if let Ok(lease) = locks.acquire(&name, &me, ttl, Duration::ZERO).await {
                    match i % 4 {
                        0 => drop(locks.release(&name, &lease.token).await),
                        1 => drop(
                            locks
                                .renew(&name, &lease.token, Duration::from_millis(2))
                                .await,
                        ),
                        2 => drop(
                            locks
                                .renew(&name, &lease.token, Duration::from_millis(1))
                                .await,
                        ),
                        _ => {}
                    }
                }
                if i % 50 == 0 {
                    sleep(Duration::from_millis(1)).await;
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    eventually("every lease has expired and been swept", || {
        locks.store().held() == 0
    })
    .await;
    assert_eq!(locks.store().timers_live(), 0, "no timer leaked");
    locks.store().assert_timers_consistent();
}

#[tokio::test]
async fn fences_start_above_the_configured_floor_and_are_reported() {
    let floor = Fence(u64::MAX / 2);
    let locks = MemoryLockService::new(
        MemoryStore::new(MemoryConfig::default().with_fence_floor(floor)),
        TokenIssuer::random(),
    );
    assert_eq!(locks.store().highest_fence(), floor);
    let a = locks
        .acquire(
            &object("a"),
            &owner("h"),
            Duration::from_secs(1),
            Duration::ZERO,
        )
        .await
        .expect("free");
    let b = locks
        .acquire(
            &object("b"),
            &owner("h"),
            Duration::from_secs(1),
            Duration::ZERO,
        )
        .await
        .expect("free");
    assert_eq!(a.fence, Fence(floor.get() + 1));
    assert_eq!(
        b.fence,
        Fence(floor.get() + 2),
        "one counter for all objects"
    );
    assert_eq!(locks.store().highest_fence(), b.fence);
}

#[tokio::test]
async fn fences_of_a_restarted_service_are_above_the_previous_ones() {
    let before = {
        let locks = service();
        locks
            .acquire(
                &object("f"),
                &owner("h"),
                Duration::from_secs(1),
                Duration::ZERO,
            )
            .await
            .expect("free")
            .fence
    };
    sleep(Duration::from_millis(2)).await;
    // A new service knows nothing of the old one: the clock floor alone keeps fences rising.
    let after = service()
        .acquire(
            &object("f"),
            &owner("h"),
            Duration::from_secs(1),
            Duration::ZERO,
        )
        .await
        .expect("free")
        .fence;
    assert!(after > before);
}

#[tokio::test]
async fn an_exhausted_fence_space_is_an_internal_error_not_a_repeated_fence() {
    let locks = MemoryLockService::new(
        MemoryStore::new(MemoryConfig::default().with_fence_floor(Fence(u64::MAX))),
        TokenIssuer::random(),
    );
    let result = locks
        .acquire(
            &object("f"),
            &owner("h"),
            Duration::from_secs(1),
            Duration::ZERO,
        )
        .await;
    assert!(matches!(result, Err(LockError::Internal(_))));
    assert_eq!(locks.store().held(), 0, "nothing was granted");
}

#[tokio::test]
async fn configured_limits_are_enforced() {
    let limits = lockcore::Limits::new(Duration::from_secs(2), Duration::from_secs(1));
    let locks = MemoryLockService::new(
        MemoryStore::new(MemoryConfig::new(limits)),
        TokenIssuer::random(),
    );
    let too_long = locks
        .acquire(
            &object("f"),
            &owner("h"),
            Duration::from_secs(3),
            Duration::ZERO,
        )
        .await;
    assert!(matches!(
        too_long,
        Err(LockError::InvalidArgument { field: "ttl", .. })
    ));
    let wait_too_long = locks
        .acquire(
            &object("f"),
            &owner("h"),
            Duration::from_secs(1),
            Duration::from_secs(2),
        )
        .await;
    assert!(matches!(
        wait_too_long,
        Err(LockError::InvalidArgument { field: "wait", .. })
    ));
}

#[tokio::test]
async fn the_sweeper_stops_when_the_service_is_dropped() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let before = metrics.num_alive_tasks();
    let locks = service();
    locks
        .acquire(
            &object("f"),
            &owner("h"),
            Duration::from_secs(3600),
            Duration::ZERO,
        )
        .await
        .expect("free");
    assert_eq!(metrics.num_alive_tasks(), before + 1, "the sweeper runs");
    drop(locks);
    eventually("the sweeper has ended", || {
        metrics.num_alive_tasks() == before
    })
    .await;
}

#[test]
fn debug_output_shows_counts_not_locks_or_tokens() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let locks = service();
        let lease = locks
            .acquire(
                &object("f"),
                &owner("h"),
                Duration::from_secs(1),
                Duration::ZERO,
            )
            .await
            .expect("free");
        let shown = format!("{locks:?}");
        assert!(shown.contains("held: 1"), "{shown}");
        assert!(!shown.contains(lease.token.expose()));
    });
}

#[test]
fn config_round_trips_through_serde_with_defaults_for_missing_fields() {
    let config: MemoryConfig = serde_json::from_str("{}").expect("empty config");
    assert_eq!(config, MemoryConfig::default());
    let config: MemoryConfig =
        serde_json::from_str(r#"{"limits": {"max_ttl": 1000}, "fence_floor": 7}"#).expect("json");
    assert_eq!(config.limits.max_ttl, Duration::from_secs(1));
    assert_eq!(config.fence_floor, Fence(7));
    let back: MemoryConfig =
        serde_json::from_str(&serde_json::to_string(&config).expect("ser")).expect("de");
    assert_eq!(back, config);
}

#[tokio::test]
async fn list_pages_cover_every_lock_once_in_object_order() {
    let locks = service();
    let holder = owner("h");
    for n in 0..2_345 {
        locks
            .acquire(
                &object(&format!("p/{n:05}")),
                &holder,
                Duration::from_secs(60),
                Duration::ZERO,
            )
            .await
            .expect("free");
    }
    locks
        .acquire(
            &object("q/elsewhere"),
            &holder,
            Duration::from_secs(60),
            Duration::ZERO,
        )
        .await
        .expect("free");
    let mut query = lockcore::ListQuery::new("p/", 1_000);
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let page = locks.list(&query).await.expect("valid query");
        pages += 1;
        seen.extend(page.locks.into_iter().map(|info| info.object.to_string()));
        match page.next {
            Some(next) => query.after = Some(next),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let expected: Vec<String> = (0..2_345).map(|n| format!("p/{n:05}")).collect();
    assert_eq!(
        seen, expected,
        "every lock once, sorted, nothing outside the prefix"
    );
}

#[tokio::test]
async fn a_full_last_page_still_says_there_is_nothing_more() {
    let locks = service();
    for n in 0..4 {
        locks
            .acquire(
                &object(&format!("f{n}")),
                &owner("h"),
                Duration::from_secs(60),
                Duration::ZERO,
            )
            .await
            .expect("free");
    }
    let page = locks
        .list(&lockcore::ListQuery::new("f", 4))
        .await
        .expect("valid query");
    assert_eq!(page.locks.len(), 4);
    assert_eq!(page.next, None);
}

/// Every lease that ends is reported exactly once: releases as released, leases that ran out as
/// expired (whether the sweeper, a new acquire or a release finds them), renewed leases never.
#[tokio::test]
async fn every_ended_lease_is_reported_once_with_how_it_ended() {
    use lockcore::LeaseEnd;
    use std::sync::Mutex;

    let locks = service();
    let seen: Arc<Mutex<Vec<LeaseEnd>>> = Arc::default();
    let sink = seen.clone();
    assert!(locks.report_lease_ends(Arc::new(move |end| {
        sink.lock().expect("notices").push(end);
    })));
    assert!(
        !locks.report_lease_ends(Arc::new(|_| {})),
        "a second sink is refused, not silently ignored"
    );
    let (alice, bob) = (owner("alice"), owner("bob"));
    let short = Duration::from_millis(30);
    let long = Duration::from_secs(60);

    let released = locks
        .acquire(&object("released"), &alice, long, Duration::ZERO)
        .await
        .expect("free");
    locks
        .release(&object("released"), &released.token)
        .await
        .expect("held");
    let swept = locks
        .acquire_in(
            &object("swept"),
            LockMode::Shared,
            &alice,
            short,
            Duration::ZERO,
        )
        .await
        .expect("free");
    let renewed = locks
        .acquire(&object("renewed"), &alice, short, Duration::ZERO)
        .await
        .expect("free");
    locks
        .renew(&object("renewed"), &renewed.token, long)
        .await
        .expect("held");
    let taken_over = locks
        .acquire(&object("taken-over"), &alice, short, Duration::ZERO)
        .await
        .expect("free");
    sleep(short * 2).await;
    locks
        .acquire(&object("taken-over"), &bob, long, Duration::ZERO)
        .await
        .expect("expired, so free");
    eventually("the sweeper reclaimed the expired lease", || {
        seen.lock().expect("notices").len() >= 3
    })
    .await;
    sleep(Duration::from_millis(50)).await;

    let mut notices = seen.lock().expect("notices").clone();
    notices.sort_by(|a, b| a.object.cmp(&b.object));
    let summary: Vec<(&str, &str, Fence, bool, LockMode)> = notices
        .iter()
        .map(|n| {
            (
                n.object.as_str(),
                n.owner.as_str(),
                n.fence,
                n.expired,
                n.mode,
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                "released",
                "alice",
                released.fence,
                false,
                LockMode::Exclusive
            ),
            ("swept", "alice", swept.fence, true, LockMode::Shared),
            (
                "taken-over",
                "alice",
                taken_over.fence,
                true,
                LockMode::Exclusive
            ),
        ]
    );
}
