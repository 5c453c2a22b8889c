//! Acquires a lock on the in-memory backend, shows the lease, and releases it.
//!
//! `cargo run -p backend-memory --example acquire_release [OBJECT] [OWNER]`

use std::time::Duration;

use backend_memory::{MemoryConfig, MemoryLockService, MemoryStore};
use lockcore::{LockError, LockService, ObjectId, OwnerId, TokenIssuer};

#[tokio::main]
async fn main() -> Result<(), LockError> {
    let mut args = std::env::args().skip(1);
    let object = ObjectId::new(args.next().unwrap_or_else(|| "/volumes/a/file.txt".into()))?;
    let owner = OwnerId::new(args.next().unwrap_or_else(|| "example-client".into()))?;

    let locks = MemoryLockService::new(
        MemoryStore::new(MemoryConfig::default()),
        TokenIssuer::random(),
    );
    let lease = locks
        .acquire(&object, &owner, Duration::from_secs(30), Duration::ZERO)
        .await?;
    // The token is a credential: show only its fingerprint.
    println!(
        "acquired {} for {}: fence {}, ttl {:?}, token fingerprint {}",
        lease.object,
        lease.owner,
        lease.fence,
        lease.ttl,
        lease.token.fingerprint()
    );
    if let Some(info) = locks.inspect(&object).await? {
        println!(
            "inspect: held by {} with fence {}, {:?} left",
            info.owner, info.fence, info.ttl
        );
    }
    let fence = locks.release(&object, &lease.token).await?;
    println!(
        "released {object} (fence {fence}); locks held now: {}",
        locks.store().held()
    );
    Ok(())
}
