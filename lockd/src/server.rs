//! Running the server: bind, serve, drain on shutdown.

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use lockcore::{LockError, LockService, TokenIssuer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::{self, ApiKeys, AppState};
use crate::backend::{connect_backend, redact_url, BackendOptions};
use crate::config::ServerConfig;
use crate::events::EventLog;
use crate::expiry::ExpiryTracker;
use crate::metrics::Metrics;

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
    router: axum::Router,
    service: Arc<dyn LockService>,
    tracker: Arc<ExpiryTracker>,
    shutdown: watch::Sender<bool>,
    config: ServerConfig,
}

fn check_auth_policy(config: &ServerConfig) -> Result<(), ServerError> {
    if config.api_keys.is_empty() && !config.listen.ip().is_loopback() {
        if config.insecure_no_auth {
            tracing::warn!(
                listen = %config.listen,
                "listening on a non-loopback address WITHOUT authentication (--insecure-no-auth)"
            );
        } else {
            return Err(ServerError::Config(format!(
                "refusing to listen on non-loopback address {} without API keys: set --api-key \
                 (or LOCKD_API_KEYS), or pass --insecure-no-auth",
                config.listen
            )));
        }
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
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ServerError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let local_addr = listener.local_addr()?;
        let metrics = Arc::new(Metrics::new());
        let events = Arc::new(EventLog::starting_now(config.events_capacity));
        let tracker = Arc::new(ExpiryTracker::new(events.clone(), metrics.clone()));
        let (shutdown, shutdown_rx) = watch::channel(false);
        let state = AppState {
            service: service.clone(),
            events,
            metrics,
            tracker: tracker.clone(),
            keys: Arc::new(ApiKeys::new(&config.api_keys)),
            shutdown: shutdown_rx,
            max_body_bytes: config.max_body_bytes,
        };
        let router = api::router(state);
        Ok(Self {
            listener,
            local_addr,
            router,
            service,
            tracker,
            shutdown,
            config,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The server's base URL, `http://IP:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.local_addr)
    }

    /// Serves until `shutdown` completes, then stops accepting connections, ends event streams,
    /// and waits up to [`ServerConfig::shutdown_timeout`] for requests in flight to finish.
    /// Fails with [`ServerError::ShutdownCutOff`] if it had to cut some off.
    pub async fn run_until<F>(self, shutdown: F) -> Result<(), ServerError>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let Server {
            listener,
            local_addr,
            router,
            service,
            tracker,
            shutdown: stop,
            config,
        } = self;
        tracing::info!(
            listen = %local_addr,
            backend = service.backend(),
            auth = !config.api_keys.is_empty(),
            "lockd serving"
        );
        let expiries = tokio::spawn(tracker.run(service.clone()));
        let mut stopping = stop.subscribe();
        let stop_signal = async move {
            shutdown.await;
            tracing::info!("shutting down: finishing requests in flight");
            stop.send_replace(true);
        };
        // Lock requests are small and latency-bound: no Nagle delay on responses.
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
        });
        let serve = axum::serve(listener, router).with_graceful_shutdown(stop_signal);
        let deadline = async {
            let _ = stopping.wait_for(|stopped| *stopped).await;
            tokio::time::sleep(config.shutdown_timeout).await;
        };
        let result = tokio::select! {
            result = serve.into_future() => result.map_err(ServerError::from),
            () = deadline => Err(ServerError::ShutdownCutOff {
                timeout: config.shutdown_timeout,
            }),
        };
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
