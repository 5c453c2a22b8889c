//! The [`LockService`] trait every backend implements.

use std::fmt::Debug;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::LockResult;
use crate::fence::Fence;
use crate::id::{ObjectId, OwnerId};
use crate::lease::{Lease, ListQuery, LockInfo, LockPage};
use crate::request::AcquireRequest;
use crate::token::LockToken;

/// A lock service: grants each object to one holder at a time.
///
/// Object-safe; use it as `Arc<dyn LockService>`. Every implementation must pass the whole
/// `conformance-tests` suite, which is the definition of correct behaviour.
#[async_trait]
pub trait LockService: Send + Sync + Debug + 'static {
    /// A short name for the backend (`memory`, `redis`, `postgres`, `http`).
    fn backend(&self) -> &'static str;

    /// Grants the request's object to its owner for its TTL.
    ///
    /// With a zero wait it tries once; otherwise it blocks until granted or the wait elapses,
    /// then fails with [`LockError::Locked`](crate::LockError::Locked). Locks are not reentrant:
    /// the same owner asking again is refused like anyone else, unless it repeats the
    /// [`RequestId`](crate::RequestId) of the request that was granted, which returns that same
    /// lease (same token and fence, its remaining TTL) instead of a second grant.
    ///
    /// Cancel-safe: dropping the future before it completes leaves no lock that nobody can
    /// release. A grant whose outcome the backend could not report (the future was dropped, the
    /// reply was lost, the deadline passed) is taken back in the background, unless a retry with
    /// its request id has claimed it.
    async fn acquire_with(&self, request: &AcquireRequest) -> LockResult<Lease>;

    /// [`LockService::acquire_with`] without a request id: grants `object` to `owner` for
    /// `ttl`, waiting up to `wait`.
    async fn acquire(
        &self,
        object: &ObjectId,
        owner: &OwnerId,
        ttl: Duration,
        wait: Duration,
    ) -> LockResult<Lease> {
        let request = AcquireRequest::new(object.clone(), owner.clone(), ttl).with_wait(wait);
        self.acquire_with(&request).await
    }

    /// Releases `object` if `token` is its current holder's, returning the released fence.
    ///
    /// Refuses with `NotHeld` when the object is not locked and `TokenMismatch` when another
    /// holder has it (the lock then stays held); both are logged as possible attacks.
    async fn release(&self, object: &ObjectId, token: &LockToken) -> LockResult<Fence>;

    /// Extends the current holder's lease to `ttl` from now, keeping its fence.
    async fn renew(&self, object: &ObjectId, token: &LockToken, ttl: Duration)
        -> LockResult<Lease>;

    /// Returns the lease if `token` is the current, unexpired holder's: the DFS's check before it
    /// grants access.
    async fn validate(&self, object: &ObjectId, token: &LockToken) -> LockResult<Lease>;

    /// The current lock on `object`, if any. Never includes the token.
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
}
