//! The events of lockd's event log, as `GET /v1/events` and `GET /v1/events/stream` send them.

use std::fmt;
use std::time::SystemTime;

use lockcore::LockMode;
use serde::{Deserialize, Serialize};

/// What happened to a lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum EventKind {
    /// A lock was granted (acquire succeeded).
    Grant,
    /// The holder released the lock.
    Release,
    /// The holder renewed its lease.
    Renew,
    /// The holder turned its exclusive lease into a shared one (same token, fence and expiry).
    Downgrade,
    /// A lease granted by the recording process ran out without a release or renew it saw.
    Expiry,
    /// A release was refused (`not_held` or `token_mismatch`): possible misuse or attack.
    ReleaseRefused,
    /// A request started waiting behind this holder's lease: the holder may want to finish and
    /// release early. `owner`, `fence` and `object` are the holder's; `waiter` and `mode` say
    /// who waits and for what. Sent once per waiting request and holder, not once per retry.
    Wanted,
    /// A kind this version does not know (sent by a newer server); read, never written.
    #[serde(other)]
    Unknown,
}

impl EventKind {
    /// Every kind the server writes (all but [`EventKind::Unknown`]), in the order of the docs.
    pub const WRITTEN: [EventKind; 7] = [
        EventKind::Grant,
        EventKind::Release,
        EventKind::Renew,
        EventKind::Downgrade,
        EventKind::Expiry,
        EventKind::ReleaseRefused,
        EventKind::Wanted,
    ];

    /// The kind named `name` as JSON writes it (`grant`, `wanted`, ...); `None` for any other
    /// name, `unknown` included: it is no kind the server writes, so nothing could match it.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::WRITTEN.into_iter().find(|kind| kind.as_str() == name)
    }

    /// The name used in JSON and as the SSE `event:` field.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Grant => "grant",
            EventKind::Release => "release",
            EventKind::Renew => "renew",
            EventKind::Downgrade => "downgrade",
            EventKind::Expiry => "expiry",
            EventKind::ReleaseRefused => "release_refused",
            EventKind::Wanted => "wanted",
            EventKind::Unknown => "unknown",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<str> for EventKind {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for EventKind {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// One entry of the event log. Never carries a token.
///
/// Grants, releases, renewals and expiries name the lease's owner, mode and fence: a
/// several-object grant is one `grant` event per object, and each shared holder's lease ends
/// with its own `release` or `expiry`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Event {
    /// Position in the log: strictly increasing; pass the last one seen as `after`.
    pub seq: u64,
    /// When lockd recorded it.
    #[serde(default, with = "crate::rfc3339")]
    pub time: Option<SystemTime>,
    /// What happened.
    pub kind: EventKind,
    /// The object concerned.
    pub object: String,
    /// The holder concerned (`null` for a refused release: a token does not name its owner).
    #[serde(default)]
    pub owner: Option<String>,
    /// The mode of the lease concerned, `exclusive` or `shared` (`null` for a refused release:
    /// a token does not name its mode).
    #[serde(default)]
    pub mode: Option<LockMode>,
    /// The grant's fence (for a refused release: the fence the presented token claims).
    #[serde(default)]
    pub fence: Option<u64>,
    /// For a refused release: `not_held` or `token_mismatch`. Omitted otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// For a `wanted` notice: who waits (the waiting request's owner). Omitted otherwise. The
    /// waiter asks for `mode`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiter: Option<String>,
}

impl Event {
    /// An event numbered `seq`, recorded at `time`, about `object`.
    pub fn new(seq: u64, time: SystemTime, kind: EventKind, object: impl Into<String>) -> Self {
        Self {
            seq,
            time: Some(time),
            kind,
            object: object.into(),
            owner: None,
            mode: None,
            fence: None,
            reason: None,
            waiter: None,
        }
    }

    /// Sets the holder.
    pub fn with_owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = Some(owner.into());
        self
    }

    /// Sets the mode.
    pub fn with_mode(mut self, mode: LockMode) -> Self {
        self.mode = Some(mode);
        self
    }

    /// Sets the fence.
    pub fn with_fence(mut self, fence: u64) -> Self {
        self.fence = Some(fence);
        self
    }

    /// Sets the refusal reason.
    pub fn with_reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    /// Sets the waiter of a `wanted` notice.
    pub fn with_waiter(mut self, waiter: impl Into<String>) -> Self {
        self.waiter = Some(waiter.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use serde_json::json;

    use super::*;

    /// Events are written with snake_case kinds, RFC 3339 times, a null owner when there is
    /// none, and no reason unless refused.
    #[test]
    fn events_have_one_json_shape() {
        let time = UNIX_EPOCH + Duration::from_millis(1_767_225_600_123);
        let event = Event::new(8, time, EventKind::ReleaseRefused, "/vol/a")
            .with_fence(4)
            .with_reason("token_mismatch");
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(
            json,
            json!({"seq": 8, "time": "2026-01-01T00:00:00.123Z", "kind": "release_refused",
                   "object": "/vol/a", "owner": null, "mode": null, "fence": 4,
                   "reason": "token_mismatch"})
        );
        assert_eq!(serde_json::from_value::<Event>(json).unwrap(), event);
        let grant = Event::new(9, time, EventKind::Grant, "a")
            .with_owner("o")
            .with_mode(LockMode::Shared)
            .with_fence(5);
        let grant = serde_json::to_value(grant).unwrap();
        assert!(grant.get("reason").is_none(), "{grant}");
        assert_eq!(grant["mode"], "shared");
    }

    /// A `wanted` notice names the holder as `owner` and the waiter and the mode it asks for.
    #[test]
    fn wanted_notices_name_the_holder_the_waiter_and_the_mode_asked_for() {
        let time = UNIX_EPOCH + Duration::from_millis(1_767_225_600_000);
        let wanted = Event::new(10, time, EventKind::Wanted, "/vol/a")
            .with_owner("holder")
            .with_fence(7)
            .with_mode(LockMode::Exclusive)
            .with_waiter("waiter");
        let json = serde_json::to_value(&wanted).unwrap();
        assert_eq!(
            json,
            json!({"seq": 10, "time": "2026-01-01T00:00:00.000Z", "kind": "wanted",
                   "object": "/vol/a", "owner": "holder", "mode": "exclusive", "fence": 7,
                   "waiter": "waiter"})
        );
        assert_eq!(serde_json::from_value::<Event>(json).unwrap(), wanted);
    }

    /// Every written kind is found by its name; `unknown` and other names are not.
    #[test]
    fn kinds_are_found_by_the_names_json_writes() {
        for kind in EventKind::WRITTEN {
            assert_eq!(EventKind::from_name(kind.as_str()), Some(kind));
            let json = serde_json::to_value(kind).unwrap();
            assert_eq!(json, kind.as_str());
        }
        for name in ["unknown", "Grant", "grants", ""] {
            assert_eq!(EventKind::from_name(name), None, "{name}");
        }
    }

    /// A kind from a newer server is read as `Unknown`, not refused.
    #[test]
    fn unknown_kinds_are_read() {
        let event: Event =
            serde_json::from_str(r#"{"seq":1,"kind":"quarantine","object":"a"}"#).unwrap();
        assert_eq!(event.kind, EventKind::Unknown);
        assert_eq!(event.kind, "unknown");
        assert!(event.time.is_none());
    }
}
