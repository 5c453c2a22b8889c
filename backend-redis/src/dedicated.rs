//! [`DedicatedConnections`]: a few Redis connections that each serve one operation at a time,
//! read and written by the task running that operation.
//!
//! Why: the shared multiplexed connection hands every request to a driver task and the reply
//! back through a channel. That pipelines many concurrent operations well, but when a single
//! operation is in flight the two task hand-offs are a measurable share of its latency (see
//! BENCHMARKS.md, "backend-redis"). A dedicated connection is a socket framed by the redis
//! crate's own codec (RESP encoding and reply parsing) and written and read by the operation's
//! task, so a request costs one write and one read there. The handshake is the two commands
//! lockd's URLs can call for: `AUTH` and `SELECT`. It always speaks RESP2, which gives the
//! scripts' replies the same shape as RESP3.
//!
//! Operations take a dedicated connection when one is idle and use the multiplexed connection
//! otherwise, so concurrency beyond the pool still pipelines. A connection that fails, times out
//! or is cancelled mid-request is dropped (its reply stream can no longer be trusted) and
//! replaced in the background. TLS URLs (`rediss://`) get no dedicated connections: every
//! operation uses the multiplexed connection there.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};
use std::task::Poll;
use std::time::Duration;

use futures_util::{FutureExt, SinkExt, StreamExt};
use redis::aio::{AsyncStream, ConnectionLike};
use redis::{
    Cmd, ConnectionAddr, ConnectionInfo, Pipeline, RedisConnectionInfo, RedisError, RedisFuture,
    RedisResult, ScriptInvocation, Value, ValueCodec,
};
use tokio::time::Instant;
use tokio_util::codec::{Decoder, Framed};

/// Pause after a failed attempt to open a dedicated connection before the next one.
const REOPEN_DELAY: Duration = Duration::from_secs(1);

/// A connected TCP or Unix socket.
type Socket = Pin<Box<dyn AsyncStream + Send + Sync>>;

/// A small pool of connections driven by the tasks that use them; see the module docs.
pub(crate) struct DedicatedConnections {
    inner: Arc<Inner>,
}

struct Inner {
    /// Where to connect; `None` when dedicated connections are off (capacity 0, or TLS).
    target: Option<Target>,
    redis: RedisConnectionInfo,
    capacity: usize,
    connect_timeout: Duration,
    idle: Mutex<Vec<Dedicated>>,
    /// Connections that exist or are being opened: idle, checked out, or connecting.
    open: AtomicUsize,
    /// Whether a background task is opening a connection (at most one at a time).
    opening: AtomicBool,
    /// No new connection is attempted before this instant (after a failed attempt).
    retry_at: Mutex<Option<Instant>>,
}

/// The address of a dedicated connection's server.
#[derive(Debug, Clone)]
enum Target {
    Tcp(String, u16),
    #[cfg(unix)]
    Unix(std::path::PathBuf),
}

/// One connection, owned by the pool or by the operation using it.
struct Dedicated {
    framed: Framed<Socket, ValueCodec>,
    db: i64,
}

impl DedicatedConnections {
    /// Opens up to `capacity` connections to the server in `info` (each within
    /// `connect_timeout`). Connections that cannot be opened now are retried in the background
    /// when operations find the pool short; until then those operations use the multiplexed
    /// connection, so this never fails.
    pub(crate) async fn open(
        info: &ConnectionInfo,
        capacity: usize,
        connect_timeout: Duration,
    ) -> Self {
        let target = match info.addr() {
            _ if capacity == 0 => None,
            ConnectionAddr::Tcp(host, port) => Some(Target::Tcp(host.clone(), *port)),
            #[cfg(unix)]
            ConnectionAddr::Unix(path) => Some(Target::Unix(path.clone())),
            _ => None,
        };
        let inner = Arc::new(Inner {
            target,
            redis: info.redis_settings().clone(),
            capacity,
            connect_timeout,
            idle: Mutex::new(Vec::with_capacity(capacity)),
            open: AtomicUsize::new(0),
            opening: AtomicBool::new(false),
            retry_at: Mutex::new(None),
        });
        if let Some(target) = &inner.target {
            for _ in 0..capacity {
                match connect(target, &inner.redis, connect_timeout).await {
                    Ok(dedicated) => {
                        inner.open.fetch_add(1, Ordering::AcqRel);
                        inner.idle().push(dedicated);
                    }
                    Err(e) => {
                        tracing::debug!(target: "lockd::redis", error = %e, "dedicated connection not opened; operations use the multiplexed connection");
                        break;
                    }
                }
            }
        }
        Self { inner }
    }

    /// How many dedicated connections exist right now (idle, in use, or being opened).
    #[cfg(test)]
    pub(crate) fn open_count(&self) -> usize {
        self.inner.open.load(Ordering::Acquire)
    }

    /// An idle, live connection for one operation, or `None` when all are busy or down (the
    /// caller then uses the multiplexed connection). Connections found closed by the server
    /// are dropped here, before anything is sent on them.
    pub(crate) async fn checkout(&self) -> Option<Checkout<'_>> {
        self.inner.target.as_ref()?;
        loop {
            let Some(mut dedicated) = self.inner.idle().pop() else {
                self.refill();
                return None;
            };
            // Reading finds the end of the stream at once if the server closed the connection
            // while it sat idle (a restart, an idle timeout); anything else unasked-for means
            // the stream is out of step.
            let alive =
                poll_fn(|cx| Poll::Ready(dedicated.framed.poll_next_unpin(cx).is_pending())).await;
            if alive {
                return Some(Checkout {
                    inner: &self.inner,
                    dedicated: Some(dedicated),
                    reusable: true,
                });
            }
            drop(dedicated);
            self.inner.open.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Opens one more connection in the background if the pool is short, none is being opened
    /// and the last failure is long enough ago.
    fn refill(&self) {
        let inner = &self.inner;
        let Some(target) = inner.target.clone() else {
            return;
        };
        if inner.open.load(Ordering::Acquire) >= inner.capacity
            || inner.retry_at().is_some_and(|at| Instant::now() < at)
            || inner.opening.swap(true, Ordering::AcqRel)
        {
            return;
        }
        inner.open.fetch_add(1, Ordering::AcqRel);
        let inner = self.inner.clone();
        tokio::spawn(async move {
            match connect(&target, &inner.redis, inner.connect_timeout).await {
                Ok(dedicated) => {
                    *inner.retry_at() = None;
                    inner.idle().push(dedicated);
                }
                Err(e) => {
                    tracing::debug!(target: "lockd::redis", error = %e, "dedicated connection not reopened");
                    *inner.retry_at() = Some(Instant::now() + REOPEN_DELAY);
                    inner.open.fetch_sub(1, Ordering::AcqRel);
                }
            }
            inner.opening.store(false, Ordering::Release);
        });
    }
}

impl Inner {
    fn idle(&self) -> MutexGuard<'_, Vec<Dedicated>> {
        self.idle.lock()
    }

    fn retry_at(&self) -> MutexGuard<'_, Option<Instant>> {
        self.retry_at.lock()
    }
}

/// A connection checked out for one operation. Dropped unused or after a complete reply it goes
/// back to the pool; dropped in any other state (an I/O error, a timeout, a cancelled
/// operation) it is closed, since a reply may still be on its way.
pub(crate) struct Checkout<'a> {
    inner: &'a Inner,
    dedicated: Option<Dedicated>,
    reusable: bool,
}

impl Checkout<'_> {
    /// Runs `invocation` (EVALSHA; on NOSCRIPT the crate loads the script and retries) on this
    /// connection, from the calling task.
    pub(crate) async fn invoke(&mut self, invocation: &ScriptInvocation<'_>) -> RedisResult<Value> {
        let Some(dedicated) = self.dedicated.as_mut() else {
            return Err(closed());
        };
        // Until a reply settles it, a cut-off request leaves the connection out of step.
        self.reusable = false;
        let result = invocation.invoke_async::<Value>(dedicated).await;
        self.settle(result)
    }

    /// Runs any command, for tests that look at the connection itself.
    #[cfg(test)]
    async fn query(&mut self, cmd: &Cmd) -> RedisResult<Value> {
        let Some(dedicated) = self.dedicated.as_mut() else {
            return Err(closed());
        };
        self.reusable = false;
        let result = cmd.query_async::<Value>(dedicated).await;
        self.settle(result)
    }

    /// Marks the connection reusable if `result` came from a complete reply: a value, or an
    /// error reply from the server. Anything else (an I/O error) leaves it to be closed.
    fn settle(&mut self, result: RedisResult<Value>) -> RedisResult<Value> {
        self.reusable = match &result {
            Ok(_) => true,
            Err(e) => e.code().is_some(),
        };
        result
    }
}

impl Drop for Checkout<'_> {
    fn drop(&mut self) {
        let Some(dedicated) = self.dedicated.take() else {
            return;
        };
        if self.reusable {
            self.inner.idle().push(dedicated);
        } else {
            drop(dedicated);
            self.inner.open.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// The error of a request whose connection closed before it was answered.
fn closed() -> RedisError {
    std::io::Error::new(
        std::io::ErrorKind::ConnectionAborted,
        "dedicated connection closed",
    )
    .into()
}

impl ConnectionLike for Dedicated {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        async move {
            self.framed.send(cmd.get_packed_command()).await?;
            self.framed.next().await.unwrap_or_else(|| Err(closed()))
        }
        .boxed()
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        _pipeline: &'a Pipeline,
        _offset: usize,
        _count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        // Nothing here sends pipelines; refusing keeps the reply stream simple to reason about.
        async {
            Err(RedisError::from((
                redis::ErrorKind::Client,
                "pipelines are not sent on dedicated connections",
            )))
        }
        .boxed()
    }

    fn get_db(&self) -> i64 {
        self.db
    }
}

/// Opens one connection and authenticates and selects the database as the URL says.
async fn connect(
    target: &Target,
    redis: &RedisConnectionInfo,
    timeout: Duration,
) -> RedisResult<Dedicated> {
    let open = async {
        let socket: Socket = match target {
            Target::Tcp(host, port) => {
                let stream = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                stream.set_nodelay(true)?;
                Box::pin(stream)
            }
            #[cfg(unix)]
            Target::Unix(path) => Box::pin(tokio::net::UnixStream::connect(path).await?),
        };
        let mut dedicated = Dedicated {
            framed: ValueCodec::default().framed(socket),
            db: redis.db(),
        };
        if let Some(password) = redis.password() {
            let mut auth = redis::cmd("AUTH");
            if let Some(username) = redis.username() {
                auth.arg(username);
            }
            auth.arg(password).exec_async(&mut dedicated).await?;
        }
        if redis.db() != 0 {
            redis::cmd("SELECT")
                .arg(redis.db())
                .exec_async(&mut dedicated)
                .await?;
        }
        Ok(dedicated)
    };
    match tokio::time::timeout(timeout, open).await {
        Ok(result) => result,
        Err(_) => {
            Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out").into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL_ENV: &str = "LOCKD_TEST_REDIS_URL";
    const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

    /// The test Redis's connection info, or `None` after a loud skip.
    fn redis_or_skip() -> Option<ConnectionInfo> {
        let Ok(url) = std::env::var(URL_ENV) else {
            conformance_tests::skip_or_fail("redis", &format!("{URL_ENV} is not set"));
            return None;
        };
        let client = redis::Client::open(url.as_str()).expect("a valid test URL");
        Some(client.get_connection_info().clone())
    }

    async fn client_id(checkout: &mut Checkout<'_>) -> i64 {
        match checkout
            .query(&redis::cmd("CLIENT").arg("ID").to_owned())
            .await
        {
            Ok(Value::Int(id)) => id,
            other => panic!("CLIENT ID answered {other:?}"),
        }
    }

    /// Checks out until a connection is there again (the pool refills in the background).
    async fn checkout_eventually(pool: &DedicatedConnections) -> Checkout<'_> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(checkout) = pool.checkout().await {
                return checkout;
            }
            assert!(Instant::now() < deadline, "the pool was never refilled");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn each_connection_serves_one_operation_at_a_time_and_returns_to_the_pool() {
        let Some(info) = redis_or_skip() else { return };
        let pool = DedicatedConnections::open(&info, 2, CONNECT_TIMEOUT).await;
        assert_eq!(pool.open_count(), 2);
        let mut first = pool.checkout().await.expect("an idle connection");
        let second = pool.checkout().await.expect("another idle connection");
        assert!(pool.checkout().await.is_none(), "both are in use");
        let id = client_id(&mut first).await;
        drop((first, second));
        let mut again = pool.checkout().await.expect("back in the pool");
        let mut other = pool.checkout().await.expect("back in the pool");
        let ids = [client_id(&mut again).await, client_id(&mut other).await];
        assert!(ids.contains(&id), "{ids:?} does not reuse connection {id}");
        assert_eq!(pool.open_count(), 2);
    }

    #[tokio::test]
    async fn an_error_reply_keeps_the_connection() {
        let Some(info) = redis_or_skip() else { return };
        let pool = DedicatedConnections::open(&info, 1, CONNECT_TIMEOUT).await;
        let mut checkout = pool.checkout().await.expect("an idle connection");
        let id = client_id(&mut checkout).await;
        let refused = checkout.query(&redis::cmd("GET")).await;
        assert!(refused.is_err(), "GET without a key answered {refused:?}");
        drop(checkout);
        let mut checkout = pool.checkout().await.expect("kept after an error reply");
        assert_eq!(client_id(&mut checkout).await, id);
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_is_dropped_before_use_and_replaced() {
        let Some(info) = redis_or_skip() else { return };
        let pool = DedicatedConnections::open(&info, 1, CONNECT_TIMEOUT).await;
        let mut checkout = pool.checkout().await.expect("an idle connection");
        let killed = client_id(&mut checkout).await;
        drop(checkout);
        let mut admin = redis::Client::open(info.clone())
            .and_then(|c| c.get_connection())
            .expect("admin connection");
        redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(killed)
            .query::<i64>(&mut admin)
            .expect("CLIENT KILL");
        // Let the close reach this side.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            pool.checkout().await.is_none(),
            "a closed connection was handed out"
        );
        let mut replacement = checkout_eventually(&pool).await;
        assert_ne!(client_id(&mut replacement).await, killed);
        assert_eq!(pool.open_count(), 1);
    }

    #[tokio::test]
    async fn a_request_cut_off_mid_flight_closes_its_connection() {
        let Some(info) = redis_or_skip() else { return };
        let pool = DedicatedConnections::open(&info, 1, CONNECT_TIMEOUT).await;
        let mut checkout = pool.checkout().await.expect("an idle connection");
        let blocked = redis::cmd("BLPOP")
            .arg(format!("lockd-test-dedicated-{}", std::process::id()))
            .arg(2)
            .to_owned();
        let cut = tokio::time::timeout(Duration::from_millis(50), checkout.query(&blocked)).await;
        assert!(cut.is_err(), "BLPOP on an empty list answered: {cut:?}");
        drop(checkout);
        // Its reply would arrive later and answer the next request: the connection is gone.
        assert_eq!(pool.open_count(), 0);
        let mut replacement = checkout_eventually(&pool).await;
        let pong = replacement.query(&redis::cmd("PING")).await;
        assert!(
            matches!(pong, Ok(Value::SimpleString(ref s)) if s == "PONG"),
            "{pong:?}"
        );
    }

    #[tokio::test]
    async fn the_database_in_the_url_is_selected() {
        let Some(info) = redis_or_skip() else { return };
        let info = info
            .clone()
            .set_redis_settings(info.redis_settings().clone().set_db(5));
        let pool = DedicatedConnections::open(&info, 1, CONNECT_TIMEOUT).await;
        let mut checkout = pool.checkout().await.expect("an idle connection");
        let key = format!("lockd-test-dedicated-db-{}", std::process::id());
        checkout
            .query(
                &redis::cmd("SET")
                    .arg(&key)
                    .arg("here")
                    .arg("PX")
                    .arg(60_000)
                    .to_owned(),
            )
            .await
            .expect("SET");
        let mut db5 = redis::Client::open(info)
            .and_then(|c| c.get_connection())
            .expect("connection to db 5");
        let value: Option<String> = redis::cmd("GET").arg(&key).query(&mut db5).expect("GET");
        assert_eq!(value.as_deref(), Some("here"));
    }

    #[tokio::test]
    async fn tls_urls_and_capacity_zero_get_no_dedicated_connections() {
        for url in ["rediss://127.0.0.1:1", "redis://127.0.0.1:1"] {
            let capacity = if url.starts_with("rediss") { 2 } else { 0 };
            let info = redis::Client::open(url)
                .expect("valid URL")
                .get_connection_info()
                .clone();
            let pool = DedicatedConnections::open(&info, capacity, CONNECT_TIMEOUT).await;
            assert_eq!(pool.open_count(), 0, "{url}");
            assert!(pool.checkout().await.is_none(), "{url}");
        }
    }
}
