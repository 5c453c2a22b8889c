//! [`AcquireRequest`]: everything one acquire asks for.

use std::time::Duration;

use crate::id::{ObjectId, OwnerId, RequestId};

/// One acquire: what to lock, for whom, for how long, how long to wait, and an optional
/// [`RequestId`] that makes retrying it safe.
///
/// Built with [`AcquireRequest::new`] and the `with_*` methods, so that fields added later
/// (lock modes, several objects) keep existing callers compiling.
///
/// ```
/// use std::time::Duration;
/// use lockcore::{AcquireRequest, ObjectId, OwnerId, RequestId};
/// let request = AcquireRequest::new(
///     ObjectId::new("/vol/a/file.txt").unwrap(),
///     OwnerId::new("node-17").unwrap(),
///     Duration::from_secs(30),
/// )
/// .with_wait(Duration::from_secs(5))
/// .with_request_id(RequestId::random());
/// assert!(request.request_id.is_some());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AcquireRequest {
    /// The object to lock.
    pub object: ObjectId,
    /// Who will hold it.
    pub owner: OwnerId,
    /// How long the lease lasts unless renewed.
    pub ttl: Duration,
    /// How long to wait for the object to become free; zero tries once.
    pub wait: Duration,
    /// Makes the request idempotent: a retry with the same id, object and owner returns the
    /// lease the first attempt was granted, while it is held (see [`RequestId`]).
    pub request_id: Option<RequestId>,
}

impl AcquireRequest {
    /// A request for `object` by `owner` for `ttl`, trying once, without a request id.
    pub fn new(object: ObjectId, owner: OwnerId, ttl: Duration) -> Self {
        Self {
            object,
            owner,
            ttl,
            wait: Duration::ZERO,
            request_id: None,
        }
    }

    /// Waits up to `wait` for the object (first come, first served).
    pub fn with_wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// Makes the request idempotent under `request_id`.
    pub fn with_request_id(mut self, request_id: RequestId) -> Self {
        self.request_id = Some(request_id);
        self
    }
}
