//! `etcds://`: a private etcd serving clients over TLS with a certificate from a CA this test
//! makes (with `openssl`), reached with `tls_ca_file`.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use backend_etcd::EtcdConfig;
use lockcore::{LockError, LockService as _, ObjectId, OwnerId};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

fn openssl(dir: &Path, args: &[&str]) -> Result<(), String> {
    let status = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run openssl: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("openssl {args:?} failed"))
    }
}

/// A CA and a server certificate for 127.0.0.1, in `dir`.
fn make_certificates(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "1",
            "-subj",
            "/CN=lockd-test-ca",
        ],
    )?;
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    )?;
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .map_err(|e| e.to_string())?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "1",
            "-extfile",
            "ext.cnf",
        ],
    )
}

/// The TLS member, killed by its PID and its files removed when dropped.
struct TlsEtcd {
    dir: PathBuf,
    port: u16,
    child: Child,
}

impl Drop for TlsEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start() -> Result<TlsEtcd, String> {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "etcd-tls-{}-{}",
        std::process::id(),
        free_port()
    ));
    make_certificates(&dir)?;
    let (port, peer) = (free_port(), free_port());
    let client = format!("https://127.0.0.1:{port}");
    let peer = format!("http://127.0.0.1:{peer}");
    let child = Command::new("etcd")
        .args(["--name", "tls"])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--listen-client-urls", &client])
        .args(["--advertise-client-urls", &client])
        .args(["--listen-peer-urls", &peer])
        .args(["--initial-advertise-peer-urls", &peer])
        .args(["--initial-cluster", &format!("tls={peer}")])
        .arg("--cert-file")
        .arg(dir.join("server.pem"))
        .arg("--key-file")
        .arg(dir.join("server.key"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run etcd: {e}"))?;
    Ok(TlsEtcd { dir, port, child })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcds_urls_lock_over_tls_with_the_given_ca() {
    let etcd = match start() {
        Ok(etcd) => etcd,
        Err(why) => {
            conformance_tests::skip_or_fail("etcd", &why);
            return;
        }
    };
    let mut config = EtcdConfig::from_url(format!("etcds://127.0.0.1:{}", etcd.port));
    config.tls_ca_file = Some(etcd.dir.join("ca.pem"));
    let deadline = Instant::now() + Duration::from_secs(20);
    let service = loop {
        match common::connect(config.clone()).await {
            Ok(service) => break service,
            Err(LockError::Unavailable { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("cannot lock over TLS: {e}"),
        }
    };
    let file = ObjectId::new("tls/file").expect("valid");
    let owner = OwnerId::new("alice").expect("valid");
    let lease = service
        .acquire(&file, &owner, Duration::from_secs(10), Duration::ZERO)
        .await
        .expect("granted over TLS");
    service.release(&file, &lease.token).await.expect("release");

    // Without the CA, the server's certificate is not trusted: unavailable, never a grant.
    let mut untrusting = EtcdConfig::from_url(format!("etcds://127.0.0.1:{}", etcd.port));
    untrusting.connect_timeout = Duration::from_secs(2);
    untrusting.operation_timeout = Duration::from_secs(2);
    let refused = common::connect(untrusting).await;
    assert!(
        matches!(refused, Err(LockError::Unavailable { .. })),
        "{refused:?}"
    );
}
