//! lockd's event log: grants, releases, renewals, expiries, refused releases and `wanted`
//! notices, read as a page ([`LockdClient::events`](crate::LockdClient::events)) or followed
//! live ([`EventStream`]), whole or filtered ([`EventFilter`]).
//!
//! [`EventSource`] is what follows the log: [`LockdClient`](crate::LockdClient) over HTTP
//! (server-sent events) and, with the `grpc` feature, lockd-grpc's `GrpcClient` (`Events`).
//! [`LeaseGuard::wanted`](crate::LeaseGuard::wanted) takes either.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use eventsource_stream::{EventStreamError, Eventsource as _};
use futures_util::{Stream, StreamExt as _};
use lockcore::{LockError, LockResult};
pub use lockd_wire::{Event, EventFilter, EventKind};

use crate::BACKEND;

/// The events of one stream, whatever the transport.
type Events = Pin<Box<dyn Stream<Item = LockResult<Event>> + Send>>;

/// A live feed of events: `GET /v1/events/stream` (server-sent events) or gRPC `Events`.
///
/// Created by [`LockdClient::event_stream`](crate::LockdClient::event_stream) and
/// [`EventSource::follow`]. Call [`EventStream::next`] in a loop; `None` means lockd closed the
/// stream.
pub struct EventStream {
    events: Events,
    finished: bool,
}

impl fmt::Debug for EventStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventStream")
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl EventStream {
    /// The events of a `GET /v1/events/stream` response.
    pub(crate) fn new(response: reqwest::Response) -> Self {
        let frames = response.bytes_stream().eventsource();
        let events = frames.filter_map(|frame| async move {
            match frame {
                // Keep-alive comments and frames without data.
                Ok(frame) if frame.data.is_empty() => None,
                Ok(frame) => Some(parse_event(&frame.data)),
                Err(e) => Some(Err(broken(&e))),
            }
        });
        Self::from_stream(events)
    }

    /// A stream of events from any source; it is finished after its first error.
    pub fn from_stream(events: impl Stream<Item = LockResult<Event>> + Send + 'static) -> Self {
        Self {
            events: Box::pin(events),
            finished: false,
        }
    }

    /// The next event; `None` once the server has closed the stream.
    ///
    /// A dropped connection is `Some(Err(Unavailable))`, after which the stream is finished.
    pub async fn next(&mut self) -> Option<LockResult<Event>> {
        if self.finished {
            return None;
        }
        let next = self.events.next().await;
        if !matches!(next, Some(Ok(_))) {
            self.finished = true;
        }
        next
    }
}

/// The error of a broken server-sent event stream.
fn broken(e: &EventStreamError<reqwest::Error>) -> LockError {
    LockError::unavailable(BACKEND, format!("event stream broke: {e}"))
}

/// The event in one frame's `data`.
fn parse_event(data: &str) -> LockResult<Event> {
    serde_json::from_str(data)
        .map_err(|e| LockError::Internal(format!("lockd sent an event that is not an event: {e}")))
}

/// Something that follows lockd's event log: [`LockdClient`](crate::LockdClient) (HTTP) or, with
/// the `grpc` feature, `GrpcClient`.
pub trait EventSource: Send + Sync {
    /// Follows the events that pass `filter`: those after sequence number `after` still
    /// retained, then live ones (`after: None`: live ones only). A filter lockd refuses is
    /// [`LockError::InvalidArgument`]; an unreachable server [`LockError::Unavailable`].
    fn follow(
        &self,
        after: Option<u64>,
        filter: &EventFilter,
    ) -> impl Future<Output = LockResult<EventStream>> + Send;
}

impl EventSource for crate::LockdClient {
    fn follow(
        &self,
        after: Option<u64>,
        filter: &EventFilter,
    ) -> impl Future<Output = LockResult<EventStream>> + Send {
        self.event_stream_with(after, filter)
    }
}

#[cfg(feature = "grpc")]
mod grpc {
    use lockd_grpc::convert::{event_kind_name, mode_from_pb, system_time};
    use lockd_grpc::{pb, GrpcClient};

    use super::*;

    impl EventSource for GrpcClient {
        async fn follow(
            &self,
            after: Option<u64>,
            filter: &EventFilter,
        ) -> LockResult<EventStream> {
            let request = pb::EventsRequest {
                after,
                objects: filter.objects.clone(),
                prefixes: filter.prefixes.clone(),
                owners: filter.owners.clone(),
                kinds: filter
                    .kinds
                    .iter()
                    .map(|kind| lockd_grpc::convert::event_kind(kind.as_str()) as i32)
                    .collect(),
            };
            let events = self.events_with(request).await?;
            Ok(EventStream::from_stream(
                events.map(|event| event.map(event_of_pb)),
            ))
        }
    }

    /// The event an `Events` message carries (empty strings and a zero fence read as absent;
    /// a kind this version does not know as [`EventKind::Unknown`]).
    pub(super) fn event_of_pb(message: pb::EventsResponse) -> Event {
        let kind = event_kind_name(message.kind)
            .and_then(EventKind::from_name)
            .unwrap_or(EventKind::Unknown);
        let mut event = Event::new(message.seq, std::time::UNIX_EPOCH, kind, message.object);
        event.time = message.time.as_ref().and_then(system_time);
        if !message.owner.is_empty() {
            event = event.with_owner(message.owner);
        }
        if message.mode != pb::LockMode::Unspecified as i32 {
            event.mode = mode_from_pb(message.mode).ok();
        }
        if message.fence != 0 {
            event = event.with_fence(message.fence);
        }
        if !message.reason.is_empty() {
            event = event.with_reason(message.reason);
        }
        if !message.waiter.is_empty() {
            event = event.with_waiter(message.waiter);
        }
        event
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame's data is one event in the wire format.
    #[test]
    fn frames_hold_wire_events() {
        let event = parse_event(
            r#"{"seq":3,"kind":"grant","object":"a","owner":"o","fence":9,"time":"2026-01-01T00:00:00.123Z"}"#,
        )
        .unwrap();
        assert_eq!(event.seq, 3);
        assert_eq!(event.kind, EventKind::Grant);
        assert_eq!(event.owner.as_deref(), Some("o"));
        assert_eq!(event.fence, Some(9));
        assert!(event.time.is_some());
        assert!(matches!(parse_event("{}"), Err(LockError::Internal(_))));
    }

    /// A stream ends after its first error, as a broken connection ends it.
    #[tokio::test]
    async fn a_stream_is_finished_after_an_error() {
        let time = std::time::SystemTime::now();
        let items = vec![
            Ok(Event::new(1, time, EventKind::Grant, "a")),
            Err(LockError::unavailable(BACKEND, "broke")),
            Ok(Event::new(2, time, EventKind::Grant, "a")),
        ];
        let mut stream = EventStream::from_stream(futures_util::stream::iter(items));
        assert!(matches!(stream.next().await, Some(Ok(e)) if e.seq == 1));
        assert!(matches!(stream.next().await, Some(Err(_))));
        assert!(stream.next().await.is_none());
    }

    /// A gRPC `wanted` message reads as the same event the HTTP API sends.
    #[cfg(feature = "grpc")]
    #[test]
    fn grpc_events_read_as_http_events() {
        use lockd_grpc::pb;
        let message = pb::EventsResponse {
            seq: 5,
            time: None,
            kind: pb::EventKind::Wanted as i32,
            object: "/vol/a".into(),
            owner: "holder".into(),
            mode: pb::LockMode::Shared as i32,
            fence: 12,
            reason: String::new(),
            waiter: "waiter".into(),
        };
        let event = grpc::event_of_pb(message);
        let expected = serde_json::json!({"seq": 5, "time": null, "kind": "wanted",
            "object": "/vol/a", "owner": "holder", "mode": "shared", "fence": 12,
            "waiter": "waiter"});
        assert_eq!(serde_json::to_value(&event).unwrap(), expected);
        let refused = grpc::event_of_pb(pb::EventsResponse {
            kind: 99,
            ..pb::EventsResponse::default()
        });
        assert_eq!(refused.kind, EventKind::Unknown);
        assert_eq!(refused.owner, None);
        assert_eq!(refused.mode, None);
    }
}
