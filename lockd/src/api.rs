//! The HTTP/JSON API: routes, request and response bodies, extractors that answer in the error
//! envelope, and authentication.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use lockcore::{
    check_objects, Fence, Lease, ListQuery, LockError, LockService, LockToken, ObjectId,
};
use lockd_wire::{
    argument_field, AcquireRequest, EntryResult, EventParams, EventsBody, GrantBody,
    InspectRequest, LeaseBody, ListBody, ListParams, LockBody, Named, ReleaseBody, ReleaseRequest,
    RenewRequest, ResultsBody, TokenRequest,
};
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt as _;

use crate::error::ApiError;
use crate::events::{self, Event, EventFilter, EventKind, NewEvent, MAX_EVENTS_PAGE};
use crate::expiry::ExpiryTracker;
use crate::limits::{Limit, Usage};
use crate::metrics::Metrics;

/// Default page size of `GET /v1/locks` and `GET /v1/events`.
pub(crate) const DEFAULT_PAGE: usize = 100;

/// Accepted API keys, kept as SHA-256 digests and compared in constant time.
#[derive(Debug, Default)]
pub(crate) struct ApiKeys {
    digests: Vec<[u8; 32]>,
}

impl ApiKeys {
    pub(crate) fn new(keys: &[String]) -> Self {
        Self {
            digests: keys.iter().map(|k| digest(k.as_bytes())).collect(),
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        !self.digests.is_empty()
    }

    /// Whether `presented` is one of the keys. Hashing first makes the comparison independent
    /// of the keys' lengths; every key is compared, with no early exit.
    fn accepts(&self, presented: &[u8]) -> bool {
        let presented = digest(presented);
        let mut found = subtle::Choice::from(0);
        for key in &self.digests {
            found |= key.ct_eq(&presented);
        }
        found.into()
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(b"lockd/api-key/v1");
    hasher.update(bytes);
    hasher.finalize().into()
}

/// Everything the handlers share.
#[derive(Debug, Clone)]
pub(crate) struct AppState {
    pub(crate) service: Arc<dyn LockService>,
    pub(crate) events: Arc<events::EventLog>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) tracker: Arc<ExpiryTracker>,
    pub(crate) keys: Arc<ApiKeys>,
    pub(crate) shutdown: watch::Receiver<bool>,
    pub(crate) max_body_bytes: usize,
    pub(crate) usage: Arc<Usage>,
    /// The lock-delay of an acquire that does not give `lock_delay_ms` (`--default-lock-delay`).
    pub(crate) default_lock_delay: Duration,
}

/// Builds the router: `/v1/...` (authenticated when keys are configured), `/metrics`,
/// `/healthz`, `/readyz`.
pub(crate) fn router(state: AppState) -> Router {
    let max_body_bytes = state.max_body_bytes;
    let v1 = Router::new()
        .route("/locks/acquire", post(acquire))
        .route("/locks/release", post(release))
        .route("/locks/renew", post(renew))
        .route("/locks/downgrade", post(downgrade))
        .route("/locks/validate", post(validate))
        .route("/locks/inspect", post(inspect))
        .route("/locks", get(list))
        .route("/events", get(events))
        .route("/events/stream", get(stream))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate));
    Router::new()
        .nest("/v1", v1)
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such endpoint".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

async fn authenticate(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if state.keys.enabled() {
        let presented = request
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, key) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
            });
        let ok = presented.is_some_and(|key| state.keys.accepts(key.as_bytes()));
        if !ok {
            state.metrics.unauthenticated();
            tracing::warn!(
                target: "lockd::audit",
                path = %request.uri().path(),
                key_present = presented.is_some(),
                "refused request: missing or unknown API key"
            );
            drain(request.into_body().into_data_stream()).await;
            return ApiError::Unauthenticated.into_response();
        }
    }
    next.run(request).await
}

// ---------------------------------------------------------------------------------------------
// Extractors answering in the envelope.

/// A JSON body: wrong content type, bad JSON, missing or mistyped fields are `400
/// invalid_argument`; a body over the limit is `413 payload_too_large`.
#[derive(Debug)]
pub(crate) struct ApiJson<T>(pub(crate) T);

fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
        || (essence.len() > 5 && essence[essence.len() - 5..].eq_ignore_ascii_case("+json"))
}

/// Most bytes of a refused request's body read and thrown away before answering.
///
/// A server that answers before reading the body and then closes the connection makes the
/// kernel reset it, and the client may lose the answer; reading a bounded amount first lets
/// clients of moderately oversized or unauthenticated requests see the error envelope.
const DRAIN_MAX: usize = 1 << 20;
/// Longest time spent draining a refused request's body.
const DRAIN_TIME: Duration = Duration::from_millis(500);

/// Reads and discards up to [`DRAIN_MAX`] bytes of `stream` for at most [`DRAIN_TIME`].
async fn drain(mut stream: axum::body::BodyDataStream) {
    let deadline = tokio::time::Instant::now() + DRAIN_TIME;
    let mut drained = 0usize;
    while drained <= DRAIN_MAX {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(chunk))) => drained += chunk.len(),
            _ => return,
        }
    }
}

/// Reads a body of at most `limit` bytes; a larger one is `413 payload_too_large`.
async fn read_limited(body: axum::body::Body, limit: usize) -> Result<Bytes, ApiError> {
    let mut stream = body.into_data_stream();
    let mut buffer = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk
            .map_err(|e| ApiError::BadRequest(format!("cannot read the request body: {e}")))?;
        if buffer.len() + chunk.len() > limit {
            drain(stream).await;
            return Err(ApiError::PayloadTooLarge(format!(
                "request body is larger than the {limit} bytes the server accepts"
            )));
        }
        buffer.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(buffer))
}

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        let json = is_json(request.headers());
        let bytes = read_limited(request.into_body(), state.max_body_bytes).await?;
        if !json {
            return Err(ApiError::BadRequest(
                "expected a JSON body with Content-Type: application/json".into(),
            ));
        }
        let mut json = serde_json::Deserializer::from_slice(&bytes);
        let value = serde_path_to_error::deserialize(&mut json)
            .map_err(|e| refused_input("JSON body", e))?;
        json.end()
            .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))?;
        Ok(ApiJson(value))
    }
}

/// The answer to a body or query that does not deserialize: `invalid_argument` naming the
/// argument at fault in `field` when there is one (a mistyped or missing field), else without.
fn refused_input<E: std::error::Error>(
    what: &str,
    error: serde_path_to_error::Error<E>,
) -> ApiError {
    let at = match error.path().iter().next_back() {
        Some(serde_path_to_error::Segment::Map { key }) => Some(key.clone()),
        _ => None,
    };
    let message = error.into_inner().to_string();
    // A missing field fails at the enclosing object, so its name is only in serde's fixed
    // `missing field `NAME`` wording.
    let named = at.or_else(|| {
        let rest = message.strip_prefix("missing field `")?;
        Some(rest.split('`').next()?.to_owned())
    });
    let reason = format!("invalid {what}: {message}");
    match named.as_deref().and_then(argument_field) {
        Some(field) => LockError::invalid_argument(field, reason).into(),
        None => ApiError::BadRequest(reason),
    }
}

/// Query parameters; anything unparsable is `400 invalid_argument`.
#[derive(Debug)]
pub(crate) struct ApiQuery<T>(pub(crate) T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or_default();
        let pairs = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(pairs)
            .map(ApiQuery)
            .map_err(|e| refused_input("query", e))
    }
}

/// The event filter of a query (`object`, `prefix`, `owner`, `kind`, repeatable); an unknown
/// kind or too many values are `400 invalid_argument`.
#[derive(Debug)]
pub(crate) struct EventQuery(pub(crate) EventFilter);

impl<S: Send + Sync> FromRequestParts<S> for EventQuery {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or_default();
        let filter = EventFilter::from_pairs(form_urlencoded::parse(query.as_bytes()))?;
        Ok(EventQuery(filter))
    }
}

// ---------------------------------------------------------------------------------------------
// Handlers.

/// Runs one lock operation, recording its outcome and latency.
async fn timed<T, F>(state: &AppState, operation: &'static str, work: F) -> Result<T, ApiError>
where
    F: Future<Output = Result<T, ApiError>>,
{
    let started = Instant::now();
    let result = work.await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) => e.code(),
    };
    let elapsed = started.elapsed();
    state.metrics.observe(operation, outcome, elapsed);
    tracing::debug!(
        operation,
        outcome,
        elapsed_us = elapsed.as_micros() as u64,
        "request"
    );
    result
}

/// Appends `event` to the event log and counts it.
pub(crate) fn record(state: &AppState, event: NewEvent) {
    state.events.record(event);
    state.metrics.event();
}

async fn acquire(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<AcquireRequest>,
) -> Result<Response, ApiError> {
    timed(&state, "acquire", async {
        let several = request.is_many();
        let acquire = request.to_request_with_default(state.default_lock_delay)?;
        // A blocking acquire over --max-waiters is refused before the backend sees it.
        let _waiting = if acquire.wait.is_zero() {
            None
        } else {
            Some(state.usage.take(Limit::Waiters)?)
        };
        let grant = state.service.acquire_with(&acquire).await?;
        state
            .metrics
            .granted(grant.leases.iter().map(|lease| lease.mode));
        for lease in &grant.leases {
            state.tracker.granted(lease);
            record(&state, NewEvent::of_lease(EventKind::Grant, lease));
        }
        // Leases answer with the scope they were asked in (lockcore's Lease has none).
        if several {
            return Ok(Json(GrantBody::granted(&acquire, &grant)).into_response());
        }
        match grant.leases.first() {
            Some(lease) => Ok(Json(LeaseBody::granted(&acquire, lease)).into_response()),
            None => Err(LockError::Internal("a grant without a lease".into()).into()),
        }
    })
    .await
}

/// Whether a refused release is a possible attack (recorded as `release_refused`): a token that
/// is not the holder's, or that lockd never issued (forged, altered, another object's, or not
/// even well-formed).
fn is_refused_release(error: &LockError) -> bool {
    matches!(
        error,
        LockError::NotHeld { .. }
            | LockError::TokenMismatch { .. }
            | LockError::InvalidToken { .. }
    )
}

/// Counts and records a refused release of `object` with `token` (`None`: malformed).
fn refused_release(state: &AppState, object: ObjectId, token: Option<&LockToken>, e: &LockError) {
    if token.is_none() {
        tracing::warn!(target: "lockd::audit", object = %object, reason = e.code(),
            "refused release: the token is malformed; possible misuse or attack");
    }
    count_refused_release(state, object, token, e);
}

/// Counts a refused release in the metrics and records its `release_refused` event (the
/// audit log line of a malformed token is the caller's: each transport writes its own).
pub(crate) fn count_refused_release(
    state: &AppState,
    object: ObjectId,
    token: Option<&LockToken>,
    e: &LockError,
) {
    state.metrics.refused_release(e.code());
    record(
        state,
        NewEvent {
            kind: EventKind::ReleaseRefused,
            object,
            owner: None,
            mode: None,
            fence: token.map_or(Fence(0), LockToken::fence),
            reason: Some(e.code()),
        },
    );
}

/// One lock of a batched release or renew: its object, and its token or why it is not one.
type BatchEntry = (ObjectId, Result<LockToken, LockError>);

/// The locks of a batched release or renew, checked as a whole (names, count, duplicates:
/// `invalid_argument` for the request), each with its token or why it is not one.
fn batch_locks(locks: Vec<TokenRequest>) -> Result<Vec<BatchEntry>, ApiError> {
    let objects = locks
        .iter()
        .map(|lock| ObjectId::new(&lock.object))
        .collect::<Result<Vec<_>, _>>()?;
    check_objects(objects.iter())?;
    Ok(objects
        .into_iter()
        .zip(locks)
        .map(|(object, lock)| (object, LockToken::parse(&lock.token)))
        .collect())
}

/// Runs `call` on the entries whose token parsed, and puts every entry's outcome back in
/// request order (a malformed token is its entry's `invalid_token`).
async fn each_lock<T, F, Fut>(
    entries: &[BatchEntry],
    call: F,
) -> Result<Vec<Result<T, LockError>>, ApiError>
where
    F: FnOnce(Vec<(ObjectId, LockToken)>) -> Fut,
    Fut: Future<Output = Result<Vec<Result<T, LockError>>, LockError>>,
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

async fn release(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<ReleaseRequest>,
) -> Result<Response, ApiError> {
    timed(&state, "release", async {
        match request.named()? {
            Named::One(one) => release_one(&state, one)
                .await
                .map(|body| Json(body).into_response()),
            Named::Several(locks) => release_several(&state, locks)
                .await
                .map(|body| Json(body).into_response()),
        }
    })
    .await
}

async fn release_one(state: &AppState, request: TokenRequest) -> Result<ReleaseBody, ApiError> {
    let object = ObjectId::new(&request.object)?;
    let result = match LockToken::parse(&request.token) {
        Ok(token) => state
            .service
            .release(&object, &token)
            .await
            .map_err(|e| (e, Some(token))),
        Err(e) => Err((e, None)),
    };
    match result {
        Ok(fence) => {
            // Records the release event (or the backend already did).
            state.tracker.released(&object, fence);
            Ok(ReleaseBody {
                object: object.to_string(),
                fence: fence.get(),
            })
        }
        Err((e, token)) if is_refused_release(&e) => {
            refused_release(state, object, token.as_ref(), &e);
            Err(e.into())
        }
        Err((e, _)) => Err(e.into()),
    }
}

/// `"locks": [...]`: one outcome per lock, each refused one counted and recorded like a
/// refused one-lock release.
async fn release_several(
    state: &AppState,
    locks: Vec<TokenRequest>,
) -> Result<ResultsBody<ReleaseBody>, ApiError> {
    let entries = batch_locks(locks)?;
    let outcomes = each_lock(&entries, |parsed| async move {
        state.service.release_many(&parsed).await
    })
    .await?;
    let mut results = Vec::with_capacity(entries.len());
    for ((object, token), outcome) in entries.into_iter().zip(outcomes) {
        match outcome {
            Ok(fence) => {
                state.metrics.batch_entry("release", "ok");
                state.tracker.released(&object, fence);
                results.push(EntryResult::Done(ReleaseBody {
                    object: object.to_string(),
                    fence: fence.get(),
                }));
            }
            Err(e) => {
                state.metrics.batch_entry("release", e.code());
                results.push(EntryResult::failed(object.as_str(), &e));
                if is_refused_release(&e) {
                    refused_release(state, object, token.as_ref().ok(), &e);
                }
            }
        }
    }
    Ok(ResultsBody { results })
}

async fn renew(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<RenewRequest>,
) -> Result<Response, ApiError> {
    timed(&state, "renew", async {
        let ttl = Duration::from_millis(request.ttl_ms);
        match request.named()? {
            Named::One(one) => {
                let object = ObjectId::new(&one.object)?;
                let token = LockToken::parse(&one.token)?;
                let lease = state.service.renew(&object, &token, ttl).await?;
                renewed(&state, &lease);
                Ok(Json(LeaseBody::from(&lease)).into_response())
            }
            Named::Several(locks) => {
                let state = &state;
                let entries = batch_locks(locks)?;
                let outcomes = each_lock(&entries, |parsed| async move {
                    state.service.renew_many(&parsed, ttl).await
                })
                .await?;
                let results: Vec<EntryResult<LeaseBody>> = entries
                    .iter()
                    .zip(outcomes)
                    .map(|((object, token), outcome)| match outcome {
                        Ok(lease) => {
                            state.metrics.batch_entry("renew", "ok");
                            renewed(state, &lease);
                            EntryResult::Done(LeaseBody::from(&lease))
                        }
                        Err(e) => {
                            // lockcore logs refused tokens it could read; these it never saw.
                            if token.is_err() {
                                tracing::warn!(target: "lockd::audit", object = %object,
                                    reason = e.code(),
                                    "refused renew: the token is malformed; possible misuse or attack");
                            }
                            state.metrics.batch_entry("renew", e.code());
                            EntryResult::failed(object.as_str(), &e)
                        }
                    })
                    .collect();
                Ok(Json(ResultsBody { results }).into_response())
            }
        }
    })
    .await
}

/// Tells the tracker and the event log that `lease` was renewed.
pub(crate) fn renewed(state: &AppState, lease: &Lease) {
    state.tracker.renewed(lease);
    record(state, NewEvent::of_lease(EventKind::Renew, lease));
}

async fn downgrade(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<TokenRequest>,
) -> Result<Json<LeaseBody>, ApiError> {
    timed(&state, "downgrade", async {
        let object = ObjectId::new(&request.object)?;
        let token = LockToken::parse(&request.token)?;
        let lease = state.service.downgrade(&object, &token).await?;
        state.tracker.renewed(&lease);
        record(&state, NewEvent::of_lease(EventKind::Downgrade, &lease));
        Ok(Json(LeaseBody::from(&lease)))
    })
    .await
}

async fn validate(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<TokenRequest>,
) -> Result<Json<LockBody>, ApiError> {
    timed(&state, "validate", async {
        let object = ObjectId::new(&request.object)?;
        let token = LockToken::parse(&request.token)?;
        let lease = state.service.validate(&object, &token).await?;
        Ok(Json(LockBody::from(&lease)))
    })
    .await
}

async fn inspect(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<InspectRequest>,
) -> Result<Json<LockBody>, ApiError> {
    timed(&state, "inspect", async {
        let object = ObjectId::new(&request.object)?;
        match state.service.inspect(&object).await? {
            Some(info) => Ok(Json(LockBody::from(&info))),
            None => Err(ApiError::NotFound(format!("object {object} is not locked"))),
        }
    })
    .await
}

async fn list(
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<ListBody>, ApiError> {
    timed(&state, "list", async {
        let query = ListQuery {
            prefix: params.prefix.unwrap_or_default(),
            limit: params.limit.unwrap_or(DEFAULT_PAGE),
            after: params.after.filter(|a| !a.is_empty()),
        };
        query.check()?;
        let page = state.service.list(&query).await?;
        Ok(Json(ListBody {
            locks: page.locks.iter().map(LockBody::from).collect(),
            next: page.next,
        }))
    })
    .await
}

fn page_limit(limit: Option<usize>) -> Result<usize, ApiError> {
    let limit = limit.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > MAX_EVENTS_PAGE {
        return Err(LockError::invalid_argument(
            "limit",
            format!("must be between 1 and {MAX_EVENTS_PAGE}"),
        )
        .into());
    }
    Ok(limit)
}

async fn events(
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<EventParams>,
    EventQuery(filter): EventQuery,
) -> Result<Json<EventsBody>, ApiError> {
    timed(&state, "events", async {
        let limit = page_limit(params.limit)?;
        Ok(Json(EventsBody {
            events: state.events.page(params.after.unwrap_or(0), limit, &filter),
        }))
    })
    .await
}

fn sse_event(event: &Event) -> Result<SseEvent, Infallible> {
    let data = serde_json::to_string(event).unwrap_or_else(|_| "{}".to_owned());
    Ok(SseEvent::default()
        .id(event.seq.to_string())
        .event(event.kind.as_str())
        .data(data))
}

/// `GET /v1/events/stream`: live events as server-sent events, those passing the filter
/// parameters only. With `?after=SEQ` (or a `Last-Event-ID` header, as browsers send on
/// reconnect) the events after `SEQ` still in the ring are sent first.
async fn stream(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiQuery(params): ApiQuery<EventParams>,
    EventQuery(filter): EventQuery,
) -> Result<impl IntoResponse, ApiError> {
    let resume = match params.after {
        Some(after) => Some(after),
        None => match headers.get("last-event-id") {
            Some(v) => Some(
                v.to_str()
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .ok_or_else(|| {
                        ApiError::BadRequest(
                            "Last-Event-ID must be an event sequence number".into(),
                        )
                    })?,
            ),
            None => None,
        },
    };
    // Over --max-event-streams: refused; the slot is held as long as the stream runs.
    let slot = state.usage.take(Limit::EventStreams)?;
    // Subscribe before reading the backlog so nothing falls between the two.
    let live = state.events.subscribe();
    let last = resume.unwrap_or_else(|| state.events.last_seq());
    let (tx, rx) = mpsc::channel::<Result<SseEvent, Infallible>>(64);
    let forward = events::forward(
        state.events.clone(),
        live,
        last,
        filter,
        tx,
        state.shutdown.clone(),
        sse_event,
    );
    tokio::spawn(async move {
        forward.await;
        drop(slot);
    });
    let mut response = Sse::new(ReceiverStream::new(rx))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response();
    // Tells reverse proxies not to buffer the stream.
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

async fn metrics(State(state): State<AppState>) -> Response {
    match state.metrics.encode() {
        Ok(text) => (
            [(
                CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            )],
            text,
        )
            .into_response(),
        Err(_) => {
            ApiError::Lock(LockError::Internal("cannot encode metrics".into())).into_response()
        }
    }
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

async fn readyz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    state.service.health().await?;
    Ok(Json(
        serde_json::json!({"status": "ready", "backend": state.service.backend()}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_keys_accept_only_configured_keys() {
        let keys = ApiKeys::new(&["key-one-0123456789".into(), "key-two-0123456789".into()]);
        assert!(keys.enabled());
        assert!(keys.accepts(b"key-one-0123456789"));
        assert!(keys.accepts(b"key-two-0123456789"));
        assert!(!keys.accepts(b"key-one-012345678"));
        assert!(!keys.accepts(b""));
        assert!(!ApiKeys::new(&[]).enabled());
    }

    #[test]
    fn json_content_types_are_recognised() {
        let mut headers = HeaderMap::new();
        assert!(!is_json(&headers));
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        assert!(is_json(&headers));
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/vnd.lockd+json"),
        );
        assert!(is_json(&headers));
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert!(!is_json(&headers));
    }
}
