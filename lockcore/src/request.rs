//! [`AcquireRequest`]: everything one acquire asks for.

use std::collections::HashSet;
use std::time::Duration;

use crate::error::LockError;
use crate::id::{ObjectId, OwnerId, RequestId};
use crate::limits::Limits;
use crate::mode::{LockMode, LockScope, LockSpec};
use crate::path;

/// The most objects one acquire may name.
pub const MAX_OBJECTS_PER_REQUEST: usize = 64;

/// The longest lock-delay an acquire may ask for.
pub const MAX_LOCK_DELAY: Duration = Duration::from_secs(60);

/// One acquire: which objects to lock in which modes, for whom, for how long, how long to
/// wait, and an optional [`RequestId`] that makes retrying it safe.
///
/// A request names 1 to [`MAX_OBJECTS_PER_REQUEST`] distinct objects and is granted all or
/// nothing. Built with [`AcquireRequest::new`] (one exclusive object) or
/// [`AcquireRequest::many`] and the `with_*` methods, so that fields added later keep existing
/// callers compiling.
///
/// ```
/// use std::time::Duration;
/// use lockcore::{AcquireRequest, LockMode, LockSpec, ObjectId, OwnerId, RequestId};
/// let object = |name| ObjectId::new(name).unwrap();
/// let rename = AcquireRequest::many(
///     vec![LockSpec::exclusive(object("/vol/a")), LockSpec::exclusive(object("/vol/b"))],
///     OwnerId::new("node-17").unwrap(),
///     Duration::from_secs(30),
/// )
/// .with_wait(Duration::from_secs(5))
/// .with_request_id(RequestId::random());
/// assert_eq!(rename.objects.len(), 2);
/// let read = AcquireRequest::new(object("/vol/a"), OwnerId::new("n").unwrap(), Duration::from_secs(1))
///     .with_mode(LockMode::Shared);
/// assert_eq!(read.objects[0].mode, LockMode::Shared);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AcquireRequest {
    /// The objects to lock, each in its mode, in the order grants are reported.
    pub objects: Vec<LockSpec>,
    /// Who will hold them.
    pub owner: OwnerId,
    /// How long the leases last unless renewed (one TTL for all of them).
    pub ttl: Duration,
    /// How long to wait for the objects to become free together; zero tries once.
    pub wait: Duration,
    /// Makes the request idempotent: a retry with the same id, objects, modes and owner returns
    /// the leases the first attempt was granted, while they are held (see [`RequestId`]).
    pub request_id: Option<RequestId>,
    /// Lock-delay (0 to [`MAX_LOCK_DELAY`]): when one of these leases ends by expiry rather
    /// than by release, nothing that conflicts with it is granted for this long after the
    /// expiry (as in Chubby and Consul), so the vanished holder's last writes cannot race the
    /// next holder's. Zero, the default, frees the object at expiry.
    pub lock_delay: Duration,
}

impl AcquireRequest {
    /// A request for `object`, exclusively, by `owner` for `ttl`, trying once, without a
    /// request id.
    pub fn new(object: ObjectId, owner: OwnerId, ttl: Duration) -> Self {
        Self::many(vec![LockSpec::exclusive(object)], owner, ttl)
    }

    /// A request for all of `objects` together, by `owner` for `ttl`, trying once.
    pub fn many(objects: Vec<LockSpec>, owner: OwnerId, ttl: Duration) -> Self {
        Self {
            objects,
            owner,
            ttl,
            wait: Duration::ZERO,
            request_id: None,
            lock_delay: Duration::ZERO,
        }
    }

    /// Asks for every object in `mode`.
    pub fn with_mode(mut self, mode: LockMode) -> Self {
        for spec in &mut self.objects {
            spec.mode = mode;
        }
        self
    }

    /// Asks for every object in `scope`.
    pub fn with_scope(mut self, scope: LockScope) -> Self {
        for spec in &mut self.objects {
            spec.scope = scope;
        }
        self
    }

    /// Sets the leases' lock-delay (see [`AcquireRequest::lock_delay`]).
    pub fn with_lock_delay(mut self, lock_delay: Duration) -> Self {
        self.lock_delay = lock_delay;
        self
    }

    /// Waits up to `wait` for the objects (in arrival order, see [`crate::store`]).
    pub fn with_wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// Makes the request idempotent under `request_id`.
    pub fn with_request_id(mut self, request_id: RequestId) -> Self {
        self.request_id = Some(request_id);
        self
    }

    /// The first object named (the only one of a single-object request).
    ///
    /// # Panics
    ///
    /// If the request names no object; [`AcquireRequest::check`] refuses such a request.
    pub fn first_object(&self) -> &ObjectId {
        &self.objects[0].object
    }

    /// Refuses a request outside `limits` or naming no object, more than
    /// [`MAX_OBJECTS_PER_REQUEST`] objects, one object twice, two objects one of whose locks
    /// would cover the other (a subtree and something under it), or a lock-delay above
    /// [`MAX_LOCK_DELAY`], as [`LockError::InvalidArgument`].
    pub fn check(&self, limits: &Limits) -> Result<(), LockError> {
        limits.check_acquire(self.ttl, self.wait)?;
        if self.lock_delay > MAX_LOCK_DELAY {
            return Err(LockError::invalid_argument(
                "lock_delay_ms",
                format!("must be at most {} ms", MAX_LOCK_DELAY.as_millis()),
            ));
        }
        check_objects(self.objects.iter().map(|spec| &spec.object))?;
        if self
            .objects
            .iter()
            .any(|spec| spec.scope == LockScope::Subtree)
        {
            for (i, a) in self.objects.iter().enumerate() {
                for b in &self.objects[i + 1..] {
                    if path::overlaps(a.object.as_str(), a.scope, b.object.as_str(), b.scope) {
                        return Err(LockError::invalid_argument(
                            "objects",
                            format!(
                                "{} and {} overlap: one covers the other",
                                a.object, b.object
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Refuses an empty list of objects, more than [`MAX_OBJECTS_PER_REQUEST`], or a repeated
/// object, as [`LockError::InvalidArgument`] on `objects`: the rule for acquires and for
/// batched releases and renewals alike.
pub fn check_objects<'a>(
    objects: impl ExactSizeIterator<Item = &'a ObjectId>,
) -> Result<(), LockError> {
    let count = objects.len();
    if count == 0 || count > MAX_OBJECTS_PER_REQUEST {
        return Err(LockError::invalid_argument(
            "objects",
            format!("must name 1 to {MAX_OBJECTS_PER_REQUEST} objects, not {count}"),
        ));
    }
    if count > 1 {
        let mut seen = HashSet::with_capacity(count);
        for object in objects {
            if !seen.insert(object) {
                return Err(LockError::invalid_argument(
                    "objects",
                    format!("names {object} more than once"),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_may_not_cover_one_object_twice() {
        let limits = Limits::default();
        let owner = OwnerId::new("o").expect("valid");
        let ttl = Duration::from_secs(1);
        let rename = AcquireRequest::many(
            vec![
                LockSpec::subtree(object("/v/a"), LockMode::Exclusive),
                LockSpec::subtree(object("/v/b"), LockMode::Exclusive),
            ],
            owner.clone(),
            ttl,
        );
        assert!(rename.check(&limits).is_ok());
        let nested = AcquireRequest::many(
            vec![
                LockSpec::exclusive(object("/v/a/x")),
                LockSpec::subtree(object("/v/a"), LockMode::Shared),
            ],
            owner,
            ttl,
        );
        assert!(matches!(
            nested.check(&limits),
            Err(LockError::InvalidArgument {
                field: "objects",
                ..
            })
        ));
    }

    #[test]
    fn lock_delay_is_at_most_a_minute() {
        let limits = Limits::default();
        let at_most = request(&["a"]).with_lock_delay(MAX_LOCK_DELAY);
        assert!(at_most.check(&limits).is_ok());
        let above = request(&["a"]).with_lock_delay(MAX_LOCK_DELAY + Duration::from_millis(1));
        assert!(matches!(
            above.check(&limits),
            Err(LockError::InvalidArgument {
                field: "lock_delay_ms",
                ..
            })
        ));
    }

    fn object(name: &str) -> ObjectId {
        ObjectId::new(name).expect("valid")
    }

    fn request(names: &[&str]) -> AcquireRequest {
        AcquireRequest::many(
            names
                .iter()
                .map(|n| LockSpec::exclusive(object(n)))
                .collect(),
            OwnerId::new("o").expect("valid"),
            Duration::from_secs(1),
        )
    }

    #[test]
    fn a_request_names_one_to_sixty_four_distinct_objects() {
        let limits = Limits::default();
        assert!(request(&["a"]).check(&limits).is_ok());
        let names: Vec<String> = (0..64).map(|i| format!("o{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        assert!(request(&refs).check(&limits).is_ok());
        let names: Vec<String> = (0..65).map(|i| format!("o{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        assert!(matches!(
            request(&refs).check(&limits),
            Err(LockError::InvalidArgument {
                field: "objects",
                ..
            })
        ));
        assert!(matches!(
            request(&[]).check(&limits),
            Err(LockError::InvalidArgument {
                field: "objects",
                ..
            })
        ));
        assert!(matches!(
            request(&["a", "b", "a"]).check(&limits),
            Err(LockError::InvalidArgument {
                field: "objects",
                ..
            })
        ));
    }
}
