//! Prometheus metrics served at `GET /metrics`.
//!
//! Besides the per-operation series, three families say where contention is, by object prefix
//! (the first `--metrics-prefix-depth` path segments of the object, [`prefix_of`]):
//!
//! * `lockd_contended_acquires_total{prefix, outcome}`: acquires that were refused at least once
//!   (they waited, or were refused as `locked` at once), by how they ended (`granted` after
//!   waiting, or `refused`); a request naming several objects counts once per distinct prefix;
//! * `lockd_contention_wait_seconds{prefix}`: how long those acquires took, from the request to
//!   the grant or to giving up;
//! * `lockd_hold_seconds{prefix}`: how long leases granted by this process were held, from the
//!   grant to the release or expiry.
//!
//! At most [`MAX_METRIC_PREFIXES`] distinct prefixes get their own series, the first ones seen;
//! the rest count under `prefix="other"`, so an unbounded name space cannot blow up the scrape.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::BuildHasher;
use std::sync::atomic::AtomicI64;
use std::time::{Duration, Instant};

use lockcore::{Fence, ObjectId};
use parking_lot::{Mutex, RwLock};

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

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PrefixLabels {
    prefix: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ContendedLabels {
    prefix: String,
    outcome: &'static str,
}

type HistogramFamily = Family<OperationLabels, Histogram, fn() -> Histogram>;
type PrefixHistograms = Family<PrefixLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 100 µs .. ~3.3 s, doubling.
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

fn wait_histogram() -> Histogram {
    // 1 ms .. ~65 s, doubling: a wait is bounded by --max-wait (5 min by default).
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

fn hold_histogram() -> Histogram {
    // 1 ms .. ~4.7 h, by fours: holds range from a file write to a long-lived lease.
    Histogram::new(exponential_buckets(0.001, 4.0, 13))
}

/// Default number of path segments an object's metric prefix keeps (`--metrics-prefix-depth`).
pub const DEFAULT_METRICS_PREFIX_DEPTH: usize = 2;

/// The most distinct prefixes that get their own series; the rest count as [`OTHER_PREFIX`].
pub const MAX_METRIC_PREFIXES: usize = 256;

/// The `prefix` label of objects whose prefix came after [`MAX_METRIC_PREFIXES`] others.
pub const OTHER_PREFIX: &str = "other";

/// The first `depth` path segments of `object` (at least one), with its leading `/` if any:
/// `/vol/a/x/y` is `/vol/a` at depth 2, `vol/a/x` is `vol/a`, and an id with fewer segments
/// (`chunk-7`, `/vol`) is itself.
///
/// ```
/// assert_eq!(lockd::prefix_of("/vol/a/x/y", 2), "/vol/a");
/// assert_eq!(lockd::prefix_of("vol/a/x", 2), "vol/a");
/// assert_eq!(lockd::prefix_of("chunk-7", 2), "chunk-7");
/// assert_eq!(lockd::prefix_of("/vol/a/x/y", 1), "/vol");
/// ```
pub fn prefix_of(object: &str, depth: usize) -> &str {
    let lead = usize::from(object.starts_with('/'));
    let depth = depth.max(1);
    object[lead..]
        .match_indices('/')
        .nth(depth - 1)
        .map_or(object, |(at, _)| &object[..lead + at])
}

/// The prefixes that have their own series: the first [`MAX_METRIC_PREFIXES`] (or the cap
/// given) seen.
#[derive(Debug)]
struct Prefixes {
    depth: usize,
    cap: usize,
    admitted: RwLock<HashSet<String>>,
    admitted_gauge: Gauge<i64, AtomicI64>,
}

impl Prefixes {
    fn new(depth: usize, cap: usize) -> Self {
        Self {
            depth: depth.max(1),
            cap,
            admitted: RwLock::new(HashSet::new()),
            admitted_gauge: Gauge::default(),
        }
    }

    /// The `prefix` label of `object`: its prefix if admitted (admitting it while there is
    /// room), [`OTHER_PREFIX`] otherwise.
    fn label(&self, object: &str) -> String {
        let prefix = prefix_of(object, self.depth);
        if self.admitted.read().contains(prefix) {
            return prefix.to_owned();
        }
        let mut admitted = self.admitted.write();
        if admitted.contains(prefix) || admitted.len() < self.cap {
            admitted.insert(prefix.to_owned());
            self.admitted_gauge
                .set(i64::try_from(admitted.len()).unwrap_or(i64::MAX));
            return prefix.to_owned();
        }
        OTHER_PREFIX.to_owned()
    }
}

/// Leases whose ends an untracked lease end may precede (see [`HoldClock`]), at most.
const EARLY_ENDS_KEPT: usize = 1024;

/// When each lease granted by this process started, for `lockd_hold_seconds`.
///
/// One entry per live lease: a 64-bit hash of its object and fence, and an instant (a hash
/// collision, at odds of 2^-64 per pair, would only misplace one observation). A backend that
/// reports lease ends may report a very short lease's end before the acquire handler reports its
/// grant: such ends are remembered (the last [`EARLY_ENDS_KEPT`]) so the late grant is not
/// kept forever.
#[derive(Debug)]
struct HoldClock {
    hasher: RandomState,
    state: Mutex<HoldState>,
}

#[derive(Debug, Default)]
struct HoldState {
    started: HashMap<u64, Instant>,
    ended_early: HashSet<u64>,
    ended_early_order: VecDeque<u64>,
}

impl HoldClock {
    fn new() -> Self {
        Self {
            hasher: RandomState::new(),
            state: Mutex::new(HoldState::default()),
        }
    }

    fn key(&self, object: &ObjectId, fence: Fence) -> u64 {
        self.hasher.hash_one((object.as_str(), fence.get()))
    }

    fn started(&self, object: &ObjectId, fence: Fence) {
        let key = self.key(object, fence);
        let mut state = self.state.lock();
        if state.ended_early.remove(&key) {
            return;
        }
        state.started.insert(key, Instant::now());
    }

    /// How long the lease was held, if its start was seen.
    fn ended(&self, object: &ObjectId, fence: Fence) -> Option<Duration> {
        let key = self.key(object, fence);
        let mut state = self.state.lock();
        if let Some(started) = state.started.remove(&key) {
            return Some(started.elapsed());
        }
        if state.ended_early.insert(key) {
            state.ended_early_order.push_back(key);
            if state.ended_early_order.len() > EARLY_ENDS_KEPT {
                if let Some(oldest) = state.ended_early_order.pop_front() {
                    state.ended_early.remove(&oldest);
                }
            }
        }
        None
    }

    #[cfg(test)]
    fn live(&self) -> usize {
        self.state.lock().started.len()
    }
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
    prefixes: Prefixes,
    contended: Family<ContendedLabels, Counter>,
    contention_wait: PrefixHistograms,
    hold: PrefixHistograms,
    hold_clock: HoldClock,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric in a fresh registry, with contention series by prefixes of
    /// [`DEFAULT_METRICS_PREFIX_DEPTH`] segments.
    pub fn new() -> Self {
        Self::with_prefix_depth(DEFAULT_METRICS_PREFIX_DEPTH)
    }

    /// Registers every metric in a fresh registry, with contention series by prefixes of
    /// `depth` path segments (at least 1), at most [`MAX_METRIC_PREFIXES`] of them.
    pub fn with_prefix_depth(depth: usize) -> Self {
        Self::with_prefixes(depth, MAX_METRIC_PREFIXES)
    }

    /// Like [`Metrics::with_prefix_depth`], with at most `cap` prefixes.
    pub(crate) fn with_prefixes(depth: usize, cap: usize) -> Self {
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
        let prefixes = Prefixes::new(depth, cap);
        let contended = Family::<ContendedLabels, Counter>::default();
        registry.register(
            "contended_acquires",
            "Acquires refused at least once (they waited, or were refused as locked), by object \
             prefix and outcome (granted after waiting, or refused); once per distinct prefix of \
             the request's objects",
            contended.clone(),
        );
        let contention_wait: PrefixHistograms = Family::new_with_constructor(wait_histogram);
        registry.register(
            "contention_wait_seconds",
            "Time contended acquires took, from the request to the grant or to giving up, by \
             object prefix",
            contention_wait.clone(),
        );
        let hold: PrefixHistograms = Family::new_with_constructor(hold_histogram);
        registry.register(
            "hold_seconds",
            "Time leases granted by this process were held, from the grant to the release or \
             expiry, by object prefix",
            hold.clone(),
        );
        registry.register(
            "metric_prefixes",
            "Object prefixes with their own contention series (at most the cap; later ones \
             count as prefix=\"other\")",
            prefixes.admitted_gauge.clone(),
        );
        Self {
            prefixes,
            contended,
            contention_wait,
            hold,
            hold_clock: HoldClock::new(),
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

    /// Counts an acquire that was refused at least once and has ended (granted or not) after
    /// `waited`: once per distinct prefix label of its objects.
    pub fn contended(&self, objects: &[ObjectId], waited: Duration, granted: bool) {
        let mut labels: Vec<String> = objects
            .iter()
            .map(|object| self.prefixes.label(object.as_str()))
            .collect();
        labels.sort_unstable();
        labels.dedup();
        let outcome = if granted { "granted" } else { "refused" };
        for prefix in labels {
            self.contention_wait
                .get_or_create(&PrefixLabels {
                    prefix: prefix.clone(),
                })
                .observe(waited.as_secs_f64());
            self.contended
                .get_or_create(&ContendedLabels { prefix, outcome })
                .inc();
        }
    }

    /// A lease of this process started: its hold time runs from now.
    pub fn lease_started(&self, object: &ObjectId, fence: Fence) {
        self.hold_clock.started(object, fence);
    }

    /// A lease ended (released or expired): observes its hold time if its start was seen.
    pub fn lease_ended(&self, object: &ObjectId, fence: Fence) {
        if let Some(held) = self.hold_clock.ended(object, fence) {
            self.hold
                .get_or_create(&PrefixLabels {
                    prefix: self.prefixes.label(object.as_str()),
                })
                .observe(held.as_secs_f64());
        }
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

    fn id(name: &str) -> ObjectId {
        ObjectId::new(name).expect("valid")
    }

    #[test]
    fn prefixes_keep_the_first_segments_of_paths_and_whole_short_ids() {
        assert_eq!(prefix_of("/vol/a/x/y", 2), "/vol/a");
        assert_eq!(prefix_of("/vol/a", 2), "/vol/a");
        assert_eq!(prefix_of("/vol", 2), "/vol");
        assert_eq!(prefix_of("vol/a/x", 2), "vol/a");
        assert_eq!(prefix_of("chunk-7", 2), "chunk-7");
        assert_eq!(prefix_of("/vol/a/x/y", 3), "/vol/a/x");
        assert_eq!(prefix_of("/vol/a/x/y", 1), "/vol");
        assert_eq!(prefix_of("/vol/a/x/y", 0), "/vol", "depth 0 reads as 1");
        assert_eq!(prefix_of("/vol/a/x/y", 9), "/vol/a/x/y");
    }

    /// A contended request counts once per distinct prefix of its objects, with its wait.
    #[test]
    fn contention_counts_once_per_prefix_of_a_request() {
        let metrics = Metrics::new();
        metrics.contended(
            &[id("/vol/a/x"), id("/vol/a/y"), id("/vol/b/z")],
            Duration::from_millis(30),
            true,
        );
        metrics.contended(&[id("/vol/a/x")], Duration::ZERO, false);
        let text = metrics.encode().expect("encodes");
        for line in [
            r#"lockd_contended_acquires_total{prefix="/vol/a",outcome="granted"} 1"#,
            r#"lockd_contended_acquires_total{prefix="/vol/b",outcome="granted"} 1"#,
            r#"lockd_contended_acquires_total{prefix="/vol/a",outcome="refused"} 1"#,
            r#"lockd_contention_wait_seconds_count{prefix="/vol/a"} 2"#,
            r#"lockd_contention_wait_seconds_sum{prefix="/vol/a"} 0.03"#,
            r#"lockd_contention_wait_seconds_count{prefix="/vol/b"} 1"#,
            "lockd_metric_prefixes 2",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }

    /// Past the cap, new prefixes count as `other`; prefixes admitted before keep their series.
    #[test]
    fn prefixes_beyond_the_cap_count_as_other() {
        let metrics = Metrics::with_prefixes(2, 2);
        for dir in ["a", "b", "c", "d"] {
            metrics.contended(&[id(&format!("/vol/{dir}/f"))], Duration::ZERO, false);
        }
        metrics.contended(&[id("/vol/a/g")], Duration::ZERO, false);
        // Two overflowing objects of one request count once under `other`.
        metrics.contended(&[id("/vol/e/f"), id("/vol/f/f")], Duration::ZERO, true);
        let text = metrics.encode().expect("encodes");
        for line in [
            r#"lockd_contended_acquires_total{prefix="/vol/a",outcome="refused"} 2"#,
            r#"lockd_contended_acquires_total{prefix="/vol/b",outcome="refused"} 1"#,
            r#"lockd_contended_acquires_total{prefix="other",outcome="refused"} 2"#,
            r#"lockd_contended_acquires_total{prefix="other",outcome="granted"} 1"#,
            "lockd_metric_prefixes 2",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        assert!(!text.contains(r#"prefix="/vol/c""#), "{text}");
    }

    /// Hold times run from a lease's start to its end, once; an end whose start was not seen
    /// observes nothing, and a start reported after its end is not kept.
    #[test]
    fn hold_times_run_from_start_to_end() {
        let metrics = Metrics::with_prefix_depth(1);
        let object = id("/vol/a/f");
        metrics.lease_started(&object, Fence(1));
        metrics.lease_ended(&object, Fence(1));
        metrics.lease_ended(&object, Fence(1));
        metrics.lease_ended(&object, Fence(2));
        metrics.lease_started(&object, Fence(2));
        assert_eq!(metrics.hold_clock.live(), 0, "the late start is dropped");
        let text = metrics.encode().expect("encodes");
        assert!(
            text.contains(r#"lockd_hold_seconds_count{prefix="/vol"} 1"#),
            "{text}"
        );
    }

    /// The early ends remembered for late starts are bounded.
    #[test]
    fn early_ends_are_bounded() {
        let clock = HoldClock::new();
        let object = id("x");
        for fence in 0..(3 * EARLY_ENDS_KEPT as u64) {
            assert_eq!(clock.ended(&object, Fence(fence)), None);
        }
        let state = clock.state.lock();
        assert_eq!(state.ended_early.len(), EARLY_ENDS_KEPT);
        assert_eq!(state.ended_early_order.len(), EARLY_ENDS_KEPT);
    }
}
