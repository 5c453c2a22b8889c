//! [`LeaseGuard`]: keeps a lease alive in the background and says the moment it is lost.

use std::fmt;
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};
use std::time::Duration;

use lockcore::{Fence, Lease, LockError, LockResult, LockService, LockToken, ObjectId, OwnerId};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Where a guarded lease stands, as [`LeaseGuard::subscribe`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LeaseState {
    /// Renewals are succeeding: the lease is the holder's until at least
    /// [`LeaseGuard::valid_for`] from now.
    Held,
    /// The lock is no longer (or may no longer be) the holder's: stop using it now.
    Lost(LossReason),
    /// The holder gave the lock up: [`LeaseGuard::release`] was called or the guard dropped.
    Released,
}

impl LeaseState {
    /// Whether the lease is still the holder's.
    pub fn is_held(&self) -> bool {
        matches!(self, LeaseState::Held)
    }
}

/// Why a guarded lease was lost.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LossReason {
    /// The backend refused a renewal: the lease expired or was released, and someone else may
    /// hold the object now (`NotHeld`, `TokenMismatch`, or another non-retryable error).
    Refused(LockError),
    /// No renewal succeeded before the lease ran out (the backend was unreachable or slow), so
    /// the backend may already have given the object to someone else.
    Expired {
        /// The last renewal failure, if there was one.
        last_error: Option<LockError>,
    },
}

impl fmt::Display for LossReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LossReason::Refused(e) => write!(f, "renewal refused: {e}"),
            LossReason::Expired { last_error: None } => {
                f.write_str("lease ran out before a renewal succeeded")
            }
            LossReason::Expired {
                last_error: Some(e),
            } => write!(
                f,
                "lease ran out before a renewal succeeded (last error: {e})"
            ),
        }
    }
}

/// How a [`LeaseGuard`] renews. `Default` renews at a third of the TTL.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct GuardOptions {
    /// The TTL each renewal asks for (default: the lease's TTL).
    pub ttl: Option<Duration>,
    /// Time between renewals (default: a third of the TTL). Must be shorter than the TTL.
    pub renew_every: Option<Duration>,
    /// Time between retries after a failed renewal (default: a tenth of the TTL, at least
    /// 10 ms). Retries stop when the lease runs out.
    pub retry_every: Option<Duration>,
    /// The lease counts as lost this long before its TTL runs out on the client's clock, to
    /// cover clock-rate differences between client and backend (default: 1 % of the TTL).
    pub safety_margin: Option<Duration>,
    /// The instant just before the request that granted the lease was sent (default: when the
    /// guard is created). The lease is assumed to run out TTL after it.
    pub requested_at: Option<Instant>,
    /// Skip the best-effort release a dropped guard starts (default: release on drop).
    pub no_release_on_drop: bool,
}

impl GuardOptions {
    /// Renew every `every` instead of a third of the TTL.
    pub fn renew_every(mut self, every: Duration) -> Self {
        self.renew_every = Some(every);
        self
    }

    /// Ask for `ttl` on each renewal instead of the lease's TTL.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Retry failed renewals every `every`.
    pub fn retry_every(mut self, every: Duration) -> Self {
        self.retry_every = Some(every);
        self
    }

    /// Count the lease as lost `margin` before it runs out.
    pub fn safety_margin(mut self, margin: Duration) -> Self {
        self.safety_margin = Some(margin);
        self
    }

    /// The lease was requested at `at` (see [`GuardOptions::requested_at`]).
    pub fn requested_at(mut self, at: Instant) -> Self {
        self.requested_at = Some(at);
        self
    }

    /// Do not release when the guard is dropped; the lease then lapses after its TTL.
    pub fn no_release_on_drop(mut self) -> Self {
        self.no_release_on_drop = true;
        self
    }
}

/// The options with every default filled in and checked.
#[derive(Debug, Clone, Copy)]
struct Schedule {
    ttl: Duration,
    every: Duration,
    retry: Duration,
    margin: Duration,
}

impl Schedule {
    fn new(options: &GuardOptions, lease: &Lease) -> LockResult<Self> {
        let ttl = options.ttl.unwrap_or(lease.ttl);
        if ttl.is_zero() {
            return Err(LockError::invalid_argument(
                "ttl",
                "a guarded lease needs a TTL",
            ));
        }
        let every = options.renew_every.unwrap_or(ttl / 3);
        if every.is_zero() || every >= ttl {
            return Err(LockError::invalid_argument(
                "renew_every",
                format!("must be above zero and below the TTL of {ttl:?}"),
            ));
        }
        let retry = options
            .retry_every
            .unwrap_or((ttl / 10).max(Duration::from_millis(10)));
        if retry.is_zero() {
            return Err(LockError::invalid_argument(
                "retry_every",
                "must be above zero",
            ));
        }
        let margin = options.safety_margin.unwrap_or(ttl / 100);
        if margin >= ttl {
            return Err(LockError::invalid_argument(
                "safety_margin",
                format!("must be below the TTL of {ttl:?}"),
            ));
        }
        Ok(Self {
            ttl,
            every,
            retry,
            margin,
        })
    }

    /// When a lease granted (or renewed) for `ttl` by a request sent at `sent` must count as lost.
    fn deadline(&self, sent: Instant, ttl: Duration) -> Instant {
        sent + ttl.saturating_sub(self.margin)
    }
}

/// State shared by a guard and its renewal task.
#[derive(Debug)]
struct Shared {
    state: watch::Sender<LeaseState>,
    current: Mutex<Current>,
}

#[derive(Debug, Clone)]
struct Current {
    lease: Lease,
    deadline: Instant,
}

impl Shared {
    fn current(&self) -> MutexGuard<'_, Current> {
        self.current.lock()
    }

    /// Moves from `Held` to `to`; a lease already lost or released stays so.
    fn leave_held(&self, to: LeaseState) -> bool {
        self.state.send_if_modified(|state| {
            if state.is_held() {
                *state = to;
                true
            } else {
                false
            }
        })
    }
}

/// Holds a lease for its owner: renews it in the background and reports the moment it is lost.
///
/// Works with any [`LockService`] (embedded backends and [`LockdClient`](crate::LockdClient)
/// alike). The guard renews at a third of the TTL by default. It reports the lease lost, through
/// [`LeaseGuard::subscribe`] and [`LeaseGuard::lost`], as soon as
///
/// * a renewal is refused (`NotHeld`, `TokenMismatch`: the lease ran out or was released and
///   someone else may hold the object now), or
/// * the lease runs out on the client's clock without a successful renewal (the backend is
///   unreachable or slow); that moment is measured from when the granting request was *sent*,
///   less a safety margin, so it comes before the backend can give the object away.
///
/// Transient renewal failures (`Unavailable`) are retried until then.
///
/// [`LeaseGuard::release`] stops renewing and releases the lock, returning the backend's answer.
/// Dropping the guard stops renewing at once but does **not** release synchronously: it spawns a
/// best-effort release on the current Tokio runtime (unless
/// [`GuardOptions::no_release_on_drop`]); if that cannot run, the lease lapses after its TTL.
///
/// Pass the lease's [`Fence`] with every write: a guard narrows the window in which a holder
/// acts on a lost lock, fencing closes it.
///
/// ```no_run
/// # async fn demo(locks: std::sync::Arc<dyn lockcore::LockService>) -> lockcore::LockResult<()> {
/// use std::time::Duration;
/// use lockcore::{ObjectId, OwnerId};
/// use lockd_client::LeaseGuard;
///
/// let object = ObjectId::new("/volumes/a/file.txt")?;
/// let owner = OwnerId::new("node-7")?;
/// let guard = LeaseGuard::acquire(locks, &object, &owner, Duration::from_secs(30), Duration::ZERO).await?;
/// tokio::select! {
///     state = guard.lost() => eprintln!("lost the lock: {state:?}"),
///     _ = async { /* write, passing guard.fence() to storage */ } => {}
/// }
/// guard.release().await?;
/// # Ok(()) }
/// ```
pub struct LeaseGuard {
    service: Arc<dyn LockService>,
    shared: Arc<Shared>,
    task: Option<JoinHandle<()>>,
    release_on_drop: bool,
}

impl fmt::Debug for LeaseGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let current = self.shared.current().clone();
        f.debug_struct("LeaseGuard")
            .field("backend", &self.service.backend())
            .field("lease", &current.lease)
            .field("state", &*self.shared.state.borrow())
            .finish_non_exhaustive()
    }
}

impl LeaseGuard {
    /// Acquires `object` (as [`LockService::acquire`]) and guards the lease with default options.
    pub async fn acquire(
        service: Arc<dyn LockService>,
        object: &ObjectId,
        owner: &OwnerId,
        ttl: Duration,
        wait: Duration,
    ) -> LockResult<Self> {
        Self::acquire_with_options(service, object, owner, ttl, wait, GuardOptions::default()).await
    }

    /// Acquires `object` and guards the lease with `options`.
    ///
    /// A blocking acquire (`wait` above zero) is followed by one renewal: the grant happened at
    /// some unknown moment during the wait, and the renewal tells the guard when the lease runs
    /// out. If that renewal is refused, the lease already lapsed and its error is returned.
    pub async fn acquire_with_options(
        service: Arc<dyn LockService>,
        object: &ObjectId,
        owner: &OwnerId,
        ttl: Duration,
        wait: Duration,
        mut options: GuardOptions,
    ) -> LockResult<Self> {
        let sent = Instant::now();
        let mut lease = service.acquire(object, owner, ttl, wait).await?;
        let mut granted_after = sent;
        if !wait.is_zero() {
            // A blocking grant happened somewhere during the wait, so the lease may be nearly
            // spent already by the time the answer arrives. Renew once to know its deadline.
            let renew_sent = Instant::now();
            match service.renew(object, &lease.token, ttl).await {
                Ok(renewed) => {
                    lease = renewed;
                    granted_after = renew_sent;
                }
                // The lease lapsed before it could be guarded: there is nothing to hold.
                Err(e) if !is_transient(&e) => return Err(e),
                // Keep the conservative deadline (measured from the acquire); the renewal
                // task will retry.
                Err(_) => {}
            }
        }
        options.requested_at.get_or_insert(granted_after);
        if options.ttl.is_none() {
            options.ttl = Some(ttl);
        }
        Self::with_options(service, lease, options)
    }

    /// Guards a lease already acquired from `service`, with default options.
    ///
    /// The lease is assumed to have been granted just now: create the guard right after a
    /// non-blocking acquire returns. For a lease obtained earlier, or by a blocking acquire, use
    /// [`LeaseGuard::acquire`] or set [`GuardOptions::requested_at`]; otherwise the guard's
    /// deadline runs later than the backend's and it may call a lapsed lease held until its
    /// first renewal is refused.
    ///
    /// Needs a Tokio runtime (it spawns the renewal task); outside one it fails with
    /// [`LockError::Internal`].
    pub fn new(service: Arc<dyn LockService>, lease: Lease) -> LockResult<Self> {
        Self::with_options(service, lease, GuardOptions::default())
    }

    /// Guards a lease already acquired from `service`.
    pub fn with_options(
        service: Arc<dyn LockService>,
        lease: Lease,
        options: GuardOptions,
    ) -> LockResult<Self> {
        let schedule = Schedule::new(&options, &lease)?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            LockError::Internal("LeaseGuard must be created inside a Tokio runtime".into())
        })?;
        let start = options.requested_at.unwrap_or_else(Instant::now);
        let deadline = schedule.deadline(start, lease.ttl);
        let (state, _) = watch::channel(LeaseState::Held);
        let shared = Arc::new(Shared {
            state,
            current: Mutex::new(Current { lease, deadline }),
        });
        let task = runtime.spawn(renew_loop(
            Arc::clone(&service),
            Arc::clone(&shared),
            schedule,
            start,
        ));
        Ok(Self {
            service,
            shared,
            task: Some(task),
            release_on_drop: !options.no_release_on_drop,
        })
    }

    /// The lease as of its last successful renewal.
    pub fn lease(&self) -> Lease {
        self.shared.current().lease.clone()
    }

    /// The locked object.
    pub fn object(&self) -> ObjectId {
        self.shared.current().lease.object.clone()
    }

    /// The lease's token.
    pub fn token(&self) -> LockToken {
        self.shared.current().lease.token.clone()
    }

    /// The lease's fence: pass it with every write.
    pub fn fence(&self) -> Fence {
        self.shared.current().lease.fence
    }

    /// Where the lease stands now.
    pub fn state(&self) -> LeaseState {
        self.shared.state.borrow().clone()
    }

    /// Whether the lease is still held (renewals succeeding, not released).
    pub fn is_held(&self) -> bool {
        self.shared.state.borrow().is_held() && Instant::now() < self.shared.current().deadline
    }

    /// How long the lease is certainly still the holder's if no further renewal succeeds
    /// (zero once lost or released).
    pub fn valid_for(&self) -> Duration {
        if !self.shared.state.borrow().is_held() {
            return Duration::ZERO;
        }
        self.shared
            .current()
            .deadline
            .saturating_duration_since(Instant::now())
    }

    /// A receiver that changes from [`LeaseState::Held`] exactly once: when the lease is lost
    /// or given up. Hand it to the tasks that work under the lock.
    pub fn subscribe(&self) -> watch::Receiver<LeaseState> {
        self.shared.state.subscribe()
    }

    /// Resolves once the lease is no longer held, with the state that ended it. Meant for
    /// `tokio::select!` next to the work done under the lock.
    pub async fn lost(&self) -> LeaseState {
        let mut receiver = self.subscribe();
        // The sender lives as long as `self`, so waiting cannot fail while we borrow it.
        if let Ok(state) = receiver.wait_for(|state| !state.is_held()).await {
            return state.clone();
        }
        let state = receiver.borrow().clone();
        state
    }

    /// Stops renewing and releases the lock, returning the released fence.
    ///
    /// If the lease was already lost, the backend's refusal (`NotHeld` or `TokenMismatch`) is
    /// returned. Subscribers see [`LeaseState::Released`] unless the lease was lost first.
    pub async fn release(mut self) -> LockResult<Fence> {
        self.release_on_drop = false;
        if let Some(task) = self.task.take() {
            task.abort();
            // Wait until no renewal is in flight, so none can land after the release.
            let _ = task.await;
        }
        let lease = self.lease();
        let result = self.service.release(&lease.object, &lease.token).await;
        self.shared.leave_held(LeaseState::Released);
        result
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        let was_held = self.shared.leave_held(LeaseState::Released);
        if !(was_held && self.release_on_drop) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let service = Arc::clone(&self.service);
        let lease = self.lease();
        runtime.spawn(async move {
            if let Err(e) = service.release(&lease.object, &lease.token).await {
                tracing::debug!(object = %lease.object, error = %e, "release of a dropped lease guard failed");
            }
        });
    }
}

/// Whether a failed renewal may succeed if retried before the lease runs out.
fn is_transient(error: &LockError) -> bool {
    error.is_retryable() || matches!(error, LockError::Internal(_))
}

async fn renew_loop(
    service: Arc<dyn LockService>,
    shared: Arc<Shared>,
    schedule: Schedule,
    start: Instant,
) {
    let mut next = start + schedule.every;
    let mut last_error: Option<LockError> = None;
    loop {
        let deadline = shared.current().deadline;
        tokio::time::sleep_until(next.min(deadline)).await;
        if Instant::now() >= deadline {
            shared.leave_held(LeaseState::Lost(LossReason::Expired { last_error }));
            return;
        }
        let Current { lease, .. } = shared.current().clone();
        let sent = Instant::now();
        let renewal = tokio::time::timeout_at(
            deadline,
            service.renew(&lease.object, &lease.token, schedule.ttl),
        )
        .await;
        match renewal {
            Ok(Ok(renewed)) => {
                let deadline = schedule.deadline(sent, renewed.ttl);
                *shared.current() = Current {
                    lease: renewed,
                    deadline,
                };
                last_error = None;
                next = sent + schedule.every;
            }
            Ok(Err(error)) if is_transient(&error) => {
                tracing::warn!(object = %lease.object, %error, "lease renewal failed; retrying");
                last_error = Some(error);
                next = Instant::now() + schedule.retry;
            }
            Ok(Err(error)) => {
                tracing::warn!(object = %lease.object, %error, "lease renewal refused; lock lost");
                shared.leave_held(LeaseState::Lost(LossReason::Refused(error)));
                return;
            }
            Err(_) => {
                let last_error = Some(last_error.unwrap_or_else(|| {
                    LockError::unavailable(
                        service.backend(),
                        "renewal did not answer before the lease ran out",
                    )
                }));
                shared.leave_held(LeaseState::Lost(LossReason::Expired { last_error }));
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(ttl: Duration) -> Lease {
        let issuer = lockcore::TokenIssuer::random();
        let object = ObjectId::new("a").unwrap();
        let owner = OwnerId::new("o").unwrap();
        Lease {
            token: issuer.seal(issuer.prepare(), &object, Fence(1)),
            object,
            owner,
            fence: Fence(1),
            ttl,
        }
    }

    #[test]
    fn the_default_schedule_renews_at_a_third_of_the_ttl() {
        let schedule =
            Schedule::new(&GuardOptions::default(), &lease(Duration::from_secs(30))).unwrap();
        assert_eq!(schedule.ttl, Duration::from_secs(30));
        assert_eq!(schedule.every, Duration::from_secs(10));
        assert_eq!(schedule.retry, Duration::from_secs(3));
        assert_eq!(schedule.margin, Duration::from_millis(300));
    }

    #[test]
    fn a_schedule_that_cannot_keep_the_lease_is_refused() {
        let ttl = Duration::from_secs(1);
        for options in [
            GuardOptions::default().renew_every(ttl),
            GuardOptions::default().renew_every(Duration::ZERO),
            GuardOptions::default().safety_margin(ttl),
            GuardOptions::default().retry_every(Duration::ZERO),
            GuardOptions::default().ttl(Duration::ZERO),
        ] {
            assert!(
                matches!(
                    Schedule::new(&options, &lease(ttl)),
                    Err(LockError::InvalidArgument { .. })
                ),
                "{options:?} was accepted"
            );
        }
    }
}
