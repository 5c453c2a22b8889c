//! The whole shared conformance suite against a real Redis (`LOCKD_TEST_REDIS_URL`, else
//! testcontainers, else a loud skip).

mod common;

conformance_tests::conformance_suite!(common::backend, conformance_tests::Capabilities::default());
