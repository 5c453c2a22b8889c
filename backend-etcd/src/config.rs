//! [`EtcdConfig`]: where the etcd cluster is, how keys are named, and how long to wait for it.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use lockcore::{Limits, LockError};

/// The shortest lease etcd grants with its default election timeout (1 s): etcd raises any
/// shorter lease to `ceil(1.5 × election timeout)`, so 2 s. See the crate docs, "Expiry".
pub const DEFAULT_MIN_TTL: Duration = Duration::from_secs(2);
/// Longest `limits.max_ttl` accepted: etcd's own ceiling on lease TTLs (9 000 000 000 s) is far
/// off; this keeps leases to something a lock means.
const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// How an [`EtcdLockService`](crate::EtcdLockService) reaches etcd and names its keys.
///
/// Deserializes with every field optional (`#[serde(default)]`); durations are whole
/// milliseconds.
///
/// ```
/// use backend_etcd::EtcdConfig;
/// let mut config = EtcdConfig::from_url("etcd://10.0.0.1:2379,10.0.0.2:2379,10.0.0.3:2379");
/// config.key_prefix = "dfs-a/".into();
/// assert_eq!(
///     config.endpoints().expect("valid"),
///     ["http://10.0.0.1:2379", "http://10.0.0.2:2379", "http://10.0.0.3:2379"]
/// );
/// ```
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct EtcdConfig {
    /// `etcd://[user:password@]host[:port][,host[:port]]...` (default port 2379), `etcds://...`
    /// for TLS, or a comma-separated list of `http://host:port` (or `https://`) endpoints
    /// (default `etcd://127.0.0.1:2379`). With `user:password`, the client authenticates to
    /// etcd (etcd's auth must be enabled for that user).
    pub url: String,
    /// For `etcds://`: the PEM file of the CA that signed the members' certificates (default:
    /// the system's roots).
    pub tls_ca_file: Option<PathBuf>,
    /// For `etcds://` with client certificates: the PEM certificate (with `tls_key_file`).
    pub tls_cert_file: Option<PathBuf>,
    /// For `etcds://` with client certificates: the PEM private key (with `tls_cert_file`).
    pub tls_key_file: Option<PathBuf>,
    /// Prepended to every key (default `lockd/`). Several lock namespaces can share one etcd
    /// cluster under different prefixes. Must not contain control characters.
    pub key_prefix: String,
    /// The largest TTL and wait this backend accepts.
    pub limits: Limits,
    /// The shortest TTL this backend accepts (default 2 s, etcd's minimum lease with its
    /// default election timeout). TTLs must also be whole seconds: etcd leases count seconds.
    #[serde(with = "lockcore::serde_millis")]
    pub min_ttl: Duration,
    /// Longest wait for a connection to etcd (default 5 s).
    #[serde(with = "lockcore::serde_millis")]
    pub connect_timeout: Duration,
    /// Longest wait for one operation's answer; past it the operation fails as
    /// `Unavailable` (default 3 s: above etcd's default election timeout of 1 s).
    #[serde(with = "lockcore::serde_millis")]
    pub operation_timeout: Duration,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        Self {
            url: "etcd://127.0.0.1:2379".into(),
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            key_prefix: "lockd/".into(),
            limits: Limits::default(),
            min_ttl: DEFAULT_MIN_TTL,
            connect_timeout: Duration::from_secs(5),
            operation_timeout: Duration::from_secs(3),
        }
    }
}

impl fmt::Debug for EtcdConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdConfig")
            .field("url", &self.redacted_url())
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_cert_file", &self.tls_cert_file)
            .field("tls_key_file", &self.tls_key_file)
            .field("key_prefix", &self.key_prefix)
            .field("limits", &self.limits)
            .field("min_ttl", &self.min_ttl)
            .field("connect_timeout", &self.connect_timeout)
            .field("operation_timeout", &self.operation_timeout)
            .finish()
    }
}

impl EtcdConfig {
    /// The defaults with `url`.
    pub fn from_url(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ..Self::default()
        }
    }

    /// The URL without any `user:password@` part.
    pub fn redacted_url(&self) -> String {
        self.url
            .split(',')
            .map(|part| match (part.find("://"), part.rfind('@')) {
                (Some(scheme), Some(at)) if at > scheme => {
                    format!("{}***@{}", &part[..scheme + 3], &part[at + 1..])
                }
                (None, Some(at)) => format!("***@{}", &part[at + 1..]),
                _ => part.to_string(),
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The gRPC endpoints (`http://host:port`, or `https://` for TLS) the URL names.
    ///
    /// Fails with [`LockError::InvalidArgument`] on `url` for an unknown scheme, an empty host
    /// list, a path or query, or a bad port.
    pub fn endpoints(&self) -> Result<Vec<String>, LockError> {
        Ok(self.parse_url()?.endpoints)
    }

    /// Whether the URL asks for TLS (`etcds://` or `https://`).
    pub fn uses_tls(&self) -> bool {
        self.parse_url().is_ok_and(|url| url.tls)
    }

    /// The `user:password` of the URL, if any.
    pub(crate) fn credentials(&self) -> Result<Option<(String, String)>, LockError> {
        Ok(self.parse_url()?.credentials)
    }

    fn parse_url(&self) -> Result<ParsedUrl, LockError> {
        let bad = |why: String| LockError::invalid_argument("url", why);
        let url = self.url.trim();
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            bad(format!(
                "{}: expected etcd://host:port",
                self.redacted_url()
            ))
        })?;
        let tls = match scheme {
            "etcd" | "http" => false,
            "etcds" | "https" => true,
            other => return Err(bad(format!("unknown scheme {other}://, expected etcd://"))),
        };
        let (credentials, hosts) = match rest.rsplit_once('@') {
            Some((userinfo, hosts)) => {
                let (user, password) = userinfo
                    .split_once(':')
                    .ok_or_else(|| bad("user info must be user:password".into()))?;
                if user.is_empty() {
                    return Err(bad("user info has an empty user".into()));
                }
                (Some((user.to_string(), password.to_string())), hosts)
            }
            None => (None, rest),
        };
        let scheme = if tls { "https" } else { "http" };
        let mut endpoints = Vec::new();
        for part in hosts.split(',') {
            // Later entries of an http:// list repeat the scheme.
            let part = part.trim();
            let part = ["http://", "https://", "etcd://", "etcds://"]
                .iter()
                .find_map(|p| part.strip_prefix(p))
                .unwrap_or(part);
            let host_port = part.trim_end_matches('/');
            if host_port.contains(['@', '/', '?', '#']) {
                return Err(bad(format!(
                    "{}: endpoints are host[:port] only (no path or query)",
                    self.redacted_url()
                )));
            }
            if host_port.is_empty() {
                return Err(bad("an endpoint has no host".into()));
            }
            let has_port = match host_port.rsplit_once(':') {
                // `[::1]` alone: the colon is inside the brackets.
                Some((_, port)) if !port.ends_with(']') => {
                    port.parse::<u16>()
                        .map_err(|_| bad(format!("bad port in {host_port}")))?;
                    true
                }
                _ => false,
            };
            endpoints.push(if has_port {
                format!("{scheme}://{host_port}")
            } else {
                format!("{scheme}://{host_port}:2379")
            });
        }
        Ok(ParsedUrl {
            endpoints,
            tls,
            credentials,
        })
    }

    /// Refuses settings the backend cannot work with.
    pub(crate) fn check(&self) -> Result<(), LockError> {
        let url = self.parse_url()?;
        if !url.tls
            && (self.tls_ca_file.is_some()
                || self.tls_cert_file.is_some()
                || self.tls_key_file.is_some())
        {
            return Err(LockError::invalid_argument(
                "tls_ca_file",
                "TLS files are set but the URL is not etcds://",
            ));
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return Err(LockError::invalid_argument(
                "tls_cert_file",
                "a client certificate needs both tls_cert_file and tls_key_file",
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
        ] {
            if value.is_zero() {
                return Err(LockError::invalid_argument(field, "must be above zero"));
            }
        }
        if self.min_ttl < Duration::from_secs(1) || self.min_ttl.subsec_nanos() != 0 {
            return Err(LockError::invalid_argument(
                "min_ttl",
                "must be a whole number of seconds, at least 1 s",
            ));
        }
        if self.limits.max_ttl > MAX_TTL || self.limits.max_ttl < self.min_ttl {
            return Err(LockError::invalid_argument(
                "limits.max_ttl",
                "must lie between min_ttl and 365 days",
            ));
        }
        Ok(())
    }
}

/// What a URL names.
#[derive(Debug)]
struct ParsedUrl {
    endpoints: Vec<String>,
    tls: bool,
    credentials: Option<(String, String)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_urls_name_http_endpoints_with_the_default_port() {
        let config = EtcdConfig::from_url("etcd://a:1,b,[::1]:3,[::1]");
        assert_eq!(
            config.endpoints().expect("valid"),
            [
                "http://a:1",
                "http://b:2379",
                "http://[::1]:3",
                "http://[::1]:2379"
            ]
        );
        let config = EtcdConfig::from_url("http://127.0.0.1:2379,http://127.0.0.1:22379");
        assert_eq!(
            config.endpoints().expect("valid"),
            ["http://127.0.0.1:2379", "http://127.0.0.1:22379"]
        );
    }

    #[test]
    fn bad_urls_are_invalid_arguments() {
        for url in [
            "",
            "redis://a:1",
            "etcd://",
            "etcd://a:x",
            "etcd://a:1,",
            "etcd://u@a:1",
            "etcd://:p@a:1",
            "etcd://a:1/path",
        ] {
            let checked = EtcdConfig::from_url(url).check();
            assert!(
                matches!(
                    checked,
                    Err(LockError::InvalidArgument { field: "url", .. })
                ),
                "{url}: {checked:?}"
            );
        }
    }

    #[test]
    fn tls_and_credentials_come_from_the_url() {
        let config = EtcdConfig::from_url("etcds://root:p@ss@a:1,b");
        assert!(config.uses_tls());
        assert_eq!(
            config.endpoints().expect("valid"),
            ["https://a:1", "https://b:2379"]
        );
        assert_eq!(
            config.credentials().expect("valid"),
            Some(("root".to_string(), "p@ss".to_string()))
        );
        let plain = EtcdConfig::from_url("etcd://a");
        assert!(!plain.uses_tls());
        assert_eq!(plain.credentials().expect("valid"), None);
        let mut mixed = EtcdConfig::from_url("etcd://a");
        mixed.tls_ca_file = Some("ca.pem".into());
        assert!(mixed.check().is_err());
    }

    #[test]
    fn passwords_never_show_in_debug() {
        let config = EtcdConfig::from_url("etcd://root:hunter2@a:1");
        assert!(!format!("{config:?}").contains("hunter2"));
    }

    #[test]
    fn ttl_settings_must_be_whole_seconds_within_the_limits() {
        let mut config = EtcdConfig::default();
        assert!(config.check().is_ok());
        config.min_ttl = Duration::from_millis(1500);
        assert!(config.check().is_err());
        config.min_ttl = Duration::from_secs(2);
        config.limits = Limits::new(Duration::from_secs(1), Duration::from_secs(1));
        assert!(config.check().is_err());
    }
}
