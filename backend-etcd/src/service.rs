//! [`EtcdStore`]: the [`LockStore`] on etcd, and [`EtcdLockService`], the service on it.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, GetResponse, KeyValue, PutOptions, Txn,
    TxnOp, TxnOpResponse, TxnResponse,
};
use lockcore::store::{
    Attempt, Attempted, Claim, Granted, HolderRef, HolderState, Ticket, Verdict,
};
use lockcore::{
    async_trait, Conflict, Fence, HolderInfo, Limits, ListQuery, LockError, LockInfo, LockMode,
    LockPage, LockResult, LockStore, Locks, ObjectId, ReclaimPolicy, Undo, WaitQueue,
};
use tokio::task::JoinHandle;

use crate::config::EtcdConfig;
use crate::error::{self, malformed, BACKEND};
use crate::keys::{prefix_end, HolderRecord, KeyLayout, Parsed, QueueRecord};
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

/// One holder key as read.
#[derive(Debug, Clone)]
struct HolderKv {
    key: Vec<u8>,
    digest: String,
    fence: Fence,
    record: HolderRecord,
    mod_revision: i64,
    lease: i64,
}

/// One queue key as read.
#[derive(Debug, Clone)]
struct EntryKv {
    key: Vec<u8>,
    record: QueueRecord,
    create_revision: i64,
    lease: i64,
}

/// Everything one object's range held when read.
#[derive(Debug, Default)]
struct ObjectState {
    holders: Vec<HolderKv>,
    queue: Vec<EntryKv>,
    last_fence: Option<Fence>,
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

fn compatible(a: LockMode, b: LockMode) -> bool {
    a == LockMode::Shared && b == LockMode::Shared
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

    /// Parses the keys of one object's range.
    fn object_state(&self, kvs: &[KeyValue], fence: Option<&KeyValue>) -> LockResult<ObjectState> {
        let mut state = ObjectState {
            last_fence: fence.map(|kv| parse_fence(kv.value())).transpose()?,
            ..ObjectState::default()
        };
        for kv in kvs {
            match self.keys.parse(kv.key()) {
                Some(Parsed::Holder { digest, fence, .. }) => {
                    let record =
                        HolderRecord::parse(kv.value()).ok_or_else(|| malformed("holder"))?;
                    state.holders.push(HolderKv {
                        key: kv.key().to_vec(),
                        digest,
                        fence,
                        record,
                        mod_revision: kv.mod_revision(),
                        lease: kv.lease(),
                    });
                }
                Some(Parsed::Queue { .. }) => {
                    let record =
                        QueueRecord::parse(kv.value()).ok_or_else(|| malformed("queue entry"))?;
                    state.queue.push(EntryKv {
                        key: kv.key().to_vec(),
                        record,
                        create_revision: kv.create_revision(),
                        lease: kv.lease(),
                    });
                }
                None => return Err(malformed("key")),
            }
        }
        Ok(state)
    }

    /// Reads every claimed object's range and fence key in one transaction: the states, in
    /// claim order, and the revision they were read at.
    async fn read_objects(&self, objects: &[&ObjectId]) -> LockResult<(Vec<ObjectState>, i64)> {
        let mut ops = Vec::with_capacity(objects.len() * 2);
        for object in objects {
            ops.push(TxnOp::get(
                self.keys.object_prefix(object),
                Some(GetOptions::new().with_prefix()),
            ));
            ops.push(TxnOp::get(self.keys.fence_key(object), None));
        }
        let response = self.txn("read", Txn::new().and_then(ops)).await?;
        let read_at = revision(&response)?;
        let mut responses = response.op_responses().into_iter();
        let mut states = Vec::with_capacity(objects.len());
        for _ in objects {
            let range = get_response(responses.next(), "an object read")?;
            let fence = get_response(responses.next(), "a fence read")?;
            states.push(self.object_state(range.kvs(), fence.kvs().first())?);
        }
        Ok((states, read_at))
    }

    /// One decision: a grant committed, a refusal, or a lost race (read again).
    async fn attempt_once(
        &self,
        attempt: &Attempt<'_>,
        lease: &mut Option<FreshLease>,
        seconds: i64,
    ) -> LockResult<Option<Attempted>> {
        let objects: Vec<&ObjectId> = attempt.claims.iter().map(|c| &c.object).collect();
        let retry_of_waiter = attempt.queueing.is_some_and(|q| q.ticket.is_some());
        let (states, read_at) = if lease.is_none() && !retry_of_waiter {
            // The lease a grant needs is granted while the objects are read: a grant then
            // costs the read and the conditional write, two round trips. A waiter's retry,
            // usually refused again, reads first and asks for the lease only to grant.
            let (read, granted) = tokio::join!(self.read_objects(&objects), self.grant(seconds));
            *lease = Some(granted?);
            read?
        } else {
            self.read_objects(&objects).await?
        };
        let ticket = attempt
            .queueing
            .and_then(|q| q.ticket)
            .and_then(|t| i64::try_from(t.0).ok());

        let mut conflicts = Vec::new();
        let mut replays = Vec::with_capacity(states.len());
        for (claim, state) in attempt.claims.iter().zip(&states) {
            let digest = claim.digest.to_hex();
            let replay = state.holders.iter().find(|h| h.digest == digest);
            replays.push(replay);
            if replay.is_some() {
                continue;
            }
            let holder = state
                .holders
                .iter()
                .filter(|h| !compatible(h.record.mode, claim.mode))
                .max_by_key(|h| h.record.ttl_ms);
            if let Some(h) = holder {
                conflicts.push(Conflict {
                    object: claim.object.clone(),
                    holder: h.record.owner.clone(),
                    // An upper bound: the holder's TTL when granted. The watch wakes waiters
                    // when it really goes.
                    retry_after: Duration::from_millis(h.record.ttl_ms),
                    cause: lockcore::ConflictCause::Held,
                });
                continue;
            }
            let own_key = self.keys.queue_key(&claim.object, &claim.digest);
            let waiter = state.queue.iter().find(|e| {
                e.key != own_key
                    && ticket.is_none_or(|t| e.create_revision < t)
                    && !compatible(e.record.mode, claim.mode)
            });
            if let Some(e) = waiter {
                conflicts.push(Conflict {
                    object: claim.object.clone(),
                    holder: e.record.owner.clone(),
                    retry_after: Duration::from_secs(QUEUE_LEASE_TTL.unsigned_abs()),
                    cause: lockcore::ConflictCause::Held,
                });
            }
        }

        if !conflicts.is_empty() {
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
                let in_place = attempt.claims.iter().zip(&states).all(|(claim, state)| {
                    let own_key = self.keys.queue_key(&claim.object, &claim.digest);
                    state
                        .queue
                        .iter()
                        .any(|e| e.key == own_key && e.create_revision == t && e.lease == current)
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
            let ops: Vec<TxnOp> = attempt
                .claims
                .iter()
                .map(|claim| {
                    TxnOp::put(
                        self.keys.queue_key(&claim.object, &claim.digest),
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
            let ticket = u64::try_from(place).ok().map(Ticket);
            return Ok(Some(Attempted::Refused {
                conflicts,
                ticket,
                blockers: Vec::new(),
            }));
        }

        let fresh = match *lease {
            Some(fresh) => fresh,
            None => {
                let fresh = self.grant(seconds).await?;
                *lease = Some(fresh);
                fresh
            }
        };
        let now_ms = unix_millis_now();
        let mut compares = Vec::with_capacity(attempt.claims.len() * 2);
        let mut ops = Vec::with_capacity(attempt.claims.len());
        let mut granted = Vec::with_capacity(attempt.claims.len());
        let mut replayed_leases = Vec::new();
        for ((claim, state), replay) in attempt.claims.iter().zip(&states).zip(&replays) {
            compares.push(
                Compare::mod_revision(
                    self.keys.object_prefix(&claim.object),
                    CompareOp::Less,
                    read_at + 1,
                )
                .with_prefix(),
            );
            let mut object_ops = Vec::with_capacity(3);
            // The request leaves the queue with the grant (its entry may also be left over
            // from an attempt whose answer was lost).
            let own_key = self.keys.queue_key(&claim.object, &claim.digest);
            if ticket.is_some() || state.queue.iter().any(|e| e.key == own_key) {
                object_ops.push(TxnOp::delete(own_key, None));
            }
            match replay {
                Some(held) => {
                    compares.push(Compare::mod_revision(
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
                    let last = state
                        .holders
                        .iter()
                        .map(|h| h.fence)
                        .chain(state.last_fence)
                        .max();
                    let fence = Fence::next_after(last, lockcore::wall_clock_micros());
                    let record = HolderRecord {
                        mode: claim.mode,
                        claimed: false,
                        acquired_ms: now_ms,
                        ttl_ms: millis(attempt.ttl),
                        owner: attempt.owner.clone(),
                    };
                    object_ops.push(TxnOp::put(
                        self.keys.holder_key(&claim.object, &claim.digest, fence),
                        record.encode(),
                        Some(PutOptions::new().with_lease(fresh.id)),
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
        for (g, replay) in granted.iter_mut().zip(&replays) {
            g.ttl = match replay {
                Some(held) => replay_ttls
                    .get(&held.lease)
                    .copied()
                    .flatten()
                    .unwrap_or_default()
                    .max(Duration::from_millis(1)),
                None => {
                    fresh_used = true;
                    fresh.left()
                }
            };
        }
        if !fresh_used {
            self.revoke_later(fresh.id);
        }
        *lease = None;
        Ok(Some(Attempted::Granted(granted)))
    }

    /// The holders of each object (one range read each, in one transaction).
    async fn describe(&self, objects: &[ObjectId]) -> LockResult<Vec<LockInfo>> {
        let mut found = Vec::with_capacity(objects.len());
        for chunk in objects.chunks(128) {
            let ops: Vec<TxnOp> = chunk
                .iter()
                .map(|o| {
                    TxnOp::get(
                        self.keys.holders_prefix(o),
                        Some(GetOptions::new().with_prefix()),
                    )
                })
                .collect();
            let response = self.txn("describe", Txn::new().and_then(ops)).await?;
            let mut responses = response.op_responses().into_iter();
            for object in chunk {
                let range = get_response(responses.next(), "a holders read")?;
                let state = self.object_state(range.kvs(), None)?;
                found.push((object.clone(), state.holders));
            }
        }
        self.infos(found).await
    }

    /// Lock descriptions from holder keys, with their leases' time left.
    async fn infos(&self, found: Vec<(ObjectId, Vec<HolderKv>)>) -> LockResult<Vec<LockInfo>> {
        let leases: Vec<i64> = found
            .iter()
            .flat_map(|(_, holders)| holders.iter().map(|h| h.lease))
            .collect();
        let ttls = self.lease_ttls(&leases).await?;
        let now = SystemTime::now();
        let mut out = Vec::with_capacity(found.len());
        for (object, holders) in found {
            let mut mode = LockMode::Shared;
            let mut infos = Vec::with_capacity(holders.len());
            for h in holders {
                let Some(Some(ttl)) = ttls.get(&h.lease).copied() else {
                    continue; // expired: etcd is about to delete it
                };
                if h.record.mode == LockMode::Exclusive {
                    mode = LockMode::Exclusive;
                }
                infos.push(HolderInfo {
                    owner: h.record.owner,
                    fence: h.fence,
                    acquired_at: UNIX_EPOCH + Duration::from_millis(h.record.acquired_ms),
                    expires_at: now + ttl,
                    ttl,
                    scope: lockcore::LockScope::Object,
                });
            }
            if let Some(info) = LockInfo::from_holders(object, mode, infos) {
                out.push(info);
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

/// The verdict of one nested "holder exists?" transaction: done, or by the count of the
/// object's holders, not held or held by others.
fn verdict_of(nested: &TxnResponse) -> LockResult<Verdict<Vec<TxnOpResponse>>> {
    let responses = nested.op_responses();
    if nested.succeeded() {
        return Ok(Verdict::Done(responses));
    }
    let count = get_response(responses.into_iter().next(), "a holder count")?.count();
    Ok(if count > 0 {
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

    fn reclaim_policy(&self) -> Option<ReclaimPolicy> {
        Some(RECLAIM)
    }

    fn waits(&self) -> &WaitQueue {
        &self.waits
    }

    async fn try_acquire(&self, attempt: Attempt<'_>) -> LockResult<Attempted> {
        let seconds = self.lease_seconds(attempt.ttl)?;
        let mut lease = None;
        let mut outcome = None;
        for _ in 0..MAX_CONFLICT_RETRIES {
            match self.attempt_once(&attempt, &mut lease, seconds).await {
                Ok(Some(done)) => {
                    outcome = Some(done);
                    break;
                }
                Ok(None) => continue,
                Err(e) => {
                    if let Some(unused) = lease.take() {
                        self.revoke_later(unused.id);
                    }
                    return Err(e);
                }
            }
        }
        if let (Some(Attempted::Refused { .. }), Some(unused)) = (&outcome, lease.take()) {
            self.revoke_later(unused.id);
        }
        outcome.ok_or_else(|| {
            if let Some(unused) = lease.take() {
                self.revoke_later(unused.id);
            }
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
        let refs: Vec<&ObjectId> = objects.iter().collect();
        let (states, _) = self.read_objects(&refs).await?;
        let ops: Vec<TxnOp> = states
            .iter()
            .flat_map(|s| s.queue.iter())
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
            let ops: Vec<TxnOp> = claims
                .iter()
                .map(|c| {
                    TxnOp::get(
                        self.keys.holder_digest_prefix(&c.object, &c.digest),
                        Some(GetOptions::new().with_prefix()),
                    )
                })
                .collect();
            let response = self.txn("abandon", Txn::new().and_then(ops)).await?;
            let mut found = Vec::new();
            for response in response.op_responses() {
                let range = get_response(Some(response), "a holder read")?;
                found.extend(self.object_state(range.kvs(), None)?.holders);
            }
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
            let deletes: Vec<TxnOp> = found
                .iter()
                .map(|h| TxnOp::delete(h.key.clone(), None))
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
        let ops: Vec<TxnOp> = holders
            .iter()
            .map(|h| {
                let key = self.keys.holder_key(&h.object, &h.digest, h.fence);
                TxnOp::txn(
                    Txn::new()
                        .when([Compare::version(key.clone(), CompareOp::Greater, 0)])
                        .and_then([TxnOp::delete(key, None)])
                        .or_else([TxnOp::get(
                            self.keys.holders_prefix(&h.object),
                            Some(GetOptions::new().with_prefix().with_count_only()),
                        )]),
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
                Ok(match verdict_of(&txn_response(Some(r), "a release")?)? {
                    Verdict::Done(_) => Verdict::Done(()),
                    Verdict::NotHeld => Verdict::NotHeld,
                    Verdict::Mismatch => Verdict::Mismatch,
                })
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
        let fresh = self.grant(seconds).await?;
        let ops: Vec<TxnOp> = holders
            .iter()
            .map(|h| {
                let key = self.keys.holder_key(&h.object, &h.digest, h.fence);
                TxnOp::txn(
                    Txn::new()
                        .when([Compare::version(key.clone(), CompareOp::Greater, 0)])
                        .and_then([
                            // The holder as it was: its record and the lease it leaves.
                            TxnOp::get(key.clone(), None),
                            TxnOp::put(
                                key,
                                Vec::new(),
                                Some(PutOptions::new().with_ignore_value().with_lease(fresh.id)),
                            ),
                        ])
                        .or_else([TxnOp::get(
                            self.keys.holders_prefix(&h.object),
                            Some(GetOptions::new().with_prefix().with_count_only()),
                        )]),
                )
            })
            .collect();
        let response = match self.txn("renew", Txn::new().and_then(ops)).await {
            Ok(response) => response,
            Err(e) => {
                self.revoke_later(fresh.id);
                return Err(e);
            }
        };
        let responses = response.op_responses();
        if responses.len() != holders.len() {
            return Err(malformed("renew answer"));
        }
        let left = fresh.reported();
        let mut left_behind = Vec::new();
        let verdicts = responses
            .into_iter()
            .map(|r| {
                Ok(match verdict_of(&txn_response(Some(r), "a renew")?)? {
                    Verdict::Done(done) => {
                        let get = get_response(done.into_iter().next(), "a renewed holder")?;
                        let kv = get.kvs().first().ok_or_else(|| malformed("renew answer"))?;
                        left_behind.push(kv.lease());
                        let record =
                            HolderRecord::parse(kv.value()).ok_or_else(|| malformed("holder"))?;
                        Verdict::Done(HolderState {
                            owner: record.owner,
                            mode: record.mode,
                            ttl: left,
                        })
                    }
                    Verdict::NotHeld => Verdict::NotHeld,
                    Verdict::Mismatch => Verdict::Mismatch,
                })
            })
            .collect::<LockResult<Vec<_>>>()?;
        if left_behind.is_empty() {
            self.revoke_later(fresh.id);
        }
        self.revoke_if_empty_later(left_behind);
        Ok(verdicts)
    }

    async fn validate(&self, holder: &HolderRef) -> LockResult<Verdict<HolderState>> {
        let key = self
            .keys
            .holder_key(&holder.object, &holder.digest, holder.fence);
        let response = self
            .txn(
                "validate",
                Txn::new().and_then([
                    TxnOp::get(key, None),
                    TxnOp::get(
                        self.keys.holders_prefix(&holder.object),
                        Some(GetOptions::new().with_prefix().with_count_only()),
                    ),
                ]),
            )
            .await?;
        let mut responses = response.op_responses().into_iter();
        let own = get_response(responses.next(), "a holder read")?;
        let count = get_response(responses.next(), "a holder count")?.count();
        let Some(kv) = own.kvs().first() else {
            return Ok(if count > 0 {
                Verdict::Mismatch
            } else {
                Verdict::NotHeld
            });
        };
        let record = HolderRecord::parse(kv.value()).ok_or_else(|| malformed("holder"))?;
        let ttls = self.lease_ttls(&[kv.lease()]).await?;
        match ttls.get(&kv.lease()).copied().flatten() {
            Some(ttl) => Ok(Verdict::Done(HolderState {
                owner: record.owner,
                mode: record.mode,
                ttl: ttl.max(Duration::from_millis(1)),
            })),
            // Expired; etcd is about to delete it.
            None if count > 1 => Ok(Verdict::Mismatch),
            None => Ok(Verdict::NotHeld),
        }
    }

    async fn downgrade(&self, holder: &HolderRef) -> LockResult<Verdict<HolderState>> {
        let key = self
            .keys
            .holder_key(&holder.object, &holder.digest, holder.fence);
        for _ in 0..MAX_CONFLICT_RETRIES {
            let response = self
                .txn(
                    "downgrade",
                    Txn::new().and_then([
                        TxnOp::get(key.clone(), None),
                        TxnOp::get(
                            self.keys.holders_prefix(&holder.object),
                            Some(GetOptions::new().with_prefix().with_count_only()),
                        ),
                    ]),
                )
                .await?;
            let mut responses = response.op_responses().into_iter();
            let own = get_response(responses.next(), "a holder read")?;
            let count = get_response(responses.next(), "a holder count")?.count();
            let Some(kv) = own.kvs().first() else {
                return Ok(if count > 0 {
                    Verdict::Mismatch
                } else {
                    Verdict::NotHeld
                });
            };
            let record = HolderRecord::parse(kv.value()).ok_or_else(|| malformed("holder"))?;
            let write = async {
                if record.mode == LockMode::Shared {
                    return Ok(true);
                }
                let shared = HolderRecord {
                    mode: LockMode::Shared,
                    ..record.clone()
                };
                let response = self
                    .txn(
                        "downgrade",
                        Txn::new()
                            .when([Compare::mod_revision(
                                key.clone(),
                                CompareOp::Equal,
                                kv.mod_revision(),
                            )])
                            .and_then([
                                TxnOp::put(
                                    key.clone(),
                                    shared.encode(),
                                    Some(PutOptions::new().with_ignore_lease()),
                                ),
                                // For the watch: the holder's key still exists (compared
                                // above), so its lease does too.
                                TxnOp::put(
                                    self.keys.wake_key(&holder.object),
                                    Vec::new(),
                                    Some(PutOptions::new().with_lease(kv.lease())),
                                ),
                            ]),
                    )
                    .await?;
                Ok::<_, LockError>(response.succeeded())
            };
            let lease = [kv.lease()];
            let (written, ttls) = tokio::join!(write, self.lease_ttls(&lease));
            if !written? {
                continue;
            }
            let ttl = ttls?
                .get(&kv.lease())
                .copied()
                .flatten()
                .unwrap_or_default();
            return Ok(Verdict::Done(HolderState {
                owner: record.owner,
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
        Ok(self.describe(std::slice::from_ref(object)).await?.pop())
    }

    async fn list(&self, query: &ListQuery) -> LockResult<LockPage> {
        let start_prefix = self.keys.list_prefix(&query.prefix);
        let end = prefix_end(&start_prefix);
        let mut start = match &query.after {
            None => start_prefix,
            Some(cursor) => self.keys.after_object(&parse_cursor(cursor)?),
        };
        let mut page: Vec<(ObjectId, Vec<HolderKv>)> = Vec::new();
        let mut more_objects = false;
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
                let Some(Parsed::Holder { object, .. }) = self.keys.parse(kv.key()) else {
                    continue;
                };
                if !object.as_str().starts_with(query.prefix.as_str()) {
                    continue;
                }
                let is_new = page.last().is_none_or(|(last, _)| *last != object);
                if is_new && page.len() == query.limit {
                    more_objects = true;
                    break 'scan;
                }
                let state = self.object_state(std::slice::from_ref(kv), None)?;
                if is_new {
                    page.push((object, state.holders));
                } else if let Some((_, holders)) = page.last_mut() {
                    holders.extend(state.holders);
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
        let next = if more_objects {
            page.last().map(|(object, _)| encode_cursor(object))
        } else {
            None
        };
        let locks = self.infos(page).await?;
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
