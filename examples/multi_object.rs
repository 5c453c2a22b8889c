//! Benchmark of issue 11's request shapes on any backend `connect_backend` reaches: one
//! 64-object acquire (and batch release) against 64 single acquires (and releases), and shared
//! against exclusive throughput.
//!
//! ```text
//! cargo run --release -p lockd-examples --example multi_object -- memory:// \
//!     redis://127.0.0.1:6379 postgres://postgres@127.0.0.1:5432/test
//! ```
//!
//! Each URL is measured in turn in one run, so the numbers compare side by side. Objects live
//! under a random prefix; everything acquired is released.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lockcore::{
    AcquireRequest, LockMode, LockService, LockSpec, LockToken, ObjectId, OwnerId, TokenIssuer,
};
use lockd::{connect_backend, BackendOptions};

/// Objects per multi-object request: the most one request may name.
const OBJECTS: usize = 64;
/// Rounds of each latency measurement.
const ROUNDS: usize = 200;
/// How long each throughput measurement runs.
const THROUGHPUT_FOR: Duration = Duration::from_secs(3);
/// Concurrent tasks in the throughput measurements.
const TASKS: usize = 16;
const TTL: Duration = Duration::from_secs(30);

type BoxError = Box<dyn std::error::Error>;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}

fn objects(prefix: &str, n: usize) -> Result<Vec<ObjectId>, BoxError> {
    (0..n)
        .map(|i| ObjectId::new(format!("{prefix}/o{i}")).map_err(Into::into))
        .collect()
}

/// p50 and p99 of acquiring `OBJECTS` objects in one request, and of releasing them in one.
async fn one_request(
    locks: &dyn LockService,
    prefix: &str,
    owner: &OwnerId,
) -> Result<(Vec<Duration>, Vec<Duration>), BoxError> {
    let names = objects(prefix, OBJECTS)?;
    let specs: Vec<LockSpec> = names.iter().cloned().map(LockSpec::exclusive).collect();
    let (mut acquire, mut release) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let request = AcquireRequest::many(specs.clone(), owner.clone(), TTL);
        let started = Instant::now();
        let grant = locks.acquire_with(&request).await?;
        acquire.push(started.elapsed());
        let held: Vec<(ObjectId, LockToken)> = grant
            .leases
            .into_iter()
            .map(|lease| (lease.object, lease.token))
            .collect();
        let started = Instant::now();
        for result in locks.release_many(&held).await? {
            result?;
        }
        release.push(started.elapsed());
    }
    Ok((acquire, release))
}

/// p50 and p99 of acquiring `OBJECTS` objects one request each, and of releasing them so.
async fn single_requests(
    locks: &dyn LockService,
    prefix: &str,
    owner: &OwnerId,
) -> Result<(Vec<Duration>, Vec<Duration>), BoxError> {
    let names = objects(prefix, OBJECTS)?;
    let (mut acquire, mut release) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS / 4 {
        let started = Instant::now();
        let mut held = Vec::with_capacity(OBJECTS);
        for object in &names {
            held.push(locks.acquire(object, owner, TTL, Duration::ZERO).await?);
        }
        acquire.push(started.elapsed());
        let started = Instant::now();
        for lease in &held {
            locks.release(&lease.object, &lease.token).await?;
        }
        release.push(started.elapsed());
    }
    Ok((acquire, release))
}

/// Acquire+release pairs per second from `TASKS` tasks: all on one object in `mode`
/// (shared holders coexist; exclusive ones queue), or exclusive on an object per task.
async fn pairs_per_second(
    locks: Arc<dyn LockService>,
    prefix: &str,
    mode: LockMode,
    one_object: bool,
) -> Result<f64, BoxError> {
    let stop = Instant::now() + THROUGHPUT_FOR;
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let locks = locks.clone();
        let object = if one_object {
            ObjectId::new(format!("{prefix}/shared"))?
        } else {
            ObjectId::new(format!("{prefix}/t{task}"))?
        };
        let owner = OwnerId::new(format!("bench-{task}"))?;
        tasks.push(tokio::spawn(async move {
            let mut pairs = 0u64;
            while Instant::now() < stop {
                let wait = Duration::from_secs(5);
                if let Ok(lease) = locks.acquire_in(&object, mode, &owner, TTL, wait).await {
                    if locks.release(&object, &lease.token).await.is_ok() {
                        pairs += 1;
                    }
                }
            }
            pairs
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await?;
    }
    Ok(total as f64 / THROUGHPUT_FOR.as_secs_f64())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let urls: Vec<String> = std::env::args().skip(1).collect();
    if urls.is_empty() {
        return Err("usage: multi_object URL... (memory://, redis://..., postgres://...)".into());
    }
    let run: u64 = rand_tag();
    println!(
        "| backend | 64-object acquire p50 / p99 ms | 64 single acquires p50 / p99 ms | \
         batch release of 64 p50 / p99 ms | 64 single releases p50 / p99 ms | \
         shared pairs/s, 1 object, {TASKS} tasks | exclusive pairs/s, 1 object | \
         exclusive pairs/s, object per task |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for url in &urls {
        let locks = connect_backend(url, &BackendOptions::new(TokenIssuer::random())).await?;
        let prefix = format!("bench/multi/{run:x}/{}", locks.backend());
        let owner = OwnerId::new("bench")?;
        let (mut many, mut many_release) = one_request(&*locks, &prefix, &owner).await?;
        let (mut single, mut single_release) =
            single_requests(&*locks, &format!("{prefix}/single"), &owner).await?;
        for samples in [
            &mut many,
            &mut many_release,
            &mut single,
            &mut single_release,
        ] {
            samples.sort();
        }
        let shared = pairs_per_second(locks.clone(), &prefix, LockMode::Shared, true).await?;
        let exclusive = pairs_per_second(locks.clone(), &prefix, LockMode::Exclusive, true).await?;
        let spread = pairs_per_second(locks.clone(), &prefix, LockMode::Exclusive, false).await?;
        println!(
            "| {} | {} / {} | {} / {} | {} / {} | {} / {} | {shared:.0} | {exclusive:.0} | {spread:.0} |",
            locks.backend(),
            ms(percentile(&many, 0.5)),
            ms(percentile(&many, 0.99)),
            ms(percentile(&single, 0.5)),
            ms(percentile(&single, 0.99)),
            ms(percentile(&many_release, 0.5)),
            ms(percentile(&many_release, 0.99)),
            ms(percentile(&single_release, 0.5)),
            ms(percentile(&single_release, 0.99)),
        );
        locks.close(Duration::from_secs(5)).await;
    }
    Ok(())
}

/// A run tag from the clock, so repeated runs never meet each other's objects.
fn rand_tag() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
