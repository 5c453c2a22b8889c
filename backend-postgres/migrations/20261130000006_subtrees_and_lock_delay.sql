-- Subtree locks and lock-delay (issue 12), by the rules of lockcore::store and lockcore::path.
--
-- Data. Holders and queue entries get a scope ('object' or 'subtree'); holders get the
-- lock-delay they were granted with. A subtree holder (or queue entry) on P covers P and every
-- id under it: the ids that start with P || '/'. Two claims conflict when their modes conflict
-- and what they cover intersects, so a claim on Q in scope S meets
--   * the holders and queue entries of Q itself (any scope),
--   * the subtree holders and entries of each proper ancestor of Q (lockd_ancestors), and
--   * for S = 'subtree', every holder and entry strictly under Q: object >= Q || '/' and
--     object < Q || '0' ('0' is the byte after '/'), a range of the primary keys, whose
--     `object` column is in the "C" collation, so byte order. (The range is closed on the
--     left and open on the right; `Q || '/'` itself is not a valid object id.)
-- Each is found through an index: equality on the primary key, equality on the partial
-- indexes of subtree rows below (so many object holders of an ancestor are never read), and
-- the primary key range. Nothing unrelated is read.
--
-- Lock-delay. A holder granted with lock_delay d that is not released but expires keeps
-- blocking the claims it conflicts with until expires_at + d: its row stays until then (no
-- function treats it as a holder: release, renew, validate, downgrade, take-back, replay and
-- inspect/list holders all require expires_at > now) and is deleted lazily afterwards, by
-- the next acquire of its object or by the reaper. A release deletes the row at once. A
-- renewal keeps the row's lock_delay.
--
-- The phantom problem. Until now every decision about an object was made under the row lock
-- of its `objects` row, and every change to its holders and queue was made under that lock
-- too. A claim now also reads rows of other objects (ancestors, the range under a subtree
-- claim) without their row locks, and a row that is absent cannot be locked: two
-- transactions could each see the other's row missing (a subtree claim on /a finds nothing
-- under /a while an object claim on /a/x finds no subtree holder on /a) and both grant.
-- So conflicting decisions are serialised by transaction-scoped advisory locks on "tree
-- keys" (lockd_tree_key: a 64-bit hash of the schema and the id), taken by lockd_lock_tree:
--   * every claim takes the key of each proper ancestor of its object in SHARE mode;
--   * a subtree claim takes the key of its own object in EXCLUSIVE mode.
-- A subtree claim on P and any claim strictly under P (object or subtree) thus conflict on
-- P's key, in whichever order they arrive, and the later one waits until the earlier one has
-- committed; claims that cannot conflict through the tree (two claims under P, siblings) share
-- their keys and run in parallel. Claims on the same object still meet on its row lock. A
-- hash collision between two ids can only make two requests wait for each other needlessly,
-- never let a conflict through.
--
-- Seeing the other's rows. Each function runs in one READ COMMITTED transaction (checked
-- by lockd_lock_tree; lockd also sets default_transaction_isolation on its connections),
-- and each statement of a VOLATILE PL/pgSQL function takes a new snapshot. The advisory
-- locks are taken by statements that end before any statement reading holders or queue rows
-- begins, and a transaction's locks are released only once its commit is visible, so every
-- read after a lock wait sees what the transaction it waited for wrote. Under REPEATABLE READ
-- or SERIALIZABLE the snapshot would be the one taken before the wait, so lockd refuses to
-- run there.
--
-- Who else takes tree keys. Only writes that can create a conflict need them: acquires
-- (grants and queue entries) and renewals. A renewal can let a holder live past the moment a
-- concurrent claim, reading it without its row lock, judged it expired (the renewal's clock
-- was read before the expiry, its commit came after the claim's snapshot); so lockd_renew
-- takes the SHARE keys of the holders' ancestors, and the EXCLUSIVE key of a subtree holder's
-- own object, like an acquire of the same claims. Releases, take-backs, downgrades, waiters
-- leaving and the reaper only remove or weaken conflicts: a claim that saw the old rows
-- refuses where it could have granted, and is woken to try again.
--
-- No deadlocks. A function takes all its tree keys first, one at a time in ascending key
-- order with the strongest mode asked for each key, and only then its objects rows in byte
-- order of the names (lockd_lock_objects). Functions that take no tree keys take row locks
-- only, in that order; the reaper never waits (SKIP LOCKED). Every transaction therefore
-- acquires its locks in one global order (keys, then rows), so no cycle of waits can form.
-- A request with many deep objects takes up to 64 x 31 keys; PostgreSQL's lock table holds
-- max_locks_per_transaction x max_connections entries in all (6400 by default), so such
-- extreme requests under heavy concurrency may fail as unavailable ("out of shared memory",
-- SQLSTATE 53200), never grant wrongly.
--
-- Wake-ups. Whatever removes or weakens a holder or queue entry on P calls lockd_wake(P,
-- subtree), which NOTIFYs when a queue entry may be blocked by it: on P, a subtree entry on
-- an ancestor of P, or, for a subtree holder or entry, any entry under P. The payload is P
-- for WaitQueue::wake(P), and P || E'\tsubtree' for WaitQueue::wake_subtree(P) (object ids
-- contain no control characters, so the two cannot be confused). The end of a lock-delay is
-- not announced: a waiter refused by it is told the time left (retry_after) and tries again
-- then.
--
-- lockd processes of earlier versions cannot run against this schema (lockd_acquire changed
-- its arguments; their calls fail as unavailable): stop them before upgrading. Held locks
-- keep working: they become object-scoped holders without lock-delay.

ALTER TABLE holders
    ADD COLUMN scope text NOT NULL DEFAULT 'object' CHECK (scope IN ('object', 'subtree')),
    ADD COLUMN lock_delay interval NOT NULL DEFAULT '0' CHECK (lock_delay >= '0');

ALTER TABLE queue
    ADD COLUMN scope text NOT NULL DEFAULT 'object' CHECK (scope IN ('object', 'subtree'));

-- The subtree holders and queue entries of an id: what a claim under it looks up for each of
-- its ancestors, without reading the ancestors' object holders and entries.
CREATE INDEX holders_subtrees ON holders (object) WHERE scope = 'subtree';
CREATE INDEX queue_subtrees ON queue (object) WHERE scope = 'subtree';

-- The proper ancestors of `p_object`, nearest to the root first (lockcore::path::ancestors):
-- '/vol/a/x' has '/vol' and '/vol/a'; 'vol/a' has 'vol'; a one-segment id has none.
CREATE FUNCTION lockd_ancestors(p_object text) RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(array_agg(a.id ORDER BY a.k), '{}')
      FROM (SELECT k, array_to_string(s[1:k], '/') AS id
              FROM string_to_array(p_object, '/') AS s,
                   generate_series(1, cardinality(s) - 1) AS k) AS a
     WHERE a.id <> ''
$$;

-- The advisory lock key of an id in this schema's tree (see "The phantom problem" above).
CREATE FUNCTION lockd_tree_key(p_object text) RETURNS bigint
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT hashtextextended(current_schema() || ':' || p_object, 0)
$$;

-- Takes the tree keys of a request, for the rest of the transaction: EXCLUSIVE the key of each
-- id of `p_roots` (subtree claims), SHARE the key of each proper ancestor of each id of
-- `p_objects`; one lock per key in the strongest mode asked, in ascending key order.
CREATE FUNCTION lockd_lock_tree(p_roots text[], p_objects text[]) RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_key bigint;
    v_exclusive boolean;
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'lockd needs READ COMMITTED transactions, not %',
            current_setting('transaction_isolation') USING ERRCODE = '25000';
    END IF;
    FOR v_key, v_exclusive IN
        SELECT k.key, bool_or(k.exclusive)
          FROM (SELECT lockd_tree_key(r) AS key, true AS exclusive
                  FROM unnest(p_roots) AS r
                UNION ALL
                SELECT lockd_tree_key(a), false
                  FROM unnest(p_objects) AS o, unnest(lockd_ancestors(o)) AS a) AS k
         GROUP BY k.key
         ORDER BY k.key
    LOOP
        IF v_exclusive THEN
            PERFORM pg_advisory_xact_lock(v_key);
        ELSE
            PERFORM pg_advisory_xact_lock_shared(v_key);
        END IF;
    END LOOP;
END
$$;

-- The holders in conflict at `p_t` with a claim on `p_object` in mode `p_mode`, scope subtree
-- if `p_subtree`: live ones (c_live) and expired ones whose lock-delay is in force, with the
-- moment each stops blocking (c_until: its expiry, or the end of its delay).
CREATE FUNCTION lockd_conflicting_holders(
    p_object text, p_mode text, p_subtree boolean, p_t timestamptz)
RETURNS TABLE (c_object text, c_fence bigint, c_owner text, c_live boolean,
               c_until timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT h.object, h.fence, h.owner, h.expires_at > p_t,
           CASE WHEN h.expires_at > p_t THEN h.expires_at ELSE h.expires_at + h.lock_delay END
      FROM holders h
     WHERE h.object = p_object
       AND (p_mode = 'exclusive' OR h.mode = 'exclusive')
       AND h.expires_at + h.lock_delay > p_t
    UNION ALL
    SELECT h.object, h.fence, h.owner, h.expires_at > p_t,
           CASE WHEN h.expires_at > p_t THEN h.expires_at ELSE h.expires_at + h.lock_delay END
      FROM holders h
     WHERE h.object = ANY (lockd_ancestors(p_object)) AND h.scope = 'subtree'
       AND (p_mode = 'exclusive' OR h.mode = 'exclusive')
       AND h.expires_at + h.lock_delay > p_t
    UNION ALL
    SELECT h.object, h.fence, h.owner, h.expires_at > p_t,
           CASE WHEN h.expires_at > p_t THEN h.expires_at ELSE h.expires_at + h.lock_delay END
      FROM holders h
     WHERE p_subtree
       AND h.object >= (p_object || '/') COLLATE "C" AND h.object < (p_object || '0') COLLATE "C"
       AND (p_mode = 'exclusive' OR h.mode = 'exclusive')
       AND h.expires_at + h.lock_delay > p_t
$$;

-- The live queue entries in conflict at `p_t` with a claim on `p_object` in mode `p_mode`,
-- scope subtree if `p_subtree`, that arrived before ticket `p_ticket` (all of them for NULL).
CREATE FUNCTION lockd_conflicting_entries(
    p_object text, p_mode text, p_subtree boolean, p_t timestamptz, p_ticket bigint)
RETURNS TABLE (c_object text, c_ticket bigint, c_owner text, c_expires_at timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT q.object, q.ticket, q.owner, q.expires_at
      FROM queue q
     WHERE q.object = p_object
       AND (p_mode = 'exclusive' OR q.mode = 'exclusive')
       AND q.expires_at > p_t AND (p_ticket IS NULL OR q.ticket < p_ticket)
    UNION ALL
    SELECT q.object, q.ticket, q.owner, q.expires_at
      FROM queue q
     WHERE q.object = ANY (lockd_ancestors(p_object)) AND q.scope = 'subtree'
       AND (p_mode = 'exclusive' OR q.mode = 'exclusive')
       AND q.expires_at > p_t AND (p_ticket IS NULL OR q.ticket < p_ticket)
    UNION ALL
    SELECT q.object, q.ticket, q.owner, q.expires_at
      FROM queue q
     WHERE p_subtree
       AND q.object >= (p_object || '/') COLLATE "C" AND q.object < (p_object || '0') COLLATE "C"
       AND (p_mode = 'exclusive' OR q.mode = 'exclusive')
       AND q.expires_at > p_t AND (p_ticket IS NULL OR q.ticket < p_ticket)
$$;

-- NOTIFYs the waiters that a holder or queue entry on `p_object` (a subtree one if
-- `p_subtree`) may have blocked, if there are any: payload `p_object` for
-- WaitQueue::wake, `p_object || E'\tsubtree'` for WaitQueue::wake_subtree.
DROP FUNCTION lockd_wake(text);

CREATE FUNCTION lockd_wake(p_object text, p_subtree boolean) RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM queue q WHERE q.object = p_object)
       OR EXISTS (SELECT 1 FROM queue q
                   WHERE q.object = ANY (lockd_ancestors(p_object)) AND q.scope = 'subtree')
       OR (p_subtree AND EXISTS (
               SELECT 1 FROM queue q
                WHERE q.object >= (p_object || '/') COLLATE "C"
                  AND q.object < (p_object || '0') COLLATE "C"))
    THEN
        PERFORM pg_notify('lockd_free_' || current_schema(),
                          CASE WHEN p_subtree THEN p_object || E'\tsubtree' ELSE p_object END);
    END IF;
END
$$;

DROP FUNCTION lockd_acquire(text, text[], text[], bytea[], bigint, boolean, bigint, bigint);

-- One attempt to grant `p_owner` every object `p_objects[i]` in mode `p_modes[i]` and scope
-- `p_scopes[i]` under digest `p_digests[i]`, all or none, for `p_ttl_ms`, with lock-delay
-- `p_lock_delay_us`. `p_queue`: whether a refused attempt joins (or stays in) the queues, with
-- ticket `p_ticket` (NULL: draw one) and entries lasting `p_keep_ms`.
--
-- Granted: one row per claim, in claim order: r_kind 'granted', r_index, r_fence, r_mode,
-- r_remaining_us and r_replayed (the object is held by this very digest: a retry of the
-- granting request, answered in the held grant's mode, and now marked claimed). The request's
-- queue entries are deleted.
-- Refused: one row per claim in conflict, in claim order: r_kind 'held', 'lock_delay' or
-- 'queued' (what blocks it: the holder or lock-delay that ends last, else the earliest queue
-- entry in conflict), r_ticket (when queueing), r_index, r_object (the blocker's object),
-- r_holder (its owner) and r_remaining_us (until it ends). When the attempt drew its ticket,
-- then up to 64 rows r_kind 'blocker': each live holder in conflict with a claim (r_object,
-- r_fence, r_holder), once, with r_index and r_mode the claim's (exclusive if any claim it
-- blocks asks for exclusive).
CREATE FUNCTION lockd_acquire(
    p_owner text, p_objects text[], p_modes text[], p_scopes text[], p_digests bytea[],
    p_ttl_ms bigint, p_lock_delay_us bigint, p_queue boolean, p_ticket bigint,
    p_keep_ms bigint)
RETURNS TABLE (r_kind text, r_ticket bigint, r_index integer, r_object text, r_fence bigint,
               r_mode text, r_holder text, r_remaining_us bigint, r_replayed boolean)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_n integer := coalesce(cardinality(p_objects), 0);
    v_t timestamptz;
    v_floor bigint;
    v_i integer;
    v_ticket bigint := p_ticket;
    v_drew boolean := false;
    v_replayed boolean[];
    v_kind text[];
    v_blocker text[];
    v_blocker_object text[];
    v_until timestamptz[];
    v_refused boolean := false;
    v_object text;
    v_subtree boolean;
    v_who text;
    v_what text;
    v_live boolean;
    v_when timestamptz;
    v_fence bigint;
BEGIN
    IF v_n = 0 OR coalesce(cardinality(p_modes), 0) <> v_n
       OR coalesce(cardinality(p_scopes), 0) <> v_n
       OR coalesce(cardinality(p_digests), 0) <> v_n THEN
        RAISE EXCEPTION 'lockd_acquire: % objects, % modes, % scopes, % digests',
            v_n, cardinality(p_modes), cardinality(p_scopes), cardinality(p_digests)
            USING ERRCODE = '22023';
    END IF;
    IF EXISTS (SELECT 1 FROM unnest(p_scopes) AS s
                WHERE s IS DISTINCT FROM 'object' AND s IS DISTINCT FROM 'subtree') THEN
        RAISE EXCEPTION 'lockd_acquire: scopes %', p_scopes USING ERRCODE = '22023';
    END IF;
    -- Tree keys first, then the objects rows: see "No deadlocks" above.
    PERFORM lockd_lock_tree(
        ARRAY(SELECT u.o FROM unnest(p_objects, p_scopes) AS u(o, s) WHERE u.s = 'subtree'),
        p_objects);
    PERFORM lockd_lock_objects(p_objects, true);
    -- Read the clock once every lock is ours: nothing in conflict can change from here on.
    v_t := clock_timestamp();
    v_floor := lockd_clock_floor(v_t);
    -- Holders expired (and past their lock-delay) and entries expired do not exist; their
    -- objects' waiters may go now.
    FOR v_object, v_subtree IN
        DELETE FROM holders h
         WHERE h.object = ANY (p_objects) AND h.expires_at + h.lock_delay <= v_t
        RETURNING h.object, h.scope = 'subtree'
    LOOP
        PERFORM lockd_wake(v_object, v_subtree);
    END LOOP;
    DELETE FROM queue q WHERE q.object = ANY (p_objects) AND q.expires_at <= v_t;

    FOR v_i IN 1 .. v_n LOOP
        -- 1. Already held by this digest: the retry of a granted request.
        v_replayed[v_i] := EXISTS (SELECT 1 FROM holders h
                                    WHERE h.object = p_objects[v_i] AND h.digest = p_digests[v_i]
                                      AND h.expires_at > v_t);
        CONTINUE WHEN v_replayed[v_i];
        -- 2. No holder or lock-delay, and no earlier queue entry, in conflict anywhere in the
        -- tree. Of the holders, the one blocking longest is named.
        SELECT c.c_object, c.c_owner, c.c_live, c.c_until INTO v_what, v_who, v_live, v_when
          FROM lockd_conflicting_holders(p_objects[v_i], p_modes[v_i],
                                         p_scopes[v_i] = 'subtree', v_t) AS c
         ORDER BY c.c_until DESC
         LIMIT 1;
        IF FOUND THEN
            v_kind[v_i] := CASE WHEN v_live THEN 'held' ELSE 'lock_delay' END;
        ELSE
            SELECT e.c_object, e.c_owner, e.c_expires_at INTO v_what, v_who, v_when
              FROM lockd_conflicting_entries(p_objects[v_i], p_modes[v_i],
                                             p_scopes[v_i] = 'subtree', v_t, v_ticket) AS e
             ORDER BY e.c_ticket
             LIMIT 1;
            IF FOUND THEN
                v_kind[v_i] := 'queued';
            END IF;
        END IF;
        IF v_kind[v_i] IS NOT NULL THEN
            v_refused := true;
            v_blocker[v_i] := v_who;
            v_blocker_object[v_i] := v_what;
            v_until[v_i] := v_when;
        END IF;
    END LOOP;

    IF v_refused THEN
        IF p_queue AND v_ticket IS NULL THEN
            v_ticket := nextval('tickets');
            v_drew := true;
            INSERT INTO queue (object, ticket, mode, owner, expires_at, scope)
            SELECT u.o, v_ticket, u.m, p_owner, v_t + p_keep_ms * interval '1 millisecond', u.s
              FROM unnest(p_objects, p_modes, p_scopes) AS u(o, m, s);
        ELSE
            IF p_queue THEN
                INSERT INTO queue AS q (object, ticket, mode, owner, expires_at, scope)
                SELECT u.o, v_ticket, u.m, p_owner, v_t + p_keep_ms * interval '1 millisecond',
                       u.s
                  FROM unnest(p_objects, p_modes, p_scopes) AS u(o, m, s)
                ON CONFLICT (object, ticket) DO UPDATE SET expires_at = excluded.expires_at;
            END IF;
            -- Nothing of this attempt must survive a crash: its locks vanish anyway, and a
            -- queue entry lost with it is renewed by the waiter's next attempt. Not waiting
            -- for the WAL flush makes a woken waiter's refused retry cost no fsync. (A drawn
            -- ticket above is flushed, so the sequence never hands it out twice.)
            PERFORM set_config('synchronous_commit', 'off', true);
        END IF;
        FOR v_i IN 1 .. v_n LOOP
            CONTINUE WHEN v_kind[v_i] IS NULL;
            r_kind := v_kind[v_i];
            r_ticket := CASE WHEN p_queue THEN v_ticket END;
            r_index := v_i;
            r_object := v_blocker_object[v_i];
            r_fence := NULL;
            r_mode := NULL;
            r_holder := v_blocker[v_i];
            r_remaining_us := lockd_micros_left(v_until[v_i], v_t);
            r_replayed := false;
            RETURN NEXT;
        END LOOP;
        IF v_drew THEN
            -- The request starts waiting: name the live holders it waits behind, so that they
            -- can be told someone wants what they hold.
            RETURN QUERY
            SELECT 'blocker'::text, v_ticket, b.i, b.c_object, b.c_fence, b.m, b.c_owner,
                   NULL::bigint, false
              FROM (SELECT DISTINCT ON (c.c_object, c.c_fence)
                           u.i::integer AS i, u.m, c.c_object, c.c_fence, c.c_owner
                      FROM unnest(p_objects, p_modes, p_scopes) WITH ORDINALITY AS u(o, m, s, i),
                           lockd_conflicting_holders(u.o, u.m, u.s = 'subtree', v_t) AS c
                     WHERE c.c_live AND NOT coalesce(v_replayed[u.i], false)
                     ORDER BY c.c_object, c.c_fence, u.m = 'exclusive' DESC, u.i
                     LIMIT 64) AS b
             ORDER BY b.i, b.c_object, b.c_fence;
        END IF;
        RETURN;
    END IF;

    FOR v_i IN 1 .. v_n LOOP
        r_kind := 'granted';
        r_ticket := NULL;
        r_index := v_i;
        r_object := NULL;
        r_holder := NULL;
        r_replayed := v_replayed[v_i];
        IF r_replayed THEN
            UPDATE holders h SET claimed = true
             WHERE h.object = p_objects[v_i] AND h.digest = p_digests[v_i]
               AND h.expires_at > v_t
            RETURNING h.fence, h.mode, h.expires_at INTO r_fence, r_mode, v_when;
            r_remaining_us := lockd_micros_left(v_when, v_t);
        ELSE
            -- fence = max(last fence + 1, clock floor): increasing while the row lives, and
            -- above every earlier fence after the row was reaped or the table emptied.
            UPDATE objects o SET fence = greatest(o.fence + 1, v_floor)
             WHERE o.object = p_objects[v_i]
            RETURNING o.fence INTO v_fence;
            INSERT INTO holders (object, fence, digest, owner, mode, acquired_at, expires_at,
                                 scope, lock_delay)
            VALUES (p_objects[v_i], v_fence, p_digests[v_i], p_owner, p_modes[v_i], v_t,
                    v_t + p_ttl_ms * interval '1 millisecond', p_scopes[v_i],
                    p_lock_delay_us * interval '1 microsecond');
            r_fence := v_fence;
            r_mode := p_modes[v_i];
            r_remaining_us := p_ttl_ms * 1000;
        END IF;
        RETURN NEXT;
    END LOOP;
    IF v_ticket IS NOT NULL THEN
        -- Granting never unblocks anyone (the holders are as strict as the entries were), so
        -- this needs no wake-up.
        DELETE FROM queue q WHERE q.object = ANY (p_objects) AND q.ticket = v_ticket;
    END IF;
END
$$;

-- As before (migration 5), waking with the entries' scope.
CREATE OR REPLACE FUNCTION lockd_leave_queue(p_ticket bigint, p_objects text[]) RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_object text;
    v_subtree boolean;
BEGIN
    -- Queue entries are soft state (they lapse by themselves): no need to wait for the flush.
    PERFORM set_config('synchronous_commit', 'off', true);
    PERFORM lockd_lock_objects(p_objects, false);
    FOR v_object, v_subtree IN
        DELETE FROM queue q WHERE q.object = ANY (p_objects) AND q.ticket = p_ticket
        RETURNING q.object, q.scope = 'subtree'
    LOOP
        PERFORM lockd_wake(v_object, v_subtree);
    END LOOP;
END
$$;

-- As before (migration 5), waking with the holders' scope.
CREATE OR REPLACE FUNCTION lockd_abandon(p_objects text[], p_digests bytea[],
                                         OUT r_status text)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_t timestamptz;
    v_object text;
    v_subtree boolean;
BEGIN
    PERFORM lockd_lock_objects(p_objects, false);
    v_t := clock_timestamp();
    r_status := 'absent';
    FOR v_object, v_subtree IN
        DELETE FROM holders h USING unnest(p_objects, p_digests) AS u(o, d)
         WHERE h.object = u.o AND h.digest = u.d AND h.expires_at > v_t AND NOT h.claimed
        RETURNING h.object, h.scope = 'subtree'
    LOOP
        r_status := 'took_back';
        PERFORM lockd_wake(v_object, v_subtree);
    END LOOP;
    IF r_status = 'absent' AND EXISTS (
        SELECT 1 FROM holders h, unnest(p_objects, p_digests) AS u(o, d)
         WHERE h.object = u.o AND h.digest = u.d AND h.expires_at > v_t) THEN
        r_status := 'claimed';
    END IF;
END
$$;

-- As before (migration 5): a release deletes the holder at once, lock-delay or not, and wakes
-- with its scope.
CREATE OR REPLACE FUNCTION lockd_release(p_objects text[], p_digests bytea[],
                                         p_fences bigint[])
RETURNS TABLE (r_index integer, r_status text)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_t timestamptz;
    v_i integer;
    v_subtree boolean;
BEGIN
    PERFORM lockd_lock_objects(p_objects, false);
    v_t := clock_timestamp();
    FOR v_i IN 1 .. coalesce(cardinality(p_objects), 0) LOOP
        r_index := v_i;
        DELETE FROM holders h
         WHERE h.object = p_objects[v_i] AND h.digest = p_digests[v_i]
           AND h.fence = p_fences[v_i] AND h.expires_at > v_t
        RETURNING h.scope = 'subtree' INTO v_subtree;
        IF FOUND THEN
            r_status := 'done';
            PERFORM lockd_wake(p_objects[v_i], v_subtree);
        ELSE
            r_status := lockd_absent_verdict(p_objects[v_i], v_t);
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;

-- As before (migration 5), after taking the tree keys of the holders named (see "Who else
-- takes tree keys" above). A holder's scope never changes, so reading it before any lock is
-- enough to know which keys to take.
CREATE OR REPLACE FUNCTION lockd_renew(p_objects text[], p_digests bytea[], p_fences bigint[],
                                       p_ttl_ms bigint)
RETURNS TABLE (r_index integer, r_status text, r_owner text, r_mode text,
               r_remaining_us bigint)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_t timestamptz;
    v_i integer;
BEGIN
    PERFORM lockd_lock_tree(
        ARRAY(SELECT h.object FROM holders h, unnest(p_objects, p_fences) AS u(o, f)
               WHERE h.object = u.o AND h.fence = u.f AND h.scope = 'subtree'),
        p_objects);
    PERFORM lockd_lock_objects(p_objects, false);
    v_t := clock_timestamp();
    FOR v_i IN 1 .. coalesce(cardinality(p_objects), 0) LOOP
        r_index := v_i;
        UPDATE holders h SET expires_at = v_t + p_ttl_ms * interval '1 millisecond'
         WHERE h.object = p_objects[v_i] AND h.digest = p_digests[v_i]
           AND h.fence = p_fences[v_i] AND h.expires_at > v_t
        RETURNING h.owner, h.mode INTO r_owner, r_mode;
        IF FOUND THEN
            r_status := 'done';
            r_remaining_us := p_ttl_ms * 1000;
        ELSE
            r_status := lockd_absent_verdict(p_objects[v_i], v_t);
            r_owner := NULL;
            r_mode := NULL;
            r_remaining_us := NULL;
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;

-- As before (migration 5), waking with the holder's scope.
CREATE OR REPLACE FUNCTION lockd_downgrade(p_object text, p_digest bytea, p_fence bigint,
    OUT r_status text, OUT r_owner text, OUT r_mode text, OUT r_remaining_us bigint)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_t timestamptz;
    v_was text;
    v_subtree boolean;
    v_until timestamptz;
BEGIN
    PERFORM lockd_lock_objects(ARRAY[p_object], false);
    v_t := clock_timestamp();
    SELECT h.owner, h.mode, h.scope = 'subtree', h.expires_at
      INTO r_owner, v_was, v_subtree, v_until
      FROM holders h
     WHERE h.object = p_object AND h.digest = p_digest AND h.fence = p_fence
       AND h.expires_at > v_t;
    IF NOT FOUND THEN
        r_status := lockd_absent_verdict(p_object, v_t);
        RETURN;
    END IF;
    IF v_was = 'exclusive' THEN
        UPDATE holders h SET mode = 'shared'
         WHERE h.object = p_object AND h.fence = p_fence;
        PERFORM lockd_wake(p_object, v_subtree);
    END IF;
    r_status := 'done';
    r_mode := 'shared';
    r_remaining_us := lockd_micros_left(v_until, v_t);
END
$$;

-- As before (migration 5), keeping the rows of expired holders whose lock-delay is in force
-- (and their objects rows).
CREATE OR REPLACE FUNCTION lockd_reap(p_older_than_us bigint, p_batch integer) RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_t timestamptz := clock_timestamp();
    v_old_floor bigint;
    v_objects text[];
    v_deleted bigint;
BEGIN
    v_old_floor := lockd_clock_floor(v_t - p_older_than_us * interval '1 microsecond');
    SELECT array_agg(c.object) INTO v_objects
      FROM (SELECT o.object FROM objects o
             WHERE o.fence < v_old_floor
               AND NOT EXISTS (SELECT 1 FROM holders h
                                WHERE h.object = o.object
                                  AND h.expires_at + h.lock_delay > v_t)
               AND NOT EXISTS (SELECT 1 FROM queue q
                                WHERE q.object = o.object AND q.expires_at > v_t)
             LIMIT p_batch
             FOR UPDATE OF o SKIP LOCKED) AS c;
    IF v_objects IS NULL THEN
        RETURN 0;
    END IF;
    DELETE FROM holders h
     WHERE h.object = ANY (v_objects) AND h.expires_at + h.lock_delay <= v_t;
    DELETE FROM queue q WHERE q.object = ANY (v_objects) AND q.expires_at <= v_t;
    DELETE FROM objects o
     WHERE o.object = ANY (v_objects)
       AND NOT EXISTS (SELECT 1 FROM holders h WHERE h.object = o.object)
       AND NOT EXISTS (SELECT 1 FROM queue q WHERE q.object = o.object);
    GET DIAGNOSTICS v_deleted = ROW_COUNT;
    RETURN v_deleted;
END
$$;
