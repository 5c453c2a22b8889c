//! # lockcore
//!
//! The heart of lockd: the [`LockService`] trait every backend implements, the types it speaks
//! ([`ObjectId`], [`OwnerId`], [`Lease`], [`LockInfo`], [`Fence`], [`LockToken`]), the one error
//! type ([`LockError`]), and the token and fence logic written once for all backends. It does no
//! I/O of its own.
//!
//! ## Guarantees every backend keeps
//!
//! 1. **Mutual exclusion.** At any instant an object has at most one unexpired exclusive holder,
//!    or only shared holders, under any concurrency, including several processes sharing one
//!    Redis or Postgres; a subtree lock counts as a holder of every object it covers (see
//!    [`path`]). A request for several objects is granted all together or not at all.
//! 2. **Fencing.** Every grant carries a [`Fence`] that strictly increases per object across
//!    releases, expiries and restarts (see [`fence`] for the scheme and its limits).
//! 3. **Unforgeable tokens.** Tokens carry a 128-bit nonce and an HMAC-SHA256 under a secret,
//!    checked in full on every release, renew and validate; backends store only a digest;
//!    comparisons are constant-time (see [`token`]).
//! 4. **One clock.** Expiry is decided by one clock per backend (the process's monotonic clock,
//!    Redis's, or Postgres's), never a mix.
//! 5. **Typed refusals.** Bad input is a [`LockError`], never a panic; a backend outage is
//!    [`LockError::Unavailable`], never a false grant. A release of an unlocked object or with
//!    someone else's token is refused, leaves the lock as it was, and is logged ([`audit`]).
//!
//! ## Using a backend
//!
//! ```ignore
//! let locks: Arc<dyn LockService> = /* memory, redis, postgres or http */;
//! let object = ObjectId::new("/volumes/a/file.txt")?;
//! let owner = OwnerId::new("client-17")?;
//! let lease = locks.acquire(&object, &owner, Duration::from_secs(30), Duration::ZERO).await?;
//! // ... hand lease.token and lease.fence to the DFS, which checks them before writes ...
//! locks.release(&object, &lease.token).await?;
//! ```
//!
//! ## Layers
//!
//! A backend implements only [`LockStore`]: the atomic decisions of a request (is it
//! compatible with the holders and with the queue of waiters; record the grant and its fence)
//! and the operations on one holder, each one atomic step, in Rust, Lua or SQL. The rules it
//! implements are written out in [`store`]. [`Locks`] turns any store into the
//! [`LockService`] users call, and holds everything else once: argument limits
//! ([`Limits`], [`AcquireRequest::check`]), token minting, sealing and checking
//! ([`TokenIssuer`]), waiting and wake-ups ([`WaitQueue`], queue keep-alives), taking back
//! grants whose reply was lost ([`Reclaimer`]), and audit logging of refusals ([`audit`]).
//!
//! ## Adding a backend
//!
//! 1. Implement [`LockStore`] for your store type, following the rules in [`store`]: holders
//!    by mode, the queue ordered by [`store::Ticket`], fences from [`Fence::next_after`],
//!    replays of a held digest marked claimed, [`WaitQueue::wake`] whenever an object is freed
//!    (in every process that may wait for it). Return `Some(policy)` from
//!    [`LockStore::reclaim_policy`] when a reply can be lost on the network.
//! 2. Name the service: `pub type MyLockService = lockcore::Locks<MyStore>;` and build it with
//!    [`Locks::new`]`(store, issuer)`.
//! 3. Run the whole shared suite against it in a few lines (in `tests/conformance.rs`):
//!
//! ```ignore
//! async fn my_backend() -> Option<std::sync::Arc<dyn lockcore::LockService>> {
//!     Some(std::sync::Arc::new(lockcore::Locks::new(MyStore::new(/* ... */), issuer())))
//! }
//! conformance_tests::conformance_suite!(my_backend, conformance_tests::Capabilities::default());
//! ```
//!
//! Return `None` (after `conformance_tests::skip_or_fail`) when the service the backend needs is
//! absent: the tests then skip loudly, or fail under `LOCKD_REQUIRE_BACKENDS=1`.

pub mod audit;
mod error;
pub mod fence;
mod id;
mod lease;
mod limits;
mod locks;
mod mode;
pub mod path;
pub mod reclaim;
mod redact;
mod request;
pub mod serde_millis;
mod service;
pub mod store;
pub mod token;
mod wait;

pub use error::{Conflict, ConflictCause, LockError, LockResult};
pub use fence::{wall_clock_micros, Fence};
pub use id::{
    LockData, ObjectId, OwnerId, RequestId, MAX_OBJECT_LEN, MAX_OWNER_LEN, MAX_REQUEST_ID_LEN,
    MIN_REQUEST_ID_LEN,
};
pub use lease::{
    Grant, HolderInfo, Lease, ListQuery, LockDelayInfo, LockInfo, LockPage, MAX_LIST_LIMIT,
};
pub use limits::{Limits, MIN_TTL};
pub use locks::{Locks, QUEUE_ENTRY_LIFETIME, QUEUE_KEEPALIVE};
pub use mode::{LockMode, LockScope, LockSpec};
pub use path::MAX_OBJECT_DEPTH;
pub use reclaim::{ReclaimGuard, ReclaimPolicy, Reclaimer, Undo};
pub use redact::redact_url;
pub use request::{check_objects, AcquireRequest, MAX_LOCK_DELAY, MAX_OBJECTS_PER_REQUEST};
pub use service::{LeaseEnd, LeaseEndSink, LockService, WaitNotice, WaitSink};
pub use store::LockStore;
pub use token::{LockToken, PendingToken, TokenDigest, TokenIssuer, TokenSecret, TokenVerifier};
pub use wait::{Registration, WaitQueue};

/// Re-exported so backends implement [`LockService`] with the same macro version.
pub use async_trait::async_trait;
