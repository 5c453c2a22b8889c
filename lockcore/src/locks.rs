//! [`Locks`]: the [`LockService`] every backend gets by implementing [`LockStore`].

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::audit;
use crate::error::{LockError, LockResult};
use crate::fence::Fence;
use crate::id::ObjectId;
use crate::lease::{Grant, Lease, ListQuery, LockInfo, LockPage};
use crate::limits::Limits;
use crate::mode::{LockMode, LockScope};
use crate::reclaim::{Reclaimer, UndoFuture};
use crate::request::{check_objects, AcquireRequest};
use crate::service::{LeaseEndSink, LockService, WaitNotice, WaitSink};
use crate::store::{
    Attempt, Attempted, Claim, Granted, HolderRef, HolderState, LockStore, Queueing, StoreFeatures,
    Ticket, Verdict,
};
use crate::token::{LockToken, PendingToken, TokenIssuer};

/// How often a waiting request attempts again even if nothing woke it, renewing its place in
/// the store's queues. A waiter whose process died keeps its place at most
/// [`QUEUE_ENTRY_LIFETIME`] longer.
pub const QUEUE_KEEPALIVE: Duration = Duration::from_secs(2);

/// How long a waiter's queue entries last unless renewed (three keep-alives).
pub const QUEUE_ENTRY_LIFETIME: Duration = Duration::from_secs(6);

/// Slack added to a holder's remaining TTL before a waiter tries again, so that the attempt
/// lands after the store's clock has expired the lease.
const EXPIRY_SLACK: Duration = Duration::from_millis(1);

/// A [`LockService`] on a [`LockStore`]: argument checks, tokens, waiting, wake-ups, taking back
/// lost grants and audit logging, written once for every backend.
///
/// Backends name it for their store: `pub type MemoryLockService = Locks<MemoryStore>;`.
pub struct Locks<S> {
    store: Arc<S>,
    issuer: TokenIssuer,
    limits: Limits,
    reclaimer: Option<Reclaimer>,
    wait_sink: OnceLock<WaitSink>,
}

impl<S: LockStore> Locks<S> {
    /// The service on `store`, minting tokens with `issuer`.
    ///
    /// Processes that share one store must share the issuer's secret: each checks the others'
    /// tokens.
    pub fn new(store: S, issuer: TokenIssuer) -> Self {
        let limits = store.limits();
        let reclaimer = store
            .reclaim_policy()
            .map(|policy| Reclaimer::new(store.backend(), policy));
        Self {
            store: Arc::new(store),
            issuer,
            limits,
            reclaimer,
            wait_sink: OnceLock::new(),
        }
    }

    fn notify(&self, notice: impl FnOnce() -> WaitNotice) {
        if let Some(sink) = self.wait_sink.get() {
            sink(notice());
        }
    }

    /// Refuses what the store does not implement (see [`LockStore::features`]).
    fn check_features(&self, request: &AcquireRequest) -> LockResult<()> {
        let StoreFeatures {
            subtree,
            lock_delay,
        } = self.store.features();
        if !subtree
            && request
                .objects
                .iter()
                .any(|s| s.scope == LockScope::Subtree)
        {
            return Err(LockError::invalid_argument(
                "scope",
                format!("the {} backend has no subtree locks", self.store.backend()),
            ));
        }
        if !lock_delay && !request.lock_delay.is_zero() {
            return Err(LockError::invalid_argument(
                "lock_delay_ms",
                format!("the {} backend has no lock-delay", self.store.backend()),
            ));
        }
        Ok(())
    }

    /// Reports a request that was refused at least once and has now ended.
    fn contended(&self, request: &AcquireRequest, started: Instant, granted: bool) {
        self.notify(|| WaitNotice::Contended {
            objects: request.objects.iter().map(|s| s.object.clone()).collect(),
            waited: started.elapsed(),
            granted,
        });
    }

    /// The store, for what only its backend offers (metrics, configuration).
    pub fn store(&self) -> &S {
        &self.store
    }

    /// One attempt, with a reclaim guard around it for a store whose answer can be lost.
    async fn attempt(&self, attempt: Attempt<'_>) -> LockResult<Attempted> {
        let Some(reclaimer) = &self.reclaimer else {
            return self.store.try_acquire(attempt).await;
        };
        let store = self.store.clone();
        let claims = attempt.claims.to_vec();
        let first = claims[0].object.clone();
        let guard = reclaimer.guard(&first, attempt.ttl, move || -> UndoFuture {
            let (store, claims) = (store.clone(), claims.clone());
            Box::pin(async move { store.abandon(&claims).await })
        });
        let outcome = self.store.try_acquire(attempt).await;
        if outcome.is_ok() {
            guard.disarm();
        }
        // An error may come after the store granted (a timeout, a broken connection): the
        // dropped guard takes the grant back unless a retry claims it.
        outcome
    }

    fn sealed(
        &self,
        request: &AcquireRequest,
        pending: Vec<PendingToken>,
        granted: Vec<Granted>,
    ) -> LockResult<Grant> {
        if granted.len() != request.objects.len() {
            return Err(LockError::Internal(format!(
                "{} store granted {} of {} objects",
                self.store.backend(),
                granted.len(),
                request.objects.len()
            )));
        }
        let ttl = granted.iter().map(|g| g.ttl).min().unwrap_or(request.ttl);
        let leases = request
            .objects
            .iter()
            .zip(pending)
            .zip(granted)
            .map(|((spec, pending), granted)| Lease {
                object: spec.object.clone(),
                owner: request.owner.clone(),
                mode: granted.mode,
                token: self.issuer.seal(pending, &spec.object, granted.fence),
                fence: granted.fence,
                ttl: granted.ttl,
            })
            .collect();
        Ok(Grant {
            owner: request.owner.clone(),
            ttl,
            leases,
        })
    }

    /// Checks each token's MAC (logging refusals) and asks the store about the authentic ones
    /// in one call; one outcome per lock, in order.
    async fn for_each_holder<T, F, Fut>(
        &self,
        operation: &'static str,
        locks: &[(ObjectId, LockToken)],
        call: F,
    ) -> LockResult<Vec<LockResult<T>>>
    where
        F: FnOnce(Vec<HolderRef>) -> Fut + Send,
        Fut: std::future::Future<Output = LockResult<Vec<Verdict<T>>>> + Send,
        T: Send,
    {
        check_objects(locks.iter().map(|(object, _)| object))?;
        let mut outcomes: Vec<Option<LockResult<T>>> = Vec::with_capacity(locks.len());
        let mut holders = Vec::with_capacity(locks.len());
        for (object, token) in locks {
            match audit::check_token(&self.issuer, operation, object, token) {
                Ok(()) => {
                    holders.push(holder_ref(object, token));
                    outcomes.push(None);
                }
                Err(refused) => outcomes.push(Some(Err(refused))),
            }
        }
        let mut verdicts = if holders.is_empty() {
            Vec::new()
        } else {
            call(holders).await?
        }
        .into_iter();
        let mut results = Vec::with_capacity(locks.len());
        for ((object, token), outcome) in locks.iter().zip(outcomes) {
            let result = match outcome {
                Some(refused) => refused,
                None => match verdicts.next() {
                    Some(verdict) => refusal(operation, object, token, verdict),
                    None => Err(LockError::Internal(format!(
                        "{} store answered too few verdicts",
                        self.store.backend()
                    ))),
                },
            };
            results.push(result);
        }
        Ok(results)
    }
}

fn holder_ref(object: &ObjectId, token: &LockToken) -> HolderRef {
    HolderRef {
        object: object.clone(),
        digest: token.digest(),
        fence: token.fence(),
    }
}

/// A store's verdict as the caller's result, logging `NotHeld` and `Mismatch` as possible
/// attacks.
fn refusal<T>(
    operation: &'static str,
    object: &ObjectId,
    token: &LockToken,
    verdict: Verdict<T>,
) -> LockResult<T> {
    let error = match verdict {
        Verdict::Done(value) => return Ok(value),
        Verdict::NotHeld => LockError::NotHeld {
            object: object.clone(),
        },
        Verdict::Mismatch => LockError::TokenMismatch {
            object: object.clone(),
        },
    };
    audit::log_refusal(operation, object, token, &error);
    Err(error)
}

fn lease_of(object: &ObjectId, token: &LockToken, state: HolderState) -> Lease {
    Lease {
        object: object.clone(),
        owner: state.owner,
        mode: state.mode,
        token: token.clone(),
        fence: token.fence(),
        ttl: state.ttl,
    }
}

/// A waiting request's tickets; leaves the queues in the background if the acquire is dropped
/// while it waits.
struct QueuePlace<S: LockStore> {
    store: Arc<S>,
    objects: Vec<ObjectId>,
    ticket: Option<Ticket>,
}

impl<S: LockStore> QueuePlace<S> {
    async fn leave(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            // Best effort: entries the store keeps lapse after QUEUE_ENTRY_LIFETIME anyway.
            let _ = self.store.leave_queue(ticket, &self.objects).await;
        }
    }
}

impl<S: LockStore> Drop for QueuePlace<S> {
    fn drop(&mut self) {
        let Some(ticket) = self.ticket.take() else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (store, objects) = (self.store.clone(), std::mem::take(&mut self.objects));
            runtime.spawn(async move {
                let _ = store.leave_queue(ticket, &objects).await;
            });
        }
    }
}

#[async_trait]
impl<S: LockStore> LockService for Locks<S> {
    fn backend(&self) -> &'static str {
        self.store.backend()
    }

    async fn acquire_with(&self, request: &AcquireRequest) -> LockResult<Grant> {
        request.check(&self.limits)?;
        self.check_features(request)?;
        let request_id = request.request_id.as_ref();
        let pending: Vec<PendingToken> = request
            .objects
            .iter()
            .map(|spec| self.issuer.prepare_for(spec, &request.owner, request_id))
            .collect();
        let claims: Vec<Claim> = request
            .objects
            .iter()
            .zip(&pending)
            .map(|(spec, pending)| Claim {
                object: spec.object.clone(),
                mode: spec.mode,
                scope: spec.scope,
                digest: pending.digest(),
            })
            .collect();
        let mut attempt = Attempt {
            owner: &request.owner,
            claims: &claims,
            ttl: request.ttl,
            lock_delay: request.lock_delay,
            queueing: None,
        };
        let started = Instant::now();
        if request.wait.is_zero() {
            return match self.attempt(attempt).await? {
                Attempted::Granted(granted) => self.sealed(request, pending, granted),
                Attempted::Refused { conflicts, .. } => {
                    self.contended(request, started, false);
                    Err(LockError::locked(conflicts))
                }
            };
        }

        let deadline = started + request.wait;
        let interest: Vec<(ObjectId, LockMode, LockScope)> = claims
            .iter()
            .map(|c| (c.object.clone(), c.mode, c.scope))
            .collect();
        let registration = self.store.waits().register(&interest);
        let objects: Vec<ObjectId> = claims.iter().map(|c| c.object.clone()).collect();
        let mut place = QueuePlace {
            store: self.store.clone(),
            objects,
            ticket: None,
        };
        loop {
            let now = Instant::now();
            let keep_for = deadline
                .saturating_duration_since(now)
                .clamp(Duration::from_millis(1), QUEUE_ENTRY_LIFETIME);
            attempt.queueing = Some(Queueing {
                ticket: place.ticket,
                keep_for,
            });
            match self.attempt(attempt).await? {
                Attempted::Granted(granted) => {
                    // The store removed the ticket with the grant.
                    if place.ticket.take().is_some() {
                        self.contended(request, started, true);
                    }
                    return self.sealed(request, pending, granted);
                }
                Attempted::Refused {
                    conflicts,
                    ticket,
                    blockers,
                } => {
                    if let Some(ticket) = ticket {
                        if place.ticket.is_none() {
                            registration.queued(ticket);
                            for blocker in blockers {
                                self.notify(|| WaitNotice::Wanted {
                                    object: blocker.object,
                                    owner: blocker.owner,
                                    fence: blocker.fence,
                                    waiter: request.owner.clone(),
                                    mode: blocker.wanted,
                                });
                            }
                        }
                        place.ticket = Some(ticket);
                    }
                    let now = Instant::now();
                    if now >= deadline {
                        place.leave().await;
                        self.contended(request, started, false);
                        return Err(LockError::locked(conflicts));
                    }
                    let soonest = conflicts
                        .iter()
                        .map(|c| c.retry_after)
                        .min()
                        .unwrap_or(QUEUE_KEEPALIVE);
                    let retry_at = deadline
                        .min(now + soonest + EXPIRY_SLACK)
                        .min(now + QUEUE_KEEPALIVE);
                    tokio::select! {
                        _ = registration.woken() => {}
                        _ = tokio::time::sleep_until(retry_at) => {}
                    }
                }
            }
        }
    }

    async fn release(&self, object: &ObjectId, token: &LockToken) -> LockResult<Fence> {
        audit::check_token(&self.issuer, "release", object, token)?;
        let holder = holder_ref(object, token);
        let verdict = self
            .store
            .release(std::slice::from_ref(&holder))
            .await?
            .pop()
            .ok_or_else(|| LockError::Internal("no release verdict".into()))?;
        refusal("release", object, token, verdict).map(|()| token.fence())
    }

    async fn release_many(
        &self,
        locks: &[(ObjectId, LockToken)],
    ) -> LockResult<Vec<LockResult<Fence>>> {
        let results = self
            .for_each_holder("release", locks, |holders| async move {
                self.store.release(&holders).await
            })
            .await?;
        Ok(results
            .into_iter()
            .zip(locks)
            .map(|(result, (_, token))| result.map(|()| token.fence()))
            .collect())
    }

    async fn renew(
        &self,
        object: &ObjectId,
        token: &LockToken,
        ttl: Duration,
    ) -> LockResult<Lease> {
        let locks = [(object.clone(), token.clone())];
        let mut results = self.renew_many(&locks, ttl).await?;
        results
            .pop()
            .unwrap_or_else(|| Err(LockError::Internal("no renew outcome".into())))
    }

    async fn renew_many(
        &self,
        locks: &[(ObjectId, LockToken)],
        ttl: Duration,
    ) -> LockResult<Vec<LockResult<Lease>>> {
        self.limits.check_ttl(ttl)?;
        let results = self
            .for_each_holder("renew", locks, |holders| async move {
                self.store.renew(&holders, ttl).await
            })
            .await?;
        Ok(results
            .into_iter()
            .zip(locks)
            .map(|(result, (object, token))| result.map(|state| lease_of(object, token, state)))
            .collect())
    }

    async fn downgrade(&self, object: &ObjectId, token: &LockToken) -> LockResult<Lease> {
        audit::check_token(&self.issuer, "downgrade", object, token)?;
        let verdict = self.store.downgrade(&holder_ref(object, token)).await?;
        refusal("downgrade", object, token, verdict).map(|state| lease_of(object, token, state))
    }

    async fn validate(&self, object: &ObjectId, token: &LockToken) -> LockResult<Lease> {
        self.issuer.check(object, token)?;
        match self.store.validate(&holder_ref(object, token)).await? {
            Verdict::Done(state) => Ok(lease_of(object, token, state)),
            Verdict::NotHeld => Err(LockError::NotHeld {
                object: object.clone(),
            }),
            Verdict::Mismatch => Err(LockError::TokenMismatch {
                object: object.clone(),
            }),
        }
    }

    async fn inspect(&self, object: &ObjectId) -> LockResult<Option<LockInfo>> {
        self.store.inspect(object).await
    }

    async fn list(&self, query: &ListQuery) -> LockResult<LockPage> {
        query.check()?;
        self.store.list(query).await
    }

    async fn health(&self) -> LockResult<()> {
        self.store.health().await
    }

    async fn close(&self, timeout: Duration) -> bool {
        match &self.reclaimer {
            Some(reclaimer) => reclaimer.drain(timeout).await,
            None => true,
        }
    }

    fn report_lease_ends(&self, sink: LeaseEndSink) -> bool {
        self.store.report_lease_ends(sink)
    }

    fn report_waits(&self, sink: WaitSink) -> bool {
        self.wait_sink.set(sink).is_ok()
    }
}

impl<S: LockStore> std::fmt::Debug for Locks<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Locks")
            .field("store", &self.store)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}
