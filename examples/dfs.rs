//! A DFS-like program that locks files before touching them.
//!
//! Several "clients" append records to a few shared files. Before each append a client takes the
//! file's lock from lockd, and the "storage node" checks the token with the lock service and
//! refuses a fence older than the newest it has seen for that file (fencing), exactly as a DFS
//! would. At the end the program checks that no two appends interleaved.
//!
//! Embedded (the lock service runs inside this process):
//!
//! ```sh
//! cargo run -p lockd-examples --example dfs
//! ```
//!
//! Remote (a running lockd; start one with `cargo run --release -p lockd -- serve`):
//!
//! ```sh
//! cargo run -p lockd-examples --example dfs -- http://127.0.0.1:7070
//! ```
//!
//! Changing that one URL (`memory://`, `redis://...`, `postgres://...`, `http://...`) is all it
//! takes to move between an embedded backend and a remote lockd.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lockcore::{Fence, LockData, LockError, LockService, LockToken, OwnerId, TokenIssuer};
use lockd::{connect_backend, BackendOptions};
use tokio::io::AsyncWriteExt;

const CLIENTS: usize = 6;
const APPENDS_PER_CLIENT: usize = 20;
const FILES: [&str; 2] = ["volume-a/report.txt", "volume-a/ledger.txt"];

/// The storage side of the DFS: writes only with a valid token and a fresh fence.
struct StorageNode {
    locks: Arc<dyn LockService>,
    root: PathBuf,
    newest_fence: Mutex<HashMap<PathBuf, Fence>>,
}

impl StorageNode {
    async fn append(&self, file: &Path, token: &LockToken, line: &str) -> Result<(), String> {
        let object = file.object_id().map_err(|e| e.to_string())?;
        // 1. Is this token the current holder's? (one round trip to the lock service)
        let lease = self
            .locks
            .validate(&object, token)
            .await
            .map_err(|e| format!("refused: {e}"))?;
        // 2. Fencing: never accept a write older than one already accepted.
        {
            let mut newest = self.newest_fence.lock().map_err(|_| "poisoned")?;
            let seen = newest.entry(file.to_path_buf()).or_insert(Fence(0));
            if lease.fence < *seen {
                return Err(format!("refused: stale fence {} < {}", lease.fence, seen));
            }
            *seen = lease.fence;
        }
        let path = self.root.join(file);
        let mut out = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .await
            .map_err(|e| e.to_string())?;
        // Two writes per record: interleaving would show if the lock failed.
        out.write_all(format!("{line} begin\n").as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        tokio::task::yield_now().await;
        out.write_all(format!("{line} end\n").as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }
}

async fn client(id: usize, storage: Arc<StorageNode>) -> Result<(), LockError> {
    let owner = OwnerId::new(format!("client-{id}"))?;
    for n in 0..APPENDS_PER_CLIENT {
        let file = Path::new(FILES[(id + n) % FILES.len()]);
        let object = file.object_id()?;
        // Wait up to 10 s for the lock; hold it for at most 5 s.
        let lease = storage
            .locks
            .acquire(
                &object,
                &owner,
                Duration::from_secs(5),
                Duration::from_secs(10),
            )
            .await?;
        let line = format!("{owner} #{n} fence={}", lease.fence);
        if let Err(refusal) = storage.append(file, &lease.token, &line).await {
            eprintln!("{owner}: storage {refusal}");
        }
        storage.locks.release(&object, &lease.token).await?;
    }
    Ok(())
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
    let root = std::env::temp_dir().join(format!("lockd-dfs-example-{}", std::process::id()));
    tokio::fs::create_dir_all(root.join("volume-a")).await?;
    let storage = Arc::new(StorageNode {
        locks,
        root: root.clone(),
        newest_fence: Mutex::new(HashMap::new()),
    });

    let tasks: Vec<_> = (0..CLIENTS)
        .map(|id| tokio::spawn(client(id, storage.clone())))
        .collect();
    for task in tasks {
        task.await??;
    }

    // Every "begin" must be followed directly by its own "end".
    for file in FILES {
        let text = tokio::fs::read_to_string(root.join(file)).await?;
        let lines: Vec<&str> = text.lines().collect();
        for pair in lines.chunks(2) {
            let ok = matches!(pair, [b, e] if b.strip_suffix(" begin") == e.strip_suffix(" end"));
            if !ok {
                return Err(format!("{file}: interleaved writes {pair:?}").into());
            }
        }
        println!("{file}: {} records, none interleaved", lines.len() / 2);
    }
    tokio::fs::remove_dir_all(&root).await?;
    println!(
        "backend {url}: {} appends under lock",
        CLIENTS * APPENDS_PER_CLIENT
    );
    Ok(())
}
