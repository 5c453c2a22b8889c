//! A scripted HTTP/1.1 server standing in for lockd: records every request and answers from a
//! closure, keeping connections alive.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lockcore::{Fence, LockToken, ObjectId, TokenIssuer};
use lockd_client::{ClientConfig, LockdClient};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

/// One request as the scripted server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub headers: HashMap<String, String>,
    pub body: serde_json::Value,
}

/// The scripted answer: status, body, and how long to wait before sending it.
pub type Script = dyn Fn(&Seen) -> (u16, String, Duration) + Send + Sync;

pub struct FakeLockd {
    pub url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    pub connections: Arc<AtomicUsize>,
}

impl FakeLockd {
    pub async fn start(
        script: impl Fn(&Seen) -> (u16, String, Duration) + Send + Sync + 'static,
    ) -> Self {
        Self::start_with(None, script).await
    }

    /// Like [`FakeLockd::start`], speaking TLS with `tls` when given (URL `https://localhost`).
    pub async fn start_with(
        tls: Option<tokio_rustls::TlsAcceptor>,
        script: impl Fn(&Seen) -> (u16, String, Duration) + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let url = match tls {
            Some(_) => format!("https://localhost:{port}"),
            None => format!("http://127.0.0.1:{port}"),
        };
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let script: Arc<Script> = Arc::new(script);
        let (seen2, connections2) = (seen.clone(), connections.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                connections2.fetch_add(1, Ordering::SeqCst);
                let (seen, script) = (seen2.clone(), script.clone());
                match &tls {
                    None => {
                        tokio::spawn(serve(stream, seen, script));
                    }
                    Some(acceptor) => {
                        let acceptor = acceptor.clone();
                        tokio::spawn(async move {
                            // A client that refuses our certificate ends the handshake here.
                            if let Ok(stream) = acceptor.accept(stream).await {
                                serve(stream, seen, script).await;
                            }
                        });
                    }
                }
            }
        });
        Self {
            url,
            seen,
            connections,
        }
    }

    pub fn client(&self) -> LockdClient {
        LockdClient::new(ClientConfig::from_url(&self.url)).unwrap()
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// Answers HTTP/1.1 requests on one connection until the client closes it.
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    seen: Arc<Mutex<Vec<Seen>>>,
    script: Arc<Script>,
) {
    let mut buffer = Vec::new();
    loop {
        let head_end = loop {
            if let Some(pos) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break pos;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
        let mut lines = head.split("\r\n");
        let mut start = lines.next().unwrap_or("").split(' ');
        let method = start.next().unwrap_or("").to_owned();
        let target = start.next().unwrap_or("").to_owned();
        let headers: HashMap<String, String> = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let length: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        buffer.drain(..head_end + 4);
        while buffer.len() < length {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        }
        let body: Vec<u8> = buffer.drain(..length).collect();
        let request = Seen {
            method,
            target,
            headers,
            body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        };
        seen.lock().unwrap().push(request.clone());
        let (status, body, delay) = script(&request);
        tokio::time::sleep(delay).await;
        let response = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        if stream.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// A TLS acceptor with the test server certificate (for `localhost` and 127.0.0.1), signed by
/// the test CA in `tests/data/test-ca.pem`. Test-only keys: never trust this CA elsewhere.
pub fn test_tls_acceptor() -> tokio_rustls::TlsAcceptor {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls;

    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");
    let certs = CertificateDer::pem_file_iter(format!("{data}/test-server.pem"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(format!("{data}/test-server-key.pem")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

pub fn token(object: &str, fence: u64) -> LockToken {
    let issuer = TokenIssuer::random();
    issuer.seal(
        issuer.prepare(),
        &ObjectId::new(object).unwrap(),
        Fence(fence),
    )
}

pub fn grant_body(object: &str, owner: &str, fence: u64, ttl_ms: u64) -> String {
    serde_json::json!({
        "object": object,
        "owner": owner,
        "token": token(object, fence).expose(),
        "fence": fence,
        "ttl_ms": ttl_ms,
    })
    .to_string()
}
