//! `lockd-bench` as an operator runs it, against a scripted lockd: it refuses remote targets,
//! checks readiness first, does exactly the pairs asked for, and reports them.

#![cfg(feature = "bench")]
#![allow(clippy::unwrap_used)] // Test helpers panic on setup failures by design.

mod common;

use std::process::Output;
use std::time::Duration;

use common::{grant_body, FakeLockd};

async fn bench(args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_lockd-bench"))
        .args(args)
        .env_remove("LOCKD_API_KEY")
        .output()
        .await
        .unwrap()
}

/// Grants every acquire and releases every release, like an idle lockd.
async fn granting_lockd() -> FakeLockd {
    FakeLockd::start(|seen| {
        let body = match seen.target.as_str() {
            "/readyz" => r#"{"status":"ready"}"#.to_owned(),
            "/v1/locks/acquire" => grant_body(
                seen.body["object"].as_str().unwrap_or("x"),
                seen.body["owner"].as_str().unwrap_or("o"),
                1,
                30_000,
            ),
            _ => r#"{"object":"x","fence":1}"#.to_owned(),
        };
        (200, body, Duration::ZERO)
    })
    .await
}

/// A non-loopback target is refused unless `--allow-remote` is given; nothing is sent.
#[tokio::test]
async fn a_remote_target_is_refused_without_allow_remote() {
    let output = bench(&["--url", "http://192.0.2.1:7070", "--pairs", "1"]).await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--allow-remote"), "{stderr}");
}

/// `--pairs N` makes exactly N acquire+release pairs, split over the clients, and the JSON
/// summary reports them.
#[tokio::test]
async fn pairs_mode_does_exactly_the_pairs_asked_for() {
    let lockd = granting_lockd().await;
    let output = bench(&[
        "--url", &lockd.url, "-c", "4", "--pairs", "40", "--warmup", "0s", "--json",
    ])
    .await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["pairs"], 40);
    assert_eq!(summary["concurrency"], 4);
    assert!(summary["pairs_per_sec"].as_f64().unwrap() > 0.0);
    assert!(
        summary["pair_ms"]["p999"].as_f64().unwrap() >= summary["pair_ms"]["p50"].as_f64().unwrap()
    );

    let seen = lockd.seen();
    let count = |target: &str| seen.iter().filter(|s| s.target == target).count();
    assert_eq!(count("/readyz"), 1);
    assert_eq!(count("/v1/locks/acquire"), 40);
    assert_eq!(count("/v1/locks/release"), 40);
    let released_with_the_granted_token = seen
        .iter()
        .filter(|s| s.target == "/v1/locks/release")
        .all(|s| {
            s.body["token"]
                .as_str()
                .is_some_and(|t| t.starts_with("lk2."))
        });
    assert!(released_with_the_granted_token);
}

/// Contended mode uses only K objects and blocking acquires.
#[tokio::test]
async fn contended_mode_uses_only_k_objects_and_waits() {
    let lockd = granting_lockd().await;
    let output = bench(&[
        "--url",
        &lockd.url,
        "-c",
        "3",
        "--contended",
        "2",
        "--pairs",
        "30",
        "--warmup",
        "0s",
    ])
    .await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("30 pairs"), "{stdout}");
    assert!(stdout.contains("p999"), "{stdout}");
    let acquires: Vec<_> = lockd
        .seen()
        .into_iter()
        .filter(|s| s.target == "/v1/locks/acquire")
        .collect();
    let objects: std::collections::BTreeSet<_> = acquires
        .iter()
        .map(|s| s.body["object"].to_string())
        .collect();
    assert!(objects.len() <= 2, "{objects:?}");
    assert!(acquires.iter().all(|s| s.body["wait_ms"] == 5000));
}

/// A lockd that is not ready stops the run before any load is sent.
#[tokio::test]
async fn an_unready_lockd_stops_the_run() {
    let lockd = FakeLockd::start(|_| {
        (
            503,
            r#"{"error":{"code":"unavailable","message":"backend down"}}"#.to_owned(),
            Duration::ZERO,
        )
    })
    .await;
    let output = bench(&["--url", &lockd.url, "--pairs", "5"]).await;
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("not ready"));
    assert!(lockd.seen().iter().all(|s| s.target == "/readyz"));
}

/// `--mode shared --objects-per-request 3` sends every acquire as three distinct shared
/// objects and every release as one batch of the three granted tokens.
#[tokio::test]
async fn modes_and_several_objects_per_request_shape_every_pair() {
    let lockd = FakeLockd::start(|seen| {
        let body = match seen.target.as_str() {
            "/readyz" => r#"{"status":"ready"}"#.to_owned(),
            "/v1/locks/acquire" => {
                let locks: Vec<serde_json::Value> = seen.body["objects"]
                    .as_array()
                    .map(|specs| {
                        specs
                            .iter()
                            .map(|spec| {
                                let object = spec["object"].as_str().unwrap_or("x");
                                serde_json::json!({"object": object, "mode": spec["mode"],
                                    "token": common::token(object, 1).expose(), "fence": 1})
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                serde_json::json!({"owner": "o", "ttl_ms": 30_000, "locks": locks}).to_string()
            }
            _ => {
                let results: Vec<serde_json::Value> = seen.body["locks"]
                    .as_array()
                    .map(|locks| {
                        locks
                            .iter()
                            .map(|l| serde_json::json!({"object": l["object"], "fence": 1}))
                            .collect()
                    })
                    .unwrap_or_default();
                serde_json::json!({ "results": results }).to_string()
            }
        };
        (200, body, Duration::ZERO)
    })
    .await;
    let output = bench(&[
        "--url",
        &lockd.url,
        "-c",
        "2",
        "--pairs",
        "10",
        "--warmup",
        "0s",
        "--mode",
        "shared",
        "--objects-per-request",
        "3",
        "--contended",
        "4",
        "--json",
    ])
    .await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["pairs"], 10);
    assert_eq!(summary["objects_per_request"], 3);
    assert_eq!(summary["lock_mode"], "shared");
    let seen = lockd.seen();
    let acquires: Vec<_> = seen
        .iter()
        .filter(|s| s.target == "/v1/locks/acquire")
        .collect();
    assert_eq!(acquires.len(), 10);
    for acquire in &acquires {
        let specs = acquire.body["objects"].as_array().unwrap();
        assert_eq!(specs.len(), 3);
        assert!(specs.iter().all(|s| s["mode"] == "shared"));
        let distinct: std::collections::BTreeSet<_> =
            specs.iter().map(|s| s["object"].to_string()).collect();
        assert_eq!(distinct.len(), 3);
    }
    let releases: Vec<_> = seen
        .iter()
        .filter(|s| s.target == "/v1/locks/release")
        .collect();
    assert_eq!(releases.len(), 10);
    assert!(releases
        .iter()
        .all(|s| s.body["locks"].as_array().is_some_and(|l| l.len() == 3)));
}
