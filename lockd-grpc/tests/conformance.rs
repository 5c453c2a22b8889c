//! The whole shared conformance suite, run through [`lockd_grpc::GrpcClient`] against a gRPC
//! server over the memory backend, in the test's own process.

mod support;

use std::sync::Arc;

use lockcore::LockService;

async fn grpc_over_memory() -> Option<Arc<dyn LockService>> {
    let server = support::start().await;
    let client = server.client(None);
    // The server runs until the test's runtime ends.
    std::mem::forget(server);
    Some(Arc::new(client))
}

conformance_tests::conformance_suite!(grpc_over_memory, conformance_tests::Capabilities::default());
