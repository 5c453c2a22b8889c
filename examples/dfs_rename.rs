//! Directory renames under subtree locks, racing with file writes under object locks.
//!
//! A tiny DFS namespace holds a few directories of files. Renamer tasks move whole directories
//! (`/vol/d0` to `/vol/d0.r1`, and so on: a name is never reused), each rename taking exclusive
//! **subtree** locks on the source and the target in one request, as a DFS does. Writer tasks
//! write files: each resolves the file's path, takes an exclusive **object** lock on it, checks
//! under the lock that its directory is still there (a DFS re-resolves under the lock), and
//! only then writes, recording `(path, fence)` in a shared log. A writer that finds its
//! directory moved releases and resolves again.
//!
//! The subtree lock on a directory conflicts with every lock under it, so a rename waits for
//! the writes in flight under its source, and writes under the source wait for the rename. At
//! the end the program checks, from the log alone, that no write landed under a directory's
//! name after that directory was renamed away, and that each path's fences increase.
//!
//! ```sh
//! cargo run -p lockd-examples --example dfs_rename                              # memory://
//! cargo run -p lockd-examples --example dfs_rename -- http://127.0.0.1:7070     # a running lockd
//! ```
//!
//! Any backend URL works (`redis://...`, `postgres://...`, `http://...`); the run is short and
//! bounded (a few hundred lock operations).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lockcore::{
    AcquireRequest, Fence, LockError, LockMode, LockService, LockSpec, ObjectId, OwnerId,
    TokenIssuer,
};
use lockd::{connect_backend, BackendOptions};

const DIRECTORIES: usize = 3;
const FILES_PER_DIRECTORY: usize = 3;
const RENAMES_PER_DIRECTORY: usize = 3;
const WRITERS: usize = 6;
const WRITES_PER_WRITER: usize = 20;
/// Each lease's TTL: far longer than any critical section here, so none expires.
const TTL: Duration = Duration::from_secs(10);
/// How long an acquire may wait for its locks.
const WAIT: Duration = Duration::from_secs(20);

/// One entry of the shared log, in the order things happened.
#[derive(Debug, Clone)]
enum Record {
    /// A file write landed at `path` under the lease with `fence`.
    Write { path: String, fence: Fence },
    /// Directory `from` became `to` (both subtrees held under `fences`).
    Rename {
        from: String,
        to: String,
        fences: Vec<Fence>,
    },
}

/// The namespace (directory number → current path) and the log, shared by every task.
#[derive(Debug, Default)]
struct Dfs {
    directories: Mutex<Vec<String>>,
    log: Mutex<Vec<Record>>,
    /// Writes that found their directory moved under the lock and resolved again.
    re_resolved: Mutex<usize>,
}

impl Dfs {
    fn new() -> Self {
        Self {
            directories: Mutex::new((0..DIRECTORIES).map(|d| format!("/vol/d{d}")).collect()),
            ..Self::default()
        }
    }

    fn path_of(&self, directory: usize) -> Result<String, LockError> {
        let directories = self.directories.lock().map_err(poisoned)?;
        directories
            .get(directory)
            .cloned()
            .ok_or_else(|| LockError::Internal(format!("no directory {directory}")))
    }

    fn record(&self, record: Record) -> Result<(), LockError> {
        self.log.lock().map_err(poisoned)?.push(record);
        Ok(())
    }
}

fn poisoned<T>(_: T) -> LockError {
    LockError::Internal("a task panicked holding the namespace".into())
}

/// Writes `WRITES_PER_WRITER` files, each under an object lock on its current path.
async fn writer(id: usize, locks: Arc<dyn LockService>, dfs: Arc<Dfs>) -> Result<(), LockError> {
    let owner = OwnerId::new(format!("writer-{id}"))?;
    for n in 0..WRITES_PER_WRITER {
        let directory = (id + n) % DIRECTORIES;
        let file = format!("f{}", (id * 7 + n) % FILES_PER_DIRECTORY);
        loop {
            let resolved = dfs.path_of(directory)?;
            let path = format!("{resolved}/{file}");
            let object = ObjectId::new(&path)?;
            let lease = locks.acquire(&object, &owner, TTL, WAIT).await?;
            // Under the lock: is the directory still where we resolved it?
            let still_there = dfs.path_of(directory)? == resolved;
            if still_there {
                // Leave room for a rename to slip in, were the locks not doing their job.
                tokio::time::sleep(Duration::from_millis(1)).await;
                dfs.record(Record::Write {
                    path,
                    fence: lease.fence,
                })?;
            } else {
                *dfs.re_resolved.lock().map_err(poisoned)? += 1;
            }
            locks.release(&object, &lease.token).await?;
            if still_there {
                break;
            }
        }
    }
    Ok(())
}

/// Renames directory `directory` `RENAMES_PER_DIRECTORY` times, each under exclusive subtree
/// locks on the source and the target taken in one request.
async fn renamer(
    directory: usize,
    locks: Arc<dyn LockService>,
    dfs: Arc<Dfs>,
) -> Result<(), LockError> {
    let owner = OwnerId::new(format!("renamer-{directory}"))?;
    for n in 1..=RENAMES_PER_DIRECTORY {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let from = dfs.path_of(directory)?;
        let to = format!("/vol/d{directory}.r{n}");
        let request = AcquireRequest::many(
            vec![
                LockSpec::subtree(ObjectId::new(&from)?, LockMode::Exclusive),
                LockSpec::subtree(ObjectId::new(&to)?, LockMode::Exclusive),
            ],
            owner.clone(),
            TTL,
        )
        .with_wait(WAIT);
        let grant = locks.acquire_with(&request).await?;
        {
            // Only this task renames this directory, so it is still at `from`.
            let mut directories = dfs.directories.lock().map_err(poisoned)?;
            directories[directory] = to.clone();
        }
        dfs.record(Record::Rename {
            from,
            to,
            fences: grant.leases.iter().map(|lease| lease.fence).collect(),
        })?;
        let held: Vec<_> = grant
            .leases
            .into_iter()
            .map(|lease| (lease.object, lease.token))
            .collect();
        for outcome in locks.release_many(&held).await? {
            outcome?;
        }
    }
    Ok(())
}

/// Checks the log: no write under a directory's name after that directory was renamed away,
/// and each path's fences increasing. Returns the numbers of writes and renames.
fn check(log: &[Record]) -> Result<(usize, usize), String> {
    let mut renamed_away: Vec<String> = Vec::new();
    let mut last_fence: HashMap<&str, Fence> = HashMap::new();
    let (mut writes, mut renames) = (0, 0);
    for (at, record) in log.iter().enumerate() {
        match record {
            Record::Rename { from, .. } => {
                renames += 1;
                renamed_away.push(format!("{from}/"));
            }
            Record::Write { path, fence } => {
                writes += 1;
                if let Some(gone) = renamed_away.iter().find(|dir| path.starts_with(*dir)) {
                    return Err(format!(
                        "record {at}: write to {path} (fence {fence}) landed after {} was renamed away",
                        gone.trim_end_matches('/')
                    ));
                }
                if let Some(previous) = last_fence.insert(path, *fence) {
                    if previous >= *fence {
                        return Err(format!(
                            "record {at}: write to {path} with fence {fence} after fence {previous}"
                        ));
                    }
                }
            }
        }
    }
    Ok((writes, renames))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "memory://".to_owned());
    let mut options = BackendOptions::new(TokenIssuer::random());
    if let Ok(key) = std::env::var("LOCKD_API_KEY") {
        options = options.with_api_key(key);
    }
    let locks = connect_backend(&url, &options).await?;
    let dfs = Arc::new(Dfs::new());

    let mut tasks = Vec::new();
    for id in 0..WRITERS {
        tasks.push(tokio::spawn(writer(id, locks.clone(), dfs.clone())));
    }
    for directory in 0..DIRECTORIES {
        tasks.push(tokio::spawn(renamer(directory, locks.clone(), dfs.clone())));
    }
    let run = async {
        for task in tasks {
            task.await??;
        }
        Ok::<(), Box<dyn std::error::Error>>(())
    };
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .map_err(|_| "the run did not finish within 60 s")??;

    let log = dfs.log.lock().map_err(|_| "a task panicked")?.clone();
    let (writes, renames) = check(&log)?;
    let re_resolved = *dfs.re_resolved.lock().map_err(|_| "a task panicked")?;
    for record in &log {
        if let Record::Rename { from, to, fences } = record {
            let fences: Vec<String> = fences.iter().map(Fence::to_string).collect();
            println!("renamed {from} -> {to} (fences {})", fences.join(", "));
        }
    }
    println!(
        "backend {url}: {writes} writes and {renames} renames; {re_resolved} writes found their \
         directory moved under the lock and resolved again; no write landed in a renamed \
         directory"
    );
    Ok(())
}
