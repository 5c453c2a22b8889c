//! [`GrpcClient`]: [`LockService`] over lockd's gRPC API.

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use lockcore::{
    async_trait, check_objects, Fence, Grant, Lease, ListQuery, LockError, LockInfo, LockPage,
    LockResult, LockService, LockToken, ObjectId, RequestId,
};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request, Status};

use crate::convert::{self, mode_to_pb, scope_to_pb};
use crate::pb;
use crate::pb::locks_client::LocksClient;
use crate::status::{detail_of, lock_error_of, lock_error_of_detail};

/// The backend name a [`GrpcClient`] reports, and puts in its `Unavailable` errors.
pub const BACKEND: &str = "grpc";
/// Default URL: lockd's default gRPC listen address.
pub const DEFAULT_URL: &str = "grpc://127.0.0.1:7071";
/// The port of a `grpc://` URL that names none.
pub const DEFAULT_PORT: u16 = 7071;
/// Default time allowed to open the connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default time allowed for one call, on top of any `wait` a blocking acquire asks for.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The cause of [`LockError::Unavailable`] for a call that ran out of time (not resent).
const TIMED_OUT: &str = "lockd did not answer in time";

/// Pause before resending an acquire whose connection failed before lockd answered.
const ACQUIRE_RESEND_DELAY: Duration = Duration::from_millis(50);

/// When the take-back of an acquire whose answer never came asks lockd again (same request id,
/// wait 0) and releases what it gets, as lockd-client's HTTP transport does.
const TAKE_BACK_DELAYS: [Duration; 4] = [
    Duration::from_millis(0),
    Duration::from_millis(200),
    Duration::from_secs(1),
    Duration::from_secs(3),
];

/// Where a [`GrpcClient`] finds lockd and how it talks to it. `Debug` never shows the API key.
///
/// ```
/// use lockd_grpc::GrpcConfig;
///
/// // TLS, trusting a private CA, with a client certificate (mutual TLS).
/// let config = GrpcConfig::from_url("grpcs://locks.example:7071")
///     .with_ca_file("/etc/lockd/ca.pem")
///     .with_client_cert("/etc/lockd/client.pem", "/etc/lockd/client-key.pem");
/// assert!(config.client_key.is_some());
/// ```
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GrpcConfig {
    /// `grpc://host[:port]` (port 7071 when omitted) or `http://host:port`; `grpcs://` or
    /// `https://` for TLS (rustls; the server's certificate must be valid for `host`).
    pub url: String,
    /// Sent as `authorization: Bearer KEY` metadata on every call when set.
    pub api_key: Option<String>,
    /// Time allowed to connect (default 2 s).
    pub connect_timeout: Duration,
    /// Time allowed for one call (default 10 s). A blocking acquire gets its `wait` on top.
    pub request_timeout: Duration,
    /// A PEM file of CA certificates to trust for `grpcs://` (a private CA), on top of the
    /// built-in web roots.
    pub ca_file: Option<PathBuf>,
    /// A PEM client certificate chain presented over `grpcs://`, for a server that requires
    /// one (mutual TLS); needs [`GrpcConfig::client_key`].
    pub client_cert: Option<PathBuf>,
    /// The PEM private key of [`GrpcConfig::client_cert`].
    pub client_key: Option<PathBuf>,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        Self {
            url: DEFAULT_URL.to_owned(),
            api_key: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            ca_file: None,
            client_cert: None,
            client_key: None,
        }
    }
}

impl fmt::Debug for GrpcConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcConfig")
            .field("url", &self.url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("ca_file", &self.ca_file)
            .field("client_cert", &self.client_cert)
            .field("client_key", &self.client_key)
            .finish()
    }
}

impl GrpcConfig {
    /// The default configuration for the server at `url`.
    pub fn from_url(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ..Self::default()
        }
    }

    /// Sets the API key (builder style).
    pub fn with_api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// Sets the connect timeout (builder style).
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets the per-call timeout (builder style).
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Trusts the CA certificates in the PEM file at `path` for `grpcs://` (builder style).
    pub fn with_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    /// Presents the PEM certificate chain at `cert`, with its PEM private key at `key`, over
    /// `grpcs://` (builder style).
    pub fn with_client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.client_cert = Some(cert.into());
        self.client_key = Some(key.into());
        self
    }
}

/// What tonic connects to for a gRPC URL: an `http://` or `https://` URI, and for TLS the
/// name the server's certificate must be valid for.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    uri: String,
    tls_server_name: Option<String>,
}

/// The [`Target`] of a `grpc://`, `http://` (plaintext), `grpcs://` or `https://` (TLS) URL.
fn endpoint_target(raw: &str) -> LockResult<Target> {
    let url = url::Url::parse(raw.trim())
        .map_err(|e| LockError::invalid_argument("url", format!("`{raw}` is not a URL: {e}")))?;
    let tls = match url.scheme() {
        "grpc" | "http" => false,
        "grpcs" | "https" => true,
        _ => {
            return Err(LockError::invalid_argument(
                "url",
                format!("`{raw}` must start with grpc:// or grpcs:// (or http://, https://)"),
            ))
        }
    };
    let host = url
        .host_str()
        .filter(|host| !host.is_empty())
        .ok_or_else(|| LockError::invalid_argument("url", format!("`{raw}` names no host")))?;
    // The certificate names an IPv6 address without the URL's brackets.
    let server_name = match url.host() {
        Some(url::Host::Ipv6(address)) => address.to_string(),
        _ => host.to_owned(),
    };
    if !url.username().is_empty() || url.password().is_some() {
        return Err(LockError::invalid_argument(
            "url",
            "must not carry credentials; set api_key instead",
        ));
    }
    if !matches!(url.path(), "" | "/") || url.query().is_some() {
        return Err(LockError::invalid_argument(
            "url",
            format!("`{raw}`: a gRPC URL has no path or query"),
        ));
    }
    let port = url.port().unwrap_or(DEFAULT_PORT);
    Ok(if tls {
        Target {
            uri: format!("https://{host}:{port}"),
            tls_server_name: Some(server_name),
        }
    } else {
        Target {
            uri: format!("http://{host}:{port}"),
            tls_server_name: None,
        }
    })
}

/// Reads a PEM file named by the configuration field `field`.
fn read_pem(field: &'static str, path: &Path) -> LockResult<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        LockError::invalid_argument(field, format!("cannot read {}: {e}", path.display()))
    })
}

/// The rustls (ring) client configuration of a TLS target: web roots and `ca_file`, the client
/// certificate when set, the handshake within the connect timeout. Files are read and checked
/// here, so a wrong one is refused when the client is made, not on its first call.
fn tls_config(config: &GrpcConfig, server_name: String) -> LockResult<ClientTlsConfig> {
    let mut tls = ClientTlsConfig::new()
        .domain_name(server_name)
        .with_webpki_roots()
        .timeout(config.connect_timeout);
    if let Some(path) = &config.ca_file {
        let pem = read_pem("ca_file", path)?;
        let certificates = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                LockError::invalid_argument(
                    "ca_file",
                    format!("{} is not a PEM bundle: {e}", path.display()),
                )
            })?;
        if certificates.is_empty() {
            return Err(LockError::invalid_argument(
                "ca_file",
                format!("{} holds no PEM certificate", path.display()),
            ));
        }
        tls = tls.ca_certificate(Certificate::from_pem(pem));
    }
    match (&config.client_cert, &config.client_key) {
        (Some(cert_path), Some(key_path)) => {
            let cert = read_pem("client_cert", cert_path)?;
            if CertificateDer::pem_slice_iter(&cert).next().is_none() {
                return Err(LockError::invalid_argument(
                    "client_cert",
                    format!("{} holds no PEM certificate", cert_path.display()),
                ));
            }
            let key = read_pem("client_key", key_path)?;
            PrivateKeyDer::from_pem_slice(&key).map_err(|e| {
                LockError::invalid_argument(
                    "client_key",
                    format!("{} holds no PEM private key: {e}", key_path.display()),
                )
            })?;
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        (None, None) => {}
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
    }
    Ok(tls)
}

/// A [`LockService`] that forwards every call to a lockd server over gRPC (`lockd.v1.Locks`).
///
/// Cheap to clone (clones share one HTTP/2 connection, on which calls are multiplexed). Every
/// call has a deadline: [`GrpcConfig::request_timeout`], plus the `wait` of a blocking
/// acquire; a call that cannot connect or runs out of time is [`LockError::Unavailable`] with
/// backend `grpc`. Refusals come back as the typed [`LockError`]s lockd sent (in the status
/// details), `Locked` with every conflict.
///
/// Like lockd-client's HTTP transport, every acquire carries a [`RequestId`] (the caller's,
/// or a random one): an acquire whose connection failed before lockd answered is sent again
/// once, and one that got no answer (dropped by its caller, timed out) leaves a task behind that
/// asks again with the same id and releases what it gets.
#[derive(Clone)]
pub struct GrpcClient {
    endpoint: Endpoint,
    /// The one connection every clone shares, opened (lazily) by the first call, inside the
    /// caller's runtime.
    channel: Arc<OnceLock<Channel>>,
    authorization: Option<MetadataValue<Ascii>>,
    request_timeout: Duration,
    url: String,
}

impl fmt::Debug for GrpcClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcClient")
            .field("url", &self.url)
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

/// Armed while an acquire's answer has not been read; dropped armed, it starts the take-back.
struct TakeBack<'a> {
    client: &'a GrpcClient,
    message: Option<pb::AcquireRequest>,
}

impl TakeBack<'_> {
    fn disarm(mut self) {
        self.message = None;
    }
}

impl Drop for TakeBack<'_> {
    fn drop(&mut self) {
        let Some(mut message) = self.message.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let client = self.client.clone();
        message.wait_ms = 0;
        runtime.spawn(async move {
            for delay in TAKE_BACK_DELAYS {
                tokio::time::sleep(delay).await;
                let timeout = client.request_timeout;
                if let Ok(Ok(answer)) = client.send_acquire(message.clone(), timeout).await {
                    if let Ok(grant) = convert::grant_from_pb(answer) {
                        let locks: Vec<(ObjectId, LockToken)> = grant
                            .leases
                            .into_iter()
                            .map(|lease| (lease.object, lease.token))
                            .collect();
                        let _ = client.release_many(&locks).await;
                        tracing::debug!(
                            objects = locks.len(),
                            "released a grant whose acquire answer was lost"
                        );
                    }
                }
            }
        });
    }
}

impl GrpcClient {
    /// A client for the server `config` names.
    ///
    /// Refuses a URL that is not `grpc://`, `grpcs://`, `http://` or `https://` with a host,
    /// an API key that cannot be sent as metadata, and (for TLS) a CA file or client
    /// certificate that cannot be read or holds no PEM item of its kind, with
    /// [`LockError::InvalidArgument`]. Does not contact the server (it connects on the first
    /// call, which must run inside a Tokio runtime); use [`LockService::health`] for that.
    ///
    /// The TLS settings apply to TLS URLs only. A server certificate that is not trusted or
    /// not valid for the host, and a client certificate the server refuses, make calls fail as
    /// [`LockError::Unavailable`].
    pub fn new(config: GrpcConfig) -> LockResult<Self> {
        let target = endpoint_target(&config.url)?;
        let authorization = match &config.api_key {
            Some(key) => {
                let mut value: MetadataValue<Ascii> =
                    format!("Bearer {key}").parse().map_err(|_| {
                        LockError::invalid_argument(
                            "api_key",
                            "must be printable ASCII without newlines",
                        )
                    })?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        let mut endpoint = Endpoint::from_shared(target.uri)
            .map_err(|e| LockError::invalid_argument("url", e.to_string()))?
            .connect_timeout(config.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .user_agent(concat!("lockd-grpc/", env!("CARGO_PKG_VERSION")))
            .map_err(|e| LockError::Internal(format!("cannot set the user agent: {e}")))?;
        if let Some(server_name) = target.tls_server_name {
            endpoint = endpoint
                .tls_config(tls_config(&config, server_name)?)
                .map_err(|e| {
                    LockError::invalid_argument(
                        "client_cert",
                        format!("cannot set up TLS with these files: {e}"),
                    )
                })?;
        }
        Ok(Self {
            endpoint,
            channel: Arc::new(OnceLock::new()),
            authorization,
            request_timeout: config.request_timeout,
            url: config.url,
        })
    }

    /// The server URL this client talks to, as configured.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The raw tonic client, for calls this type does not wrap (`Events`). Add the
    /// `authorization` metadata yourself when the server wants a key.
    pub fn raw(&self) -> LocksClient<Channel> {
        LocksClient::new(self.channel().clone())
    }

    /// The shared connection, set up on first use.
    fn channel(&self) -> &Channel {
        self.channel.get_or_init(|| self.endpoint.connect_lazy())
    }

    /// Follows lockd's live events (`Events`), starting after sequence number `after` when
    /// given. The stream has no overall deadline; it ends when the server shuts down. A server
    /// without an event log refuses it (`Internal`, from `UNIMPLEMENTED`).
    pub async fn events(
        &self,
        after: Option<u64>,
    ) -> LockResult<impl tokio_stream::Stream<Item = LockResult<pb::EventsResponse>>> {
        self.events_with(pb::EventsRequest {
            after,
            ..pb::EventsRequest::default()
        })
        .await
    }

    /// Follows lockd's events as `request` asks: after `request.after` when given, passing its
    /// filters (`objects`, `prefixes`, `owners`, `kinds`). A filter the server refuses (an
    /// unspecified kind) is [`LockError::InvalidArgument`].
    pub async fn events_with(
        &self,
        request: pb::EventsRequest,
    ) -> LockResult<impl tokio_stream::Stream<Item = LockResult<pb::EventsResponse>>> {
        let mut request = Request::new(request);
        if let Some(value) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        let mut locks = self.raw();
        let stream = self
            .call(self.request_timeout, locks.events(request))
            .await?
            .map_err(|status| lock_error_of(&status, None, BACKEND))?;
        Ok(tokio_stream::StreamExt::map(stream, |item| {
            item.map_err(|status| lock_error_of(&status, None, BACKEND))
        }))
    }

    /// `message` as a request carrying the API key and the deadline `timeout`.
    fn request<T>(&self, message: T, timeout: Duration) -> Request<T> {
        let mut request = Request::new(message);
        if let Some(value) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        request.set_timeout(timeout);
        request
    }

    /// Runs one call with a deadline. `Ok(Err(status))` is lockd's answer refusing it (or a
    /// status of the server's own); `Err` is a call that got no answer at all: a connection
    /// that failed or a deadline that passed (always `Unavailable`).
    async fn call<T>(
        &self,
        timeout: Duration,
        call: impl Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> LockResult<Result<T, Status>> {
        match tokio::time::timeout(timeout, call).await {
            Err(_) => Err(LockError::unavailable(BACKEND, TIMED_OUT)),
            Ok(Ok(response)) => Ok(Ok(response.into_inner())),
            Ok(Err(status)) if detail_of(&status).is_some() => Ok(Err(status)),
            Ok(Err(status)) => {
                // tonic's server answers CANCELLED "Timeout expired" when the call's deadline
                // passed there first.
                let timed_out = status.code() == Code::DeadlineExceeded
                    || (status.code() == Code::Cancelled
                        && status.message().contains("Timeout expired"));
                if timed_out {
                    Err(LockError::unavailable(
                        BACKEND,
                        format!("{TIMED_OUT}: {}", status.message()),
                    ))
                } else if matches!(
                    status.code(),
                    Code::Unavailable | Code::Unknown | Code::Cancelled
                ) {
                    Err(LockError::unavailable(
                        BACKEND,
                        format!("cannot reach lockd: {}", status.message()),
                    ))
                } else {
                    Ok(Err(status))
                }
            }
        }
    }

    /// [`Self::call`] for operations on one object, mapping refusals to [`LockError`].
    async fn call_on<T>(
        &self,
        object: Option<&ObjectId>,
        call: impl Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> LockResult<T> {
        self.call(self.request_timeout, call)
            .await?
            .map_err(|status| lock_error_of(&status, object, BACKEND))
    }

    /// Sends one acquire; `Ok(Err(..))` is lockd's refusal, `Err` a transport failure.
    async fn send_acquire(
        &self,
        message: pb::AcquireRequest,
        timeout: Duration,
    ) -> LockResult<Result<pb::AcquireResponse, Status>> {
        let mut locks = self.raw();
        self.call(timeout, locks.acquire(self.request(message, timeout)))
            .await
    }

    async fn send_release(
        &self,
        message: pb::ReleaseRequest,
    ) -> Result<tonic::Response<pb::ReleaseResponse>, Status> {
        let mut locks = self.raw();
        locks
            .release(self.request(message, self.request_timeout))
            .await
    }

    async fn send_renew(
        &self,
        message: pb::RenewRequest,
    ) -> Result<tonic::Response<pb::RenewResponse>, Status> {
        let mut locks = self.raw();
        locks
            .renew(self.request(message, self.request_timeout))
            .await
    }
}

/// The acquire message of `request`: the one-object form for one object, `objects` otherwise.
///
/// A zero lock-delay is left out, so the server's default applies to it (lockcore's request
/// cannot tell "zero" from "not given"); any other is sent in whole milliseconds, rounded up.
fn acquire_message(request: &lockcore::AcquireRequest) -> LockResult<pb::AcquireRequest> {
    let mut message = pb::AcquireRequest {
        owner: request.owner.to_string(),
        ttl_ms: ttl_millis(request.ttl)?,
        wait_ms: ceil_millis(request.wait),
        request_id: request
            .request_id
            .as_ref()
            .map(|id| id.as_str().to_owned())
            .unwrap_or_default(),
        lock_delay_ms: (!request.lock_delay.is_zero()).then(|| ceil_millis(request.lock_delay)),
        ..pb::AcquireRequest::default()
    };
    match request.objects.as_slice() {
        [one] => {
            message.object = one.object.to_string();
            message.mode = mode_to_pb(one.mode) as i32;
            message.scope = scope_to_pb(one.scope) as i32;
        }
        specs => {
            message.objects = specs
                .iter()
                .map(|spec| pb::ObjectSpec {
                    object: spec.object.to_string(),
                    mode: mode_to_pb(spec.mode) as i32,
                    scope: scope_to_pb(spec.scope) as i32,
                })
                .collect();
        }
    }
    Ok(message)
}

fn lock_refs(locks: &[(ObjectId, LockToken)]) -> Vec<pb::LockRef> {
    locks
        .iter()
        .map(|(object, token)| pb::LockRef {
            object: object.to_string(),
            token: token.expose().to_owned(),
        })
        .collect()
}

/// Pairs each answered entry with the lock it is about, in request order.
fn batch_results<R, T>(
    results: Vec<R>,
    locks: &[(ObjectId, LockToken)],
    read: impl Fn(R, &ObjectId) -> LockResult<T>,
) -> LockResult<Vec<LockResult<T>>> {
    if results.len() != locks.len() {
        return Err(LockError::Internal(format!(
            "lockd answered {} results for {} locks",
            results.len(),
            locks.len()
        )));
    }
    Ok(results
        .into_iter()
        .zip(locks)
        .map(|(result, (object, _))| read(result, object))
        .collect())
}

#[async_trait]
impl LockService for GrpcClient {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn acquire_with(&self, request: &lockcore::AcquireRequest) -> LockResult<Grant> {
        let mut request = request.clone();
        if request.request_id.is_none() {
            request.request_id = Some(RequestId::random());
        }
        if request.objects.is_empty() {
            return Err(LockError::invalid_argument(
                "objects",
                "must name 1 to 64 objects, not 0",
            ));
        }
        let message = acquire_message(&request)?;
        let timeout = self.request_timeout.saturating_add(request.wait);
        let take_back = TakeBack {
            client: self,
            message: Some(message.clone()),
        };
        let mut answer = self.send_acquire(message.clone(), timeout).await;
        if matches!(&answer, Err(LockError::Unavailable { cause, .. }) if !cause.starts_with(TIMED_OUT))
        {
            // The call failed before an answer: the same request id makes resending safe.
            tokio::time::sleep(ACQUIRE_RESEND_DELAY).await;
            answer = self.send_acquire(message, timeout).await;
        }
        let answer = answer?;
        // lockd answered: whatever it decided, the caller learns it here.
        take_back.disarm();
        let answer = answer
            .map_err(|status| lock_error_of(&status, Some(request.first_object()), BACKEND))?;
        convert::grant_from_pb(answer)
    }

    async fn release(&self, object: &ObjectId, token: &LockToken) -> LockResult<Fence> {
        let message = pb::ReleaseRequest {
            object: object.to_string(),
            token: token.expose().to_owned(),
            locks: Vec::new(),
        };
        let released = self
            .call_on(Some(object), self.send_release(message))
            .await?;
        Ok(Fence(released.fence))
    }

    async fn release_many(
        &self,
        locks: &[(ObjectId, LockToken)],
    ) -> LockResult<Vec<LockResult<Fence>>> {
        check_objects(locks.iter().map(|(object, _)| object))?;
        let message = pb::ReleaseRequest {
            locks: lock_refs(locks),
            ..pb::ReleaseRequest::default()
        };
        let answer = self
            .call_on(Some(&locks[0].0), self.send_release(message))
            .await?;
        batch_results(answer.results, locks, |result, object| match result.error {
            Some(error) => Err(lock_error_of_detail(error, Some(object), BACKEND)),
            None => Ok(Fence(result.fence)),
        })
    }

    async fn renew(
        &self,
        object: &ObjectId,
        token: &LockToken,
        ttl: Duration,
    ) -> LockResult<Lease> {
        let message = pb::RenewRequest {
            object: object.to_string(),
            token: token.expose().to_owned(),
            locks: Vec::new(),
            ttl_ms: ttl_millis(ttl)?,
        };
        let renewed = self.call_on(Some(object), self.send_renew(message)).await?;
        convert::lease_from_pb(pb::Lease {
            object: renewed.object,
            owner: renewed.owner,
            mode: renewed.mode,
            token: renewed.token,
            fence: renewed.fence,
            ttl_ms: renewed.ttl_ms,
            scope: pb::LockScope::Unspecified as i32,
        })
    }

    async fn renew_many(
        &self,
        locks: &[(ObjectId, LockToken)],
        ttl: Duration,
    ) -> LockResult<Vec<LockResult<Lease>>> {
        check_objects(locks.iter().map(|(object, _)| object))?;
        let message = pb::RenewRequest {
            locks: lock_refs(locks),
            ttl_ms: ttl_millis(ttl)?,
            ..pb::RenewRequest::default()
        };
        let answer = self
            .call_on(Some(&locks[0].0), self.send_renew(message))
            .await?;
        batch_results(answer.results, locks, |result, object| {
            match (result.error, result.lease) {
                (Some(error), _) => Err(lock_error_of_detail(error, Some(object), BACKEND)),
                (None, Some(lease)) => convert::lease_from_pb(lease),
                (None, None) => Err(LockError::Internal(format!(
                    "lockd answered neither a lease nor an error for {object}"
                ))),
            }
        })
    }

    async fn downgrade(&self, object: &ObjectId, token: &LockToken) -> LockResult<Lease> {
        let message = pb::DowngradeRequest {
            object: object.to_string(),
            token: token.expose().to_owned(),
        };
        let mut locks = self.raw();
        let downgraded = self
            .call_on(
                Some(object),
                locks.downgrade(self.request(message, self.request_timeout)),
            )
            .await?;
        convert::lease_from_pb(pb::Lease {
            object: downgraded.object,
            owner: downgraded.owner,
            mode: downgraded.mode,
            token: downgraded.token,
            fence: downgraded.fence,
            ttl_ms: downgraded.ttl_ms,
            scope: pb::LockScope::Unspecified as i32,
        })
    }

    async fn validate(&self, object: &ObjectId, token: &LockToken) -> LockResult<Lease> {
        let message = pb::ValidateRequest {
            object: object.to_string(),
            token: token.expose().to_owned(),
        };
        let mut locks = self.raw();
        let valid = self
            .call_on(
                Some(object),
                locks.validate(self.request(message, self.request_timeout)),
            )
            .await?;
        convert::lease_from_pb(pb::Lease {
            object: valid.object,
            owner: valid.owner,
            mode: valid.mode,
            token: token.expose().to_owned(),
            fence: valid.fence,
            ttl_ms: valid.ttl_ms,
            scope: pb::LockScope::Unspecified as i32,
        })
    }

    async fn inspect(&self, object: &ObjectId) -> LockResult<Option<LockInfo>> {
        let message = pb::InspectRequest {
            object: object.to_string(),
        };
        let mut locks = self.raw();
        let answer = self
            .call(
                self.request_timeout,
                locks.inspect(self.request(message, self.request_timeout)),
            )
            .await?;
        match answer {
            Ok(pb::InspectResponse { lock: Some(lock) }) => convert::lock_from_pb(lock).map(Some),
            Ok(pb::InspectResponse { lock: None }) => Err(LockError::Internal(
                "lockd answered Inspect without a lock".into(),
            )),
            Err(status)
                if status.code() == Code::NotFound
                    && detail_of(&status).is_some_and(|d| d.code == "not_found") =>
            {
                Ok(None)
            }
            Err(status) => Err(lock_error_of(&status, Some(object), BACKEND)),
        }
    }

    async fn list(&self, query: &ListQuery) -> LockResult<LockPage> {
        query.check()?;
        let message = pb::ListRequest {
            prefix: query.prefix.clone(),
            limit: u32::try_from(query.limit).unwrap_or(u32::MAX),
            after: query.after.clone().unwrap_or_default(),
        };
        let mut locks = self.raw();
        let page = self
            .call_on(
                None,
                locks.list(self.request(message, self.request_timeout)),
            )
            .await?;
        Ok(LockPage {
            locks: page
                .locks
                .into_iter()
                .map(convert::lock_from_pb)
                .collect::<LockResult<_>>()?,
            next: Some(page.next).filter(|next| !next.is_empty()),
        })
    }

    /// Asks the standard health service about `lockd.v1.Locks`: succeeds when lockd is up and
    /// its backend reachable.
    async fn health(&self) -> LockResult<()> {
        let message = tonic_health::pb::HealthCheckRequest {
            service: pb::locks_server::SERVICE_NAME.to_owned(),
        };
        let mut health = tonic_health::pb::health_client::HealthClient::new(self.channel().clone());
        let answer = self
            .call(
                self.request_timeout,
                health.check(self.request(message, self.request_timeout)),
            )
            .await?
            .map_err(|status| lock_error_of(&status, None, BACKEND))?;
        if answer.status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32 {
            Ok(())
        } else {
            Err(LockError::unavailable(
                BACKEND,
                "lockd is not ready (its health service says NOT_SERVING)",
            ))
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(raw: &str) -> Option<String> {
        endpoint_target(raw).ok().map(|target| target.uri)
    }

    #[test]
    fn urls_are_grpc_or_http_with_a_host_and_default_to_port_7071() {
        assert_eq!(
            uri("grpc://127.0.0.1").as_deref(),
            Some("http://127.0.0.1:7071")
        );
        assert_eq!(
            uri("grpc://lockd:9000/").as_deref(),
            Some("http://lockd:9000")
        );
        assert_eq!(
            uri("http://[::1]:7071").as_deref(),
            Some("http://[::1]:7071")
        );
        assert_eq!(
            endpoint_target("grpc://lockd")
                .ok()
                .and_then(|t| t.tls_server_name),
            None
        );
        for bad in [
            "redis://lockd",
            "grpc://",
            "grpc://user:pw@lockd",
            "grpc://lockd/prefix",
            "not a url",
        ] {
            assert!(
                matches!(
                    endpoint_target(bad),
                    Err(LockError::InvalidArgument { field: "url", .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn grpcs_urls_use_tls_with_the_host_as_server_name() {
        assert_eq!(
            endpoint_target("grpcs://locks.example").ok(),
            Some(Target {
                uri: "https://locks.example:7071".into(),
                tls_server_name: Some("locks.example".into()),
            })
        );
        assert_eq!(
            endpoint_target("https://[::1]:9000").ok(),
            Some(Target {
                uri: "https://[::1]:9000".into(),
                tls_server_name: Some("::1".into()),
            })
        );
        assert!(endpoint_target("grpcs://").is_err());
    }

    #[test]
    fn tls_files_are_checked_when_the_client_is_made() {
        let dir = std::env::temp_dir().join(format!("lockd-grpc-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let not_pem = dir.join("not.pem");
        std::fs::write(&not_pem, "nothing here").expect("write");
        let url = "grpcs://127.0.0.1:1";
        let field = |config: GrpcConfig| match GrpcClient::new(config) {
            Err(LockError::InvalidArgument { field, .. }) => Some(field),
            _ => None,
        };
        assert_eq!(
            field(GrpcConfig::from_url(url).with_ca_file(dir.join("missing.pem"))),
            Some("ca_file")
        );
        assert_eq!(
            field(GrpcConfig::from_url(url).with_ca_file(&not_pem)),
            Some("ca_file")
        );
        assert_eq!(
            field(GrpcConfig::from_url(url).with_client_cert(&not_pem, &not_pem)),
            Some("client_cert")
        );
        let mut half = GrpcConfig::from_url(url);
        half.client_cert = Some(not_pem.clone());
        assert_eq!(field(half), Some("client_key"));
        assert!(GrpcClient::new(GrpcConfig::from_url(url)).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn ttls_are_whole_milliseconds_and_waits_round_up() {
        assert_eq!(ttl_millis(Duration::from_millis(5)).ok(), Some(5));
        assert!(ttl_millis(Duration::from_micros(1500)).is_err());
        assert_eq!(ceil_millis(Duration::from_micros(1500)), 2);
        assert_eq!(ceil_millis(Duration::ZERO), 0);
    }

    #[test]
    fn api_keys_must_fit_in_metadata_and_never_show_in_debug() {
        let config = GrpcConfig::from_url("grpc://127.0.0.1:1").with_api_key("s3cret");
        assert!(!format!("{config:?}").contains("s3cret"));
        let client = GrpcClient::new(config).expect("valid");
        assert!(!format!("{client:?}").contains("s3cret"));
        let bad = GrpcConfig::from_url("grpc://127.0.0.1:1").with_api_key("line\nbreak");
        assert!(matches!(
            GrpcClient::new(bad),
            Err(LockError::InvalidArgument {
                field: "api_key",
                ..
            })
        ));
    }
}
