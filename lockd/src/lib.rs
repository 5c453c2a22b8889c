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
pub use events::{Event, EventFilter, EventKind};
#[cfg(feature = "server")]
pub use limits::{Caps, Limit, LimitExceeded};
#[cfg(feature = "server")]
pub use metrics::{
    prefix_of, Metrics, DEFAULT_METRICS_PREFIX_DEPTH, MAX_METRIC_PREFIXES, OTHER_PREFIX,
};
#[cfg(feature = "server")]
pub use server::{Server, ServerError};
#[cfg(feature = "server")]
pub use tls::{TlsConfig, TlsError, TlsReloader};
