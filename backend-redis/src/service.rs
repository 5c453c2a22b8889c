//! [`RedisStore`]: the [`LockStore`] on Redis, and [`RedisLockService`], the service on it.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use lockcore::store::{
    Attempt, Attempted, Claim, Granted, HolderRef, HolderState, Queueing, Ticket, Verdict,
};
use lockcore::{
    async_trait, Conflict, HolderInfo, Limits, ListQuery, LockError, LockInfo, LockMode, LockPage,
    LockResult, LockStore, Locks, ObjectId, ReclaimPolicy, Undo, WaitQueue,
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
/// Most `SCAN` calls one `list` page makes before it returns what it has.
const MAX_SCAN_ROUNDS: usize = 64;

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

    /// Describes the holders of `objects` (one EVALSHA), skipping objects nobody holds.
    async fn describe(&self, objects: &[ObjectId]) -> LockResult<Vec<LockInfo>> {
        let mut invocation = self.scripts.describe.prepare_invoke();
        for object in objects {
            invocation.key(self.keys.holders_key(object));
        }
        let items = reply::array(self.eval("describe", &invocation).await?)?;
        let now_ms = reply::millis_text(item(&items, 0)?)?;
        let mut out = Vec::with_capacity(objects.len());
        for (object, entry) in objects.iter().zip(items.into_iter().skip(1)) {
            let fields = reply::array(entry)?;
            let mut holders = Vec::with_capacity(fields.len() / 5);
            let mut mode = LockMode::Shared;
            for holder in fields.chunks(5) {
                let [owner, holder_mode, fence, acquired, expires] = holder else {
                    return Err(reply::malformed("describe holder"));
                };
                if reply::mode(holder_mode)? == LockMode::Exclusive {
                    mode = LockMode::Exclusive;
                }
                let expires_ms = reply::millis_text(expires)?;
                holders.push(HolderInfo {
                    owner: reply::owner(owner)?,
                    fence: reply::fence(fence)?,
                    acquired_at: reply::unix_millis(reply::millis_text(acquired)?),
                    expires_at: reply::unix_millis(expires_ms),
                    ttl: Duration::from_millis(expires_ms.saturating_sub(now_ms)),
                    scope: lockcore::LockScope::Object,
                });
            }
            if let Some(info) = LockInfo::from_holders(object.clone(), mode, holders) {
                out.push(info);
            }
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

/// A mode as the scripts store it.
fn mode_arg(mode: LockMode) -> &'static str {
    match mode {
        LockMode::Exclusive => "x",
        LockMode::Shared => "s",
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

#[async_trait]
impl LockStore for RedisStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn limits(&self) -> Limits {
        self.limits
    }

    fn reclaim_policy(&self) -> Option<ReclaimPolicy> {
        Some(RECLAIM)
    }

    fn waits(&self) -> &WaitQueue {
        &self.waits
    }

    async fn try_acquire(&self, attempt: Attempt<'_>) -> LockResult<Attempted> {
        let ttl_ms = millis(attempt.ttl);
        let (queueing, ticket, keep_for) = match attempt.queueing {
            Some(Queueing { ticket, keep_for }) => {
                (1u8, ticket.map_or(0, |t| t.0), millis(keep_for).max(1))
            }
            None => (0, 0, 0),
        };
        let mut invocation = self.scripts.acquire.key(self.keys.tickets_key());
        for claim in attempt.claims {
            invocation
                .key(self.keys.holders_key(&claim.object))
                .key(self.keys.fence_key(&claim.object))
                .key(self.keys.queue_key(&claim.object));
        }
        invocation
            .arg(attempt.owner.as_str())
            .arg(ttl_ms)
            .arg(ttl_ms.saturating_add(self.fence_retention_ms))
            .arg(1u64 << lockcore::fence::FENCE_CLOCK_SHIFT)
            .arg(queueing)
            .arg(ticket)
            .arg(keep_for)
            .arg(&self.channel);
        for claim in attempt.claims {
            invocation
                .arg(claim.object.as_str())
                .arg(mode_arg(claim.mode))
                .arg(claim.digest.to_hex());
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
            0 => {
                let ticket = match reply::int(item(&items, 1)?)? {
                    0 => None,
                    n => Some(Ticket(
                        u64::try_from(n).map_err(|_| reply::malformed("ticket"))?,
                    )),
                };
                let conflicts = items[2..]
                    .chunks(3)
                    .map(|conflict| {
                        let [index, holder, retry] = conflict else {
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
                            cause: lockcore::ConflictCause::Held,
                        })
                    })
                    .collect::<LockResult<Vec<_>>>()?;
                if conflicts.is_empty() {
                    return Err(reply::malformed("refusal without conflicts"));
                }
                Ok(Attempted::Refused {
                    conflicts,
                    ticket,
                    blockers: Vec::new(),
                })
            }
            _ => Err(reply::malformed("acquire status")),
        }
    }

    async fn leave_queue(&self, ticket: Ticket, objects: &[ObjectId]) -> LockResult<()> {
        if objects.is_empty() {
            return Ok(());
        }
        let mut invocation = self.scripts.leave.prepare_invoke();
        for object in objects {
            invocation.key(self.keys.queue_key(object));
        }
        invocation.arg(&self.channel).arg(ticket.0);
        for object in objects {
            invocation.arg(object.as_str());
        }
        reply::int(&self.eval("leave queue", &invocation).await?)?;
        Ok(())
    }

    async fn abandon(&self, claims: &[Claim]) -> LockResult<Undo> {
        if claims.is_empty() {
            return Ok(Undo::Absent);
        }
        let mut invocation = self.scripts.abandon.prepare_invoke();
        for claim in claims {
            invocation
                .key(self.keys.holders_key(&claim.object))
                .key(self.keys.queue_key(&claim.object));
        }
        invocation.arg(&self.channel);
        for claim in claims {
            invocation
                .arg(claim.object.as_str())
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
        for holder in holders {
            invocation
                .key(self.keys.holders_key(&holder.object))
                .key(self.keys.queue_key(&holder.object));
        }
        invocation.arg(&self.channel);
        for holder in holders {
            invocation
                .arg(holder.object.as_str())
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
        for holder in holders {
            invocation
                .key(self.keys.holders_key(&holder.object))
                .key(self.keys.fence_key(&holder.object));
        }
        invocation
            .arg(ttl_ms)
            .arg(ttl_ms.saturating_add(self.fence_retention_ms));
        for holder in holders {
            invocation
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
            .key(self.keys.holders_key(&holder.object));
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
        let mut invocation = self
            .scripts
            .downgrade
            .key(self.keys.holders_key(&holder.object));
        invocation
            .key(self.keys.queue_key(&holder.object))
            .arg(&self.channel)
            .arg(holder.object.as_str())
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
        Ok(self.describe(std::slice::from_ref(object)).await?.pop())
    }

    async fn list(&self, query: &ListQuery) -> LockResult<LockPage> {
        let (mut scan, mut pending) = match &query.after {
            None => (ScanPosition::At(0), VecDeque::new()),
            Some(cursor) => ListCursor::parse(cursor)?.into_parts(),
        };
        let pattern = self.keys.holders_pattern(&query.prefix);
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
                let Some(object) = self.keys.object_of_holders_key(&key) else {
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
