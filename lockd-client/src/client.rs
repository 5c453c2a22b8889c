//! [`LockdClient`]: [`LockService`] over lockd's HTTP API.

use std::fmt;
use std::time::Duration;

use lockcore::{
    async_trait, check_objects, Fence, Grant, Lease, ListQuery, LockError, LockInfo, LockPage,
    LockResult, LockService, LockToken, ObjectId, RequestId,
};
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Method, Url};
use serde::de::DeserializeOwned;
use serde::Serialize;

use lockd_wire::{
    AcquireRequest, EntryResult, ErrorBody, EventParams, EventsBody, GrantBody, InspectRequest,
    LeaseBody, ListBody, ListParams, LockBody, ReleaseBody, ReleaseRequest, RenewRequest,
    ResultsBody, TokenRequest,
};

use crate::events::{Event, EventFilter, EventStream};
use crate::wire::{lock_error, parse_error};
use crate::{ClientConfig, BACKEND};

/// The most events one [`LockdClient::events`] call may ask for.
pub const MAX_EVENTS_LIMIT: usize = 1000;

/// The cause of [`LockError::Unavailable`] for a request that ran out of time (not resent).
const TIMED_OUT: &str = "lockd did not answer in time";

/// Pause before resending an acquire whose connection failed before lockd answered.
const ACQUIRE_RESEND_DELAY: Duration = Duration::from_millis(50);

/// When the take-back of an acquire whose answer never came asks lockd again (with the same
/// request id, wait 0) and releases what it gets. Several tries cover an original request that
/// reaches lockd, or is granted, after the first try.
const TAKE_BACK_DELAYS: [Duration; 4] = [
    Duration::from_millis(0),
    Duration::from_millis(200),
    Duration::from_secs(1),
    Duration::from_secs(3),
];

/// Armed while an acquire's answer has not been read; dropped armed, it starts the take-back.
struct TakeBack<'a> {
    client: &'a LockdClient,
    request: Option<lockcore::AcquireRequest>,
}

impl TakeBack<'_> {
    fn disarm(mut self) {
        self.request = None;
    }
}

impl Drop for TakeBack<'_> {
    fn drop(&mut self) {
        let Some(request) = self.request.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let client = self.client.clone();
        let request = request.with_wait(Duration::ZERO);
        runtime.spawn(async move {
            for delay in TAKE_BACK_DELAYS {
                tokio::time::sleep(delay).await;
                if let Ok(Ok(answer)) = client.send_acquire(&request).await {
                    if let Ok(grant) = answer.into_grant() {
                        let locks: Vec<(ObjectId, LockToken)> = grant
                            .leases
                            .into_iter()
                            .map(|lease| (lease.object, lease.token))
                            .collect();
                        let _ = client.release_many(&locks).await;
                        tracing::debug!(object = %locks[0].0, objects = locks.len(),
                            "released a grant whose acquire answer was lost");
                    }
                }
            }
        });
    }
}

/// lockd's answer to an acquire, in the form of the request.
#[derive(Debug)]
enum AcquireAnswer {
    /// To a one-object request.
    One(LeaseBody),
    /// To a several-object request.
    Several(GrantBody),
}

impl AcquireAnswer {
    fn into_grant(self) -> LockResult<Grant> {
        match self {
            AcquireAnswer::One(body) => {
                let lease = body.into_lease()?;
                Ok(Grant {
                    owner: lease.owner.clone(),
                    ttl: lease.ttl,
                    leases: vec![lease],
                })
            }
            AcquireAnswer::Several(body) => body.into_grant(),
        }
    }
}

/// A [`LockService`] that forwards every call to a lockd server over HTTP/JSON.
///
/// Cheap to clone (clones share one keep-alive connection pool); create one per process and
/// share it. Every request has a deadline: [`ClientConfig::request_timeout`], plus the `wait` of
/// a blocking acquire. A request that cannot connect or runs out of time is
/// [`LockError::Unavailable`] with backend `http`.
///
/// An acquire of one object is sent in the one-object form (`object`, and `mode` when shared);
/// one of several objects as `objects`, granted all or nothing. Batched releases and renewals
/// ([`LockService::release_many`], [`LockService::renew_many`]) are one request each, with
/// one outcome per lock.
///
/// Every acquire carries a [`RequestId`] (the caller's, or a random one), so lockd answers a
/// repeat of it with the same leases instead of second grants. The client uses that twice:
///
/// * an acquire whose connection fails before lockd answered is sent again, once, with the same
///   request id (a timeout is not retried: the caller's deadline has passed);
/// * an acquire that gets no answer (dropped by its caller, timed out, connection lost) leaves a
///   task behind that asks again with the same request id and releases what it gets, a few
///   times over about 4 s, so a grant whose reply was lost does not stay locked until its TTL
///   runs out.
#[derive(Clone)]
pub struct LockdClient {
    http: reqwest::Client,
    endpoints: std::sync::Arc<Endpoints>,
    request_timeout: Duration,
    url: String,
}

#[derive(Debug)]
struct Endpoints {
    acquire: Url,
    release: Url,
    renew: Url,
    downgrade: Url,
    validate: Url,
    inspect: Url,
    locks: Url,
    events: Url,
    events_stream: Url,
    readyz: Url,
}

impl fmt::Debug for LockdClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The API key lives only inside the HTTP client's default headers, marked sensitive.
        f.debug_struct("LockdClient")
            .field("url", &self.url)
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

impl LockdClient {
    /// A client for the server `config` names.
    ///
    /// Refuses a URL that is not `http://` or `https://` with a host, and an API key that cannot
    /// be sent as a header, with [`LockError::InvalidArgument`]. Does not contact the server; use
    /// [`LockService::health`] for that.
    pub fn new(config: ClientConfig) -> LockResult<Self> {
        let base = parse_base_url(&config.url)?;
        let mut headers = HeaderMap::new();
        if let Some(key) = &config.api_key {
            let mut value = HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| {
                LockError::invalid_argument("api_key", "must be printable ASCII without newlines")
            })?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
            if base.scheme() == "http" && !is_loopback_host(&base) {
                tracing::warn!(
                    url = %base,
                    "sending the lockd API key over plain http to a non-loopback host"
                );
            }
        }
        let mut builder = reqwest::Client::builder();
        if let Some(path) = &config.ca_file {
            for certificate in read_ca_file(path)? {
                builder = builder.add_root_certificate(certificate);
            }
        }
        if let Some(identity) = read_identity(&config)? {
            builder = builder.identity(identity);
        }
        let http = builder
            .default_headers(headers)
            .user_agent(concat!("lockd-client/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(config.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(usize::MAX)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| LockError::Internal(format!("cannot build the HTTP client: {e}")))?;
        let join = |path: &str| {
            base.join(path).map_err(|e| {
                LockError::invalid_argument("url", format!("cannot append {path}: {e}"))
            })
        };
        let endpoints = Endpoints {
            acquire: join("v1/locks/acquire")?,
            release: join("v1/locks/release")?,
            renew: join("v1/locks/renew")?,
            downgrade: join("v1/locks/downgrade")?,
            validate: join("v1/locks/validate")?,
            inspect: join("v1/locks/inspect")?,
            locks: join("v1/locks")?,
            events: join("v1/events")?,
            events_stream: join("v1/events/stream")?,
            readyz: join("readyz")?,
        };
        Ok(Self {
            http,
            endpoints: std::sync::Arc::new(endpoints),
            request_timeout: config.request_timeout,
            url: config.url,
        })
    }

    /// The server URL this client talks to, as configured.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Up to `limit` events with a sequence number above `after` (all retained ones for `None`),
    /// oldest first.
    pub async fn events(&self, after: Option<u64>, limit: usize) -> LockResult<Vec<Event>> {
        self.events_with(after, limit, &EventFilter::default())
            .await
    }

    /// Like [`LockdClient::events`], only the events that pass `filter` (sent as the query
    /// parameters `object`, `prefix`, `owner`, `kind`). Fewer than `limit` events means none
    /// that passes is left; the events keep the log's sequence numbers, so pass the last one's as
    /// `after` for the next page.
    pub async fn events_with(
        &self,
        after: Option<u64>,
        limit: usize,
        filter: &EventFilter,
    ) -> LockResult<Vec<Event>> {
        if limit == 0 || limit > MAX_EVENTS_LIMIT {
            return Err(LockError::invalid_argument(
                "limit",
                format!("must be between 1 and {MAX_EVENTS_LIMIT}"),
            ));
        }
        let params = EventParams {
            after,
            limit: Some(limit),
        };
        let url = with_filter(with_query(&self.endpoints.events, &params)?, filter);
        let response: EventsBody = self
            .call(Method::GET, url, None::<&()>, self.request_timeout, None)
            .await?
            .map_err(|(status, body)| lock_error(body, status, None))?;
        Ok(response.events)
    }

    /// Follows lockd's live event stream, starting after sequence number `after` when given
    /// (sent as `?after=` and `Last-Event-ID`). The stream has no overall deadline.
    pub async fn event_stream(&self, after: Option<u64>) -> LockResult<EventStream> {
        self.event_stream_with(after, &EventFilter::default()).await
    }

    /// Like [`LockdClient::event_stream`], only the events that pass `filter`: for example a
    /// holder's own `wanted` notices,
    /// `EventFilter::default().owner("node-7").kind(EventKind::Wanted)`. The events keep the
    /// log's sequence numbers, so resuming after the last one seen misses none that passes.
    pub async fn event_stream_with(
        &self,
        after: Option<u64>,
        filter: &EventFilter,
    ) -> LockResult<EventStream> {
        let params = EventParams { after, limit: None };
        let url = with_filter(with_query(&self.endpoints.events_stream, &params)?, filter);
        let mut request = self.http.get(url);
        if let Some(after) = after {
            request = request.header("Last-Event-ID", after.to_string());
        }
        let response = request
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .send()
            .await
            .map_err(transport_error)?;
        let status = response.status().as_u16();
        if !response.status().is_success() {
            let body = response.bytes().await.map_err(transport_error)?;
            return Err(lock_error(parse_error(status, &body), status, None));
        }
        Ok(EventStream::new(response))
    }

    /// Sends one request; `Ok(Err(..))` is lockd's refusal (status and error body), `Err` a
    /// transport failure or an unreadable success body.
    async fn call<B: Serialize, R: DeserializeOwned>(
        &self,
        method: Method,
        url: Url,
        body: Option<&B>,
        timeout: Duration,
        object: Option<&ObjectId>,
    ) -> LockResult<Result<R, (u16, ErrorBody)>> {
        let mut request = self.http.request(method, url).timeout(timeout);
        if let Some(body) = body {
            let bytes = serde_json::to_vec(body)
                .map_err(|e| LockError::Internal(format!("cannot encode the request: {e}")))?;
            request = request
                .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
                .body(bytes);
        }
        let response = request.send().await.map_err(transport_error)?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(transport_error)?;
        if (200..300).contains(&status) {
            let parsed = serde_json::from_slice(&bytes).map_err(|e| {
                let what = object.map(|o| format!(" about {o}")).unwrap_or_default();
                LockError::Internal(format!(
                    "lockd answered{what} with a body this client does not understand: {e}"
                ))
            })?;
            Ok(Ok(parsed))
        } else {
            Ok(Err((status, parse_error(status, &bytes))))
        }
    }

    /// Sends one acquire; `Ok(Err(..))` is lockd's refusal, `Err` a transport failure.
    async fn send_acquire(
        &self,
        request: &lockcore::AcquireRequest,
    ) -> LockResult<Result<AcquireAnswer, (u16, ErrorBody)>> {
        if request.request_id.is_none() {
            return Err(LockError::Internal(
                "acquire sent without a request id".into(),
            ));
        }
        let Some(first) = request.objects.first() else {
            return Err(LockError::invalid_argument(
                "objects",
                "must name 1 to 64 objects, not 0",
            ));
        };
        let body = AcquireRequest::of(request, ttl_millis(request.ttl)?, ceil_millis(request.wait));
        let timeout = self.request_timeout.saturating_add(request.wait);
        let url = self.endpoints.acquire.clone();
        let object = Some(&first.object);
        Ok(if body.is_many() {
            self.call(Method::POST, url, Some(&body), timeout, object)
                .await?
                .map(AcquireAnswer::Several)
        } else {
            self.call(Method::POST, url, Some(&body), timeout, object)
                .await?
                .map(AcquireAnswer::One)
        })
    }

    /// Sends a several-lock release or renew and pairs each answered entry with the lock it
    /// is about, in request order.
    async fn post_batch<B: Serialize, T: DeserializeOwned>(
        &self,
        url: &Url,
        body: &B,
        locks: &[(ObjectId, LockToken)],
    ) -> LockResult<Vec<LockResult<T>>> {
        let first = &locks[0].0;
        let answer: ResultsBody<T> = self.post(url, body, self.request_timeout, first).await?;
        if answer.results.len() != locks.len() {
            return Err(LockError::Internal(format!(
                "lockd answered {} results for {} locks",
                answer.results.len(),
                locks.len()
            )));
        }
        Ok(answer
            .results
            .into_iter()
            .zip(locks)
            .map(|(entry, (object, _))| match entry {
                EntryResult::Done(done) => Ok(done),
                EntryResult::Failed(failed) => Err(lock_error(failed.error, 200, Some(object))),
            })
            .collect())
    }

    /// [`Self::call`] for operations on one object, mapping refusals to [`LockError`].
    async fn post<B: Serialize, R: DeserializeOwned>(
        &self,
        url: &Url,
        body: &B,
        timeout: Duration,
        object: &ObjectId,
    ) -> LockResult<R> {
        self.call(Method::POST, url.clone(), Some(body), timeout, Some(object))
            .await?
            .map_err(|(status, error)| lock_error(error, status, Some(object)))
    }
}

#[async_trait]
impl LockService for LockdClient {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn acquire_with(&self, request: &lockcore::AcquireRequest) -> LockResult<Grant> {
        let mut request = request.clone();
        if request.request_id.is_none() {
            request.request_id = Some(RequestId::random());
        }
        let take_back = TakeBack {
            client: self,
            request: Some(request.clone()),
        };
        let mut answer = self.send_acquire(&request).await;
        if matches!(&answer, Err(LockError::Unavailable { cause, .. }) if !cause.starts_with(TIMED_OUT))
        {
            // The connection failed before an answer: the same request id makes resending safe.
            tokio::time::sleep(ACQUIRE_RESEND_DELAY).await;
            answer = self.send_acquire(&request).await;
        }
        let answer = answer?;
        // lockd answered: whatever it decided, the caller learns it here.
        take_back.disarm();
        answer
            .map_err(|(status, error)| lock_error(error, status, Some(request.first_object())))?
            .into_grant()
    }

    async fn release(&self, object: &ObjectId, token: &LockToken) -> LockResult<Fence> {
        let body = ReleaseRequest::one(object, token);
        let released: ReleaseBody = self
            .post(&self.endpoints.release, &body, self.request_timeout, object)
            .await?;
        Ok(Fence(released.fence))
    }

    async fn release_many(
        &self,
        locks: &[(ObjectId, LockToken)],
    ) -> LockResult<Vec<LockResult<Fence>>> {
        check_objects(locks.iter().map(|(object, _)| object))?;
        let body = ReleaseRequest::many(locks);
        let results = self
            .post_batch::<_, ReleaseBody>(&self.endpoints.release, &body, locks)
            .await?;
        Ok(results
            .into_iter()
            .map(|result| result.map(|released| Fence(released.fence)))
            .collect())
    }

    async fn renew(
        &self,
        object: &ObjectId,
        token: &LockToken,
        ttl: Duration,
    ) -> LockResult<Lease> {
        let body = RenewRequest::one(object, token, ttl_millis(ttl)?);
        let renewed: LeaseBody = self
            .post(&self.endpoints.renew, &body, self.request_timeout, object)
            .await?;
        renewed.into_lease()
    }

    async fn renew_many(
        &self,
        locks: &[(ObjectId, LockToken)],
        ttl: Duration,
    ) -> LockResult<Vec<LockResult<Lease>>> {
        check_objects(locks.iter().map(|(object, _)| object))?;
        let body = RenewRequest::many(locks, ttl_millis(ttl)?);
        let results = self
            .post_batch::<_, LeaseBody>(&self.endpoints.renew, &body, locks)
            .await?;
        Ok(results
            .into_iter()
            .map(|result| result.and_then(LeaseBody::into_lease))
            .collect())
    }

    async fn downgrade(&self, object: &ObjectId, token: &LockToken) -> LockResult<Lease> {
        let body = TokenRequest::new(object, token);
        let downgraded: LeaseBody = self
            .post(
                &self.endpoints.downgrade,
                &body,
                self.request_timeout,
                object,
            )
            .await?;
        downgraded.into_lease()
    }

    async fn validate(&self, object: &ObjectId, token: &LockToken) -> LockResult<Lease> {
        let body = TokenRequest::new(object, token);
        let valid: LockBody = self
            .post(
                &self.endpoints.validate,
                &body,
                self.request_timeout,
                object,
            )
            .await?;
        valid.into_lease(token)
    }

    async fn inspect(&self, object: &ObjectId) -> LockResult<Option<LockInfo>> {
        let body = InspectRequest {
            object: object.as_str().to_owned(),
        };
        let answer: Result<LockBody, _> = self
            .call(
                Method::POST,
                self.endpoints.inspect.clone(),
                Some(&body),
                self.request_timeout,
                Some(object),
            )
            .await?;
        match answer {
            Ok(info) => info.into_info().map(Some),
            Err((_, error)) if error.code == "not_found" => Ok(None),
            Err((status, error)) => Err(lock_error(error, status, Some(object))),
        }
    }

    async fn list(&self, query: &ListQuery) -> LockResult<LockPage> {
        query.check()?;
        let params = ListParams {
            prefix: Some(query.prefix.clone()).filter(|prefix| !prefix.is_empty()),
            limit: Some(query.limit),
            after: query.after.clone(),
        };
        let url = with_query(&self.endpoints.locks, &params)?;
        let page: ListBody = self
            .call(Method::GET, url, None::<&()>, self.request_timeout, None)
            .await?
            .map_err(|(status, error)| lock_error(error, status, None))?;
        Ok(LockPage {
            locks: page
                .locks
                .into_iter()
                .map(LockBody::into_info)
                .collect::<LockResult<_>>()?,
            next: page.next,
        })
    }

    /// Asks lockd's `/readyz`: succeeds when lockd is up and its backend reachable.
    async fn health(&self) -> LockResult<()> {
        let response = self
            .http
            .get(self.endpoints.readyz.clone())
            .timeout(self.request_timeout)
            .send()
            .await
            .map_err(transport_error)?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let body = response.bytes().await.unwrap_or_default();
        Err(LockError::unavailable(
            BACKEND,
            format!(
                "lockd is not ready (HTTP {}): {}",
                status.as_u16(),
                String::from_utf8_lossy(&body[..body.len().min(200)]).trim()
            ),
        ))
    }
}

/// `endpoint` with `params` as its query string (absent parameters left out).
fn with_query<Q: Serialize>(endpoint: &Url, params: &Q) -> LockResult<Url> {
    let query = serde_urlencoded::to_string(params)
        .map_err(|e| LockError::Internal(format!("cannot encode the query: {e}")))?;
    let mut url = endpoint.clone();
    url.set_query(
        Some(&query)
            .filter(|query| !query.is_empty())
            .map(String::as_str),
    );
    Ok(url)
}

/// `url` with `filter`'s query parameters appended.
fn with_filter(mut url: Url, filter: &EventFilter) -> Url {
    let pairs = filter.query_pairs();
    if !pairs.is_empty() {
        url.query_pairs_mut().extend_pairs(pairs);
    }
    url
}

/// Checks and normalizes the base URL so that joining `v1/...` keeps any path prefix.
fn parse_base_url(raw: &str) -> LockResult<Url> {
    let mut url = Url::parse(raw.trim())
        .map_err(|e| LockError::invalid_argument("url", format!("`{raw}` is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(LockError::invalid_argument(
            "url",
            format!("`{raw}` must start with http:// or https://"),
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(LockError::invalid_argument(
            "url",
            format!("`{raw}` names no host"),
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(LockError::invalid_argument(
            "url",
            "must not carry credentials; set api_key instead",
        ));
    }
    url.set_query(None);
    url.set_fragment(None);
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

/// The certificates in a PEM file; a missing, unreadable or certificate-less file is refused.
fn read_ca_file(path: &std::path::Path) -> LockResult<Vec<reqwest::Certificate>> {
    let shown = path.display();
    let pem = std::fs::read(path)
        .map_err(|e| LockError::invalid_argument("ca_file", format!("cannot read {shown}: {e}")))?;
    let certificates = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
        LockError::invalid_argument("ca_file", format!("{shown} is not a PEM bundle: {e}"))
    })?;
    if certificates.is_empty() {
        return Err(LockError::invalid_argument(
            "ca_file",
            format!("{shown} holds no PEM certificate"),
        ));
    }
    Ok(certificates)
}

/// The client certificate and key of `config`, for TLS: both or neither, each a readable PEM
/// file of its kind.
fn read_identity(config: &ClientConfig) -> LockResult<Option<reqwest::Identity>> {
    let (cert_path, key_path) = match (&config.client_cert, &config.client_key) {
        (Some(cert), Some(key)) => (cert, key),
        (None, None) => return Ok(None),
        (Some(_), None) => {
            return Err(LockError::invalid_argument(
                "client_key",
                "a client certificate needs its private key",
            ))
        }
        (None, Some(_)) => {
            return Err(LockError::invalid_argument(
                "client_cert",
                "a client key needs its certificate",
            ))
        }
    };
    let read = |field: &'static str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| {
            LockError::invalid_argument(field, format!("cannot read {}: {e}", path.display()))
        })
    };
    let mut pem = read("client_cert", cert_path)?;
    if !pem.ends_with(b"\n") {
        pem.push(b'\n');
    }
    pem.extend(read("client_key", key_path)?);
    let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
        LockError::invalid_argument(
            "client_cert",
            format!(
                "{} and {} are not a PEM certificate and its private key: {e}",
                cert_path.display(),
                key_path.display()
            ),
        )
    })?;
    Ok(Some(identity))
}

/// Whether the URL's host is a loopback address (or `localhost`).
pub(crate) fn is_loopback_host(url: &Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => bare.eq_ignore_ascii_case("localhost"),
    }
}

/// A TTL in whole milliseconds; sub-millisecond parts are refused as every backend refuses them.
fn ttl_millis(ttl: Duration) -> LockResult<u64> {
    if !ttl.subsec_nanos().is_multiple_of(1_000_000) {
        return Err(LockError::invalid_argument(
            "ttl",
            "must be a whole number of milliseconds",
        ));
    }
    Ok(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
}

/// A wait in milliseconds, rounded up so the caller waits at least as long as asked.
fn ceil_millis(wait: Duration) -> u64 {
    let ms = wait.as_millis() + u128::from(!wait.subsec_nanos().is_multiple_of(1_000_000));
    u64::try_from(ms).unwrap_or(u64::MAX)
}

/// A failure to get an answer from lockd at all: always `Unavailable`, nothing was granted to us.
fn transport_error(error: reqwest::Error) -> LockError {
    let mut cause = if error.is_timeout() {
        TIMED_OUT.to_owned()
    } else if error.is_connect() {
        "cannot connect to lockd".to_owned()
    } else {
        "request to lockd failed".to_owned()
    };
    let mut source: Option<&dyn std::error::Error> = Some(&error);
    while let Some(err) = source {
        cause.push_str(": ");
        cause.push_str(&err.to_string());
        source = err.source();
    }
    LockError::unavailable(BACKEND, cause)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_keep_their_path_prefix() {
        let url = parse_base_url("https://proxy.example/lockd").unwrap();
        assert_eq!(
            url.join("v1/locks/acquire").unwrap().as_str(),
            "https://proxy.example/lockd/v1/locks/acquire"
        );
        let url = parse_base_url("http://127.0.0.1:7070").unwrap();
        assert_eq!(
            url.join("v1/locks").unwrap().as_str(),
            "http://127.0.0.1:7070/v1/locks"
        );
    }

    #[test]
    fn only_http_urls_with_a_host_are_accepted() {
        for bad in [
            "redis://127.0.0.1",
            "127.0.0.1:7070",
            "http://",
            "",
            "http://user:pw@host",
        ] {
            assert!(
                matches!(
                    LockdClient::new(ClientConfig::from_url(bad)),
                    Err(LockError::InvalidArgument { field: "url", .. })
                ),
                "{bad} was accepted"
            );
        }
        assert!(LockdClient::new(ClientConfig::from_url("https://locks.example")).is_ok());
    }

    #[test]
    fn api_keys_must_fit_in_a_header_and_never_show_in_debug() {
        let config = ClientConfig::from_url("http://127.0.0.1:7070").with_api_key("bad\nkey");
        assert!(matches!(
            LockdClient::new(config),
            Err(LockError::InvalidArgument {
                field: "api_key",
                ..
            })
        ));
        let config = ClientConfig::from_url("http://127.0.0.1:7070").with_api_key("k-123456");
        let client = LockdClient::new(config).unwrap();
        assert!(!format!("{client:?}").contains("k-123456"));
        assert_eq!(client.backend(), "http");
    }

    #[test]
    fn a_client_certificate_needs_its_key_and_both_must_be_pem() {
        let base = || ClientConfig::from_url("https://locks.example");
        let data = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");
        let cert = format!("{data}/test-server.pem");
        let key = format!("{data}/test-server-key.pem");
        assert!(LockdClient::new(base().with_client_cert(&cert, &key)).is_ok());
        let field = |config: ClientConfig| match LockdClient::new(config) {
            Err(LockError::InvalidArgument { field, .. }) => Some(field),
            _ => None,
        };
        let mut half = base();
        half.client_cert = Some(cert.clone().into());
        assert_eq!(field(half), Some("client_key"));
        let mut half = base();
        half.client_key = Some(key.clone().into());
        assert_eq!(field(half), Some("client_cert"));
        assert_eq!(
            field(base().with_client_cert("/nonexistent/c.pem", &key)),
            Some("client_cert")
        );
        assert_eq!(
            field(base().with_client_cert(&cert, "/nonexistent/k.pem")),
            Some("client_key")
        );
        // A certificate where the key should be.
        assert_eq!(
            field(base().with_client_cert(&cert, &cert)),
            Some("client_cert")
        );
    }

    #[test]
    fn a_ca_file_must_hold_certificates() {
        let base = || ClientConfig::from_url("https://locks.example");
        let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/test-ca.pem");
        assert!(LockdClient::new(base().with_ca_file(fixture)).is_ok());
        let not_pem = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
        for path in ["/nonexistent/ca.pem", not_pem] {
            assert!(
                matches!(
                    LockdClient::new(base().with_ca_file(path)),
                    Err(LockError::InvalidArgument {
                        field: "ca_file",
                        ..
                    })
                ),
                "{path} was accepted"
            );
        }
    }

    #[test]
    fn ttls_are_whole_milliseconds_and_waits_round_up() {
        assert_eq!(ttl_millis(Duration::from_millis(1500)), Ok(1500));
        assert!(matches!(
            ttl_millis(Duration::from_micros(1500)),
            Err(LockError::InvalidArgument { field: "ttl", .. })
        ));
        assert_eq!(ceil_millis(Duration::from_micros(1500)), 2);
        assert_eq!(ceil_millis(Duration::ZERO), 0);
        assert_eq!(ceil_millis(Duration::from_secs(2)), 2000);
    }

    #[test]
    fn loopback_hosts_are_recognized() {
        for (url, loopback) in [
            ("http://127.0.0.1:1", true),
            ("http://[::1]:1", true),
            ("http://localhost:1", true),
            ("http://10.0.0.1:1", false),
            ("http://locks.example", false),
        ] {
            assert_eq!(
                is_loopback_host(&Url::parse(url).unwrap()),
                loopback,
                "{url}"
            );
        }
    }
}
