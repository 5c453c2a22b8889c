//! etcd-specific behaviour: fences across the loss of etcd's data, whole-second TTLs, and the
//! URL forms.

mod common;

use std::time::Duration;

use backend_etcd::EtcdConfig;
use common::PrivateEtcd;
use lockcore::{LockError, LockService as _, ObjectId, OwnerId};

fn object(name: &str) -> ObjectId {
    ObjectId::new(name).expect("valid object")
}

fn owner(name: &str) -> OwnerId {
    OwnerId::new(name).expect("valid owner")
}

/// Wiping a member's data dir and starting a fresh etcd loses every fence key, yet the next
/// fence of each object is above every fence issued before (the clock floor).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fences_continue_above_earlier_ones_after_etcd_loses_its_data() {
    let Some(mut etcd) = PrivateEtcd::start("wipe") else {
        return;
    };
    let service = common::connect(EtcdConfig::from_url(etcd.url()))
        .await
        .expect("connects to the private etcd");
    let file = object("/vol/wiped");
    let mut before = Vec::new();
    for _ in 0..3 {
        let lease = service
            .acquire(
                &file,
                &owner("alice"),
                Duration::from_secs(30),
                Duration::ZERO,
            )
            .await
            .expect("granted");
        before.push(lease.fence);
        service
            .release(&file, &lease.token)
            .await
            .expect("released");
    }
    assert!(before.windows(2).all(|w| w[0] < w[1]), "{before:?}");
    assert_eq!(
        service.store().last_fence(&file).await.expect("reads"),
        before.last().copied()
    );
    drop(service);

    etcd.wipe();
    etcd.restart()
        .expect("a fresh etcd starts on the wiped data dir");
    let service = common::connect(EtcdConfig::from_url(etcd.url()))
        .await
        .expect("connects to the fresh etcd");
    assert_eq!(
        service.store().last_fence(&file).await.expect("reads"),
        None,
        "the data is gone"
    );
    let after = service
        .acquire(
            &file,
            &owner("bob"),
            Duration::from_secs(30),
            Duration::ZERO,
        )
        .await
        .expect("granted on the fresh etcd");
    let highest = before.iter().max().copied().expect("fences");
    assert!(
        after.fence > highest,
        "fence {} after the wipe is not above {highest}",
        after.fence
    );
}

/// etcd leases count whole seconds from a minimum: other TTLs are refused as invalid
/// arguments, before anything is granted.
#[tokio::test]
async fn ttls_etcd_cannot_lease_exactly_are_refused() {
    let Some(url) = common::url_or_skip() else {
        return;
    };
    let service = common::connect(EtcdConfig::from_url(&url))
        .await
        .expect("connects");
    let file = object(&format!("ttl-check/{}", rand::random::<u64>()));
    for ttl in [
        Duration::from_millis(300),
        Duration::from_secs(1),
        Duration::from_millis(2500),
    ] {
        let refused = service
            .acquire(&file, &owner("alice"), ttl, Duration::ZERO)
            .await;
        assert!(
            matches!(
                refused,
                Err(LockError::InvalidArgument { field: "ttl", .. })
            ),
            "{ttl:?}: {refused:?}"
        );
    }
    assert!(service.inspect(&file).await.expect("inspect").is_none());
    let lease = service
        .acquire(
            &file,
            &owner("alice"),
            Duration::from_secs(2),
            Duration::ZERO,
        )
        .await
        .expect("2 s is etcd's minimum");
    // The lease's TTL less the time since its grant was sent: never more than asked.
    assert!(
        lease.ttl <= Duration::from_secs(2) && lease.ttl > Duration::from_millis(1500),
        "{:?}",
        lease.ttl
    );
    let renew = service
        .renew(&file, &lease.token, Duration::from_millis(1500))
        .await;
    assert!(matches!(
        renew,
        Err(LockError::InvalidArgument { field: "ttl", .. })
    ));
    service.release(&file, &lease.token).await.expect("release");
}

/// An unreachable cluster is a typed `unavailable`, within the connect timeout.
#[tokio::test]
async fn an_unreachable_cluster_is_unavailable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let mut config = EtcdConfig::from_url(format!("etcd://127.0.0.1:{port}"));
    config.connect_timeout = Duration::from_millis(500);
    config.operation_timeout = Duration::from_millis(500);
    let connected = common::connect(config).await;
    assert!(
        matches!(
            connected,
            Err(LockError::Unavailable {
                backend: "etcd",
                ..
            })
        ),
        "{connected:?}"
    );
}

/// Waiters are woken by the watch, well before the 2 s keep-alive retry: by a release seen
/// through another store (another lockd process), and by a downgrade.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_wakes_waiters_of_other_processes_at_once() {
    let Some(url) = common::url_or_skip() else {
        return;
    };
    let holder_side = common::connect(EtcdConfig::from_url(&url))
        .await
        .expect("connects");
    let waiter_side = common::connect(EtcdConfig::from_url(&url))
        .await
        .expect("connects");
    let file = object(&format!("watch-check/{}", rand::random::<u64>()));
    let ttl = Duration::from_secs(30);
    const PROMPT: Duration = Duration::from_millis(1000);

    let held = holder_side
        .acquire(&file, &owner("alice"), ttl, Duration::ZERO)
        .await
        .expect("granted");
    let waiting = tokio::spawn({
        let file = file.clone();
        async move {
            let lease = waiter_side
                .acquire_in(
                    &file,
                    lockcore::LockMode::Shared,
                    &owner("bob"),
                    ttl,
                    Duration::from_secs(10),
                )
                .await;
            (lease, std::time::Instant::now(), waiter_side)
        }
    });
    // Let the waiter queue and go to sleep on its 2 s keep-alive.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let downgraded_at = std::time::Instant::now();
    holder_side
        .downgrade(&file, &held.token)
        .await
        .expect("downgrade");
    let (lease, granted_at, waiter_side) = waiting.await.expect("waiter task");
    let shared = lease.expect("the shared waiter is granted after the downgrade");
    assert!(
        granted_at - downgraded_at < PROMPT,
        "woken {:?} after the downgrade",
        granted_at - downgraded_at
    );

    let waiting = tokio::spawn({
        let file = file.clone();
        async move {
            let lease = waiter_side
                .acquire(&file, &owner("carol"), ttl, Duration::from_secs(10))
                .await;
            (lease, std::time::Instant::now())
        }
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    holder_side
        .release(&file, &held.token)
        .await
        .expect("release");
    let released_at = std::time::Instant::now();
    holder_side
        .release(&file, &shared.token)
        .await
        .expect("release");
    let (lease, granted_at) = waiting.await.expect("waiter task");
    let exclusive = lease.expect("the exclusive waiter is granted after the releases");
    assert!(
        granted_at - released_at < PROMPT,
        "woken {:?} after the release",
        granted_at - released_at
    );
    holder_side
        .release(&file, &exclusive.token)
        .await
        .expect("release");
}

/// 64 objects, the most one request names, fit etcd's default limit of 128 operations per
/// transaction at every step: a grant, a blocked request queueing on all of them, its grant
/// when they free up, and a batch release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_objects_fit_etcds_transaction_limits() {
    let Some(url) = common::url_or_skip() else {
        return;
    };
    let service = std::sync::Arc::new(
        common::connect(EtcdConfig::from_url(&url))
            .await
            .expect("connects"),
    );
    let run: u64 = rand::random();
    let specs: Vec<lockcore::LockSpec> = (0..lockcore::MAX_OBJECTS_PER_REQUEST)
        .map(|i| {
            lockcore::LockSpec::new(
                object(&format!("many/{run:x}/{i}")),
                lockcore::LockMode::Exclusive,
            )
        })
        .collect();
    let ttl = Duration::from_secs(30);
    let first = service
        .acquire_with(&lockcore::AcquireRequest::many(
            specs.clone(),
            owner("alice"),
            ttl,
        ))
        .await
        .expect("64 objects granted at once");
    assert_eq!(first.leases.len(), 64);
    let waiter = tokio::spawn({
        let (service, specs) = (service.clone(), specs.clone());
        async move {
            let mut request = lockcore::AcquireRequest::many(specs, owner("bob"), ttl);
            request.wait = Duration::from_secs(10);
            service.acquire_with(&request).await
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let locks: Vec<_> = first
        .leases
        .iter()
        .map(|l| (l.object.clone(), l.token.clone()))
        .collect();
    let released = service.release_many(&locks).await.expect("batch release");
    assert!(released.iter().all(Result::is_ok), "{released:?}");
    let second = waiter
        .await
        .expect("waiter task")
        .expect("the queued 64-object request is granted");
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
    let renewed = service
        .renew_many(&locks, Duration::from_secs(10))
        .await
        .expect("batch renew");
    assert!(renewed.iter().all(Result::is_ok), "{renewed:?}");
    let released = service.release_many(&locks).await.expect("batch release");
    assert!(released.iter().all(Result::is_ok), "{released:?}");
}
