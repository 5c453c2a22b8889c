#![doc = include_str!("../README.md")]

mod config;
mod error;
mod keys;
mod service;
mod view;
mod watcher;

pub use config::{EtcdConfig, DEFAULT_MIN_TTL};
pub use service::{EtcdLockService, EtcdStore};

/// The name this backend reports from [`lockcore::LockService::backend`].
pub const BACKEND: &str = error::BACKEND;
