//! The `lockd serve` process: configuration errors, the non-loopback safety check, precedence
//! of file < environment < flags, restart grace on `memory://`, and graceful shutdown.

mod support;

use std::io::Write as _;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::json;
use support::{assert_error, status_and_json, unique, Lockd};

fn assert_one_clear_line(stderr: &str, needle: &str) {
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("lockd: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "expected one error line, got:\n{stderr}");
    assert!(
        errors[0].contains(needle),
        "{:?} lacks {needle:?}",
        errors[0]
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

type StartCase = (
    Vec<&'static str>,
    Vec<(&'static str, &'static str)>,
    &'static str,
);

#[tokio::test]
async fn missing_or_invalid_settings_fail_at_start_with_one_clear_line() {
    // (flags, environment, what the one error line must name)
    let cases: Vec<StartCase> = vec![
        (
            vec!["--config", "/nonexistent/lockd.toml"],
            vec![],
            "/nonexistent/lockd.toml",
        ),
        (vec!["--max-ttl", "forever"], vec![], "max_ttl"),
        (vec!["--listen", "nowhere"], vec![], "listen address"),
        (vec!["--backend", "ftp://x"], vec![], "unknown scheme"),
        (
            vec![],
            vec![("LOCKD_TOKEN_SECRET", "short")],
            "LOCKD_TOKEN_SECRET",
        ),
        (
            vec!["--token-secret-file", "/nonexistent/secret"],
            vec![],
            "/nonexistent/secret",
        ),
        (vec![], vec![("LOCKD_MAX_WAIT", "whenever")], "max_wait"),
    ];
    for (args, envs, needle) in cases {
        let failed = match Lockd::try_start(&args, &envs).await {
            Ok(_) => panic!("lockd started with {args:?} {envs:?}"),
            Err(failed) => failed,
        };
        assert_eq!(failed.code, Some(1), "{failed:?}");
        assert_one_clear_line(&failed.stderr, needle);
    }
}

#[tokio::test]
async fn a_non_loopback_address_without_api_keys_is_refused_unless_insecure() {
    let failed = match Lockd::try_start(&["--listen", "0.0.0.0:0"], &[]).await {
        Ok(_) => panic!("lockd listened on 0.0.0.0 without API keys"),
        Err(failed) => failed,
    };
    assert_eq!(failed.code, Some(1));
    assert_one_clear_line(&failed.stderr, "--insecure-no-auth");

    let lockd = Lockd::start(&["--listen", "0.0.0.0:0", "--insecure-no-auth"]).await;
    lockd.kill().await;
    let lockd = Lockd::start_with_env(
        &["--listen", "0.0.0.0:0"],
        &[("LOCKD_API_KEYS", "env-key-0123456789abcdef")],
    )
    .await;
    lockd.kill().await;
}

#[tokio::test]
async fn settings_come_from_the_file_then_the_environment_then_flags() {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    writeln!(
        file,
        "max_ttl = \"1s\"\napi_keys = [\"file-key-0123456789abcdef\"]"
    )
    .expect("write");
    let path = file.path().to_str().expect("utf-8 path");
    let ttl_ok = |lockd: &Lockd, ttl_ms: u64| {
        let request = lockd
            .request(Method::POST, "/v1/locks/acquire")
            .json(&json!({"object": unique("p"), "owner": "o", "ttl_ms": ttl_ms}));
        async move { request.send().await.expect("request").status() == StatusCode::OK }
    };

    // The file alone.
    let lockd = Lockd::start(&["--config", path])
        .await
        .with_api_key("file-key-0123456789abcdef");
    assert!(ttl_ok(&lockd, 1000).await);
    assert!(!ttl_ok(&lockd, 1500).await);
    lockd.kill().await;

    // The environment overrides the file.
    let lockd = Lockd::start_with_env(
        &["--config", path],
        &[
            ("LOCKD_MAX_TTL", "2s"),
            ("LOCKD_API_KEYS", "env-key-0123456789abcdef"),
        ],
    )
    .await
    .with_api_key("env-key-0123456789abcdef");
    assert!(ttl_ok(&lockd, 1500).await);
    assert!(!ttl_ok(&lockd, 2500).await);
    lockd.kill().await;

    // Flags override both.
    let lockd = Lockd::start_with_env(
        &[
            "--config",
            path,
            "--max-ttl",
            "3s",
            "--api-key",
            "flag-key-0123456789abcdef",
        ],
        &[
            ("LOCKD_MAX_TTL", "2s"),
            ("LOCKD_API_KEYS", "env-key-0123456789abcdef"),
        ],
    )
    .await
    .with_api_key("flag-key-0123456789abcdef");
    assert!(ttl_ok(&lockd, 2500).await);
    assert!(!ttl_ok(&lockd, 3500).await);
    lockd.kill().await;
}

#[tokio::test]
async fn after_a_crash_memory_grants_nothing_until_old_leases_expired_and_fences_go_on() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().to_str().expect("utf-8 path");

    // A first start on a fresh data dir grants at once.
    let lockd = Lockd::start(&["--data-dir", data_dir]).await;
    let object = unique("grace");
    let old = lockd.acquire(&object, "alice", 2_000).await;
    let granted_at = Instant::now();
    let old_fence = old["fence"].as_u64().expect("fence");
    lockd.kill().await; // SIGKILL: no chance to write anything at exit.

    let lockd = Lockd::start(&["--data-dir", data_dir]).await;
    let (status, body) = lockd
        .post(
            "/v1/locks/acquire",
            json!({"object": object, "owner": "bob", "ttl_ms": 1000}),
        )
        .await;
    let error = assert_error(
        status,
        &body,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
    );
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("restart grace")),
        "{error}"
    );
    // Other objects too: the server does not know what was held before.
    let (status, body) = lockd
        .post(
            "/v1/locks/acquire",
            json!({"object": unique("any"), "owner": "bob", "ttl_ms": 1000}),
        )
        .await;
    assert_error(
        status,
        &body,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
    );

    // Once alice's lease has certainly expired, grants resume, with a higher fence.
    let lease = loop {
        let (status, body) = lockd
            .post(
                "/v1/locks/acquire",
                json!({"object": object, "owner": "bob", "ttl_ms": 1000}),
            )
            .await;
        if status == StatusCode::OK {
            break body;
        }
        assert_error(
            status,
            &body,
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
        );
        assert!(
            granted_at.elapsed() < Duration::from_secs(15),
            "grace never ended"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        granted_at.elapsed() >= Duration::from_millis(2_000),
        "granted after {:?}, before the old lease's TTL ran out",
        granted_at.elapsed()
    );
    assert!(lease["fence"].as_u64().expect("fence") > old_fence);
    lockd.kill().await;
}

/// The sequence numbers of every event the server still has.
async fn event_seqs(lockd: &Lockd) -> Vec<u64> {
    let (_, body) = lockd.get("/v1/events?limit=1000").await;
    body["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["seq"].as_u64().expect("seq"))
        .collect()
}

#[tokio::test]
async fn event_numbers_keep_increasing_across_a_restart() {
    let lockd = Lockd::start(&[]).await;
    for i in 0..3 {
        lockd
            .acquire(&unique(&format!("seq{i}")), "alice", 1_000)
            .await;
    }
    let before = event_seqs(&lockd).await;
    let last_before = *before.last().expect("events before the restart");
    lockd.kill().await;

    let lockd = Lockd::start(&[]).await;
    lockd.acquire(&unique("seq-after"), "bob", 1_000).await;
    let (_, body) = lockd.get(&format!("/v1/events?after={last_before}")).await;
    let resumed = body["events"].as_array().expect("events");
    assert_eq!(
        resumed.len(),
        1,
        "resuming after {last_before} from before the restart: {resumed:?}"
    );
    assert_eq!(resumed[0]["owner"], "bob");
    assert!(event_seqs(&lockd)
        .await
        .iter()
        .all(|&seq| seq > last_before));
}

#[tokio::test]
async fn without_a_data_dir_a_restart_grants_at_once() {
    let lockd = Lockd::start(&[]).await;
    let object = unique("nodir");
    lockd.acquire(&object, "alice", 60_000).await;
    lockd.kill().await;
    let lockd = Lockd::start(&[]).await;
    lockd.acquire(&object, "bob", 1_000).await;
}

#[tokio::test]
async fn sigterm_finishes_requests_in_flight_ends_streams_and_exits_zero() {
    let lockd = Lockd::start(&[]).await;
    let object = unique("drain");
    lockd.acquire(&object, "alice", 1_000).await;
    // A blocking acquire that can only succeed once alice's lease runs out, ~1 s from now.
    let waiter = {
        let request = lockd
            .request(Method::POST, "/v1/locks/acquire")
            .json(&json!({"object": object, "owner": "bob", "ttl_ms": 5_000, "wait_ms": 10_000}));
        tokio::spawn(async move { status_and_json(request.send().await.expect("send")).await })
    };
    // An open event stream must not hold up the shutdown.
    let stream = lockd
        .request(Method::GET, "/v1/events/stream")
        .send()
        .await
        .expect("stream");
    assert_eq!(stream.status(), StatusCode::OK);
    lockd.wait_for_metric("lockd_waiters 1").await;

    lockd.terminate();
    let (status, lease) = waiter.await.expect("waiter task");
    assert_eq!(
        status,
        StatusCode::OK,
        "the request in flight completed: {lease}"
    );
    assert_eq!(lease["owner"], "bob");
    let url = lockd.url.clone();
    let code = lockd.wait().await;
    assert_eq!(code, Some(0));
    assert!(
        reqwest::get(format!("{url}/healthz")).await.is_err(),
        "still accepting connections after exit"
    );
    drop(stream);
}

#[tokio::test]
async fn requests_cut_off_by_the_shutdown_timeout_make_the_exit_code_one() {
    let lockd = Lockd::start(&["--shutdown-timeout", "300ms"]).await;
    let object = unique("cut-off");
    lockd.acquire(&object, "alice", 60_000).await;
    // Waits far longer than the shutdown timeout: alice holds the object for a minute.
    let waiter = {
        let request = lockd
            .request(Method::POST, "/v1/locks/acquire")
            .json(&json!({"object": object, "owner": "bob", "ttl_ms": 5_000, "wait_ms": 30_000}));
        tokio::spawn(async move { request.send().await })
    };
    lockd.wait_for_metric("lockd_waiters 1").await;

    lockd.terminate();
    let code = lockd.wait().await;
    assert_eq!(
        code,
        Some(1),
        "a shutdown that cut off a request must not exit 0"
    );
    let answer = waiter.await.expect("waiter task");
    assert!(
        answer.is_err(),
        "the cut-off request got an answer: {answer:?}"
    );
}

#[tokio::test]
async fn a_clean_shutdown_with_no_lock_held_restarts_without_grace_but_not_with_one_held() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().to_str().expect("utf-8 path");

    // Everything released, then SIGTERM: the next start grants at once.
    let lockd = Lockd::start(&["--data-dir", data_dir]).await;
    let object = unique("clean");
    let lease = lockd.acquire(&object, "alice", 60_000).await;
    lockd
        .post(
            "/v1/locks/release",
            json!({"object": object, "token": lease["token"]}),
        )
        .await;
    lockd.terminate();
    assert_eq!(lockd.wait().await, Some(0));
    let lockd = Lockd::start(&["--data-dir", data_dir]).await;
    let again = lockd.acquire(&object, "bob", 60_000).await;
    assert!(again["fence"].as_u64() > lease["fence"].as_u64());

    // A lock still held at SIGTERM: the next start waits it out.
    lockd.terminate();
    assert_eq!(lockd.wait().await, Some(0));
    let lockd = Lockd::start(&["--data-dir", data_dir]).await;
    let (status, body) = lockd
        .post(
            "/v1/locks/acquire",
            json!({"object": unique("other"), "owner": "carol", "ttl_ms": 1000}),
        )
        .await;
    assert_error(
        status,
        &body,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
    );
    lockd.kill().await;
}
