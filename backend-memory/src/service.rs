//! [`MemoryStore`]: the holders, the queues, the fences and the sweeper, in this process.

use std::collections::hash_map::{Entry as MapEntry, HashMap};
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lockcore::reclaim::ReclaimPolicy;
use lockcore::store::{
    Attempt, Attempted, Claim, Granted, HolderRef, HolderState, LockStore, Ticket, Verdict,
};
use lockcore::{
    async_trait, wall_clock_micros, Conflict, Fence, HolderInfo, LeaseEnd, LeaseEndSink, Limits,
    ListQuery, LockError, LockInfo, LockMode, LockPage, LockResult, Locks, ObjectId, OwnerId,
    TokenDigest, Undo, WaitQueue,
};
use parking_lot::{Mutex, MutexGuard};
use smallvec::SmallVec;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::MemoryConfig;
use crate::timers::{TimerId, Timers, TimersFull};

/// The name [`LockStore::backend`] reports.
pub const BACKEND: &str = "memory";

/// The in-process lock service: [`Locks`] on a [`MemoryStore`].
pub type MemoryLockService = Locks<MemoryStore>;

/// How many expired timers the sweeper handles before it yields to other tasks.
const SWEEP_BATCH: usize = 1024;

/// Longest the sweeper sleeps without looking at the heap, in nanoseconds. Deadlines later than
/// its next look do not need to wake it, which keeps the common case (a new lease expiring after
/// all current ones) free of cross-thread wake-ups.
const SWEEPER_NAP_NANOS: u64 = 1_000_000_000;

/// Shards of the object table. A request locks the shards of its objects in increasing order,
/// so multi-object requests are atomic and never deadlock.
const SHARDS: usize = 64;

/// One grant on an object.
#[derive(Debug)]
struct Holder {
    owner: OwnerId,
    digest: TokenDigest,
    fence: Fence,
    /// Monotonic nanoseconds since the store's clock base: the only clock expiry uses.
    expires: u64,
    /// Wall-clock microseconds at the grant, for display only.
    acquired_micros: u64,
    /// A retry with the request id answered with this grant (see [`lockcore::reclaim`]).
    claimed: bool,
    timer: TimerId,
}

impl Holder {
    fn is_live(&self, now: u64) -> bool {
        self.expires > now
    }

    /// Whether this is the grant named by `holder`: the digest compared in constant time, and
    /// the fence.
    fn is(&self, holder: &HolderRef) -> bool {
        holder.digest.ct_eq(&self.digest) & (holder.fence == self.fence)
    }

    fn remaining(&self, now: u64) -> Duration {
        Duration::from_nanos(self.expires.saturating_sub(now))
    }

    fn info(&self, now: u64, wall_now: SystemTime) -> HolderInfo {
        let ttl = self.remaining(now);
        HolderInfo {
            owner: self.owner.clone(),
            fence: self.fence,
            acquired_at: UNIX_EPOCH + Duration::from_micros(self.acquired_micros),
            expires_at: wall_now + ttl,
            ttl,
            scope: lockcore::LockScope::Object,
        }
    }
}

/// A waiting request's place in one object's queue.
#[derive(Debug, Clone)]
struct QueueEntry {
    ticket: Ticket,
    mode: LockMode,
    owner: OwnerId,
    expires: u64,
}

/// Everything about one object: its holders (all of `mode`) and its queue (by ticket).
#[derive(Debug)]
struct Slot {
    mode: LockMode,
    holders: Vec<Holder>,
    queue: Vec<QueueEntry>,
}

impl Slot {
    fn is_empty(&self) -> bool {
        self.holders.is_empty() && self.queue.is_empty()
    }

    /// The live holder `holder` names, if any, and whether the object has live holders at all.
    fn find(&mut self, holder: &HolderRef, now: u64) -> (Option<usize>, bool) {
        let mut any = false;
        for (i, h) in self.holders.iter().enumerate() {
            if h.is_live(now) {
                any = true;
                if h.is(holder) {
                    return (Some(i), true);
                }
            }
        }
        (None, any)
    }

    fn state(&self, index: usize, now: u64) -> HolderState {
        let holder = &self.holders[index];
        HolderState {
            owner: holder.owner.clone(),
            mode: self.mode,
            ttl: holder.remaining(now),
        }
    }

    /// What blocks `claim` (asked with `ticket`), if anything: the conflicting live holder that
    /// expires last, else the earliest conflicting live queue entry ahead of the ticket.
    fn conflict(&self, claim: &Claim, ticket: Option<Ticket>, now: u64) -> Option<Conflict> {
        if self.mode.conflicts_with(claim.mode) {
            if let Some(holder) = self
                .holders
                .iter()
                .filter(|h| h.is_live(now))
                .max_by_key(|h| h.expires)
            {
                return Some(Conflict {
                    object: claim.object.clone(),
                    holder: holder.owner.clone(),
                    retry_after: holder.remaining(now),
                    cause: lockcore::ConflictCause::Held,
                });
            }
        }
        self.queue
            .iter()
            .filter(|entry| entry.expires > now)
            .filter(|entry| ticket.is_none_or(|mine| entry.ticket < mine))
            .find(|entry| entry.mode.conflicts_with(claim.mode))
            .map(|entry| Conflict {
                object: claim.object.clone(),
                holder: entry.owner.clone(),
                retry_after: Duration::from_nanos(entry.expires.saturating_sub(now)),
                cause: lockcore::ConflictCause::Held,
            })
    }

    /// Enters or renews `ticket` in the queue, keeping it ordered by ticket.
    fn enqueue(&mut self, entry: QueueEntry) {
        match self.queue.binary_search_by_key(&entry.ticket, |e| e.ticket) {
            Ok(at) => self.queue[at] = entry,
            Err(at) => self.queue.insert(at, entry),
        }
    }

    fn leave(&mut self, ticket: Ticket) -> bool {
        let before = self.queue.len();
        self.queue.retain(|entry| entry.ticket != ticket);
        self.queue.len() != before
    }
}

/// The process's monotonic clock, as nanoseconds since the store started.
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

type Shard = HashMap<ObjectId, Slot>;

struct Inner {
    config: MemoryConfig,
    clock: Clock,
    hasher: RandomState,
    shards: Box<[Mutex<Shard>]>,
    timers: Mutex<Timers>,
    /// The highest fence issued (or the configured floor): one counter for all objects.
    last_fence: AtomicU64,
    /// The last ticket drawn: one counter for all queues.
    last_ticket: AtomicU64,
    waiters: WaitQueue,
    sweeper_wake: Arc<Notify>,
    /// Where ended leases are reported, once someone asked ([`LockStore::report_lease_ends`]).
    lease_ends: OnceLock<LeaseEndSink>,
}

/// The shards a request locked, in increasing order, and a way to reach an object's table.
struct Locked<'a> {
    inner: &'a Inner,
    guards: SmallVec<[(usize, MutexGuard<'a, Shard>); 2]>,
}

impl Locked<'_> {
    fn shard(&mut self, object: &ObjectId) -> &mut Shard {
        let index = self.inner.shard_of(object);
        let at = self
            .guards
            .binary_search_by_key(&index, |(i, _)| *i)
            .unwrap_or_else(|_| unreachable!("every object's shard is locked"));
        &mut self.guards[at].1
    }
}

/// An in-process lock store: sharded tables with exact expiry and a deadline-heap sweeper.
///
/// Locks live only as long as the store: they are lost when the process exits (fences are
/// not: see [`MemoryConfig::fence_floor`]). Use it as [`MemoryLockService`].
pub struct MemoryStore {
    inner: Arc<Inner>,
}

impl MemoryStore {
    /// A store with `config`.
    ///
    /// Spawns the expiry sweeper on the current tokio runtime; the sweeper holds only a weak
    /// reference and stops when the store is dropped.
    ///
    /// # Panics
    ///
    /// If called outside a tokio runtime. The runtime needs its time driver (`enable_time` or
    /// `enable_all`, as `#[tokio::main]` sets up): without it the sweeper task stops (expired
    /// leases are still free to acquire, but their memory is reclaimed only on access) and
    /// blocking acquires panic.
    pub fn new(config: MemoryConfig) -> Self {
        let sweeper_wake = Arc::new(Notify::new());
        let inner = Arc::new(Inner {
            config,
            clock: Clock {
                base: Instant::now(),
            },
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            timers: Mutex::new(Timers::default()),
            last_fence: AtomicU64::new(config.fence_floor.get()),
            last_ticket: AtomicU64::new(0),
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

    /// Objects currently in the table, held or waited for (for metrics). Leases that expired in
    /// the last moments but that the sweeper has not reclaimed yet are counted; they are free
    /// to acquire all the same.
    pub fn held(&self) -> usize {
        self.inner
            .shards
            .iter()
            .map(|shard| shard.lock().len())
            .sum()
    }

    /// Blocked acquires waiting right now in this process (for metrics).
    pub fn waiting(&self) -> usize {
        self.inner.waiters.waiting()
    }

    /// The configuration the store runs with.
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

impl Drop for MemoryStore {
    fn drop(&mut self) {
        // The sweeper wakes, finds the store gone, and ends.
        self.inner.sweeper_wake.notify_one();
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
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

    fn shard_of(&self, object: &ObjectId) -> usize {
        (self.hasher.hash_one(object) as usize) % SHARDS
    }

    /// Locks the shards of `objects` in increasing order.
    fn lock<'a>(&'a self, objects: impl Iterator<Item = &'a ObjectId>) -> Locked<'a> {
        let mut indices: SmallVec<[usize; 4]> =
            objects.map(|object| self.shard_of(object)).collect();
        indices.sort_unstable();
        indices.dedup();
        let guards = indices
            .into_iter()
            .map(|index| (index, self.shards[index].lock()))
            .collect();
        Locked {
            inner: self,
            guards,
        }
    }

    /// Reports a lease that ended to the sink, if one was registered.
    fn ended(&self, object: &ObjectId, mode: LockMode, holder: &Holder, expired: bool) {
        if let Some(sink) = self.lease_ends.get() {
            sink(
                LeaseEnd::new(object.clone(), holder.owner.clone(), holder.fence, expired)
                    .with_mode(mode),
            );
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

    /// Removes the holders of `slot` whose lease ran out, reporting them. Returns whether any
    /// went.
    fn drop_expired(&self, object: &ObjectId, slot: &mut Slot, now: u64) -> bool {
        if slot.holders.iter().all(|h| h.is_live(now)) {
            return false;
        }
        let mut timers = self.timers();
        let mode = slot.mode;
        slot.holders.retain(|holder| {
            if holder.is_live(now) {
                return true;
            }
            timers.cancel(holder.timer);
            self.ended(object, mode, holder, true);
            false
        });
        true
    }

    fn try_acquire(&self, attempt: Attempt<'_>) -> LockResult<Attempted> {
        let ticket = attempt.queueing.and_then(|q| q.ticket);
        let mut locked = self.lock(attempt.claims.iter().map(|c| &c.object));
        let now = self.clock.now();
        let mut conflicts = Vec::new();
        let mut replays: SmallVec<[bool; 8]> = SmallVec::from_elem(false, attempt.claims.len());
        let mut freed: SmallVec<[ObjectId; 2]> = SmallVec::new();
        for (claim, replay) in attempt.claims.iter().zip(&mut replays) {
            let Some(slot) = locked.shard(&claim.object).get_mut(&claim.object) else {
                continue;
            };
            if self.drop_expired(&claim.object, slot, now) {
                freed.push(claim.object.clone());
            }
            if slot.holders.iter().any(|h| h.digest.ct_eq(&claim.digest)) {
                *replay = true;
                continue;
            }
            conflicts.extend(slot.conflict(claim, ticket, now));
        }

        let outcome = if conflicts.is_empty() {
            let mut granted = Vec::with_capacity(attempt.claims.len());
            let mut wake_sweeper = false;
            let expires = now.saturating_add(nanos(attempt.ttl));
            for (claim, replay) in attempt.claims.iter().zip(replays) {
                let shard = locked.shard(&claim.object);
                if replay {
                    let slot = shard
                        .get_mut(&claim.object)
                        .ok_or_else(|| LockError::Internal("replayed slot vanished".into()))?;
                    if let Some(t) = ticket {
                        slot.leave(t);
                    }
                    let holder = slot
                        .holders
                        .iter_mut()
                        .find(|h| h.digest.ct_eq(&claim.digest))
                        .ok_or_else(|| LockError::Internal("replayed holder vanished".into()))?;
                    holder.claimed = true;
                    granted.push(Granted {
                        fence: holder.fence,
                        mode: slot.mode,
                        ttl: holder.remaining(now),
                        replayed: true,
                    });
                    continue;
                }
                let micros = wall_clock_micros();
                let fence = self.next_fence(micros)?;
                let (timer, wake) = self.timers().insert(claim.object.clone(), expires)?;
                wake_sweeper |= wake;
                let holder = Holder {
                    owner: attempt.owner.clone(),
                    digest: claim.digest,
                    fence,
                    expires,
                    acquired_micros: micros,
                    claimed: false,
                    timer,
                };
                match shard.entry(claim.object.clone()) {
                    MapEntry::Occupied(mut slot) => {
                        let slot = slot.get_mut();
                        if let Some(t) = ticket {
                            slot.leave(t);
                        }
                        slot.mode = claim.mode;
                        slot.holders.push(holder);
                    }
                    MapEntry::Vacant(free) => {
                        free.insert(Slot {
                            mode: claim.mode,
                            holders: vec![holder],
                            queue: Vec::new(),
                        });
                    }
                }
                granted.push(Granted {
                    fence,
                    mode: claim.mode,
                    ttl: attempt.ttl,
                    replayed: false,
                });
            }
            self.wake_sweeper(wake_sweeper);
            Attempted::Granted(granted)
        } else {
            let ticket = attempt.queueing.map(|queueing| {
                let ticket = queueing
                    .ticket
                    .unwrap_or_else(|| Ticket(self.last_ticket.fetch_add(1, Ordering::AcqRel) + 1));
                let expires = now.saturating_add(nanos(queueing.keep_for));
                for claim in attempt.claims {
                    let entry = QueueEntry {
                        ticket,
                        mode: claim.mode,
                        owner: attempt.owner.clone(),
                        expires,
                    };
                    let slot = locked
                        .shard(&claim.object)
                        .entry(claim.object.clone())
                        .or_insert_with(|| Slot {
                            mode: claim.mode,
                            holders: Vec::new(),
                            queue: Vec::new(),
                        });
                    slot.queue.retain(|e| e.expires > now);
                    slot.enqueue(entry);
                }
                ticket
            });
            Attempted::Refused {
                conflicts,
                ticket,
                blockers: Vec::new(),
            }
        };
        drop(locked);
        for object in &freed {
            self.waiters.wake(object);
        }
        Ok(outcome)
    }

    /// Runs `operation` on the live holder each reference names, all under the locks of their
    /// shards; removes slots left empty. Returns the verdicts and the objects to wake.
    fn with_holders<T>(
        &self,
        holders: &[HolderRef],
        mut operation: impl FnMut(&ObjectId, &mut Slot, usize, u64) -> (T, bool),
    ) -> Vec<Verdict<T>> {
        let mut locked = self.lock(holders.iter().map(|h| &h.object));
        let now = self.clock.now();
        let mut verdicts = Vec::with_capacity(holders.len());
        let mut wake: SmallVec<[ObjectId; 2]> = SmallVec::new();
        for holder in holders {
            let shard = locked.shard(&holder.object);
            let MapEntry::Occupied(mut occupied) = shard.entry(holder.object.clone()) else {
                verdicts.push(Verdict::NotHeld);
                continue;
            };
            let slot = occupied.get_mut();
            let mut woke = self.drop_expired(&holder.object, slot, now);
            let verdict = match slot.find(holder, now) {
                (Some(index), _) => {
                    let (value, changed) = operation(&holder.object, slot, index, now);
                    woke |= changed;
                    Verdict::Done(value)
                }
                (None, true) => Verdict::Mismatch,
                (None, false) => Verdict::NotHeld,
            };
            if slot.is_empty() {
                occupied.remove();
            }
            if woke {
                wake.push(holder.object.clone());
            }
            verdicts.push(verdict);
        }
        drop(locked);
        for object in &wake {
            self.waiters.wake(object);
        }
        verdicts
    }

    /// Reclaims due leases, at most one batch. Returns when to look again, or `None` if a full
    /// batch was handled and more may be due.
    fn sweep_once(&self, due: &mut Vec<(TimerId, ObjectId)>) -> Option<Instant> {
        let now = self.clock.now();
        self.timers().pop_due(now, SWEEP_BATCH, due);
        let full = due.len() == SWEEP_BATCH;
        for (timer, object) in due.drain(..) {
            let mut shard = self.shards[self.shard_of(&object)].lock();
            let MapEntry::Occupied(mut occupied) = shard.entry(object.clone()) else {
                // The lock this timer belonged to is gone; its remover freed the timer.
                continue;
            };
            let slot = occupied.get_mut();
            let Some(index) = slot.holders.iter().position(|h| h.timer == timer) else {
                continue;
            };
            if slot.holders[index].is_live(now) {
                // Renewed since the timer was set: wait for the new expiry.
                self.timers().reschedule(timer, slot.holders[index].expires);
                continue;
            }
            let holder = slot.holders.swap_remove(index);
            self.timers().cancel(holder.timer);
            self.ended(&object, slot.mode, &holder, true);
            if slot.is_empty() {
                occupied.remove();
            }
            drop(shard);
            self.waiters.wake(&object);
        }
        if full {
            return None;
        }
        let until = self
            .timers()
            .sweeper_sleeps(now.saturating_add(SWEEPER_NAP_NANOS));
        Some(self.clock.instant(until))
    }

    fn describe(
        &self,
        object: &ObjectId,
        slot: &Slot,
        now: u64,
        wall: SystemTime,
    ) -> Option<LockInfo> {
        let holders = slot
            .holders
            .iter()
            .filter(|h| h.is_live(now))
            .map(|h| h.info(now, wall))
            .collect();
        LockInfo::from_holders(object.clone(), slot.mode, holders)
    }
}

/// The sweeper task: reclaims expired leases as their deadlines pass, with work proportional
/// to what expires. It holds the store only weakly and ends once the store is dropped.
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

#[async_trait]
impl LockStore for MemoryStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn limits(&self) -> Limits {
        self.inner.config.limits
    }

    /// `None`: an answer in the same process cannot be lost.
    fn reclaim_policy(&self) -> Option<ReclaimPolicy> {
        None
    }

    fn waits(&self) -> &WaitQueue {
        &self.inner.waiters
    }

    async fn try_acquire(&self, attempt: Attempt<'_>) -> LockResult<Attempted> {
        self.inner.try_acquire(attempt)
    }

    async fn leave_queue(&self, ticket: Ticket, objects: &[ObjectId]) -> LockResult<()> {
        let inner = &*self.inner;
        let mut locked = inner.lock(objects.iter());
        for object in objects {
            if let MapEntry::Occupied(mut slot) = locked.shard(object).entry(object.clone()) {
                slot.get_mut().leave(ticket);
                if slot.get().is_empty() {
                    slot.remove();
                }
            }
        }
        drop(locked);
        for object in objects {
            inner.waiters.wake(object);
        }
        Ok(())
    }

    async fn abandon(&self, claims: &[Claim]) -> LockResult<Undo> {
        let inner = &*self.inner;
        let mut locked = inner.lock(claims.iter().map(|c| &c.object));
        let mut undo = Undo::Absent;
        let mut freed = Vec::new();
        for claim in claims {
            let MapEntry::Occupied(mut occupied) =
                locked.shard(&claim.object).entry(claim.object.clone())
            else {
                continue;
            };
            let slot = occupied.get_mut();
            if let Some(index) = slot
                .holders
                .iter()
                .position(|h| h.digest.ct_eq(&claim.digest))
            {
                if slot.holders[index].claimed {
                    undo = Undo::Claimed;
                    continue;
                }
                let holder = slot.holders.swap_remove(index);
                inner.timers().cancel(holder.timer);
                inner.ended(&claim.object, slot.mode, &holder, false);
                undo = Undo::TookBack;
                freed.push(claim.object.clone());
            }
            if slot.is_empty() {
                occupied.remove();
            }
        }
        drop(locked);
        for object in &freed {
            inner.waiters.wake(object);
        }
        Ok(undo)
    }

    async fn release(&self, holders: &[HolderRef]) -> LockResult<Vec<Verdict<()>>> {
        let inner = &*self.inner;
        Ok(inner.with_holders(holders, |object, slot, index, _| {
            let holder = slot.holders.swap_remove(index);
            inner.timers().cancel(holder.timer);
            inner.ended(object, slot.mode, &holder, false);
            ((), true)
        }))
    }

    async fn renew(
        &self,
        holders: &[HolderRef],
        ttl: Duration,
    ) -> LockResult<Vec<Verdict<HolderState>>> {
        let inner = &*self.inner;
        let mut wake_sweeper = false;
        let verdicts = inner.with_holders(holders, |_, slot, index, now| {
            let expires = now.saturating_add(nanos(ttl));
            let holder = &mut slot.holders[index];
            if expires < holder.expires {
                // Shortened: the sweeper must look earlier. (A longer lease keeps its old
                // deadline; the sweeper re-arms it when that passes.)
                wake_sweeper |= inner.timers().reschedule(holder.timer, expires);
            }
            holder.expires = expires;
            (slot.state(index, now), false)
        });
        inner.wake_sweeper(wake_sweeper);
        Ok(verdicts)
    }

    async fn validate(&self, holder: &HolderRef) -> LockResult<Verdict<HolderState>> {
        let inner = &*self.inner;
        let mut verdicts = inner
            .with_holders(std::slice::from_ref(holder), |_, slot, index, now| {
                (slot.state(index, now), false)
            });
        verdicts
            .pop()
            .ok_or_else(|| LockError::Internal("no validate verdict".into()))
    }

    async fn downgrade(&self, holder: &HolderRef) -> LockResult<Verdict<HolderState>> {
        let inner = &*self.inner;
        let mut verdicts =
            inner.with_holders(std::slice::from_ref(holder), |_, slot, index, now| {
                let changed = slot.mode == LockMode::Exclusive;
                slot.mode = LockMode::Shared;
                (slot.state(index, now), changed)
            });
        verdicts
            .pop()
            .ok_or_else(|| LockError::Internal("no downgrade verdict".into()))
    }

    async fn inspect(&self, object: &ObjectId) -> LockResult<Option<LockInfo>> {
        let inner = &*self.inner;
        let now = inner.clock.now();
        let wall = SystemTime::now();
        let shard = inner.shards[inner.shard_of(object)].lock();
        Ok(shard
            .get(object)
            .and_then(|slot| inner.describe(object, slot, now, wall)))
    }

    /// Walks every held lock once per page (`O(held)`), keeping only the page's worth of matches
    /// sorted; fine for operators' listings, not meant for a hot path.
    async fn list(&self, query: &ListQuery) -> LockResult<LockPage> {
        let inner = &*self.inner;
        let now = inner.clock.now();
        let wall = SystemTime::now();
        let after = query.after.as_deref();
        let mut matches: Vec<LockInfo> = Vec::new();
        for shard in inner.shards.iter() {
            let shard = shard.lock();
            matches.extend(
                shard
                    .iter()
                    .filter(|(object, _)| {
                        let name = object.as_str();
                        name.starts_with(query.prefix.as_str())
                            && after.is_none_or(|after| name > after)
                    })
                    .filter_map(|(object, slot)| inner.describe(object, slot, now, wall)),
            );
        }
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

    async fn health(&self) -> LockResult<()> {
        Ok(())
    }

    /// Reports every release and expiry to `sink`, exactly once per lease: expiries as the
    /// sweeper (or a request that finds a lease run out) reclaims them.
    fn report_lease_ends(&self, sink: LeaseEndSink) -> bool {
        self.inner.lease_ends.set(sink).is_ok()
    }
}
