//! TLS on both listeners (`--tls-cert`, `--tls-key`, `--tls-client-ca`), with rustls (ring).
//!
//! [`TlsConfig`] names the PEM files; [`Certificates`] holds what was loaded from them: one
//! rustls server configuration per listener (HTTP/1.1 and gRPC differ only in ALPN). Every
//! accepted connection takes the configuration current at that moment, so a reload
//! ([`TlsReloader::reload`], on SIGHUP in `lockd serve`) swaps it for new connections while those
//! already open keep the one they were handshaken with: no connection is dropped. A reload that
//! fails (a missing file, a key that does not match its certificate) changes nothing.
//!
//! With a client CA the server requires every client to present a certificate that CA issued,
//! still valid (mutual TLS, as etcd's `--client-cert-auth`). Such a connection is authenticated
//! by its certificate, which is why the listener rule "no API keys only on loopback" accepts
//! a non-loopback listener with a client CA (see `server.rs`). API keys, when configured, are
//! still required on top.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

/// ALPN of the HTTP listener: lockd serves HTTP/1.1 there.
const ALPN_HTTP1: &[u8] = b"http/1.1";
/// ALPN of the gRPC listener: gRPC runs over HTTP/2 (tonic's client insists on it).
const ALPN_H2: &[u8] = b"h2";

/// Where the server's TLS certificate, key and (for mutual TLS) client CA are.
///
/// All three are PEM files: `cert` the certificate chain, leaf first; `key` its private key
/// (PKCS#8, PKCS#1 or SEC1); `client_ca` the CA certificates a client certificate must chain to.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsConfig {
    /// The certificate chain (`--tls-cert`).
    pub cert: PathBuf,
    /// Its private key (`--tls-key`).
    pub key: PathBuf,
    /// CA certificates for client certificates (`--tls-client-ca`); `Some` requires every
    /// client to present a certificate they issued (mutual TLS).
    pub client_ca: Option<PathBuf>,
}

impl TlsConfig {
    /// TLS with the certificate chain at `cert` and its key at `key`, without client
    /// certificates.
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        Self {
            cert: cert.into(),
            key: key.into(),
            client_ca: None,
        }
    }

    /// Requires client certificates issued by the CAs in the PEM file at `path` (builder style).
    pub fn with_client_ca(mut self, path: impl Into<PathBuf>) -> Self {
        self.client_ca = Some(path.into());
        self
    }

    /// Whether clients must present a certificate (mutual TLS).
    pub fn requires_client_certificates(&self) -> bool {
        self.client_ca.is_some()
    }
}

/// Why TLS could not be set up (at start) or reloaded (the old certificates then stay).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read the TLS {what} {}: {source}", path.display())]
    Read {
        /// `certificate`, `key` or `client CA`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// A file holds no PEM item of the kind expected, or a malformed one.
    #[error("the TLS {what} file {} {detail}", path.display())]
    Pem {
        /// `certificate`, `key` or `client CA`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// rustls refused the material: a key that does not match the certificate, a client CA it
    /// cannot use.
    #[error("TLS setup failed: {0}")]
    Invalid(String),
}

/// The rustls configurations of both listeners, swapped as a whole on reload.
struct Loaded {
    http: Arc<ServerConfig>,
    grpc: Arc<ServerConfig>,
}

/// What lockd's listeners serve TLS with: the files, and the configurations last loaded from
/// them.
pub(crate) struct Certificates {
    files: TlsConfig,
    current: RwLock<Loaded>,
}

impl fmt::Debug for Certificates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificates")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl Certificates {
    /// Loads the files; fails on anything missing or wrong.
    pub(crate) fn load(files: TlsConfig) -> Result<Self, TlsError> {
        let loaded = load(&files)?;
        Ok(Self {
            files,
            current: RwLock::new(loaded),
        })
    }

    /// Reads the files again and, if they make a valid configuration, serves it to new
    /// connections; on an error nothing changes.
    pub(crate) fn reload(&self) -> Result<(), TlsError> {
        let loaded = load(&self.files)?;
        *self.current.write() = loaded;
        Ok(())
    }

    /// The acceptor for a new HTTP connection.
    pub(crate) fn http(&self) -> TlsAcceptor {
        TlsAcceptor::from(Arc::clone(&self.current.read().http))
    }

    /// The acceptor for a new gRPC connection.
    pub(crate) fn grpc(&self) -> TlsAcceptor {
        TlsAcceptor::from(Arc::clone(&self.current.read().grpc))
    }

    /// Whether clients must present a certificate from the client CA.
    pub(crate) fn requires_client_certificates(&self) -> bool {
        self.files.requires_client_certificates()
    }
}

/// Reloads the TLS certificate, key and client CA of a running [`Server`](crate::Server) from
/// their files: new connections get the new ones, open connections keep theirs. `lockd serve`
/// calls it on SIGHUP; a program embedding the server calls it when it likes.
#[derive(Clone)]
pub struct TlsReloader(pub(crate) Arc<Certificates>);

impl fmt::Debug for TlsReloader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TlsReloader").field(&self.0.files).finish()
    }
}

impl TlsReloader {
    /// Reads the files again. On success new connections are served with what they hold; on
    /// an error (logged by the caller) the server keeps serving the previous certificate.
    pub fn reload(&self) -> Result<(), TlsError> {
        self.0.reload()
    }

    /// The files it reads.
    pub fn files(&self) -> &TlsConfig {
        &self.0.files
    }
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

fn certificates(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(what, path)?;
    let pem_error = |detail: String| TlsError::Pem {
        what,
        path: path.to_owned(),
        detail,
    };
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(format!("is not valid PEM: {e}")))?;
    if certificates.is_empty() {
        return Err(pem_error("holds no PEM certificate".to_owned()));
    }
    Ok(certificates)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read("key", path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Pem {
        what: "key",
        path: path.to_owned(),
        detail: format!("holds no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}"),
    })
}

/// Builds both listeners' configurations from the files.
fn load(files: &TlsConfig) -> Result<Loaded, TlsError> {
    let chain = certificates("certificate", &files.cert)?;
    let key = private_key(&files.key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = match &files.client_ca {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for certificate in certificates("client CA", path)? {
                roots.add(certificate).map_err(|e| TlsError::Pem {
                    what: "client CA",
                    path: path.clone(),
                    detail: format!("holds a certificate rustls cannot use as a CA: {e}"),
                })?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| TlsError::Invalid(format!("client CA: {e}")))?;
            Some(verifier)
        }
        None => None,
    };
    let config = |alpn: &[u8]| -> Result<Arc<ServerConfig>, TlsError> {
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Invalid(e.to_string()))?;
        let builder = match &verifier {
            Some(verifier) => builder.with_client_cert_verifier(verifier.clone()),
            None => builder.with_no_client_auth(),
        };
        // Checks that the key is the certificate's.
        let mut config = builder
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| {
                TlsError::Invalid(format!(
                    "certificate {} with key {}: {e}",
                    files.cert.display(),
                    files.key.display()
                ))
            })?;
        config.alpn_protocols = vec![alpn.to_vec()];
        Ok(Arc::new(config))
    };
    Ok(Loaded {
        http: config(ALPN_HTTP1)?,
        grpc: config(ALPN_H2)?,
    })
}

/// Logs a failed TLS handshake: on the audit target when a client certificate was missing or
/// refused (an authentication failure), at debug level otherwise (a plaintext client, a client
/// that does not trust the server, a scanner).
pub(crate) fn log_handshake_failure(error: &io::Error, peer: Option<SocketAddr>, transport: &str) {
    let rustls_error = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match rustls_error {
        Some(rustls::Error::NoCertificatesPresented | rustls::Error::InvalidCertificate(_)) => {
            tracing::warn!(
                target: "lockd::audit",
                transport,
                peer = ?peer,
                error = %error,
                "refused connection: client certificate missing or not accepted"
            );
        }
        _ => tracing::debug!(transport, peer = ?peer, error = %error, "TLS handshake failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn file(contents: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        f.write_all(contents).expect("write");
        f
    }

    /// A self-signed certificate for `localhost` and its key, as PEM.
    fn self_signed() -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
        let cert = params.self_signed(&key).expect("certificate");
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn a_certificate_and_its_key_load_for_both_listeners() {
        let (cert, key) = self_signed();
        let (cert, key) = (file(cert.as_bytes()), file(key.as_bytes()));
        let certificates =
            Certificates::load(TlsConfig::new(cert.path(), key.path())).expect("valid");
        assert!(!certificates.requires_client_certificates());
        let http = certificates.current.read().http.clone();
        let grpc = certificates.current.read().grpc.clone();
        assert_eq!(http.alpn_protocols, vec![b"http/1.1".to_vec()]);
        assert_eq!(grpc.alpn_protocols, vec![b"h2".to_vec()]);
    }

    #[test]
    fn missing_empty_and_mismatched_files_are_refused_with_the_file_named() {
        let (cert, key) = self_signed();
        let (_, other_key) = self_signed();
        let (cert, key, other_key) = (
            file(cert.as_bytes()),
            file(key.as_bytes()),
            file(other_key.as_bytes()),
        );
        let missing = Certificates::load(TlsConfig::new("/nonexistent/cert.pem", key.path()))
            .expect_err("missing certificate");
        assert!(matches!(
            missing,
            TlsError::Read {
                what: "certificate",
                ..
            }
        ));
        assert!(missing.to_string().contains("/nonexistent/cert.pem"));

        let empty = file(b"");
        let err = Certificates::load(TlsConfig::new(empty.path(), key.path()))
            .expect_err("no certificate");
        assert!(
            matches!(
                err,
                TlsError::Pem {
                    what: "certificate",
                    ..
                }
            ),
            "{err}"
        );

        let err = Certificates::load(TlsConfig::new(cert.path(), cert.path()))
            .expect_err("a certificate is no key");
        assert!(matches!(err, TlsError::Pem { what: "key", .. }), "{err}");

        let err = Certificates::load(TlsConfig::new(cert.path(), other_key.path()))
            .expect_err("another certificate's key");
        assert!(matches!(err, TlsError::Invalid(_)), "{err}");

        let err = Certificates::load(
            TlsConfig::new(cert.path(), key.path()).with_client_ca(empty.path()),
        )
        .expect_err("client CA without certificates");
        assert!(
            matches!(
                err,
                TlsError::Pem {
                    what: "client CA",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn a_failed_reload_keeps_the_configuration_in_use() {
        let (cert, key) = self_signed();
        let (cert, key) = (file(cert.as_bytes()), file(key.as_bytes()));
        let certificates =
            Certificates::load(TlsConfig::new(cert.path(), key.path())).expect("valid");
        let before = Arc::clone(&certificates.current.read().http);
        std::fs::write(cert.path(), b"not a certificate").expect("overwrite");
        assert!(certificates.reload().is_err());
        assert!(Arc::ptr_eq(&before, &certificates.current.read().http));

        let (new_cert, new_key) = self_signed();
        std::fs::write(cert.path(), new_cert).expect("overwrite");
        std::fs::write(key.path(), new_key).expect("overwrite");
        certificates.reload().expect("valid files");
        assert!(!Arc::ptr_eq(&before, &certificates.current.read().http));
    }
}
