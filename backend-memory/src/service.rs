//! [`MemoryStore`]: the holders, the queues, the fences and the sweeper, in this process.
//!
//! ## How a decision sees the tree, atomically
//!
//! Slots (one per object with holders, lock-delays or waiters) live in [`SHARDS`] hash-map
//! shards, each behind a mutex. A claim conflicts with what is on its object, with what covers
//! the subtree of one of its ancestors, and (a subtree claim) with everything under its object
//! (see [`lockcore::path`]). Three structures let a decision find those without looking at
//! anything else:
//!
//! * **Subtree roots** (`Inner::roots`): the objects whose slot holds anything of subtree
//!   scope (holder, queue entry or lock-delay), a superset kept exact enough: an object enters
//!   it only under *every* shard lock, and leaves it under its own shard's lock once its slot
//!   has no subtree item left.
//! * **The ordered index** (`Inner::ordered`): every object that has a slot, in id order, for
//!   `list?prefix=` pages and for the range of ids under a subtree root
//!   ([`lockcore::path::subtree_range`]). Slots enter and leave it under their shard's lock.
//! * **Shard locks**, taken in increasing index order:
//!   - an object-only request locks the shards of its objects, plus those of the subtree roots
//!     among their ancestors (looked up in the root set, which cannot gain an entry while any
//!     shard is held). The common case, no subtree anywhere near, locks one shard and reads one
//!     atomic counter, as before subtrees existed;
//!   - a request with a subtree claim locks every shard, so nothing can be granted, queued or
//!     indexed anywhere while it looks at its ancestors and at the index range under its roots.
//!
//!   So a subtree claim and any claim it could conflict with always share a shard lock: an
//!   object claim under a subtree root holds the root's shard whenever the root has subtree
//!   items, and a subtree claim holds every shard.
//!
//! Operations that only remove or shorten (release, expiry, leave_queue, abandon, downgrade)
//! and renew lock only their objects' shards: a decision that depends on those slots holds the
//! same shard locks.

use std::collections::btree_set::BTreeSet;
use std::collections::hash_map::{Entry as MapEntry, HashMap};
use std::collections::HashSet;
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, SystemTime};

use lockcore::path;
use lockcore::reclaim::ReclaimPolicy;
use lockcore::store::{
    Attempt, Attempted, Blocker, Claim, Granted, HolderRef, HolderState, LockStore, StoreFeatures,
    Ticket, Verdict,
};
use lockcore::{
    async_trait, wall_clock_micros, Fence, LeaseEnd, LeaseEndSink, Limits, ListQuery, LockError,
    LockInfo, LockMode, LockPage, LockResult, LockScope, Locks, ObjectId, Undo, WaitQueue,
};
use parking_lot::{Mutex, MutexGuard, RwLock};
use smallvec::SmallVec;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::MemoryConfig;
use crate::slot::{Delay, Holder, Key, Place, QueueEntry, Scan, Slot, Wake};
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

/// Shards of the object table. A request locks the shards it needs in increasing order, so
/// multi-object requests are atomic and never deadlock.
const SHARDS: usize = 64;

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

type Shard = HashMap<Key, Slot>;

/// Objects to wake once the shard locks are released, and how.
type Wakes = SmallVec<[(ObjectId, Wake); 2]>;

fn note(wakes: &mut Wakes, object: &ObjectId, wake: Wake) {
    if wake == Wake::No {
        return;
    }
    match wakes.iter_mut().find(|(o, _)| o == object) {
        Some((_, already)) => *already = (*already).max(wake),
        None => wakes.push((object.clone(), wake)),
    }
}

struct Inner {
    config: MemoryConfig,
    clock: Clock,
    hasher: RandomState,
    shards: Box<[Mutex<Shard>]>,
    timers: Mutex<Timers>,
    /// Every object that has a slot, in id order (see the module docs). Taken after shard
    /// locks, never before.
    ordered: Mutex<BTreeSet<Key>>,
    /// Objects whose slot may hold something of subtree scope (see the module docs). Taken
    /// after shard locks; never held while waiting for another lock.
    roots: RwLock<HashSet<Key>>,
    /// `roots.len()`, readable without touching the lock: zero in the common case.
    roots_len: AtomicUsize,
    /// The highest fence issued (or the configured floor): one counter for all objects.
    last_fence: AtomicU64,
    /// The last ticket drawn: one counter for all queues.
    last_ticket: AtomicU64,
    waiters: WaitQueue,
    sweeper_wake: Arc<Notify>,
    /// Where ended leases are reported, once someone asked ([`LockStore::report_lease_ends`]).
    lease_ends: OnceLock<LeaseEndSink>,
}

/// The shards a request locked, in increasing order, and a way to reach an object's slot.
struct Locked<'a> {
    inner: &'a Inner,
    guards: SmallVec<[(usize, MutexGuard<'a, Shard>); 4]>,
}

impl Locked<'_> {
    fn has(&self, index: usize) -> bool {
        self.guards
            .binary_search_by_key(&index, |(i, _)| *i)
            .is_ok()
    }

    fn every_shard(&self) -> bool {
        self.guards.len() == SHARDS
    }

    fn at(&self, object: &str) -> usize {
        let index = self.inner.shard_of(object);
        self.guards
            .binary_search_by_key(&index, |(i, _)| *i)
            .unwrap_or_else(|_| unreachable!("every object's shard is locked"))
    }

    fn shard(&mut self, object: &str) -> &mut Shard {
        let at = self.at(object);
        &mut self.guards[at].1
    }

    fn slot(&self, object: &str) -> Option<(&Key, &Slot)> {
        self.guards[self.at(object)].1.get_key_value(object)
    }

    fn slot_mut(&mut self, object: &str) -> Option<&mut Slot> {
        self.shard(object).get_mut(object)
    }
}

/// An in-process lock store: sharded tables with exact expiry and a deadline-heap sweeper,
/// subtree locks and lock-delays (see the [module docs](self) for how a decision sees the
/// tree).
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
            ordered: Mutex::new(BTreeSet::new()),
            roots: RwLock::new(HashSet::new()),
            roots_len: AtomicUsize::new(0),
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

    /// Objects currently in the table: held, waited for, or in a lock-delay (for metrics).
    /// Leases that expired in the last moments but that the sweeper has not reclaimed yet are
    /// counted; they are free to acquire all the same.
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

    /// Checks that the ordered index, the subtree roots and the timers agree with the slots
    /// (tests only): the index holds exactly the objects with a slot, every object with a
    /// subtree item is a root, and every holder and delay owns one live timer.
    #[cfg(test)]
    pub(crate) fn assert_index_consistent(&self) {
        let inner = &*self.inner;
        let locked = inner.lock_all();
        let mut objects = BTreeSet::new();
        let mut timed = 0;
        for (_, shard) in &locked.guards {
            for (key, slot) in shard.iter() {
                assert!(!slot.is_empty(), "{:?}: an empty slot is removed", key.0);
                objects.insert(key.clone());
                if slot.has_subtree_items() {
                    assert!(
                        inner.roots.read().contains(key),
                        "{:?} has subtree items but is no root",
                        key.0
                    );
                }
                timed += slot.holders.len() + slot.delays().len();
            }
        }
        assert_eq!(
            *inner.ordered.lock(),
            objects,
            "the index holds exactly the objects with a slot"
        );
        assert_eq!(
            inner.roots.read().len(),
            inner.roots_len.load(Ordering::Acquire),
            "the root count matches the set"
        );
        let timers = inner.timers();
        timers.assert_consistent();
        assert_eq!(timers.live(), timed, "one timer per holder and delay");
    }

    /// How many objects are subtree roots right now (tests only).
    #[cfg(test)]
    pub(crate) fn roots(&self) -> usize {
        self.inner.roots_len.load(Ordering::Acquire)
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

    fn shard_of(&self, object: &str) -> usize {
        (self.hasher.hash_one(object) as usize) % SHARDS
    }

    /// Locks the shards `indices` in increasing order.
    fn lock_indices(&self, indices: impl Iterator<Item = usize>) -> Locked<'_> {
        let mut indices: SmallVec<[usize; 4]> = indices.collect();
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

    /// Locks the shards of `objects`: enough for operations that only remove, shorten or
    /// renew what is there.
    fn lock<'a>(&'a self, objects: impl Iterator<Item = &'a ObjectId>) -> Locked<'a> {
        self.lock_indices(objects.map(|object| self.shard_of(object.as_str())))
    }

    /// Locks every shard: nothing can be granted, queued or indexed anywhere meanwhile.
    fn lock_all(&self) -> Locked<'_> {
        self.lock_indices(0..SHARDS)
    }

    /// Locks what deciding object-scoped `claims` needs: their shards and those of the subtree
    /// roots among their ancestors. Returns the locks and those roots, each with the index of
    /// the claim it is above.
    fn lock_claims(&self, claims: &[Claim]) -> (Locked<'_>, SmallVec<[(usize, ObjectId); 2]>) {
        let mut extra: SmallVec<[usize; 4]> = SmallVec::new();
        loop {
            let locked = self.lock_indices(
                claims
                    .iter()
                    .map(|claim| self.shard_of(claim.object.as_str()))
                    .chain(extra.iter().copied()),
            );
            let mut above = SmallVec::new();
            // Roots are added only under every shard lock, so with one shard held the count
            // cannot grow, and zero means no subtree item anywhere.
            if self.roots_len.load(Ordering::Acquire) == 0 {
                return (locked, above);
            }
            let mut missing = false;
            {
                let roots = self.roots.read();
                for (at, claim) in claims.iter().enumerate() {
                    for ancestor in path::ancestors(claim.object.as_str()) {
                        if let Some(root) = roots.get(ancestor) {
                            let index = self.shard_of(ancestor);
                            if !locked.has(index) {
                                extra.push(index);
                                missing = true;
                            }
                            above.push((at, root.0.clone()));
                        }
                    }
                }
            }
            if !missing {
                return (locked, above);
            }
            // Lock again, in order, with the roots' shards; the roots may have changed in
            // between, so look again.
        }
    }

    /// Records that `object` (whose shard is locked) has a slot now.
    fn index(&self, object: &ObjectId) {
        self.ordered.lock().insert(Key(object.clone()));
    }

    /// Records that `object` has subtree items. The caller holds every shard lock.
    fn root(&self, locked: &Locked<'_>, object: &ObjectId) {
        debug_assert!(
            locked.every_shard(),
            "roots are added under every shard lock"
        );
        let mut roots = self.roots.write();
        if roots.insert(Key(object.clone())) {
            self.roots_len.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// After a change to the slot of `object` (whose shard is locked) that removed things
    /// `wake` says: removes the slot if it is empty (and its index entry), and the object from
    /// the roots if it has no subtree item left.
    fn settle(&self, shard: &mut Shard, object: &str, wake: Wake) {
        let Some(slot) = shard.get(object) else {
            return;
        };
        let unroot = wake == Wake::Subtree && !slot.has_subtree_items();
        if slot.is_empty() {
            shard.remove(object);
            self.ordered.lock().remove(object);
        }
        if unroot {
            let mut roots = self.roots.write();
            if roots.remove(object) {
                self.roots_len.fetch_sub(1, Ordering::AcqRel);
            }
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

    fn wake(&self, wakes: &[(ObjectId, Wake)]) {
        for (object, wake) in wakes {
            match wake {
                Wake::No => {}
                Wake::Object => self.waiters.wake(object),
                Wake::Subtree => self.waiters.wake_subtree(object),
            }
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

    /// Ends the expired holder at `index`: reports it, and either keeps its lock-delay (as a
    /// [`Delay`] that inherits its timer, now due when the delay ends) or frees its timer.
    fn expire_holder(&self, object: &ObjectId, slot: &mut Slot, index: usize, now: u64) -> Wake {
        let holder = slot.holders.swap_remove(index);
        self.ended(object, slot.mode, &holder, true);
        let until = holder.delay_ends();
        if until > now {
            let wake_sweeper = self.timers().reschedule(holder.timer, until);
            self.wake_sweeper(wake_sweeper);
            slot.push_delay(Delay {
                owner: holder.owner,
                fence: holder.fence,
                mode: slot.mode,
                scope: holder.scope,
                expired: holder.expires,
                until,
                timer: holder.timer,
            });
            // It still blocks all it blocked: nobody to wake yet.
            Wake::No
        } else {
            self.timers().cancel(holder.timer);
            Wake::of(holder.scope)
        }
    }

    /// Removes from `slot` what ran out: expired holders (kept as lock-delays if they have
    /// one), lock-delays that ended, lapsed queue entries. Returns what that wakes.
    fn tidy(&self, object: &ObjectId, slot: &mut Slot, now: u64) -> Wake {
        let mut wake = Wake::No;
        let mut index = slot.holders.len();
        while index > 0 {
            index -= 1;
            if !slot.holders[index].is_live(now) {
                wake = wake.max(self.expire_holder(object, slot, index, now));
            }
        }
        if slot.delays().iter().any(|delay| delay.until <= now) {
            let mut timers = self.timers();
            wake = wake.max(slot.end_delays(now, |delay| timers.cancel(delay.timer)));
        }
        wake.max(slot.drop_lapsed_entries(now))
    }

    fn try_acquire(&self, attempt: Attempt<'_>) -> LockResult<Attempted> {
        let claims = attempt.claims;
        let ticket = attempt.queueing.and_then(|q| q.ticket);
        let draws_ticket = attempt.queueing.is_some_and(|q| q.ticket.is_none());
        let subtree = claims.iter().any(|c| c.scope == LockScope::Subtree);
        let (mut locked, roots_above) = if subtree {
            (self.lock_all(), SmallVec::new())
        } else {
            self.lock_claims(claims)
        };
        let now = self.clock.now();
        let mut wakes = Wakes::new();
        for claim in claims {
            if let Some(slot) = locked.slot_mut(claim.object.as_str()) {
                let wake = self.tidy(&claim.object, slot, now);
                note(&mut wakes, &claim.object, wake);
            }
        }

        let mut conflicts = Vec::new();
        let mut blockers: Vec<Blocker> = Vec::new();
        let mut replays: SmallVec<[bool; 8]> = SmallVec::from_elem(false, claims.len());
        for (at, (claim, replay)) in claims.iter().zip(&mut replays).enumerate() {
            let own = locked.slot(claim.object.as_str()).map(|(_, slot)| slot);
            if own.is_some_and(|slot| slot.held_by(&claim.digest, now).is_some()) {
                *replay = true;
                continue;
            }
            let mut scan = Scan::new(claim, ticket, now);
            if let Some(slot) = own {
                scan.slot(
                    &claim.object,
                    slot,
                    Place::Covered,
                    draws_ticket.then_some(&mut blockers),
                );
            }
            if subtree {
                for ancestor in path::ancestors(claim.object.as_str()) {
                    if let Some((key, slot)) = locked.slot(ancestor) {
                        scan.slot(
                            &key.0,
                            slot,
                            Place::Ancestor,
                            draws_ticket.then_some(&mut blockers),
                        );
                    }
                }
            } else {
                for (_, root) in roots_above.iter().filter(|(above, _)| *above == at) {
                    if let Some((_, slot)) = locked.slot(root.as_str()) {
                        scan.slot(
                            root,
                            slot,
                            Place::Ancestor,
                            draws_ticket.then_some(&mut blockers),
                        );
                    }
                }
            }
            if claim.scope == LockScope::Subtree {
                self.scan_under(&locked, claim, &mut scan, draws_ticket, &mut blockers);
            }
            conflicts.extend(scan.conflict());
        }

        let outcome = if conflicts.is_empty() {
            let mut granted = Vec::with_capacity(claims.len());
            let mut wake_sweeper = false;
            let expires = now.saturating_add(nanos(attempt.ttl));
            let lock_delay = nanos(attempt.lock_delay);
            for (claim, replay) in claims.iter().zip(replays) {
                if replay {
                    let slot = locked
                        .slot_mut(claim.object.as_str())
                        .ok_or_else(|| LockError::Internal("replayed slot vanished".into()))?;
                    if let Some(t) = ticket {
                        slot.leave(t);
                    }
                    let index = slot
                        .held_by(&claim.digest, now)
                        .ok_or_else(|| LockError::Internal("replayed holder vanished".into()))?;
                    let holder = &mut slot.holders[index];
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
                    lock_delay,
                    acquired_micros: micros,
                    timer,
                    scope: claim.scope,
                    claimed: false,
                };
                let slot = self.slot_for(&mut locked, &claim.object, claim.mode);
                if let Some(t) = ticket {
                    slot.leave(t);
                }
                slot.mode = claim.mode;
                // Most objects have one holder: a first push would reserve room for four.
                slot.holders.reserve_exact(1);
                slot.holders.push(holder);
                if claim.scope == LockScope::Subtree {
                    self.root(&locked, &claim.object);
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
                for claim in claims {
                    let slot = self.slot_for(&mut locked, &claim.object, claim.mode);
                    let lapsed = slot.drop_lapsed_entries(now);
                    slot.enqueue(QueueEntry {
                        ticket,
                        mode: claim.mode,
                        scope: claim.scope,
                        owner: attempt.owner.clone(),
                        expires,
                    });
                    note(&mut wakes, &claim.object, lapsed);
                    if claim.scope == LockScope::Subtree {
                        self.root(&locked, &claim.object);
                    }
                }
                ticket
            });
            if ticket.is_none() {
                blockers.clear();
            }
            Attempted::Refused {
                conflicts,
                ticket,
                blockers,
            }
        };
        for claim in claims {
            let wake = wakes
                .iter()
                .find(|(object, _)| *object == claim.object)
                .map_or(Wake::No, |(_, wake)| *wake);
            self.settle(
                locked.shard(claim.object.as_str()),
                claim.object.as_str(),
                wake,
            );
        }
        drop(locked);
        self.wake(&wakes);
        Ok(outcome)
    }

    /// The slot of `object` (whose shard is locked), created (and indexed) if it has none.
    fn slot_for<'l>(
        &self,
        locked: &'l mut Locked<'_>,
        object: &ObjectId,
        mode: LockMode,
    ) -> &'l mut Slot {
        match locked.shard(object.as_str()).entry(Key(object.clone())) {
            MapEntry::Occupied(slot) => slot.into_mut(),
            MapEntry::Vacant(free) => {
                self.index(object);
                free.insert(Slot::new(mode))
            }
        }
    }

    /// Scans what is held, delayed or queued under a subtree claim's object, through the
    /// ordered index (every shard is locked, so the range cannot change meanwhile). Stops early
    /// once the claim is blocked unless blockers are wanted.
    fn scan_under(
        &self,
        locked: &Locked<'_>,
        claim: &Claim,
        scan: &mut Scan<'_>,
        draws_ticket: bool,
        blockers: &mut Vec<Blocker>,
    ) {
        debug_assert!(locked.every_shard());
        let (low, high) = path::subtree_range(claim.object.as_str());
        let ordered = self.ordered.lock();
        let range = ordered.range::<str, _>((
            Bound::Included(low.as_str()),
            Bound::Excluded(high.as_str()),
        ));
        for key in range {
            if scan.blocked() && (!draws_ticket || blockers.len() >= lockcore::store::MAX_BLOCKERS)
            {
                break;
            }
            if let Some((_, slot)) = locked.slot(key.0.as_str()) {
                scan.slot(
                    &key.0,
                    slot,
                    Place::Covered,
                    draws_ticket.then_some(&mut *blockers),
                );
            }
        }
    }

    /// Runs `operation` on the live holder each reference names, all under the locks of their
    /// shards; removes slots left empty. Returns the verdicts; wakes what was freed.
    fn with_holders<T>(
        &self,
        holders: &[HolderRef],
        mut operation: impl FnMut(&ObjectId, &mut Slot, usize, u64) -> (T, Wake),
    ) -> Vec<Verdict<T>> {
        let mut locked = self.lock(holders.iter().map(|h| &h.object));
        let now = self.clock.now();
        let mut verdicts = Vec::with_capacity(holders.len());
        let mut wakes = Wakes::new();
        for holder in holders {
            let object = holder.object.as_str();
            let Some(slot) = locked.slot_mut(object) else {
                verdicts.push(Verdict::NotHeld);
                continue;
            };
            let mut wake = self.tidy(&holder.object, slot, now);
            let verdict = match slot.find(holder, now) {
                (Some(index), _) => {
                    let (value, freed) = operation(&holder.object, slot, index, now);
                    wake = wake.max(freed);
                    Verdict::Done(value)
                }
                (None, true) => Verdict::Mismatch,
                (None, false) => Verdict::NotHeld,
            };
            self.settle(locked.shard(object), object, wake);
            note(&mut wakes, &holder.object, wake);
            verdicts.push(verdict);
        }
        drop(locked);
        self.wake(&wakes);
        verdicts
    }

    /// Reclaims due leases and ended lock-delays, at most one batch. Returns when to look
    /// again, or `None` if a full batch was handled and more may be due.
    fn sweep_once(&self, due: &mut Vec<(TimerId, ObjectId)>) -> Option<Instant> {
        let now = self.clock.now();
        self.timers().pop_due(now, SWEEP_BATCH, due);
        let full = due.len() == SWEEP_BATCH;
        for (timer, object) in due.drain(..) {
            let mut shard = self.shards[self.shard_of(object.as_str())].lock();
            let Some(slot) = shard.get_mut(object.as_str()) else {
                // The lock this timer belonged to is gone; its remover freed the timer.
                continue;
            };
            let wake = if let Some(index) = slot.holders.iter().position(|h| h.timer == timer) {
                let holder = &slot.holders[index];
                if holder.is_live(now) {
                    // Renewed since the timer was set: wait for the new expiry.
                    self.timers().reschedule(timer, holder.expires);
                    continue;
                }
                self.expire_holder(&object, slot, index, now)
            } else if let Some(delay) = slot.delays().iter().find(|d| d.timer == timer) {
                if delay.until > now {
                    self.timers().reschedule(timer, delay.until);
                    continue;
                }
                let mut timers = self.timers();
                slot.end_delays(now, |delay| timers.cancel(delay.timer))
            } else {
                continue;
            };
            self.settle(&mut shard, object.as_str(), wake);
            drop(shard);
            self.wake(&[(object, wake)]);
        }
        if full {
            return None;
        }
        let until = self
            .timers()
            .sweeper_sleeps(now.saturating_add(SWEEPER_NAP_NANOS));
        Some(self.clock.instant(until))
    }

    /// One page of `query`: objects with live holders under the prefix, after the cursor, in
    /// id order, found through the ordered index (so the cost is that of the page, whatever is
    /// held elsewhere).
    fn list(&self, query: &ListQuery) -> LockPage {
        let prefix = query.prefix.as_str();
        let wanted = query.limit.saturating_add(1);
        let mut cursor: Option<ObjectId> = None;
        let mut locks: Vec<LockInfo> = Vec::with_capacity(wanted.min(64));
        loop {
            let lower = match (&cursor, query.after.as_deref()) {
                (Some(last), _) => Bound::Excluded(last.as_str()),
                (None, Some(after)) if after >= prefix => Bound::Excluded(after),
                (None, _) => Bound::Included(prefix),
            };
            let batch: Vec<ObjectId> = {
                let ordered = self.ordered.lock();
                ordered
                    .range::<str, _>((lower, Bound::Unbounded))
                    .take_while(|key| key.0.as_str().starts_with(prefix))
                    .take(wanted - locks.len())
                    .map(|key| key.0.clone())
                    .collect()
            };
            let exhausted = batch.len() < wanted - locks.len();
            let now = self.clock.now();
            let wall = SystemTime::now();
            for object in &batch {
                let shard = self.shards[self.shard_of(object.as_str())].lock();
                if let Some(info) = shard
                    .get(object.as_str())
                    .and_then(|slot| slot.describe(object, now, wall))
                {
                    locks.push(info);
                }
            }
            cursor = batch.last().cloned().or(cursor);
            if exhausted || locks.len() >= wanted {
                break;
            }
        }
        let next = if locks.len() > query.limit {
            locks.truncate(query.limit);
            locks.last().map(|info| info.object.to_string())
        } else {
            None
        };
        LockPage { locks, next }
    }
}

/// The sweeper task: reclaims expired leases and ended lock-delays as their deadlines pass,
/// with work proportional to what expires. It holds the store only weakly and ends once the
/// store is dropped.
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

    /// Subtree locks and lock-delays, both.
    fn features(&self) -> StoreFeatures {
        StoreFeatures::ALL
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
        let mut wakes = Wakes::new();
        for object in objects {
            let name = object.as_str();
            if let Some(slot) = locked.slot_mut(name) {
                // Wake even if the entry had lapsed: cheap, and never wrong.
                let wake = slot.leave(ticket).max(Wake::Object);
                inner.settle(locked.shard(name), name, wake);
                note(&mut wakes, object, wake);
            }
        }
        drop(locked);
        inner.wake(&wakes);
        Ok(())
    }

    async fn abandon(&self, claims: &[Claim]) -> LockResult<Undo> {
        let inner = &*self.inner;
        let mut locked = inner.lock(claims.iter().map(|c| &c.object));
        let mut undo = Undo::Absent;
        let mut wakes = Wakes::new();
        for claim in claims {
            let name = claim.object.as_str();
            let Some(slot) = locked.slot_mut(name) else {
                continue;
            };
            let Some(index) = slot
                .holders
                .iter()
                .position(|h| h.digest.ct_eq(&claim.digest))
            else {
                continue;
            };
            if slot.holders[index].claimed {
                undo = Undo::Claimed;
                continue;
            }
            let holder = slot.holders.swap_remove(index);
            inner.timers().cancel(holder.timer);
            inner.ended(&claim.object, slot.mode, &holder, false);
            undo = Undo::TookBack;
            let wake = Wake::of(holder.scope);
            inner.settle(locked.shard(name), name, wake);
            note(&mut wakes, &claim.object, wake);
        }
        drop(locked);
        inner.wake(&wakes);
        Ok(undo)
    }

    /// Removes each holder at once: a release leaves no lock-delay.
    async fn release(&self, holders: &[HolderRef]) -> LockResult<Vec<Verdict<()>>> {
        let inner = &*self.inner;
        Ok(inner.with_holders(holders, |object, slot, index, _| {
            let holder = slot.holders.swap_remove(index);
            inner.timers().cancel(holder.timer);
            inner.ended(object, slot.mode, &holder, false);
            ((), Wake::of(holder.scope))
        }))
    }

    /// Extends each holder's lease, keeping the lock-delay it was granted with.
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
            (slot.state(index, now), Wake::No)
        });
        inner.wake_sweeper(wake_sweeper);
        Ok(verdicts)
    }

    async fn validate(&self, holder: &HolderRef) -> LockResult<Verdict<HolderState>> {
        let inner = &*self.inner;
        let mut verdicts = inner
            .with_holders(std::slice::from_ref(holder), |_, slot, index, now| {
                (slot.state(index, now), Wake::No)
            });
        verdicts
            .pop()
            .ok_or_else(|| LockError::Internal("no validate verdict".into()))
    }

    async fn downgrade(&self, holder: &HolderRef) -> LockResult<Verdict<HolderState>> {
        let inner = &*self.inner;
        let mut verdicts =
            inner.with_holders(std::slice::from_ref(holder), |_, slot, index, now| {
                let wake = if slot.mode == LockMode::Exclusive {
                    Wake::of(slot.holders[index].scope)
                } else {
                    Wake::No
                };
                slot.mode = LockMode::Shared;
                (slot.state(index, now), wake)
            });
        verdicts
            .pop()
            .ok_or_else(|| LockError::Internal("no downgrade verdict".into()))
    }

    /// The holders of `object`; without holders, the lock-delay in force on it; each with the
    /// count of live queue entries on the object. `None` for a free object, even one that
    /// requests wait for.
    async fn inspect(&self, object: &ObjectId) -> LockResult<Option<LockInfo>> {
        let inner = &*self.inner;
        let now = inner.clock.now();
        let wall = SystemTime::now();
        let shard = inner.shards[inner.shard_of(object.as_str())].lock();
        Ok(shard
            .get(object.as_str())
            .and_then(|slot| slot.inspect(object, now, wall)))
    }

    /// One page through the ordered index: its cost depends on the page, not on what is held
    /// elsewhere.
    async fn list(&self, query: &ListQuery) -> LockResult<LockPage> {
        Ok(self.inner.list(query))
    }

    async fn health(&self) -> LockResult<()> {
        Ok(())
    }

    /// Reports every release and expiry to `sink`, exactly once per lease: expiries as the
    /// sweeper (or a request that finds a lease run out) reclaims them. A lease that expires
    /// into a lock-delay is reported when it expires, not when the delay ends.
    fn report_lease_ends(&self, sink: LeaseEndSink) -> bool {
        self.inner.lease_ends.set(sink).is_ok()
    }
}
