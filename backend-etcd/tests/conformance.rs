//! The whole shared conformance suite against a real etcd member (`LOCKD_TEST_ETCD_URL`, else
//! a loud skip), with etcd's limits: TTLs are whole seconds of at least 2 s.

mod common;

conformance_tests::conformance_suite!(
    common::backend,
    conformance_tests::Capabilities::default().with_min_ttl(backend_etcd::DEFAULT_MIN_TTL)
);
