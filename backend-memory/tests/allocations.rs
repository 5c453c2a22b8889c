//! Release must allocate only its boxed futures and its answer: counted with an instrumented global allocator (its own test
//! binary, so the counting allocator affects nothing else).

use std::alloc::System;
use std::time::Duration;

use backend_memory::{MemoryConfig, MemoryLockService, MemoryStore};
use lockcore::{LockService, ObjectId, OwnerId, TokenIssuer};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

#[test]
fn release_allocates_only_the_boxed_futures_and_its_verdict() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let _inside = runtime.enter();
    let locks = MemoryLockService::new(
        MemoryStore::new(MemoryConfig::default()),
        TokenIssuer::random(),
    );
    let object = ObjectId::new("/alloc/one").expect("valid");
    let owner = OwnerId::new("o").expect("valid");
    let ttl = Duration::from_secs(60);
    runtime.block_on(async {
        // Warm up: first use of thread-locals, the timer slab and the map shard.
        let lease = locks
            .acquire(&object, &owner, ttl, Duration::ZERO)
            .await
            .expect("free");
        locks.release(&object, &lease.token).await.expect("holder");

        let lease = locks
            .acquire(&object, &owner, ttl, Duration::ZERO)
            .await
            .expect("free");
        let release = locks.release(&object, &lease.token);
        // Creating the future boxes it (async-trait). Running it allocates the store's boxed
        // future and the one-element vector of verdicts the store answers with, nothing more.
        let region = Region::new(GLOBAL);
        release.await.expect("holder");
        let change = region.change();
        assert!(change.allocations <= 2, "release allocated: {change:?}");
        assert_eq!(change.reallocations, 0, "release reallocated: {change:?}");
        assert!(change.deallocations >= 1, "the released entry is freed");
    });
}
