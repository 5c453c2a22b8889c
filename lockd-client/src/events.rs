//! lockd's event log: grants, releases, renewals, expiries and refused releases, read as a page
//! ([`LockdClient::events`](crate::LockdClient::events)) or followed live ([`EventStream`]).

use std::fmt;
use std::pin::Pin;

use eventsource_stream::{EventStreamError, Eventsource as _};
use futures_util::{Stream, StreamExt as _};
use lockcore::{LockError, LockResult};
pub use lockd_wire::{Event, EventKind};

use crate::BACKEND;

/// The server-sent events of one response, parsed by `eventsource-stream`.
type SseEvents = Pin<
    Box<
        dyn Stream<Item = Result<eventsource_stream::Event, EventStreamError<reqwest::Error>>>
            + Send,
    >,
>;

/// A live feed of events from `GET /v1/events/stream` (server-sent events).
///
/// Created by [`LockdClient::event_stream`](crate::LockdClient::event_stream). Call
/// [`EventStream::next`] in a loop; `None` means lockd closed the stream.
pub struct EventStream {
    events: SseEvents,
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
    pub(crate) fn new(response: reqwest::Response) -> Self {
        Self {
            events: Box::pin(response.bytes_stream().eventsource()),
            finished: false,
        }
    }

    /// The next event; `None` once the server has closed the stream.
    ///
    /// A dropped connection is `Some(Err(Unavailable))`, after which the stream is finished.
    /// Keep-alive comments and frames without data are skipped.
    pub async fn next(&mut self) -> Option<LockResult<Event>> {
        while !self.finished {
            match self.events.next().await {
                None => self.finished = true,
                Some(Ok(frame)) if frame.data.is_empty() => {}
                Some(Ok(frame)) => return Some(parse_event(&frame.data)),
                Some(Err(e)) => {
                    self.finished = true;
                    return Some(Err(LockError::unavailable(
                        BACKEND,
                        format!("event stream broke: {e}"),
                    )));
                }
            }
        }
        None
    }
}

/// The event in one frame's `data`.
fn parse_event(data: &str) -> LockResult<Event> {
    serde_json::from_str(data)
        .map_err(|e| LockError::Internal(format!("lockd sent an event that is not an event: {e}")))
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
}
