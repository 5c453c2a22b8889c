//! lockd backend on PostgreSQL: one statement per operation, rows decided by row locking.
