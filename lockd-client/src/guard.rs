//! [`LeaseGuard`]: keeps a lease (or every lease of a grant) alive in the background and says
//! the moment it is lost.

use std::fmt;
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};
use std::time::Duration;

use lockcore::{
    AcquireRequest, Fence, Grant, Lease, LockError, LockMode, LockResult, LockService, LockToken,
    ObjectId, OwnerId,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::events::{Event, EventFilter, EventKind, EventSource};

/// First pause before following the event log again after its stream broke; it doubles up to
/// [`WANTED_RETRY_MAX`].
const WANTED_RETRY_FIRST: Duration = Duration::from_millis(50);
/// Longest pause between attempts to follow the event log for [`LeaseGuard::wanted`].
const WANTED_RETRY_MAX: Duration = Duration::from_secs(1);

/// A `wanted` notice for a guarded lease: a request started waiting for it, as
/// [`LeaseGuard::wanted`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Wanted {
    /// The guarded object that is wanted.
    pub object: ObjectId,
    /// The wanted lease's fence.
    pub fence: Fence,
    /// Who waits (the waiting request's owner).
    pub waiter: String,
    /// The mode the waiter asks for (a shared holder is wanted only by exclusive waiters).
    pub mode: LockMode,
    /// The notice's sequence number in lockd's event log.
    pub seq: u64,
}

impl Wanted {
    /// The notice `event` is, if it is a `wanted` event for one of `leases`.
    fn of(event: &Event, leases: &[Lease]) -> Option<Self> {
        if event.kind != EventKind::Wanted {
            return None;
        }
        let lease = leases.iter().find(|lease| {
            lease.object.as_str() == event.object
                && Some(lease.fence.get()) == event.fence
                && event.owner.as_deref() == Some(lease.owner.as_str())
        })?;
        Some(Self {
            object: lease.object.clone(),
            fence: lease.fence,
            waiter: event.waiter.clone().unwrap_or_default(),
            mode: event.mode.unwrap_or_default(),
            seq: event.seq,
        })
    }
}

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
    fn new(options: &GuardOptions, granted_ttl: Duration) -> LockResult<Self> {
        let ttl = options.ttl.unwrap_or(granted_ttl);
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
    /// Every guarded lease, in the grant's order; never empty.
    leases: Vec<Lease>,
    deadline: Instant,
}

impl Current {
    fn first(&self) -> &Lease {
        // `LeaseGuard::with_grant_options` refuses an empty grant, and renewals keep the count.
        &self.leases[0]
    }
}

fn locks_of(leases: &[Lease]) -> Vec<(ObjectId, LockToken)> {
    leases
        .iter()
        .map(|lease| (lease.object.clone(), lease.token.clone()))
        .collect()
}

/// The shortest TTL of `leases` (the one that runs out first).
fn shortest_ttl(leases: &[Lease]) -> Duration {
    leases
        .iter()
        .map(|lease| lease.ttl)
        .min()
        .unwrap_or_default()
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

/// Holds a lease for its owner, or every lease of a multi-object grant: renews in the
/// background and reports the moment the lock is lost.
///
/// One guard keeps one [`Grant`]: a single lease of either mode (a shared lease is renewed
/// like an exclusive one), or all the leases of a multi-object acquire, which are renewed
/// together in one `renew_many` request per round and released together in one
/// `release_many`. The grant is treated as one lock: it counts as lost as soon as any of its
/// leases is refused or runs out, and then the guard releases the others in the background
/// (an operation that needed all its objects must not go on with some of them). Guard leases
/// one by one, with one guard each, when they should live and die independently.
///
/// [`LeaseGuard::lease`], [`LeaseGuard::object`], [`LeaseGuard::token`] and
/// [`LeaseGuard::fence`] describe the grant's first lease (the only one of a single-object
/// grant); [`LeaseGuard::leases`] lists them all.
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
            .field("leases", &current.leases)
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

    /// Acquires `object` exclusively and guards the lease with `options`.
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
        options: GuardOptions,
    ) -> LockResult<Self> {
        let request = AcquireRequest::new(object.clone(), owner.clone(), ttl).with_wait(wait);
        Self::acquire_request(service, &request, options).await
    }

    /// Acquires everything `request` asks for (any modes, one or several objects, all or
    /// nothing) and guards the grant with `options`.
    ///
    /// As with [`LeaseGuard::acquire_with_options`], a blocking request is followed by one
    /// renewal of every lease (one request); if one is refused, the rest are released and the
    /// refusal is returned.
    ///
    /// ```no_run
    /// # async fn demo(locks: std::sync::Arc<dyn lockcore::LockService>) -> lockcore::LockResult<()> {
    /// use std::time::Duration;
    /// use lockcore::{AcquireRequest, LockSpec, ObjectId, OwnerId};
    /// use lockd_client::{GuardOptions, LeaseGuard};
    ///
    /// // A rename: source and target together, or neither.
    /// let rename = AcquireRequest::many(
    ///     vec![
    ///         LockSpec::exclusive(ObjectId::new("/vol/a/old")?),
    ///         LockSpec::exclusive(ObjectId::new("/vol/a/new")?),
    ///     ],
    ///     OwnerId::new("node-7")?,
    ///     Duration::from_secs(30),
    /// )
    /// .with_wait(Duration::from_secs(5));
    /// let guard = LeaseGuard::acquire_request(locks, &rename, GuardOptions::default()).await?;
    /// for lease in guard.leases() {
    ///     println!("{} fence {}", lease.object, lease.fence);
    /// }
    /// guard.release().await?;
    /// # Ok(()) }
    /// ```
    pub async fn acquire_request(
        service: Arc<dyn LockService>,
        request: &AcquireRequest,
        mut options: GuardOptions,
    ) -> LockResult<Self> {
        let sent = Instant::now();
        let mut grant = service.acquire_with(request).await?;
        let mut granted_after = sent;
        if !request.wait.is_zero() {
            // A blocking grant happened somewhere during the wait, so the leases may be nearly
            // spent already by the time the answer arrives. Renew once to know their deadline.
            let renew_sent = Instant::now();
            match renew_all(service.as_ref(), &grant.leases, request.ttl).await {
                Renewal::Renewed(leases) => {
                    grant.leases = leases;
                    grant.ttl = shortest_ttl(&grant.leases);
                    granted_after = renew_sent;
                }
                // A lease lapsed before it could be guarded: there is nothing to hold.
                Renewal::Refused(e, kept) => {
                    release_quietly(service.as_ref(), &kept).await;
                    return Err(e);
                }
                // Keep the conservative deadline (measured from the acquire); the renewal
                // task will retry.
                Renewal::Failed(_) => {}
            }
        }
        options.requested_at.get_or_insert(granted_after);
        if options.ttl.is_none() {
            options.ttl = Some(request.ttl);
        }
        Self::with_grant_options(service, grant, options)
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
        let grant = Grant {
            owner: lease.owner.clone(),
            ttl: lease.ttl,
            leases: vec![lease],
        };
        Self::with_grant_options(service, grant, options)
    }

    /// Guards every lease of a grant already acquired from `service` (see
    /// [`LeaseGuard::new`] for when the grant must have been made), with default options.
    pub fn for_grant(service: Arc<dyn LockService>, grant: Grant) -> LockResult<Self> {
        Self::with_grant_options(service, grant, GuardOptions::default())
    }

    /// Guards every lease of a grant already acquired from `service`. A grant of no lease is
    /// [`LockError::InvalidArgument`].
    pub fn with_grant_options(
        service: Arc<dyn LockService>,
        grant: Grant,
        options: GuardOptions,
    ) -> LockResult<Self> {
        if grant.leases.is_empty() {
            return Err(LockError::invalid_argument(
                "objects",
                "a guarded grant needs at least one lease",
            ));
        }
        let granted_ttl = shortest_ttl(&grant.leases);
        let schedule = Schedule::new(&options, granted_ttl)?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            LockError::Internal("LeaseGuard must be created inside a Tokio runtime".into())
        })?;
        let start = options.requested_at.unwrap_or_else(Instant::now);
        let deadline = schedule.deadline(start, granted_ttl);
        let (state, _) = watch::channel(LeaseState::Held);
        let shared = Arc::new(Shared {
            state,
            current: Mutex::new(Current {
                leases: grant.leases,
                deadline,
            }),
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

    /// The (first) lease as of its last successful renewal.
    pub fn lease(&self) -> Lease {
        self.shared.current().first().clone()
    }

    /// Every guarded lease as of the last successful renewal, in the grant's order.
    pub fn leases(&self) -> Vec<Lease> {
        self.shared.current().leases.clone()
    }

    /// The (first) locked object.
    pub fn object(&self) -> ObjectId {
        self.shared.current().first().object.clone()
    }

    /// The (first) lease's token.
    pub fn token(&self) -> LockToken {
        self.shared.current().first().token.clone()
    }

    /// The (first) lease's fence: pass it with every write.
    pub fn fence(&self) -> Fence {
        self.shared.current().first().fence
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

    /// Resolves when a request starts waiting for one of the guarded leases: the `wanted`
    /// notice lockd records for the holder (Lustre's blocking callback, NFS's delegation recall).
    /// A holder that wants to be polite finishes what it is doing and releases early.
    ///
    /// `events` is the lockd to listen to: a [`LockdClient`](crate::LockdClient), or with the
    /// `grpc` feature a `GrpcClient`, of the same lockd the waiters talk to (each lockd process
    /// keeps its own event log). The guard follows only its own notices (filtered by owner,
    /// objects and kind on the server, then by fence here), starting with those already in the
    /// log, so a notice recorded before this call counts too. A broken stream is followed again
    /// from the last event seen, retrying with a pause of up to a second while the server is
    /// unreachable.
    ///
    /// Fails with [`LockError::NotHeld`] once the guard no longer holds its lease (lost or
    /// released: nobody can want it from this holder), and with the error of a refused stream
    /// (a bad API key, a server without an event log).
    ///
    /// ```no_run
    /// # async fn demo(guard: lockd_client::LeaseGuard, lockd: lockd_client::LockdClient) -> lockcore::LockResult<()> {
    /// tokio::select! {
    ///     wanted = guard.wanted(&lockd) => {
    ///         let wanted = wanted?;
    ///         eprintln!("{} waits for {} ({})", wanted.waiter, wanted.object, wanted.mode);
    ///         // flush caches, then:
    ///         guard.release().await?;
    ///     }
    ///     _ = async { /* work under the lock */ } => {}
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn wanted<S: EventSource + ?Sized>(&self, events: &S) -> LockResult<Wanted> {
        let leases = self.leases();
        let not_held = || LockError::NotHeld {
            object: leases[0].object.clone(),
        };
        tokio::select! {
            _ = self.lost() => Err(not_held()),
            wanted = follow_wanted(events, &leases) => wanted,
        }
    }

    /// Stops renewing and releases the lock (every lease of the grant, in one request),
    /// returning the (first) released fence.
    ///
    /// If the lease was already lost, the backend's refusal (`NotHeld` or `TokenMismatch`) is
    /// returned; for a grant of several leases, the first refusal. Subscribers see
    /// [`LeaseState::Released`] unless the lease was lost first.
    pub async fn release(self) -> LockResult<Fence> {
        let mut outcomes = self.release_all().await?.into_iter();
        let first = outcomes
            .next()
            .unwrap_or_else(|| Err(LockError::Internal("no release outcome".into())));
        match outcomes.find(Result::is_err) {
            Some(Err(refused)) if first.is_ok() => Err(refused),
            _ => first,
        }
    }

    /// Stops renewing and releases every lease of the grant in one request, returning one
    /// outcome per lease in the grant's order (the outer error is for the request as a
    /// whole).
    pub async fn release_all(mut self) -> LockResult<Vec<LockResult<Fence>>> {
        self.release_on_drop = false;
        if let Some(task) = self.task.take() {
            task.abort();
            // Wait until no renewal is in flight, so none can land after the release.
            let _ = task.await;
        }
        let leases = self.leases();
        let result = match leases.as_slice() {
            [lease] => Ok(vec![
                self.service.release(&lease.object, &lease.token).await,
            ]),
            _ => self.service.release_many(&locks_of(&leases)).await,
        };
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
        let leases = self.leases();
        runtime.spawn(async move {
            release_quietly(service.as_ref(), &leases).await;
        });
    }
}

/// Follows `events` until a `wanted` notice for one of `leases` arrives (see
/// [`LeaseGuard::wanted`]).
async fn follow_wanted<S: EventSource + ?Sized>(
    events: &S,
    leases: &[Lease],
) -> LockResult<Wanted> {
    let mut filter = EventFilter::default()
        .owner(leases[0].owner.as_str())
        .kind(EventKind::Wanted);
    for lease in leases {
        filter = filter.object(lease.object.as_str());
    }
    // Everything still in the log: a notice may have come before this call.
    let mut after = 0;
    let mut pause = WANTED_RETRY_FIRST;
    loop {
        match events.follow(Some(after), &filter).await {
            Ok(mut stream) => {
                while let Some(next) = stream.next().await {
                    match next {
                        Ok(event) => {
                            pause = WANTED_RETRY_FIRST;
                            after = after.max(event.seq);
                            if let Some(wanted) = Wanted::of(&event, leases) {
                                return Ok(wanted);
                            }
                        }
                        Err(e) if is_transient(&e) => {
                            tracing::debug!(error = %e, "event stream broke; following again");
                            break;
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
            Err(e) if is_transient(&e) => {
                tracing::debug!(error = %e, "cannot follow the event log yet; retrying");
            }
            Err(e) => return Err(e),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(WANTED_RETRY_MAX);
    }
}

/// Releases `leases` (one request), logging failures: for locks the guard gives up.
async fn release_quietly(service: &dyn LockService, leases: &[Lease]) {
    let failed = match leases {
        [] => return,
        [lease] => service.release(&lease.object, &lease.token).await.err(),
        _ => match service.release_many(&locks_of(leases)).await {
            Ok(outcomes) => outcomes.into_iter().find_map(Result::err),
            Err(e) => Some(e),
        },
    };
    if let Some(e) = failed {
        tracing::debug!(object = %leases[0].object, error = %e,
            "release of a guarded lease failed");
    }
}

/// The outcome of one renewal round of a guarded grant.
enum Renewal {
    /// Every lease was renewed: here they are, in order.
    Renewed(Vec<Lease>),
    /// A lease was refused for good: the grant is lost. The leases not refused (still held,
    /// or unknown) come with it, for the guard to give back.
    Refused(LockError, Vec<Lease>),
    /// No lease was refused, but not all were renewed (an outage): try again.
    Failed(LockError),
}

/// Renews every lease of a grant to `ttl` in one request.
async fn renew_all(service: &dyn LockService, leases: &[Lease], ttl: Duration) -> Renewal {
    let outcomes = match leases {
        [lease] => Ok(vec![service.renew(&lease.object, &lease.token, ttl).await]),
        _ => service.renew_many(&locks_of(leases), ttl).await,
    };
    let outcomes = match outcomes {
        Ok(outcomes) if outcomes.len() == leases.len() => outcomes,
        Ok(_) => {
            return Renewal::Failed(LockError::Internal(
                "the backend answered a renewal with the wrong number of outcomes".into(),
            ))
        }
        Err(e) if is_transient(&e) => return Renewal::Failed(e),
        Err(e) => return Renewal::Refused(e, leases.to_vec()),
    };
    let mut renewed = Vec::with_capacity(leases.len());
    let mut kept = Vec::with_capacity(leases.len());
    let mut failed = None;
    let mut refused = None;
    for (outcome, lease) in outcomes.into_iter().zip(leases) {
        match outcome {
            Ok(current) => {
                renewed.push(current);
                kept.push(lease.clone());
            }
            Err(e) if is_transient(&e) => {
                failed = failed.or(Some(e));
                kept.push(lease.clone());
            }
            Err(e) => refused = refused.or(Some(e)),
        }
    }
    match (refused, failed) {
        (Some(e), _) => Renewal::Refused(e, kept),
        (None, Some(e)) => Renewal::Failed(e),
        (None, None) => Renewal::Renewed(renewed),
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
        let Current { leases, .. } = shared.current().clone();
        let object = leases[0].object.clone();
        let sent = Instant::now();
        let renewal =
            tokio::time::timeout_at(deadline, renew_all(service.as_ref(), &leases, schedule.ttl))
                .await;
        match renewal {
            Ok(Renewal::Renewed(renewed)) => {
                let deadline = schedule.deadline(sent, shortest_ttl(&renewed));
                *shared.current() = Current {
                    leases: renewed,
                    deadline,
                };
                last_error = None;
                next = sent + schedule.every;
            }
            Ok(Renewal::Failed(error)) => {
                tracing::warn!(%object, %error, "lease renewal failed; retrying");
                last_error = Some(error);
                next = Instant::now() + schedule.retry;
            }
            Ok(Renewal::Refused(error, kept)) => {
                tracing::warn!(%object, %error, "lease renewal refused; lock lost");
                shared.leave_held(LeaseState::Lost(LossReason::Refused(error)));
                // The others may still be held: a grant is all or nothing, give them back.
                release_quietly(service.as_ref(), &kept).await;
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
            mode: lockcore::LockMode::Exclusive,
            fence: Fence(1),
            ttl,
        }
    }

    fn wanted_event(object: &str, owner: &str, fence: u64) -> Event {
        Event::new(9, std::time::SystemTime::now(), EventKind::Wanted, object)
            .with_owner(owner)
            .with_fence(fence)
            .with_mode(LockMode::Shared)
            .with_waiter("w")
    }

    /// A notice is the guard's only for its own object, fence and owner.
    #[test]
    fn only_notices_for_the_guarded_lease_count() {
        let leases = [lease(Duration::from_secs(1))];
        let wanted = Wanted::of(&wanted_event("a", "o", 1), &leases).expect("the guard's");
        assert_eq!(wanted.waiter, "w");
        assert_eq!(wanted.mode, LockMode::Shared);
        assert_eq!(wanted.seq, 9);
        assert_eq!(wanted.fence, Fence(1));
        for other in [
            wanted_event("b", "o", 1),
            wanted_event("a", "o", 2),
            wanted_event("a", "p", 1),
            Event::new(9, std::time::SystemTime::now(), EventKind::Grant, "a")
                .with_owner("o")
                .with_fence(1),
        ] {
            assert_eq!(Wanted::of(&other, &leases), None, "{other:?}");
        }
    }

    #[test]
    fn the_default_schedule_renews_at_a_third_of_the_ttl() {
        let schedule =
            Schedule::new(&GuardOptions::default(), lease(Duration::from_secs(30)).ttl).unwrap();
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
                    Schedule::new(&options, lease(ttl).ttl),
                    Err(LockError::InvalidArgument { .. })
                ),
                "{options:?} was accepted"
            );
        }
    }
}
