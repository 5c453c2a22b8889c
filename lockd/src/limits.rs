//! Caps that keep slow and greedy clients from exhausting the server: connections, requests in
//! flight, blocking waiters and event streams.
//!
//! Each cap is a counter taken before any work starts and given back when the work ends (a
//! [`Slot`] dropped). A request over a cap is answered at once with `503 unavailable` and
//! `Retry-After`, counted in `lockd_limit_refusals_total{limit}`, and never reaches the backend,
//! so a refusal cannot grant, release or change any lock.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::json;

use crate::metrics::Metrics;

/// Seconds a refused client is asked to wait (`Retry-After`).
pub(crate) const RETRY_AFTER_SECS: u64 = 1;

/// One of the server's caps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Limit {
    /// Open client connections (`--max-connections`).
    Connections,
    /// `/v1` requests being handled (`--max-in-flight`).
    InFlight,
    /// Blocking acquires (`wait_ms > 0`) waiting (`--max-waiters`).
    Waiters,
    /// Open `GET /v1/events/stream` subscriptions (`--max-event-streams`).
    EventStreams,
}

impl Limit {
    fn index(self) -> usize {
        match self {
            Limit::Connections => 0,
            Limit::InFlight => 1,
            Limit::Waiters => 2,
            Limit::EventStreams => 3,
        }
    }

    /// The `limit` label of the metrics.
    pub fn label(self) -> &'static str {
        match self {
            Limit::Connections => "connections",
            Limit::InFlight => "in_flight",
            Limit::Waiters => "waiters",
            Limit::EventStreams => "event_streams",
        }
    }

    /// The flag that sets it.
    pub fn flag(self) -> &'static str {
        match self {
            Limit::Connections => "--max-connections",
            Limit::InFlight => "--max-in-flight",
            Limit::Waiters => "--max-waiters",
            Limit::EventStreams => "--max-event-streams",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Limit::Connections => "too many connections",
            Limit::InFlight => "too many requests in flight",
            Limit::Waiters => "too many blocking acquires waiting",
            Limit::EventStreams => "too many event streams open",
        }
    }
}

/// A request refused because a cap was reached: answered `503 unavailable` with `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub struct LimitExceeded {
    /// Which cap.
    pub limit: Limit,
    /// Its configured value.
    pub max: usize,
}

impl fmt::Display for LimitExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "server busy: {} ({} {}); retry in {RETRY_AFTER_SECS} s",
            self.limit.what(),
            self.limit.flag(),
            self.max
        )
    }
}

impl LimitExceeded {
    /// The error envelope's JSON.
    pub(crate) fn envelope(&self) -> serde_json::Value {
        json!({"error": {"code": "unavailable", "message": self.to_string()}})
    }
}

/// The configured caps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Caps {
    /// Open client connections.
    pub max_connections: usize,
    /// `/v1` requests being handled at once.
    pub max_in_flight: usize,
    /// Blocking acquires waiting at once.
    pub max_waiters: usize,
    /// Event streams open at once.
    pub max_event_streams: usize,
}

impl Caps {
    fn max(&self, limit: Limit) -> usize {
        match limit {
            Limit::Connections => self.max_connections,
            Limit::InFlight => self.max_in_flight,
            Limit::Waiters => self.max_waiters,
            Limit::EventStreams => self.max_event_streams,
        }
    }
}

/// The caps and how much of each is in use.
#[derive(Debug)]
pub(crate) struct Usage {
    caps: Caps,
    in_use: [AtomicUsize; 4],
    metrics: Arc<Metrics>,
}

impl Usage {
    pub(crate) fn new(caps: Caps, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            caps,
            in_use: Default::default(),
            metrics,
        })
    }

    /// Takes one unit of `limit`, or refuses (counted) when it is all in use.
    pub(crate) fn take(self: &Arc<Self>, limit: Limit) -> Result<Slot, LimitExceeded> {
        let max = self.caps.max(limit);
        let counter = &self.in_use[limit.index()];
        let mut current = counter.load(Ordering::Relaxed);
        loop {
            if current >= max {
                self.metrics.limit_refused(limit);
                tracing::debug!(limit = limit.label(), max, "refused: limit reached");
                return Err(LimitExceeded { limit, max });
            }
            match counter.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(now) => current = now,
            }
        }
        self.metrics.in_use(limit, 1);
        Ok(Slot {
            usage: Arc::clone(self),
            limit,
        })
    }

    /// How much of `limit` is in use.
    #[cfg(test)]
    pub(crate) fn in_use(&self, limit: Limit) -> usize {
        self.in_use[limit.index()].load(Ordering::Acquire)
    }
}

/// One unit of a cap, given back when dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    usage: Arc<Usage>,
    limit: Limit,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.usage.in_use[self.limit.index()].fetch_sub(1, Ordering::AcqRel);
        self.usage.metrics.in_use(self.limit, -1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cap grants exactly `max` slots at once, refuses the next with a counted, typed error,
    /// and grants again once a slot is given back.
    #[test]
    fn a_cap_grants_max_slots_and_refuses_the_next_until_one_is_given_back() {
        let metrics = Arc::new(Metrics::new());
        let usage = Usage::new(
            Caps {
                max_connections: 1,
                max_in_flight: 2,
                max_waiters: 1,
                max_event_streams: 1,
            },
            metrics.clone(),
        );
        let first = usage.take(Limit::InFlight).expect("free");
        let _second = usage.take(Limit::InFlight).expect("free");
        let refused = usage.take(Limit::InFlight).expect_err("full");
        assert_eq!(
            refused,
            LimitExceeded {
                limit: Limit::InFlight,
                max: 2
            }
        );
        assert!(
            refused.to_string().contains("--max-in-flight 2"),
            "{refused}"
        );
        assert_eq!(refused.envelope()["error"]["code"], "unavailable");
        assert_eq!(usage.in_use(Limit::InFlight), 2);
        drop(first);
        assert_eq!(usage.in_use(Limit::InFlight), 1);
        let _third = usage.take(Limit::InFlight).expect("free again");
        // Other caps are independent.
        let _waiter = usage.take(Limit::Waiters).expect("free");
        let text = metrics.encode().expect("encodes");
        assert!(
            text.contains(r#"lockd_limit_refusals_total{limit="in_flight"} 1"#),
            "{text}"
        );
        assert!(text.contains("lockd_requests_in_flight 2"), "{text}");
        assert!(text.contains("lockd_waiters 1"), "{text}");
    }
}
