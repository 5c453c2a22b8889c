//! Memory per held lock, counted by an instrumented global allocator.
//!
//! Acquires N locks on objects whose ids were built beforehand and reports the bytes the backend
//! allocated and kept per lock, beyond the id strings themselves (the map entry and its share of
//! the hash table, and the sweeper's deadline heap and timer slab). Tokens handed out are dropped,
//! as a client would take them away. Also prints the growth of the resident set per lock, which
//! includes the system allocator's own overhead.
//!
//! `cargo bench -p backend-memory --bench memory_per_lock`

use std::alloc::System;
use std::time::Duration;

use backend_memory::{MemoryConfig, MemoryLockService, MemoryStore};
use lockcore::{LockService, ObjectId, OwnerId, TokenIssuer};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Resident set size in bytes, from /proc (Linux only; 0 elsewhere).
fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|statm| statm.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
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
    let owner = OwnerId::new("bench-client").expect("valid owner");
    println!("locks held | bytes allocated per lock (beyond ids) | resident set growth per lock");
    for count in [1_000usize, 10_000, 100_000, 1_000_000] {
        let objects: Vec<ObjectId> = (0..count)
            .map(|n| ObjectId::new(format!("/bench/memory/{n:08}")).expect("valid object"))
            .collect();
        let _inside = runtime.enter();
        let locks = MemoryLockService::new(
            MemoryStore::new(MemoryConfig::default()),
            TokenIssuer::random(),
        );
        let rss_before = resident_bytes();
        let region = Region::new(GLOBAL);
        runtime.block_on(async {
            for object in &objects {
                let lease = locks
                    .acquire(object, &owner, Duration::from_secs(3600), Duration::ZERO)
                    .await
                    .expect("free object");
                drop(lease);
            }
        });
        let change = region.change();
        let rss_after = resident_bytes();
        assert_eq!(locks.store().held(), count);
        // stats_alloc already folds reallocation growth into bytes_allocated/deallocated.
        let kept = change.bytes_allocated as f64 - change.bytes_deallocated as f64;
        println!(
            "{count:>10} | {:>37.1} | {:>28.1}",
            kept / count as f64,
            rss_after.saturating_sub(rss_before) as f64 / count as f64
        );
        drop(locks);
    }
}
