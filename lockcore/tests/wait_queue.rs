//! A seeded randomized interleaving check of [`WaitQueue`]: many waiters on one object, with
//! random arrival times, waits, hold times, releases with a wake, expiries without one, and
//! waiters cancelled (dropped) at random moments, on tokio's paused clock.
//!
//! Each seed is one deterministic schedule (a current-thread runtime with paused time), so a
//! failing seed replays exactly: the failure names it, and `LOCKD_WAIT_SEED=N` runs only it.
//!
//! Why not loom or shuttle: `WaitQueue` is built on tokio's `Notify` and `tokio::time`
//! (`sleep_until` for the head's expiry wake-up and the deadline), which neither model checker
//! can drive: both need every synchronisation primitive swapped for their own and their own
//! executor, and tokio's time driver has no such build. Making `wait.rs` generic over its
//! primitives only for a model checker would change production code for a test. This check
//! instead explores many schedules of the real code, with time as the adversary.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use lockcore::{Fence, Lease, LockError, ObjectId, OwnerId, TokenIssuer, WaitQueue};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

/// Seeds run by default; each is a few dozen waiters' worth of virtual time, milliseconds of real.
const SEEDS: u64 = 300;
/// How long the object may stay free while someone waits before that counts as a lost wake-up:
/// the queue's 1 ms expiry slack plus the timer wheel's millisecond rounding.
const WAKE_TOLERANCE: Duration = Duration::from_millis(3);

/// One waiter's life, as the test saw it.
#[derive(Debug, Clone)]
struct WaiterLog {
    /// Order of entering the queue.
    enqueued_seq: u64,
    enqueued_at: Instant,
    deadline: Instant,
    /// When it left the queue: granted, gave up, or was cancelled.
    left_at: Option<Instant>,
    outcome: Option<&'static str>,
}

/// One grant of the object, by a waiter or the initial holder (`None`).
#[derive(Debug, Clone)]
struct Grant {
    to: Option<usize>,
    at: Instant,
    until: Instant,
    released_at: Option<Instant>,
}

impl Grant {
    fn freed_at(&self) -> Instant {
        self.released_at.map_or(self.until, |r| r.min(self.until))
    }
}

/// The simulated backend: who holds the object until when, and everything that happened.
#[derive(Debug, Default)]
struct Sim {
    grants: Vec<Grant>,
    waiters: BTreeMap<usize, WaiterLog>,
    next_seq: u64,
    violations: Vec<String>,
}

impl Sim {
    fn holder(&self, now: Instant) -> Option<&Grant> {
        self.grants
            .last()
            .filter(|g| g.released_at.is_none() && now < g.until)
    }
}

fn lock(sim: &Mutex<Sim>) -> MutexGuard<'_, Sim> {
    sim.lock().unwrap_or_else(|p| p.into_inner())
}

fn lease(object: &ObjectId, issuer: &TokenIssuer) -> Lease {
    let owner = OwnerId::new("w").expect("valid");
    Lease {
        object: object.clone(),
        owner: owner.clone(),
        token: issuer.seal(issuer.prepare(), object, Fence(1)),
        fence: Fence(1),
        ttl: Duration::from_millis(1),
    }
}

/// One attempt on the simulated backend by waiter `me`: granted when free, else `Locked` with
/// the time left. A grant before the waiter's deadline must respect arrival order.
async fn attempt(
    sim: Arc<Mutex<Sim>>,
    me: usize,
    ttl: Duration,
    yield_first: bool,
    object: ObjectId,
    issuer: TokenIssuer,
) -> Result<Lease, LockError> {
    if yield_first {
        tokio::task::yield_now().await;
    }
    let now = Instant::now();
    let mut sim = lock(&sim);
    if let Some(held) = sim.holder(now) {
        return Err(LockError::Locked {
            object,
            holder: OwnerId::new("h").expect("valid"),
            retry_after: held.until - now,
        });
    }
    let mine = sim.waiters[&me].clone();
    if now < mine.deadline {
        let jumped: Vec<usize> = sim
            .waiters
            .iter()
            .filter(|(_, w)| w.enqueued_seq < mine.enqueued_seq && w.left_at.is_none())
            .map(|(&id, _)| id)
            .collect();
        if !jumped.is_empty() {
            let at = now - sim.grants[0].at;
            sim.violations.push(format!(
                "waiter {me} granted at +{at:?} ahead of earlier waiters {jumped:?} still queued"
            ));
        }
    }
    sim.grants.push(Grant {
        to: Some(me),
        at: now,
        until: now + ttl,
        released_at: None,
    });
    Ok(lease(&object, &issuer))
}

/// Runs one random schedule and returns what went wrong, if anything.
async fn run_schedule(seed: u64) -> Vec<String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let queue = Arc::new(WaitQueue::new());
    let object = ObjectId::new("contended").expect("valid");
    let issuer = TokenIssuer::random();
    let sim = Arc::new(Mutex::new(Sim::default()));
    let start = Instant::now();

    // The initial holder: released with a wake, or left to expire.
    let initial_until = start + Duration::from_millis(rng.random_range(20..200));
    lock(&sim).grants.push(Grant {
        to: None,
        at: start,
        until: initial_until,
        released_at: None,
    });
    if rng.random_bool(0.6) {
        let release_at = start + Duration::from_millis(rng.random_range(5..200));
        let (sim, queue, object) = (sim.clone(), queue.clone(), object.clone());
        tokio::spawn(async move {
            tokio::time::sleep_until(release_at).await;
            release(&sim, &queue, &object, 0);
        });
    }

    let waiters = rng.random_range(3..12);
    let mut handles = Vec::new();
    for me in 0..waiters {
        let arrive = Duration::from_millis(rng.random_range(0..250));
        let wait = if rng.random_bool(0.3) {
            Duration::from_millis(rng.random_range(1..150))
        } else {
            Duration::from_secs(30)
        };
        let ttl = Duration::from_millis(rng.random_range(1..120));
        let hold = Duration::from_millis(rng.random_range(0..100));
        let releases = rng.random_bool(0.7);
        let yields: Vec<bool> = (0..64).map(|_| rng.random_bool(0.3)).collect();
        let (sim, queue, object, issuer) =
            (sim.clone(), queue.clone(), object.clone(), issuer.clone());
        handles.push(tokio::spawn(async move {
            tokio::time::sleep(arrive).await;
            {
                let now = Instant::now();
                let mut s = lock(&sim);
                let seq = s.next_seq;
                s.next_seq += 1;
                s.waiters.insert(
                    me,
                    WaiterLog {
                        enqueued_seq: seq,
                        enqueued_at: now,
                        deadline: now + wait,
                        left_at: None,
                        outcome: None,
                    },
                );
            }
            let mut tries = 0usize;
            let result = queue
                .acquire(&object, wait, || {
                    tries += 1;
                    attempt(
                        sim.clone(),
                        me,
                        ttl,
                        yields[tries % yields.len()],
                        object.clone(),
                        issuer.clone(),
                    )
                })
                .await;
            let now = Instant::now();
            let my_grant = {
                let mut s = lock(&sim);
                let log = s.waiters.get_mut(&me).expect("registered");
                log.left_at = Some(now);
                log.outcome = Some(if result.is_ok() { "granted" } else { "refused" });
                let deadline = log.deadline;
                match &result {
                    Ok(_) => {}
                    Err(LockError::Locked { .. }) if now >= deadline => {}
                    Err(other) => s.violations.push(format!(
                        "waiter {me} got {other:?} {:?} before its deadline",
                        deadline - now
                    )),
                }
                // The grant this attempt just recorded is the newest one.
                s.grants.len() - 1
            };
            if result.is_ok() {
                tokio::time::sleep(hold).await;
                if releases {
                    release(&sim, &queue, &object, my_grant);
                }
            }
        }));
    }

    // Cancel a few waiters at random moments: dropping an acquire must leave the queue intact.
    let mut cancels: Vec<(usize, Duration)> = Vec::new();
    for waiter in 0..waiters {
        if rng.random_bool(0.2) {
            cancels.push((waiter, Duration::from_millis(rng.random_range(0..400))));
        }
    }
    let handles = Arc::new(handles);
    let canceller = {
        let (sim, handles) = (sim.clone(), handles.clone());
        tokio::spawn(async move {
            cancels.sort_by_key(|&(_, at)| at);
            for (waiter, at) in cancels {
                tokio::time::sleep_until(start + at).await;
                let mut s = lock(&sim);
                if let Some(log) = s.waiters.get_mut(&waiter) {
                    if log.left_at.is_none() {
                        // Counted as gone from now on: the check only gets weaker.
                        log.left_at = Some(Instant::now());
                        log.outcome = Some("cancelled");
                    }
                }
                handles[waiter].abort();
            }
        })
    };
    let _ = canceller.await;
    let handles = Arc::try_unwrap(handles).expect("the canceller is done");
    for handle in handles {
        let _ = handle.await;
    }
    // A cancelled waiter that had not registered yet never entered the queue.
    let end = Instant::now();

    let mut problems = std::mem::take(&mut lock(&sim).violations);
    if queue.waiting() != 0 {
        problems.push(format!(
            "waiting() is {} after every waiter left",
            queue.waiting()
        ));
    }
    problems.extend(lost_wake_ups(&lock(&sim), end));
    problems
}

/// Releases grant `index` (if it is still the current, unexpired one) and wakes the queue.
fn release(sim: &Mutex<Sim>, queue: &WaitQueue, object: &ObjectId, index: usize) {
    let now = Instant::now();
    {
        let mut s = lock(sim);
        let last = s.grants.len() - 1;
        let grant = &mut s.grants[index];
        if index != last || grant.released_at.is_some() || now >= grant.until {
            return;
        }
        grant.released_at = Some(now);
    }
    queue.wake(object);
}

/// Every stretch in which the object was free while some waiter was queued (and not at its
/// deadline) lasted at most [`WAKE_TOLERANCE`]: nobody slept through a release or an expiry.
fn lost_wake_ups(sim: &Sim, end: Instant) -> Vec<String> {
    let mut problems = Vec::new();
    for (index, grant) in sim.grants.iter().enumerate() {
        let free_from = grant.freed_at();
        let free_until = sim.grants.get(index + 1).map_or(end, |next| next.at);
        for (id, waiter) in &sim.waiters {
            let left = waiter.left_at.unwrap_or(end);
            // From when this waiter was both queued and facing a free object...
            let since = free_from.max(waiter.enqueued_at);
            // ...until the object was taken, the waiter left, or its wait ran out.
            let until = free_until.min(left).min(waiter.deadline);
            if until > since + WAKE_TOLERANCE {
                problems.push(format!(
                    "object free (after grant #{index} to {:?}) from +{:?} to +{:?} while waiter \
                     {id} ({:?}) waited: a lost wake-up",
                    grant.to,
                    since - free_from,
                    until - free_from,
                    waiter.outcome
                ));
            }
        }
    }
    problems
}

fn check_seed(seed: u64) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    let problems = runtime.block_on(run_schedule(seed));
    assert!(
        problems.is_empty(),
        "WaitQueue schedule with LOCKD_WAIT_SEED={seed} broke its contract:\n  {}",
        problems.join("\n  ")
    );
}

/// Under random arrivals, waits, releases, expiries and cancellations, waiters are served in
/// arrival order (except a final attempt at a waiter's own deadline), no waiter sleeps through
/// a release or an expiry, refusals come only at the deadline, and `waiting()` returns to 0.
#[test]
fn random_schedules_keep_fifo_order_lose_no_wake_up_and_leave_no_waiter_behind() {
    if let Ok(seed) = std::env::var("LOCKD_WAIT_SEED") {
        check_seed(seed.trim().parse().expect("LOCKD_WAIT_SEED is a u64"));
        return;
    }
    let base: u64 = rand::rng().random();
    for offset in 0..SEEDS {
        check_seed(base.wrapping_add(offset));
    }
}
