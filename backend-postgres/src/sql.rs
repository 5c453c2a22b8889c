//! Every statement lockd sends for a lock operation: one per operation, whatever the number of
//! objects (they travel as arrays).
//!
//! Names resolve through the connection's `search_path`, which is lockd's schema. The functions
//! are defined in `migrations/` (the tables in `20261129000005_modes_and_queue.sql`, scopes,
//! lock-delay and the tree keys in `20261130000006_subtrees_and_lock_delay.sql`); each runs as
//! one statement in one implicit transaction.

/// `$1` owner, `$2` objects, `$3` modes, `$4` scopes, `$5` token digests (arrays in claim
/// order), `$6` TTL in ms, `$7` lock-delay in µs, `$8` whether a refusal queues, `$9` the
/// request's ticket (NULL: draw one when queueing), `$10` how long its queue entries last (ms)
/// -> `(kind, ticket, index, object, fence, mode, holder, remaining_us, replayed)`:
/// granted: one row per claim `('granted', NULL, index, NULL, fence, mode, NULL, remaining_us,
/// replayed)`; refused: one row per claim in conflict `(cause, ticket, index, blocker's object,
/// NULL, NULL, blocker's owner, remaining_us, false)` with cause `'held'`, `'lock_delay'` or
/// `'queued'`, then, when the attempt drew its ticket, up to 64 `('blocker', ticket, index,
/// holder's object, holder's fence, wanted mode, holder's owner, NULL, false)`.
pub(crate) const ACQUIRE: &str =
    "SELECT r_kind, r_ticket, r_index, r_object, r_fence, r_mode, r_holder, r_remaining_us, \
            r_replayed \
     FROM lockd_acquire($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";

/// `$1` ticket, `$2` objects: the ticket leaves their queues, their other waiters are woken.
pub(crate) const LEAVE_QUEUE: &str = "SELECT lockd_leave_queue($1, $2)";

/// `$1` objects, `$2` token digests -> `'took_back'`, `'claimed'` or `'absent'`: takes back
/// the grants of an attempt whose reply was lost, unless a retry claimed them.
pub(crate) const ABANDON: &str = "SELECT r_status FROM lockd_abandon($1, $2)";

/// `$1` objects, `$2` digests, `$3` fences -> one `(index, status)` per holder, status
/// `'done'`, `'not_held'` or `'mismatch'`.
pub(crate) const RELEASE: &str = "SELECT r_index, r_status FROM lockd_release($1, $2, $3)";

/// `$1` objects, `$2` digests, `$3` fences, `$4` TTL in ms -> one
/// `(index, status, owner, mode, remaining_us)` per holder.
pub(crate) const RENEW: &str = "SELECT r_index, r_status, r_owner, r_mode, r_remaining_us \
                                FROM lockd_renew($1, $2, $3, $4)";

/// `$1` object, `$2` digest, `$3` fence -> `(status, owner, mode, remaining_us)`.
pub(crate) const DOWNGRADE: &str =
    "SELECT r_status, r_owner, r_mode, r_remaining_us FROM lockd_downgrade($1, $2, $3)";

/// `$1` object, `$2` digest, `$3` fence -> the holder named, else any other live holder
/// (`mine` false), else no row: `(owner, mode, remaining_us, mine)`.
pub(crate) const VALIDATE: &str =
    "SELECT h.owner, h.mode, lockd_micros_left(h.expires_at, c.now), \
            (h.digest = $2 AND h.fence = $3) AS mine \
     FROM holders h, clock_timestamp() AS c(now) \
     WHERE h.object = $1 AND h.expires_at > c.now \
     ORDER BY mine DESC LIMIT 1";

/// Columns of a holder row, shared by [`INSPECT`] and the list statements, for live holders
/// and for expired ones whose lock-delay is in force: owner, mode, fence, acquired_at and
/// expires_at in Unix µs, remaining µs (of the lease, or of the delay), object, scope, whether
/// it is live, the end of its lock-delay in Unix µs, and the number of live queue entries of
/// its object.
macro_rules! holder_columns {
    () => {
        "SELECT h.owner, h.mode, h.fence, \
                (extract(epoch FROM h.acquired_at) * 1000000)::bigint, \
                (extract(epoch FROM h.expires_at) * 1000000)::bigint, \
                lockd_micros_left(CASE WHEN h.expires_at > c.now THEN h.expires_at \
                                       ELSE h.expires_at + h.lock_delay END, c.now), \
                h.object, h.scope, h.expires_at > c.now, \
                (extract(epoch FROM h.expires_at + h.lock_delay) * 1000000)::bigint, \
                (SELECT count(*) FROM queue q \
                  WHERE q.object = h.object AND q.expires_at > c.now) "
    };
}

/// `$1` object -> its live holders and its holders in lock-delay, by fence (by the database
/// clock).
pub(crate) const INSPECT: &str = concat!(
    holder_columns!(),
    "FROM holders h, clock_timestamp() AS c(now) \
     WHERE h.object = $1 AND h.expires_at + h.lock_delay > c.now ORDER BY h.fence"
);

/// The objects of one page (those with live holders) and their holders, live or in
/// lock-delay, in object then fence order. `$3` is the number of objects (not rows) to
/// return. The page is an index range scan of `holders`' primary key (its `object` column
/// is in the "C" collation, so the bounds are byte-wise), stopping after `$3` objects.
macro_rules! list_page {
    ($upper:literal) => {
        concat!(
            "WITH c AS MATERIALIZED (SELECT clock_timestamp() AS now), \
             page AS (SELECT DISTINCT h.object FROM holders h, c \
                      WHERE h.expires_at > c.now AND h.object >= $1 AND h.object > $2 ",
            $upper,
            "         ORDER BY h.object LIMIT $3) ",
            holder_columns!(),
            "FROM holders h JOIN page p ON p.object = h.object, c \
             WHERE h.expires_at + h.lock_delay > c.now ORDER BY h.object, h.fence"
        )
    };
}

/// `$1` prefix, `$2` cursor (exclusive, `''` for the first page), `$3` objects, `$4` upper
/// bound (see `prefix_successor`) -> live holders of the page's objects.
pub(crate) const LIST_BOUNDED: &str = list_page!("AND h.object < $4");

/// Like [`LIST_BOUNDED`] for prefixes without an upper bound (the empty prefix).
pub(crate) const LIST_UNBOUNDED: &str = list_page!("");

/// `$1` µs, `$2` batch -> how many free objects rows the reaper deleted.
pub(crate) const REAP: &str = "SELECT lockd_reap($1, $2)";
