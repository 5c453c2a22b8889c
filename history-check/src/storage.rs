//! [`StorageNode`]: the simulated storage a DFS would put behind its locks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::history::{OpKind, Outcome};
use crate::recorder::Recorder;

/// A simulated storage node that refuses writes carrying a fence older than the newest it has
/// accepted for the object: the fencing a DFS does so that a holder whose lease ran out cannot
/// overwrite a newer holder's work.
///
/// Every write is recorded in the history, invoke and completion both taken inside the node's
/// critical section, so the order of completion times is the order in which the node decided.
#[derive(Debug)]
pub struct StorageNode {
    recorder: Arc<Recorder>,
    newest: Mutex<HashMap<String, u64>>,
}

/// A write refused because the node had already accepted a newer fence for the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("fence {fence} is older than {newest}, the newest this node has accepted")]
pub struct StaleFence {
    /// The fence the write carried.
    pub fence: u64,
    /// The newest fence the node had accepted for the object.
    pub newest: u64,
}

impl StorageNode {
    /// An empty node recording into `recorder`.
    pub fn new(recorder: Arc<Recorder>) -> Self {
        Self {
            recorder,
            newest: Mutex::new(HashMap::new()),
        }
    }

    /// Writes to `object` on behalf of `client`, holding `fence`: accepted if `fence` is at
    /// least the newest fence accepted for the object so far, refused otherwise.
    pub fn write(&self, client: usize, object: &str, fence: u64) -> Result<(), StaleFence> {
        let mut newest = self.newest.lock().unwrap_or_else(PoisonError::into_inner);
        let invocation = self
            .recorder
            .invoke(client, object, OpKind::Write { fence });
        let current = newest.get(object).copied();
        let result = match current {
            Some(newest) if newest > fence => Err(StaleFence { fence, newest }),
            _ => {
                newest.insert(object.to_owned(), fence);
                Ok(())
            }
        };
        let outcome = match result {
            Ok(()) => Outcome::Accepted,
            Err(stale) => Outcome::Stale {
                newest: stale.newest,
            },
        };
        self.recorder.complete(invocation, outcome);
        result
    }
}
