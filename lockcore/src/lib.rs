//! # lockcore
//!
//! The heart of lockd: the [`LockService`] trait every backend implements, the types it speaks
//! ([`ObjectId`], [`OwnerId`], [`Lease`], [`LockInfo`], [`Fence`], [`LockToken`]), the one error
//! type ([`LockError`]), and the token and fence logic written once for all backends. It does no
//! I/O of its own.
//!
//! ## Guarantees every backend keeps
//!
//! 1. **Mutual exclusion.** At any instant at most one unexpired holder per object, under any
//!    concurrency, including several processes sharing one Redis or Postgres.
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
//! ## Adding a backend
//!
//! 1. Implement [`LockService`] ([`LockService::acquire_with`] and the rest). Hold a [`Limits`]
//!    and call [`Limits::check_acquire`] / [`Limits::check_ttl`] first. Mint tokens with
//!    [`TokenIssuer::prepare_for`] (store its [`PendingToken::digest`] in the same atomic step
//!    that decides the fence with [`Fence::next_after`]) and [`TokenIssuer::seal`]. In that same
//!    step, an object already held by that very digest is a retry of the request that was
//!    granted (a [`RequestId`]): answer it with the held grant and mark it claimed. Begin
//!    release, renew and validate with [`TokenIssuer::check`] (the MAC, in constant time), then
//!    compare the stored digest with [`LockToken::digest`] and the fence. Around a network
//!    acquire, hold a [`Reclaimer`] guard and disarm it once the answer is read, giving it an
//!    `undo` that frees the object if it still holds the digest, unclaimed; forward
//!    [`LockService::close`] to [`Reclaimer::drain`]. Run blocking acquires through a
//!    [`WaitQueue`] and call [`WaitQueue::wake`] when an object is freed. Log refusals with
//!    [`audit::log_refusal`].
//! 2. Run the whole shared suite against it in a few lines (in `tests/conformance.rs`):
//!
//! ```ignore
//! async fn my_backend() -> Option<std::sync::Arc<dyn lockcore::LockService>> {
//!     Some(std::sync::Arc::new(MyBackend::new(/* ... */)))
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
pub mod reclaim;
mod redact;
mod request;
pub mod serde_millis;
mod service;
pub mod token;
mod wait;

pub use error::{LockError, LockResult};
pub use fence::{wall_clock_micros, Fence};
pub use id::{
    LockData, ObjectId, OwnerId, RequestId, MAX_OBJECT_LEN, MAX_OWNER_LEN, MAX_REQUEST_ID_LEN,
    MIN_REQUEST_ID_LEN,
};
pub use lease::{Lease, ListQuery, LockInfo, LockPage, MAX_LIST_LIMIT};
pub use limits::{Limits, MIN_TTL};
pub use reclaim::{ReclaimGuard, ReclaimPolicy, Reclaimer, Undo};
pub use redact::redact_url;
pub use request::AcquireRequest;
pub use service::LockService;
pub use token::{LockToken, PendingToken, TokenDigest, TokenIssuer, TokenSecret, TokenVerifier};
pub use wait::WaitQueue;

/// Re-exported so backends implement [`LockService`] with the same macro version.
pub use async_trait::async_trait;
