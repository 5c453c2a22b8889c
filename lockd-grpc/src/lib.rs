//! # lockd-grpc
//!
//! lockd's gRPC API: `proto/lockd/v1/locks.proto` (package `lockd.v1`, service `Locks`),
//! compiled at build time by protox (pure Rust: no system `protoc`), with
//!
//! * a tonic server over any [`LockService`](lockcore::LockService): [`service`] (to add to a
//!   `tonic::transport::Server`) or [`serve`] (on a listener, with the standard
//!   `grpc.health.v1` health service and server reflection). It reads and checks requests as
//!   the HTTP API does, answers refusals with the status codes of [`status`] and lockd's
//!   [`pb::ErrorDetail`] in the status details, checks `authorization: Bearer` API keys
//!   ([`Auth`]), and lets the embedding server plug in its metrics, event log and caps
//!   ([`Hooks`]);
//! * [`GrpcClient`], a [`LockService`](lockcore::LockService) over `grpc://host:port` (or
//!   `grpcs://` for TLS, with a private CA and a client certificate if the server wants one),
//!   which maps refusals back to typed [`LockError`](lockcore::LockError)s.
//!
//! ## Guarantees
//!
//! * **Same behaviour as HTTP.** Requests are read with lockcore's parsers and the same form
//!   rules as the JSON bodies (one `object` or several `objects`; one `object` + `token` or
//!   several `locks`), so the same request is refused the same way, naming the same `field`;
//!   limits are the [`LockService`](lockcore::LockService)'s own. The whole conformance suite
//!   passes through [`GrpcClient`] (`tests/conformance.rs`).
//! * **Typed refusals, never a panic.** Every refusal is a status whose details carry lockd's
//!   error code and data ([`status`] has the table); malformed bytes and oversized messages are
//!   refused by tonic before they reach a lock.
//! * **No lost grants.** [`GrpcClient`] sends a request id with every acquire and takes back a
//!   grant whose answer it never read, as lockd-client's HTTP transport does.
//! * **Tokens stay secret.** No answer but a grant, renew or downgrade carries a token; API keys
//!   never appear in `Debug` output.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use lockd_grpc::{serve, Auth, GrpcClient, GrpcConfig, GrpcOptions};
//! # fn backend() -> Arc<dyn lockcore::LockService> { unimplemented!() }
//! let locks: Arc<dyn lockcore::LockService> = backend();
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:7071").await?;
//! let options = GrpcOptions::default().with_auth(Auth::api_keys(&["change-me"]));
//! tokio::spawn(serve(listener, locks, options, std::future::pending()));
//!
//! let client = GrpcClient::new(GrpcConfig::from_url("grpc://127.0.0.1:7071").with_api_key("change-me"))?;
//! # Ok(()) }
//! ```

mod auth;
mod client;
pub mod convert;
mod server;
pub mod status;

/// The messages and the tonic client and server of `lockd.v1`, generated from
/// `proto/lockd/v1/locks.proto`.
#[allow(
    missing_docs,
    unreachable_pub,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic
)]
pub mod pb {
    tonic::include_proto!("lockd.v1");
}

pub use auth::{key_digest, Auth, Authenticator, KeyCheck};
pub use client::{
    GrpcClient, GrpcConfig, BACKEND, DEFAULT_CONNECT_TIMEOUT, DEFAULT_PORT,
    DEFAULT_REQUEST_TIMEOUT, DEFAULT_URL,
};
pub use server::{
    serve, serve_incoming, service, service_with, Admission, EventStream, GrpcOptions, Hooks,
    LocksHandler, LocksService, NoHooks, ServeError, DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_PAGE,
    FILE_DESCRIPTOR_SET, HEALTH_INTERVAL,
};
