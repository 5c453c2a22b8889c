//! A server that survives slow and greedy clients, against the real binary: read and idle
//! timeouts close slow connections while others are served, and each cap (connections,
//! requests in flight, blocking waiters, event streams) answers `503 unavailable` with
//! `Retry-After`, moves its metric, and leaves every lock as it was.

mod support;

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use support::{assert_error, status_and_json, unique, Lockd};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Slow connections the slow-client test holds open at once.
const SLOW_CONNECTIONS: usize = 3_000;

/// The host and port of a lockd URL.
fn address(lockd: &Lockd) -> String {
    lockd
        .url
        .strip_prefix("http://")
        .expect("http URL")
        .to_owned()
}

/// A raw HTTP/1.1 response: status, lower-cased header block, body.
struct RawResponse {
    status: u16,
    headers: String,
    body: String,
}

/// Reads one response (with `Content-Length`) from `stream`.
async fn read_response(stream: &mut TcpStream) -> RawResponse {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("a response within 10 s")
            .expect("read");
        assert!(n > 0, "connection closed before a response: {buffer:?}");
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {head}"));
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().expect("content-length"))
        .unwrap_or(0);
    while buffer.len() < head_end + length {
        let n = stream.read(&mut chunk).await.expect("read body");
        assert!(n > 0, "connection closed mid-body");
        buffer.extend_from_slice(&chunk[..n]);
    }
    RawResponse {
        status,
        headers: head,
        body: String::from_utf8_lossy(&buffer[head_end..head_end + length]).into_owned(),
    }
}

/// Sends a GET on a kept-alive raw connection and reads the answer.
async fn raw_get(stream: &mut TcpStream, path: &str) -> RawResponse {
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nhost: lockd\r\n\r\n").as_bytes())
        .await
        .expect("write");
    read_response(stream).await
}

/// Whether the server closed `stream` (EOF or reset) within `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut byte = [0u8; 1];
    match tokio::time::timeout(within, stream.read(&mut byte)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) => panic!("unexpected bytes from the server"),
        Err(_) => false,
    }
}

/// Asserts a 503 `unavailable` envelope with `Retry-After`, naming `flag`.
fn assert_busy(status: StatusCode, retry_after: Option<&str>, body: &Value, flag: &str) {
    let error = assert_error(status, body, StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    assert_eq!(retry_after, Some("1"), "Retry-After on {body}");
    assert!(
        error["message"].as_str().is_some_and(|m| m.contains(flag)),
        "{error}"
    );
}

/// Posts and returns status, `Retry-After` and the JSON body.
async fn post(lockd: &Lockd, path: &str, body: Value) -> (StatusCode, Option<String>, Value) {
    let response = lockd
        .request(Method::POST, path)
        .json(&body)
        .send()
        .await
        .expect("request");
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (status, body) = status_and_json(response).await;
    (status, retry_after, body)
}

/// The lease `token` on `object` is still valid, with `fence`.
async fn assert_still_held(lockd: &Lockd, object: &str, token: &Value, fence: &Value) {
    let (status, body) = lockd
        .post(
            "/v1/locks/validate",
            json!({"object": object, "token": token}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(&body["fence"], fence, "{body}");
}

/// Thousands of connections that sent half a request header do not stop normal requests from
/// being served, and each is closed once the read timeout has passed, not before.
#[tokio::test]
async fn thousands_of_half_sent_requests_are_closed_after_the_read_timeout_while_others_are_served()
{
    let read_timeout = Duration::from_secs(3);
    let lockd = Lockd::start_with_env(
        &["--request-read-timeout", "3s", "--idle-timeout", "60s"],
        &[("LOCKD_LOG", "info")],
    )
    .await;
    let addr = address(&lockd);
    let mut slow = Vec::with_capacity(SLOW_CONNECTIONS);
    let started = Instant::now();
    for i in 0..SLOW_CONNECTIONS {
        let mut stream = TcpStream::connect(&addr)
            .await
            .unwrap_or_else(|e| panic!("connection {i}: {e} (is `ulimit -n` above 7000?)"));
        stream
            .write_all(b"POST /v1/locks/acquire HTTP/1.1\r\nhost: lockd\r\ncontent-le")
            .await
            .expect("half a header");
        slow.push(stream);
    }
    let all_sent = Instant::now();

    // Normal clients are served meanwhile: grants, validations and releases all succeed.
    for i in 0..20 {
        let object = unique(&format!("served-{i}"));
        let lease = lockd.acquire(&object, "alice", 60_000).await;
        assert_still_held(&lockd, &object, &lease["token"], &lease["fence"]).await;
        let (status, body) = lockd
            .post(
                "/v1/locks/release",
                json!({"object": object, "token": lease["token"]}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    // Every slow connection is closed, none before its read timeout.
    for (i, stream) in slow.iter_mut().enumerate() {
        assert!(
            closed_within(stream, read_timeout + Duration::from_secs(20)).await,
            "slow connection {i} still open {:?} after it was opened",
            started.elapsed()
        );
        if i == 0 {
            assert!(
                started.elapsed() >= read_timeout,
                "closed after {:?}, before the read timeout",
                started.elapsed()
            );
        }
    }
    assert!(all_sent.elapsed() >= read_timeout - Duration::from_millis(50));
    lockd
        .wait_for_metric(&format!(
            "lockd_connection_timeouts_total{{timeout=\"request_read\"}} {SLOW_CONNECTIONS}"
        ))
        .await;
    lockd.kill().await;
}

/// A kept-alive connection with no request is closed after the idle timeout; one whose request
/// body stalls gets `400` naming the read timeout.
#[tokio::test]
async fn idle_connections_and_stalled_bodies_are_cut_off() {
    let lockd = Lockd::start(&["--request-read-timeout", "1s", "--idle-timeout", "2s"]).await;
    let addr = address(&lockd);

    let mut idle = TcpStream::connect(&addr).await.expect("connect");
    let answer = raw_get(&mut idle, "/healthz").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let served_at = Instant::now();
    assert!(
        !closed_within(&mut idle, Duration::from_millis(1_500)).await,
        "closed before the idle timeout"
    );
    assert!(
        closed_within(&mut idle, Duration::from_secs(15)).await,
        "an idle connection stayed open"
    );
    assert!(served_at.elapsed() >= Duration::from_secs(2));
    lockd
        .wait_for_metric("lockd_connection_timeouts_total{timeout=\"idle\"} 1")
        .await;

    let mut stalled = TcpStream::connect(&addr).await.expect("connect");
    let object = unique("stalled");
    let body = json!({"object": object, "owner": "alice", "ttl_ms": 60_000}).to_string();
    stalled
        .write_all(
            format!(
                "POST /v1/locks/acquire HTTP/1.1\r\nhost: lockd\r\ncontent-type: application/json\r\n\
                 content-length: {}\r\n\r\n{}",
                body.len(),
                &body[..10]
            )
            .as_bytes(),
        )
        .await
        .expect("headers and part of the body");
    let answer = read_response(&mut stalled).await;
    assert_eq!(answer.status, 400, "{}", answer.body);
    assert!(
        answer.body.contains("request-read-timeout"),
        "{}",
        answer.body
    );
    // Nothing was granted.
    let (status, _) = lockd
        .post("/v1/locks/inspect", json!({"object": object}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    lockd.kill().await;
}

/// A connection over `--max-connections` gets one `503 unavailable` with `Retry-After` and is
/// closed; the held connections keep working and a new one is accepted once one closes.
#[tokio::test]
async fn a_connection_over_the_cap_gets_one_503_and_is_closed() {
    let lockd = Lockd::start(&["--max-connections", "3"]).await;
    let addr = address(&lockd);
    let object = unique("conn-cap");
    // The test client keeps this request's connection: one of the three.
    let lease = lockd.acquire(&object, "alice", 60_000).await;
    let mut served = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(&addr).await.expect("connect");
        let answer = raw_get(&mut stream, "/healthz").await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        served.push(stream);
    }

    let mut extra = TcpStream::connect(&addr).await.expect("connect");
    extra
        .write_all(
            format!(
                "POST /v1/locks/release HTTP/1.1\r\nhost: lockd\r\ncontent-type: application/json\r\n\
                 content-length: {len}\r\n\r\n{body}",
                body = json!({"object": object, "token": lease["token"]}),
                len = json!({"object": object, "token": lease["token"]}).to_string().len(),
            )
            .as_bytes(),
        )
        .await
        .expect("write");
    let refused = read_response(&mut extra).await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert!(
        refused.headers.contains("retry-after: 1"),
        "{}",
        refused.headers
    );
    let body: Value = serde_json::from_str(&refused.body).expect("JSON envelope");
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    assert!(
        closed_within(&mut extra, Duration::from_secs(5)).await,
        "refused connection left open"
    );

    // The held connections still work; the refused release did nothing.
    let metrics = raw_get(&mut served[0], "/metrics").await;
    assert!(
        metrics
            .body
            .contains("lockd_limit_refusals_total{limit=\"connections\"}"),
        "{}",
        metrics.body
    );
    assert!(
        metrics.body.contains("lockd_connections 3"),
        "{}",
        metrics.body
    );
    assert_still_held(&lockd, &object, &lease["token"], &lease["fence"]).await;
    drop(served);
    lockd.kill().await;
}

/// Requests over `--max-in-flight` get `503` with `Retry-After` and never reach the backend: a
/// refused release leaves the lock held. Probes stay answerable.
#[tokio::test]
async fn requests_over_the_in_flight_cap_get_503_and_leave_locks_alone() {
    let lockd = Lockd::start(&["--max-in-flight", "2", "--max-waiters", "10"]).await;
    let object = unique("in-flight");
    let lease = lockd.acquire(&object, "alice", 60_000).await;
    let waiters: Vec<_> = ["bob", "carol"]
        .into_iter()
        .map(|owner| {
            let request = lockd.request(Method::POST, "/v1/locks/acquire").json(
                &json!({"object": object, "owner": owner, "ttl_ms": 1_000, "wait_ms": 3_000}),
            );
            tokio::spawn(async move { status_and_json(request.send().await.expect("send")).await })
        })
        .collect();
    lockd.wait_for_metric("lockd_requests_in_flight 2").await;

    let (status, retry_after, body) = post(
        &lockd,
        "/v1/locks/release",
        json!({"object": object, "token": lease["token"]}),
    )
    .await;
    assert_busy(status, retry_after.as_deref(), &body, "--max-in-flight");
    lockd
        .wait_for_metric("lockd_limit_refusals_total{limit=\"in_flight\"} 1")
        .await;

    for waiter in waiters {
        let (status, body) = waiter.await.expect("waiter");
        assert_error(status, &body, StatusCode::CONFLICT, "locked");
    }
    assert_still_held(&lockd, &object, &lease["token"], &lease["fence"]).await;
    lockd.kill().await;
}

/// Blocking acquires over `--max-waiters` get `503` with `Retry-After`; non-blocking ones are
/// not capped, and the lock stays with its holder.
#[tokio::test]
async fn blocking_acquires_over_the_waiter_cap_get_503() {
    let lockd = Lockd::start(&["--max-waiters", "1"]).await;
    let object = unique("waiters");
    let lease = lockd.acquire(&object, "alice", 60_000).await;
    let waiter = {
        let request = lockd
            .request(Method::POST, "/v1/locks/acquire")
            .json(&json!({"object": object, "owner": "bob", "ttl_ms": 1_000, "wait_ms": 2_000}));
        tokio::spawn(async move { status_and_json(request.send().await.expect("send")).await })
    };
    lockd.wait_for_metric("lockd_waiters 1").await;

    let (status, retry_after, body) = post(
        &lockd,
        "/v1/locks/acquire",
        json!({"object": object, "owner": "carol", "ttl_ms": 1_000, "wait_ms": 1_000}),
    )
    .await;
    assert_busy(status, retry_after.as_deref(), &body, "--max-waiters");
    lockd
        .wait_for_metric("lockd_limit_refusals_total{limit=\"waiters\"} 1")
        .await;
    let (status, body) = lockd
        .post(
            "/v1/locks/acquire",
            json!({"object": object, "owner": "carol", "ttl_ms": 1_000}),
        )
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "locked");

    let (status, body) = waiter.await.expect("waiter");
    assert_error(status, &body, StatusCode::CONFLICT, "locked");
    assert_still_held(&lockd, &object, &lease["token"], &lease["fence"]).await;
    lockd.wait_for_metric("lockd_waiters 0").await;
    lockd.kill().await;
}

/// Event streams over `--max-event-streams` get `503` with `Retry-After`; closing one frees its
/// place.
#[tokio::test]
async fn event_streams_over_the_cap_get_503_until_one_closes() {
    let lockd = Lockd::start(&["--max-event-streams", "1"]).await;
    let first = lockd
        .request(Method::GET, "/v1/events/stream")
        .send()
        .await
        .expect("stream");
    assert_eq!(first.status(), StatusCode::OK);

    let refused = lockd
        .request(Method::GET, "/v1/events/stream")
        .send()
        .await
        .expect("request");
    let retry_after = refused
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (status, body) = status_and_json(refused).await;
    assert_busy(status, retry_after.as_deref(), &body, "--max-event-streams");
    lockd.wait_for_metric("lockd_event_streams 1").await;
    lockd
        .wait_for_metric("lockd_limit_refusals_total{limit=\"event_streams\"} 1")
        .await;

    drop(first);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let again = lockd
            .request(Method::GET, "/v1/events/stream")
            .send()
            .await
            .expect("request");
        if again.status() == StatusCode::OK {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the closed stream's place was never freed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    lockd.kill().await;
}
