//! lockd backend on Redis: one Lua script round trip per operation, Redis's clock for expiry.
