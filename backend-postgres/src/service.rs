//! [`PostgresStore`]: the [`LockStore`] on PostgreSQL, and [`PostgresLockService`], the
//! [`LockService`](lockcore::LockService) built on it.

use std::fmt;
use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lockcore::store::{
    Attempt, Attempted, Blocker, Claim, Granted, HolderRef, HolderState, StoreFeatures, Ticket,
    Verdict,
};
use lockcore::{
    async_trait, Conflict, ConflictCause, Fence, HolderInfo, Limits, ListQuery, LockDelayInfo,
    LockError, LockInfo, LockMode, LockPage, LockResult, LockScope, LockStore, Locks, ObjectId,
    OwnerId, ReclaimPolicy, Undo, WaitQueue,
};
use sqlx::postgres::{PgArguments, PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::Row as _;
use tokio::task::JoinHandle;

use crate::config::PostgresConfig;
use crate::conns::Connections;
use crate::error::{from_sqlx, timed_out, BACKEND};
use crate::sql;
use crate::tasks;

/// The embedded migrations (`backend-postgres/migrations`).
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

/// The [`LockService`](lockcore::LockService) on PostgreSQL: [`Locks`] over a [`PostgresStore`].
///
/// Build it with `PostgresLockService::new(PostgresStore::connect(config).await?, issuer)`;
/// reach the store's own helpers (such as [`PostgresStore::reap`]) through `service.store()`.
pub type PostgresLockService = Locks<PostgresStore>;

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

/// Locks kept as rows in PostgreSQL, shared by every lockd process using the same schema.
///
/// Each primitive is one statement (a call of one of lockd's SQL functions), so one round trip
/// and one transaction, whatever the number of objects; see the crate docs for the tables, the
/// fence scheme and how rows are reclaimed. Dropping it stops its LISTEN and reaper tasks.
pub struct PostgresStore {
    conns: Arc<Connections>,
    waits: Arc<WaitQueue>,
    limits: Limits,
    /// lockd's own deadline for one operation: waiting for a connection plus the statement.
    deadline: Duration,
    statement_timeout: Duration,
    schema: String,
    url: String,
    tasks: Vec<JoinHandle<()>>,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("url", &self.url)
            .field("schema", &self.schema)
            .field("idle_connections", &self.conns.idle_count())
            .field("waiting", &self.waits.waiting())
            .finish_non_exhaustive()
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl PostgresStore {
    /// Connects, runs the embedded migrations in the configured schema (unless turned off) and
    /// starts the LISTEN task that wakes waiting acquires, and the reaper.
    ///
    /// Fails with [`LockError::InvalidArgument`] for a configuration lockd cannot use and with
    /// [`LockError::Unavailable`] when the database cannot be reached, refuses the login, or
    /// the migrations cannot be applied.
    pub async fn connect(config: PostgresConfig) -> Result<Self, LockError> {
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
            conns,
            waits,
            limits: config.limits,
            deadline,
            statement_timeout: config.statement_timeout,
            schema: config.schema.clone(),
            url: config.redacted_url(),
            tasks: spawned,
        })
    }

    /// Deletes objects rows that nobody holds or waits for and whose last grant is older than
    /// `older_than` (with their expired holders and queue entries), returning how many went.
    ///
    /// The reaper task calls this every `reap_interval`; it is public for operators and tests.
    pub async fn reap(&self, older_than: Duration) -> LockResult<u64> {
        within(
            self.deadline,
            "reaping free rows",
            tasks::reap_once(&self.conns, older_than),
        )
        .await
    }

    /// The schema holding lockd's tables and functions.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    async fn fetch_one(&self, query: Query<'_>) -> LockResult<PgRow> {
        within(self.deadline, "a lockd statement", async {
            let mut conn = self.conns.get().await?;
            let row = query.fetch_one(conn.raw()?).await.map_err(from_sqlx)?;
            conn.keep();
            Ok(row)
        })
        .await
    }

    async fn fetch_all(&self, query: Query<'_>) -> LockResult<Vec<PgRow>> {
        within(self.deadline, "a lockd statement", async {
            let mut conn = self.conns.get().await?;
            let rows = query.fetch_all(conn.raw()?).await.map_err(from_sqlx)?;
            conn.keep();
            Ok(rows)
        })
        .await
    }

    async fn fetch_optional(&self, query: Query<'_>) -> LockResult<Option<PgRow>> {
        within(self.deadline, "a lockd statement", async {
            let mut conn = self.conns.get().await?;
            let row = query.fetch_optional(conn.raw()?).await.map_err(from_sqlx)?;
            conn.keep();
            Ok(row)
        })
        .await
    }
}

type Query<'q> = sqlx::query::Query<'q, sqlx::Postgres, PgArguments>;

/// The holders' columns as the release, renew and downgrade functions take them.
struct HolderArrays<'a> {
    objects: Vec<&'a str>,
    digests: Vec<&'a [u8]>,
    fences: Vec<i64>,
}

impl<'a> HolderArrays<'a> {
    fn of(holders: &'a [HolderRef]) -> Self {
        Self {
            objects: holders.iter().map(|h| h.object.as_str()).collect(),
            digests: holders.iter().map(|h| &h.digest.as_bytes()[..]).collect(),
            fences: holders.iter().map(|h| fence_param(h.fence)).collect(),
        }
    }
}

#[async_trait]
impl LockStore for PostgresStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn limits(&self) -> Limits {
        self.limits
    }

    /// Subtree scopes and lock-delay, decided in SQL (migration 6): subtree conflicts are
    /// found through index lookups of the ancestors and an index range under a subtree claim,
    /// and serialised across transactions by advisory locks on the ids of the tree.
    fn features(&self) -> StoreFeatures {
        StoreFeatures::ALL
    }

    fn reclaim_policy(&self) -> Option<ReclaimPolicy> {
        Some(reclaim_policy(self.statement_timeout))
    }

    /// Woken only by the LISTEN task, for this process's releases too: every waiter has queue
    /// rows from its first refusal on, and whatever frees an object with queue rows NOTIFYs
    /// (see migration 5), so a second, direct wake would only make each waiter try twice.
    fn waits(&self) -> &WaitQueue {
        &self.waits
    }

    async fn try_acquire(&self, attempt: Attempt<'_>) -> LockResult<Attempted> {
        let claims = attempt.claims;
        if claims.is_empty() {
            return Err(LockError::invalid_argument("objects", "must not be empty"));
        }
        let objects: Vec<&str> = claims.iter().map(|c| c.object.as_str()).collect();
        let modes: Vec<&str> = claims.iter().map(|c| c.mode.as_str()).collect();
        let scopes: Vec<&str> = claims.iter().map(|c| c.scope.as_str()).collect();
        let digests: Vec<&[u8]> = claims.iter().map(|c| &c.digest.as_bytes()[..]).collect();
        let (queue, ticket, keep_for) = match attempt.queueing {
            Some(queueing) => (
                true,
                queueing.ticket.map(ticket_param).transpose()?,
                millis(queueing.keep_for),
            ),
            None => (false, None, 0),
        };
        let rows = self
            .fetch_all(
                sqlx::query(sql::ACQUIRE)
                    .bind(attempt.owner.as_str())
                    .bind(objects)
                    .bind(modes)
                    .bind(scopes)
                    .bind(digests)
                    .bind(millis(attempt.ttl))
                    .bind(micros(attempt.lock_delay))
                    .bind(queue)
                    .bind(ticket)
                    .bind(keep_for),
            )
            .await?;
        attempted(claims, &rows)
    }

    async fn leave_queue(&self, ticket: Ticket, objects: &[ObjectId]) -> LockResult<()> {
        let names: Vec<&str> = objects.iter().map(ObjectId::as_str).collect();
        self.fetch_one(
            sqlx::query(sql::LEAVE_QUEUE)
                .bind(ticket_param(ticket)?)
                .bind(names),
        )
        .await?;
        Ok(())
    }

    async fn abandon(&self, claims: &[Claim]) -> LockResult<Undo> {
        let objects: Vec<&str> = claims.iter().map(|c| c.object.as_str()).collect();
        let digests: Vec<&[u8]> = claims.iter().map(|c| &c.digest.as_bytes()[..]).collect();
        let row = self
            .fetch_one(sqlx::query(sql::ABANDON).bind(objects).bind(digests))
            .await?;
        let status: String = get(&row, 0)?;
        match status.as_str() {
            "took_back" => Ok(Undo::TookBack),
            "claimed" => Ok(Undo::Claimed),
            "absent" => Ok(Undo::Absent),
            other => Err(LockError::Internal(format!(
                "lockd_abandon answered {other:?}"
            ))),
        }
    }

    async fn release(&self, holders: &[HolderRef]) -> LockResult<Vec<Verdict<()>>> {
        let arrays = HolderArrays::of(holders);
        let rows = self
            .fetch_all(
                sqlx::query(sql::RELEASE)
                    .bind(arrays.objects)
                    .bind(arrays.digests)
                    .bind(arrays.fences),
            )
            .await?;
        verdicts(holders.len(), &rows, |_| Ok(()))
    }

    async fn renew(
        &self,
        holders: &[HolderRef],
        ttl: Duration,
    ) -> LockResult<Vec<Verdict<HolderState>>> {
        let arrays = HolderArrays::of(holders);
        let rows = self
            .fetch_all(
                sqlx::query(sql::RENEW)
                    .bind(arrays.objects)
                    .bind(arrays.digests)
                    .bind(arrays.fences)
                    .bind(millis(ttl)),
            )
            .await?;
        verdicts(holders.len(), &rows, |row| {
            holder_state(get(row, 2)?, get(row, 3)?, get(row, 4)?)
        })
    }

    async fn validate(&self, holder: &HolderRef) -> LockResult<Verdict<HolderState>> {
        let row = self
            .fetch_optional(
                sqlx::query(sql::VALIDATE)
                    .bind(holder.object.as_str())
                    .bind(&holder.digest.as_bytes()[..])
                    .bind(fence_param(holder.fence)),
            )
            .await?;
        let Some(row) = row else {
            return Ok(Verdict::NotHeld);
        };
        if !get::<bool>(&row, 3)? {
            return Ok(Verdict::Mismatch);
        }
        Ok(Verdict::Done(holder_state(
            get(&row, 0)?,
            get(&row, 1)?,
            get(&row, 2)?,
        )?))
    }

    async fn downgrade(&self, holder: &HolderRef) -> LockResult<Verdict<HolderState>> {
        let row = self
            .fetch_one(
                sqlx::query(sql::DOWNGRADE)
                    .bind(holder.object.as_str())
                    .bind(&holder.digest.as_bytes()[..])
                    .bind(fence_param(holder.fence)),
            )
            .await?;
        let status: String = get(&row, 0)?;
        verdict(&status, || {
            holder_state(get(&row, 1)?, get(&row, 2)?, get(&row, 3)?)
        })
    }

    async fn inspect(&self, object: &ObjectId) -> LockResult<Option<LockInfo>> {
        let rows = self
            .fetch_all(sqlx::query(sql::INSPECT).bind(object.as_str()))
            .await?;
        let holders = rows
            .iter()
            .map(HolderRow::from_row)
            .collect::<LockResult<Vec<_>>>()?;
        Ok(lock_info(object.clone(), holders, true))
    }

    async fn list(&self, query: &ListQuery) -> LockResult<LockPage> {
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
        let rows = self.fetch_all(statement).await?;
        // Rows come by object, then fence: one group per object, one more than the page holds
        // when there is a next page.
        let mut groups: Vec<Vec<HolderRow>> = Vec::new();
        for row in &rows {
            let holder = HolderRow::from_row(row)?;
            match groups.last_mut() {
                Some(group) if group.first().is_some_and(|g| g.object == holder.object) => {
                    group.push(holder)
                }
                _ => groups.push(vec![holder]),
            }
        }
        let more = groups.len() > query.limit;
        let mut locks = Vec::with_capacity(groups.len().min(query.limit));
        for group in groups.into_iter().take(query.limit) {
            locks.extend(group_info(group)?);
        }
        let next = if more {
            locks.last().map(|l| l.object.as_str().to_owned())
        } else {
            None
        };
        Ok(LockPage { locks, next })
    }

    async fn health(&self) -> LockResult<()> {
        within(self.deadline, "health check", async {
            let mut conn = self.conns.get().await?;
            sqlx::query("SELECT 1")
                .execute(conn.raw()?)
                .await
                .map_err(from_sqlx)?;
            conn.keep();
            Ok(())
        })
        .await
    }
}

/// The rows of `lockd_acquire` as the store's answer (see [`sql::ACQUIRE`] for their shape).
fn attempted(claims: &[Claim], rows: &[PgRow]) -> LockResult<Attempted> {
    let Some(first) = rows.first() else {
        return Err(LockError::Internal(
            "postgres: lockd_acquire answered no row".into(),
        ));
    };
    let claim_of = |row: &PgRow| -> LockResult<&Claim> {
        let index: i32 = get(row, 2)?;
        usize::try_from(index)
            .ok()
            .and_then(|i| i.checked_sub(1))
            .and_then(|i| claims.get(i))
            .ok_or_else(|| LockError::Internal(format!("postgres: claim index {index}")))
    };
    if get::<String>(first, 0)? == "granted" {
        if rows.len() != claims.len() {
            return Err(LockError::Internal(format!(
                "postgres: {} of {} claims granted",
                rows.len(),
                claims.len()
            )));
        }
        let granted = rows
            .iter()
            .map(|row| {
                Ok(Granted {
                    fence: fence_from(get(row, 4)?)?,
                    mode: stored_mode(&get::<String>(row, 5)?)?,
                    ttl: micros_to_duration(get(row, 7)?),
                    replayed: get(row, 8)?,
                })
            })
            .collect::<LockResult<Vec<_>>>()?;
        return Ok(Attempted::Granted(granted));
    }
    let ticket = get::<Option<i64>>(first, 1)?
        .map(|t| {
            u64::try_from(t)
                .map(Ticket)
                .map_err(|_| LockError::Internal("a ticket is negative".into()))
        })
        .transpose()?;
    let mut conflicts = Vec::new();
    let mut blockers = Vec::new();
    for row in rows {
        let kind: String = get(row, 0)?;
        let cause = match kind.as_str() {
            "held" => ConflictCause::Held,
            "queued" => ConflictCause::Queued,
            "lock_delay" => ConflictCause::LockDelay,
            "blocker" => {
                claim_of(row)?;
                blockers.push(Blocker {
                    object: stored_object(&get::<String>(row, 3)?)?,
                    owner: stored_owner(&get::<String>(row, 6)?)?,
                    fence: fence_from(get(row, 4)?)?,
                    wanted: stored_mode(&get::<String>(row, 5)?)?,
                });
                continue;
            }
            other => {
                return Err(LockError::Internal(format!(
                    "postgres: lockd_acquire answered {other:?} in a refusal"
                )))
            }
        };
        conflicts.push(Conflict {
            object: claim_of(row)?.object.clone(),
            holder: stored_owner(&get::<String>(row, 6)?)?,
            retry_after: micros_to_duration(get(row, 7)?),
            cause,
        });
    }
    if conflicts.is_empty() {
        return Err(LockError::Internal(
            "postgres: lockd_acquire refused without a conflict".into(),
        ));
    }
    Ok(Attempted::Refused {
        conflicts,
        ticket,
        blockers,
    })
}

/// One verdict per row of a release or renew, checking the rows come one per holder, in order.
fn verdicts<T>(
    expected: usize,
    rows: &[PgRow],
    done: impl Fn(&PgRow) -> LockResult<T>,
) -> LockResult<Vec<Verdict<T>>> {
    if rows.len() != expected {
        return Err(LockError::Internal(format!(
            "postgres: {} verdicts for {expected} holders",
            rows.len()
        )));
    }
    rows.iter()
        .enumerate()
        .map(|(i, row)| {
            let index: i32 = get(row, 0)?;
            if usize::try_from(index).ok() != Some(i + 1) {
                return Err(LockError::Internal(format!(
                    "postgres: verdict {index} where {} was due",
                    i + 1
                )));
            }
            let status: String = get(row, 1)?;
            verdict(&status, || done(row))
        })
        .collect()
}

fn verdict<T>(status: &str, done: impl FnOnce() -> LockResult<T>) -> LockResult<Verdict<T>> {
    match status {
        "done" => done().map(Verdict::Done),
        "not_held" => Ok(Verdict::NotHeld),
        "mismatch" => Ok(Verdict::Mismatch),
        other => Err(LockError::Internal(format!(
            "postgres: unexpected verdict {other:?}"
        ))),
    }
}

fn holder_state(owner: String, mode: String, remaining_us: i64) -> LockResult<HolderState> {
    Ok(HolderState {
        owner: stored_owner(&owner)?,
        mode: stored_mode(&mode)?,
        ttl: micros_to_duration(remaining_us),
    })
}

/// A holder row as [`sql::INSPECT`] and the list statements return it: a live holder, or an
/// expired one whose lock-delay is in force.
struct HolderRow {
    object: String,
    mode: LockMode,
    info: HolderInfo,
    live: bool,
    /// When its lock-delay ends (its expiry if it has none).
    delay_until: SystemTime,
    /// Live queue entries of its object.
    waiters: u32,
}

impl HolderRow {
    fn from_row(row: &PgRow) -> LockResult<Self> {
        Ok(Self {
            mode: stored_mode(&get::<String>(row, 1)?)?,
            info: HolderInfo {
                owner: stored_owner(&get::<String>(row, 0)?)?,
                fence: fence_from(get(row, 2)?)?,
                acquired_at: micros_to_time(get(row, 3)?),
                expires_at: micros_to_time(get(row, 4)?),
                ttl: micros_to_duration(get(row, 5)?),
                scope: stored_scope(&get::<String>(row, 7)?)?,
            },
            object: get(row, 6)?,
            live: get(row, 8)?,
            delay_until: micros_to_time(get(row, 9)?),
            waiters: u32::try_from(get::<i64>(row, 10)?).unwrap_or(u32::MAX),
        })
    }

    /// The lock-delay of this expired holder (`info.ttl` holds the time left on it).
    fn delay(&self) -> LockDelayInfo {
        LockDelayInfo {
            owner: self.info.owner.clone(),
            fence: self.info.fence,
            mode: self.mode,
            scope: self.info.scope,
            until: self.delay_until,
            remaining: self.info.ttl,
        }
    }
}

/// The lock of one object from its holder rows: its live holders (exclusive if any is), the
/// lock-delay in force that ends last, and its waiters. Without live holders, the delay alone
/// when `delay_alone` (inspect), else nothing (list shows held objects only).
fn lock_info(object: ObjectId, rows: Vec<HolderRow>, delay_alone: bool) -> Option<LockInfo> {
    let waiters = rows.first().map_or(0, |row| row.waiters);
    let delayed = rows
        .iter()
        .filter(|row| !row.live)
        .max_by_key(|row| row.delay_until)
        .map(|row| (row.delay(), row.info.expires_at));
    let mode = if rows
        .iter()
        .any(|row| row.live && row.mode == LockMode::Exclusive)
    {
        LockMode::Exclusive
    } else {
        LockMode::Shared
    };
    let holders: Vec<HolderInfo> = rows
        .into_iter()
        .filter(|row| row.live)
        .map(|row| row.info)
        .collect();
    let info = match (
        LockInfo::from_holders(object.clone(), mode, holders),
        delayed,
    ) {
        (Some(info), delayed) => info.with_delay(delayed.map(|(delay, _)| delay)),
        (None, Some((delay, expired_at))) if delay_alone => {
            LockInfo::delayed(object, delay, expired_at)
        }
        (None, _) => return None,
    };
    Some(info.with_waiters(waiters))
}

fn group_info(group: Vec<HolderRow>) -> LockResult<Option<LockInfo>> {
    let Some(first) = group.first() else {
        return Ok(None);
    };
    let object = stored_object(&first.object)?;
    Ok(lock_info(object, group, false))
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
        // The tree keys of migration 6 rely on each statement seeing what was committed before
        // it (READ COMMITTED), whatever the database's default; lockd_lock_tree checks it.
        // (A space in an option value is escaped with a backslash.)
        (
            "default_transaction_isolation",
            "read\\ committed".to_owned(),
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

fn stored_mode(mode: &str) -> LockResult<LockMode> {
    mode.parse()
        .map_err(|_| LockError::Internal(format!("a stored mode is invalid: {mode:?}")))
}

fn stored_scope(scope: &str) -> LockResult<LockScope> {
    scope
        .parse()
        .map_err(|_| LockError::Internal(format!("a stored scope is invalid: {scope:?}")))
}

fn stored_object(object: &str) -> LockResult<ObjectId> {
    ObjectId::new(object).map_err(|_| LockError::Internal("a stored object id is invalid".into()))
}

/// A ticket as a bigint (tickets come from a PostgreSQL sequence, so they always fit).
fn ticket_param(ticket: Ticket) -> LockResult<i64> {
    i64::try_from(ticket.0).map_err(|_| LockError::invalid_argument("ticket", "is not one of ours"))
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

fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
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
