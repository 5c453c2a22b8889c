//! [`ClientConfig`]: where lockd is and how to talk to it.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// Default time allowed to open a TCP (and TLS) connection to lockd.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default time allowed for one request, on top of any `wait` a blocking acquire asks for.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Default URL: lockd's default listen address.
pub const DEFAULT_URL: &str = "http://127.0.0.1:7070";

/// How a [`LockdClient`](crate::LockdClient) reaches lockd.
///
/// Deserializes from TOML or JSON with every field optional (missing fields take their
/// defaults); durations are written the human way (`"2s"`, `"1500ms"`). `Debug` never shows the
/// API key.
///
/// ```
/// use std::time::Duration;
/// use lockd_client::ClientConfig;
///
/// let mut config = ClientConfig::from_url("http://127.0.0.1:7070");
/// config.api_key = Some("s3cret".into());
/// config.request_timeout = Duration::from_secs(5);
/// assert!(!format!("{config:?}").contains("s3cret"));
/// ```
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ClientConfig {
    /// Base URL of the lockd server, `http://` or `https://` (a path prefix is kept, so lockd
    /// may sit behind a proxy at `https://proxy/lockd`), or `grpc://host:port` /
    /// `grpcs://host:port` (TLS) for its gRPC API (through [`connect`](crate::connect)).
    /// Default `http://127.0.0.1:7070`.
    pub url: String,
    /// Sent as `Authorization: Bearer KEY` on every request when set.
    pub api_key: Option<String>,
    /// Time allowed to connect (default 2 s).
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Time allowed for one request (default 10 s). A blocking acquire gets its `wait` on top.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// A PEM file of extra CA certificates to trust for `https://` and `grpcs://` (a private
    /// CA), on top of the built-in web roots.
    pub ca_file: Option<PathBuf>,
    /// A PEM client certificate chain presented over `https://` and `grpcs://`, for a lockd
    /// that requires one (`--tls-client-ca`, mutual TLS); needs `client_key`.
    pub client_cert: Option<PathBuf>,
    /// The PEM private key of `client_cert`.
    pub client_key: Option<PathBuf>,
}

impl Default for ClientConfig {
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

impl ClientConfig {
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

    /// Trusts the CA certificates in the PEM file at `path` (builder style).
    pub fn with_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    /// Presents the PEM certificate chain at `cert`, with its PEM private key at `key`, over
    /// TLS (builder style): for a lockd that requires client certificates.
    pub fn with_client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.client_cert = Some(cert.into());
        self.client_key = Some(key.into());
        self
    }

    /// Sets the per-request timeout (builder style).
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_fields_take_their_defaults() {
        let config: ClientConfig =
            serde_json::from_str(r#"{"url": "https://locks.example:7443"}"#).unwrap();
        assert_eq!(config.url, "https://locks.example:7443");
        assert_eq!(config.api_key, None);
        assert_eq!(config.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(config.request_timeout, DEFAULT_REQUEST_TIMEOUT);
    }

    #[test]
    fn durations_are_human_readable() {
        let config: ClientConfig =
            serde_json::from_str(r#"{"connect_timeout": "250ms", "request_timeout": "3s"}"#)
                .unwrap();
        assert_eq!(config.connect_timeout, Duration::from_millis(250));
        assert_eq!(config.request_timeout, Duration::from_secs(3));
        let back = serde_json::to_string(&config).unwrap();
        assert!(back.contains("\"250ms\""), "{back}");
    }

    #[test]
    fn tls_files_are_read_from_the_config() {
        let config: ClientConfig = serde_json::from_str(
            r#"{"url": "grpcs://locks.example:7071", "ca_file": "ca.pem",
                "client_cert": "client.pem", "client_key": "client-key.pem"}"#,
        )
        .unwrap();
        assert_eq!(
            config,
            ClientConfig::from_url("grpcs://locks.example:7071")
                .with_ca_file("ca.pem")
                .with_client_cert("client.pem", "client-key.pem")
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        let result = serde_json::from_str::<ClientConfig>(r#"{"ulr": "http://x"}"#);
        assert!(result.is_err());
    }

    #[test]
    fn debug_hides_the_api_key() {
        let config = ClientConfig::from_url("http://127.0.0.1:1").with_api_key("hunter2-key");
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2-key"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }
}
