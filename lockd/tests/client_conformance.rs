//! The whole shared conformance suite through the network: `lockd-client` -> the real `lockd`
//! binary -> memory, Redis (`LOCKD_TEST_REDIS_URL`) and Postgres (`LOCKD_TEST_POSTGRES_URL`).
//!
//! One server per backend is shared by every test of this binary (each check uses its own
//! object prefix, so they run in parallel against it); see [`SharedServer`].
//!
//! The memory server runs with an API key, so every endpoint is also exercised authenticated.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Setup failures should fail the test loudly.

mod support;

use std::sync::{Arc, OnceLock};

use lockcore::LockService;
use lockd_client::{ClientConfig, LockdClient};
use support::shared::{backend_from_env, SharedServer};

/// The API key the shared memory server requires.
const API_KEY: &str = "client-conformance-key";

/// A client of the shared server for `backend`, started on first use.
fn client_of(
    cell: &'static OnceLock<Result<SharedServer, String>>,
    backend: &str,
    api_key: Option<&str>,
) -> Arc<dyn LockService> {
    let server = cell.get_or_init(|| SharedServer::start(backend, api_key, &[]));
    let server = match server {
        Ok(server) => server,
        Err(e) => panic!("shared lockd for {backend} did not start: {e}"),
    };
    let mut config = ClientConfig::from_url(&server.url);
    config.api_key = api_key.map(str::to_owned);
    Arc::new(LockdClient::new(config).expect("client for the shared server"))
}

mod through_lockd_on_memory {
    use super::*;

    static SERVER: OnceLock<Result<SharedServer, String>> = OnceLock::new();

    async fn factory() -> Option<Arc<dyn LockService>> {
        Some(client_of(&SERVER, "memory://", Some(API_KEY)))
    }

    conformance_tests::conformance_suite!(factory, conformance_tests::Capabilities::default());
}

mod through_lockd_on_redis {
    use super::*;

    static SERVER: OnceLock<Result<SharedServer, String>> = OnceLock::new();

    async fn factory() -> Option<Arc<dyn LockService>> {
        let backend = backend_from_env("LOCKD_TEST_REDIS_URL", "lockd-client -> lockd -> redis")?;
        Some(client_of(&SERVER, &backend, None))
    }

    conformance_tests::conformance_suite!(factory, conformance_tests::Capabilities::default());
}

mod through_lockd_on_postgres {
    use super::*;

    static SERVER: OnceLock<Result<SharedServer, String>> = OnceLock::new();

    async fn factory() -> Option<Arc<dyn LockService>> {
        let backend = backend_from_env(
            "LOCKD_TEST_POSTGRES_URL",
            "lockd-client -> lockd -> postgres",
        )?;
        Some(client_of(&SERVER, &backend, None))
    }

    conformance_tests::conformance_suite!(factory, conformance_tests::Capabilities::default());
}
