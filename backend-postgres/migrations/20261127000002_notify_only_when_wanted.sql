-- Announce releases only for objects someone may be waiting for.
--
-- NOTIFY takes a database-wide lock from the moment a transaction commits until its commit
-- record is flushed, so if every release notified, all releases in the database would commit
-- one fsync after another. Instead, blocking acquires mark the row: `wanted_until` is the
-- latest moment until which some lockd process may have a waiter on the object, and a release
-- notifies only while it lies in the future.
--
-- A blocking attempt (p_wanted_ms > 0) sets wanted_until >= now + p_wanted_ms whether it is
-- granted or refused. lockd passes its largest allowed wait plus a margin, so that every waiter
-- queued behind the attempting one in the same process (none of them can wait longer than the
-- largest allowed wait from the moment it queued) is covered too.
ALTER TABLE locks ADD COLUMN wanted_until timestamptz;

DROP FUNCTION lockd_acquire(text, text, bytea, bigint);

CREATE FUNCTION lockd_acquire(
    p_object text, p_owner text, p_digest bytea, p_ttl_ms bigint, p_wanted_ms bigint,
    OUT r_granted boolean, OUT r_fence bigint, OUT r_holder text, OUT r_remaining_us bigint)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    t timestamptz := clock_timestamp();
    floor_fence bigint := (extract(epoch FROM t) * 1000000)::bigint << 10;
    wanted timestamptz := CASE WHEN p_wanted_ms > 0
                               THEN t + p_wanted_ms * interval '1 millisecond' END;
    until timestamptz;
BEGIN
    INSERT INTO locks AS l
        (object, owner, token_digest, fence, acquired_at, expires_at, wanted_until)
    VALUES (p_object, p_owner, p_digest, floor_fence, t,
            t + p_ttl_ms * interval '1 millisecond', wanted)
    ON CONFLICT (object) DO UPDATE
        SET owner = excluded.owner,
            token_digest = excluded.token_digest,
            fence = greatest(l.fence + 1, excluded.fence),
            acquired_at = excluded.acquired_at,
            expires_at = excluded.expires_at,
            wanted_until = greatest(l.wanted_until, excluded.wanted_until)
        WHERE l.owner IS NULL OR l.expires_at <= excluded.acquired_at
    RETURNING l.fence INTO r_fence;
    IF FOUND THEN
        r_granted := true;
        r_remaining_us := p_ttl_ms * 1000;
        RETURN;
    END IF;
    -- Refused. The conflicting row is locked by this statement: read (and, for a blocking
    -- attempt, mark) exactly the row that refused us.
    IF wanted IS NULL THEN
        SELECT l.owner, l.expires_at INTO r_holder, until FROM locks l WHERE l.object = p_object;
    ELSE
        UPDATE locks l SET wanted_until = greatest(l.wanted_until, wanted)
         WHERE l.object = p_object
        RETURNING l.owner, l.expires_at INTO r_holder, until;
    END IF;
    r_granted := false;
    r_remaining_us := greatest(0, (extract(epoch FROM until - clock_timestamp()) * 1000000)::bigint);
END
$$;

CREATE OR REPLACE FUNCTION lockd_release(
    p_object text, p_digest bytea, p_fence bigint,
    OUT r_status text, OUT r_fence bigint)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    t timestamptz := clock_timestamp();
    wanted boolean;
    who text;
    until timestamptz;
BEGIN
    UPDATE locks l SET owner = NULL, token_digest = NULL, expires_at = t
     WHERE l.object = p_object AND l.token_digest = p_digest AND l.fence = p_fence
       AND l.expires_at > t
    RETURNING l.fence, l.wanted_until > t INTO r_fence, wanted;
    IF FOUND THEN
        IF wanted THEN
            PERFORM pg_notify('lockd_free_' || current_schema(), p_object);
        END IF;
        r_status := 'released';
        RETURN;
    END IF;
    SELECT l.owner, l.expires_at INTO who, until FROM locks l WHERE l.object = p_object;
    r_status := CASE WHEN who IS NOT NULL AND until > t THEN 'mismatch' ELSE 'not_held' END;
END
$$;
