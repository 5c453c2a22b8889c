//! # conformance-tests
//!
//! The one behaviour suite every lockd backend must pass: it is the definition of correct.
//!
//! Each check is a plain `pub async fn` taking `&dyn LockService` and the backend's
//! [`Capabilities`]; it panics on failure. [`conformance_suite!`] expands to one named
//! `#[tokio::test]` per check for a backend factory, so a new backend gets the whole suite in a
//! few lines:
//!
//! ```ignore
//! async fn memory() -> Option<std::sync::Arc<dyn lockcore::LockService>> {
//!     Some(std::sync::Arc::new(backend_memory::MemoryLockService::new(
//!         Default::default(),
//!         lockcore::TokenIssuer::random(),
//!     )))
//! }
//! conformance_tests::conformance_suite!(memory, conformance_tests::Capabilities::default());
//! ```
//!
//! Every check names its objects under its own random prefix ([`Scope`]), so checks run in
//! parallel against one shared Redis, Postgres or lockd. A factory returns `None` when the service
//! it needs is absent, after calling [`skip_or_fail`]: the test then prints one loud `SKIP` line,
//! or fails when `LOCKD_REQUIRE_BACKENDS=1` (as in CI).
//!
//! Besides the hand-written checks ([`checks`] for single exclusive leases, [`modes`] for lock
//! modes, multi-object requests, batches, downgrade and fairness), the suite holds every backend
//! to a reference model ([`model`]): `random_operations_agree_with_the_reference_model` runs a
//! seeded random sequence of single and multi-object acquires in both modes (some retried by
//! request id), single and batched releases and renewals, validations, downgrades and
//! inspections with current, old, foreign and tampered tokens on backend and model alike, and
//! compares every answer. A failure prints its seed; `LOCKD_MODEL_SEED=N` replays the same
//! operations.

pub mod checks;
pub mod model;
pub mod modes;
mod scope;
pub mod subtrees;

pub use scope::Scope;

use lockcore::Limits;

/// What a backend under test was configured with, where backends legitimately differ.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Capabilities {
    /// The limits the backend enforces (the invalid-argument checks probe just past them).
    pub limits: Limits,
    /// Whether waiters on one object in one process are served first-come first-served.
    pub fifo_waiters: bool,
    /// The shortest TTL the backend grants (default 1 ms). From 1 s up, the backend grants
    /// whole seconds only (etcd's leases): checks ask for [`Capabilities::ttl`] of the TTL
    /// they mean, and sleep [`Capabilities::past`] it to see it expire.
    pub min_ttl: std::time::Duration,
    /// How long after a lease's TTL the backend may still show it (default 400 ms; etcd
    /// revokes expired leases on a 500 ms tick, through Raft).
    pub expiry_slack: std::time::Duration,
    /// Whether the backend has subtree locks and lock-delay (default: yes). A backend without
    /// them refuses them as `invalid_argument`; the subtree and lock-delay checks then check
    /// only that refusal, loudly, and the model draws neither.
    pub subtrees: bool,
}

impl Default for Capabilities {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            fifo_waiters: true,
            min_ttl: lockcore::MIN_TTL,
            expiry_slack: std::time::Duration::from_millis(400),
            subtrees: true,
        }
    }
}

impl Capabilities {
    /// Capabilities with the given limits.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Capabilities of a backend whose shortest lease is `min_ttl` (whole seconds from 1 s
    /// up), which may show an expired lease for up to 1.5 s.
    pub fn with_min_ttl(mut self, min_ttl: std::time::Duration) -> Self {
        self.min_ttl = min_ttl;
        if min_ttl >= std::time::Duration::from_secs(1) {
            self.expiry_slack = self
                .expiry_slack
                .max(std::time::Duration::from_millis(1500));
        }
        self
    }

    /// The TTL a check asks for when it means `wanted`: `wanted` itself, or on a backend
    /// with a longer minimum the minimum, rounded up to whole seconds where it counts
    /// seconds.
    pub fn ttl(&self, wanted: std::time::Duration) -> std::time::Duration {
        let ttl = wanted.max(self.min_ttl);
        if self.min_ttl >= std::time::Duration::from_secs(1) && ttl.subsec_nanos() != 0 {
            std::time::Duration::from_secs(ttl.as_secs() + 1)
        } else {
            ttl
        }
    }

    /// The lock-delay a check asks for when it means `wanted`: `wanted` itself, or on a
    /// backend that counts whole seconds (etcd's leases), `wanted` rounded up to whole seconds,
    /// as such a backend rounds it.
    pub fn lock_delay(&self, wanted: std::time::Duration) -> std::time::Duration {
        if self.min_ttl >= std::time::Duration::from_secs(1) && wanted.subsec_nanos() != 0 {
            std::time::Duration::from_secs(wanted.as_secs() + 1)
        } else {
            wanted
        }
    }

    /// How long to sleep for a lease of `ttl` granted just before to be gone.
    pub fn past(&self, ttl: std::time::Duration) -> std::time::Duration {
        ttl + self.expiry_slack
    }

    /// Capabilities of a backend without subtree locks and lock-delay.
    pub fn without_subtrees(mut self) -> Self {
        self.subtrees = false;
        self
    }

    /// Capabilities with or without FIFO waiters.
    pub fn with_fifo_waiters(mut self, fifo: bool) -> Self {
        self.fifo_waiters = fifo;
        self
    }
}

/// Name of the environment variable that turns a skipped backend into a failure.
pub const REQUIRE_BACKENDS_ENV: &str = "LOCKD_REQUIRE_BACKENDS";

/// Whether missing backends must fail the run (`LOCKD_REQUIRE_BACKENDS=1`).
pub fn backends_required() -> bool {
    std::env::var(REQUIRE_BACKENDS_ENV).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// Reports that `backend` cannot be tested here: one loud line on stderr, or a panic when
/// [`backends_required`].
pub fn skip_or_fail(backend: &str, why: &str) {
    if backends_required() {
        panic!("{backend} is required ({REQUIRE_BACKENDS_ENV}=1) but unavailable: {why}");
    }
    // Written to the stderr handle directly, not with `eprintln!`, which the test harness
    // captures: a skip must be seen even when the test "passes".
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "SKIP: {backend} tests skipped: {why} (set {REQUIRE_BACKENDS_ENV}=1 to make this a failure)"
    );
}

/// Expands to one `#[tokio::test]` per conformance check.
///
/// `$factory` is the path of an `async fn() -> Option<Arc<dyn LockService>>`, called once per
/// test; `$caps` an expression of type [`Capabilities`].
#[macro_export]
macro_rules! conformance_suite {
    ($factory:path, $caps:expr) => {
        $crate::conformance_suite!(@tests $factory, $caps;
            acquire_then_release_succeeds,
            lease_carries_a_token_bound_to_its_fence,
            second_owner_is_refused_while_held,
            same_owner_is_refused_because_locks_are_not_reentrant,
            release_of_an_unlocked_object_is_not_held,
            release_with_another_objects_token_is_refused_and_lock_stays,
            release_with_a_forged_token_is_refused_and_lock_stays,
            tampered_tokens_are_refused_as_invalid_and_lock_stays,
            a_retried_request_gets_the_same_lease_and_never_a_second_grant,
            dropped_acquires_leave_no_orphaned_lock,
            malformed_tokens_are_refused_before_reaching_the_lock,
            release_with_an_old_token_is_refused_and_lock_stays,
            double_release_is_not_held,
            release_returns_the_released_fence,
            fences_increase_across_release,
            fences_increase_across_expiry,
            fences_are_independent_per_object_but_always_increase,
            expiry_lets_another_owner_in,
            expired_holder_cannot_release_and_new_holder_is_undisturbed,
            expired_holder_cannot_renew,
            renew_extends_the_lease_and_keeps_the_fence,
            renew_of_an_unlocked_object_is_not_held,
            renew_with_another_holders_token_is_refused,
            validate_accepts_the_current_token,
            validate_refuses_old_forged_and_foreign_tokens,
            validate_refuses_after_expiry,
            blocking_acquire_is_granted_promptly_on_release,
            blocking_acquire_is_granted_on_expiry,
            blocking_acquire_times_out_as_locked,
            waiters_are_served_first_come_first_served,
            a_waiter_that_times_out_does_not_block_the_next,
            inspect_shows_the_holder_and_no_token,
            inspect_of_a_free_object_is_none,
            list_shows_holders_under_a_prefix_page_by_page,
            list_leaves_out_released_and_expired_locks,
            invalid_ttls_are_refused,
            invalid_waits_are_refused,
            invalid_ids_and_list_queries_are_refused,
            objects_are_independent,
        );
        $crate::conformance_suite!(@modes $factory, $caps;
            shared_holders_coexist_and_exclude_exclusive,
            one_shared_holder_leaving_leaves_the_others,
            multi_object_requests_are_all_or_nothing,
            a_refusal_lists_every_conflict,
            duplicate_and_too_many_objects_are_refused,
            batch_release_and_renew_report_each_outcome,
            a_retried_multi_object_request_gets_the_same_leases,
        );
        $crate::conformance_suite!(@modes_shared $factory, $caps;
            downgrade_keeps_the_lease_and_admits_shared_waiters,
            a_writer_is_not_starved_by_a_stream_of_readers,
            opposite_orders_never_deadlock_or_hold_partial_sets,
            a_blocking_multi_object_request_waits_holding_nothing,
            a_dropped_waiter_gives_up_its_place,
        );
        $crate::conformance_suite!(@subtrees $factory, $caps;
            every_conflict_pair_follows_the_coverage_rule,
            a_shared_subtree_admits_shared_locks_below_but_no_exclusive,
            a_rename_locks_source_and_target_subtrees_together,
            a_request_covering_an_object_twice_is_refused,
            lock_delay_follows_an_expiry,
            a_released_lease_has_no_lock_delay,
            lock_delay_covers_what_the_lease_covered,
        );
        $crate::conformance_suite!(@subtrees_shared $factory, $caps;
            a_subtree_lock_waits_for_every_lock_under_it,
            waiters_are_woken_across_the_tree,
            a_waiting_subtree_request_holds_back_later_requests_under_it,
            waiters_are_counted_by_inspect_and_list,
            a_waiter_tells_each_holder_it_waits_behind_once,
            subtree_holders_never_overlap,
        );

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn random_operations_agree_with_the_reference_model() {
            let Some(service) = $factory().await else {
                return;
            };
            let caps: $crate::Capabilities = $caps;
            $crate::model::random_operations_agree_with_the_reference_model(&*service, &caps)
                .await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn stress_holders_never_overlap_and_fences_increase() {
            let Some(service) = $factory().await else {
                return;
            };
            let caps: $crate::Capabilities = $caps;
            $crate::checks::stress_holders_never_overlap_and_fences_increase(service, &caps).await;
        }
    };
    (@subtrees $factory:path, $caps:expr; $($check:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let Some(service) = $factory().await else {
                    return;
                };
                let caps: $crate::Capabilities = $caps;
                if $crate::subtrees::unsupported(&*service, &caps).await {
                    return;
                }
                $crate::subtrees::$check(&*service, &caps).await;
            }
        )+
    };
    (@subtrees_shared $factory:path, $caps:expr; $($check:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $check() {
                let Some(service) = $factory().await else {
                    return;
                };
                let caps: $crate::Capabilities = $caps;
                if $crate::subtrees::unsupported(&*service, &caps).await {
                    return;
                }
                $crate::subtrees::$check(service, &caps).await;
            }
        )+
    };
    (@modes $factory:path, $caps:expr; $($check:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let Some(service) = $factory().await else {
                    return;
                };
                let caps: $crate::Capabilities = $caps;
                $crate::modes::$check(&*service, &caps).await;
            }
        )+
    };
    (@modes_shared $factory:path, $caps:expr; $($check:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $check() {
                let Some(service) = $factory().await else {
                    return;
                };
                let caps: $crate::Capabilities = $caps;
                $crate::modes::$check(service, &caps).await;
            }
        )+
    };
    (@tests $factory:path, $caps:expr; $($check:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let Some(service) = $factory().await else {
                    return;
                };
                let caps: $crate::Capabilities = $caps;
                $crate::checks::$check(&*service, &caps).await;
            }
        )+
    };
}
