//! The event log: every grant, release, renew, expiry and refused release, in a bounded ring,
//! with a broadcast channel for live subscribers (`GET /v1/events/stream`).
//!
//! One event per lease: a multi-object grant records one `grant` per object, a batched
//! release or renew one event per lock (a refused entry of a batched release is a
//! `release_refused`), and each shared holder's lease ends with its own `release` or `expiry`.
//! Every event names the lease's mode when this process knows it (`null` for refused releases,
//! and for leases this process only hears about without having granted them).
//!
//! Events never carry a token. Sequence numbers increase by one per event. The server's log
//! starts at the wall-clock time of its start in microseconds since 1970
//! ([`EventLog::starting_now`]), so they keep increasing across restarts: a consumer resuming
//! with `after=` a number from before a restart gets every event since. That holds unless the
//! clock steps back across the restart, or a process recorded more than one event per
//! microsecond on average over its life (lockd's request rate is orders of magnitude below).

use parking_lot::{Mutex, MutexGuard};
use std::collections::VecDeque;
use std::time::SystemTime;

use lockcore::{Fence, Lease, LockMode, ObjectId, OwnerId};
pub use lockd_wire::{Event, EventKind};
use tokio::sync::broadcast;

/// What a handler reports; the log adds the sequence number and time.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// What happened.
    pub kind: EventKind,
    /// The object concerned.
    pub object: ObjectId,
    /// The holder, when known.
    pub owner: Option<OwnerId>,
    /// The lease's mode, when known.
    pub mode: Option<LockMode>,
    /// The fence concerned.
    pub fence: Fence,
    /// Refusal reason code.
    pub reason: Option<&'static str>,
}

impl NewEvent {
    /// A `kind` event for a lease the backend just granted or renewed.
    pub fn of_lease(kind: EventKind, lease: &Lease) -> Self {
        Self {
            kind,
            object: lease.object.clone(),
            owner: Some(lease.owner.clone()),
            mode: Some(lease.mode),
            fence: lease.fence,
            reason: None,
        }
    }
}

#[derive(Debug)]
struct Ring {
    next_seq: u64,
    events: VecDeque<Event>,
}

/// A bounded ring of recent events plus a broadcast channel to live subscribers.
#[derive(Debug)]
pub struct EventLog {
    capacity: usize,
    ring: Mutex<Ring>,
    live: broadcast::Sender<Event>,
}

/// The most events one `GET /v1/events` returns.
pub const MAX_EVENTS_PAGE: usize = 1000;

impl EventLog {
    /// A log keeping the newest `capacity` events (at least 1), numbered from 1.
    pub fn new(capacity: usize) -> Self {
        Self::starting_at(capacity, 1)
    }

    /// A log numbered from the current wall-clock time in microseconds since 1970, so its
    /// numbers are above those of an earlier process's log (see the module docs). They stay
    /// below 2^53, exact in JSON numbers, until the year 2255.
    pub fn starting_now(capacity: usize) -> Self {
        Self::starting_at(capacity, lockcore::wall_clock_micros())
    }

    /// A log keeping the newest `capacity` events (at least 1), numbered from `first_seq`.
    pub fn starting_at(capacity: usize, first_seq: u64) -> Self {
        let capacity = capacity.max(1);
        let (live, _) = broadcast::channel(capacity.clamp(16, 4096));
        Self {
            capacity,
            ring: Mutex::new(Ring {
                next_seq: first_seq.max(1),
                events: VecDeque::with_capacity(capacity.min(65_536)),
            }),
            live,
        }
    }

    fn ring(&self) -> MutexGuard<'_, Ring> {
        self.ring.lock()
    }

    /// Appends an event, evicting the oldest beyond capacity, and tells live subscribers.
    pub fn record(&self, new: NewEvent) -> Event {
        let time = SystemTime::now();
        let mut ring = self.ring();
        let mut event = Event::new(ring.next_seq, time, new.kind, new.object.as_str())
            .with_fence(new.fence.get());
        event.owner = new.owner.map(|owner| owner.as_str().to_owned());
        event.mode = new.mode;
        event.reason = new.reason.map(str::to_owned);
        ring.next_seq += 1;
        if ring.events.len() == self.capacity {
            ring.events.pop_front();
        }
        ring.events.push_back(event.clone());
        // Sent under the ring lock so subscribers see events in sequence order.
        let _ = self.live.send(event.clone());
        event
    }

    /// Up to `limit` events with a sequence number above `after`, oldest first.
    pub fn since(&self, after: u64, limit: usize) -> Vec<Event> {
        let ring = self.ring();
        let start = ring.events.partition_point(|e| e.seq <= after);
        ring.events.range(start..).take(limit).cloned().collect()
    }

    /// Subscribes to events recorded from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.live.subscribe()
    }

    /// The sequence number of the newest event (one below the first number if none yet).
    pub fn last_seq(&self) -> u64 {
        self.ring().next_seq - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(object: &str, fence: u64) -> NewEvent {
        NewEvent {
            kind: EventKind::Grant,
            object: ObjectId::new(object).expect("valid"),
            owner: Some(OwnerId::new("o").expect("valid")),
            mode: Some(LockMode::Shared),
            fence: Fence(fence),
            reason: None,
        }
    }

    #[test]
    fn the_ring_keeps_the_newest_events_in_order() {
        let log = EventLog::new(3);
        for i in 1..=5 {
            log.record(grant("a", i));
        }
        let seqs: Vec<u64> = log.since(0, 100).iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![3, 4, 5]);
        let seqs: Vec<u64> = log.since(3, 100).iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![4, 5]);
        assert_eq!(log.since(0, 1).len(), 1);
        assert!(log.since(5, 100).is_empty());
        assert_eq!(log.last_seq(), 5);
    }

    #[tokio::test]
    async fn subscribers_receive_events_recorded_after_they_subscribe() {
        let log = EventLog::new(10);
        log.record(grant("before", 1));
        let mut rx = log.subscribe();
        log.record(grant("after", 2));
        let got = rx.recv().await.expect("an event");
        assert_eq!(got.object.as_str(), "after");
        assert_eq!(got.mode, Some(LockMode::Shared));
        assert_eq!(got.seq, 2);
    }

    #[test]
    fn events_serialize_without_tokens_and_with_snake_case_kinds() {
        let log = EventLog::new(10);
        let event = log.record(NewEvent {
            kind: EventKind::ReleaseRefused,
            object: ObjectId::new("x").expect("valid"),
            owner: None,
            mode: None,
            fence: Fence(9),
            reason: Some("not_held"),
        });
        let json = serde_json::to_value(&event).expect("serializes");
        assert_eq!(json["kind"], "release_refused");
        assert_eq!(json["reason"], "not_held");
        assert_eq!(json["fence"], 9);
        assert!(json["owner"].is_null());
        assert!(json.get("token").is_none());
    }
}
