//! Acquire cost with 1,000,000 locks held relative to 1,000, measured fairly on a busy machine.
//!
//! Criterion measures one case after the other, so on a shared host a change of load between
//! the two skews their ratio. This program keeps both services alive and alternates short
//! batches between them, then compares the medians of the batches.
//!
//! `cargo bench -p backend-memory --bench held_ratio`

use std::time::{Duration, Instant};

use backend_memory::{MemoryConfig, MemoryLockService, MemoryStore};
use lockcore::{LockService, ObjectId, OwnerId, TokenIssuer};

const TTL: Duration = Duration::from_secs(3600);
const ROUNDS: usize = 41;
const BATCH: usize = 10_000;

fn ids(prefix: &str, count: usize) -> Vec<ObjectId> {
    (0..count)
        .map(|n| ObjectId::new(format!("{prefix}/{n:08}")).expect("valid object"))
        .collect()
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// Mean nanoseconds of one acquire (release untimed) over a batch, cycling through `fresh`.
async fn batch(
    locks: &MemoryLockService,
    owner: &OwnerId,
    fresh: &[ObjectId],
    cursor: &mut usize,
) -> f64 {
    let mut timed = Duration::ZERO;
    for _ in 0..BATCH {
        let object = &fresh[*cursor % fresh.len()];
        *cursor += 1;
        let start = Instant::now();
        let lease = locks
            .acquire(object, owner, TTL, Duration::ZERO)
            .await
            .expect("free object");
        timed += start.elapsed();
        locks.release(object, &lease.token).await.expect("holder");
    }
    timed.as_nanos() as f64 / BATCH as f64
}

fn main() {
    // `cargo test --all-targets` runs bench binaries without `--bench`: skip the long
    // measurement there, as criterion's own test mode does.
    if !std::env::args().any(|arg| arg == "--bench") {
        println!(
            "{}: run it with `cargo bench`; skipped",
            env!("CARGO_CRATE_NAME")
        );
        return;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("tokio runtime");
    let _inside = runtime.enter();
    let owner = OwnerId::new("bench-client").expect("valid owner");
    runtime.block_on(async {
        let mut services = Vec::new();
        for held in [1_000usize, 1_000_000] {
            let locks = MemoryLockService::new(
                MemoryStore::new(MemoryConfig::default()),
                TokenIssuer::random(),
            );
            for object in ids("/bench/held", held) {
                locks
                    .acquire(&object, &owner, TTL, Duration::ZERO)
                    .await
                    .expect("free object");
            }
            services.push((held, locks));
        }
        println!("ids           | median ns/acquire, 1,000 held | 1,000,000 held | ratio");
        for (label, pool) in [("cache-warm", 1usize << 12), ("cache-cold", 1 << 18)] {
            let fresh = ids("/bench/fresh", pool);
            let mut cursor = 0;
            let mut samples = [Vec::new(), Vec::new()];
            for _ in 0..ROUNDS {
                for (slot, (_, locks)) in services.iter().enumerate() {
                    samples[slot].push(batch(locks, &owner, &fresh, &mut cursor).await);
                }
            }
            let [small, big] = samples;
            let (small, big) = (median(small), median(big));
            println!(
                "{label:<13} | {small:>29.0} | {big:>14.0} | {:.2}",
                big / small
            );
        }
        for (held, locks) in &services {
            assert_eq!(locks.store().held(), *held);
        }
    });
}
