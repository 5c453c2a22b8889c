//! Release must not allocate: counted with an instrumented global allocator (its own test
//! binary, so the counting allocator affects nothing else).

use std::alloc::System;
use std::time::Duration;

use backend_memory::{MemoryConfig, MemoryLockService};
use lockcore::{LockService, ObjectId, OwnerId, TokenIssuer};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

#[test]
fn release_allocates_nothing_beyond_the_boxed_trait_future() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let _inside = runtime.enter();
    let locks = MemoryLockService::new(MemoryConfig::default(), TokenIssuer::random());
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
        // Creating the future boxes it (async-trait); running it must allocate nothing more.
        let region = Region::new(GLOBAL);
        release.await.expect("holder");
        let change = region.change();
        assert_eq!(change.allocations, 0, "release allocated: {change:?}");
        assert_eq!(change.reallocations, 0, "release reallocated: {change:?}");
        assert!(change.deallocations >= 1, "the released entry is freed");
    });
}
