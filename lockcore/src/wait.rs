//! Wake-ups for blocked acquires in this process, shared by every backend.
//!
//! Who goes first is decided by the store's queue (see [`crate::store`]), in the same atomic
//! step as the grant, so that it holds across processes. This module only makes a blocked
//! acquire try again when something may have changed: the store calls [`WaitQueue::wake`] when
//! a release, an expiry, a downgrade or a waiter leaving frees an object (from its own release
//! path, a Redis pub/sub message, a Postgres NOTIFY...), and [`crate::Locks`] also wakes itself
//! when the lease that blocked it is due to expire. Nothing polls at a fixed interval.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};
use tokio::sync::Notify;

use crate::id::ObjectId;

#[derive(Debug)]
struct Waiter {
    id: u64,
    notify: Notify,
}

/// The blocked acquires of this process, by the objects they wait for.
#[derive(Debug, Default)]
pub struct WaitQueue {
    waiters: Mutex<HashMap<ObjectId, Vec<Arc<Waiter>>>>,
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

    /// Tells every acquire waiting for `object` that it may be free.
    ///
    /// Every one of them tries again: shared waiters at the head of the store's queue are
    /// granted together, and the others learn their new place.
    pub fn wake(&self, object: &ObjectId) {
        if self.waiting.load(Ordering::Acquire) == 0 {
            return;
        }
        if let Some(line) = self.lock().get(object) {
            for waiter in line {
                waiter.notify.notify_one();
            }
        }
    }

    /// Tells every waiter to try again (after a reconnect, when release messages may have been
    /// missed).
    pub fn wake_all(&self) {
        for waiter in self.lock().values().flatten() {
            waiter.notify.notify_one();
        }
    }

    /// Registers a blocked acquire of `objects`: [`Registration::woken`] returns once any of
    /// them is woken after this call (a wake between registering and awaiting is kept, not
    /// lost). Dropping the registration unregisters it.
    pub fn register(&self, objects: &[ObjectId]) -> Registration<'_> {
        let waiter = Arc::new(Waiter {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            notify: Notify::new(),
        });
        let mut waiters = self.lock();
        for object in objects {
            waiters
                .entry(object.clone())
                .or_default()
                .push(waiter.clone());
        }
        drop(waiters);
        self.waiting.fetch_add(1, Ordering::AcqRel);
        Registration {
            queue: self,
            objects: objects.to_vec(),
            waiter,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<ObjectId, Vec<Arc<Waiter>>>> {
        self.waiters.lock()
    }
}

/// One blocked acquire's interest in its objects; see [`WaitQueue::register`].
#[derive(Debug)]
pub struct Registration<'a> {
    queue: &'a WaitQueue,
    objects: Vec<ObjectId>,
    waiter: Arc<Waiter>,
}

impl Registration<'_> {
    /// Returns once one of the registered objects was woken since the last return.
    pub async fn woken(&self) {
        self.waiter.notify.notified().await;
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let mut waiters = self.queue.lock();
        for object in &self.objects {
            if let Some(line) = waiters.get_mut(object) {
                line.retain(|w| w.id != self.waiter.id);
                if line.is_empty() {
                    waiters.remove(object);
                }
            }
        }
        drop(waiters);
        self.queue.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn object(name: &str) -> ObjectId {
        ObjectId::new(name).expect("valid")
    }

    #[tokio::test]
    async fn a_wake_reaches_every_waiter_of_the_object_and_no_other() {
        let queue = WaitQueue::new();
        let a = queue.register(&[object("a")]);
        let ab = queue.register(&[object("a"), object("b")]);
        let c = queue.register(&[object("c")]);
        assert_eq!(queue.waiting(), 3);
        queue.wake(&object("a"));
        let soon = Duration::from_millis(50);
        assert!(tokio::time::timeout(soon, a.woken()).await.is_ok());
        assert!(tokio::time::timeout(soon, ab.woken()).await.is_ok());
        assert!(tokio::time::timeout(soon, c.woken()).await.is_err());
        queue.wake(&object("b"));
        assert!(tokio::time::timeout(soon, ab.woken()).await.is_ok());
        drop((a, ab, c));
        assert_eq!(queue.waiting(), 0);
        assert!(
            queue.lock().is_empty(),
            "unregistering leaves nothing behind"
        );
    }

    #[tokio::test]
    async fn a_wake_before_the_wait_is_not_lost() {
        let queue = WaitQueue::new();
        let waiter = queue.register(&[object("a")]);
        queue.wake(&object("a"));
        tokio::time::timeout(Duration::from_millis(50), waiter.woken())
            .await
            .expect("the wake was kept");
    }

    #[tokio::test]
    async fn wake_all_reaches_everyone() {
        let queue = WaitQueue::new();
        let a = queue.register(&[object("a")]);
        let b = queue.register(&[object("b")]);
        queue.wake_all();
        let soon = Duration::from_millis(50);
        assert!(tokio::time::timeout(soon, a.woken()).await.is_ok());
        assert!(tokio::time::timeout(soon, b.woken()).await.is_ok());
    }
}
