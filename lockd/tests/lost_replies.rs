//! Lost replies and tampered tokens, through the real `lockd` binary: an acquire whose
//! connection was dropped before its answer can be retried with its request id and gets the
//! same lease, never a second grant; a token lockd did not issue is refused, counted and
//! recorded like any refused release.

mod support;

use reqwest::StatusCode;
use serde_json::json;
use support::{assert_error, unique, Lockd};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Sends an acquire on a raw connection and closes it without reading the answer.
async fn acquire_and_hang_up(lockd: &Lockd, body: serde_json::Value) {
    let addr = lockd.url.trim_start_matches("http://");
    let body = body.to_string();
    let request = format!(
        "POST /v1/locks/acquire HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("send");
    stream.flush().await.expect("flush");
    drop(stream);
}

/// An acquire whose connection dropped before its answer is retried with the same request id:
/// the retry gets the lease the first attempt was granted (same token and fence, at most one
/// grant), its holder can release it, and another owner was locked out meanwhile.
#[tokio::test]
async fn a_retry_after_a_dropped_connection_gets_the_same_lease_not_a_second_grant() {
    let lockd = Lockd::start(&[]).await;
    let object = unique("lost-reply");
    let request_id = "7c1f0e2a9b3d4c5e8f60718293a4b5c6";
    let body = json!({"object": object, "owner": "alice", "ttl_ms": 30_000,
                      "request_id": request_id});
    acquire_and_hang_up(&lockd, body.clone()).await;
    // Whether or not lockd got to it before the hang-up, retrying is safe.
    let (status, first) = lockd.post("/v1/locks/acquire", body.clone()).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let (status, second) = lockd.post("/v1/locks/acquire", body.clone()).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_eq!(first["token"], second["token"]);
    assert_eq!(first["fence"], second["fence"]);
    let (status, info) = lockd
        .post("/v1/locks/inspect", json!({"object": object}))
        .await;
    assert_eq!(status, StatusCode::OK, "{info}");
    assert_eq!(info["fence"], first["fence"], "one grant, not two");
    let (status, refused) = lockd
        .post(
            "/v1/locks/acquire",
            json!({"object": object, "owner": "bob", "ttl_ms": 1000}),
        )
        .await;
    assert_error(status, &refused, StatusCode::CONFLICT, "locked");
    let (status, released) = lockd
        .post(
            "/v1/locks/release",
            json!({"object": object, "token": first["token"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{released}");
    lockd.acquire(&object, "bob", 1000).await;
}

/// A request id that is too short to be unguessable, or has characters outside its alphabet,
/// is refused as invalid_argument naming the field, and nothing is granted.
#[tokio::test]
async fn guessable_or_malformed_request_ids_are_invalid_arguments() {
    let lockd = Lockd::start(&[]).await;
    let object = unique("bad-request-id");
    for bad in ["short", "has spaces in it, see?", "ünïcode-ünïcode-ünïcode"] {
        let (status, body) = lockd
            .post(
                "/v1/locks/acquire",
                json!({"object": object, "owner": "alice", "ttl_ms": 1000, "request_id": bad}),
            )
            .await;
        let error = assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_argument");
        assert!(
            error["message"]
                .as_str()
                .is_some_and(|m| m.contains("request_id")),
            "{error}"
        );
    }
    let (status, _) = lockd
        .post("/v1/locks/inspect", json!({"object": object}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "nothing was granted");
}

/// A release with a token whose MAC was changed is refused as invalid_token, leaves the lock
/// held, and is counted and recorded as a refused release, like a malformed token.
#[tokio::test]
async fn a_release_with_a_tampered_token_is_refused_counted_and_recorded() {
    let lockd = Lockd::start(&[]).await;
    let object = unique("tampered");
    let lease = lockd.acquire(&object, "alice", 30_000).await;
    let token = lease["token"].as_str().expect("token");
    let mut tampered = token.as_bytes().to_vec();
    let at = token.len() - 20;
    tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).expect("ascii");
    for bad in [tampered.as_str(), "not-a-token"] {
        let (status, body) = lockd
            .post("/v1/locks/release", json!({"object": object, "token": bad}))
            .await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_token");
    }
    lockd
        .wait_for_metric(r#"lockd_refused_releases_total{reason="invalid_token"} 2"#)
        .await;
    let (status, events) = lockd.get("/v1/events?limit=1000").await;
    assert_eq!(status, StatusCode::OK);
    let refused = events["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["kind"] == "release_refused" && e["object"] == object.as_str())
        .filter(|e| e["reason"] == "invalid_token")
        .count();
    assert_eq!(refused, 2, "{events}");
    let (status, info) = lockd
        .post(
            "/v1/locks/validate",
            json!({"object": object, "token": token}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "the lock is still held: {info}");
}
