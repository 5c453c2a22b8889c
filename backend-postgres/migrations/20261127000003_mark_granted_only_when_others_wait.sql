-- A granted blocking acquire marks the object as wanted only when asked to.
--
-- Migration 2 made every blocking attempt mark the row, granted or refused. A granted attempt
-- needs to mark it only when other waiters are queued in the same lockd process (they cannot
-- see the row and rely on the release being announced); marking uncontended blocking grants
-- would make their releases NOTIFY, and NOTIFY serialises commits database-wide. lockd now says
-- which it needs with p_mark_granted; refused blocking attempts always mark, as before.
DROP FUNCTION lockd_acquire(text, text, bytea, bigint, bigint);

CREATE FUNCTION lockd_acquire(
    p_object text, p_owner text, p_digest bytea, p_ttl_ms bigint, p_wanted_ms bigint,
    p_mark_granted boolean,
    OUT r_granted boolean, OUT r_fence bigint, OUT r_holder text, OUT r_remaining_us bigint)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    t timestamptz := clock_timestamp();
    floor_fence bigint := (extract(epoch FROM t) * 1000000)::bigint << 10;
    wanted timestamptz := CASE WHEN p_wanted_ms > 0
                               THEN t + p_wanted_ms * interval '1 millisecond' END;
    mark_granted timestamptz := CASE WHEN p_mark_granted THEN wanted END;
    until timestamptz;
BEGIN
    INSERT INTO locks AS l
        (object, owner, token_digest, fence, acquired_at, expires_at, wanted_until)
    VALUES (p_object, p_owner, p_digest, floor_fence, t,
            t + p_ttl_ms * interval '1 millisecond', mark_granted)
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

-- Marks an object as wanted for `p_wanted_ms` (used after a grant when another waiter of the
-- same process queued while the granting statement was in flight).
CREATE FUNCTION lockd_mark_wanted(p_object text, p_wanted_ms bigint) RETURNS void
LANGUAGE sql VOLATILE AS $$
    UPDATE locks SET wanted_until =
        greatest(wanted_until, clock_timestamp() + p_wanted_ms * interval '1 millisecond')
     WHERE object = p_object
$$;
