//! What operations return: leases (to holders) and lock descriptions (to observers).

use std::time::{Duration, SystemTime};

use crate::error::LockError;
use crate::fence::Fence;
use crate::id::{ObjectId, OwnerId};
use crate::mode::{LockMode, LockScope};
use crate::token::LockToken;

/// A granted lock, as its holder sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The locked object.
    pub object: ObjectId,
    /// Who holds it.
    pub owner: OwnerId,
    /// Whether the lease is exclusive or one of several shared ones.
    pub mode: LockMode,
    /// Proof of ownership: present it to release, renew or validate, and to the DFS.
    pub token: LockToken,
    /// The grant's fence number: strictly increasing per object.
    pub fence: Fence,
    /// Time left on the lease when the backend decided (the granted TTL for acquire and renew).
    pub ttl: Duration,
}

/// What one acquire was granted: a lease per object, in the request's order, sharing the TTL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Who holds the leases.
    pub owner: OwnerId,
    /// Time left on the leases when the backend decided (the granted TTL, or less for a retry
    /// answered with an earlier grant).
    pub ttl: Duration,
    /// One lease per requested object, in request order.
    pub leases: Vec<Lease>,
}

impl Grant {
    /// The first lease: the only one of a single-object request.
    ///
    /// # Panics
    ///
    /// If the grant holds no lease; a backend never returns such a grant.
    pub fn into_first(self) -> Lease {
        self.leases
            .into_iter()
            .next()
            .expect("a grant holds at least one lease")
    }
}

/// A held lock as observers see it: never carries a token.
///
/// An object has one exclusive holder or any number of shared ones. The top-level `owner`,
/// `fence`, `acquired_at`, `expires_at` and `ttl` describe the holder with the highest fence;
/// `holders` lists every holder, ordered by fence.
///
/// [`LockService::inspect`](crate::LockService::inspect) also answers for an object that has no
/// holder but is in a lock-delay: `holders` is then empty, `delay` is set, and the top-level
/// fields describe the lease that expired (its `ttl` is zero). An object with neither holders
/// nor a delay is free, and `inspect` answers `None` for it even while requests wait for it
/// (they wait behind something elsewhere in the tree, or behind earlier waiters).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LockInfo {
    /// The locked object.
    pub object: ObjectId,
    /// The mode its holders hold it in.
    pub mode: LockMode,
    /// Who holds it (the holder with the highest fence).
    pub owner: OwnerId,
    /// The highest fence among the holders.
    pub fence: Fence,
    /// When that grant was made (the backend's clock, approximate for memory).
    pub acquired_at: SystemTime,
    /// When that lease runs out unless renewed (the backend's clock).
    pub expires_at: SystemTime,
    /// Time left on that lease when the backend answered.
    pub ttl: Duration,
    /// Every holder, by increasing fence: one for an exclusive lock, one or more when shared.
    pub holders: Vec<HolderInfo>,
    /// How many requests wait in the object's queue (those waiting for a subtree lock on it
    /// included; those waiting for objects under it not).
    pub waiters: u32,
    /// The lock-delay in force on the object, if an expired lease's delay has not run out.
    pub delay: Option<LockDelayInfo>,
}

/// A lock-delay in force: no conflicting grant until it ends.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LockDelayInfo {
    /// Who held the lease that expired.
    pub owner: OwnerId,
    /// That lease's fence.
    pub fence: Fence,
    /// That lease's mode: an expired shared lease delays exclusive requests only.
    pub mode: LockMode,
    /// That lease's scope: an expired subtree lease delays its whole subtree.
    pub scope: LockScope,
    /// When the delay ends (the backend's clock).
    pub until: SystemTime,
    /// Time left on the delay when the backend answered.
    pub remaining: Duration,
}

impl LockInfo {
    /// The description of `object` held in `mode` by `holders` (by increasing fence), or
    /// `None` when `holders` is empty.
    pub fn from_holders(
        object: ObjectId,
        mode: LockMode,
        mut holders: Vec<HolderInfo>,
    ) -> Option<Self> {
        holders.sort_by_key(|holder| holder.fence);
        let top = holders.last()?.clone();
        Some(Self {
            object,
            mode,
            owner: top.owner,
            fence: top.fence,
            acquired_at: top.acquired_at,
            expires_at: top.expires_at,
            ttl: top.ttl,
            holders,
            waiters: 0,
            delay: None,
        })
    }

    /// The description of an object without holders in the lock-delay `delay`.
    pub fn delayed(object: ObjectId, delay: LockDelayInfo, expired_at: SystemTime) -> Self {
        Self {
            object,
            mode: delay.mode,
            owner: delay.owner.clone(),
            fence: delay.fence,
            acquired_at: expired_at,
            expires_at: expired_at,
            ttl: Duration::ZERO,
            holders: Vec::new(),
            waiters: 0,
            delay: Some(delay),
        }
    }

    /// The same description with `waiters` waiting requests.
    pub fn with_waiters(mut self, waiters: u32) -> Self {
        self.waiters = waiters;
        self
    }

    /// The same description with the lock-delay `delay` in force.
    pub fn with_delay(mut self, delay: Option<LockDelayInfo>) -> Self {
        self.delay = delay;
        self
    }
}

/// One holder of a lock, as observers see it: never carries the token.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HolderInfo {
    /// Who holds it.
    pub owner: OwnerId,
    /// What the grant covers: the object, or its subtree.
    pub scope: LockScope,
    /// This grant's fence.
    pub fence: Fence,
    /// When this grant was made (the backend's clock).
    pub acquired_at: SystemTime,
    /// When this lease runs out unless renewed (the backend's clock).
    pub expires_at: SystemTime,
    /// Time left on this lease when the backend answered.
    pub ttl: Duration,
}

/// The most locks one [`ListQuery`] may ask for.
pub const MAX_LIST_LIMIT: usize = 1000;

/// Which locks to list: those whose object starts with `prefix`, at most `limit`, after `after`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListQuery {
    /// Only objects starting with this (empty: all).
    pub prefix: String,
    /// Page size, 1 to [`MAX_LIST_LIMIT`].
    pub limit: usize,
    /// The `next` cursor of the previous page; opaque, backend-defined.
    pub after: Option<String>,
}

impl ListQuery {
    /// The first page of locks under `prefix`, `limit` at a time.
    pub fn new(prefix: impl Into<String>, limit: usize) -> Self {
        Self {
            prefix: prefix.into(),
            limit,
            after: None,
        }
    }

    /// Refuses a limit outside `1..=MAX_LIST_LIMIT` or a prefix with control characters.
    pub fn check(&self) -> Result<(), LockError> {
        if self.limit == 0 || self.limit > MAX_LIST_LIMIT {
            return Err(LockError::invalid_argument(
                "limit",
                format!("must be between 1 and {MAX_LIST_LIMIT}"),
            ));
        }
        if self.prefix.len() > crate::id::MAX_OBJECT_LEN
            || self.prefix.chars().any(char::is_control)
        {
            return Err(LockError::invalid_argument(
                "prefix",
                "must be at most 1024 bytes without control characters",
            ));
        }
        Ok(())
    }
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LockPage {
    /// The locks on this page.
    pub locks: Vec<LockInfo>,
    /// Cursor for the next page; `None` when this was the last.
    pub next: Option<String>,
}
