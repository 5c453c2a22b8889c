//! The release listener: one pub/sub connection per backend instance, waking local waiters.
//!
//! Scripts that release, downgrade, take back or drop holders or queue entries `PUBLISH` the
//! objects concerned on `{prefix}released` (one message per script call, one object per line,
//! as its member: see [`crate::keys`]) when someone may wait for them. A line ending in `/`
//! names an object whose subtree was freed (a subtree holder or queue entry went away, or a
//! subtree holder became shared): the listener calls [`WaitQueue::wake_subtree`] for it, which
//! also wakes waiters under the object, and [`WaitQueue::wake`] for every other line. When its
//! connection drops (or stops answering pings) it reconnects with backoff and then calls
//! [`WaitQueue::wake_all`], since messages published while it was away are lost. Expiries and
//! the ends of lock-delays publish nothing: every waiter's own timer, set from the blocking
//! holder's remaining TTL or delay, covers them.

use std::sync::Weak;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable as _};
use futures_util::StreamExt as _;
use lockcore::{LockError, ObjectId, WaitQueue};
use redis::aio::{ConnectionManager, PubSub};
use redis::{Client, Value};

use crate::error;
use crate::keys;

const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Delays between reconnect attempts: doubling from [`MIN_BACKOFF`] up to [`MAX_BACKOFF`], with
/// jitter so that several lockd processes do not reconnect in step, for as long as it takes.
fn reconnect_backoff() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(MIN_BACKOFF)
        .with_max_delay(MAX_BACKOFF)
        .with_jitter()
        .without_max_times()
}

/// What the listener needs to (re)connect.
#[derive(Debug, Clone)]
pub(crate) struct Listener {
    pub(crate) client: Client,
    pub(crate) channel: String,
    pub(crate) connect_timeout: Duration,
    pub(crate) operation_timeout: Duration,
    pub(crate) ping_interval: Duration,
    /// The backend's command connection, poked when the listener notices Redis went away or
    /// came back, so that it reconnects before the next operation rather than failing it.
    pub(crate) commands: ConnectionManager,
}

impl Listener {
    /// Opens a pub/sub connection subscribed to the release channel.
    pub(crate) async fn subscribe(&self) -> Result<PubSub, LockError> {
        let connect = async {
            let mut pubsub = self.client.get_async_pubsub().await?;
            pubsub.subscribe(&self.channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(Ok(pubsub)) => Ok(pubsub),
            Ok(Err(e)) => Err(error::from_redis("subscribe", &e)),
            Err(_) => Err(error::timed_out("subscribe", self.connect_timeout)),
        }
    }

    /// Serves `pubsub`, then reconnects whenever the connection is lost, until the wait queue
    /// is gone (the backend was dropped) or the task is aborted.
    pub(crate) async fn run(self, waits: Weak<WaitQueue>, mut pubsub: PubSub) {
        loop {
            self.serve(&waits, pubsub).await;
            if waits.strong_count() == 0 {
                return;
            }
            tracing::warn!(
                target: "lockd::redis",
                channel = %self.channel,
                "release listener lost its Redis connection; reconnecting"
            );
            self.poke_commands().await;
            let resubscribed = (|| self.subscribe())
                .retry(reconnect_backoff())
                .sleep(tokio::time::sleep)
                // Stop trying once the backend is gone.
                .when(|_| waits.strong_count() > 0)
                .notify(|e, _| {
                    tracing::debug!(target: "lockd::redis", error = %e, "release listener reconnect failed")
                })
                .await;
            let Ok(resubscribed) = resubscribed else {
                return;
            };
            pubsub = resubscribed;
            tracing::info!(target: "lockd::redis", "release listener reconnected");
            self.poke_commands().await;
            // Releases published while we were away are lost: let every head waiter look.
            if let Some(waits) = waits.upgrade() {
                waits.wake_all();
            }
        }
    }

    /// Sends a PING on the command connection: on a dead connection it fails, which makes the
    /// connection manager reconnect in the background.
    async fn poke_commands(&self) {
        let mut commands = self.commands.clone();
        let ping = redis::cmd("PING");
        let _ = tokio::time::timeout(
            self.operation_timeout,
            ping.query_async::<Value>(&mut commands),
        )
        .await;
    }

    /// Wakes waiters for every message until the connection ends or a ping goes unanswered.
    async fn serve(&self, waits: &Weak<WaitQueue>, pubsub: PubSub) {
        let (mut sink, mut stream) = pubsub.split();
        let mut ticker = tokio::time::interval(self.ping_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            tokio::select! {
                message = stream.next() => {
                    let Some(message) = message else { return };
                    let Some(waits) = waits.upgrade() else { return };
                    for freed in freed_objects(message.get_payload_bytes()) {
                        match freed {
                            Freed::Object(object) => waits.wake(&object),
                            Freed::Subtree(root) => waits.wake_subtree(&root),
                        }
                    }
                }
                _ = ticker.tick() => {
                    let ping = tokio::time::timeout(self.operation_timeout, sink.ping::<Value>());
                    if !matches!(ping.await, Ok(Ok(_))) {
                        return;
                    }
                }
            }
        }
    }
}

/// What one line of a release message frees.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Freed {
    /// Holders or queue entries of the object alone.
    Object(ObjectId),
    /// A subtree holder or queue entry on the object: what is under it may be free too.
    Subtree(ObjectId),
}

/// The objects a release message names, one per line (lines that name no object are skipped).
fn freed_objects(payload: &[u8]) -> Vec<Freed> {
    payload
        .split(|&byte| byte == b'\n')
        .filter_map(|line| match line.strip_suffix(b"/") {
            Some(root) => keys::object_of_member(root).map(Freed::Subtree),
            None => keys::object_of_member(line).map(Freed::Object),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(name: &str) -> ObjectId {
        ObjectId::new(name).expect("valid")
    }

    #[test]
    fn a_trailing_slash_marks_a_freed_subtree() {
        assert_eq!(
            freed_objects(b"/vol/a\n/vol/b/\nchunk-7"),
            [
                Freed::Object(object("/vol/a")),
                Freed::Subtree(object("/vol/b")),
                Freed::Object(object("chunk-7")),
            ]
        );
    }

    #[test]
    fn lines_are_members_and_are_unescaped() {
        assert_eq!(
            freed_objects(b"a%7Bb%7D\n%25/"),
            [Freed::Object(object("a{b}")), Freed::Subtree(object("%")),]
        );
    }

    #[test]
    fn lines_naming_no_object_are_skipped() {
        assert_eq!(freed_objects(b""), []);
        assert_eq!(freed_objects(b"\n/\n//\nbad%zz\n\xff"), []);
    }
}
