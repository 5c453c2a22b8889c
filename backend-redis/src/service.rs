//! [`RedisLockService`]: the [`LockService`] on Redis.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lockcore::reclaim::UndoFuture;
use lockcore::{
    async_trait, audit, AcquireRequest, Fence, Lease, Limits, ListQuery, LockError, LockInfo,
    LockPage, LockResult, LockService, LockToken, ObjectId, ReclaimPolicy, Reclaimer, TokenIssuer,
    Undo, WaitQueue,
};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ScriptInvocation, Value};
use tokio::task::JoinHandle;

use crate::config::RedisConfig;
use crate::dedicated::DedicatedConnections;
use crate::error::{self, BACKEND};
use crate::keys::KeyLayout;
use crate::listener::Listener;
use crate::reply;
use crate::scripts::Scripts;

/// Delays between reconnect attempts of the command connection grow up to this.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(1);
/// How a lock whose acquire reply was lost is taken back: first after 100 ms, then with
/// backoff up to 2 s, while Redis does not answer for up to 5 min (at most the lease's TTL).
/// An acquire sent on the multiplexed connection runs before the take-back sent after it on the
/// same connection; one cut off on a dedicated connection may still be read by Redis from the
/// closed socket a moment later, so finding no such lock is retried for 5 s.
const RECLAIM: ReclaimPolicy = ReclaimPolicy {
    first_delay: Duration::from_millis(100),
    max_delay: Duration::from_secs(2),
    window: Duration::from_secs(5 * 60),
    absent_window: Duration::from_secs(5),
};
/// Added to a lease's TTL before its expiry wake-up, so Redis has expired it by then.
const EXPIRY_WAKE_SLACK: Duration = Duration::from_millis(2);
/// Most `SCAN` calls one `list` page makes before it returns what it has.
const MAX_SCAN_ROUNDS: usize = 64;

/// A [`LockService`] keeping its locks in Redis; see the crate docs for the guarantees.
///
/// Cheap to share behind an `Arc`; every operation is one `EVALSHA`, on an idle dedicated
/// connection when there is one, otherwise on a multiplexed connection that reconnects by
/// itself.
pub struct RedisLockService {
    conn: ConnectionManager,
    dedicated: DedicatedConnections,
    scripts: Scripts,
    keys: KeyLayout,
    channel: String,
    issuer: TokenIssuer,
    waits: Arc<WaitQueue>,
    limits: Limits,
    operation_timeout: Duration,
    fence_retention_ms: u64,
    redacted_url: String,
    listener: JoinHandle<()>,
    /// Takes back locks whose acquire reply was lost.
    reclaimer: Reclaimer,
    /// What taking such a lock back needs, shared by every take-back.
    undo: Arc<UndoContext>,
    /// Wake-ups at the expiry of leases granted to blocking acquires with waiters behind them.
    expiry_wakes: Arc<ExpiryWakes>,
}

impl fmt::Debug for RedisLockService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLockService")
            .field("url", &self.redacted_url)
            .field("keys", &self.keys)
            .field("limits", &self.limits)
            .field("operation_timeout", &self.operation_timeout)
            .field("waiting", &self.waits.waiting())
            .finish_non_exhaustive()
    }
}

impl Drop for RedisLockService {
    fn drop(&mut self) {
        self.listener.abort();
        self.expiry_wakes.clear();
    }
}

/// The connection, script and names a take-back of a lost acquire uses.
#[derive(Debug)]
struct UndoContext {
    conn: ConnectionManager,
    script: redis::Script,
    keys: KeyLayout,
    channel: String,
    timeout: Duration,
}

/// At most one pending expiry wake-up per object, replaced by newer grants, cancelled by
/// releases from this process.
///
/// Why: a waiter queued behind a blocking acquire that gets granted becomes the head of the
/// object's queue without ever having tried Redis, so it has no timer at the new holder's
/// expiry, and Redis publishes nothing when a lease expires. Without this it would sleep until
/// its own wait ran out while the object sat free.
#[derive(Debug, Default)]
struct ExpiryWakes {
    timers: parking_lot::Mutex<std::collections::HashMap<ObjectId, (u64, JoinHandle<()>)>>,
    generation: AtomicU64,
}

impl ExpiryWakes {
    fn lock(
        &self,
    ) -> parking_lot::MutexGuard<'_, std::collections::HashMap<ObjectId, (u64, JoinHandle<()>)>>
    {
        self.timers.lock()
    }

    /// Wakes `object`'s head waiter once `ttl` has passed, unless replaced or cancelled first.
    fn arm(self: &Arc<Self>, waits: &Arc<WaitQueue>, object: &ObjectId, ttl: Duration) {
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        let (waits, timers, key) = (Arc::downgrade(waits), Arc::downgrade(self), object.clone());
        let handle = tokio::spawn(async move {
            tokio::time::sleep(ttl + EXPIRY_WAKE_SLACK).await;
            if let Some(timers) = timers.upgrade() {
                let mut map = timers.lock();
                if map.get(&key).is_some_and(|(g, _)| *g == generation) {
                    map.remove(&key);
                }
            }
            if let Some(waits) = waits.upgrade() {
                waits.wake(&key);
            }
        });
        if let Some((_, previous)) = self.lock().insert(object.clone(), (generation, handle)) {
            previous.abort();
        }
    }

    /// Drops `object`'s pending wake-up (its lease was released; the release publishes).
    fn cancel(&self, object: &ObjectId) {
        if let Some((_, timer)) = self.lock().remove(object) {
            timer.abort();
        }
    }

    fn clear(&self) {
        for (_, (_, timer)) in self.lock().drain() {
            timer.abort();
        }
    }
}

impl RedisLockService {
    /// Connects (within `connect_timeout`), loads the scripts and starts the release listener.
    ///
    /// Fails with [`LockError::Unavailable`] when Redis cannot be reached or refuses the
    /// connection, and with [`LockError::InvalidArgument`] for a bad URL or key prefix.
    pub async fn connect(config: RedisConfig, issuer: TokenIssuer) -> Result<Self, LockError> {
        config.check()?;
        let client = redis::Client::open(config.url.as_str()).map_err(|e| {
            LockError::invalid_argument("url", format!("{}: {e}", config.redacted_url()))
        })?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            // Operations give up at operation_timeout themselves. The manager's own timeout,
            // which drops the connection and reconnects, only catches a connection that has
            // stopped answering altogether; a slow reply must not cost the connection (and the
            // other requests in flight on it).
            .set_response_timeout(Some(config.operation_timeout.saturating_mul(2)))
            .set_max_delay(MAX_RECONNECT_DELAY);
        let conn = match tokio::time::timeout(
            config.connect_timeout,
            ConnectionManager::new_with_config(client.clone(), manager_config),
        )
        .await
        {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                return Err(LockError::unavailable(
                    BACKEND,
                    format!("connect to {}: {e}", config.redacted_url()),
                ))
            }
            Err(_) => return Err(error::timed_out("connect", config.connect_timeout)),
        };
        let scripts = Scripts::new();
        for script in scripts.all() {
            let mut conn = conn.clone();
            match tokio::time::timeout(
                config.operation_timeout,
                script.prepare_invoke().load_async(&mut conn),
            )
            .await
            {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(error::from_redis("script load", &e)),
                Err(_) => return Err(error::timed_out("script load", config.operation_timeout)),
            }
        }
        let dedicated = DedicatedConnections::open(
            client.get_connection_info(),
            config.dedicated_connections,
            config.connect_timeout,
        )
        .await;
        let keys = KeyLayout::new(&config.key_prefix);
        let channel = keys.channel();
        let listener = Listener {
            client,
            channel: channel.clone(),
            connect_timeout: config.connect_timeout,
            operation_timeout: config.operation_timeout,
            ping_interval: config.listener_ping_interval,
            commands: conn.clone(),
        };
        let pubsub = listener.subscribe().await?;
        let waits = Arc::new(WaitQueue::new());
        let listener = tokio::spawn(listener.run(Arc::downgrade(&waits), pubsub));
        let undo = Arc::new(UndoContext {
            conn: conn.clone(),
            script: scripts.abandon.clone(),
            keys: keys.clone(),
            channel: channel.clone(),
            timeout: config.operation_timeout,
        });
        Ok(Self {
            undo,
            conn,
            dedicated,
            scripts,
            keys,
            channel,
            issuer,
            waits,
            limits: config.limits,
            operation_timeout: config.operation_timeout,
            fence_retention_ms: millis(config.fence_retention),
            redacted_url: config.redacted_url(),
            listener,
            reclaimer: Reclaimer::new(BACKEND, RECLAIM),
            expiry_wakes: Arc::new(ExpiryWakes::default()),
        })
    }

    /// Runs one script invocation (one EVALSHA; NOSCRIPT reloads and retries) within the
    /// operation timeout, on an idle dedicated connection if there is one.
    async fn eval(
        &self,
        operation: &'static str,
        invocation: &ScriptInvocation<'_>,
    ) -> LockResult<Value> {
        let run = async {
            if let Some(mut dedicated) = self.dedicated.checkout().await {
                return dedicated.invoke(invocation).await;
            }
            let mut conn = self.conn.clone();
            invocation.invoke_async(&mut conn).await
        };
        match tokio::time::timeout(self.operation_timeout, run).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(error::from_redis(operation, &e)),
            Err(_) => Err(error::timed_out(operation, self.operation_timeout)),
        }
    }

    /// One acquire attempt: grants, answers a retry of the granted request with its lease, or
    /// fails with `Locked` naming the holder.
    async fn try_acquire(&self, request: &AcquireRequest) -> LockResult<Lease> {
        let (object, owner, ttl, wait) =
            (&request.object, &request.owner, request.ttl, request.wait);
        let pending = self.issuer.prepare_for(request);
        let digest = pending.digest().to_hex();
        let ttl_ms = millis(ttl);
        let mut invocation = self.scripts.acquire.key(self.keys.lock_key(object));
        invocation
            .key(self.keys.fence_key(object))
            .key(self.keys.waiting_key(object))
            .arg(owner.as_str())
            .arg(&digest)
            .arg(ttl_ms)
            .arg(ttl_ms.saturating_add(self.fence_retention_ms))
            .arg(1u64 << lockcore::fence::FENCE_CLOCK_SHIFT)
            .arg(self.waiting_mark_ms(wait));
        // Redis may run the script and grant a lock nobody gets the token for: when this
        // attempt is dropped, or its reply is lost, the guard takes it back.
        let guard = self
            .reclaimer
            .guard(object, ttl, self.undo_acquire(object, digest));
        let reply = match self.eval("acquire", &invocation).await {
            Ok(reply) => {
                guard.disarm();
                reply
            }
            Err(e) => {
                if matches!(e, LockError::Unavailable { .. }) {
                    drop(guard);
                } else {
                    guard.disarm();
                }
                return Err(e);
            }
        };
        let items = reply::array(reply)?;
        match reply::int(item(&items, 0)?)? {
            1 => {
                let fence = reply::fence(item(&items, 1)?)?;
                let token = self.issuer.seal(pending, object, fence);
                // Others may be queued behind this blocking acquire (the count includes it).
                if !wait.is_zero() && self.waits.waiting() > 1 {
                    self.expiry_wakes.arm(&self.waits, object, ttl);
                }
                Ok(Lease {
                    object: object.clone(),
                    owner: owner.clone(),
                    token,
                    fence,
                    ttl,
                })
            }
            2 => {
                let fence = reply::fence(item(&items, 1)?)?;
                Ok(Lease {
                    object: object.clone(),
                    owner: owner.clone(),
                    token: self.issuer.seal(pending, object, fence),
                    fence,
                    ttl: reply::pttl(item(&items, 2)?, self.limits.max_ttl)?,
                })
            }
            0 => Err(LockError::Locked {
                object: object.clone(),
                holder: reply::owner(item(&items, 1)?)?,
                retry_after: reply::pttl(item(&items, 2)?, self.limits.max_ttl)?,
            }),
            _ => Err(reply::malformed("acquire status")),
        }
    }

    /// How long a blocking acquire marks its object as waited on: at least the longest wait
    /// this backend allows, so the mark outlives every waiter of this process queued behind
    /// this one (they try Redis only when they reach the head of the queue). 0 for `wait` 0.
    fn waiting_mark_ms(&self, wait: Duration) -> u64 {
        if wait.is_zero() {
            0
        } else {
            millis(wait.max(self.limits.max_wait))
        }
    }

    /// The take-back of an acquire whose outcome is unknown: deletes the lock if (and only if)
    /// it holds `digest` and no retry claimed it. The token for that digest was never handed
    /// out, so nobody loses a lease. Cheap to build (two reference counts and the digest): it is
    /// built for every acquire and used only for lost ones.
    fn undo_acquire(&self, object: &ObjectId, digest: String) -> impl FnMut() -> UndoFuture + Send {
        let undo = self.undo.clone();
        let object = object.clone();
        move || -> UndoFuture {
            let (undo, object, digest) = (undo.clone(), object.clone(), digest.clone());
            Box::pin(async move {
                let mut conn = undo.conn.clone();
                let mut invocation = undo.script.key(undo.keys.lock_key(&object));
                invocation
                    .key(undo.keys.waiting_key(&object))
                    .arg(digest)
                    .arg(&undo.channel)
                    .arg(object.as_str());
                let timeout = undo.timeout;
                match tokio::time::timeout(timeout, invocation.invoke_async::<i64>(&mut conn)).await
                {
                    Ok(Ok(1)) => Ok(Undo::TookBack),
                    Ok(Ok(2)) => Ok(Undo::Claimed),
                    Ok(Ok(_)) => Ok(Undo::Absent),
                    Ok(Err(e)) => Err(error::from_redis("abandon", &e)),
                    Err(_) => Err(error::timed_out("abandon", timeout)),
                }
            })
        }
    }

    /// Refusal for a token that is not the holder's: `NotHeld` (0) or `TokenMismatch` (-1).
    fn refusal(object: &ObjectId, status: i64) -> LockResult<LockError> {
        match status {
            0 => Ok(LockError::NotHeld {
                object: object.clone(),
            }),
            -1 => Ok(LockError::TokenMismatch {
                object: object.clone(),
            }),
            _ => Err(reply::malformed("status")),
        }
    }

    /// Describes the locks at `lock_keys` (one EVALSHA), skipping keys no longer held.
    async fn describe(&self, objects: &[ObjectId]) -> LockResult<Vec<LockInfo>> {
        let mut invocation = self.scripts.describe.prepare_invoke();
        for object in objects {
            invocation.key(self.keys.lock_key(object));
        }
        let items = reply::array(self.eval("describe", &invocation).await?)?;
        let now_ms = reply::millis_text(item(&items, 0)?)?;
        let mut out = Vec::with_capacity(objects.len());
        for (object, entry) in objects.iter().zip(items.into_iter().skip(1)) {
            let fields = reply::array(entry)?;
            if fields.is_empty() {
                continue;
            }
            let ttl = reply::pttl(item(&fields, 3)?, self.limits.max_ttl)?;
            out.push(LockInfo {
                object: object.clone(),
                owner: reply::owner(item(&fields, 0)?)?,
                fence: reply::fence(item(&fields, 1)?)?,
                acquired_at: reply::unix_millis(reply::millis_text(item(&fields, 2)?)?),
                expires_at: reply::unix_millis(now_ms.saturating_add(millis(ttl))),
                ttl,
            });
        }
        Ok(out)
    }

    /// One `SCAN` step: the next cursor (0 at the end) and the keys it returned.
    async fn scan(
        &self,
        cursor: u64,
        pattern: &str,
        count: usize,
    ) -> LockResult<(u64, Vec<Vec<u8>>)> {
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(count);
        match tokio::time::timeout(self.operation_timeout, cmd.query_async(&mut conn)).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(e)) => Err(error::from_redis("list", &e)),
            Err(_) => Err(error::timed_out("list", self.operation_timeout)),
        }
    }
}

fn item(items: &[Value], index: usize) -> LockResult<&Value> {
    items
        .get(index)
        .ok_or_else(|| reply::malformed("reply is too short"))
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[async_trait]
impl LockService for RedisLockService {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn acquire_with(&self, request: &AcquireRequest) -> LockResult<Lease> {
        self.limits.check_acquire(request.ttl, request.wait)?;
        self.waits
            .acquire(&request.object, request.wait, || self.try_acquire(request))
            .await
    }

    async fn release(&self, object: &ObjectId, token: &LockToken) -> LockResult<Fence> {
        audit::check_token(&self.issuer, "release", object, token)?;
        let mut invocation = self.scripts.release.key(self.keys.lock_key(object));
        invocation
            .key(self.keys.waiting_key(object))
            .arg(token.digest().to_hex())
            .arg(token.fence().get())
            .arg(&self.channel)
            .arg(object.as_str());
        let status = reply::int(&self.eval("release", &invocation).await?)?;
        if status == 1 {
            self.expiry_wakes.cancel(object);
            return Ok(token.fence());
        }
        let refused = Self::refusal(object, status)?;
        audit::log_refusal("release", object, token, &refused);
        Err(refused)
    }

    async fn renew(
        &self,
        object: &ObjectId,
        token: &LockToken,
        ttl: Duration,
    ) -> LockResult<Lease> {
        self.limits.check_ttl(ttl)?;
        audit::check_token(&self.issuer, "renew", object, token)?;
        let ttl_ms = millis(ttl);
        let mut invocation = self.scripts.renew.key(self.keys.lock_key(object));
        invocation
            .key(self.keys.fence_key(object))
            .arg(token.digest().to_hex())
            .arg(token.fence().get())
            .arg(ttl_ms)
            .arg(ttl_ms.saturating_add(self.fence_retention_ms));
        let items = reply::array(self.eval("renew", &invocation).await?)?;
        let status = reply::int(item(&items, 0)?)?;
        if status == 1 {
            return Ok(Lease {
                object: object.clone(),
                owner: reply::owner(item(&items, 1)?)?,
                token: token.clone(),
                fence: token.fence(),
                ttl,
            });
        }
        let refused = Self::refusal(object, status)?;
        audit::log_refusal("renew", object, token, &refused);
        Err(refused)
    }

    async fn validate(&self, object: &ObjectId, token: &LockToken) -> LockResult<Lease> {
        self.issuer.check(object, token)?;
        let mut invocation = self.scripts.validate.key(self.keys.lock_key(object));
        invocation
            .arg(token.digest().to_hex())
            .arg(token.fence().get());
        let items = reply::array(self.eval("validate", &invocation).await?)?;
        let status = reply::int(item(&items, 0)?)?;
        if status == 1 {
            return Ok(Lease {
                object: object.clone(),
                owner: reply::owner(item(&items, 1)?)?,
                token: token.clone(),
                fence: token.fence(),
                ttl: reply::pttl(item(&items, 2)?, self.limits.max_ttl)?,
            });
        }
        Err(Self::refusal(object, status)?)
    }

    async fn inspect(&self, object: &ObjectId) -> LockResult<Option<LockInfo>> {
        Ok(self.describe(std::slice::from_ref(object)).await?.pop())
    }

    async fn close(&self, timeout: Duration) -> bool {
        self.reclaimer.drain(timeout).await
    }

    async fn list(&self, query: &ListQuery) -> LockResult<LockPage> {
        query.check()?;
        let (mut scan, mut pending) = match &query.after {
            None => (ScanPosition::At(0), VecDeque::new()),
            Some(cursor) => ListCursor::parse(cursor)?.into_parts(),
        };
        let pattern = self.keys.lock_pattern(&query.prefix);
        let mut page: Vec<ObjectId> = Vec::with_capacity(query.limit);
        let mut seen = HashSet::new();
        while page.len() < query.limit {
            let Some(object) = pending.pop_front() else {
                break;
            };
            if object.as_str().starts_with(query.prefix.as_str()) && seen.insert(object.clone()) {
                page.push(object);
            }
        }
        let mut rounds = 0;
        while page.len() < query.limit && rounds < MAX_SCAN_ROUNDS {
            let ScanPosition::At(cursor) = scan else {
                break;
            };
            rounds += 1;
            let (next, keys) = self.scan(cursor, &pattern, query.limit).await?;
            scan = if next == 0 {
                ScanPosition::Done
            } else {
                ScanPosition::At(next)
            };
            for key in keys {
                let Some(object) = self.keys.object_of_lock_key(&key) else {
                    continue;
                };
                if !seen.insert(object.clone()) {
                    continue;
                }
                if page.len() < query.limit {
                    page.push(object);
                } else {
                    pending.push_back(object);
                }
            }
        }
        let locks = if page.is_empty() {
            Vec::new()
        } else {
            self.describe(&page).await?
        };
        let next = match (&scan, pending.is_empty()) {
            (ScanPosition::Done, true) => None,
            _ => Some(ListCursor { scan, pending }.encode()),
        };
        Ok(LockPage { locks, next })
    }

    async fn health(&self) -> LockResult<()> {
        let mut conn = self.conn.clone();
        let ping = redis::cmd("PING");
        match tokio::time::timeout(self.operation_timeout, ping.query_async::<Value>(&mut conn))
            .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(error::from_redis("health", &e)),
            Err(_) => Err(error::timed_out("health", self.operation_timeout)),
        }
    }
}

/// Where a listing's `SCAN` stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ScanPosition {
    /// Continue `SCAN` from this cursor.
    At(u64),
    /// `SCAN` has returned cursor 0: only pending objects remain.
    Done,
}

/// The `next` cursor of a listing page: the `SCAN` position plus the objects a `SCAN` step
/// returned beyond the page's limit (a step can return more than `COUNT` keys), so none are
/// lost between pages. Text form: `v1.<scan cursor or "end">[.<hex of object>]...`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ListCursor {
    scan: ScanPosition,
    pending: VecDeque<ObjectId>,
}

impl ListCursor {
    fn encode(&self) -> String {
        let mut out = String::from("v1.");
        match self.scan {
            ScanPosition::At(cursor) => out.push_str(&cursor.to_string()),
            ScanPosition::Done => out.push_str("end"),
        }
        for object in &self.pending {
            out.push('.');
            out.push_str(&hex::encode(object.as_str()));
        }
        out
    }

    fn parse(text: &str) -> LockResult<Self> {
        let bad = || LockError::invalid_argument("after", "not a cursor returned by this backend");
        let mut parts = text.split('.');
        if parts.next() != Some("v1") {
            return Err(bad());
        }
        let scan = match parts.next().ok_or_else(bad)? {
            "end" => ScanPosition::Done,
            number => ScanPosition::At(number.parse().map_err(|_| bad())?),
        };
        let mut pending = VecDeque::new();
        for part in parts {
            let bytes = hex::decode(part).map_err(|_| bad())?;
            let name = String::from_utf8(bytes).map_err(|_| bad())?;
            pending.push_back(ObjectId::new(name).map_err(|_| bad())?);
        }
        Ok(Self { scan, pending })
    }

    fn into_parts(self) -> (ScanPosition, VecDeque<ObjectId>) {
        (self.scan, self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_cursors_round_trip_with_pending_objects() {
        let cursor = ListCursor {
            scan: ScanPosition::At(17),
            pending: ["a.b", "ü/{x}"]
                .into_iter()
                .map(|n| ObjectId::new(n).expect("valid"))
                .collect(),
        };
        let text = cursor.encode();
        assert_eq!(ListCursor::parse(&text).expect("parses"), cursor);
        let done = ListCursor {
            scan: ScanPosition::Done,
            pending: VecDeque::new(),
        };
        assert_eq!(done.encode(), "v1.end");
        assert_eq!(ListCursor::parse("v1.end").expect("parses"), done);
    }

    #[test]
    fn foreign_cursors_are_invalid_arguments() {
        for text in ["", "17", "v2.0", "v1.x", "v1.0.zz", "v1.0.0", "v1.0.ff"] {
            assert!(
                matches!(
                    ListCursor::parse(text),
                    Err(LockError::InvalidArgument { field: "after", .. })
                ),
                "{text}"
            );
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn cursor() -> impl Strategy<Value = ListCursor> {
            (
                prop_oneof![
                    Just(ScanPosition::Done),
                    any::<u64>().prop_map(ScanPosition::At)
                ],
                proptest::collection::vec("[a-z./{}%ü ]{1,10}", 0..5),
            )
                .prop_map(|(scan, pending)| ListCursor {
                    scan,
                    pending: pending
                        .into_iter()
                        .map(|n| ObjectId::new(n).expect("valid"))
                        .collect(),
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// Every cursor a page hands out parses back to the same position and pending objects.
            #[test]
            fn list_cursors_round_trip(cursor in cursor()) {
                prop_assert_eq!(ListCursor::parse(&cursor.encode()).expect("parses"), cursor);
            }

            /// Any other text is refused as `invalid_argument` on `after`, never a panic.
            #[test]
            fn arbitrary_cursors_are_refused_without_panicking(text in prop_oneof![
                any::<String>(),
                "v1\\.[0-9a-z]{0,22}(\\.[0-9a-fA-F]{0,9}){0,3}",
            ]) {
                if let Err(e) = ListCursor::parse(&text) {
                    let names_after = matches!(e, LockError::InvalidArgument { field: "after", .. });
                    prop_assert!(names_after, "{e:?}");
                }
            }
        }
    }
}
