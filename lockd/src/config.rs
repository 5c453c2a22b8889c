//! Configuration: a TOML file (`--config`), overridden by `LOCKD_*` environment variables,
//! overridden by command-line flags.
//!
//! [`ServeArgs`] is the `lockd serve` command line (each flag also reads its environment
//! variable); [`FileConfig`] is the file; [`ServeArgs::resolve`] merges them into a
//! [`ServerConfig`], failing with one clear [`ConfigError`] line on anything missing or wrong.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lockcore::{Limits, TokenSecret, MAX_LOCK_DELAY};
use serde::Deserialize;

use crate::limits::Caps;
use crate::tls::TlsConfig;

/// Default listen address: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7070";
/// Default gRPC listen address (`lockd serve`): loopback only.
pub const DEFAULT_GRPC_LISTEN: &str = "127.0.0.1:7071";
/// Default backend.
pub const DEFAULT_BACKEND: &str = "memory://";
/// Default request body limit in bytes.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;
/// Default number of events kept in the ring.
pub const DEFAULT_EVENTS_CAPACITY: usize = 10_000;
/// Default time allowed to finish requests in flight at shutdown.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time a client has to send a whole request (headers and body) once it started one.
pub const DEFAULT_REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time a kept-alive connection may sit without a request before it is closed.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default caps on connections, requests in flight, blocking waiters and event streams.
pub const DEFAULT_CAPS: Caps = Caps {
    max_connections: 10_000,
    max_in_flight: 4_096,
    max_waiters: 1_024,
    max_event_streams: 256,
};

/// A configuration problem, reported as one line before the server starts.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl ConfigError {
    fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// The server's resolved configuration.
///
/// Start from [`ServerConfig::default`] (loopback `127.0.0.1:7070`, `memory://`, no API keys, a
/// random token secret) and set fields; `Debug` hides the API keys and the secret.
#[derive(Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Address to listen on (`127.0.0.1:0` picks a free port).
    pub listen: SocketAddr,
    /// Address of the gRPC API (`lockd.v1.Locks`), served by the same process over the same
    /// backend; `None`: no gRPC listener. `lockd serve` defaults to `127.0.0.1:7071`
    /// ([`DEFAULT_GRPC_LISTEN`]); [`ServerConfig::default`] leaves it off, so a program that
    /// embeds the server does not take a second fixed port unless it asks for one.
    pub grpc_listen: Option<SocketAddr>,
    /// Backend URL, see [`connect_backend`](crate::connect_backend).
    pub backend: String,
    /// Accepted API keys; empty means no authentication (refused on non-loopback addresses
    /// unless [`ServerConfig::insecure_no_auth`]).
    pub api_keys: Vec<String>,
    /// Secret tokens are signed with; `None` makes a random one (tokens then die with the
    /// process, and lockd processes sharing a backend refuse each other's tokens).
    pub token_secret: Option<TokenSecret>,
    /// Longest TTL and wait accepted.
    pub limits: Limits,
    /// Largest request body accepted, in bytes (larger: `413 payload_too_large`).
    pub max_body_bytes: usize,
    /// How many events the event ring keeps.
    pub events_capacity: usize,
    /// Path segments of an object that name its prefix in the contention metrics (`/vol/a/x/y`
    /// counts under `/vol/a` at 2, the default); 1 to [`lockcore::MAX_OBJECT_DEPTH`].
    pub metrics_prefix_depth: usize,
    /// Where `memory://` keeps its restart state; `None`: no restart protection.
    pub data_dir: Option<PathBuf>,
    /// Allows listening on a non-loopback address without API keys.
    pub insecure_no_auth: bool,
    /// TLS on both listeners (`https://`, `grpcs://`); `None`: plaintext. With a client CA,
    /// clients must present a certificate it issued, which counts as authentication for the
    /// non-loopback rule.
    pub tls: Option<TlsConfig>,
    /// How long shutdown waits for requests in flight.
    pub shutdown_timeout: Duration,
    /// Time a client has, from the first byte of a request, to send its headers, and, from the
    /// end of its headers, to send its body; a connection that misses it is closed.
    pub request_read_timeout: Duration,
    /// Time a kept-alive connection may sit with no request before it is closed.
    pub idle_timeout: Duration,
    /// Caps on connections, requests in flight, blocking waiters and event streams.
    pub caps: Caps,
    /// The lock-delay of an acquire that does not give one (`lock_delay_ms` on HTTP and gRPC),
    /// at most [`MAX_LOCK_DELAY`]; zero (the default) frees an expired lease's objects at
    /// once. A backend without lock-delay support refuses every acquire given a non-zero one.
    pub default_lock_delay: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            grpc_listen: None,
            backend: DEFAULT_BACKEND.to_owned(),
            api_keys: Vec::new(),
            token_secret: None,
            limits: Limits::default(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            events_capacity: DEFAULT_EVENTS_CAPACITY,
            metrics_prefix_depth: crate::metrics::DEFAULT_METRICS_PREFIX_DEPTH,
            data_dir: None,
            insecure_no_auth: false,
            tls: None,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            request_read_timeout: DEFAULT_REQUEST_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            caps: DEFAULT_CAPS,
            default_lock_delay: Duration::ZERO,
        }
    }
}

impl fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerConfig")
            .field("listen", &self.listen)
            .field("grpc_listen", &self.grpc_listen)
            .field("backend", &crate::backend::redact_url(&self.backend))
            .field(
                "api_keys",
                &format_args!("<{} redacted>", self.api_keys.len()),
            )
            .field(
                "token_secret",
                &self.token_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("limits", &self.limits)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("events_capacity", &self.events_capacity)
            .field("metrics_prefix_depth", &self.metrics_prefix_depth)
            .field("data_dir", &self.data_dir)
            .field("insecure_no_auth", &self.insecure_no_auth)
            .field("tls", &self.tls)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("request_read_timeout", &self.request_read_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("caps", &self.caps)
            .field("default_lock_delay", &self.default_lock_delay)
            .finish()
    }
}

/// The configuration file (TOML). Every key is optional; unknown keys are refused.
///
/// ```toml
/// listen = "127.0.0.1:7070"
/// grpc_listen = "127.0.0.1:7071"   # or "off"
/// backend = "memory://"
/// api_keys = ["change-me"]
/// token_secret_file = "/etc/lockd/token-secret"
/// max_ttl = "24h"
/// max_wait = "5m"
/// max_body_bytes = 65536
/// events_capacity = 10000
/// metrics_prefix_depth = 2
/// data_dir = "/var/lib/lockd"
/// insecure_no_auth = false
/// tls_cert = "/etc/lockd/tls/cert.pem"
/// tls_key = "/etc/lockd/tls/key.pem"
/// tls_client_ca = "/etc/lockd/tls/clients-ca.pem"
/// shutdown_timeout = "10s"
/// request_read_timeout = "10s"
/// idle_timeout = "60s"
/// max_connections = 10000
/// max_in_flight = 4096
/// max_waiters = 1024
/// max_event_streams = 256
/// default_lock_delay = "0s"
/// log = "info"
/// ```
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct FileConfig {
    /// `--listen`.
    pub listen: Option<String>,
    /// `--grpc-listen` (`"off"`: no gRPC listener).
    pub grpc_listen: Option<String>,
    /// `--backend`.
    pub backend: Option<String>,
    /// `--api-key` (all of them).
    pub api_keys: Option<Vec<String>>,
    /// `--token-secret-file`.
    pub token_secret_file: Option<PathBuf>,
    /// `--max-ttl`, e.g. `"24h"`.
    pub max_ttl: Option<String>,
    /// `--max-wait`, e.g. `"5m"`.
    pub max_wait: Option<String>,
    /// `--max-body-bytes`.
    pub max_body_bytes: Option<usize>,
    /// `--events-capacity`.
    pub events_capacity: Option<usize>,
    /// `--metrics-prefix-depth`.
    pub metrics_prefix_depth: Option<usize>,
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--insecure-no-auth`.
    pub insecure_no_auth: Option<bool>,
    /// `--tls-cert`.
    pub tls_cert: Option<PathBuf>,
    /// `--tls-key`.
    pub tls_key: Option<PathBuf>,
    /// `--tls-client-ca`.
    pub tls_client_ca: Option<PathBuf>,
    /// `--shutdown-timeout`, e.g. `"10s"`.
    pub shutdown_timeout: Option<String>,
    /// `--request-read-timeout`, e.g. `"10s"`.
    pub request_read_timeout: Option<String>,
    /// `--idle-timeout`, e.g. `"60s"`.
    pub idle_timeout: Option<String>,
    /// `--max-connections`.
    pub max_connections: Option<usize>,
    /// `--max-in-flight`.
    pub max_in_flight: Option<usize>,
    /// `--max-waiters`.
    pub max_waiters: Option<usize>,
    /// `--max-event-streams`.
    pub max_event_streams: Option<usize>,
    /// `--default-lock-delay`, e.g. `"5s"`.
    pub default_lock_delay: Option<String>,
    /// `--log`, a tracing filter such as `info` or `lockd=debug`.
    pub log: Option<String>,
}

impl FileConfig {
    /// Reads and parses a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(format!("cannot read config file {}: {e}", path.display()))
        })?;
        toml::from_str(&text).map_err(|e| {
            let detail = e.to_string().replace('\n', " ");
            ConfigError::new(format!(
                "config file {} is invalid: {}",
                path.display(),
                detail.split_whitespace().collect::<Vec<_>>().join(" ")
            ))
        })
    }
}

/// `lockd serve`: every flag also reads the `LOCKD_*` variable named in its help.
#[derive(Debug, Default, Clone, clap::Args)]
#[non_exhaustive]
pub struct ServeArgs {
    /// TOML configuration file (overridden by environment and flags).
    #[arg(long, env = "LOCKD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:7070].
    #[arg(long, env = "LOCKD_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// Address of the gRPC API, or `off` [default: 127.0.0.1:7071].
    #[arg(long, env = "LOCKD_GRPC_LISTEN", value_name = "ADDR|off")]
    pub grpc_listen: Option<String>,
    /// Backend URL: memory://, redis://..., rediss://..., postgres://... [default: memory://].
    #[arg(
        long,
        env = "LOCKD_BACKEND",
        value_name = "URL",
        hide_env_values = true
    )]
    pub backend: Option<String>,
    /// An accepted API key (repeatable; env: comma-separated).
    #[arg(
        long = "api-key",
        env = "LOCKD_API_KEYS",
        value_name = "KEY",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_keys: Vec<String>,
    /// File holding the token secret (at least 32 bytes; env LOCKD_TOKEN_SECRET gives the
    /// secret itself).
    #[arg(long, env = "LOCKD_TOKEN_SECRET_FILE", value_name = "FILE")]
    pub token_secret_file: Option<PathBuf>,
    /// Longest lease granted, e.g. 30s, 1h [default: 24h].
    #[arg(long, env = "LOCKD_MAX_TTL", value_name = "DURATION")]
    pub max_ttl: Option<String>,
    /// Longest a blocking acquire may wait [default: 5m].
    #[arg(long, env = "LOCKD_MAX_WAIT", value_name = "DURATION")]
    pub max_wait: Option<String>,
    /// Largest request body accepted, in bytes [default: 65536].
    #[arg(long, env = "LOCKD_MAX_BODY_BYTES", value_name = "BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Events kept for GET /v1/events [default: 10000].
    #[arg(long, env = "LOCKD_EVENTS_CAPACITY", value_name = "N")]
    pub events_capacity: Option<usize>,
    /// Path segments naming an object's prefix in the contention metrics: at 2, /vol/a/x/y
    /// counts under /vol/a [default: 2].
    #[arg(long, env = "LOCKD_METRICS_PREFIX_DEPTH", value_name = "N")]
    pub metrics_prefix_depth: Option<usize>,
    /// Directory for memory://'s restart state (no restart protection without it).
    #[arg(long, env = "LOCKD_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Allow a non-loopback listen address without API keys.
    #[arg(long, env = "LOCKD_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,
    /// Serve TLS on both listeners with this PEM certificate chain (reloaded on SIGHUP; needs
    /// --tls-key).
    #[arg(long, env = "LOCKD_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "LOCKD_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Require client certificates issued by the CAs in this PEM file (mutual TLS; needs
    /// --tls-cert). A verified certificate counts as authentication on non-loopback addresses.
    #[arg(long, env = "LOCKD_TLS_CLIENT_CA", value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,
    /// Time allowed to finish requests in flight at shutdown [default: 10s].
    #[arg(long, env = "LOCKD_SHUTDOWN_TIMEOUT", value_name = "DURATION")]
    pub shutdown_timeout: Option<String>,
    /// Time a client has to send a request's headers (from its first byte) and its body (from
    /// the end of the headers); slower connections are closed [default: 10s].
    #[arg(long, env = "LOCKD_REQUEST_READ_TIMEOUT", value_name = "DURATION")]
    pub request_read_timeout: Option<String>,
    /// Time a kept-alive connection may sit without a request before it is closed
    /// [default: 60s].
    #[arg(long, env = "LOCKD_IDLE_TIMEOUT", value_name = "DURATION")]
    pub idle_timeout: Option<String>,
    /// Open connections accepted; more get one 503 and are closed [default: 10000].
    #[arg(long, env = "LOCKD_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
    /// /v1 requests handled at once; more get 503 [default: 4096].
    #[arg(long, env = "LOCKD_MAX_IN_FLIGHT", value_name = "N")]
    pub max_in_flight: Option<usize>,
    /// Blocking acquires (wait_ms > 0) waiting at once; more get 503 [default: 1024].
    #[arg(long, env = "LOCKD_MAX_WAITERS", value_name = "N")]
    pub max_waiters: Option<usize>,
    /// Event streams (GET /v1/events/stream) open at once; more get 503 [default: 256].
    #[arg(long, env = "LOCKD_MAX_EVENT_STREAMS", value_name = "N")]
    pub max_event_streams: Option<usize>,
    /// Lock-delay of acquires that do not give `lock_delay_ms`: after a lease expires (its
    /// holder vanished), nothing conflicting is granted for this long, 0 to 60s [default: 0s].
    #[arg(long, env = "LOCKD_DEFAULT_LOCK_DELAY", value_name = "DURATION")]
    pub default_lock_delay: Option<String>,
    /// Log filter (tracing syntax), e.g. info, lockd=debug [default: info].
    #[arg(long, env = "LOCKD_LOG", value_name = "FILTER")]
    pub log: Option<String>,
}

fn duration(name: &str, text: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        ConfigError::new(format!(
            "{name} `{text}` is not a duration ({e}); use e.g. 500ms, 30s, 5m, 24h"
        ))
    })
}

/// A duration that must not be zero.
fn positive_duration(name: &str, text: &str) -> Result<Duration, ConfigError> {
    let value = duration(name, text)?;
    if value < Duration::from_millis(1) {
        return Err(ConfigError::new(format!("{name} must be at least 1ms")));
    }
    Ok(value)
}

/// A cap that must be at least 1.
fn cap(
    name: &str,
    flag: Option<usize>,
    file: Option<usize>,
    default: usize,
) -> Result<usize, ConfigError> {
    let value = flag.or(file).unwrap_or(default);
    if value == 0 {
        return Err(ConfigError::new(format!("{name} must be at least 1")));
    }
    Ok(value)
}

/// TLS from its three settings: a certificate and its key together, a client CA only with
/// them. The files are read when the server starts.
fn tls_config(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
) -> Result<Option<TlsConfig>, ConfigError> {
    match (cert, key) {
        (Some(cert), Some(key)) => {
            let tls = TlsConfig::new(cert, key);
            Ok(Some(match client_ca {
                Some(ca) => tls.with_client_ca(ca),
                None => tls,
            }))
        }
        (None, None) if client_ca.is_some() => Err(ConfigError::new(
            "tls_client_ca needs tls_cert and tls_key: client certificates are checked over TLS",
        )),
        (None, None) => Ok(None),
        (Some(_), None) => Err(ConfigError::new("tls_cert needs tls_key (its private key)")),
        (None, Some(_)) => Err(ConfigError::new("tls_key needs tls_cert (its certificate)")),
    }
}

fn read_secret_file(path: &Path) -> Result<TokenSecret, ConfigError> {
    let bytes = std::fs::read(path).map_err(|e| {
        ConfigError::new(format!(
            "cannot read token secret file {}: {e}",
            path.display()
        ))
    })?;
    let trimmed = trim_ascii_end_newline(&bytes);
    TokenSecret::new(trimmed)
        .map_err(|e| ConfigError::new(format!("token secret file {}: {e}", path.display())))
}

fn trim_ascii_end_newline(bytes: &[u8]) -> &[u8] {
    let mut end = bytes.len();
    while end > 0 && matches!(bytes[end - 1], b'\n' | b'\r') {
        end -= 1;
    }
    &bytes[..end]
}

/// Everything `lockd serve` needs: the server configuration and the log filter.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Resolved {
    /// The server configuration.
    pub server: ServerConfig,
    /// The log filter.
    pub log: String,
}

impl ServeArgs {
    /// Merges file < environment < flags into a [`ServerConfig`].
    ///
    /// `token_secret_env` is the value of `LOCKD_TOKEN_SECRET`, passed in so tests need not touch
    /// the process environment. It is overridden by a `--token-secret-file` flag (or
    /// `LOCKD_TOKEN_SECRET_FILE`), and overrides the file's `token_secret_file`.
    pub fn resolve(&self, token_secret_env: Option<String>) -> Result<Resolved, ConfigError> {
        let file = match &self.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        let mut server = ServerConfig::default();

        let listen = self
            .listen
            .clone()
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        server.listen = listen.trim().parse().map_err(|_| {
            ConfigError::new(format!(
                "listen address `{listen}` is not IP:PORT (e.g. 127.0.0.1:7070 or [::1]:7070)"
            ))
        })?;

        let grpc_listen = self
            .grpc_listen
            .clone()
            .or(file.grpc_listen)
            .unwrap_or_else(|| DEFAULT_GRPC_LISTEN.to_owned());
        server.grpc_listen = if grpc_listen.trim().eq_ignore_ascii_case("off") {
            None
        } else {
            Some(grpc_listen.trim().parse().map_err(|_| {
                ConfigError::new(format!(
                    "gRPC listen address `{grpc_listen}` is not IP:PORT (e.g. 127.0.0.1:7071) \
                     or `off`"
                ))
            })?)
        };
        if server.grpc_listen == Some(server.listen) && server.listen.port() != 0 {
            return Err(ConfigError::new(format!(
                "listen and grpc_listen are both {}: give the gRPC API its own port",
                server.listen
            )));
        }

        server.backend = self
            .backend
            .clone()
            .or(file.backend)
            .unwrap_or_else(|| DEFAULT_BACKEND.to_owned());

        server.api_keys = if self.api_keys.is_empty() {
            file.api_keys.unwrap_or_default()
        } else {
            self.api_keys.clone()
        };
        server.api_keys = server
            .api_keys
            .into_iter()
            .map(|k| k.trim().to_owned())
            .filter(|k| !k.is_empty())
            .collect();

        server.token_secret = match (
            &self.token_secret_file,
            token_secret_env,
            &file.token_secret_file,
        ) {
            (Some(path), _, _) => Some(read_secret_file(path)?),
            (None, Some(secret), _) => Some(
                TokenSecret::new(secret.as_bytes())
                    .map_err(|e| ConfigError::new(format!("LOCKD_TOKEN_SECRET: {e}")))?,
            ),
            (None, None, Some(path)) => Some(read_secret_file(path)?),
            (None, None, None) => None,
        };

        let mut limits = Limits::default();
        if let Some(text) = self.max_ttl.as_deref().or(file.max_ttl.as_deref()) {
            limits.max_ttl = duration("max_ttl", text)?;
            if limits.max_ttl < lockcore::MIN_TTL {
                return Err(ConfigError::new("max_ttl must be at least 1ms"));
            }
        }
        if let Some(text) = self.max_wait.as_deref().or(file.max_wait.as_deref()) {
            limits.max_wait = duration("max_wait", text)?;
        }
        server.limits = limits;

        server.max_body_bytes = self
            .max_body_bytes
            .or(file.max_body_bytes)
            .unwrap_or(DEFAULT_MAX_BODY_BYTES);
        if server.max_body_bytes < 1024 {
            return Err(ConfigError::new(
                "max_body_bytes must be at least 1024 (a request with the longest object id \
                 and a token needs about that)",
            ));
        }
        server.events_capacity = self
            .events_capacity
            .or(file.events_capacity)
            .unwrap_or(DEFAULT_EVENTS_CAPACITY);
        if server.events_capacity == 0 {
            return Err(ConfigError::new("events_capacity must be at least 1"));
        }
        server.metrics_prefix_depth = self
            .metrics_prefix_depth
            .or(file.metrics_prefix_depth)
            .unwrap_or(crate::metrics::DEFAULT_METRICS_PREFIX_DEPTH);
        if !(1..=lockcore::MAX_OBJECT_DEPTH).contains(&server.metrics_prefix_depth) {
            return Err(ConfigError::new(format!(
                "metrics_prefix_depth must be between 1 and {}",
                lockcore::MAX_OBJECT_DEPTH
            )));
        }
        server.data_dir = self.data_dir.clone().or(file.data_dir);
        server.insecure_no_auth = self.insecure_no_auth || file.insecure_no_auth.unwrap_or(false);
        server.tls = tls_config(
            self.tls_cert.clone().or(file.tls_cert),
            self.tls_key.clone().or(file.tls_key),
            self.tls_client_ca.clone().or(file.tls_client_ca),
        )?;
        if let Some(text) = self
            .shutdown_timeout
            .as_deref()
            .or(file.shutdown_timeout.as_deref())
        {
            server.shutdown_timeout = duration("shutdown_timeout", text)?;
        }
        if let Some(text) = self
            .request_read_timeout
            .as_deref()
            .or(file.request_read_timeout.as_deref())
        {
            server.request_read_timeout = positive_duration("request_read_timeout", text)?;
        }
        if let Some(text) = self
            .idle_timeout
            .as_deref()
            .or(file.idle_timeout.as_deref())
        {
            server.idle_timeout = positive_duration("idle_timeout", text)?;
        }
        server.caps = Caps {
            max_connections: cap(
                "max_connections",
                self.max_connections,
                file.max_connections,
                DEFAULT_CAPS.max_connections,
            )?,
            max_in_flight: cap(
                "max_in_flight",
                self.max_in_flight,
                file.max_in_flight,
                DEFAULT_CAPS.max_in_flight,
            )?,
            max_waiters: cap(
                "max_waiters",
                self.max_waiters,
                file.max_waiters,
                DEFAULT_CAPS.max_waiters,
            )?,
            max_event_streams: cap(
                "max_event_streams",
                self.max_event_streams,
                file.max_event_streams,
                DEFAULT_CAPS.max_event_streams,
            )?,
        };
        if let Some(text) = self
            .default_lock_delay
            .as_deref()
            .or(file.default_lock_delay.as_deref())
        {
            server.default_lock_delay = duration("default_lock_delay", text)?;
            if server.default_lock_delay > MAX_LOCK_DELAY {
                return Err(ConfigError::new(format!(
                    "default_lock_delay must be at most {}",
                    humantime::format_duration(MAX_LOCK_DELAY)
                )));
            }
        }
        let log = self
            .log
            .clone()
            .or(file.log)
            .unwrap_or_else(|| "info".to_owned());
        Ok(Resolved { server, log })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn file(contents: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        f.write_all(contents.as_bytes()).expect("write");
        f
    }

    #[test]
    fn defaults_listen_on_loopback_7070_with_memory() {
        let resolved = ServeArgs::default().resolve(None).expect("valid");
        assert_eq!(resolved.server.listen.to_string(), "127.0.0.1:7070");
        assert_eq!(
            resolved
                .server
                .grpc_listen
                .map(|a| a.to_string())
                .as_deref(),
            Some("127.0.0.1:7071")
        );
        assert_eq!(resolved.server.backend, "memory://");
        assert!(resolved.server.api_keys.is_empty());
        assert!(resolved.server.token_secret.is_none());
        assert_eq!(resolved.log, "info");
    }

    #[test]
    fn flags_override_the_file() {
        let f = file(
            "listen = \"127.0.0.1:9000\"\nmax_ttl = \"1h\"\nmax_wait = \"10s\"\n\
             api_keys = [\"file-key-0123456789\"]\nevents_capacity = 5\n",
        );
        let args = ServeArgs {
            config: Some(f.path().to_path_buf()),
            listen: Some("127.0.0.1:9001".into()),
            max_wait: Some("2s".into()),
            ..ServeArgs::default()
        };
        let resolved = args.resolve(None).expect("valid").server;
        assert_eq!(resolved.listen.port(), 9001);
        assert_eq!(resolved.limits.max_ttl, Duration::from_secs(3600));
        assert_eq!(resolved.limits.max_wait, Duration::from_secs(2));
        assert_eq!(resolved.api_keys, vec!["file-key-0123456789".to_owned()]);
        assert_eq!(resolved.events_capacity, 5);
    }

    #[test]
    fn unknown_keys_and_bad_values_fail_with_one_line() {
        let f = file("lisen = \"127.0.0.1:9000\"\n");
        let args = ServeArgs {
            config: Some(f.path().to_path_buf()),
            ..ServeArgs::default()
        };
        let err = args.resolve(None).expect_err("typo refused").to_string();
        assert!(err.contains("lisen"), "{err}");
        assert!(!err.contains('\n'), "{err}");

        let args = ServeArgs {
            max_ttl: Some("forever".into()),
            ..ServeArgs::default()
        };
        assert!(args.resolve(None).is_err());

        let args = ServeArgs {
            listen: Some("not-an-address".into()),
            ..ServeArgs::default()
        };
        assert!(args.resolve(None).is_err());

        let args = ServeArgs {
            config: Some(PathBuf::from("/nonexistent/lockd.toml")),
            ..ServeArgs::default()
        };
        let err = args.resolve(None).expect_err("missing file").to_string();
        assert!(err.contains("/nonexistent/lockd.toml"), "{err}");
    }

    #[test]
    fn the_grpc_listener_comes_from_file_or_flag_and_can_be_turned_off() {
        let f = file("grpc_listen = \"127.0.0.1:9100\"\n");
        let from_file = ServeArgs {
            config: Some(f.path().to_path_buf()),
            ..ServeArgs::default()
        };
        let resolved = from_file.resolve(None).expect("valid").server;
        assert_eq!(resolved.grpc_listen.map(|a| a.port()), Some(9100));

        let off = ServeArgs {
            config: Some(f.path().to_path_buf()),
            grpc_listen: Some("off".into()),
            ..ServeArgs::default()
        };
        assert_eq!(off.resolve(None).expect("valid").server.grpc_listen, None);

        let bad = ServeArgs {
            grpc_listen: Some("nowhere".into()),
            ..ServeArgs::default()
        };
        let err = bad.resolve(None).expect_err("refused").to_string();
        assert!(err.contains("gRPC listen address"), "{err}");

        let same = ServeArgs {
            listen: Some("127.0.0.1:9200".into()),
            grpc_listen: Some("127.0.0.1:9200".into()),
            ..ServeArgs::default()
        };
        assert!(same.resolve(None).is_err());
    }

    #[test]
    fn token_secret_comes_from_the_flag_file_then_env_then_config_file() {
        let secret = file("0123456789abcdef0123456789abcdef\n");
        let args = ServeArgs {
            token_secret_file: Some(secret.path().to_path_buf()),
            ..ServeArgs::default()
        };
        assert!(args
            .resolve(Some("x".into()))
            .expect("flag wins")
            .server
            .token_secret
            .is_some());
        let err = ServeArgs::default()
            .resolve(Some("too short".into()))
            .expect_err("short secret");
        assert!(err.to_string().contains("LOCKD_TOKEN_SECRET"));
        let short = file("short");
        let args = ServeArgs {
            token_secret_file: Some(short.path().to_path_buf()),
            ..ServeArgs::default()
        };
        assert!(args.resolve(None).is_err());
    }

    /// The timeouts and caps come from the file, then flags, with defaults, and zero is refused.
    #[test]
    fn timeouts_and_caps_are_configurable_and_zero_is_refused() {
        let defaults = ServeArgs::default().resolve(None).expect("valid").server;
        assert_eq!(defaults.request_read_timeout, DEFAULT_REQUEST_READ_TIMEOUT);
        assert_eq!(defaults.idle_timeout, DEFAULT_IDLE_TIMEOUT);
        assert_eq!(defaults.caps, DEFAULT_CAPS);
        let f = file(
            "request_read_timeout = \"2s\"\nidle_timeout = \"5s\"\nmax_connections = 7\n\
             max_in_flight = 6\nmax_waiters = 5\nmax_event_streams = 4\n",
        );
        let args = ServeArgs {
            config: Some(f.path().to_path_buf()),
            max_waiters: Some(3),
            ..ServeArgs::default()
        };
        let resolved = args.resolve(None).expect("valid").server;
        assert_eq!(resolved.request_read_timeout, Duration::from_secs(2));
        assert_eq!(resolved.idle_timeout, Duration::from_secs(5));
        assert_eq!(
            resolved.caps,
            Caps {
                max_connections: 7,
                max_in_flight: 6,
                max_waiters: 3,
                max_event_streams: 4,
            }
        );
        for args in [
            ServeArgs {
                max_in_flight: Some(0),
                ..ServeArgs::default()
            },
            ServeArgs {
                idle_timeout: Some("0s".into()),
                ..ServeArgs::default()
            },
        ] {
            assert!(args.resolve(None).is_err(), "{args:?}");
        }
    }

    /// The metrics prefix depth comes from the file or the flag, 2 by default, within 1..=32.
    #[test]
    fn the_metrics_prefix_depth_is_configurable_within_the_object_depth() {
        let defaults = ServeArgs::default().resolve(None).expect("valid").server;
        assert_eq!(defaults.metrics_prefix_depth, 2);
        let f = file("metrics_prefix_depth = 3\n");
        let from_file = ServeArgs {
            config: Some(f.path().to_path_buf()),
            ..ServeArgs::default()
        };
        assert_eq!(
            from_file
                .resolve(None)
                .expect("valid")
                .server
                .metrics_prefix_depth,
            3
        );
        let flag = ServeArgs {
            config: Some(f.path().to_path_buf()),
            metrics_prefix_depth: Some(1),
            ..ServeArgs::default()
        };
        assert_eq!(
            flag.resolve(None)
                .expect("valid")
                .server
                .metrics_prefix_depth,
            1
        );
        for refused in [0, lockcore::MAX_OBJECT_DEPTH + 1] {
            let args = ServeArgs {
                metrics_prefix_depth: Some(refused),
                ..ServeArgs::default()
            };
            let err = args.resolve(None).expect_err("refused").to_string();
            assert!(err.contains("metrics_prefix_depth"), "{err}");
        }
    }

    /// The default lock-delay comes from the file, then the flag, is zero without either, and
    /// is refused above a minute or when it is not a duration.
    #[test]
    fn the_default_lock_delay_is_configurable_up_to_a_minute() {
        let defaults = ServeArgs::default().resolve(None).expect("valid").server;
        assert_eq!(defaults.default_lock_delay, Duration::ZERO);
        let f = file("default_lock_delay = \"15s\"\n");
        let from_file = ServeArgs {
            config: Some(f.path().to_path_buf()),
            ..ServeArgs::default()
        };
        let resolved = from_file.resolve(None).expect("valid").server;
        assert_eq!(resolved.default_lock_delay, Duration::from_secs(15));
        let flag_wins = ServeArgs {
            config: Some(f.path().to_path_buf()),
            default_lock_delay: Some("250ms".into()),
            ..ServeArgs::default()
        };
        let resolved = flag_wins.resolve(None).expect("valid").server;
        assert_eq!(resolved.default_lock_delay, Duration::from_millis(250));
        for bad in ["61s", "2m", "soon"] {
            let args = ServeArgs {
                default_lock_delay: Some(bad.into()),
                ..ServeArgs::default()
            };
            let err = args.resolve(None).expect_err(bad).to_string();
            assert!(err.contains("default_lock_delay"), "{err}");
        }
    }

    #[test]
    fn tls_takes_a_certificate_and_key_together_and_a_client_ca_only_with_them() {
        assert_eq!(
            ServeArgs::default()
                .resolve(None)
                .expect("valid")
                .server
                .tls,
            None
        );
        let f = file("tls_cert = \"/etc/lockd/cert.pem\"\ntls_key = \"/etc/lockd/key.pem\"\n");
        let args = ServeArgs {
            config: Some(f.path().to_path_buf()),
            tls_client_ca: Some("/etc/lockd/ca.pem".into()),
            ..ServeArgs::default()
        };
        let tls = args
            .resolve(None)
            .expect("valid")
            .server
            .tls
            .expect("tls on");
        assert_eq!(tls.cert, PathBuf::from("/etc/lockd/cert.pem"));
        assert_eq!(tls.key, PathBuf::from("/etc/lockd/key.pem"));
        assert_eq!(tls.client_ca, Some(PathBuf::from("/etc/lockd/ca.pem")));
        assert!(tls.requires_client_certificates());

        for (args, named) in [
            (
                ServeArgs {
                    tls_cert: Some("c.pem".into()),
                    ..ServeArgs::default()
                },
                "tls_key",
            ),
            (
                ServeArgs {
                    tls_key: Some("k.pem".into()),
                    ..ServeArgs::default()
                },
                "tls_cert",
            ),
            (
                ServeArgs {
                    tls_client_ca: Some("ca.pem".into()),
                    ..ServeArgs::default()
                },
                "tls_client_ca",
            ),
        ] {
            let err = args.resolve(None).expect_err("incomplete TLS").to_string();
            assert!(err.contains(named), "{err}");
        }
    }

    #[test]
    fn debug_hides_keys_and_secret() {
        let config = ServerConfig {
            api_keys: vec!["super-secret-api-key".into()],
            backend: "postgres://u:hunter2@db/locks".into(),
            ..ServerConfig::default()
        };
        let shown = format!("{config:?}");
        assert!(!shown.contains("super-secret-api-key"));
        assert!(!shown.contains("hunter2"));
    }
}
