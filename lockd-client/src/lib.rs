#![doc = include_str!("../README.md")]

mod client;
mod config;
mod events;
mod guard;
mod transport;
mod wire;

pub use client::{LockdClient, MAX_EVENTS_LIMIT};
pub use config::{ClientConfig, DEFAULT_CONNECT_TIMEOUT, DEFAULT_REQUEST_TIMEOUT, DEFAULT_URL};
pub use events::{Event, EventFilter, EventKind, EventSource, EventStream};
pub use guard::{GuardOptions, LeaseGuard, LeaseState, LossReason, Wanted};
#[cfg(feature = "grpc")]
pub use lockd_grpc::{GrpcClient, GrpcConfig};
#[cfg(feature = "grpc")]
pub use transport::grpc_client;
pub use transport::{connect, Transport};

/// The name [`LockdClient`] reports as its backend, and puts in its `Unavailable` errors.
pub const BACKEND: &str = "http";
