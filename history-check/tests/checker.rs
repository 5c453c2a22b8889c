//! The checker on hand-made histories: it catches each violation, and passes legal histories,
//! including the edge cases a real run produces (expiry, renewal, unknown outcomes, data loss).

use std::sync::Arc;
use std::time::Duration;

use history_check::{
    check, CheckConfig, Fault, Grant, History, LeaseId, OpKind, Operation, Outcome, Recorder,
    StorageNode, Violation,
};

const OBJECT: &str = "/vol/file";
const TTL: Duration = Duration::from_millis(500);

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

fn lease(fence: u64) -> LeaseId {
    LeaseId {
        fence,
        token: format!("tok{fence}"),
    }
}

fn grant(fence: u64, ttl: Duration) -> Outcome {
    Outcome::Granted(Grant {
        owner: format!("owner{fence}"),
        lease: lease(fence),
        ttl,
    })
}

/// A hand-made history, one operation at a time.
#[derive(Default)]
struct Builder {
    history: History,
}

impl Builder {
    fn op(mut self, kind: OpKind, invoked: u64, completed: u64, outcome: Outcome) -> Self {
        let id = self.history.operations.len() as u64;
        self.history.operations.push(Operation {
            id,
            client: 0,
            object: OBJECT.to_owned(),
            kind,
            invoked: ms(invoked),
            completed: ms(completed),
            outcome,
        });
        self
    }

    fn acquire(self, invoked: u64, completed: u64, outcome: Outcome) -> Self {
        let kind = OpKind::Acquire {
            owner: "someone".into(),
            ttl: TTL,
            wait: Duration::ZERO,
        };
        self.op(kind, invoked, completed, outcome)
    }

    fn granted(self, fence: u64, invoked: u64, completed: u64) -> Self {
        self.acquire(invoked, completed, grant(fence, TTL))
    }

    fn renewed(self, fence: u64, invoked: u64, completed: u64) -> Self {
        let kind = OpKind::Renew {
            lease: lease(fence),
            ttl: TTL,
        };
        self.op(kind, invoked, completed, grant(fence, TTL))
    }

    fn validated(self, fence: u64, invoked: u64, completed: u64) -> Self {
        let kind = OpKind::Validate {
            lease: lease(fence),
        };
        self.op(kind, invoked, completed, grant(fence, ms(1)))
    }

    fn released(self, fence: u64, invoked: u64, completed: u64, outcome: Outcome) -> Self {
        let kind = OpKind::Release {
            lease: lease(fence),
        };
        self.op(kind, invoked, completed, outcome)
    }

    fn write(self, fence: u64, invoked: u64, completed: u64, outcome: Outcome) -> Self {
        self.op(OpKind::Write { fence }, invoked, completed, outcome)
    }

    fn fault(mut self, started: u64, ended: u64, loses_data: bool) -> Self {
        self.history.faults.push(Fault {
            name: "fault".into(),
            started: ms(started),
            ended: ms(ended),
            loses_data,
        });
        self
    }

    fn violations(&self) -> Vec<Violation> {
        check(&self.history, &CheckConfig::default()).violations
    }

    fn violations_with(&self, config: &CheckConfig) -> Vec<Violation> {
        check(&self.history, config).violations
    }
}

fn unknown() -> Outcome {
    Outcome::Unknown {
        reason: "timed out".into(),
    }
}

// ---- Mutual exclusion -------------------------------------------------------------------

/// Holders one after another, each releasing before the next is granted, pass.
#[test]
fn sequential_holders_pass() {
    let history = Builder::default()
        .granted(10, 0, 5)
        .released(10, 100, 105, Outcome::Released)
        .granted(11, 101, 110)
        .released(11, 200, 205, Outcome::Released);
    assert_eq!(history.violations(), vec![]);
}

/// A holder that never releases is safe until its acquire's invoke plus the TTL: a grant
/// completed after that passes.
#[test]
fn a_grant_after_the_previous_lease_expired_passes() {
    let history = Builder::default().granted(10, 0, 50).granted(11, 400, 501);
    assert_eq!(history.violations(), vec![]);
}

/// A second grant completed while the first holder is still certainly safe is an overlap.
#[test]
fn two_holders_at_once_are_caught() {
    let history = Builder::default().granted(10, 0, 5).granted(11, 100, 110);
    let violations = history.violations();
    assert!(
        matches!(
            violations.as_slice(),
            [Violation::OverlappingHolders { first, second, from, .. }]
                if *first == lease(10) && *second == lease(11) && *from == ms(110)
        ),
        "{violations:?}"
    );
}

/// A successful renew extends the safe window from its invoke: a grant after the acquire's
/// TTL but within the renewed one is an overlap.
#[test]
fn a_grant_inside_a_renewed_window_is_caught() {
    let history = Builder::default()
        .granted(10, 0, 5)
        .renewed(10, 300, 310)
        .granted(11, 600, 610);
    assert!(matches!(
        history.violations().as_slice(),
        [Violation::OverlappingHolders { .. }]
    ));
}

/// A renew whose outcome is unknown does not extend the holder's window.
#[test]
fn a_renew_of_unknown_outcome_does_not_extend_the_window() {
    let history = Builder::default()
        .granted(10, 0, 5)
        .op(
            OpKind::Renew {
                lease: lease(10),
                ttl: TTL,
            },
            300,
            1300,
            unknown(),
        )
        .granted(11, 600, 610);
    assert_eq!(history.violations(), vec![]);
}

/// The holder stops being a holder when it invokes its release, even if the release's outcome
/// is unknown.
#[test]
fn the_window_ends_at_the_release_invoke() {
    let history = Builder::default()
        .granted(10, 0, 5)
        .released(10, 100, 2000, unknown())
        .granted(11, 150, 160);
    assert_eq!(history.violations(), vec![]);
}

/// Acquires of unknown outcome and refusals create no holder.
#[test]
fn unknown_and_refused_acquires_hold_nothing() {
    let history = Builder::default()
        .acquire(0, 900, unknown())
        .acquire(10, 20, Outcome::Locked)
        .granted(11, 100, 110);
    assert_eq!(history.violations(), vec![]);
}

/// Two holders whose grants straddle a loss of backend data may overlap by design.
#[test]
fn an_overlap_across_a_data_loss_passes() {
    let history = Builder::default()
        .granted(10, 0, 5)
        .fault(50, 60, true)
        .granted(11, 100, 110);
    let report = check(&history.history, &CheckConfig::default());
    assert_eq!(report.violations, vec![]);
    assert_eq!(report.overlaps_across_data_loss, 1);
}

/// A fault that loses no data excuses nothing.
#[test]
fn an_overlap_across_a_fault_without_data_loss_is_caught() {
    let history = Builder::default()
        .granted(10, 0, 5)
        .fault(50, 60, false)
        .granted(11, 100, 110);
    assert_eq!(history.violations().len(), 1);
}

/// An overlap shorter than the clock slack is not certain and passes.
#[test]
fn an_overlap_within_the_clock_slack_passes() {
    // Window of fence 10 ends at 500 - (1 % of 500 + 10) = 485 ms.
    let history = Builder::default().granted(10, 0, 5).granted(11, 400, 490);
    assert_eq!(history.violations(), vec![]);
}

// ---- Fence order ------------------------------------------------------------------------

/// A grant invoked after another completed gets a lower fence: caught.
#[test]
fn a_lower_fence_after_a_completed_grant_is_caught() {
    let history = Builder::default()
        .granted(20, 0, 5)
        .released(20, 10, 15, Outcome::Released)
        .granted(19, 20, 25);
    let violations = history.violations();
    assert!(
        matches!(
            violations.as_slice(),
            [Violation::FenceOrder {
                earlier_fence: 20,
                later_fence: 19,
                ..
            }]
        ),
        "{violations:?}"
    );
}

/// Two different leases with the same fence are caught.
#[test]
fn a_repeated_fence_with_another_token_is_caught() {
    let mut history = Builder::default()
        .granted(20, 0, 5)
        .released(20, 10, 15, Outcome::Released);
    history = history.acquire(
        20,
        25,
        Outcome::Granted(Grant {
            owner: "other".into(),
            lease: LeaseId {
                fence: 20,
                token: "another".into(),
            },
            ttl: TTL,
        }),
    );
    assert!(matches!(
        history.violations().as_slice(),
        [Violation::FenceOrder { .. }]
    ));
}

/// The same lease returned twice (an idempotent retry) is not a second grant.
#[test]
fn the_same_lease_returned_twice_passes() {
    let history = Builder::default().granted(20, 0, 5).granted(20, 10, 15);
    assert_eq!(history.violations(), vec![]);
}

/// Concurrent grants may get fences in either order.
#[test]
fn concurrent_grants_may_have_any_fence_order() {
    let history = Builder::default()
        .granted(20, 0, 100)
        .released(20, 110, 120, Outcome::Released)
        .granted(19, 50, 130);
    // Fence 19 was invoked before fence 20 completed: no real-time order between them. Its
    // window starts at 130, after fence 20's release at 110.
    assert_eq!(history.violations(), vec![]);
}

/// Fences keep increasing across a loss of backend data: a data loss excuses no fence order.
#[test]
fn fence_order_is_judged_across_a_data_loss() {
    let history = Builder::default()
        .granted(20, 0, 5)
        .fault(50, 60, true)
        .granted(3, 100, 110);
    assert!(history
        .violations()
        .iter()
        .any(|v| matches!(v, Violation::FenceOrder { .. })));
}

// ---- Expiry -----------------------------------------------------------------------------

/// A validate invoked after the latest possible expiry of the lease is caught.
#[test]
fn a_validate_of_a_certainly_expired_lease_is_caught() {
    // Latest possible expiry: 5 + 500 + (5 + 10) = 520 ms.
    let history = Builder::default().granted(10, 0, 5).validated(10, 600, 605);
    let violations = history.violations();
    assert!(
        matches!(
            violations.as_slice(),
            [Violation::AcceptedExpired { kind: "validate", late_by, .. }] if *late_by == ms(80)
        ),
        "{violations:?}"
    );
}

/// A renew invoked after the latest possible expiry is caught too.
#[test]
fn a_renew_of_a_certainly_expired_lease_is_caught() {
    let history = Builder::default().granted(10, 0, 5).renewed(10, 700, 705);
    assert!(matches!(
        history.violations().as_slice(),
        [Violation::AcceptedExpired { kind: "renew", .. }]
    ));
}

/// Validate within the slack after the expiry, or after a renew, passes.
#[test]
fn validates_while_the_lease_may_be_alive_pass() {
    let history = Builder::default()
        .granted(10, 0, 5)
        .validated(10, 515, 520)
        .renewed(10, 400, 450)
        .validated(10, 900, 905);
    assert_eq!(history.violations(), vec![]);
}

/// A renew of unknown outcome may extend the lease at any time (by default), or within the
/// configured horizon.
#[test]
fn a_renew_of_unknown_outcome_may_extend_the_expiry_within_its_horizon() {
    let history = Builder::default()
        .granted(10, 0, 5)
        .op(
            OpKind::Renew {
                lease: lease(10),
                ttl: TTL,
            },
            300,
            1300,
            unknown(),
        )
        .validated(10, 3000, 3005);
    assert_eq!(history.violations(), vec![]);
    let bounded = CheckConfig::default().with_unknown_effect_horizon(ms(1000));
    // Latest: 1300 + 1000 + 500 + 15 = 2815 ms.
    assert!(matches!(
        history.violations_with(&bounded).as_slice(),
        [Violation::AcceptedExpired { late_by, .. }] if *late_by == ms(185)
    ));
}

/// A validate that answers with another fence than the one presented is caught.
#[test]
fn a_validate_returning_another_fence_is_caught() {
    let history = Builder::default().granted(10, 0, 5).op(
        OpKind::Validate { lease: lease(10) },
        10,
        15,
        grant(11, TTL),
    );
    assert!(matches!(
        history.violations().as_slice(),
        [Violation::WrongLease { returned: 11, .. }]
    ));
}

// ---- Storage node -----------------------------------------------------------------------

/// A write accepted with a fence older than one accepted before it was invoked is caught.
#[test]
fn a_superseded_write_accepted_is_caught() {
    let history =
        Builder::default()
            .write(20, 0, 1, Outcome::Accepted)
            .write(10, 5, 6, Outcome::Accepted);
    assert!(matches!(
        history.violations().as_slice(),
        [Violation::SupersededWriteAccepted {
            fence: 10,
            newer_fence: 20,
            ..
        }]
    ));
}

/// A write decided after a newer one, while both were in flight, is out of order.
#[test]
fn a_write_accepted_out_of_order_is_caught() {
    let history = Builder::default()
        .write(10, 0, 10, Outcome::Accepted)
        .write(20, 1, 5, Outcome::Accepted);
    assert!(matches!(
        history.violations().as_slice(),
        [Violation::WriteOutOfOrder {
            fence: 10,
            newer_fence: 20,
            ..
        }]
    ));
}

/// A refusal that names a fence that is not newer is caught.
#[test]
fn a_write_refused_without_a_newer_fence_is_caught() {
    let history = Builder::default().write(10, 0, 1, Outcome::Accepted).write(
        12,
        2,
        3,
        Outcome::Stale { newest: 10 },
    );
    assert!(matches!(
        history.violations().as_slice(),
        [Violation::WriteWronglyRefused { .. }]
    ));
}

/// The simulated storage node accepts equal and newer fences, refuses older ones, and its
/// recorded history passes.
#[test]
fn the_storage_node_refuses_superseded_fences() {
    let recorder = Arc::new(Recorder::new());
    let node = StorageNode::new(recorder.clone());
    node.write(0, OBJECT, 10).expect("first write");
    node.write(0, OBJECT, 10).expect("same holder again");
    node.write(1, OBJECT, 11).expect("newer holder");
    let refused = node.write(0, OBJECT, 10).expect_err("superseded holder");
    assert_eq!((refused.fence, refused.newest), (10, 11));
    node.write(2, "/other", 1)
        .expect("other objects are separate");
    let history = recorder.history();
    assert_eq!(history.operations.len(), 5);
    assert!(check(&history, &CheckConfig::default()).is_ok());
}

// ---- Recovery ---------------------------------------------------------------------------

/// The recovery time of a fault is the time from its end to the first grant completed after.
#[test]
fn recovery_is_measured_to_the_first_grant_after_the_fault() {
    let history = Builder::default()
        .granted(10, 0, 5)
        .acquire(100, 400, unknown())
        .granted(11, 900, 1250)
        .granted(12, 1300, 1400)
        .fault(100, 1000, false);
    let fault = history.history.faults[0].clone();
    assert_eq!(history.history.recovery_after(&fault), Some(ms(250)));
    assert_eq!(
        history.history.grants_between(fault.started, fault.ended),
        0
    );
    assert_eq!(history.history.grants_between(ms(0), ms(1400)), 3);
}
