//! The lockd server.
