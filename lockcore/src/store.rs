//! [`LockStore`]: the atomic primitives a backend implements. [`crate::Locks`] builds the whole
//! [`LockService`](crate::LockService) on top of them.
//!
//! A store decides, atomically and on its own clock, whether a request is compatible with the
//! holders and with the queue of waiters, and records grants with their fences. Everything else
//! exists once, in [`crate::Locks`]: argument checks, token minting and checking, waiting and
//! wake-ups, taking back grants whose reply was lost, and audit logging of refusals.
//!
//! ## The rules every store implements (in Rust, Lua or SQL alike)
//!
//! **Holders.** An object has no holder, one exclusive holder, or any number of shared holders.
//! Each holder is one grant: owner, mode, scope ([`LockScope`]), token digest, fence, expiry and
//! lock-delay. A holder whose expiry has passed (on the store's clock) does not exist.
//!
//! **Coverage.** A holder on `P` with scope `subtree` covers `P` and every id under it; with scope
//! `object`, `P` alone. Two grants *conflict* when their modes conflict and what they cover
//! intersects ([`crate::path::conflicts`]). Below, "a holder (or queue entry) in conflict with a
//! claim" means one anywhere in the tree, not only on the claim's object: on the claim's object,
//! a subtree holder on one of its [`ancestors`](crate::path::ancestors), or, for a subtree
//! claim, one under the claim's object. A store finds them through an index of its own (an
//! ordered key range, per-ancestor sets or counts), never by scanning unrelated locks.
//!
//! **Lock-delay.** A holder granted with a lock-delay `d` that *expires* (is not released) keeps
//! blocking, for `d` after its expiry, every claim it would conflict with, as if it still held
//! (refusals name it with [`ConflictCause::LockDelay`](crate::ConflictCause::LockDelay)); but it is no holder: release, renew,
//! validate and downgrade answer [`Verdict::NotHeld`] for it, and no replay returns it. A
//! release ends a holder at once, with no delay. [`LockStore::inspect`] reports a delay in
//! force ([`LockInfo::delay`](crate::LockInfo)).
//!
//! **Queue.** Every waiting request has a [`Ticket`]: a number the store draws from one
//! counter when the request is first refused with [`Queueing`], so tickets order all waiters
//! of the store by arrival. The ticket is entered in the queue of every object the request
//! names, with its mode, owner and an expiry (`keep_for` from the attempt, renewed by every
//! later attempt with the ticket). An entry past its expiry does not exist.
//!
//! **Attempt.** A request (its [`Claim`]s, and its ticket if it has one) is granted when, for
//! every claim:
//! 1. the object is already held by the claim's digest (a retry of the request that was
//!    granted: the store answers with that grant, `replayed`, and marks it claimed), or
//! 2. no holder (nor lock-delay of an expired holder) is in conflict with the claim, and no
//!    queue entry with a smaller ticket than the request's (every entry, for a request without
//!    a ticket) is in conflict with it.
//!
//! Rule 2 serves waiters in arrival order, lets consecutive shared waiters go together, and
//! makes a waiting exclusive request hold back every later request, so a stream of shared
//! requests cannot starve it: it waits at most for the holders and the earlier waiters. Since
//! tickets come from one counter, the earliest waiter among any set of conflicting waiters is
//! blocked only by holders, so waiters never deadlock, whatever order their objects are named
//! in. A multi-object waiter keeps its place in the queue of each of its objects.
//!
//! When granted, every claim not replayed gets a new fence, above every fence the store issued
//! for that object (see [`crate::fence`]), and the request's ticket leaves every queue. All of
//! this happens in one atomic step: all claims or none.
//!
//! When refused, nothing changes, except with [`Queueing`]: the request enters (or stays in)
//! the queues under its ticket (the queue of each claim's object, with the claim's mode and
//! scope), with its entries' expiry renewed. The answer lists, for each claim in conflict, a
//! holder, lock-delay or queue entry that blocks it, its [`ConflictCause`](crate::ConflictCause), and how long until
//! that one ends. When the attempt draws a new ticket (the request starts waiting), the answer
//! also lists the live holders in conflict with its claims ([`Blocker`]s, at most
//! [`MAX_BLOCKERS`]), so that they can be told someone wants what they hold.
//!
//! **Release, renew, validate, downgrade** address one holder by `(object, digest, fence)`: a
//! holder with that digest and fence, or [`Verdict::NotHeld`] when the object has no holder,
//! or [`Verdict::Mismatch`] when it has others. Downgrade turns an exclusive holder into a
//! shared one, keeping its digest, fence and expiry.
//!
//! **Wake-ups.** Whenever holders or queue entries of an object go away or become shared
//! (release, downgrade, expiry where the store sees it, a ticket leaving the queue), the store
//! calls [`WaitQueue::wake`] for that object in every process that may wait for it.

use std::time::Duration;

use async_trait::async_trait;

use crate::error::{Conflict, LockResult};
use crate::fence::Fence;
use crate::id::{ObjectId, OwnerId};
use crate::lease::{ListQuery, LockInfo, LockPage};
use crate::limits::Limits;
use crate::mode::{LockMode, LockScope};
use crate::reclaim::{ReclaimPolicy, Undo};
use crate::service::LeaseEndSink;
use crate::token::TokenDigest;
use crate::wait::WaitQueue;

/// One object of an attempt: what to lock, in which mode, under which token digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The object.
    pub object: ObjectId,
    /// The mode asked for.
    pub mode: LockMode,
    /// What the grant covers.
    pub scope: LockScope,
    /// The digest of the token the grant will carry (see [`crate::TokenIssuer::prepare_for`]).
    pub digest: TokenDigest,
}

/// A waiting request's place in the store's queues: smaller tickets arrived earlier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ticket(pub u64);

/// How a refused attempt joins the queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Queueing {
    /// The ticket of an earlier refusal, or `None` to draw one.
    pub ticket: Option<Ticket>,
    /// How long the queue entries last unless a later attempt renews them.
    pub keep_for: Duration,
}

/// One atomic attempt to grant a request.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    /// Who asks.
    pub owner: &'a OwnerId,
    /// The objects, in request order.
    pub claims: &'a [Claim],
    /// The leases' TTL.
    pub ttl: Duration,
    /// The leases' lock-delay (zero for none; see the [module docs](self)).
    pub lock_delay: Duration,
    /// `Some` for a request that waits when refused; `None` for one that tries once.
    pub queueing: Option<Queueing>,
}

/// What an attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempted {
    /// Every claim is granted: one [`Granted`] per claim, in claim order.
    Granted(Vec<Granted>),
    /// Nothing was granted.
    Refused {
        /// What blocks the request: at least one entry, in claim order.
        conflicts: Vec<Conflict>,
        /// The request's ticket, when it asked to queue.
        ticket: Option<Ticket>,
        /// When this attempt drew the ticket: the live holders in conflict with the claims
        /// (at most [`MAX_BLOCKERS`]); otherwise may be empty.
        blockers: Vec<Blocker>,
    },
}

/// What a store implements beyond exclusive and shared object locks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreFeatures {
    /// [`LockScope::Subtree`] claims.
    pub subtree: bool,
    /// A non-zero [`Attempt::lock_delay`].
    pub lock_delay: bool,
}

impl StoreFeatures {
    /// Everything: subtrees and lock-delay.
    pub const ALL: StoreFeatures = StoreFeatures {
        subtree: true,
        lock_delay: true,
    };
}

/// The most [`Blocker`]s a refusal reports.
pub const MAX_BLOCKERS: usize = 64;

/// A live holder a request starts waiting behind: it gets a `wanted` notice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocker {
    /// The holder's object (the claim's, an ancestor holding its subtree, or one under a
    /// subtree claim).
    pub object: ObjectId,
    /// The holder's owner.
    pub owner: OwnerId,
    /// The holder's fence.
    pub fence: Fence,
    /// The mode the waiting claim asks for.
    pub wanted: LockMode,
}

/// One granted claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Granted {
    /// The grant's fence.
    pub fence: Fence,
    /// The mode the grant holds its object in: the claim's, or for a replay, the held grant's
    /// (shared if it was downgraded since).
    pub mode: LockMode,
    /// Time left on the lease (the TTL asked for, or what is left of a replayed grant).
    pub ttl: Duration,
    /// Whether this is the earlier grant of the same request, answered again.
    pub replayed: bool,
}

/// A holder, as a release, renew, validate or downgrade names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HolderRef {
    /// The object.
    pub object: ObjectId,
    /// The digest of the holder's token.
    pub digest: TokenDigest,
    /// The holder's fence (from the token).
    pub fence: Fence,
}

/// What a store found for one [`HolderRef`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict<T> {
    /// The holder exists; the operation was done.
    Done(T),
    /// The object has no holder.
    NotHeld,
    /// The object has holders, but not this one.
    Mismatch,
}

/// A holder as renew, validate and downgrade report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HolderState {
    /// Who holds it.
    pub owner: OwnerId,
    /// Its mode (after the operation).
    pub mode: LockMode,
    /// Time left on its lease.
    pub ttl: Duration,
}

/// The atomic primitives of a backend. See the [module docs](self) for the rules.
///
/// Every method that changes state does so in one atomic step (a critical section, one Lua
/// script, one SQL statement or transaction) and costs one round trip, whatever the number of
/// objects, and never more with more locks held on other objects.
#[async_trait]
pub trait LockStore: Send + Sync + std::fmt::Debug + 'static {
    /// A short name for the backend (`memory`, `redis`, `postgres`).
    fn backend(&self) -> &'static str;

    /// The limits requests are checked against before they reach the store.
    fn limits(&self) -> Limits;

    /// Whether the store implements subtree scopes and lock-delay. [`crate::Locks`] refuses
    /// requests that use what a store does not implement, as `invalid_argument`, rather than
    /// let it grant them as plain object locks.
    fn features(&self) -> StoreFeatures {
        StoreFeatures::default()
    }

    /// How [`crate::Locks`] takes back grants whose reply was lost, for a store across a
    /// network; `None` for an in-process store, whose answers cannot be lost.
    fn reclaim_policy(&self) -> Option<ReclaimPolicy>;

    /// Where this process's waiters are woken (see [module docs](self), "Wake-ups").
    fn waits(&self) -> &WaitQueue;

    /// One attempt to grant every claim together.
    async fn try_acquire(&self, attempt: Attempt<'_>) -> LockResult<Attempted>;

    /// Removes `ticket` from the queues of `objects` (a waiter that gave up) and wakes them.
    async fn leave_queue(&self, ticket: Ticket, objects: &[ObjectId]) -> LockResult<()>;

    /// Takes back the grants of `claims` made by an attempt whose answer was lost: removes each
    /// holder that has its claim's digest and was not claimed by a retry, in one step.
    /// [`Undo::TookBack`] if it removed any, [`Undo::Claimed`] if a retry claimed them,
    /// [`Undo::Absent`] if none holds.
    async fn abandon(&self, claims: &[Claim]) -> LockResult<Undo>;

    /// Releases each holder, in one step. One verdict per holder, in order.
    async fn release(&self, holders: &[HolderRef]) -> LockResult<Vec<Verdict<()>>>;

    /// Extends each holder's lease to `ttl` from now, in one step.
    async fn renew(
        &self,
        holders: &[HolderRef],
        ttl: Duration,
    ) -> LockResult<Vec<Verdict<HolderState>>>;

    /// Reports the holder, if it holds.
    async fn validate(&self, holder: &HolderRef) -> LockResult<Verdict<HolderState>>;

    /// Turns the holder into a shared holder, keeping its digest, fence and expiry.
    async fn downgrade(&self, holder: &HolderRef) -> LockResult<Verdict<HolderState>>;

    /// The holders of `object`, if any.
    async fn inspect(&self, object: &ObjectId) -> LockResult<Option<LockInfo>>;

    /// Held objects whose name starts with the query's prefix, a page at a time.
    async fn list(&self, query: &ListQuery) -> LockResult<LockPage>;

    /// Whether the store is reachable.
    async fn health(&self) -> LockResult<()>;

    /// See [`LockService::report_lease_ends`](crate::LockService::report_lease_ends).
    fn report_lease_ends(&self, sink: LeaseEndSink) -> bool {
        let _ = sink;
        false
    }
}
