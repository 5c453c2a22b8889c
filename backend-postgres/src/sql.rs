//! Every statement lockd sends for a lock operation: one per operation.
//!
//! Names resolve through the connection's `search_path`, which is lockd's schema. The functions
//! are defined in `migrations/`; each runs as one statement in one implicit transaction.

/// `$1` object, `$2` owner, `$3` token digest, `$4` TTL in ms, `$5` for how long releases of
/// the object must be announced if refused (ms; 0 for a non-blocking attempt), `$6` whether to
/// mark it so if granted too -> `(granted, fence, holder, remaining_us, replayed)`; `replayed`
/// when the object is held by this very digest (a retry of the request that was granted).
pub(crate) const ACQUIRE: &str = "SELECT r_granted, r_fence, r_holder, r_remaining_us, r_replayed \
                                  FROM lockd_acquire($1, $2, $3, $4, $5, $6)";

/// `$1` object, `$2` token digest -> `'took_back'`, `'claimed'` or `'absent'`: takes back a grant
/// whose acquire reply was lost, unless a retry claimed it.
pub(crate) const ABANDON: &str = "SELECT r_status FROM lockd_abandon($1, $2)";

/// `$1` object, `$2` ms: releases of the object are announced for that long.
pub(crate) const MARK_WANTED: &str = "SELECT lockd_mark_wanted($1, $2)";

/// `$1` object, `$2` token digest, `$3` fence -> `(status, fence)`.
pub(crate) const RELEASE: &str = "SELECT r_status, r_fence FROM lockd_release($1, $2, $3)";

/// `$1` object, `$2` token digest, `$3` fence, `$4` TTL in ms -> `(status, owner, fence)`.
pub(crate) const RENEW: &str = "SELECT r_status, r_owner, r_fence FROM lockd_renew($1, $2, $3, $4)";

/// Columns of a live lock row, shared by [`CURRENT`] and the list statements:
/// owner, digest, fence, acquired_at and expires_at in Unix µs, remaining µs, object.
macro_rules! live_columns {
    () => {
        "SELECT l.owner, l.token_digest, l.fence, \
                (extract(epoch FROM l.acquired_at) * 1000000)::bigint, \
                (extract(epoch FROM l.expires_at) * 1000000)::bigint, \
                greatest(0, (extract(epoch FROM l.expires_at - c.now) * 1000000)::bigint), \
                l.object \
         FROM locks l, clock_timestamp() AS c(now) \
         WHERE l.owner IS NOT NULL AND l.expires_at > c.now"
    };
}

/// `$1` object -> the live lock row, if any (by the database clock).
pub(crate) const CURRENT: &str = concat!(live_columns!(), " AND l.object = $1");

/// `$1` prefix, `$2` cursor (exclusive, `''` for the first page), `$3` limit, `$4` upper bound
/// (see `prefix_successor`) -> live rows in object order.
pub(crate) const LIST_BOUNDED: &str = concat!(
    live_columns!(),
    " AND l.object >= $1 AND l.object > $2 AND l.object < $4 ORDER BY l.object LIMIT $3"
);

/// Like [`LIST_BOUNDED`] for prefixes without an upper bound (the empty prefix).
pub(crate) const LIST_UNBOUNDED: &str = concat!(
    live_columns!(),
    " AND l.object >= $1 AND l.object > $2 ORDER BY l.object LIMIT $3"
);
