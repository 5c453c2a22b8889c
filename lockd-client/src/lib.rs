//! Rust client for lockd's HTTP API; itself a LockService.
