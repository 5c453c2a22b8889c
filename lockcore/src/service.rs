//! The [`LockService`] trait every backend implements.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::LockResult;
use crate::fence::Fence;
use crate::id::{ObjectId, OwnerId};
use crate::lease::{Grant, Lease, ListQuery, LockInfo, LockPage};
use crate::mode::LockMode;
use crate::request::AcquireRequest;
use crate::token::LockToken;

/// A lock service: grants each object to one exclusive holder or to several shared ones.
///
/// Object-safe; use it as `Arc<dyn LockService>`. Every implementation must pass the whole
/// `conformance-tests` suite, which is the definition of correct behaviour.
#[async_trait]
pub trait LockService: Send + Sync + Debug + 'static {
    /// A short name for the backend (`memory`, `redis`, `postgres`, `http`).
    fn backend(&self) -> &'static str;

    /// Grants every object of the request to its owner for its TTL, each in its mode, all
    /// together or none.
    ///
    /// With a zero wait it tries once; otherwise it waits, in arrival order, until all can be
    /// granted together or the wait elapses, then fails with
    /// [`LockError::Locked`](crate::LockError::Locked). Nothing is held while a request waits.
    /// Locks are not reentrant: the same owner asking again is refused like anyone else, unless
    /// it repeats the [`RequestId`](crate::RequestId) of the request that was granted, which
    /// returns those same leases (same tokens and fences, their remaining TTL) instead of
    /// second grants.
    ///
    /// Cancel-safe: dropping the future before it completes leaves no lock that nobody can
    /// release. A grant whose outcome the backend could not report (the future was dropped, the
    /// reply was lost, the deadline passed) is taken back in the background, unless a retry with
    /// its request id has claimed it.
    async fn acquire_with(&self, request: &AcquireRequest) -> LockResult<Grant>;

    /// Grants `object` exclusively to `owner` for `ttl`, waiting up to `wait`:
    /// [`LockService::acquire_with`] for one exclusive object without a request id.
    async fn acquire(
        &self,
        object: &ObjectId,
        owner: &OwnerId,
        ttl: Duration,
        wait: Duration,
    ) -> LockResult<Lease> {
        let request = AcquireRequest::new(object.clone(), owner.clone(), ttl).with_wait(wait);
        Ok(self.acquire_with(&request).await?.into_first())
    }

    /// [`LockService::acquire`] in `mode`.
    async fn acquire_in(
        &self,
        object: &ObjectId,
        mode: LockMode,
        owner: &OwnerId,
        ttl: Duration,
        wait: Duration,
    ) -> LockResult<Lease> {
        let request = AcquireRequest::new(object.clone(), owner.clone(), ttl)
            .with_mode(mode)
            .with_wait(wait);
        Ok(self.acquire_with(&request).await?.into_first())
    }

    /// Releases `object` if `token` is its current holder's, returning the released fence.
    ///
    /// Refuses with `NotHeld` when the object is not locked and `TokenMismatch` when another
    /// holder has it (the lock then stays held); both are logged as possible attacks.
    async fn release(&self, object: &ObjectId, token: &LockToken) -> LockResult<Fence>;

    /// Releases several leases in one request: one outcome per `(object, token)`, in order.
    /// The outer error is for the request as a whole (a bad argument, an outage).
    async fn release_many(
        &self,
        locks: &[(ObjectId, LockToken)],
    ) -> LockResult<Vec<LockResult<Fence>>>;

    /// Extends the current holder's lease to `ttl` from now, keeping its fence.
    async fn renew(&self, object: &ObjectId, token: &LockToken, ttl: Duration)
        -> LockResult<Lease>;

    /// Renews several leases to `ttl` in one request: one outcome per `(object, token)`, in
    /// order.
    async fn renew_many(
        &self,
        locks: &[(ObjectId, LockToken)],
        ttl: Duration,
    ) -> LockResult<Vec<LockResult<Lease>>>;

    /// Turns an exclusive lease into a shared one, keeping its token, fence and expiry, so that
    /// shared waiters can join it. A shared lease is returned as it is.
    async fn downgrade(&self, object: &ObjectId, token: &LockToken) -> LockResult<Lease>;

    /// Returns the lease if `token` is the current, unexpired holder's: the DFS's check before it
    /// grants access.
    async fn validate(&self, object: &ObjectId, token: &LockToken) -> LockResult<Lease>;

    /// The current holders of `object`, if any. Never includes a token.
    async fn inspect(&self, object: &ObjectId) -> LockResult<Option<LockInfo>>;

    /// Current locks whose object starts with the query's prefix, a page at a time.
    async fn list(&self, query: &ListQuery) -> LockResult<LockPage>;

    /// Whether the backend is reachable (for readiness probes).
    async fn health(&self) -> LockResult<()> {
        Ok(())
    }

    /// Waits, at most `timeout`, for background work that must finish before the process
    /// exits: taking back grants whose acquire reply was lost. Returns whether all of it
    /// finished. A server calls it after it stopped serving requests.
    async fn close(&self, timeout: Duration) -> bool {
        let _ = timeout;
        true
    }

    /// Asks the backend to report every lease that ends, by release or by expiry, to `sink`,
    /// and returns whether it will. A backend that already times its leases (the memory
    /// backend's sweeper) reports them exactly and for free, so a server need not keep its own
    /// copy of every lease to notice expiries. The default reports nothing (`false`).
    ///
    /// `sink` is called synchronously from the backend's own code paths, at most once per lease,
    /// so it must be quick and must not call back into the service. A backend keeps one sink: a
    /// later call returns `false` and reports nothing to its sink.
    fn report_lease_ends(&self, sink: LeaseEndSink) -> bool {
        let _ = sink;
        false
    }

    /// Asks the service to report what its waiting requests see to `sink` ([`WaitNotice`]:
    /// `wanted` notices for holders, contention for metrics), and returns whether it will. The
    /// service that does the waiting ([`crate::Locks`]) reports; a client of a remote server
    /// does not (`false`, the default). Same calling rules as
    /// [`LockService::report_lease_ends`].
    fn report_waits(&self, sink: WaitSink) -> bool {
        let _ = sink;
        false
    }
}

/// What a waiting request saw, as reported through [`LockService::report_waits`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WaitNotice {
    /// A request started waiting behind a holder: once per waiting request and holder.
    Wanted {
        /// The holder's object.
        object: ObjectId,
        /// The holder's owner.
        owner: OwnerId,
        /// The holder's fence.
        fence: Fence,
        /// Who waits.
        waiter: OwnerId,
        /// The mode the waiter asks for.
        mode: LockMode,
    },
    /// A request that was refused at least once ended: granted after waiting, or not granted
    /// (refused at once, or its wait ran out).
    Contended {
        /// The objects it named.
        objects: Vec<ObjectId>,
        /// From the request's start to its end.
        waited: Duration,
        /// Whether it was granted in the end.
        granted: bool,
    },
}

/// Where a service sends [`WaitNotice`]s.
pub type WaitSink = Arc<dyn Fn(WaitNotice) + Send + Sync>;

/// One lease that ended, as reported through [`LockService::report_lease_ends`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LeaseEnd {
    /// The object that was held.
    pub object: ObjectId,
    /// Who held it.
    pub owner: OwnerId,
    /// The lease's fence.
    pub fence: Fence,
    /// `true` when the lease ran out, `false` when its holder released it.
    pub expired: bool,
    /// The mode the lease held its object in (exclusive unless set with
    /// [`LeaseEnd::with_mode`]).
    pub mode: LockMode,
}

impl LeaseEnd {
    /// A notice that `owner`'s lease on `object` with `fence` ended.
    pub fn new(object: ObjectId, owner: OwnerId, fence: Fence, expired: bool) -> Self {
        Self {
            object,
            owner,
            fence,
            expired,
            mode: LockMode::Exclusive,
        }
    }

    /// The same notice for a lease held in `mode`.
    pub fn with_mode(mut self, mode: LockMode) -> Self {
        self.mode = mode;
        self
    }
}

/// Where a backend sends [`LeaseEnd`] notices.
pub type LeaseEndSink = Arc<dyn Fn(LeaseEnd) + Send + Sync>;
