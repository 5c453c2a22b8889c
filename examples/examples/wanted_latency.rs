//! How fast a holder hears that someone wants its lock: the latency of `wanted` notices.
//!
//! Each round, a holder takes a lock, a waiter asks for it with a blocking acquire, and the
//! holder, which follows its own notices on a filtered event stream
//! (`GET /v1/events/stream?owner=holder&kind=wanted`), measures the time from the waiter's
//! request to the notice's arrival. It then releases, the waiter gets in and lets go. Prints
//! p50, p99 and the maximum over the rounds; the target is a p99 under 50 ms on memory://.
//!
//! Against a lockd it starts itself on memory:// (the default): the `lockd` binary of the same
//! target directory (or `$LOCKD_BIN`), run as `lockd serve --listen 127.0.0.1:0`, stopped at the
//! end. This crate depends on lockd like an embedder, without the server, so build the binary
//! first:
//!
//! ```sh
//! cargo build --release -p lockd
//! cargo run --release -p lockd-examples --example wanted_latency
//! ```
//!
//! Against a running lockd, for 1000 rounds:
//!
//! ```sh
//! cargo run --release -p lockd-examples --example wanted_latency -- --url http://127.0.0.1:7070 --rounds 1000
//! ```

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lockcore::{LockError, LockService, ObjectId, OwnerId};
use lockd_client::{ClientConfig, EventFilter, EventKind, EventSource, LockdClient};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Rounds by default.
const ROUNDS: usize = 500;
/// The target p99.
const TARGET_P99: Duration = Duration::from_millis(50);
/// Lease length of both parties (released long before).
const TTL: Duration = Duration::from_secs(30);
/// Longest the waiter waits (it is let in as soon as the holder hears of it).
const WAIT: Duration = Duration::from_secs(10);

struct Args {
    url: Option<String>,
    rounds: usize,
}

fn args() -> Result<Args, String> {
    let mut parsed = Args {
        url: None,
        rounds: ROUNDS,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--url" => parsed.url = Some(args.next().ok_or("--url needs a URL")?),
            "--rounds" => {
                let rounds = args.next().ok_or("--rounds needs a number")?;
                parsed.rounds = rounds
                    .parse()
                    .map_err(|_| format!("--rounds `{rounds}` is not a number"))?;
                if parsed.rounds == 0 {
                    return Err("--rounds must be at least 1".into());
                }
            }
            other => {
                return Err(format!(
                    "unknown argument `{other}`; usage: wanted_latency [--url URL] [--rounds N]"
                ))
            }
        }
    }
    Ok(parsed)
}

/// The `lockd` binary: `$LOCKD_BIN`, or `lockd` in the target directory this example runs from
/// (`target/release/examples/wanted_latency` -> `target/release/lockd`).
fn lockd_binary() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("LOCKD_BIN") {
        return Ok(PathBuf::from(path));
    }
    let me = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    let binary = me
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("lockd"))
        .filter(|path| path.exists())
        .ok_or_else(|| {
            "no lockd binary beside this example: build it (cargo build --release -p lockd), set \
             LOCKD_BIN, or pass --url"
                .to_owned()
        })?;
    Ok(binary)
}

/// Starts `lockd serve` on memory:// on a free loopback port; returns the process (killed when
/// dropped) and its URL.
async fn start_lockd() -> Result<(Child, String), String> {
    let binary = lockd_binary()?;
    let mut child = Command::new(&binary)
        .args(["serve", "--listen", "127.0.0.1:0", "--grpc-listen", "off"])
        .args(["--backend", "memory://", "--log", "warn"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
    let stdout = child.stdout.take().ok_or("lockd's stdout is not piped")?;
    let mut lines = BufReader::new(stdout).lines();
    let first = lines
        .next_line()
        .await
        .map_err(|e| format!("cannot read lockd's stdout: {e}"))?
        .ok_or("lockd exited before listening")?;
    let url = first
        .strip_prefix("lockd listening on ")
        .ok_or_else(|| format!("unexpected first line from lockd: {first:?}"))?
        .to_owned();
    // Anything lockd prints later is read and dropped, so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, url))
}

/// The `q`-quantile of sorted `samples` (nearest rank).
fn quantile(samples: &[Duration], q: f64) -> Duration {
    let rank = ((samples.len() as f64) * q).ceil() as usize;
    samples[rank.clamp(1, samples.len()) - 1]
}

async fn run(args: Args) -> Result<bool, LockError> {
    // Kept until the end: dropping it stops the lockd this program started.
    let (_started, url) = match args.url {
        Some(url) => (None, url),
        None => {
            let (child, url) = start_lockd().await.map_err(LockError::Internal)?;
            (Some(child), url)
        }
    };
    let client = LockdClient::new(ClientConfig::from_url(&url))?;
    let holder_client = client.clone();
    let waiter_client: Arc<dyn LockService> = Arc::new(client.clone());
    let run_id = std::process::id();
    let holder = OwnerId::new(format!("holder-{run_id}"))?;
    let waiter = OwnerId::new(format!("waiter-{run_id}"))?;
    // The holder follows its own notices only, from now on.
    let filter = EventFilter::default()
        .owner(holder.as_str())
        .kind(EventKind::Wanted);
    let mut notices = holder_client.follow(None, &filter).await?;
    println!("wanted_latency: {} rounds against {url}", args.rounds);

    let mut latencies = Vec::with_capacity(args.rounds);
    for round in 0..args.rounds {
        let object = ObjectId::new(format!("/bench/wanted/{run_id}/{round}"))?;
        let held = holder_client
            .acquire(&object, &holder, TTL, Duration::ZERO)
            .await?;
        let asked = Instant::now();
        let waiting = {
            let (service, object, waiter) = (waiter_client.clone(), object.clone(), waiter.clone());
            tokio::spawn(async move { service.acquire(&object, &waiter, TTL, WAIT).await })
        };
        let heard = loop {
            let event = notices
                .next()
                .await
                .ok_or_else(|| LockError::unavailable("http", "the event stream ended"))??;
            if event.object == object.as_str() && event.fence == Some(held.fence.get()) {
                break asked.elapsed();
            }
        };
        latencies.push(heard);
        holder_client.release(&object, &held.token).await?;
        let granted = waiting
            .await
            .map_err(|e| LockError::Internal(format!("waiter task: {e}")))??;
        waiter_client.release(&object, &granted.token).await?;
    }

    latencies.sort_unstable();
    let (p50, p99, max) = (
        quantile(&latencies, 0.50),
        quantile(&latencies, 0.99),
        quantile(&latencies, 1.0),
    );
    println!(
        "request -> wanted notice: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (target p99 < {} ms)",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3,
        TARGET_P99.as_millis()
    );
    Ok(p99 < TARGET_P99)
}

#[tokio::main]
async fn main() {
    let args = match args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("wanted_latency: {e}");
            std::process::exit(2);
        }
    };
    match run(args).await {
        Ok(true) => {}
        Ok(false) => {
            eprintln!("wanted_latency: p99 above the target");
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("wanted_latency: {e}");
            std::process::exit(1);
        }
    }
}
