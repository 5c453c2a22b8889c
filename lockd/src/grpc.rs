//! The gRPC API (`lockd.v1.Locks`, from lockd-grpc) wired into this server: [`GrpcHooks`] does
//! around each gRPC call what the HTTP handlers of `api.rs` do around each request, on the same
//! state (caps, metrics, event log, expiry tracker), so both listeners are one server.

use std::time::Duration;

use lockcore::{Fence, Grant, Lease, LockError, LockResult, LockToken, ObjectId};
use lockd_grpc::convert::{event_kind, event_kinds_from_pb, mode_to_pb, timestamp};
use lockd_grpc::{pb, Admission, EventStream, Hooks};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::api::{self, AppState};
use crate::events::{self, Event, EventFilter, EventKind, NewEvent};
use crate::limits::{Limit, LimitExceeded};

/// The backend name of the `Unavailable` error a gRPC call over a cap gets.
const SERVER: &str = "lockd";

/// lockd's [`Hooks`]: the bodies of the HTTP handlers' bookkeeping, over the same [`AppState`].
#[derive(Debug, Clone)]
pub(crate) struct GrpcHooks {
    pub(crate) state: AppState,
}

/// A cap reached, as the error a gRPC call gets: `UNAVAILABLE` with a 1 s RetryInfo, as HTTP's
/// `503` with `Retry-After: 1`.
fn busy(refused: LimitExceeded) -> LockError {
    LockError::unavailable(SERVER, refused)
}

impl Hooks for GrpcHooks {
    fn admit(&self, operation: &'static str, blocking: bool) -> LockResult<Admission> {
        let usage = &self.state.usage;
        if operation == "events" {
            // Held as long as the stream runs, as for `GET /v1/events/stream`.
            let stream = usage.take(Limit::EventStreams).map_err(busy)?;
            return Ok(Admission::holding(stream));
        }
        // Every other call is one `/v1` request: --max-in-flight, and --max-waiters for an
        // acquire that may wait, both taken before the backend sees it.
        let in_flight = usage.take(Limit::InFlight).map_err(busy)?;
        let waiting = if blocking {
            Some(usage.take(Limit::Waiters).map_err(busy)?)
        } else {
            None
        };
        Ok(Admission::holding((in_flight, waiting)))
    }

    fn finished(&self, operation: &'static str, outcome: &'static str, elapsed: Duration) {
        self.state.metrics.observe(operation, outcome, elapsed);
    }

    fn granted(&self, grant: &Grant) {
        let state = &self.state;
        state
            .metrics
            .granted(grant.leases.iter().map(|lease| lease.mode));
        for lease in &grant.leases {
            state.tracker.granted(lease);
            api::record(state, NewEvent::of_lease(EventKind::Grant, lease));
        }
    }

    fn released(&self, object: &ObjectId, fence: Fence) {
        self.state.tracker.released(object, fence);
    }

    fn release_refused(&self, object: &ObjectId, token: Option<&LockToken>, error: &LockError) {
        // lockd-grpc has already logged a malformed token on the audit target.
        api::count_refused_release(&self.state, object.clone(), token, error);
    }

    fn renewed(&self, lease: &Lease) {
        api::renewed(&self.state, lease);
    }

    fn downgraded(&self, lease: &Lease) {
        self.state.tracker.renewed(lease);
        api::record(&self.state, NewEvent::of_lease(EventKind::Downgrade, lease));
    }

    fn batch_entry(&self, operation: &'static str, outcome: &'static str) {
        self.state.metrics.batch_entry(operation, outcome);
    }

    fn unauthenticated(&self) {
        self.state.metrics.unauthenticated();
    }

    fn events(&self, request: &pb::EventsRequest) -> Option<LockResult<EventStream>> {
        let state = &self.state;
        let filter = match filter_of(request) {
            Ok(filter) => filter,
            Err(refused) => return Some(Err(refused)),
        };
        // Subscribe before reading the backlog so nothing falls between the two.
        let live = state.events.subscribe();
        let last = request.after.unwrap_or_else(|| state.events.last_seq());
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(events::forward(
            state.events.clone(),
            live,
            last,
            filter,
            tx,
            state.shutdown.clone(),
            event_to_pb,
        ));
        Some(Ok(Box::pin(ReceiverStream::new(rx))))
    }
}

/// The filter an `Events` request asks for, checked as the HTTP query's is.
fn filter_of(request: &pb::EventsRequest) -> LockResult<EventFilter> {
    let kinds = event_kinds_from_pb(&request.kinds)?;
    let pairs = (request.objects.iter().map(|o| ("object", o.as_str())))
        .chain(request.prefixes.iter().map(|p| ("prefix", p.as_str())))
        .chain(request.owners.iter().map(|o| ("owner", o.as_str())))
        .chain(kinds.into_iter().map(|k| ("kind", k)));
    EventFilter::from_pairs(pairs)
}

/// The `Events` message of an event of the log.
fn event_to_pb(event: &Event) -> pb::EventsResponse {
    pb::EventsResponse {
        seq: event.seq,
        time: event.time.map(timestamp),
        kind: event_kind(event.kind.as_str()) as i32,
        object: event.object.clone(),
        owner: event.owner.clone().unwrap_or_default(),
        mode: event
            .mode
            .map_or(pb::LockMode::Unspecified, mode_to_pb)
            .into(),
        fence: event.fence.unwrap_or(0),
        reason: event.reason.clone().unwrap_or_default(),
        waiter: event.waiter.clone().unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lockcore::LockMode;

    #[test]
    fn events_map_to_their_proto_message_without_tokens() {
        let mut event = Event::new(
            7,
            std::time::UNIX_EPOCH + Duration::from_secs(5),
            EventKind::ReleaseRefused,
            "/vol/a",
        )
        .with_fence(3);
        event.reason = Some("not_held".into());
        let message = event_to_pb(&event);
        assert_eq!(message.seq, 7);
        assert_eq!(message.kind, pb::EventKind::ReleaseRefused as i32);
        assert_eq!(message.object, "/vol/a");
        assert_eq!(message.owner, "");
        assert_eq!(message.mode, pb::LockMode::Unspecified as i32);
        assert_eq!(message.fence, 3);
        assert_eq!(message.reason, "not_held");
        assert_eq!(message.time.map(|t| t.seconds), Some(5));

        event.kind = EventKind::Grant;
        event.owner = Some("node-1".into());
        event.mode = Some(LockMode::Shared);
        let message = event_to_pb(&event);
        assert_eq!(message.kind, pb::EventKind::Grant as i32);
        assert_eq!(message.owner, "node-1");
        assert_eq!(message.mode, pb::LockMode::Shared as i32);
        assert_eq!(message.waiter, "");

        let wanted = Event::new(8, std::time::UNIX_EPOCH, EventKind::Wanted, "/vol/a")
            .with_owner("holder")
            .with_fence(4)
            .with_mode(LockMode::Exclusive)
            .with_waiter("waiter");
        let message = event_to_pb(&wanted);
        assert_eq!(message.kind, pb::EventKind::Wanted as i32);
        assert_eq!(message.owner, "holder");
        assert_eq!(message.waiter, "waiter");
        assert_eq!(message.mode, pb::LockMode::Exclusive as i32);
    }

    /// An `Events` request's filters read as the HTTP query's; a bad kind is refused on `kind`.
    #[test]
    fn events_requests_filter_as_http_queries_do() {
        let request = pb::EventsRequest {
            after: None,
            objects: vec!["/f".into()],
            prefixes: vec!["/vol/".into()],
            owners: vec!["node-1".into()],
            kinds: vec![pb::EventKind::Wanted as i32],
        };
        assert_eq!(
            filter_of(&request).expect("valid"),
            EventFilter::default()
                .object("/f")
                .prefix("/vol/")
                .owner("node-1")
                .kind(EventKind::Wanted)
        );
        assert!(filter_of(&pb::EventsRequest::default())
            .expect("valid")
            .is_empty());
        for kinds in [vec![pb::EventKind::Unspecified as i32], vec![77]] {
            let refused = pb::EventsRequest {
                kinds,
                ..pb::EventsRequest::default()
            };
            assert!(matches!(
                filter_of(&refused),
                Err(LockError::InvalidArgument { field: "kind", .. })
            ));
        }
    }
}
