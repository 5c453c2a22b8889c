//! Taking back grants whose acquire reply never reached anyone, written once for every backend.
//!
//! A network backend decides a grant where the data lives (a Lua script, an SQL statement). When
//! the caller stops waiting for the answer (its future is dropped, the deadline passes, the
//! connection breaks), the grant may have been made all the same, and nobody has its token: the
//! object would stay locked until the lease runs out. So a backend arms a [`ReclaimGuard`]
//! before it sends an acquire and disarms it once it has read the answer. A guard dropped while
//! armed runs the backend's `undo` in the background, with backoff: `undo` removes the grant if
//! it still carries this attempt's token digest and no retry with the same request id has
//! claimed it (that retry's caller has the token).
//!
//! Work is bounded: at most [`MAX_RECLAIMING`] reclaims run at once (past that a lost grant
//! simply expires), each gives up after its policy's window or the lease's TTL, whichever is
//! shorter, and [`Reclaimer::drain`] lets a server wait for them before it exits.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::error::LockResult;
use crate::id::ObjectId;

/// Most reclaims in flight at once per backend.
pub const MAX_RECLAIMING: usize = 1024;

/// What one `undo` attempt found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Undo {
    /// The grant was there, unclaimed, and is now removed.
    TookBack,
    /// The grant is there but a retry with its request id claimed it: it stays.
    Claimed,
    /// No grant with this digest (never made, already expired, or not made yet).
    Absent,
}

/// One `undo` attempt, as a backend builds it.
pub type UndoFuture = Pin<Box<dyn Future<Output = LockResult<Undo>> + Send>>;

/// When and for how long a backend tries to take a lost grant back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReclaimPolicy {
    /// Pause before the first attempt.
    pub first_delay: Duration,
    /// Longest pause between attempts (the pause doubles up to this).
    pub max_delay: Duration,
    /// How long to keep trying while the backend does not answer (at most the lease's TTL).
    pub window: Duration,
    /// How long [`Undo::Absent`] means "try again": the acquire may still be on its way, on
    /// another connection, to a backend that has not run it yet. Zero stops at the first
    /// `Absent`.
    pub absent_window: Duration,
}

/// Runs reclaims for one backend; cheap to clone.
#[derive(Debug, Clone)]
pub struct Reclaimer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    backend: &'static str,
    policy: ReclaimPolicy,
    in_flight: AtomicUsize,
    idle: Notify,
}

impl Reclaimer {
    /// A reclaimer for `backend` (used in logs) with `policy`.
    pub fn new(backend: &'static str, policy: ReclaimPolicy) -> Self {
        Self {
            inner: Arc::new(Inner {
                backend,
                policy,
                in_flight: AtomicUsize::new(0),
                idle: Notify::new(),
            }),
        }
    }

    /// Arms a guard for an acquire of `object` with lease `ttl` about to be sent. Disarm it once
    /// the answer has been read; dropping it armed starts `undo` in the background.
    pub fn guard<F>(&self, object: &ObjectId, ttl: Duration, undo: F) -> ReclaimGuard<F>
    where
        F: FnMut() -> UndoFuture + Send + 'static,
    {
        ReclaimGuard {
            armed: Some(Armed {
                reclaimer: self.clone(),
                object: object.clone(),
                ttl,
                undo,
            }),
        }
    }

    /// Reclaims running now.
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.load(Ordering::Acquire)
    }

    /// Waits until no reclaim runs, at most `timeout`; returns whether none runs.
    pub async fn drain(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let idle = self.inner.idle.notified();
            if self.in_flight() == 0 {
                return true;
            }
            tokio::select! {
                () = idle => {}
                () = tokio::time::sleep_until(deadline) => return self.in_flight() == 0,
            }
        }
    }

    fn start<F>(&self, object: ObjectId, ttl: Duration, mut undo: F)
    where
        F: FnMut() -> UndoFuture + Send + 'static,
    {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(target: "lockd::reclaim", backend = self.inner.backend, object = %object,
                "no runtime to take back a lock whose acquire reply was lost; it will expire");
            return;
        };
        if self.inner.in_flight.fetch_add(1, Ordering::AcqRel) >= MAX_RECLAIMING {
            self.finished();
            tracing::debug!(target: "lockd::reclaim", backend = self.inner.backend, object = %object,
                "too many lost acquires to take back; this one will expire");
            return;
        }
        let reclaimer = self.clone();
        runtime.spawn(async move {
            let policy = reclaimer.inner.policy;
            let started = Instant::now();
            let give_up = started + ttl.min(policy.window);
            let absent_until = started + policy.absent_window;
            let mut delay = policy.first_delay;
            while Instant::now() + delay < give_up {
                tokio::time::sleep(delay).await;
                match undo().await {
                    Ok(Undo::TookBack) => {
                        tracing::info!(target: "lockd::reclaim", backend = reclaimer.inner.backend,
                            object = %object, "took back a lock whose acquire reply was lost");
                        break;
                    }
                    Ok(Undo::Claimed) => break,
                    Ok(Undo::Absent) if Instant::now() >= absent_until => break,
                    Ok(Undo::Absent) | Err(_) => {}
                }
                delay = (delay * 2).min(policy.max_delay);
            }
            reclaimer.finished();
        });
    }

    fn finished(&self) {
        if self.inner.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.inner.idle.notify_waiters();
        }
    }
}

/// Armed while an acquire's answer has not been read; see [`Reclaimer::guard`].
#[derive(Debug)]
#[must_use = "dropping the guard at once would undo the grant"]
pub struct ReclaimGuard<F>
where
    F: FnMut() -> UndoFuture + Send + 'static,
{
    armed: Option<Armed<F>>,
}

struct Armed<F> {
    reclaimer: Reclaimer,
    object: ObjectId,
    ttl: Duration,
    undo: F,
}

impl<F> std::fmt::Debug for Armed<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Armed")
            .field("object", &self.object)
            .finish_non_exhaustive()
    }
}

impl<F> ReclaimGuard<F>
where
    F: FnMut() -> UndoFuture + Send + 'static,
{
    /// The answer was read: nothing to take back.
    pub fn disarm(mut self) {
        self.armed = None;
    }
}

impl<F> Drop for ReclaimGuard<F>
where
    F: FnMut() -> UndoFuture + Send + 'static,
{
    fn drop(&mut self) {
        if let Some(armed) = self.armed.take() {
            armed.reclaimer.start(armed.object, armed.ttl, armed.undo);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn policy(absent_window: Duration) -> ReclaimPolicy {
        ReclaimPolicy {
            first_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(40),
            window: Duration::from_secs(1),
            absent_window,
        }
    }

    /// An undo that answers from a script of outcomes and counts its calls.
    fn scripted(outcomes: Vec<Undo>) -> (Arc<Mutex<Vec<Undo>>>, impl FnMut() -> UndoFuture + Send) {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let seen = calls.clone();
        let mut outcomes = outcomes.into_iter();
        let undo = move || -> UndoFuture {
            let outcome = outcomes.next().unwrap_or(Undo::Absent);
            seen.lock().expect("calls").push(outcome);
            Box::pin(async move { Ok(outcome) })
        };
        (calls, undo)
    }

    fn object() -> ObjectId {
        ObjectId::new("o").expect("valid")
    }

    #[tokio::test(start_paused = true)]
    async fn a_disarmed_guard_undoes_nothing() {
        let reclaimer = Reclaimer::new("test", policy(Duration::from_secs(1)));
        let (calls, undo) = scripted(vec![Undo::TookBack]);
        reclaimer
            .guard(&object(), Duration::from_secs(60), undo)
            .disarm();
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(calls.lock().expect("calls").is_empty());
        assert_eq!(reclaimer.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_guard_retries_an_absent_grant_until_it_is_taken_back() {
        let reclaimer = Reclaimer::new("test", policy(Duration::from_secs(1)));
        let (calls, undo) = scripted(vec![Undo::Absent, Undo::Absent, Undo::TookBack]);
        drop(reclaimer.guard(&object(), Duration::from_secs(60), undo));
        assert!(reclaimer.drain(Duration::from_secs(5)).await);
        assert_eq!(
            *calls.lock().expect("calls"),
            vec![Undo::Absent, Undo::Absent, Undo::TookBack]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn without_an_absent_window_the_first_answer_ends_it_and_a_claim_is_left_alone() {
        let reclaimer = Reclaimer::new("test", policy(Duration::ZERO));
        let (absent, undo) = scripted(vec![Undo::Absent, Undo::TookBack]);
        drop(reclaimer.guard(&object(), Duration::from_secs(60), undo));
        let (claimed, undo) = scripted(vec![Undo::Claimed, Undo::TookBack]);
        drop(reclaimer.guard(&object(), Duration::from_secs(60), undo));
        assert!(reclaimer.drain(Duration::from_secs(5)).await);
        assert_eq!(*absent.lock().expect("calls"), vec![Undo::Absent]);
        assert_eq!(*claimed.lock().expect("calls"), vec![Undo::Claimed]);
    }

    #[tokio::test(start_paused = true)]
    async fn reclaiming_gives_up_when_the_lease_would_have_expired_anyway() {
        let reclaimer = Reclaimer::new("test", policy(Duration::from_secs(1)));
        let (calls, undo) = scripted(Vec::new());
        drop(reclaimer.guard(&object(), Duration::from_millis(100), undo));
        assert!(reclaimer.drain(Duration::from_secs(5)).await);
        let tries = calls.lock().expect("calls").len();
        assert!(
            (1..=3).contains(&tries),
            "{tries} tries within a 100 ms lease"
        );
    }
}
