//! The gRPC API of the real `lockd` binary (`--grpc-listen`): the whole conformance suite
//! through `lockd-client`'s `grpc://` transport on memory, Redis (`LOCKD_TEST_REDIS_URL`) and
//! Postgres (`LOCKD_TEST_POSTGRES_URL`), then what the gRPC listener shares with HTTP in one
//! process: API keys and the loopback rule, the event log, metrics, caps and shutdown.
//!
//! One server per backend is shared by every conformance test (each check uses its own object
//! prefix); see [`SharedServer`]. The memory server requires an API key, so every call is
//! also exercised authenticated.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Setup failures should fail the test loudly.

mod support;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use lockcore::{AcquireRequest, LockError, LockService, ObjectId, OwnerId};
use lockd_client::{ClientConfig, Transport};
use lockd_grpc::pb;
use reqwest::StatusCode;
use serde_json::json;
use support::shared::{backend_from_env, SharedServer};
use support::{unique, Lockd};
use tokio_stream::StreamExt as _;

/// The API key the shared memory server requires.
const API_KEY: &str = "grpc-conformance-key";

/// A gRPC client of the shared server for `backend`, started on first use.
fn client_of(
    cell: &'static OnceLock<Result<SharedServer, String>>,
    backend: &str,
    api_key: Option<&str>,
) -> Arc<dyn LockService> {
    let server = cell.get_or_init(|| SharedServer::start(backend, api_key, &[]));
    let server = match server {
        Ok(server) => server,
        Err(e) => panic!("shared lockd for {backend} did not start: {e}"),
    };
    let mut config = ClientConfig::from_url(&server.grpc_url);
    config.api_key = api_key.map(str::to_owned);
    assert_eq!(Transport::of_url(&config.url), Ok(Transport::Grpc));
    lockd_client::connect(config).expect("gRPC client for the shared server")
}

mod through_grpc_on_memory {
    use super::*;

    static SERVER: OnceLock<Result<SharedServer, String>> = OnceLock::new();

    async fn factory() -> Option<Arc<dyn LockService>> {
        Some(client_of(&SERVER, "memory://", Some(API_KEY)))
    }

    conformance_tests::conformance_suite!(factory, conformance_tests::Capabilities::default());
}

mod through_grpc_on_redis {
    use super::*;

    static SERVER: OnceLock<Result<SharedServer, String>> = OnceLock::new();

    async fn factory() -> Option<Arc<dyn LockService>> {
        let backend = backend_from_env("LOCKD_TEST_REDIS_URL", "grpc -> lockd -> redis")?;
        Some(client_of(&SERVER, &backend, None))
    }

    conformance_tests::conformance_suite!(factory, conformance_tests::Capabilities::default());
}

mod through_grpc_on_postgres {
    use super::*;

    static SERVER: OnceLock<Result<SharedServer, String>> = OnceLock::new();

    async fn factory() -> Option<Arc<dyn LockService>> {
        let backend = backend_from_env("LOCKD_TEST_POSTGRES_URL", "grpc -> lockd -> postgres")?;
        Some(client_of(&SERVER, &backend, None))
    }

    conformance_tests::conformance_suite!(factory, conformance_tests::Capabilities::default());
}

// ---------------------------------------------------------------------------------------------
// One process, two listeners.

/// A gRPC client of `lockd`, with `key` if given.
fn grpc(lockd: &Lockd, key: Option<&str>) -> Arc<dyn LockService> {
    let url = lockd.grpc_url.as_deref().expect("lockd serves gRPC");
    let mut config = ClientConfig::from_url(url);
    config.api_key = key.map(str::to_owned);
    lockd_client::connect(config).expect("gRPC client")
}

fn request(object: &str, owner: &str, ttl: Duration) -> AcquireRequest {
    AcquireRequest::new(
        ObjectId::new(object).unwrap(),
        OwnerId::new(owner).unwrap(),
        ttl,
    )
}

#[tokio::test]
async fn grpc_calls_need_one_of_the_http_api_keys_and_refusals_are_counted() {
    let key = "grpc-key-0123456789abcdef";
    let lockd = Lockd::start(&["--api-key", key]).await;
    let object = unique("auth");

    for wrong in [None, Some("not-the-key-0123456789")] {
        let refused = grpc(&lockd, wrong)
            .acquire_with(&request(&object, "o", Duration::from_secs(30)))
            .await
            .expect_err("no key, no lock");
        assert!(
            matches!(
                &refused,
                LockError::InvalidArgument {
                    field: "api_key",
                    ..
                }
            ),
            "{refused:?}"
        );
    }
    lockd
        .wait_for_metric("lockd_unauthenticated_requests_total 2")
        .await;

    // The key HTTP accepts is the key gRPC accepts; the lock is the same lock.
    let lease = grpc(&lockd, Some(key))
        .acquire(
            &ObjectId::new(&object).unwrap(),
            &OwnerId::new("o").unwrap(),
            Duration::from_secs(30),
            Duration::ZERO,
        )
        .await
        .expect("granted with the key");
    let lockd = lockd.with_api_key(key);
    let (status, body) = lockd
        .post("/v1/locks/inspect", json!({"object": object}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["fence"], lease.fence.get(), "{body}");
    lockd.kill().await;
}

#[tokio::test]
async fn a_non_loopback_grpc_address_without_api_keys_is_refused_unless_insecure() {
    let failed = match Lockd::try_start(&["--grpc-listen", "0.0.0.0:0"], &[]).await {
        Ok(_) => panic!("lockd served gRPC on 0.0.0.0 without API keys"),
        Err(failed) => failed,
    };
    assert_eq!(failed.code, Some(1), "{failed:?}");
    assert!(failed.stderr.contains("--grpc-listen"), "{failed:?}");
    assert!(failed.stderr.contains("--insecure-no-auth"), "{failed:?}");

    let lockd = Lockd::start(&["--grpc-listen", "0.0.0.0:0", "--insecure-no-auth"]).await;
    lockd.kill().await;
    let lockd = Lockd::start(&[
        "--grpc-listen",
        "0.0.0.0:0",
        "--api-key",
        "grpc-key-0123456789abcdef",
    ])
    .await;
    lockd.kill().await;

    // Off: no second line, no gRPC listener.
    let lockd = Lockd::start(&["--grpc-listen", "off"]).await;
    assert_eq!(lockd.grpc_url, None);
    lockd.kill().await;
}

#[tokio::test]
async fn grants_over_grpc_move_the_metrics_and_reach_the_event_log_of_both_apis() {
    let lockd = Lockd::start(&[]).await;
    let client = grpc(&lockd, None);
    let raw = lockd_grpc::GrpcClient::new(lockd_grpc::GrpcConfig::from_url(
        lockd.grpc_url.clone().expect("gRPC on"),
    ))
    .expect("client");
    let mut live = raw.events(None).await.expect("Events opens");
    let object = unique("events");

    let grant = client
        .acquire_with(&request(&object, "node-1", Duration::from_secs(30)))
        .await
        .expect("granted");
    let lease = &grant.leases[0];
    lockd
        .wait_for_metric(r#"lockd_grants_total{mode="exclusive"} 1"#)
        .await;
    lockd
        .wait_for_metric(r#"lockd_requests_total{operation="acquire",outcome="ok"} 1"#)
        .await;

    // A release with another lease's token: refused, counted and recorded, as over HTTP.
    let other = client
        .acquire(
            &ObjectId::new(unique("other")).unwrap(),
            &OwnerId::new("node-2").unwrap(),
            Duration::from_secs(30),
            Duration::ZERO,
        )
        .await
        .expect("granted");
    let refused = client
        .release(&lease.object, &other.token)
        .await
        .expect_err("not this lease's token");
    assert!(refused.is_refused_release_kind(), "{refused:?}");
    let fence = client
        .release(&lease.object, &lease.token)
        .await
        .expect("released");
    assert_eq!(fence, lease.fence);

    let mut seen = Vec::new();
    while seen.len() < 4 {
        let event = tokio::time::timeout(Duration::from_secs(10), live.next())
            .await
            .expect("an event within 10 s")
            .expect("the stream goes on")
            .expect("an event");
        seen.push(event);
    }
    let kinds: Vec<_> = seen.iter().map(|e| (e.kind, e.object.as_str())).collect();
    assert_eq!(
        kinds,
        vec![
            (pb::EventKind::Grant as i32, object.as_str()),
            (pb::EventKind::Grant as i32, other.object.as_str()),
            (pb::EventKind::ReleaseRefused as i32, object.as_str()),
            (pb::EventKind::Release as i32, object.as_str()),
        ]
    );
    assert_eq!(seen[0].owner, "node-1");
    assert_eq!(seen[0].fence, lease.fence.get());
    assert!(!seen[2].reason.is_empty());
    assert!(seen.windows(2).all(|w| w[0].seq < w[1].seq));

    // The HTTP event log has the same events, with the same numbers.
    let (status, body) = lockd
        .get(&format!("/v1/events?after={}", seen[0].seq - 1))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let http_seqs: Vec<u64> = body["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["seq"].as_u64().expect("seq"))
        .collect();
    let grpc_seqs: Vec<u64> = seen.iter().map(|e| e.seq).collect();
    assert_eq!(http_seqs, grpc_seqs);

    // Resuming after a sequence number replays what followed it.
    let mut resumed = raw.events(Some(seen[1].seq)).await.expect("Events opens");
    let next = tokio::time::timeout(Duration::from_secs(10), resumed.next())
        .await
        .expect("an event")
        .expect("the stream goes on")
        .expect("an event");
    assert_eq!(next.seq, seen[2].seq);
    lockd.kill().await;
}

#[tokio::test]
async fn the_waiter_cap_applies_to_grpc_acquires_as_to_http_ones() {
    let lockd = Lockd::start(&["--max-waiters", "1"]).await;
    let client = grpc(&lockd, None);
    let object = unique("capped");
    client
        .acquire_with(&request(&object, "holder", Duration::from_secs(30)))
        .await
        .expect("granted");
    let waiter = {
        let client = client.clone();
        let object = object.clone();
        tokio::spawn(async move {
            client
                .acquire_with(
                    &request(&object, "waiter", Duration::from_secs(30))
                        .with_wait(Duration::from_secs(3)),
                )
                .await
        })
    };
    lockd.wait_for_metric("lockd_waiters 1").await;
    let refused = client
        .acquire_with(
            &request(&object, "third", Duration::from_secs(30)).with_wait(Duration::from_secs(3)),
        )
        .await
        .expect_err("over --max-waiters");
    assert!(
        matches!(&refused, LockError::Unavailable { cause, .. } if cause.contains("--max-waiters")),
        "{refused:?}"
    );
    lockd
        .wait_for_metric(r#"lockd_limit_refusals_total{limit="waiters"} 1"#)
        .await;
    assert!(matches!(
        waiter.await.expect("task"),
        Err(LockError::Locked { .. })
    ));
    lockd.kill().await;
}

#[tokio::test]
async fn shutdown_finishes_a_grpc_call_in_flight_then_exits_cleanly() {
    let lockd = Lockd::start(&["--shutdown-timeout", "10s"]).await;
    let client = grpc(&lockd, None);
    let object = unique("shutdown");
    client
        .acquire_with(&request(&object, "holder", Duration::from_millis(1500)))
        .await
        .expect("granted");
    // A blocking acquire, in flight when SIGTERM arrives, granted when the lease expires.
    let waiter = {
        let client = client.clone();
        let object = object.clone();
        tokio::spawn(async move {
            client
                .acquire_with(
                    &request(&object, "waiter", Duration::from_secs(30))
                        .with_wait(Duration::from_secs(8)),
                )
                .await
        })
    };
    lockd.wait_for_metric("lockd_waiters 1").await;
    lockd.terminate();
    let grant = waiter
        .await
        .expect("task")
        .expect("the call in flight was answered: granted after the expiry");
    assert_eq!(grant.leases[0].owner.as_str(), "waiter");
    assert_eq!(lockd.wait().await, Some(0));
}

/// `Transport::is_refused_release_kind` stand-in: the refusals a release with another lease's
/// token may get, depending on the backend's check order.
trait RefusedRelease {
    fn is_refused_release_kind(&self) -> bool;
}

impl RefusedRelease for LockError {
    fn is_refused_release_kind(&self) -> bool {
        matches!(
            self,
            LockError::NotHeld { .. }
                | LockError::TokenMismatch { .. }
                | LockError::InvalidToken { .. }
        )
    }
}

#[tokio::test]
async fn grpc_connections_count_in_max_connections() {
    let lockd = Lockd::start(&["--max-connections", "1"]).await;
    let object = unique("connections");
    let first = grpc(&lockd, None);
    first
        .acquire_with(&request(&object, "first", Duration::from_secs(30)))
        .await
        .expect("the one connection allowed");
    // A second client opens a second connection: closed at once, the call unavailable.
    let refused = grpc(&lockd, None)
        .inspect(&ObjectId::new(&object).unwrap())
        .await
        .expect_err("over --max-connections");
    assert!(
        matches!(refused, LockError::Unavailable { .. }),
        "{refused:?}"
    );
    // Closing the first connection gives its unit back.
    drop(first);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match grpc(&lockd, None)
            .inspect(&ObjectId::new(&object).unwrap())
            .await
        {
            Ok(info) => {
                assert!(info.is_some());
                break;
            }
            Err(e) => assert!(
                tokio::time::Instant::now() < deadline,
                "the unit never came back: {e:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    lockd.kill().await;
}
