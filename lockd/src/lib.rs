#![doc = include_str!("../README.md")]

mod api;
mod backend;
pub mod config;
mod connection;
mod error;
pub mod events;
mod expiry;
pub mod grace;
mod limits;
mod metrics;
mod server;

pub use backend::{connect_backend, redact_url, BackendOptions, SCHEMES};
pub use config::{ConfigError, ServeArgs, ServerConfig};
pub use error::ApiError;
pub use events::{Event, EventKind};
pub use limits::{Caps, Limit, LimitExceeded};
pub use metrics::Metrics;
pub use server::{Server, ServerError};
