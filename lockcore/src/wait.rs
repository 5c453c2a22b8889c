//! First-come first-served waiting for blocking acquires, shared by every backend.
//!
//! A backend's blocking acquire is a loop of single attempts. [`WaitQueue::acquire`] runs that
//! loop so that, within one process, waiters on one object attempt in arrival order, and only
//! when something may have changed: the backend calls [`WaitQueue::wake`] when a release or an
//! expiry frees an object (from its own release path, a Redis pub/sub message, a Postgres
//! NOTIFY...), and the head waiter also wakes itself when the current holder's lease is due to
//! expire. Nothing polls at a fixed interval.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::error::{LockError, LockResult};
use crate::id::ObjectId;
use crate::lease::Lease;

/// Slack added to a holder's remaining TTL before the head waiter tries again, so that the
/// attempt lands after the backend's clock has expired the lease.
const EXPIRY_SLACK: Duration = Duration::from_millis(1);

#[derive(Debug)]
struct Waiter {
    id: u64,
    notify: Notify,
}

/// Per-object FIFO queues of blocked acquires in this process.
#[derive(Debug, Default)]
pub struct WaitQueue {
    queues: Mutex<HashMap<ObjectId, VecDeque<Arc<Waiter>>>>,
    next_id: AtomicU64,
    waiting: AtomicUsize,
}

impl WaitQueue {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many acquires are blocked right now (for metrics).
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Tells the first waiter on `object`, if any, that the object may be free.
    pub fn wake(&self, object: &ObjectId) {
        if self.waiting.load(Ordering::Acquire) == 0 {
            return;
        }
        let queues = self.lock();
        if let Some(head) = queues.get(object).and_then(VecDeque::front) {
            head.notify.notify_one();
        }
    }

    /// Tells the first waiter on every object to try again (after a reconnect, when release
    /// messages may have been missed).
    pub fn wake_all(&self) {
        let queues = self.lock();
        for head in queues.values().filter_map(VecDeque::front) {
            head.notify.notify_one();
        }
    }

    /// Runs `attempt` until it grants, fails with anything but `Locked`, or `wait` elapses.
    ///
    /// With `wait` zero this is a single attempt. Otherwise the caller joins the back of the
    /// object's queue and attempts only while at its head: when woken by [`WaitQueue::wake`], or
    /// when the holder's lease (the `retry_after` of the last `Locked`) runs out. When the wait
    /// elapses it leaves the queue, without holding up the waiters behind it, and returns the
    /// last `Locked` error.
    pub async fn acquire<F, Fut>(
        &self,
        object: &ObjectId,
        wait: Duration,
        mut attempt: F,
    ) -> LockResult<Lease>
    where
        F: FnMut() -> Fut + Send,
        Fut: Future<Output = LockResult<Lease>> + Send,
    {
        if wait.is_zero() {
            return attempt().await;
        }
        let deadline = Instant::now() + wait;
        let ticket = self.enqueue(object);
        loop {
            let mut retry_at = deadline;
            let is_head = ticket.is_head();
            if is_head || Instant::now() >= deadline {
                match attempt().await {
                    Ok(lease) => return Ok(lease),
                    Err(LockError::Locked { retry_after, .. }) if Instant::now() < deadline => {
                        retry_at = deadline.min(Instant::now() + retry_after + EXPIRY_SLACK);
                    }
                    Err(other) => return Err(other),
                }
            }
            tokio::select! {
                _ = ticket.waiter.notify.notified() => {}
                _ = tokio::time::sleep_until(retry_at) => {}
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<ObjectId, VecDeque<Arc<Waiter>>>> {
        self.queues.lock()
    }

    fn enqueue(&self, object: &ObjectId) -> Ticket<'_> {
        let waiter = Arc::new(Waiter {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            notify: Notify::new(),
        });
        self.lock()
            .entry(object.clone())
            .or_default()
            .push_back(waiter.clone());
        self.waiting.fetch_add(1, Ordering::AcqRel);
        Ticket {
            queue: self,
            object: object.clone(),
            waiter,
        }
    }
}

/// A place in one object's queue; leaving (drop) hands the turn to the next waiter.
struct Ticket<'a> {
    queue: &'a WaitQueue,
    object: ObjectId,
    waiter: Arc<Waiter>,
}

impl Ticket<'_> {
    fn is_head(&self) -> bool {
        self.queue
            .lock()
            .get(&self.object)
            .and_then(VecDeque::front)
            .is_some_and(|head| head.id == self.waiter.id)
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let mut queues = self.queue.lock();
        if let Some(line) = queues.get_mut(&self.object) {
            let was_head = line.front().is_some_and(|w| w.id == self.waiter.id);
            line.retain(|w| w.id != self.waiter.id);
            match line.front() {
                None => {
                    queues.remove(&self.object);
                }
                // The next waiter becomes head and looks now. If this ticket was granted, its
                // attempt is refused, but that tells it when the new lease expires, so it wakes
                // at that expiry even if no release ever comes (a crashed holder on a backend
                // that does not announce expiries).
                Some(next) if was_head => next.notify.notify_one(),
                Some(_) => {}
            }
        }
        self.queue.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fence::Fence;
    use crate::id::OwnerId;
    use crate::token::TokenIssuer;
    use std::sync::atomic::AtomicBool;

    fn lease(object: &ObjectId) -> Lease {
        let issuer = TokenIssuer::random();
        let owner = OwnerId::new("o").expect("valid");
        Lease {
            object: object.clone(),
            owner: owner.clone(),
            token: issuer.seal(issuer.prepare(), object, Fence(1)),
            fence: Fence(1),
            ttl: Duration::from_secs(1),
        }
    }

    fn locked(object: &ObjectId) -> LockError {
        LockError::Locked {
            object: object.clone(),
            holder: OwnerId::new("h").expect("valid"),
            retry_after: Duration::from_secs(3600),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_gives_up_with_locked_when_its_wait_elapses() {
        let queue = WaitQueue::new();
        let object = ObjectId::new("x").expect("valid");
        let result = queue
            .acquire(&object, Duration::from_millis(50), || async {
                Err(locked(&object))
            })
            .await;
        assert!(matches!(result, Err(LockError::Locked { .. })));
        assert_eq!(queue.waiting(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_next_waiter_wakes_at_the_granted_lease_expiry_without_any_release() {
        // The backend never announces expiries: only the expiry timer can wake the second
        // waiter once the first waiter's lease runs out.
        let queue = Arc::new(WaitQueue::new());
        let object = ObjectId::new("x").expect("valid");
        let held_until = Arc::new(Mutex::new(Instant::now() + Duration::from_millis(100)));
        let attempt = |queue: Arc<WaitQueue>, held_until: Arc<Mutex<Instant>>, object: ObjectId| async move {
            queue
                .acquire(&object, Duration::from_secs(60), || {
                    let (held_until, object) = (held_until.clone(), object.clone());
                    async move {
                        let mut until = held_until.lock();
                        let now = Instant::now();
                        if now >= *until {
                            *until = now + Duration::from_secs(1);
                            Ok(lease(&object))
                        } else {
                            Err(LockError::Locked {
                                object: object.clone(),
                                holder: OwnerId::new("h").expect("valid"),
                                retry_after: *until - now,
                            })
                        }
                    }
                })
                .await
        };
        let started = Instant::now();
        let first = tokio::spawn(attempt(queue.clone(), held_until.clone(), object.clone()));
        tokio::time::sleep(Duration::from_millis(10)).await;
        let second = tokio::spawn(attempt(queue.clone(), held_until.clone(), object.clone()));
        assert!(first.await.expect("task").is_ok());
        assert!(second.await.expect("task").is_ok());
        // First granted at ~100 ms, its lease runs 1 s: the second is granted at ~1.1 s, not at
        // the end of its 60 s wait.
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_wake_makes_the_head_try_again() {
        let queue = Arc::new(WaitQueue::new());
        let object = ObjectId::new("x").expect("valid");
        let free = Arc::new(AtomicBool::new(false));
        let task = {
            let (queue, object, free) = (queue.clone(), object.clone(), free.clone());
            tokio::spawn(async move {
                queue
                    .acquire(&object, Duration::from_secs(10), || {
                        let (free, object) = (free.clone(), object.clone());
                        async move {
                            if free.load(Ordering::SeqCst) {
                                Ok(lease(&object))
                            } else {
                                Err(locked(&object))
                            }
                        }
                    })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        free.store(true, Ordering::SeqCst);
        queue.wake(&object);
        let granted = tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .expect("woken promptly")
            .expect("task");
        assert!(granted.is_ok());
    }
}
