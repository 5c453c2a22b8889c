//! [`check`]: judges a [`History`] and returns the [`Violation`]s it proves.
//!
//! Every rule is judged from client-side times only and flags only what is *certain*: an
//! operation whose outcome is unknown may have taken effect at any time after it was invoked,
//! and clocks may disagree by the [`CheckConfig`] slack. A history the checker passes may still
//! hide a bug; a violation it reports is one.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use crate::history::{Fault, History, LeaseId, OpKind, Operation, Outcome};

/// How lenient the checker is about clocks and late effects.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct CheckConfig {
    /// The fraction of a TTL by which a backend's clock may run faster or slower than the test
    /// process's monotonic clock. Default 1 %: NTP slews a wall clock (which PostgreSQL's
    /// `clock_timestamp()` is) by at most 0.05 %, so this leaves a wide margin.
    pub clock_rate_slack: f64,
    /// A fixed slack on top, for expiry granularity and rounding: Redis keeps expiries in
    /// milliseconds, the HTTP API reports TTLs in milliseconds. Default 10 ms.
    pub clock_slack: Duration,
    /// How long after its completion an operation of unknown outcome may still take effect: a
    /// request queued in a stopped lockd, or a command queued in a paused Redis, runs when the
    /// process or the pause ends. `None` (the default): at any time, so a lease with a renew of
    /// unknown outcome is never judged expired afterwards.
    pub unknown_effect_horizon: Option<Duration>,
}

impl Default for CheckConfig {
    fn default() -> Self {
        Self {
            clock_rate_slack: 0.01,
            clock_slack: Duration::from_millis(10),
            unknown_effect_horizon: None,
        }
    }
}

impl CheckConfig {
    /// The default config with unknown outcomes taking effect at most `horizon` after they
    /// completed.
    pub fn with_unknown_effect_horizon(mut self, horizon: Duration) -> Self {
        self.unknown_effect_horizon = Some(horizon);
        self
    }

    /// The clock slack allowed on a lease of `ttl`.
    pub fn slack(&self, ttl: Duration) -> Duration {
        ttl.mul_f64(self.clock_rate_slack.max(0.0)) + self.clock_slack
    }
}

/// A rule the history certainly broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Violation {
    /// Two different leases of one object were both certainly held at once (and no loss of
    /// backend data lies between their grants).
    #[error(
        "{object}: leases {first} and {second} were both certainly held from {from:?} to {to:?}"
    )]
    OverlappingHolders {
        /// The object.
        object: String,
        /// The lease granted first.
        first: LeaseId,
        /// The other lease.
        second: LeaseId,
        /// Start of the overlap (history time).
        from: Duration,
        /// End of the overlap (history time).
        to: Duration,
    },
    /// A grant invoked after another grant of the object completed has a fence that is not
    /// higher.
    #[error("{object}: acquire #{later_op} got fence {later_fence}, not above fence {earlier_fence} of acquire #{earlier_op}, which completed before it was invoked")]
    FenceOrder {
        /// The object.
        object: String,
        /// The grant that completed first.
        earlier_op: u64,
        /// Its fence.
        earlier_fence: u64,
        /// The grant invoked after it.
        later_op: u64,
        /// Its fence.
        later_fence: u64,
    },
    /// A renew or validate accepted a lease that had certainly expired: it was invoked after
    /// the latest moment the lease could still have been alive.
    #[error("{object}: {kind} #{op} accepted lease {lease}, invoked {late_by:?} after its latest possible expiry")]
    AcceptedExpired {
        /// The object.
        object: String,
        /// `renew` or `validate`.
        kind: &'static str,
        /// The operation.
        op: u64,
        /// The lease it accepted.
        lease: LeaseId,
        /// How long after the latest possible expiry (slack included) it was invoked.
        late_by: Duration,
    },
    /// A renew or validate answered with a lease of another fence than the one presented.
    #[error("{object}: {kind} #{op} presented {presented} and got back fence {returned}")]
    WrongLease {
        /// The object.
        object: String,
        /// `renew` or `validate`.
        kind: &'static str,
        /// The operation.
        op: u64,
        /// The lease presented.
        presented: LeaseId,
        /// The fence returned.
        returned: u64,
    },
    /// The storage node accepted a write whose fence is older than one it had accepted, in a
    /// write that had completed before this one was invoked: the writer's fence was superseded.
    #[error("{object}: write #{op} with fence {fence} accepted after write #{newer_op} with fence {newer_fence} had completed")]
    SupersededWriteAccepted {
        /// The object.
        object: String,
        /// The write accepted.
        op: u64,
        /// Its fence.
        fence: u64,
        /// The earlier accepted write with a newer fence.
        newer_op: u64,
        /// Its fence.
        newer_fence: u64,
    },
    /// The storage node accepted writes out of fence order (a write concurrent with, but
    /// decided after, a write with a newer fence).
    #[error("{object}: write #{op} with fence {fence} accepted after write #{newer_op} with fence {newer_fence}")]
    WriteOutOfOrder {
        /// The object.
        object: String,
        /// The write accepted.
        op: u64,
        /// Its fence.
        fence: u64,
        /// The write with a newer fence the node had accepted before.
        newer_op: u64,
        /// Its fence.
        newer_fence: u64,
    },
    /// The storage node refused a write although the newest fence it claims is not newer.
    #[error("{object}: write #{op} with fence {fence} refused as stale against fence {newest}")]
    WriteWronglyRefused {
        /// The object.
        object: String,
        /// The write refused.
        op: u64,
        /// Its fence.
        fence: u64,
        /// The newest fence the node claimed.
        newest: u64,
    },
}

/// What [`check`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Every violation found, grouped by rule.
    pub violations: Vec<Violation>,
    /// Operations judged.
    pub operations: usize,
    /// Leases granted (distinct fence and token).
    pub leases: usize,
    /// Pairs of overlapping leases not judged because a loss of backend data may lie between
    /// their grants (overlap is then allowed by design).
    pub overlaps_across_data_loss: usize,
}

impl Report {
    /// Whether the history broke no rule.
    pub fn is_ok(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Checks `history` against every rule and reports what it certainly broke.
///
/// 1. **Mutual exclusion.** A holder's safe window starts when its acquire completed and ends
///    at the invoke of its acquire, or of a later successful renew, plus the TTL (minus
///    [`CheckConfig::slack`]), or at the invoke of its release if earlier. A renew invoked after
///    the window had ended opens a new window at its completion. No two leases of one object
///    may have overlapping windows, unless a fault with [`Fault::loses_data`] may lie between
///    their grants.
/// 2. **Fence order.** A grant completed before another was invoked has the lower fence.
/// 3. **Expiry.** A renew or validate must not accept a lease when invoked after the latest
///    possible expiry: the completion of its last successful acquire or renew plus the TTL
///    (plus slack), or the effect horizon of a renew of unknown outcome.
/// 4. **Fenced storage.** The storage node accepts no write with a fence older than one it
///    accepted before, and refuses only writes that are older.
pub fn check(history: &History, config: &CheckConfig) -> Report {
    let mut report = Report {
        operations: history.operations.len(),
        ..Report::default()
    };
    let losses: Vec<&Fault> = history.faults.iter().filter(|f| f.loses_data).collect();
    let mut by_object: BTreeMap<&str, Vec<&Operation>> = BTreeMap::new();
    for op in &history.operations {
        by_object.entry(op.object.as_str()).or_default().push(op);
    }
    for (object, ops) in by_object {
        let leases = collect_leases(&ops);
        report.leases += leases.len();
        check_overlaps(object, &leases, &losses, config, &mut report);
        check_fence_order(object, &ops, &mut report.violations);
        check_expiry(object, &ops, &leases, config, &mut report.violations);
        check_storage(object, &ops, &mut report.violations);
    }
    report
}

/// Everything the history says about one lease.
#[derive(Debug, Default)]
struct LeaseRecord<'h> {
    /// Successful acquires that returned it (more than one only for an idempotent retry).
    acquires: Vec<&'h Operation>,
    /// Successful renews.
    renews: Vec<&'h Operation>,
    /// Renews of unknown outcome.
    unknown_renews: Vec<&'h Operation>,
    /// The earliest invoke of a release, whatever its outcome: the holder let go then.
    released_at: Option<Duration>,
}

impl LeaseRecord<'_> {
    fn first_acquire(&self) -> Option<&Operation> {
        self.acquires.iter().copied().min_by_key(|op| op.invoked)
    }
}

fn granted(op: &Operation) -> Option<&crate::history::Grant> {
    match &op.outcome {
        Outcome::Granted(grant) => Some(grant),
        _ => None,
    }
}

fn collect_leases<'h>(ops: &[&'h Operation]) -> BTreeMap<LeaseId, LeaseRecord<'h>> {
    let mut leases: BTreeMap<LeaseId, LeaseRecord<'h>> = BTreeMap::new();
    for op in ops {
        if let (OpKind::Acquire { .. }, Some(grant)) = (&op.kind, granted(op)) {
            leases
                .entry(grant.lease.clone())
                .or_default()
                .acquires
                .push(op);
        }
    }
    for op in ops {
        let Some(record) = op.kind.lease().and_then(|id| leases.get_mut(id)) else {
            continue;
        };
        match (&op.kind, &op.outcome) {
            (OpKind::Renew { .. }, Outcome::Granted(_)) => record.renews.push(op),
            (OpKind::Renew { .. }, Outcome::Unknown { .. }) => record.unknown_renews.push(op),
            (OpKind::Release { .. }, _) => {
                record.released_at = Some(match record.released_at {
                    Some(at) => at.min(op.invoked),
                    None => op.invoked,
                });
            }
            _ => {}
        }
    }
    leases
}

/// The windows in which the holder of a lease was certainly the holder.
fn safe_windows(record: &LeaseRecord<'_>, config: &CheckConfig) -> Vec<(Duration, Duration)> {
    // Successful acquires and renews in invoke order: each proves the lease alive from its
    // completion until its invoke plus the TTL the backend reported.
    let mut proofs: Vec<&Operation> = record
        .acquires
        .iter()
        .chain(record.renews.iter())
        .copied()
        .collect();
    proofs.sort_by_key(|op| op.invoked);
    let mut windows: Vec<(Duration, Duration)> = Vec::new();
    for op in proofs {
        let Some(grant) = granted(op) else { continue };
        let end = (op.invoked + grant.ttl).saturating_sub(config.slack(grant.ttl));
        match windows.last_mut() {
            // Invoked while the holder was still safe: the window continues.
            Some(last) if op.invoked <= last.1 => last.1 = last.1.max(end),
            _ => windows.push((op.completed, end)),
        }
    }
    if let Some(released) = record.released_at {
        for window in &mut windows {
            window.1 = window.1.min(released);
        }
    }
    windows.retain(|(start, end)| start < end);
    windows
}

/// Whether a loss of backend data may lie between the grants of two leases.
fn data_loss_between(a: &Operation, b: &Operation, losses: &[&Fault]) -> bool {
    let earliest_invoke = a.invoked.min(b.invoked);
    let latest_completion = a.completed.max(b.completed);
    losses
        .iter()
        .any(|loss| loss.started < latest_completion && loss.ended > earliest_invoke)
}

fn check_overlaps(
    object: &str,
    leases: &BTreeMap<LeaseId, LeaseRecord<'_>>,
    losses: &[&Fault],
    config: &CheckConfig,
    report: &mut Report,
) {
    let mut windows: Vec<(Duration, Duration, &LeaseId)> = Vec::new();
    for (id, record) in leases {
        for (start, end) in safe_windows(record, config) {
            windows.push((start, end, id));
        }
    }
    windows.sort_by_key(|w| (w.0, w.1));
    let mut judged: HashSet<(&LeaseId, &LeaseId)> = HashSet::new();
    for (i, &(start, end, first)) in windows.iter().enumerate() {
        for &(other_start, other_end, second) in &windows[i + 1..] {
            if other_start >= end {
                break;
            }
            if first == second || !judged.insert((first, second)) {
                continue;
            }
            let (Some(a), Some(b)) = (
                leases.get(first).and_then(LeaseRecord::first_acquire),
                leases.get(second).and_then(LeaseRecord::first_acquire),
            ) else {
                continue;
            };
            if data_loss_between(a, b, losses) {
                report.overlaps_across_data_loss += 1;
                continue;
            }
            report.violations.push(Violation::OverlappingHolders {
                object: object.to_owned(),
                first: first.clone(),
                second: second.clone(),
                from: other_start.max(start),
                to: other_end.min(end),
            });
        }
    }
}

fn check_fence_order(object: &str, ops: &[&Operation], violations: &mut Vec<Violation>) {
    let mut grants: Vec<(&Operation, &LeaseId)> = ops
        .iter()
        .filter(|op| matches!(op.kind, OpKind::Acquire { .. }))
        .filter_map(|op| granted(op).map(|grant| (*op, &grant.lease)))
        .collect();
    let mut by_completion = grants.clone();
    by_completion.sort_by_key(|(op, _)| op.completed);
    grants.sort_by_key(|(op, _)| op.invoked);
    // Sweep in invoke order, folding in every grant completed before the current invoke.
    let mut next = 0;
    let mut highest: Option<(&Operation, &LeaseId)> = None;
    for (later, later_lease) in grants {
        while let Some(&(done, lease)) = by_completion.get(next) {
            if done.completed >= later.invoked {
                break;
            }
            if highest.is_none_or(|(_, high)| lease.fence > high.fence) {
                highest = Some((done, lease));
            }
            next += 1;
        }
        if let Some((earlier, earlier_lease)) = highest {
            let out_of_order = later_lease.fence < earlier_lease.fence
                || (later_lease.fence == earlier_lease.fence && later_lease != earlier_lease);
            if out_of_order {
                violations.push(Violation::FenceOrder {
                    object: object.to_owned(),
                    earlier_op: earlier.id,
                    earlier_fence: earlier_lease.fence,
                    later_op: later.id,
                    later_fence: later_lease.fence,
                });
            }
        }
    }
}

fn check_expiry(
    object: &str,
    ops: &[&Operation],
    leases: &BTreeMap<LeaseId, LeaseRecord<'_>>,
    config: &CheckConfig,
    violations: &mut Vec<Violation>,
) {
    for op in ops {
        let (kind, presented) = match &op.kind {
            OpKind::Renew { lease, .. } => ("renew", lease),
            OpKind::Validate { lease } => ("validate", lease),
            _ => continue,
        };
        let Some(grant) = granted(op) else { continue };
        if grant.lease.fence != presented.fence {
            violations.push(Violation::WrongLease {
                object: object.to_owned(),
                kind,
                op: op.id,
                presented: presented.clone(),
                returned: grant.lease.fence,
            });
        }
        let Some(record) = leases.get(presented) else {
            continue;
        };
        if let Some(expiry) = latest_possible_expiry(record, op, config) {
            if op.invoked > expiry {
                violations.push(Violation::AcceptedExpired {
                    object: object.to_owned(),
                    kind,
                    op: op.id,
                    lease: presented.clone(),
                    late_by: op.invoked - expiry,
                });
            }
        }
    }
}

/// The latest moment (slack included) the lease could still have been alive when `accepted`
/// ran, judged from every acquire and renew invoked before `accepted` completed; `None` when
/// unbounded.
fn latest_possible_expiry(
    record: &LeaseRecord<'_>,
    accepted: &Operation,
    config: &CheckConfig,
) -> Option<Duration> {
    let mut latest = Duration::ZERO;
    let known = record.acquires.iter().chain(record.renews.iter());
    for op in known.filter(|op| op.id != accepted.id && op.invoked < accepted.completed) {
        if let Some(grant) = granted(op) {
            latest = latest.max(op.completed + grant.ttl + config.slack(grant.ttl));
        }
    }
    for op in record
        .unknown_renews
        .iter()
        .filter(|op| op.invoked < accepted.completed)
    {
        let OpKind::Renew { ttl, .. } = op.kind else {
            continue;
        };
        let horizon = config.unknown_effect_horizon?;
        latest = latest.max(op.completed + horizon + ttl + config.slack(ttl));
    }
    Some(latest)
}

fn check_storage(object: &str, ops: &[&Operation], violations: &mut Vec<Violation>) {
    let mut writes: Vec<(&Operation, u64)> = ops
        .iter()
        .filter_map(|op| match op.kind {
            OpKind::Write { fence } => Some((*op, fence)),
            _ => None,
        })
        .collect();
    writes.sort_by_key(|(op, _)| op.completed);
    let mut newest: Option<(&Operation, u64)> = None;
    for (op, fence) in writes {
        match op.outcome {
            Outcome::Accepted => {
                if let Some((newer, newer_fence)) = newest.filter(|(_, newer)| *newer > fence) {
                    let superseded = newer.completed < op.invoked;
                    let (object, op, newer_op) = (object.to_owned(), op.id, newer.id);
                    violations.push(if superseded {
                        Violation::SupersededWriteAccepted {
                            object,
                            op,
                            fence,
                            newer_op,
                            newer_fence,
                        }
                    } else {
                        Violation::WriteOutOfOrder {
                            object,
                            op,
                            fence,
                            newer_op,
                            newer_fence,
                        }
                    });
                } else {
                    newest = Some((op, fence));
                }
            }
            Outcome::Stale { newest: claimed } if claimed <= fence => {
                violations.push(Violation::WriteWronglyRefused {
                    object: object.to_owned(),
                    op: op.id,
                    fence,
                    newest: claimed,
                });
            }
            _ => {}
        }
    }
}
