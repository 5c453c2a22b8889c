-- Lock modes, multi-object requests and the arrival-ordered queue of waiters (issue 11).
--
-- The rules are lockcore::store's. Until now an object had one row in `locks` holding both its
-- last fence and its one holder. Shared holders need a row each, and waiters need queue rows
-- that every lockd process sees, so the data is split in three tables:
--
--   objects  one row per object locked recently: its last fence. The row lock of this row
--            serialises every change to the object's holders and queue entries.
--   holders  one row per grant: digest, fence, owner, mode, acquired_at, expires_at, claimed.
--   queue    one row per (object, ticket) of a waiting request: mode, owner, expires_at.
--            Tickets come from the one sequence `tickets`, so they order all waiters.
--
-- Expiry is decided on the database clock (clock_timestamp()) alone: a holder or queue entry
-- whose expires_at has passed does not exist, and is deleted when next seen.
--
-- Concurrency. Every function that changes holders or queue entries first locks the `objects`
-- rows of its objects (creating missing ones only for an acquire) one at a time, in byte order
-- of their names (lockd_lock_objects), and only then reads or writes the holders and queue rows
-- of those objects. Two requests naming the same objects in any order therefore take their row
-- locks in the same order and cannot deadlock inside PostgreSQL; a request's cost depends on
-- its own objects only (every lookup is by primary key prefix). The reaper takes row locks
-- with SKIP LOCKED, so it never waits for anyone either.
--
-- Wake-ups. A release, a downgrade, a take-back or a waiter leaving the queue NOTIFYs channel
-- 'lockd_free_<schema>' with the object as payload when (and only when) the object has queue
-- rows: every waiting request has them from its first refusal on, so nobody else needs one.
-- (NOTIFY serialises commits database-wide; uncontended releases stay parallel.)
--
-- lockd processes of earlier versions cannot run against this schema (their functions are
-- gone; their calls fail as unavailable): stop them before upgrading. Locks they granted
-- survive as exclusive holders with the same digest and fence, so their tokens stay valid.

CREATE TABLE objects (
    object text COLLATE "C" PRIMARY KEY,
    -- The last fence issued for the object (0: none yet).
    fence  bigint NOT NULL CHECK (fence >= 0)
) WITH (fillfactor = 80);

COMMENT ON TABLE objects IS
    'lockd objects locked recently: the last fence of each; its row lock serialises the object';

CREATE TABLE holders (
    object      text COLLATE "C" NOT NULL,
    fence       bigint      NOT NULL CHECK (fence > 0),
    digest      bytea       NOT NULL,
    owner       text        NOT NULL,
    mode        text        NOT NULL CHECK (mode IN ('exclusive', 'shared')),
    acquired_at timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    -- Whether a retry of the granting request was answered with this grant (see lockd_abandon).
    claimed     boolean     NOT NULL DEFAULT false,
    PRIMARY KEY (object, fence)
) WITH (fillfactor = 80);

COMMENT ON TABLE holders IS 'lockd grants: one row per holder; expired rows do not count';

CREATE SEQUENCE tickets AS bigint;

CREATE TABLE queue (
    object     text COLLATE "C" NOT NULL,
    ticket     bigint      NOT NULL,
    mode       text        NOT NULL CHECK (mode IN ('exclusive', 'shared')),
    owner      text        NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (object, ticket)
) WITH (fillfactor = 80);

COMMENT ON TABLE queue IS 'lockd waiters: one row per object of a waiting request, by ticket';

-- Move the data: every row keeps its fence; live locks become exclusive holders.
INSERT INTO objects (object, fence) SELECT object, fence FROM locks;
INSERT INTO holders (object, fence, digest, owner, mode, acquired_at, expires_at, claimed)
SELECT object, fence, token_digest, owner, 'exclusive', acquired_at, expires_at, claimed
  FROM locks
 WHERE owner IS NOT NULL AND expires_at > clock_timestamp();

DROP FUNCTION lockd_acquire(text, text, bytea, bigint, bigint, boolean);
DROP FUNCTION lockd_abandon(text, bytea);
DROP FUNCTION lockd_mark_wanted(text, bigint);
DROP FUNCTION lockd_release(text, bytea, bigint);
DROP FUNCTION lockd_renew(text, bytea, bigint, bigint);
DROP TABLE locks;

-- The fence clock floor of moment `p_t`: unix_micros(p_t) << 10
-- (10 = lockcore::fence::FENCE_CLOCK_SHIFT).
CREATE FUNCTION lockd_clock_floor(p_t timestamptz) RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT (extract(epoch FROM p_t) * 1000000)::bigint << 10
$$;

-- Microseconds from `p_t` until `p_until`, at least 0.
CREATE FUNCTION lockd_micros_left(p_until timestamptz, p_t timestamptz) RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT greatest(0, (extract(epoch FROM p_until - p_t) * 1000000)::bigint)
$$;

-- Locks the `objects` rows of `p_objects` FOR UPDATE, one at a time in byte order of the
-- names, so that every caller takes them in the same order. With `p_create`, missing rows are
-- created (fence 0) and locked too; without, missing objects are skipped (they have no holders
-- and no queue entries).
CREATE FUNCTION lockd_lock_objects(p_objects text[], p_create boolean) RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_object text;
BEGIN
    FOR v_object IN
        SELECT DISTINCT u.o COLLATE "C" FROM unnest(p_objects) AS u(o) ORDER BY 1
    LOOP
        LOOP
            PERFORM 1 FROM objects o WHERE o.object = v_object FOR UPDATE;
            EXIT WHEN FOUND OR NOT p_create;
            -- A concurrent creator of the same row makes this wait for its commit; a reaper
            -- deleting it makes the FOR UPDATE above find nothing: both end in the loop.
            INSERT INTO objects (object, fence) VALUES (v_object, 0)
                ON CONFLICT (object) DO NOTHING;
        END LOOP;
    END LOOP;
END
$$;

-- NOTIFYs the waiters of `p_object`, if it has any.
CREATE FUNCTION lockd_wake(p_object text) RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM queue q WHERE q.object = p_object) THEN
        PERFORM pg_notify('lockd_free_' || current_schema(), p_object);
    END IF;
END
$$;

-- One attempt to grant `p_owner` every object `p_objects[i]` in mode `p_modes[i]` under digest
-- `p_digests[i]`, all or none, for `p_ttl_ms`. `p_queue`: whether a refused attempt joins (or
-- stays in) the queues, with ticket `p_ticket` (NULL: draw one) and entries lasting
-- `p_keep_ms`.
--
-- Granted: one row per claim, in claim order: r_granted, r_index, r_fence, r_mode,
-- r_remaining_us and r_replayed (the object is held by this very digest: a retry of the
-- granting request, answered in the held grant's mode, and now marked claimed). The request's
-- queue entries are deleted.
-- Refused: one row per claim in conflict, in claim order: r_granted false, r_ticket (when
-- queueing), r_index, r_holder (the owner of a blocking holder, or of an earlier queue entry)
-- and r_remaining_us (until that one expires).
CREATE FUNCTION lockd_acquire(
    p_owner text, p_objects text[], p_modes text[], p_digests bytea[], p_ttl_ms bigint,
    p_queue boolean, p_ticket bigint, p_keep_ms bigint)
RETURNS TABLE (r_granted boolean, r_ticket bigint, r_index integer, r_fence bigint,
               r_mode text, r_holder text, r_remaining_us bigint, r_replayed boolean)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_n integer := coalesce(cardinality(p_objects), 0);
    v_t timestamptz;
    v_floor bigint;
    v_i integer;
    v_ticket bigint := p_ticket;
    v_replayed boolean[];
    v_blocker text[];
    v_until timestamptz[];
    v_refused boolean := false;
    v_who text;
    v_when timestamptz;
    v_fence bigint;
    v_object text;
BEGIN
    IF v_n = 0 OR coalesce(cardinality(p_modes), 0) <> v_n
       OR coalesce(cardinality(p_digests), 0) <> v_n THEN
        RAISE EXCEPTION 'lockd_acquire: % objects, % modes, % digests',
            v_n, cardinality(p_modes), cardinality(p_digests) USING ERRCODE = '22023';
    END IF;
    PERFORM lockd_lock_objects(p_objects, true);
    -- Read the clock once every row is ours: nothing can change under us from here on.
    v_t := clock_timestamp();
    v_floor := lockd_clock_floor(v_t);
    -- Expired holders and entries do not exist; their objects' waiters may go now.
    FOR v_object IN
        DELETE FROM holders h WHERE h.object = ANY (p_objects) AND h.expires_at <= v_t
        RETURNING h.object
    LOOP
        PERFORM lockd_wake(v_object);
    END LOOP;
    DELETE FROM queue q WHERE q.object = ANY (p_objects) AND q.expires_at <= v_t;

    FOR v_i IN 1 .. v_n LOOP
        -- 1. Already held by this digest: the retry of a granted request.
        v_replayed[v_i] := EXISTS (SELECT 1 FROM holders h
                                    WHERE h.object = p_objects[v_i] AND h.digest = p_digests[v_i]);
        CONTINUE WHEN v_replayed[v_i];
        -- 2. Every holder, and every earlier queue entry, must be compatible.
        SELECT h.owner, h.expires_at INTO v_who, v_when
          FROM holders h
         WHERE h.object = p_objects[v_i]
           AND (p_modes[v_i] = 'exclusive' OR h.mode = 'exclusive')
         ORDER BY h.expires_at DESC
         LIMIT 1;
        IF NOT FOUND THEN
            SELECT q.owner, q.expires_at INTO v_who, v_when
              FROM queue q
             WHERE q.object = p_objects[v_i]
               AND (v_ticket IS NULL OR q.ticket < v_ticket)
               AND (p_modes[v_i] = 'exclusive' OR q.mode = 'exclusive')
             ORDER BY q.ticket
             LIMIT 1;
        END IF;
        IF FOUND THEN
            v_refused := true;
            v_blocker[v_i] := v_who;
            v_until[v_i] := v_when;
        END IF;
    END LOOP;

    IF v_refused THEN
        IF p_queue AND v_ticket IS NULL THEN
            v_ticket := nextval('tickets');
            INSERT INTO queue (object, ticket, mode, owner, expires_at)
            SELECT u.o, v_ticket, u.m, p_owner, v_t + p_keep_ms * interval '1 millisecond'
              FROM unnest(p_objects, p_modes) AS u(o, m);
        ELSE
            IF p_queue THEN
                INSERT INTO queue AS q (object, ticket, mode, owner, expires_at)
                SELECT u.o, v_ticket, u.m, p_owner, v_t + p_keep_ms * interval '1 millisecond'
                  FROM unnest(p_objects, p_modes) AS u(o, m)
                ON CONFLICT (object, ticket) DO UPDATE SET expires_at = excluded.expires_at;
            END IF;
            -- Nothing of this attempt must survive a crash: its row locks vanish anyway, and
            -- a queue entry lost with it is renewed by the waiter's next attempt. Not waiting
            -- for the WAL flush makes a woken waiter's refused retry cost no fsync. (A drawn
            -- ticket above is flushed, so the sequence never hands it out twice.)
            PERFORM set_config('synchronous_commit', 'off', true);
        END IF;
        FOR v_i IN 1 .. v_n LOOP
            CONTINUE WHEN v_blocker[v_i] IS NULL;
            r_granted := false;
            r_ticket := CASE WHEN p_queue THEN v_ticket END;
            r_index := v_i;
            r_fence := NULL;
            r_mode := NULL;
            r_holder := v_blocker[v_i];
            r_remaining_us := lockd_micros_left(v_until[v_i], v_t);
            r_replayed := false;
            RETURN NEXT;
        END LOOP;
        RETURN;
    END IF;

    FOR v_i IN 1 .. v_n LOOP
        r_granted := true;
        r_ticket := NULL;
        r_index := v_i;
        r_holder := NULL;
        r_replayed := v_replayed[v_i];
        IF r_replayed THEN
            UPDATE holders h SET claimed = true
             WHERE h.object = p_objects[v_i] AND h.digest = p_digests[v_i]
            RETURNING h.fence, h.mode, h.expires_at INTO r_fence, r_mode, v_when;
            r_remaining_us := lockd_micros_left(v_when, v_t);
        ELSE
            -- fence = max(last fence + 1, clock floor): increasing while the row lives, and
            -- above every earlier fence after the row was reaped or the table emptied.
            UPDATE objects o SET fence = greatest(o.fence + 1, v_floor)
             WHERE o.object = p_objects[v_i]
            RETURNING o.fence INTO v_fence;
            INSERT INTO holders (object, fence, digest, owner, mode, acquired_at, expires_at)
            VALUES (p_objects[v_i], v_fence, p_digests[v_i], p_owner, p_modes[v_i], v_t,
                    v_t + p_ttl_ms * interval '1 millisecond');
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

-- Removes ticket `p_ticket` from the queues of `p_objects` (a waiter that gave up), waking
-- the objects' other waiters.
CREATE FUNCTION lockd_leave_queue(p_ticket bigint, p_objects text[]) RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_object text;
BEGIN
    -- Queue entries are soft state (they lapse by themselves): no need to wait for the flush.
    PERFORM set_config('synchronous_commit', 'off', true);
    PERFORM lockd_lock_objects(p_objects, false);
    FOR v_object IN
        DELETE FROM queue q WHERE q.object = ANY (p_objects) AND q.ticket = p_ticket
        RETURNING q.object
    LOOP
        PERFORM lockd_wake(v_object);
    END LOOP;
END
$$;

-- Takes back the grants of `p_objects[i]` holding `p_digests[i]` that no retry claimed (their
-- acquire reply was lost), waking the objects' waiters. r_status: 'took_back' if any was
-- removed, else 'claimed' if a retry claimed them, else 'absent'.
CREATE FUNCTION lockd_abandon(p_objects text[], p_digests bytea[], OUT r_status text)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_t timestamptz;
    v_object text;
BEGIN
    PERFORM lockd_lock_objects(p_objects, false);
    v_t := clock_timestamp();
    r_status := 'absent';
    FOR v_object IN
        DELETE FROM holders h USING unnest(p_objects, p_digests) AS u(o, d)
         WHERE h.object = u.o AND h.digest = u.d AND h.expires_at > v_t AND NOT h.claimed
        RETURNING h.object
    LOOP
        r_status := 'took_back';
        PERFORM lockd_wake(v_object);
    END LOOP;
    IF r_status = 'absent' AND EXISTS (
        SELECT 1 FROM holders h, unnest(p_objects, p_digests) AS u(o, d)
         WHERE h.object = u.o AND h.digest = u.d AND h.expires_at > v_t) THEN
        r_status := 'claimed';
    END IF;
END
$$;

-- The verdict for a holder that was not found: 'mismatch' if `p_object` has other live
-- holders at `p_t`, else 'not_held'.
CREATE FUNCTION lockd_absent_verdict(p_object text, p_t timestamptz) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN EXISTS (SELECT 1 FROM holders h
                              WHERE h.object = p_object AND h.expires_at > p_t)
                THEN 'mismatch' ELSE 'not_held' END
$$;

-- Releases each holder (`p_objects[i]`, `p_digests[i]`, `p_fences[i]`), waking the objects'
-- waiters. One row per holder, in order: r_status 'done', 'not_held' (the object has no
-- holder) or 'mismatch' (it has others).
CREATE FUNCTION lockd_release(p_objects text[], p_digests bytea[], p_fences bigint[])
RETURNS TABLE (r_index integer, r_status text)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_t timestamptz;
    v_i integer;
BEGIN
    PERFORM lockd_lock_objects(p_objects, false);
    v_t := clock_timestamp();
    FOR v_i IN 1 .. coalesce(cardinality(p_objects), 0) LOOP
        r_index := v_i;
        DELETE FROM holders h
         WHERE h.object = p_objects[v_i] AND h.digest = p_digests[v_i]
           AND h.fence = p_fences[v_i] AND h.expires_at > v_t;
        IF FOUND THEN
            r_status := 'done';
            PERFORM lockd_wake(p_objects[v_i]);
        ELSE
            r_status := lockd_absent_verdict(p_objects[v_i], v_t);
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;

-- Extends each holder's lease to `p_ttl_ms` from now. One row per holder, in order: r_status
-- as for lockd_release, and for 'done' the holder's owner, mode and remaining time.
CREATE FUNCTION lockd_renew(p_objects text[], p_digests bytea[], p_fences bigint[],
                            p_ttl_ms bigint)
RETURNS TABLE (r_index integer, r_status text, r_owner text, r_mode text,
               r_remaining_us bigint)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_t timestamptz;
    v_i integer;
BEGIN
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

-- Turns the holder into a shared one, keeping its digest, fence and expiry, and wakes the
-- object's waiters if it was exclusive. r_status as for lockd_release.
CREATE FUNCTION lockd_downgrade(p_object text, p_digest bytea, p_fence bigint,
    OUT r_status text, OUT r_owner text, OUT r_mode text, OUT r_remaining_us bigint)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_t timestamptz;
    v_was text;
    v_until timestamptz;
BEGIN
    PERFORM lockd_lock_objects(ARRAY[p_object], false);
    v_t := clock_timestamp();
    SELECT h.owner, h.mode, h.expires_at INTO r_owner, v_was, v_until
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
        PERFORM lockd_wake(p_object);
    END IF;
    r_status := 'done';
    r_mode := 'shared';
    r_remaining_us := lockd_micros_left(v_until, v_t);
END
$$;

-- Deletes up to `p_batch` objects rows that nobody holds or waits for and whose last fence is
-- below the clock floor of `p_older_than_us` ago (so a fresh row starts above it), with their
-- expired holders and queue entries. Returns how many objects rows went. Rows are locked with
-- SKIP LOCKED and checked again under the lock.
CREATE FUNCTION lockd_reap(p_older_than_us bigint, p_batch integer) RETURNS bigint
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
                                WHERE h.object = o.object AND h.expires_at > v_t)
               AND NOT EXISTS (SELECT 1 FROM queue q
                                WHERE q.object = o.object AND q.expires_at > v_t)
             LIMIT p_batch
             FOR UPDATE OF o SKIP LOCKED) AS c;
    IF v_objects IS NULL THEN
        RETURN 0;
    END IF;
    DELETE FROM holders h WHERE h.object = ANY (v_objects) AND h.expires_at <= v_t;
    DELETE FROM queue q WHERE q.object = ANY (v_objects) AND q.expires_at <= v_t;
    DELETE FROM objects o
     WHERE o.object = ANY (v_objects)
       AND NOT EXISTS (SELECT 1 FROM holders h WHERE h.object = o.object)
       AND NOT EXISTS (SELECT 1 FROM queue q WHERE q.object = o.object);
    GET DIAGNOSTICS v_deleted = ROW_COUNT;
    RETURN v_deleted;
END
$$;
