//! The gRPC API as a client in another language sees it: status codes and details, API keys,
//! health, reflection, the several-lock forms, hooks and events, bad input and shutdown.

#![allow(clippy::unwrap_used)] // Test setup panics on failure by design.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BufMut};
use lockcore::{
    async_trait, AcquireRequest, Fence, Grant, Lease, ListQuery, LockError, LockInfo, LockPage,
    LockResult, LockService, LockSpec, LockToken, ObjectId, OwnerId,
};
use lockd_grpc::pb::locks_client::LocksClient;
use lockd_grpc::status::{detail_of, retry_delay_of};
use lockd_grpc::{pb, Admission, Auth, EventStream, GrpcOptions, Hooks};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

const KEY: &str = "right-key-0123456789";

async fn channel(server: &support::Running) -> Channel {
    Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn raw(server: &support::Running) -> LocksClient<Channel> {
    LocksClient::new(channel(server).await)
}

fn with_key<T>(message: T, key: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    request
}

fn acquire_one(object: &str, owner: &str) -> pb::AcquireRequest {
    pb::AcquireRequest {
        object: object.into(),
        owner: owner.into(),
        ttl_ms: 30_000,
        ..pb::AcquireRequest::default()
    }
}

/// The status code and lockd's detail of a refused call.
fn refusal<T: std::fmt::Debug>(
    result: Result<tonic::Response<T>, Status>,
) -> (Code, pb::ErrorDetail) {
    let status = result.expect_err("the call is refused");
    let detail = detail_of(&status).expect("lockd puts an ErrorDetail in every refusal");
    (status.code(), detail)
}

/// Calls without a key, with a wrong key or another scheme are UNAUTHENTICATED (code
/// `unauthenticated`), reach no lock, and are reported to the hooks; the right key works, and
/// the health service needs no key, like HTTP's `/readyz`.
#[tokio::test]
async fn calls_without_the_right_api_key_are_unauthenticated() {
    let hooks = Arc::new(Recorder::default());
    let options = GrpcOptions::default()
        .with_auth(Auth::api_keys(&[KEY]))
        .with_hooks(hooks.clone());
    let server = support::start_with(support::memory(), options).await;
    let mut locks = raw(&server).await;

    let (code, detail) = refusal(locks.acquire(acquire_one("/a", "o")).await);
    assert_eq!(code, Code::Unauthenticated);
    assert_eq!(detail.code, "unauthenticated");
    let (code, _) = refusal(
        locks
            .acquire(with_key(acquire_one("/a", "o"), "wrong-key"))
            .await,
    );
    assert_eq!(code, Code::Unauthenticated);
    let mut basic = Request::new(acquire_one("/a", "o"));
    basic
        .metadata_mut()
        .insert("authorization", format!("Basic {KEY}").parse().unwrap());
    assert_eq!(refusal(locks.acquire(basic).await).0, Code::Unauthenticated);
    assert_eq!(hooks.count("unauthenticated"), 3);
    assert_eq!(
        server.backend.inspect(&ObjectId::new("/a").unwrap()).await,
        Ok(None)
    );

    let anonymous = server.client(None);
    let object = ObjectId::new("/a").unwrap();
    let owner = OwnerId::new("o").unwrap();
    let refused = anonymous
        .acquire(&object, &owner, Duration::from_secs(5), Duration::ZERO)
        .await;
    assert!(
        matches!(
            refused,
            Err(LockError::InvalidArgument {
                field: "api_key",
                ..
            })
        ),
        "{refused:?}"
    );
    assert_eq!(anonymous.health().await, Ok(()));

    let keyed = server.client(Some(KEY));
    let lease = keyed
        .acquire(&object, &owner, Duration::from_secs(5), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(keyed.release(&object, &lease.token).await, Ok(lease.fence));
}

/// A `locked` refusal is ABORTED with the holder, the wait and every conflict in its detail,
/// and a RetryInfo; GrpcClient reads it back as `Locked` with its conflicts.
#[tokio::test]
async fn locked_refusals_carry_holder_retry_after_and_conflicts() {
    let server = support::start().await;
    let mut locks = raw(&server).await;
    locks
        .acquire(acquire_one("/vol/a", "node-1"))
        .await
        .unwrap();
    locks
        .acquire(acquire_one("/vol/c", "node-3"))
        .await
        .unwrap();

    let both = pb::AcquireRequest {
        objects: ["/vol/a", "/vol/b", "/vol/c"]
            .into_iter()
            .map(|object| pb::ObjectSpec {
                object: object.into(),
                mode: pb::LockMode::Shared as i32,
                ..pb::ObjectSpec::default()
            })
            .collect(),
        owner: "node-2".into(),
        ttl_ms: 1000,
        ..pb::AcquireRequest::default()
    };
    let status = locks.acquire(both).await.expect_err("locked");
    assert_eq!(status.code(), Code::Aborted);
    let detail = detail_of(&status).unwrap();
    assert_eq!(detail.code, "locked");
    assert_eq!(detail.holder, "node-1");
    assert!(
        detail.retry_after_ms > 29_000 && detail.retry_after_ms <= 30_000,
        "{detail:?}"
    );
    let conflicts: Vec<(&str, &str)> = detail
        .conflicts
        .iter()
        .map(|c| (c.object.as_str(), c.holder.as_str()))
        .collect();
    assert_eq!(conflicts, [("/vol/a", "node-1"), ("/vol/c", "node-3")]);
    let retry = retry_delay_of(&status).expect("a RetryInfo");
    assert_eq!(retry, Duration::from_millis(detail.retry_after_ms));

    let client = server.client(None);
    let object = |name| ObjectId::new(name).unwrap();
    let request = AcquireRequest::many(
        vec![
            LockSpec::exclusive(object("/vol/c")),
            LockSpec::exclusive(object("/vol/a")),
        ],
        OwnerId::new("node-2").unwrap(),
        Duration::from_secs(1),
    );
    match client.acquire_with(&request).await {
        Err(LockError::Locked {
            object: first,
            holder,
            conflicts,
            ..
        }) => {
            assert_eq!(first.as_str(), "/vol/c");
            assert_eq!(holder.as_str(), "node-3");
            assert_eq!(conflicts.len(), 2);
            assert_eq!(conflicts[1].object.as_str(), "/vol/a");
        }
        other => panic!("expected Locked, got {other:?}"),
    }
}

/// Several-lock releases and renewals answer one result per lock, in order: a lease, or the
/// refusal of that lock alone (`not_held`, `invalid_token`); the call itself succeeds.
#[tokio::test]
async fn several_lock_calls_answer_one_result_per_lock() {
    let server = support::start().await;
    let mut locks = raw(&server).await;
    let granted = locks
        .acquire(acquire_one("/a", "o"))
        .await
        .unwrap()
        .into_inner();
    let token = granted.locks[0].token.clone();
    // A genuine token of a lease that has ended.
    let ended = locks
        .acquire(acquire_one("/free", "o"))
        .await
        .unwrap()
        .into_inner();
    let ended_token = ended.locks[0].token.clone();
    locks
        .release(pb::ReleaseRequest {
            object: "/free".into(),
            token: ended_token.clone(),
            locks: Vec::new(),
        })
        .await
        .unwrap();
    let refs = vec![
        pb::LockRef {
            object: "/a".into(),
            token: token.clone(),
        },
        pb::LockRef {
            object: "/free".into(),
            token: ended_token,
        },
        pb::LockRef {
            object: "/junk".into(),
            token: "not-a-token".into(),
        },
    ];
    let renewed = locks
        .renew(pb::RenewRequest {
            locks: refs.clone(),
            ttl_ms: 60_000,
            ..pb::RenewRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(renewed.results.len(), 3);
    let lease = renewed.results[0].lease.as_ref().expect("renewed");
    assert_eq!(
        (lease.ttl_ms, lease.fence),
        (60_000, granted.locks[0].fence)
    );
    let codes: Vec<&str> = renewed
        .results
        .iter()
        .map(|r| r.error.as_ref().map_or("ok", |e| e.code.as_str()))
        .collect();
    assert_eq!(codes, ["ok", "not_held", "invalid_token"]);

    let released = locks
        .release(pb::ReleaseRequest {
            locks: refs,
            ..pb::ReleaseRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(released.results[0].fence, granted.locks[0].fence);
    assert!(released.results[0].error.is_none());
    let codes: Vec<&str> = released
        .results
        .iter()
        .map(|r| r.error.as_ref().map_or("ok", |e| e.code.as_str()))
        .collect();
    assert_eq!(codes, ["ok", "not_held", "invalid_token"]);
}

/// Inspect and List describe holders without tokens; Inspect of a free object is NOT_FOUND
/// (`not_found`); Validate never echoes the token; Downgrade answers a shared lease.
#[tokio::test]
async fn observers_see_holders_and_never_tokens() {
    let server = support::start().await;
    let mut locks = raw(&server).await;
    for owner in ["r1", "r2"] {
        let mut request = acquire_one("/dir/f", owner);
        request.mode = pb::LockMode::Shared as i32;
        locks.acquire(request).await.unwrap();
    }
    let writer = locks
        .acquire(acquire_one("/dir/g", "w"))
        .await
        .unwrap()
        .into_inner();
    let inspected = locks
        .inspect(pb::InspectRequest {
            object: "/dir/f".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .lock
        .unwrap();
    assert_eq!(inspected.mode, pb::LockMode::Shared as i32);
    assert_eq!(inspected.holders.len(), 2);
    assert!(inspected.holders[0].fence < inspected.holders[1].fence);
    assert_eq!(inspected.owner, inspected.holders[1].owner);
    assert!(inspected.acquired_at.is_some() && inspected.expires_at.is_some());

    let page = locks
        .list(pb::ListRequest {
            prefix: "/dir/".into(),
            limit: 1,
            after: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.locks.len(), 1);
    assert!(!page.next.is_empty());
    let rest = locks
        .list(pb::ListRequest {
            prefix: "/dir/".into(),
            limit: 0,
            after: page.next,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.locks.len(), 1);
    assert_eq!(rest.next, "");

    let (code, detail) = refusal(
        locks
            .inspect(pb::InspectRequest {
                object: "/dir/none".into(),
            })
            .await,
    );
    assert_eq!((code, detail.code.as_str()), (Code::NotFound, "not_found"));

    let valid = locks
        .validate(pb::ValidateRequest {
            object: "/dir/g".into(),
            token: writer.locks[0].token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(valid.owner, "w");
    let downgraded = locks
        .downgrade(pb::DowngradeRequest {
            object: "/dir/g".into(),
            token: writer.locks[0].token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(downgraded.mode, pb::LockMode::Shared as i32);
    assert_eq!(downgraded.token, writer.locks[0].token);
    assert_eq!(downgraded.fence, writer.locks[0].fence);
}

/// Every malformed or out-of-range request is INVALID_ARGUMENT naming its field (or
/// `invalid_token`), as on HTTP; nothing is granted and the server keeps serving.
#[tokio::test]
async fn bad_requests_name_the_field_at_fault() {
    let server = support::start().await;
    let mut locks = raw(&server).await;
    let many = |n: usize, same: bool| pb::AcquireRequest {
        objects: (0..n)
            .map(|i| pb::ObjectSpec {
                object: if same { "/x".into() } else { format!("/o{i}") },
                mode: 0,
                ..pb::ObjectSpec::default()
            })
            .collect(),
        owner: "o".into(),
        ttl_ms: 1000,
        ..pb::AcquireRequest::default()
    };
    let cases: Vec<(pb::AcquireRequest, &str)> = vec![
        (pb::AcquireRequest::default(), "object"),
        (acquire_one("/a", ""), "owner"),
        (acquire_one("bad\u{0}name", "o"), "object"),
        (
            pb::AcquireRequest {
                mode: 99,
                ..acquire_one("/a", "o")
            },
            "mode",
        ),
        (
            pb::AcquireRequest {
                ttl_ms: 0,
                ..acquire_one("/a", "o")
            },
            "ttl",
        ),
        (
            pb::AcquireRequest {
                ttl_ms: u64::MAX,
                ..acquire_one("/a", "o")
            },
            "ttl",
        ),
        (
            pb::AcquireRequest {
                wait_ms: u64::MAX,
                ..acquire_one("/a", "o")
            },
            "wait",
        ),
        (
            pb::AcquireRequest {
                request_id: "short".into(),
                ..acquire_one("/a", "o")
            },
            "request_id",
        ),
        (many(65, false), "objects"),
        (many(2, true), "objects"),
        (
            pb::AcquireRequest {
                scope: 7,
                ..acquire_one("/a", "o")
            },
            "scope",
        ),
        (
            pb::AcquireRequest {
                scope: pb::LockScope::Subtree as i32,
                ..many(2, false)
            },
            "scope",
        ),
        (
            pb::AcquireRequest {
                lock_delay_ms: Some(60_001),
                ..acquire_one("/a", "o")
            },
            "lock_delay_ms",
        ),
        (acquire_one("/a/../b", "o"), "object"),
        (acquire_one("/a/", "o"), "object"),
        (acquire_one(&"/d".repeat(33), "o"), "object"),
    ];
    for (request, field) in cases {
        let shown = format!("{request:?}");
        let (code, detail) = refusal(locks.acquire(request).await);
        assert_eq!(code, Code::InvalidArgument, "{shown}");
        assert_eq!(detail.code, "invalid_argument", "{shown}");
        assert_eq!(detail.field, field, "{shown}");
    }
    let (code, detail) = refusal(
        locks
            .release(pb::ReleaseRequest {
                object: "/a".into(),
                token: "lk2.garbage".into(),
                locks: Vec::new(),
            })
            .await,
    );
    assert_eq!(
        (code, detail.code.as_str()),
        (Code::InvalidArgument, "invalid_token")
    );
    let (_, detail) = refusal(
        locks
            .release(pb::ReleaseRequest {
                object: "/a".into(),
                ..pb::ReleaseRequest::default()
            })
            .await,
    );
    assert_eq!(detail.field, "token");
    let (_, detail) = refusal(
        locks
            .renew(pb::RenewRequest {
                object: "/a".into(),
                token: "t".into(),
                locks: vec![pb::LockRef::default()],
                ttl_ms: 5,
            })
            .await,
    );
    assert_eq!(detail.field, "locks");
    let (_, detail) = refusal(
        locks
            .list(pb::ListRequest {
                limit: 5000,
                ..pb::ListRequest::default()
            })
            .await,
    );
    assert_eq!(detail.field, "limit");
    let (_, detail) = refusal(
        locks
            .list(pb::ListRequest {
                prefix: "\u{7}".into(),
                ..pb::ListRequest::default()
            })
            .await,
    );
    assert_eq!(detail.field, "prefix");
    let (code, detail) = refusal(
        locks
            .validate(pb::ValidateRequest {
                object: "/a".into(),
                token: String::new(),
            })
            .await,
    );
    assert_eq!(
        (code, detail.code.as_str()),
        (Code::InvalidArgument, "invalid_token")
    );

    // Nothing was granted by any of them.
    let listed = server.backend.list(&ListQuery::new("", 10)).await.unwrap();
    assert!(listed.locks.is_empty(), "{listed:?}");
}

/// Passes raw bytes as a message, to send what no generated client would.
#[derive(Debug, Clone, Copy, Default)]
struct RawBytes;

impl Codec for RawBytes {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawBytes;
    type Decoder = RawBytes;

    fn encoder(&mut self) -> RawBytes {
        RawBytes
    }

    fn decoder(&mut self) -> RawBytes {
        RawBytes
    }
}

impl Encoder for RawBytes {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawBytes {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let mut bytes = vec![0; src.remaining()];
        src.copy_to_slice(&mut bytes);
        Ok(Some(bytes))
    }
}

/// Bytes that are not the message, and messages over the size limit, are refused with a
/// status (never a panic, never a grant), and the server keeps serving; GrpcClient reads an
/// oversized request as `InvalidArgument { field: "body" }`.
#[tokio::test]
async fn garbage_and_oversized_messages_are_refused_and_the_server_keeps_serving() {
    let server = support::start().await;
    let mut grpc = tonic::client::Grpc::new(channel(&server).await);
    let garbage: [Vec<u8>; 4] = [
        vec![0xff; 64],
        vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f],
        vec![
            0x28, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01,
        ],
        (0..=255u8).collect(),
    ];
    for method in [
        "Acquire",
        "Release",
        "Renew",
        "Downgrade",
        "Validate",
        "Inspect",
        "List",
    ] {
        for bytes in &garbage {
            grpc.ready().await.unwrap();
            let path = format!("/lockd.v1.Locks/{method}").parse().unwrap();
            let answer = grpc
                .unary(Request::new(bytes.clone()), path, RawBytes)
                .await;
            let status = answer.expect_err("garbage is refused");
            assert_ne!(status.code(), Code::Ok);
        }
    }
    grpc.ready().await.unwrap();
    let unknown = grpc
        .unary(
            Request::new(Vec::new()),
            "/lockd.v1.Locks/Explode".parse().unwrap(),
            RawBytes,
        )
        .await
        .expect_err("no such method");
    assert_eq!(unknown.code(), Code::Unimplemented);

    let mut locks = raw(&server).await;
    let huge = acquire_one(&"x".repeat(100_000), "o");
    let status = locks.acquire(huge).await.expect_err("too large");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");

    let client = server.client(None);
    let objects = (0..64)
        .map(|i| LockSpec::exclusive(ObjectId::new(format!("{i:02}{}", "y".repeat(1022))).unwrap()))
        .collect();
    let widest = AcquireRequest::many(objects, OwnerId::new("o").unwrap(), Duration::from_secs(1));
    let refused = client.acquire_with(&widest).await;
    assert!(
        matches!(
            refused,
            Err(LockError::InvalidArgument { field: "body", .. })
        ),
        "{refused:?}"
    );

    let listed = server.backend.list(&ListQuery::new("", 10)).await.unwrap();
    assert!(listed.locks.is_empty());
    let object = ObjectId::new("/after").unwrap();
    let lease = client
        .acquire(
            &object,
            &OwnerId::new("o").unwrap(),
            Duration::from_secs(1),
            Duration::ZERO,
        )
        .await
        .unwrap();
    assert_eq!(client.release(&object, &lease.token).await, Ok(lease.fence));
}

/// A backend that is down: every call is `unavailable`.
#[derive(Debug)]
struct Down;

fn down<T>() -> LockResult<T> {
    Err(LockError::unavailable("redis", "connection refused"))
}

#[async_trait]
impl LockService for Down {
    fn backend(&self) -> &'static str {
        "redis"
    }
    async fn acquire_with(&self, _: &AcquireRequest) -> LockResult<Grant> {
        down()
    }
    async fn release(&self, _: &ObjectId, _: &LockToken) -> LockResult<Fence> {
        down()
    }
    async fn release_many(
        &self,
        _: &[(ObjectId, LockToken)],
    ) -> LockResult<Vec<LockResult<Fence>>> {
        down()
    }
    async fn renew(&self, _: &ObjectId, _: &LockToken, _: Duration) -> LockResult<Lease> {
        down()
    }
    async fn renew_many(
        &self,
        _: &[(ObjectId, LockToken)],
        _: Duration,
    ) -> LockResult<Vec<LockResult<Lease>>> {
        down()
    }
    async fn downgrade(&self, _: &ObjectId, _: &LockToken) -> LockResult<Lease> {
        down()
    }
    async fn validate(&self, _: &ObjectId, _: &LockToken) -> LockResult<Lease> {
        down()
    }
    async fn inspect(&self, _: &ObjectId) -> LockResult<Option<LockInfo>> {
        down()
    }
    async fn list(&self, _: &ListQuery) -> LockResult<LockPage> {
        down()
    }
    async fn health(&self) -> LockResult<()> {
        down()
    }
}

/// The health service says SERVING while the backend is healthy and NOT_SERVING when it is
/// down; calls on a down backend are UNAVAILABLE with a 1 s RetryInfo, read by GrpcClient as
/// `Unavailable`.
#[tokio::test]
async fn health_follows_the_backend_and_outages_are_unavailable() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    let healthy = support::start().await;
    let mut health = HealthClient::new(channel(&healthy).await);
    for service in ["", "lockd.v1.Locks"] {
        let answer = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.status, ServingStatus::Serving as i32, "{service:?}");
    }
    assert_eq!(healthy.client(None).health().await, Ok(()));

    let sick = support::start_with(Arc::new(Down), GrpcOptions::default()).await;
    let mut health = HealthClient::new(channel(&sick).await);
    let answer = health
        .check(HealthCheckRequest {
            service: "lockd.v1.Locks".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.status, ServingStatus::NotServing as i32);
    let client = sick.client(None);
    assert!(matches!(
        client.health().await,
        Err(LockError::Unavailable {
            backend: "grpc",
            ..
        })
    ));

    let mut locks = raw(&sick).await;
    let status = locks
        .acquire(acquire_one("/a", "o"))
        .await
        .expect_err("down");
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(detail_of(&status).unwrap().code, "unavailable");
    assert_eq!(retry_delay_of(&status), Some(Duration::from_secs(1)));
    let object = ObjectId::new("/a").unwrap();
    let refused = client
        .acquire(
            &object,
            &OwnerId::new("o").unwrap(),
            Duration::from_secs(1),
            Duration::ZERO,
        )
        .await;
    assert!(
        matches!(
            refused,
            Err(LockError::Unavailable {
                backend: "grpc",
                ..
            })
        ),
        "{refused:?}"
    );
}

/// Server reflection lists `lockd.v1.Locks` and the health service, so `grpcurl` works
/// without the .proto file.
#[tokio::test]
async fn reflection_lists_the_services() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let server = support::start().await;
    let mut reflection = ServerReflectionClient::new(channel(&server).await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("unexpected answer {answer:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"lockd.v1.Locks".to_owned()), "{names:?}");
    assert!(
        names.contains(&"grpc.health.v1.Health".to_owned()),
        "{names:?}"
    );
}

/// Hooks that record what they were told and serve events from a channel.
#[derive(Default)]
struct Recorder {
    seen: Mutex<Vec<String>>,
    events: Mutex<Option<mpsc::Receiver<pb::EventsResponse>>>,
    refuse_blocking: bool,
}

impl Recorder {
    fn note(&self, what: String) {
        self.seen.lock().unwrap().push(what);
    }

    fn count(&self, prefix: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.starts_with(prefix))
            .count()
    }
}

impl Hooks for Recorder {
    fn admit(&self, operation: &'static str, blocking: bool) -> LockResult<Admission> {
        if blocking && self.refuse_blocking {
            return Err(LockError::unavailable(
                "lockd",
                "too many blocking acquires waiting",
            ));
        }
        self.note(format!("admit {operation}"));
        Ok(Admission::holding(()))
    }
    fn finished(&self, operation: &'static str, outcome: &'static str, _: Duration) {
        self.note(format!("finished {operation} {outcome}"));
    }
    fn granted(&self, grant: &Grant) {
        self.note(format!("granted {}", grant.leases.len()));
    }
    fn released(&self, object: &ObjectId, _: Fence) {
        self.note(format!("released {object}"));
    }
    fn release_refused(&self, object: &ObjectId, token: Option<&LockToken>, error: &LockError) {
        self.note(format!(
            "refused {object} {} {}",
            token.is_some(),
            error.code()
        ));
    }
    fn renewed(&self, lease: &Lease) {
        self.note(format!("renewed {}", lease.object));
    }
    fn downgraded(&self, lease: &Lease) {
        self.note(format!("downgraded {}", lease.object));
    }
    fn batch_entry(&self, operation: &'static str, outcome: &'static str) {
        self.note(format!("entry {operation} {outcome}"));
    }
    fn unauthenticated(&self) {
        self.note("unauthenticated".into());
    }
    fn events(&self, request: &pb::EventsRequest) -> Option<LockResult<EventStream>> {
        self.note(format!("events {:?}", request.after));
        let receiver = self.events.lock().unwrap().take()?;
        Some(Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(
            receiver,
        ))))
    }
}

/// The hooks hear about every call as lockd's HTTP handlers would record it, and a refusal by
/// `admit` reaches no lock.
#[tokio::test]
async fn hooks_hear_about_every_call() {
    let hooks = Arc::new(Recorder {
        refuse_blocking: true,
        ..Recorder::default()
    });
    let server = support::start_with(
        support::memory(),
        GrpcOptions::default().with_hooks(hooks.clone()),
    )
    .await;
    let client = server.client(None);
    let object = ObjectId::new("/h").unwrap();
    let owner = OwnerId::new("o").unwrap();
    let lease = client
        .acquire(&object, &owner, Duration::from_secs(5), Duration::ZERO)
        .await
        .unwrap();
    client
        .renew(&object, &lease.token, Duration::from_secs(6))
        .await
        .unwrap();
    client.downgrade(&object, &lease.token).await.unwrap();
    let refused = client
        .acquire(
            &ObjectId::new("/w").unwrap(),
            &owner,
            Duration::from_secs(5),
            Duration::from_secs(1),
        )
        .await;
    assert!(
        matches!(refused, Err(LockError::Unavailable { .. })),
        "{refused:?}"
    );
    client.release(&object, &lease.token).await.unwrap();
    let again = client.release(&object, &lease.token).await;
    assert!(matches!(again, Err(LockError::NotHeld { .. })));
    let batch = client
        .release_many(&[(object.clone(), lease.token.clone())])
        .await
        .unwrap();
    assert!(matches!(batch[0], Err(LockError::NotHeld { .. })));

    let seen = hooks.seen.lock().unwrap().clone();
    let expected = [
        "admit acquire",
        "granted 1",
        "finished acquire ok",
        "admit renew",
        "renewed /h",
        "finished renew ok",
        "admit downgrade",
        "downgraded /h",
        "finished downgrade ok",
        "finished acquire unavailable",
        "admit release",
        "released /h",
        "finished release ok",
        "admit release",
        "refused /h true not_held",
        "finished release not_held",
        "admit release",
        "entry release not_held",
        "refused /h true not_held",
        "finished release ok",
    ];
    assert_eq!(seen, expected);
    assert_eq!(
        server.backend.inspect(&ObjectId::new("/w").unwrap()).await,
        Ok(None)
    );
}

/// Events are UNIMPLEMENTED without an event source; with one, they stream until the server
/// shuts down, which then completes.
#[tokio::test]
async fn events_stream_from_the_hooks_until_shutdown() {
    let bare = support::start().await;
    let status = raw(&bare)
        .await
        .events(pb::EventsRequest::default())
        .await
        .expect_err("no event log");
    assert_eq!(status.code(), Code::Unimplemented);

    let (tx, rx) = mpsc::channel(8);
    let hooks = Arc::new(Recorder {
        events: Mutex::new(Some(rx)),
        ..Recorder::default()
    });
    let server = support::start_with(
        support::memory(),
        GrpcOptions::default().with_hooks(hooks.clone()),
    )
    .await;
    let stream = server.client(None).events(Some(7)).await.unwrap();
    let mut stream = std::pin::pin!(stream);
    for seq in [8, 9] {
        tx.send(pb::EventsResponse {
            seq,
            kind: pb::EventKind::Grant as i32,
            object: "/e".into(),
            ..pb::EventsResponse::default()
        })
        .await
        .unwrap();
        let event = stream.next().await.unwrap().unwrap();
        assert_eq!((event.seq, event.object.as_str()), (seq, "/e"));
    }
    assert_eq!(hooks.count("events Some(7)"), 1);

    let stopped = tokio::time::timeout(Duration::from_secs(5), server.stop()).await;
    assert!(matches!(stopped, Ok(Ok(()))), "{stopped:?}");
    let end = tokio::time::timeout(Duration::from_secs(5), stream.next()).await;
    assert!(matches!(end, Ok(None) | Ok(Some(Err(_)))), "{end:?}");
}

/// After shutdown the port is closed: GrpcClient calls are `Unavailable`, never a grant.
#[tokio::test]
async fn after_shutdown_calls_are_unavailable() {
    let server = support::start().await;
    let client = server.client(None);
    let object = ObjectId::new("/s").unwrap();
    let owner = OwnerId::new("o").unwrap();
    client
        .acquire(&object, &owner, Duration::from_secs(5), Duration::ZERO)
        .await
        .unwrap();
    server.stop().await.unwrap();
    let refused = client
        .acquire(
            &ObjectId::new("/t").unwrap(),
            &owner,
            Duration::from_secs(5),
            Duration::ZERO,
        )
        .await;
    assert!(
        matches!(
            refused,
            Err(LockError::Unavailable {
                backend: "grpc",
                ..
            })
        ),
        "{refused:?}"
    );
}
