//! The whole shared conformance suite through THREE lockd processes sharing one Redis
//! (`LOCKD_TEST_REDIS_URL`), PostgreSQL (`LOCKD_TEST_POSTGRES_URL`) or etcd
//! (`LOCKD_TEST_ETCD_URL`): every call goes to the
//! next process in turn, so a grant made through one is released, renewed, downgraded and
//! waited for through the others. Modes, multi-object requests, fairness between readers and a
//! waiting writer, and the reference model must hold across processes, with wake-ups crossing
//! them through the backend (Redis pub/sub, PostgreSQL NOTIFY, an etcd watch), never through
//! shared memory.
//!
//! The processes share one token secret, as processes sharing a backend must.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Setup failures should fail the test loudly.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use lockcore::{
    async_trait, AcquireRequest, Fence, Grant, Lease, ListQuery, LockInfo, LockPage, LockResult,
    LockService, LockToken, ObjectId,
};
use lockd_client::{ClientConfig, LockdClient};
use support::shared::{backend_from_env, SharedServer};

/// The secret the three processes of one backend share.
const SECRET: &str = "three-processes-share-this-secret-0123456789";

/// A [`LockService`] that sends each call to the next of several lockd processes.
#[derive(Debug)]
struct RoundRobin {
    clients: Vec<LockdClient>,
    next: AtomicUsize,
}

impl RoundRobin {
    fn pick(&self) -> &LockdClient {
        let at = self.next.fetch_add(1, Ordering::Relaxed);
        &self.clients[at % self.clients.len()]
    }
}

#[async_trait]
impl LockService for RoundRobin {
    fn backend(&self) -> &'static str {
        self.clients[0].backend()
    }

    async fn acquire_with(&self, request: &AcquireRequest) -> LockResult<Grant> {
        self.pick().acquire_with(request).await
    }

    async fn release(&self, object: &ObjectId, token: &LockToken) -> LockResult<Fence> {
        self.pick().release(object, token).await
    }

    async fn release_many(
        &self,
        locks: &[(ObjectId, LockToken)],
    ) -> LockResult<Vec<LockResult<Fence>>> {
        self.pick().release_many(locks).await
    }

    async fn renew(
        &self,
        object: &ObjectId,
        token: &LockToken,
        ttl: Duration,
    ) -> LockResult<Lease> {
        self.pick().renew(object, token, ttl).await
    }

    async fn renew_many(
        &self,
        locks: &[(ObjectId, LockToken)],
        ttl: Duration,
    ) -> LockResult<Vec<LockResult<Lease>>> {
        self.pick().renew_many(locks, ttl).await
    }

    async fn downgrade(&self, object: &ObjectId, token: &LockToken) -> LockResult<Lease> {
        self.pick().downgrade(object, token).await
    }

    async fn validate(&self, object: &ObjectId, token: &LockToken) -> LockResult<Lease> {
        self.pick().validate(object, token).await
    }

    async fn inspect(&self, object: &ObjectId) -> LockResult<Option<LockInfo>> {
        self.pick().inspect(object).await
    }

    async fn list(&self, query: &ListQuery) -> LockResult<LockPage> {
        self.pick().list(query).await
    }
}

/// Three lockd processes on `backend`, started on first use and shared by every test of the
/// module, and a round-robin client over them.
fn round_robin(
    cell: &'static OnceLock<Result<Vec<SharedServer>, String>>,
    backend: &str,
) -> Arc<dyn LockService> {
    let servers = cell.get_or_init(|| {
        (0..3)
            .map(|_| SharedServer::start(backend, None, &[("LOCKD_TOKEN_SECRET", SECRET)]))
            .collect()
    });
    let servers = match servers {
        Ok(servers) => servers,
        Err(e) => panic!("three lockd processes on {backend} did not start: {e}"),
    };
    let clients = servers
        .iter()
        .map(|server| {
            LockdClient::new(ClientConfig::from_url(&server.url)).expect("client of a server")
        })
        .collect();
    Arc::new(RoundRobin {
        clients,
        next: AtomicUsize::new(0),
    })
}

mod through_three_lockd_on_redis {
    use super::*;

    static SERVERS: OnceLock<Result<Vec<SharedServer>, String>> = OnceLock::new();

    async fn factory() -> Option<Arc<dyn LockService>> {
        let backend = backend_from_env("LOCKD_TEST_REDIS_URL", "three lockd on redis")?;
        Some(round_robin(&SERVERS, &backend))
    }

    conformance_tests::conformance_suite!(factory, conformance_tests::Capabilities::default());
}

mod through_three_lockd_on_postgres {
    use super::*;

    static SERVERS: OnceLock<Result<Vec<SharedServer>, String>> = OnceLock::new();

    async fn factory() -> Option<Arc<dyn LockService>> {
        let backend = backend_from_env("LOCKD_TEST_POSTGRES_URL", "three lockd on postgres")?;
        Some(round_robin(&SERVERS, &backend))
    }

    conformance_tests::conformance_suite!(factory, conformance_tests::Capabilities::default());
}

mod through_three_lockd_on_etcd {
    use super::*;

    static SERVERS: OnceLock<Result<Vec<SharedServer>, String>> = OnceLock::new();

    async fn factory() -> Option<Arc<dyn LockService>> {
        let backend = backend_from_env("LOCKD_TEST_ETCD_URL", "three lockd on etcd")?;
        Some(round_robin(&SERVERS, &backend))
    }

    // etcd leases count whole seconds, at least 2 s (`backend_etcd::DEFAULT_MIN_TTL`).
    conformance_tests::conformance_suite!(
        factory,
        conformance_tests::Capabilities::default().with_min_ttl(Duration::from_secs(2))
    );
}
