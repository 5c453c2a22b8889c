//! `wanted` notices, event filters and contention metrics by prefix, against the real binary on
//! memory://: a holder learns that someone waits for what it holds (once per waiting request,
//! not once per retry), follows only its own notices, and an operator sees from /metrics which
//! directories are hot.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Setup failures should fail the test loudly.

mod support;

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use lockcore::{LockError, LockMode, LockService, ObjectId, OwnerId};
use lockd_client::{
    ClientConfig, EventFilter, EventKind, EventSource, LeaseGuard, LockdClient, Wanted,
};
use lockd_grpc::pb;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use support::{assert_error, unique, Lockd};

/// The events `GET /v1/events?QUERY` returns (`limit=1000` unless the query sets one).
async fn events_where(lockd: &Lockd, query: &str) -> Vec<Value> {
    let limit = if query.contains("limit=") {
        ""
    } else {
        "limit=1000&"
    };
    let (status, body) = lockd.get(&format!("/v1/events?{limit}{query}")).await;
    assert_eq!(status, StatusCode::OK, "{query}: {body}");
    body["events"].as_array().expect("events array").clone()
}

fn kinds(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .map(|e| e["kind"].as_str().expect("kind"))
        .collect()
}

fn seqs(events: &[Value]) -> Vec<u64> {
    events
        .iter()
        .map(|e| e["seq"].as_u64().expect("seq"))
        .collect()
}

/// `text` percent-encoded for a query string.
fn enc(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Acquires `object` in `mode` for `owner`, asserting the grant.
async fn hold(lockd: &Lockd, object: &str, owner: &str, mode: &str) -> Value {
    let (status, body) = lockd
        .post(
            "/v1/locks/acquire",
            json!({"object": object, "owner": owner, "ttl_ms": 30_000, "mode": mode}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// An acquire of `object` for `owner` that may wait `wait_ms`: its status and body.
async fn acquire_waiting(
    lockd: &Lockd,
    object: &str,
    owner: &str,
    wait_ms: u64,
) -> (StatusCode, Value) {
    lockd
        .post(
            "/v1/locks/acquire",
            json!({"object": object, "owner": owner, "ttl_ms": 30_000, "wait_ms": wait_ms}),
        )
        .await
}

async fn release(lockd: &Lockd, lease: &Value) {
    let (status, body) = lockd
        .post(
            "/v1/locks/release",
            json!({"object": lease["object"], "token": lease["token"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// Polls (at most 10 s) until `GET /v1/events?QUERY` returns at least `count` events.
async fn wait_for_events(lockd: &Lockd, query: &str, count: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let events = events_where(lockd, query).await;
        if events.len() >= count {
            return events;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "fewer than {count} events for {query}: {events:#?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Wanted notices.

/// A waiter behind two shared holders gives each of them one `wanted` notice, even though it
/// retries while it waits (every 2 s, past which this wait runs); a second waiting request gives
/// its own; an acquire that does not wait gives none.
#[tokio::test]
async fn a_waiting_request_notifies_each_blocking_holder_once_not_once_per_retry() {
    let lockd = Lockd::start(&[]).await;
    let object = unique("shared-file");
    let alice = hold(&lockd, &object, "alice", "shared").await;
    let bob = hold(&lockd, &object, "bob", "shared").await;

    let (status, body) = acquire_waiting(&lockd, &object, "carol", 2_600).await;
    assert_error(status, &body, StatusCode::CONFLICT, "locked");
    let query = format!("kind=wanted&object={}", enc(&object));
    let wanted = events_where(&lockd, &query).await;
    assert_eq!(wanted.len(), 2, "one per holder: {wanted:#?}");
    let mut holders: Vec<(&str, &Value)> = wanted
        .iter()
        .map(|e| (e["owner"].as_str().expect("owner"), &e["fence"]))
        .collect();
    holders.sort_by_key(|(owner, _)| *owner);
    assert_eq!(
        holders,
        vec![("alice", &alice["fence"]), ("bob", &bob["fence"])]
    );
    for event in &wanted {
        assert_eq!(event["waiter"], "carol", "{event}");
        assert_eq!(event["mode"], "exclusive", "{event}");
        assert_eq!(event["object"], object.as_str(), "{event}");
    }

    let (status, _) = acquire_waiting(&lockd, &object, "dave", 0).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(
        events_where(&lockd, &query).await.len(),
        2,
        "no wait, no notice"
    );
    let (status, _) = acquire_waiting(&lockd, &object, "dave", 200).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let wanted = events_where(&lockd, &query).await;
    assert_eq!(wanted.len(), 4, "{wanted:#?}");
    assert!(wanted[2..].iter().all(|e| e["waiter"] == "dave"));
    // A shared request behind shared holders does not wait, so wants nothing.
    let erin = hold(&lockd, &object, "erin", "shared").await;
    release(&lockd, &erin).await;
    assert_eq!(events_where(&lockd, &query).await.len(), 4);
}

/// The holder hears of the waiter while it waits: the notice comes before the holder releases,
/// and the waiter is then granted.
#[tokio::test]
async fn the_notice_reaches_the_holder_while_the_waiter_waits() {
    let lockd = Lockd::start(&[]).await;
    let object = unique("file");
    let alice = lockd.acquire(&object, "alice", 30_000).await;
    let query = format!("owner=alice&kind=wanted&object={}", enc(&object));
    let waiter = acquire_waiting(&lockd, &object, "bob", 10_000);
    let holder = async {
        let notice = wait_for_events(&lockd, &query, 1).await;
        assert_eq!(notice[0]["waiter"], "bob");
        assert_eq!(notice[0]["fence"], alice["fence"]);
        release(&lockd, &alice).await;
    };
    let ((status, granted), ()) = tokio::join!(waiter, holder);
    assert_eq!(status, StatusCode::OK, "{granted}");
    let log = events_where(&lockd, &format!("object={}", enc(&object))).await;
    assert_eq!(kinds(&log), vec!["grant", "wanted", "release", "grant"]);
    assert_eq!(log[3]["owner"], "bob");
}

// ---------------------------------------------------------------------------------------------
// Filters.

/// Two directories, two owners, grants, a release and a wanted notice: the events each filter
/// of `GET /v1/events` selects.
#[tokio::test]
async fn each_event_filter_selects_its_events_and_they_combine() {
    let lockd = Lockd::start(&[]).await;
    let root = unique("filters");
    let (ax, ay, bz) = (
        format!("{root}/a/x"),
        format!("{root}/a/y"),
        format!("{root}/b/z"),
    );
    let alice_ax = lockd.acquire(&ax, "alice", 30_000).await;
    let bob_ay = lockd.acquire(&ay, "bob", 30_000).await;
    let alice_bz = lockd.acquire(&bz, "alice", 30_000).await;
    release(&lockd, &alice_bz).await;
    let (status, _) = acquire_waiting(&lockd, &ax, "bob", 200).await;
    assert_eq!(status, StatusCode::CONFLICT);

    let all = events_where(&lockd, &format!("prefix={}", enc(&root))).await;
    assert_eq!(
        kinds(&all),
        vec!["grant", "grant", "grant", "release", "wanted"]
    );

    let by_object = events_where(&lockd, &format!("object={}", enc(&ax))).await;
    assert_eq!(kinds(&by_object), vec!["grant", "wanted"]);
    assert!(by_object.iter().all(|e| e["object"] == ax.as_str()));

    let two_objects =
        events_where(&lockd, &format!("object={}&object={}", enc(&ax), enc(&bz))).await;
    assert_eq!(two_objects.len(), 4, "{two_objects:#?}");

    let dir_a = events_where(&lockd, &format!("prefix={}", enc(&format!("{root}/a/")))).await;
    assert_eq!(kinds(&dir_a), vec!["grant", "grant", "wanted"]);

    let bobs = events_where(&lockd, &format!("owner=bob&prefix={}", enc(&root))).await;
    assert_eq!(
        kinds(&bobs),
        vec!["grant"],
        "a wanted notice is the holder's"
    );
    assert_eq!(bobs[0]["fence"], bob_ay["fence"]);

    let wanted = events_where(&lockd, "kind=wanted").await;
    assert_eq!(wanted.len(), 1);
    assert_eq!(wanted[0]["owner"], "alice");
    assert_eq!(wanted[0]["fence"], alice_ax["fence"]);
    assert_eq!(wanted[0]["waiter"], "bob");

    let listed = events_where(&lockd, &format!("kind=grant,release&prefix={}", enc(&root))).await;
    let repeated = events_where(
        &lockd,
        &format!("kind=grant&kind=release&prefix={}", enc(&root)),
    )
    .await;
    assert_eq!(kinds(&listed), vec!["grant", "grant", "grant", "release"]);
    assert_eq!(listed, repeated);

    let combined = events_where(
        &lockd,
        &format!("owner=alice&kind=wanted,release&prefix={}", enc(&root)),
    )
    .await;
    assert_eq!(kinds(&combined), vec!["release", "wanted"]);

    // Filtered events keep the log's numbers, so paging and resuming skip nothing that passes.
    let all_seqs = seqs(&all);
    assert_eq!(seqs(&combined), vec![all_seqs[3], all_seqs[4]]);
    let page = events_where(
        &lockd,
        &format!(
            "owner=alice&prefix={}&after={}&limit=1",
            enc(&root),
            all_seqs[0]
        ),
    )
    .await;
    assert_eq!(seqs(&page), vec![all_seqs[2]]);
}

/// An unknown kind, an empty object and too many values are `400 invalid_argument` naming
/// the parameter, on the page and on the stream.
#[tokio::test]
async fn bad_filters_are_invalid_arguments() {
    let lockd = Lockd::start(&[]).await;
    let many: String = (0..65).map(|i| format!("owner=o{i}&")).collect();
    for (query, field) in [
        ("kind=granted", "kind"),
        ("kind=grant,nope", "kind"),
        ("kind=unknown", "kind"),
        ("object=", "object"),
        (many.as_str(), "owner"),
    ] {
        for path in ["/v1/events", "/v1/events/stream"] {
            let (status, body) = lockd.get(&format!("{path}?{query}")).await;
            let error = assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_argument");
            assert_eq!(error["field"], field, "{path}?{query}: {body}");
        }
    }
}

/// Reads server-sent events until `count` `data:` frames have arrived: (event, id, data).
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

/// A filtered stream replays the retained events that pass, then sends live ones that pass,
/// each with its log number as the SSE id; resuming after one skips nothing that passes.
#[tokio::test]
async fn a_filtered_stream_sends_only_what_passes_and_resumes_by_log_number() {
    let lockd = Lockd::start(&[]).await;
    let object = unique("streamed");
    let lease = lockd.acquire(&object, "alice", 30_000).await;
    let (status, _) = acquire_waiting(&lockd, &object, "bob", 100).await;
    assert_eq!(status, StatusCode::CONFLICT);

    let path = format!(
        "/v1/events/stream?owner=alice&kind=wanted&object={}",
        enc(&object)
    );
    let response = lockd
        .request(Method::GET, &path)
        .header("last-event-id", "0")
        .send()
        .await
        .expect("stream");
    assert_eq!(response.status(), StatusCode::OK);
    // Live: a grant elsewhere and alice's grant of another object do not pass; a second
    // waiter's notice does.
    lockd.acquire(&unique("elsewhere"), "alice", 30_000).await;
    let (status, _) = acquire_waiting(&lockd, &object, "carol", 100).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let frames = read_sse(response, 2).await;
    assert_eq!(frames[0].0, "wanted");
    assert_eq!(frames[0].2["waiter"], "bob");
    assert_eq!(frames[0].2["fence"], lease["fence"]);
    assert_eq!(frames[1].0, "wanted");
    assert_eq!(frames[1].2["waiter"], "carol");
    for (_, id, data) in &frames {
        assert_eq!(Some(*id), data["seq"].as_u64());
    }

    let response = lockd
        .request(Method::GET, &path)
        .header("last-event-id", frames[0].1.to_string())
        .send()
        .await
        .expect("stream");
    let resumed = read_sse(response, 1).await;
    assert_eq!(resumed[0].1, frames[1].1);
}

/// gRPC `Events` takes the same filters; an unspecified kind is INVALID_ARGUMENT.
#[tokio::test]
async fn grpc_events_take_the_same_filters() {
    let lockd = Lockd::start(&[]).await;
    let object = unique("grpc");
    let lease = lockd.acquire(&object, "alice", 30_000).await;
    lockd.acquire(&unique("other"), "alice", 30_000).await;
    let (status, _) = acquire_waiting(&lockd, &object, "bob", 100).await;
    assert_eq!(status, StatusCode::CONFLICT);

    let raw = lockd_grpc::GrpcClient::new(lockd_grpc::GrpcConfig::from_url(
        lockd.grpc_url.clone().expect("gRPC on"),
    ))
    .expect("client");
    let stream = raw
        .events_with(pb::EventsRequest {
            after: Some(0),
            owners: vec!["alice".into()],
            kinds: vec![pb::EventKind::Wanted as i32, pb::EventKind::Grant as i32],
            objects: vec![object.clone()],
            ..pb::EventsRequest::default()
        })
        .await
        .expect("Events opens");
    let mut stream = std::pin::pin!(stream);
    let mut received = Vec::new();
    while received.len() < 2 {
        let event = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("an event within 10 s")
            .expect("stream open")
            .expect("an event");
        received.push(event);
    }
    let (grant, wanted) = (&received[0], &received[1]);
    assert_eq!(grant.kind, pb::EventKind::Grant as i32);
    assert_eq!(grant.object, object);
    assert_eq!(wanted.kind, pb::EventKind::Wanted as i32);
    assert_eq!(wanted.owner, "alice");
    assert_eq!(wanted.waiter, "bob");
    assert_eq!(Some(wanted.fence), lease["fence"].as_u64());
    assert_eq!(wanted.mode, pb::LockMode::Exclusive as i32);

    let refused = match raw
        .events_with(pb::EventsRequest {
            kinds: vec![pb::EventKind::Unspecified as i32],
            ..pb::EventsRequest::default()
        })
        .await
    {
        Ok(_) => panic!("an unspecified kind was accepted"),
        Err(refused) => refused,
    };
    assert!(
        matches!(refused, LockError::InvalidArgument { field: "kind", .. }),
        "{refused:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Contention metrics.

/// /metrics text.
async fn metrics(lockd: &Lockd) -> String {
    lockd
        .request(Method::GET, "/metrics")
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text")
}

/// The value of the sample line starting with `series ` (0 when absent).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |value| value.trim().parse().expect("a number"))
}

/// Contention and hold times land under the objects' prefix (two segments by default): a
/// refused acquire and a waiter that got in each count once, with their wait, and the leases
/// that ended have their hold time.
#[tokio::test]
async fn contention_and_hold_times_are_counted_by_prefix() {
    let lockd = Lockd::start(&[]).await;
    let hot = format!("/hot{}", std::process::id());
    let object = format!("{hot}/dir/file");
    let prefix = format!("{hot}/dir");
    let alice = lockd.acquire(&object, "alice", 30_000).await;
    let (status, _) = acquire_waiting(&lockd, &object, "bob", 0).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let waiter = acquire_waiting(&lockd, &object, "carol", 10_000);
    let holder = async {
        wait_for_events(&lockd, "kind=wanted", 1).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        release(&lockd, &alice).await;
    };
    let ((status, carol), ()) = tokio::join!(waiter, holder);
    assert_eq!(status, StatusCode::OK, "{carol}");
    release(&lockd, &carol).await;
    // An uncontended lock elsewhere counts its hold time only.
    let quiet = lockd.acquire("/quiet/dir/file", "dave", 30_000).await;
    release(&lockd, &quiet).await;

    let text = metrics(&lockd).await;
    let series = |name: &str, labels: &str| format!("{name}{{prefix=\"{prefix}\"{labels}}}");
    assert_eq!(
        sample(
            &text,
            &series("lockd_contended_acquires_total", ",outcome=\"refused\"")
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            &series("lockd_contended_acquires_total", ",outcome=\"granted\"")
        ),
        1.0
    );
    assert_eq!(
        sample(&text, &series("lockd_contention_wait_seconds_count", "")),
        2.0
    );
    let waited = sample(&text, &series("lockd_contention_wait_seconds_sum", ""));
    assert!(waited >= 0.1, "carol waited at least 100 ms: {waited}");
    assert_eq!(
        sample(&text, &series("lockd_hold_seconds_count", "")),
        2.0,
        "{text}"
    );
    let held = sample(&text, &series("lockd_hold_seconds_sum", ""));
    assert!(held >= 0.1, "alice held at least 100 ms: {held}");
    assert_eq!(
        sample(&text, "lockd_hold_seconds_count{prefix=\"/quiet/dir\"}"),
        1.0
    );
    assert!(!text.contains("lockd_contended_acquires_total{prefix=\"/quiet/dir\""));
}

/// `--metrics-prefix-depth` sets how much of the path names a prefix, and beyond 256 distinct
/// prefixes the rest count under `other`.
#[tokio::test]
async fn prefixes_follow_the_configured_depth_and_overflow_to_other() {
    let lockd = Lockd::start(&["--metrics-prefix-depth", "1"]).await;
    for i in 0..260 {
        let object = format!("/d{i}/sub/file");
        lockd.acquire(&object, "alice", 30_000).await;
        let (status, _) = acquire_waiting(&lockd, &object, "bob", 0).await;
        assert_eq!(status, StatusCode::CONFLICT);
    }
    let text = metrics(&lockd).await;
    assert_eq!(sample(&text, "lockd_metric_prefixes"), 256.0, "{text}");
    assert_eq!(
        sample(
            &text,
            "lockd_contended_acquires_total{prefix=\"/d0\",outcome=\"refused\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            "lockd_contended_acquires_total{prefix=\"other\",outcome=\"refused\"}"
        ),
        4.0
    );
    assert!(!text.contains("prefix=\"/d259\""), "past the cap");
    let labelled = text
        .lines()
        .filter(|l| l.starts_with("lockd_contended_acquires_total{"))
        .count();
    assert_eq!(labelled, 257, "256 prefixes and other");
}

// ---------------------------------------------------------------------------------------------
// LeaseGuard::wanted.

fn http_client(lockd: &Lockd) -> LockdClient {
    LockdClient::new(ClientConfig::from_url(&lockd.url)).expect("client")
}

fn grpc_client(lockd: &Lockd) -> lockd_grpc::GrpcClient {
    lockd_grpc::GrpcClient::new(lockd_grpc::GrpcConfig::from_url(
        lockd.grpc_url.clone().expect("gRPC on"),
    ))
    .expect("client")
}

/// Guards `object` for `owner` over HTTP.
async fn guard(lockd: &Lockd, object: &ObjectId, owner: &str) -> LeaseGuard {
    let service: Arc<dyn LockService> = Arc::new(http_client(lockd));
    LeaseGuard::acquire(
        service,
        object,
        &OwnerId::new(owner).unwrap(),
        Duration::from_secs(30),
        Duration::ZERO,
    )
    .await
    .expect("granted")
}

/// `wanted()` resolves when a request starts waiting for the guarded lease, naming the waiter,
/// over either event source; the holder then releases and the waiter gets in.
async fn the_guard_hears_the_waiter(events: &impl EventSource, lockd: &Lockd, name: &str) {
    let object = ObjectId::new(unique(name)).unwrap();
    let holder = guard(lockd, &object, "holder").await;
    let waiter = http_client(lockd);
    let reader = OwnerId::new("reader").unwrap();
    let waiting = waiter.acquire_in(
        &object,
        LockMode::Shared,
        &reader,
        Duration::from_secs(30),
        Duration::from_secs(10),
    );
    let notified = async {
        let wanted: Wanted = tokio::time::timeout(Duration::from_secs(10), holder.wanted(events))
            .await
            .expect("a notice within 10 s")
            .expect("wanted");
        assert_eq!(wanted.object, object);
        assert_eq!(wanted.fence, holder.fence());
        assert_eq!(wanted.waiter, "reader");
        assert_eq!(wanted.mode, LockMode::Shared);
        holder.release().await.expect("released");
    };
    let (granted, ()) = tokio::join!(waiting, notified);
    let granted = granted.expect("the reader got in after the release");
    waiter.release(&object, &granted.token).await.unwrap();
}

#[tokio::test]
async fn a_lease_guard_hears_that_its_lease_is_wanted_over_http_and_grpc() {
    let lockd = Lockd::start(&[]).await;
    the_guard_hears_the_waiter(&http_client(&lockd), &lockd, "guard-http").await;
    the_guard_hears_the_waiter(&grpc_client(&lockd), &lockd, "guard-grpc").await;
}

/// A notice recorded before `wanted()` is called still counts; one for another lease of the
/// same owner does not.
#[tokio::test]
async fn a_notice_that_came_before_the_call_counts() {
    let lockd = Lockd::start(&[]).await;
    let (mine, theirs) = (
        ObjectId::new(unique("early")).unwrap(),
        ObjectId::new(unique("not-mine")).unwrap(),
    );
    let holder = guard(&lockd, &mine, "holder").await;
    let _other = guard(&lockd, &theirs, "holder").await;
    for object in [&theirs, &mine] {
        let refused = http_client(&lockd)
            .acquire(
                object,
                &OwnerId::new("waiter").unwrap(),
                Duration::from_secs(30),
                Duration::from_millis(100),
            )
            .await;
        assert!(
            matches!(refused, Err(LockError::Locked { .. })),
            "{refused:?}"
        );
    }
    let wanted = tokio::time::timeout(Duration::from_secs(10), holder.wanted(&http_client(&lockd)))
        .await
        .expect("resolves from the log")
        .expect("wanted");
    assert_eq!(wanted.object, mine);
    assert_eq!(wanted.waiter, "waiter");
}

/// Once the guard's lease is lost, nobody can want it: `wanted()` fails with `NotHeld`.
#[tokio::test]
async fn wanted_fails_once_the_lease_is_lost() {
    let lockd = Lockd::start(&[]).await;
    let object = ObjectId::new(unique("lost")).unwrap();
    let service: Arc<dyn LockService> = Arc::new(http_client(&lockd));
    let holder = LeaseGuard::acquire(
        service.clone(),
        &object,
        &OwnerId::new("holder").unwrap(),
        Duration::from_millis(600),
        Duration::ZERO,
    )
    .await
    .expect("granted");
    // Someone releases the lease behind the guard's back: its next renewal is refused.
    service.release(&object, &holder.token()).await.unwrap();
    let outcome =
        tokio::time::timeout(Duration::from_secs(10), holder.wanted(&http_client(&lockd)))
            .await
            .expect("resolves once lost");
    assert!(
        matches!(outcome, Err(LockError::NotHeld { .. })),
        "{outcome:?}"
    );
}

/// The filter a guard uses is an ordinary one: a client can follow its own notices too.
#[tokio::test]
async fn a_client_follows_its_own_notices_with_a_filter() {
    let lockd = Lockd::start(&[]).await;
    let object = unique("own");
    lockd.acquire(&object, "me", 30_000).await;
    lockd
        .acquire(&unique("someone"), "someone-else", 30_000)
        .await;
    let (status, _) = acquire_waiting(&lockd, &object, "you", 100).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let client = http_client(&lockd);
    let filter = EventFilter::default().owner("me").kind(EventKind::Wanted);
    let page = client.events_with(None, 100, &filter).await.unwrap();
    assert_eq!(page.len(), 1, "{page:?}");
    assert_eq!(page[0].waiter.as_deref(), Some("you"));
    let mut stream = client.follow(Some(0), &filter).await.unwrap();
    let first = stream.next().await.expect("an event").expect("ok");
    assert_eq!(first.seq, page[0].seq);
}
