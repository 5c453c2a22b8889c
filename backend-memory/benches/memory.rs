//! Criterion benchmarks of the in-memory backend: an uncontended acquire+release pair, eight
//! tasks contending on one object, and acquire with 1,000 vs 1,000,000 locks held.
//!
//! `cargo bench -p backend-memory --bench memory -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backend_memory::{MemoryConfig, MemoryLockService, MemoryStore};
use criterion::{criterion_main, Criterion};
use lockcore::{LockService, ObjectId, OwnerId, TokenIssuer};
use tokio::runtime::{Builder, Runtime};

const TTL: Duration = Duration::from_secs(3600);
const TASKS: u64 = 8;
/// Free objects the acquire-with-held benchmark cycles through: few (cache-warm) or many.
const WARM_IDS: usize = 1 << 12;
/// Enough free objects that their table slots do not stay in the CPU caches.
const COLD_IDS: usize = 1 << 18;

fn current_thread() -> Runtime {
    Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("tokio runtime")
}

fn multi_thread() -> Runtime {
    Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .expect("tokio runtime")
}

fn service(runtime: &Runtime) -> Arc<MemoryLockService> {
    let _inside = runtime.enter();
    Arc::new(MemoryLockService::new(
        MemoryStore::new(MemoryConfig::default()),
        TokenIssuer::random(),
    ))
}

fn ids(prefix: &str, count: usize) -> Vec<ObjectId> {
    (0..count)
        .map(|n| ObjectId::new(format!("{prefix}/{n:08}")).expect("valid object"))
        .collect()
}

/// Acquire and release of a free object on one thread: token minting (nonce, digest, HMAC,
/// base64) and checking (digest, constant-time compare) included.
fn uncontended_pair(c: &mut Criterion) {
    let runtime = current_thread();
    let locks = service(&runtime);
    let object = ObjectId::new("/bench/one").expect("valid object");
    let owner = OwnerId::new("bench-client").expect("valid owner");
    c.bench_function("uncontended acquire+release pair", |b| {
        b.to_async(&runtime).iter(|| async {
            let lease = locks
                .acquire(&object, &owner, TTL, Duration::ZERO)
                .await
                .expect("free object");
            black_box(locks.release(&object, &lease.token).await.expect("holder"))
        });
    });
}

/// Eight tasks on a two-worker runtime taking turns on one object with blocking acquires; the
/// time reported is per acquire+release pair (total time / pairs), hand-offs included.
fn contended_pairs(c: &mut Criterion) {
    let runtime = multi_thread();
    let locks = service(&runtime);
    c.bench_function("8 tasks contending on one object (per pair)", |b| {
        b.to_async(&runtime).iter_custom(|iters| {
            let locks = locks.clone();
            async move {
                let per_task = iters.div_ceil(TASKS);
                let start = Instant::now();
                let tasks: Vec<_> = (0..TASKS)
                    .map(|t| {
                        let locks = locks.clone();
                        tokio::spawn(async move {
                            let object = ObjectId::new("/bench/contended").expect("valid");
                            let owner = OwnerId::new(format!("task-{t}")).expect("valid");
                            for _ in 0..per_task {
                                let lease = locks
                                    .acquire(&object, &owner, TTL, Duration::from_secs(60))
                                    .await
                                    .expect("granted within the wait");
                                locks.release(&object, &lease.token).await.expect("holder");
                            }
                        })
                    })
                    .collect();
                for task in tasks {
                    task.await.expect("bench task");
                }
                start
                    .elapsed()
                    .mul_f64(iters as f64 / (per_task * TASKS) as f64)
            }
        });
    });
}

/// Time of one acquire (of an object not held) while `held` other locks are held; each acquired
/// lock is released outside the timed part, so the table stays at `held` locks.
///
/// The acquired objects cycle through a small set of ids (4,096: the table slots they land in
/// stay in the CPU caches, which isolates the algorithm's cost) or a large one (262,144: every
/// acquire misses the caches, as requests for random objects in a big server would).
fn acquire_with_held(c: &mut Criterion) {
    let runtime = current_thread();
    let owner = OwnerId::new("bench-client").expect("valid owner");
    let mut group = c.benchmark_group("acquire with locks held");
    for held in [1_000usize, 1_000_000] {
        let locks = service(&runtime);
        runtime.block_on(async {
            for object in ids("/bench/held", held) {
                locks
                    .acquire(&object, &owner, TTL, Duration::ZERO)
                    .await
                    .expect("free object");
            }
        });
        for (pool, label) in [(WARM_IDS, "cache-warm ids"), (COLD_IDS, "cache-cold ids")] {
            let fresh = ids("/bench/fresh", pool);
            let cursor = std::cell::Cell::new(0usize);
            group.bench_function(format!("{held} held, {label}"), |b| {
                b.to_async(&runtime).iter_custom(|iters| {
                    let (locks, owner, fresh, cursor) = (&locks, &owner, &fresh, &cursor);
                    async move {
                        let mut timed = Duration::ZERO;
                        for _ in 0..iters {
                            let object = &fresh[cursor.get() % fresh.len()];
                            cursor.set(cursor.get() + 1);
                            let start = Instant::now();
                            let lease = locks
                                .acquire(object, owner, TTL, Duration::ZERO)
                                .await
                                .expect("free object");
                            timed += start.elapsed();
                            locks.release(object, &lease.token).await.expect("holder");
                        }
                        timed
                    }
                });
            });
        }
        assert_eq!(locks.store().held(), held);
    }
    group.finish();
}

/// `criterion_group!` generates an undocumented public function; keep it out of the lints' way.
#[allow(missing_docs)]
mod group {
    criterion::criterion_group!(
        benches,
        super::uncontended_pair,
        super::contended_pairs,
        super::acquire_with_held
    );
}
criterion_main!(group::benches);
