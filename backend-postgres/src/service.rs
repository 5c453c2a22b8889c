//! [`PostgresLockService`]: the [`LockService`] on PostgreSQL.

use std::fmt;
use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lockcore::reclaim::UndoFuture;
use lockcore::{
    async_trait, audit, AcquireRequest, Fence, Lease, Limits, ListQuery, LockError, LockInfo,
    LockPage, LockResult, LockToken, ObjectId, OwnerId, ReclaimPolicy, Reclaimer, TokenDigest,
    TokenIssuer, Undo, WaitQueue,
};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::Row as _;
use tokio::task::JoinHandle;

use crate::config::PostgresConfig;
use crate::conns::Connections;
use crate::error::{from_sqlx, timed_out, BACKEND};
use crate::sql;
use crate::tasks;

/// The embedded migrations (`backend-postgres/migrations`).
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

/// How a lock whose acquire reply was lost is taken back: first after 100 ms, then with backoff
/// up to 2 s, for up to 5 min while the database does not answer (at most the lease's TTL).
/// The acquire may still be running on the connection that was given up, so finding no such
/// grant is retried until its server-side `statement_timeout` has surely ended it, plus 2 s.
fn reclaim_policy(statement_timeout: Duration) -> ReclaimPolicy {
    ReclaimPolicy {
        first_delay: Duration::from_millis(100),
        max_delay: Duration::from_secs(2),
        window: Duration::from_secs(5 * 60),
        absent_window: statement_timeout + Duration::from_secs(2),
    }
}

/// Added to `max_wait` when a blocking acquire asks for releases to be announced.
const WANTED_MARGIN: Duration = Duration::from_secs(60);

/// Locks kept as rows in PostgreSQL, shared by every lockd process using the same schema.
///
/// Each operation is one statement, so one round trip and one transaction; see the crate docs
/// for the table, the fence scheme and how rows are reclaimed. Cheap to share behind an `Arc`;
/// dropping it stops its LISTEN and reaper tasks.
pub struct PostgresLockService {
    inner: Arc<Inner>,
    tasks: Vec<JoinHandle<()>>,
}

struct Inner {
    conns: Arc<Connections>,
    issuer: TokenIssuer,
    /// Takes back locks whose acquire reply was lost.
    reclaimer: Reclaimer,
    limits: Limits,
    waits: Arc<WaitQueue>,
    /// lockd's own deadline for one operation: waiting for a connection plus the statement.
    deadline: Duration,
    schema: String,
    url: String,
}

impl fmt::Debug for PostgresLockService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresLockService")
            .field("url", &self.inner.url)
            .field("schema", &self.inner.schema)
            .field("idle_connections", &self.inner.conns.idle_count())
            .field("waiting", &self.inner.waits.waiting())
            .finish_non_exhaustive()
    }
}

impl Drop for PostgresLockService {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl PostgresLockService {
    /// Connects, runs the embedded migrations in the configured schema (unless turned off) and
    /// starts the LISTEN task that wakes blocked acquires.
    ///
    /// Fails with [`LockError::InvalidArgument`] for a configuration lockd cannot use and with
    /// [`LockError::Unavailable`] when the database cannot be reached, refuses the login, or
    /// the migrations cannot be applied.
    pub async fn connect(config: PostgresConfig, issuer: TokenIssuer) -> Result<Self, LockError> {
        config.check()?;
        let options = connect_options(&config)?;
        let deadline = config.connect_timeout + config.statement_timeout;
        let conns = Arc::new(Connections::new(
            options.clone(),
            config.max_connections,
            config.connect_timeout,
        ));
        // Prove the database answers (and the login works) before going further; the
        // migrations run on this first connection.
        within(deadline * 4, "connecting to postgres", async {
            let mut conn = conns.get().await.map_err(unavailable)?;
            sqlx::query("SELECT 1")
                .execute(conn.raw()?)
                .await
                .map_err(connect_error)?;
            if config.run_migrations {
                migrate(conn.raw()?, &config.schema).await?;
            }
            conn.keep();
            Ok(())
        })
        .await?;

        let waits = Arc::new(WaitQueue::new());
        // LISTEN holds its connection for good, so it gets a pool of its own (room for two: a
        // replacement may connect while a failed connection is still being cleaned up).
        let listen_pool = PgPoolOptions::new()
            .max_connections(2)
            .min_connections(0)
            .acquire_timeout(config.connect_timeout)
            .connect_lazy_with(options);
        let listener = within(
            deadline,
            "starting LISTEN",
            tasks::start_listener(&listen_pool, &config.channel()),
        )
        .await?;
        let mut spawned = vec![tokio::spawn(tasks::listen(
            listen_pool,
            listener,
            config.channel(),
            waits.clone(),
        ))];
        if !config.reap_interval.is_zero() {
            spawned.push(tokio::spawn(tasks::reap(
                conns.clone(),
                config.reap_interval,
                config.reap_after,
            )));
        }

        Ok(Self {
            inner: Arc::new(Inner {
                reclaimer: Reclaimer::new(BACKEND, reclaim_policy(config.statement_timeout)),
                conns,
                issuer,
                limits: config.limits,
                waits,
                deadline,
                schema: config.schema.clone(),
                url: config.redacted_url(),
            }),
            tasks: spawned,
        })
    }

    /// Deletes rows that have been free for longer than `older_than`, returning how many went.
    ///
    /// The reaper task calls this every `reap_interval`; it is public for operators and tests.
    pub async fn reap(&self, older_than: Duration) -> LockResult<u64> {
        within(
            self.inner.deadline,
            "reaping free rows",
            tasks::reap_once(&self.inner.conns, older_than),
        )
        .await
    }
}

impl Inner {
    /// One acquire attempt: one statement. `wanted` is how long releases of the object must be
    /// announced by NOTIFY because waiters may be queued (zero for a non-blocking acquire).
    ///
    /// A refused blocking attempt always marks the object; a granted one only when other
    /// acquires of this process are waiting (they will rely on the release being announced).
    /// If one queued while the statement was in flight, a second statement marks it then.
    ///
    /// A retry of a granted request (same request id) is answered with that grant.
    async fn try_acquire(&self, request: &AcquireRequest, wanted: Duration) -> LockResult<Lease> {
        let (object, owner, ttl) = (&request.object, &request.owner, request.ttl);
        let blocking = !wanted.is_zero();
        // This attempt's own ticket counts as one waiter.
        let mark_granted = blocking && self.waits.waiting() > 1;
        let pending = self.issuer.prepare_for(request);
        let digest = pending.digest();
        // The statement may commit a grant nobody gets the token for: when this attempt is
        // dropped or cut off by the deadline, the guard takes it back.
        let guard = self
            .reclaimer
            .guard(object, ttl, self.undo_acquire(object, digest));
        let row = self
            .fetch_one(
                sqlx::query(sql::ACQUIRE)
                    .bind(object.as_str())
                    .bind(owner.as_str())
                    .bind(&digest.as_bytes()[..])
                    .bind(millis(ttl))
                    .bind(millis(wanted))
                    .bind(mark_granted),
            )
            .await;
        let row = match row {
            Ok(row) => {
                guard.disarm();
                row
            }
            Err(e @ LockError::Unavailable { .. }) => {
                drop(guard);
                return Err(e);
            }
            Err(e) => {
                guard.disarm();
                return Err(e);
            }
        };
        let granted: bool = get(&row, 0)?;
        if granted && get::<bool>(&row, 4)? {
            let fence = fence_from(get(&row, 1)?)?;
            return Ok(Lease {
                object: object.clone(),
                owner: owner.clone(),
                token: self.issuer.seal(pending, object, fence),
                fence,
                ttl: micros_to_duration(get(&row, 3)?),
            });
        }
        if granted {
            let fence = fence_from(get(&row, 1)?)?;
            if blocking && !mark_granted && self.waits.waiting() > 1 {
                // Someone queued behind us meanwhile. A failure here costs that waiter only
                // promptness (its own deadline still ends its wait), so the grant stands.
                let marked = self
                    .fetch_one(
                        sqlx::query(sql::MARK_WANTED)
                            .bind(object.as_str())
                            .bind(millis(wanted)),
                    )
                    .await;
                if let Err(error) = marked {
                    tracing::warn!(target: "lockd::postgres", %error, object = %object,
                        "could not mark a contended object as wanted");
                }
            }
            let token = self.issuer.seal(pending, object, fence);
            Ok(Lease {
                object: object.clone(),
                owner: owner.clone(),
                token,
                fence,
                ttl,
            })
        } else {
            let holder: String = get(&row, 2)?;
            let remaining: i64 = get(&row, 3)?;
            Err(LockError::Locked {
                object: object.clone(),
                holder: stored_owner(&holder)?,
                retry_after: micros_to_duration(remaining),
            })
        }
    }

    /// The take-back of an acquire whose outcome is unknown: frees the object if (and only if)
    /// it holds `digest` and no retry claimed it.
    fn undo_acquire(
        &self,
        object: &ObjectId,
        digest: TokenDigest,
    ) -> impl FnMut() -> UndoFuture + Send {
        let conns = self.conns.clone();
        let deadline = self.deadline;
        let object = object.clone();
        move || -> UndoFuture {
            let (conns, object) = (conns.clone(), object.clone());
            Box::pin(async move {
                let status: String = within(deadline, "taking back a lost grant", async {
                    let mut conn = conns.get().await?;
                    let row = sqlx::query(sql::ABANDON)
                        .bind(object.as_str())
                        .bind(&digest.as_bytes()[..])
                        .fetch_one(conn.raw()?)
                        .await
                        .map_err(from_sqlx)?;
                    conn.keep();
                    get(&row, 0)
                })
                .await?;
                match status.as_str() {
                    "took_back" => Ok(Undo::TookBack),
                    "claimed" => Ok(Undo::Claimed),
                    "absent" => Ok(Undo::Absent),
                    other => Err(LockError::Internal(format!(
                        "lockd_abandon answered {other:?}"
                    ))),
                }
            })
        }
    }

    async fn fetch_one<'q>(
        &self,
        query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> LockResult<PgRow> {
        within(self.deadline, "a lockd statement", async {
            let mut conn = self.conns.get().await?;
            let row = query.fetch_one(conn.raw()?).await.map_err(from_sqlx)?;
            conn.keep();
            Ok(row)
        })
        .await
    }

    async fn fetch_optional<'q>(
        &self,
        query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> LockResult<Option<PgRow>> {
        within(self.deadline, "a lockd statement", async {
            let mut conn = self.conns.get().await?;
            let row = query.fetch_optional(conn.raw()?).await.map_err(from_sqlx)?;
            conn.keep();
            Ok(row)
        })
        .await
    }
}

#[async_trait]
impl lockcore::LockService for PostgresLockService {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn acquire_with(&self, request: &AcquireRequest) -> LockResult<Lease> {
        let inner = &self.inner;
        let wait = request.wait;
        inner.limits.check_acquire(request.ttl, wait)?;
        // A blocking attempt asks for releases to be announced for as long as any waiter queued
        // behind it in this process may wait: at most `max_wait` from when it queued, plus a
        // margin for an attempt already in flight when it queued (see migration 2).
        let wanted = if wait.is_zero() {
            Duration::ZERO
        } else {
            inner.limits.max_wait + WANTED_MARGIN
        };
        inner
            .waits
            .acquire(&request.object, wait, || inner.try_acquire(request, wanted))
            .await
    }

    async fn release(&self, object: &ObjectId, token: &LockToken) -> LockResult<Fence> {
        audit::check_token(&self.inner.issuer, "release", object, token)?;
        let row = self
            .inner
            .fetch_one(
                sqlx::query(sql::RELEASE)
                    .bind(object.as_str())
                    .bind(&token.digest().as_bytes()[..])
                    .bind(fence_param(token.fence())),
            )
            .await?;
        let status: String = get(&row, 0)?;
        match refusal("release", object, token, &status, "released")? {
            None => {
                // Waiters in this process need not wait for the NOTIFY round trip.
                self.inner.waits.wake(object);
                fence_from(get(&row, 1)?)
            }
            Some(refused) => Err(refused),
        }
    }

    async fn renew(
        &self,
        object: &ObjectId,
        token: &LockToken,
        ttl: Duration,
    ) -> LockResult<Lease> {
        self.inner.limits.check_ttl(ttl)?;
        audit::check_token(&self.inner.issuer, "renew", object, token)?;
        let row = self
            .inner
            .fetch_one(
                sqlx::query(sql::RENEW)
                    .bind(object.as_str())
                    .bind(&token.digest().as_bytes()[..])
                    .bind(fence_param(token.fence()))
                    .bind(millis(ttl)),
            )
            .await?;
        let status: String = get(&row, 0)?;
        match refusal("renew", object, token, &status, "renewed")? {
            None => Ok(Lease {
                object: object.clone(),
                owner: stored_owner(&get::<String>(&row, 1)?)?,
                token: token.clone(),
                fence: fence_from(get(&row, 2)?)?,
                ttl,
            }),
            Some(refused) => Err(refused),
        }
    }

    async fn validate(&self, object: &ObjectId, token: &LockToken) -> LockResult<Lease> {
        self.inner.issuer.check(object, token)?;
        let row = self
            .inner
            .fetch_optional(sqlx::query(sql::CURRENT).bind(object.as_str()))
            .await?;
        let Some(row) = row else {
            return Err(LockError::NotHeld {
                object: object.clone(),
            });
        };
        let current = CurrentRow::from_row(&row)?;
        if current.digest.ct_eq(&token.digest()) && current.fence == token.fence() {
            Ok(Lease {
                object: object.clone(),
                owner: current.owner,
                token: token.clone(),
                fence: current.fence,
                ttl: current.remaining,
            })
        } else {
            Err(LockError::TokenMismatch {
                object: object.clone(),
            })
        }
    }

    async fn inspect(&self, object: &ObjectId) -> LockResult<Option<LockInfo>> {
        let row = self
            .inner
            .fetch_optional(sqlx::query(sql::CURRENT).bind(object.as_str()))
            .await?;
        row.map(|row| CurrentRow::from_row(&row).and_then(|c| c.info(object.clone())))
            .transpose()
    }

    async fn list(&self, query: &ListQuery) -> LockResult<LockPage> {
        query.check()?;
        let after = query.after.as_deref().unwrap_or("");
        // Cursors are object ids; anything else (PostgreSQL text cannot even hold NUL) is bogus.
        if after.chars().any(char::is_control) {
            return Err(LockError::invalid_argument(
                "after",
                "is not a cursor this backend returned",
            ));
        }
        let limit = i64::try_from(query.limit)
            .unwrap_or(i64::MAX)
            .saturating_add(1);
        let statement = match prefix_successor(&query.prefix) {
            Some(upper) => sqlx::query(sql::LIST_BOUNDED)
                .bind(query.prefix.as_str())
                .bind(after)
                .bind(limit)
                .bind(upper),
            None => sqlx::query(sql::LIST_UNBOUNDED)
                .bind(query.prefix.as_str())
                .bind(after)
                .bind(limit),
        };
        let rows = within(self.inner.deadline, "listing locks", async {
            let mut conn = self.inner.conns.get().await?;
            let rows = statement.fetch_all(conn.raw()?).await.map_err(from_sqlx)?;
            conn.keep();
            Ok(rows)
        })
        .await?;
        let more = rows.len() > query.limit;
        let mut locks = Vec::with_capacity(rows.len().min(query.limit));
        for row in rows.iter().take(query.limit) {
            let object: String = get(row, 6)?;
            let object = ObjectId::new(&object)
                .map_err(|_| LockError::Internal("a stored object id is invalid".into()))?;
            locks.push(CurrentRow::from_row(row)?.info(object)?);
        }
        let next = if more {
            locks.last().map(|l| l.object.as_str().to_owned())
        } else {
            None
        };
        Ok(LockPage { locks, next })
    }

    async fn health(&self) -> LockResult<()> {
        within(self.inner.deadline, "health check", async {
            let mut conn = self.inner.conns.get().await?;
            sqlx::query("SELECT 1")
                .execute(conn.raw()?)
                .await
                .map_err(from_sqlx)?;
            conn.keep();
            Ok(())
        })
        .await
    }

    async fn close(&self, timeout: Duration) -> bool {
        self.inner.reclaimer.drain(timeout).await
    }
}

/// The live lock row as [`sql::CURRENT`] and the list statements return it.
struct CurrentRow {
    owner: OwnerId,
    digest: TokenDigest,
    fence: Fence,
    acquired_at: SystemTime,
    expires_at: SystemTime,
    remaining: Duration,
}

impl CurrentRow {
    fn from_row(row: &PgRow) -> LockResult<Self> {
        let digest: Vec<u8> = get(row, 1)?;
        Ok(Self {
            owner: stored_owner(&get::<String>(row, 0)?)?,
            digest: TokenDigest::from_bytes(&digest)?,
            fence: fence_from(get(row, 2)?)?,
            acquired_at: micros_to_time(get(row, 3)?),
            expires_at: micros_to_time(get(row, 4)?),
            remaining: micros_to_duration(get(row, 5)?),
        })
    }

    fn info(self, object: ObjectId) -> LockResult<LockInfo> {
        Ok(LockInfo {
            object,
            owner: self.owner,
            fence: self.fence,
            acquired_at: self.acquired_at,
            expires_at: self.expires_at,
            ttl: self.remaining,
        })
    }
}

/// Turns a release/renew status into `None` (done) or the refusal, logging refusals.
fn refusal(
    operation: &'static str,
    object: &ObjectId,
    token: &LockToken,
    status: &str,
    done: &str,
) -> LockResult<Option<LockError>> {
    let refused = match status {
        s if s == done => return Ok(None),
        "not_held" => LockError::NotHeld {
            object: object.clone(),
        },
        "mismatch" => LockError::TokenMismatch {
            object: object.clone(),
        },
        other => {
            return Err(LockError::Internal(format!(
                "postgres: unexpected {operation} status {other:?}"
            )))
        }
    };
    audit::log_refusal(operation, object, token, &refused);
    Ok(Some(refused))
}

/// Runs `future` under lockd's own deadline, so an unreachable server cannot hang a caller.
pub(crate) async fn within<T>(
    deadline: Duration,
    what: &str,
    future: impl Future<Output = LockResult<T>>,
) -> LockResult<T> {
    tokio::time::timeout(deadline, future)
        .await
        .unwrap_or_else(|_| Err(timed_out(what)))
}

fn connect_options(config: &PostgresConfig) -> LockResult<PgConnectOptions> {
    let options = PgConnectOptions::from_str(&config.url).map_err(|e| {
        LockError::invalid_argument("url", format!("is not a valid PostgreSQL URL: {e}"))
    })?;
    Ok(options.application_name(&config.application_name).options([
        ("search_path", config.schema.clone()),
        (
            "statement_timeout",
            config.statement_timeout.as_millis().to_string(),
        ),
    ]))
}

/// While connecting, every failure (refused, bad login, missing database) means "cannot serve".
fn unavailable(error: LockError) -> LockError {
    match error {
        LockError::Internal(cause) => LockError::unavailable(BACKEND, cause),
        other => other,
    }
}

fn connect_error(error: sqlx::Error) -> LockError {
    unavailable(from_sqlx(error))
}

async fn migrate(conn: &mut sqlx::PgConnection, schema: &str) -> LockResult<()> {
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
            .bind(schema)
            .fetch_one(&mut *conn)
            .await
            .map_err(connect_error)?;
    if !exists {
        // Serialise concurrent creators: two plain CREATE SCHEMA IF NOT EXISTS can still race.
        // The schema name was checked to be [a-z0-9_] only, so quoting it is enough.
        sqlx::raw_sql(&format!(
            "SELECT pg_advisory_xact_lock(hashtext('lockd.create_schema')); \
             CREATE SCHEMA IF NOT EXISTS \"{schema}\""
        ))
        .execute(&mut *conn)
        .await
        .map_err(connect_error)?;
    }
    MIGRATOR.run(conn).await.map_err(|e| match e {
        sqlx::migrate::MigrateError::Execute(e) => connect_error(e),
        other => LockError::unavailable(BACKEND, format!("lockd's migrations: {other}")),
    })
}

fn get<'r, T>(row: &'r PgRow, index: usize) -> LockResult<T>
where
    T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    row.try_get(index)
        .map_err(|e| LockError::Internal(format!("postgres: unexpected row shape: {e}")))
}

fn stored_owner(owner: &str) -> LockResult<OwnerId> {
    OwnerId::new(owner).map_err(|_| LockError::Internal("a stored owner id is invalid".into()))
}

fn fence_from(value: i64) -> LockResult<Fence> {
    u64::try_from(value)
        .map(Fence)
        .map_err(|_| LockError::Internal("a stored fence is negative".into()))
}

/// A token's fence as a bigint; one above `i64::MAX` can match no row, so -1 stands in for it.
fn fence_param(fence: Fence) -> i64 {
    i64::try_from(fence.get()).unwrap_or(-1)
}

fn millis(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)
}

fn micros_to_duration(micros: i64) -> Duration {
    Duration::from_micros(u64::try_from(micros).unwrap_or(0))
}

fn micros_to_time(micros: i64) -> SystemTime {
    UNIX_EPOCH + micros_to_duration(micros)
}

/// The smallest string above every string starting with `prefix` (code-point order, which is
/// PostgreSQL's `"C"` collation on UTF-8), or `None` when no such bound exists.
pub(crate) fn prefix_successor(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = (u32::from(last) + 1..=u32::from(char::MAX)).find_map(char::from_u32);
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_successor_bounds_exactly_the_strings_with_the_prefix() {
        assert_eq!(prefix_successor(""), None);
        assert_eq!(prefix_successor("ab").as_deref(), Some("ac"));
        assert_eq!(prefix_successor("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(prefix_successor("\u{D7FF}").as_deref(), Some("\u{E000}"));
        assert_eq!(prefix_successor("\u{10FFFF}"), None);
        let upper = prefix_successor("dir/").expect("bounded");
        for inside in ["dir/", "dir/a", "dir/\u{10FFFF}x"] {
            assert!(inside >= "dir/" && inside < upper.as_str(), "{inside}");
        }
        for outside in ["dir", "dir0", "dis", "e"] {
            assert!(
                !(outside >= "dir/" && outside < upper.as_str()),
                "{outside}"
            );
        }
    }

    #[test]
    fn fences_beyond_bigint_match_nothing() {
        assert_eq!(fence_param(Fence(7)), 7);
        assert_eq!(fence_param(Fence(u64::MAX)), -1);
        assert!(fence_from(-1).is_err());
    }
}
