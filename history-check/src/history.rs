//! What a history is made of: operations with their invoke and completion times and outcomes,
//! and the faults injected while they ran.
//!
//! Every time is an offset from one monotonic clock in the test process (the
//! [`Recorder`](crate::Recorder)'s epoch), never a server's clock: the checker judges only from
//! what the clients could see.

use std::time::Duration;

use lockcore::{Fence, Lease, LockError, LockResult};

/// A lease as its holder names it: the grant's fence and a fingerprint of its token.
///
/// Two grants are the same lease only if both match, so a retried acquire that returns the
/// same lease (an idempotent request id) is not mistaken for a second holder.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseId {
    /// The grant's fence.
    pub fence: u64,
    /// A short fingerprint of the token ([`lockcore::LockToken::fingerprint`]), never the token.
    pub token: String,
}

impl LeaseId {
    /// The id of a lease a backend returned.
    pub fn of(lease: &Lease) -> Self {
        Self {
            fence: lease.fence.get(),
            token: lease.token.fingerprint(),
        }
    }
}

impl std::fmt::Display for LeaseId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "fence {} (token {})", self.fence, self.token)
    }
}

/// Which operation a client invoked, with the arguments the checker needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpKind {
    /// `acquire(object, owner, ttl, wait)`.
    Acquire {
        /// The owner asking.
        owner: String,
        /// The TTL asked for.
        ttl: Duration,
        /// How long it may block.
        wait: Duration,
    },
    /// `renew` of the holder's lease.
    Renew {
        /// The lease presented.
        lease: LeaseId,
        /// The TTL asked for.
        ttl: Duration,
    },
    /// `validate` of a lease.
    Validate {
        /// The lease presented.
        lease: LeaseId,
    },
    /// `release` of a lease.
    Release {
        /// The lease presented.
        lease: LeaseId,
    },
    /// A write to the simulated storage node, carrying the writer's fence.
    Write {
        /// The fence the write carries.
        fence: u64,
    },
}

impl OpKind {
    /// A short name: `acquire`, `renew`, `validate`, `release`, `write`.
    pub fn name(&self) -> &'static str {
        match self {
            OpKind::Acquire { .. } => "acquire",
            OpKind::Renew { .. } => "renew",
            OpKind::Validate { .. } => "validate",
            OpKind::Release { .. } => "release",
            OpKind::Write { .. } => "write",
        }
    }

    /// The lease an operation on an existing lease names (renew, validate, release).
    pub fn lease(&self) -> Option<&LeaseId> {
        match self {
            OpKind::Renew { lease, .. }
            | OpKind::Validate { lease }
            | OpKind::Release { lease } => Some(lease),
            OpKind::Acquire { .. } | OpKind::Write { .. } => None,
        }
    }
}

/// A lease as an acquire, renew or validate returned it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Who holds it.
    pub owner: String,
    /// Its fence and token fingerprint.
    pub lease: LeaseId,
    /// The TTL the backend reported (granted TTL for acquire and renew, time left for
    /// validate).
    pub ttl: Duration,
}

/// How an operation ended, as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Acquire, renew or validate succeeded with this lease.
    Granted(Grant),
    /// Release succeeded.
    Released,
    /// Acquire refused: another holder has the object. Certainly no effect.
    Locked,
    /// The object was not locked. Certainly no effect.
    NotHeld,
    /// The object is held by another lease. Certainly no effect.
    TokenMismatch,
    /// Any other definite refusal (`invalid_token`, `invalid_argument`), by its code.
    Refused {
        /// The error's code.
        code: String,
    },
    /// The outcome is unknown: the backend was unavailable, the request timed out or failed
    /// internally. The operation may have taken effect, at any time after it was invoked.
    Unknown {
        /// What the client saw.
        reason: String,
    },
    /// The storage node accepted the write.
    Accepted,
    /// The storage node refused the write: it had already accepted a newer fence.
    Stale {
        /// The newest fence the node had accepted for the object.
        newest: u64,
    },
}

impl Outcome {
    /// The outcome of an acquire, renew or validate.
    pub fn of_lease(result: &LockResult<Lease>) -> Self {
        match result {
            Ok(lease) => Outcome::Granted(Grant {
                owner: lease.owner.as_str().to_owned(),
                lease: LeaseId::of(lease),
                ttl: lease.ttl,
            }),
            Err(error) => Self::of_error(error),
        }
    }

    /// The outcome of a release.
    pub fn of_release(result: &LockResult<Fence>) -> Self {
        match result {
            Ok(_) => Outcome::Released,
            Err(error) => Self::of_error(error),
        }
    }

    /// The outcome a lock error stands for.
    pub fn of_error(error: &LockError) -> Self {
        match error {
            LockError::Locked { .. } => Outcome::Locked,
            LockError::NotHeld { .. } => Outcome::NotHeld,
            LockError::TokenMismatch { .. } => Outcome::TokenMismatch,
            LockError::InvalidToken { .. } | LockError::InvalidArgument { .. } => {
                Outcome::Refused {
                    code: error.code().to_owned(),
                }
            }
            // Unavailable, Internal, and any variant added later: the client cannot know.
            _ => Outcome::Unknown {
                reason: error.to_string(),
            },
        }
    }

    /// A short name for summaries: `granted`, `released`, `locked`, `not_held`,
    /// `token_mismatch`, the refusal's code, `unknown`, `accepted`, `stale`.
    pub fn name(&self) -> &str {
        match self {
            Outcome::Granted(_) => "granted",
            Outcome::Released => "released",
            Outcome::Locked => "locked",
            Outcome::NotHeld => "not_held",
            Outcome::TokenMismatch => "token_mismatch",
            Outcome::Refused { code } => code,
            Outcome::Unknown { .. } => "unknown",
            Outcome::Accepted => "accepted",
            Outcome::Stale { .. } => "stale",
        }
    }

    /// Whether the outcome is unknown (the operation may or may not have taken effect).
    pub fn is_unknown(&self) -> bool {
        matches!(self, Outcome::Unknown { .. })
    }
}

/// One operation of one client: what it asked, when, and what it got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// Unique within the history, in invoke order.
    pub id: u64,
    /// The client (task) that ran it.
    pub client: usize,
    /// The object it was about.
    pub object: String,
    /// What was asked.
    pub kind: OpKind,
    /// When the client sent it.
    pub invoked: Duration,
    /// When the client saw the answer (or gave up on it).
    pub completed: Duration,
    /// What the client saw.
    pub outcome: Outcome,
}

/// A fault injected while the history was recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// What was done, e.g. `SIGKILL lockd 1`.
    pub name: String,
    /// When it began.
    pub started: Duration,
    /// When it was over (the process restarted, the pause ran out, ...).
    pub ended: Duration,
    /// Whether the backend may have lost lock state (`FLUSHALL`, a restart without
    /// persistence). Two holders separated by such a loss may overlap by design.
    pub loses_data: bool,
}

/// A recorded history: every operation and every fault.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    /// The operations, in no particular order.
    pub operations: Vec<Operation>,
    /// The faults, in no particular order.
    pub faults: Vec<Fault>,
}

impl History {
    /// How long after `fault` ended the first successful acquire completed, if one did.
    ///
    /// This is the recovery time reported for the fault: from the moment the fault is over to
    /// the first grant any client received after it.
    pub fn recovery_after(&self, fault: &Fault) -> Option<Duration> {
        self.operations
            .iter()
            .filter(|op| {
                matches!(op.kind, OpKind::Acquire { .. })
                    && matches!(op.outcome, Outcome::Granted(_))
                    && op.completed >= fault.ended
            })
            .map(|op| op.completed - fault.ended)
            .min()
    }

    /// How many acquires succeeded with a completion between `from` and `to`: the service's
    /// availability during a fault.
    pub fn grants_between(&self, from: Duration, to: Duration) -> usize {
        self.operations
            .iter()
            .filter(|op| {
                matches!(op.kind, OpKind::Acquire { .. })
                    && matches!(op.outcome, Outcome::Granted(_))
                    && op.completed >= from
                    && op.completed <= to
            })
            .count()
    }

    /// How many operations of each kind ended with each outcome, sorted by kind and outcome.
    pub fn summary(&self) -> Vec<(&'static str, String, usize)> {
        let mut counts = std::collections::BTreeMap::<(&'static str, String), usize>::new();
        for op in &self.operations {
            *counts
                .entry((op.kind.name(), op.outcome.name().to_owned()))
                .or_default() += 1;
        }
        counts
            .into_iter()
            .map(|((kind, outcome), count)| (kind, outcome, count))
            .collect()
    }
}
