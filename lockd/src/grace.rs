//! Restart safety for `memory://`: a small state file and a guard that refuses grants while a
//! lease from before a restart may still be believed held.
//!
//! # What is stored
//!
//! `DATA_DIR/lockd-state.json`, written atomically (temporary file, `fsync`, rename, `fsync` of
//! the directory):
//!
//! ```json
//! {"version": 1, "highest_fence": 1830455044919296000, "grant_deadline_unix_ms": 1795795200000}
//! ```
//!
//! * `grant_deadline_unix_ms` (wall clock) is at or after the expiry of every lease this process
//!   has granted or renewed. It is written **before** a grant or renewal that would outlast it is
//!   made, so a crash can never lose it. To keep writes rare it is pushed [`COALESCE`] beyond
//!   what the grant needs, so a restart may wait up to that much longer than strictly necessary.
//! * `highest_fence` is the highest fence handed out. It is flushed within about a second of a
//!   grant and when the guard is dropped; fences after a restart start above it (and above the
//!   wall-clock floor of [`lockcore::fence`], which already covers a crash between flushes).
//!
//! # At shutdown
//!
//! When the guard is dropped (a clean shutdown) it writes the highest fence, and if its probe
//! says no lock is held, it moves the deadline back to now: the next start then grants at once.
//!
//! # At start
//!
//! If the stored deadline is in the future, every acquire is refused with
//! [`LockError::Unavailable`] until it passes (clients retry; the error says how long). A fresh
//! or empty data dir grants at once. An unreadable or corrupt state file stops the start with a
//! clear error rather than guessing.
//!
//! # One process per data dir
//!
//! The state describes one process's grants, so a data dir has one owner: opening it takes an
//! exclusive lock on `DATA_DIR/lockd.lock` (`flock`), held until the service is dropped and
//! released by the OS if the process dies. A second process opening the same dir fails to
//! start, instead of both overwriting each other's deadline and fence.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lockcore::{
    async_trait, check_objects, AcquireRequest, Fence, Grant, Lease, LeaseEndSink, Limits,
    ListQuery, LockError, LockInfo, LockPage, LockResult, LockService, LockToken, ObjectId,
};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// Name of the state file inside the data directory.
pub const STATE_FILE_NAME: &str = "lockd-state.json";

/// Name of the file whose lock marks the data directory as in use by one process.
pub const LOCK_FILE_NAME: &str = "lockd.lock";

/// How far beyond a grant's needs the stored deadline is pushed, so that a burst of grants
/// costs one write.
pub const COALESCE: Duration = Duration::from_secs(1);

/// How often a changed highest fence is flushed.
const FENCE_FLUSH_INTERVAL: Duration = Duration::from_millis(500);

const BACKEND: &str = "memory";

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct StateRecord {
    version: u32,
    highest_fence: u64,
    grant_deadline_unix_ms: u64,
}

/// The restart state file of a data directory, read at start, with the directory's lock.
#[derive(Debug)]
pub struct StateFile {
    path: PathBuf,
    stored: StateRecord,
    /// Holds the exclusive lock on [`LOCK_FILE_NAME`] while open.
    dir_lock: std::fs::File,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn now_unix_ms() -> u64 {
    unix_ms(SystemTime::now())
}

fn state_error(path: &Path, what: impl std::fmt::Display) -> LockError {
    LockError::invalid_argument(
        "data_dir",
        format!("restart state file {}: {what}", path.display()),
    )
}

impl StateFile {
    /// Creates `dir` if needed, locks it for this process and reads its state file (absent: a
    /// fresh start). Fails if another process has the directory open.
    pub async fn open(dir: &Path) -> Result<Self, LockError> {
        let dir = dir.to_path_buf();
        tokio::task::spawn_blocking(move || Self::open_blocking(&dir))
            .await
            .map_err(|e| LockError::Internal(format!("reading the state file panicked: {e}")))?
    }

    fn open_blocking(dir: &Path) -> Result<Self, LockError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            LockError::invalid_argument("data_dir", format!("cannot create {}: {e}", dir.display()))
        })?;
        let dir_lock = lock_dir(dir)?;
        let path = dir.join(STATE_FILE_NAME);
        let stored = match std::fs::read(&path) {
            Ok(bytes) => {
                let record: StateRecord = serde_json::from_slice(&bytes).map_err(|e| {
                    state_error(
                        &path,
                        format!(
                            "is corrupt ({e}); remove it only when no lease granted before the \
                             restart can still be in use"
                        ),
                    )
                })?;
                if record.version != 1 {
                    return Err(state_error(
                        &path,
                        format!("has unknown version {}", record.version),
                    ));
                }
                record
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => StateRecord {
                version: 1,
                ..StateRecord::default()
            },
            Err(e) => return Err(state_error(&path, format!("cannot be read: {e}"))),
        };
        // Prove now, not at the first grant, that the directory is writable.
        write_atomically(&path, &stored).map_err(|e| state_error(&path, e))?;
        Ok(Self {
            path,
            stored,
            dir_lock,
        })
    }

    /// The lowest fence the backend may hand out next: above every fence stored.
    pub fn fence_floor(&self) -> Fence {
        Fence(self.stored.highest_fence.saturating_add(1))
    }

    /// How long grants must still be refused: until the stored deadline passes.
    pub fn remaining_grace(&self) -> Duration {
        Duration::from_millis(
            self.stored
                .grant_deadline_unix_ms
                .saturating_sub(now_unix_ms()),
        )
    }

    /// Where the state lives.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Takes the exclusive lock on `dir`'s lock file, without waiting.
fn lock_dir(dir: &Path) -> Result<std::fs::File, LockError> {
    let path = dir.join(LOCK_FILE_NAME);
    let failed = |what: String| {
        LockError::invalid_argument("data_dir", format!("{}: {what}", dir.display()))
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| failed(format!("cannot open {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(failed(format!(
            "in use by another lockd process (it holds {LOCK_FILE_NAME}); each process needs \
             its own data dir"
        ))),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(failed(format!("cannot lock {}: {e}", path.display())))
        }
    }
}

fn write_atomically(path: &Path, record: &StateRecord) -> std::io::Result<()> {
    use std::io::Write as _;
    let bytes = serde_json::to_vec(record).map_err(std::io::Error::other)?;
    let tmp = path.with_extension("json.tmp");
    {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        // Makes the rename itself durable; not supported everywhere, so best effort.
        if let Ok(dir) = std::fs::File::open(dir) {
            let _ = dir.sync_all();
        }
    }
    Ok(())
}

/// The outcome of the writer's writes so far, published after each one.
#[derive(Debug, Clone, Default)]
struct Written {
    /// The deadline on disk (unix ms).
    deadline: u64,
    /// Writes that failed so far.
    failures: u64,
    /// Why the last failed write failed.
    last_error: String,
}

/// The state file's writer and what it has written.
///
/// Grants never wait on a lock held across a write: a grant whose deadline is already on disk
/// reads one atomic; one that needs a later deadline asks the writer task for it and waits for
/// the write to be published. The writer also moves the deadline ahead in the background while
/// grants are still covered, so under a steady load they rarely wait for the disk at all.
#[derive(Debug)]
struct Shared {
    path: PathBuf,
    /// The deadline on disk (unix ms); only grows.
    persisted: AtomicU64,
    /// The largest deadline asked of the writer.
    requested: AtomicU64,
    /// Highest fence handed out (in memory).
    highest_fence: AtomicU64,
    /// Highest fence on disk.
    flushed_fence: AtomicU64,
    /// Held by whoever writes the file, on a blocking thread (never across an `await`), so the
    /// final write at drop never interleaves with the writer's.
    writing: std::sync::Mutex<()>,
    /// Wakes the writer.
    wake: tokio::sync::Notify,
    /// Published by the writer after each write.
    written: tokio::sync::watch::Sender<Written>,
}

impl Shared {
    fn new(path: PathBuf, deadline: u64, highest_fence: u64) -> Self {
        Self {
            path,
            persisted: AtomicU64::new(deadline),
            requested: AtomicU64::new(deadline),
            highest_fence: AtomicU64::new(highest_fence),
            flushed_fence: AtomicU64::new(highest_fence),
            writing: std::sync::Mutex::new(()),
            wake: tokio::sync::Notify::new(),
            written: tokio::sync::watch::Sender::new(Written {
                deadline,
                ..Written::default()
            }),
        }
    }

    fn record(&self, deadline: u64) -> StateRecord {
        StateRecord {
            version: 1,
            highest_fence: self.highest_fence.load(Ordering::Acquire),
            grant_deadline_unix_ms: deadline,
        }
    }

    /// Writes `record` on this thread, serialised with every other write.
    fn write_blocking(&self, record: &StateRecord) -> std::io::Result<()> {
        let _writing = self
            .writing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        write_atomically(&self.path, record)
    }

    /// Asks the writer to store a deadline of at least `deadline`.
    fn request(&self, deadline: u64) {
        if self.requested.fetch_max(deadline, Ordering::AcqRel) < deadline {
            self.wake.notify_one();
        }
    }

    /// Makes sure the stored deadline covers a lease that may last until `needed` (unix ms):
    /// returns at once when it does, else once the writer has stored one that does.
    async fn cover(&self, needed: u64) -> LockResult<()> {
        let coalesce = u64::try_from(COALESCE.as_millis()).unwrap_or(1000);
        if self.persisted.load(Ordering::Acquire) >= needed {
            // Covered. When the margin runs low, move it ahead in the background.
            if self.requested.load(Ordering::Acquire) < needed.saturating_add(coalesce / 2) {
                self.request(needed.saturating_add(coalesce));
            }
            return Ok(());
        }
        let mut written = self.written.subscribe();
        let failures = written.borrow().failures;
        self.request(needed.saturating_add(coalesce));
        let outcome = written
            .wait_for(|w| w.deadline >= needed || w.failures > failures)
            .await
            .map(|w| (w.deadline, w.last_error.clone()));
        match outcome {
            Ok((deadline, _)) if deadline >= needed => Ok(()),
            Ok((_, error)) => Err(LockError::unavailable(
                BACKEND,
                format!(
                    "cannot persist restart state to {}: {error}",
                    self.path.display()
                ),
            )),
            Err(_) => Err(LockError::unavailable(
                BACKEND,
                "the restart state writer has stopped",
            )),
        }
    }

    /// One round of the writer: stores the requested deadline and the highest fence if either
    /// is ahead of the disk.
    async fn write_pending(self: &Arc<Self>) {
        let persisted = self.persisted.load(Ordering::Acquire);
        let deadline = self.requested.load(Ordering::Acquire).max(persisted);
        let fence_behind =
            self.highest_fence.load(Ordering::Acquire) > self.flushed_fence.load(Ordering::Acquire);
        if deadline == persisted && !fence_behind {
            return;
        }
        let record = self.record(deadline);
        let shared = Arc::clone(self);
        let result = tokio::task::spawn_blocking(move || shared.write_blocking(&record))
            .await
            .map_err(|e| format!("the write panicked: {e}"))
            .and_then(|written| written.map_err(|e| e.to_string()));
        match result {
            Ok(()) => {
                self.persisted.fetch_max(deadline, Ordering::AcqRel);
                self.flushed_fence
                    .fetch_max(record.highest_fence, Ordering::AcqRel);
                self.written
                    .send_modify(|w| w.deadline = w.deadline.max(deadline));
            }
            Err(error) => {
                tracing::error!(
                    %error,
                    state_file = %self.path.display(),
                    "cannot persist the restart state"
                );
                self.written.send_modify(|w| {
                    w.failures += 1;
                    w.last_error = error;
                });
            }
        }
    }
}

/// The writer task: writes when asked, and flushes a changed highest fence every
/// [`FENCE_FLUSH_INTERVAL`]. Runs until aborted.
async fn write_loop(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(FENCE_FLUSH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shared.wake.notified() => {}
            _ = tick.tick() => {}
        }
        shared.write_pending().await;
    }
}

/// A `memory://` service that survives restarts safely: it persists what it grants to a
/// [`StateFile`] and refuses grants during the grace period after a restart.
///
/// See the [module docs](self) for the scheme.
pub struct RestartGuard {
    inner: Arc<dyn LockService>,
    limits: Limits,
    shared: Arc<Shared>,
    /// Keeps the data dir locked for this process; dropped (unlocked) after the final write.
    _dir_lock: std::fs::File,
    grace_until: Instant,
    writer: tokio::task::JoinHandle<()>,
    idle_probe: Option<IdleProbe>,
}

impl std::fmt::Debug for RestartGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestartGuard")
            .field("inner", &self.inner)
            .field("state_file", &self.shared.path)
            .field("remaining_grace", &self.remaining_grace())
            .field("idle_probe", &self.idle_probe.is_some())
            .finish()
    }
}

/// Says whether the wrapped service holds no lock at all (counting expired ones it has not
/// reclaimed yet is fine: that only keeps the grace period).
pub type IdleProbe = Box<dyn Fn() -> bool + Send + Sync>;

impl RestartGuard {
    /// Wraps `inner` (configured with the same `limits`), whose fences must already start at [`StateFile::fence_floor`].
    ///
    /// Spawns a small task that flushes the highest fence; must run inside a Tokio runtime.
    pub fn new(inner: Arc<dyn LockService>, state: StateFile, limits: Limits) -> Self {
        let grace = state.remaining_grace();
        if !grace.is_zero() {
            tracing::warn!(
                grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX),
                state_file = %state.path.display(),
                "restarted while leases granted before may still be held: refusing grants \
                 until they have expired"
            );
        }
        let shared = Arc::new(Shared::new(
            state.path,
            state.stored.grant_deadline_unix_ms,
            state.stored.highest_fence,
        ));
        let writer = tokio::spawn(write_loop(Arc::clone(&shared)));
        Self {
            inner,
            limits,
            shared,
            _dir_lock: state.dir_lock,
            grace_until: Instant::now() + grace,
            writer,
            idle_probe: None,
        }
    }

    /// Lets a clean shutdown skip the next start's grace period when `probe` says no lock is
    /// held at that moment (nobody can then believe they hold one).
    pub fn with_idle_probe(mut self, probe: IdleProbe) -> Self {
        self.idle_probe = Some(probe);
        self
    }

    /// How long grants are still refused (zero once the grace period is over).
    pub fn remaining_grace(&self) -> Duration {
        self.grace_until.saturating_duration_since(Instant::now())
    }

    fn check_grace(&self) -> LockResult<()> {
        let left = self.remaining_grace();
        if left.is_zero() {
            return Ok(());
        }
        Err(LockError::unavailable(
            BACKEND,
            format!(
                "restart grace period: lockd restarted while locks granted before may still be \
                 held, so it grants nothing for another {} ms",
                left.as_millis().max(1)
            ),
        ))
    }

    fn saw(&self, grant: &Grant) {
        if let Some(highest) = grant.leases.iter().map(|lease| lease.fence.get()).max() {
            self.shared
                .highest_fence
                .fetch_max(highest, Ordering::AcqRel);
        }
    }
}

impl Drop for RestartGuard {
    fn drop(&mut self) {
        self.writer.abort();
        // Waits for a write in progress, so the final one is last.
        let _writing = self
            .shared
            .writing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let deadline = self.shared.persisted.load(Ordering::Acquire);
        let now = now_unix_ms();
        let idle = deadline > now && self.idle_probe.as_ref().is_some_and(|idle| idle());
        let record = self.shared.record(if idle { now } else { deadline });
        if idle {
            tracing::info!("no lock held at shutdown: the next start needs no grace period");
        }
        if idle || record.highest_fence > self.shared.flushed_fence.load(Ordering::Acquire) {
            if let Err(e) = write_atomically(&self.shared.path, &record) {
                tracing::error!(error = %e, "cannot write the final restart state");
            }
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[async_trait]
impl LockService for RestartGuard {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    async fn acquire_with(&self, request: &AcquireRequest) -> LockResult<Grant> {
        // Checked here too so that an out-of-range request never moves the stored deadline.
        request.check(&self.limits)?;
        self.check_grace()?;
        let needed = now_unix_ms()
            .saturating_add(millis(request.wait))
            .saturating_add(millis(request.ttl));
        self.shared.cover(needed).await?;
        let grant = self.inner.acquire_with(request).await?;
        self.saw(&grant);
        Ok(grant)
    }

    async fn release(&self, object: &ObjectId, token: &LockToken) -> LockResult<Fence> {
        self.inner.release(object, token).await
    }

    async fn release_many(
        &self,
        locks: &[(ObjectId, LockToken)],
    ) -> LockResult<Vec<LockResult<Fence>>> {
        self.inner.release_many(locks).await
    }

    async fn renew(
        &self,
        object: &ObjectId,
        token: &LockToken,
        ttl: Duration,
    ) -> LockResult<Lease> {
        self.limits.check_ttl(ttl)?;
        // Only the holder may move the stored deadline: a stranger's renew must not lengthen
        // the grace period of a future restart.
        if let Err(e) = self.inner.validate(object, token).await {
            lockcore::audit::log_refusal("renew", object, token, &e);
            return Err(e);
        }
        let needed = now_unix_ms().saturating_add(millis(ttl));
        self.shared.cover(needed).await?;
        self.inner.renew(object, token, ttl).await
    }

    async fn renew_many(
        &self,
        locks: &[(ObjectId, LockToken)],
        ttl: Duration,
    ) -> LockResult<Vec<LockResult<Lease>>> {
        self.limits.check_ttl(ttl)?;
        check_objects(locks.iter().map(|(object, _)| object))?;
        // As for one renew: only holders may move the stored deadline. Strangers' entries are
        // refused here; the holders' are renewed together once the deadline covers them.
        let mut outcomes: Vec<Option<LockResult<Lease>>> = Vec::with_capacity(locks.len());
        let mut held = Vec::with_capacity(locks.len());
        for (object, token) in locks {
            match self.inner.validate(object, token).await {
                Ok(_) => {
                    held.push((object.clone(), token.clone()));
                    outcomes.push(None);
                }
                Err(e) => {
                    lockcore::audit::log_refusal("renew", object, token, &e);
                    outcomes.push(Some(Err(e)));
                }
            }
        }
        let mut renewed = if held.is_empty() {
            Vec::new()
        } else {
            let needed = now_unix_ms().saturating_add(millis(ttl));
            self.shared.cover(needed).await?;
            self.inner.renew_many(&held, ttl).await?
        }
        .into_iter();
        Ok(outcomes
            .into_iter()
            .map(|outcome| {
                outcome.unwrap_or_else(|| {
                    renewed
                        .next()
                        .unwrap_or_else(|| Err(LockError::Internal("no renew outcome".into())))
                })
            })
            .collect())
    }

    async fn downgrade(&self, object: &ObjectId, token: &LockToken) -> LockResult<Lease> {
        // Keeps the lease's expiry: the stored deadline already covers it.
        self.inner.downgrade(object, token).await
    }

    async fn validate(&self, object: &ObjectId, token: &LockToken) -> LockResult<Lease> {
        self.inner.validate(object, token).await
    }

    async fn inspect(&self, object: &ObjectId) -> LockResult<Option<LockInfo>> {
        self.inner.inspect(object).await
    }

    async fn list(&self, query: &ListQuery) -> LockResult<LockPage> {
        self.inner.list(query).await
    }

    async fn health(&self) -> LockResult<()> {
        self.inner.health().await
    }

    async fn close(&self, timeout: Duration) -> bool {
        self.inner.close(timeout).await
    }

    fn report_lease_ends(&self, sink: LeaseEndSink) -> bool {
        self.inner.report_lease_ends(sink)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(dir: &Path) -> StateRecord {
        let bytes = std::fs::read(dir.join(STATE_FILE_NAME)).expect("state file");
        serde_json::from_slice(&bytes).expect("valid state")
    }

    #[tokio::test]
    async fn a_fresh_data_dir_has_no_grace_and_no_fence_floor() {
        let dir = tempfile::tempdir().expect("temp dir");
        let state = StateFile::open(&dir.path().join("nested"))
            .await
            .expect("opens");
        assert_eq!(state.remaining_grace(), Duration::ZERO);
        assert_eq!(state.fence_floor(), Fence(1));
        assert!(
            state.path().exists(),
            "written at start to prove the dir is writable"
        );
    }

    #[tokio::test]
    async fn a_stored_future_deadline_means_grace_and_a_stored_fence_a_floor_above_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let record = StateRecord {
            version: 1,
            highest_fence: 500,
            grant_deadline_unix_ms: now_unix_ms() + 60_000,
        };
        write_atomically(&dir.path().join(STATE_FILE_NAME), &record).expect("write");
        let state = StateFile::open(dir.path()).await.expect("opens");
        assert!(state.remaining_grace() > Duration::from_secs(50));
        assert_eq!(state.fence_floor(), Fence(501));
    }

    #[tokio::test]
    async fn a_corrupt_or_unknown_state_file_stops_the_start() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join(STATE_FILE_NAME), b"{not json").expect("write");
        let err = StateFile::open(dir.path())
            .await
            .expect_err("corrupt refused");
        assert!(err.to_string().contains("corrupt"), "{err}");
        std::fs::write(
            dir.path().join(STATE_FILE_NAME),
            br#"{"version": 9, "highest_fence": 1, "grant_deadline_unix_ms": 1}"#,
        )
        .expect("write");
        assert!(StateFile::open(dir.path()).await.is_err());
    }

    #[tokio::test]
    async fn a_data_dir_open_in_one_process_cannot_be_opened_again_until_released() {
        let dir = tempfile::tempdir().expect("temp dir");
        let first = StateFile::open(dir.path()).await.expect("opens");
        let err = StateFile::open(dir.path())
            .await
            .expect_err("a second owner is refused");
        assert!(
            matches!(
                err,
                LockError::InvalidArgument {
                    field: "data_dir",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("in use"), "{err}");
        drop(first);
        StateFile::open(dir.path())
            .await
            .expect("free again once the first owner is gone");
    }

    /// A grant waits until a deadline covering it is on disk; one already covered writes
    /// nothing; the highest fence is flushed by the writer on its own.
    #[tokio::test]
    async fn covering_a_lease_persists_a_deadline_beyond_it_before_returning() {
        let dir = tempfile::tempdir().expect("temp dir");
        let state = StateFile::open(dir.path()).await.expect("opens");
        let shared = Arc::new(Shared::new(state.path.clone(), 0, 7));
        shared.highest_fence.store(7, Ordering::Release);
        let writer = tokio::spawn(write_loop(Arc::clone(&shared)));
        let needed = now_unix_ms() + 5_000;
        shared.cover(needed).await.expect("persisted");
        let on_disk = read(dir.path());
        assert!(on_disk.grant_deadline_unix_ms >= needed);
        // A lease ending well before the stored deadline is covered without a write.
        let requested = shared.requested.load(Ordering::Acquire);
        shared.cover(needed - 1_000).await.expect("covered");
        assert_eq!(shared.requested.load(Ordering::Acquire), requested);
        shared.highest_fence.store(9, Ordering::Release);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while read(dir.path()).highest_fence != 9 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "fence never flushed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(read(dir.path()).grant_deadline_unix_ms >= on_disk.grant_deadline_unix_ms);
        writer.abort();
    }

    /// Many grants needing a later deadline at once all wait for one write and all succeed.
    #[tokio::test]
    async fn concurrent_grants_share_writes_and_none_returns_before_its_deadline_is_stored() {
        let dir = tempfile::tempdir().expect("temp dir");
        let state = StateFile::open(dir.path()).await.expect("opens");
        let shared = Arc::new(Shared::new(state.path.clone(), 0, 1));
        let writer = tokio::spawn(write_loop(Arc::clone(&shared)));
        let base = now_unix_ms() + 10_000;
        let grants: Vec<_> = (0..50)
            .map(|i| {
                let shared = Arc::clone(&shared);
                let dir = dir.path().to_path_buf();
                tokio::spawn(async move {
                    let needed = base + i * 10;
                    shared.cover(needed).await.expect("persisted");
                    assert!(read(&dir).grant_deadline_unix_ms >= needed);
                })
            })
            .collect();
        for grant in grants {
            grant.await.expect("grant task");
        }
        writer.abort();
    }

    /// A batched renew moves the stored deadline only when it renews a holder's lease: the
    /// strangers' entries are refused in place and a batch of strangers only writes nothing.
    #[cfg(feature = "memory")]
    #[tokio::test]
    async fn a_batched_renew_moves_the_deadline_only_for_holders() {
        use lockcore::{OwnerId, TokenIssuer};
        let dir = tempfile::tempdir().expect("temp dir");
        let state = StateFile::open(dir.path()).await.expect("opens");
        let config = backend_memory::MemoryConfig::new(Limits::default())
            .with_fence_floor(state.fence_floor());
        let inner: Arc<dyn LockService> = Arc::new(backend_memory::MemoryLockService::new(
            backend_memory::MemoryStore::new(config),
            TokenIssuer::random(),
        ));
        let guard = RestartGuard::new(inner, state, Limits::default());
        let owner = OwnerId::new("holder").expect("valid");
        let (a, b) = (
            ObjectId::new("a").expect("valid"),
            ObjectId::new("b").expect("valid"),
        );
        let second = Duration::from_secs(1);
        let held = guard
            .acquire(&a, &owner, second, Duration::ZERO)
            .await
            .expect("granted");
        let gone = guard
            .acquire(&b, &owner, second, Duration::ZERO)
            .await
            .expect("granted");
        guard.release(&b, &gone.token).await.expect("released");
        let requested = || guard.shared.requested.load(Ordering::Acquire);
        let before = requested();

        let minute = Duration::from_secs(60);
        let strangers = guard
            .renew_many(&[(b.clone(), gone.token.clone())], minute)
            .await
            .expect("answered");
        assert!(matches!(strangers[0], Err(LockError::NotHeld { .. })));
        assert_eq!(requested(), before, "a stranger moved the stored deadline");

        let mixed = guard
            .renew_many(&[(b, gone.token), (a, held.token)], minute)
            .await
            .expect("answered");
        assert!(matches!(mixed[0], Err(LockError::NotHeld { .. })));
        let renewed = mixed[1].as_ref().expect("the holder's lease is renewed");
        assert_eq!(renewed.ttl, minute);
        assert!(
            requested() >= now_unix_ms() + 59_000,
            "the holder's renewal is covered"
        );
    }
}
