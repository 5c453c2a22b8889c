//! Resident memory per held lock: lockd on `memory://`, driven over HTTP, against the memory
//! backend alone.
//!
//! ```text
//! cargo bench -p lockd --bench held_memory            # 1,000,000 locks
//! cargo bench -p lockd --bench held_memory -- 100000  # another count
//! ```
//!
//! 1. *Backend alone*, in this process: the resident-set growth while `N` locks are acquired
//!    (TTL 1 h) on a fresh `MemoryLockService`, object ids included (the server must keep them
//!    too), tokens dropped.
//! 2. *Through lockd*: a fresh `lockd serve` child on `memory://`; after a warm-up of the
//!    connections, its resident-set growth while `N` locks on distinct objects are acquired over
//!    HTTP by 32 concurrent clients.
//!
//! Resident sets are read from `/proc/PID/status` (`VmRSS`), so this runs on Linux only.
#![allow(missing_docs, clippy::unwrap_used, clippy::print_stdout)]

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backend_memory::{MemoryConfig, MemoryLockService, MemoryStore};
use lockcore::{Limits, LockService, ObjectId, OwnerId, TokenIssuer};
use tokio::io::{AsyncBufReadExt, BufReader};

const TTL: Duration = Duration::from_secs(3600);
const CLIENTS: usize = 32;

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kb * 1024
}

fn object_name(i: usize) -> String {
    format!("/bench/held/{i:09}")
}

async fn backend_alone(n: usize) -> f64 {
    let me = std::process::id();
    let service = MemoryLockService::new(
        MemoryStore::new(MemoryConfig::new(Limits::default())),
        TokenIssuer::random(),
    );
    let owner = OwnerId::new("bench-owner").unwrap();
    let before = rss_bytes(me);
    for i in 0..n {
        let object = ObjectId::new(object_name(i)).unwrap();
        let lease = service
            .acquire(&object, &owner, TTL, Duration::ZERO)
            .await
            .unwrap();
        drop(lease);
    }
    let after = rss_bytes(me);
    assert_eq!(service.store().held(), n);
    (after.saturating_sub(before)) as f64 / n as f64
}

async fn through_lockd(n: usize) -> f64 {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_lockd"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--grpc-listen",
            "off",
            "--log",
            "warn",
        ])
        .env_remove("LOCKD_BACKEND")
        .env_remove("LOCKD_DATA_DIR")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn lockd");
    let pid = child.id().expect("pid");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next_line().await.unwrap().expect("listening line");
    let url = first
        .strip_prefix("lockd listening on ")
        .unwrap()
        .to_owned();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(CLIENTS)
        .build()
        .unwrap();
    // Warm-up: every client's connection and buffers exist before the baseline, and their
    // locks are released so they do not count.
    let warm: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let http = http.clone();
            let url = url.clone();
            tokio::spawn(async move {
                for k in 0..100 {
                    let object = format!("/bench/warm/{c}/{k}");
                    let lease: serde_json::Value = http
                        .post(format!("{url}/v1/locks/acquire"))
                        .json(
                            &serde_json::json!({"object": object, "owner": "w", "ttl_ms": 60_000}),
                        )
                        .send()
                        .await
                        .unwrap()
                        .json()
                        .await
                        .unwrap();
                    http.post(format!("{url}/v1/locks/release"))
                        .json(&serde_json::json!({"object": object, "token": lease["token"]}))
                        .send()
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for task in warm {
        task.await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = rss_bytes(pid);
    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let next = next.clone();
            let (http, url) = (http.clone(), url.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= n {
                        return;
                    }
                    let response = http
                        .post(format!("{url}/v1/locks/acquire"))
                        .json(&serde_json::json!({
                            "object": object_name(i),
                            "owner": "bench-owner",
                            "ttl_ms": TTL.as_millis() as u64,
                        }))
                        .send()
                        .await
                        .unwrap();
                    assert!(response.status().is_success(), "{}", response.status());
                    response.bytes().await.unwrap();
                }
            })
        })
        .collect();
    for client in clients {
        client.await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = rss_bytes(pid);
    eprintln!(
        "{n} acquires through lockd in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let _ = child.kill().await;
    (after.saturating_sub(before)) as f64 / n as f64
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let backend = backend_alone(n).await;
        let lockd = through_lockd(n).await;
        println!("| locks held | backend alone, B/lock | through lockd, B/lock | ratio |");
        println!("|---|---|---|---|");
        println!(
            "| {n} | {backend:.0} | {lockd:.0} | {:.2} |",
            lockd / backend
        );
    });
}
