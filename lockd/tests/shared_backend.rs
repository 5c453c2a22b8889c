//! Several lockd processes sharing one Redis or PostgreSQL (from `LOCKD_TEST_REDIS_URL` /
//! `LOCKD_TEST_POSTGRES_URL`; skipped loudly when unset, a failure under
//! `LOCKD_REQUIRE_BACKENDS=1`): they exclude each other, accept each other's tokens, and with a
//! shared secret every token verifies offline under that one secret.

mod support;

use lockcore::{ObjectId, TokenSecret, TokenVerifier};
use reqwest::StatusCode;
use serde_json::json;
use support::{assert_error, unique, Lockd};

const SECRET: &str = "shared-secret-for-tests-0123456789abcdef";

async fn two_processes_share_one_backend(name: &str, var: &str) {
    let Ok(backend) = std::env::var(var) else {
        conformance_tests::skip_or_fail(name, &format!("{var} is not set"));
        return;
    };
    let env = [("LOCKD_TOKEN_SECRET", SECRET)];
    let a = Lockd::start_with_env(&["--backend", &backend], &env).await;
    let b = Lockd::start_with_env(&["--backend", &backend], &env).await;
    let object = unique("shared");

    let lease = a.acquire(&object, "alice", 30_000).await;
    let (status, body) = b
        .post(
            "/v1/locks/acquire",
            json!({"object": object, "owner": "bob", "ttl_ms": 1000}),
        )
        .await;
    let error = assert_error(status, &body, StatusCode::CONFLICT, "locked");
    assert_eq!(error["holder"], "alice");

    let (status, info) = b
        .post(
            "/v1/locks/validate",
            json!({"object": object, "token": lease["token"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{info}");
    assert_eq!(info["fence"], lease["fence"]);

    // A DFS node holding the shared secret verifies the token offline.
    let verifier = TokenVerifier::new(TokenSecret::new(SECRET).expect("long enough"));
    let fence = verifier
        .verify(
            &ObjectId::new(&object).expect("valid"),
            lease["token"].as_str().expect("token"),
        )
        .expect("authentic");
    assert_eq!(Some(fence.get()), lease["fence"].as_u64());

    let (status, released) = b
        .post(
            "/v1/locks/release",
            json!({"object": object, "token": lease["token"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{released}");
    let next = b.acquire(&object, "bob", 30_000).await;
    assert!(next["fence"].as_u64() > lease["fence"].as_u64());
    let (status, body) = a
        .post(
            "/v1/locks/release",
            json!({"object": object, "token": lease["token"]}),
        )
        .await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "token_mismatch");
    a.kill().await;
    b.kill().await;
}

#[tokio::test]
async fn two_lockd_processes_share_redis() {
    two_processes_share_one_backend("lockd processes sharing redis", "LOCKD_TEST_REDIS_URL").await;
}

#[tokio::test]
async fn two_lockd_processes_share_postgres() {
    two_processes_share_one_backend(
        "lockd processes sharing postgres",
        "LOCKD_TEST_POSTGRES_URL",
    )
    .await;
}
