//! A minimal connection pool that costs nothing per operation.
//!
//! sqlx's `Pool` sends an empty round trip (a `Sync`, its liveness "ping") every time a
//! connection goes back to the pool, and optionally another before handing one out. lockd's
//! promise is one round trip per operation, so operations use this pool instead: a bounded set
//! of connections, handed out last-in first-out. A connection goes back only after its
//! statement succeeded; after any error, or when the operation was cancelled mid-statement (a
//! timeout), it is dropped, which closes it, and the next operation opens a fresh one. After a
//! database restart each stale connection therefore fails exactly one operation as unavailable,
//! and the pool heals itself.

use parking_lot::{Mutex, MutexGuard};
use std::time::Duration;

use lockcore::{LockError, LockResult};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::ConnectOptions as _;
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::error::{from_sqlx, BACKEND};

/// At most `max` connections to one database, opened on demand.
pub(crate) struct Connections {
    options: PgConnectOptions,
    idle: Mutex<Vec<PgConnection>>,
    slots: Semaphore,
    connect_timeout: Duration,
}

/// A connection in use; returned to the pool on drop only if [`Conn::keep`] was called.
pub(crate) struct Conn<'a> {
    conn: Option<PgConnection>,
    pool: &'a Connections,
    _slot: SemaphorePermit<'a>,
    keep: bool,
}

impl Connections {
    /// A pool of at most `max` connections made with `options`.
    pub(crate) fn new(options: PgConnectOptions, max: u32, connect_timeout: Duration) -> Self {
        Self {
            options,
            idle: Mutex::new(Vec::new()),
            slots: Semaphore::new(usize::try_from(max).unwrap_or(usize::MAX).max(1)),
            connect_timeout,
        }
    }

    /// A connection: an idle one, or a new one if none is idle. Waits at most the connect
    /// timeout for a free slot and again for a new connection.
    pub(crate) async fn get(&self) -> LockResult<Conn<'_>> {
        let slot = tokio::time::timeout(self.connect_timeout, self.slots.acquire())
            .await
            .map_err(|_| {
                LockError::unavailable(BACKEND, "no free connection within the connect timeout")
            })?
            .map_err(|_| LockError::unavailable(BACKEND, "connection pool closed"))?;
        let idle = self.idle().pop();
        let conn = match idle {
            Some(conn) => conn,
            None => tokio::time::timeout(self.connect_timeout, self.options.connect())
                .await
                .map_err(|_| LockError::unavailable(BACKEND, "connecting timed out"))?
                .map_err(from_sqlx)?,
        };
        Ok(Conn {
            conn: Some(conn),
            pool: self,
            _slot: slot,
            keep: false,
        })
    }

    /// Connections open and idle right now.
    pub(crate) fn idle_count(&self) -> usize {
        self.idle().len()
    }

    fn idle(&self) -> MutexGuard<'_, Vec<PgConnection>> {
        self.idle.lock()
    }
}

impl Conn<'_> {
    /// The connection, to run a statement on.
    pub(crate) fn raw(&mut self) -> LockResult<&mut PgConnection> {
        self.conn
            .as_mut()
            .ok_or_else(|| LockError::Internal("connection already released".into()))
    }

    /// Marks the connection healthy: it goes back to the pool when dropped.
    pub(crate) fn keep(mut self) {
        self.keep = true;
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            if self.keep {
                self.pool.idle().push(conn);
            }
            // Otherwise dropping it closes the socket: its state is unknown.
        }
    }
}
