//! `lockd-bench`: drives a running lockd with N concurrent clients doing acquire+release pairs
//! and reports pairs per second and latency percentiles.
//!
//! ```text
//! lockd-bench --concurrency 50 --duration 10s                 # random objects, rarely contended
//! lockd-bench --concurrency 50 --contended 4 --pairs 20000    # 50 clients fighting over 4 objects
//! lockd-bench --mode shared --contended 1                     # 50 readers sharing one object
//! lockd-bench --mode mixed --contended 8 --objects-per-request 2   # readers and writers, pairs of objects
//! lockd-bench --objects-per-request 64 --concurrency 1        # the cost of one 64-object acquire
//! lockd-bench --tree-depth 6 --objects 100000                 # objects five directories deep
//! ```
//!
//! `--mode` sets the mode of every request: `exclusive` (the default), `shared`, or `mixed`
//! (each request shared or exclusive at random, half and half). `--objects-per-request N`
//! makes each acquire name N distinct random objects (1 to 64), granted all or nothing, and
//! each release one batched release of all N: a pair is still two requests.
//!
//! `--tree-depth D` spreads the objects over a tree of paths D segments deep below the run's
//! root: object `N` is `bench/RUN/N` at depth 1 (the default), and `bench/RUN/dA/dB/.../N`
//! deeper, under D - 1 levels of directories that share the objects evenly (the smallest
//! fan-out `F` with `F^D` at least the number of objects). Each acquire then pays for its
//! ancestors, as a DFS's deep paths make it (see lockcore's `path` module).
//!
//! Each client has its own connection pool (so N clients hold N keep-alive connections, as
//! `redis-benchmark -c N` does). A pair is one acquire followed, once granted, by its release;
//! its latency runs from sending the acquire to receiving the release's answer. In contended
//! mode acquires block (`--wait`, default 5 s) so pairs measure lock hand-over; elsewhere an
//! acquire that finds the object locked counts as `locked` and is not a pair.
//!
//! Only loopback targets are accepted unless `--allow-remote` is given: a load generator pointed
//! at a shared server by mistake hurts other people.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use lockcore::{
    AcquireRequest, LockError, LockMode, LockService, LockSpec, LockToken, ObjectId, OwnerId,
    MAX_OBJECTS_PER_REQUEST,
};
use lockd_client::{ClientConfig, LockdClient};
use rand::Rng;

/// Load generator for lockd: concurrent acquire+release pairs, with pairs/s and latency.
#[derive(Debug, Parser)]
#[command(name = "lockd-bench", version)]
struct Args {
    /// lockd's URL.
    #[arg(long, default_value = "http://127.0.0.1:7070")]
    url: String,
    /// API key, if lockd requires one.
    #[arg(long, env = "LOCKD_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Concurrent clients, each with its own connection.
    #[arg(short = 'c', long, default_value_t = 50)]
    concurrency: usize,
    /// Stop after this long (e.g. `10s`); default 10 s unless `--pairs` is given.
    #[arg(short = 'd', long, value_parser = humantime::parse_duration, conflicts_with = "pairs")]
    duration: Option<Duration>,
    /// Stop after this many acquire attempts (each granted one makes a pair).
    #[arg(short = 'n', long)]
    pairs: Option<u64>,
    /// Contended mode: all clients use only this many objects (blocking acquires).
    #[arg(long)]
    contended: Option<usize>,
    /// Number of distinct objects in uncontended mode (like redis-benchmark's `-r`).
    #[arg(long, default_value_t = 100_000)]
    objects: usize,
    /// TTL of each lease.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// How long an acquire may block; default 0, or 5 s in contended mode.
    #[arg(long, value_parser = humantime::parse_duration)]
    wait: Option<Duration>,
    /// Unrequested warm-up time before measuring (connections opened, caches warm).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Allow a target that is not a loopback address.
    #[arg(long)]
    allow_remote: bool,
    /// Runtime threads of the load generator (1, like redis-benchmark, leaves the most CPU to
    /// the server when both share a machine).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// The mode of each request: exclusive, shared, or mixed (each request shared or
    /// exclusive at random, half and half).
    #[arg(long, value_enum, default_value_t = ModeArg::Exclusive)]
    mode: ModeArg,
    /// Objects named by each acquire (1 to 64, distinct, granted all or nothing) and released
    /// together by one batched release.
    #[arg(long, default_value_t = 1)]
    objects_per_request: usize,
    /// Path segments of each object below the run's root: 1 names objects `bench/RUN/N`, D puts
    /// them under D - 1 levels of directories sharing them evenly (1 to 30).
    #[arg(long, default_value_t = 1)]
    tree_depth: usize,
    /// Print the summary as one JSON object.
    #[arg(long)]
    json: bool,
}

/// `--mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ModeArg {
    /// Every request exclusive.
    Exclusive,
    /// Every request shared.
    Shared,
    /// Each request shared or exclusive at random, half and half.
    Mixed,
}

impl ModeArg {
    fn pick(self) -> LockMode {
        match self {
            ModeArg::Exclusive => LockMode::Exclusive,
            ModeArg::Shared => LockMode::Shared,
            ModeArg::Mixed => {
                if rand::rng().random_bool(0.5) {
                    LockMode::Shared
                } else {
                    LockMode::Exclusive
                }
            }
        }
    }

    fn name(self) -> &'static str {
        match self {
            ModeArg::Exclusive => "exclusive",
            ModeArg::Shared => "shared",
            ModeArg::Mixed => "mixed",
        }
    }
}

/// The most `--tree-depth`: object ids have at most `MAX_OBJECT_DEPTH` segments, two of which
/// are `bench/RUN`.
const MAX_TREE_DEPTH: usize = lockcore::MAX_OBJECT_DEPTH - 2;

/// Where the objects of a run live: `depth` segments below `bench/RUN`, the directories above
/// the leaf each holding `fanout` children.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tree {
    depth: usize,
    fanout: usize,
}

impl Tree {
    /// A tree `depth` deep (1 to [`MAX_TREE_DEPTH`]) spreading `space` objects evenly: the
    /// smallest fan-out `F` (at least 2) with `F^depth >= space`.
    fn new(depth: usize, space: usize) -> Result<Self, String> {
        if depth == 0 || depth > MAX_TREE_DEPTH {
            return Err(format!(
                "--tree-depth must be between 1 and {MAX_TREE_DEPTH}"
            ));
        }
        if depth == 1 {
            return Ok(Self { depth, fanout: 1 });
        }
        let exponent = u32::try_from(depth).map_err(|e| e.to_string())?;
        let covers = |fanout: usize| fanout.checked_pow(exponent).is_none_or(|n| n >= space);
        let mut fanout = ((space as f64).powf(1.0 / depth as f64).floor() as usize).max(2);
        while fanout > 2 && covers(fanout - 1) {
            fanout -= 1;
        }
        while !covers(fanout) {
            fanout += 1;
        }
        Ok(Self { depth, fanout })
    }

    /// The id of object `n` of `run`: its directories are the leading base-`fanout` digits of
    /// `n`, its leaf `n` itself (so distinct objects have distinct ids).
    fn object(&self, run: &str, n: usize) -> String {
        let mut path = format!("bench/{run}");
        for level in (1..self.depth).rev() {
            let digit = u32::try_from(level)
                .ok()
                .and_then(|level| self.fanout.checked_pow(level))
                .map_or(0, |place| (n / place) % self.fanout);
            path.push_str(&format!("/d{digit}"));
        }
        path.push_str(&format!("/{n}"));
        path
    }
}

/// What each client's requests look like.
#[derive(Debug, Clone, Copy)]
struct Shape {
    space: usize,
    per_request: usize,
    mode: ModeArg,
    ttl: Duration,
    wait: Duration,
    tree: Tree,
}

impl Shape {
    /// `per_request` distinct random objects of the run's space, each in this request's mode.
    fn request(&self, run: &str, owner: &OwnerId) -> Result<AcquireRequest, String> {
        let mode = self.mode.pick();
        let mut picked: Vec<usize> = Vec::with_capacity(self.per_request);
        let mut rng = rand::rng();
        while picked.len() < self.per_request {
            let n = rng.random_range(0..self.space);
            if !picked.contains(&n) {
                picked.push(n);
            }
        }
        let specs = picked
            .into_iter()
            .map(|n| {
                ObjectId::new(self.tree.object(run, n))
                    .map(|object| LockSpec::new(object, mode))
                    .map_err(|e| e.to_string())
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(AcquireRequest::many(specs, owner.clone(), self.ttl).with_wait(self.wait))
    }
}

/// What one client measured.
struct Tally {
    pairs: Histogram<u64>,
    acquires: Histogram<u64>,
    releases: Histogram<u64>,
    locked: u64,
    errors: BTreeMap<&'static str, u64>,
    first_error: Option<String>,
}

impl Tally {
    fn new() -> Result<Self, String> {
        let histogram = || {
            Histogram::new_with_bounds(1, 120_000_000, 3)
                .map_err(|e| format!("cannot create a histogram: {e}"))
        };
        Ok(Self {
            pairs: histogram()?,
            acquires: histogram()?,
            releases: histogram()?,
            locked: 0,
            errors: BTreeMap::new(),
            first_error: None,
        })
    }

    fn error(&mut self, error: &LockError) {
        *self.errors.entry(error.code()).or_default() += 1;
        self.first_error.get_or_insert_with(|| error.to_string());
    }

    fn merge(&mut self, other: Tally) {
        // Histograms with equal bounds always merge.
        let _ = self.pairs.add(&other.pairs);
        let _ = self.acquires.add(&other.acquires);
        let _ = self.releases.add(&other.releases);
        self.locked += other.locked;
        for (code, n) in other.errors {
            *self.errors.entry(code).or_default() += n;
        }
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// When to stop, shared by all clients.
struct Plan {
    measuring: AtomicBool,
    stop: AtomicBool,
    /// Acquire attempts still to make in `--pairs` mode.
    budget: Option<AtomicU64>,
    done: AtomicU64,
}

impl Plan {
    /// Claims the right to start one more pair.
    fn claim(&self) -> bool {
        if self.stop.load(Ordering::Relaxed) {
            return false;
        }
        if !self.measuring.load(Ordering::Relaxed) {
            return true;
        }
        match &self.budget {
            None => true,
            Some(budget) => budget
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                    left.checked_sub(1)
                })
                .is_ok(),
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

fn is_loopback(url: &str) -> Result<bool, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    let host = parsed.host_str().unwrap_or("");
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    Ok(match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => bare.eq_ignore_ascii_case("localhost"),
    })
}

async fn client_loop(
    client: LockdClient,
    worker: usize,
    run: String,
    shape: Shape,
    plan: Arc<Plan>,
    tally: Arc<Mutex<Option<Tally>>>,
) -> Result<(), String> {
    let owner = OwnerId::new(format!("bench-{worker}")).map_err(|e| e.to_string())?;
    let mut mine = Tally::new()?;
    let mut measured_once = false;
    while plan.claim() {
        let measuring = plan.measuring.load(Ordering::Relaxed);
        if measuring && !measured_once {
            // Drop what was recorded during warm-up.
            mine = Tally::new()?;
            measured_once = true;
        }
        let request = shape.request(&run, &owner)?;
        let started = Instant::now();
        let grant = match client.acquire_with(&request).await {
            Ok(grant) => grant,
            Err(LockError::Locked { .. }) => {
                mine.locked += 1;
                continue;
            }
            Err(e) => {
                mine.error(&e);
                continue;
            }
        };
        let acquired = Instant::now();
        let locks: Vec<(ObjectId, LockToken)> = grant
            .leases
            .into_iter()
            .map(|lease| (lease.object, lease.token))
            .collect();
        let released = match locks.as_slice() {
            [(object, token)] => client.release(object, token).await.map(|_| ()),
            _ => match client.release_many(&locks).await {
                Ok(outcomes) => outcomes
                    .into_iter()
                    .find_map(Result::err)
                    .map_or(Ok(()), Err),
                Err(e) => Err(e),
            },
        };
        match released {
            Ok(()) => {
                let finished = Instant::now();
                let _ = mine.acquires.record(micros(acquired - started));
                let _ = mine.releases.record(micros(finished - acquired));
                let _ = mine.pairs.record(micros(finished - started));
                if measuring {
                    plan.done.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(e) => mine.error(&e),
        }
    }
    let mut shared = tally.lock().map_err(|_| "a client panicked".to_owned())?;
    match shared.as_mut() {
        Some(total) => total.merge(mine),
        None => *shared = Some(mine),
    }
    Ok(())
}

fn percentile(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

async fn run(args: Args) -> Result<bool, String> {
    if args.concurrency == 0 {
        return Err("--concurrency must be at least 1".into());
    }
    if !args.allow_remote && !is_loopback(&args.url)? {
        return Err(format!(
            "refusing to load {}: not a loopback address (pass --allow-remote if you mean it)",
            args.url
        ));
    }
    let space = match args.contended {
        Some(0) => return Err("--contended must be at least 1".into()),
        Some(k) => k,
        None => args.objects.max(1),
    };
    let per_request = args.objects_per_request;
    if per_request == 0 || per_request > MAX_OBJECTS_PER_REQUEST {
        return Err(format!(
            "--objects-per-request must be between 1 and {MAX_OBJECTS_PER_REQUEST}"
        ));
    }
    if per_request > space {
        return Err(format!(
            "--objects-per-request {per_request} needs at least that many objects, not {space}"
        ));
    }
    let tree = Tree::new(args.tree_depth, space)?;
    let wait = args.wait.unwrap_or(if args.contended.is_some() {
        Duration::from_secs(5)
    } else {
        Duration::ZERO
    });
    let duration = match (args.duration, args.pairs) {
        (Some(d), _) => Some(d),
        (None, None) => Some(Duration::from_secs(10)),
        (None, Some(_)) => None,
    };

    let mut config = ClientConfig::from_url(&args.url);
    config.api_key = args.api_key.clone();
    let probe = LockdClient::new(config.clone()).map_err(|e| e.to_string())?;
    probe
        .health()
        .await
        .map_err(|e| format!("lockd at {} is not ready: {e}", args.url))?;

    let run_id = format!("{:08x}", rand::rng().random::<u32>());
    let plan = Arc::new(Plan {
        measuring: AtomicBool::new(args.warmup.is_zero()),
        stop: AtomicBool::new(false),
        budget: args.pairs.map(AtomicU64::new),
        done: AtomicU64::new(0),
    });
    let tally = Arc::new(Mutex::new(None));
    let mut clients = Vec::with_capacity(args.concurrency);
    for worker in 0..args.concurrency {
        let client = LockdClient::new(config.clone()).map_err(|e| e.to_string())?;
        let shape = Shape {
            space,
            per_request,
            mode: args.mode,
            ttl: args.ttl,
            wait,
            tree,
        };
        clients.push(tokio::spawn(client_loop(
            client,
            worker,
            run_id.clone(),
            shape,
            plan.clone(),
            tally.clone(),
        )));
    }

    if !args.warmup.is_zero() {
        tokio::time::sleep(args.warmup).await;
        plan.measuring.store(true, Ordering::Relaxed);
    }
    let started = Instant::now();
    let bar = match (args.pairs, duration) {
        (Some(pairs), _) => ProgressBar::new(pairs),
        (None, Some(d)) => ProgressBar::new(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        (None, None) => ProgressBar::no_length(),
    };
    let template = if args.pairs.is_some() {
        "{bar:40} {pos}/{len} pairs {msg}"
    } else {
        "{bar:40} {elapsed}/{duration} {msg}"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let done = plan.done.load(Ordering::Relaxed);
        let elapsed = started.elapsed();
        bar.set_message(format!(
            "{:.0} pairs/s",
            done as f64 / elapsed.as_secs_f64()
        ));
        match (args.pairs, duration) {
            (Some(pairs), _) => {
                bar.set_position(done);
                if done >= pairs || clients.iter().all(|c| c.is_finished()) {
                    break;
                }
            }
            (None, Some(d)) => {
                bar.set_position(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX));
                if elapsed >= d {
                    break;
                }
            }
            (None, None) => break,
        }
    }
    plan.stop.store(true, Ordering::Relaxed);
    for client in clients {
        client
            .await
            .map_err(|e| format!("a client task failed: {e}"))??;
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();

    let total = tally
        .lock()
        .map_err(|_| "a client panicked".to_owned())?
        .take()
        .ok_or("no client reported")?;
    let pairs = total.pairs.len();
    let rate = pairs as f64 / elapsed.as_secs_f64();
    let errors: u64 = total.errors.values().sum();
    let mut mode = match args.contended {
        Some(k) => format!(
            "contended on {k} objects, wait {}",
            humantime::format_duration(wait)
        ),
        None => format!("random over {space} objects"),
    };
    mode.push_str(&format!(
        ", {} locks, {per_request} object(s) per request",
        args.mode.name()
    ));
    if tree.depth > 1 {
        mode.push_str(&format!(
            ", {} segments deep (fan-out {})",
            tree.depth, tree.fanout
        ));
    }
    if args.json {
        let summary = serde_json::json!({
            "url": args.url,
            "concurrency": args.concurrency,
            "mode": mode,
            "seconds": elapsed.as_secs_f64(),
            "pairs": pairs,
            "pairs_per_sec": rate,
            "lock_mode": args.mode.name(),
            "objects_per_request": per_request,
            "tree_depth": tree.depth,
            "locks_per_sec": rate * per_request as f64,
            "locked": total.locked,
            "errors": total.errors,
            "pair_ms": {"p50": percentile(&total.pairs, 0.5), "p99": percentile(&total.pairs, 0.99), "p999": percentile(&total.pairs, 0.999), "max": total.pairs.max() as f64 / 1000.0},
            "acquire_ms": {"p50": percentile(&total.acquires, 0.5), "p99": percentile(&total.acquires, 0.99), "p999": percentile(&total.acquires, 0.999)},
            "release_ms": {"p50": percentile(&total.releases, 0.5), "p99": percentile(&total.releases, 0.99), "p999": percentile(&total.releases, 0.999)},
        });
        println!("{summary}");
    } else {
        println!(
            "lockd-bench: {} clients against {} ({mode})",
            args.concurrency, args.url
        );
        println!(
            "  {pairs} pairs in {:.2} s = {rate:.0} pairs/s ({:.0} requests/s)",
            elapsed.as_secs_f64(),
            rate * 2.0
        );
        if per_request > 1 {
            println!(
                "  {:.0} locks/s ({per_request} objects per request)",
                rate * per_request as f64
            );
        }
        for (name, h) in [
            ("pair", &total.pairs),
            ("acquire", &total.acquires),
            ("release", &total.releases),
        ] {
            println!(
                "  {name:>7} latency ms: p50 {:.3}  p99 {:.3}  p999 {:.3}  max {:.3}",
                percentile(h, 0.5),
                percentile(h, 0.99),
                percentile(h, 0.999),
                h.max() as f64 / 1000.0
            );
        }
        println!("  acquires refused as locked: {}", total.locked);
        if errors > 0 {
            println!("  errors: {:?}", total.errors);
        }
    }
    if let Some(first) = &total.first_error {
        eprintln!("lockd-bench: {errors} requests failed; first: {first}");
    }
    Ok(errors == 0)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("lockd-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(2),
        Err(e) => {
            eprintln!("lockd-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_targets_pass_the_check() {
        assert_eq!(is_loopback("http://127.0.0.1:7070"), Ok(true));
        assert_eq!(is_loopback("http://[::1]:7070"), Ok(true));
        assert_eq!(is_loopback("http://localhost:7070"), Ok(true));
        assert_eq!(is_loopback("http://10.1.2.3:7070"), Ok(false));
        assert_eq!(is_loopback("https://locks.example"), Ok(false));
        assert!(is_loopback("not a url").is_err());
    }

    #[test]
    fn a_pair_budget_is_shared_exactly() {
        let plan = Plan {
            measuring: AtomicBool::new(true),
            stop: AtomicBool::new(false),
            budget: Some(AtomicU64::new(3)),
            done: AtomicU64::new(0),
        };
        assert!(plan.claim() && plan.claim() && plan.claim());
        assert!(!plan.claim());
    }

    #[test]
    fn arguments_parse() {
        let args = Args::try_parse_from([
            "lockd-bench",
            "-c",
            "8",
            "--contended",
            "2",
            "--pairs",
            "100",
            "--ttl",
            "5s",
        ])
        .unwrap();
        assert_eq!(args.concurrency, 8);
        assert_eq!(args.contended, Some(2));
        assert_eq!(args.pairs, Some(100));
        assert_eq!(args.ttl, Duration::from_secs(5));
        assert!(Args::try_parse_from(["lockd-bench", "--pairs", "1", "--duration", "1s"]).is_err());
        assert_eq!(args.mode, ModeArg::Exclusive);
        assert_eq!(args.objects_per_request, 1);
        let args = Args::try_parse_from([
            "lockd-bench",
            "--mode",
            "mixed",
            "--objects-per-request",
            "3",
        ])
        .unwrap();
        assert_eq!((args.mode, args.objects_per_request), (ModeArg::Mixed, 3));
        assert_eq!(args.tree_depth, 1);
        let args = Args::try_parse_from(["lockd-bench", "--tree-depth", "4"]).unwrap();
        assert_eq!(args.tree_depth, 4);
        assert!(Args::try_parse_from(["lockd-bench", "--mode", "read"]).is_err());
    }

    /// Each request names distinct objects of the run, all in one mode.
    #[test]
    fn requests_name_distinct_objects_in_one_mode() {
        let owner = OwnerId::new("o").unwrap();
        for mode in [ModeArg::Exclusive, ModeArg::Shared, ModeArg::Mixed] {
            let shape = Shape {
                space: 5,
                per_request: 5,
                mode,
                ttl: Duration::from_secs(1),
                wait: Duration::ZERO,
                tree: Tree::new(1, 5).unwrap(),
            };
            let request = shape.request("run", &owner).unwrap();
            assert_eq!(request.objects.len(), 5);
            assert!(request.check(&lockcore::Limits::default()).is_ok());
            let first = request.objects[0].mode;
            assert!(request.objects.iter().all(|spec| spec.mode == first));
            if mode == ModeArg::Shared {
                assert_eq!(first, LockMode::Shared);
            }
        }
    }

    /// A tree `D` deep names every object with `D` segments below `bench/RUN`, distinct objects
    /// distinctly, and shares them evenly among the directories above the leaves.
    #[test]
    fn trees_spread_objects_evenly_at_their_depth() {
        let flat = Tree::new(1, 100_000).unwrap();
        assert_eq!(flat.object("run", 42), "bench/run/42");

        let tree = Tree::new(3, 1000).unwrap();
        assert_eq!(tree.fanout, 10);
        assert_eq!(tree.object("run", 123), "bench/run/d1/d2/123");
        assert_eq!(tree.object("run", 7), "bench/run/d0/d0/7");

        for (depth, space) in [(2, 5), (4, 100_000), (MAX_TREE_DEPTH, 100_000)] {
            let tree = Tree::new(depth, space).unwrap();
            let names: std::collections::HashSet<String> =
                (0..space.min(5000)).map(|n| tree.object("r", n)).collect();
            assert_eq!(names.len(), space.min(5000));
            let mut leaves_per_dir = std::collections::HashMap::<String, usize>::new();
            for name in &names {
                let id = ObjectId::new(name).expect("a valid id");
                assert_eq!(id.as_str().split('/').count(), 2 + depth, "{name}");
                let dir = name.rsplit_once('/').map(|(dir, _)| dir.to_owned());
                *leaves_per_dir.entry(dir.unwrap_or_default()).or_default() += 1;
            }
            assert!(
                leaves_per_dir.values().all(|n| *n <= tree.fanout),
                "{depth}: {leaves_per_dir:?}"
            );
        }
        assert!(Tree::new(0, 10).is_err());
        assert!(Tree::new(MAX_TREE_DEPTH + 1, 10).is_err());
    }
}
