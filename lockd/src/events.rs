//! The event log: every grant, release, renew, expiry, refused release and `wanted` notice, in a
//! bounded ring, with a broadcast channel for live subscribers (`GET /v1/events/stream`, gRPC
//! `Events`).
//!
//! `wanted` notices come from the lock service's wait reports
//! ([`LockService::report_waits`], which the server subscribes to at start): when a request
//! starts waiting, one notice per holder it waits behind, naming the holder (`owner`, `fence`,
//! `object`), the waiter and the mode it asks for. The same reports feed the contention metrics.
//!
//! Readers may filter ([`EventFilter`]): a filtered read or stream skips the events that do not
//! pass and keeps the log's sequence numbers, so `after=` / `Last-Event-ID` resume it exactly.
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
use std::sync::Arc;
use std::time::SystemTime;

use lockcore::{Fence, Lease, LockMode, LockService, ObjectId, OwnerId, WaitNotice};
pub use lockd_wire::{Event, EventFilter, EventKind};
use tokio::sync::{broadcast, mpsc, watch};

use crate::metrics::Metrics;

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

/// The most events a filtered read examines while holding the ring's lock: a reader whose filter
/// matches little goes through the ring in slices of this many, letting writers in between.
const MAX_SCAN: usize = 4096;

/// What one filtered read of the ring found.
#[derive(Debug, Default)]
pub struct Scan {
    /// The events that passed, oldest first.
    pub events: Vec<Event>,
    /// The sequence number of the last event examined (`after` when none was): the next read
    /// continues after it.
    pub scanned_to: u64,
    /// Whether the read reached the newest event.
    pub at_end: bool,
}

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
        self.append(|seq, time| {
            let mut event =
                Event::new(seq, time, new.kind, new.object.as_str()).with_fence(new.fence.get());
            event.owner = new.owner.map(|owner| owner.as_str().to_owned());
            event.mode = new.mode;
            event.reason = new.reason.map(str::to_owned);
            event
        })
    }

    /// Appends a `wanted` notice: `waiter` started waiting, asking for `mode`, behind the lease
    /// of `owner` on `object` with `fence`.
    pub fn record_wanted(
        &self,
        object: &ObjectId,
        owner: &OwnerId,
        fence: Fence,
        waiter: &OwnerId,
        mode: LockMode,
    ) -> Event {
        self.append(|seq, time| {
            Event::new(seq, time, EventKind::Wanted, object.as_str())
                .with_owner(owner.as_str())
                .with_fence(fence.get())
                .with_mode(mode)
                .with_waiter(waiter.as_str())
        })
    }

    /// Numbers the event `make` builds, appends it and tells live subscribers.
    fn append(&self, make: impl FnOnce(u64, SystemTime) -> Event) -> Event {
        let time = SystemTime::now();
        let mut ring = self.ring();
        let event = make(ring.next_seq, time);
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

    /// Up to `limit` events above `after` that pass `filter`, oldest first, examining at most
    /// 4096 events (see [`Scan`] for where to go on from).
    pub fn scan(&self, after: u64, limit: usize, filter: &EventFilter) -> Scan {
        let ring = self.ring();
        let start = ring.events.partition_point(|e| e.seq <= after);
        let mut scan = Scan {
            events: Vec::new(),
            scanned_to: after,
            at_end: true,
        };
        for (examined, event) in ring.events.range(start..).enumerate() {
            if examined == MAX_SCAN || scan.events.len() == limit {
                scan.at_end = false;
                break;
            }
            scan.scanned_to = event.seq;
            if filter.matches(event) {
                scan.events.push(event.clone());
            }
        }
        scan
    }

    /// Up to `limit` events above `after` that pass `filter`, oldest first: a page of
    /// `GET /v1/events`. Fewer than `limit` means none is left.
    pub fn page(&self, after: u64, limit: usize, filter: &EventFilter) -> Vec<Event> {
        let mut page = Vec::new();
        let mut after = after;
        loop {
            let scan = self.scan(after, limit - page.len(), filter);
            page.extend(scan.events);
            if scan.at_end || page.len() >= limit {
                return page;
            }
            after = scan.scanned_to;
        }
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

/// Sends the events above `last` that pass `filter`, first from the ring, then live from `live`,
/// each converted by `convert`, until the receiver goes away or `shutdown` turns `true`. A
/// subscriber too slow for the live channel is caught up from the ring. Serves
/// `GET /v1/events/stream` and gRPC `Events` alike. Subscribe `live` before choosing `last`, so
/// nothing falls between the two.
pub(crate) async fn forward<T>(
    log: Arc<EventLog>,
    mut live: broadcast::Receiver<Event>,
    mut last: u64,
    filter: EventFilter,
    tx: mpsc::Sender<T>,
    mut shutdown: watch::Receiver<bool>,
    convert: fn(&Event) -> T,
) {
    async fn catch_up<T>(
        log: &EventLog,
        last: &mut u64,
        filter: &EventFilter,
        tx: &mpsc::Sender<T>,
        convert: fn(&Event) -> T,
    ) -> bool {
        loop {
            let scan = log.scan(*last, MAX_EVENTS_PAGE, filter);
            for event in &scan.events {
                *last = event.seq;
                if tx.send(convert(event)).await.is_err() {
                    return false;
                }
            }
            *last = scan.scanned_to;
            if scan.at_end {
                return true;
            }
        }
    }
    if !catch_up(&log, &mut last, &filter, &tx, convert).await {
        return;
    }
    loop {
        if *shutdown.borrow() {
            return;
        }
        tokio::select! {
            _ = shutdown.changed() => return,
            () = tx.closed() => return,
            received = live.recv() => match received {
                Ok(event) => {
                    if event.seq <= last {
                        continue;
                    }
                    last = event.seq;
                    if filter.matches(&event) && tx.send(convert(&event)).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    if !catch_up(&log, &mut last, &filter, &tx, convert).await {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

/// Subscribes to what `service`'s waiting requests see: `wanted` notices go into `log`,
/// contention into `metrics`. Returns whether the service reports (only one subscriber per
/// service: a service already reporting to another server answers `false`).
pub(crate) fn follow_waits(
    service: &dyn LockService,
    log: Arc<EventLog>,
    metrics: Arc<Metrics>,
) -> bool {
    service.report_waits(Arc::new(move |notice| {
        on_wait_notice(&log, &metrics, notice);
    }))
}

/// What one wait report does: called synchronously from the waiting request's task, so it only
/// appends to the ring and counts.
fn on_wait_notice(log: &EventLog, metrics: &Metrics, notice: WaitNotice) {
    match notice {
        WaitNotice::Wanted {
            object,
            owner,
            fence,
            waiter,
            mode,
        } => {
            log.record_wanted(&object, &owner, fence, &waiter, mode);
            metrics.event();
        }
        WaitNotice::Contended {
            objects,
            waited,
            granted,
        } => metrics.contended(&objects, waited, granted),
        // A notice of a newer lockcore: nothing to do with it yet.
        _ => {}
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

    fn id(name: &str) -> ObjectId {
        ObjectId::new(name).expect("valid")
    }

    fn owner(name: &str) -> OwnerId {
        OwnerId::new(name).expect("valid")
    }

    fn wanted(object: &str, holder: &str, fence: u64, waiter: &str) -> WaitNotice {
        WaitNotice::Wanted {
            object: id(object),
            owner: owner(holder),
            fence: Fence(fence),
            waiter: owner(waiter),
            mode: LockMode::Exclusive,
        }
    }

    /// A wait report's `wanted` notice becomes one `wanted` event naming holder and waiter.
    #[test]
    fn a_wanted_notice_is_logged_with_the_holder_and_the_waiter() {
        let log = EventLog::new(10);
        let metrics = Metrics::new();
        on_wait_notice(&log, &metrics, wanted("/vol/a/f", "holder", 7, "waiter"));
        let events = log.since(0, 10);
        assert_eq!(events.len(), 1);
        let json = serde_json::to_value(&events[0]).expect("serializes");
        assert_eq!(json["kind"], "wanted");
        assert_eq!(json["object"], "/vol/a/f");
        assert_eq!(json["owner"], "holder");
        assert_eq!(json["fence"], 7);
        assert_eq!(json["waiter"], "waiter");
        assert_eq!(json["mode"], "exclusive");
        let text = metrics.encode().expect("encodes");
        assert!(text.contains("lockd_events_total 1"), "{text}");
    }

    /// Contention reports only count: they add no event.
    #[test]
    fn a_contention_report_counts_without_logging() {
        let log = EventLog::new(10);
        let metrics = Metrics::new();
        on_wait_notice(
            &log,
            &metrics,
            WaitNotice::Contended {
                objects: vec![id("/vol/a/f")],
                waited: std::time::Duration::from_millis(3),
                granted: true,
            },
        );
        assert!(log.since(0, 10).is_empty());
        let text = metrics.encode().expect("encodes");
        assert!(
            text.contains(r#"lockd_contended_acquires_total{prefix="/vol/a",outcome="granted"} 1"#),
            "{text}"
        );
    }

    /// A filtered page keeps the log's numbers and finds matches past many that do not match,
    /// beyond one scan's slice.
    #[test]
    fn filtered_pages_keep_sequence_numbers_and_look_past_one_slice() {
        let log = EventLog::new(3 * MAX_SCAN);
        log.record(grant("/mine", 1));
        for i in 0..(2 * MAX_SCAN as u64) {
            log.record(grant("/other", 10 + i));
        }
        log.record_wanted(
            &id("/mine"),
            &owner("o"),
            Fence(1),
            &owner("w"),
            LockMode::Shared,
        );
        let mine = EventFilter::default().object("/mine");
        let page = log.page(0, 10, &mine);
        let seqs: Vec<u64> = page.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![1, 2 * MAX_SCAN as u64 + 2]);
        assert_eq!(page[1].kind, EventKind::Wanted);
        // Resuming after the first match finds the second; a page of one stops at the first.
        assert_eq!(log.page(1, 10, &mine).len(), 1);
        assert_eq!(log.page(0, 1, &mine).len(), 1);
        // One scan stops at its slice and says where it got to.
        let scan = log.scan(1, 10, &mine);
        assert!(scan.events.is_empty());
        assert!(!scan.at_end);
        assert_eq!(scan.scanned_to, 1 + MAX_SCAN as u64);
        let kinds = EventFilter::default().kind(EventKind::Wanted);
        assert_eq!(log.page(0, 10, &kinds).len(), 1);
    }

    /// The forwarder sends the backlog then live events that pass the filter, with their own
    /// sequence numbers, and ends when the server shuts down.
    #[tokio::test]
    async fn the_forwarder_sends_only_what_passes_the_filter() {
        let log = Arc::new(EventLog::new(100));
        log.record(grant("/a", 1));
        log.record(grant("/b", 2));
        let live = log.subscribe();
        let (tx, mut rx) = mpsc::channel(16);
        let (stop, shutdown) = watch::channel(false);
        let filter = EventFilter::default().object("/a");
        let task = tokio::spawn(forward(
            log.clone(),
            live,
            0,
            filter,
            tx,
            shutdown,
            |e: &Event| e.seq,
        ));
        assert_eq!(rx.recv().await, Some(1));
        log.record(grant("/b", 3));
        log.record(grant("/a", 4));
        assert_eq!(rx.recv().await, Some(4));
        stop.send_replace(true);
        task.await.expect("forwarder ends");
        assert_eq!(rx.recv().await, None);
    }
}
