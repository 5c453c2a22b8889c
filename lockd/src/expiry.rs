//! Expiry events on every backend: the server remembers the leases it granted and, when one's
//! deadline passes without a release or renew through this process, asks the backend
//! (`inspect`) whether it really ended.
//!
//! What an `expiry` event means: a lease granted by this lockd process is no longer held, and
//! this process saw no release of it. On `memory://` that is exactly an expiry. With several
//! lockd processes sharing Redis or Postgres, a lease granted here but released or renewed
//! through another process is still followed here: a renew is noticed (the backend still shows
//! the same fence, so the check is rescheduled), a release elsewhere is reported as an expiry.
//! Leases granted by other processes produce no events here.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use lockcore::{Fence, Lease, LockService, ObjectId, OwnerId};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::events::{EventKind, EventLog, NewEvent};
use crate::metrics::Metrics;

/// Slack after a deadline before the backend is asked, so its clock has expired the lease.
const SLACK: Duration = Duration::from_millis(5);
/// Delay before asking again when the backend did not answer.
const RETRY: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Tracked {
    owner: OwnerId,
    fence: Fence,
    generation: u64,
}

#[derive(Debug, Default)]
struct State {
    leases: HashMap<ObjectId, Tracked>,
    due: BinaryHeap<Reverse<(Instant, u64, ObjectId)>>,
    next_generation: u64,
}

/// The leases this process granted, by deadline.
#[derive(Debug)]
pub(crate) struct ExpiryTracker {
    state: Mutex<State>,
    changed: Notify,
    events: Arc<EventLog>,
    metrics: Arc<Metrics>,
}

impl ExpiryTracker {
    pub(crate) fn new(events: Arc<EventLog>, metrics: Arc<Metrics>) -> Self {
        Self {
            state: Mutex::new(State::default()),
            changed: Notify::new(),
            events,
            metrics,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every update leaves the maps consistent, so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn schedule(state: &mut State, object: ObjectId, owner: OwnerId, fence: Fence, ttl: Duration) {
        state.next_generation += 1;
        let generation = state.next_generation;
        state.due.push(Reverse((
            Instant::now() + ttl + SLACK,
            generation,
            object.clone(),
        )));
        state.leases.insert(
            object,
            Tracked {
                owner,
                fence,
                generation,
            },
        );
    }

    fn expired(&self, object: ObjectId, tracked: Tracked) {
        self.events.record(NewEvent {
            kind: EventKind::Expiry,
            object,
            owner: Some(tracked.owner),
            fence: tracked.fence,
            reason: None,
        });
        self.metrics.event();
    }

    /// A lease was granted. A lease this process still tracked on the same object has ended
    /// without a release seen here: it is reported as expired first.
    pub(crate) fn granted(&self, lease: &Lease) {
        let previous = {
            let mut state = self.state();
            let previous = state.leases.remove(&lease.object);
            Self::schedule(
                &mut state,
                lease.object.clone(),
                lease.owner.clone(),
                lease.fence,
                lease.ttl,
            );
            self.metrics.set_locks_held(state.leases.len());
            previous
        };
        if let Some(previous) = previous.filter(|p| p.fence != lease.fence) {
            self.expired(lease.object.clone(), previous);
        }
        self.changed.notify_one();
    }

    /// A lease was renewed: its deadline moves.
    pub(crate) fn renewed(&self, lease: &Lease) {
        let mut state = self.state();
        Self::schedule(
            &mut state,
            lease.object.clone(),
            lease.owner.clone(),
            lease.fence,
            lease.ttl,
        );
        self.metrics.set_locks_held(state.leases.len());
        drop(state);
        self.changed.notify_one();
    }

    /// A lease was released: it is forgotten. Returns its owner if it was tracked.
    pub(crate) fn released(&self, object: &ObjectId, fence: Fence) -> Option<OwnerId> {
        let mut state = self.state();
        let owner = match state.leases.get(object) {
            Some(t) if t.fence == fence => state.leases.remove(object).map(|t| t.owner),
            _ => None,
        };
        self.metrics.set_locks_held(state.leases.len());
        owner
    }

    /// Takes the entries whose deadline has passed and are still current, or returns how long
    /// to sleep until the next one.
    fn take_due(&self) -> Result<Vec<(ObjectId, u64, Fence)>, Option<Instant>> {
        let mut state = self.state();
        let now = Instant::now();
        let mut due = Vec::new();
        while let Some(Reverse((deadline, generation, _))) = state.due.peek() {
            if *deadline > now {
                break;
            }
            let generation = *generation;
            let Some(Reverse((_, _, object))) = state.due.pop() else {
                break;
            };
            if let Some(t) = state.leases.get(&object) {
                if t.generation == generation {
                    due.push((object, generation, t.fence));
                }
            }
        }
        if due.is_empty() {
            Err(state.due.peek().map(|Reverse((d, _, _))| *d))
        } else {
            Ok(due)
        }
    }

    async fn check(
        &self,
        service: &dyn LockService,
        object: ObjectId,
        generation: u64,
        fence: Fence,
    ) {
        let outcome = service.inspect(&object).await;
        let mut state = self.state();
        let current = matches!(state.leases.get(&object), Some(t) if t.generation == generation);
        if !current {
            return;
        }
        let retry_in = match outcome {
            Ok(Some(info)) if info.fence == fence => Some(info.ttl),
            Ok(_) => None,
            Err(e) => {
                tracing::debug!(object = %object, error = %e, "expiry check failed; retrying");
                Some(RETRY)
            }
        };
        match retry_in {
            Some(delay) => {
                state.due.push(Reverse((
                    Instant::now() + delay + SLACK,
                    generation,
                    object,
                )));
            }
            None => {
                let tracked = state.leases.remove(&object);
                self.metrics.set_locks_held(state.leases.len());
                drop(state);
                if let Some(tracked) = tracked {
                    self.expired(object, tracked);
                }
            }
        }
    }

    /// Runs until the task is aborted: waits for deadlines and checks them.
    pub(crate) async fn run(self: Arc<Self>, service: Arc<dyn LockService>) {
        loop {
            match self.take_due() {
                Ok(due) => {
                    for (object, generation, fence) in due {
                        self.check(service.as_ref(), object, generation, fence)
                            .await;
                    }
                }
                Err(Some(next)) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(next) => {}
                        () = self.changed.notified() => {}
                    }
                }
                Err(None) => self.changed.notified().await,
            }
        }
    }
}
