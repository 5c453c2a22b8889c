#![doc = include_str!("../README.md")]

#[cfg(feature = "server")]
mod api;
mod backend;
#[cfg(feature = "server")]
pub mod config;
#[cfg(feature = "server")]
mod connection;
#[cfg(feature = "server")]
mod error;
#[cfg(feature = "server")]
pub mod events;
#[cfg(feature = "server")]
mod expiry;
pub mod grace;
#[cfg(feature = "server")]
mod grpc;
#[cfg(feature = "server")]
mod limits;
#[cfg(feature = "server")]
mod metrics;
#[cfg(feature = "server")]
mod server;
#[cfg(feature = "server")]
mod tls;

pub use backend::{connect_backend, redact_url, BackendOptions, SCHEMES};
#[cfg(feature = "server")]
pub use config::{ConfigError, ServeArgs, ServerConfig};
#[cfg(feature = "server")]
pub use error::ApiError;
#[cfg(feature = "server")]
pub use events::{Event, EventKind};
#[cfg(feature = "server")]
pub use limits::{Caps, Limit, LimitExceeded};
#[cfg(feature = "server")]
pub use metrics::Metrics;
#[cfg(feature = "server")]
pub use server::{Server, ServerError};
#[cfg(feature = "server")]
pub use tls::{TlsConfig, TlsError, TlsReloader};
