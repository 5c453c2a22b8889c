//! `https://` with a private CA: the client trusts lockd's certificate only through `ca_file`.

#![allow(clippy::unwrap_used)] // Test helpers panic on setup failures by design.

mod common;

use std::time::Duration;

use common::{grant_body, test_tls_acceptor, FakeLockd};
use lockcore::{Fence, LockError, LockService, ObjectId, OwnerId};
use lockd_client::{ClientConfig, LockdClient};

const CA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/test-ca.pem");

async fn tls_lockd() -> FakeLockd {
    FakeLockd::start_with(Some(test_tls_acceptor()), |_| {
        (
            200,
            grant_body("/vol/tls", "node-1", 11, 5_000),
            Duration::ZERO,
        )
    })
    .await
}

fn names() -> (ObjectId, OwnerId) {
    (
        ObjectId::new("/vol/tls").unwrap(),
        OwnerId::new("node-1").unwrap(),
    )
}

/// With the private CA in `ca_file`, requests go over TLS and carry the API key inside it.
#[tokio::test]
async fn a_private_ca_in_ca_file_is_trusted() {
    let lockd = tls_lockd().await;
    assert!(lockd.url.starts_with("https://localhost:"));
    let config = ClientConfig::from_url(&lockd.url)
        .with_ca_file(CA)
        .with_api_key("tls-key");
    let client = LockdClient::new(config).unwrap();
    let (object, owner) = names();
    let lease = client
        .acquire(&object, &owner, Duration::from_secs(5), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(lease.fence, Fence(11));
    assert_eq!(lockd.seen()[0].headers["authorization"], "Bearer tls-key");
}

/// Without it, the certificate is refused: `Unavailable`, and no request reaches the server.
#[tokio::test]
async fn an_untrusted_certificate_is_refused() {
    let lockd = tls_lockd().await;
    let client = LockdClient::new(ClientConfig::from_url(&lockd.url)).unwrap();
    let (object, owner) = names();
    let err = client
        .acquire(&object, &owner, Duration::from_secs(5), Duration::ZERO)
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
    assert!(lockd.seen().is_empty());
}
