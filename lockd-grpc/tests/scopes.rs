//! Subtree scopes, lock-delays, waiters and conflict causes cross the gRPC API both ways: what
//! a `GrpcClient` asks reaches the lock service unchanged, and what the lock service answers
//! reaches the client unchanged.
//!
//! The lock service here is scripted (it records requests and answers what the test set up), so
//! these checks hold whichever backend implements the semantics.

#![allow(clippy::unwrap_used)] // Test setup panics on failure by design.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use lockcore::{
    async_trait, AcquireRequest, Conflict, ConflictCause, Fence, Grant, HolderInfo, Lease,
    ListQuery, LockDelayInfo, LockError, LockInfo, LockMode, LockPage, LockResult, LockScope,
    LockService, LockSpec, LockToken, ObjectId, OwnerId, TokenIssuer,
};
use lockd_grpc::pb::locks_client::LocksClient;
use lockd_grpc::{pb, GrpcOptions};
use tonic::transport::Channel;

fn object(name: &str) -> ObjectId {
    ObjectId::new(name).unwrap()
}

fn owner(name: &str) -> OwnerId {
    OwnerId::new(name).unwrap()
}

/// Grants every acquire (recording it) unless it names `/locked`, which is refused with a
/// lock-delay; describes `/delayed` as in a lock-delay with waiters, and lists it.
#[derive(Debug)]
struct Scripted {
    issuer: TokenIssuer,
    asked: Mutex<Vec<AcquireRequest>>,
    delayed: LockInfo,
}

impl Scripted {
    fn new() -> Self {
        let at = UNIX_EPOCH + Duration::from_millis(1_767_225_600_250);
        let delay = LockDelayInfo {
            owner: owner("vanished"),
            fence: Fence(41),
            mode: LockMode::Exclusive,
            scope: LockScope::Subtree,
            until: at + Duration::from_secs(5),
            remaining: Duration::from_millis(4200),
        };
        Self {
            issuer: TokenIssuer::random(),
            asked: Mutex::new(Vec::new()),
            delayed: LockInfo::delayed(object("/delayed"), delay, at).with_waiters(3),
        }
    }

    /// The same object held under a subtree lock, with the delay of an earlier shared holder.
    fn held(&self) -> LockInfo {
        let at = UNIX_EPOCH + Duration::from_millis(1_767_225_601_000);
        let holder = HolderInfo {
            owner: owner("renamer"),
            scope: LockScope::Subtree,
            fence: Fence(50),
            acquired_at: at,
            expires_at: at + Duration::from_secs(30),
            ttl: Duration::from_secs(30),
        };
        LockInfo::from_holders(object("/held"), LockMode::Exclusive, vec![holder])
            .unwrap()
            .with_waiters(1)
    }

    fn asked(&self) -> Vec<AcquireRequest> {
        self.asked.lock().unwrap().clone()
    }
}

fn unused<T>() -> LockResult<T> {
    Err(LockError::Internal("not scripted".into()))
}

#[async_trait]
impl LockService for Scripted {
    fn backend(&self) -> &'static str {
        "scripted"
    }
    async fn acquire_with(&self, request: &AcquireRequest) -> LockResult<Grant> {
        self.asked.lock().unwrap().push(request.clone());
        if request
            .objects
            .iter()
            .any(|s| s.object.as_str() == "/locked")
        {
            return Err(LockError::locked(vec![Conflict {
                object: object("/locked"),
                holder: owner("vanished"),
                retry_after: Duration::from_millis(1700),
                cause: ConflictCause::LockDelay,
            }]));
        }
        let leases = request
            .objects
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                let fence = Fence(100 + i as u64);
                Lease {
                    object: spec.object.clone(),
                    owner: request.owner.clone(),
                    mode: spec.mode,
                    token: self.issuer.seal(self.issuer.prepare(), &spec.object, fence),
                    fence,
                    ttl: request.ttl,
                }
            })
            .collect();
        Ok(Grant {
            owner: request.owner.clone(),
            ttl: request.ttl,
            leases,
        })
    }
    async fn release(&self, _: &ObjectId, _: &LockToken) -> LockResult<Fence> {
        unused()
    }
    async fn release_many(
        &self,
        _: &[(ObjectId, LockToken)],
    ) -> LockResult<Vec<LockResult<Fence>>> {
        unused()
    }
    async fn renew(&self, _: &ObjectId, _: &LockToken, _: Duration) -> LockResult<Lease> {
        unused()
    }
    async fn renew_many(
        &self,
        _: &[(ObjectId, LockToken)],
        _: Duration,
    ) -> LockResult<Vec<LockResult<Lease>>> {
        unused()
    }
    async fn downgrade(&self, _: &ObjectId, _: &LockToken) -> LockResult<Lease> {
        unused()
    }
    async fn validate(&self, _: &ObjectId, _: &LockToken) -> LockResult<Lease> {
        unused()
    }
    async fn inspect(&self, object: &ObjectId) -> LockResult<Option<LockInfo>> {
        Ok(match object.as_str() {
            "/delayed" => Some(self.delayed.clone()),
            "/held" => Some(self.held()),
            _ => None,
        })
    }
    async fn list(&self, _: &ListQuery) -> LockResult<LockPage> {
        Ok(LockPage {
            locks: vec![self.delayed.clone(), self.held()],
            next: None,
        })
    }
}

async fn raw(server: &support::Running) -> LocksClient<Channel> {
    LocksClient::new(
        Channel::from_shared(format!("http://{}", server.addr))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    )
}

/// A client's subtree scopes and lock-delay reach the lock service as asked, and the answer
/// names each lease's scope; a request without a lock-delay gets the server's default.
#[tokio::test]
async fn scopes_and_lock_delays_reach_the_service() {
    let scripted = Arc::new(Scripted::new());
    let options = GrpcOptions::default().with_default_lock_delay(Duration::from_secs(2));
    let server = support::start_with(scripted.clone(), options).await;
    let client = server.client(None);

    let rename = AcquireRequest::many(
        vec![
            LockSpec::subtree(object("/vol/a"), LockMode::Exclusive),
            LockSpec::subtree(object("/vol/b"), LockMode::Exclusive),
            LockSpec::shared(object("/vol/c")),
        ],
        owner("renamer"),
        Duration::from_secs(10),
    )
    .with_lock_delay(Duration::from_millis(1500));
    let grant = client.acquire_with(&rename).await.unwrap();
    assert_eq!(grant.leases.len(), 3);
    let seen = scripted.asked().pop().unwrap();
    assert_eq!(seen.objects, rename.objects);
    assert_eq!(seen.lock_delay, Duration::from_millis(1500));

    // A zero lock-delay is not sent: the server's default applies.
    let plain = AcquireRequest::new(object("/vol/d"), owner("w"), Duration::from_secs(1))
        .with_scope(LockScope::Subtree);
    client.acquire_with(&plain).await.unwrap();
    let seen = scripted.asked().pop().unwrap();
    assert_eq!(seen.objects[0].scope, LockScope::Subtree);
    assert_eq!(seen.lock_delay, Duration::from_secs(2));

    // An explicit zero on the wire is kept.
    let mut locks = raw(&server).await;
    let answer = locks
        .acquire(pb::AcquireRequest {
            objects: vec![
                pb::ObjectSpec {
                    object: "/vol/e".into(),
                    scope: pb::LockScope::Subtree as i32,
                    ..pb::ObjectSpec::default()
                },
                pb::ObjectSpec {
                    object: "/vol/f".into(),
                    ..pb::ObjectSpec::default()
                },
            ],
            owner: "w".into(),
            ttl_ms: 1000,
            lock_delay_ms: Some(0),
            ..pb::AcquireRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    let scopes: Vec<i32> = answer.locks.iter().map(|lease| lease.scope).collect();
    assert_eq!(
        scopes,
        [pb::LockScope::Subtree as i32, pb::LockScope::Object as i32]
    );
    let seen = scripted.asked().pop().unwrap();
    assert_eq!(seen.lock_delay, Duration::ZERO);
    assert_eq!(
        seen.objects.iter().map(|s| s.scope).collect::<Vec<_>>(),
        [LockScope::Subtree, LockScope::Object]
    );
}

/// A refusal caused by a lock-delay reaches the client with its cause, and its message names
/// the lock-delay.
#[tokio::test]
async fn lock_delay_refusals_keep_their_cause() {
    let server = support::start_with(Arc::new(Scripted::new()), GrpcOptions::default()).await;
    let client = server.client(None);
    let refused = client
        .acquire_with(&AcquireRequest::new(
            object("/locked"),
            owner("w"),
            Duration::from_secs(1),
        ))
        .await
        .unwrap_err();
    let LockError::Locked { conflicts, .. } = &refused else {
        panic!("{refused:?}");
    };
    assert_eq!(conflicts[0].cause, ConflictCause::LockDelay);
    assert_eq!(conflicts[0].retry_after, Duration::from_millis(1700));
    assert!(refused.to_string().contains("lock-delay"), "{refused}");
}

/// Inspect and List carry waiters, each holder's scope and a lock-delay in force, and the
/// client reads back exactly what the lock service described (an object with only a delay
/// has no holder).
#[tokio::test]
async fn inspect_and_list_carry_waiters_scopes_and_delays() {
    let scripted = Arc::new(Scripted::new());
    let server = support::start_with(scripted.clone(), GrpcOptions::default()).await;
    let client = server.client(None);

    let delayed = client.inspect(&object("/delayed")).await.unwrap().unwrap();
    assert_eq!(delayed, scripted.delayed);
    assert!(delayed.holders.is_empty());
    assert_eq!(delayed.waiters, 3);
    let held = client.inspect(&object("/held")).await.unwrap().unwrap();
    assert_eq!(held, scripted.held());
    assert_eq!(held.holders[0].scope, LockScope::Subtree);

    let page = client.list(&ListQuery::new("/", 10)).await.unwrap();
    assert_eq!(page.locks, [scripted.delayed.clone(), scripted.held()]);

    let mut locks = raw(&server).await;
    let lock = locks
        .inspect(pb::InspectRequest {
            object: "/delayed".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .lock
        .unwrap();
    let delay = lock.delay.unwrap();
    assert_eq!(
        (delay.owner.as_str(), delay.fence, delay.remaining_ms),
        ("vanished", 41, 4200)
    );
    assert_eq!(delay.scope, pb::LockScope::Subtree as i32);
    assert_eq!(lock.waiters, 3);
}
