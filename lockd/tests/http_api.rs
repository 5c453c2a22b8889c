//! The HTTP API contract, driven against the real `lockd` binary: every endpoint and every
//! error code, authentication, malformed and oversized requests, metrics and health.

mod support;

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;
use support::{assert_error, status_and_json, unique, Lockd};

#[tokio::test]
async fn acquire_grants_a_lease_and_a_second_owner_is_locked_out_with_holder_and_retry_after() {
    let lockd = Lockd::start(&[]).await;
    let object = unique("a");
    let lease = lockd.acquire(&object, "alice", 30_000).await;
    assert_eq!(lease["object"], object.as_str());
    assert_eq!(lease["owner"], "alice");
    assert_eq!(lease["ttl_ms"], 30_000);
    assert!(lease["token"]
        .as_str()
        .is_some_and(|t| t.starts_with("lk2.")));
    assert!(lease["fence"].as_u64().is_some_and(|f| f > 0));

    let (status, body) = lockd
        .post(
            "/v1/locks/acquire",
            json!({"object": object, "owner": "bob", "ttl_ms": 1000}),
        )
        .await;
    let error = assert_error(status, &body, StatusCode::CONFLICT, "locked");
    assert_eq!(error["holder"], "alice");
    let retry = error["retry_after_ms"].as_u64().expect("retry_after_ms");
    assert!(retry > 0 && retry <= 30_000, "{retry}");
}

#[tokio::test]
async fn release_returns_the_fence_and_a_second_release_is_not_held() {
    let lockd = Lockd::start(&[]).await;
    let object = unique("r");
    let lease = lockd.acquire(&object, "alice", 30_000).await;
    let (status, body) = lockd
        .post(
            "/v1/locks/release",
            json!({"object": object, "token": lease["token"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"object": object, "fence": lease["fence"]}));

    let (status, body) = lockd
        .post(
            "/v1/locks/release",
            json!({"object": object, "token": lease["token"]}),
        )
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "not_held");
    // The object is free again.
    lockd.acquire(&object, "bob", 1000).await;
}

#[tokio::test]
async fn release_with_another_objects_token_is_invalid_token_and_the_lock_stays() {
    let lockd = Lockd::start(&[]).await;
    let (mine, theirs) = (unique("mine"), unique("theirs"));
    let my_lease = lockd.acquire(&mine, "alice", 30_000).await;
    lockd.acquire(&theirs, "bob", 30_000).await;
    let (status, body) = lockd
        .post(
            "/v1/locks/release",
            json!({"object": theirs, "token": my_lease["token"]}),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_token");
    let (status, info) = lockd
        .post("/v1/locks/inspect", json!({"object": theirs}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(info["owner"], "bob");
}

#[tokio::test]
async fn renew_extends_the_lease_and_keeps_the_fence_and_token() {
    let lockd = Lockd::start(&[]).await;
    let object = unique("renew");
    let lease = lockd.acquire(&object, "alice", 1_000).await;
    let (status, renewed) = lockd
        .post(
            "/v1/locks/renew",
            json!({"object": object, "token": lease["token"], "ttl_ms": 60_000}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{renewed}");
    assert_eq!(renewed["fence"], lease["fence"]);
    assert_eq!(renewed["token"], lease["token"]);
    assert_eq!(renewed["owner"], "alice");
    assert_eq!(renewed["ttl_ms"], 60_000);
    // Well past the original TTL the lock is still held.
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    let (_, info) = lockd
        .post("/v1/locks/inspect", json!({"object": object}))
        .await;
    assert_eq!(info["fence"], lease["fence"]);

    lockd
        .post(
            "/v1/locks/release",
            json!({"object": object, "token": lease["token"]}),
        )
        .await;
    let (status, body) = lockd
        .post(
            "/v1/locks/renew",
            json!({"object": object, "token": lease["token"], "ttl_ms": 1000}),
        )
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "not_held");
}

#[tokio::test]
async fn validate_answers_for_the_current_token_only() {
    let lockd = Lockd::start(&[]).await;
    let object = unique("v");
    let lease = lockd.acquire(&object, "alice", 30_000).await;
    let (status, body) = lockd
        .post(
            "/v1/locks/validate",
            json!({"object": object, "token": lease["token"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["object"], object.as_str());
    assert_eq!(body["owner"], "alice");
    assert_eq!(body["fence"], lease["fence"]);
    assert!(body["ttl_ms"]
        .as_u64()
        .is_some_and(|t| t > 0 && t <= 30_000));
    assert!(
        body.get("token").is_none(),
        "validate must not echo the token"
    );

    lockd
        .post(
            "/v1/locks/release",
            json!({"object": object, "token": lease["token"]}),
        )
        .await;
    let (status, body) = lockd
        .post(
            "/v1/locks/validate",
            json!({"object": object, "token": lease["token"]}),
        )
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "not_held");
}

#[tokio::test]
async fn inspect_shows_the_holder_without_the_token_or_404_when_free() {
    let lockd = Lockd::start(&[]).await;
    let object = unique("i");
    let (status, body) = lockd
        .post("/v1/locks/inspect", json!({"object": object}))
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");

    let lease = lockd.acquire(&object, "alice", 30_000).await;
    let (status, info) = lockd
        .post("/v1/locks/inspect", json!({"object": object}))
        .await;
    assert_eq!(status, StatusCode::OK, "{info}");
    assert_eq!(info["object"], object.as_str());
    assert_eq!(info["owner"], "alice");
    assert_eq!(info["fence"], lease["fence"]);
    assert!(info["ttl_ms"].as_u64().is_some_and(|t| t <= 30_000));
    assert!(info.get("token").is_none());
    assert!(!info
        .to_string()
        .contains(lease["token"].as_str().expect("token")));
}

#[tokio::test]
async fn list_pages_through_locks_under_a_prefix() {
    let lockd = Lockd::start(&[]).await;
    let prefix = unique("dir");
    for name in ["a", "b", "c"] {
        lockd
            .acquire(&format!("{prefix}/{name}"), "alice", 30_000)
            .await;
    }
    lockd.acquire(&unique("elsewhere"), "bob", 30_000).await;

    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut path = format!("/v1/locks?prefix={prefix}/&limit=2");
        if let Some(cursor) = &after {
            path.push_str(&format!("&after={cursor}"));
        }
        let (status, page) = lockd.get(&path).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let locks = page["locks"].as_array().expect("locks array");
        assert!(locks.len() <= 2);
        for lock in locks {
            assert!(lock.get("token").is_none());
            seen.push(lock["object"].as_str().expect("object").to_owned());
        }
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => {
                assert!(page["next"].is_null());
                break;
            }
        }
    }
    seen.sort();
    assert_eq!(
        seen,
        vec![
            format!("{prefix}/a"),
            format!("{prefix}/b"),
            format!("{prefix}/c")
        ]
    );

    let (status, body) = lockd.get("/v1/locks?limit=0").await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_argument");
    let (status, body) = lockd.get("/v1/locks?limit=lots").await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_argument");
}

#[tokio::test]
async fn malformed_tokens_are_invalid_token() {
    let lockd = Lockd::start(&[]).await;
    let object = unique("t");
    lockd.acquire(&object, "alice", 30_000).await;
    for path in ["/v1/locks/release", "/v1/locks/validate"] {
        let (status, body) = lockd
            .post(path, json!({"object": object, "token": "not-a-token"}))
            .await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_token");
    }
    let (status, body) = lockd
        .post(
            "/v1/locks/renew",
            json!({"object": object, "token": "lk1.short", "ttl_ms": 1000}),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_token");
}

#[tokio::test]
async fn bad_ids_and_out_of_range_ttls_and_waits_are_invalid_argument() {
    let lockd = Lockd::start(&["--max-ttl", "10s", "--max-wait", "1s"]).await;
    let object = unique("x");
    for body in [
        json!({"object": "", "owner": "alice", "ttl_ms": 1000}),
        json!({"object": "bad\u{0}name", "owner": "alice", "ttl_ms": 1000}),
        json!({"object": "x".repeat(1025), "owner": "alice", "ttl_ms": 1000}),
        json!({"object": object, "owner": "", "ttl_ms": 1000}),
        json!({"object": object, "owner": "alice", "ttl_ms": 0}),
        json!({"object": object, "owner": "alice", "ttl_ms": 10_001}),
        json!({"object": object, "owner": "alice", "ttl_ms": 1000, "wait_ms": 1001}),
    ] {
        let (status, reply) = lockd.post("/v1/locks/acquire", body.clone()).await;
        assert_error(status, &reply, StatusCode::BAD_REQUEST, "invalid_argument");
    }
    // The limits are inclusive.
    let lease = lockd.acquire(&object, "alice", 10_000).await;
    let (status, body) = lockd
        .post(
            "/v1/locks/renew",
            json!({"object": object, "token": lease["token"], "ttl_ms": 10_001}),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_argument");
}

/// Every `invalid_argument` that one argument caused names it in the envelope's `field`: bad
/// values, mistyped and missing JSON fields, and bad query parameters alike.
#[tokio::test]
async fn invalid_arguments_name_their_field_in_the_envelope() {
    let lockd = Lockd::start(&["--max-ttl", "10s", "--max-wait", "1s"]).await;
    let object = unique("field");
    for (body, field) in [
        (
            json!({"object": "", "owner": "alice", "ttl_ms": 1000}),
            "object",
        ),
        (
            json!({"object": object, "owner": "", "ttl_ms": 1000}),
            "owner",
        ),
        (
            json!({"object": object, "owner": "alice", "ttl_ms": 10_001}),
            "ttl",
        ),
        (
            json!({"object": object, "owner": "alice", "ttl_ms": 1000, "wait_ms": 1001}),
            "wait",
        ),
        (
            json!({"object": object, "owner": "alice", "ttl_ms": "soon"}),
            "ttl",
        ),
        (json!({"object": object, "owner": "alice"}), "ttl"),
        (
            json!({"object": 7, "owner": "alice", "ttl_ms": 1000}),
            "object",
        ),
    ] {
        let (status, reply) = lockd.post("/v1/locks/acquire", body.clone()).await;
        let error = assert_error(status, &reply, StatusCode::BAD_REQUEST, "invalid_argument");
        assert_eq!(error["field"], field, "{body} answered {reply}");
    }
    for path in [
        "/v1/locks?limit=many",
        "/v1/locks?limit=0",
        "/v1/events?limit=0",
    ] {
        let (status, reply) = lockd.get(path).await;
        let error = assert_error(status, &reply, StatusCode::BAD_REQUEST, "invalid_argument");
        assert_eq!(error["field"], "limit", "{path} answered {reply}");
    }
    // Not about one argument: no field.
    let response = lockd
        .request(Method::POST, "/v1/locks/acquire")
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("request");
    let (status, reply) = status_and_json(response).await;
    let error = assert_error(status, &reply, StatusCode::BAD_REQUEST, "invalid_argument");
    assert!(error.get("field").is_none(), "{reply}");
}

#[tokio::test]
async fn bad_json_missing_or_mistyped_fields_and_wrong_content_types_are_invalid_argument() {
    let lockd = Lockd::start(&[]).await;
    let raw = |body: &'static str, content_type: Option<&'static str>| {
        let mut request = lockd.request(Method::POST, "/v1/locks/acquire").body(body);
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        request
    };
    let json_ct = Some("application/json");
    for (body, ct) in [
        ("{not json", json_ct),
        ("", json_ct),
        ("[]", json_ct),
        (r#"{"object": "a", "owner": "o"}"#, json_ct),
        (
            r#"{"object": "a", "owner": "o", "ttl_ms": "soon"}"#,
            json_ct,
        ),
        (r#"{"object": "a", "owner": "o", "ttl_ms": -5}"#, json_ct),
        (r#"{"object": 7, "owner": "o", "ttl_ms": 1000}"#, json_ct),
        (r#"{"object": "a", "owner": "o", "ttl_ms": 1000}"#, None),
        (
            r#"{"object": "a", "owner": "o", "ttl_ms": 1000}"#,
            Some("text/plain"),
        ),
    ] {
        let response = raw(body, ct).send().await.expect("request");
        let (status, reply) = status_and_json(response).await;
        assert_error(status, &reply, StatusCode::BAD_REQUEST, "invalid_argument");
    }
    // The server is unharmed.
    lockd.acquire(&unique("after-garbage"), "alice", 1000).await;
}

#[tokio::test]
async fn oversized_bodies_are_payload_too_large() {
    let lockd = Lockd::start(&["--max-body-bytes", "2048"]).await;
    let big = json!({"object": "x".repeat(4096), "owner": "alice", "ttl_ms": 1000});
    let (status, body) = lockd.post("/v1/locks/acquire", big).await;
    assert_error(
        status,
        &body,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    );

    // Also without a Content-Length header (a streamed, chunked body).
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..8).map(|_| Ok(vec![b' '; 1024])).collect();
    let response = lockd
        .request(Method::POST, "/v1/locks/acquire")
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(tokio_stream::iter(chunks)))
        .send()
        .await
        .expect("request");
    let (status, body) = status_and_json(response).await;
    assert_error(
        status,
        &body,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    );
    lockd.acquire(&unique("after-big"), "alice", 1000).await;
}

#[tokio::test]
async fn unknown_paths_are_not_found_and_wrong_methods_are_refused_in_the_envelope() {
    let lockd = Lockd::start(&[]).await;
    let (status, body) = lockd.get("/v1/nothing-here").await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (status, body) = lockd.get("/v1/locks/acquire").await;
    assert_error(
        status,
        &body,
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_argument",
    );
}

#[tokio::test]
async fn a_blocking_acquire_is_granted_when_the_holder_releases() {
    let lockd = Lockd::start(&[]).await;
    let object = unique("wait");
    let first = lockd.acquire(&object, "alice", 30_000).await;
    let waiter = {
        let request = lockd
            .request(Method::POST, "/v1/locks/acquire")
            .json(&json!({"object": object, "owner": "bob", "ttl_ms": 5000, "wait_ms": 10_000}));
        tokio::spawn(async move { status_and_json(request.send().await.expect("send")).await })
    };
    // The waiter shows in the metrics while it waits.
    lockd.wait_for_metric("lockd_waiters 1").await;
    let (status, _) = lockd
        .post(
            "/v1/locks/release",
            json!({"object": object, "token": first["token"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, lease) = waiter.await.expect("waiter task");
    assert_eq!(status, StatusCode::OK, "{lease}");
    assert_eq!(lease["owner"], "bob");
    assert!(lease["fence"].as_u64() > first["fence"].as_u64());
}

#[tokio::test]
async fn api_keys_are_required_on_v1_when_configured() {
    let key = "test-key-0123456789abcdef";
    let lockd = Lockd::start(&["--api-key", key, "--api-key", "second-key-0123456789"]).await;
    let object = unique("auth");
    let body = json!({"object": object, "owner": "alice", "ttl_ms": 1000});

    let (status, reply) = lockd.post("/v1/locks/acquire", body.clone()).await;
    let _ = assert_error(status, &reply, StatusCode::UNAUTHORIZED, "unauthenticated");
    for header in [
        "Bearer wrong-key-0123456789abcdef".to_owned(),
        format!("Basic {key}"),
        format!("Bearer {key}x"),
        "Bearer".to_owned(),
    ] {
        let response = lockd
            .request(Method::POST, "/v1/locks/acquire")
            .header("authorization", header)
            .json(&body)
            .send()
            .await
            .expect("request");
        let (status, reply) = status_and_json(response).await;
        assert_error(status, &reply, StatusCode::UNAUTHORIZED, "unauthenticated");
    }
    let (status, reply) = lockd.get("/v1/locks").await;
    assert_error(status, &reply, StatusCode::UNAUTHORIZED, "unauthenticated");
    let (status, reply) = lockd.get("/v1/events").await;
    assert_error(status, &reply, StatusCode::UNAUTHORIZED, "unauthenticated");

    // Probes stay open.
    let (status, _) = lockd.get("/healthz").await;
    assert_eq!(status, StatusCode::OK);

    let lockd = lockd.with_api_key(key);
    lockd.acquire(&object, "alice", 1000).await;
    let metrics = lockd
        .request(Method::GET, "/metrics")
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("lockd_unauthenticated_requests_total 7"),
        "{metrics}"
    );
    let lockd = lockd.with_api_key("second-key-0123456789");
    let (status, _) = lockd.get("/v1/locks").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn health_readiness_and_metrics_report_the_server() {
    let lockd = Lockd::start(&[]).await;
    let (status, body) = lockd.get("/healthz").await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("ok"))
    );
    let (status, body) = lockd.get("/readyz").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["backend"], "memory");

    let object = unique("m");
    lockd.acquire(&object, "alice", 30_000).await;
    lockd
        .post(
            "/v1/locks/acquire",
            json!({"object": object, "owner": "bob", "ttl_ms": 10}),
        )
        .await;
    let released = unique("released");
    let old = lockd.acquire(&released, "carol", 30_000).await;
    for _ in 0..2 {
        lockd
            .post(
                "/v1/locks/release",
                json!({"object": released, "token": old["token"]}),
            )
            .await;
    }
    let response = lockd
        .request(Method::GET, "/metrics")
        .send()
        .await
        .expect("metrics");
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.expect("text");
    for expected in [
        r#"lockd_requests_total{operation="acquire",outcome="ok"} 2"#,
        r#"lockd_requests_total{operation="acquire",outcome="locked"} 1"#,
        r#"lockd_requests_total{operation="release",outcome="ok"} 1"#,
        r#"lockd_requests_total{operation="release",outcome="not_held"} 1"#,
        r#"lockd_refused_releases_total{reason="not_held"} 1"#,
        "lockd_locks_held 1",
        "lockd_waiters 0",
        r#"lockd_request_duration_seconds_count{operation="acquire"} 3"#,
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}

#[tokio::test]
async fn hostile_inputs_never_get_a_5xx_and_leave_other_locks_alone() {
    let lockd = Lockd::start(&[]).await;
    let object = unique("precious");
    let lease = lockd.acquire(&object, "alice", 60_000).await;
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let bodies: Vec<String> = vec![
        deep,
        r#"{"object": null, "owner": null, "ttl_ms": null}"#.into(),
        r#"{"object": "a", "owner": "o", "ttl_ms": 1e30}"#.into(),
        r#"{"object": "a", "owner": "o", "ttl_ms": 18446744073709551616}"#.into(),
        r#"{"object": "a", "owner": "o", "ttl_ms": 18446744073709551615, "wait_ms": 18446744073709551615}"#.into(),
        format!(r#"{{"object": "{object}", "token": "{}"}}"#, "A".repeat(60_000)),
        format!(r#"{{"object": "{object}", "token": "lk2.{}"}}"#, "A".repeat(75)),
        format!(r#"{{"object": "{object}", "token": "lk2.{}"}}"#, "%".repeat(75)),
        r#"{"object": "\u0000\ud800", "owner": "o", "ttl_ms": 5}"#.into(),
        String::from_utf8_lossy(&[0xff, 0xfe, 0x00, 0x7b]).into_owned(),
    ];
    for path in [
        "/v1/locks/acquire",
        "/v1/locks/release",
        "/v1/locks/renew",
        "/v1/locks/validate",
        "/v1/locks/inspect",
    ] {
        for body in &bodies {
            let response = lockd
                .request(Method::POST, path)
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await
                .expect("request");
            let (status, reply) = status_and_json(response).await;
            assert!(
                !status.is_server_error(),
                "{path} answered {status} to a hostile body: {reply}"
            );
            if !status.is_success() {
                assert!(reply["error"]["code"].is_string(), "{reply}");
            }
        }
    }
    for query in [
        "/v1/locks?limit=-1",
        "/v1/locks?limit=99999999999999999999999",
        "/v1/locks?prefix=%00",
        "/v1/locks?after=%ff%fe",
        "/v1/events?after=abc",
        "/v1/events/stream?after=x",
    ] {
        let (status, reply) = lockd.get(query).await;
        assert!(
            status.is_client_error() || status.is_success(),
            "{query}: {status} {reply}"
        );
    }
    // alice's lock is untouched.
    let (status, body) = lockd
        .post(
            "/v1/locks/validate",
            json!({"object": object, "token": lease["token"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

// ---- Lock modes, several objects, batches and downgrade (issue 11) ----------------------

/// A one-object exclusive acquire answers exactly the fields it always did, plus `mode` and
/// `scope`.
#[tokio::test]
async fn a_one_object_exclusive_acquire_answers_as_before_plus_its_mode_and_scope() {
    let lockd = Lockd::start(&[]).await;
    let object = unique("plain");
    let lease = lockd.acquire(&object, "alice", 30_000).await;
    let mut keys: Vec<&str> = lease
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["fence", "mode", "object", "owner", "scope", "token", "ttl_ms"]
    );
    assert_eq!(lease["mode"], "exclusive");
    assert_eq!(lease["scope"], "object");
}

/// Shared holders coexist, each with its own token and fence; an exclusive request is refused
/// while they hold; inspect lists every holder (never a token), the top level describing the
/// holder with the highest fence; releasing one leaves the other.
#[tokio::test]
async fn shared_holders_coexist_and_inspect_lists_them_without_tokens() {
    let lockd = Lockd::start(&[]).await;
    let object = unique("shared");
    let mut readers = Vec::new();
    for owner in ["r1", "r2"] {
        let (status, lease) = lockd
            .post(
                "/v1/locks/acquire",
                json!({"object": object, "mode": "shared", "owner": owner, "ttl_ms": 30_000}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{lease}");
        assert_eq!(lease["mode"], "shared");
        readers.push(lease);
    }
    assert_ne!(readers[0]["token"], readers[1]["token"]);
    assert!(readers[1]["fence"].as_u64() > readers[0]["fence"].as_u64());

    let (status, body) = lockd
        .post(
            "/v1/locks/acquire",
            json!({"object": object, "owner": "writer", "ttl_ms": 1000}),
        )
        .await;
    let error = assert_error(status, &body, StatusCode::CONFLICT, "locked");
    assert_eq!(error["conflicts"][0]["object"], object.as_str());

    let (status, info) = lockd
        .post("/v1/locks/inspect", json!({"object": object}))
        .await;
    assert_eq!(status, StatusCode::OK, "{info}");
    assert_eq!(info["mode"], "shared");
    assert_eq!(info["owner"], "r2");
    assert_eq!(info["fence"], readers[1]["fence"]);
    let holders = info["holders"].as_array().expect("holders");
    assert_eq!(holders.len(), 2, "{info}");
    assert_eq!(holders[0]["owner"], "r1");
    assert_eq!(holders[0]["fence"], readers[0]["fence"]);
    for holder in holders {
        for key in ["owner", "fence", "ttl_ms", "acquired_at", "expires_at"] {
            assert!(holder.get(key).is_some(), "{key} missing: {holder}");
        }
    }
    for reader in &readers {
        assert!(!info
            .to_string()
            .contains(reader["token"].as_str().expect("token")));
    }
    let (status, page) = lockd
        .get(&format!("/v1/locks?prefix={}", object.replace('/', "%2F")))
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let fences = |holders: &serde_json::Value| -> Vec<serde_json::Value> {
        holders
            .as_array()
            .map(|h| h.iter().map(|h| h["fence"].clone()).collect())
            .unwrap_or_default()
    };
    assert_eq!(
        fences(&page["locks"][0]["holders"]),
        fences(&info["holders"])
    );
    assert_eq!(page["locks"][0]["mode"], "shared");

    let (status, _) = lockd
        .post(
            "/v1/locks/release",
            json!({"object": object, "token": readers[1]["token"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, info) = lockd
        .post("/v1/locks/inspect", json!({"object": object}))
        .await;
    assert_eq!(info["owner"], "r1", "the other reader still holds: {info}");
    let (status, valid) = lockd
        .post(
            "/v1/locks/validate",
            json!({"object": object, "token": readers[0]["token"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{valid}");
    assert_eq!(valid["mode"], "shared");
}

/// `objects` is granted all together, answered in request order with a token and fence per
/// object; when one object is held nothing is granted, and the 409 lists every conflict.
#[tokio::test]
async fn several_objects_are_granted_all_or_nothing_in_request_order() {
    let lockd = Lockd::start(&[]).await;
    let (a, b, c) = (unique("multi-a"), unique("multi-b"), unique("multi-c"));
    let (status, grant) = lockd
        .post(
            "/v1/locks/acquire",
            json!({"objects": [{"object": b}, {"object": a, "mode": "shared"}],
                   "owner": "mover", "ttl_ms": 30_000}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{grant}");
    assert_eq!(grant["owner"], "mover");
    assert_eq!(grant["ttl_ms"], 30_000);
    let locks = grant["locks"].as_array().expect("locks");
    assert_eq!(locks.len(), 2);
    assert_eq!(locks[0]["object"], b.as_str());
    assert_eq!(locks[0]["mode"], "exclusive");
    assert_eq!(locks[1]["object"], a.as_str());
    assert_eq!(locks[1]["mode"], "shared");
    assert!(locks
        .iter()
        .all(|l| l["token"].is_string() && l["fence"].is_u64()));

    // b is held exclusively by "mover": a request for c and b gets nothing, not even c.
    let (status, body) = lockd
        .post(
            "/v1/locks/acquire",
            json!({"objects": [{"object": c}, {"object": b}, {"object": a}],
                   "owner": "other", "ttl_ms": 1000}),
        )
        .await;
    let error = assert_error(status, &body, StatusCode::CONFLICT, "locked");
    assert_eq!(error["holder"], "mover");
    assert!(error["retry_after_ms"].as_u64().is_some());
    let conflicts = error["conflicts"].as_array().expect("conflicts");
    assert_eq!(conflicts[0]["object"], b.as_str(), "{error}");
    assert!(conflicts.iter().all(|c| c["holder"] == "mover"));
    let (status, _) = lockd.post("/v1/locks/inspect", json!({"object": c})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "nothing was left held");
}

/// Duplicates, more than 64 objects, an unknown mode, both or neither of `object` and
/// `objects`: all `invalid_argument`, naming the field.
#[tokio::test]
async fn malformed_multi_object_requests_are_invalid_arguments() {
    let lockd = Lockd::start(&[]).await;
    let a = unique("bad");
    let many: Vec<_> = (0..65)
        .map(|i| json!({"object": format!("{a}/{i}")}))
        .collect();
    for (body, field) in [
        (
            json!({"objects": [{"object": a}, {"object": a}], "owner": "o", "ttl_ms": 1000}),
            "objects",
        ),
        (
            json!({"objects": many, "owner": "o", "ttl_ms": 1000}),
            "objects",
        ),
        (
            json!({"objects": [], "owner": "o", "ttl_ms": 1000}),
            "objects",
        ),
        (
            json!({"object": a, "mode": "read", "owner": "o", "ttl_ms": 1000}),
            "mode",
        ),
        (
            json!({"objects": [{"object": a, "mode": "writer"}], "owner": "o", "ttl_ms": 1000}),
            "mode",
        ),
        (
            json!({"object": a, "objects": [{"object": a}], "owner": "o", "ttl_ms": 1000}),
            "objects",
        ),
        (json!({"owner": "o", "ttl_ms": 1000}), "object"),
    ] {
        let (status, reply) = lockd.post("/v1/locks/acquire", body.clone()).await;
        let error = assert_error(status, &reply, StatusCode::BAD_REQUEST, "invalid_argument");
        assert_eq!(error["field"], field, "{body} -> {reply}");
    }
}

/// Batched release and renew answer 200 with one result per lock in request order, even when
/// some fail: the lease (renew) or the fence (release), or the entry's error.
#[tokio::test]
async fn batched_release_and_renew_report_each_lock_in_order() {
    let lockd = Lockd::start(&[]).await;
    let (a, b, gone) = (unique("batch-a"), unique("batch-b"), unique("batch-gone"));
    let la = lockd.acquire(&a, "alice", 30_000).await;
    let lb = lockd.acquire(&b, "alice", 30_000).await;
    let lg = lockd.acquire(&gone, "alice", 30_000).await;
    lockd
        .post(
            "/v1/locks/release",
            json!({"object": gone, "token": lg["token"]}),
        )
        .await;
    let locks = json!([{"object": a, "token": la["token"]},
                       {"object": gone, "token": lg["token"]},
                       {"object": b, "token": lb["token"]}]);

    let (status, renewed) = lockd
        .post("/v1/locks/renew", json!({"locks": locks, "ttl_ms": 60_000}))
        .await;
    assert_eq!(status, StatusCode::OK, "{renewed}");
    let results = renewed["results"].as_array().expect("results");
    assert_eq!(results.len(), 3);
    assert_eq!(results[0]["object"], a.as_str());
    assert_eq!(results[0]["ttl_ms"], 60_000);
    assert_eq!(results[0]["token"], la["token"]);
    assert_eq!(results[0]["mode"], "exclusive");
    assert_eq!(results[1]["object"], gone.as_str());
    assert_eq!(results[1]["error"]["code"], "not_held");
    assert!(results[1]["error"]["message"].is_string());
    assert_eq!(results[2]["fence"], lb["fence"]);

    let (status, released) = lockd
        .post("/v1/locks/release", json!({"locks": locks}))
        .await;
    assert_eq!(status, StatusCode::OK, "{released}");
    assert_eq!(
        released["results"],
        json!([{"object": a, "fence": la["fence"]},
               {"object": gone, "error": released["results"][1]["error"]},
               {"object": b, "fence": lb["fence"]}])
    );
    assert_eq!(released["results"][1]["error"]["code"], "not_held");

    // A malformed token is its own entry's invalid_token; a duplicate object the request's.
    let (status, mixed) = lockd
        .post(
            "/v1/locks/release",
            json!({"locks": [{"object": a, "token": "nope"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{mixed}");
    assert_eq!(mixed["results"][0]["error"]["code"], "invalid_token");
    let (status, body) = lockd
        .post(
            "/v1/locks/release",
            json!({"locks": [{"object": a, "token": la["token"]}, {"object": a, "token": la["token"]}]}),
        )
        .await;
    let error = assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_argument");
    assert_eq!(error["field"], "objects");
    let (status, body) = lockd
        .post(
            "/v1/locks/release",
            json!({"object": a, "token": la["token"], "locks": []}),
        )
        .await;
    let error = assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_argument");
    assert_eq!(error["field"], "locks");
}

/// A downgrade keeps token, fence and expiry, answers the lease as shared, and lets readers
/// join; downgrading with another token is refused.
#[tokio::test]
async fn downgrade_turns_an_exclusive_lease_shared_and_readers_join() {
    let lockd = Lockd::start(&[]).await;
    let object = unique("down");
    let lease = lockd.acquire(&object, "writer", 30_000).await;
    let (status, body) = lockd
        .post(
            "/v1/locks/acquire",
            json!({"object": object, "mode": "shared", "owner": "reader", "ttl_ms": 1000}),
        )
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "locked");

    let (status, down) = lockd
        .post(
            "/v1/locks/downgrade",
            json!({"object": object, "token": lease["token"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{down}");
    assert_eq!(down["mode"], "shared");
    assert_eq!(down["token"], lease["token"]);
    assert_eq!(down["fence"], lease["fence"]);
    assert_eq!(down["owner"], "writer");

    let (status, reader) = lockd
        .post(
            "/v1/locks/acquire",
            json!({"object": object, "mode": "shared", "owner": "reader", "ttl_ms": 1000}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{reader}");

    let other = unique("down-other");
    let not_mine = lockd.acquire(&other, "x", 30_000).await;
    let (status, body) = lockd
        .post(
            "/v1/locks/downgrade",
            json!({"object": object, "token": not_mine["token"]}),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_token");
}

/// Every grant, release and downgrade event carries its lease's mode; a multi-object grant is
/// one event per object.
#[tokio::test]
async fn events_carry_the_mode_of_each_lease() {
    let lockd = Lockd::start(&[]).await;
    let (a, b) = (unique("ev-a"), unique("ev-b"));
    let (status, grant) = lockd
        .post(
            "/v1/locks/acquire",
            json!({"objects": [{"object": a, "mode": "shared"}, {"object": b}],
                   "owner": "o", "ttl_ms": 30_000}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{grant}");
    let (status, _) = lockd
        .post(
            "/v1/locks/downgrade",
            json!({"object": b, "token": grant["locks"][1]["token"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, events) = lockd.get("/v1/events").await;
    assert_eq!(status, StatusCode::OK, "{events}");
    let seen: Vec<(String, String, String)> = events["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["object"] == a.as_str() || e["object"] == b.as_str())
        .map(|e| {
            (
                e["kind"].as_str().unwrap_or_default().to_owned(),
                e["object"].as_str().unwrap_or_default().to_owned(),
                e["mode"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("grant".into(), a.clone(), "shared".into()),
            ("grant".into(), b.clone(), "exclusive".into()),
            ("downgrade".into(), b.clone(), "shared".into()),
        ]
    );

    // A batched release records one event per lock: a release for each lease it ended and a
    // release_refused for each refused entry.
    let (status, released) = lockd
        .post(
            "/v1/locks/release",
            json!({"locks": [{"object": a, "token": grant["locks"][0]["token"]},
                             {"object": b, "token": grant["locks"][1]["token"]},
                             {"object": a.clone() + "/x", "token": grant["locks"][0]["token"]}]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{released}");
    let mut kinds = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while kinds.len() < 3 && std::time::Instant::now() < deadline {
        let (_, events) = lockd.get("/v1/events").await;
        kinds = events["events"]
            .as_array()
            .expect("events")
            .iter()
            .filter(|e| e["kind"] != "grant" && e["kind"] != "downgrade")
            .filter(|e| {
                e["object"]
                    .as_str()
                    .is_some_and(|o| o.starts_with(a.as_str()) || o == b)
            })
            .map(|e| {
                (
                    e["kind"].as_str().unwrap_or_default().to_owned(),
                    e["reason"].clone(),
                )
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    kinds.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        kinds,
        [
            ("release".into(), serde_json::Value::Null),
            ("release".into(), serde_json::Value::Null),
            ("release_refused".into(), json!("invalid_token")),
        ]
    );
}
