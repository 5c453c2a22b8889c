//! lockd's event log: grants, releases, renewals, expiries and refused releases.

use std::collections::BTreeMap;
use std::time::SystemTime;

use lockcore::{LockError, LockResult};
use serde::{Deserialize, Serialize};

use crate::BACKEND;

/// One entry of lockd's event log (`GET /v1/events`, `GET /v1/events/stream`). Never carries a
/// token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Event {
    /// Position in the log: strictly increasing; pass the last one seen as `after`.
    pub seq: u64,
    /// What happened: `grant`, `release`, `renew`, `expiry` or `release_refused`.
    #[serde(alias = "type")]
    pub kind: String,
    /// When lockd recorded it (RFC 3339 text or Unix milliseconds on the wire).
    #[serde(
        default,
        alias = "timestamp",
        alias = "at",
        deserialize_with = "crate::wire::opt_time",
        serialize_with = "ser_time"
    )]
    pub time: Option<SystemTime>,
    /// The object concerned.
    pub object: String,
    /// The holder concerned, when there is one.
    #[serde(default)]
    pub owner: Option<String>,
    /// The grant's fence (for a refused release: the fence the presented token claims).
    #[serde(default)]
    pub fence: Option<u64>,
    /// For a refused release: `not_held` or `token_mismatch`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Any further fields lockd sends (the refusal reason, say), kept as JSON.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

fn ser_time<S: serde::Serializer>(at: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match at {
        Some(at) => s.serialize_str(&humantime::format_rfc3339_millis(*at).to_string()),
        None => s.serialize_none(),
    }
}

/// Body of `GET /v1/events`.
#[derive(Debug, Deserialize)]
pub(crate) struct EventsResponse {
    pub(crate) events: Vec<Event>,
}

/// A live feed of events from `GET /v1/events/stream` (server-sent events).
///
/// Created by [`LockdClient::event_stream`](crate::LockdClient::event_stream). Call
/// [`EventStream::next`] in a loop; `None` means lockd closed the stream.
#[derive(Debug)]
pub struct EventStream {
    response: reqwest::Response,
    buffer: Vec<u8>,
    finished: bool,
}

impl EventStream {
    pub(crate) fn new(response: reqwest::Response) -> Self {
        Self {
            response,
            buffer: Vec::new(),
            finished: false,
        }
    }

    /// The next event; `None` once the server has closed the stream.
    ///
    /// A dropped connection is `Some(Err(Unavailable))`, after which the stream is finished.
    pub async fn next(&mut self) -> Option<LockResult<Event>> {
        loop {
            if let Some(frame) = take_frame(&mut self.buffer) {
                match parse_frame(&frame) {
                    Some(result) => return Some(result),
                    None => continue, // a comment or keep-alive
                }
            }
            if self.finished {
                return None;
            }
            match self.response.chunk().await {
                Ok(Some(bytes)) => self.buffer.extend_from_slice(&bytes),
                Ok(None) => {
                    self.finished = true;
                    if self.buffer.iter().all(u8::is_ascii_whitespace) {
                        return None;
                    }
                    // A final frame without its blank line: still deliver it.
                    self.buffer.extend_from_slice(b"\n\n");
                }
                Err(e) => {
                    self.finished = true;
                    return Some(Err(LockError::unavailable(
                        BACKEND,
                        format!("event stream broke: {e}"),
                    )));
                }
            }
        }
    }
}

/// Cuts the first complete SSE frame (ended by a blank line) off the front of `buffer`.
fn take_frame(buffer: &mut Vec<u8>) -> Option<Vec<u8>> {
    let text = buffer.as_slice();
    let mut i = 0;
    while i + 1 < text.len() {
        let end = if text[i] == b'\n' && text[i + 1] == b'\n' {
            Some(2)
        } else if text[i..].starts_with(b"\r\n\r\n") {
            Some(4)
        } else {
            None
        };
        if let Some(len) = end {
            let frame = text[..i].to_vec();
            buffer.drain(..i + len);
            return Some(frame);
        }
        i += 1;
    }
    None
}

/// The event in one SSE frame; `None` for frames without data (comments, keep-alives).
fn parse_frame(frame: &[u8]) -> Option<LockResult<Event>> {
    let text = String::from_utf8_lossy(frame);
    let mut data = String::new();
    for line in text.lines() {
        if let Some(value) = line.strip_prefix("data:") {
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(value.strip_prefix(' ').unwrap_or(value));
        }
    }
    if data.is_empty() {
        return None;
    }
    Some(
        serde_json::from_str(&data).map_err(|e| {
            LockError::Internal(format!("lockd sent an event that is not an event: {e}"))
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_cut_at_blank_lines_and_comments_skipped() {
        let mut buffer = b": keep-alive\n\nid: 3\nevent: grant\ndata: {\"seq\":3,\"kind\":\"grant\",\"object\":\"a\",\"owner\":\"o\",\"fence\":9,\"time\":1700000000000}\n\npartial".to_vec();
        let first = take_frame(&mut buffer).unwrap();
        assert!(parse_frame(&first).is_none());
        let second = take_frame(&mut buffer).unwrap();
        let event = parse_frame(&second).unwrap().unwrap();
        assert_eq!(event.seq, 3);
        assert_eq!(event.kind, "grant");
        assert_eq!(event.owner.as_deref(), Some("o"));
        assert_eq!(event.fence, Some(9));
        assert!(event.time.is_some());
        assert_eq!(buffer, b"partial");
        assert!(take_frame(&mut buffer).is_none());
    }

    #[test]
    fn unknown_fields_are_kept() {
        let event: Event = serde_json::from_str(
            r#"{"seq":1,"type":"release_refused","object":"a","reason":"token_mismatch","time":"2026-01-01T00:00:00.123Z","extra":1}"#,
        )
        .unwrap();
        assert_eq!(event.kind, "release_refused");
        assert_eq!(event.reason.as_deref(), Some("token_mismatch"));
        assert_eq!(event.extra["extra"], 1);
        assert!(event.time.is_some());
    }
}
