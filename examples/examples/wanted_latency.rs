//! How fast a holder hears that someone wants its lock: the latency of `wanted` notices.
//!
//! Each round, a holder takes a lock, a waiter asks for it with a blocking acquire, and the
//! holder, which follows its own notices on a filtered event stream
//! (`GET /v1/events/stream?owner=holder&kind=wanted`), measures the time from the waiter's
//! request to the notice's arrival. It then releases, the waiter gets in and lets go. Prints
//! p50, p99 and the maximum over the rounds; the target is a p99 under 50 ms on memory://.
//!
//! Against a lockd started in this process, on memory:// (the default):
//!
//! ```sh
//! cargo run --release -p lockd-examples --example wanted_latency
//! ```
//!
//! Against a running lockd, for 1000 rounds:
//!
//! ```sh
//! cargo run --release -p lockd-examples --example wanted_latency -- --url http://127.0.0.1:7070 --rounds 1000
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use lockcore::{LockError, LockService, ObjectId, OwnerId};
use lockd_client::{ClientConfig, EventFilter, EventKind, EventSource, LockdClient};

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

/// Starts lockd on memory:// in this process, on a free loopback port; returns its URL.
async fn start_lockd() -> Result<String, String> {
    let mut config = lockd::ServerConfig::default();
    config.listen = "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?;
    let server = lockd::Server::bind(config)
        .await
        .map_err(|e| e.to_string())?;
    let url = server.url();
    tokio::spawn(server.run_until(std::future::pending::<()>()));
    Ok(url)
}

/// The `q`-quantile of sorted `samples` (nearest rank).
fn quantile(samples: &[Duration], q: f64) -> Duration {
    let rank = ((samples.len() as f64) * q).ceil() as usize;
    samples[rank.clamp(1, samples.len()) - 1]
}

async fn run(args: Args) -> Result<bool, LockError> {
    let url = match args.url {
        Some(url) => url,
        None => start_lockd().await.map_err(LockError::Internal)?,
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
