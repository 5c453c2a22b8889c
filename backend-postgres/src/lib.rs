#![doc = include_str!("../README.md")]

mod config;
mod conns;
mod error;
mod service;
mod sql;
mod tasks;

pub use config::{PostgresConfig, MAX_SCHEMA_LEN};
pub use service::{PostgresLockService, PostgresStore};

/// The backend name reported by [`lockcore::LockStore::backend`].
pub const BACKEND: &str = error::BACKEND;
