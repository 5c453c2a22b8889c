//! [`Recorder`]: many concurrent clients write one history, timed by one monotonic clock.

use std::future::Future;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use lockcore::{Fence, Lease, LockResult};

use crate::history::{Fault, History, OpKind, Operation, Outcome};

/// Records operations from many concurrent clients into one [`History`].
///
/// Every time comes from one monotonic clock ([`Instant`]) in this process, as an offset from
/// the moment the recorder was made. Share it as `Arc<Recorder>`. An operation is recorded in
/// two steps, [`Recorder::invoke`] right before the request is sent and [`Recorder::complete`]
/// right after the answer is seen, so scheduling delays only ever widen an operation's
/// interval, which makes every check more lenient, never stricter.
#[derive(Debug)]
pub struct Recorder {
    epoch: Instant,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    history: History,
}

/// An operation that was invoked and has not completed yet; hand it to
/// [`Recorder::complete`].
#[derive(Debug)]
#[must_use = "an invocation must be completed to appear in the history"]
pub struct Invocation {
    id: u64,
    client: usize,
    object: String,
    kind: OpKind,
    invoked: Duration,
}

impl Invocation {
    /// When the operation was invoked.
    pub fn invoked(&self) -> Duration {
        self.invoked
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    /// An empty history whose clock starts now.
    pub fn new() -> Self {
        Self {
            epoch: Instant::now(),
            state: Mutex::new(State::default()),
        }
    }

    /// The time on the history's clock.
    pub fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panicking client must not hide the rest of the history.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Notes that `client` is about to send `kind` on `object`.
    pub fn invoke(&self, client: usize, object: &str, kind: OpKind) -> Invocation {
        let mut state = self.state();
        let id = state.next_id;
        state.next_id += 1;
        Invocation {
            id,
            client,
            object: object.to_owned(),
            kind,
            invoked: self.now(),
        }
    }

    /// Notes that the invoked operation ended with `outcome`.
    pub fn complete(&self, invocation: Invocation, outcome: Outcome) {
        let completed = self.now();
        self.state().history.operations.push(Operation {
            id: invocation.id,
            client: invocation.client,
            object: invocation.object,
            kind: invocation.kind,
            invoked: invocation.invoked,
            completed,
            outcome,
        });
    }

    /// Runs an acquire, renew or validate and records it with its outcome.
    pub async fn lease_op(
        &self,
        client: usize,
        object: &str,
        kind: OpKind,
        operation: impl Future<Output = LockResult<Lease>>,
    ) -> LockResult<Lease> {
        let invocation = self.invoke(client, object, kind);
        let result = operation.await;
        self.complete(invocation, Outcome::of_lease(&result));
        result
    }

    /// Runs a release and records it with its outcome.
    pub async fn release_op(
        &self,
        client: usize,
        object: &str,
        kind: OpKind,
        operation: impl Future<Output = LockResult<Fence>>,
    ) -> LockResult<Fence> {
        let invocation = self.invoke(client, object, kind);
        let result = operation.await;
        self.complete(invocation, Outcome::of_release(&result));
        result
    }

    /// Records a fault that ran from `started` to `ended` (times from [`Recorder::now`]).
    pub fn fault(
        &self,
        name: impl Into<String>,
        started: Duration,
        ended: Duration,
        loses_data: bool,
    ) {
        self.state().history.faults.push(Fault {
            name: name.into(),
            started,
            ended,
            loses_data,
        });
    }

    /// A copy of everything recorded so far.
    pub fn history(&self) -> History {
        self.state().history.clone()
    }
}
