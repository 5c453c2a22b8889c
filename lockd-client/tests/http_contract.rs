//! The client against a scripted HTTP server: what it sends, how it reads lockd's answers, and
//! how it fails when lockd is slow or absent. (The real server is exercised by
//! `lockd/tests/client_*.rs`.)

#![allow(clippy::unwrap_used)] // Test helpers panic on setup failures by design.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use lockcore::{
    AcquireRequest, Conflict, Fence, ListQuery, LockError, LockMode, LockService, LockSpec,
    ObjectId, OwnerId,
};
use lockd_client::{ClientConfig, LockdClient};
use tokio::net::TcpListener;

use common::{grant_body, token, FakeLockd};

fn names() -> (ObjectId, OwnerId) {
    (
        ObjectId::new("/vol/a").unwrap(),
        OwnerId::new("node-1").unwrap(),
    )
}

/// An acquire is a JSON POST to /v1/locks/acquire carrying the API key and every field.
#[tokio::test]
async fn acquire_posts_json_with_the_api_key() {
    let lockd = FakeLockd::start(|_| {
        (
            200,
            grant_body("/vol/a", "node-1", 77, 30_000),
            Duration::ZERO,
        )
    })
    .await;
    let config = ClientConfig::from_url(&lockd.url).with_api_key("key-1");
    let client = LockdClient::new(config).unwrap();
    let (object, owner) = names();

    let lease = client
        .acquire(
            &object,
            &owner,
            Duration::from_secs(30),
            Duration::from_millis(250),
        )
        .await
        .unwrap();

    assert_eq!(lease.object, object);
    assert_eq!(lease.owner, owner);
    assert_eq!(lease.fence, Fence(77));
    assert_eq!(lease.ttl, Duration::from_secs(30));
    let seen = lockd.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].target, "/v1/locks/acquire");
    assert_eq!(seen[0].headers["authorization"], "Bearer key-1");
    assert_eq!(seen[0].headers["content-type"], "application/json");
    let mut body = seen[0].body.clone();
    let request_id = body
        .as_object_mut()
        .and_then(|fields| fields.remove("request_id"))
        .expect("every acquire carries a request id");
    assert!(lockcore::RequestId::new(request_id.as_str().expect("a string")).is_ok());
    assert_eq!(
        body,
        serde_json::json!({"object": "/vol/a", "owner": "node-1", "ttl_ms": 30000, "wait_ms": 250})
    );
}

/// Release, renew and validate send the token and read the fence and lease back.
#[tokio::test]
async fn release_renew_and_validate_send_the_token() {
    let lockd = FakeLockd::start(|seen| {
        let body = match seen.target.as_str() {
            "/v1/locks/release" => r#"{"object":"/vol/a","fence":9}"#.to_owned(),
            "/v1/locks/renew" => grant_body("/vol/a", "node-1", 9, 5_000),
            _ => r#"{"object":"/vol/a","owner":"node-1","fence":9,"ttl_ms":4200}"#.to_owned(),
        };
        (200, body, Duration::ZERO)
    })
    .await;
    let client = lockd.client();
    let (object, _) = names();
    let token = token("/vol/a", 9);

    let renewed = client
        .renew(&object, &token, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        (renewed.fence, renewed.ttl),
        (Fence(9), Duration::from_secs(5))
    );
    let valid = client.validate(&object, &token).await.unwrap();
    assert_eq!(valid.token, token, "validate keeps the caller's token");
    assert_eq!(valid.ttl, Duration::from_millis(4200));
    assert_eq!(client.release(&object, &token).await.unwrap(), Fence(9));

    let seen = lockd.seen();
    let targets: Vec<_> = seen.iter().map(|s| s.target.as_str()).collect();
    assert_eq!(
        targets,
        ["/v1/locks/renew", "/v1/locks/validate", "/v1/locks/release"]
    );
    for request in &seen {
        assert_eq!(request.body["token"], token.expose());
        assert_eq!(request.body["object"], "/vol/a");
    }
    assert_eq!(seen[0].body["ttl_ms"], 5000);
}

/// A refusal in lockd's envelope comes back as the same LockError an embedded backend returns.
#[tokio::test]
async fn refusals_come_back_as_lock_errors() {
    let lockd = FakeLockd::start(|_| {
        (
            409,
            r#"{"error":{"code":"locked","message":"locked","holder":"node-2","retry_after_ms":1234}}"#.to_owned(),
            Duration::ZERO,
        )
    })
    .await;
    let (object, owner) = names();
    let err = lockd
        .client()
        .acquire(&object, &owner, Duration::from_secs(1), Duration::ZERO)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        LockError::locked(vec![Conflict {
            object,
            holder: OwnerId::new("node-2").unwrap(),
            retry_after: Duration::from_millis(1234),
            cause: lockcore::ConflictCause::Held,
        }])
    );
}

/// A shared acquire of one object sends `"mode": "shared"` next to `object` and reads the
/// lease's mode back.
#[tokio::test]
async fn a_shared_acquire_sends_its_mode() {
    let lockd = FakeLockd::start(|_| {
        let mut body: serde_json::Value =
            serde_json::from_str(&grant_body("/vol/a", "node-1", 4, 1_000)).unwrap();
        body["mode"] = "shared".into();
        (200, body.to_string(), Duration::ZERO)
    })
    .await;
    let (object, owner) = names();
    let lease = lockd
        .client()
        .acquire_in(
            &object,
            LockMode::Shared,
            &owner,
            Duration::from_secs(1),
            Duration::ZERO,
        )
        .await
        .unwrap();
    assert_eq!(lease.mode, LockMode::Shared);
    let body = &lockd.seen()[0].body;
    assert_eq!(body["object"], "/vol/a");
    assert_eq!(body["mode"], "shared");
    assert!(body.get("objects").is_none(), "{body}");
}

/// A request for several objects is sent as `objects`, each with its mode, and its grant is
/// read back in request order.
#[tokio::test]
async fn a_multi_object_acquire_sends_objects_and_reads_the_grant_in_order() {
    let lockd = FakeLockd::start(|seen| {
        let locks: Vec<serde_json::Value> = seen.body["objects"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                let object = spec["object"].as_str().unwrap();
                serde_json::json!({"object": object, "mode": spec["mode"],
                    "token": token(object, 10 + i as u64).expose(), "fence": 10 + i as u64})
            })
            .collect();
        let body = serde_json::json!({"owner": "node-1", "ttl_ms": 2000, "locks": locks});
        (200, body.to_string(), Duration::ZERO)
    })
    .await;
    let (_, owner) = names();
    let request = AcquireRequest::many(
        vec![
            LockSpec::exclusive(ObjectId::new("/vol/b").unwrap()),
            LockSpec::shared(ObjectId::new("/vol/a").unwrap()),
        ],
        owner.clone(),
        Duration::from_secs(2),
    );
    let grant = lockd.client().acquire_with(&request).await.unwrap();
    assert_eq!(grant.owner, owner);
    assert_eq!(grant.ttl, Duration::from_secs(2));
    let got: Vec<(&str, LockMode, Fence)> = grant
        .leases
        .iter()
        .map(|l| (l.object.as_str(), l.mode, l.fence))
        .collect();
    assert_eq!(
        got,
        [
            ("/vol/b", LockMode::Exclusive, Fence(10)),
            ("/vol/a", LockMode::Shared, Fence(11))
        ]
    );
    let body = &lockd.seen()[0].body;
    assert!(body.get("object").is_none(), "{body}");
    assert_eq!(
        body["objects"],
        serde_json::json!([{"object": "/vol/b", "mode": "exclusive"},
                           {"object": "/vol/a", "mode": "shared"}])
    );
}

/// A refused multi-object acquire lists every conflict, the first on top.
#[tokio::test]
async fn a_refused_multi_object_acquire_lists_its_conflicts() {
    let lockd = FakeLockd::start(|_| {
        (
            409,
            r#"{"error":{"code":"locked","message":"locked","holder":"n2","retry_after_ms":50,
               "conflicts":[{"object":"/vol/b","holder":"n2","retry_after_ms":50},
                            {"object":"/vol/c","holder":"n3","retry_after_ms":70}]}}"#
                .to_owned(),
            Duration::ZERO,
        )
    })
    .await;
    let (_, owner) = names();
    let request = AcquireRequest::many(
        ["/vol/a", "/vol/b", "/vol/c"]
            .into_iter()
            .map(|name| LockSpec::exclusive(ObjectId::new(name).unwrap()))
            .collect(),
        owner,
        Duration::from_secs(2),
    );
    let err = lockd.client().acquire_with(&request).await.unwrap_err();
    let LockError::Locked {
        object, conflicts, ..
    } = err
    else {
        panic!("{err:?}");
    };
    assert_eq!(object.as_str(), "/vol/b");
    let objects: Vec<&str> = conflicts.iter().map(|c| c.object.as_str()).collect();
    assert_eq!(objects, ["/vol/b", "/vol/c"]);
}

/// Subtree scopes and a lock-delay are sent next to each object and on the request; the
/// answer's scopes are accepted (lockcore's lease has none to keep).
#[tokio::test]
async fn subtree_scopes_and_lock_delays_are_sent() {
    let lockd = FakeLockd::start(|seen| {
        let locks: Vec<serde_json::Value> = seen.body["objects"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                let object = spec["object"].as_str().unwrap();
                serde_json::json!({"object": object, "mode": "exclusive",
                    "scope": spec.get("scope").cloned().unwrap_or("object".into()),
                    "token": token(object, 20 + i as u64).expose(), "fence": 20 + i as u64})
            })
            .collect();
        let body = serde_json::json!({"owner": "node-1", "ttl_ms": 2000, "locks": locks});
        (200, body.to_string(), Duration::ZERO)
    })
    .await;
    let (_, owner) = names();
    let rename = AcquireRequest::many(
        vec![
            LockSpec::subtree(ObjectId::new("/vol/a").unwrap(), LockMode::Exclusive),
            LockSpec::exclusive(ObjectId::new("/vol/b/new").unwrap()),
        ],
        owner,
        Duration::from_secs(2),
    )
    .with_lock_delay(Duration::from_micros(2_500_100));
    let grant = lockd.client().acquire_with(&rename).await.unwrap();
    assert_eq!(grant.leases.len(), 2);
    let body = &lockd.seen()[0].body;
    assert_eq!(
        body["objects"],
        serde_json::json!([{"object": "/vol/a", "mode": "exclusive", "scope": "subtree"},
                           {"object": "/vol/b/new", "mode": "exclusive"}])
    );
    // Rounded up: the caller gets at least the delay it asked for.
    assert_eq!(body["lock_delay_ms"], 2501);
}

/// A refusal caused by a lock-delay comes back with that cause.
#[tokio::test]
async fn a_lock_delay_refusal_keeps_its_cause() {
    let lockd = FakeLockd::start(|_| {
        (
            409,
            r#"{"error":{"code":"locked","message":"object /vol/a is in its lock-delay","holder":"gone","retry_after_ms":900,
               "conflicts":[{"object":"/vol/a","holder":"gone","retry_after_ms":900,"cause":"lock_delay"}]}}"#
                .to_owned(),
            Duration::ZERO,
        )
    })
    .await;
    let (object, owner) = names();
    let err = lockd
        .client()
        .acquire(&object, &owner, Duration::from_secs(1), Duration::ZERO)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        LockError::locked(vec![Conflict {
            object,
            holder: OwnerId::new("gone").unwrap(),
            retry_after: Duration::from_millis(900),
            cause: lockcore::ConflictCause::LockDelay,
        }])
    );
}

/// An object with only a lock-delay in force is described with that delay, its waiters and
/// no holder.
#[tokio::test]
async fn inspect_reads_waiters_and_a_lock_delay() {
    let lockd = FakeLockd::start(|_| {
        (
            200,
            r#"{"object":"/vol/a","owner":"gone","mode":"exclusive","fence":12,"ttl_ms":0,
                "acquired_at":"2026-01-01T00:00:00.000Z","expires_at":"2026-01-01T00:00:00.000Z",
                "waiters":2,
                "delay":{"owner":"gone","fence":12,"mode":"exclusive","scope":"subtree",
                         "until":"2026-01-01T00:00:05.000Z","remaining_ms":3000}}"#
                .to_owned(),
            Duration::ZERO,
        )
    })
    .await;
    let (object, _) = names();
    let info = lockd.client().inspect(&object).await.unwrap().unwrap();
    assert!(info.holders.is_empty(), "{info:?}");
    assert_eq!(info.waiters, 2);
    let delay = info.delay.expect("a delay");
    assert_eq!(delay.owner.as_str(), "gone");
    assert_eq!(delay.scope, lockcore::LockScope::Subtree);
    assert_eq!(delay.remaining, Duration::from_secs(3));
}

/// Batched release and renew send `locks` in one request and read one outcome per lock, in
/// order, refusals included.
#[tokio::test]
async fn batched_release_and_renew_report_each_lock() {
    let lockd = FakeLockd::start(|seen| {
        let renew = seen.target == "/v1/locks/renew";
        let results: Vec<serde_json::Value> = seen.body["locks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|lock| {
                let object = lock["object"].as_str().unwrap();
                if object == "/vol/gone" {
                    serde_json::json!({"object": object,
                        "error": {"code": "not_held", "message": "object /vol/gone is not locked"}})
                } else if renew {
                    serde_json::json!({"object": object, "owner": "node-1", "mode": "shared",
                        "token": lock["token"], "fence": 3, "ttl_ms": 900})
                } else {
                    serde_json::json!({"object": object, "fence": 3})
                }
            })
            .collect();
        let body = serde_json::json!({ "results": results });
        (200, body.to_string(), Duration::ZERO)
    })
    .await;
    let client = lockd.client();
    let locks = vec![
        (ObjectId::new("/vol/a").unwrap(), token("/vol/a", 3)),
        (ObjectId::new("/vol/gone").unwrap(), token("/vol/gone", 3)),
    ];
    let renewed = client
        .renew_many(&locks, Duration::from_millis(900))
        .await
        .unwrap();
    assert_eq!(renewed.len(), 2);
    let lease = renewed[0].as_ref().unwrap();
    assert_eq!(
        (lease.mode, lease.ttl),
        (LockMode::Shared, Duration::from_millis(900))
    );
    assert_eq!(
        renewed[1],
        Err(LockError::NotHeld {
            object: locks[1].0.clone()
        })
    );
    let released = client.release_many(&locks).await.unwrap();
    assert_eq!(released[0], Ok(Fence(3)));
    assert!(matches!(released[1], Err(LockError::NotHeld { .. })));

    let seen = lockd.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].target, "/v1/locks/renew");
    assert_eq!(seen[0].body["ttl_ms"], 900);
    assert_eq!(seen[1].target, "/v1/locks/release");
    for request in &seen {
        assert_eq!(request.body["locks"][1]["object"], "/vol/gone");
        assert_eq!(request.body["locks"][0]["token"], locks[0].1.expose());
        assert!(request.body.get("object").is_none());
    }
    // Duplicates are refused before anything is sent.
    let twice = vec![locks[0].clone(), locks[0].clone()];
    assert!(matches!(
        client.release_many(&twice).await,
        Err(LockError::InvalidArgument {
            field: "objects",
            ..
        })
    ));
    assert_eq!(lockd.seen().len(), 2);
}

/// A downgrade posts the object and token to /v1/locks/downgrade and reads the shared lease.
#[tokio::test]
async fn downgrade_posts_the_token_and_reads_a_shared_lease() {
    let lockd = FakeLockd::start(|_| {
        let mut body: serde_json::Value =
            serde_json::from_str(&grant_body("/vol/a", "node-1", 8, 700)).unwrap();
        body["mode"] = "shared".into();
        (200, body.to_string(), Duration::ZERO)
    })
    .await;
    let (object, _) = names();
    let token = token("/vol/a", 8);
    let lease = lockd.client().downgrade(&object, &token).await.unwrap();
    assert_eq!((lease.mode, lease.fence), (LockMode::Shared, Fence(8)));
    let seen = lockd.seen();
    assert_eq!(seen[0].target, "/v1/locks/downgrade");
    assert_eq!(
        seen[0].body,
        serde_json::json!({"object": "/vol/a", "token": token.expose()})
    );
}

/// An `invalid_argument` answer names its argument in the envelope's `field`, and the client
/// takes the field from there, never from the message text.
#[tokio::test]
async fn invalid_arguments_name_the_envelopes_field() {
    let lockd = FakeLockd::start(|_| {
        (
            400,
            r#"{"error":{"code":"invalid_argument","message":"invalid argument `owner`: says the text","field":"wait"}}"#.to_owned(),
            Duration::ZERO,
        )
    })
    .await;
    let (object, owner) = names();
    let err = lockd
        .client()
        .acquire(&object, &owner, Duration::from_secs(1), Duration::ZERO)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, LockError::InvalidArgument { field: "wait", reason } if reason.contains("says the text")),
        "{err:?}"
    );
}

/// Inspecting an unlocked object is `None` (lockd answers 404 not_found).
#[tokio::test]
async fn inspect_of_an_unlocked_object_is_none() {
    let lockd = FakeLockd::start(|_| {
        (
            404,
            r#"{"error":{"code":"not_found","message":"not locked"}}"#.to_owned(),
            Duration::ZERO,
        )
    })
    .await;
    let (object, _) = names();
    assert_eq!(lockd.client().inspect(&object).await.unwrap(), None);
}

/// A listing sends prefix, limit and cursor as query parameters and reads the page back.
#[tokio::test]
async fn list_sends_its_query_and_reads_the_page() {
    let lockd = FakeLockd::start(|_| {
        (
            200,
            r#"{"locks":[{"object":"/vol/a b","owner":"o","fence":3,"ttl_ms":900,"acquired_at":"2026-01-01T00:00:00.000Z","expires_at":"2026-01-01T00:00:01.000Z"}],"next":"/vol/a b"}"#.to_owned(),
            Duration::ZERO,
        )
    })
    .await;
    let mut query = ListQuery::new("/vol/a b&c", 1);
    query.after = Some("/vol/0".into());
    let page = lockd.client().list(&query).await.unwrap();
    assert_eq!(page.locks.len(), 1);
    assert_eq!(page.locks[0].object.as_str(), "/vol/a b");
    assert_eq!(page.locks[0].fence, Fence(3));
    assert_eq!(page.next.as_deref(), Some("/vol/a b"));
    let seen = lockd.seen();
    assert_eq!(seen[0].method, "GET");
    assert_eq!(
        seen[0].target,
        "/v1/locks?prefix=%2Fvol%2Fa+b%26c&limit=1&after=%2Fvol%2F0"
    );
}

/// A listing lockd would refuse is refused locally with the same error.
#[tokio::test]
async fn list_checks_its_query_before_sending() {
    let lockd = FakeLockd::start(|_| (500, String::new(), Duration::ZERO)).await;
    let err = lockd
        .client()
        .list(&ListQuery::new("", 0))
        .await
        .unwrap_err();
    assert!(
        matches!(err, LockError::InvalidArgument { field: "limit", .. }),
        "{err:?}"
    );
    assert!(lockd.seen().is_empty());
}

/// A blocking acquire's deadline is its wait plus the request timeout; anything else that takes
/// longer than the request timeout is `Unavailable`.
#[tokio::test]
async fn a_blocking_acquire_gets_its_wait_on_top_of_the_request_timeout() {
    let lockd = FakeLockd::start(|_| {
        (
            200,
            grant_body("/vol/a", "node-1", 5, 1_000),
            Duration::from_millis(700),
        )
    })
    .await;
    let config =
        ClientConfig::from_url(&lockd.url).with_request_timeout(Duration::from_millis(300));
    let client = LockdClient::new(config).unwrap();
    let (object, owner) = names();

    let lease = client
        .acquire(
            &object,
            &owner,
            Duration::from_secs(1),
            Duration::from_secs(1),
        )
        .await
        .unwrap();
    assert_eq!(lease.fence, Fence(5));

    let err = client
        .acquire(&object, &owner, Duration::from_secs(1), Duration::ZERO)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, LockError::Unavailable { backend: "http", cause } if cause.contains("in time")),
        "{err:?}"
    );
}

/// No server listening is `Unavailable`, never a grant.
#[tokio::test]
async fn an_absent_server_is_unavailable() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let client = LockdClient::new(ClientConfig::from_url(url)).unwrap();
    let (object, owner) = names();
    let err = client
        .acquire(&object, &owner, Duration::from_secs(1), Duration::ZERO)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            LockError::Unavailable {
                backend: "http",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_retryable());
    assert!(matches!(
        client.health().await,
        Err(LockError::Unavailable { .. })
    ));
}

/// A proxy's error page instead of lockd's envelope is still a typed error.
#[tokio::test]
async fn a_proxy_error_page_is_unavailable() {
    let lockd =
        FakeLockd::start(|_| (502, "<html>bad gateway</html>".to_owned(), Duration::ZERO)).await;
    let (object, token) = (names().0, token("/vol/a", 1));
    let err = lockd.client().release(&object, &token).await.unwrap_err();
    assert!(
        matches!(
            err,
            LockError::Unavailable {
                backend: "http",
                ..
            }
        ),
        "{err:?}"
    );
}

/// A success body the client cannot read is `Internal`, not a made-up lease.
#[tokio::test]
async fn an_unreadable_success_is_internal() {
    let lockd =
        FakeLockd::start(|_| (200, r#"{"object":"/vol/a"}"#.to_owned(), Duration::ZERO)).await;
    let (object, owner) = names();
    let err = lockd
        .client()
        .acquire(&object, &owner, Duration::from_secs(1), Duration::ZERO)
        .await
        .unwrap_err();
    assert!(matches!(err, LockError::Internal(_)), "{err:?}");
}

/// Sequential requests reuse one kept-alive connection.
#[tokio::test]
async fn requests_reuse_a_kept_alive_connection() {
    let lockd = FakeLockd::start(|_| {
        (
            200,
            r#"{"object":"/vol/a","owner":"o","fence":1,"ttl_ms":10}"#.to_owned(),
            Duration::ZERO,
        )
    })
    .await;
    let client = lockd.client();
    let (object, _) = names();
    for _ in 0..10 {
        assert!(client.inspect(&object).await.unwrap().is_some());
    }
    assert_eq!(lockd.seen().len(), 10);
    assert_eq!(lockd.connections.load(Ordering::SeqCst), 1);
}

/// The event log is read with `after` and `limit` and keeps every field lockd sends.
#[tokio::test]
async fn events_are_read_after_a_sequence_number() {
    let lockd = FakeLockd::start(|_| {
        (
            200,
            r#"{"events":[{"seq":8,"time":"2026-01-01T00:00:00.000Z","kind":"release_refused","object":"/vol/a","owner":null,"fence":4,"reason":"token_mismatch"}]}"#.to_owned(),
            Duration::ZERO,
        )
    })
    .await;
    let events = lockd.client().events(Some(7), 50).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].seq, 8);
    assert_eq!(events[0].kind, "release_refused");
    assert_eq!(events[0].reason.as_deref(), Some("token_mismatch"));
    assert_eq!(events[0].owner, None);
    assert!(events[0].time.is_some());
    assert_eq!(lockd.seen()[0].target, "/v1/events?after=7&limit=50");
}
