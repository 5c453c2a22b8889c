//! Acquire+release pairs per second, side by side, in one run:
//!
//! 1. `lockd`: [`PostgresLockService::acquire`] + [`LockService::release`] through the backend
//!    (tokens minted and sealed, every check done), one distinct object per task;
//! 2. `pgbench same SQL`: pgbench sending exactly the two statements the backend sends
//!    (`lockd_acquire` then `lockd_release`, prepared), one object per client;
//! 3. `pgbench advisory`: pgbench running `pg_try_advisory_lock` + `pg_advisory_unlock`;
//! 4. `sqlx advisory`: the same advisory pair from Rust, one dedicated connection per task.
//!
//! Each is run for `--seconds` at each concurrency, the whole set `--rounds` times interleaved,
//! and the median is reported as a Markdown table. `--lockd-only` runs just the backend (for
//! profiling).
//!
//! ```text
//! cargo run --release -p backend-postgres --example pg_bench -- \
//!     --url postgres://postgres@127.0.0.1:5432/test --seconds 10 --rounds 3 --concurrency 1,16
//! ```

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backend_postgres::{PostgresConfig, PostgresLockService, PostgresStore};
use lockcore::{LockService, ObjectId, OwnerId, TokenIssuer};
use sqlx::Connection as _;

const SCHEMA: &str = "lockd_bench";

struct Args {
    url: String,
    seconds: u64,
    rounds: usize,
    concurrency: Vec<usize>,
    pgbench: PathBuf,
    /// Run only the backend (for profiling it).
    lockd_only: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        url: std::env::var("LOCKD_BENCH_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned()),
        seconds: 10,
        rounds: 3,
        concurrency: vec![1, 16],
        pgbench: find_pgbench(),
        lockd_only: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--lockd-only" {
            args.lockd_only = true;
            continue;
        }
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--url" => args.url = value,
            "--seconds" => args.seconds = value.parse().map_err(|e| format!("--seconds: {e}"))?,
            "--rounds" => args.rounds = value.parse().map_err(|e| format!("--rounds: {e}"))?,
            "--concurrency" => {
                args.concurrency = value
                    .split(',')
                    .map(|c| {
                        c.trim()
                            .parse::<usize>()
                            .map_err(|e| format!("--concurrency: {e}"))
                    })
                    .collect::<Result<_, _>>()?
            }
            "--pgbench" => args.pgbench = PathBuf::from(value),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if args.concurrency.contains(&0) || args.rounds == 0 || args.seconds == 0 {
        return Err("concurrency, rounds and seconds must be positive".to_owned());
    }
    Ok(args)
}

fn find_pgbench() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dirs| {
            dirs.filter_map(|d| d.ok())
                .map(|d| d.path().join("bin").join("pgbench"))
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found.pop().unwrap_or_else(|| PathBuf::from("pgbench"))
}

/// Acquire+release pairs per second through the backend with `tasks` concurrent tasks.
async fn bench_lockd(service: &Arc<PostgresLockService>, tasks: usize, run_for: Duration) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let pairs = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for task in 0..tasks {
        let (service, stop, pairs) = (service.clone(), stop.clone(), pairs.clone());
        handles.push(tokio::spawn(async move {
            let object = ObjectId::new(format!("lockd-{task}")).expect("valid object");
            let owner = OwnerId::new("bench").expect("valid owner");
            while !stop.load(Ordering::Relaxed) {
                let lease = service
                    .acquire(&object, &owner, Duration::from_secs(30), Duration::ZERO)
                    .await
                    .expect("uncontended acquire");
                service
                    .release(&object, &lease.token)
                    .await
                    .expect("release");
                pairs.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(run_for).await;
    stop.store(true, Ordering::Relaxed);
    for handle in handles {
        handle.await.expect("bench task");
    }
    pairs.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

/// Advisory lock pairs per second from Rust (sqlx), one connection per task.
async fn bench_sqlx_advisory(url: &str, tasks: usize, run_for: Duration) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let pairs = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for task in 0..tasks {
        let (stop, pairs) = (stop.clone(), pairs.clone());
        let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
        handles.push(tokio::spawn(async move {
            let key = 900_000 + task as i64;
            while !stop.load(Ordering::Relaxed) {
                let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                    .bind(key)
                    .fetch_one(&mut conn)
                    .await
                    .expect("advisory lock");
                assert!(got, "uncontended advisory lock refused");
                let _: bool = sqlx::query_scalar("SELECT pg_advisory_unlock($1)")
                    .bind(key)
                    .fetch_one(&mut conn)
                    .await
                    .expect("advisory unlock");
                pairs.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(run_for).await;
    stop.store(true, Ordering::Relaxed);
    for handle in handles {
        handle.await.expect("bench task");
    }
    pairs.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

/// The pgbench script sending exactly the backend's two statements for one pair.
fn same_sql_script(dir: &std::path::Path) -> PathBuf {
    // The backend's statements (src/sql.rs) with pgbench variables as their parameters. Each
    // client locks its own object, named by its client id ("0", "1", ...); the token digest is
    // a fixed 32-byte value; the fence returned by the acquire goes into the release.
    let script = "SELECT r_kind, r_ticket, r_index, r_object, r_fence, r_mode, r_holder, \
                         r_remaining_us, r_replayed \
                  FROM lockd_acquire(:owner, ARRAY[:client_id::text], '{exclusive}', \
                                     '{object}', ARRAY[:digest::bytea], :ttl, 0, false, NULL, \
                                     0) \\gset\n\
                  SELECT r_index, r_status FROM lockd_release(ARRAY[:client_id::text], \
                                     ARRAY[:digest::bytea], ARRAY[:r_fence::bigint]);\n";
    let path = dir.join("lockd_same_sql.pgbench");
    std::fs::write(&path, script).expect("write pgbench script");
    path
}

fn advisory_script(dir: &std::path::Path) -> PathBuf {
    let script = "SELECT pg_try_advisory_lock(800000 + :client_id);\n\
                  SELECT pg_advisory_unlock(800000 + :client_id);\n";
    let path = dir.join("advisory.pgbench");
    std::fs::write(&path, script).expect("write pgbench script");
    path
}

/// Runs pgbench and returns its transactions (= pairs) per second.
fn run_pgbench(args: &Args, script: &std::path::Path, clients: usize, same_sql: bool) -> f64 {
    let threads = clients.min(2);
    let mut command = Command::new(&args.pgbench);
    command
        .args(["-n", "-M", "prepared", "-f"])
        .arg(script)
        .args(["-c", &clients.to_string(), "-j", &threads.to_string()])
        .args(["-T", &args.seconds.to_string()])
        .env("PGOPTIONS", format!("-c search_path={SCHEMA}"));
    if same_sql {
        command.args([
            "-D",
            "owner=bench",
            "-D",
            "ttl=30000",
            "-D",
            &format!("digest=\\x{}", "ab".repeat(32)),
        ]);
    }
    command.arg(&args.url);
    let output = command.output().expect("run pgbench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        panic!(
            "pgbench failed: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    stdout
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no tps in pgbench output: {stdout}"))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn print_table(concurrency: &[usize], results: &[Vec<Vec<f64>>]) {
    println!(
        "| concurrency | lockd backend (pairs/s) | pgbench, same SQL | lockd / pgbench (median of per-round ratios) | pgbench advisory | sqlx advisory |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for (ci, &c) in concurrency.iter().enumerate() {
        let m: Vec<f64> = results[ci].iter().map(|v| median(v.clone())).collect();
        println!(
            "| {c} | {:.0} | {:.0} | {:.2}x | {:.0} | {:.0} |",
            m[0], m[1], m[4], m[2], m[3]
        );
    }
}

#[tokio::main]
async fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("pg_bench: {e}");
            std::process::exit(2);
        }
    };
    // A fresh schema for the benchmark.
    let mut admin = sqlx::PgConnection::connect(&args.url)
        .await
        .expect("connect");
    sqlx::raw_sql(&format!("DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))
        .execute(&mut admin)
        .await
        .expect("drop old bench schema");
    let mut config = PostgresConfig::from_url(&args.url);
    config.schema = SCHEMA.to_owned();
    config.max_connections =
        u32::try_from(*args.concurrency.iter().max().unwrap_or(&1)).unwrap_or(16);
    config.reap_interval = Duration::ZERO;
    config.application_name = "lockd_bench".to_owned();
    let store = PostgresStore::connect(config)
        .await
        .expect("connect the backend");
    let service = Arc::new(PostgresLockService::new(store, TokenIssuer::random()));
    let dir = std::env::temp_dir().join(format!("lockd-pg-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("script dir");
    let same_sql = same_sql_script(&dir);
    let advisory = advisory_script(&dir);
    let run_for = Duration::from_secs(args.seconds);

    let settings: Vec<String> = sqlx::query_scalar(
        "SELECT name || '=' || setting FROM pg_settings \
         WHERE name IN ('fsync', 'synchronous_commit', 'server_version') ORDER BY name",
    )
    .fetch_all(&mut admin)
    .await
    .unwrap_or_default();
    eprintln!("server: {}", settings.join(", "));

    // Per concurrency: lockd, pgbench same SQL, pgbench advisory, sqlx advisory, and the
    // per-round ratio lockd / pgbench-same-SQL (paired, so slow drifts of the disk's fsync
    // latency affect both sides of a ratio alike).
    let mut results = vec![vec![Vec::new(); 5]; args.concurrency.len()];
    for round in 0..args.rounds {
        for (ci, &c) in args.concurrency.iter().enumerate() {
            // Warm the backend's connections and prepared statements.
            bench_lockd(&service, c, Duration::from_millis(300)).await;
            // Alternate which of the pair runs first, so drift does not favour one.
            if args.lockd_only {
                let lockd = bench_lockd(&service, c, run_for).await;
                eprintln!("round {round} c={c}: lockd {lockd:.0}/s");
                continue;
            }
            let (lockd, pgbench_same) = if round % 2 == 0 {
                let lockd = bench_lockd(&service, c, run_for).await;
                (lockd, run_pgbench(&args, &same_sql, c, true))
            } else {
                let pgbench_same = run_pgbench(&args, &same_sql, c, true);
                (bench_lockd(&service, c, run_for).await, pgbench_same)
            };
            let pgbench_adv = run_pgbench(&args, &advisory, c, false);
            let sqlx_adv = bench_sqlx_advisory(&args.url, c, run_for).await;
            let ratio = lockd / pgbench_same;
            eprintln!(
                "round {round} c={c}: lockd {lockd:.0}/s, pgbench same SQL {pgbench_same:.0}/s \
                 (ratio {ratio:.2}), pgbench advisory {pgbench_adv:.0}/s, \
                 sqlx advisory {sqlx_adv:.0}/s"
            );
            for (k, v) in [lockd, pgbench_same, pgbench_adv, sqlx_adv, ratio]
                .into_iter()
                .enumerate()
            {
                results[ci][k].push(v);
            }
        }
    }

    if !args.lockd_only {
        print_table(&args.concurrency, &results);
    }
    let _ = std::fs::remove_dir_all(&dir);
    drop(service);
    let _ = sqlx::raw_sql(&format!("DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))
        .execute(&mut admin)
        .await;
}
