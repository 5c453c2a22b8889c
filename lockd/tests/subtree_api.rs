//! The HTTP API of subtree locks and lock-delays, driven against the real `lockd` binary on
//! memory://: scopes in requests and answers, the path rules, waiters, lock-delays in refusals
//! and in inspect answers, and `--default-lock-delay`.

mod support;

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use support::{assert_error, status_and_json, unique, Lockd};

/// Posts an acquire and returns the status and body.
async fn acquire(lockd: &Lockd, body: Value) -> (StatusCode, Value) {
    lockd.post("/v1/locks/acquire", body).await
}

/// Inspects `object`, asserting it is described.
async fn inspect(lockd: &Lockd, object: &str) -> Value {
    let (status, body) = lockd
        .post("/v1/locks/inspect", json!({"object": object}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// Scopes are `object` or `subtree`, per object; the path rules, the lock-delay's range and
/// overlapping objects in one request are refused as `invalid_argument` naming the field.
#[tokio::test]
async fn bad_scopes_lock_delays_and_paths_are_invalid_arguments_naming_their_field() {
    let lockd = Lockd::start(&[]).await;
    let dir = unique("rules");
    let deep = format!("{dir}{}", "/s".repeat(32));
    for (body, field) in [
        (
            json!({"object": dir, "scope": "tree", "owner": "o", "ttl_ms": 1000}),
            "scope",
        ),
        (
            json!({"object": dir, "scope": "Subtree", "owner": "o", "ttl_ms": 1000}),
            "scope",
        ),
        (
            json!({"objects": [{"object": dir, "scope": "dir"}], "owner": "o", "ttl_ms": 1000}),
            "scope",
        ),
        (
            json!({"objects": [{"object": dir}], "scope": "subtree", "owner": "o", "ttl_ms": 1000}),
            "scope",
        ),
        (
            json!({"object": dir, "owner": "o", "ttl_ms": 1000, "lock_delay_ms": 60_001}),
            "lock_delay_ms",
        ),
        (
            json!({"object": dir, "owner": "o", "ttl_ms": 1000, "lock_delay_ms": -1}),
            "lock_delay_ms",
        ),
        (
            json!({"object": dir, "owner": "o", "ttl_ms": 1000, "lock_delay_ms": "5s"}),
            "lock_delay_ms",
        ),
        (
            json!({"object": format!("{dir}/../x"), "owner": "o", "ttl_ms": 1000}),
            "object",
        ),
        (
            json!({"object": format!("{dir}/./x"), "owner": "o", "ttl_ms": 1000}),
            "object",
        ),
        (
            json!({"object": format!("{dir}//x"), "owner": "o", "ttl_ms": 1000}),
            "object",
        ),
        (
            json!({"object": format!("{dir}/"), "owner": "o", "ttl_ms": 1000}),
            "object",
        ),
        (
            json!({"object": "/", "owner": "o", "ttl_ms": 1000}),
            "object",
        ),
        (
            json!({"object": deep, "owner": "o", "ttl_ms": 1000}),
            "object",
        ),
        (
            json!({"objects": [{"object": dir, "scope": "subtree"}, {"object": format!("{dir}/x")}],
                   "owner": "o", "ttl_ms": 1000}),
            "objects",
        ),
    ] {
        let (status, reply) = acquire(&lockd, body.clone()).await;
        let error = assert_error(status, &reply, StatusCode::BAD_REQUEST, "invalid_argument");
        assert_eq!(error["field"], field, "{body} answered {reply}");
    }
    // The limits are inclusive: 32 segments and a one-minute lock-delay are accepted.
    let (status, reply) = acquire(
        &lockd,
        json!({"object": format!("{dir}{}", "/s".repeat(28)), "owner": "o", "ttl_ms": 1000,
               "lock_delay_ms": 60_000}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
}

/// A subtree lock covers its object and everything under it, but not a sibling sharing its
/// prefix; answers, inspect and list name each lease's scope, and inspect counts the requests
/// waiting on the object.
#[tokio::test]
async fn a_subtree_lock_covers_everything_under_it_and_inspect_counts_waiters() {
    let lockd = Lockd::start(&[]).await;
    let dir = unique("vol");
    let (status, lease) = acquire(
        &lockd,
        json!({"object": dir, "scope": "subtree", "owner": "renamer", "ttl_ms": 30_000}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{lease}");
    assert_eq!(lease["scope"], "subtree");

    for under in [dir.clone(), format!("{dir}/f"), format!("{dir}/x/y")] {
        let (status, body) = acquire(
            &lockd,
            json!({"object": under, "mode": "shared", "owner": "writer", "ttl_ms": 1000}),
        )
        .await;
        let error = assert_error(status, &body, StatusCode::CONFLICT, "locked");
        assert_eq!(error["holder"], "renamer", "{under}: {body}");
        assert_eq!(error["conflicts"][0]["cause"], "held", "{body}");
        assert_eq!(error["conflicts"][0]["object"], under.as_str());
    }
    let sibling = lockd.acquire(&format!("{dir}b/f"), "writer", 1000).await;
    assert_eq!(sibling["scope"], "object");

    // A request waiting on the object itself is counted; the holder shows its scope.
    let waiter = {
        let request = lockd
            .request(Method::POST, "/v1/locks/acquire")
            .json(&json!({"object": dir, "owner": "next", "ttl_ms": 5000, "wait_ms": 10_000}));
        tokio::spawn(async move { status_and_json(request.send().await.expect("send")).await })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let described = loop {
        let described = inspect(&lockd, &dir).await;
        if described["waiters"] == 1 || Instant::now() > deadline {
            break described;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(described["waiters"], 1, "{described}");
    assert_eq!(described["holders"][0]["scope"], "subtree", "{described}");
    assert!(described.get("delay").is_none(), "{described}");
    let (status, listed) = lockd.get(&format!("/v1/locks?prefix={dir}")).await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    let entry = listed["locks"]
        .as_array()
        .expect("locks")
        .iter()
        .find(|lock| lock["object"] == dir.as_str())
        .cloned()
        .expect("the subtree lock is listed");
    assert_eq!(entry["waiters"], 1, "{listed}");
    assert_eq!(entry["holders"][0]["scope"], "subtree");

    let (status, _) = lockd
        .post(
            "/v1/locks/release",
            json!({"object": dir, "token": lease["token"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, granted) = waiter.await.expect("waiter task");
    assert_eq!(status, StatusCode::OK, "{granted}");
    assert_eq!(granted["owner"], "next");
}

/// A directory rename takes the source and target subtrees in one request; a file write under
/// either waits for it, and a shared snapshot of the parent is refused meanwhile.
#[tokio::test]
async fn a_rename_locks_source_and_target_subtrees_together() {
    let lockd = Lockd::start(&[]).await;
    let volume = unique("rename");
    let (source, target) = (format!("{volume}/a"), format!("{volume}/b"));
    let (status, grant) = acquire(
        &lockd,
        json!({"objects": [{"object": source, "scope": "subtree"},
                           {"object": target, "mode": "exclusive", "scope": "subtree"}],
               "owner": "renamer", "ttl_ms": 30_000}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{grant}");
    let scopes: Vec<&str> = grant["locks"]
        .as_array()
        .expect("locks")
        .iter()
        .map(|lock| lock["scope"].as_str().expect("a scope"))
        .collect();
    assert_eq!(scopes, ["subtree", "subtree"]);

    let (status, body) = acquire(
        &lockd,
        json!({"objects": [{"object": format!("{target}/new-file")}, {"object": format!("{volume}/c")}],
               "owner": "writer", "ttl_ms": 1000}),
    )
    .await;
    let error = assert_error(status, &body, StatusCode::CONFLICT, "locked");
    assert_eq!(
        error["conflicts"].as_array().map(Vec::len),
        Some(1),
        "{body}"
    );
    let (status, body) = acquire(
        &lockd,
        json!({"object": volume, "mode": "shared", "scope": "subtree", "owner": "snapshot",
               "ttl_ms": 1000}),
    )
    .await;
    assert_error(status, &body, StatusCode::CONFLICT, "locked");
}

/// With `--default-lock-delay`, a lease acquired without `lock_delay_ms` keeps its object
/// blocked for that long after it expires: refusals name the lock-delay, inspect shows it
/// with no holder, and a blocking acquire is granted when it ends. `"lock_delay_ms": 0` opts
/// out, and a release never leaves a delay.
#[tokio::test]
async fn the_default_lock_delay_applies_to_requests_that_give_none() {
    let delay_ms = 1500;
    let lockd = Lockd::start(&["--default-lock-delay", "1500ms"]).await;
    let (delayed, free, released) = (unique("delayed"), unique("free"), unique("released"));
    acquire(
        &lockd,
        json!({"object": delayed, "owner": "vanished", "ttl_ms": 200}),
    )
    .await;
    let (status, body) = acquire(
        &lockd,
        json!({"object": free, "owner": "vanished", "ttl_ms": 200, "lock_delay_ms": 0}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let kept = lockd.acquire(&released, "careful", 200).await;
    let (status, _) = lockd
        .post(
            "/v1/locks/release",
            json!({"object": released, "token": kept["token"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    lockd.acquire(&released, "next", 1000).await;

    tokio::time::sleep(Duration::from_millis(350)).await;
    lockd.acquire(&free, "next", 1000).await;
    let (status, body) = acquire(
        &lockd,
        json!({"object": delayed, "owner": "next", "ttl_ms": 1000}),
    )
    .await;
    let error = assert_error(status, &body, StatusCode::CONFLICT, "locked");
    assert_eq!(error["conflicts"][0]["cause"], "lock_delay", "{body}");
    assert_eq!(error["holder"], "vanished");
    let message = error["message"].as_str().expect("a message");
    assert!(message.contains("lock-delay"), "{message}");
    let retry = error["retry_after_ms"].as_u64().expect("retry_after_ms");
    assert!(retry > 0 && retry <= delay_ms, "{retry}");

    let described = inspect(&lockd, &delayed).await;
    assert!(described.get("holders").is_none(), "{described}");
    assert_eq!(described["ttl_ms"], 0, "{described}");
    let delay = &described["delay"];
    assert_eq!(delay["owner"], "vanished", "{described}");
    assert_eq!(delay["scope"], "object");
    assert_eq!(delay["mode"], "exclusive");
    let remaining = delay["remaining_ms"].as_u64().expect("remaining_ms");
    assert!(remaining > 0 && remaining <= delay_ms, "{described}");
    assert!(delay["until"].is_string(), "{described}");

    let started = Instant::now();
    let (status, body) = acquire(
        &lockd,
        json!({"object": delayed, "owner": "patient", "ttl_ms": 1000, "wait_ms": 5000}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let waited = started.elapsed();
    assert!(
        waited + Duration::from_millis(100) >= Duration::from_millis(remaining),
        "granted after {waited:?}, {remaining} ms before the delay ended"
    );
}
