//! The one function that turns a backend URL into an `Arc<dyn LockService>`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[cfg(feature = "memory")]
use lockcore::Fence;
use lockcore::{Limits, LockError, LockService, TokenIssuer};

#[cfg(feature = "memory")]
use crate::grace::{RestartGuard, StateFile};

/// URL schemes [`connect_backend`] understands, for help texts and error messages.
pub const SCHEMES: &[&str] = &[
    "memory://",
    "redis://",
    "rediss://",
    "postgres://",
    "postgresql://",
    "etcd://",
    "etcds://",
    "http://",
    "https://",
    "grpc://",
];

/// Everything besides the URL that a backend needs.
///
/// Build it with [`BackendOptions::new`] and the `with_*` methods; fields a backend does not use
/// are ignored (the `http` backend, for instance, signs no tokens itself).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BackendOptions {
    /// Mints and checks tokens. Several lockd processes sharing Redis or Postgres must use the
    /// same secret, or they refuse each other's tokens.
    pub issuer: TokenIssuer,
    /// TTL and wait bounds the backend enforces.
    pub limits: Limits,
    /// For `memory://`: where the restart state file lives. `None` means no restart protection
    /// (the process grants at once after a restart, and relies on the clock alone for fences).
    pub data_dir: Option<PathBuf>,
    /// For `http(s)://`: the API key sent as `Authorization: Bearer`.
    pub api_key: Option<String>,
    /// How long to wait for a network backend to answer the first connection.
    pub connect_timeout: Option<Duration>,
}

impl BackendOptions {
    /// Options with `issuer`, default [`Limits`], no data dir and no API key.
    pub fn new(issuer: TokenIssuer) -> Self {
        Self {
            issuer,
            limits: Limits::default(),
            data_dir: None,
            api_key: None,
            connect_timeout: None,
        }
    }

    /// Sets the TTL and wait bounds.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Sets the data directory for `memory://`'s restart state.
    pub fn with_data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// Sets the API key for `http(s)://` backends.
    pub fn with_api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// Sets the connect timeout for network backends.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }
}

/// Turns a backend URL into a lock service: the one place that does it, used by `lockd serve`
/// and by any program that embeds lockd's backends.
///
/// | URL | backend |
/// | --- | --- |
/// | `memory://` | in-process (`backend-memory`); with [`BackendOptions::data_dir`], restart-safe (see the crate docs) |
/// | `redis://host:6379/0`, `rediss://...` | `backend-redis` |
/// | `postgres://user@host/db`, `postgresql://...` | `backend-postgres` |
/// | `http://host:7070`, `https://...` | a remote lockd via `lockd-client` |
/// | `grpc://host:7071` | a remote lockd over its gRPC API, via `lockd-grpc` |
///
/// An unknown scheme or a malformed URL is [`LockError::InvalidArgument`] (field `backend`); a
/// backend that cannot be reached is [`LockError::Unavailable`].
///
/// Must be called inside a Tokio runtime.
///
/// ```no_run
/// # async fn demo() -> Result<(), lockcore::LockError> {
/// use lockd::{connect_backend, BackendOptions};
/// let locks = connect_backend("memory://", &BackendOptions::new(lockcore::TokenIssuer::random())).await?;
/// assert_eq!(locks.backend(), "memory");
/// # Ok(()) }
/// ```
pub async fn connect_backend(
    url: &str,
    options: &BackendOptions,
) -> Result<Arc<dyn LockService>, LockError> {
    let url = url.trim();
    let scheme = url
        .split_once("://")
        .map(|(scheme, _)| scheme.to_ascii_lowercase())
        .ok_or_else(|| {
            LockError::invalid_argument(
                "backend",
                format!(
                    "`{}` is not a URL; expected one of {}",
                    redact_url(url),
                    SCHEMES.join(", ")
                ),
            )
        })?;
    match scheme.as_str() {
        "memory" => connect_memory(url, options).await,
        "redis" | "rediss" => connect_redis(url, options).await,
        "postgres" | "postgresql" => connect_postgres(url, options).await,
        "etcd" | "etcds" => connect_etcd(url, options).await,
        "http" | "https" => connect_http(url, options),
        "grpc" => connect_grpc(url, options),
        other => Err(LockError::invalid_argument(
            "backend",
            format!(
                "unknown scheme `{other}://`; expected one of {}",
                SCHEMES.join(", ")
            ),
        )),
    }
}

#[cfg_attr(
    all(
        feature = "memory",
        feature = "redis",
        feature = "postgres",
        feature = "etcd",
        feature = "http",
        feature = "grpc"
    ),
    allow(dead_code)
)]
fn not_built(scheme: &str, feature: &str) -> LockError {
    LockError::invalid_argument(
        "backend",
        format!(
            "{scheme}:// support is not built into this lockd (cargo feature `{feature}` is off)"
        ),
    )
}

#[cfg(feature = "memory")]
async fn connect_memory(
    url: &str,
    options: &BackendOptions,
) -> Result<Arc<dyn LockService>, LockError> {
    let rest = &url["memory://".len()..];
    if !rest.is_empty() && rest != "/" {
        return Err(LockError::invalid_argument(
            "backend",
            "memory:// takes no host, path or parameters",
        ));
    }
    let new_memory = |fence_floor: Fence| {
        let config =
            backend_memory::MemoryConfig::new(options.limits).with_fence_floor(fence_floor);
        backend_memory::MemoryLockService::new(
            backend_memory::MemoryStore::new(config),
            options.issuer.clone(),
        )
    };
    match &options.data_dir {
        None => Ok(Arc::new(new_memory(Fence(0)))),
        Some(dir) => {
            let state = StateFile::open(dir).await?;
            let inner = Arc::new(new_memory(state.fence_floor()));
            let probe = Arc::clone(&inner);
            let guard = RestartGuard::new(inner, state, options.limits)
                .with_idle_probe(Box::new(move || probe.store().held() == 0));
            Ok(Arc::new(guard))
        }
    }
}

#[cfg(not(feature = "memory"))]
async fn connect_memory(
    _url: &str,
    _options: &BackendOptions,
) -> Result<Arc<dyn LockService>, LockError> {
    Err(not_built("memory", "memory"))
}

#[cfg(feature = "redis")]
async fn connect_redis(
    url: &str,
    options: &BackendOptions,
) -> Result<Arc<dyn LockService>, LockError> {
    let (url, key_prefix) = take_query_param(url, "key_prefix")?;
    let (url, dedicated) = take_query_param(&url, "dedicated_connections")?;
    let mut config = backend_redis::RedisConfig::from_url(url);
    if let Some(prefix) = key_prefix {
        config.key_prefix = prefix;
    }
    if let Some(count) = dedicated {
        config.dedicated_connections = count.parse().map_err(|_| {
            LockError::invalid_argument(
                "dedicated_connections",
                format!("`{count}` is not a number of connections"),
            )
        })?;
    }
    config.limits = options.limits;
    if let Some(timeout) = options.connect_timeout {
        config.connect_timeout = timeout;
    }
    let store = backend_redis::RedisStore::connect(config).await?;
    let service = backend_redis::RedisLockService::new(store, options.issuer.clone());
    Ok(Arc::new(service))
}

#[cfg(not(feature = "redis"))]
async fn connect_redis(
    _url: &str,
    _options: &BackendOptions,
) -> Result<Arc<dyn LockService>, LockError> {
    Err(not_built("redis", "redis"))
}

#[cfg(feature = "postgres")]
async fn connect_postgres(
    url: &str,
    options: &BackendOptions,
) -> Result<Arc<dyn LockService>, LockError> {
    let (url, schema) = take_query_param(url, "schema")?;
    let mut config = backend_postgres::PostgresConfig::from_url(url);
    if let Some(schema) = schema {
        config.schema = schema;
    }
    config.limits = options.limits;
    if let Some(timeout) = options.connect_timeout {
        config.connect_timeout = timeout;
    }
    let store = backend_postgres::PostgresStore::connect(config).await?;
    let service = backend_postgres::PostgresLockService::new(store, options.issuer.clone());
    Ok(Arc::new(service))
}

#[cfg(not(feature = "postgres"))]
async fn connect_postgres(
    _url: &str,
    _options: &BackendOptions,
) -> Result<Arc<dyn LockService>, LockError> {
    Err(not_built("postgres", "postgres"))
}

/// `etcd://[user:pass@]h1:2379,h2:2379` or `etcds://` (TLS), with optional `key_prefix`,
/// `tls_ca_file`, `tls_cert_file` and `tls_key_file` query parameters.
#[cfg(feature = "etcd")]
async fn connect_etcd(
    url: &str,
    options: &BackendOptions,
) -> Result<Arc<dyn LockService>, LockError> {
    let (url, key_prefix) = take_query_param(url, "key_prefix")?;
    let (url, ca) = take_query_param(&url, "tls_ca_file")?;
    let (url, cert) = take_query_param(&url, "tls_cert_file")?;
    let (url, key) = take_query_param(&url, "tls_key_file")?;
    let mut config = backend_etcd::EtcdConfig::from_url(url);
    if let Some(prefix) = key_prefix {
        config.key_prefix = prefix;
    }
    config.tls_ca_file = ca.map(Into::into);
    config.tls_cert_file = cert.map(Into::into);
    config.tls_key_file = key.map(Into::into);
    config.limits = options.limits;
    if let Some(timeout) = options.connect_timeout {
        config.connect_timeout = timeout;
    }
    let store = backend_etcd::EtcdStore::connect(config).await?;
    let service = backend_etcd::EtcdLockService::new(store, options.issuer.clone());
    Ok(Arc::new(service))
}

#[cfg(not(feature = "etcd"))]
async fn connect_etcd(
    _url: &str,
    _options: &BackendOptions,
) -> Result<Arc<dyn LockService>, LockError> {
    Err(not_built("etcd", "etcd"))
}

#[cfg(feature = "http")]
fn connect_http(url: &str, options: &BackendOptions) -> Result<Arc<dyn LockService>, LockError> {
    let mut config = lockd_client::ClientConfig::from_url(url);
    if options.api_key.is_some() {
        config.api_key = options.api_key.clone();
    }
    if let Some(timeout) = options.connect_timeout {
        config.connect_timeout = timeout;
    }
    Ok(Arc::new(lockd_client::LockdClient::new(config)?))
}

#[cfg(feature = "grpc")]
fn connect_grpc(url: &str, options: &BackendOptions) -> Result<Arc<dyn LockService>, LockError> {
    let mut config = lockd_grpc::GrpcConfig::from_url(url);
    if let Some(key) = &options.api_key {
        config = config.with_api_key(key.clone());
    }
    if let Some(timeout) = options.connect_timeout {
        config = config.with_connect_timeout(timeout);
    }
    Ok(Arc::new(lockd_grpc::GrpcClient::new(config)?))
}

#[cfg(not(feature = "grpc"))]
fn connect_grpc(_url: &str, _options: &BackendOptions) -> Result<Arc<dyn LockService>, LockError> {
    Err(not_built("grpc", "grpc"))
}

#[cfg(not(feature = "http"))]
fn connect_http(_url: &str, _options: &BackendOptions) -> Result<Arc<dyn LockService>, LockError> {
    Err(not_built("http", "http"))
}

/// Removes lockd's own query parameter `name` from a backend URL, returning the URL the backend
/// driver sees and the parameter's (percent-decoded) value. Lets one URL carry settings such as
/// `redis://host/0?key_prefix=dfs1:` or `postgres://host/db?schema=dfs1`.
#[cfg_attr(not(any(feature = "redis", feature = "postgres")), allow(dead_code))]
fn take_query_param(raw: &str, name: &str) -> Result<(String, Option<String>), LockError> {
    let mut parsed = url::Url::parse(raw).map_err(|e| {
        LockError::invalid_argument("backend", format!("`{}`: {e}", redact_url(raw)))
    })?;
    let mut value = None;
    let kept: Vec<(String, String)> = parsed
        .query_pairs()
        .filter_map(|(k, v)| {
            if k == name {
                value = Some(v.into_owned());
                None
            } else {
                Some((k.into_owned(), v.into_owned()))
            }
        })
        .collect();
    if value.is_none() {
        return Ok((raw.to_owned(), None));
    }
    if kept.is_empty() {
        parsed.set_query(None);
    } else {
        parsed.query_pairs_mut().clear().extend_pairs(kept);
    }
    Ok((parsed.to_string(), value))
}

/// A URL with any password replaced by `***`, for logs and error messages
/// ([`lockcore::redact_url`]); a string that is not a URL at all (no `://`) is shown as it is.
pub fn redact_url(url: &str) -> String {
    if url.contains("://") {
        lockcore::redact_url(url)
    } else {
        url.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted_from_urls() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db:5432/locks"),
            "postgres://app:***@db:5432/locks"
        );
        assert_eq!(
            redact_url("redis://127.0.0.1:6379/0"),
            "redis://127.0.0.1:6379/0"
        );
        assert_eq!(redact_url("memory://"), "memory://");
        assert_eq!(redact_url("nonsense"), "nonsense");
    }
}

#[cfg(test)]
mod url_tests {
    use super::*;

    fn options() -> BackendOptions {
        BackendOptions::new(TokenIssuer::random())
    }

    #[tokio::test]
    async fn unknown_schemes_and_non_urls_are_invalid_arguments() {
        for url in ["ftp://host", "nonsense", "", "memory://host/path"] {
            let err = connect_backend(url, &options()).await.expect_err(url);
            assert!(
                matches!(
                    err,
                    LockError::InvalidArgument {
                        field: "backend",
                        ..
                    }
                ),
                "{url}: {err}"
            );
        }
    }

    #[cfg(feature = "memory")]
    #[tokio::test]
    async fn memory_urls_give_the_memory_backend() {
        for url in ["memory://", "MEMORY://", " memory:// "] {
            let service = connect_backend(url, &options()).await.expect(url);
            assert_eq!(service.backend(), "memory");
        }
    }

    #[cfg(feature = "memory")]
    #[tokio::test]
    async fn memory_with_a_data_dir_writes_its_state_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let service = connect_backend("memory://", &options().with_data_dir(dir.path()))
            .await
            .expect("memory");
        assert_eq!(service.backend(), "memory");
        assert!(dir.path().join(crate::grace::STATE_FILE_NAME).exists());
    }

    #[test]
    fn lockd_query_parameters_are_taken_out_of_the_url() {
        let (url, prefix) = take_query_param(
            "redis://h:6379/0?key_prefix=dfs%3A1%3A&timeout=5",
            "key_prefix",
        )
        .expect("valid URL");
        assert_eq!(prefix.as_deref(), Some("dfs:1:"));
        assert_eq!(url, "redis://h:6379/0?timeout=5");
        let (url, schema) =
            take_query_param("postgres://u@h/db?schema=locks", "schema").expect("valid URL");
        assert_eq!(schema.as_deref(), Some("locks"));
        assert_eq!(url, "postgres://u@h/db");
        let (url, none) = take_query_param("redis://h/0", "key_prefix").expect("valid URL");
        assert_eq!((url.as_str(), none), ("redis://h/0", None));
    }

    #[cfg(feature = "redis")]
    #[tokio::test]
    async fn a_redis_dedicated_connections_count_that_is_not_a_number_is_refused() {
        // Refused before any connection is tried: the port is closed.
        for count in ["two", "65"] {
            let result = connect_backend(
                &format!("redis://127.0.0.1:1/0?dedicated_connections={count}"),
                &options(),
            )
            .await;
            assert!(
                matches!(
                    result,
                    Err(LockError::InvalidArgument {
                        field: "dedicated_connections",
                        ..
                    })
                ),
                "{count}: {result:?}"
            );
        }
    }

    /// Two lockd deployments sharing one Redis under different key prefixes never see each
    /// other's locks.
    #[cfg(feature = "redis")]
    #[tokio::test]
    async fn redis_key_prefix_from_the_url_separates_deployments() {
        let Ok(base) = std::env::var("LOCKD_TEST_REDIS_URL") else {
            conformance_tests::skip_or_fail("redis", "LOCKD_TEST_REDIS_URL is not set");
            return;
        };
        let tag: u64 = rand::random();
        let sep = if base.contains('?') { '&' } else { '?' };
        // The first also turns dedicated connections off: both parameters leave the URL.
        let first = connect_backend(
            &format!("{base}{sep}key_prefix=t{tag}a:&dedicated_connections=0"),
            &options(),
        )
        .await
        .expect("redis");
        let second = connect_backend(&format!("{base}{sep}key_prefix=t{tag}b:"), &options())
            .await
            .expect("redis");
        let object = lockcore::ObjectId::new("shared/name").expect("valid");
        let owner = lockcore::OwnerId::new("o").expect("valid");
        let ttl = std::time::Duration::from_secs(5);
        let zero = std::time::Duration::ZERO;
        let a = first
            .acquire(&object, &owner, ttl, zero)
            .await
            .expect("granted in a");
        let b = second
            .acquire(&object, &owner, ttl, zero)
            .await
            .expect("granted in b too");
        assert!(matches!(
            first.acquire(&object, &owner, ttl, zero).await,
            Err(LockError::Locked { .. })
        ));
        first.release(&object, &a.token).await.expect("release a");
        second.release(&object, &b.token).await.expect("release b");
    }
}
