//! [`MemoryLockService`]: the locks, the fences and the sweeper.

use std::fmt;
use std::future::ready;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use parking_lot::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dashmap::mapref::entry::Entry as MapEntry;
use dashmap::DashMap;
use lockcore::{
    async_trait, audit, wall_clock_micros, AcquireRequest, Fence, Lease, LeaseEnd, LeaseEndSink,
    ListQuery, LockError, LockInfo, LockPage, LockResult, LockService, LockToken, ObjectId,
    OwnerId, TokenDigest, TokenIssuer, WaitQueue,
};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::MemoryConfig;
use crate::timers::{TimerId, Timers, TimersFull};

/// The name [`LockService::backend`] reports.
pub const BACKEND: &str = "memory";

/// How many expired timers the sweeper handles before it yields to other tasks.
const SWEEP_BATCH: usize = 1024;

/// Longest the sweeper sleeps without looking at the heap, in nanoseconds. Deadlines later than
/// its next look do not need to wake it, which keeps the common case (a new lease expiring after
/// all current ones) free of cross-thread wake-ups.
const SWEEPER_NAP_NANOS: u64 = 1_000_000_000;

/// One held lock. Boxed in the map so that the hash table's empty buckets cost a pointer, not a
/// whole entry (see BENCHMARKS.md for the measured bytes per lock).
#[derive(Debug)]
struct Entry {
    owner: OwnerId,
    digest: TokenDigest,
    fence: Fence,
    /// Monotonic nanoseconds since the service's clock base: the only clock expiry uses.
    expires: u64,
    /// Wall-clock microseconds at the grant, for display only.
    acquired_micros: u64,
    timer: TimerId,
}

impl Entry {
    fn is_live(&self, now: u64) -> bool {
        self.expires > now
    }

    /// Whether a token with `digest` and `fence` is this grant's: the digest compared in
    /// constant time, and the fence.
    fn is_held_by(&self, digest: &TokenDigest, fence: Fence) -> bool {
        digest.ct_eq(&self.digest) & (fence == self.fence)
    }

    fn remaining(&self, now: u64) -> Duration {
        Duration::from_nanos(self.expires.saturating_sub(now))
    }

    fn info(&self, object: &ObjectId, now: u64, wall_now: SystemTime) -> LockInfo {
        let ttl = self.remaining(now);
        LockInfo {
            object: object.clone(),
            owner: self.owner.clone(),
            fence: self.fence,
            acquired_at: UNIX_EPOCH + Duration::from_micros(self.acquired_micros),
            expires_at: wall_now + ttl,
            ttl,
        }
    }
}

/// The process's monotonic clock, as nanoseconds since the service started.
#[derive(Debug)]
struct Clock {
    base: Instant,
}

impl Clock {
    fn now(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn instant(&self, nanos: u64) -> Instant {
        self.base + Duration::from_nanos(nanos)
    }
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

impl From<TimersFull> for LockError {
    fn from(_: TimersFull) -> Self {
        LockError::unavailable(BACKEND, "too many locks held (4 billion)")
    }
}

struct Inner {
    config: MemoryConfig,
    issuer: TokenIssuer,
    clock: Clock,
    locks: DashMap<ObjectId, Box<Entry>>,
    timers: Mutex<Timers>,
    /// The highest fence issued (or the configured floor): one counter for all objects.
    last_fence: AtomicU64,
    waiters: WaitQueue,
    sweeper_wake: Arc<Notify>,
    /// Where ended leases are reported, once someone asked ([`LockService::report_lease_ends`]).
    lease_ends: OnceLock<LeaseEndSink>,
}

/// An in-process [`LockService`] on a [`DashMap`], with exact expiry and a deadline-heap sweeper.
///
/// Locks live only as long as the service: they are lost when the process exits (fences are
/// not: see [`MemoryConfig::fence_floor`]). Share it as `Arc<dyn LockService>`.
pub struct MemoryLockService {
    inner: Arc<Inner>,
}

impl MemoryLockService {
    /// A service with `config`, minting tokens with `issuer`.
    ///
    /// Spawns the expiry sweeper on the current tokio runtime; the sweeper holds only a weak
    /// reference and stops when the service is dropped.
    ///
    /// # Panics
    ///
    /// If called outside a tokio runtime. The runtime needs its time driver (`enable_time` or
    /// `enable_all`, as `#[tokio::main]` sets up): without it the sweeper task stops (expired
    /// leases are still free to acquire, but their memory is reclaimed only on access) and
    /// blocking acquires panic.
    pub fn new(config: MemoryConfig, issuer: TokenIssuer) -> Self {
        let sweeper_wake = Arc::new(Notify::new());
        let inner = Arc::new(Inner {
            config,
            issuer,
            clock: Clock {
                base: Instant::now(),
            },
            locks: DashMap::new(),
            timers: Mutex::new(Timers::default()),
            last_fence: AtomicU64::new(config.fence_floor.get()),
            waiters: WaitQueue::new(),
            sweeper_wake: sweeper_wake.clone(),
            lease_ends: OnceLock::new(),
        });
        tokio::spawn(sweep_forever(Arc::downgrade(&inner), sweeper_wake));
        Self { inner }
    }

    /// The highest fence issued so far (the configured floor before the first grant). A server
    /// persists it and passes it back as [`MemoryConfig::fence_floor`] after a restart.
    pub fn highest_fence(&self) -> Fence {
        Fence(self.inner.last_fence.load(Ordering::Acquire))
    }

    /// Locks currently in the table (for metrics). Leases that expired in the last moments but
    /// that the sweeper has not reclaimed yet are counted; they are free to acquire all the same.
    pub fn held(&self) -> usize {
        self.inner.locks.len()
    }

    /// Blocked acquires waiting right now (for metrics).
    pub fn waiting(&self) -> usize {
        self.inner.waiters.waiting()
    }

    /// The configuration the service runs with.
    pub fn config(&self) -> &MemoryConfig {
        &self.inner.config
    }

    #[cfg(test)]
    pub(crate) fn timers_live(&self) -> usize {
        self.inner.timers().live()
    }

    #[cfg(test)]
    pub(crate) fn assert_timers_consistent(&self) {
        let timers = self.inner.timers();
        timers.assert_consistent();
        assert!(timers.scheduled() <= timers.live());
    }
}

impl Drop for MemoryLockService {
    fn drop(&mut self) {
        // The sweeper wakes, finds the service gone, and ends.
        self.inner.sweeper_wake.notify_one();
    }
}

impl fmt::Debug for MemoryLockService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryLockService")
            .field("config", &self.inner.config)
            .field("held", &self.held())
            .field("waiting", &self.waiting())
            .field("highest_fence", &self.highest_fence())
            .finish_non_exhaustive()
    }
}

impl Inner {
    fn timers(&self) -> MutexGuard<'_, Timers> {
        self.timers.lock()
    }

    /// Reports a lease that ended to the sink, if one was registered.
    fn ended(&self, object: &ObjectId, owner: OwnerId, fence: Fence, expired: bool) {
        if let Some(sink) = self.lease_ends.get() {
            sink(LeaseEnd::new(object.clone(), owner, fence, expired));
        }
    }

    fn wake_sweeper(&self, needed: bool) {
        if needed {
            self.sweeper_wake.notify_one();
        }
    }

    /// Takes the next fence: above every fence issued before, the configured floor, and the
    /// wall-clock floor (see [`lockcore::fence`]).
    fn next_fence(&self, unix_micros: u64) -> LockResult<Fence> {
        let mut last = self.last_fence.load(Ordering::Acquire);
        loop {
            if last == u64::MAX {
                return Err(LockError::Internal("fence numbers exhausted".into()));
            }
            let next = Fence::next_after(Some(Fence(last)), unix_micros);
            match self.last_fence.compare_exchange_weak(
                last,
                next.get(),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(next),
                Err(current) => last = current,
            }
        }
    }

    /// One attempt to grant the request's object: succeeds if it is free or its lease has
    /// expired, and answers a retry of the request that holds it with that same lease.
    fn try_acquire(&self, request: &AcquireRequest) -> LockResult<Lease> {
        let (object, owner, ttl) = (&request.object, &request.owner, request.ttl);
        let pending = self.issuer.prepare_for(request);
        let digest = pending.digest();
        let now = self.clock.now();
        let expires = now.saturating_add(nanos(ttl));
        let (token, fence, wake) = match self.locks.entry(object.clone()) {
            MapEntry::Occupied(mut held) => {
                let entry = held.get_mut();
                if entry.is_live(now) && entry.digest.ct_eq(&digest) {
                    // A retry of the request this lease was granted to (only a request id can
                    // draw the same nonce twice): the same lease again.
                    let lease = Lease {
                        object: object.clone(),
                        owner: entry.owner.clone(),
                        token: self.issuer.seal(pending, object, entry.fence),
                        fence: entry.fence,
                        ttl: entry.remaining(now),
                    };
                    return Ok(lease);
                }
                if entry.is_live(now) {
                    return Err(LockError::Locked {
                        object: object.clone(),
                        holder: entry.owner.clone(),
                        retry_after: entry.remaining(now),
                    });
                }
                // The lease ran out and the sweeper has not got to it yet: take it over.
                let micros = wall_clock_micros();
                let fence = self.next_fence(micros)?;
                let wake = self.timers().reschedule(entry.timer, expires);
                let previous = (entry.owner.clone(), entry.fence);
                **entry = Entry {
                    owner: owner.clone(),
                    digest,
                    fence,
                    expires,
                    acquired_micros: micros,
                    timer: entry.timer,
                };
                // Sealed before the shard lock is released: see the Vacant arm.
                let token = self.issuer.seal(pending, object, fence);
                drop(held);
                self.ended(object, previous.0, previous.1, true);
                (token, fence, wake)
            }
            MapEntry::Vacant(free) => {
                let micros = wall_clock_micros();
                let fence = self.next_fence(micros)?;
                let (timer, wake) = self.timers().insert(object.clone(), expires)?;
                let inserted = free.insert(Box::new(Entry {
                    owner: owner.clone(),
                    digest,
                    fence,
                    expires,
                    acquired_micros: micros,
                    timer,
                }));
                // Sealing (an HMAC: a few hundred ns of pure computation) before releasing the
                // shard lock lets the cache miss of the store into a large table complete in the
                // background instead of stalling the unlock's atomic instruction. Measured: 65 to
                // 130 ns less per acquire with 10^6 locks held, for a longer hold of one of the
                // map's 4-per-core shards (no change in the 8-task contention benchmark).
                let token = self.issuer.seal(pending, object, fence);
                drop(inserted);
                (token, fence, wake)
            }
        };
        self.wake_sweeper(wake);
        Ok(Lease {
            object: object.clone(),
            owner: owner.clone(),
            token,
            fence,
            ttl,
        })
    }

    /// Reclaims due leases, at most one batch. Returns when to look again, or `None` if a full
    /// batch was handled and more may be due.
    fn sweep_once(&self, due: &mut Vec<(TimerId, ObjectId)>) -> Option<Instant> {
        let now = self.clock.now();
        self.timers().pop_due(now, SWEEP_BATCH, due);
        let full = due.len() == SWEEP_BATCH;
        for (timer, object) in due.drain(..) {
            let expired = self.locks.remove_if_mut(&object, |_, entry| {
                if entry.timer != timer {
                    // The lock this timer belonged to is gone; its remover freed the timer.
                    return false;
                }
                if entry.is_live(now) {
                    // Renewed since the timer was set: wait for the new expiry.
                    self.timers().reschedule(timer, entry.expires);
                    return false;
                }
                true
            });
            if let Some((_, entry)) = expired {
                self.timers().cancel(entry.timer);
                self.ended(&object, entry.owner, entry.fence, true);
                self.waiters.wake(&object);
            }
        }
        if full {
            return None;
        }
        let until = self
            .timers()
            .sweeper_sleeps(now.saturating_add(SWEEPER_NAP_NANOS));
        Some(self.clock.instant(until))
    }
}

/// The sweeper task: reclaims expired leases as their deadlines pass, with work proportional
/// to what expires. It holds the service only weakly and ends once the service is dropped.
async fn sweep_forever(inner: Weak<Inner>, wake: Arc<Notify>) {
    let mut due = Vec::new();
    loop {
        let next = match inner.upgrade() {
            Some(inner) => inner.sweep_once(&mut due),
            None => return,
        };
        match next {
            Some(until) => {
                tokio::select! {
                    () = wake.notified() => {}
                    () = tokio::time::sleep_until(until) => {}
                }
            }
            None => tokio::task::yield_now().await,
        }
    }
}

fn refuse(
    operation: &'static str,
    object: &ObjectId,
    token: &LockToken,
    error: LockError,
) -> LockError {
    audit::log_refusal(operation, object, token, &error);
    error
}

#[async_trait]
impl LockService for MemoryLockService {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn acquire_with(&self, request: &AcquireRequest) -> LockResult<Lease> {
        let inner = &*self.inner;
        inner
            .config
            .limits
            .check_acquire(request.ttl, request.wait)?;
        if request.wait.is_zero() {
            return inner.try_acquire(request);
        }
        inner
            .waiters
            .acquire(&request.object, request.wait, || {
                ready(inner.try_acquire(request))
            })
            .await
    }

    async fn release(&self, object: &ObjectId, token: &LockToken) -> LockResult<Fence> {
        let inner = &*self.inner;
        audit::check_token(&inner.issuer, "release", object, token)?;
        let (digest, fence) = (token.digest(), token.fence());
        let now = inner.clock.now();
        let mut expired = false;
        let mut mismatch = false;
        let removed = inner.locks.remove_if(object, |_, entry| {
            if !entry.is_live(now) {
                // Nobody holds it any more; reclaim it while we are here.
                expired = true;
                return true;
            }
            mismatch = !entry.is_held_by(&digest, fence);
            !mismatch
        });
        if let Some((_, entry)) = removed {
            inner.timers().cancel(entry.timer);
            let fence = entry.fence;
            inner.ended(object, entry.owner, fence, expired);
            inner.waiters.wake(object);
            if !expired {
                return Ok(fence);
            }
        }
        let error = if mismatch {
            LockError::TokenMismatch {
                object: object.clone(),
            }
        } else {
            LockError::NotHeld {
                object: object.clone(),
            }
        };
        Err(refuse("release", object, token, error))
    }

    async fn renew(
        &self,
        object: &ObjectId,
        token: &LockToken,
        ttl: Duration,
    ) -> LockResult<Lease> {
        let inner = &*self.inner;
        inner.config.limits.check_ttl(ttl)?;
        audit::check_token(&inner.issuer, "renew", object, token)?;
        let (digest, fence) = (token.digest(), token.fence());
        let now = inner.clock.now();
        let refusal = match inner.locks.get_mut(object) {
            Some(mut entry) if entry.is_live(now) && entry.is_held_by(&digest, fence) => {
                let expires = now.saturating_add(nanos(ttl));
                let mut wake = false;
                if expires < entry.expires {
                    // Shortened: the sweeper must look earlier. (A longer lease keeps its old
                    // deadline; the sweeper re-arms it when that passes.)
                    wake = inner.timers().reschedule(entry.timer, expires);
                }
                entry.expires = expires;
                let lease = Lease {
                    object: object.clone(),
                    owner: entry.owner.clone(),
                    token: token.clone(),
                    fence: entry.fence,
                    ttl,
                };
                drop(entry);
                inner.wake_sweeper(wake);
                return Ok(lease);
            }
            Some(entry) if entry.is_live(now) => LockError::TokenMismatch {
                object: object.clone(),
            },
            _ => LockError::NotHeld {
                object: object.clone(),
            },
        };
        Err(refuse("renew", object, token, refusal))
    }

    async fn validate(&self, object: &ObjectId, token: &LockToken) -> LockResult<Lease> {
        let inner = &*self.inner;
        inner.issuer.check(object, token)?;
        let (digest, fence) = (token.digest(), token.fence());
        let now = inner.clock.now();
        match inner.locks.get(object) {
            Some(entry) if entry.is_live(now) => {
                if entry.is_held_by(&digest, fence) {
                    Ok(Lease {
                        object: object.clone(),
                        owner: entry.owner.clone(),
                        token: token.clone(),
                        fence: entry.fence,
                        ttl: entry.remaining(now),
                    })
                } else {
                    Err(LockError::TokenMismatch {
                        object: object.clone(),
                    })
                }
            }
            _ => Err(LockError::NotHeld {
                object: object.clone(),
            }),
        }
    }

    async fn inspect(&self, object: &ObjectId) -> LockResult<Option<LockInfo>> {
        let inner = &*self.inner;
        let now = inner.clock.now();
        let wall_now = SystemTime::now();
        Ok(inner
            .locks
            .get(object)
            .filter(|entry| entry.is_live(now))
            .map(|entry| entry.info(object, now, wall_now)))
    }

    /// Reports every release and expiry to `sink`, exactly once per lease: expiries as the
    /// sweeper (or an acquire or release that finds a lease run out) reclaims them.
    fn report_lease_ends(&self, sink: LeaseEndSink) -> bool {
        self.inner.lease_ends.set(sink).is_ok()
    }

    /// Walks every held lock once per page (`O(held)`), keeping only the page's worth of matches
    /// sorted; fine for operators' listings, not meant for a hot path.
    async fn list(&self, query: &ListQuery) -> LockResult<LockPage> {
        query.check()?;
        let inner = &*self.inner;
        let now = inner.clock.now();
        let wall_now = SystemTime::now();
        let after = query.after.as_deref();
        let mut matches: Vec<LockInfo> = inner
            .locks
            .iter()
            .filter(|item| {
                let name = item.key().as_str();
                name.starts_with(query.prefix.as_str())
                    && after.is_none_or(|after| name > after)
                    && item.value().is_live(now)
            })
            .map(|item| item.value().info(item.key(), now, wall_now))
            .collect();
        let more = matches.len() > query.limit;
        if more {
            matches.select_nth_unstable_by(query.limit, |a, b| a.object.cmp(&b.object));
            matches.truncate(query.limit);
        }
        matches.sort_unstable_by(|a, b| a.object.cmp(&b.object));
        let next = if more {
            matches.last().map(|info| info.object.to_string())
        } else {
            None
        };
        Ok(LockPage {
            locks: matches,
            next,
        })
    }
}
