//! The whole shared conformance suite, run against the in-memory backend.

use std::sync::Arc;

use backend_memory::{MemoryConfig, MemoryLockService, MemoryStore};
use lockcore::{LockService, TokenIssuer};

async fn memory_backend() -> Option<Arc<dyn LockService>> {
    Some(Arc::new(MemoryLockService::new(
        MemoryStore::new(MemoryConfig::default()),
        TokenIssuer::random(),
    )))
}

conformance_tests::conformance_suite!(memory_backend, conformance_tests::Capabilities::default());
