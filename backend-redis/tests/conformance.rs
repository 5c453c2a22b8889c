//! The whole shared conformance suite against a real Redis (`LOCKD_TEST_REDIS_URL`, else
//! testcontainers, else a loud skip): once with the default dedicated connections, and once
//! with them off, so the multiplexed path every operation beyond them takes is checked alone.

mod common;

conformance_tests::conformance_suite!(common::backend, conformance_tests::Capabilities::default());

mod multiplexed_only {
    use super::common;

    conformance_tests::conformance_suite!(
        common::multiplexed_backend,
        conformance_tests::Capabilities::default()
    );
}
