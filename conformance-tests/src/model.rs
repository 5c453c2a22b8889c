//! A reference model of lockd's lock semantics in plain Rust, and the randomized check that holds
//! every backend to it.
//!
//! [`ReferenceModel`] is the semantics of exclusive single-object leases written as simply as
//! possible: each object is free or held by one lease (owner, fence, grant, expiry); acquire
//! (with no wait) grants a free object with a fence above every fence the object had before and
//! refuses a held one as `Locked` by its holder; release, renew and validate accept only the
//! current holder's token; a token of an earlier grant of the object is `NotHeld` when the object
//! is free and `TokenMismatch` when it is held; a token that is not authentic for the object
//! (its MAC or fence bytes changed, or minted for another object) is `InvalidToken` and changes
//! nothing; an acquire that repeats the request id (and owner) of the current lease's acquire
//! gets that same lease back (same token and fence, expiry unchanged), never a second grant, and
//! once that lease has ended the same request id asks for a new grant; a lease ends when released
//! or when its TTL has run out.
//!
//! [`random_operations_agree_with_the_reference_model`] drives a backend and the model with the
//! same random operations and compares every outcome.
//!
//! # Time
//!
//! A backend decides expiry on its own clock, at some instant between when the client sent a
//! request and when it got the answer. The model therefore knows each lease's expiry only as a
//! [`Window`] of client-side instants, and an operation only as the window it ran in. An
//! operation is judged against a lease as certainly live, certainly expired, or too close to
//! call (within a margin of the expiry window, wider for backends across the network). When it
//! is too close to call, both answers are accepted and the model takes on the one the backend
//! gave (a `NotHeld` then means the lease had expired; a `Locked` that it had not).

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use lockcore::{
    AcquireRequest, Fence, Grant, Lease, LockError, LockService, LockToken, ObjectId, OwnerId,
    RequestId,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use crate::{Capabilities, Scope};

/// Environment variable that fixes the seed of the randomized model check.
pub const MODEL_SEED_ENV: &str = "LOCKD_MODEL_SEED";

/// Operations per run of the randomized check.
const STEPS: usize = 220;
/// Objects and owners the operations draw from: few, so operations collide often.
const OBJECTS: usize = 3;
const OWNERS: usize = 3;
/// Lease lengths the operations draw from: mostly short enough to expire during a run.
const TTLS_MS: [u64; 5] = [120, 200, 300, 450, 30_000];
/// Probability that a step is a pause, and the longest pause.
const PAUSE_PROBABILITY: f64 = 0.08;
const LONGEST_PAUSE_MS: u64 = 320;
/// Steps of history shown when the backend and the model disagree.
const HISTORY: usize = 25;

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
    /// Certainly expired (or no lease at all).
    Expired,
    /// Too close to the expiry to call: either answer is right.
    Unknown,
}

/// The current lease on one object, as the model knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// Who holds the object.
    pub owner: OwnerId,
    /// The grant's fence.
    pub fence: Fence,
    /// Which grant (an index into the model's token list) this lease is.
    pub grant: usize,
    /// When the lease runs out unless renewed.
    pub expires: Window,
}

/// One object in the model: its current lease, if any, and the highest fence it was ever given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectModel {
    /// The current lease, unless released or known to have expired.
    pub holder: Option<Holder>,
    /// The highest fence granted on this object so far.
    pub last_fence: Option<Fence>,
}

/// A token presented to release, renew or validate, with what the model knows about it.
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
    /// The model's current holder's token.
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

/// One operation of the randomized check.
#[derive(Debug, Clone)]
pub enum Op {
    /// `acquire(object, owner, ttl, wait = 0)`, with or without a request id.
    Acquire {
        /// Index of the object.
        object: usize,
        /// The owner asking.
        owner: OwnerId,
        /// The lease asked for.
        ttl: Duration,
        /// The request id, when the acquire carries one (a retry repeats an earlier one).
        request_id: Option<RequestId>,
    },
    /// `release(object, token)`.
    Release {
        /// Index of the object.
        object: usize,
        /// The token presented.
        token: Presented,
    },
    /// `renew(object, token, ttl)`.
    Renew {
        /// Index of the object.
        object: usize,
        /// The token presented.
        token: Presented,
        /// The new lease length.
        ttl: Duration,
    },
    /// `validate(object, token)`.
    Validate {
        /// Index of the object.
        object: usize,
        /// The token presented.
        token: Presented,
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
                object,
                owner,
                ttl,
                request_id,
            } => {
                write!(f, "acquire(o{object}, {owner}, ttl={}ms", ttl.as_millis())?;
                match request_id {
                    Some(id) => write!(f, ", request id {})", id.as_str()),
                    None => f.write_str(")"),
                }
            }
            Op::Release { object, token } => write!(f, "release(o{object}, {})", token),
            Op::Renew { object, token, ttl } => {
                write!(f, "renew(o{object}, {}, ttl={}ms)", token, ttl.as_millis())
            }
            Op::Validate { object, token } => write!(f, "validate(o{object}, {})", token),
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

/// What an operation came to, with just the detail the model predicts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Acquire granted (the fence is checked separately: it must exceed every earlier one).
    Granted {
        /// The new holder.
        owner: OwnerId,
    },
    /// Acquire with a request id returned the lease that request was already granted (same
    /// token and fence) instead of a second grant.
    Replayed {
        /// The fence of the lease returned.
        fence: Fence,
    },
    /// Release succeeded, returning the released fence.
    Released {
        /// The fence of the lease released.
        fence: Fence,
    },
    /// Renew or validate accepted the token, returning the holder's lease.
    Accepted {
        /// The holder.
        owner: OwnerId,
        /// The holder's fence.
        fence: Fence,
    },
    /// Inspect's answer: the holder and fence, or free.
    Inspected(Option<(OwnerId, Fence)>),
    /// `LockError::Locked`, naming the holder.
    Locked {
        /// The holder named.
        holder: OwnerId,
    },
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
    /// Every grant: which object it was for and its token.
    pub grants: Vec<(usize, LockToken)>,
    /// Per grant, the owner and request id of the acquire that made it, if it carried an id.
    pub grant_requests: Vec<Option<(OwnerId, RequestId)>>,
    /// Every acquire with a request id sent so far (object, owner, id, ttl), for retries.
    pub requests: Vec<(usize, OwnerId, RequestId, Duration)>,
    /// How close to an expiry an operation must be to count as too close to call.
    pub margin: Duration,
    /// Time zero of the run, for readable reports.
    pub started: Instant,
}

impl ReferenceModel {
    /// A model of `objects` free objects, judging expiries with `margin`.
    pub fn new(objects: usize, margin: Duration) -> Self {
        Self {
            objects: vec![ObjectModel::default(); objects],
            grants: Vec::new(),
            grant_requests: Vec::new(),
            requests: Vec::new(),
            margin,
            started: Instant::now(),
        }
    }

    /// Milliseconds from the start of the run to `at`.
    pub fn ms(&self, at: Instant) -> u128 {
        at.saturating_duration_since(self.started).as_millis()
    }

    /// One line per object: free, or its holder, fence, grant and expiry window.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for (index, state) in self.objects.iter().enumerate() {
            let last = state.last_fence.map_or("none".into(), |f| f.to_string());
            let line = match &state.holder {
                None => format!("o{index}: free (last fence {last})"),
                Some(h) => format!(
                    "o{index}: held by {} fence {} (grant #{}) until {}..{}ms (last fence {last})",
                    h.owner,
                    h.fence,
                    h.grant,
                    self.ms(h.expires.earliest),
                    self.ms(h.expires.latest)
                ),
            };
            out.push_str("\n  ");
            out.push_str(&line);
        }
        out
    }

    /// Whether `object`'s current lease was live during `during`.
    pub fn liveness(&self, object: usize, during: Window) -> Liveness {
        let Some(holder) = &self.objects[object].holder else {
            return Liveness::Expired;
        };
        if during.latest + self.margin < holder.expires.earliest {
            Liveness::Live
        } else if during.earliest > holder.expires.latest + self.margin {
            Liveness::Expired
        } else {
            Liveness::Unknown
        }
    }

    /// What `op` must come to on `object` if its lease is (`held`) or is not live.
    pub fn predict(&self, op: &Op, held: bool) -> Outcome {
        let holder = |object: usize| {
            self.objects[object]
                .holder
                .as_ref()
                .filter(|_| held)
                .cloned()
        };
        match op {
            Op::Acquire {
                object,
                owner,
                request_id,
                ..
            } => match holder(*object) {
                Some(h) if self.made_by(h.grant, owner, request_id.as_ref()) => {
                    Outcome::Replayed { fence: h.fence }
                }
                Some(h) => Outcome::Locked { holder: h.owner },
                None => Outcome::Granted {
                    owner: owner.clone(),
                },
            },
            Op::Release { object, token }
            | Op::Renew { object, token, .. }
            | Op::Validate { object, token } => {
                if !token.is_untouched() || self.grants[token.grant].0 != *object {
                    // Not authentic for this object: refused before any lock is looked at.
                    return Outcome::InvalidToken;
                }
                let grant = token.grant;
                match holder(*object) {
                    None => Outcome::NotHeld,
                    Some(h) if h.grant != grant => Outcome::TokenMismatch,
                    Some(h) if matches!(op, Op::Release { .. }) => {
                        Outcome::Released { fence: h.fence }
                    }
                    Some(h) => Outcome::Accepted {
                        owner: h.owner,
                        fence: h.fence,
                    },
                }
            }
            Op::Inspect { object } => {
                Outcome::Inspected(holder(*object).map(|h| (h.owner, h.fence)))
            }
            Op::Pause(_) => Outcome::Paused,
        }
    }

    /// Whether grant `grant` was made by an acquire of `owner` with `request_id`.
    fn made_by(&self, grant: usize, owner: &OwnerId, request_id: Option<&RequestId>) -> bool {
        match (&self.grant_requests[grant], request_id) {
            (Some((by, id)), Some(request_id)) => by == owner && id == request_id,
            _ => false,
        }
    }

    /// Tells a replayed lease from a new grant: a grant that carries the fence of the current
    /// lease, made by the same request, is that lease returned again.
    pub fn classify(&self, op: &Op, outcome: Outcome, lease: Option<&Lease>) -> Outcome {
        let (
            Op::Acquire {
                object,
                owner,
                request_id,
                ..
            },
            Outcome::Granted { .. },
            Some(lease),
        ) = (op, &outcome, lease)
        else {
            return outcome;
        };
        match &self.objects[*object].holder {
            Some(h)
                if h.fence == lease.fence && self.made_by(h.grant, owner, request_id.as_ref()) =>
            {
                Outcome::Replayed { fence: lease.fence }
            }
            _ => outcome,
        }
    }

    /// Checks `outcome` of `op`, run during `during`, against the model and, if it is one of
    /// the answers the model allows, moves the model to the state it implies.
    pub fn observe(
        &mut self,
        op: &Op,
        during: Window,
        outcome: &Outcome,
        lease: Option<&Lease>,
    ) -> Result<(), String> {
        let Some(object) = op_object(op) else {
            return Ok(());
        };
        let liveness = self.liveness(object, during);
        let live = self.predict(op, true);
        let expired = self.predict(op, false);
        let held = match liveness {
            Liveness::Live if *outcome == live => true,
            Liveness::Expired if *outcome == expired => false,
            Liveness::Unknown if *outcome == live => true,
            Liveness::Unknown if *outcome == expired => false,
            _ => {
                let allowed = match liveness {
                    Liveness::Live => format!("{live:?}"),
                    Liveness::Expired => format!("{expired:?}"),
                    Liveness::Unknown => format!("{live:?} or {expired:?}"),
                };
                return Err(format!(
                    "backend answered {outcome:?}; the model allows {allowed} (lease {liveness:?})"
                ));
            }
        };
        if !held {
            self.objects[object].holder = None;
        }
        self.apply(op, during, outcome, lease)
    }

    /// Applies an accepted outcome's effect, checking the fence and TTL of any lease returned.
    fn apply(
        &mut self,
        op: &Op,
        during: Window,
        outcome: &Outcome,
        lease: Option<&Lease>,
    ) -> Result<(), String> {
        match (op, outcome) {
            (
                Op::Acquire {
                    object,
                    owner,
                    ttl,
                    request_id,
                },
                Outcome::Granted { .. },
            ) => {
                let lease = lease.ok_or("a grant without a lease")?;
                let state = &mut self.objects[*object];
                if let Some(last) = state.last_fence {
                    if lease.fence <= last {
                        return Err(format!(
                            "fence {} granted after fence {last}: fences must strictly increase",
                            lease.fence
                        ));
                    }
                }
                if lease.token.fence() != lease.fence {
                    return Err("the token does not carry the lease's fence".into());
                }
                if lease.ttl > *ttl {
                    return Err(format!(
                        "granted ttl {:?} exceeds the {ttl:?} asked",
                        lease.ttl
                    ));
                }
                state.last_fence = Some(lease.fence);
                self.grants.push((*object, lease.token.clone()));
                self.grant_requests
                    .push(request_id.clone().map(|id| (owner.clone(), id)));
                self.objects[*object].holder = Some(Holder {
                    owner: owner.clone(),
                    fence: lease.fence,
                    grant: self.grants.len() - 1,
                    expires: during.shifted(*ttl),
                });
            }
            (Op::Acquire { object, .. }, Outcome::Replayed { .. }) => {
                let lease = lease.ok_or("a replay without a lease")?;
                let holder = self.objects[*object]
                    .holder
                    .as_ref()
                    .ok_or("a replay of no lease")?;
                if lease.token != self.grants[holder.grant].1 {
                    return Err("a retried request got a different token for the same lease".into());
                }
                // The lease as it stands: its remaining time, which a renewal may have made
                // longer than the TTL the request asked for.
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
            (Op::Release { object, .. }, Outcome::Released { .. }) => {
                self.objects[*object].holder = None;
            }
            (Op::Renew { object, ttl, .. }, Outcome::Accepted { .. }) => {
                let lease = lease.ok_or("a renewal without a lease")?;
                if lease.ttl > *ttl {
                    return Err(format!(
                        "renewed ttl {:?} exceeds the {ttl:?} asked",
                        lease.ttl
                    ));
                }
                if let Some(holder) = &mut self.objects[*object].holder {
                    holder.expires = during.shifted(*ttl);
                }
            }
            _ => {}
        }
        Ok(())
    }
}

fn op_object(op: &Op) -> Option<usize> {
    match op {
        Op::Acquire { object, .. }
        | Op::Release { object, .. }
        | Op::Renew { object, .. }
        | Op::Validate { object, .. }
        | Op::Inspect { object } => Some(*object),
        Op::Pause(_) => None,
    }
}

/// Turns a backend's answer into an [`Outcome`], keeping the lease of a grant or renewal.
fn outcome_of<T>(
    result: Result<T, LockError>,
    ok: impl FnOnce(T) -> (Outcome, Option<Lease>),
) -> (Outcome, Option<Lease>) {
    match result {
        Ok(value) => ok(value),
        Err(LockError::Locked { holder, .. }) => (Outcome::Locked { holder }, None),
        Err(LockError::NotHeld { .. }) => (Outcome::NotHeld, None),
        Err(LockError::TokenMismatch { .. }) => (Outcome::TokenMismatch, None),
        Err(LockError::InvalidToken { .. }) => (Outcome::InvalidToken, None),
        Err(other) => (Outcome::Unexpected(other.to_string()), None),
    }
}

/// Runs `op` on the backend.
async fn execute(svc: &dyn LockService, objects: &[ObjectId], op: &Op) -> (Outcome, Option<Lease>) {
    match op {
        Op::Acquire {
            object,
            owner,
            ttl,
            request_id,
        } => outcome_of(
            match request_id {
                Some(id) => {
                    let request =
                        AcquireRequest::new(objects[*object].clone(), owner.clone(), *ttl)
                            .with_request_id(id.clone());
                    svc.acquire_with(&request).await.map(Grant::into_first)
                }
                None => {
                    svc.acquire(&objects[*object], owner, *ttl, Duration::ZERO)
                        .await
                }
            },
            |lease| {
                (
                    Outcome::Granted {
                        owner: lease.owner.clone(),
                    },
                    Some(lease),
                )
            },
        ),
        Op::Release { object, token } => outcome_of(
            svc.release(&objects[*object], &token.token).await,
            |fence| (Outcome::Released { fence }, None),
        ),
        Op::Renew { object, token, ttl } => outcome_of(
            svc.renew(&objects[*object], &token.token, *ttl).await,
            accepted,
        ),
        Op::Validate { object, token } => outcome_of(
            svc.validate(&objects[*object], &token.token).await,
            accepted,
        ),
        Op::Inspect { object } => outcome_of(svc.inspect(&objects[*object]).await, |info| {
            (
                Outcome::Inspected(info.map(|info| (info.owner, info.fence))),
                None,
            )
        }),
        Op::Pause(pause) => {
            tokio::time::sleep(*pause).await;
            (Outcome::Paused, None)
        }
    }
}

fn accepted(lease: Lease) -> (Outcome, Option<Lease>) {
    (
        Outcome::Accepted {
            owner: lease.owner.clone(),
            fence: lease.fence,
        },
        Some(lease),
    )
}

/// Draws the next operation from the model's current state (and records the request ids it
/// hands out, so later steps can retry them).
fn generate(rng: &mut StdRng, model: &mut ReferenceModel, owners: &[OwnerId]) -> Op {
    if rng.random_bool(PAUSE_PROBABILITY) {
        return Op::Pause(Duration::from_millis(
            rng.random_range(10..=LONGEST_PAUSE_MS),
        ));
    }
    let object = rng.random_range(0..model.objects.len());
    let ttl = Duration::from_millis(TTLS_MS[rng.random_range(0..TTLS_MS.len())]);
    let token = choose_token(rng, model, object);
    match (rng.random_range(0..10), token) {
        (0..=3, _) | (_, None) => {
            if !model.requests.is_empty() && rng.random_bool(0.25) {
                // A retry: the same object, owner, request id and TTL as an earlier acquire.
                let (object, owner, id, ttl) =
                    model.requests[rng.random_range(0..model.requests.len())].clone();
                return Op::Acquire {
                    object,
                    owner,
                    ttl,
                    request_id: Some(id),
                };
            }
            let owner = owners[rng.random_range(0..owners.len())].clone();
            let request_id = rng.random_bool(0.4).then(|| {
                let id = RequestId::new(format!("model-{:032x}", rng.random::<u128>()))
                    .expect("a valid request id");
                model
                    .requests
                    .push((object, owner.clone(), id.clone(), ttl));
                id
            });
            Op::Acquire {
                object,
                owner,
                ttl,
                request_id,
            }
        }
        (4 | 5, Some(token)) => Op::Release { object, token },
        (6, Some(token)) => Op::Renew { object, token, ttl },
        (7 | 8, Some(token)) => Op::Validate { object, token },
        _ => Op::Inspect { object },
    }
}

/// Picks a token to present for `object`: current, old, another object's, or tampered.
fn choose_token(rng: &mut StdRng, model: &ReferenceModel, object: usize) -> Option<Presented> {
    let current = model.objects[object].holder.as_ref().map(|h| h.grant);
    let of_object: Vec<usize> = (0..model.grants.len())
        .filter(|&g| model.grants[g].0 == object)
        .collect();
    let old: Vec<usize> = of_object
        .iter()
        .copied()
        .filter(|&g| Some(g) != current)
        .collect();
    let of_others: Vec<usize> = (0..model.grants.len())
        .filter(|&g| model.grants[g].0 != object)
        .collect();
    let authentic = |kind: TokenKind, grant: usize| Presented {
        kind,
        token: model.grants[grant].1.clone(),
        grant,
    };
    let pick = |rng: &mut StdRng, from: &[usize]| from[rng.random_range(0..from.len())];
    match rng.random_range(0..10) {
        0..=4 if current.is_some() => current.map(|g| authentic(TokenKind::Current, g)),
        5 | 6 if !old.is_empty() => Some(authentic(TokenKind::Old, pick(rng, &old))),
        7 if !of_others.is_empty() => {
            Some(authentic(TokenKind::OtherObject, pick(rng, &of_others)))
        }
        8 | 9 if !of_object.is_empty() => {
            let base = current.unwrap_or_else(|| pick(rng, &of_object));
            let original = &model.grants[base].1;
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
        _ => match current {
            Some(grant) => Some(authentic(TokenKind::Current, grant)),
            None => of_object
                .last()
                .map(|&grant| authentic(TokenKind::Old, grant)),
        },
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

/// Random sequences of acquire, release, renew, validate and inspect, with current, old, foreign
/// and tampered tokens and leases that expire mid-run, get the same answers from the backend as
/// from the reference model, and fences strictly increase per object.
pub async fn random_operations_agree_with_the_reference_model(
    svc: &dyn LockService,
    _caps: &Capabilities,
) {
    let seed = model_seed();
    let _report = SeedOnPanic {
        seed,
        backend: svc.backend(),
    };
    let mut rng = StdRng::seed_from_u64(seed);
    let scope = Scope::new("model");
    let objects: Vec<ObjectId> = (0..OBJECTS)
        .map(|i| scope.object(&format!("o{i}")))
        .collect();
    let owners: Vec<OwnerId> = (0..OWNERS)
        .map(|i| scope.owner(&format!("owner-{i}")))
        .collect();
    let mut model = ReferenceModel::new(OBJECTS, margin_for(svc.backend()));
    let mut history: VecDeque<String> = VecDeque::with_capacity(HISTORY);
    for step in 0..STEPS {
        let op = generate(&mut rng, &mut model, &owners);
        let started = Instant::now();
        let (outcome, lease) = execute(svc, &objects, &op).await;
        let during = Window::new(started, Instant::now());
        let outcome = model.classify(&op, outcome, lease.as_ref());
        let line = format!(
            "#{step} {}..{}ms {op} -> {outcome:?}",
            model.ms(during.earliest),
            model.ms(during.latest)
        );
        if let Err(disagreement) = model.observe(&op, during, &outcome, lease.as_ref()) {
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
        if let Some(holder) = &state.holder {
            let _ = svc
                .release(&objects[index], &model.grants[holder.grant].1)
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

    #[test]
    fn an_operation_near_an_expiry_is_too_close_to_call() {
        let mut model = ReferenceModel::new(1, Duration::from_millis(50));
        let t0 = Instant::now();
        let window = |from: u64, to: u64| {
            Window::new(
                t0 + Duration::from_millis(from),
                t0 + Duration::from_millis(to),
            )
        };
        model.objects[0].holder = Some(Holder {
            owner: OwnerId::new("w").expect("valid"),
            fence: Fence(1),
            grant: 0,
            expires: window(1000, 1010),
        });
        assert_eq!(model.liveness(0, window(900, 940)), Liveness::Live);
        assert_eq!(model.liveness(0, window(940, 960)), Liveness::Unknown);
        assert_eq!(model.liveness(0, window(1055, 1070)), Liveness::Unknown);
        assert_eq!(model.liveness(0, window(1061, 1070)), Liveness::Expired);
        model.objects[0].holder = None;
        assert_eq!(model.liveness(0, window(0, 1)), Liveness::Expired);
    }
}
