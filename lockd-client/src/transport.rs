//! [`connect`]: the [`LockService`] a URL names, over HTTP or gRPC.

use std::sync::Arc;

use lockcore::{LockError, LockResult, LockService};
#[cfg(feature = "grpc")]
use lockd_grpc::{GrpcClient, GrpcConfig};

use crate::{ClientConfig, LockdClient};

/// The transports [`connect`] speaks, by URL scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Transport {
    /// `http://` or `https://`: lockd's HTTP/JSON API ([`LockdClient`]).
    Http,
    /// `grpc://host[:port]` (port 7071 when omitted), or `grpcs://` for TLS: lockd's gRPC API
    /// (lockd-grpc's `GrpcClient`; needs this crate's `grpc` feature, on by default).
    Grpc,
}

impl Transport {
    /// The transport of `url`, by its scheme (case-insensitive); anything else is
    /// [`LockError::InvalidArgument`] (field `url`).
    pub fn of_url(url: &str) -> LockResult<Self> {
        let scheme = url
            .trim()
            .split_once("://")
            .map(|(scheme, _)| scheme.to_ascii_lowercase());
        match scheme.as_deref() {
            Some("http" | "https") => Ok(Transport::Http),
            Some("grpc" | "grpcs") => Ok(Transport::Grpc),
            _ => Err(LockError::invalid_argument(
                "url",
                format!("`{url}` must start with http://, https://, grpc:// or grpcs://"),
            )),
        }
    }
}

/// A [`LockService`] talking to the lockd `config.url` names: a [`LockdClient`] for
/// `http(s)://`, lockd-grpc's `GrpcClient` for `grpc(s)://host:port` (with the `grpc` feature;
/// without it, `grpc://` is refused as [`LockError::InvalidArgument`]). Both behave alike (same typed
/// errors, same take-back of acquires whose answer was lost); the API key and timeouts apply to
/// both, `ca_file` and the client certificate to `https://` and `grpcs://`.
///
/// Does not contact the server. Refuses a URL of another scheme with
/// [`LockError::InvalidArgument`].
///
/// ```
/// # #[cfg(feature = "grpc")]
/// # fn demo() -> Result<(), lockcore::LockError> {
/// let over_grpc = lockd_client::connect(lockd_client::ClientConfig::from_url("grpc://127.0.0.1:7071"))?;
/// assert_eq!(over_grpc.backend(), "grpc");
/// # Ok(()) }
/// ```
pub fn connect(config: ClientConfig) -> LockResult<Arc<dyn LockService>> {
    match Transport::of_url(&config.url)? {
        Transport::Http => Ok(Arc::new(LockdClient::new(config)?)),
        #[cfg(feature = "grpc")]
        Transport::Grpc => Ok(Arc::new(grpc_client(&config)?)),
        #[cfg(not(feature = "grpc"))]
        Transport::Grpc => Err(LockError::invalid_argument(
            "url",
            "grpc:// support is not built into this lockd-client (cargo feature `grpc` is off)",
        )),
    }
}

/// The [`GrpcClient`] for a `grpc://` `config`.
#[cfg(feature = "grpc")]
pub fn grpc_client(config: &ClientConfig) -> LockResult<GrpcClient> {
    let mut grpc = GrpcConfig::from_url(config.url.trim())
        .with_connect_timeout(config.connect_timeout)
        .with_request_timeout(config.request_timeout);
    if let Some(key) = &config.api_key {
        grpc = grpc.with_api_key(key.clone());
    }
    grpc.ca_file.clone_from(&config.ca_file);
    grpc.client_cert.clone_from(&config.client_cert);
    grpc.client_key.clone_from(&config.client_key);
    GrpcClient::new(grpc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scheme_picks_the_transport() {
        assert_eq!(
            Transport::of_url("http://127.0.0.1:7070"),
            Ok(Transport::Http)
        );
        assert_eq!(
            Transport::of_url("HTTPS://locks.example"),
            Ok(Transport::Http)
        );
        assert_eq!(
            Transport::of_url(" grpc://127.0.0.1:7071"),
            Ok(Transport::Grpc)
        );
        assert_eq!(Transport::of_url("GRPCS://x:1"), Ok(Transport::Grpc));
        for refused in ["ftp://x", "127.0.0.1:7070", ""] {
            assert!(
                matches!(
                    Transport::of_url(refused),
                    Err(LockError::InvalidArgument { field: "url", .. })
                ),
                "{refused}"
            );
        }
    }

    #[cfg(feature = "grpc")]
    #[tokio::test]
    async fn each_transport_reports_its_backend_name() {
        let http = connect(ClientConfig::from_url("http://127.0.0.1:7070")).expect("http");
        assert_eq!(http.backend(), crate::BACKEND);
        let grpc = connect(ClientConfig::from_url("grpc://127.0.0.1:7071").with_api_key("k"))
            .expect("grpc");
        assert_eq!(grpc.backend(), lockd_grpc::BACKEND);
        assert!(connect(ClientConfig::from_url("grpc://")).is_err());
    }
}
