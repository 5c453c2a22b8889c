//! Histories checked for linearizability under faults (issue 10, section 5).
//!
//! Twelve clients work on three objects with short TTLs (300-800 ms): acquire (some blocking),
//! renew, validate, release, and writes carrying their fence to a simulated storage node. They
//! go through the real `lockd` binary: one process on `memory://` (with and without
//! `--data-dir`), three processes sharing a PRIVATE `redis-server`, three sharing a PRIVATE
//! PostgreSQL cluster. Meanwhile faults are injected, each bounded in time, on loopback only:
//! SIGSTOP/SIGCONT and SIGKILL (then a restart) of a lockd process, Redis `CLIENT PAUSE`,
//! `FLUSHALL` and a restart, PostgreSQL `pg_terminate_backend` and `pg_ctl restart -m
//! immediate`. The recorded history is then judged by `history_check::check`: no violation may
//! be found. Per scenario the operations, violations and recovery times are printed
//! (`--nocapture`); RELIABILITY.md reports them.
//!
//! The shared Redis and PostgreSQL are never touched. Without `redis-server` or the PostgreSQL
//! server binaries a scenario skips loudly (a failure under `LOCKD_REQUIRE_BACKENDS=1`).
//!
//! Three self-tests run the same clients against in-process services with one bug each (a split
//! brain, a validate that ignores expiry, fences that run backwards) and assert that the checker
//! reports it, so a run with zero violations means something.
//!
//! `LOCKD_HISTORY_SEED=N` fixes the clients' random choices (timing still varies).

#![allow(clippy::unwrap_used, clippy::expect_used)] // Setup failures should fail the test loudly.

mod support;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use history_check::{check, CheckConfig, History, LeaseId, OpKind, Outcome, Recorder, StorageNode};
use lockcore::{
    AcquireRequest, Lease, LockError, LockResult, LockService, ObjectId, OwnerId, RequestId,
};
use lockd_client::{ClientConfig, LockdClient};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use support::Lockd;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Concurrent clients per scenario.
const CLIENTS: usize = 12;
/// Objects they share.
const OBJECTS: usize = 3;
/// Shortest and longest TTL asked for, in milliseconds.
const TTL_MS: (u64, u64) = (300, 800);
/// How long a client waits for one answer (plus any blocking `wait`).
const REQUEST_TIMEOUT: Duration = Duration::from_millis(1000);
/// The share of holds that let the lease expire without a release.
const EXPIRE_SHARE: f64 = 0.05;
/// The share of holds that end as zombies: they outlive their lease, then write, validate and
/// release anyway.
const ZOMBIE_SHARE: f64 = 0.10;
/// Load that keeps running after the last fault, so every fault's recovery is seen.
const TAIL: Duration = Duration::from_millis(3000);
/// How late an operation of unknown outcome may still take effect: a request queued in a
/// stopped lockd, a command queued in a paused Redis, a statement within PostgreSQL's timeout.
const UNKNOWN_EFFECT_HORIZON: Duration = Duration::from_secs(10);
/// Shared by the lockd processes of one backend, so they accept each other's tokens.
const SECRET: &str = "history-check-secret-0123456789abcdef";

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

/// The one place acquire is called: with a fresh request id, as every real client sends one.
async fn acquire(
    service: &dyn LockService,
    object: &ObjectId,
    owner: &OwnerId,
    ttl: Duration,
    wait: Duration,
) -> LockResult<Lease> {
    let request = AcquireRequest::new(object.clone(), owner.clone(), ttl)
        .with_wait(wait)
        .with_request_id(RequestId::random());
    Ok(service.acquire_with(&request).await?.into_first())
}

/// Bounds any call even if the client's own deadline failed: an endless call is unknown.
async fn bounded<T>(
    limit: Duration,
    call: impl std::future::Future<Output = LockResult<T>>,
) -> LockResult<T> {
    tokio::time::timeout(limit + ms(1000), call)
        .await
        .unwrap_or_else(|_| Err(LockError::unavailable("http", "client-side deadline")))
}

// ---- The lockd processes ----------------------------------------------------------------

/// The lockd processes of one scenario, and the clients' view of them: a restarted process
/// listens on a new port and replaces its slot.
struct Fleet {
    args: Vec<String>,
    processes: Vec<Option<Lockd>>,
    services: Arc<RwLock<Vec<Arc<dyn LockService>>>>,
}

fn client_for(url: &str) -> Arc<dyn LockService> {
    let config = ClientConfig::from_url(url)
        .with_request_timeout(REQUEST_TIMEOUT)
        .with_connect_timeout(ms(300));
    Arc::new(LockdClient::new(config).expect("client config"))
}

async fn start_lockd(args: &[String]) -> Lockd {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Lockd::start_with_env(
        &args,
        &[("LOCKD_TOKEN_SECRET", SECRET), ("LOCKD_LOG", "warn")],
    )
    .await
}

impl Fleet {
    /// Starts `count` lockd processes with `args`, one after another (so that migrations
    /// never race).
    async fn start(count: usize, args: Vec<String>) -> Self {
        let mut processes = Vec::new();
        let mut services = Vec::new();
        for _ in 0..count {
            let lockd = start_lockd(&args).await;
            services.push(client_for(&lockd.url));
            processes.push(Some(lockd));
        }
        Self {
            args,
            processes,
            services: Arc::new(RwLock::new(services)),
        }
    }

    fn signal(&self, index: usize, signal: nix::sys::signal::Signal) {
        let lockd = self.processes[index].as_ref().expect("running");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(lockd.pid()), signal)
            .expect("signal lockd");
    }

    async fn kill(&mut self, index: usize) {
        if let Some(lockd) = self.processes[index].take() {
            lockd.kill().await;
        }
    }

    async fn restart(&mut self, index: usize) {
        let lockd = start_lockd(&self.args).await;
        self.services.write().expect("services")[index] = client_for(&lockd.url);
        self.processes[index] = Some(lockd);
    }

    async fn stop_all(&mut self) {
        for index in 0..self.processes.len() {
            self.kill(index).await;
        }
    }
}

// ---- Private backends -------------------------------------------------------------------

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free loopback port")
}

/// A `redis-server` this test started on a free loopback port, keeping nothing on disk;
/// killed by its PID when dropped. Never the shared one.
struct PrivateRedis {
    port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    async fn start() -> Option<Self> {
        let mut redis = Self {
            port: free_port(),
            child: None,
        };
        match redis.restart().await {
            Ok(()) => Some(redis),
            Err(why) => {
                conformance_tests::skip_or_fail("redis", &why);
                None
            }
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn restart(&mut self) -> Result<(), String> {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run redis-server for a private instance: {e}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.command("PING").await.is_ok_and(|r| r == "+PONG") {
                return Ok(());
            }
            tokio::time::sleep(ms(20)).await;
        }
        Err(format!("redis-server on port {} did not answer", self.port))
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends one inline command and returns the first line of the reply.
    async fn command(&self, command: &str) -> std::io::Result<String> {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await?;
        stream
            .write_all(format!("{command}\r\n").as_bytes())
            .await?;
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).await?;
        Ok(line.trim_end().to_owned())
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A throw-away PostgreSQL cluster (initdb + pg_ctl on a free loopback port), run as the
/// `postgres` user when root; stopped and deleted on drop. Never the shared one.
struct PrivatePostgres {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    run_as: Option<&'static str>,
}

impl PrivatePostgres {
    fn start() -> Option<Self> {
        let Some(bin) = postgres_bin_dir() else {
            conformance_tests::skip_or_fail(
                "postgres",
                "no initdb/pg_ctl found for a private cluster",
            );
            return None;
        };
        let run_as = is_root().then_some("postgres");
        let tag: u64 = rand::rng().random();
        let dir = std::env::temp_dir().join(format!("lockd-history-pg-{tag:x}"));
        std::fs::create_dir_all(&dir).expect("cluster dir");
        if run_as.is_some() {
            let status = Command::new("chown")
                .args(["postgres:postgres", &dir.to_string_lossy()])
                .status()
                .expect("chown");
            assert!(status.success(), "chown of the cluster dir failed");
        }
        let cluster = Self {
            bin,
            dir,
            port: free_port(),
            run_as,
        };
        let data = cluster.data();
        cluster.run(
            "initdb",
            &["-D", &data, "-A", "trust", "-U", "postgres", "--no-sync"],
        );
        let settings = format!(
            "\nlisten_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\nfsync = off\n",
            cluster.port,
            cluster.dir.display()
        );
        let conf = cluster.dir.join("data").join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).expect("postgresql.conf");
        text.push_str(&settings);
        std::fs::write(&conf, text).expect("postgresql.conf written");
        cluster.pg_ctl(&["start", "-w", "-l", &cluster.log()]);
        Some(cluster)
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    fn log(&self) -> String {
        self.dir.join("log").display().to_string()
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn pg_ctl(&self, args: &[&str]) {
        let data = self.data();
        let mut all = vec!["-D", data.as_str()];
        all.extend_from_slice(args);
        self.run("pg_ctl", &all);
    }

    /// Runs SQL through `psql` over loopback and returns its output.
    fn sql(&self, sql: &str) -> String {
        let psql = if self.bin.join("psql").is_file() {
            self.bin.join("psql")
        } else {
            PathBuf::from("psql")
        };
        let output = Command::new(psql)
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres", "-d", "postgres", "-Atc", sql])
            .output()
            .expect("run psql");
        assert!(
            output.status.success(),
            "psql failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn run(&self, program: &str, args: &[&str]) {
        let program = self.bin.join(program);
        let output = match self.run_as {
            Some(user) => Command::new("runuser")
                .args(["-u", user, "--"])
                .arg(&program)
                .args(args)
                .output(),
            None => Command::new(&program).args(args).output(),
        }
        .expect("run a PostgreSQL tool");
        assert!(
            output.status.success(),
            "{} {args:?} failed: {}{}",
            program.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let data = self.data();
        let program = self.bin.join("pg_ctl");
        let args = ["-D", data.as_str(), "stop", "-m", "immediate"];
        let _ = match self.run_as {
            Some(user) => Command::new("runuser")
                .args(["-u", user, "--"])
                .arg(&program)
                .args(args)
                .output(),
            None => Command::new(&program).args(args).output(),
        };
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn postgres_bin_dir() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dirs| {
            dirs.filter_map(|d| d.ok())
                .map(|d| d.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    candidates.sort();
    candidates
        .into_iter()
        .rev()
        .find(|bin| has(bin, "initdb") && has(bin, "pg_ctl"))
}

fn has(bin: &Path, program: &str) -> bool {
    bin.join(program).is_file()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// The backend behind a fleet, for the faults that act on it.
enum Backend {
    Memory,
    Redis(PrivateRedis),
    Postgres(PrivatePostgres),
}

// ---- Faults -----------------------------------------------------------------------------

/// One step of a fault plan.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// Let the load run.
    Run(u64),
    /// SIGSTOP lockd `index`, SIGCONT it after the given milliseconds.
    StopLockd(usize, u64),
    /// SIGKILL lockd `index`, restart it after the given milliseconds (on the same data dir,
    /// if any). `true`: the restart loses every lock (memory without a data dir).
    KillLockd(usize, u64, bool),
    /// Redis `CLIENT PAUSE` of every command for the given milliseconds.
    RedisPause(u64),
    /// Redis `FLUSHALL`: every lock is lost.
    RedisFlushAll,
    /// Kill `redis-server` (no persistence: every lock is lost), restart it after the given
    /// milliseconds on the same port.
    RedisRestart(u64),
    /// `pg_terminate_backend` of every lockd connection.
    PostgresTerminate,
    /// `pg_ctl restart -m immediate` (crash and recovery; the locks are durable).
    PostgresRestart,
}

/// Carries out `step` and records it as a fault (except `Run`).
async fn inject(step: Step, fleet: &mut Fleet, backend: &mut Backend, recorder: &Recorder) {
    use nix::sys::signal::Signal;
    let started = recorder.now();
    let (name, loses_data) = match step {
        Step::Run(millis) => {
            tokio::time::sleep(ms(millis)).await;
            return;
        }
        Step::StopLockd(index, millis) => {
            fleet.signal(index, Signal::SIGSTOP);
            tokio::time::sleep(ms(millis)).await;
            fleet.signal(index, Signal::SIGCONT);
            (format!("SIGSTOP lockd {index} for {millis} ms"), false)
        }
        Step::KillLockd(index, millis, loses_data) => {
            fleet.kill(index).await;
            tokio::time::sleep(ms(millis)).await;
            fleet.restart(index).await;
            (
                format!("SIGKILL lockd {index}, restart after {millis} ms"),
                loses_data,
            )
        }
        Step::RedisPause(millis) => {
            let Backend::Redis(redis) = backend else {
                panic!("{step:?} needs Redis")
            };
            let reply = redis
                .command(&format!("CLIENT PAUSE {millis} ALL"))
                .await
                .expect("CLIENT PAUSE");
            assert_eq!(reply, "+OK");
            tokio::time::sleep(ms(millis)).await;
            (format!("Redis CLIENT PAUSE {millis} ms"), false)
        }
        Step::RedisFlushAll => {
            let Backend::Redis(redis) = backend else {
                panic!("{step:?} needs Redis")
            };
            let reply = redis.command("FLUSHALL").await.expect("FLUSHALL");
            assert_eq!(reply, "+OK");
            ("Redis FLUSHALL".to_owned(), true)
        }
        Step::RedisRestart(millis) => {
            let Backend::Redis(redis) = backend else {
                panic!("{step:?} needs Redis")
            };
            redis.kill();
            tokio::time::sleep(ms(millis)).await;
            redis.restart().await.expect("redis-server starts again");
            (format!("Redis restart ({millis} ms down)"), true)
        }
        Step::PostgresTerminate => {
            let Backend::Postgres(pg) = backend else {
                panic!("{step:?} needs PostgreSQL")
            };
            let killed = pg.sql(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE application_name = 'lockd'",
            );
            (
                format!(
                    "PostgreSQL pg_terminate_backend ({} connections)",
                    killed.trim()
                ),
                false,
            )
        }
        Step::PostgresRestart => {
            let Backend::Postgres(pg) = backend else {
                panic!("{step:?} needs PostgreSQL")
            };
            let log = pg.log();
            tokio::task::block_in_place(|| {
                pg.pg_ctl(&["restart", "-m", "immediate", "-w", "-l", &log]);
            });
            ("PostgreSQL pg_ctl restart -m immediate".to_owned(), false)
        }
    };
    recorder.fault(name, started, recorder.now(), loses_data);
}

// ---- The clients ------------------------------------------------------------------------

/// What the clients share.
struct Shared {
    recorder: Arc<Recorder>,
    storage: StorageNode,
    services: Arc<RwLock<Vec<Arc<dyn LockService>>>>,
    objects: Vec<ObjectId>,
    /// The share of holds that end as zombies.
    zombie_share: f64,
}

impl Shared {
    fn service(&self, index: usize) -> Arc<dyn LockService> {
        let services = self.services.read().expect("services");
        services[index % services.len()].clone()
    }
}

/// One client: acquire a random object, hold it a while (writes, validates, renews through
/// any lockd process), then release it, let it expire, or become a zombie that writes after
/// its lease ran out.
async fn client(index: usize, seed: u64, shared: Arc<Shared>, until: Instant) {
    let mut rng = StdRng::seed_from_u64(seed.wrapping_add(index as u64));
    let owner = OwnerId::new(format!("client-{index}")).expect("owner");
    let recorder = &shared.recorder;
    let mut endpoint = index;
    while Instant::now() < until {
        let object = &shared.objects[rng.random_range(0..OBJECTS)];
        let ttl = ms(rng.random_range(TTL_MS.0..=TTL_MS.1));
        let wait = if rng.random_bool(0.25) {
            ms(rng.random_range(50..=300))
        } else {
            Duration::ZERO
        };
        let service = shared.service(endpoint);
        let kind = OpKind::Acquire {
            owner: owner.to_string(),
            ttl,
            wait,
        };
        let call = bounded(
            REQUEST_TIMEOUT + wait,
            acquire(&*service, object, &owner, ttl, wait),
        );
        match recorder.lease_op(index, object.as_str(), kind, call).await {
            Ok(lease) => hold(index, &mut rng, &shared, lease, ttl).await,
            Err(LockError::Locked { .. }) => {
                tokio::time::sleep(ms(rng.random_range(5..=30))).await;
            }
            Err(_) => {
                // Unknown outcome (or a refusal the checker reports): try another process.
                endpoint += 1;
                tokio::time::sleep(ms(50)).await;
            }
        }
    }
}

async fn hold(index: usize, rng: &mut StdRng, shared: &Shared, lease: Lease, ttl: Duration) {
    let recorder = &shared.recorder;
    let object = lease.object.as_str();
    let id = LeaseId::of(&lease);
    let fence = lease.fence.get();
    let _ = shared.storage.write(index, object, fence);
    for _ in 0..rng.random_range(0..=3) {
        let quarter = u64::try_from(ttl.as_millis() / 4).unwrap_or(100);
        tokio::time::sleep(ms(rng.random_range(5..=quarter))).await;
        let service = shared.service(rng.random_range(0..3));
        let kept = if rng.random_bool(0.5) {
            let kind = OpKind::Validate { lease: id.clone() };
            let call = bounded(
                REQUEST_TIMEOUT,
                service.validate(&lease.object, &lease.token),
            );
            recorder.lease_op(index, object, kind, call).await
        } else {
            let kind = OpKind::Renew {
                lease: id.clone(),
                ttl,
            };
            let call = bounded(
                REQUEST_TIMEOUT,
                service.renew(&lease.object, &lease.token, ttl),
            );
            recorder.lease_op(index, object, kind, call).await
        };
        if kept.is_err() {
            break;
        }
        let _ = shared.storage.write(index, object, fence);
    }
    let service = shared.service(rng.random_range(0..3));
    let ending: f64 = rng.random();
    if ending < EXPIRE_SHARE {
        // Let the lease expire.
    } else if ending < EXPIRE_SHARE + shared.zombie_share {
        // A zombie: it outlives its lease, writes, validates and releases anyway.
        tokio::time::sleep(ttl + ms(50)).await;
        let _ = shared.storage.write(index, object, fence);
        let kind = OpKind::Validate { lease: id.clone() };
        let call = bounded(
            REQUEST_TIMEOUT,
            service.validate(&lease.object, &lease.token),
        );
        let _ = recorder.lease_op(index, object, kind, call).await;
        release(index, shared, &*service, &lease, id).await;
    } else {
        release(index, shared, &*service, &lease, id).await;
    }
}

async fn release(
    index: usize,
    shared: &Shared,
    service: &dyn LockService,
    lease: &Lease,
    id: LeaseId,
) {
    let kind = OpKind::Release { lease: id };
    let call = bounded(
        REQUEST_TIMEOUT,
        service.release(&lease.object, &lease.token),
    );
    let _ = shared
        .recorder
        .release_op(index, lease.object.as_str(), kind, call)
        .await;
}

// ---- Scenarios --------------------------------------------------------------------------

fn seed() -> u64 {
    std::env::var("LOCKD_HISTORY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random())
}

/// Clients running against some services until a deadline, recording one history.
struct Load {
    seed: u64,
    recorder: Arc<Recorder>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Starts the clients on `services`; they stop by themselves after `length`. A
    /// `zombie_share` of the holds end as zombies.
    fn start(
        name: &str,
        services: Arc<RwLock<Vec<Arc<dyn LockService>>>>,
        length: Duration,
        zombie_share: f64,
    ) -> Self {
        let seed = seed();
        eprintln!("scenario {name}: LOCKD_HISTORY_SEED={seed}");
        let recorder = Arc::new(Recorder::new());
        let objects = (0..OBJECTS)
            .map(|i| {
                ObjectId::new(format!("/history/{}/{name}/{i}", std::process::id()))
                    .expect("object")
            })
            .collect();
        let shared = Arc::new(Shared {
            recorder: recorder.clone(),
            storage: StorageNode::new(recorder.clone()),
            services,
            objects,
            zombie_share,
        });
        let until = Instant::now() + length;
        let clients = (0..CLIENTS)
            .map(|index| tokio::spawn(client(index, seed, shared.clone(), until)))
            .collect();
        Self {
            seed,
            recorder,
            clients,
        }
    }

    /// Waits for every client to stop and returns the history.
    async fn finish(self) -> History {
        for task in self.clients {
            task.await.expect("client task");
        }
        self.recorder.history()
    }
}

fn check_history(history: &History) -> history_check::Report {
    let config = CheckConfig::default().with_unknown_effect_horizon(UNKNOWN_EFFECT_HORIZON);
    check(history, &config)
}

/// Runs the clients against `fleet` while `plan` is injected, then checks the history:
/// no violation, no refusal of a well-formed request, a grant after every fault, and the
/// storage node refused at least one zombie.
async fn run_scenario(name: &str, mut fleet: Fleet, mut backend: Backend, plan: &[Step]) {
    let plan_length: u64 = plan
        .iter()
        .map(|step| match *step {
            Step::Run(t) | Step::StopLockd(_, t) | Step::KillLockd(_, t, _) => t,
            Step::RedisPause(t) | Step::RedisRestart(t) => t,
            _ => 0,
        })
        .sum();
    // The clients stop by themselves: the plan's length (faults may take longer), plus the tail.
    let load = Load::start(
        name,
        fleet.services.clone(),
        ms(plan_length) + TAIL,
        ZOMBIE_SHARE,
    );
    let (seed, recorder) = (load.seed, load.recorder.clone());
    for step in plan {
        inject(*step, &mut fleet, &mut backend, &recorder).await;
    }
    let faults_done = Instant::now();
    let history = load.finish().await;
    let tail = Instant::now().saturating_duration_since(faults_done);
    fleet.stop_all().await;
    drop(backend);

    let report = check_history(&history);
    print_report(name, seed, &history, &report, tail);

    assert!(
        report.is_ok(),
        "scenario {name} (LOCKD_HISTORY_SEED={seed}): {} violations:\n{}",
        report.violations.len(),
        report
            .violations
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
    let refused: Vec<_> = history
        .operations
        .iter()
        .filter(|op| matches!(op.outcome, Outcome::Refused { .. }))
        .collect();
    assert!(
        refused.is_empty(),
        "well-formed requests refused: {refused:?}"
    );
    assert!(
        report.leases >= 30,
        "too few grants ({}) for the history to mean much",
        report.leases
    );
    for fault in &history.faults {
        assert!(
            history.recovery_after(fault).is_some(),
            "no grant after {:?}",
            fault.name
        );
    }
    assert!(
        history
            .operations
            .iter()
            .any(|op| matches!(op.outcome, Outcome::Stale { .. })),
        "the storage node never refused a zombie's write"
    );
}

fn print_report(
    name: &str,
    seed: u64,
    history: &History,
    report: &history_check::Report,
    tail: Duration,
) {
    let mut text = format!(
        "== history {name} (seed {seed}): {} operations, {} leases, {} violations, \
         {} overlaps excused by data loss, load after the last fault {tail:?}\n",
        report.operations,
        report.leases,
        report.violations.len(),
        report.overlaps_across_data_loss
    );
    for (kind, outcome, count) in history.summary() {
        text.push_str(&format!("   {kind:<9} {outcome:<15} {count}\n"));
    }
    let mut faults = history.faults.clone();
    faults.sort_by_key(|f| f.started);
    for fault in &faults {
        text.push_str(&format!(
            "   fault at {:>6.2} s, {:>5} ms: {:<55} grants during {:>3}, recovery {}\n",
            fault.started.as_secs_f64(),
            (fault.ended - fault.started).as_millis(),
            fault.name,
            history.grants_between(fault.started, fault.ended),
            history
                .recovery_after(fault)
                .map_or("none".to_owned(), |r| format!("{} ms", r.as_millis()))
        ));
    }
    // Straight to stderr, so the summary shows with --nocapture even from a passing test.
    use std::io::Write as _;
    let _ = std::io::stderr().write_all(text.as_bytes());
}

/// One lockd on `memory://` without a data dir: SIGSTOP, then SIGKILL and an immediate restart
/// that loses every lock (overlap across it is excused; fences and the storage node are still judged).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_history_under_faults_has_no_violation() {
    let fleet = Fleet::start(1, vec!["--backend".into(), "memory://".into()]).await;
    let plan = [
        Step::Run(2500),
        Step::StopLockd(0, 1500),
        Step::Run(2500),
        Step::KillLockd(0, 0, true),
        Step::Run(1500),
    ];
    run_scenario("memory", fleet, Backend::Memory, &plan).await;
}

/// One lockd on `memory://` with `--data-dir`: SIGSTOP longer than any TTL, then SIGKILL and a
/// restart on the same data dir, killed again during its grace period; it must grant nothing
/// while a lease from before may be held (no data loss is excused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_with_data_dir_history_under_faults_has_no_violation() {
    let dir = tempfile::tempdir().expect("data dir");
    let args = vec![
        "--backend".into(),
        "memory://".into(),
        "--data-dir".into(),
        dir.path().display().to_string(),
    ];
    let fleet = Fleet::start(1, args).await;
    let plan = [
        Step::Run(2000),
        Step::StopLockd(0, 3000),
        Step::Run(2000),
        Step::KillLockd(0, 300, false),
        Step::Run(200),
        // Killed again during the grace period: the deadline on disk still holds.
        Step::KillLockd(0, 0, false),
        Step::Run(1500),
    ];
    run_scenario("memory-data-dir", fleet, Backend::Memory, &plan).await;
}

/// Three lockd processes on a private Redis: SIGSTOP and SIGKILL of a lockd, `CLIENT PAUSE`
/// longer than lockd's Redis timeout, `FLUSHALL` and a Redis restart without persistence (the
/// last two lose every lock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_history_under_faults_has_no_violation() {
    let Some(redis) = PrivateRedis::start().await else {
        return;
    };
    let fleet = Fleet::start(3, vec!["--backend".into(), redis.url()]).await;
    let plan = [
        Step::Run(1000),
        // Longer than any TTL: leases expire while lockd is frozen.
        Step::StopLockd(0, 3000),
        Step::Run(1000),
        Step::KillLockd(1, 300, false),
        Step::Run(1000),
        // Longer than lockd's 2 s Redis timeout: commands run after lockd gave up on them.
        Step::RedisPause(2500),
        Step::Run(1000),
        Step::RedisFlushAll,
        Step::Run(1000),
        Step::RedisRestart(300),
        Step::Run(500),
    ];
    run_scenario("redis", fleet, Backend::Redis(redis), &plan).await;
}

/// Three lockd processes on a private PostgreSQL cluster: SIGSTOP and SIGKILL of a lockd,
/// `pg_terminate_backend` of lockd's connections, and `pg_ctl restart -m immediate` (locks are
/// durable: no loss is excused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_history_under_faults_has_no_violation() {
    let Some(postgres) = PrivatePostgres::start() else {
        return;
    };
    let fleet = Fleet::start(3, vec!["--backend".into(), postgres.url()]).await;
    let plan = [
        Step::Run(1500),
        Step::StopLockd(0, 3000),
        Step::Run(1000),
        Step::KillLockd(1, 300, false),
        Step::Run(1000),
        Step::PostgresTerminate,
        Step::Run(1500),
        Step::PostgresRestart,
        Step::Run(500),
    ];
    run_scenario("postgres", fleet, Backend::Postgres(postgres), &plan).await;
}

// ---- Self-tests: the workload and the checker catch broken services ---------------------

/// The workload and the checker catch a broken service: behind the clients, two memory
/// backends that share nothing (a split brain) grant the same objects to two holders at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_brain_is_caught() {
    let issuer = lockcore::TokenIssuer::random();
    let brain = || -> Arc<dyn LockService> {
        let config = backend_memory::MemoryConfig::new(lockcore::Limits::default());
        Arc::new(backend_memory::MemoryLockService::new(
            backend_memory::MemoryStore::new(config),
            issuer.clone(),
        ))
    };
    let violations = violations_of("split-brain", vec![brain(), brain()]).await;
    assert!(
        violations
            .iter()
            .any(|v| matches!(v, history_check::Violation::OverlappingHolders { .. })),
        "two holders at once went unnoticed: {violations:?}"
    );
}

/// A deliberately broken service for the self-tests: a memory backend with one bug.
#[derive(Debug)]
struct Broken {
    inner: backend_memory::MemoryLockService,
    bug: Bug,
    granted: std::sync::Mutex<std::collections::HashMap<String, Lease>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bug {
    /// `validate` accepts any token it ever granted, expired or released.
    ValidateIgnoresExpiry,
    /// Grants report fences that run backwards.
    FencesRunBackwards,
}

impl Broken {
    fn service(bug: Bug) -> Arc<dyn LockService> {
        let config = backend_memory::MemoryConfig::new(lockcore::Limits::default());
        Arc::new(Self {
            inner: backend_memory::MemoryLockService::new(
                backend_memory::MemoryStore::new(config),
                lockcore::TokenIssuer::random(),
            ),
            bug,
            granted: std::sync::Mutex::default(),
        })
    }
}

#[lockcore::async_trait]
impl LockService for Broken {
    fn backend(&self) -> &'static str {
        "broken"
    }

    async fn acquire_with(&self, request: &AcquireRequest) -> LockResult<lockcore::Grant> {
        let mut grant = self.inner.acquire_with(request).await?;
        for lease in &mut grant.leases {
            self.granted
                .lock()
                .expect("granted")
                .insert(lease.token.fingerprint(), lease.clone());
            if self.bug == Bug::FencesRunBackwards {
                lease.fence = lockcore::Fence(u64::MAX - lease.fence.get());
            }
        }
        Ok(grant)
    }

    async fn release_many(
        &self,
        locks: &[(ObjectId, lockcore::LockToken)],
    ) -> LockResult<Vec<LockResult<lockcore::Fence>>> {
        self.inner.release_many(locks).await
    }

    async fn renew_many(
        &self,
        locks: &[(ObjectId, lockcore::LockToken)],
        ttl: Duration,
    ) -> LockResult<Vec<LockResult<Lease>>> {
        self.inner.renew_many(locks, ttl).await
    }

    async fn downgrade(&self, object: &ObjectId, token: &lockcore::LockToken) -> LockResult<Lease> {
        self.inner.downgrade(object, token).await
    }

    async fn release(
        &self,
        object: &ObjectId,
        token: &lockcore::LockToken,
    ) -> LockResult<lockcore::Fence> {
        self.inner.release(object, token).await
    }

    async fn renew(
        &self,
        object: &ObjectId,
        token: &lockcore::LockToken,
        ttl: Duration,
    ) -> LockResult<Lease> {
        self.inner.renew(object, token, ttl).await
    }

    async fn validate(&self, object: &ObjectId, token: &lockcore::LockToken) -> LockResult<Lease> {
        let result = self.inner.validate(object, token).await;
        if self.bug == Bug::ValidateIgnoresExpiry && result.is_err() {
            if let Some(lease) = self
                .granted
                .lock()
                .expect("granted")
                .get(&token.fingerprint())
            {
                return Ok(lease.clone());
            }
        }
        result
    }

    async fn inspect(&self, object: &ObjectId) -> LockResult<Option<lockcore::LockInfo>> {
        self.inner.inspect(object).await
    }

    async fn list(&self, query: &lockcore::ListQuery) -> LockResult<lockcore::LockPage> {
        self.inner.list(query).await
    }
}

/// Runs the clients against `services` for a few seconds and returns the violations found.
/// A third of the holds end as zombies, so that every run has some.
async fn violations_of(
    name: &str,
    services: Vec<Arc<dyn LockService>>,
) -> Vec<history_check::Violation> {
    let load = Load::start(name, Arc::new(RwLock::new(services)), ms(3000), 0.3);
    let seed = load.seed;
    let history = load.finish().await;
    let report = check_history(&history);
    print_report(name, seed, &history, &report, Duration::ZERO);
    report.violations
}

/// The workload and the checker catch a validate that accepts expired leases (the zombies
/// validate after their TTL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_validate_accepting_expired_leases_is_caught() {
    let violations = violations_of(
        "validate-ignores-expiry",
        vec![Broken::service(Bug::ValidateIgnoresExpiry)],
    )
    .await;
    assert!(
        violations
            .iter()
            .any(|v| matches!(v, history_check::Violation::AcceptedExpired { .. })),
        "{violations:?}"
    );
}

/// The workload and the checker catch fences that do not follow real-time order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fences_running_backwards_are_caught() {
    let violations = violations_of(
        "fences-backwards",
        vec![Broken::service(Bug::FencesRunBackwards)],
    )
    .await;
    assert!(
        violations
            .iter()
            .any(|v| matches!(v, history_check::Violation::FenceOrder { .. })),
        "{violations:?}"
    );
}
