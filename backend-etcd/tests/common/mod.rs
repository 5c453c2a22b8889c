//! Shared helpers for the etcd tests: the service under test from `LOCKD_TEST_ETCD_URL`, and
//! private etcd processes for tests that wipe or kill them.
#![allow(dead_code, unreachable_pub)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backend_etcd::{EtcdConfig, EtcdLockService, EtcdStore};
use lockcore::{LockResult, LockService, TokenIssuer};

/// Where the shared test etcd is.
pub const URL_ENV: &str = "LOCKD_TEST_ETCD_URL";

/// The service on the shared test etcd, or `None` after a loud skip (a failure with
/// `LOCKD_REQUIRE_BACKENDS=1`) when `LOCKD_TEST_ETCD_URL` is unset.
pub async fn backend() -> Option<Arc<dyn LockService>> {
    let url = url_or_skip()?;
    let service = connect(EtcdConfig::from_url(&url))
        .await
        .unwrap_or_else(|e| panic!("{URL_ENV}={url} is set but etcd is unusable: {e}"));
    Some(Arc::new(service))
}

/// The URL of the shared test etcd, or `None` after a loud skip.
pub fn url_or_skip() -> Option<String> {
    match std::env::var(URL_ENV) {
        Ok(url) => Some(url),
        Err(_) => {
            conformance_tests::skip_or_fail("etcd", &format!("{URL_ENV} is not set"));
            None
        }
    }
}

/// The service on a store connected with `config`, minting tokens with [`issuer`].
pub async fn connect(config: EtcdConfig) -> LockResult<EtcdLockService> {
    Ok(EtcdLockService::new(
        EtcdStore::connect(config).await?,
        issuer(),
    ))
}

/// The token issuer of every service a test connects: one secret, as several lockd processes
/// sharing a backend must have.
pub fn issuer() -> TokenIssuer {
    TokenIssuer::new(lockcore::TokenSecret::new([7u8; 32]).expect("32 bytes is long enough"))
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free loopback port: {e}"))
}

/// An `etcd` this test started on free loopback ports, with its own data dir under `target/`.
/// Killed (by its PID) when dropped.
pub struct PrivateEtcd {
    pub client_port: u16,
    peer_port: u16,
    pub data_dir: PathBuf,
    child: Option<Child>,
}

impl PrivateEtcd {
    /// Starts one, or `None` after a loud skip when `etcd` is missing.
    pub fn start(name: &str) -> Option<Self> {
        let ports = free_port().and_then(|c| free_port().map(|p| (c, p)));
        let (client_port, peer_port) = match ports {
            Ok(ports) => ports,
            Err(why) => {
                conformance_tests::skip_or_fail("etcd", &why);
                return None;
            }
        };
        let data_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("etcd-{name}-{}-{client_port}", std::process::id()));
        let mut etcd = Self {
            client_port,
            peer_port,
            data_dir,
            child: None,
        };
        if let Err(why) = etcd.restart() {
            conformance_tests::skip_or_fail("etcd", &why);
            return None;
        }
        Some(etcd)
    }

    /// The URL of this member.
    pub fn url(&self) -> String {
        format!("etcd://127.0.0.1:{}", self.client_port)
    }

    /// Starts the member (again, on the same ports and data dir) and waits until it is healthy.
    pub fn restart(&mut self) -> Result<(), String> {
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new("etcd")
            .args(["--name", "private"])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("private={peer}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run etcd: {e}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.healthy() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!(
            "etcd on port {} did not become healthy",
            self.client_port
        ))
    }

    /// Kills the member by its PID and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the member and deletes its data dir: everything in it is lost.
    pub fn wipe(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }

    fn healthy(&self) -> bool {
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.client_port)) else {
            return false;
        };
        use std::io::{Read as _, Write as _};
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        let request = "GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
        if stream.write_all(request.as_bytes()).is_err() {
            return false;
        }
        let mut body = String::new();
        let _ = stream.read_to_string(&mut body);
        body.contains("\"health\":\"true\"")
    }
}

impl Drop for PrivateEtcd {
    fn drop(&mut self) {
        self.wipe();
    }
}
