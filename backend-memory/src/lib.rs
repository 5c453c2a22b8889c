#![doc = include_str!("../README.md")]

mod config;
mod service;
mod slot;
mod timers;

pub use config::MemoryConfig;
pub use service::{MemoryLockService, MemoryStore, BACKEND};

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tree_tests;
