//! `LeaseGuard` over the in-memory backend: renewal keeps a lease alive, loss is reported the
//! moment it happens, release frees the lock.

#![allow(clippy::unwrap_used)] // Test helpers panic on setup failures by design.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use backend_memory::{MemoryConfig, MemoryLockService, MemoryStore};
use lockcore::{
    async_trait, AcquireRequest, Fence, Grant, Lease, ListQuery, LockError, LockInfo, LockMode,
    LockPage, LockResult, LockService, LockSpec, LockToken, ObjectId, OwnerId, TokenIssuer,
};
use lockd_client::{GuardOptions, LeaseGuard, LeaseState, LossReason};

const TTL: Duration = Duration::from_millis(500);

/// The memory backend, with a switch that makes every renewal fail as if the backend were down.
#[derive(Debug)]
struct Flaky {
    inner: MemoryLockService,
    renewals_fail: AtomicBool,
}

#[async_trait]
impl LockService for Flaky {
    fn backend(&self) -> &'static str {
        "flaky-memory"
    }
    async fn acquire_with(&self, request: &AcquireRequest) -> LockResult<Grant> {
        self.inner.acquire_with(request).await
    }
    async fn release_many(
        &self,
        locks: &[(ObjectId, LockToken)],
    ) -> LockResult<Vec<LockResult<Fence>>> {
        self.inner.release_many(locks).await
    }
    async fn renew_many(
        &self,
        locks: &[(ObjectId, LockToken)],
        ttl: Duration,
    ) -> LockResult<Vec<LockResult<Lease>>> {
        if self.renewals_fail.load(Ordering::SeqCst) {
            return Err(LockError::unavailable(
                "flaky-memory",
                "renewals switched off",
            ));
        }
        self.inner.renew_many(locks, ttl).await
    }
    async fn downgrade(&self, object: &ObjectId, token: &LockToken) -> LockResult<Lease> {
        self.inner.downgrade(object, token).await
    }
    async fn close(&self, timeout: Duration) -> bool {
        self.inner.close(timeout).await
    }
    async fn release(&self, object: &ObjectId, token: &LockToken) -> LockResult<Fence> {
        self.inner.release(object, token).await
    }
    async fn renew(
        &self,
        object: &ObjectId,
        token: &LockToken,
        ttl: Duration,
    ) -> LockResult<Lease> {
        if self.renewals_fail.load(Ordering::SeqCst) {
            return Err(LockError::unavailable(
                "flaky-memory",
                "renewals switched off",
            ));
        }
        self.inner.renew(object, token, ttl).await
    }
    async fn validate(&self, object: &ObjectId, token: &LockToken) -> LockResult<Lease> {
        self.inner.validate(object, token).await
    }
    async fn inspect(&self, object: &ObjectId) -> LockResult<Option<LockInfo>> {
        self.inner.inspect(object).await
    }
    async fn list(&self, query: &ListQuery) -> LockResult<LockPage> {
        self.inner.list(query).await
    }
}

fn setup() -> (Arc<Flaky>, Arc<dyn LockService>) {
    let flaky = Arc::new(Flaky {
        inner: MemoryLockService::new(
            MemoryStore::new(MemoryConfig::default()),
            TokenIssuer::random(),
        ),
        renewals_fail: AtomicBool::new(false),
    });
    let service: Arc<dyn LockService> = flaky.clone();
    (flaky, service)
}

fn names(test: &str) -> (ObjectId, OwnerId, OwnerId) {
    (
        ObjectId::new(format!("/guard/{test}")).unwrap(),
        OwnerId::new("holder").unwrap(),
        OwnerId::new("intruder").unwrap(),
    )
}

/// A guarded lease outlives its TTL many times over, and nobody else can take the object.
#[tokio::test]
async fn renewals_keep_a_lease_alive_beyond_its_ttl() {
    let (_, service) = setup();
    let (object, holder, intruder) = names("alive");
    let guard = LeaseGuard::acquire(service.clone(), &object, &holder, TTL, Duration::ZERO)
        .await
        .unwrap();
    let fence = guard.fence();

    tokio::time::sleep(TTL * 4).await;

    assert_eq!(guard.state(), LeaseState::Held);
    assert!(guard.is_held());
    assert!(guard.valid_for() > Duration::ZERO);
    let valid = service.validate(&object, &guard.token()).await.unwrap();
    assert_eq!(valid.fence, fence, "renewal keeps the fence");
    let err = service
        .acquire(&object, &intruder, TTL, Duration::ZERO)
        .await
        .unwrap_err();
    assert!(matches!(err, LockError::Locked { holder: h, .. } if h == holder));
    guard.release().await.unwrap();
}

/// When renewals fail until the lease runs out, the guard reports the loss before anyone else
/// can be granted the object, and the object can then be taken by someone else.
#[tokio::test]
async fn a_lease_that_cannot_be_renewed_is_lost_before_another_owner_gets_it() {
    let (flaky, service) = setup();
    let (object, holder, intruder) = names("expired");
    let guard = LeaseGuard::acquire(service.clone(), &object, &holder, TTL, Duration::ZERO)
        .await
        .unwrap();
    let mut signal = guard.subscribe();
    flaky.renewals_fail.store(true, Ordering::SeqCst);

    // The intruder keeps trying; the moment it gets the object, the guard must not claim it.
    let stolen = loop {
        match service
            .acquire(&object, &intruder, TTL, Duration::ZERO)
            .await
        {
            Ok(lease) => break lease,
            Err(LockError::Locked { .. }) => {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Err(e) => panic!("unexpected {e:?}"),
        }
    };
    assert!(
        !guard.is_held(),
        "the guard claimed a lock someone else was granted"
    );
    assert!(stolen.fence > guard.fence());

    signal.wait_for(|state| !state.is_held()).await.unwrap();
    match guard.state() {
        LeaseState::Lost(LossReason::Expired {
            last_error: Some(LockError::Unavailable { .. }),
        }) => {}
        other => panic!("expected expiry after failed renewals, got {other:?}"),
    }
    assert_eq!(guard.valid_for(), Duration::ZERO);

    // Renewals coming back do not resurrect the guard, and its release is refused.
    flaky.renewals_fail.store(false, Ordering::SeqCst);
    tokio::time::sleep(TTL / 2).await;
    assert!(!guard.is_held());
    let err = guard.release().await.unwrap_err();
    assert!(matches!(err, LockError::TokenMismatch { .. }), "{err:?}");
    service.release(&object, &stolen.token).await.unwrap();
}

/// A lock released behind the guard's back and taken by another owner is reported lost at the
/// next renewal, as `TokenMismatch`.
#[tokio::test]
async fn a_lock_taken_by_another_owner_is_reported_at_the_next_renewal() {
    let (_, service) = setup();
    let (object, holder, intruder) = names("stolen");
    let guard = LeaseGuard::acquire(service.clone(), &object, &holder, TTL, Duration::ZERO)
        .await
        .unwrap();

    service.release(&object, &guard.token()).await.unwrap();
    let stolen = service
        .acquire(&object, &intruder, Duration::from_secs(10), Duration::ZERO)
        .await
        .unwrap();

    let state = tokio::time::timeout(TTL * 4, guard.lost())
        .await
        .expect("the loss is reported by a renewal, not missed");
    match state {
        LeaseState::Lost(LossReason::Refused(LockError::TokenMismatch { object: o })) => {
            assert_eq!(o, object)
        }
        other => panic!("expected a refused renewal, got {other:?}"),
    }
    assert!(!guard.is_held());
    drop(guard);
    // Dropping a lost guard must not disturb the new holder.
    tokio::time::sleep(Duration::from_millis(20)).await;
    service.validate(&object, &stolen.token).await.unwrap();
}

/// A lock that was released (and not retaken) is reported lost as `NotHeld`.
#[tokio::test]
async fn a_lock_released_elsewhere_is_reported_not_held() {
    let (_, service) = setup();
    let (object, holder, _) = names("not-held");
    let guard = LeaseGuard::acquire(service.clone(), &object, &holder, TTL, Duration::ZERO)
        .await
        .unwrap();
    service.release(&object, &guard.token()).await.unwrap();
    let state = tokio::time::timeout(TTL * 4, guard.lost())
        .await
        .expect("the loss is reported by a renewal, not missed");
    assert!(
        matches!(
            state,
            LeaseState::Lost(LossReason::Refused(LockError::NotHeld { .. }))
        ),
        "{state:?}"
    );
}

/// An explicit release frees the object at once and tells subscribers it was released.
#[tokio::test]
async fn release_frees_the_lock_and_tells_subscribers() {
    let (_, service) = setup();
    let (object, holder, intruder) = names("release");
    let guard = LeaseGuard::acquire(
        service.clone(),
        &object,
        &holder,
        Duration::from_secs(30),
        Duration::ZERO,
    )
    .await
    .unwrap();
    let signal = guard.subscribe();
    let fence = guard.fence();

    assert_eq!(guard.release().await.unwrap(), fence);

    assert_eq!(*signal.borrow(), LeaseState::Released);
    assert_eq!(service.inspect(&object).await.unwrap(), None);
    service
        .acquire(&object, &intruder, TTL, Duration::ZERO)
        .await
        .unwrap();
}

/// Dropping a guard releases the lock in the background.
#[tokio::test]
async fn dropping_a_guard_releases_in_the_background() {
    let (_, service) = setup();
    let (object, holder, intruder) = names("drop");
    let guard = LeaseGuard::acquire(
        service.clone(),
        &object,
        &holder,
        Duration::from_secs(30),
        Duration::ZERO,
    )
    .await
    .unwrap();
    let signal = guard.subscribe();
    drop(guard);
    assert_eq!(*signal.borrow(), LeaseState::Released);
    // Well before the 30 s TTL, the object becomes free.
    service
        .acquire(&object, &intruder, TTL, Duration::from_secs(5))
        .await
        .unwrap();
}

/// Dropping a guard without release-on-drop stops the renewals: the lease lapses after its TTL.
#[tokio::test]
async fn dropping_a_guard_stops_renewing() {
    let (_, service) = setup();
    let (object, holder, intruder) = names("drop-no-release");
    let guard = LeaseGuard::acquire_with_options(
        service.clone(),
        &object,
        &holder,
        TTL,
        Duration::ZERO,
        GuardOptions::default().no_release_on_drop(),
    )
    .await
    .unwrap();
    drop(guard);
    let info = service
        .inspect(&object)
        .await
        .unwrap()
        .expect("still held right after the drop");
    assert_eq!(info.owner, holder);
    // Were the guard still renewing, this would wait in vain and fail with `Locked`.
    service
        .acquire(&object, &intruder, TTL, TTL * 5)
        .await
        .unwrap();
}

/// A lease granted after a wait longer than its TTL is still guarded as held (the guard renews
/// once to learn its deadline instead of counting from the request).
#[tokio::test]
async fn a_lease_granted_after_a_long_wait_is_held() {
    let (_, service) = setup();
    let (object, holder, intruder) = names("long-wait");
    let first = service
        .acquire(&object, &intruder, Duration::from_secs(30), Duration::ZERO)
        .await
        .unwrap();
    let releaser = {
        let (service, object) = (service.clone(), object.clone());
        tokio::spawn(async move {
            tokio::time::sleep(TTL * 2).await;
            service.release(&object, &first.token).await.unwrap();
        })
    };
    let guard = LeaseGuard::acquire(service.clone(), &object, &holder, TTL, TTL * 10)
        .await
        .unwrap();
    releaser.await.unwrap();
    assert!(guard.is_held(), "{:?}", guard.state());
    tokio::time::sleep(TTL * 2).await;
    assert!(guard.is_held(), "{:?}", guard.state());
    service.validate(&object, &guard.token()).await.unwrap();
}

/// Custom renewal periods are honoured: a renewal every 50 ms keeps a 150 ms lease alive.
#[tokio::test]
async fn a_custom_renewal_period_keeps_a_short_lease_alive() {
    let (_, service) = setup();
    let (object, holder, _) = names("custom");
    let ttl = Duration::from_millis(150);
    let lease = service
        .acquire(&object, &holder, ttl, Duration::ZERO)
        .await
        .unwrap();
    let guard = LeaseGuard::with_options(
        service.clone(),
        lease,
        GuardOptions::default().renew_every(Duration::from_millis(50)),
    )
    .unwrap();
    tokio::time::sleep(ttl * 4).await;
    assert!(guard.is_held());
    service.validate(&object, &guard.token()).await.unwrap();
}

/// A guard cannot be made outside a Tokio runtime; it says so instead of panicking.
#[test]
fn a_guard_needs_a_runtime() {
    let client = lockd_client::LockdClient::new(lockd_client::ClientConfig::default()).unwrap();
    let issuer = TokenIssuer::random();
    let (object, owner, _) = names("no-runtime");
    let lease = Lease {
        token: issuer.seal(issuer.prepare(), &object, Fence(1)),
        object,
        owner,
        mode: LockMode::Exclusive,
        fence: Fence(1),
        ttl: TTL,
    };
    let err = LeaseGuard::new(Arc::new(client), lease).unwrap_err();
    assert!(matches!(err, LockError::Internal(_)), "{err:?}");
}

/// A shared lease is kept alive like an exclusive one, beside other shared holders.
#[tokio::test]
async fn a_shared_lease_is_kept_alive_beside_other_readers() {
    let (_flaky, service) = setup();
    let (object, holder, other) = names("shared");
    let request = AcquireRequest::new(object.clone(), holder, TTL).with_mode(LockMode::Shared);
    let guard = LeaseGuard::acquire_request(service.clone(), &request, GuardOptions::default())
        .await
        .unwrap();
    assert_eq!(guard.lease().mode, LockMode::Shared);
    let reader = service
        .acquire_in(&object, LockMode::Shared, &other, TTL * 10, Duration::ZERO)
        .await
        .expect("another reader joins");
    tokio::time::sleep(TTL * 2).await;
    assert!(guard.is_held());
    let info = service.inspect(&object).await.unwrap().unwrap();
    assert_eq!(info.holders.len(), 2, "{info:?}");
    guard.release().await.unwrap();
    let info = service.inspect(&object).await.unwrap().unwrap();
    assert_eq!(info.holders.len(), 1, "the other reader keeps its lease");
    service.release(&object, &reader.token).await.unwrap();
}

/// One guard keeps every lease of a multi-object grant alive, and releases them together.
#[tokio::test]
async fn a_multi_object_grant_is_kept_alive_and_released_together() {
    let (_flaky, service) = setup();
    let (a, holder, intruder) = names("multi-a");
    let b = ObjectId::new("/guard/multi-b").unwrap();
    let request = AcquireRequest::many(
        vec![LockSpec::exclusive(a.clone()), LockSpec::shared(b.clone())],
        holder,
        TTL,
    );
    let guard = LeaseGuard::acquire_request(service.clone(), &request, GuardOptions::default())
        .await
        .unwrap();
    assert_eq!(guard.leases().len(), 2);
    assert_eq!(guard.object(), a);
    tokio::time::sleep(TTL * 2).await;
    assert!(guard.is_held());
    for object in [&a, &b] {
        assert!(matches!(
            service
                .acquire(object, &intruder, TTL, Duration::ZERO)
                .await,
            Err(LockError::Locked { .. })
        ));
    }
    let released = guard.release_all().await.unwrap();
    assert!(released.iter().all(Result::is_ok), "{released:?}");
    for object in [&a, &b] {
        assert_eq!(service.inspect(object).await.unwrap(), None);
    }
}

/// When one lease of a guarded grant is lost, the grant counts as lost and the guard gives
/// the other leases back.
#[tokio::test]
async fn losing_one_lease_of_a_grant_loses_the_grant_and_frees_the_rest() {
    let (_flaky, service) = setup();
    let (a, holder, _) = names("lost-a");
    let b = ObjectId::new("/guard/lost-b").unwrap();
    let request = AcquireRequest::many(
        vec![
            LockSpec::exclusive(a.clone()),
            LockSpec::exclusive(b.clone()),
        ],
        holder,
        TTL,
    );
    let grant = service.acquire_with(&request).await.unwrap();
    let stolen = grant.leases[1].clone();
    let guard = LeaseGuard::for_grant(service.clone(), grant).unwrap();
    service
        .release(&stolen.object, &stolen.token)
        .await
        .unwrap();
    let state = tokio::time::timeout(TTL * 2, guard.lost()).await.unwrap();
    assert!(
        matches!(
            state,
            LeaseState::Lost(LossReason::Refused(LockError::NotHeld { .. }))
        ),
        "{state:?}"
    );
    let deadline = tokio::time::Instant::now() + TTL;
    while service.inspect(&a).await.unwrap().is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rest was not released"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
