//! Acquire latency of `memory://` with and without the restart guard (`--data-dir`), in
//! process, so HTTP and the client do not blur the difference.
//!
//! ```text
//! cargo bench -p lockd --bench restart_guard              # 5 rounds of 3 s, 16 tasks
//! cargo bench -p lockd --bench restart_guard -- 7 5 32    # ROUNDS SECONDS TASKS
//! ```
//!
//! Each round runs the plain service, then the guarded one, on a fresh service each time:
//! TASKS tasks loop acquire (random object of 100,000, TTL 30 s) + release for SECONDS; only
//! the acquire is timed. Prints p50 / p99 / p99.9 per round and the median p99 ratio.
#![allow(missing_docs, clippy::unwrap_used, clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use backend_memory::{MemoryConfig, MemoryLockService, MemoryStore};
use lockcore::{Limits, LockService, ObjectId, OwnerId, TokenIssuer};
use lockd::grace::{RestartGuard, StateFile};
use rand::Rng as _;

const TTL: Duration = Duration::from_secs(30);

/// Acquire latencies (ns), sorted, and when (ms into the round) acquires over 100 ms started.
async fn run(service: Arc<dyn LockService>, seconds: u64, tasks: usize) -> (Vec<u64>, Vec<u64>) {
    let begin = Instant::now();
    let stop = begin + Duration::from_secs(seconds);
    let workers: Vec<_> = (0..tasks)
        .map(|t| {
            let service = service.clone();
            tokio::spawn(async move {
                let owner = OwnerId::new(format!("task-{t}")).unwrap();
                let mut nanos = Vec::new();
                let mut slow = Vec::new();
                while Instant::now() < stop {
                    let id = rand::rng().random_range(0..100_000u32);
                    let object = ObjectId::new(format!("/bench/{id}")).unwrap();
                    let started = Instant::now();
                    let granted = service.acquire(&object, &owner, TTL, Duration::ZERO).await;
                    let took = started.elapsed();
                    nanos.push(took.as_nanos() as u64);
                    if took > Duration::from_millis(100) {
                        slow.push((started - begin).as_millis() as u64);
                    }
                    if let Ok(lease) = granted {
                        service.release(&object, &lease.token).await.unwrap();
                    }
                    // A server task yields on its socket between requests.
                    tokio::task::yield_now().await;
                }
                (nanos, slow)
            })
        })
        .collect();
    let (mut all, mut slow) = (Vec::new(), Vec::new());
    for worker in workers {
        let (nanos, late) = worker.await.unwrap();
        all.extend(nanos);
        slow.extend(late);
    }
    all.sort_unstable();
    slow.sort_unstable();
    slow.dedup();
    (all, slow)
}

fn slow_note(slow: &[u64]) -> String {
    match slow {
        [] => String::new(),
        [first, .., last] => format!(
            " (over 100 ms: {} started {first}-{last} ms in)",
            slow.len()
        ),
        [only] => format!(" (over 100 ms: 1 started {only} ms in)"),
    }
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let rounds = args.first().copied().unwrap_or(5);
    let seconds = args.get(1).copied().unwrap_or(3);
    let tasks = args.get(2).copied().unwrap_or(16) as usize;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let issuer = TokenIssuer::random();
        let (mut plain_p99, mut guarded_p99) = (Vec::new(), Vec::new());
        println!("| round | mode | acquires | p50 µs | p99 µs | p99.9 µs |");
        println!("|---|---|---|---|---|---|");
        for round in 1..=rounds {
            let plain: Arc<dyn LockService> = Arc::new(MemoryLockService::new(
                MemoryStore::new(MemoryConfig::new(Limits::default())),
                issuer.clone(),
            ));
            let (sorted, slow) = run(plain, seconds, tasks).await;
            plain_p99.push(pct(&sorted, 0.99));
            println!(
                "| {round} | plain | {} | {:.1} | {:.1} | {:.1}{} |",
                sorted.len(),
                pct(&sorted, 0.5),
                pct(&sorted, 0.99),
                pct(&sorted, 0.999),
                slow_note(&slow)
            );

            let dir = tempfile::tempdir().unwrap();
            let state = StateFile::open(dir.path()).await.unwrap();
            let inner: Arc<dyn LockService> = Arc::new(MemoryLockService::new(
                MemoryStore::new(
                    MemoryConfig::new(Limits::default()).with_fence_floor(state.fence_floor()),
                ),
                issuer.clone(),
            ));
            let guarded: Arc<dyn LockService> =
                Arc::new(RestartGuard::new(inner, state, Limits::default()));
            let (sorted, slow) = run(guarded, seconds, tasks).await;
            guarded_p99.push(pct(&sorted, 0.99));
            println!(
                "| {round} | --data-dir | {} | {:.1} | {:.1} | {:.1}{} |",
                sorted.len(),
                pct(&sorted, 0.5),
                pct(&sorted, 0.99),
                pct(&sorted, 0.999),
                slow_note(&slow)
            );
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (p, g) = (median(&mut plain_p99), median(&mut guarded_p99));
        println!(
            "\nmedian p99: plain {p:.1} µs, --data-dir {g:.1} µs, ratio {:.2}",
            g / p
        );
    });
}
