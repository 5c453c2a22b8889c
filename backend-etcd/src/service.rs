//! [`EtcdStore`]: the [`LockStore`] on etcd, and [`EtcdLockService`], the service on it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, GetResponse, KeyValue, PutOptions, Txn,
    TxnOp, TxnOpResponse, TxnResponse,
};
use lockcore::store::{
    Attempt, Attempted, Claim, Granted, HolderRef, HolderState, StoreFeatures, Ticket, Verdict,
};
use lockcore::{
    async_trait, Conflict, ConflictCause, Fence, HolderInfo, Limits, ListQuery, LockDelayInfo,
    LockError, LockInfo, LockMode, LockPage, LockResult, LockScope, LockStore, Locks, ObjectId,
    ReclaimPolicy, Undo, WaitQueue,
};
use tokio::task::JoinHandle;

use crate::config::EtcdConfig;
use crate::error::{self, malformed, BACKEND};
use crate::keys::{prefix_end, HolderRecord, KeyLayout, Kind, QueueRecord};
use crate::view::{bound_ranges, judge, Block, HolderKv, View};
use crate::watcher::WakeWatch;

/// The [`lockcore::LockService`] on etcd, built as
/// `EtcdLockService::new(EtcdStore::connect(config).await?, issuer)`.
pub type EtcdLockService = Locks<EtcdStore>;

/// How a grant whose acquire reply was lost is taken back: first after 100 ms, then with
/// backoff up to 2 s, while etcd does not answer for up to 5 min (at most the lease's TTL).
/// A transaction whose reply was lost may still be in flight to the leader (gRPC requests on
/// separate streams are not ordered), so finding no such grant is retried for 5 s.
const RECLAIM: ReclaimPolicy = ReclaimPolicy {
    first_delay: Duration::from_millis(100),
    max_delay: Duration::from_secs(2),
    window: Duration::from_secs(5 * 60),
    absent_window: Duration::from_secs(5),
};
/// How often one primitive re-reads and tries again when its conditional write finds that a
/// key it read has changed meanwhile (another process won the race).
const MAX_CONFLICT_RETRIES: usize = 64;
/// TTL of the queue leases (seconds): a queue entry lasts 4 to 6 s after its request's last
/// attempt (waiters attempt at least every 2 s), and at most 6 s after its process died.
const QUEUE_LEASE_TTL: i64 = 6;
/// How long one queue lease is used for new and renewed entries before the next is granted.
const QUEUE_LEASE_REUSE: Duration = Duration::from_secs(2);
/// Lease TTL queries run at most this many at a time (inspect and list).
const TTL_QUERY_BATCH: usize = 64;
/// Keys one `list` range read asks for at a time.
const LIST_BATCH: i64 = 256;
/// etcd's default limit on the operations of one transaction level (`--max-txn-ops`): a
/// nested transaction gets what its parent's compares or operations leave of it.
const MAX_TXN_OPS: usize = 128;
/// Range reads per nested transaction when one decision reads more ranges than
/// [`MAX_TXN_OPS`] (deep ids, many objects): up to 64 × 64 reads in one transaction.
const READ_CHUNK: usize = 64;
/// The most compares one grant makes: etcd's limit less room for the nested transaction of
/// each object's writes (at most 4 operations, at most 64 objects).
const COMPARE_BUDGET: usize = MAX_TXN_OPS - 8;
/// One second: etcd leases, and so lock-delays, count whole seconds.
const ONE_SECOND: Duration = Duration::from_secs(1);

/// The [`LockStore`] keeping holders, fences and the waiter queue in etcd; see the crate docs
/// for the key layout, the round trips and the guarantees.
pub struct EtcdStore {
    client: Client,
    keys: KeyLayout,
    waits: Arc<WaitQueue>,
    limits: Limits,
    min_ttl: Duration,
    operation_timeout: Duration,
    redacted_url: String,
    queue_lease: tokio::sync::Mutex<Option<(i64, Instant)>>,
    watch: JoinHandle<()>,
}

impl fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdStore")
            .field("url", &self.redacted_url)
            .field("keys", &self.keys)
            .field("limits", &self.limits)
            .field("min_ttl", &self.min_ttl)
            .field("operation_timeout", &self.operation_timeout)
            .field("waiting", &self.waits.waiting())
            .finish_non_exhaustive()
    }
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        self.watch.abort();
    }
}

/// A lease granted for grants or renewals: it expires `ttl` after etcd granted it, on etcd's
/// clock, which is after `sent`.
#[derive(Debug, Clone, Copy)]
struct FreshLease {
    id: i64,
    ttl: Duration,
    sent: Instant,
}

impl FreshLease {
    /// Time surely left on the lease: its TTL less the time since its grant was sent, in whole
    /// milliseconds (at least 1 ms). Grants report this: a grant that lost races and read
    /// again reports a lease that much older.
    fn left(&self) -> Duration {
        let left = self.ttl.saturating_sub(self.sent.elapsed());
        Duration::from_millis(u64::try_from(left.as_millis()).unwrap_or(u64::MAX).max(1))
    }

    /// The TTL a renewal reports: the TTL asked for, as the other backends report it. The
    /// lease started when etcd granted it, one round trip before the renewal's transaction
    /// committed (see the crate docs, "Expiry").
    fn reported(&self) -> Duration {
        self.ttl
    }
}

/// The leases one grant puts its keys on: the holders' lease of the TTL, and for a grant with
/// a lock-delay, the markers' lease of the TTL plus the delay (in whole seconds, rounded up).
#[derive(Debug, Clone, Copy)]
struct GrantLeases {
    holders: FreshLease,
    markers: Option<FreshLease>,
}

impl GrantLeases {
    fn ids(&self) -> impl Iterator<Item = i64> {
        std::iter::once(self.holders.id).chain(self.markers.map(|m| m.id))
    }
}

/// The lock-delay etcd enforces for `delay`: whole seconds, rounded up (1 ms is 1 s).
fn delay_seconds(delay: Duration) -> u64 {
    delay
        .as_millis()
        .div_ceil(1000)
        .try_into()
        .unwrap_or(u64::MAX)
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn unix_millis_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(millis)
        .unwrap_or(0)
}

fn get_response(response: Option<TxnOpResponse>, what: &str) -> LockResult<GetResponse> {
    match response {
        Some(TxnOpResponse::Get(get)) => Ok(get),
        _ => Err(LockError::Internal(format!(
            "etcd: transaction answered {what} with the wrong kind of response"
        ))),
    }
}

fn txn_response(response: Option<TxnOpResponse>, what: &str) -> LockResult<TxnResponse> {
    match response {
        Some(TxnOpResponse::Txn(txn)) => Ok(txn),
        _ => Err(LockError::Internal(format!(
            "etcd: transaction answered {what} with the wrong kind of response"
        ))),
    }
}

fn revision(response: &TxnResponse) -> LockResult<i64> {
    response
        .header()
        .map(|h| h.revision())
        .ok_or_else(|| LockError::Internal("etcd: response without a header".into()))
}

/// A range read of every key starting with `prefix`.
fn get_prefix(prefix: Vec<u8>) -> TxnOp {
    TxnOp::get(prefix, Some(GetOptions::new().with_prefix()))
}

/// A count of the keys starting with `prefix`.
fn count_prefix(prefix: Vec<u8>) -> TxnOp {
    TxnOp::get(
        prefix,
        Some(GetOptions::new().with_prefix().with_count_only()),
    )
}

/// The ranges one attempt reads, and which of them its grant guards.
#[derive(Debug, Default)]
struct ReadPlan {
    ops: Vec<TxnOp>,
    /// Per claim, the index in `ops` of its fence key read.
    fence_at: Vec<usize>,
    /// The holder and lock-delay ranges read (`[start, end)`): a grant fails if a key was
    /// created in one of them since the read.
    guards: Vec<(Vec<u8>, Vec<u8>)>,
}

impl ReadPlan {
    fn prefix(&mut self, prefix: Vec<u8>, guarded: bool) {
        if guarded {
            self.guards.push((prefix.clone(), prefix_end(&prefix)));
        }
        self.ops.push(get_prefix(prefix));
    }

    fn range(&mut self, (start, end): (Vec<u8>, Vec<u8>), guarded: bool) {
        if guarded {
            self.guards.push((start.clone(), end.clone()));
        }
        self.ops
            .push(TxnOp::get(start, Some(GetOptions::new().with_range(end))));
    }
}

/// What one holder's keys said, read by [`EtcdStore::find_holders`].
#[derive(Debug)]
enum Found {
    /// The holder, as read, and how many holders its object had then (itself included).
    Holder(HolderKv, i64),
    /// No such holder: [`Verdict::NotHeld`] or [`Verdict::Mismatch`].
    Absent(Verdict<()>),
}

fn absent_verdict<T>(verdict: &Verdict<()>) -> Verdict<T> {
    match verdict {
        Verdict::Mismatch => Verdict::Mismatch,
        _ => Verdict::NotHeld,
    }
}

/// One object's keys gathered for a description (inspect or list).
#[derive(Debug)]
struct Described {
    object: ObjectId,
    holders: Vec<HolderKv>,
    markers: Vec<HolderKv>,
    waiters: u32,
}

impl EtcdStore {
    /// Connects (within `connect_timeout`) and starts the wake-up watch.
    ///
    /// Fails with [`LockError::Unavailable`] when etcd cannot be reached, and with
    /// [`LockError::InvalidArgument`] for a bad URL or setting.
    pub async fn connect(config: EtcdConfig) -> Result<Self, LockError> {
        config.check()?;
        let endpoints = config.endpoints()?;
        let mut options = ConnectOptions::new()
            .with_connect_timeout(config.connect_timeout)
            .with_timeout(config.operation_timeout)
            .with_keep_alive(Duration::from_secs(5), config.operation_timeout)
            // Fail fast while the cluster has no leader (an election) instead of waiting.
            .with_require_leader(true);
        if let Some((user, password)) = config.credentials()? {
            options = options.with_user(user, password);
        }
        if config.uses_tls() {
            options = options.with_tls(tls_options(&config)?);
        }
        let client = match tokio::time::timeout(
            config.connect_timeout,
            Client::connect(&endpoints, Some(options)),
        )
        .await
        {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => {
                return Err(LockError::unavailable(
                    BACKEND,
                    format!("connect to {}: {e}", config.redacted_url()),
                ))
            }
            Err(_) => return Err(error::timed_out("connect", config.connect_timeout)),
        };
        let keys = KeyLayout::new(&config.key_prefix);
        let watch = WakeWatch {
            client: client.clone(),
            keys: keys.clone(),
            connect_timeout: config.connect_timeout,
        };
        let opened = watch.open().await?;
        let waits = Arc::new(WaitQueue::new());
        let watch = tokio::spawn(watch.run(Arc::downgrade(&waits), opened));
        let store = Self {
            client,
            keys,
            waits,
            limits: config.limits,
            min_ttl: config.min_ttl,
            operation_timeout: config.operation_timeout,
            redacted_url: config.redacted_url(),
            queue_lease: tokio::sync::Mutex::new(None),
            watch,
        };
        store.health().await?;
        Ok(store)
    }

    /// The shortest TTL this store grants (whole seconds; see the crate docs, "Expiry").
    pub fn min_ttl(&self) -> Duration {
        self.min_ttl
    }

    /// The highest fence etcd remembers for `object` (its fence key), if any.
    pub async fn last_fence(&self, object: &ObjectId) -> LockResult<Option<Fence>> {
        let mut kv = self.client.kv_client();
        let key = self.keys.fence_key(object);
        let response = self.timed("last fence", kv.get(key, None)).await?;
        response
            .kvs()
            .first()
            .map(|kv| parse_fence(kv.value()))
            .transpose()
    }

    async fn timed<T>(
        &self,
        operation: &'static str,
        run: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> LockResult<T> {
        match tokio::time::timeout(self.operation_timeout, run).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(error::from_etcd(operation, &e)),
            Err(_) => Err(error::timed_out(operation, self.operation_timeout)),
        }
    }

    async fn txn(&self, operation: &'static str, txn: Txn) -> LockResult<TxnResponse> {
        let mut kv = self.client.kv_client();
        self.timed(operation, kv.txn(txn)).await
    }

    /// Refuses a TTL etcd cannot lease exactly: below the minimum, or not whole seconds.
    fn lease_seconds(&self, ttl: Duration) -> LockResult<i64> {
        if ttl < self.min_ttl || ttl.subsec_nanos() != 0 {
            return Err(LockError::invalid_argument(
                "ttl",
                format!(
                    "etcd leases count whole seconds: must be a whole number of seconds, at least {} s",
                    self.min_ttl.as_secs()
                ),
            ));
        }
        i64::try_from(ttl.as_secs()).map_err(|_| LockError::invalid_argument("ttl", "too long"))
    }

    /// Grants a lease of exactly `seconds` (etcd raises leases below its minimum TTL: such a
    /// lease is revoked and the TTL refused).
    async fn grant(&self, seconds: i64) -> LockResult<FreshLease> {
        let sent = Instant::now();
        let mut lease = self.client.lease_client();
        let response = self
            .timed("lease grant", lease.grant(seconds, None))
            .await?;
        if response.ttl() != seconds {
            self.revoke_later(response.id());
            return Err(LockError::invalid_argument(
                "ttl",
                format!(
                    "below this etcd cluster's minimum lease TTL of {} s",
                    response.ttl()
                ),
            ));
        }
        Ok(FreshLease {
            id: response.id(),
            ttl: Duration::from_secs(seconds.unsigned_abs()),
            sent,
        })
    }

    /// Revokes a lease nobody uses, in the background (best effort: it expires anyway).
    fn revoke_later(&self, id: i64) {
        let mut lease = self.client.lease_client();
        let timeout = self.operation_timeout;
        tokio::spawn(async move {
            let _ = tokio::time::timeout(timeout, lease.revoke(id)).await;
        });
    }

    /// Revokes, in the background, each of `leases` that no key uses any more (leases a renew
    /// moved every holder off). Grant leases are never attached to new keys, so one found
    /// empty stays empty. Best effort: an unrevoked lease expires anyway.
    fn revoke_if_empty_later(&self, mut leases: Vec<i64>) {
        leases.sort_unstable();
        leases.dedup();
        leases.retain(|&id| id != 0);
        if leases.is_empty() {
            return;
        }
        let mut lease = self.client.lease_client();
        let timeout = self.operation_timeout;
        tokio::spawn(async move {
            for id in leases {
                let options = etcd_client::LeaseTimeToLiveOptions::new().with_keys();
                let Ok(Ok(found)) =
                    tokio::time::timeout(timeout, lease.time_to_live(id, Some(options))).await
                else {
                    continue;
                };
                if found.ttl() > 0 && found.keys().is_empty() {
                    let _ = tokio::time::timeout(timeout, lease.revoke(id)).await;
                }
            }
        });
    }

    /// The lease new and renewed queue entries are attached to: one per store, replaced every
    /// [`QUEUE_LEASE_REUSE`].
    async fn queue_lease(&self) -> LockResult<i64> {
        let mut current = self.queue_lease.lock().await;
        if let Some((id, granted)) = *current {
            if granted.elapsed() < QUEUE_LEASE_REUSE {
                return Ok(id);
            }
        }
        let sent = Instant::now();
        let mut lease = self.client.lease_client();
        let response = self
            .timed("queue lease grant", lease.grant(QUEUE_LEASE_TTL, None))
            .await?;
        *current = Some((response.id(), sent));
        Ok(response.id())
    }

    /// The current queue lease, if it is still fresh enough for entries to stay on it.
    async fn fresh_queue_lease(&self) -> Option<i64> {
        let current = self.queue_lease.lock().await;
        current
            .filter(|(_, granted)| granted.elapsed() < QUEUE_LEASE_REUSE)
            .map(|(id, _)| id)
    }

    /// Seconds left on each lease (`None` once expired), queried a batch at a time.
    async fn lease_ttls(&self, ids: &[i64]) -> LockResult<HashMap<i64, Option<Duration>>> {
        let mut unique: Vec<i64> = ids.to_vec();
        unique.sort_unstable();
        unique.dedup();
        let mut out = HashMap::with_capacity(unique.len());
        for batch in unique.chunks(TTL_QUERY_BATCH) {
            let queries = batch.iter().map(|&id| {
                let mut lease = self.client.lease_client();
                async move {
                    let response = self
                        .timed("lease time to live", lease.time_to_live(id, None))
                        .await?;
                    let ttl = u64::try_from(response.ttl()).ok().map(Duration::from_secs);
                    Ok::<_, LockError>((id, ttl))
                }
            });
            for result in futures_util::future::join_all(queries).await {
                let (id, ttl) = result?;
                out.insert(id, ttl);
            }
        }
        Ok(out)
    }

    /// Runs range reads (and counts) in as few transactions as etcd's limits allow, in
    /// parallel: the answers in order, and the revision of the earliest read. A guard on that
    /// revision covers every read (a key created after any read was created after it).
    async fn read_all(
        &self,
        operation: &'static str,
        ops: Vec<TxnOp>,
    ) -> LockResult<(Vec<GetResponse>, i64)> {
        let count = ops.len();
        let txns: Vec<Txn> = if count <= MAX_TXN_OPS {
            vec![Txn::new().and_then(ops)]
        } else {
            // Nested transactions of READ_CHUNK reads, READ_CHUNK of them per transaction.
            let mut chunks = Vec::new();
            let mut ops = ops.into_iter().peekable();
            while ops.peek().is_some() {
                let chunk: Vec<TxnOp> = ops.by_ref().take(READ_CHUNK).collect();
                chunks.push(TxnOp::txn(Txn::new().and_then(chunk)));
            }
            let mut chunks = chunks.into_iter().peekable();
            let mut txns = Vec::new();
            while chunks.peek().is_some() {
                let group: Vec<TxnOp> = chunks.by_ref().take(READ_CHUNK).collect();
                txns.push(Txn::new().and_then(group));
            }
            txns
        };
        let responses =
            futures_util::future::join_all(txns.into_iter().map(|txn| self.txn(operation, txn)))
                .await;
        let mut out = Vec::with_capacity(count);
        let mut read_at = i64::MAX;
        for response in responses {
            let response = response?;
            read_at = read_at.min(revision(&response)?);
            for op in response.op_responses() {
                match op {
                    TxnOpResponse::Txn(nested) => {
                        for op in nested.op_responses() {
                            out.push(get_response(Some(op), "a read")?);
                        }
                    }
                    other => out.push(get_response(Some(other), "a read")?),
                }
            }
        }
        if out.len() != count {
            return Err(malformed("read answer"));
        }
        Ok((out, read_at))
    }

    /// What a decision on `claims` reads: per claim, its own holders, lock-delays, queue and
    /// fence, and under a subtree claim everything below it; per ancestor of any claim, its
    /// subtree-scoped holders, lock-delays and queue entries. Nothing else.
    fn plan_reads(&self, claims: &[Claim]) -> LockResult<ReadPlan> {
        let mut plan = ReadPlan::default();
        let mut ancestors = BTreeSet::new();
        for claim in claims {
            plan.prefix(self.keys.on_object(Kind::Holder, &claim.object), true);
            plan.prefix(self.keys.on_object(Kind::Queue, &claim.object), false);
            plan.fence_at.push(plan.ops.len());
            plan.ops
                .push(TxnOp::get(self.keys.fence_key(&claim.object), None));
            if claim.scope == LockScope::Subtree {
                plan.range(self.keys.under(Kind::Holder, &claim.object), true);
                plan.range(self.keys.under(Kind::Queue, &claim.object), false);
            }
            ancestors.extend(lockcore::path::ancestors(claim.object.as_str()));
        }
        for ancestor in ancestors {
            let ancestor = ObjectId::new(ancestor)
                .map_err(|e| LockError::Internal(format!("etcd: ancestor {ancestor}: {e}")))?;
            plan.prefix(self.keys.subtree_scoped_on(Kind::Holder, &ancestor), true);
            plan.prefix(self.keys.subtree_scoped_on(Kind::Queue, &ancestor), false);
        }
        Ok(plan)
    }

    /// Grants the leases of one grant, in parallel: the holders' and, with a lock-delay, the
    /// markers' (`seconds` plus the delay in whole seconds, rounded up).
    async fn grant_leases(&self, seconds: i64, lock_delay: Duration) -> LockResult<GrantLeases> {
        if lock_delay.is_zero() {
            return Ok(GrantLeases {
                holders: self.grant(seconds).await?,
                markers: None,
            });
        }
        let delay = i64::try_from(delay_seconds(lock_delay))
            .map_err(|_| LockError::invalid_argument("lock_delay_ms", "too long"))?;
        let (holders, markers) = tokio::join!(
            self.grant(seconds),
            self.grant(seconds.saturating_add(delay))
        );
        match (holders, markers) {
            (Ok(holders), Ok(markers)) => Ok(GrantLeases {
                holders,
                markers: Some(markers),
            }),
            (Ok(unused), Err(e)) | (Err(e), Ok(unused)) => {
                self.revoke_later(unused.id);
                Err(e)
            }
            (Err(e), Err(_)) => Err(e),
        }
    }

    /// The conflicts of a refusal, one per blocked claim. A lock-delay's time left costs one
    /// lease query (all of them in parallel); holders and queue entries report upper bounds.
    async fn conflicts(
        &self,
        claims: &[Claim],
        blocks: &[(usize, Block<'_>)],
    ) -> LockResult<Vec<Conflict>> {
        let marker_leases: Vec<i64> = blocks
            .iter()
            .flat_map(|(_, block)| match block {
                Block::Delayed(markers) => markers.iter().map(|m| m.lease).collect(),
                _ => Vec::new(),
            })
            .collect();
        let ttls = if marker_leases.is_empty() {
            HashMap::new()
        } else {
            self.lease_ttls(&marker_leases).await?
        };
        let mut conflicts = Vec::with_capacity(blocks.len());
        for (index, block) in blocks {
            let object = claims
                .get(*index)
                .map(|c| c.object.clone())
                .ok_or_else(|| LockError::Internal("etcd: conflict of no claim".into()))?;
            conflicts.push(match block {
                Block::Held(h) => Conflict {
                    object,
                    holder: h.record.owner.clone(),
                    // An upper bound: the holder's TTL when granted. The watch wakes waiters
                    // when it really goes.
                    retry_after: Duration::from_millis(h.record.ttl_ms),
                    cause: ConflictCause::Held,
                },
                Block::Delayed(markers) => {
                    let left = |m: &HolderKv| ttls.get(&m.lease).copied().flatten();
                    let last = markers
                        .iter()
                        .max_by_key(|m| left(m))
                        .ok_or_else(|| LockError::Internal("etcd: empty lock-delay".into()))?;
                    Conflict {
                        object,
                        holder: last.record.owner.clone(),
                        // etcd reports whole seconds left, rounded down: one more is an upper
                        // bound. The watch wakes waiters when etcd deletes the marker.
                        retry_after: left(last).unwrap_or_default() + ONE_SECOND,
                        cause: ConflictCause::LockDelay,
                    }
                }
                Block::Queued(entry) => Conflict {
                    object,
                    holder: entry.record.owner.clone(),
                    retry_after: Duration::from_secs(QUEUE_LEASE_TTL.unsigned_abs()),
                    cause: ConflictCause::Queued,
                },
            });
        }
        Ok(conflicts)
    }

    /// One decision: a grant committed, a refusal, or a lost race (read again).
    async fn attempt_once(
        &self,
        attempt: &Attempt<'_>,
        leases: &mut Option<GrantLeases>,
        seconds: i64,
    ) -> LockResult<Option<Attempted>> {
        let claims = attempt.claims;
        let plan = self.plan_reads(claims)?;
        let retry_of_waiter = attempt.queueing.is_some_and(|q| q.ticket.is_some());
        let reads = plan.ops.clone();
        let (responses, read_at) = if leases.is_none() && !retry_of_waiter {
            // The leases a grant needs are granted while the objects are read: a grant then
            // costs the read and the conditional write, two round trips. A waiter's retry,
            // usually refused again, reads first and asks for leases only to grant.
            let (read, granted) = tokio::join!(
                self.read_all("read", reads),
                self.grant_leases(seconds, attempt.lock_delay)
            );
            *leases = Some(granted?);
            read?
        } else {
            self.read_all("read", reads).await?
        };
        let fence_of: HashMap<usize, usize> = plan
            .fence_at
            .iter()
            .enumerate()
            .map(|(claim, &at)| (at, claim))
            .collect();
        let mut view = View::default();
        let mut fences: Vec<Option<Fence>> = vec![None; claims.len()];
        for (at, response) in responses.iter().enumerate() {
            match fence_of.get(&at) {
                Some(&claim) => {
                    fences[claim] = response
                        .kvs()
                        .first()
                        .map(|kv| parse_fence(kv.value()))
                        .transpose()?;
                }
                None => view.absorb(&self.keys, response.kvs())?,
            }
        }
        let ticket = attempt
            .queueing
            .and_then(|q| q.ticket)
            .and_then(|t| i64::try_from(t.0).ok());
        let own_queue_keys: Vec<Vec<u8>> = claims
            .iter()
            .map(|c| self.keys.queue_key(&c.object, c.scope, &c.digest))
            .collect();
        let drawing = attempt.queueing.is_some_and(|q| q.ticket.is_none());
        let judged = judge(&view, claims, &own_queue_keys, ticket, drawing);

        if !judged.blocks.is_empty() {
            let conflicts = self.conflicts(claims, &judged.blocks).await?;
            let Some(queueing) = attempt.queueing else {
                return Ok(Some(Attempted::Refused {
                    conflicts,
                    ticket: None,
                    blockers: Vec::new(),
                }));
            };
            // A waiter whose entries are all in place on the current queue lease writes
            // nothing: woken waiters that are refused again cost one read each.
            if let (Some(t), Some(current)) = (ticket, self.fresh_queue_lease().await) {
                let in_place = own_queue_keys.iter().all(|key| {
                    view.entries
                        .iter()
                        .any(|e| &e.key == key && e.create_revision == t && e.lease == current)
                });
                if in_place {
                    return Ok(Some(Attempted::Refused {
                        conflicts,
                        ticket: queueing.ticket,
                        blockers: Vec::new(),
                    }));
                }
            }
            let queue_lease = self.queue_lease().await?;
            // Entering the queue needs no compare: the refusal was true at `read_at`, and
            // anything that frees the objects since then is a delete the watch reports.
            let ops: Vec<TxnOp> = claims
                .iter()
                .zip(&own_queue_keys)
                .map(|(claim, key)| {
                    TxnOp::put(
                        key.clone(),
                        QueueRecord {
                            mode: claim.mode,
                            owner: attempt.owner.clone(),
                        }
                        .encode(),
                        Some(PutOptions::new().with_lease(queue_lease).with_prev_key()),
                    )
                })
                .collect();
            let response = match self.txn("enter queue", Txn::new().and_then(ops)).await {
                Ok(response) => response,
                Err(e) => {
                    // The queue lease may be gone (etcd lost its data, or revoked it): the
                    // next attempt grants a new one.
                    *self.queue_lease.lock().await = None;
                    return Err(e);
                }
            };
            let written_at = revision(&response)?;
            let mut place = 0;
            for op in response.op_responses() {
                let TxnOpResponse::Put(put) = op else {
                    return Err(LockError::Internal("etcd: queue put answered oddly".into()));
                };
                place = place.max(put.prev_key().map_or(written_at, KeyValue::create_revision));
            }
            return Ok(Some(Attempted::Refused {
                conflicts,
                ticket: u64::try_from(place).ok().map(Ticket),
                blockers: judged.blockers,
            }));
        }

        let fresh = match *leases {
            Some(fresh) => fresh,
            None => {
                let fresh = self.grant_leases(seconds, attempt.lock_delay).await?;
                *leases = Some(fresh);
                fresh
            }
        };
        let now_ms = unix_millis_now();
        let mut key_compares = Vec::new();
        let mut ops = Vec::with_capacity(claims.len());
        let mut granted = Vec::with_capacity(claims.len());
        let mut replayed_leases = Vec::new();
        for (index, claim) in claims.iter().enumerate() {
            let mut object_ops = Vec::with_capacity(4);
            // The request leaves the queue with the grant (its entry may also be left over
            // from an attempt whose answer was lost).
            let own_key = &own_queue_keys[index];
            if ticket.is_some() || view.entries.iter().any(|e| &e.key == own_key) {
                object_ops.push(TxnOp::delete(own_key.clone(), None));
            }
            match judged.replays[index] {
                Some(held) => {
                    key_compares.push(Compare::mod_revision(
                        held.key.clone(),
                        CompareOp::Equal,
                        held.mod_revision,
                    ));
                    if !held.record.claimed {
                        let record = HolderRecord {
                            claimed: true,
                            ..held.record.clone()
                        };
                        object_ops.push(TxnOp::put(
                            held.key.clone(),
                            record.encode(),
                            Some(PutOptions::new().with_ignore_lease()),
                        ));
                    }
                    replayed_leases.push(held.lease);
                    granted.push(Granted {
                        fence: held.fence,
                        mode: held.record.mode,
                        ttl: Duration::ZERO, // filled in below
                        replayed: true,
                    });
                }
                None => {
                    let last = view
                        .holders
                        .iter()
                        .filter(|h| h.object == claim.object)
                        .map(|h| h.fence)
                        .chain(fences[index])
                        .max();
                    let fence = Fence::next_after(last, lockcore::wall_clock_micros());
                    let record = HolderRecord {
                        mode: claim.mode,
                        claimed: false,
                        acquired_ms: now_ms,
                        ttl_ms: millis(attempt.ttl),
                        delay_ms: millis(attempt.lock_delay),
                        owner: attempt.owner.clone(),
                    };
                    if let Some(markers) = fresh.markers {
                        object_ops.push(TxnOp::put(
                            self.keys
                                .delay_key(&claim.object, claim.scope, &claim.digest, fence),
                            record.encode(),
                            Some(PutOptions::new().with_lease(markers.id)),
                        ));
                    }
                    object_ops.push(TxnOp::put(
                        self.keys
                            .holder_key(&claim.object, claim.scope, &claim.digest, fence),
                        record.encode(),
                        Some(PutOptions::new().with_lease(fresh.holders.id)),
                    ));
                    object_ops.push(TxnOp::put(
                        self.keys.fence_key(&claim.object),
                        fence.get().to_string(),
                        None,
                    ));
                    granted.push(Granted {
                        fence,
                        mode: claim.mode,
                        ttl: Duration::ZERO,
                        replayed: false,
                    });
                }
            }
            if !object_ops.is_empty() {
                // One nested transaction per object keeps every level within etcd's limit on
                // operations per transaction (128 by default) for 64 objects.
                ops.push(TxnOp::txn(Txn::new().and_then(object_ops)));
            }
        }
        // The guard: no holder or lock-delay key was created, since the read, in any range
        // the decision read. Deletions and rewrites of existing keys (renewals, downgrades,
        // replays claiming their grant) never turn a grant into a conflict, so they may
        // happen meanwhile; waiters joining queues need no guard either (see the crate docs).
        let budget = COMPARE_BUDGET.saturating_sub(key_compares.len());
        let mut compares: Vec<Compare> = bound_ranges(plan.guards, budget)
            .into_iter()
            .map(|(start, end)| {
                Compare::create_revision(start, CompareOp::Less, read_at + 1).with_range(end)
            })
            .collect();
        compares.extend(key_compares);
        let response = self
            .txn("acquire", Txn::new().when(compares).and_then(ops))
            .await?;
        if !response.succeeded() {
            return Ok(None);
        }
        let replay_ttls = if replayed_leases.is_empty() {
            HashMap::new()
        } else {
            self.lease_ttls(&replayed_leases).await?
        };
        let mut fresh_used = false;
        for (g, replay) in granted.iter_mut().zip(&judged.replays) {
            g.ttl = match replay {
                Some(held) => replay_ttls
                    .get(&held.lease)
                    .copied()
                    .flatten()
                    .unwrap_or_default()
                    .max(Duration::from_millis(1)),
                None => {
                    fresh_used = true;
                    fresh.holders.left()
                }
            };
        }
        if !fresh_used {
            fresh.ids().for_each(|id| self.revoke_later(id));
        }
        *leases = None;
        Ok(Some(Attempted::Granted(granted)))
    }

    /// Finds each holder (in either scope) in one read: the holder, or how many others hold
    /// its object.
    async fn find_holders(&self, holders: &[HolderRef]) -> LockResult<Vec<Found>> {
        let mut ops = Vec::with_capacity(holders.len() * 4);
        for h in holders {
            for scope in [LockScope::Object, LockScope::Subtree] {
                ops.push(TxnOp::get(
                    self.keys.holder_key(&h.object, scope, &h.digest, h.fence),
                    None,
                ));
            }
            for scope in [LockScope::Object, LockScope::Subtree] {
                ops.push(count_prefix(self.keys.holders_in(&h.object, scope)));
            }
        }
        let (responses, _) = self.read_all("find holder", ops).await?;
        let mut found = Vec::with_capacity(holders.len());
        for answer in responses.chunks(4) {
            let [object_key, subtree_key, object_count, subtree_count] = answer else {
                return Err(malformed("holder read answer"));
            };
            let kv = object_key.kvs().first().or(subtree_key.kvs().first());
            let holders = object_count.count() + subtree_count.count();
            found.push(match kv {
                Some(kv) => Found::Holder(crate::view::holder_kv(&self.keys, kv)?, holders),
                None if holders > 0 => Found::Absent(Verdict::Mismatch),
                None => Found::Absent(Verdict::NotHeld),
            });
        }
        Ok(found)
    }

    /// The holders, lock-delays and waiter count of each object (a range read and a count
    /// each, in one transaction).
    async fn describe(&self, objects: &[ObjectId]) -> LockResult<Vec<Described>> {
        let ops: Vec<TxnOp> = objects
            .iter()
            .flat_map(|o| {
                [
                    get_prefix(self.keys.on_object(Kind::Holder, o)),
                    count_prefix(self.keys.on_object(Kind::Queue, o)),
                ]
            })
            .collect();
        let (responses, _) = self.read_all("describe", ops).await?;
        let mut found = Vec::with_capacity(objects.len());
        for (object, answer) in objects.iter().zip(responses.chunks(2)) {
            let [held, queued] = answer else {
                return Err(malformed("describe answer"));
            };
            let mut view = View::default();
            view.absorb(&self.keys, held.kvs())?;
            found.push(Described {
                object: object.clone(),
                holders: view.holders,
                markers: view.markers,
                waiters: u32::try_from(queued.count()).unwrap_or(u32::MAX),
            });
        }
        Ok(found)
    }

    /// Lock descriptions from holder and lock-delay keys, with their leases' time left. An
    /// object without a live holder is described by its lock-delay in force when
    /// `delayed_too` (inspect), and not at all otherwise (list): an object with only waiters
    /// is free.
    async fn infos(&self, found: Vec<Described>, delayed_too: bool) -> LockResult<Vec<LockInfo>> {
        let leases: Vec<i64> = found
            .iter()
            .flat_map(|d| d.holders.iter().chain(&d.markers).map(|h| h.lease))
            .collect();
        let ttls = self.lease_ttls(&leases).await?;
        let now = SystemTime::now();
        let mut out = Vec::with_capacity(found.len());
        for described in found {
            let mut mode = LockMode::Shared;
            let mut infos = Vec::with_capacity(described.holders.len());
            let mut live = std::collections::HashSet::new();
            for h in &described.holders {
                let Some(Some(ttl)) = ttls.get(&h.lease).copied() else {
                    continue; // expired: etcd is about to delete it
                };
                if h.record.mode == LockMode::Exclusive {
                    mode = LockMode::Exclusive;
                }
                live.insert(h.identity());
                infos.push(HolderInfo {
                    owner: h.record.owner.clone(),
                    fence: h.fence,
                    acquired_at: UNIX_EPOCH + Duration::from_millis(h.record.acquired_ms),
                    expires_at: now + ttl,
                    ttl,
                    scope: h.scope,
                });
            }
            // A marker whose holder is gone (or expired) is a lock-delay in force.
            let delay = described
                .markers
                .iter()
                .filter(|m| !live.contains(&m.identity()))
                .filter_map(|m| Some((m, ttls.get(&m.lease).copied().flatten()?)))
                .max_by_key(|(_, left)| *left)
                .map(|(m, left)| {
                    let delay = LockDelayInfo {
                        owner: m.record.owner.clone(),
                        fence: m.fence,
                        mode: m.record.mode,
                        scope: m.scope,
                        until: now + left,
                        remaining: left,
                    };
                    let enforced = Duration::from_secs(delay_seconds(Duration::from_millis(
                        m.record.delay_ms,
                    )));
                    let expired_at = delay.until.checked_sub(enforced).unwrap_or(now);
                    (delay, expired_at)
                });
            match LockInfo::from_holders(described.object.clone(), mode, infos) {
                Some(info) => out.push(
                    info.with_waiters(described.waiters)
                        .with_delay(delay.map(|(d, _)| d)),
                ),
                None if delayed_too => {
                    if let Some((delay, expired_at)) = delay {
                        out.push(
                            LockInfo::delayed(described.object, delay, expired_at)
                                .with_waiters(described.waiters),
                        );
                    }
                }
                None => {}
            }
        }
        Ok(out)
    }
}

/// The TLS settings of an `etcds://` config: its CA (or the system's roots) and client
/// certificate, if any.
fn tls_options(config: &EtcdConfig) -> LockResult<etcd_client::TlsOptions> {
    let read = |field: &'static str, path: &std::path::Path| {
        std::fs::read(path)
            .map_err(|e| LockError::invalid_argument(field, format!("{}: {e}", path.display())))
    };
    let mut tls = etcd_client::TlsOptions::new();
    tls = match &config.tls_ca_file {
        Some(path) => tls.ca_certificate(etcd_client::Certificate::from_pem(read(
            "tls_ca_file",
            path,
        )?)),
        None => tls.with_enabled_roots(),
    };
    if let (Some(cert), Some(key)) = (&config.tls_cert_file, &config.tls_key_file) {
        tls = tls.identity(etcd_client::Identity::from_pem(
            read("tls_cert_file", cert)?,
            read("tls_key_file", key)?,
        ));
    }
    Ok(tls)
}

fn parse_fence(value: &[u8]) -> LockResult<Fence> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|text| text.parse::<u64>().ok())
        .filter(|&fence| fence > 0)
        .map(Fence)
        .ok_or_else(|| malformed("fence key"))
}

/// The verdict of holder counts read where the holder was not found.
fn counted_verdict<T>(counts: &[TxnOpResponse]) -> LockResult<Verdict<T>> {
    let mut held = 0;
    for count in counts {
        held += get_response(Some(count.clone()), "a holder count")?.count();
    }
    Ok(if held > 0 {
        Verdict::Mismatch
    } else {
        Verdict::NotHeld
    })
}

#[async_trait]
impl LockStore for EtcdStore {
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
        let seconds = self.lease_seconds(attempt.ttl)?;
        let mut leases = None;
        let mut outcome = None;
        for _ in 0..MAX_CONFLICT_RETRIES {
            match self.attempt_once(&attempt, &mut leases, seconds).await {
                Ok(Some(done)) => {
                    outcome = Some(done);
                    break;
                }
                Ok(None) => continue,
                Err(e) => {
                    if let Some(unused) = leases.take() {
                        unused.ids().for_each(|id| self.revoke_later(id));
                    }
                    return Err(e);
                }
            }
        }
        if let Some(unused) = leases.take() {
            // A refusal, or every try lost its race.
            unused.ids().for_each(|id| self.revoke_later(id));
        }
        outcome.ok_or_else(|| {
            LockError::unavailable(
                BACKEND,
                format!("acquire: lost the race to other writers {MAX_CONFLICT_RETRIES} times"),
            )
        })
    }

    async fn leave_queue(&self, ticket: Ticket, objects: &[ObjectId]) -> LockResult<()> {
        if objects.is_empty() {
            return Ok(());
        }
        let Ok(ticket) = i64::try_from(ticket.0) else {
            return Ok(());
        };
        let reads: Vec<TxnOp> = objects
            .iter()
            .map(|o| get_prefix(self.keys.on_object(Kind::Queue, o)))
            .collect();
        let (responses, _) = self.read_all("leave queue", reads).await?;
        let mut view = View::default();
        for response in &responses {
            view.absorb(&self.keys, response.kvs())?;
        }
        let ops: Vec<TxnOp> = view
            .entries
            .iter()
            .filter(|e| e.create_revision == ticket)
            .map(|e| TxnOp::delete(e.key.clone(), None))
            .collect();
        if !ops.is_empty() {
            self.txn("leave queue", Txn::new().and_then(ops)).await?;
        }
        Ok(())
    }

    async fn abandon(&self, claims: &[Claim]) -> LockResult<Undo> {
        if claims.is_empty() {
            return Ok(Undo::Absent);
        }
        for _ in 0..MAX_CONFLICT_RETRIES {
            let reads: Vec<TxnOp> = claims
                .iter()
                .map(|c| {
                    get_prefix(
                        self.keys
                            .holder_digest_prefix(&c.object, c.scope, &c.digest),
                    )
                })
                .collect();
            let (responses, _) = self.read_all("abandon", reads).await?;
            let mut view = View::default();
            for response in &responses {
                view.absorb(&self.keys, response.kvs())?;
            }
            let found = view.holders;
            if found.is_empty() {
                return Ok(Undo::Absent);
            }
            if found.iter().any(|h| h.record.claimed) {
                return Ok(Undo::Claimed);
            }
            let compares: Vec<Compare> = found
                .iter()
                .map(|h| Compare::mod_revision(h.key.clone(), CompareOp::Equal, h.mod_revision))
                .collect();
            // Taking a grant back is a release: its lock-delay goes with it.
            let deletes: Vec<TxnOp> = found
                .iter()
                .flat_map(|h| {
                    [
                        TxnOp::delete(h.key.clone(), None),
                        TxnOp::delete(
                            self.keys
                                .delay_key_hex(&h.object, h.scope, &h.digest, h.fence),
                            None,
                        ),
                    ]
                })
                .collect();
            let response = self
                .txn("abandon", Txn::new().when(compares).and_then(deletes))
                .await?;
            if response.succeeded() {
                return Ok(Undo::TookBack);
            }
        }
        Err(LockError::unavailable(
            BACKEND,
            "abandon: lost the race to other writers",
        ))
    }

    async fn release(&self, holders: &[HolderRef]) -> LockResult<Vec<Verdict<()>>> {
        if holders.is_empty() {
            return Ok(Vec::new());
        }
        // Per holder: its object-scope key, else its subtree-scope key, deleted with its
        // lock-delay marker (a release ends a lease with no delay); else the object's holder
        // count. A holder that already expired keeps its lock-delay.
        let ops: Vec<TxnOp> = holders
            .iter()
            .map(|h| {
                let delete = |scope| {
                    let key = self.keys.holder_key(&h.object, scope, &h.digest, h.fence);
                    let marker = self.keys.delay_key(&h.object, scope, &h.digest, h.fence);
                    (
                        Compare::version(key.clone(), CompareOp::Greater, 0),
                        [TxnOp::delete(key, None), TxnOp::delete(marker, None)],
                    )
                };
                let (object_held, object_deletes) = delete(LockScope::Object);
                let (subtree_held, subtree_deletes) = delete(LockScope::Subtree);
                let subtree = Txn::new()
                    .when([subtree_held])
                    .and_then(subtree_deletes)
                    .or_else([
                        count_prefix(self.keys.holders_in(&h.object, LockScope::Object)),
                        count_prefix(self.keys.holders_in(&h.object, LockScope::Subtree)),
                    ]);
                TxnOp::txn(
                    Txn::new()
                        .when([object_held])
                        .and_then(object_deletes)
                        .or_else([TxnOp::txn(subtree)]),
                )
            })
            .collect();
        let response = self.txn("release", Txn::new().and_then(ops)).await?;
        let responses = response.op_responses();
        if responses.len() != holders.len() {
            return Err(malformed("release answer"));
        }
        responses
            .into_iter()
            .map(|r| {
                let object = txn_response(Some(r), "a release")?;
                if object.succeeded() {
                    return Ok(Verdict::Done(()));
                }
                let subtree = txn_response(object.op_responses().into_iter().next(), "a release")?;
                if subtree.succeeded() {
                    return Ok(Verdict::Done(()));
                }
                counted_verdict(&subtree.op_responses())
            })
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
        let seconds = self.lease_seconds(ttl)?;
        let (found, fresh) = tokio::join!(self.find_holders(holders), self.grant(seconds));
        let fresh = fresh?;
        let found = match found {
            Ok(found) => found,
            Err(e) => {
                self.revoke_later(fresh.id);
                return Err(e);
            }
        };
        // Holders with a lock-delay keep it: their markers move to leases of the new TTL
        // plus the delay, one per distinct delay (a third round trip, only for them).
        let delays: BTreeSet<u64> = found
            .iter()
            .filter_map(|f| match f {
                Found::Holder(h, _) => {
                    Some(delay_seconds(Duration::from_millis(h.record.delay_ms)))
                }
                Found::Absent(_) => None,
            })
            .filter(|&d| d > 0)
            .collect();
        let granted = futures_util::future::join_all(delays.iter().map(|&delay| async move {
            let total = seconds.saturating_add(i64::try_from(delay).unwrap_or(i64::MAX));
            (delay, self.grant(total).await)
        }))
        .await;
        let mut marker_leases: BTreeMap<u64, FreshLease> = BTreeMap::new();
        let mut failed = None;
        for (delay, lease) in granted {
            match lease {
                Ok(lease) => {
                    marker_leases.insert(delay, lease);
                }
                Err(e) => failed = Some(e),
            }
        }
        if let Some(e) = failed {
            self.revoke_later(fresh.id);
            marker_leases
                .values()
                .for_each(|lease| self.revoke_later(lease.id));
            return Err(e);
        }
        let mut ops = Vec::new();
        for (h, found) in holders.iter().zip(&found) {
            let Found::Holder(held, _) = found else {
                continue;
            };
            let mut then = vec![
                // The holder as it was: its record and the lease it leaves.
                TxnOp::get(held.key.clone(), None),
                TxnOp::put(
                    held.key.clone(),
                    Vec::new(),
                    Some(PutOptions::new().with_ignore_value().with_lease(fresh.id)),
                ),
            ];
            let delay = delay_seconds(Duration::from_millis(held.record.delay_ms));
            if let Some(markers) = marker_leases.get(&delay) {
                let marker = self
                    .keys
                    .delay_key(&h.object, held.scope, &h.digest, h.fence);
                then.push(TxnOp::txn(
                    Txn::new()
                        .when([Compare::version(marker.clone(), CompareOp::Greater, 0)])
                        .and_then([
                            TxnOp::get(marker.clone(), None),
                            TxnOp::put(
                                marker,
                                Vec::new(),
                                Some(PutOptions::new().with_ignore_value().with_lease(markers.id)),
                            ),
                        ]),
                ));
            }
            ops.push(TxnOp::txn(
                Txn::new()
                    .when([Compare::version(held.key.clone(), CompareOp::Greater, 0)])
                    .and_then(then)
                    .or_else([
                        count_prefix(self.keys.holders_in(&h.object, LockScope::Object)),
                        count_prefix(self.keys.holders_in(&h.object, LockScope::Subtree)),
                    ]),
            ));
        }
        let response = if ops.is_empty() {
            None
        } else {
            match self.txn("renew", Txn::new().and_then(ops)).await {
                Ok(response) => Some(response),
                Err(e) => {
                    self.revoke_later(fresh.id);
                    marker_leases
                        .values()
                        .for_each(|lease| self.revoke_later(lease.id));
                    return Err(e);
                }
            }
        };
        let mut responses = response
            .map(|r| r.op_responses())
            .unwrap_or_default()
            .into_iter();
        let left = fresh.reported();
        let mut left_behind = Vec::new();
        let mut markers_used = BTreeSet::new();
        let mut verdicts = Vec::with_capacity(holders.len());
        for found in &found {
            let held = match found {
                Found::Holder(held, _) => held,
                Found::Absent(verdict) => {
                    verdicts.push(absent_verdict(verdict));
                    continue;
                }
            };
            let nested = txn_response(responses.next(), "a renew")?;
            let mut answers = nested.op_responses().into_iter();
            if !nested.succeeded() {
                verdicts.push(counted_verdict(&answers.collect::<Vec<_>>())?);
                continue;
            }
            let get = get_response(answers.next(), "a renewed holder")?;
            let kv = get.kvs().first().ok_or_else(|| malformed("renew answer"))?;
            left_behind.push(kv.lease());
            let record = HolderRecord::parse(kv.value()).ok_or_else(|| malformed("holder"))?;
            let _put = answers.next();
            if let Some(marker) = answers.next() {
                let marker = txn_response(Some(marker), "a renewed lock-delay")?;
                if marker.succeeded() {
                    let get = get_response(marker.op_responses().into_iter().next(), "a marker")?;
                    if let Some(kv) = get.kvs().first() {
                        left_behind.push(kv.lease());
                    }
                    markers_used.insert(delay_seconds(Duration::from_millis(held.record.delay_ms)));
                }
            }
            verdicts.push(Verdict::Done(HolderState {
                owner: record.owner,
                mode: record.mode,
                ttl: left,
            }));
        }
        if verdicts.iter().all(|v| !matches!(v, Verdict::Done(_))) {
            self.revoke_later(fresh.id);
        }
        for (delay, lease) in &marker_leases {
            if !markers_used.contains(delay) {
                self.revoke_later(lease.id);
            }
        }
        self.revoke_if_empty_later(left_behind);
        Ok(verdicts)
    }

    async fn validate(&self, holder: &HolderRef) -> LockResult<Verdict<HolderState>> {
        let found = self
            .find_holders(std::slice::from_ref(holder))
            .await?
            .pop()
            .ok_or_else(|| malformed("validate answer"))?;
        let (held, holders) = match found {
            Found::Holder(held, holders) => (held, holders),
            Found::Absent(verdict) => return Ok(absent_verdict(&verdict)),
        };
        let ttls = self.lease_ttls(&[held.lease]).await?;
        match ttls.get(&held.lease).copied().flatten() {
            Some(ttl) => Ok(Verdict::Done(HolderState {
                owner: held.record.owner,
                mode: held.record.mode,
                ttl: ttl.max(Duration::from_millis(1)),
            })),
            // Expired; etcd is about to delete it.
            None if holders > 1 => Ok(Verdict::Mismatch),
            None => Ok(Verdict::NotHeld),
        }
    }

    async fn downgrade(&self, holder: &HolderRef) -> LockResult<Verdict<HolderState>> {
        for _ in 0..MAX_CONFLICT_RETRIES {
            let found = self
                .find_holders(std::slice::from_ref(holder))
                .await?
                .pop()
                .ok_or_else(|| malformed("downgrade answer"))?;
            let held = match found {
                Found::Holder(held, _) => held,
                Found::Absent(verdict) => return Ok(absent_verdict(&verdict)),
            };
            let write = async {
                if held.record.mode == LockMode::Shared {
                    return Ok(true);
                }
                let shared = HolderRecord {
                    mode: LockMode::Shared,
                    ..held.record.clone()
                }
                .encode();
                let marker =
                    self.keys
                        .delay_key(&holder.object, held.scope, &holder.digest, holder.fence);
                let response = self
                    .txn(
                        "downgrade",
                        Txn::new()
                            .when([Compare::mod_revision(
                                held.key.clone(),
                                CompareOp::Equal,
                                held.mod_revision,
                            )])
                            .and_then([
                                TxnOp::put(
                                    held.key.clone(),
                                    shared.clone(),
                                    Some(PutOptions::new().with_ignore_lease()),
                                ),
                                // Its lock-delay, if it has one, now delays exclusive claims
                                // only.
                                TxnOp::txn(
                                    Txn::new()
                                        .when([Compare::version(
                                            marker.clone(),
                                            CompareOp::Greater,
                                            0,
                                        )])
                                        .and_then([TxnOp::put(
                                            marker,
                                            shared,
                                            Some(PutOptions::new().with_ignore_lease()),
                                        )]),
                                ),
                                // For the watch: the holder's key still exists (compared
                                // above), so its lease does too.
                                TxnOp::put(
                                    self.keys.wake_key(&holder.object),
                                    KeyLayout::wake_value(held.scope),
                                    Some(PutOptions::new().with_lease(held.lease)),
                                ),
                            ]),
                    )
                    .await?;
                Ok::<_, LockError>(response.succeeded())
            };
            let lease = [held.lease];
            let (written, ttls) = tokio::join!(write, self.lease_ttls(&lease));
            if !written? {
                continue;
            }
            let ttl = ttls?
                .get(&held.lease)
                .copied()
                .flatten()
                .unwrap_or_default();
            return Ok(Verdict::Done(HolderState {
                owner: held.record.owner,
                mode: LockMode::Shared,
                ttl: ttl.max(Duration::from_millis(1)),
            }));
        }
        Err(LockError::unavailable(
            BACKEND,
            "downgrade: lost the race to other writers",
        ))
    }

    async fn inspect(&self, object: &ObjectId) -> LockResult<Option<LockInfo>> {
        let described = self.describe(std::slice::from_ref(object)).await?;
        Ok(self.infos(described, true).await?.pop())
    }

    async fn list(&self, query: &ListQuery) -> LockResult<LockPage> {
        let start_prefix = self.keys.list_prefix(&query.prefix);
        let end = prefix_end(&start_prefix);
        let mut start = match &query.after {
            None => start_prefix,
            Some(cursor) => self.keys.after_object(&parse_cursor(cursor)?),
        };
        // The holder space is ordered by object: an object's holders and lock-delays come
        // together, so the scan gathers one object at a time.
        let mut page: Vec<Described> = Vec::new();
        let mut current: Option<Described> = None;
        let mut more_objects = false;
        let finish = |described: Option<Described>, page: &mut Vec<Described>| match described {
            Some(d) if !d.holders.is_empty() => {
                if page.len() == query.limit {
                    return true;
                }
                page.push(d);
                false
            }
            _ => false,
        };
        'scan: loop {
            if start >= end {
                break;
            }
            let mut kv = self.client.kv_client();
            let options = GetOptions::new()
                .with_range(end.clone())
                .with_limit(LIST_BATCH);
            let response = self
                .timed("list", kv.get(start.clone(), Some(options)))
                .await?;
            for kv in response.kvs() {
                let Some(parsed) = self.keys.parse(kv.key()) else {
                    continue;
                };
                if !parsed.object.as_str().starts_with(query.prefix.as_str()) {
                    continue;
                }
                if current.as_ref().is_none_or(|d| d.object != parsed.object) {
                    if finish(current.take(), &mut page) {
                        more_objects = true;
                        break 'scan;
                    }
                    current = Some(Described {
                        object: parsed.object.clone(),
                        holders: Vec::new(),
                        markers: Vec::new(),
                        waiters: 0,
                    });
                }
                let held = crate::view::holder_kv(&self.keys, kv)?;
                if let Some(d) = current.as_mut() {
                    match parsed.kind {
                        Kind::Delay => d.markers.push(held),
                        _ => d.holders.push(held),
                    }
                }
            }
            match response.kvs().last() {
                Some(last) if response.more() => {
                    start = last.key().to_vec();
                    start.push(0);
                }
                _ => break,
            }
        }
        if !more_objects && finish(current.take(), &mut page) {
            more_objects = true;
        }
        let next = if more_objects {
            page.last().map(|d| encode_cursor(&d.object))
        } else {
            None
        };
        // Each listed object's waiters: one count per object, in one transaction.
        let counts: Vec<TxnOp> = page
            .iter()
            .map(|d| count_prefix(self.keys.on_object(Kind::Queue, &d.object)))
            .collect();
        if !counts.is_empty() {
            let (responses, _) = self.read_all("list waiters", counts).await?;
            for (d, count) in page.iter_mut().zip(&responses) {
                d.waiters = u32::try_from(count.count()).unwrap_or(u32::MAX);
            }
        }
        let locks = self.infos(page, false).await?;
        Ok(LockPage { locks, next })
    }

    async fn health(&self) -> LockResult<()> {
        // A linearizable read: it needs a leader and a quorum, as every lock operation does.
        let mut kv = self.client.kv_client();
        let key = self.keys.fence_key(
            &ObjectId::new("health")
                .map_err(|e| LockError::Internal(format!("etcd: health key: {e}")))?,
        );
        self.timed(
            "health",
            kv.get(key, Some(GetOptions::new().with_count_only())),
        )
        .await
        .map(|_| ())
    }
}

/// A listing cursor: `v1.<hex of the last object on the page>`.
fn encode_cursor(object: &ObjectId) -> String {
    format!("v1.{}", hex::encode(object.as_str()))
}

fn parse_cursor(text: &str) -> LockResult<ObjectId> {
    let bad = || LockError::invalid_argument("after", "not a cursor returned by this backend");
    let hex_part = text.strip_prefix("v1.").ok_or_else(bad)?;
    let bytes = hex::decode(hex_part).map_err(|_| bad())?;
    let name = String::from_utf8(bytes).map_err(|_| bad())?;
    ObjectId::new(name).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_foreign_ones_are_invalid() {
        let object = ObjectId::new("a/ü b").expect("valid");
        assert_eq!(
            parse_cursor(&encode_cursor(&object)).expect("parses"),
            object
        );
        for text in ["", "v1.", "v1.zz", "v2.61", "61", "v1.00"] {
            assert!(
                matches!(
                    parse_cursor(text),
                    Err(LockError::InvalidArgument { field: "after", .. })
                ),
                "{text}"
            );
        }
    }
}
