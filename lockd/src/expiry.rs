//! Expiry events on every backend: the server remembers the leases it granted and, when one's
//! deadline passes without a release or renew through this process, asks the backend
//! (`inspect`) whether it really ended.
//!
//! What an `expiry` event means: a lease granted by this lockd process is no longer held, and
//! this process saw no release of it. On `memory://` that is exactly an expiry. With several
//! lockd processes sharing Redis or Postgres, a lease granted here but renewed through another
//! process is noticed (the backend still shows the same fence, so the check is rescheduled); one
//! released through another process is reported as an expiry. Leases granted by other processes
//! produce no events here.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};
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

/// One grant: an object and the fence it was granted with.
type Grant = (ObjectId, Fence);

#[derive(Debug)]
struct Tracked {
    owner: OwnerId,
    /// Bumped on every renew, so stale heap entries are recognised.
    generation: u64,
}

#[derive(Debug, Default)]
struct State {
    leases: HashMap<Grant, Tracked>,
    due: BinaryHeap<Reverse<(Instant, u64, Grant)>>,
    next_generation: u64,
}

impl State {
    fn schedule(&mut self, grant: Grant, owner: OwnerId, after: Duration) {
        self.next_generation += 1;
        let generation = self.next_generation;
        self.due.push(Reverse((
            Instant::now() + after + SLACK,
            generation,
            grant.clone(),
        )));
        self.leases.insert(grant, Tracked { owner, generation });
    }
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
        self.state.lock()
    }

    /// A lease was granted or renewed: (re)schedule its check.
    fn track(&self, lease: &Lease) {
        let mut state = self.state();
        state.schedule(
            (lease.object.clone(), lease.fence),
            lease.owner.clone(),
            lease.ttl,
        );
        self.metrics.set_locks_held(state.leases.len());
        drop(state);
        self.changed.notify_one();
    }

    /// A lease was granted.
    pub(crate) fn granted(&self, lease: &Lease) {
        self.track(lease);
    }

    /// A lease was renewed: its deadline moves.
    pub(crate) fn renewed(&self, lease: &Lease) {
        self.track(lease);
    }

    /// A lease was released: it is forgotten. Returns its owner if this process granted it.
    pub(crate) fn released(&self, object: &ObjectId, fence: Fence) -> Option<OwnerId> {
        let mut state = self.state();
        let owner = state
            .leases
            .remove(&(object.clone(), fence))
            .map(|t| t.owner);
        self.metrics.set_locks_held(state.leases.len());
        owner
    }

    /// Takes the grants whose deadline has passed and are still current, or returns when the
    /// next one is due.
    fn take_due(&self) -> Result<Vec<(Grant, u64)>, Option<Instant>> {
        let mut state = self.state();
        let now = Instant::now();
        let mut due = Vec::new();
        while state
            .due
            .peek()
            .is_some_and(|Reverse((deadline, _, _))| *deadline <= now)
        {
            let Some(Reverse((_, generation, grant))) = state.due.pop() else {
                break;
            };
            if state
                .leases
                .get(&grant)
                .is_some_and(|t| t.generation == generation)
            {
                due.push((grant, generation));
            }
        }
        if due.is_empty() {
            Err(state.due.peek().map(|Reverse((d, _, _))| *d))
        } else {
            Ok(due)
        }
    }

    async fn check(&self, service: &dyn LockService, grant: Grant, generation: u64) {
        let outcome = service.inspect(&grant.0).await;
        let mut state = self.state();
        let current = state
            .leases
            .get(&grant)
            .is_some_and(|t| t.generation == generation);
        if !current {
            return; // released or renewed meanwhile
        }
        let retry_in = match outcome {
            Ok(Some(info)) if info.fence == grant.1 => Some(info.ttl),
            Ok(_) => None,
            Err(e) => {
                tracing::debug!(object = %grant.0, error = %e, "expiry check failed; retrying");
                Some(RETRY)
            }
        };
        match retry_in {
            Some(delay) => {
                state
                    .due
                    .push(Reverse((Instant::now() + delay + SLACK, generation, grant)));
            }
            None => {
                let tracked = state.leases.remove(&grant);
                self.metrics.set_locks_held(state.leases.len());
                drop(state);
                if let Some(tracked) = tracked {
                    let (object, fence) = grant;
                    self.events.record(NewEvent {
                        kind: EventKind::Expiry,
                        object,
                        owner: Some(tracked.owner),
                        fence,
                        reason: None,
                    });
                    self.metrics.event();
                }
            }
        }
    }

    /// Runs until the task is aborted: waits for deadlines and checks them.
    pub(crate) async fn run(self: Arc<Self>, service: Arc<dyn LockService>) {
        loop {
            match self.take_due() {
                Ok(due) => {
                    for (grant, generation) in due {
                        self.check(service.as_ref(), grant, generation).await;
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

#[cfg(test)]
mod tests {
    use super::*;
    use lockcore::{Limits, TokenIssuer};

    fn lease(
        issuer: &TokenIssuer,
        object: &ObjectId,
        owner: &str,
        fence: u64,
        ttl_ms: u64,
    ) -> Lease {
        let owner = OwnerId::new(owner).expect("valid");
        Lease {
            token: issuer.seal(issuer.prepare(), object, Fence(fence)),
            object: object.clone(),
            owner,
            fence: Fence(fence),
            ttl: Duration::from_millis(ttl_ms),
        }
    }

    fn tracker() -> (Arc<ExpiryTracker>, Arc<EventLog>) {
        let events = Arc::new(EventLog::new(100));
        let tracker = Arc::new(ExpiryTracker::new(events.clone(), Arc::new(Metrics::new())));
        (tracker, events)
    }

    #[test]
    fn a_release_seen_after_the_next_grant_is_still_a_release_not_an_expiry() {
        let (tracker, events) = tracker();
        let issuer = TokenIssuer::random();
        let object = ObjectId::new("race").expect("valid");
        tracker.granted(&lease(&issuer, &object, "alice", 1, 60_000));
        // A waiter is granted before the releasing handler reports its release.
        tracker.granted(&lease(&issuer, &object, "bob", 2, 60_000));
        let owner = tracker.released(&object, Fence(1));
        assert_eq!(owner.map(|o| o.to_string()), Some("alice".to_owned()));
        assert!(events.since(0, 100).is_empty(), "no expiry was made up");
    }

    #[cfg(feature = "memory")]
    #[tokio::test]
    async fn an_unreleased_lease_is_reported_expired_once_the_backend_no_longer_has_it() {
        let (tracker, events) = tracker();
        let issuer = TokenIssuer::random();
        let config = backend_memory::MemoryConfig::new(Limits::default());
        let service: Arc<dyn LockService> = Arc::new(backend_memory::MemoryLockService::new(
            config,
            issuer.clone(),
        ));
        let object = ObjectId::new("short").expect("valid");
        let owner = OwnerId::new("alice").expect("valid");
        let granted = service
            .acquire(&object, &owner, Duration::from_millis(50), Duration::ZERO)
            .await
            .expect("granted");
        tracker.granted(&granted);
        let runner = tokio::spawn(tracker.clone().run(service));
        let deadline = Instant::now() + Duration::from_secs(5);
        while events.since(0, 10).is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        runner.abort();
        let log = events.since(0, 10);
        assert_eq!(log.len(), 1, "{log:?}");
        assert_eq!(log[0].kind, EventKind::Expiry);
        assert_eq!(log[0].fence, Some(granted.fence.get()));
        assert_eq!(log[0].owner.as_deref(), Some("alice"));
    }
}
