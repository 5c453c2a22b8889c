//! Fault tests: the database drops lockd's connections or restarts while operations run.
//! Operations then fail as `Unavailable` (never a grant, never a panic), and the same service,
//! not rebuilt, works again once the database is back, including LISTEN wakeups.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backend_postgres::{PostgresConfig, PostgresLockService, PostgresStore};
use lockcore::{LockError, LockService, ObjectId, OwnerId};
use rand::Rng;

fn object(label: &str) -> ObjectId {
    let tag: u64 = rand::rng().random();
    ObjectId::new(format!("fault/{label}/{tag:x}")).expect("valid object id")
}

fn owner(name: &str) -> OwnerId {
    OwnerId::new(name).expect("valid owner id")
}

const LONG: Duration = Duration::from_secs(60);

/// Retries `op` until it succeeds, for at most `limit`; every failure meanwhile must be
/// `Unavailable`.
async fn until_available<T, F, Fut>(limit: Duration, mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, LockError>>,
{
    let deadline = Instant::now() + limit;
    loop {
        match op().await {
            Ok(value) => return value,
            Err(LockError::Unavailable { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(other) => panic!("expected success or Unavailable, got {other:?}"),
        }
    }
}

async fn terminate(url: &str, application_name: &str) -> usize {
    let mut admin = common::admin(url).await;
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
    )
    .bind(application_name)
    .fetch_all(&mut admin)
    .await
    .expect("terminate");
    // Wait until the backends are really gone.
    for _ in 0..100 {
        let left: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1")
                .bind(application_name)
                .fetch_one(&mut admin)
                .await
                .expect("count");
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    killed.len()
}

/// Every connection of the service (pool and LISTEN) is terminated by the server: the next
/// operation fails as `Unavailable`, later ones succeed on the same service with the lock state
/// intact, and a release by another process wakes a waiter here again (LISTEN reconnected).
#[tokio::test]
async fn terminated_connections_fail_as_unavailable_then_recover() {
    let Some(url) = common::database_url().await else {
        return;
    };
    let tag: u32 = rand::rng().random();
    let application_name = format!("lockd_fault_{tag:x}");
    let mut config = common::test_config(&url);
    config.application_name = application_name.clone();
    config.max_connections = 1;
    let service = Arc::new(common::connect(config).await);
    let other = common::connect(common::test_config(&url)).await;

    let held = object("held");
    let lease = service
        .acquire(&held, &owner("a"), LONG, Duration::ZERO)
        .await
        .expect("granted");
    let killed = terminate(&url, &application_name).await;
    assert!(
        killed >= 2,
        "expected the pool's and the LISTEN connection, killed {killed}"
    );

    let first = service.inspect(&held).await;
    assert!(
        matches!(
            first,
            Err(LockError::Unavailable {
                backend: "postgres",
                ..
            })
        ),
        "the first operation on a dead connection: {first:?}"
    );

    let info = until_available(Duration::from_secs(10), || service.inspect(&held))
        .await
        .expect("the lock survived");
    assert_eq!(info.fence, lease.fence);
    assert_eq!(info.owner.as_str(), "a");

    // Give the LISTEN task time to notice and reconnect, then check that wakeups work.
    let contended = object("wake");
    let theirs = other
        .acquire(&contended, &owner("b"), LONG, Duration::ZERO)
        .await
        .expect("granted");
    let waiter = {
        let (service, contended) = (service.clone(), contended.clone());
        tokio::spawn(async move {
            service
                .acquire(&contended, &owner("a"), LONG, Duration::from_secs(30))
                .await
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    other
        .release(&contended, &theirs.token)
        .await
        .expect("released");
    let granted = tokio::time::timeout(Duration::from_secs(15), waiter)
        .await
        .expect("woken by NOTIFY after reconnecting, long before the 60 s lease would expire")
        .expect("waiter task")
        .expect("granted");
    assert!(granted.fence > theirs.fence);
    service
        .release(&held, &lease.token)
        .await
        .expect("released after recovery");
}

/// Operations running while connections are killed over and over only ever succeed or fail as
/// `Unavailable`; no two owners ever hold the object at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_during_repeated_connection_kills_never_double_grant() {
    let Some(url) = common::database_url().await else {
        return;
    };
    let tag: u32 = rand::rng().random();
    let application_name = format!("lockd_churn_{tag:x}");
    let mut config = common::test_config(&url);
    config.application_name = application_name.clone();
    let service = Arc::new(common::connect(config).await);
    let target = object("churn");

    let killer = {
        let (url, name) = (url.clone(), application_name.clone());
        tokio::spawn(async move {
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_millis(150)).await;
                terminate(&url, &name).await;
            }
        })
    };
    let mut workers = Vec::new();
    for worker in 0..3 {
        let (service, target) = (service.clone(), target.clone());
        workers.push(tokio::spawn(async move {
            let me = owner(&format!("w{worker}"));
            let (mut granted, mut unavailable) = (0, 0);
            let started = Instant::now();
            while started.elapsed() < Duration::from_millis(1200) {
                match service
                    .acquire(&target, &me, Duration::from_secs(5), Duration::ZERO)
                    .await
                {
                    Ok(lease) => {
                        granted += 1;
                        // Nobody else may validate while we hold it.
                        let seen = service.inspect(&target).await;
                        if let Ok(Some(info)) = seen {
                            assert_eq!(info.owner, me, "another holder while we hold it");
                        }
                        // A release may fail as unavailable; the lease then just expires.
                        match service.release(&target, &lease.token).await {
                            Ok(_)
                            | Err(LockError::Unavailable { .. })
                            | Err(LockError::NotHeld { .. }) => {}
                            Err(other) => panic!("release: {other:?}"),
                        }
                    }
                    Err(LockError::Locked { .. }) => {}
                    Err(LockError::Unavailable { .. }) => unavailable += 1,
                    Err(other) => panic!("acquire: {other:?}"),
                }
            }
            (granted, unavailable)
        }));
    }
    killer.await.expect("killer");
    let (mut granted, mut unavailable) = (0, 0);
    for worker in workers {
        let (g, u) = worker.await.expect("worker");
        granted += g;
        unavailable += u;
    }
    eprintln!("during the kills: {granted} grants, {unavailable} unavailable acquires");
    assert!(granted > 0, "no grant at all between the kills");
    // Afterwards the same service works.
    let (object_after, z) = (object("after"), owner("z"));
    until_available(Duration::from_secs(10), || {
        service.acquire(&object_after, &z, LONG, Duration::ZERO)
    })
    .await;
}

/// A private PostgreSQL cluster (initdb + pg_ctl on a free loopback port) is stopped while the
/// service is connected: operations fail as `Unavailable` during the outage, and succeed again
/// once it is started, with the durable lock still there. Skips loudly when the PostgreSQL
/// server binaries are not installed.
#[tokio::test]
async fn a_database_restart_is_unavailable_then_recovers() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let mut config = PostgresConfig::from_url(cluster.url());
    config.schema = "lockd".to_owned();
    config.max_connections = 2;
    config.connect_timeout = Duration::from_secs(2);
    config.statement_timeout = Duration::from_secs(2);
    let store = PostgresStore::connect(config)
        .await
        .expect("connected to the private cluster");
    let service = PostgresLockService::new(store, common::issuer());
    let held = object("restart");
    let lease = service
        .acquire(&held, &owner("a"), LONG, Duration::ZERO)
        .await
        .expect("granted");

    cluster.pg_ctl(&["stop", "-m", "fast"]);
    for _ in 0..3 {
        let result = service
            .acquire(&object("down"), &owner("b"), LONG, Duration::ZERO)
            .await;
        assert!(
            matches!(
                result,
                Err(LockError::Unavailable {
                    backend: "postgres",
                    ..
                })
            ),
            "while the database is down: {result:?}"
        );
    }
    assert!(matches!(
        service.health().await,
        Err(LockError::Unavailable { .. })
    ));

    cluster.pg_ctl(&["start", "-w", "-l", &cluster.log()]);
    let info = until_available(Duration::from_secs(20), || service.inspect(&held))
        .await
        .expect("the lock survived the restart");
    assert_eq!(info.fence, lease.fence);
    let refused = service
        .acquire(&held, &owner("b"), LONG, Duration::ZERO)
        .await;
    assert!(
        matches!(refused, Err(LockError::Locked { .. })),
        "{refused:?}"
    );
    let fence = service
        .release(&held, &lease.token)
        .await
        .expect("released after restart");
    assert_eq!(fence, lease.fence);
}

/// A throw-away PostgreSQL cluster owned by this test; stopped and deleted on drop.
struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    run_as: Option<&'static str>,
}

impl Cluster {
    fn start() -> Option<Self> {
        let Some(bin) = server_bin_dir() else {
            conformance_tests::skip_or_fail(
                "postgres",
                "no initdb/pg_ctl found for a private cluster",
            );
            return None;
        };
        // initdb refuses to run as root; run the cluster as the `postgres` user then.
        let run_as = is_root().then_some("postgres");
        let tag: u64 = rand::rng().random();
        let dir = std::env::temp_dir().join(format!("lockd-pg-{tag:x}"));
        std::fs::create_dir_all(&dir).expect("cluster dir");
        if run_as.is_some() {
            let status = Command::new("chown")
                .args(["postgres:postgres", &dir.to_string_lossy()])
                .status()
                .expect("chown");
            assert!(status.success(), "chown of the cluster dir failed");
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let cluster = Self {
            bin,
            dir,
            port,
            run_as,
        };
        let data = cluster.data();
        cluster.run(
            "initdb",
            &["-D", &data, "-A", "trust", "-U", "postgres", "--no-sync"],
        );
        // Settings go into the cluster's own config so that every start uses them.
        let settings = format!(
            "\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\nfsync = off\n",
            cluster.dir.display()
        );
        let conf = cluster.dir.join("data").join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).expect("postgresql.conf");
        text.push_str(&settings);
        std::fs::write(&conf, text).expect("postgresql.conf written");
        cluster.pg_ctl(&["start", "-w", "-l", &cluster.log()]);
        Some(cluster)
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    fn log(&self) -> String {
        self.dir.join("log").display().to_string()
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn pg_ctl(&self, args: &[&str]) {
        let data = self.data();
        let mut all = vec!["-D", data.as_str()];
        all.extend_from_slice(args);
        self.run("pg_ctl", &all);
    }

    fn run(&self, program: &str, args: &[&str]) {
        let program = self.bin.join(program);
        let output = match self.run_as {
            Some(user) => Command::new("runuser")
                .args(["-u", user, "--"])
                .arg(&program)
                .args(args)
                .output(),
            None => Command::new(&program).args(args).output(),
        }
        .expect("run a PostgreSQL tool");
        assert!(
            output.status.success(),
            "{} {args:?} failed: {}{}",
            program.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.data();
        let program = self.bin.join("pg_ctl");
        let args = ["-D", data.as_str(), "stop", "-m", "immediate"];
        let _ = match self.run_as {
            Some(user) => Command::new("runuser")
                .args(["-u", user, "--"])
                .arg(&program)
                .args(args)
                .output(),
            None => Command::new(&program).args(args).output(),
        };
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn server_bin_dir() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dirs| {
            dirs.filter_map(|d| d.ok())
                .map(|d| d.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    candidates.sort();
    candidates
        .into_iter()
        .rev()
        .find(|bin| has(bin, "initdb") && has(bin, "pg_ctl"))
}

fn has(bin: &Path, program: &str) -> bool {
    bin.join(program).is_file()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}
