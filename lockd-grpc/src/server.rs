//! The `lockd.v1.Locks` service over any [`LockService`], and [`serve`], which runs it with the
//! standard health service and server reflection on a listener.
//!
//! Requests are read and checked exactly as the HTTP API reads them (same forms, same
//! `invalid_argument` fields, same limits, which [`LockService`] applies), and every refusal is
//! a status built by [`crate::status`]. What lockd does around each HTTP request (metrics,
//! events, the expiry tracker, the caps on requests and waiters, the event log) it plugs in
//! through [`Hooks`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lockcore::{
    check_objects, Fence, Grant, Lease, ListQuery, LockError, LockResult, LockService, LockToken,
    ObjectId,
};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_stream::{Stream, StreamExt};
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};

use crate::auth::{Auth, Authenticator};
use crate::convert::{self, named, Named};
use crate::pb;
use crate::pb::locks_server::{Locks, LocksServer};
use crate::status::{error_detail, refusal, status_of};

/// Default largest request message, in bytes: lockd's default `--max-body-bytes` (64 KiB).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Default page size of `List` when `limit` is 0 (as HTTP's default page).
pub const DEFAULT_PAGE: usize = 100;
/// How often [`serve`] asks the backend whether it is healthy, for the health service.
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(2);
/// The encoded `FileDescriptorSet` of `lockd/v1/locks.proto` and its imports.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/lockd_descriptor.bin"));

/// A stream of events for `Events`, from the server's event log.
pub type EventStream = Pin<Box<dyn Stream<Item = pb::EventsResponse> + Send>>;

/// What an admitted request holds while it runs (a slot of a server cap, say); dropped when the
/// request ends (for `Events`, when the stream ends).
pub struct Admission(#[allow(dead_code)] Option<Box<dyn Send>>);

impl Admission {
    /// Admitted, holding nothing.
    pub fn none() -> Self {
        Self(None)
    }

    /// Admitted, holding `guard` until the request ends.
    pub fn holding(guard: impl Send + 'static) -> Self {
        Self(Some(Box::new(guard)))
    }
}

impl fmt::Debug for Admission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Admission").field(&self.0.is_some()).finish()
    }
}

/// What a server does around each call: every method has a default that does nothing, so an
/// embedder implements only what it keeps. lockd implements them with the same bodies its HTTP
/// handlers run (metrics, event log, expiry tracker, caps).
///
/// Methods are called synchronously on the request path: keep them quick.
pub trait Hooks: Send + Sync + 'static {
    /// Called before a call reaches the lock service: `operation` is `acquire`, `release`,
    /// `renew`, `downgrade`, `validate`, `inspect`, `list` or `events`; `blocking` is whether
    /// an acquire may wait. An error refuses the call with it (use
    /// [`LockError::Unavailable`] for a cap reached: answered `UNAVAILABLE` with a 1 s
    /// RetryInfo).
    fn admit(&self, operation: &'static str, blocking: bool) -> LockResult<Admission> {
        let _ = (operation, blocking);
        Ok(Admission::none())
    }

    /// A call ended: `outcome` is `ok` or lockd's error code; `elapsed` its latency.
    fn finished(&self, operation: &'static str, outcome: &'static str, elapsed: Duration) {
        let _ = (operation, outcome, elapsed);
    }

    /// An acquire was granted.
    fn granted(&self, grant: &Grant) {
        let _ = grant;
    }

    /// A lease was released.
    fn released(&self, object: &ObjectId, fence: Fence) {
        let _ = (object, fence);
    }

    /// A release was refused as `not_held`, `token_mismatch` or `invalid_token` (possible
    /// misuse or attack); `token` is `None` when it was malformed.
    fn release_refused(&self, object: &ObjectId, token: Option<&LockToken>, error: &LockError) {
        let _ = (object, token, error);
    }

    /// A lease was renewed.
    fn renewed(&self, lease: &Lease) {
        let _ = lease;
    }

    /// A lease was downgraded to shared.
    fn downgraded(&self, lease: &Lease) {
        let _ = lease;
    }

    /// One entry of a several-lock release or renew ended with `outcome` (`ok` or a code).
    fn batch_entry(&self, operation: &'static str, outcome: &'static str) {
        let _ = (operation, outcome);
    }

    /// A call was refused for a missing or unknown API key.
    fn unauthenticated(&self) {}

    /// The events `request` asks for: those after `request.after` still retained, then live
    /// ones (`after` absent: live ones only), passing its filters (`objects`, `prefixes`,
    /// `owners`, `kinds`: see the proto; [`convert::event_kinds_from_pb`] reads the kinds).
    /// `None` (the default): this server keeps no event log, and `Events` answers
    /// `UNIMPLEMENTED`. A refusal (a bad filter: `InvalidArgument`) is sent as the call's
    /// status. The stream is ended when the server shuts down.
    fn events(&self, request: &pb::EventsRequest) -> Option<LockResult<EventStream>> {
        let _ = request;
        None
    }
}

/// [`Hooks`] that do nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHooks;

impl Hooks for NoHooks {}

/// How a `Locks` service is set up; [`GrpcOptions::default`] is open (no API key), without
/// hooks, with a 64 KiB message limit.
#[derive(Clone)]
pub struct GrpcOptions {
    /// Which callers are accepted.
    pub auth: Auth,
    /// What runs around each call.
    pub hooks: Arc<dyn Hooks>,
    /// Largest request message accepted, in bytes (larger: `OUT_OF_RANGE` from tonic).
    pub max_message_bytes: usize,
    /// Flips to `true` when the server shuts down: ends `Events` streams.
    pub shutdown: Option<watch::Receiver<bool>>,
    /// Whether [`serve`] adds server reflection (`grpc.reflection.v1` and `v1alpha`).
    pub reflection: bool,
    /// The lock-delay of an acquire without `lock_delay_ms` (zero by default), as lockd's
    /// `--default-lock-delay`.
    pub default_lock_delay: Duration,
}

impl Default for GrpcOptions {
    fn default() -> Self {
        Self {
            auth: Auth::none(),
            hooks: Arc::new(NoHooks),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            shutdown: None,
            reflection: true,
            default_lock_delay: Duration::ZERO,
        }
    }
}

impl fmt::Debug for GrpcOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcOptions")
            .field("auth", &self.auth)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("reflection", &self.reflection)
            .field("default_lock_delay", &self.default_lock_delay)
            .finish_non_exhaustive()
    }
}

impl GrpcOptions {
    /// Options accepting the callers `auth` accepts.
    pub fn with_auth(mut self, auth: Auth) -> Self {
        self.auth = auth;
        self
    }

    /// Options running `hooks` around each call.
    pub fn with_hooks(mut self, hooks: Arc<dyn Hooks>) -> Self {
        self.hooks = hooks;
        self
    }

    /// Options with a message limit of `bytes`.
    pub fn with_max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }

    /// Options giving an acquire without `lock_delay_ms` the lock-delay `delay`.
    pub fn with_default_lock_delay(mut self, delay: Duration) -> Self {
        self.default_lock_delay = delay;
        self
    }

    /// Options whose `Events` streams end when `shutdown` turns `true`.
    pub fn with_shutdown(mut self, shutdown: watch::Receiver<bool>) -> Self {
        self.shutdown = Some(shutdown);
        self
    }
}

/// The `lockd.v1.Locks` service as tonic serves it: the handler behind the API-key check.
pub type LocksService = InterceptedService<LocksServer<LocksHandler>, Authenticator>;

/// The `lockd.v1.Locks` service over `locks`, accepting the callers `auth` accepts, without
/// hooks. Add it to a `tonic::transport::Server`, or use [`serve`].
pub fn service(locks: Arc<dyn LockService>, auth: Auth) -> LocksService {
    service_with(locks, GrpcOptions::default().with_auth(auth))
}

/// The `lockd.v1.Locks` service over `locks`, set up by `options`.
pub fn service_with(locks: Arc<dyn LockService>, options: GrpcOptions) -> LocksService {
    let handler = LocksHandler {
        locks,
        hooks: options.hooks.clone(),
        shutdown: options.shutdown,
        default_lock_delay: options.default_lock_delay,
    };
    let server = LocksServer::new(handler).max_decoding_message_size(options.max_message_bytes);
    InterceptedService::new(server, Authenticator::new(options.auth, options.hooks))
}

/// Why [`serve`] stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The reflection service could not be built from the descriptor set.
    #[error("cannot build the reflection service: {0}")]
    Reflection(String),
    /// The server failed.
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves `Locks` over `locks` on `listener` until `shutdown` completes, then stops accepting
/// calls and waits for those in flight (as HTTP does; `Events` streams end at once).
///
/// Beside `Locks` it serves the standard health service (`grpc.health.v1.Health`, unauthenticated
/// like HTTP's `/readyz`): `SERVING` for `""` and `lockd.v1.Locks` while
/// [`LockService::health`] succeeds (asked every [`HEALTH_INTERVAL`]), `NOT_SERVING` otherwise
/// and from shutdown on; and, when `options.reflection`, server reflection.
pub async fn serve(
    listener: TcpListener,
    locks: Arc<dyn LockService>,
    options: GrpcOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    serve_incoming(TcpListenerStream::new(listener), locks, options, shutdown).await
}

/// [`serve`] on the connections `incoming` yields: for a server that accepts connections
/// itself (to cap them, or to wrap them in TLS).
pub async fn serve_incoming<I, IO, IE>(
    incoming: I,
    locks: Arc<dyn LockService>,
    mut options: GrpcOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError>
where
    I: Stream<Item = Result<IO, IE>>,
    IO: tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + tonic::transport::server::Connected
        + Unpin
        + Send
        + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (stop_tx, stop_rx) = watch::channel(false);
    let outer_shutdown = options.shutdown.take();
    options.shutdown = Some(stop_rx.clone());
    let reflection = options.reflection;
    let locks_service = service_with(locks.clone(), options);

    let (reporter, health_service) = tonic_health::server::health_reporter();
    let health_task = tokio::spawn(watch_health(locks, reporter.clone(), stop_rx));

    let (reflection_v1, reflection_v1alpha) = if reflection {
        let v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| ServeError::Reflection(e.to_string()))?;
        let v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .map_err(|e| ServeError::Reflection(e.to_string()))?;
        (Some(v1), Some(v1alpha))
    } else {
        (None, None)
    };

    let signal = async move {
        match outer_shutdown {
            Some(mut outer) => {
                tokio::select! {
                    () = shutdown => {}
                    _ = outer.wait_for(|stop| *stop) => {}
                }
            }
            None => shutdown.await,
        }
        reporter
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        reporter
            .set_service_status(
                pb::locks_server::SERVICE_NAME,
                tonic_health::ServingStatus::NotServing,
            )
            .await;
        let _ = stop_tx.send(true);
    };
    let result = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(health_service)
        .add_service(locks_service)
        .add_optional_service(reflection_v1)
        .add_optional_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(incoming, signal)
        .await;
    health_task.abort();
    result.map_err(ServeError::from)
}

/// Keeps the health service's statuses in step with the backend's health until shutdown.
async fn watch_health(
    locks: Arc<dyn LockService>,
    reporter: tonic_health::server::HealthReporter,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let healthy = matches!(
            tokio::time::timeout(HEALTH_INTERVAL, locks.health()).await,
            Ok(Ok(()))
        );
        if *stop.borrow() {
            return;
        }
        let status = if healthy {
            tonic_health::ServingStatus::Serving
        } else {
            tonic_health::ServingStatus::NotServing
        };
        reporter.set_service_status("", status).await;
        reporter
            .set_service_status(pb::locks_server::SERVICE_NAME, status)
            .await;
        tokio::select! {
            () = tokio::time::sleep(HEALTH_INTERVAL) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
    }
}

/// The handler of `lockd.v1.Locks` calls: see [`service`].
pub struct LocksHandler {
    locks: Arc<dyn LockService>,
    hooks: Arc<dyn Hooks>,
    shutdown: Option<watch::Receiver<bool>>,
    /// The lock-delay of an acquire without `lock_delay_ms`.
    default_lock_delay: Duration,
}

impl fmt::Debug for LocksHandler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocksHandler")
            .field("backend", &self.locks.backend())
            .finish_non_exhaustive()
    }
}

/// Why a call was refused: a lock error, or `not_found` (Inspect of a free object).
#[derive(Debug)]
enum Refused {
    Lock(LockError),
    NotFound(String),
}

impl From<LockError> for Refused {
    fn from(error: LockError) -> Self {
        Refused::Lock(error)
    }
}

impl Refused {
    fn code(&self) -> &'static str {
        match self {
            Refused::Lock(error) => error.code(),
            Refused::NotFound(_) => "not_found",
        }
    }

    fn into_status(self) -> Status {
        match self {
            Refused::Lock(error) => status_of(&error),
            Refused::NotFound(message) => refusal("not_found", message),
        }
    }
}

/// Whether a refused release is a possible attack (reported as `release_refused`), as on HTTP.
fn is_refused_release(error: &LockError) -> bool {
    matches!(
        error,
        LockError::NotHeld { .. }
            | LockError::TokenMismatch { .. }
            | LockError::InvalidToken { .. }
    )
}

/// The locks of a several-lock release or renew, checked as a whole (names, count, duplicates:
/// `invalid_argument` for the call), each with its token or why it is not one.
fn batch_locks(
    operation: &'static str,
    locks: &[pb::LockRef],
) -> LockResult<Vec<(ObjectId, LockResult<LockToken>)>> {
    let objects = locks
        .iter()
        .map(|lock| ObjectId::new(&lock.object))
        .collect::<LockResult<Vec<_>>>()?;
    check_objects(objects.iter())?;
    Ok(objects
        .into_iter()
        .zip(locks)
        .map(|(object, lock)| {
            let token = LockToken::parse(&lock.token);
            if let Err(e) = &token {
                if operation != "release" {
                    tracing::warn!(target: "lockd::audit", transport = "grpc", operation,
                        object = %object, reason = e.code(),
                        "refused: the token is malformed; possible misuse or attack");
                }
            }
            (object, token)
        })
        .collect())
}

/// Runs `call` on the entries whose token parsed, and puts every entry's outcome back in
/// request order (a malformed token is its entry's `invalid_token`).
async fn each_lock<T, F, Fut>(
    entries: &[(ObjectId, LockResult<LockToken>)],
    call: F,
) -> LockResult<Vec<LockResult<T>>>
where
    F: FnOnce(Vec<(ObjectId, LockToken)>) -> Fut,
    Fut: Future<Output = LockResult<Vec<LockResult<T>>>>,
{
    let parsed: Vec<(ObjectId, LockToken)> = entries
        .iter()
        .filter_map(|(object, token)| Some((object.clone(), token.as_ref().ok()?.clone())))
        .collect();
    let mut answered = if parsed.is_empty() {
        Vec::new()
    } else {
        call(parsed).await?
    }
    .into_iter();
    Ok(entries
        .iter()
        .map(|(_, token)| match token {
            Err(e) => Err(e.clone()),
            Ok(_) => answered
                .next()
                .unwrap_or_else(|| Err(LockError::Internal("no outcome for a lock".into()))),
        })
        .collect())
}

impl LocksHandler {
    /// Reports how a call ended and turns its outcome into tonic's answer.
    fn finish<T>(
        &self,
        operation: &'static str,
        started: Instant,
        result: Result<T, Refused>,
    ) -> Result<Response<T>, Status> {
        let elapsed = started.elapsed();
        let outcome = match &result {
            Ok(_) => "ok",
            Err(refused) => refused.code(),
        };
        self.hooks.finished(operation, outcome, elapsed);
        tracing::debug!(
            transport = "grpc",
            operation,
            outcome,
            elapsed_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            "request"
        );
        result.map(Response::new).map_err(Refused::into_status)
    }

    fn released(&self, object: &ObjectId, fence: Fence) {
        self.hooks.released(object, fence);
    }

    fn refused_release(&self, object: &ObjectId, token: Option<&LockToken>, error: &LockError) {
        if token.is_none() {
            tracing::warn!(target: "lockd::audit", transport = "grpc", object = %object,
                reason = error.code(),
                "refused release: the token is malformed; possible misuse or attack");
        }
        self.hooks.release_refused(object, token, error);
    }

    async fn release_one(&self, object: &str, token: &str) -> Result<pb::ReleaseResponse, Refused> {
        let object = ObjectId::new(object)?;
        let result = match LockToken::parse(token) {
            Ok(token) => self
                .locks
                .release(&object, &token)
                .await
                .map_err(|e| (e, Some(token))),
            Err(e) => Err((e, None)),
        };
        match result {
            Ok(fence) => {
                self.released(&object, fence);
                Ok(pb::ReleaseResponse {
                    object: object.to_string(),
                    fence: fence.get(),
                    results: Vec::new(),
                })
            }
            Err((e, token)) => {
                if is_refused_release(&e) {
                    self.refused_release(&object, token.as_ref(), &e);
                }
                Err(e.into())
            }
        }
    }

    async fn release_several(&self, locks: &[pb::LockRef]) -> Result<pb::ReleaseResponse, Refused> {
        let entries = batch_locks("release", locks)?;
        let outcomes = each_lock(&entries, |parsed| async move {
            self.locks.release_many(&parsed).await
        })
        .await?;
        let mut results = Vec::with_capacity(entries.len());
        for ((object, token), outcome) in entries.into_iter().zip(outcomes) {
            match outcome {
                Ok(fence) => {
                    self.hooks.batch_entry("release", "ok");
                    self.released(&object, fence);
                    results.push(pb::ReleaseResult {
                        object: object.to_string(),
                        fence: fence.get(),
                        error: None,
                    });
                }
                Err(e) => {
                    self.hooks.batch_entry("release", e.code());
                    if is_refused_release(&e) {
                        self.refused_release(&object, token.as_ref().ok(), &e);
                    }
                    results.push(pb::ReleaseResult {
                        object: object.to_string(),
                        fence: 0,
                        error: Some(error_detail(&e)),
                    });
                }
            }
        }
        Ok(pb::ReleaseResponse {
            results,
            ..pb::ReleaseResponse::default()
        })
    }

    async fn renew_one(
        &self,
        object: &str,
        token: &str,
        ttl: Duration,
    ) -> Result<pb::RenewResponse, Refused> {
        let object = ObjectId::new(object)?;
        let token = LockToken::parse(token)?;
        let lease = self.locks.renew(&object, &token, ttl).await?;
        self.hooks.renewed(&lease);
        let lease = convert::lease_to_pb(&lease);
        Ok(pb::RenewResponse {
            object: lease.object,
            owner: lease.owner,
            mode: lease.mode,
            token: lease.token,
            fence: lease.fence,
            ttl_ms: lease.ttl_ms,
            results: Vec::new(),
        })
    }

    async fn renew_several(
        &self,
        locks: &[pb::LockRef],
        ttl: Duration,
    ) -> Result<pb::RenewResponse, Refused> {
        let entries = batch_locks("renew", locks)?;
        let outcomes = each_lock(&entries, |parsed| async move {
            self.locks.renew_many(&parsed, ttl).await
        })
        .await?;
        let results = entries
            .iter()
            .zip(outcomes)
            .map(|((object, _), outcome)| match outcome {
                Ok(lease) => {
                    self.hooks.batch_entry("renew", "ok");
                    self.hooks.renewed(&lease);
                    pb::RenewResult {
                        object: object.to_string(),
                        lease: Some(convert::lease_to_pb(&lease)),
                        error: None,
                    }
                }
                Err(e) => {
                    self.hooks.batch_entry("renew", e.code());
                    pb::RenewResult {
                        object: object.to_string(),
                        lease: None,
                        error: Some(error_detail(&e)),
                    }
                }
            })
            .collect();
        Ok(pb::RenewResponse {
            results,
            ..pb::RenewResponse::default()
        })
    }
}

/// Forwards `events` into a channel until the client goes away or the server shuts down,
/// holding `admission` meanwhile.
fn forward_events(
    mut events: EventStream,
    mut shutdown: Option<watch::Receiver<bool>>,
    admission: Admission,
) -> ReceiverStream<Result<pb::EventsResponse, Status>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let _admission = admission;
        loop {
            let stopping = async {
                match shutdown.as_mut() {
                    Some(stop) => {
                        let _ = stop.wait_for(|stop| *stop).await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = stopping => return,
                () = tx.closed() => return,
                next = events.next() => match next {
                    Some(event) => {
                        if tx.send(Ok(event)).await.is_err() {
                            return;
                        }
                    }
                    None => return,
                },
            }
        }
    });
    ReceiverStream::new(rx)
}

#[tonic::async_trait]
impl Locks for LocksHandler {
    async fn acquire(
        &self,
        request: Request<pb::AcquireRequest>,
    ) -> Result<Response<pb::AcquireResponse>, Status> {
        let started = Instant::now();
        let result = async {
            let acquire = convert::acquire_request(request.get_ref(), self.default_lock_delay)?;
            let _admission = self.hooks.admit("acquire", !acquire.wait.is_zero())?;
            let grant = self.locks.acquire_with(&acquire).await?;
            self.hooks.granted(&grant);
            Ok(convert::grant_to_pb(&acquire, &grant))
        }
        .await;
        self.finish("acquire", started, result)
    }

    async fn release(
        &self,
        request: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        let started = Instant::now();
        let request = request.get_ref();
        let result = async {
            let form = named(&request.object, &request.token, &request.locks)?;
            let _admission = self.hooks.admit("release", false)?;
            match form {
                Named::One(object, token) => self.release_one(object, token).await,
                Named::Several(locks) => self.release_several(locks).await,
            }
        }
        .await;
        self.finish("release", started, result)
    }

    async fn renew(
        &self,
        request: Request<pb::RenewRequest>,
    ) -> Result<Response<pb::RenewResponse>, Status> {
        let started = Instant::now();
        let request = request.get_ref();
        let result = async {
            let ttl = Duration::from_millis(request.ttl_ms);
            let form = named(&request.object, &request.token, &request.locks)?;
            let _admission = self.hooks.admit("renew", false)?;
            match form {
                Named::One(object, token) => self.renew_one(object, token, ttl).await,
                Named::Several(locks) => self.renew_several(locks, ttl).await,
            }
        }
        .await;
        self.finish("renew", started, result)
    }

    async fn downgrade(
        &self,
        request: Request<pb::DowngradeRequest>,
    ) -> Result<Response<pb::DowngradeResponse>, Status> {
        let started = Instant::now();
        let request = request.get_ref();
        let result = async {
            let object = ObjectId::new(&request.object)?;
            let token = LockToken::parse(&request.token)?;
            let _admission = self.hooks.admit("downgrade", false)?;
            let lease = self.locks.downgrade(&object, &token).await?;
            self.hooks.downgraded(&lease);
            let lease = convert::lease_to_pb(&lease);
            Ok(pb::DowngradeResponse {
                object: lease.object,
                owner: lease.owner,
                mode: lease.mode,
                token: lease.token,
                fence: lease.fence,
                ttl_ms: lease.ttl_ms,
            })
        }
        .await;
        self.finish("downgrade", started, result)
    }

    async fn validate(
        &self,
        request: Request<pb::ValidateRequest>,
    ) -> Result<Response<pb::ValidateResponse>, Status> {
        let started = Instant::now();
        let request = request.get_ref();
        let result = async {
            let object = ObjectId::new(&request.object)?;
            let token = LockToken::parse(&request.token)?;
            let _admission = self.hooks.admit("validate", false)?;
            let lease = self.locks.validate(&object, &token).await?;
            Ok(pb::ValidateResponse {
                object: lease.object.to_string(),
                owner: lease.owner.to_string(),
                mode: convert::mode_to_pb(lease.mode) as i32,
                fence: lease.fence.get(),
                ttl_ms: crate::status::millis(lease.ttl),
            })
        }
        .await;
        self.finish("validate", started, result)
    }

    async fn inspect(
        &self,
        request: Request<pb::InspectRequest>,
    ) -> Result<Response<pb::InspectResponse>, Status> {
        let started = Instant::now();
        let request = request.get_ref();
        let result = async {
            let object = ObjectId::new(&request.object)?;
            let _admission = self.hooks.admit("inspect", false)?;
            match self.locks.inspect(&object).await? {
                Some(info) => Ok(pb::InspectResponse {
                    lock: Some(convert::lock_to_pb(&info)),
                }),
                None => Err(Refused::NotFound(format!("object {object} is not locked"))),
            }
        }
        .await;
        self.finish("inspect", started, result)
    }

    async fn list(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        let started = Instant::now();
        let request = request.get_ref();
        let result = async {
            let limit = match request.limit {
                0 => DEFAULT_PAGE,
                n => usize::try_from(n).unwrap_or(usize::MAX),
            };
            let query = ListQuery {
                prefix: request.prefix.clone(),
                limit,
                after: Some(request.after.clone()).filter(|after| !after.is_empty()),
            };
            query.check()?;
            let _admission = self.hooks.admit("list", false)?;
            let page = self.locks.list(&query).await?;
            Ok(pb::ListResponse {
                locks: page.locks.iter().map(convert::lock_to_pb).collect(),
                next: page.next.unwrap_or_default(),
            })
        }
        .await;
        self.finish("list", started, result)
    }

    type EventsStream = ReceiverStream<Result<pb::EventsResponse, Status>>;

    async fn events(
        &self,
        request: Request<pb::EventsRequest>,
    ) -> Result<Response<Self::EventsStream>, Status> {
        let started = Instant::now();
        // Over a cap on streams: refused before the event log is touched, as on HTTP.
        let admission = match self.hooks.admit("events", false) {
            Ok(admission) => admission,
            Err(e) => return self.finish("events", started, Err(e.into())),
        };
        let Some(opened) = self.hooks.events(request.get_ref()) else {
            return Err(Status::unimplemented(
                "this lockd server keeps no event log for gRPC",
            ));
        };
        let result = opened
            .map(|events| forward_events(events, self.shutdown.clone(), admission))
            .map_err(Refused::from);
        self.finish("events", started, result)
    }
}
