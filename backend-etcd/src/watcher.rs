//! The wake-up watch: one etcd watch per store on every object's keys, waking local waiters.
//!
//! etcd reports every deletion of a holder, lock-delay or queue key (a release, a take-back, a
//! ticket leaving the queue, or etcd revoking an expired lease: expiries and the ends of
//! lock-delays wake waiters too) and every put of a wake key (a downgrade), each as
//! [`WaitQueue::wake`] for the key's object, or [`WaitQueue::wake_subtree`] when the key was a
//! subtree lock's or a subtree waiter's (the scope is part of the key; a wake key's value
//! names it). Puts of holder and queue keys (grants, renewals, waiters queueing) are filtered
//! out by etcd itself: they never free anything, and sending them would cost etcd and this
//! process work on every grant. When the watch stream fails or etcd cancels it
//! (compaction, a member going away), the task watches again with backoff and then calls
//! [`WaitQueue::wake_all`], since changes made while it was away are not replayed.

use std::sync::Weak;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable as _};
use etcd_client::{Client, EventType, WatchFilterType, WatchOptions, WatchStream, Watcher};
use lockcore::{LockError, LockScope, WaitQueue};

use crate::error;
use crate::keys::KeyLayout;

const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// What the watch task needs to (re)connect.
#[derive(Clone)]
pub(crate) struct WakeWatch {
    pub(crate) client: Client,
    pub(crate) keys: KeyLayout,
    pub(crate) connect_timeout: Duration,
}

impl std::fmt::Debug for WakeWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WakeWatch")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl WakeWatch {
    /// Opens one watch stream with three watches: deletions of holder and lock-delay keys,
    /// deletions of queue keys, and puts of wake keys.
    pub(crate) async fn open(&self) -> Result<(Watcher, WatchStream), LockError> {
        let mut client = self.client.watch_client();
        let deletions = WatchOptions::new()
            .with_prefix()
            .with_filters([WatchFilterType::NoPut]);
        let wakes = WatchOptions::new()
            .with_prefix()
            .with_filters([WatchFilterType::NoDelete]);
        let open = async {
            let (mut watcher, stream) = client
                .watch(self.keys.holders_space(), Some(deletions.clone()))
                .await?;
            watcher
                .watch(self.keys.queues_space(), Some(deletions))
                .await?;
            watcher.watch(self.keys.wakes_prefix(), Some(wakes)).await?;
            Ok::<_, etcd_client::Error>((watcher, stream))
        };
        match tokio::time::timeout(self.connect_timeout, open).await {
            Ok(Ok(opened)) => Ok(opened),
            Ok(Err(e)) => Err(error::from_etcd("watch", &e)),
            Err(_) => Err(error::timed_out("watch", self.connect_timeout)),
        }
    }

    /// Serves the watch, then watches again whenever it ends, until the wait queue is gone (the
    /// store was dropped) or the task is aborted.
    pub(crate) async fn run(self, waits: Weak<WaitQueue>, opened: (Watcher, WatchStream)) {
        let (mut watcher, mut stream) = opened;
        loop {
            self.serve(&waits, &mut stream).await;
            drop(watcher);
            if waits.strong_count() == 0 {
                return;
            }
            tracing::warn!(target: "lockd::etcd", "wake-up watch ended; watching again");
            let reopened = (|| self.open())
                .retry(
                    ExponentialBuilder::default()
                        .with_min_delay(MIN_BACKOFF)
                        .with_max_delay(MAX_BACKOFF)
                        .with_jitter()
                        .without_max_times(),
                )
                .sleep(tokio::time::sleep)
                .when(|_| waits.strong_count() > 0)
                .notify(|e, _| {
                    tracing::debug!(target: "lockd::etcd", error = %e, "watch reconnect failed")
                })
                .await;
            let Ok(reopened) = reopened else {
                return;
            };
            (watcher, stream) = reopened;
            tracing::info!(target: "lockd::etcd", "wake-up watch reconnected");
            // Changes made while the watch was away are lost: let every waiter look again.
            if let Some(waits) = waits.upgrade() {
                waits.wake_all();
            }
        }
    }

    /// Wakes waiters for every relevant event until the stream ends, fails or is canceled.
    async fn serve(&self, waits: &Weak<WaitQueue>, stream: &mut WatchStream) {
        loop {
            let response = match stream.message().await {
                Ok(Some(response)) => response,
                Ok(None) => return,
                Err(e) => {
                    tracing::debug!(target: "lockd::etcd", error = %e, "wake-up watch failed");
                    return;
                }
            };
            if response.canceled() {
                return;
            }
            let Some(waits) = waits.upgrade() else { return };
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                let freed = match event.event_type() {
                    EventType::Delete => self.keys.parse(kv.key()).map(|p| (p.object, p.scope)),
                    EventType::Put => self.keys.parse_wake(kv.key(), kv.value()),
                };
                match freed {
                    Some((object, LockScope::Subtree)) => waits.wake_subtree(&object),
                    Some((object, LockScope::Object)) => waits.wake(&object),
                    None => {}
                }
            }
        }
    }
}
