//! Prometheus metrics served at `GET /metrics`.

use std::sync::atomic::AtomicI64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::limits::Limit;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    operation: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModeLabels {
    mode: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    limit: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TimeoutLabels {
    timeout: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

type HistogramFamily = Family<OperationLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 100 µs .. ~3.3 s, doubling.
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

/// The server's metrics and their registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: HistogramFamily,
    grants: Family<ModeLabels, Counter>,
    acquired_objects: Histogram,
    batch_entries: Family<RequestLabels, Counter>,
    refused_releases: Family<ReasonLabels, Counter>,
    locks_held: Gauge<i64, AtomicI64>,
    waiters: Gauge<i64, AtomicI64>,
    events: Counter,
    unauthenticated: Counter,
    limit_refusals: Family<LimitLabels, Counter>,
    connection_timeouts: Family<TimeoutLabels, Counter>,
    connections: Gauge<i64, AtomicI64>,
    in_flight: Gauge<i64, AtomicI64>,
    event_streams: Gauge<i64, AtomicI64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric in a fresh registry.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("lockd");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Lock API requests by operation and outcome (ok or the error code)",
            requests.clone(),
        );
        let latency: HistogramFamily = Family::new_with_constructor(latency_histogram);
        registry.register(
            "request_duration_seconds",
            "Lock API request latency by operation",
            latency.clone(),
        );
        let grants = Family::<ModeLabels, Counter>::default();
        registry.register(
            "grants",
            "Leases granted by this process, by mode (a multi-object acquire counts one per object)",
            grants.clone(),
        );
        let acquired_objects = Histogram::new([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]);
        registry.register(
            "acquire_objects",
            "Objects named by each granted acquire (1 for the one-object form)",
            acquired_objects.clone(),
        );
        let batch_entries = Family::<RequestLabels, Counter>::default();
        registry.register(
            "batch_entries",
            "Entries of batched releases and renewals (\"locks\": [...]) by operation and \
             outcome (ok or the entry's error code)",
            batch_entries.clone(),
        );
        let refused_releases = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "refused_releases",
            "Releases refused because the object was not held or the token was not the holder's",
            refused_releases.clone(),
        );
        let locks_held = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "locks_held",
            "Locks granted by this process that have not been seen to end (released or expired)",
            locks_held.clone(),
        );
        let waiters = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "waiters",
            "Blocking acquires (wait_ms > 0) currently waiting in this process",
            waiters.clone(),
        );
        let events = Counter::default();
        registry.register("events", "Events recorded in the event log", events.clone());
        let unauthenticated = Counter::default();
        registry.register(
            "unauthenticated_requests",
            "Requests refused for a missing or unknown API key",
            unauthenticated.clone(),
        );
        let limit_refusals = Family::<LimitLabels, Counter>::default();
        registry.register(
            "limit_refusals",
            "Requests and connections refused with 503 because a limit was reached, by limit \
             (connections, in_flight, waiters, event_streams)",
            limit_refusals.clone(),
        );
        let connection_timeouts = Family::<TimeoutLabels, Counter>::default();
        registry.register(
            "connection_timeouts",
            "Connections closed by a timeout: request_read (a request not received in time) or \
             idle (no request on a kept-alive connection)",
            connection_timeouts.clone(),
        );
        let connections = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "connections",
            "Open client connections",
            connections.clone(),
        );
        let in_flight = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "requests_in_flight",
            "/v1 requests being handled now (an event stream counts until its response starts)",
            in_flight.clone(),
        );
        let event_streams = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "event_streams",
            "Open GET /v1/events/stream subscriptions",
            event_streams.clone(),
        );
        Self {
            limit_refusals,
            connection_timeouts,
            connections,
            in_flight,
            event_streams,
            registry,
            requests,
            latency,
            grants,
            acquired_objects,
            batch_entries,
            refused_releases,
            locks_held,
            waiters,
            events,
            unauthenticated,
        }
    }

    /// Counts one finished request.
    pub fn observe(&self, operation: &'static str, outcome: &'static str, elapsed: Duration) {
        self.requests
            .get_or_create(&RequestLabels { operation, outcome })
            .inc();
        self.latency
            .get_or_create(&OperationLabels { operation })
            .observe(elapsed.as_secs_f64());
    }

    /// Counts one granted acquire and its leases' modes.
    pub fn granted(&self, modes: impl ExactSizeIterator<Item = lockcore::LockMode>) {
        self.acquired_objects.observe(modes.len() as f64);
        for mode in modes {
            self.grants
                .get_or_create(&ModeLabels {
                    mode: mode.as_str(),
                })
                .inc();
        }
    }

    /// Counts one entry of a batched release or renew.
    pub fn batch_entry(&self, operation: &'static str, outcome: &'static str) {
        self.batch_entries
            .get_or_create(&RequestLabels { operation, outcome })
            .inc();
    }

    /// Counts a refused release.
    pub fn refused_release(&self, reason: &'static str) {
        self.refused_releases
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Sets the number of locks this process knows to be held.
    pub fn set_locks_held(&self, held: usize) {
        self.locks_held.set(i64::try_from(held).unwrap_or(i64::MAX));
    }

    /// A blocking acquire started (`+1`) or finished (`-1`).
    pub fn add_waiters(&self, delta: i64) {
        self.waiters.inc_by(delta);
    }

    /// Counts a request or connection refused because `limit` was reached.
    pub(crate) fn limit_refused(&self, limit: Limit) {
        self.limit_refusals
            .get_or_create(&LimitLabels {
                limit: limit.label(),
            })
            .inc();
    }

    /// One unit of `limit` was taken (`+1`) or given back (`-1`).
    pub(crate) fn in_use(&self, limit: Limit, delta: i64) {
        let gauge = match limit {
            Limit::Connections => &self.connections,
            Limit::InFlight => &self.in_flight,
            Limit::Waiters => &self.waiters,
            Limit::EventStreams => &self.event_streams,
        };
        gauge.inc_by(delta);
    }

    /// Counts a connection closed by a timeout (`request_read` or `idle`).
    pub(crate) fn connection_timeout(&self, timeout: &'static str) {
        self.connection_timeouts
            .get_or_create(&TimeoutLabels { timeout })
            .inc();
    }

    /// Counts a request refused for a missing or unknown API key.
    pub fn unauthenticated(&self) {
        self.unauthenticated.inc();
    }

    /// Counts a recorded event.
    pub fn event(&self) {
        self.events.inc();
    }

    /// The metrics in Prometheus/OpenMetrics text format.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_metrics_name_operations_outcomes_and_reasons() {
        let metrics = Metrics::new();
        metrics.observe("acquire", "ok", Duration::from_millis(2));
        metrics.observe("acquire", "locked", Duration::from_millis(1));
        metrics.refused_release("token_mismatch");
        metrics.set_locks_held(3);
        metrics.add_waiters(2);
        metrics.add_waiters(-1);
        let text = metrics.encode().expect("encodes");
        assert!(text.contains(r#"lockd_requests_total{operation="acquire",outcome="ok"} 1"#));
        assert!(text.contains(r#"lockd_requests_total{operation="acquire",outcome="locked"} 1"#));
        assert!(text.contains(r#"lockd_refused_releases_total{reason="token_mismatch"} 1"#));
        assert!(text.contains("lockd_locks_held 3"));
        assert!(text.contains("lockd_waiters 1"));
        metrics.granted(
            [
                lockcore::LockMode::Shared,
                lockcore::LockMode::Shared,
                lockcore::LockMode::Exclusive,
            ]
            .into_iter(),
        );
        metrics.batch_entry("release", "not_held");
        metrics.unauthenticated();
        let text = metrics.encode().expect("encodes");
        assert!(
            text.contains(r#"lockd_grants_total{mode="shared"} 2"#),
            "{text}"
        );
        assert!(text.contains(r#"lockd_grants_total{mode="exclusive"} 1"#));
        assert!(text.contains("lockd_acquire_objects_count 1"));
        assert!(
            text.contains(r#"lockd_batch_entries_total{operation="release",outcome="not_held"} 1"#)
        );
        assert!(text.contains("lockd_unauthenticated_requests_total 1"));
        assert!(text.contains("lockd_request_duration_seconds_bucket"));
    }
}
