//! What operations return: leases (to holders) and lock descriptions (to observers).

use std::time::{Duration, SystemTime};

use crate::error::LockError;
use crate::fence::Fence;
use crate::id::{ObjectId, OwnerId};
use crate::token::LockToken;

/// A granted lock, as its holder sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The locked object.
    pub object: ObjectId,
    /// Who holds it.
    pub owner: OwnerId,
    /// Proof of ownership: present it to release, renew or validate, and to the DFS.
    pub token: LockToken,
    /// The grant's fence number: strictly increasing per object.
    pub fence: Fence,
    /// Time left on the lease when the backend decided (the granted TTL for acquire and renew).
    pub ttl: Duration,
}

/// A held lock as observers see it: never carries the token.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LockInfo {
    /// The locked object.
    pub object: ObjectId,
    /// Who holds it.
    pub owner: OwnerId,
    /// The current grant's fence.
    pub fence: Fence,
    /// When the current grant was made (the backend's clock, approximate for memory).
    pub acquired_at: SystemTime,
    /// When the lease runs out unless renewed (the backend's clock).
    pub expires_at: SystemTime,
    /// Time left on the lease when the backend answered.
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
