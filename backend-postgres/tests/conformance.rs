//! The whole shared conformance suite against PostgreSQL (see `tests/common` for set-up).

mod common;

use common::postgres_backend;

conformance_tests::conformance_suite!(postgres_backend, conformance_tests::Capabilities::default());
