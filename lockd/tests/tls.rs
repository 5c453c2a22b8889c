//! TLS on both listeners of the real `lockd` binary (`--tls-cert`, `--tls-key`,
//! `--tls-client-ca`), with certificates each test makes itself (rcgen): round trips through
//! lockd-client over `https://` and `grpcs://`; plaintext, untrusted and expired certificates
//! refused; mutual TLS (no client certificate, another CA's, an expired one, a good one); the
//! non-loopback rule satisfied by client certificates; and SIGHUP reloads that new connections
//! see while open ones keep working.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Setup failures should fail the test loudly.

mod support;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use lockcore::{ListQuery, LockError, LockService, ObjectId, OwnerId};
use lockd_client::ClientConfig;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SerialNumber,
};
use support::{unique, Lockd};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// Longest any test here may run.
const TEST_LIMIT: Duration = Duration::from_secs(90);

/// Runs a test body, failing it if it takes longer than [`TEST_LIMIT`].
async fn bounded<F: Future>(test: F) -> F::Output {
    tokio::time::timeout(TEST_LIMIT, test)
        .await
        .expect("the test finished within its time limit")
}

/// A certificate authority made for one test.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key"))
            .expect("CA certificate");
        Self { issuer }
    }

    /// A certificate this CA signs: for `names`, with `serial`, for `usage`; valid now unless
    /// `expired` (then valid only in 2020).
    fn issue(
        &self,
        names: &[&str],
        serial: u64,
        usage: ExtendedKeyUsagePurpose,
        expired: bool,
    ) -> Issued {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names).expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, format!("lockd test {serial}"));
        params.serial_number = Some(SerialNumber::from(serial));
        params.extended_key_usages = vec![usage];
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2020, 12, 31);
        }
        let key = KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("leaf certificate");
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }
}

/// A certificate and its key, as PEM.
struct Issued {
    cert_pem: String,
    key_pem: String,
}

/// Test PKI files in a temporary directory.
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `contents` to `name` atomically (a reload never reads half a file).
    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.path(name);
        let staging = self.path(&format!(".{name}.new"));
        std::fs::write(&staging, contents).expect("write PEM");
        std::fs::rename(&staging, &path).expect("move PEM into place");
        path
    }

    /// Writes a CA's certificate to `name`.
    fn ca(&self, name: &str, ca: &Ca) -> PathBuf {
        self.write(name, &ca.pem())
    }

    /// Writes an issued certificate and key to `NAME.pem` and `NAME-key.pem`.
    fn issued(&self, name: &str, issued: &Issued) -> (PathBuf, PathBuf) {
        (
            self.write(&format!("{name}.pem"), &issued.cert_pem),
            self.write(&format!("{name}-key.pem"), &issued.key_pem),
        )
    }
}

/// A server certificate for the address lockd prints (127.0.0.1) and `localhost`.
fn server_cert(ca: &Ca, serial: u64, expired: bool) -> Issued {
    ca.issue(
        &["127.0.0.1", "localhost"],
        serial,
        ExtendedKeyUsagePurpose::ServerAuth,
        expired,
    )
}

fn client_cert(ca: &Ca, serial: u64, expired: bool) -> Issued {
    ca.issue(
        &["node-1.lockd.test"],
        serial,
        ExtendedKeyUsagePurpose::ClientAuth,
        expired,
    )
}

fn arg(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temp path")
}

/// Starts lockd serving TLS with `cert` and `key`, and the extra `args`.
async fn start_tls(cert: &Path, key: &Path, args: &[&str]) -> Lockd {
    let mut all = vec!["--tls-cert", arg(cert), "--tls-key", arg(key)];
    all.extend_from_slice(args);
    Lockd::start(&all).await
}

/// The `host:port` of a URL lockd printed.
fn address(url: &str) -> &str {
    url.split_once("://").expect("a URL").1
}

/// lockd-client's [`LockService`] for `url` with `ca` trusted and the client certificate, if
/// any.
fn client(url: &str, ca: Option<&Path>, identity: Option<(&Path, &Path)>) -> Arc<dyn LockService> {
    let mut config = ClientConfig::from_url(url)
        .with_connect_timeout(Duration::from_secs(5))
        .with_request_timeout(Duration::from_secs(5));
    if let Some(ca) = ca {
        config = config.with_ca_file(ca);
    }
    if let Some((cert, key)) = identity {
        config = config.with_client_cert(cert, key);
    }
    lockd_client::connect(config).expect("client config is valid")
}

/// Acquires and releases a fresh object through `client`.
async fn round_trip(client: &dyn LockService) -> Result<(), LockError> {
    let object = ObjectId::new(unique("tls"))?;
    let owner = OwnerId::new("node-1")?;
    let lease = client
        .acquire(&object, &owner, Duration::from_secs(30), Duration::ZERO)
        .await?;
    assert_eq!(lease.object, object);
    client.release(&object, &lease.token).await?;
    Ok(())
}

/// Whether `result` is a refusal to connect: `Unavailable` (the transport failed), never an
/// answer of lockd's.
fn assert_unavailable<T: std::fmt::Debug>(result: Result<T, LockError>, what: &str) {
    match result {
        Err(LockError::Unavailable { .. }) => {}
        other => panic!("{what}: expected Unavailable, got {other:?}"),
    }
}

/// A rustls client (ring) trusting `ca`, offering `alpn`, presenting no client certificate.
fn raw_tls_client(ca: &Path, alpn: &[u8]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("CA file") {
        roots.add(cert.expect("CA PEM")).expect("CA certificate");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// Opens a TLS connection to `addr` (`127.0.0.1:PORT`).
async fn raw_tls(addr: &str, ca: &Path, alpn: &[u8]) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from("127.0.0.1").expect("server name");
    raw_tls_client(ca, alpn)
        .connect(name, tcp)
        .await
        .expect("TLS handshake")
}

/// The serial number of the certificate `stream`'s server presented.
fn peer_serial(stream: &TlsStream<TcpStream>) -> u64 {
    let certs = stream
        .get_ref()
        .1
        .peer_certificates()
        .expect("a certificate");
    serial_of(certs[0].as_ref())
}

/// The serial number of a DER certificate: `Certificate ::= SEQUENCE { tbsCertificate
/// SEQUENCE { [0] version OPTIONAL, serialNumber INTEGER, ... } ... }`.
fn serial_of(der: &[u8]) -> u64 {
    /// (tag, header length, content length) of the DER element at the start of `bytes`.
    fn element(bytes: &[u8]) -> (u8, usize, usize) {
        let tag = bytes[0];
        let first = bytes[1];
        if first < 0x80 {
            return (tag, 2, usize::from(first));
        }
        let count = usize::from(first & 0x7f);
        let length = bytes[2..2 + count]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (tag, 2 + count, length)
    }
    let (_, header, _) = element(der);
    let tbs = &der[header..];
    let (_, header, _) = element(tbs);
    let mut rest = &tbs[header..];
    if rest[0] == 0xa0 {
        let (_, header, length) = element(rest);
        rest = &rest[header + length..];
    }
    let (tag, header, length) = element(rest);
    assert_eq!(tag, 0x02, "serialNumber is an INTEGER");
    let bytes = &rest[header..header + length];
    assert!(bytes.len() <= 9, "a test serial fits in u64");
    bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
}

/// Sends `GET /healthz` on an open HTTP/1.1 connection and returns the status code.
async fn get_healthz<S>(stream: &mut S) -> u16
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: lockd\r\n\r\n")
        .await
        .expect("send request");
    let mut received = Vec::new();
    let mut buf = [0u8; 1024];
    let head_end = loop {
        if let Some(at) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = stream.read(&mut buf).await.expect("read response");
        assert!(n > 0, "connection closed before the response head");
        received.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&received[..head_end]).to_ascii_lowercase();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status code");
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|value| value.trim().parse().ok())
        .expect("a content-length");
    while received.len() < head_end + length {
        let n = stream.read(&mut buf).await.expect("read body");
        assert!(n > 0, "connection closed before the body");
        received.extend_from_slice(&buf[..n]);
    }
    status
}

/// Sends SIGHUP to lockd.
fn hang_up(lockd: &Lockd) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(lockd.pid()),
        nix::sys::signal::Signal::SIGHUP,
    )
    .expect("send SIGHUP");
}

/// Waits (at most 10 s) until lockd's log contains `needle`.
async fn wait_for_log(lockd: &Lockd, needle: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !lockd.stderr().contains(needle) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "lockd never logged {needle:?}:\n{}",
            lockd.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// With `--tls-cert`, lockd announces `https://` and `grpcs://`, and lockd-client does lock
/// round trips over both, trusting the private CA through `ca_file`.
#[tokio::test]
async fn https_and_grpcs_round_trips_through_lockd_client() {
    bounded(async {
        let files = Files::new();
        let ca = Ca::new("lockd test CA");
        let ca_file = files.ca("ca.pem", &ca);
        let (cert, key) = files.issued("server", &server_cert(&ca, 1, false));
        let lockd = start_tls(&cert, &key, &[]).await;
        let grpc_url = lockd.grpc_url.clone().expect("gRPC on");
        assert!(lockd.url.starts_with("https://127.0.0.1:"), "{}", lockd.url);
        assert!(grpc_url.starts_with("grpcs://127.0.0.1:"), "{grpc_url}");

        for url in [lockd.url.as_str(), grpc_url.as_str()] {
            let client = client(url, Some(&ca_file), None);
            round_trip(client.as_ref())
                .await
                .unwrap_or_else(|e| panic!("round trip over {url}: {e}"));
            client.health().await.expect("healthy");
        }
    })
    .await;
}

/// The TLS listeners answer no plaintext: lockd-client over `http://` and `grpc://` to them
/// fails to connect, a raw plaintext request gets no HTTP answer, and a client that does not
/// trust the server's CA is refused too. Nothing they asked for was granted.
#[tokio::test]
async fn plaintext_and_untrusting_clients_are_refused() {
    bounded(async {
        let files = Files::new();
        let ca = Ca::new("lockd test CA");
        let ca_file = files.ca("ca.pem", &ca);
        let (cert, key) = files.issued("server", &server_cert(&ca, 1, false));
        let lockd = start_tls(&cert, &key, &[]).await;
        let grpc_url = lockd.grpc_url.clone().expect("gRPC on");
        let http_addr = address(&lockd.url).to_owned();
        let grpc_addr = address(&grpc_url).to_owned();

        let object = ObjectId::new(unique("refused")).unwrap();
        let owner = OwnerId::new("intruder").unwrap();
        let plain = client(&format!("http://{http_addr}"), None, None);
        let attempt = plain
            .acquire(&object, &owner, Duration::from_secs(30), Duration::ZERO)
            .await;
        assert_unavailable(attempt, "plaintext HTTP");
        // HTTP/2 reads the server's TLS alert as a protocol error, which tonic reports as
        // INTERNAL (not a lockd answer: it carries no lockd error detail).
        let plain = client(&format!("grpc://{grpc_addr}"), None, None);
        let attempt = plain
            .acquire(&object, &owner, Duration::from_secs(30), Duration::ZERO)
            .await;
        match attempt {
            Err(LockError::Unavailable { .. }) => {}
            Err(LockError::Internal(message)) if message.contains("protocol error") => {}
            other => panic!("plaintext gRPC: expected a transport failure, got {other:?}"),
        }
        for (url, what) in [
            (lockd.url.clone(), "https without the CA"),
            (grpc_url.clone(), "grpcs without the CA"),
        ] {
            let untrusting = client(&url, None, None);
            let attempt = untrusting
                .acquire(&object, &owner, Duration::from_secs(30), Duration::ZERO)
                .await;
            assert_unavailable(attempt, what);
        }

        // A plaintext request gets a TLS alert or nothing, never an HTTP response.
        let mut raw = TcpStream::connect(&http_addr).await.expect("connect");
        raw.write_all(b"GET /healthz HTTP/1.1\r\nhost: lockd\r\n\r\n")
            .await
            .expect("send");
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut answer)).await;
        assert!(
            !answer.starts_with(b"HTTP/"),
            "{:?}",
            String::from_utf8_lossy(&answer)
        );

        // None of the refused acquires took the lock.
        let trusted = client(&lockd.url, Some(&ca_file), None);
        let lease = trusted
            .acquire(
                &object,
                &OwnerId::new("node-1").unwrap(),
                Duration::from_secs(30),
                Duration::ZERO,
            )
            .await
            .expect("the object is free");
        trusted
            .release(&object, &lease.token)
            .await
            .expect("release");
    })
    .await;
}

/// A server certificate that has expired is refused by lockd-client on both transports.
#[tokio::test]
async fn an_expired_server_certificate_is_refused() {
    bounded(async {
        let files = Files::new();
        let ca = Ca::new("lockd test CA");
        let ca_file = files.ca("ca.pem", &ca);
        let (cert, key) = files.issued("server", &server_cert(&ca, 1, true));
        let lockd = start_tls(&cert, &key, &[]).await;
        let grpc_url = lockd.grpc_url.clone().expect("gRPC on");
        for url in [lockd.url.as_str(), grpc_url.as_str()] {
            let client = client(url, Some(&ca_file), None);
            assert_unavailable(round_trip(client.as_ref()).await, url);
        }
    })
    .await;
}

/// With `--tls-client-ca`, both listeners require a client certificate from that CA, still
/// valid: none, another CA's, or an expired one is refused (and audited); a good one works.
#[tokio::test]
async fn mutual_tls_requires_a_valid_client_certificate_from_the_client_ca() {
    bounded(async {
        let files = Files::new();
        let server_ca = Ca::new("lockd server CA");
        let client_ca = Ca::new("lockd client CA");
        let rogue_ca = Ca::new("someone else's CA");
        let server_ca_file = files.ca("server-ca.pem", &server_ca);
        let client_ca_file = files.ca("client-ca.pem", &client_ca);
        let (cert, key) = files.issued("server", &server_cert(&server_ca, 1, false));
        let good = files.issued("good", &client_cert(&client_ca, 10, false));
        let rogue = files.issued("rogue", &client_cert(&rogue_ca, 11, false));
        let expired = files.issued("expired", &client_cert(&client_ca, 12, true));
        let lockd = start_tls(&cert, &key, &["--tls-client-ca", arg(&client_ca_file)]).await;
        let grpc_url = lockd.grpc_url.clone().expect("gRPC on");

        for url in [lockd.url.as_str(), grpc_url.as_str()] {
            let refused: [(Option<(&Path, &Path)>, &str); 3] = [
                (None, "no client certificate"),
                (Some((&rogue.0, &rogue.1)), "a certificate from another CA"),
                (Some((&expired.0, &expired.1)), "an expired certificate"),
            ];
            for (identity, what) in refused {
                let client = client(url, Some(&server_ca_file), identity);
                let listed = client.list(&ListQuery::new("/", 10)).await;
                assert_unavailable(listed, &format!("{url} with {what}"));
            }
            let client = client(url, Some(&server_ca_file), Some((&good.0, &good.1)));
            round_trip(client.as_ref())
                .await
                .unwrap_or_else(|e| panic!("{url} with a good certificate: {e}"));
        }
        wait_for_log(&lockd, "client certificate missing or not accepted").await;
    })
    .await;
}

/// Without API keys lockd refuses a non-loopback listener, unless clients must present
/// certificates: then it gets past that rule (and here fails only to bind 192.0.2.1, an address
/// of TEST-NET-1 this machine does not have, so nothing is exposed).
#[tokio::test]
async fn client_certificates_count_as_authentication_for_non_loopback_listeners() {
    bounded(async {
        let files = Files::new();
        let ca = Ca::new("lockd test CA");
        let ca_file = files.ca("ca.pem", &ca);
        let (cert, key) = files.issued("server", &server_cert(&ca, 1, false));
        let base = [
            "--listen",
            "192.0.2.1:0",
            "--tls-cert",
            arg(&cert),
            "--tls-key",
            arg(&key),
        ];

        let Err(tls_only) = Lockd::try_start(&base, &[]).await else {
            panic!("lockd listened on a non-loopback address without authentication");
        };
        assert!(
            tls_only.stderr.contains("refusing to listen"),
            "{}",
            tls_only.stderr
        );

        let mut mutual = base.to_vec();
        mutual.extend(["--tls-client-ca", arg(&ca_file)]);
        match Lockd::try_start(&mutual, &[]).await {
            Err(failed) => {
                assert!(
                    !failed.stderr.contains("refusing to listen"),
                    "{}",
                    failed.stderr
                );
                assert!(
                    failed.stderr.contains("cannot listen on 192.0.2.1"),
                    "{}",
                    failed.stderr
                );
            }
            // A machine that binds foreign addresses (ip_nonlocal_bind) lets it start: the
            // rule accepted it all the same.
            Ok(lockd) => lockd.kill().await,
        }
    })
    .await;
}

/// TLS settings that cannot work stop the start with one line naming what is wrong: a key
/// without its certificate, a missing file, a key that is not the certificate's.
#[tokio::test]
async fn unusable_tls_settings_stop_the_start_with_one_line() {
    bounded(async {
        let files = Files::new();
        let ca = Ca::new("lockd test CA");
        let (cert, key) = files.issued("server", &server_cert(&ca, 1, false));
        let (_, other_key) = files.issued("other", &server_cert(&ca, 2, false));
        let missing = files.path("missing.pem");
        let cases: [(Vec<&str>, &str); 3] = [
            (vec!["--tls-key", arg(&key)], "tls_key needs tls_cert"),
            (
                vec!["--tls-cert", arg(&missing), "--tls-key", arg(&key)],
                arg(&missing),
            ),
            (
                vec!["--tls-cert", arg(&cert), "--tls-key", arg(&other_key)],
                "TLS setup failed",
            ),
        ];
        for (args, expected) in cases {
            let Err(failed) = Lockd::try_start(&args, &[]).await else {
                panic!("lockd started with {args:?}");
            };
            assert_eq!(failed.code, Some(1), "{args:?}");
            let error_lines: Vec<&str> = failed
                .stderr
                .lines()
                .filter(|line| line.starts_with("lockd: error:"))
                .collect();
            assert_eq!(error_lines.len(), 1, "{}", failed.stderr);
            assert!(error_lines[0].contains(expected), "{}", failed.stderr);
        }
    })
    .await;
}

/// SIGHUP reloads the certificate: a reload from a broken file is logged and changes nothing;
/// after a good one, new connections on both listeners get the new certificate (its serial),
/// while a kept-alive HTTP connection and the gRPC client's connection keep working.
#[tokio::test]
async fn sighup_reloads_the_certificate_for_new_connections_only() {
    bounded(async {
        let files = Files::new();
        let ca = Ca::new("lockd test CA");
        let ca_file = files.ca("ca.pem", &ca);
        let (cert, key) = files.issued("server", &server_cert(&ca, 1, false));
        let lockd = start_tls(&cert, &key, &[]).await;
        let grpc_url = lockd.grpc_url.clone().expect("gRPC on");
        let http_addr = address(&lockd.url).to_owned();
        let grpc_addr = address(&grpc_url).to_owned();

        let mut kept = raw_tls(&http_addr, &ca_file, b"http/1.1").await;
        assert_eq!(peer_serial(&kept), 1);
        assert_eq!(get_healthz(&mut kept).await, 200);
        let grpc = client(&grpc_url, Some(&ca_file), None);
        round_trip(grpc.as_ref()).await.expect("gRPC before reload");

        // A broken certificate file: the reload fails and the old certificate stays.
        files.write("server.pem", "not a certificate\n");
        hang_up(&lockd);
        wait_for_log(&lockd, "cannot reload the TLS certificate").await;
        let fresh = raw_tls(&http_addr, &ca_file, b"http/1.1").await;
        assert_eq!(peer_serial(&fresh), 1);
        assert!(lockd.stderr().contains("still serving the previous one"));

        // A new certificate and key: new connections get them once lockd has reloaded.
        files.issued("server", &server_cert(&ca, 2, false));
        hang_up(&lockd);
        wait_for_log(&lockd, "reloaded the TLS certificate").await;
        let mut fresh = raw_tls(&http_addr, &ca_file, b"http/1.1").await;
        assert_eq!(peer_serial(&fresh), 2);
        assert_eq!(get_healthz(&mut fresh).await, 200);
        let fresh_grpc = raw_tls(&grpc_addr, &ca_file, b"h2").await;
        assert_eq!(peer_serial(&fresh_grpc), 2);
        assert_eq!(fresh_grpc.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));

        // The connections opened before keep working, on the certificate they started with.
        assert_eq!(get_healthz(&mut kept).await, 200);
        assert_eq!(peer_serial(&kept), 1);
        round_trip(grpc.as_ref()).await.expect("gRPC after reload");
        // And lockd-client's new connections trust the new certificate too.
        let https = client(&lockd.url, Some(&ca_file), None);
        round_trip(https.as_ref())
            .await
            .expect("https after reload");
    })
    .await;
}

/// The PEM files the tests write are what lockd-client and lockd read (a check of the test's
/// own helpers: a serial written is the serial read back).
#[test]
fn test_certificates_carry_the_serial_they_were_given() {
    let ca = Ca::new("lockd test CA");
    let issued = server_cert(&ca, 0x0080_1234_5678_9abc, false);
    let der = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).expect("PEM");
    assert_eq!(serial_of(der.as_ref()), 0x0080_1234_5678_9abc);
    assert!(PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).is_ok());
}
