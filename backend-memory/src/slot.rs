//! One object's state ([`Slot`]: holders, lock-delays, queue) and the conflict scan that reads
//! slots across the tree ([`Scan`]).
//!
//! Everything here is plain data under the caller's shard locks; the store decides which slots
//! a claim must see (see `service.rs`).

use std::borrow::Borrow;
use std::hash::{Hash, Hasher};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lockcore::store::{Blocker, Claim, HolderRef, HolderState, Ticket, MAX_BLOCKERS};
use lockcore::{
    Conflict, ConflictCause, Fence, HolderInfo, LockDelayInfo, LockMode, LockScope, ObjectId,
    OwnerId, TokenDigest,
};

use crate::timers::TimerId;

/// An object id as a map key that can also be looked up by `&str` (an ancestor's id is a slice
/// of its descendant's, so looking ancestors up needs no allocation).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Key(pub(crate) ObjectId);

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // The same hash as the `str`, as `Borrow<str>` requires.
        self.0.as_str().hash(state);
    }
}

impl Borrow<str> for Key {
    fn borrow(&self) -> &str {
        self.0.as_str()
    }
}

/// Which waiters a change must wake: none, those of the object (and subtree waiters above it),
/// or also those under it (a subtree holder, entry or delay went away).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Wake {
    /// Nothing that blocked anyone went away.
    No,
    /// Something covering the object alone went away.
    Object,
    /// Something covering the object's subtree went away.
    Subtree,
}

impl Wake {
    /// What the removal of something in `scope` wakes.
    pub(crate) fn of(scope: LockScope) -> Self {
        match scope {
            LockScope::Object => Wake::Object,
            LockScope::Subtree => Wake::Subtree,
        }
    }
}

/// One grant on an object.
#[derive(Debug)]
pub(crate) struct Holder {
    pub(crate) owner: OwnerId,
    pub(crate) digest: TokenDigest,
    pub(crate) fence: Fence,
    /// Monotonic nanoseconds since the store's clock base: the only clock expiry uses.
    pub(crate) expires: u64,
    /// How long the holder keeps blocking after it expires, in nanoseconds (0: not at all).
    pub(crate) lock_delay: u64,
    /// Wall-clock microseconds at the grant, for display only.
    pub(crate) acquired_micros: u64,
    /// The sweeper's timer for this holder; a delay record inherits it.
    pub(crate) timer: TimerId,
    pub(crate) scope: LockScope,
    /// A retry with the request id answered with this grant (see [`lockcore::reclaim`]).
    pub(crate) claimed: bool,
}

impl Holder {
    pub(crate) fn is_live(&self, now: u64) -> bool {
        self.expires > now
    }

    /// When an expired holder stops blocking: its expiry plus its lock-delay.
    pub(crate) fn delay_ends(&self) -> u64 {
        self.expires.saturating_add(self.lock_delay)
    }

    /// Whether this is the grant named by `holder`: the digest compared in constant time, and
    /// the fence.
    fn is(&self, holder: &HolderRef) -> bool {
        holder.digest.ct_eq(&self.digest) & (holder.fence == self.fence)
    }

    pub(crate) fn remaining(&self, now: u64) -> Duration {
        Duration::from_nanos(self.expires.saturating_sub(now))
    }

    fn info(&self, now: u64, wall_now: SystemTime) -> HolderInfo {
        let ttl = self.remaining(now);
        HolderInfo {
            owner: self.owner.clone(),
            scope: self.scope,
            fence: self.fence,
            acquired_at: UNIX_EPOCH + Duration::from_micros(self.acquired_micros),
            expires_at: wall_now + ttl,
            ttl,
        }
    }
}

/// What an expired holder granted with a lock-delay leaves behind until the delay ends: it
/// blocks what the holder would have conflicted with, but holds nothing.
#[derive(Debug)]
pub(crate) struct Delay {
    pub(crate) owner: OwnerId,
    pub(crate) fence: Fence,
    pub(crate) mode: LockMode,
    pub(crate) scope: LockScope,
    /// When the holder expired (monotonic nanoseconds).
    pub(crate) expired: u64,
    /// When the delay ends (monotonic nanoseconds).
    pub(crate) until: u64,
    /// The expired holder's timer, now due at `until`.
    pub(crate) timer: TimerId,
}

/// A waiting request's place in one object's queue.
#[derive(Debug, Clone)]
pub(crate) struct QueueEntry {
    pub(crate) ticket: Ticket,
    pub(crate) mode: LockMode,
    pub(crate) scope: LockScope,
    pub(crate) owner: OwnerId,
    pub(crate) expires: u64,
}

/// What most objects never have: waiters and lock-delays (boxed, so that a plain held object
/// pays one pointer for them).
#[derive(Debug, Default)]
pub(crate) struct Rare {
    /// Ordered by ticket.
    pub(crate) queue: Vec<QueueEntry>,
    pub(crate) delays: Vec<Delay>,
}

/// Everything about one object: its holders (all of `mode`), the lock-delays of holders that
/// expired, and its queue.
#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) mode: LockMode,
    pub(crate) holders: Vec<Holder>,
    rare: Option<Box<Rare>>,
}

/// A lock-delay in force, whether its holder was already turned into a [`Delay`] or has just
/// expired and not been looked at since.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DelayView<'a> {
    owner: &'a OwnerId,
    fence: Fence,
    mode: LockMode,
    scope: LockScope,
    expired: u64,
    until: u64,
}

impl DelayView<'_> {
    /// The delay as inspect shows it.
    fn info(&self, now: u64, wall_now: SystemTime) -> LockDelayInfo {
        let remaining = Duration::from_nanos(self.until.saturating_sub(now));
        LockDelayInfo {
            owner: self.owner.clone(),
            fence: self.fence,
            mode: self.mode,
            scope: self.scope,
            until: wall_now + remaining,
            remaining,
        }
    }
}

impl Slot {
    /// An empty slot for holders in `mode`.
    pub(crate) fn new(mode: LockMode) -> Self {
        Self {
            mode,
            holders: Vec::new(),
            rare: None,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.holders.is_empty() && self.rare.is_none()
    }

    pub(crate) fn queue(&self) -> &[QueueEntry] {
        self.rare.as_ref().map_or(&[], |rare| &rare.queue)
    }

    pub(crate) fn delays(&self) -> &[Delay] {
        self.rare.as_ref().map_or(&[], |rare| &rare.delays)
    }

    fn rare_mut(&mut self) -> &mut Rare {
        self.rare.get_or_insert_with(Box::default)
    }

    /// Frees the boxed part once it holds nothing.
    fn shrink(&mut self) {
        if self
            .rare
            .as_ref()
            .is_some_and(|rare| rare.queue.is_empty() && rare.delays.is_empty())
        {
            self.rare = None;
        }
    }

    /// Whether anything here covers the object's subtree: then the object must be in the
    /// store's set of subtree roots.
    pub(crate) fn has_subtree_items(&self) -> bool {
        self.holders.iter().any(|h| h.scope == LockScope::Subtree)
            || self.queue().iter().any(|e| e.scope == LockScope::Subtree)
            || self.delays().iter().any(|d| d.scope == LockScope::Subtree)
    }

    /// The live holder `holder` names, if any, and whether the object has live holders at all.
    pub(crate) fn find(&self, holder: &HolderRef, now: u64) -> (Option<usize>, bool) {
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

    /// The live holder granted under `digest` (a retry of the request that was granted).
    pub(crate) fn held_by(&self, digest: &TokenDigest, now: u64) -> Option<usize> {
        self.holders
            .iter()
            .position(|h| h.is_live(now) && h.digest.ct_eq(digest))
    }

    pub(crate) fn state(&self, index: usize, now: u64) -> HolderState {
        let holder = &self.holders[index];
        HolderState {
            owner: holder.owner.clone(),
            mode: self.mode,
            ttl: holder.remaining(now),
        }
    }

    /// Enters or renews an entry in the queue, keeping it ordered by ticket.
    pub(crate) fn enqueue(&mut self, entry: QueueEntry) {
        let queue = &mut self.rare_mut().queue;
        match queue.binary_search_by_key(&entry.ticket, |e| e.ticket) {
            Ok(at) => queue[at] = entry,
            Err(at) => queue.insert(at, entry),
        }
    }

    /// Removes `ticket` from the queue; what its leaving wakes.
    pub(crate) fn leave(&mut self, ticket: Ticket) -> Wake {
        let Some(rare) = self.rare.as_mut() else {
            return Wake::No;
        };
        let wake = match rare.queue.binary_search_by_key(&ticket, |e| e.ticket) {
            Ok(at) => Wake::of(rare.queue.remove(at).scope),
            Err(_) => Wake::No,
        };
        self.shrink();
        wake
    }

    /// Removes the queue entries that lapsed; what their leaving wakes.
    pub(crate) fn drop_lapsed_entries(&mut self, now: u64) -> Wake {
        let Some(rare) = self.rare.as_mut() else {
            return Wake::No;
        };
        let mut wake = Wake::No;
        rare.queue.retain(|entry| {
            let live = entry.expires > now;
            if !live {
                wake = wake.max(Wake::of(entry.scope));
            }
            live
        });
        self.shrink();
        wake
    }

    /// Removes the lock-delays that ended, handing each to `ended` (to free its timer);
    /// what their ending wakes.
    pub(crate) fn end_delays(&mut self, now: u64, mut ended: impl FnMut(&Delay)) -> Wake {
        let Some(rare) = self.rare.as_mut() else {
            return Wake::No;
        };
        let mut wake = Wake::No;
        rare.delays.retain(|delay| {
            if delay.until > now {
                return true;
            }
            wake = wake.max(Wake::of(delay.scope));
            ended(delay);
            false
        });
        self.shrink();
        wake
    }

    pub(crate) fn push_delay(&mut self, delay: Delay) {
        self.rare_mut().delays.push(delay);
    }

    /// Live queue entries: the object's waiters (any scope).
    pub(crate) fn waiters(&self, now: u64) -> u32 {
        let live = self.queue().iter().filter(|e| e.expires > now).count();
        u32::try_from(live).unwrap_or(u32::MAX)
    }

    /// The lock-delays in force: delay records, and holders that expired within their delay
    /// but were not turned into records yet.
    pub(crate) fn delays_in_force(&self, now: u64) -> impl Iterator<Item = DelayView<'_>> {
        let recorded = self
            .delays()
            .iter()
            .filter(move |d| d.until > now)
            .map(|d| DelayView {
                owner: &d.owner,
                fence: d.fence,
                mode: d.mode,
                scope: d.scope,
                expired: d.expired,
                until: d.until,
            });
        let mode = self.mode;
        let pending = self
            .holders
            .iter()
            .filter(move |h| !h.is_live(now) && h.delay_ends() > now)
            .map(move |h| DelayView {
                owner: &h.owner,
                fence: h.fence,
                mode,
                scope: h.scope,
                expired: h.expires,
                until: h.delay_ends(),
            });
        recorded.chain(pending)
    }

    /// The object as list shows it: `None` without a live holder.
    pub(crate) fn describe(
        &self,
        object: &ObjectId,
        now: u64,
        wall_now: SystemTime,
    ) -> Option<lockcore::LockInfo> {
        let holders = self
            .holders
            .iter()
            .filter(|h| h.is_live(now))
            .map(|h| h.info(now, wall_now))
            .collect();
        let delay = self.longest_delay(now).map(|d| d.info(now, wall_now));
        lockcore::LockInfo::from_holders(object.clone(), self.mode, holders)
            .map(|info| info.with_waiters(self.waiters(now)).with_delay(delay))
    }

    /// The object as inspect shows it: its holders; or, without holders, the lock-delay in
    /// force. An object with neither is free: `None`, even while requests wait for it.
    pub(crate) fn inspect(
        &self,
        object: &ObjectId,
        now: u64,
        wall_now: SystemTime,
    ) -> Option<lockcore::LockInfo> {
        if let Some(info) = self.describe(object, now, wall_now) {
            return Some(info);
        }
        let delay = self.longest_delay(now)?;
        let expired_at = wall_now - Duration::from_nanos(now.saturating_sub(delay.expired));
        Some(
            lockcore::LockInfo::delayed(object.clone(), delay.info(now, wall_now), expired_at)
                .with_waiters(self.waiters(now)),
        )
    }

    fn longest_delay(&self, now: u64) -> Option<DelayView<'_>> {
        self.delays_in_force(now).max_by_key(|d| d.until)
    }
}

/// Where a slot stands relative to a claim: the claim's own object, an ancestor of it (only
/// what covers the ancestor's subtree reaches the claim), or under a subtree claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Place {
    /// The claim's object, or an object under a subtree claim: everything there conflicts
    /// by mode.
    Covered,
    /// A proper ancestor of the claim's object: only its subtree holders, entries and delays.
    Ancestor,
}

impl Place {
    fn reaches(self, scope: LockScope) -> bool {
        self == Place::Covered || scope == LockScope::Subtree
    }
}

/// The conflicts of one claim, gathered slot by slot.
pub(crate) struct Scan<'a> {
    claim: &'a Claim,
    ticket: Option<Ticket>,
    now: u64,
    /// The holder or lock-delay that blocks the claim longest: owner, end, cause.
    blocking: Option<(OwnerId, u64, ConflictCause)>,
    /// The earliest conflicting queue entry ahead of the claim: ticket, owner, expiry.
    queued: Option<(Ticket, OwnerId, u64)>,
}

impl<'a> Scan<'a> {
    pub(crate) fn new(claim: &'a Claim, ticket: Option<Ticket>, now: u64) -> Self {
        Self {
            claim,
            ticket,
            now,
            blocking: None,
            queued: None,
        }
    }

    /// Whether a holder or lock-delay already blocks the claim (a queue entry may still be
    /// found, but it would not be reported over a holder).
    pub(crate) fn blocked(&self) -> bool {
        self.blocking.is_some()
    }

    fn block(&mut self, owner: &OwnerId, end: u64, cause: ConflictCause) {
        if self.blocking.as_ref().is_none_or(|(_, at, _)| end > *at) {
            self.blocking = Some((owner.clone(), end, cause));
        }
    }

    /// Looks at the slot of `object`, standing at `place` from the claim; records live holders
    /// in conflict in `blockers` when given.
    pub(crate) fn slot(
        &mut self,
        object: &ObjectId,
        slot: &Slot,
        place: Place,
        mut blockers: Option<&mut Vec<Blocker>>,
    ) {
        let (now, wanted) = (self.now, self.claim.mode);
        if slot.mode.conflicts_with(wanted) {
            for holder in &slot.holders {
                if !place.reaches(holder.scope) {
                    continue;
                }
                if holder.is_live(now) {
                    self.block(&holder.owner, holder.expires, ConflictCause::Held);
                    if let Some(blockers) = blockers.as_deref_mut() {
                        add_blocker(blockers, object, holder, wanted);
                    }
                } else if holder.delay_ends() > now {
                    self.block(&holder.owner, holder.delay_ends(), ConflictCause::LockDelay);
                }
            }
        }
        for delay in slot.delays() {
            if place.reaches(delay.scope) && delay.until > now && delay.mode.conflicts_with(wanted)
            {
                self.block(&delay.owner, delay.until, ConflictCause::LockDelay);
            }
        }
        for entry in slot.queue() {
            if self.ticket.is_some_and(|mine| entry.ticket >= mine) {
                // Ordered by ticket: the rest are behind the claim.
                break;
            }
            if place.reaches(entry.scope)
                && entry.expires > now
                && entry.mode.conflicts_with(wanted)
                && self
                    .queued
                    .as_ref()
                    .is_none_or(|(t, _, _)| entry.ticket < *t)
            {
                self.queued = Some((entry.ticket, entry.owner.clone(), entry.expires));
            }
        }
    }

    /// What blocks the claim, if anything: a holder or lock-delay (the one that ends last),
    /// else the earliest queue entry ahead of it.
    pub(crate) fn conflict(self) -> Option<Conflict> {
        let now = self.now;
        let (holder, end, cause) = match (self.blocking, self.queued) {
            (Some(blocking), _) => blocking,
            (None, Some((_, owner, expires))) => (owner, expires, ConflictCause::Queued),
            (None, None) => return None,
        };
        Some(Conflict {
            object: self.claim.object.clone(),
            holder,
            retry_after: Duration::from_nanos(end.saturating_sub(now)),
            cause,
        })
    }
}

/// Adds a holder to the blockers once, up to [`MAX_BLOCKERS`].
fn add_blocker(blockers: &mut Vec<Blocker>, object: &ObjectId, holder: &Holder, wanted: LockMode) {
    if blockers.len() >= MAX_BLOCKERS
        || blockers
            .iter()
            .any(|b| b.fence == holder.fence && b.object == *object)
    {
        return;
    }
    blockers.push(Blocker {
        object: object.clone(),
        owner: holder.owner.clone(),
        fence: holder.fence,
        wanted,
    });
}
