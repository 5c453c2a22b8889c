//! [`RedisConfig`]: where Redis is, how keys are named, and how long to wait for it.

use std::fmt;
use std::time::Duration;

use lockcore::{Limits, LockError};

/// Longest `fence_retention` accepted.
const MAX_RETENTION: Duration = Duration::from_secs(30 * 24 * 60 * 60);
/// Most dedicated connections accepted.
const MAX_DEDICATED_CONNECTIONS: usize = 64;
/// Longest `limits.max_ttl` accepted (Redis expiries must stay far from overflowing).
const MAX_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);

/// How a [`RedisLockService`](crate::RedisLockService) reaches Redis and names its keys.
///
/// Deserializes with every field optional (`#[serde(default)]`); durations are whole
/// milliseconds. `Debug` shows the URL with its password replaced by `***`.
///
/// ```
/// use backend_redis::RedisConfig;
/// let mut config = RedisConfig::from_url("redis://:hunter2@127.0.0.1:6379/0");
/// config.key_prefix = "dfs-a:".into();
/// assert!(!format!("{config:?}").contains("hunter2"));
/// ```
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct RedisConfig {
    /// `redis://[user:password@]host[:port][/db]` or `rediss://...` for TLS
    /// (default `redis://127.0.0.1:6379`).
    pub url: String,
    /// Prepended to every key and to the release channel (default `lockd:`). Several lock
    /// namespaces can share one Redis under different prefixes. Must not contain `{` or `}`.
    pub key_prefix: String,
    /// The largest TTL and wait this backend accepts.
    pub limits: Limits,
    /// Longest wait for a connection to Redis, when connecting and reconnecting (default 5 s).
    #[serde(with = "lockcore::serde_millis")]
    pub connect_timeout: Duration,
    /// Longest wait for one operation's answer; past it the operation fails as
    /// `Unavailable` (default 2 s).
    #[serde(with = "lockcore::serde_millis")]
    pub operation_timeout: Duration,
    /// How long an object's fence counter outlives its last lease (default 1 h). After that the
    /// clock floor alone keeps fences increasing; the counter only guards against Redis's clock
    /// stepping back. At most 30 days. See the crate docs, "Fences".
    #[serde(with = "lockcore::serde_millis")]
    pub fence_retention: Duration,
    /// How often the release listener pings its pub/sub connection to notice a dead link
    /// (default 5 s).
    #[serde(with = "lockcore::serde_millis")]
    pub listener_ping_interval: Duration,
    /// Connections that each serve one operation at a time from the operation's own task
    /// (default 2, at most 64, 0 turns them off). An operation takes one when it is idle, for
    /// the lowest latency; operations beyond these share the multiplexed connection, which
    /// pipelines them. Ignored for `rediss://` (TLS), where every operation is multiplexed.
    pub dedicated_connections: usize,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            key_prefix: "lockd:".into(),
            limits: Limits::default(),
            connect_timeout: Duration::from_secs(5),
            operation_timeout: Duration::from_secs(2),
            fence_retention: Duration::from_secs(60 * 60),
            listener_ping_interval: Duration::from_secs(5),
            dedicated_connections: 2,
        }
    }
}

impl RedisConfig {
    /// The defaults with `url`.
    pub fn from_url(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ..Self::default()
        }
    }

    /// Refuses settings the backend cannot work with.
    pub(crate) fn check(&self) -> Result<(), LockError> {
        if self.key_prefix.contains(['{', '}']) {
            return Err(LockError::invalid_argument(
                "key_prefix",
                "must not contain `{` or `}` (they delimit Redis hash tags)",
            ));
        }
        if self.key_prefix.chars().any(char::is_control) {
            return Err(LockError::invalid_argument(
                "key_prefix",
                "must not contain control characters",
            ));
        }
        for (field, value) in [
            ("connect_timeout", self.connect_timeout),
            ("operation_timeout", self.operation_timeout),
            ("listener_ping_interval", self.listener_ping_interval),
        ] {
            if value.is_zero() {
                return Err(LockError::invalid_argument(field, "must be above zero"));
            }
        }
        if self.fence_retention < Duration::from_millis(1) || self.fence_retention > MAX_RETENTION {
            return Err(LockError::invalid_argument(
                "fence_retention",
                "must be between 1 ms and 30 days",
            ));
        }
        if self.dedicated_connections > MAX_DEDICATED_CONNECTIONS {
            return Err(LockError::invalid_argument(
                "dedicated_connections",
                format!("must be at most {MAX_DEDICATED_CONNECTIONS}"),
            ));
        }
        if self.limits.max_ttl > MAX_TTL {
            return Err(LockError::invalid_argument(
                "limits.max_ttl",
                "must be at most 10 years",
            ));
        }
        Ok(())
    }

    /// The URL with any password replaced by `***`, for logs and `Debug`.
    pub fn redacted_url(&self) -> String {
        lockcore::redact_url(&self.url)
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &self.redacted_url())
            .field("key_prefix", &self.key_prefix)
            .field("limits", &self.limits)
            .field("connect_timeout", &self.connect_timeout)
            .field("operation_timeout", &self.operation_timeout)
            .field("fence_retention", &self.fence_retention)
            .field("listener_ping_interval", &self.listener_ping_interval)
            .field("dedicated_connections", &self.dedicated_connections)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_password_but_keeps_the_host() {
        let config = RedisConfig::from_url("rediss://app:s3cret@redis.internal:6380/2");
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("redis.internal:6380"), "{shown}");
        assert!(shown.contains("***"), "{shown}");
    }

    #[test]
    fn debug_shows_nothing_of_an_unparseable_url() {
        let config = RedisConfig::from_url("not a url :pw@");
        assert!(!format!("{config:?}").contains("pw"));
    }

    #[test]
    fn defaults_use_the_lockd_prefix() {
        let config = RedisConfig::default();
        assert_eq!(config.key_prefix, "lockd:");
        assert!(config.check().is_ok());
    }

    #[test]
    fn prefixes_with_hash_tag_braces_are_refused() {
        let config = RedisConfig {
            key_prefix: "a{b".into(),
            ..RedisConfig::default()
        };
        assert!(matches!(
            config.check(),
            Err(LockError::InvalidArgument {
                field: "key_prefix",
                ..
            })
        ));
    }

    #[test]
    fn zero_timeouts_are_refused() {
        let config = RedisConfig {
            operation_timeout: Duration::ZERO,
            ..RedisConfig::default()
        };
        assert!(config.check().is_err());
    }

    #[test]
    fn every_field_is_optional_and_durations_are_milliseconds() {
        let config: RedisConfig =
            serde_json::from_str(r#"{"url":"redis://h:1","operation_timeout":250}"#)
                .expect("valid config");
        assert_eq!(config.url, "redis://h:1");
        assert_eq!(config.operation_timeout, Duration::from_millis(250));
        assert_eq!(config.key_prefix, "lockd:");
        let back = serde_json::to_value(&config).expect("serializes");
        assert_eq!(back["connect_timeout"], 5000);
    }
}
