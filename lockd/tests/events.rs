//! The event log: `GET /v1/events` and the server-sent `GET /v1/events/stream`, against the
//! real binary. Every grant, release, renew, expiry and refused release is recorded, in order,
//! with no token anywhere.

mod support;

use std::time::Duration;

use futures_util::StreamExt as _;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use support::{assert_error, unique, Lockd};

/// Events about `object` from `GET /v1/events`.
async fn events_about(lockd: &Lockd, object: &str) -> Vec<Value> {
    let (status, body) = lockd.get("/v1/events?limit=1000").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["events"]
        .as_array()
        .expect("events array")
        .iter()
        .filter(|e| e["object"] == object)
        .cloned()
        .collect()
}

fn kinds(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .map(|e| e["kind"].as_str().expect("kind"))
        .collect()
}

#[tokio::test]
async fn grants_renews_releases_refusals_and_expiries_are_logged_without_tokens() {
    let lockd = Lockd::start(&[]).await;
    let object = unique("log");
    let lease = lockd.acquire(&object, "alice", 30_000).await;
    let token = lease["token"].as_str().expect("token").to_owned();
    lockd
        .post(
            "/v1/locks/renew",
            json!({"object": object, "token": token, "ttl_ms": 30_000}),
        )
        .await;
    // invalid_token: alice's token on bob's object (it was not issued for that object).
    let other = unique("other");
    let bobs = lockd.acquire(&other, "bob", 30_000).await;
    let (status, _) = lockd
        .post(
            "/v1/locks/release",
            json!({"object": other, "token": token}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    lockd
        .post(
            "/v1/locks/release",
            json!({"object": object, "token": token}),
        )
        .await;
    // not_held: released already.
    let (status, _) = lockd
        .post(
            "/v1/locks/release",
            json!({"object": object, "token": token}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    // An expiry: a short lease nobody releases.
    let short = lockd.acquire(&object, "carol", 150).await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let log = loop {
        let log = events_about(&lockd, &object).await;
        if log.iter().any(|e| e["kind"] == "expiry") || tokio::time::Instant::now() > deadline {
            break log;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        kinds(&log),
        vec![
            "grant",
            "renew",
            "release",
            "release_refused",
            "grant",
            "expiry"
        ],
        "{log:#?}"
    );
    assert_eq!(log[0]["owner"], "alice");
    assert_eq!(log[0]["fence"], lease["fence"]);
    assert_eq!(log[2]["owner"], "alice");
    assert_eq!(log[3]["reason"], "not_held");
    assert_eq!(log[5]["owner"], "carol");
    assert_eq!(log[5]["fence"], short["fence"]);
    let seqs: Vec<u64> = log
        .iter()
        .map(|e| e["seq"].as_u64().expect("seq"))
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert!(log
        .iter()
        .all(|e| e["time"].as_str().is_some_and(|t| t.ends_with('Z'))));

    let refused = events_about(&lockd, &other).await;
    assert_eq!(kinds(&refused), vec!["grant", "release_refused"]);
    assert_eq!(refused[1]["reason"], "invalid_token");
    assert!(refused[1]["owner"].is_null());

    let (_, all) = lockd.get("/v1/events?limit=1000").await;
    let text = all.to_string();
    for secret in [token.as_str(), bobs["token"].as_str().expect("token")] {
        assert!(!text.contains(secret), "a token leaked into the event log");
    }
}

#[tokio::test]
async fn events_page_with_after_and_limit_and_the_ring_is_bounded() {
    let lockd = Lockd::start(&["--events-capacity", "3"]).await;
    for i in 0..5 {
        lockd
            .acquire(&unique(&format!("e{i}")), "alice", 30_000)
            .await;
    }
    let (status, body) = lockd.get("/v1/events").await;
    assert_eq!(status, StatusCode::OK);
    let seqs: Vec<u64> = body["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["seq"].as_u64().expect("seq"))
        .collect();
    // Numbered one up per event from the server's start time in µs: 5 events, the newest 3 kept.
    assert_eq!(seqs.len(), 3, "only the newest 3 are kept: {seqs:?}");
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");

    let (_, body) = lockd
        .get(&format!("/v1/events?after={}&limit=1", seqs[0]))
        .await;
    let page = body["events"].as_array().expect("events");
    assert_eq!(page.len(), 1);
    assert_eq!(page[0]["seq"], seqs[1]);

    let (status, body) = lockd.get("/v1/events?limit=0").await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_argument");
    let (status, body) = lockd.get("/v1/events?after=-1").await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_argument");
}

/// Reads server-sent events until `count` `data:` frames have arrived.
async fn read_sse(response: reqwest::Response, count: usize) -> Vec<(String, u64, Value)> {
    let mut stream = response.bytes_stream();
    let mut buffer = String::new();
    let mut frames = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while frames.len() < count {
        let chunk = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("SSE frames within 10 s")
            .expect("stream open")
            .expect("chunk");
        buffer.push_str(std::str::from_utf8(&chunk).expect("utf-8"));
        while let Some(end) = buffer.find("\n\n") {
            let frame: String = buffer.drain(..end + 2).collect();
            let (mut kind, mut id, mut data) = (String::new(), 0, None);
            for line in frame.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    kind = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().parse().expect("numeric id");
                } else if let Some(v) = line.strip_prefix("data:") {
                    data = Some(serde_json::from_str::<Value>(v.trim()).expect("JSON data"));
                }
            }
            if let Some(data) = data {
                frames.push((kind, id, data));
            }
        }
    }
    frames
}

#[tokio::test]
async fn the_stream_delivers_live_events_and_replays_after_a_sequence_number() {
    let lockd = Lockd::start(&[]).await;
    let before = unique("before");
    lockd.acquire(&before, "alice", 30_000).await;

    let response = lockd
        .request(Method::GET, "/v1/events/stream")
        .send()
        .await
        .expect("stream");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream")));
    // The stream has started once the response head arrived; give the subscription a moment.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let object = unique("live");
    let lease = lockd.acquire(&object, "bob", 30_000).await;
    lockd
        .post(
            "/v1/locks/release",
            json!({"object": object, "token": lease["token"]}),
        )
        .await;
    let frames = read_sse(response, 2).await;
    assert_eq!(frames[0].0, "grant");
    assert_eq!(frames[0].2["object"], object.as_str());
    assert_eq!(frames[0].2["owner"], "bob");
    assert_eq!(frames[0].2["fence"], lease["fence"]);
    assert_eq!(frames[0].1, frames[0].2["seq"].as_u64().expect("seq"));
    assert_eq!(frames[1].0, "release");
    assert!(frames.iter().all(|f| f.2.get("token").is_none()));

    // Resuming with Last-Event-ID replays what came after it, starting with the `before` grant.
    let response = lockd
        .request(Method::GET, "/v1/events/stream")
        .header("last-event-id", "0")
        .send()
        .await
        .expect("stream");
    let frames = read_sse(response, 3).await;
    let objects: Vec<&str> = frames
        .iter()
        .map(|f| f.2["object"].as_str().expect("object"))
        .collect();
    assert_eq!(
        objects,
        vec![before.as_str(), object.as_str(), object.as_str()]
    );

    let second = frames[1].1;
    let response = lockd
        .request(Method::GET, &format!("/v1/events/stream?after={second}"))
        .send()
        .await
        .expect("stream");
    let frames = read_sse(response, 1).await;
    assert_eq!(frames[0].1, second + 1);
}
