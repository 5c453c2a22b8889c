//! The [`LockService`] trait every backend implements.

use std::fmt::Debug;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::LockResult;
use crate::fence::Fence;
use crate::id::{ObjectId, OwnerId};
use crate::lease::{Lease, ListQuery, LockInfo, LockPage};
use crate::token::LockToken;

/// A lock service: grants each object to one holder at a time.
///
/// Object-safe; use it as `Arc<dyn LockService>`. Every implementation must pass the whole
/// `conformance-tests` suite, which is the definition of correct behaviour.
#[async_trait]
pub trait LockService: Send + Sync + Debug + 'static {
    /// A short name for the backend (`memory`, `redis`, `postgres`, `http`).
    fn backend(&self) -> &'static str;

    /// Grants `object` to `owner` for `ttl`.
    ///
    /// With `wait` zero it tries once; otherwise it blocks until granted or `wait` elapses, then
    /// fails with [`LockError::Locked`](crate::LockError::Locked). Locks are not reentrant: the
    /// same owner asking again is refused like anyone else.
    async fn acquire(
        &self,
        object: &ObjectId,
        owner: &OwnerId,
        ttl: Duration,
        wait: Duration,
    ) -> LockResult<Lease>;

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
}
