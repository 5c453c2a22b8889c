//! A reference model of lockd's lock semantics in plain Rust, and the randomized check that holds
//! every backend to it.
//!
//! [`ReferenceModel`] is the semantics written as simply as possible. The objects are a small
//! tree of paths (`d`, `d/x`, `d/x/y` and `db`, which is not under `d`). Each object has a mode
//! and a set of holders: none, one exclusive holder, or any number of shared ones; each holder is
//! one grant (owner, fence, scope, expiry, lock-delay). An acquire (with no wait) names one or
//! more objects none of which covers another, each in a mode and a scope (the object, or its
//! subtree), and is granted all together or not at all: a claim is refused when a holder in a
//! conflicting mode covers an id the claim covers (see `lockcore::path`), or when a holder that
//! would so conflict expired less than its lock-delay ago.
//! Every new grant gets a fence above every fence its object had before. A refused acquire is
//! `Locked`, listing every object in conflict in request order, each with one of its holders.
//! Release, renew, validate and downgrade accept a token of one of the object's live holders; a
//! token of an earlier grant of the object is `NotHeld` when the object has no live holder and
//! `TokenMismatch` when it has others; a token that is not authentic for the object (its MAC or
//! fence bytes changed, or minted for another object) is `InvalidToken` and changes nothing.
//! Downgrade turns the object's exclusive holder into a shared one. Batched releases and renewals
//! answer each entry as a single one would. An acquire that repeats the request id, owner and
//! mode of a live grant's acquire gets that grant back (same token and fence, expiry unchanged)
//! for that object, never a second grant. A lease ends when released or when its TTL has run out.
//!
//! [`random_operations_agree_with_the_reference_model`] drives a backend and the model with the
//! same random operations and compares every outcome. Operations never wait, so the queue of
//! waiters plays no part here; the fairness checks in [`crate::modes`] cover it.
//!
//! # Time
//!
//! A backend decides expiry on its own clock, at some instant between when the client sent a
//! request and when it got the answer. The model therefore knows each lease's expiry only as a
//! [`Window`] of client-side instants, and an operation only as the window it ran in. A holder
//! is judged, for each operation, as certainly live, certainly expired, or too close to call
//! (within a margin of the expiry window, wider for backends across the network). The answer is
//! accepted when some choice of live or expired for the holders too close to call predicts it;
//! the model then takes on the choice with the fewest expiries that does (a grant over such a
//! holder means it had expired; a `Locked` naming it that it had not).

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::time::Duration;

use lockcore::{
    AcquireRequest, Fence, Grant, Lease, LockError, LockMode, LockScope, LockService, LockSpec,
    LockToken, ObjectId, OwnerId, RequestId,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use crate::{Capabilities, Scope};

/// Environment variable that fixes the seed of the randomized model check.
pub const MODEL_SEED_ENV: &str = "LOCKD_MODEL_SEED";

/// Operations per run of the randomized check.
const STEPS: usize = 260;
/// The objects the operations draw from, a small tree (`db` shares a prefix with `d` but is not
/// under it), and the owners: few, so operations collide often.
const NAMES: [&str; 4] = ["d", "d/x", "d/x/y", "db"];
const OBJECTS: usize = NAMES.len();
const OWNERS: usize = 3;
/// Lock-delays the acquires draw from (most have none).
const LOCK_DELAYS_MS: [u64; 6] = [0, 0, 0, 0, 150, 400];
/// Lease lengths the operations draw from: mostly short enough to expire during a run.
const TTLS_MS: [u64; 5] = [120, 200, 300, 450, 30_000];
/// Probability that a step is a pause, and the longest pause.
const PAUSE_PROBABILITY: f64 = 0.08;
const LONGEST_PAUSE_MS: u64 = 320;
/// Steps of history shown when the backend and the model disagree.
const HISTORY: usize = 25;
/// Most holders too close to call that one operation may depend on (2^this choices).
const MOST_UNKNOWN: usize = 10;

/// The span of client-side time within which a backend-side instant lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// The instant cannot be earlier than this.
    pub earliest: Instant,
    /// The instant cannot be later than this.
    pub latest: Instant,
}

impl Window {
    /// The window `[earliest, latest]`.
    pub fn new(earliest: Instant, latest: Instant) -> Self {
        Self { earliest, latest }
    }

    /// This window moved `by` later (a lease of `by` granted within this window ends within the
    /// result).
    pub fn shifted(self, by: Duration) -> Self {
        Self::new(self.earliest + by, self.latest + by)
    }
}

/// Whether a lease was live when an operation ran, as far as client-side times can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Certainly live throughout the operation's window.
    Live,
    /// Certainly expired.
    Expired,
    /// Too close to the expiry to call: either answer is right.
    Unknown,
}

/// One holder of an object, as the model knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// Who holds the object.
    pub owner: OwnerId,
    /// The grant's fence.
    pub fence: Fence,
    /// Which grant (an index into the model's grant list) this lease is.
    pub grant: usize,
    /// When the lease runs out unless renewed.
    pub expires: Window,
    /// What it covers.
    pub scope: LockScope,
    /// Its lock-delay: after it expires it blocks what it conflicts with for this long.
    pub delay: Duration,
    /// Known to have expired: no longer a holder, kept while its lock-delay may still run.
    pub ended: bool,
}

impl Holder {
    /// When its lock-delay ends (its expiry, without one).
    fn delay_ends(&self) -> Window {
        self.expires.shifted(self.delay)
    }
}

/// One object in the model: its mode, its holders, and the highest fence it was ever given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectModel {
    /// The mode every holder holds it in (meaningless without holders).
    pub mode: LockMode,
    /// The holders not released and not known to have expired, by increasing fence.
    pub holders: Vec<Holder>,
    /// The highest fence granted on this object so far.
    pub last_fence: Option<Fence>,
}

/// One grant ever made: its object, token, and the acquire that made it.
#[derive(Debug, Clone)]
pub struct GrantRecord {
    /// Index of the object.
    pub object: usize,
    /// The lease's token.
    pub token: LockToken,
    /// The mode the acquire asked for.
    pub mode: LockMode,
    /// The scope the acquire asked for.
    pub scope: LockScope,
    /// The owner and request id of the acquire, if it carried an id.
    pub request: Option<(OwnerId, RequestId)>,
}

/// A token presented to release, renew, validate or downgrade, with what the model knows.
#[derive(Debug, Clone)]
pub struct Presented {
    /// How the token was chosen (for the failure report).
    pub kind: TokenKind,
    /// The token itself.
    pub token: LockToken,
    /// The grant whose token this is, or was before it was tampered with.
    pub grant: usize,
}

impl Presented {
    /// Whether the token is unchanged since it was granted (not tampered with).
    pub fn is_untouched(&self) -> bool {
        !matches!(self.kind, TokenKind::TamperedMac | TokenKind::TamperedFence)
    }
}

/// The kinds of token the check presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// A token of one of the object's current holders.
    Current,
    /// A token of an earlier grant of the same object (released or expired).
    Old,
    /// An authentic token of a grant of another object.
    OtherObject,
    /// A token of this object with one character of its MAC changed.
    TamperedMac,
    /// A token of this object with its fence bytes changed.
    TamperedFence,
}

/// What a token operation does with the holder it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenOp {
    /// `release`.
    Release,
    /// `renew` to a TTL.
    Renew(Duration),
    /// `validate`.
    Validate,
    /// `downgrade`.
    Downgrade,
}

/// One operation of the randomized check.
#[derive(Debug, Clone)]
pub enum Op {
    /// `acquire_with` of one or more objects none of which covers another, each in a mode and
    /// a scope, with no wait.
    Acquire {
        /// The objects (by index), modes and scopes, in request order.
        claims: Vec<ModelClaim>,
        /// The owner asking.
        owner: OwnerId,
        /// The leases asked for.
        ttl: Duration,
        /// The leases' lock-delay.
        lock_delay: Duration,
        /// The request id, when the acquire carries one (a retry repeats an earlier one).
        request_id: Option<RequestId>,
    },
    /// A release, renew, validate or downgrade of one object, or (release and renew) a batch
    /// of distinct objects in one request.
    Tokens {
        /// What to do.
        op: TokenOp,
        /// The objects (by index) and the tokens presented, in request order.
        items: Vec<(usize, Presented)>,
    },
    /// `inspect(object)`.
    Inspect {
        /// Index of the object.
        object: usize,
    },
    /// Let time pass, so leases expire.
    Pause(Duration),
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Acquire {
                claims,
                owner,
                ttl,
                lock_delay,
                request_id,
            } => {
                let named: Vec<String> = claims
                    .iter()
                    .map(|(object, mode, scope)| format!("{} {mode} {scope}", NAMES[*object]))
                    .collect();
                write!(
                    f,
                    "acquire([{}], {owner}, ttl={}ms, delay={}ms",
                    named.join(", "),
                    ttl.as_millis(),
                    lock_delay.as_millis()
                )?;
                match request_id {
                    Some(id) => write!(f, ", request id {})", id.as_str()),
                    None => f.write_str(")"),
                }
            }
            Op::Tokens { op, items } => {
                let named: Vec<String> = items
                    .iter()
                    .map(|(object, token)| format!("o{object} {token}"))
                    .collect();
                write!(f, "{op:?}([{}])", named.join(", "))
            }
            Op::Inspect { object } => write!(f, "inspect(o{object})"),
            Op::Pause(d) => write!(f, "pause {}ms", d.as_millis()),
        }
    }
}

impl fmt::Display for Presented {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} token of grant #{}", self.kind, self.grant)
    }
}

/// One object of a granted acquire, with just the detail the model predicts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// A new grant to the owner in the mode (its fence is checked separately: it must exceed
    /// every earlier one).
    New {
        /// The new holder.
        owner: OwnerId,
        /// The mode granted.
        mode: LockMode,
    },
    /// The grant this request already holds, returned again (same token and fence).
    Replayed {
        /// The fence of the lease returned.
        fence: Fence,
        /// Its mode now.
        mode: LockMode,
    },
}

/// What an operation came to, with just the detail the model predicts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Acquire granted: one part per object, in request order.
    Granted(Vec<Part>),
    /// `LockError::Locked`: the objects in conflict, in request order, each with the holder
    /// the backend named.
    Locked(Vec<(usize, OwnerId)>),
    /// The model's prediction of a `Locked`: the objects in conflict, in request order, each
    /// with every owner the backend may name (of a holder, or of an expired lease in its
    /// lock-delay, that conflicts with the claim).
    Refused(Vec<(usize, Vec<OwnerId>)>),
    /// Release succeeded, returning the released fence.
    Released {
        /// The fence of the lease released.
        fence: Fence,
    },
    /// Renew, validate or downgrade accepted the token, returning the holder's lease.
    Accepted {
        /// The holder.
        owner: OwnerId,
        /// The holder's fence.
        fence: Fence,
        /// The lease's mode (after the operation).
        mode: LockMode,
    },
    /// A batch's answers, one per entry.
    Each(Vec<Outcome>),
    /// Inspect's answer: the mode and the holders by increasing fence, or free.
    Inspected(Option<(LockMode, Vec<(OwnerId, Fence)>)>),
    /// `LockError::NotHeld`.
    NotHeld,
    /// `LockError::TokenMismatch`.
    TokenMismatch,
    /// `LockError::InvalidToken`.
    InvalidToken,
    /// Anything else: never expected.
    Unexpected(String),
    /// A pause.
    Paused,
}

/// The reference model: every object's state, and every grant made so far.
#[derive(Debug, Clone)]
pub struct ReferenceModel {
    /// Per object, by index.
    pub objects: Vec<ObjectModel>,
    /// Every grant ever made, by index.
    pub grants: Vec<GrantRecord>,
    /// Every acquire with a request id sent so far, for retries.
    pub requests: Vec<SentRequest>,
    /// How close to an expiry an operation must be to count as too close to call.
    pub margin: Duration,
    /// Time zero of the run, for readable reports.
    pub started: Instant,
}

/// One claim of a modelled acquire: the object (by index), mode and scope.
pub type ModelClaim = (usize, LockMode, LockScope);

/// An acquire with a request id: its claims, owner, id, TTL and lock-delay, to be retried as
/// it was.
pub type SentRequest = (Vec<ModelClaim>, OwnerId, RequestId, Duration, Duration);

/// What the model takes as given, for one operation, about the holders too close to call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assumed {
    /// Grants taken to have expired.
    pub expired: HashSet<usize>,
    /// Grants (among the expired) taken to be past their lock-delay too.
    pub over: HashSet<usize>,
}

/// Which of a holder's two instants an uncertainty is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Boundary {
    Expiry,
    DelayEnd,
}

impl ReferenceModel {
    /// A model of `objects` free objects, judging expiries with `margin`.
    pub fn new(objects: usize, margin: Duration) -> Self {
        Self {
            objects: vec![ObjectModel::default(); objects],
            grants: Vec::new(),
            requests: Vec::new(),
            margin,
            started: Instant::now(),
        }
    }

    /// Milliseconds from the start of the run to `at`.
    pub fn ms(&self, at: Instant) -> u128 {
        at.saturating_duration_since(self.started).as_millis()
    }

    /// One line per object: free, or its mode and holders with fences, grants and expiries.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for (index, state) in self.objects.iter().enumerate() {
            let last = state.last_fence.map_or("none".into(), |f| f.to_string());
            let line = if state.holders.is_empty() {
                format!("o{index}: free (last fence {last})")
            } else {
                let holders: Vec<String> = state
                    .holders
                    .iter()
                    .map(|h| {
                        format!(
                            "{} fence {} (grant #{}) until {}..{}ms",
                            h.owner,
                            h.fence,
                            h.grant,
                            self.ms(h.expires.earliest),
                            self.ms(h.expires.latest)
                        )
                    })
                    .collect();
                format!(
                    "o{index}: {} by [{}] (last fence {last})",
                    state.mode,
                    holders.join("; ")
                )
            };
            out.push_str("\n  ");
            out.push_str(&line);
        }
        out
    }

    /// Whether `holder`'s lease was live during `during`.
    pub fn liveness(&self, holder: &Holder, during: Window) -> Liveness {
        self.judge(holder.expires, during)
    }

    /// Whether an instant known to lie in `ends` was still ahead throughout `during`.
    fn judge(&self, ends: Window, during: Window) -> Liveness {
        if during.latest + self.margin < ends.earliest {
            Liveness::Live
        } else if during.earliest > ends.latest + self.margin {
            Liveness::Expired
        } else {
            Liveness::Unknown
        }
    }

    /// Whether `holder` still holds, given `assumed`.
    fn holds(holder: &Holder, assumed: &Assumed) -> bool {
        !holder.ended && !assumed.expired.contains(&holder.grant)
    }

    /// Whether `holder` still blocks what it conflicts with, holding or in its lock-delay.
    fn blocks(holder: &Holder, assumed: &Assumed) -> bool {
        Self::holds(holder, assumed)
            || (!holder.delay.is_zero() && !assumed.over.contains(&holder.grant))
    }

    /// The holders of `object` taken to be live under `assumed`.
    fn live<'a>(&'a self, object: usize, assumed: &'a Assumed) -> impl Iterator<Item = &'a Holder> {
        self.objects[object]
            .holders
            .iter()
            .filter(move |h| Self::holds(h, assumed))
    }

    /// The owners of every holder or lock-delay, anywhere in the tree, that blocks a claim of
    /// `object` in `mode` and `scope`, by the issue's coverage rule.
    fn blocking_owners(
        &self,
        object: usize,
        mode: LockMode,
        scope: LockScope,
        assumed: &Assumed,
    ) -> Vec<OwnerId> {
        let mut owners = Vec::new();
        for (other, state) in self.objects.iter().enumerate() {
            if !state.mode.conflicts_with(mode) {
                continue;
            }
            for holder in state.holders.iter().filter(|h| Self::blocks(h, assumed)) {
                if covers_a_common_id(object, scope, other, holder.scope) {
                    owners.push(holder.owner.clone());
                }
            }
        }
        owners
    }

    /// Whether grant `grant` was made by an acquire of `owner` in `mode` and `scope` with
    /// `request_id`: only then does a request draw the same token digest again.
    fn made_by(
        &self,
        grant: usize,
        owner: &OwnerId,
        (mode, scope): (LockMode, LockScope),
        request_id: Option<&RequestId>,
    ) -> bool {
        let record = &self.grants[grant];
        match (&record.request, request_id) {
            (Some((by, id)), Some(request_id)) => {
                by == owner && id == request_id && record.mode == mode && record.scope == scope
            }
            _ => false,
        }
    }

    /// What `op` must come to under `assumed` (about the holders too close to call).
    pub fn predict(&self, op: &Op, assumed: &Assumed) -> Outcome {
        match op {
            Op::Acquire {
                claims,
                owner,
                request_id,
                ..
            } => {
                let mut parts = Vec::new();
                let mut conflicts = Vec::new();
                for &(object, mode, scope) in claims {
                    let live: Vec<&Holder> = self.live(object, assumed).collect();
                    let held_mode = self.objects[object].mode;
                    let blocking = self.blocking_owners(object, mode, scope, assumed);
                    if let Some(h) = live
                        .iter()
                        .find(|h| self.made_by(h.grant, owner, (mode, scope), request_id.as_ref()))
                    {
                        parts.push(Part::Replayed {
                            fence: h.fence,
                            mode: held_mode,
                        });
                    } else if !blocking.is_empty() {
                        conflicts.push((object, blocking));
                    } else {
                        parts.push(Part::New {
                            owner: owner.clone(),
                            mode,
                        });
                    }
                }
                if conflicts.is_empty() {
                    Outcome::Granted(parts)
                } else {
                    Outcome::Refused(conflicts)
                }
            }
            Op::Tokens { op, items } => {
                let mut each: Vec<Outcome> = items
                    .iter()
                    .map(|(object, token)| self.predict_token(*op, *object, token, assumed))
                    .collect();
                if each.len() == 1 {
                    each.remove(0)
                } else {
                    Outcome::Each(each)
                }
            }
            Op::Inspect { object } => {
                let holders: Vec<(OwnerId, Fence)> = self
                    .live(*object, assumed)
                    .map(|h| (h.owner.clone(), h.fence))
                    .collect();
                Outcome::Inspected(
                    (!holders.is_empty()).then(|| (self.objects[*object].mode, holders)),
                )
            }
            Op::Pause(_) => Outcome::Paused,
        }
    }

    fn predict_token(
        &self,
        op: TokenOp,
        object: usize,
        token: &Presented,
        assumed: &Assumed,
    ) -> Outcome {
        if !token.is_untouched() || self.grants[token.grant].object != object {
            // Not authentic for this object: refused before any lock is looked at.
            return Outcome::InvalidToken;
        }
        let live: Vec<&Holder> = self.live(object, assumed).collect();
        if live.is_empty() {
            return Outcome::NotHeld;
        }
        let Some(h) = live.iter().find(|h| h.grant == token.grant) else {
            return Outcome::TokenMismatch;
        };
        let mode = self.objects[object].mode;
        match op {
            TokenOp::Release => Outcome::Released { fence: h.fence },
            TokenOp::Renew(_) | TokenOp::Validate => Outcome::Accepted {
                owner: h.owner.clone(),
                fence: h.fence,
                mode,
            },
            TokenOp::Downgrade => Outcome::Accepted {
                owner: h.owner.clone(),
                fence: h.fence,
                mode: LockMode::Shared,
            },
        }
    }

    /// Whether the backend's `actual` answer is the `predicted` one: equal, except that a
    /// `Locked` may name any owner the prediction allows for each object in conflict.
    fn agrees(&self, predicted: &Outcome, actual: &Outcome) -> bool {
        match (predicted, actual) {
            (Outcome::Refused(p), Outcome::Locked(a)) => {
                p.len() == a.len()
                    && p.iter()
                        .zip(a)
                        .all(|((po, owners), (ao, holder))| po == ao && owners.contains(holder))
            }
            (Outcome::Each(p), Outcome::Each(a)) => {
                p.len() == a.len() && p.iter().zip(a).all(|(p, a)| self.agrees(p, a))
            }
            _ => predicted == actual,
        }
    }

    /// Tells replayed leases from new grants in a granted acquire: a lease that carries the
    /// fence of a holder the model knows is that holder's lease returned again.
    pub fn classify(&self, op: &Op, outcome: Outcome, leases: &[Option<Lease>]) -> Outcome {
        let (Op::Acquire { claims, .. }, Outcome::Granted(_)) = (op, &outcome) else {
            return outcome;
        };
        let parts = claims
            .iter()
            .zip(leases)
            .map(|(&(object, _, _), lease)| match lease {
                Some(lease)
                    if self.objects[object]
                        .holders
                        .iter()
                        .any(|h| h.fence == lease.fence) =>
                {
                    Part::Replayed {
                        fence: lease.fence,
                        mode: lease.mode,
                    }
                }
                Some(lease) => Part::New {
                    owner: lease.owner.clone(),
                    mode: lease.mode,
                },
                None => Part::New {
                    owner: OwnerId::new("missing-lease").expect("valid"),
                    mode: LockMode::Exclusive,
                },
            })
            .collect();
        Outcome::Granted(parts)
    }

    /// Checks `outcome` of `op`, run during `during`, against the model and, if it is one of
    /// the answers the model allows, moves the model to the state it implies.
    pub fn observe(
        &mut self,
        op: &Op,
        during: Window,
        outcome: &Outcome,
        leases: &[Option<Lease>],
    ) -> Result<(), String> {
        let touched = op_objects(op);
        // Holders certainly past their lock-delay are gone; holders certainly expired stay
        // expired (kept while their delay may run).
        for &object in &touched {
            let holders = std::mem::take(&mut self.objects[object].holders);
            self.objects[object].holders = holders
                .into_iter()
                .filter(|h| self.judge(h.delay_ends(), during) != Liveness::Expired)
                .map(|mut h| {
                    if self.judge(h.expires, during) == Liveness::Expired {
                        h.ended = true;
                    }
                    h
                })
                .collect();
        }
        let mut unknown: Vec<(usize, Boundary)> = Vec::new();
        for &object in &touched {
            for h in &self.objects[object].holders {
                if !h.ended && self.judge(h.expires, during) == Liveness::Unknown {
                    unknown.push((h.grant, Boundary::Expiry));
                }
                if !h.delay.is_zero() && self.judge(h.delay_ends(), during) == Liveness::Unknown {
                    unknown.push((h.grant, Boundary::DelayEnd));
                }
            }
        }
        if unknown.len() > MOST_UNKNOWN {
            return Err(format!(
                "{} expiries too close to call at once; the check cannot judge this step",
                unknown.len()
            ));
        }
        let ended: HashSet<usize> = touched
            .iter()
            .flat_map(|&object| self.objects[object].holders.iter())
            .filter(|h| h.ended)
            .map(|h| h.grant)
            .collect();
        // Fewest expiries first: the model assumes no lease ran out that the answer does not
        // show ran out.
        let mut choices: Vec<u32> = (0..1u32 << unknown.len()).collect();
        choices.sort_by_key(|mask| mask.count_ones());
        let assumptions: Vec<Assumed> = choices
            .into_iter()
            .map(|mask| {
                let mut assumed = Assumed::default();
                for (bit, &(grant, boundary)) in unknown.iter().enumerate() {
                    if mask & (1 << bit) != 0 {
                        match boundary {
                            Boundary::Expiry => assumed.expired.insert(grant),
                            Boundary::DelayEnd => assumed.over.insert(grant),
                        };
                    }
                }
                assumed
            })
            // A delay cannot be over before its lease expired.
            .filter(|a| {
                a.over
                    .iter()
                    .all(|g| a.expired.contains(g) || ended.contains(g))
            })
            .collect();
        for assumed in &assumptions {
            let predicted = self.predict(op, assumed);
            if self.agrees(&predicted, outcome) {
                for &object in &touched {
                    let holders = std::mem::take(&mut self.objects[object].holders);
                    self.objects[object].holders = holders
                        .into_iter()
                        .filter(|h| !assumed.over.contains(&h.grant))
                        .filter(|h| !(h.delay.is_zero() && assumed.expired.contains(&h.grant)))
                        .map(|mut h| {
                            if assumed.expired.contains(&h.grant) {
                                h.ended = true;
                            }
                            h
                        })
                        .collect();
                }
                return self.apply(op, during, outcome, leases);
            }
        }
        let none = self.predict(op, &Assumed::default());
        let all = Assumed {
            expired: unknown.iter().map(|&(g, _)| g).collect(),
            over: unknown.iter().map(|&(g, _)| g).collect(),
        };
        let every = self.predict(op, &all);
        let allowed = if unknown.is_empty() {
            format!("{none:?}")
        } else {
            format!(
                "{none:?} ... {every:?} ({} expiries too close to call)",
                unknown.len()
            )
        };
        Err(format!(
            "backend answered {outcome:?}; the model allows {allowed}"
        ))
    }

    /// Applies an accepted outcome's effect, checking the fence and TTL of any lease returned.
    fn apply(
        &mut self,
        op: &Op,
        during: Window,
        outcome: &Outcome,
        leases: &[Option<Lease>],
    ) -> Result<(), String> {
        match (op, outcome) {
            (
                Op::Acquire {
                    claims,
                    owner,
                    ttl,
                    lock_delay,
                    request_id,
                },
                Outcome::Granted(parts),
            ) => {
                for ((&(object, mode, scope), part), lease) in claims.iter().zip(parts).zip(leases)
                {
                    let lease = lease.as_ref().ok_or("a grant without a lease")?;
                    if lease.token.fence() != lease.fence {
                        return Err("the token does not carry the lease's fence".into());
                    }
                    match part {
                        Part::New { .. } => {
                            let state = &mut self.objects[object];
                            if let Some(last) = state.last_fence {
                                if lease.fence <= last {
                                    return Err(format!(
                                        "fence {} granted on o{object} after fence {last}: \
                                         fences must strictly increase",
                                        lease.fence
                                    ));
                                }
                            }
                            if lease.ttl > *ttl {
                                return Err(format!(
                                    "granted ttl {:?} exceeds the {ttl:?} asked",
                                    lease.ttl
                                ));
                            }
                            state.last_fence = Some(lease.fence);
                            state.mode = mode;
                            self.grants.push(GrantRecord {
                                object,
                                token: lease.token.clone(),
                                mode,
                                scope,
                                request: request_id.clone().map(|id| (owner.clone(), id)),
                            });
                            let grant = self.grants.len() - 1;
                            self.objects[object].holders.push(Holder {
                                owner: owner.clone(),
                                fence: lease.fence,
                                grant,
                                expires: during.shifted(*ttl),
                                scope,
                                delay: *lock_delay,
                                ended: false,
                            });
                        }
                        Part::Replayed { fence, .. } => {
                            let holder = self.objects[object]
                                .holders
                                .iter()
                                .find(|h| h.fence == *fence && !h.ended)
                                .ok_or("a replay of no lease")?;
                            if lease.token != self.grants[holder.grant].token {
                                return Err("a retried request got a different token for the \
                                            same lease"
                                    .into());
                            }
                            // The lease as it stands: its remaining time, which a renewal may
                            // have made longer than the TTL the request asked for.
                            let left = holder
                                .expires
                                .latest
                                .saturating_duration_since(during.earliest);
                            if lease.ttl > left + self.margin {
                                return Err(format!(
                                    "replayed ttl {:?} exceeds the {left:?} the lease has left",
                                    lease.ttl
                                ));
                            }
                        }
                    }
                }
            }
            (Op::Tokens { op, items }, outcome) => {
                let each: Vec<&Outcome> = match outcome {
                    Outcome::Each(each) => each.iter().collect(),
                    single => vec![single],
                };
                for (((object, token), outcome), lease) in items.iter().zip(each).zip(leases) {
                    self.apply_token(*op, *object, token, outcome, lease.as_ref(), during)?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn apply_token(
        &mut self,
        op: TokenOp,
        object: usize,
        token: &Presented,
        outcome: &Outcome,
        lease: Option<&Lease>,
        during: Window,
    ) -> Result<(), String> {
        let state = &mut self.objects[object];
        match (op, outcome) {
            (TokenOp::Release, Outcome::Released { .. }) => {
                // A release ends the lease at once: no lock-delay.
                state.holders.retain(|h| h.grant != token.grant);
            }
            (TokenOp::Renew(ttl), Outcome::Accepted { .. }) => {
                let lease = lease.ok_or("a renewal without a lease")?;
                if lease.ttl > ttl {
                    return Err(format!(
                        "renewed ttl {:?} exceeds the {ttl:?} asked",
                        lease.ttl
                    ));
                }
                if let Some(holder) = state.holders.iter_mut().find(|h| h.grant == token.grant) {
                    holder.expires = during.shifted(ttl);
                }
            }
            (TokenOp::Downgrade, Outcome::Accepted { .. }) => state.mode = LockMode::Shared,
            _ => {}
        }
        Ok(())
    }
}

/// Whether a lock on object `a` in `a_scope` and one on `b` in `b_scope` cover a common id of
/// the model's tree: written out from the issue's rule on the names rather than taken from
/// lockcore.
fn covers_a_common_id(a: usize, a_scope: LockScope, b: usize, b_scope: LockScope) -> bool {
    let under = |child: &str, root: &str| child.starts_with(&format!("{root}/"));
    let (a, b) = (NAMES[a], NAMES[b]);
    a == b
        || (a_scope == LockScope::Subtree && under(b, a))
        || (b_scope == LockScope::Subtree && under(a, b))
}

/// The objects whose holders an operation's answer depends on: every object for an acquire
/// (subtree locks reach across the tree), the named ones otherwise.
fn op_objects(op: &Op) -> Vec<usize> {
    match op {
        Op::Acquire { .. } => (0..OBJECTS).collect(),
        Op::Tokens { items, .. } => items.iter().map(|(object, _)| *object).collect(),
        Op::Inspect { object } => vec![*object],
        Op::Pause(_) => Vec::new(),
    }
}

/// Turns a backend's error into an [`Outcome`].
fn error_outcome(objects: &[ObjectId], error: LockError) -> Outcome {
    match error {
        LockError::Locked { conflicts, .. } => Outcome::Locked(
            conflicts
                .into_iter()
                .map(|c| {
                    let index = objects
                        .iter()
                        .position(|o| *o == c.object)
                        .unwrap_or(usize::MAX);
                    (index, c.holder)
                })
                .collect(),
        ),
        LockError::NotHeld { .. } => Outcome::NotHeld,
        LockError::TokenMismatch { .. } => Outcome::TokenMismatch,
        LockError::InvalidToken { .. } => Outcome::InvalidToken,
        other => Outcome::Unexpected(other.to_string()),
    }
}

/// A token operation's answer for one entry: its outcome and the lease it returned, if any.
fn token_outcome<T>(
    objects: &[ObjectId],
    result: Result<T, LockError>,
    ok: impl FnOnce(T) -> (Outcome, Option<Lease>),
) -> (Outcome, Option<Lease>) {
    match result {
        Ok(value) => ok(value),
        Err(error) => (error_outcome(objects, error), None),
    }
}

fn accepted(lease: Lease) -> (Outcome, Option<Lease>) {
    (
        Outcome::Accepted {
            owner: lease.owner.clone(),
            fence: lease.fence,
            mode: lease.mode,
        },
        Some(lease),
    )
}

/// Runs `op` on the backend: its outcome, and the leases it returned (per object of an
/// acquire, per entry of a token operation).
async fn execute(
    svc: &dyn LockService,
    objects: &[ObjectId],
    op: &Op,
) -> (Outcome, Vec<Option<Lease>>) {
    match op {
        Op::Acquire {
            claims,
            owner,
            ttl,
            lock_delay,
            request_id,
        } => {
            let specs = claims
                .iter()
                .map(|&(object, mode, scope)| {
                    LockSpec::new(objects[object].clone(), mode).with_scope(scope)
                })
                .collect();
            let mut request =
                AcquireRequest::many(specs, owner.clone(), *ttl).with_lock_delay(*lock_delay);
            if let Some(id) = request_id {
                request = request.with_request_id(id.clone());
            }
            match svc.acquire_with(&request).await {
                Ok(Grant { leases, .. }) => (
                    Outcome::Granted(Vec::new()),
                    leases.into_iter().map(Some).collect(),
                ),
                Err(error) => (error_outcome(objects, error), Vec::new()),
            }
        }
        Op::Tokens { op, items } if items.len() == 1 => {
            let (object, token) = (&objects[items[0].0], &items[0].1.token);
            let (outcome, lease) = match op {
                TokenOp::Release => {
                    token_outcome(objects, svc.release(object, token).await, |fence| {
                        (Outcome::Released { fence }, None)
                    })
                }
                TokenOp::Renew(ttl) => {
                    token_outcome(objects, svc.renew(object, token, *ttl).await, accepted)
                }
                TokenOp::Validate => {
                    token_outcome(objects, svc.validate(object, token).await, accepted)
                }
                TokenOp::Downgrade => {
                    token_outcome(objects, svc.downgrade(object, token).await, accepted)
                }
            };
            (outcome, vec![lease])
        }
        Op::Tokens { op, items } => {
            let locks: Vec<(ObjectId, LockToken)> = items
                .iter()
                .map(|(object, token)| (objects[*object].clone(), token.token.clone()))
                .collect();
            let answers: Vec<(Outcome, Option<Lease>)> = match op {
                TokenOp::Release => match svc.release_many(&locks).await {
                    Ok(results) => results
                        .into_iter()
                        .map(|r| {
                            token_outcome(objects, r, |fence| (Outcome::Released { fence }, None))
                        })
                        .collect(),
                    Err(error) => return (error_outcome(objects, error), Vec::new()),
                },
                TokenOp::Renew(ttl) => match svc.renew_many(&locks, *ttl).await {
                    Ok(results) => results
                        .into_iter()
                        .map(|r| token_outcome(objects, r, accepted))
                        .collect(),
                    Err(error) => return (error_outcome(objects, error), Vec::new()),
                },
                TokenOp::Validate | TokenOp::Downgrade => {
                    unreachable!("validate and downgrade name one object")
                }
            };
            let (each, leases) = answers.into_iter().unzip();
            (Outcome::Each(each), leases)
        }
        Op::Inspect { object } => match svc.inspect(&objects[*object]).await {
            // An object in a lock-delay without holders shows as free: the delay itself is
            // checked by the lock-delay checks, not here.
            Ok(info) => (
                Outcome::Inspected(info.filter(|info| !info.holders.is_empty()).map(|info| {
                    let holders = info
                        .holders
                        .into_iter()
                        .map(|h| (h.owner, h.fence))
                        .collect();
                    (info.mode, holders)
                })),
                Vec::new(),
            ),
            Err(error) => (error_outcome(objects, error), Vec::new()),
        },
        Op::Pause(pause) => {
            tokio::time::sleep(*pause).await;
            (Outcome::Paused, Vec::new())
        }
    }
}

/// Draws the next operation from the model's current state (and records the request ids it
/// hands out, so later steps can retry them).
fn generate(
    rng: &mut StdRng,
    model: &mut ReferenceModel,
    owners: &[OwnerId],
    caps: &Capabilities,
) -> Op {
    if rng.random_bool(PAUSE_PROBABILITY) {
        return Op::Pause(Duration::from_millis(
            rng.random_range(10..=LONGEST_PAUSE_MS),
        ));
    }
    let objects = model.objects.len();
    let ttl = caps.ttl(Duration::from_millis(
        TTLS_MS[rng.random_range(0..TTLS_MS.len())],
    ));
    let op = match rng.random_range(0..20) {
        0..=7 => return generate_acquire(rng, model, owners, ttl, caps),
        8..=10 => TokenOp::Release,
        11 | 12 => TokenOp::Renew(ttl),
        13..=15 => TokenOp::Validate,
        16 | 17 => TokenOp::Downgrade,
        _ => {
            return Op::Inspect {
                object: rng.random_range(0..objects),
            }
        }
    };
    let batch = matches!(op, TokenOp::Release | TokenOp::Renew(_)) && rng.random_bool(0.3);
    let count = if batch {
        rng.random_range(2..=objects)
    } else {
        1
    };
    let items: Vec<(usize, Presented)> = distinct(rng, objects, count)
        .into_iter()
        .filter_map(|object| choose_token(rng, model, object).map(|token| (object, token)))
        .collect();
    if items.is_empty() {
        return Op::Inspect {
            object: rng.random_range(0..objects),
        };
    }
    Op::Tokens { op, items }
}

fn generate_acquire(
    rng: &mut StdRng,
    model: &mut ReferenceModel,
    owners: &[OwnerId],
    ttl: Duration,
    caps: &Capabilities,
) -> Op {
    if !model.requests.is_empty() && rng.random_bool(0.25) {
        // A retry: the same objects, modes, owner, request id, TTL and delay as an earlier
        // acquire.
        let (claims, owner, id, ttl, lock_delay) =
            model.requests[rng.random_range(0..model.requests.len())].clone();
        return Op::Acquire {
            claims,
            owner,
            ttl,
            lock_delay,
            request_id: Some(id),
        };
    }
    let count = if rng.random_bool(0.3) {
        rng.random_range(2..=model.objects.len())
    } else {
        1
    };
    let mut claims: Vec<ModelClaim> = Vec::with_capacity(count);
    for object in distinct(rng, model.objects.len(), count) {
        let mode = if rng.random_bool(0.4) {
            LockMode::Shared
        } else {
            LockMode::Exclusive
        };
        let scope = if caps.subtrees && rng.random_bool(0.3) {
            LockScope::Subtree
        } else {
            LockScope::Object
        };
        // A request never covers one id twice (that is invalid_argument, checked elsewhere).
        if claims
            .iter()
            .all(|&(other, _, other_scope)| !covers_a_common_id(object, scope, other, other_scope))
        {
            claims.push((object, mode, scope));
        }
    }
    let lock_delay = match LOCK_DELAYS_MS[rng.random_range(0..LOCK_DELAYS_MS.len())] {
        _ if !caps.subtrees => Duration::ZERO,
        0 => Duration::ZERO,
        ms => caps.lock_delay(Duration::from_millis(ms)),
    };
    let owner = owners[rng.random_range(0..owners.len())].clone();
    let request_id = rng.random_bool(0.4).then(|| {
        let id = RequestId::new(format!("model-{:032x}", rng.random::<u128>()))
            .expect("a valid request id");
        model
            .requests
            .push((claims.clone(), owner.clone(), id.clone(), ttl, lock_delay));
        id
    });
    Op::Acquire {
        claims,
        owner,
        ttl,
        lock_delay,
        request_id,
    }
}

/// `count` distinct object indices below `objects`, in random order.
fn distinct(rng: &mut StdRng, objects: usize, count: usize) -> Vec<usize> {
    let mut all: Vec<usize> = (0..objects).collect();
    for i in 0..count {
        let j = rng.random_range(i..objects);
        all.swap(i, j);
    }
    all.truncate(count);
    all
}

/// Picks a token to present for `object`: a current holder's, an old one, another object's,
/// or a tampered one.
fn choose_token(rng: &mut StdRng, model: &ReferenceModel, object: usize) -> Option<Presented> {
    let current: Vec<usize> = model.objects[object]
        .holders
        .iter()
        .filter(|h| !h.ended)
        .map(|h| h.grant)
        .collect();
    let of_object: Vec<usize> = (0..model.grants.len())
        .filter(|&g| model.grants[g].object == object)
        .collect();
    let old: Vec<usize> = of_object
        .iter()
        .copied()
        .filter(|g| !current.contains(g))
        .collect();
    let of_others: Vec<usize> = (0..model.grants.len())
        .filter(|&g| model.grants[g].object != object)
        .collect();
    let authentic = |kind: TokenKind, grant: usize| Presented {
        kind,
        token: model.grants[grant].token.clone(),
        grant,
    };
    let pick = |rng: &mut StdRng, from: &[usize]| from[rng.random_range(0..from.len())];
    match rng.random_range(0..10) {
        0..=4 if !current.is_empty() => Some(authentic(TokenKind::Current, pick(rng, &current))),
        5 | 6 if !old.is_empty() => Some(authentic(TokenKind::Old, pick(rng, &old))),
        7 if !of_others.is_empty() => {
            Some(authentic(TokenKind::OtherObject, pick(rng, &of_others)))
        }
        8 | 9 if !of_object.is_empty() => {
            let base = if current.is_empty() {
                pick(rng, &of_object)
            } else {
                pick(rng, &current)
            };
            let original = &model.grants[base].token;
            let (kind, token) = if rng.random_bool(0.5) {
                (TokenKind::TamperedMac, tamper_mac(rng, original))
            } else {
                (TokenKind::TamperedFence, tamper_fence(rng, original))
            };
            Some(Presented {
                kind,
                token,
                grant: base,
            })
        }
        _ if !current.is_empty() => Some(authentic(TokenKind::Current, pick(rng, &current))),
        _ => of_object
            .last()
            .map(|&grant| authentic(TokenKind::Old, grant)),
    }
}

/// The URL-safe base64 alphabet tokens are written in.
const BASE64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Replaces the character at `at` of `token` with another base64 character.
fn replace_char(rng: &mut StdRng, token: &LockToken, at: usize) -> String {
    let mut bytes = token.expose().as_bytes().to_vec();
    let old = bytes[at];
    let mut new = old;
    while new == old {
        new = BASE64[rng.random_range(0..BASE64.len())];
    }
    bytes[at] = new;
    String::from_utf8(bytes).expect("base64 characters are ASCII")
}

/// Where a token's body starts (after `lk2.`) and where its MAC's characters lie: the body is
/// fence (8 bytes) | nonce (16) | MAC (32), so characters 32..=73 of the body encode MAC bits
/// only (the last one also carries padding bits, and is left alone).
const BODY_START: usize = 4;
const MAC_CHARS: std::ops::RangeInclusive<usize> = 32..=73;
/// Characters 0..=9 of the body encode fence bits only.
const FENCE_CHARS: std::ops::RangeInclusive<usize> = 0..=9;

/// `token` with one character of its MAC changed; fence and nonce are kept.
fn tamper_mac(rng: &mut StdRng, token: &LockToken) -> LockToken {
    let at = BODY_START + rng.random_range(MAC_CHARS);
    let raw = replace_char(rng, token, at);
    let tampered = LockToken::parse(&raw).expect("a token with one MAC character changed parses");
    assert_eq!(
        tampered.fence(),
        token.fence(),
        "MAC tampering kept the fence"
    );
    assert!(tampered.digest().ct_eq(&token.digest()), "and the nonce");
    tampered
}

/// `token` with one character of its fence changed; nonce and MAC are kept.
fn tamper_fence(rng: &mut StdRng, token: &LockToken) -> LockToken {
    let at = BODY_START + rng.random_range(FENCE_CHARS);
    let raw = replace_char(rng, token, at);
    let tampered = LockToken::parse(&raw).expect("a token with one fence character changed parses");
    assert_ne!(
        tampered.fence(),
        token.fence(),
        "fence tampering changed the fence"
    );
    assert!(
        tampered.digest().ct_eq(&token.digest()),
        "and kept the nonce"
    );
    tampered
}

/// How close to a lease's expiry an operation counts as too close to call on `backend`: the
/// in-process memory backend decides on this process's clock; the others across a network.
fn margin_for(backend: &str) -> Duration {
    match backend {
        "memory" => Duration::from_millis(60),
        _ => Duration::from_millis(150),
    }
}

/// The seed: `LOCKD_MODEL_SEED` if set, else random.
fn model_seed() -> u64 {
    match std::env::var(MODEL_SEED_ENV) {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{MODEL_SEED_ENV}={text:?} is not a u64")),
        Err(_) => rand::rng().random(),
    }
}

/// Prints the seed if the check panics, whatever the panic: the run can then be repeated.
struct SeedOnPanic {
    seed: u64,
    backend: &'static str,
}

impl Drop for SeedOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            use std::io::Write as _;
            let _ = writeln!(
                std::io::stderr(),
                "model check on {} failed; reproduce with {MODEL_SEED_ENV}={}",
                self.backend,
                self.seed
            );
        }
    }
}

/// Random sequences of single and multi-object acquires in both modes and both scopes over a
/// small tree, some with a lock-delay (some retried by request id), releases and renewals (single and batched), validations, downgrades and inspections,
/// with current, old, foreign and tampered tokens and leases that expire mid-run, get the same
/// answers from the backend as from the reference model, and fences strictly increase per
/// object.
pub async fn random_operations_agree_with_the_reference_model(
    svc: &dyn LockService,
    caps: &Capabilities,
) {
    let seed = model_seed();
    let _report = SeedOnPanic {
        seed,
        backend: svc.backend(),
    };
    let mut rng = StdRng::seed_from_u64(seed);
    let scope = Scope::new("model");
    let objects: Vec<ObjectId> = NAMES.iter().map(|name| scope.object(name)).collect();
    let owners: Vec<OwnerId> = (0..OWNERS)
        .map(|i| scope.owner(&format!("owner-{i}")))
        .collect();
    let margin =
        margin_for(svc.backend()).max(caps.expiry_slack.saturating_sub(Duration::from_millis(400)));
    let mut model = ReferenceModel::new(OBJECTS, margin);
    let mut history: VecDeque<String> = VecDeque::with_capacity(HISTORY);
    for step in 0..STEPS {
        let op = generate(&mut rng, &mut model, &owners, caps);
        let started = Instant::now();
        let (outcome, leases) = execute(svc, &objects, &op).await;
        let during = Window::new(started, Instant::now());
        let outcome = model.classify(&op, outcome, &leases);
        let line = format!(
            "#{step} {}..{}ms {op} -> {outcome:?}",
            model.ms(during.earliest),
            model.ms(during.latest)
        );
        if let Err(disagreement) = model.observe(&op, during, &outcome, &leases) {
            let shown: Vec<&str> = history.iter().map(String::as_str).collect();
            panic!(
                "{} backend disagrees with the reference model at step {step} \
                 ({MODEL_SEED_ENV}={seed}):\n  {line}\n  {disagreement}\n\
                 model:{}\nearlier steps:\n  {}",
                svc.backend(),
                model.describe(),
                shown.join("\n  ")
            );
        }
        if history.len() == HISTORY {
            history.pop_front();
        }
        history.push_back(line);
    }
    // Leave nothing held for long: release what the model believes is still held.
    for (index, state) in model.objects.iter().enumerate() {
        for holder in state.holders.iter().filter(|h| !h.ended) {
            let _ = svc
                .release(&objects[index], &model.grants[holder.grant].token)
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lockcore::TokenIssuer;

    fn token(fence: u64) -> LockToken {
        let issuer = TokenIssuer::random();
        let object = ObjectId::new("o").expect("valid");
        issuer.seal(issuer.prepare(), &object, Fence(fence))
    }

    fn owner(name: &str) -> OwnerId {
        OwnerId::new(name).expect("valid")
    }

    #[test]
    fn tampering_changes_exactly_the_part_it_names() {
        let mut rng = StdRng::seed_from_u64(7);
        for fence in [1, 1 << 40, u64::MAX / 3] {
            let original = token(fence);
            for _ in 0..200 {
                let mac = tamper_mac(&mut rng, &original);
                assert_ne!(mac, original);
                let fenced = tamper_fence(&mut rng, &original);
                assert_ne!(fenced, original);
            }
        }
    }

    /// A model with one object held by `holders` (name, fence, expiry ms), all granted before.
    fn held(mode: LockMode, holders: &[(&str, u64, u64)]) -> (ReferenceModel, Instant) {
        let mut model = ReferenceModel::new(OBJECTS, Duration::from_millis(50));
        let t0 = model.started;
        for &(name, fence, until) in holders {
            model.grants.push(GrantRecord {
                object: 0,
                token: token(fence),
                mode,
                scope: LockScope::Object,
                request: None,
            });
            let at = t0 + Duration::from_millis(until);
            model.objects[0].holders.push(Holder {
                owner: owner(name),
                fence: Fence(fence),
                grant: model.grants.len() - 1,
                expires: Window::new(at, at + Duration::from_millis(10)),
                scope: LockScope::Object,
                delay: Duration::ZERO,
                ended: false,
            });
        }
        model.objects[0].mode = mode;
        model.objects[0].last_fence = holders.last().map(|h| Fence(h.1));
        (model, t0)
    }

    fn window(t0: Instant, from: u64, to: u64) -> Window {
        Window::new(
            t0 + Duration::from_millis(from),
            t0 + Duration::from_millis(to),
        )
    }

    #[test]
    fn an_operation_near_an_expiry_is_too_close_to_call() {
        let (model, t0) = held(LockMode::Exclusive, &[("w", 1, 1000)]);
        let holder = &model.objects[0].holders[0];
        assert_eq!(model.liveness(holder, window(t0, 900, 940)), Liveness::Live);
        assert_eq!(
            model.liveness(holder, window(t0, 940, 960)),
            Liveness::Unknown
        );
        assert_eq!(
            model.liveness(holder, window(t0, 1055, 1070)),
            Liveness::Unknown
        );
        assert_eq!(
            model.liveness(holder, window(t0, 1061, 1070)),
            Liveness::Expired
        );
    }

    fn acquire(claims: Vec<(usize, LockMode)>, who: &str) -> Op {
        Op::Acquire {
            claims: claims
                .into_iter()
                .map(|(object, mode)| (object, mode, LockScope::Object))
                .collect(),
            owner: owner(who),
            ttl: Duration::from_secs(1),
            lock_delay: Duration::ZERO,
            request_id: None,
        }
    }

    #[test]
    fn shared_claims_join_shared_holders_and_exclusive_ones_are_refused() {
        let (model, _) = held(LockMode::Shared, &[("r1", 1, 1000), ("r2", 2, 1000)]);
        let none = Assumed::default();
        assert_eq!(
            model.predict(&acquire(vec![(0, LockMode::Shared)], "r3"), &none),
            Outcome::Granted(vec![Part::New {
                owner: owner("r3"),
                mode: LockMode::Shared
            }])
        );
        let refused = model.predict(
            &acquire(
                vec![(1, LockMode::Exclusive), (0, LockMode::Exclusive)],
                "w",
            ),
            &none,
        );
        let named_r2 = Outcome::Locked(vec![(0, owner("r2"))]);
        assert!(
            model.agrees(&refused, &named_r2),
            "any live holder may be named"
        );
        let named_stranger = Outcome::Locked(vec![(0, owner("x"))]);
        assert!(!model.agrees(&refused, &named_stranger));
    }

    #[test]
    fn a_subtree_claim_is_refused_by_any_conflicting_holder_it_covers_and_no_other() {
        // o0 is `d`; put a shared holder on d/x/y (o2) and an exclusive one on db (o3).
        let (mut model, t0) = held(LockMode::Shared, &[]);
        let until = Window::new(t0 + Duration::from_secs(5), t0 + Duration::from_secs(5));
        for (object, name, mode) in [(2, "r", LockMode::Shared), (3, "w", LockMode::Exclusive)] {
            model.objects[object].mode = mode;
            model.objects[object].holders.push(Holder {
                owner: owner(name),
                fence: Fence(1),
                grant: 0,
                expires: until,
                scope: LockScope::Object,
                delay: Duration::ZERO,
                ended: false,
            });
        }
        let claim = |mode, scope| Op::Acquire {
            claims: vec![(0, mode, scope)],
            owner: owner("n"),
            ttl: Duration::from_secs(1),
            lock_delay: Duration::ZERO,
            request_id: None,
        };
        let none = Assumed::default();
        assert_eq!(
            model.predict(&claim(LockMode::Exclusive, LockScope::Subtree), &none),
            Outcome::Refused(vec![(0, vec![owner("r")])]),
            "d's subtree covers d/x/y but not db"
        );
        assert!(matches!(
            model.predict(&claim(LockMode::Shared, LockScope::Subtree), &none),
            Outcome::Granted(_)
        ));
        assert!(matches!(
            model.predict(&claim(LockMode::Exclusive, LockScope::Object), &none),
            Outcome::Granted(_)
        ));
    }

    #[test]
    fn an_expired_holder_blocks_until_its_lock_delay_is_over() {
        let (mut model, t0) = held(LockMode::Exclusive, &[("gone", 1, 1000)]);
        model.objects[0].holders[0].delay = Duration::from_millis(500);
        let op = acquire(vec![(0, LockMode::Exclusive)], "next");
        let expired = Assumed {
            expired: [0].into(),
            over: HashSet::new(),
        };
        assert_eq!(
            model.predict(&op, &expired),
            Outcome::Refused(vec![(0, vec![owner("gone")])])
        );
        let over = Assumed {
            expired: [0].into(),
            over: [0].into(),
        };
        assert!(matches!(model.predict(&op, &over), Outcome::Granted(_)));
        let token = Presented {
            kind: TokenKind::Current,
            token: model.grants[0].token.clone(),
            grant: 0,
        };
        assert_eq!(
            model.predict_token(TokenOp::Validate, 0, &token, &expired),
            Outcome::NotHeld,
            "a lease in its lock-delay is no holder"
        );
        let during_delay = window(t0, 1200, 1210);
        assert!(
            model
                .clone()
                .observe(&op, during_delay, &Outcome::Granted(Vec::new()), &[None])
                .is_err(),
            "a grant during the delay is a violation"
        );
    }

    #[test]
    fn a_grant_over_a_holder_too_close_to_call_means_it_had_expired() {
        let (mut model, t0) = held(LockMode::Exclusive, &[("old", 1, 1000)]);
        let op = acquire(vec![(0, LockMode::Exclusive)], "new");
        let during = window(t0, 990, 1000);
        let lease = Lease {
            object: ObjectId::new("o").expect("valid"),
            owner: owner("new"),
            mode: LockMode::Exclusive,
            token: token(5),
            fence: Fence(5),
            ttl: Duration::from_secs(1),
        };
        let outcome = model.classify(&op, Outcome::Granted(Vec::new()), &[Some(lease.clone())]);
        model
            .observe(&op, during, &outcome, &[Some(lease)])
            .expect("a grant is allowed while the old lease is too close to call");
        let owners: Vec<_> = model.objects[0]
            .holders
            .iter()
            .map(|h| h.owner.clone())
            .collect();
        assert_eq!(
            owners,
            vec![owner("new")],
            "the old holder is taken to have expired"
        );
        let early = window(t0, 100, 110);
        let (mut fresh, _) = held(LockMode::Exclusive, &[("old", 1, 1000)]);
        let outcome = Outcome::Granted(vec![Part::New {
            owner: owner("new"),
            mode: LockMode::Exclusive,
        }]);
        assert!(
            fresh.observe(&op, early, &outcome, &[None]).is_err(),
            "a grant over a certainly live exclusive holder is a violation"
        );
    }
}
