#![doc = include_str!("../README.md")]

mod config;
mod dedicated;
mod error;
mod keys;
mod listener;
mod reply;
mod scripts;
mod service;

pub use config::RedisConfig;
pub use scripts::{acquire_script_source, release_script_source};
pub use service::{RedisLockService, RedisStore};

/// The name this backend reports from [`lockcore::LockService::backend`].
pub const BACKEND: &str = error::BACKEND;
