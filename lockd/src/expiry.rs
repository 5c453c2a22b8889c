//! Expiry events on every backend, and the end of leases in general.
//!
//! A backend that times its own leases (`memory://`) reports every release and expiry through
//! [`LockService::report_lease_ends`]; the tracker then only turns those reports into events and
//! keeps a count, and holds nothing per lease (but the hold-time clock's hash and instant, see
//! below). For the others, the server remembers the leases it
//! granted and, when one's deadline passes without a release or renew through this process, asks
//! the backend (`inspect`) whether it really ended.
//!
//! What an `expiry` event means: a lease granted by this lockd process is no longer held, and
//! this process saw no release of it. On `memory://` that is exactly an expiry. With several
//! lockd processes sharing Redis or Postgres, a lease granted here but renewed through another
//! process is noticed (the backend still shows the same fence, so the check is rescheduled); one
//! released through another process is reported as an expiry. Leases granted by other processes
//! produce no events here.
//!
//! Leases are keyed by object and fence: every grant has its own fence, so the shared holders
//! of one object are separate leases, each checked, renewed, released and expired on its own.
//! The check asks whether the object still has a holder with the lease's fence, not whether
//! the lease is the object's newest (another reader may have joined since).
//!
//! It also times each lease for `lockd_hold_seconds` ([`Metrics::lease_started`] at the grant,
//! [`Metrics::lease_ended`] at the release or expiry), on either path.
//!
//! Memory: one map entry per lease this process granted, and at most one heap entry per lease
//! plus stale entries of released leases, which are dropped once they outnumber the live ones.
//! A renew moves the lease's deadline in place; the heap entry is re-armed when it comes due.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};
use std::time::Duration;

use lockcore::{Fence, Lease, LeaseEnd, LockMode, LockService, ObjectId, OwnerId};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::events::{EventKind, EventLog, NewEvent};
use crate::metrics::Metrics;

/// Slack after a deadline before the backend is asked, so its clock has expired the lease.
const SLACK: Duration = Duration::from_millis(5);
/// Delay before asking again when the backend did not answer.
const RETRY: Duration = Duration::from_secs(1);
/// Stale heap entries tolerated beyond the live ones before the heap is rebuilt.
const STALE_SLACK: usize = 1024;

/// One grant: an object and the fence it was granted with.
type Grant = (ObjectId, Fence);

#[derive(Debug)]
struct Tracked {
    owner: OwnerId,
    mode: LockMode,
    /// When the lease's check is due (its expiry plus [`SLACK`]).
    deadline: Instant,
    /// The deadline of this lease's entry in the heap; earlier than `deadline` after a renew.
    scheduled: Instant,
    /// Names this lease's current heap entry, so stale entries are recognised.
    generation: u64,
}

#[derive(Debug, Default)]
struct State {
    leases: HashMap<Grant, Tracked>,
    due: BinaryHeap<Reverse<(Instant, u64, Grant)>>,
    next_generation: u64,
}

impl State {
    /// Tracks a grant (or a renew of a lease granted elsewhere) due `after` from now.
    fn schedule(&mut self, grant: Grant, owner: OwnerId, mode: LockMode, after: Duration) {
        let deadline = Instant::now() + after + SLACK;
        if let Some(tracked) = self.leases.get_mut(&grant) {
            tracked.deadline = deadline;
            // A downgrade keeps the lease (and its fence) and changes its mode.
            tracked.mode = mode;
            if deadline >= tracked.scheduled {
                // Its heap entry re-arms itself when it comes due: nothing is pushed, so the
                // heap does not grow with the renew rate.
                return;
            }
        }
        self.next_generation += 1;
        let generation = self.next_generation;
        self.due
            .push(Reverse((deadline, generation, grant.clone())));
        self.leases.insert(
            grant,
            Tracked {
                owner,
                mode,
                deadline,
                scheduled: deadline,
                generation,
            },
        );
        self.compact_if_stale();
    }

    /// Rebuilds the heap from the live leases once released leases' entries outnumber them.
    fn compact_if_stale(&mut self) {
        if self.due.len() <= 2 * self.leases.len() + STALE_SLACK {
            return;
        }
        self.due = self
            .leases
            .iter()
            .map(|(grant, t)| Reverse((t.scheduled, t.generation, grant.clone())))
            .collect();
    }
}

/// The end of leases: events for releases and expiries, and the `locks_held` gauge.
#[derive(Debug)]
pub(crate) struct ExpiryTracker {
    /// Whether the backend reports lease ends itself (then `state` stays empty).
    reported: AtomicBool,
    /// Leases granted and not yet reported ended, when the backend reports.
    reported_held: AtomicI64,
    state: Mutex<State>,
    changed: Notify,
    events: Arc<EventLog>,
    metrics: Arc<Metrics>,
}

impl ExpiryTracker {
    pub(crate) fn new(events: Arc<EventLog>, metrics: Arc<Metrics>) -> Self {
        Self {
            reported: AtomicBool::new(false),
            reported_held: AtomicI64::new(0),
            state: Mutex::new(State::default()),
            changed: Notify::new(),
            events,
            metrics,
        }
    }

    /// Asks `service` to report lease ends; from then on nothing is kept per lease. Returns
    /// whether the backend does.
    pub(crate) fn use_reports_of(self: &Arc<Self>, service: &dyn LockService) -> bool {
        let tracker = Arc::clone(self);
        let reported = service.report_lease_ends(Arc::new(move |end| tracker.ended(end)));
        self.reported.store(reported, Ordering::Release);
        reported
    }

    fn is_reported(&self) -> bool {
        self.reported.load(Ordering::Acquire)
    }

    /// A lease end reported by the backend. [`LeaseEnd`] does not say the lease's mode, so
    /// these events carry none.
    fn ended(&self, end: LeaseEnd) {
        let held = self.reported_held.fetch_sub(1, Ordering::AcqRel) - 1;
        self.metrics
            .set_locks_held(usize::try_from(held).unwrap_or(0));
        self.metrics.lease_ended(&end.object, end.fence);
        self.record(NewEvent {
            kind: if end.expired {
                EventKind::Expiry
            } else {
                EventKind::Release
            },
            object: end.object,
            owner: Some(end.owner),
            mode: Some(end.mode),
            fence: end.fence,
            reason: None,
        });
    }

    fn record(&self, event: NewEvent) {
        self.events.record(event);
        self.metrics.event();
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
            lease.mode,
            lease.ttl,
        );
        self.metrics.set_locks_held(state.leases.len());
        drop(state);
        self.changed.notify_one();
    }

    /// A lease was granted.
    pub(crate) fn granted(&self, lease: &Lease) {
        self.metrics.lease_started(&lease.object, lease.fence);
        if self.is_reported() {
            let held = self.reported_held.fetch_add(1, Ordering::AcqRel) + 1;
            self.metrics
                .set_locks_held(usize::try_from(held).unwrap_or(0));
        } else {
            self.track(lease);
        }
    }

    /// A lease was renewed (or downgraded): its deadline (or mode) moves.
    pub(crate) fn renewed(&self, lease: &Lease) {
        if !self.is_reported() {
            self.track(lease);
        }
    }

    /// A lease was released through this process: records the release event (the backend
    /// already did when it reports lease ends) and forgets the lease.
    pub(crate) fn released(&self, object: &ObjectId, fence: Fence) {
        if self.is_reported() {
            return;
        }
        let mut state = self.state();
        let tracked = state.leases.remove(&(object.clone(), fence));
        self.metrics.set_locks_held(state.leases.len());
        drop(state);
        self.metrics.lease_ended(object, fence);
        self.record(NewEvent {
            kind: EventKind::Release,
            object: object.clone(),
            owner: tracked.as_ref().map(|t| t.owner.clone()),
            mode: tracked.map(|t| t.mode),
            fence,
            reason: None,
        });
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
            let Some(tracked) = state
                .leases
                .get_mut(&grant)
                .filter(|t| t.generation == generation)
            else {
                continue; // released, or rescheduled earlier
            };
            if tracked.deadline > now {
                // Renewed since it was scheduled: wait for the new deadline.
                tracked.scheduled = tracked.deadline;
                let deadline = tracked.deadline;
                state.due.push(Reverse((deadline, generation, grant)));
            } else {
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
        let Some(tracked) = state
            .leases
            .get_mut(&grant)
            .filter(|t| t.generation == generation)
        else {
            return; // released or rescheduled meanwhile
        };
        let retry_in = match outcome {
            // Still held: this lease is one of the holders (shared holders are several). Its
            // mode is the object's, which a downgrade through another process may have changed.
            Ok(Some(info)) => {
                let held = info.holders.iter().find(|holder| holder.fence == grant.1);
                if held.is_some() {
                    tracked.mode = info.mode;
                }
                held.map(|holder| holder.ttl)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::debug!(object = %grant.0, error = %e, "expiry check failed; retrying");
                Some(RETRY)
            }
        };
        match retry_in {
            Some(delay) => {
                let deadline = tracked.deadline.max(Instant::now() + delay + SLACK);
                tracked.deadline = deadline;
                tracked.scheduled = deadline;
                state.due.push(Reverse((deadline, generation, grant)));
            }
            None => {
                let tracked = state.leases.remove(&grant);
                self.metrics.set_locks_held(state.leases.len());
                drop(state);
                if let Some(tracked) = tracked {
                    let (object, fence) = grant;
                    self.metrics.lease_ended(&object, fence);
                    self.record(NewEvent {
                        kind: EventKind::Expiry,
                        object,
                        owner: Some(tracked.owner),
                        mode: Some(tracked.mode),
                        fence,
                        reason: None,
                    });
                }
            }
        }
    }

    /// Runs until the task is aborted: waits for deadlines and checks them. Returns at once when
    /// the backend reports lease ends itself.
    pub(crate) async fn run(self: Arc<Self>, service: Arc<dyn LockService>) {
        if self.is_reported() {
            return;
        }
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

    /// Heap entries and tracked leases, for tests.
    #[cfg(test)]
    fn sizes(&self) -> (usize, usize) {
        let state = self.state();
        (state.due.len(), state.leases.len())
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
            mode: LockMode::Exclusive,
            fence: Fence(fence),
            ttl: Duration::from_millis(ttl_ms),
        }
    }

    fn tracker() -> (Arc<ExpiryTracker>, Arc<EventLog>) {
        let events = Arc::new(EventLog::new(100));
        let tracker = Arc::new(ExpiryTracker::new(events.clone(), Arc::new(Metrics::new())));
        (tracker, events)
    }

    /// A release reported after the next holder's grant is still a release, with its owner.
    #[test]
    fn a_release_seen_after_the_next_grant_is_still_a_release_not_an_expiry() {
        let (tracker, events) = tracker();
        let issuer = TokenIssuer::random();
        let object = ObjectId::new("race").expect("valid");
        tracker.granted(&lease(&issuer, &object, "alice", 1, 60_000));
        // A waiter is granted before the releasing handler reports its release.
        tracker.granted(&lease(&issuer, &object, "bob", 2, 60_000));
        tracker.released(&object, Fence(1));
        let log = events.since(0, 100);
        assert_eq!(log.len(), 1, "{log:?}");
        assert_eq!(log[0].kind, EventKind::Release);
        assert_eq!(log[0].owner.as_deref(), Some("alice"));
    }

    /// Renewing a lease many times keeps one heap entry for it, and released leases' entries
    /// do not pile up beyond the live ones.
    #[test]
    fn the_tracker_does_not_grow_with_the_renew_or_release_rate() {
        let (tracker, _events) = tracker();
        let issuer = TokenIssuer::random();
        let object = ObjectId::new("renewed").expect("valid");
        let held = lease(&issuer, &object, "alice", 1, 60_000);
        tracker.granted(&held);
        for _ in 0..10_000 {
            tracker.renewed(&held);
        }
        assert_eq!(tracker.sizes(), (1, 1));
        for fence in 2..10_002 {
            let brief = lease(&issuer, &object, "bob", fence, 60_000);
            tracker.granted(&brief);
            tracker.released(&object, Fence(fence));
        }
        let (heap, tracked) = tracker.sizes();
        assert_eq!(tracked, 1);
        assert!(heap <= 2 * tracked + STALE_SLACK + 1, "{heap} heap entries");
    }

    /// A backend that reports lease ends makes the events; the tracker keeps nothing per lease.
    #[cfg(feature = "memory")]
    #[tokio::test]
    async fn with_a_reporting_backend_events_come_from_its_reports_and_nothing_is_tracked() {
        let (tracker, events) = tracker();
        let config = backend_memory::MemoryConfig::new(Limits::default());
        let service: Arc<dyn LockService> = Arc::new(backend_memory::MemoryLockService::new(
            backend_memory::MemoryStore::new(config),
            TokenIssuer::random(),
        ));
        assert!(tracker.use_reports_of(service.as_ref()));
        let owner = OwnerId::new("alice").expect("valid");
        let short = ObjectId::new("short").expect("valid");
        let kept = ObjectId::new("kept").expect("valid");
        let expiring = service
            .acquire(&short, &owner, Duration::from_millis(20), Duration::ZERO)
            .await
            .expect("granted");
        tracker.granted(&expiring);
        let released = service
            .acquire(&kept, &owner, Duration::from_secs(60), Duration::ZERO)
            .await
            .expect("granted");
        tracker.granted(&released);
        tracker.renewed(&released);
        assert_eq!(tracker.sizes(), (0, 0));
        service.release(&kept, &released.token).await.expect("held");
        tracker.released(&kept, released.fence);
        let deadline = Instant::now() + Duration::from_secs(5);
        while events.since(0, 10).len() < 2 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let log = events.since(0, 10);
        let kinds: Vec<(EventKind, Option<u64>)> = log.iter().map(|e| (e.kind, e.fence)).collect();
        assert_eq!(
            kinds,
            vec![
                (EventKind::Release, Some(released.fence.get())),
                (EventKind::Expiry, Some(expiring.fence.get()))
            ]
        );
        assert!(log
            .iter()
            .all(|e| e.owner.as_deref() == Some(owner.as_str())));
    }

    #[cfg(feature = "memory")]
    #[tokio::test]
    async fn an_unreleased_lease_is_reported_expired_once_the_backend_no_longer_has_it() {
        let (tracker, events) = tracker();
        let issuer = TokenIssuer::random();
        let config = backend_memory::MemoryConfig::new(Limits::default());
        let service: Arc<dyn LockService> = Arc::new(backend_memory::MemoryLockService::new(
            backend_memory::MemoryStore::new(config),
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

    /// Two shared holders of one object are two leases: the one that runs out is reported
    /// expired, with its mode, while the other (with the higher fence) is still held.
    #[cfg(feature = "memory")]
    #[tokio::test]
    async fn one_shared_holder_expiring_is_reported_while_another_still_holds() {
        let (tracker, events) = tracker();
        let config = backend_memory::MemoryConfig::new(Limits::default());
        let service: Arc<dyn LockService> = Arc::new(backend_memory::MemoryLockService::new(
            backend_memory::MemoryStore::new(config),
            TokenIssuer::random(),
        ));
        let object = ObjectId::new("read-mostly").expect("valid");
        let (alice, bob) = (
            OwnerId::new("alice").expect("valid"),
            OwnerId::new("bob").expect("valid"),
        );
        let short = service
            .acquire_in(
                &object,
                LockMode::Shared,
                &alice,
                Duration::from_millis(50),
                Duration::ZERO,
            )
            .await
            .expect("granted");
        let long = service
            .acquire_in(
                &object,
                LockMode::Shared,
                &bob,
                Duration::from_secs(60),
                Duration::ZERO,
            )
            .await
            .expect("shared holders coexist");
        assert!(long.fence > short.fence);
        tracker.granted(&short);
        tracker.granted(&long);
        let runner = tokio::spawn(tracker.clone().run(service.clone()));
        let deadline = Instant::now() + Duration::from_secs(5);
        while events.since(0, 10).is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        runner.abort();
        let log = events.since(0, 10);
        assert_eq!(log.len(), 1, "only alice's lease ended: {log:?}");
        assert_eq!(log[0].kind, EventKind::Expiry);
        assert_eq!(log[0].fence, Some(short.fence.get()));
        assert_eq!(log[0].mode, Some(LockMode::Shared));
        assert_eq!(tracker.sizes().1, 1, "bob's lease is still tracked");
        service.release(&object, &long.token).await.expect("held");
    }
}
