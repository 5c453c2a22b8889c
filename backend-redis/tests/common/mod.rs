//! Finding a Redis to test against: `LOCKD_TEST_REDIS_URL`, else a testcontainers Redis where a
//! Docker daemon answers, else a loud skip (a failure under `LOCKD_REQUIRE_BACKENDS=1`).

#![allow(dead_code, unreachable_pub)]

use std::fmt;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backend_redis::{RedisConfig, RedisLockService, RedisStore};
use lockcore::{
    async_trait, AcquireRequest, Fence, Grant, Lease, LeaseEndSink, ListQuery, LockInfo, LockPage,
    LockResult, LockService, LockToken, ObjectId, TokenIssuer,
};
use rand::Rng;
use testcontainers_modules::redis::{Redis, REDIS_PORT};
use testcontainers_modules::testcontainers::runners::AsyncRunner;
use testcontainers_modules::testcontainers::ContainerAsync;

/// Where the tests find Redis.
pub const URL_ENV: &str = "LOCKD_TEST_REDIS_URL";

/// A key prefix no other test run uses, so runs never see each other's keys.
pub fn random_prefix() -> String {
    let tag: u64 = rand::rng().random();
    format!("lockd-test-{tag:016x}:")
}

/// A config for `url` under a fresh random prefix, with short timeouts for tests.
pub fn test_config(url: &str) -> RedisConfig {
    let mut config = RedisConfig::from_url(url);
    config.key_prefix = random_prefix();
    config.connect_timeout = Duration::from_secs(3);
    config.operation_timeout = Duration::from_secs(2);
    config
}

/// A backend on the Redis the environment provides (keeping any container alive as long as
/// the backend), or `None` after a loud skip.
pub async fn backend() -> Option<Arc<dyn LockService>> {
    backend_with(RedisConfig::default().dedicated_connections).await
}

/// [`backend`] with dedicated connections off: every operation goes through the multiplexed
/// connection, as every operation beyond the dedicated ones does under load.
pub async fn multiplexed_backend() -> Option<Arc<dyn LockService>> {
    backend_with(0).await
}

async fn backend_with(dedicated_connections: usize) -> Option<Arc<dyn LockService>> {
    let config_for = |url: &str| {
        let mut config = test_config(url);
        config.dedicated_connections = dedicated_connections;
        config
    };
    if let Ok(url) = std::env::var(URL_ENV) {
        let service = connect(config_for(&url))
            .await
            .unwrap_or_else(|e| panic!("{URL_ENV}={url} is set but Redis is unusable: {e}"));
        return Some(Arc::new(service));
    }
    if docker_answers() {
        match start_container(config_for).await {
            Ok(backed) => return Some(Arc::new(backed)),
            Err(why) => {
                conformance_tests::skip_or_fail("redis", &why);
                return None;
            }
        }
    }
    conformance_tests::skip_or_fail(
        "redis",
        &format!("{URL_ENV} is not set and no Docker daemon answers for testcontainers"),
    );
    None
}

/// The service on a store connected with `config`, minting tokens with [`issuer`].
pub async fn connect(config: RedisConfig) -> LockResult<RedisLockService> {
    Ok(RedisLockService::new(
        RedisStore::connect(config).await?,
        issuer(),
    ))
}

/// The URL of a Redis for tests that talk to Redis directly (not through a container).
pub fn url_or_skip() -> Option<String> {
    match std::env::var(URL_ENV) {
        Ok(url) => Some(url),
        Err(_) => {
            conformance_tests::skip_or_fail("redis", &format!("{URL_ENV} is not set"));
            None
        }
    }
}

fn docker_answers() -> bool {
    std::env::var_os("DOCKER_HOST").is_some() || Path::new("/var/run/docker.sock").exists()
}

async fn start_container(
    config_for: impl Fn(&str) -> RedisConfig,
) -> Result<ContainerBacked, String> {
    let container = Redis::default()
        .start()
        .await
        .map_err(|e| format!("testcontainers could not start Redis: {e}"))?;
    let host = container.get_host().await.map_err(|e| e.to_string())?;
    let port = container
        .get_host_port_ipv4(REDIS_PORT)
        .await
        .map_err(|e| e.to_string())?;
    let url = format!("redis://{host}:{port}");
    let service = connect(config_for(&url))
        .await
        .map_err(|e| format!("Redis in a container at {url} is unusable: {e}"))?;
    Ok(ContainerBacked {
        service,
        _container: container,
    })
}

/// A backend together with the container its Redis runs in (stopped when this is dropped).
pub struct ContainerBacked {
    service: RedisLockService,
    _container: ContainerAsync<Redis>,
}

impl fmt::Debug for ContainerBacked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContainerBacked")
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl LockService for ContainerBacked {
    fn backend(&self) -> &'static str {
        self.service.backend()
    }
    async fn acquire_with(&self, request: &AcquireRequest) -> LockResult<Grant> {
        self.service.acquire_with(request).await
    }
    async fn release(&self, object: &ObjectId, token: &LockToken) -> LockResult<Fence> {
        self.service.release(object, token).await
    }
    async fn release_many(
        &self,
        locks: &[(ObjectId, LockToken)],
    ) -> LockResult<Vec<LockResult<Fence>>> {
        self.service.release_many(locks).await
    }
    async fn renew(
        &self,
        object: &ObjectId,
        token: &LockToken,
        ttl: Duration,
    ) -> LockResult<Lease> {
        self.service.renew(object, token, ttl).await
    }
    async fn renew_many(
        &self,
        locks: &[(ObjectId, LockToken)],
        ttl: Duration,
    ) -> LockResult<Vec<LockResult<Lease>>> {
        self.service.renew_many(locks, ttl).await
    }
    async fn downgrade(&self, object: &ObjectId, token: &LockToken) -> LockResult<Lease> {
        self.service.downgrade(object, token).await
    }
    async fn validate(&self, object: &ObjectId, token: &LockToken) -> LockResult<Lease> {
        self.service.validate(object, token).await
    }
    async fn inspect(&self, object: &ObjectId) -> LockResult<Option<LockInfo>> {
        self.service.inspect(object).await
    }
    async fn list(&self, query: &ListQuery) -> LockResult<LockPage> {
        self.service.list(query).await
    }
    async fn health(&self) -> LockResult<()> {
        self.service.health().await
    }
    async fn close(&self, timeout: Duration) -> bool {
        self.service.close(timeout).await
    }
    fn report_lease_ends(&self, sink: LeaseEndSink) -> bool {
        self.service.report_lease_ends(sink)
    }
}

/// A `redis-server` this test started on a free loopback port, keeping nothing on disk.
/// Killed (by its PID) when dropped.
pub struct PrivateRedis {
    pub port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    /// Starts one on a free port, or `None` after a loud skip when `redis-server` is missing.
    pub fn start() -> Option<Self> {
        let port = match TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
            Ok(addr) => addr.port(),
            Err(e) => {
                conformance_tests::skip_or_fail("redis", &format!("no free loopback port: {e}"));
                return None;
            }
        };
        let mut redis = Self { port, child: None };
        if let Err(why) = redis.restart() {
            conformance_tests::skip_or_fail("redis", &why);
            return None;
        }
        Some(redis)
    }

    /// The URL of this server.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again, on the same port) and waits until it answers PING.
    pub fn restart(&mut self) -> Result<(), String> {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run redis-server: {e}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.ping() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!("redis-server on port {} did not answer", self.port))
    }

    /// Kills the server by its PID and waits for it to exit: everything in it is lost.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn ping(&self) -> bool {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
            .is_ok()
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The token issuer of every service a test connects: one secret, as several lockd processes
/// sharing a backend must have (each checks the MAC of every token presented to it).
pub fn issuer() -> TokenIssuer {
    TokenIssuer::new(lockcore::TokenSecret::new([7u8; 32]).expect("32 bytes is long enough"))
}
