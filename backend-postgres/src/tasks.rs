//! Background work: the LISTEN task that wakes waiting acquires, and the reaper of free rows.

use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable as _};
use lockcore::{LockResult, ObjectId, WaitQueue};
use sqlx::postgres::{PgListener, PgPool};

use crate::conns::Connections;
use crate::error::from_sqlx;
use crate::sql;

const MAX_BACKOFF: Duration = Duration::from_secs(2);
const FIRST_BACKOFF: Duration = Duration::from_millis(50);

/// Delays between LISTEN reconnect attempts: doubling from [`FIRST_BACKOFF`] up to
/// [`MAX_BACKOFF`], with jitter so that several lockd processes do not reconnect in step, for as
/// long as it takes.
fn reconnect_backoff() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(FIRST_BACKOFF)
        .with_max_delay(MAX_BACKOFF)
        .with_jitter()
        .without_max_times()
}
/// Most rows one reaper statement deletes, so one pass never holds many row locks.
const REAP_BATCH: i32 = 10_000;

/// Connects the LISTEN connection and subscribes to `channel`.
pub(crate) async fn start_listener(pool: &PgPool, channel: &str) -> LockResult<PgListener> {
    let mut listener = PgListener::connect_with(pool).await.map_err(from_sqlx)?;
    listener.listen(channel).await.map_err(from_sqlx)?;
    Ok(listener)
}

/// Wakes this process's waiters of every object a release (or downgrade, take-back, or waiter
/// leaving) announces, for as long as the store lives.
///
/// When the connection drops, releases announced meanwhile are lost, so after reconnecting
/// every waiter is woken to look again. On any other failure the listener is replaced by
/// a new one on a fresh connection, retrying with back-off. The task ends only when aborted
/// (the store was dropped).
pub(crate) async fn listen(
    pool: PgPool,
    mut listener: PgListener,
    channel: String,
    waits: Arc<WaitQueue>,
) {
    loop {
        match listener.try_recv().await {
            Ok(Some(notification)) => match announcement(notification.payload()) {
                Some(Freed::Object(object)) => waits.wake(&object),
                Some(Freed::Subtree(object)) => waits.wake_subtree(&object),
                None => {
                    tracing::debug!(target: "lockd::postgres", payload = notification.payload(), "ignored a NOTIFY payload")
                }
            },
            // The connection was lost and (eager reconnect) re-established.
            Ok(None) => {
                tracing::warn!(target: "lockd::postgres", "LISTEN connection lost; reconnected");
                waits.wake_all();
            }
            Err(error) => {
                tracing::warn!(target: "lockd::postgres", %error, "LISTEN connection failed; reconnecting");
                // Its connection may be dead but still attached: start over with a new one.
                drop(listener);
                waits.wake_all();
                let reconnected = (|| start_listener(&pool, &channel))
                    .retry(reconnect_backoff())
                    .sleep(tokio::time::sleep)
                    .notify(|error, _| {
                        tracing::debug!(target: "lockd::postgres", %error, "LISTEN reconnect failed")
                    })
                    .await;
                listener = match reconnected {
                    Ok(listener) => listener,
                    // Not reached: the back-off has no attempt limit.
                    Err(error) => {
                        tracing::error!(target: "lockd::postgres", %error, "LISTEN reconnect gave up");
                        return;
                    }
                };
                waits.wake_all();
            }
        }
    }
}

/// What a NOTIFY on the release channel announces.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Freed {
    /// A holder or queue entry of this object went away or became shared:
    /// [`WaitQueue::wake`].
    Object(ObjectId),
    /// A subtree holder or subtree queue entry on this object did:
    /// [`WaitQueue::wake_subtree`].
    Subtree(ObjectId),
}

/// Reads a payload of `lockd_wake` (migration 6): the object, followed by `"\tsubtree"` for a
/// subtree holder or entry. Object ids hold no control characters, so the tab cannot be part
/// of one. `None` for anything else.
pub(crate) fn announcement(payload: &str) -> Option<Freed> {
    match payload.split_once('\t') {
        None => ObjectId::new(payload).ok().map(Freed::Object),
        Some((object, "subtree")) => ObjectId::new(object).ok().map(Freed::Subtree),
        Some(_) => None,
    }
}

/// Every `interval`, deletes rows free for longer than `older_than`.
pub(crate) async fn reap(conns: Arc<Connections>, interval: Duration, older_than: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        match reap_once(&conns, older_than).await {
            Ok(0) => {}
            Ok(deleted) => {
                tracing::debug!(target: "lockd::postgres", deleted, "reaped free lock rows")
            }
            Err(error) => {
                tracing::warn!(target: "lockd::postgres", %error, "reaping free lock rows failed")
            }
        }
    }
}

/// Deletes up to [`REAP_BATCH`] objects rows nobody holds or waits for whose last grant is
/// older than `older_than` by the database clock, with their expired holders and queue
/// entries (`lockd_reap`).
///
/// Safe for fencing: a row's fence is at most a few grants above the clock floor of the moment
/// it was granted, and `lockd_reap` only deletes rows whose fence is below the floor of
/// `older_than` ago, so a fresh row for the same object starts above it. Rows are locked with
/// `SKIP LOCKED` and checked again under the lock, so a concurrent acquire either keeps its row
/// or creates a new one after the delete, and the reaper never waits for anyone.
pub(crate) async fn reap_once(conns: &Connections, older_than: Duration) -> LockResult<u64> {
    // Capped at ~100 years so the interval arithmetic cannot overflow.
    let older_than_us = i64::try_from(older_than.as_micros())
        .unwrap_or(i64::MAX)
        .min(100 * 366 * 86_400 * 1_000_000);
    let mut conn = conns.get().await?;
    let deleted: i64 = sqlx::query_scalar(sql::REAP)
        .bind(older_than_us)
        .bind(REAP_BATCH)
        .fetch_one(conn.raw()?)
        .await
        .map_err(from_sqlx)?;
    conn.keep();
    Ok(u64::try_from(deleted).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> ObjectId {
        ObjectId::new(s).expect("valid")
    }

    #[test]
    fn announcements_name_an_object_or_a_subtree() {
        assert_eq!(announcement("/vol/a"), Some(Freed::Object(id("/vol/a"))));
        assert_eq!(
            announcement("/vol/a\tsubtree"),
            Some(Freed::Subtree(id("/vol/a")))
        );
        assert_eq!(announcement("/vol/a\tsomething"), None);
        assert_eq!(announcement("\tsubtree"), None);
        assert_eq!(announcement("/vol//a"), None);
    }
}
