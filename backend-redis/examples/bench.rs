//! Acquire+release pairs per second through `RedisLockService`, at several concurrencies.
//!
//! ```text
//! cargo run --release -p backend-redis --example bench -- [URL] [SECONDS] [CONCURRENCY,...] [RUNTIME] [DEDICATED]
//! cargo run --release -p backend-redis --example bench -- --print-scripts DIR
//! ```
//!
//! Each task locks its own object in a loop (acquire with a 30 s TTL, then release), so the
//! numbers measure the backend's round trips, not contention. `RUNTIME` is `multi` (tokio's
//! multi-thread runtime, the default, as in the lockd server) or `current` (one thread).
//! `DEDICATED` sets `RedisConfig::dedicated_connections` (default: the config's default, 2).
//! `--print-scripts` writes the acquire and release scripts to `DIR` for `redis-benchmark`
//! (see `bench/compare.sh`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backend_redis::{RedisConfig, RedisLockService, RedisStore};
use lockcore::{LockService, ObjectId, OwnerId, TokenIssuer};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = match args.get(3).map(String::as_str).unwrap_or("multi") {
        "multi" => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?,
        "current" => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        other => return Err(format!("unknown runtime {other}: use multi or current").into()),
    };
    runtime.block_on(run(args))
}

async fn run(args: Vec<String>) -> Result<(), Box<dyn std::error::Error>> {
    if args.first().map(String::as_str) == Some("--print-scripts") {
        let dir = args.get(1).ok_or("--print-scripts needs a directory")?;
        std::fs::write(
            format!("{dir}/acquire.lua"),
            backend_redis::acquire_script_source(),
        )?;
        std::fs::write(
            format!("{dir}/release.lua"),
            backend_redis::release_script_source(),
        )?;
        return Ok(());
    }
    let url = args
        .first()
        .cloned()
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let seconds: u64 = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(5);
    let concurrencies: Vec<usize> = args
        .get(2)
        .map(String::as_str)
        .unwrap_or("1,50")
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;

    let mut config = RedisConfig::from_url(url);
    config.key_prefix = format!("lockd-bench-{}:", std::process::id());
    if let Some(dedicated) = args.get(4) {
        config.dedicated_connections = dedicated.parse()?;
    }
    let service_dedicated = config.dedicated_connections;
    let service = Arc::new(RedisLockService::new(
        RedisStore::connect(config).await?,
        TokenIssuer::random(),
    ));
    let owner = OwnerId::new("bench")?;
    let ttl = Duration::from_secs(30);

    for concurrency in concurrencies {
        let pairs = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        // Warm up (connections, scripts, allocator) for a fraction of the run.
        let warmup = Duration::from_millis(500);
        let started = Instant::now();
        let measure_from = started + warmup;
        let until = measure_from + Duration::from_secs(seconds);
        let mut tasks = Vec::with_capacity(concurrency);
        for task in 0..concurrency {
            let (service, owner, pairs, errors) = (
                service.clone(),
                owner.clone(),
                pairs.clone(),
                errors.clone(),
            );
            let object = ObjectId::new(format!("bench/{concurrency}/{task}"))?;
            tasks.push(tokio::spawn(async move {
                loop {
                    let now = Instant::now();
                    if now >= until {
                        break;
                    }
                    let ok = match service.acquire(&object, &owner, ttl, Duration::ZERO).await {
                        Ok(lease) => service.release(&object, &lease.token).await.is_ok(),
                        Err(_) => false,
                    };
                    if now >= measure_from {
                        if ok {
                            pairs.fetch_add(1, Ordering::Relaxed);
                        } else {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }));
        }
        for task in tasks {
            task.await?;
        }
        let elapsed = Instant::now()
            .saturating_duration_since(measure_from)
            .as_secs_f64();
        let pairs = pairs.load(Ordering::Relaxed);
        println!(
            "backend runtime={} dedicated={} concurrency={concurrency} pairs={pairs} errors={} seconds={elapsed:.2} pairs_per_sec={:.0}",
            args.get(3).map(String::as_str).unwrap_or("multi"),
            service_dedicated,
            errors.load(Ordering::Relaxed),
            pairs as f64 / elapsed
        );
    }
    Ok(())
}
