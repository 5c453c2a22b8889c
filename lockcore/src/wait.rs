//! Wake-ups for blocked acquires in this process, shared by every backend.
//!
//! Who goes first is decided by the store's queue (see [`crate::store`]), in the same atomic
//! step as the grant, so that it holds across processes. This module only makes a blocked
//! acquire try again when something may have changed: the store calls [`WaitQueue::wake`] when
//! a release, an expiry, a downgrade or a waiter leaving frees an object (from its own release
//! path, a Redis pub/sub message, a Postgres NOTIFY...), and [`crate::Locks`] also wakes itself
//! when the lease that blocked it is due to expire. Nothing polls at a fixed interval.
//!
//! A wake reaches only the waiters of this process that the store could grant next: in ticket
//! order, the first waiter of the object and, if it asks for a shared lock, every shared waiter
//! after it up to the first exclusive one. Every later waiter conflicts with one of those on
//! this very object, so it could not be granted anyway; it is woken when they go. This keeps a
//! release from costing one store round trip per waiter.
//!
//! With subtree locks ([`crate::path`]), what was freed on an object may also have blocked
//! waiters elsewhere in the tree: [`WaitQueue::wake`] also wakes every waiter for a subtree
//! of one of the object's ancestors, and [`WaitQueue::wake_subtree`] (for a freed subtree lock
//! or subtree queue entry) also wakes the waiters of every object under it, head groups first.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};
use tokio::sync::Notify;

use crate::id::ObjectId;
use crate::mode::{LockMode, LockScope};
use crate::path;
use crate::store::Ticket;

/// `Waiter::ticket` before the store has given one: such a waiter is woken by every wake.
const NO_TICKET: u64 = 0;

#[derive(Debug)]
struct Waiter {
    id: u64,
    /// The store's ticket, or [`NO_TICKET`].
    ticket: AtomicU64,
    notify: Notify,
}

impl Waiter {
    fn ticket(&self) -> u64 {
        self.ticket.load(Ordering::Acquire)
    }
}

/// One waiter's claim on one object.
type Entry = (Arc<Waiter>, LockMode, LockScope);

/// Per object, in id order (to find the objects under a subtree), its waiters and what each
/// asks for.
type Lines = BTreeMap<ObjectId, Vec<Entry>>;

/// The blocked acquires of this process, by the objects they wait for.
#[derive(Debug, Default)]
pub struct WaitQueue {
    waiters: Mutex<Lines>,
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

    /// Tells the waiters of `object` that the store could grant next that it may be free (see
    /// the [module docs](self)).
    ///
    /// Also wakes every waiter for the subtree of one of `object`'s ancestors, which what was
    /// freed may have blocked.
    pub fn wake(&self, object: &ObjectId) {
        if self.waiting.load(Ordering::Acquire) == 0 {
            return;
        }
        let waiters = self.lock();
        wake_ancestors(&waiters, object.as_str());
        if let Some(line) = waiters.get(object) {
            wake_head(line);
        }
    }

    /// [`WaitQueue::wake`] for a freed subtree lock (or subtree queue entry) on `object`: also
    /// wakes the head of the line of every object under it.
    pub fn wake_subtree(&self, object: &ObjectId) {
        if self.waiting.load(Ordering::Acquire) == 0 {
            return;
        }
        let waiters = self.lock();
        wake_ancestors(&waiters, object.as_str());
        if let Some(line) = waiters.get(object) {
            wake_head(line);
        }
        let (low, high) = path::subtree_range(object.as_str());
        let range = (
            Bound::Included(low.as_str()),
            Bound::Excluded(high.as_str()),
        );
        for line in waiters.range::<str, _>(range).map(|(_, line)| line) {
            wake_head(line);
        }
    }

    /// Tells every waiter to try again (after a reconnect, when release messages may have been
    /// missed).
    pub fn wake_all(&self) {
        for (waiter, _, _) in self.lock().values().flatten() {
            waiter.notify.notify_one();
        }
    }

    /// Registers a blocked acquire of `objects`, each in its mode and scope:
    /// [`Registration::woken`] returns once one of them is woken after this call (a wake
    /// between registering and awaiting is kept, not lost). Dropping the registration
    /// unregisters it.
    pub fn register(&self, objects: &[(ObjectId, LockMode, LockScope)]) -> Registration<'_> {
        let waiter = Arc::new(Waiter {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            ticket: AtomicU64::new(NO_TICKET),
            notify: Notify::new(),
        });
        let mut waiters = self.lock();
        for (object, mode, scope) in objects {
            waiters
                .entry(object.clone())
                .or_default()
                .push((waiter.clone(), *mode, *scope));
        }
        drop(waiters);
        self.waiting.fetch_add(1, Ordering::AcqRel);
        Registration {
            queue: self,
            objects: objects
                .iter()
                .map(|(object, _, _)| object.clone())
                .collect(),
            waiter,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Lines> {
        self.waiters.lock()
    }
}

/// Wakes every subtree waiter of an ancestor of `object`.
fn wake_ancestors(waiters: &Lines, object: &str) {
    for ancestor in path::ancestors(object) {
        let Some(line) = waiters.get(ancestor) else {
            continue;
        };
        for (waiter, _, scope) in line {
            if *scope == LockScope::Subtree {
                waiter.notify.notify_one();
            }
        }
    }
}

/// Wakes the waiters of one object's line that the store could grant next.
fn wake_head(line: &[Entry]) {
    {
        let mut by_ticket: Vec<&Entry> = line.iter().collect();
        by_ticket.sort_by_key(|(waiter, _, _)| waiter.ticket());
        let mut group = None;
        for (waiter, mode, _) in by_ticket {
            if waiter.ticket() == NO_TICKET {
                // Not refused yet: it attempts anyway; a kept wake costs one more attempt.
                waiter.notify.notify_one();
                continue;
            }
            match (group, mode) {
                (None, _) => group = Some(*mode),
                (Some(LockMode::Shared), LockMode::Shared) => {}
                _ => break,
            }
            waiter.notify.notify_one();
        }
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

    /// Records the ticket the store gave this acquire, which orders it among this process's
    /// waiters. Tickets are never 0.
    pub fn queued(&self, ticket: Ticket) {
        self.waiter.ticket.store(ticket.0, Ordering::Release);
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let mut waiters = self.queue.lock();
        for object in &self.objects {
            if let Some(line) = waiters.get_mut(object) {
                line.retain(|(w, _, _)| w.id != self.waiter.id);
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
    use LockMode::{Exclusive, Shared};
    use LockScope::{Object, Subtree};

    fn object(name: &str) -> ObjectId {
        ObjectId::new(name).expect("valid")
    }

    const SOON: Duration = Duration::from_millis(50);

    async fn was_woken(registration: &Registration<'_>) -> bool {
        tokio::time::timeout(SOON, registration.woken())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn a_wake_reaches_the_waiters_of_the_object_and_no_other() {
        let queue = WaitQueue::new();
        let a = queue.register(&[(object("a"), Exclusive, Object)]);
        let ab = queue.register(&[
            (object("a"), Shared, Object),
            (object("b"), Exclusive, Object),
        ]);
        let c = queue.register(&[(object("c"), Exclusive, Object)]);
        assert_eq!(queue.waiting(), 3);
        queue.wake(&object("a"));
        assert!(was_woken(&a).await);
        assert!(was_woken(&ab).await, "without tickets every waiter tries");
        assert!(!was_woken(&c).await);
        queue.wake(&object("b"));
        assert!(was_woken(&ab).await);
        drop((a, ab, c));
        assert_eq!(queue.waiting(), 0);
        assert!(
            queue.lock().is_empty(),
            "unregistering leaves nothing behind"
        );
    }

    #[tokio::test]
    async fn a_wake_reaches_the_first_exclusive_waiter_alone() {
        let queue = WaitQueue::new();
        let later = queue.register(&[(object("a"), Shared, Object)]);
        later.queued(Ticket(9));
        let first = queue.register(&[(object("a"), Exclusive, Object)]);
        first.queued(Ticket(4));
        queue.wake(&object("a"));
        assert!(was_woken(&first).await);
        assert!(
            !was_woken(&later).await,
            "it conflicts with the waiter ahead"
        );
        drop(first);
        queue.wake(&object("a"));
        assert!(was_woken(&later).await);
    }

    #[tokio::test]
    async fn a_wake_reaches_consecutive_shared_waiters_together() {
        let queue = WaitQueue::new();
        let tickets = [(3, Shared), (5, Shared), (6, Exclusive), (8, Shared)];
        let waiters: Vec<_> = tickets
            .iter()
            .map(|&(ticket, mode)| {
                let registration = queue.register(&[(object("a"), mode, Object)]);
                registration.queued(Ticket(ticket));
                registration
            })
            .collect();
        queue.wake(&object("a"));
        let mut woken = Vec::new();
        for waiter in &waiters {
            woken.push(was_woken(waiter).await);
        }
        assert_eq!(woken, [true, true, false, false]);
    }

    #[tokio::test]
    async fn a_wake_before_the_wait_is_not_lost() {
        let queue = WaitQueue::new();
        let waiter = queue.register(&[(object("a"), Exclusive, Object)]);
        queue.wake(&object("a"));
        assert!(was_woken(&waiter).await, "the wake was kept");
    }

    #[tokio::test]
    async fn a_freed_object_wakes_the_subtree_waiters_above_it() {
        let queue = WaitQueue::new();
        let above = queue.register(&[(object("/v"), Exclusive, Subtree)]);
        above.queued(Ticket(1));
        let object_above = queue.register(&[(object("/v/a"), Exclusive, Object)]);
        object_above.queued(Ticket(2));
        let beside = queue.register(&[(object("/w"), Exclusive, Subtree)]);
        beside.queued(Ticket(3));
        queue.wake(&object("/v/a/x"));
        assert!(was_woken(&above).await, "its subtree covers /v/a/x");
        assert!(
            !was_woken(&object_above).await,
            "/v/a alone does not cover /v/a/x"
        );
        assert!(!was_woken(&beside).await);
    }

    #[tokio::test]
    async fn a_freed_subtree_wakes_the_lines_under_it() {
        let queue = WaitQueue::new();
        let under = queue.register(&[(object("/v/a/x"), Exclusive, Object)]);
        under.queued(Ticket(1));
        let deeper = queue.register(&[(object("/v/a/x/y"), Shared, Object)]);
        deeper.queued(Ticket(2));
        let sibling = queue.register(&[(object("/v/ab"), Exclusive, Object)]);
        sibling.queued(Ticket(3));
        queue.wake(&object("/v/a"));
        assert!(
            !was_woken(&under).await,
            "an object lock on /v/a blocked nothing under it"
        );
        queue.wake_subtree(&object("/v/a"));
        assert!(was_woken(&under).await);
        assert!(was_woken(&deeper).await);
        assert!(!was_woken(&sibling).await, "/v/ab is not under /v/a");
    }

    #[tokio::test]
    async fn wake_all_reaches_everyone() {
        let queue = WaitQueue::new();
        let a = queue.register(&[(object("a"), Exclusive, Object)]);
        a.queued(Ticket(1));
        let b = queue.register(&[(object("a"), Exclusive, Object)]);
        b.queued(Ticket(2));
        queue.wake_all();
        assert!(was_woken(&a).await);
        assert!(was_woken(&b).await);
    }
}
