//! Acquire+release pairs per second through `EtcdLockService`, and through a raw
//! `etcd-client` loop of the same transactions, at several concurrencies.
//!
//! ```text
//! cargo run --release -p backend-etcd --example etcd_bench -- [URL] [SECONDS] [CONCURRENCY,...]
//! ```
//!
//! Each task locks its own object in a loop (acquire with a 30 s TTL, then release), so the
//! numbers measure round trips, not contention. The raw loop sends what the store sends for an
//! uncontended pair: a read transaction (the object's holder and waiter ranges, its fence key,
//! and its three ancestors' subtree ranges) in parallel with a lease grant, the conditional
//! write (guarded on the holder ranges; holder and fence keys), and the release transaction;
//! the store adds its decisions, token minting and checking. Target: the service at 0.9× the
//! raw loop or better.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backend_etcd::{EtcdConfig, EtcdLockService, EtcdStore};
use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use lockcore::{LockService, ObjectId, OwnerId, TokenIssuer};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Whether a task should stop; counts a pair each time it answers "go on".
type Done = Arc<dyn Fn() -> bool + Send + Sync>;

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let url = args
        .first()
        .cloned()
        .unwrap_or_else(|| "etcd://127.0.0.1:2379".into());
    let seconds: u64 = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(5);
    let concurrencies: Vec<usize> = args
        .get(2)
        .map(String::as_str)
        .unwrap_or("1,50")
        .split(',')
        .map(str::parse)
        .collect::<std::result::Result<_, _>>()?;
    let config = EtcdConfig::from_url(&url);
    let endpoints = config.endpoints()?;
    let service = Arc::new(EtcdLockService::new(
        EtcdStore::connect(config).await?,
        TokenIssuer::random(),
    ));
    let client = Client::connect(&endpoints, None).await?;
    let run_id: u64 = rand::random();
    println!("| tasks | service pairs/s | raw etcd-client pairs/s | ratio |");
    println!("|---:|---:|---:|---:|");
    for &tasks in &concurrencies {
        let service_rate = run(tasks, seconds, |task, done| {
            let service = service.clone();
            async move {
                let object = ObjectId::new(format!("bench/{run_id:x}/svc/{task}"))?;
                let owner = OwnerId::new(format!("bench-{task}"))?;
                while !done() {
                    let lease = service
                        .acquire(&object, &owner, Duration::from_secs(30), Duration::ZERO)
                        .await?;
                    service.release(&object, &lease.token).await?;
                }
                Ok(())
            }
        })
        .await?;
        let raw_rate = run(tasks, seconds, |task, done| {
            let client = client.clone();
            let prefix = format!("bench-raw/{run_id:x}/{task}");
            raw_pairs(client, prefix, done)
        })
        .await?;
        println!(
            "| {tasks} | {service_rate:.0} | {raw_rate:.0} | {:.2} |",
            service_rate / raw_rate
        );
    }
    Ok(())
}

/// The raw loop: the store's transactions for one uncontended pair, without its decisions,
/// for an object three segments deep like the service's (`bench/<run>/svc/<task>`).
async fn raw_pairs(client: Client, prefix: String, done: Done) -> Result<()> {
    let holders = format!("{prefix}/o/");
    let queue = format!("{prefix}/q/");
    let fence_key = format!("{prefix}/f");
    let holder = format!("{prefix}/o/h");
    let marker = format!("{prefix}/o/d");
    let subtree_holder = format!("{prefix}/o/t/h");
    let subtree_marker = format!("{prefix}/o/t/d");
    // Each ancestor's subtree-scoped holders and waiters.
    let ancestors: Vec<(String, String)> = (0..3)
        .map(|i| (format!("{prefix}/a{i}/o/t/"), format!("{prefix}/a{i}/q/t/")))
        .collect();
    let mut fence: u64 = 0;
    while !done() {
        let mut kv = client.kv_client();
        let mut lease = client.lease_client();
        let mut reads = vec![
            TxnOp::get(holders.clone(), Some(GetOptions::new().with_prefix())),
            TxnOp::get(queue.clone(), Some(GetOptions::new().with_prefix())),
            TxnOp::get(fence_key.clone(), None),
        ];
        for (held, queued) in &ancestors {
            reads.push(TxnOp::get(
                held.clone(),
                Some(GetOptions::new().with_prefix()),
            ));
            reads.push(TxnOp::get(
                queued.clone(),
                Some(GetOptions::new().with_prefix()),
            ));
        }
        let (read, granted) =
            tokio::join!(kv.txn(Txn::new().and_then(reads)), lease.grant(30, None));
        let revision = read?.header().map_or(0, |h| h.revision());
        let granted = granted?;
        fence += 1;
        let guards: Vec<Compare> = std::iter::once(&holders)
            .chain(ancestors.iter().map(|(held, _)| held))
            .map(|range| {
                Compare::create_revision(range.clone(), CompareOp::Less, revision + 1).with_prefix()
            })
            .collect();
        let write = Txn::new()
            .when(guards)
            .and_then([TxnOp::txn(Txn::new().and_then([
                TxnOp::put(
                    holder.clone(),
                    "x 0 0 30000 0 bench",
                    Some(PutOptions::new().with_lease(granted.id())),
                ),
                TxnOp::put(fence_key.clone(), fence.to_string(), None),
            ]))]);
        kv.txn(write).await?;
        let count = |range: &str| {
            TxnOp::get(
                range.to_string(),
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
        };
        let subtree = Txn::new()
            .when([Compare::version(
                subtree_holder.clone(),
                CompareOp::Greater,
                0,
            )])
            .and_then([
                TxnOp::delete(subtree_holder.clone(), None),
                TxnOp::delete(subtree_marker.clone(), None),
            ])
            .or_else([count(&holder), count(&subtree_holder)]);
        let release = Txn::new().and_then([TxnOp::txn(
            Txn::new()
                .when([Compare::version(holder.clone(), CompareOp::Greater, 0)])
                .and_then([
                    TxnOp::delete(holder.clone(), None),
                    TxnOp::delete(marker.clone(), None),
                ])
                .or_else([TxnOp::txn(subtree)]),
        )]);
        kv.txn(release).await?;
    }
    Ok(())
}

/// Runs `tasks` copies of `body` for `seconds`, returning the pairs per second.
async fn run<F, Fut>(tasks: usize, seconds: u64, body: F) -> Result<f64>
where
    F: Fn(usize, Done) -> Fut,
    Fut: std::future::Future<Output = Result<()>> + Send + 'static,
{
    let pairs = Arc::new(AtomicU64::new(0));
    let stop_at = Instant::now() + Duration::from_secs(seconds);
    let mut handles = Vec::with_capacity(tasks);
    for task in 0..tasks {
        let pairs = pairs.clone();
        let done: Done = Arc::new(move || {
            if Instant::now() >= stop_at {
                return true;
            }
            pairs.fetch_add(1, Ordering::Relaxed);
            false
        });
        handles.push(tokio::spawn(body(task, done)));
    }
    for handle in handles {
        handle.await??;
    }
    // `done()` counts each pair as it starts; pairs cut off at the end count too.
    Ok(pairs.load(Ordering::Relaxed) as f64 / seconds as f64)
}
