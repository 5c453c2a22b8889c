//! [`RedisStore`]: the [`LockStore`] on Redis, and [`RedisLockService`], the service on it.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use lockcore::store::{
    Attempt, Attempted, Blocker, Claim, Granted, HolderRef, HolderState, Queueing, StoreFeatures,
    Ticket, Verdict,
};
use lockcore::{
    async_trait, Conflict, ConflictCause, HolderInfo, Limits, ListQuery, LockDelayInfo, LockError,
    LockInfo, LockMode, LockPage, LockResult, LockScope, LockStore, Locks, ObjectId, ReclaimPolicy,
    Undo, WaitQueue,
};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ScriptInvocation, Value};
use tokio::task::JoinHandle;

use crate::config::RedisConfig;
use crate::dedicated::DedicatedConnections;
use crate::error::{self, BACKEND};
use crate::keys::{self, KeyLayout};
use crate::listener::Listener;
use crate::reply;
use crate::scripts::Scripts;

/// The [`lockcore::LockService`] on Redis, built as
/// `RedisLockService::new(RedisStore::connect(config).await?, issuer)`.
pub type RedisLockService = Locks<RedisStore>;

/// Delays between reconnect attempts of the command connection grow up to this.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(1);
/// How a grant whose acquire reply was lost is taken back: first after 100 ms, then with
/// backoff up to 2 s, while Redis does not answer for up to 5 min (at most the lease's TTL).
/// An acquire sent on the multiplexed connection runs before the take-back sent after it on the
/// same connection; one cut off on a dedicated connection may still be read by Redis from the
/// closed socket a moment later, so finding no such grant is retried for 5 s.
const RECLAIM: ReclaimPolicy = ReclaimPolicy {
    first_delay: Duration::from_millis(100),
    max_delay: Duration::from_secs(2),
    window: Duration::from_secs(5 * 60),
    absent_window: Duration::from_secs(5),
};
/// Indexed objects one `list` page looks at beyond twice its limit: objects in the index that
/// nobody holds (only waited for, in a lock-delay, or expired) are skipped, and a page returns
/// early rather than look at more than this.
const LIST_SLACK: usize = 64;

/// The [`LockStore`] keeping holders, fences and the waiter queue in Redis; see the crate docs
/// for the key layout and the guarantees.
///
/// Every primitive is one `EVALSHA` whatever the number of objects, on an idle dedicated
/// connection when there is one, otherwise on a multiplexed connection that reconnects by
/// itself. A listener on the release channel wakes this process's waiters.
pub struct RedisStore {
    conn: ConnectionManager,
    dedicated: DedicatedConnections,
    scripts: Scripts,
    keys: KeyLayout,
    channel: String,
    waits: Arc<WaitQueue>,
    limits: Limits,
    operation_timeout: Duration,
    fence_retention_ms: u64,
    redacted_url: String,
    listener: JoinHandle<()>,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.redacted_url)
            .field("keys", &self.keys)
            .field("limits", &self.limits)
            .field("operation_timeout", &self.operation_timeout)
            .field("waiting", &self.waits.waiting())
            .finish_non_exhaustive()
    }
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

impl RedisStore {
    /// Connects (within `connect_timeout`), loads the scripts and starts the release listener.
    ///
    /// Fails with [`LockError::Unavailable`] when Redis cannot be reached or refuses the
    /// connection, and with [`LockError::InvalidArgument`] for a bad URL or key prefix.
    pub async fn connect(config: RedisConfig) -> Result<Self, LockError> {
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
        Ok(Self {
            conn,
            dedicated,
            scripts,
            keys,
            channel,
            waits,
            limits: config.limits,
            operation_timeout: config.operation_timeout,
            fence_retention_ms: millis(config.fence_retention),
            redacted_url: config.redacted_url(),
            listener,
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
        self.within_timeout(operation, run).await
    }

    /// Runs one script invocation on the multiplexed connection only. Take-backs use it: an
    /// acquire sent there earlier reaches Redis first.
    async fn eval_multiplexed(
        &self,
        operation: &'static str,
        invocation: &ScriptInvocation<'_>,
    ) -> LockResult<Value> {
        let mut conn = self.conn.clone();
        self.within_timeout(operation, invocation.invoke_async(&mut conn))
            .await
    }

    async fn within_timeout(
        &self,
        operation: &'static str,
        run: impl std::future::Future<Output = redis::RedisResult<Value>>,
    ) -> LockResult<Value> {
        match tokio::time::timeout(self.operation_timeout, run).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(error::from_redis(operation, &e)),
            Err(_) => Err(error::timed_out(operation, self.operation_timeout)),
        }
    }

    /// Adds the keys every script that may free or index an object names first: the index,
    /// deadlines and waiting sets.
    fn index_keys(&self, invocation: &mut ScriptInvocation<'_>) {
        invocation
            .key(self.keys.index_key())
            .key(self.keys.deadlines_key())
            .key(self.keys.waiting_key());
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

/// A mode as the scripts store it.
fn mode_arg(mode: LockMode) -> &'static str {
    match mode {
        LockMode::Exclusive => "x",
        LockMode::Shared => "s",
    }
}

/// A scope as the scripts store it.
fn scope_arg(scope: LockScope) -> &'static str {
    match scope {
        LockScope::Object => "o",
        LockScope::Subtree => "t",
    }
}

/// A script's status for one holder: 1 done, 0 not held, -1 held by others.
fn verdict<T>(status: i64, done: impl FnOnce() -> LockResult<T>) -> LockResult<Verdict<T>> {
    match status {
        1 => done().map(Verdict::Done),
        0 => Ok(Verdict::NotHeld),
        -1 => Ok(Verdict::Mismatch),
        _ => Err(reply::malformed("holder status")),
    }
}

/// The object a script names by its member.
fn object_of(member: &Value) -> LockResult<ObjectId> {
    let bytes = match member {
        Value::BulkString(bytes) => bytes.as_slice(),
        Value::SimpleString(text) => text.as_bytes(),
        _ => return Err(reply::malformed("expected an object")),
    };
    keys::object_of_member(bytes).ok_or_else(|| reply::malformed("not an object's member"))
}

/// One object as the inspect and list scripts describe it (holders, the lock-delay in force,
/// the number of waiters), or `None` when it has neither holder nor lock-delay: it is free,
/// even while requests wait for it (behind something elsewhere in the tree, or behind earlier
/// waiters).
fn description(
    object: ObjectId,
    now_ms: u64,
    holders: Value,
    delay: Value,
    waiters: &Value,
) -> LockResult<Option<LockInfo>> {
    let fields = reply::array(holders)?;
    let mut infos = Vec::with_capacity(fields.len() / 6);
    let mut mode = LockMode::Shared;
    for holder in fields.chunks(6) {
        let [owner, holder_mode, scope, fence, acquired, expires] = holder else {
            return Err(reply::malformed("described holder"));
        };
        if reply::mode(holder_mode)? == LockMode::Exclusive {
            mode = LockMode::Exclusive;
        }
        let expires_ms = reply::millis_text(expires)?;
        infos.push(HolderInfo {
            owner: reply::owner(owner)?,
            scope: reply::scope(scope)?,
            fence: reply::fence(fence)?,
            acquired_at: reply::unix_millis(reply::millis_text(acquired)?),
            expires_at: reply::unix_millis(expires_ms),
            ttl: Duration::from_millis(expires_ms.saturating_sub(now_ms)),
        });
    }
    let delay = match reply::array(delay)?.as_slice() {
        [] => None,
        [owner, delay_mode, scope, fence, expired, until] => {
            let until_ms = reply::millis_text(until)?;
            let delay = LockDelayInfo {
                owner: reply::owner(owner)?,
                fence: reply::fence(fence)?,
                mode: reply::mode(delay_mode)?,
                scope: reply::scope(scope)?,
                until: reply::unix_millis(until_ms),
                remaining: Duration::from_millis(until_ms.saturating_sub(now_ms)),
            };
            Some((delay, reply::unix_millis(reply::millis_text(expired)?)))
        }
        _ => return Err(reply::malformed("described lock-delay")),
    };
    let waiters =
        u32::try_from(reply::int(waiters)?).map_err(|_| reply::malformed("waiter count"))?;
    let info = match LockInfo::from_holders(object.clone(), mode, infos) {
        Some(info) => Some(info.with_delay(delay.map(|(delay, _)| delay))),
        None => delay.map(|(delay, expired_at)| LockInfo::delayed(object, delay, expired_at)),
    };
    Ok(info.map(|info| info.with_waiters(waiters)))
}

#[async_trait]
impl LockStore for RedisStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn limits(&self) -> Limits {
        self.limits
    }

    fn features(&self) -> StoreFeatures {
        StoreFeatures::ALL
    }

    fn reclaim_policy(&self) -> Option<ReclaimPolicy> {
        Some(RECLAIM)
    }

    fn waits(&self) -> &WaitQueue {
        &self.waits
    }

    async fn try_acquire(&self, attempt: Attempt<'_>) -> LockResult<Attempted> {
        let ttl_ms = millis(attempt.ttl);
        let delay_ms = millis(attempt.lock_delay);
        let (queueing, ticket, keep_for) = match attempt.queueing {
            Some(Queueing { ticket, keep_for }) => {
                (1u8, ticket.map_or(0, |t| t.0), millis(keep_for).max(1))
            }
            None => (0, 0, 0),
        };
        let mut invocation = self.scripts.acquire.key(self.keys.tickets_key());
        self.index_keys(&mut invocation);
        for claim in attempt.claims {
            let object = claim.object.as_str();
            invocation
                .key(self.keys.holders_key(object))
                .key(self.keys.fence_key(object))
                .key(self.keys.queue_key(object));
            for ancestor in lockcore::path::ancestors(object) {
                invocation
                    .key(self.keys.holders_key(ancestor))
                    .key(self.keys.queue_key(ancestor));
            }
        }
        invocation
            .arg(attempt.owner.as_str())
            .arg(ttl_ms)
            .arg(
                ttl_ms
                    .saturating_add(delay_ms)
                    .saturating_add(self.fence_retention_ms),
            )
            .arg(1u64 << lockcore::fence::FENCE_CLOCK_SHIFT)
            .arg(queueing)
            .arg(ticket)
            .arg(keep_for)
            .arg(&self.channel)
            .arg(self.keys.prefix())
            .arg(delay_ms);
        for claim in attempt.claims {
            let object = claim.object.as_str();
            invocation
                .arg(keys::member(object))
                .arg(mode_arg(claim.mode))
                .arg(scope_arg(claim.scope))
                .arg(claim.digest.to_hex())
                .arg(lockcore::path::ancestors(object).count());
        }
        let items = reply::array(self.eval("acquire", &invocation).await?)?;
        match reply::int(item(&items, 0)?)? {
            1 => {
                let granted = items[1..]
                    .chunks(4)
                    .map(|grant| {
                        let [fence, ttl, replayed, mode] = grant else {
                            return Err(reply::malformed("acquire grant"));
                        };
                        Ok(Granted {
                            fence: reply::fence(fence)?,
                            mode: reply::mode(mode)?,
                            ttl: reply::pttl(ttl, self.limits.max_ttl)?,
                            replayed: reply::int(replayed)? == 1,
                        })
                    })
                    .collect::<LockResult<Vec<_>>>()?;
                if granted.len() != attempt.claims.len() {
                    return Err(reply::malformed("acquire grant count"));
                }
                Ok(Attempted::Granted(granted))
            }
            0 => self.refusal(&attempt, &items),
            _ => Err(reply::malformed("acquire status")),
        }
    }

    async fn leave_queue(&self, ticket: Ticket, objects: &[ObjectId]) -> LockResult<()> {
        if objects.is_empty() {
            return Ok(());
        }
        let mut invocation = self.scripts.leave.prepare_invoke();
        self.index_keys(&mut invocation);
        for object in objects {
            invocation
                .key(self.keys.holders_key(object.as_str()))
                .key(self.keys.queue_key(object.as_str()));
        }
        invocation.arg(&self.channel).arg(ticket.0);
        for object in objects {
            invocation.arg(keys::member(object.as_str()));
        }
        reply::int(&self.eval("leave queue", &invocation).await?)?;
        Ok(())
    }

    async fn abandon(&self, claims: &[Claim]) -> LockResult<Undo> {
        if claims.is_empty() {
            return Ok(Undo::Absent);
        }
        let mut invocation = self.scripts.abandon.prepare_invoke();
        self.index_keys(&mut invocation);
        for claim in claims {
            invocation
                .key(self.keys.holders_key(claim.object.as_str()))
                .key(self.keys.queue_key(claim.object.as_str()));
        }
        invocation.arg(&self.channel);
        for claim in claims {
            invocation
                .arg(keys::member(claim.object.as_str()))
                .arg(claim.digest.to_hex());
        }
        match reply::int(&self.eval_multiplexed("abandon", &invocation).await?)? {
            1 => Ok(Undo::TookBack),
            2 => Ok(Undo::Claimed),
            0 => Ok(Undo::Absent),
            _ => Err(reply::malformed("abandon status")),
        }
    }

    async fn release(&self, holders: &[HolderRef]) -> LockResult<Vec<Verdict<()>>> {
        if holders.is_empty() {
            return Ok(Vec::new());
        }
        let mut invocation = self.scripts.release.prepare_invoke();
        self.index_keys(&mut invocation);
        for holder in holders {
            invocation
                .key(self.keys.holders_key(holder.object.as_str()))
                .key(self.keys.queue_key(holder.object.as_str()));
        }
        invocation.arg(&self.channel);
        for holder in holders {
            invocation
                .arg(keys::member(holder.object.as_str()))
                .arg(holder.digest.to_hex())
                .arg(holder.fence.get());
        }
        let statuses = reply::array(self.eval("release", &invocation).await?)?;
        if statuses.len() != holders.len() {
            return Err(reply::malformed("release verdict count"));
        }
        statuses
            .iter()
            .map(|status| verdict(reply::int(status)?, || Ok(())))
            .collect()
    }

    async fn renew(
        &self,
        holders: &[HolderRef],
        ttl: Duration,
    ) -> LockResult<Vec<Verdict<HolderState>>> {
        if holders.is_empty() {
            return Ok(Vec::new());
        }
        let ttl_ms = millis(ttl);
        let mut invocation = self.scripts.renew.prepare_invoke();
        invocation
            .key(self.keys.index_key())
            .key(self.keys.deadlines_key());
        for holder in holders {
            invocation
                .key(self.keys.holders_key(holder.object.as_str()))
                .key(self.keys.fence_key(holder.object.as_str()));
        }
        invocation
            .arg(ttl_ms)
            .arg(ttl_ms.saturating_add(self.fence_retention_ms));
        for holder in holders {
            invocation
                .arg(keys::member(holder.object.as_str()))
                .arg(holder.digest.to_hex())
                .arg(holder.fence.get());
        }
        let items = reply::array(self.eval("renew", &invocation).await?)?;
        if items.len() != holders.len() * 3 {
            return Err(reply::malformed("renew verdict count"));
        }
        items
            .chunks(3)
            .map(|state| {
                let [status, owner, mode] = state else {
                    return Err(reply::malformed("renew verdict"));
                };
                verdict(reply::int(status)?, || {
                    Ok(HolderState {
                        owner: reply::owner(owner)?,
                        mode: reply::mode(mode)?,
                        ttl,
                    })
                })
            })
            .collect()
    }

    async fn validate(&self, holder: &HolderRef) -> LockResult<Verdict<HolderState>> {
        let mut invocation = self
            .scripts
            .validate
            .key(self.keys.holders_key(holder.object.as_str()));
        invocation
            .arg(holder.digest.to_hex())
            .arg(holder.fence.get());
        let items = reply::array(self.eval("validate", &invocation).await?)?;
        verdict(reply::int(item(&items, 0)?)?, || {
            Ok(HolderState {
                owner: reply::owner(item(&items, 1)?)?,
                mode: reply::mode(item(&items, 2)?)?,
                ttl: reply::pttl(item(&items, 3)?, self.limits.max_ttl)?,
            })
        })
    }

    async fn downgrade(&self, holder: &HolderRef) -> LockResult<Verdict<HolderState>> {
        let object = holder.object.as_str();
        let mut invocation = self.scripts.downgrade.key(self.keys.waiting_key());
        invocation
            .key(self.keys.holders_key(object))
            .key(self.keys.queue_key(object))
            .arg(&self.channel)
            .arg(keys::member(object))
            .arg(holder.digest.to_hex())
            .arg(holder.fence.get());
        let items = reply::array(self.eval("downgrade", &invocation).await?)?;
        verdict(reply::int(item(&items, 0)?)?, || {
            Ok(HolderState {
                owner: reply::owner(item(&items, 1)?)?,
                mode: LockMode::Shared,
                ttl: reply::pttl(item(&items, 2)?, self.limits.max_ttl)?,
            })
        })
    }

    async fn inspect(&self, object: &ObjectId) -> LockResult<Option<LockInfo>> {
        let mut invocation = self
            .scripts
            .inspect
            .key(self.keys.holders_key(object.as_str()));
        invocation.key(self.keys.queue_key(object.as_str()));
        let items = reply::array(self.eval("inspect", &invocation).await?)?;
        let [now, holders, delay, waiters] =
            <[Value; 4]>::try_from(items).map_err(|_| reply::malformed("inspect reply"))?;
        description(
            object.clone(),
            reply::millis_text(&now)?,
            holders,
            delay,
            &waiters,
        )
    }

    async fn list(&self, query: &ListQuery) -> LockResult<LockPage> {
        let start = keys::escape(&query.prefix);
        let low = match &query.after {
            Some(cursor) => {
                let after = ListCursor::parse(cursor)?;
                if after.0.as_bytes() >= start.as_bytes() {
                    format!("({}", after.0)
                } else {
                    format!("[{start}")
                }
            }
            None => format!("[{start}"),
        };
        // Every member starting with `start`: UTF-8 never holds the byte 0xff.
        let mut high = Vec::with_capacity(start.len() + 2);
        high.push(b'(');
        high.extend_from_slice(start.as_bytes());
        high.push(0xff);
        let mut invocation = self.scripts.list.prepare_invoke();
        self.index_keys(&mut invocation);
        invocation
            .arg(self.keys.prefix())
            .arg(low)
            .arg(high)
            .arg(query.limit)
            .arg(query.limit.saturating_mul(2).saturating_add(LIST_SLACK));
        let mut items = reply::array(self.eval("list", &invocation).await?)?.into_iter();
        let (Some(now), Some(next)) = (items.next(), items.next()) else {
            return Err(reply::malformed("list reply"));
        };
        let now_ms = reply::millis_text(&now)?;
        let mut locks = Vec::with_capacity(items.len());
        for listed in items {
            let [member, holders, delay, waiters] =
                <[Value; 4]>::try_from(reply::array(listed)?)
                    .map_err(|_| reply::malformed("listed object"))?;
            let object = object_of(&member)?;
            if let Some(info) = description(object, now_ms, holders, delay, &waiters)? {
                locks.push(info);
            }
        }
        let next = match reply::text(&next)? {
            "" => None,
            member => Some(ListCursor(member.to_owned()).encode()),
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

impl RedisStore {
    /// Reads the acquire script's refusal: the ticket, the conflicts, and the blockers when the
    /// attempt drew the ticket.
    fn refusal(&self, attempt: &Attempt<'_>, items: &[Value]) -> LockResult<Attempted> {
        let ticket = match reply::int(item(items, 1)?)? {
            0 => None,
            n => Some(Ticket(
                u64::try_from(n).map_err(|_| reply::malformed("ticket"))?,
            )),
        };
        let count = usize::try_from(reply::int(item(items, 2)?)?)
            .map_err(|_| reply::malformed("conflict count"))?;
        let end = count
            .checked_mul(4)
            .and_then(|n| n.checked_add(3))
            .filter(|&end| end <= items.len())
            .ok_or_else(|| reply::malformed("conflict count"))?;
        let conflicts = items[3..end]
            .chunks(4)
            .map(|conflict| {
                let [index, holder, retry, cause] = conflict else {
                    return Err(reply::malformed("acquire conflict"));
                };
                let claim = usize::try_from(reply::int(index)?)
                    .ok()
                    .and_then(|i| attempt.claims.get(i.checked_sub(1)?))
                    .ok_or_else(|| reply::malformed("conflict index"))?;
                Ok(Conflict {
                    object: claim.object.clone(),
                    holder: reply::owner(holder)?,
                    retry_after: reply::pttl(retry, self.limits.max_ttl)?,
                    cause: ConflictCause::from_wire(reply::text(cause)?),
                })
            })
            .collect::<LockResult<Vec<_>>>()?;
        if conflicts.is_empty() {
            return Err(reply::malformed("refusal without conflicts"));
        }
        let blockers = items[end..]
            .chunks(4)
            .map(|blocker| {
                let [member, owner, fence, wanted] = blocker else {
                    return Err(reply::malformed("blocker"));
                };
                Ok(Blocker {
                    object: object_of(member)?,
                    owner: reply::owner(owner)?,
                    fence: reply::fence(fence)?,
                    wanted: reply::mode(wanted)?,
                })
            })
            .collect::<LockResult<Vec<_>>>()?;
        Ok(Attempted::Refused {
            conflicts,
            ticket,
            blockers,
        })
    }
}

/// The `next` cursor of a listing page: the member of the last object the page looked at; the
/// next page starts after it. Text form: `v2.<hex of the member>`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ListCursor(String);

impl ListCursor {
    fn encode(&self) -> String {
        format!("v2.{}", hex::encode(self.0.as_bytes()))
    }

    fn parse(text: &str) -> LockResult<Self> {
        let bad = || LockError::invalid_argument("after", "not a cursor returned by this backend");
        let hex_member = text.strip_prefix("v2.").ok_or_else(bad)?;
        let member =
            String::from_utf8(hex::decode(hex_member).map_err(|_| bad())?).map_err(|_| bad())?;
        keys::object_of_member(member.as_bytes()).ok_or_else(bad)?;
        Ok(Self(member))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_cursors_round_trip() {
        for name in ["a.b", "ü/{x}", "/vol/a%b"] {
            let cursor = ListCursor(keys::member(name));
            let text = cursor.encode();
            assert!(text.starts_with("v2."), "{text}");
            assert_eq!(ListCursor::parse(&text).expect("parses"), cursor);
        }
    }

    #[test]
    fn foreign_cursors_are_invalid_arguments() {
        let not_a_member = format!("v2.{}", hex::encode("a{b"));
        let not_an_id = format!("v2.{}", hex::encode("/a/"));
        for text in [
            "",
            "17",
            "v1.0",
            "v1.end",
            "v2.",
            "v2.zz",
            "v2.ff",
            &not_a_member,
            &not_an_id,
        ] {
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

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// Every cursor a page hands out parses back to the same position.
            #[test]
            fn list_cursors_round_trip(name in "[a-z./{}%ü ]{0,8}[a-z{}%ü]") {
                if let Ok(object) = ObjectId::new(name) {
                    let cursor = ListCursor(keys::member(object.as_str()));
                    prop_assert_eq!(ListCursor::parse(&cursor.encode()).expect("parses"), cursor);
                }
            }

            /// Any other text is refused as `invalid_argument` on `after`, never a panic.
            #[test]
            fn arbitrary_cursors_are_refused_without_panicking(text in prop_oneof![
                any::<String>(),
                "v2\\.[0-9a-fA-F]{0,12}",
            ]) {
                if let Err(e) = ListCursor::parse(&text) {
                    let names_after = matches!(e, LockError::InvalidArgument { field: "after", .. });
                    prop_assert!(names_after, "{e:?}");
                }
            }
        }
    }
}
