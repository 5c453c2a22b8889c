//! A 3-member etcd cluster on loopback, under load from three stores (three lockd processes'
//! worth): kill -9 the leader and bring it back, then restart the whole cluster. Throughout, no
//! two holders overlap (from the holders' own records), fences per object only increase, the
//! outage is answered with typed `unavailable` errors, and service recovers without
//! reconnecting the stores. Bounded in time; the test stops every member it started by PID.

mod common;

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backend_etcd::{EtcdConfig, EtcdLockService};
use lockcore::{Fence, LockError, LockService as _, ObjectId, OwnerId};

const MEMBERS: usize = 3;
const TTL: Duration = Duration::from_secs(4);

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

/// Three etcd members on free loopback ports, data dirs under `target/`.
struct PrivateCluster {
    members: Vec<Member>,
    data_root: PathBuf,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

fn http(port: u16, request: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .ok()?;
    stream.write_all(request.as_bytes()).ok()?;
    let mut body = String::new();
    let _ = stream.read_to_string(&mut body);
    Some(body)
}

impl PrivateCluster {
    fn start() -> Option<Self> {
        if Command::new("etcd").arg("--version").output().is_err() {
            conformance_tests::skip_or_fail("etcd", "no `etcd` binary for the cluster test");
            return None;
        }
        let data_root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "etcd-cluster-{}-{}",
            std::process::id(),
            free_port()
        ));
        let members = (0..MEMBERS)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                child: None,
            })
            .collect();
        let mut cluster = Self { members, data_root };
        for i in 0..MEMBERS {
            cluster.spawn(i);
        }
        if let Err(why) = cluster.wait_healthy(Duration::from_secs(30)) {
            conformance_tests::skip_or_fail("etcd", &why);
            return None;
        }
        Some(cluster)
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn spawn(&mut self, i: usize) {
        let initial = self.initial_cluster();
        let member = &self.members[i];
        let client = format!("http://127.0.0.1:{}", member.client_port);
        let peer = format!("http://127.0.0.1:{}", member.peer_port);
        let child = Command::new("etcd")
            .args(["--name", &member.name])
            .arg("--data-dir")
            .arg(self.data_root.join(&member.name))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &initial])
            .args(["--initial-cluster-token", "lockd-fault-test"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd starts");
        self.members[i].child = Some(child);
    }

    fn url(&self) -> String {
        let hosts: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client_port))
            .collect();
        format!("etcd://{}", hosts.join(","))
    }

    /// Kills member `i` with SIGKILL (by its PID) and waits for it to exit.
    fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn healthy(&self, i: usize) -> bool {
        let request = "GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
        http(self.members[i].client_port, request)
            .is_some_and(|body| body.contains("\"health\":\"true\""))
    }

    fn wait_healthy(&self, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if (0..MEMBERS).all(|i| self.members[i].child.is_none() || self.healthy(i)) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err("the etcd cluster did not become healthy".into())
    }

    /// The index of the member that is leader, from the members' own status.
    fn leader(&self) -> Option<usize> {
        let body = "{}";
        for member in &self.members {
            let request = format!(
                "POST /v3/maintenance/status HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let Some(reply) = http(member.client_port, &request) else {
                continue;
            };
            let field = |name: &str| -> Option<String> {
                let start = reply.find(&format!("\"{name}\":\""))? + name.len() + 4;
                let end = reply[start..].find('"')? + start;
                Some(reply[start..end].to_string())
            };
            let (Some(me), Some(leader)) = (field("member_id"), field("leader")) else {
                continue;
            };
            if me == leader {
                return self.members.iter().position(|m| m.name == member.name);
            }
        }
        None
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        for i in 0..MEMBERS {
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.data_root);
    }
}

/// One grant as its holder saw it: from the reply to the release (or the lease's end, counted
/// from when the request was sent, if that comes first).
#[derive(Debug, Clone)]
struct Held {
    object: usize,
    worker: usize,
    fence: Fence,
    from: Instant,
    until: Instant,
}

#[derive(Default)]
struct Record {
    held: Vec<Held>,
    unavailable: usize,
    other_errors: Vec<String>,
    grants_at: Vec<Instant>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_loss_and_cluster_restart_keep_holders_apart_and_fences_increasing() {
    let Some(mut cluster) = PrivateCluster::start() else {
        return;
    };
    let mut services = Vec::new();
    for _ in 0..3 {
        let mut config = EtcdConfig::from_url(cluster.url());
        config.operation_timeout = Duration::from_secs(1);
        config.connect_timeout = Duration::from_secs(2);
        services.push(Arc::new(
            common::connect(config)
                .await
                .expect("connects to the cluster"),
        ));
    }
    let objects: Arc<Vec<ObjectId>> = Arc::new(
        (0..2)
            .map(|i| ObjectId::new(format!("fault/o{i}")).expect("valid"))
            .collect(),
    );
    let record = Arc::new(Mutex::new(Record::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for worker in 0..6 {
        let service: Arc<EtcdLockService> = services[worker % 3].clone();
        let (objects, record, stop) = (objects.clone(), record.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let owner = OwnerId::new(format!("w{worker}")).expect("valid");
            let mut cycle = 0usize;
            while !stop.load(Ordering::Relaxed) {
                cycle += 1;
                let index = (worker + cycle) % objects.len();
                let sent = Instant::now();
                match service
                    .acquire(&objects[index], &owner, TTL, Duration::from_secs(1))
                    .await
                {
                    Ok(lease) => {
                        let from = Instant::now();
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        let until = Instant::now().min(sent + TTL);
                        let _ = service.release(&objects[index], &lease.token).await;
                        let mut r = record.lock().expect("record");
                        r.held.push(Held {
                            object: index,
                            worker,
                            fence: lease.fence,
                            from,
                            until,
                        });
                        r.grants_at.push(from);
                    }
                    Err(LockError::Unavailable {
                        backend: "etcd", ..
                    }) => {
                        record.lock().expect("record").unavailable += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(LockError::Locked { .. }) => {}
                    Err(other) => record
                        .lock()
                        .expect("record")
                        .other_errors
                        .push(other.to_string()),
                }
            }
        }));
    }
    let grants_since = |at: Instant| {
        record
            .lock()
            .expect("record")
            .grants_at
            .iter()
            .filter(|&&g| g > at)
            .count()
    };
    let wait_for_grants = |at: Instant, what: &str| {
        let what = what.to_string();
        let grants_since = &grants_since;
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            while grants_since(at) < 10 {
                assert!(
                    Instant::now() < deadline,
                    "no service within 30 s after {what}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };

    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        grants_since(Instant::now() - Duration::from_secs(2)) > 0,
        "no load"
    );

    // 1. kill -9 the leader, then bring it back.
    let leader = cluster.leader().expect("the cluster has a leader");
    cluster.kill(leader);
    let killed = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.spawn(leader);
    cluster
        .wait_healthy(Duration::from_secs(30))
        .expect("the old leader rejoins");
    wait_for_grants(killed, "the leader was killed").await;

    // 2. Restart the whole cluster.
    for i in 0..MEMBERS {
        cluster.kill(i);
    }
    let stopped = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let unavailable_before = record.lock().expect("record").unavailable;
    assert!(
        unavailable_before > 0,
        "a cluster that is down must answer `unavailable`"
    );
    for i in 0..MEMBERS {
        cluster.spawn(i);
    }
    cluster
        .wait_healthy(Duration::from_secs(30))
        .expect("the cluster comes back");
    wait_for_grants(stopped, "the cluster restarted").await;

    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        tokio::time::timeout(Duration::from_secs(20), worker)
            .await
            .expect("workers stop")
            .expect("worker panicked");
    }

    let record = record.lock().expect("record");
    assert!(
        record.other_errors.is_empty(),
        "errors other than unavailable/locked: {:?}",
        record.other_errors
    );
    for object in 0..objects.len() {
        let mut held: Vec<&Held> = record.held.iter().filter(|h| h.object == object).collect();
        held.sort_by_key(|h| h.from);
        for pair in held.windows(2) {
            assert!(
                pair[0].until <= pair[1].from,
                "holders overlap on object {object}: {:?} and {:?}",
                pair[0],
                pair[1]
            );
            assert!(
                pair[0].fence < pair[1].fence,
                "fences went back on object {object}: {:?} then {:?}",
                pair[0],
                pair[1]
            );
        }
        assert!(held.iter().map(|h| h.worker).max().is_some());
    }
    eprintln!(
        "cluster fault test: {} grants, {} unavailable answers",
        record.held.len(),
        record.unavailable
    );
}
