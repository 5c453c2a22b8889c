//! What subtree locks cost as unrelated locks pile up (issue 12): acquire+release latency of
//! locks in a small tree, and of one `list` page, with N unrelated locks held, on any backend
//! `connect_backend` reaches.
//!
//! ```text
//! cargo run --release -p lockd-examples --example subtree_cost -- \
//!     [--held 100,100000] [--rounds 1000] [--list-rounds 200] memory:// redis://127.0.0.1:6379 \
//!     postgres://postgres@127.0.0.1:5432/test etcd://127.0.0.1:2379
//! ```
//!
//! For each URL and each N of `--held` (default 100 and 100,000), in a fresh random namespace
//! `/subtree-cost/<tag>`:
//!
//! * holds N unrelated locks (`<ns>/bulk/…`, 64 per request);
//! * builds a small tree that has a few held locks: a shared subtree lock (a snapshot) on
//!   `<ns>/tree/snap`, shared locks on four files in `<ns>/tree/snap/a`, exclusive locks on four
//!   files in `<ns>/tree/d0`, and 150 locks in `<ns>/listed/`;
//! * measures p50 and p99 of `--rounds` acquire+release pairs (after a warm-up) of
//!   - **object under a subtree root**: a shared lock on `<ns>/tree/snap/a/b/file`, under the
//!     snapshot;
//!   - **exclusive subtree, empty dir**: an exclusive subtree lock on `<ns>/tree/d1` (a rename
//!     of a directory next to `d0`, whose files are held);
//!   - **shared subtree over held locks**: a shared subtree lock on `<ns>/tree/snap/a`, with
//!     the snapshot above it and four shared locks under it;
//! * and p50 and p99 of `--list-rounds` list pages (`prefix=<ns>/listed/`, `limit=100`).
//!
//! It prints one table row per backend, N and case, then the ratio of each case's p99 at each
//! larger N to its p99 at the first (issue 12's target: at most 1.5 from 10^2 to 10^5; and a
//! list page within 5 ms with 10^6 held, on memory).
//! Everything it acquires is released before it moves on.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lockcore::{
    AcquireRequest, Grant, ListQuery, LockError, LockMode, LockScope, LockService, LockSpec,
    LockToken, ObjectId, OwnerId, TokenIssuer,
};
use lockd::{connect_backend, BackendOptions};

/// Long enough to outlive the whole run on the slowest backend.
const TTL: Duration = Duration::from_secs(1800);
/// Objects per request while filling the store.
const BATCH: usize = 64;
/// Concurrent requests while filling the store.
const FILLERS: usize = 16;
/// Locks under the listed prefix: more than one page.
const LISTED: usize = 150;
/// The page size of the listing measured.
const PAGE: usize = 100;
/// Pairs run before measuring.
const WARM_UP: usize = 50;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the command line asked for.
struct Options {
    held: Vec<usize>,
    rounds: usize,
    list_rounds: usize,
    urls: Vec<String>,
}

fn usage() -> String {
    "usage: subtree_cost [--held N[,N...]] [--rounds N] [--list-rounds N] URL...".into()
}

fn parse_count(flag: &str, value: Option<String>) -> Result<usize, BoxError> {
    let value = value.ok_or_else(|| format!("{flag} needs a value; {}", usage()))?;
    Ok(value
        .trim()
        .replace('_', "")
        .parse::<usize>()
        .map_err(|e| format!("{flag} {value}: {e}"))?)
}

fn options() -> Result<Options, BoxError> {
    let mut options = Options {
        held: vec![100, 100_000],
        rounds: 1000,
        list_rounds: 200,
        urls: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--held" => {
                let value = args
                    .next()
                    .ok_or_else(|| format!("--held needs a value; {}", usage()))?;
                options.held = value
                    .split(',')
                    .map(|n| parse_count("--held", Some(n.to_string())))
                    .collect::<Result<_, _>>()?;
            }
            "--rounds" => options.rounds = parse_count("--rounds", args.next())?.max(1),
            "--list-rounds" => {
                options.list_rounds = parse_count("--list-rounds", args.next())?.max(1);
            }
            "-h" | "--help" => return Err(usage().into()),
            url => options.urls.push(url.to_string()),
        }
    }
    if options.urls.is_empty() {
        options.urls.push("memory://".into());
    }
    Ok(options)
}

fn object(name: String) -> Result<ObjectId, BoxError> {
    Ok(ObjectId::new(name)?)
}

fn spec(name: String, mode: LockMode, scope: LockScope) -> Result<LockSpec, BoxError> {
    Ok(LockSpec::new(object(name)?, mode).with_scope(scope))
}

/// A namespace no other run shares.
fn namespace() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("/subtree-cost/{:x}{:x}", nanos, std::process::id())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.4}", d.as_secs_f64() * 1000.0)
}

/// What a run holds, to release it at the end.
#[derive(Default)]
struct Held {
    locks: Vec<(ObjectId, LockToken)>,
}

impl Held {
    fn keep(&mut self, grant: Grant) {
        self.locks.extend(
            grant
                .leases
                .into_iter()
                .map(|lease| (lease.object, lease.token)),
        );
    }

    async fn release(self, locks: &Arc<dyn LockService>) -> Result<(), BoxError> {
        let mut tasks = Vec::new();
        let chunks: Vec<Vec<(ObjectId, LockToken)>> =
            self.locks.chunks(BATCH).map(<[_]>::to_vec).collect();
        let per_task = chunks.len().div_ceil(FILLERS).max(1);
        let mut chunks = chunks.into_iter();
        loop {
            let mine: Vec<_> = chunks.by_ref().take(per_task).collect();
            if mine.is_empty() {
                break;
            }
            let locks = locks.clone();
            tasks.push(tokio::spawn(async move {
                for chunk in mine {
                    for result in locks.release_many(&chunk).await? {
                        result?;
                    }
                }
                Ok::<(), BoxError>(())
            }));
        }
        for task in tasks {
            task.await??;
        }
        Ok(())
    }
}

/// Acquires `names` exclusively, `BATCH` per request, `FILLERS` requests at a time.
async fn fill(
    locks: &Arc<dyn LockService>,
    names: Vec<ObjectId>,
    owner: &OwnerId,
) -> Result<Held, BoxError> {
    let batches: Vec<Vec<ObjectId>> = names.chunks(BATCH).map(<[_]>::to_vec).collect();
    let per_task = batches.len().div_ceil(FILLERS).max(1);
    let mut batches = batches.into_iter();
    let mut tasks = Vec::new();
    loop {
        let mine: Vec<_> = batches.by_ref().take(per_task).collect();
        if mine.is_empty() {
            break;
        }
        let (locks, owner) = (locks.clone(), owner.clone());
        tasks.push(tokio::spawn(async move {
            let mut held = Held::default();
            for batch in mine {
                let specs = batch.into_iter().map(LockSpec::exclusive).collect();
                held.keep(
                    locks
                        .acquire_with(&AcquireRequest::many(specs, owner.clone(), TTL))
                        .await?,
                );
            }
            Ok::<Held, BoxError>(held)
        }));
    }
    let mut held = Held::default();
    for task in tasks {
        held.locks.extend(task.await??.locks);
    }
    Ok(held)
}

/// Sorted latencies of `rounds` acquire+release pairs of `spec`, after a warm-up.
async fn pairs(
    locks: &dyn LockService,
    spec: &LockSpec,
    owner: &OwnerId,
    rounds: usize,
) -> Result<Vec<Duration>, BoxError> {
    let mut samples = Vec::with_capacity(rounds);
    for round in 0..WARM_UP + rounds {
        let request = AcquireRequest::many(vec![spec.clone()], owner.clone(), TTL);
        let started = Instant::now();
        let lease = locks.acquire_with(&request).await?.into_first();
        locks.release(&lease.object, &lease.token).await?;
        if round >= WARM_UP {
            samples.push(started.elapsed());
        }
    }
    samples.sort_unstable();
    Ok(samples)
}

/// Sorted latencies of `rounds` list pages under `prefix`, each checked to be a full page.
async fn pages(
    locks: &dyn LockService,
    prefix: &str,
    rounds: usize,
) -> Result<Vec<Duration>, BoxError> {
    let query = ListQuery::new(prefix, PAGE);
    let mut samples = Vec::with_capacity(rounds);
    for round in 0..WARM_UP.min(rounds) + rounds {
        let started = Instant::now();
        let page = locks.list(&query).await?;
        let took = started.elapsed();
        if page.locks.len() != PAGE || page.next.is_none() {
            return Err(format!(
                "list {prefix} returned {} locks (next: {:?}), expected a full page of {PAGE}",
                page.locks.len(),
                page.next
            )
            .into());
        }
        if round >= WARM_UP.min(rounds) {
            samples.push(took);
        }
    }
    samples.sort_unstable();
    Ok(samples)
}

/// One measured case: its label and sorted latencies, or why it could not be measured (a
/// backend without subtree locks refuses them as `invalid_argument`).
struct Measured {
    case: &'static str,
    samples: Result<Vec<Duration>, String>,
}

/// Everything measured for one backend and one N.
async fn measure(url: &str, n: usize, options: &Options) -> Result<Vec<Measured>, BoxError> {
    let locks = connect_backend(url, &BackendOptions::new(TokenIssuer::random())).await?;
    let ns = namespace();
    let (bulk_owner, tree_owner, me) = (
        OwnerId::new("subtree-cost-bulk")?,
        OwnerId::new("subtree-cost-tree")?,
        OwnerId::new("subtree-cost-bench")?,
    );
    let started = Instant::now();
    let bulk: Vec<ObjectId> = (0..n)
        .map(|i| object(format!("{ns}/bulk/{i:08}")))
        .collect::<Result<_, _>>()?;
    let mut held = fill(&locks, bulk, &bulk_owner).await?;
    let listed: Vec<ObjectId> = (0..LISTED)
        .map(|i| object(format!("{ns}/listed/{i:04}")))
        .collect::<Result<_, _>>()?;
    held.locks
        .extend(fill(&locks, listed, &tree_owner).await?.locks);
    eprintln!(
        "{url}: {n} unrelated locks (+{LISTED} listed) held in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // The snapshot, then the files (one request may not name a subtree and what is under it).
    let snapshot = spec(
        format!("{ns}/tree/snap"),
        LockMode::Shared,
        LockScope::Subtree,
    )?;
    let mut files = Vec::new();
    for i in 0..4 {
        files.push(spec(
            format!("{ns}/tree/snap/a/f{i}"),
            LockMode::Shared,
            LockScope::Object,
        )?);
        files.push(spec(
            format!("{ns}/tree/d0/f{i}"),
            LockMode::Exclusive,
            LockScope::Object,
        )?);
    }
    for specs in [vec![snapshot], files] {
        match locks
            .acquire_with(&AcquireRequest::many(specs, tree_owner.clone(), TTL))
            .await
        {
            Ok(grant) => held.keep(grant),
            Err(LockError::InvalidArgument { field, reason }) => {
                eprintln!("{url}: tree lock refused ({field}: {reason}); measuring without it");
            }
            Err(other) => return Err(other.into()),
        }
    }

    let cases = [
        (
            "object under a subtree root",
            spec(
                format!("{ns}/tree/snap/a/b/file"),
                LockMode::Shared,
                LockScope::Object,
            )?,
        ),
        (
            "exclusive subtree, empty dir",
            spec(
                format!("{ns}/tree/d1"),
                LockMode::Exclusive,
                LockScope::Subtree,
            )?,
        ),
        (
            "shared subtree over held locks",
            spec(
                format!("{ns}/tree/snap/a"),
                LockMode::Shared,
                LockScope::Subtree,
            )?,
        ),
    ];
    let mut measured = Vec::new();
    for (case, spec) in &cases {
        measured.push(Measured {
            case,
            samples: pairs(&*locks, spec, &me, options.rounds)
                .await
                .map_err(|e| e.to_string()),
        });
    }
    measured.push(Measured {
        case: "list page (limit 100)",
        samples: pages(&*locks, &format!("{ns}/listed/"), options.list_rounds)
            .await
            .map_err(|e| e.to_string()),
    });
    held.release(&locks).await?;
    Ok(measured)
}

fn backend_name(url: &str) -> &str {
    url.split_once("://").map_or(url, |(scheme, _)| scheme)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let options = options()?;
    println!(
        "{:<9} {:>9}  {:<32} {:>10} {:>10}",
        "backend", "held", "case", "p50 ms", "p99 ms"
    );
    let mut ratios = Vec::new();
    for url in &options.urls {
        let mut by_n = Vec::new();
        for &n in &options.held {
            let measured = measure(url, n, &options).await?;
            for m in &measured {
                let (p50, p99) = match &m.samples {
                    Ok(samples) => (ms(percentile(samples, 0.50)), ms(percentile(samples, 0.99))),
                    Err(error) => ("n/a".into(), format!("n/a ({error})")),
                };
                println!(
                    "{:<9} {:>9}  {:<32} {:>10} {:>10}",
                    backend_name(url),
                    n,
                    m.case,
                    p50,
                    p99,
                );
            }
            by_n.push((n, measured));
        }
        if let Some(((low_n, low), rest)) = by_n.split_first() {
            for (high_n, high) in rest {
                for (low, high) in low.iter().zip(high) {
                    let (Ok(low_samples), Ok(high_samples)) = (&low.samples, &high.samples) else {
                        continue;
                    };
                    let ratio = percentile(high_samples, 0.99).as_secs_f64()
                        / percentile(low_samples, 0.99).as_secs_f64();
                    ratios.push(format!(
                        "{:<9} {:<32} p99 at {high_n} / p99 at {low_n}: {ratio:.2}",
                        backend_name(url),
                        low.case
                    ));
                }
            }
        }
    }
    for line in &ratios {
        println!("{line}");
    }
    Ok(())
}
