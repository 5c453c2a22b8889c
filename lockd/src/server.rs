//! Running the server: bind, serve, drain on shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use lockcore::{LockError, LockService, TokenIssuer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::api::{self, ApiKeys, AppState};
use crate::backend::{connect_backend, redact_url, BackendOptions};
use crate::config::ServerConfig;
use crate::connection::{self, Shared};
use crate::events::EventLog;
use crate::expiry::ExpiryTracker;
use crate::grpc::GrpcHooks;
use crate::limits::{Limit, Usage};
use crate::metrics::Metrics;
use crate::tls::{self, Certificates, TlsError, TlsReloader};

/// Longest wait at exit for the backend to take back grants of acquires that were cut off.
const RECLAIM_ON_EXIT: Duration = Duration::from_secs(5);

/// API keys shorter than this draw a warning at start.
const MIN_STRONG_KEY_LEN: usize = 16;

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The configuration is unsafe or inconsistent.
    #[error("{0}")]
    Config(String),
    /// The backend could not be set up.
    #[error("backend {url}: {source}")]
    Backend {
        /// The backend URL, password redacted.
        url: String,
        /// What failed.
        source: LockError,
    },
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What failed.
        source: std::io::Error,
    },
    /// The TLS certificate, key or client CA could not be loaded.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Serving failed.
    #[error("server error: {0}")]
    Io(#[from] std::io::Error),
    /// Requests were still in flight when the shutdown timeout ran out, and were cut off: their
    /// clients got no answer (an acquire among them may or may not have been granted).
    #[error("requests still in flight after the shutdown timeout ({timeout:?}) were cut off")]
    ShutdownCutOff {
        /// The shutdown timeout that ran out.
        timeout: Duration,
    },
}

/// A bound, not yet running lockd server.
///
/// ```no_run
/// # async fn demo() -> Result<(), lockd::ServerError> {
/// let mut config = lockd::ServerConfig::default();
/// config.listen = "127.0.0.1:0".parse().expect("valid address");
/// let server = lockd::Server::bind(config).await?;
/// println!("listening on {}", server.url());
/// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
/// let running = tokio::spawn(server.run_until(async { let _ = stopped.await; }));
/// // ... talk to it ...
/// let _ = stop.send(());
/// running.await.expect("server task")?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    service: Arc<dyn LockService>,
    tracker: Arc<ExpiryTracker>,
    shutdown: watch::Sender<bool>,
    config: ServerConfig,
    /// The gRPC listener and how its service is set up, when `grpc_listen` is on.
    grpc: Option<GrpcListener>,
}

/// The gRPC API's listener, its actual address and its service's options.
#[derive(Debug)]
struct GrpcListener {
    listener: TcpListener,
    local_addr: SocketAddr,
    options: lockd_grpc::GrpcOptions,
}

/// Refuses `addr` without authentication unless it is loopback or `--insecure-no-auth` is set:
/// the rule both listeners follow. Authentication is API keys, or client certificates (mutual
/// TLS, `--tls-client-ca`): every connection then presents one that the client CA issued.
fn check_listener_auth(
    config: &ServerConfig,
    addr: SocketAddr,
    what: &str,
    flag: &str,
) -> Result<(), ServerError> {
    let client_certificates = config
        .tls
        .as_ref()
        .is_some_and(|tls| tls.requires_client_certificates());
    if config.api_keys.is_empty() && !addr.ip().is_loopback() {
        if client_certificates {
            tracing::info!(
                listen = %addr,
                "{what} listening on a non-loopback address without API keys: clients \
                 authenticate with certificates from --tls-client-ca"
            );
        } else if config.insecure_no_auth {
            tracing::warn!(
                listen = %addr,
                "{what} listening on a non-loopback address WITHOUT authentication \
                 (--insecure-no-auth)"
            );
        } else {
            return Err(ServerError::Config(format!(
                "refusing to listen ({flag}) on non-loopback address {addr} without API keys: \
                 set --api-key (or LOCKD_API_KEYS), require client certificates \
                 (--tls-client-ca), or pass --insecure-no-auth"
            )));
        }
    }
    Ok(())
}

fn check_auth_policy(config: &ServerConfig) -> Result<(), ServerError> {
    check_listener_auth(config, config.listen, "HTTP", "--listen")?;
    if let Some(addr) = config.grpc_listen {
        check_listener_auth(config, addr, "gRPC", "--grpc-listen")?;
    }
    Ok(())
}

impl Server {
    /// Checks the configuration, connects the backend ([`connect_backend`]) and binds the
    /// listen address. Connections are queued from here on and served once [`Server::run_until`]
    /// runs.
    pub async fn bind(config: ServerConfig) -> Result<Self, ServerError> {
        check_auth_policy(&config)?;
        let issuer = match &config.token_secret {
            Some(secret) => TokenIssuer::new(secret.clone()),
            None => {
                tracing::warn!(
                    "no token secret configured (--token-secret-file or LOCKD_TOKEN_SECRET): \
                     using a random one, so tokens die with this process (fine for memory://); \
                     several lockd processes sharing Redis or Postgres need the same secret, \
                     or DFS nodes verifying tokens offline refuse some of them"
                );
                TokenIssuer::random()
            }
        };
        let mut options = BackendOptions::new(issuer).with_limits(config.limits);
        if let Some(dir) = &config.data_dir {
            options = options.with_data_dir(dir.clone());
        }
        let service = connect_backend(&config.backend, &options)
            .await
            .map_err(|source| ServerError::Backend {
                url: redact_url(&config.backend),
                source,
            })?;
        if service.backend() != "memory" && config.data_dir.is_some() {
            tracing::warn!(
                backend = service.backend(),
                "--data-dir is only used by memory:// and is ignored here (this backend keeps \
                 its locks across lockd restarts itself)"
            );
        }
        if service.backend() == "memory" && config.data_dir.is_none() {
            tracing::info!(
                "memory:// without --data-dir: locks are lost on restart and grants start at \
                 once after it (set --data-dir for restart protection)"
            );
        }
        Self::bind_with_service(config, service).await
    }

    /// Like [`Server::bind`], serving an existing lock service (the `backend` URL, token secret
    /// and data dir of `config` are then unused).
    pub async fn bind_with_service(
        config: ServerConfig,
        service: Arc<dyn LockService>,
    ) -> Result<Self, ServerError> {
        check_auth_policy(&config)?;
        if config.api_keys.iter().any(|k| k.len() < MIN_STRONG_KEY_LEN) {
            tracing::warn!(
                "an API key is shorter than {MIN_STRONG_KEY_LEN} characters: use long random keys"
            );
        }
        let tls = match &config.tls {
            Some(files) => Some(Arc::new(Certificates::load(files.clone())?)),
            None => None,
        };
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ServerError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let local_addr = listener.local_addr()?;
        let grpc_listener = match config.grpc_listen {
            Some(addr) => {
                let listener = TcpListener::bind(addr)
                    .await
                    .map_err(|source| ServerError::Bind { addr, source })?;
                let local_addr = listener.local_addr()?;
                Some((listener, local_addr))
            }
            None => None,
        };
        let metrics = Arc::new(Metrics::with_prefix_depth(config.metrics_prefix_depth));
        let events = Arc::new(EventLog::starting_now(config.events_capacity));
        let tracker = Arc::new(ExpiryTracker::new(events.clone(), metrics.clone()));
        if tracker.use_reports_of(service.as_ref()) {
            tracing::debug!("the backend reports releases and expiries: no lease is tracked here");
        }
        // `wanted` notices and the contention metrics come from the service's wait reports.
        if !crate::events::follow_waits(service.as_ref(), events.clone(), metrics.clone()) {
            tracing::warn!(
                backend = service.backend(),
                "the lock service does not report waits to this server (a remote service, or \
                 one already serving another server): no `wanted` events, no contention metrics"
            );
        }
        let (shutdown, shutdown_rx) = watch::channel(false);
        let usage = Usage::new(config.caps, metrics.clone());
        let state = AppState {
            service: service.clone(),
            events,
            metrics,
            tracker: tracker.clone(),
            keys: Arc::new(ApiKeys::new(&config.api_keys)),
            shutdown: shutdown_rx,
            max_body_bytes: config.max_body_bytes,
            usage: usage.clone(),
            default_lock_delay: config.default_lock_delay,
        };
        let grpc = grpc_listener.map(|(listener, local_addr)| GrpcListener {
            listener,
            local_addr,
            options: lockd_grpc::GrpcOptions::default()
                // The same keys, kept as the same digests, as HTTP's.
                .with_auth(lockd_grpc::Auth::api_keys(&config.api_keys))
                .with_hooks(Arc::new(GrpcHooks {
                    state: state.clone(),
                }))
                .with_max_message_bytes(config.max_body_bytes)
                .with_default_lock_delay(config.default_lock_delay)
                .with_shutdown(state.shutdown.clone()),
        });
        let metrics = state.metrics.clone();
        let shared = Arc::new(Shared {
            router: api::router(state),
            usage,
            metrics,
            request_read_timeout: config.request_read_timeout,
            idle_timeout: config.idle_timeout,
            refusing: AtomicUsize::new(0),
            tls,
        });
        Ok(Self {
            listener,
            local_addr,
            shared,
            service,
            tracker,
            shutdown,
            config,
            grpc,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The server's base URL, `http://IP:PORT` (`https://` with TLS).
    pub fn url(&self) -> String {
        let scheme = if self.shared.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.local_addr)
    }

    /// Reloads the TLS certificate, key and client CA from their files, for new connections
    /// (`lockd serve` does it on SIGHUP); `None` without TLS. Valid while the server runs.
    pub fn tls_reloader(&self) -> Option<TlsReloader> {
        self.shared.tls.clone().map(TlsReloader)
    }

    /// The address the gRPC API actually bound, when [`ServerConfig::grpc_listen`] is set.
    pub fn grpc_local_addr(&self) -> Option<SocketAddr> {
        self.grpc.as_ref().map(|grpc| grpc.local_addr)
    }

    /// The gRPC API's URL, `grpc://IP:PORT` (`grpcs://` with TLS; what lockd-client and
    /// `connect_backend` take), when [`ServerConfig::grpc_listen`] is set.
    pub fn grpc_url(&self) -> Option<String> {
        let scheme = if self.shared.tls.is_some() {
            "grpcs"
        } else {
            "grpc"
        };
        self.grpc_local_addr()
            .map(|addr| format!("{scheme}://{addr}"))
    }

    /// Serves until `shutdown` completes, then stops accepting connections, ends event streams,
    /// closes connections with nothing in progress, and waits up to
    /// [`ServerConfig::shutdown_timeout`] for requests in flight to finish. Fails with
    /// [`ServerError::ShutdownCutOff`] if it had to cut some off.
    ///
    /// Each connection is served over HTTP/1.1 with the read and idle timeouts and the caps of
    /// the configuration (see the `connection` module); a connection over
    /// `--max-connections` gets one `503` and is closed.
    ///
    /// With [`ServerConfig::grpc_listen`], the gRPC API is served beside it over the same
    /// backend, caps, metrics and event log, and stopped the same way: no new calls, `Events`
    /// streams ended, calls in flight finished within the same shutdown timeout.
    pub async fn run_until<F>(self, shutdown: F) -> Result<(), ServerError>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let Server {
            listener,
            local_addr,
            shared,
            service,
            tracker,
            shutdown: stop,
            config,
            grpc,
        } = self;
        tracing::info!(
            listen = %local_addr,
            backend = service.backend(),
            auth = !config.api_keys.is_empty(),
            tls = shared.tls.is_some(),
            client_certificates = shared
                .tls
                .as_ref()
                .is_some_and(|tls| tls.requires_client_certificates()),
            "lockd serving"
        );
        let expiries = tokio::spawn(tracker.run(service.clone()));
        let stopping = stop.subscribe();
        let stop_signal = tokio::spawn(async move {
            shutdown.await;
            tracing::info!("shutting down: finishing requests in flight");
            stop.send_replace(true);
            // Kept until the server is done, so connections see `true`, not a closed channel.
            stop
        });
        // The gRPC API: the same backend, caps, metrics and event log; it stops accepting calls
        // when `stop` flips and waits for those in flight, as the HTTP side does below.
        let mut grpc_task = grpc.map(|grpc| {
            tracing::info!(listen = %grpc.local_addr, "lockd serving gRPC");
            let mut stopped = stopping.clone();
            let incoming = accept_grpc(grpc.listener, Arc::clone(&shared), stopping.clone());
            tokio::spawn(lockd_grpc::serve_incoming(
                incoming,
                service.clone(),
                grpc.options,
                async move {
                    drop(stopped.wait_for(|stopped| *stopped).await);
                },
            ))
        });
        let mut connections = JoinSet::new();
        let mut accepting = stopping.clone();
        loop {
            tokio::select! {
                () = async { drop(accepting.wait_for(|stopped| *stopped).await) } => break,
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                accepted = listener.accept() => match accepted {
                    Ok((stream, _peer)) => {
                        // Lock requests are small and latency-bound: no Nagle delay on responses.
                        if let Err(e) = stream.set_nodelay(true) {
                            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                        }
                        match shared.usage.take(Limit::Connections) {
                            Ok(slot) => {
                                connections.spawn(connection::serve(
                                    stream,
                                    Arc::clone(&shared),
                                    slot,
                                    stopping.clone(),
                                ));
                            }
                            Err(refused) => connection::refuse(stream, refused, &shared),
                        }
                    }
                    Err(e) => {
                        // Out of file descriptors or memory, or a connection that failed
                        // before it was accepted: log, pause a moment, keep serving.
                        tracing::warn!(error = %e, "cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
        drop(listener);
        let drained = async {
            while connections.join_next().await.is_some() {}
            if let Some(task) = grpc_task.as_mut() {
                log_grpc_end(task.await);
            }
        };
        let result = match tokio::time::timeout(config.shutdown_timeout, drained).await {
            Ok(()) => Ok(()),
            Err(_) => {
                // Cut off: dropping their requests drops acquires in flight, which the backend
                // takes back (below). Wait until every connection task has really ended.
                connections.abort_all();
                while connections.join_next().await.is_some() {}
                if let Some(task) = grpc_task.take() {
                    task.abort();
                    log_grpc_end(task.await);
                }
                Err(ServerError::ShutdownCutOff {
                    timeout: config.shutdown_timeout,
                })
            }
        };
        stop_signal.abort();
        expiries.abort();
        // Acquires cut off above may have been granted with nobody to receive the token: the
        // backend takes such grants back in the background; let it finish before exiting.
        if !service.close(RECLAIM_ON_EXIT).await {
            tracing::warn!(
                "some grants whose acquire was cut off could not be taken back in {:?}; they \
                 expire with their leases",
                RECLAIM_ON_EXIT
            );
        }
        drop(service);
        tracing::info!("lockd stopped");
        result
    }
}

/// Logs how the gRPC server task ended, if not cleanly.
fn log_grpc_end(ended: Result<Result<(), lockd_grpc::ServeError>, tokio::task::JoinError>) {
    match ended {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "the gRPC server failed"),
        Err(e) if e.is_cancelled() => {}
        Err(e) => tracing::error!(error = %e, "the gRPC server task panicked"),
    }
}

/// Accepts gRPC connections on `listener` until the server stops, each holding a unit of
/// `--max-connections` (shared with HTTP) for as long as it is open: a connection over the cap
/// is closed at once (counted in `lockd_limit_refusals_total{limit="connections"}`). With TLS,
/// each connection is handshaken in a task of its own (within the request read timeout) before
/// tonic gets it, so a slow client holds up no other.
fn accept_grpc(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stopping: watch::Receiver<bool>,
) -> tokio_stream::wrappers::ReceiverStream<Result<CountedStream, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = async { drop(stopping.wait_for(|stopped| *stopped).await) } => return,
                () = tx.closed() => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _peer)) => {
                        if let Err(e) = stream.set_nodelay(true) {
                            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                        }
                        match shared.usage.take(Limit::Connections) {
                            Ok(slot) => match &shared.tls {
                                None => {
                                    let counted = CountedStream {
                                        stream: GrpcStream::Plain(stream),
                                        _slot: slot,
                                    };
                                    if tx.send(Ok(counted)).await.is_err() {
                                        return;
                                    }
                                }
                                Some(certificates) => {
                                    tokio::spawn(handshake_grpc(
                                        stream,
                                        slot,
                                        certificates.grpc(),
                                        shared.request_read_timeout,
                                        tx.clone(),
                                    ));
                                }
                            },
                            Err(refused) => {
                                tracing::debug!(%refused, "closed a gRPC connection over the cap");
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot accept a gRPC connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Runs the TLS handshake of an accepted gRPC connection, within `timeout`, and hands the
/// connection to tonic; a failed or late handshake closes it (its slot given back).
async fn handshake_grpc(
    stream: tokio::net::TcpStream,
    slot: crate::limits::Slot,
    acceptor: tokio_rustls::TlsAcceptor,
    timeout: Duration,
    tx: tokio::sync::mpsc::Sender<Result<CountedStream, std::io::Error>>,
) {
    let peer = stream.peer_addr().ok();
    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => {
            let counted = CountedStream {
                stream: GrpcStream::Tls(Box::new(stream)),
                _slot: slot,
            };
            // Fails only once the server stopped: the connection is then closed.
            let _ = tx.send(Ok(counted)).await;
        }
        Ok(Err(e)) => tls::log_handshake_failure(&e, peer, "grpc"),
        Err(_) => {
            tracing::debug!(peer = ?peer, "closed a gRPC connection whose TLS handshake was late")
        }
    }
}

/// An accepted gRPC connection and its unit of `--max-connections`, given back when tonic
/// drops the connection.
#[derive(Debug)]
struct CountedStream {
    stream: GrpcStream,
    _slot: crate::limits::Slot,
}

/// A gRPC connection's stream: TCP, or TLS over TCP.
#[derive(Debug)]
enum GrpcStream {
    Plain(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>),
}

impl GrpcStream {
    fn tcp(&self) -> &tokio::net::TcpStream {
        match self {
            GrpcStream::Plain(stream) => stream,
            GrpcStream::Tls(stream) => stream.get_ref().0,
        }
    }
}

/// Forwards an I/O call to the stream inside a [`GrpcStream`].
macro_rules! forward {
    ($this:expr, $stream:ident => $call:expr) => {
        match $this {
            GrpcStream::Plain($stream) => $call,
            GrpcStream::Tls($stream) => $call,
        }
    };
}

impl tokio::io::AsyncRead for GrpcStream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        forward!(self.get_mut(), s => std::pin::Pin::new(s).poll_read(cx, buf))
    }
}

impl tokio::io::AsyncWrite for GrpcStream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        forward!(self.get_mut(), s => std::pin::Pin::new(s).poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        forward!(self.get_mut(), s => std::pin::Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        forward!(self, s => s.is_write_vectored())
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        forward!(self.get_mut(), s => std::pin::Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        forward!(self.get_mut(), s => std::pin::Pin::new(s).poll_shutdown(cx))
    }
}

impl tokio::io::AsyncRead for CountedStream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for CountedStream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for CountedStream {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.tcp().connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::TlsConfig;

    fn config_on(listen: &str) -> ServerConfig {
        ServerConfig {
            listen: listen.parse().expect("address"),
            ..ServerConfig::default()
        }
    }

    /// Without API keys, a non-loopback listener needs client certificates (or the explicit
    /// opt-out): a verified client certificate is authentication, TLS alone is not.
    #[test]
    fn client_certificates_count_as_authentication_for_non_loopback_listeners() {
        let open = config_on("192.0.2.1:7070");
        let err = check_auth_policy(&open).expect_err("no authentication");
        assert!(err.to_string().contains("--tls-client-ca"), "{err}");

        let tls_only = ServerConfig {
            tls: Some(TlsConfig::new("cert.pem", "key.pem")),
            ..open.clone()
        };
        assert!(check_auth_policy(&tls_only).is_err());

        let mutual = ServerConfig {
            tls: Some(TlsConfig::new("cert.pem", "key.pem").with_client_ca("ca.pem")),
            ..open.clone()
        };
        assert!(check_auth_policy(&mutual).is_ok());

        let grpc_open = ServerConfig {
            grpc_listen: Some("192.0.2.1:7071".parse().expect("address")),
            ..config_on("127.0.0.1:7070")
        };
        assert!(check_auth_policy(&grpc_open).is_err());
        let grpc_mutual = ServerConfig {
            tls: Some(TlsConfig::new("cert.pem", "key.pem").with_client_ca("ca.pem")),
            ..grpc_open
        };
        assert!(check_auth_policy(&grpc_mutual).is_ok());

        let keys = ServerConfig {
            api_keys: vec!["a-long-enough-api-key".into()],
            ..open
        };
        assert!(check_auth_policy(&keys).is_ok());
        assert!(check_auth_policy(&config_on("127.0.0.1:7070")).is_ok());
    }
}
