-- Idempotent acquires (request ids) and taking back grants whose reply was lost.
--
-- A retried acquire that carries a request id presents the same token digest as the attempt
-- that was granted (lockd derives the token's nonce from the request id). Instead of refusing
-- it as locked, lockd_acquire now answers it with that grant (r_replayed) and marks the grant as
-- claimed: its caller now has the token. lockd_abandon takes back a grant whose acquire reply was
-- lost (the caller timed out, or its future was dropped), but never a claimed one.
ALTER TABLE locks ADD COLUMN claimed boolean NOT NULL DEFAULT false;

DROP FUNCTION lockd_acquire(text, text, bytea, bigint, bigint, boolean);

CREATE FUNCTION lockd_acquire(
    p_object text, p_owner text, p_digest bytea, p_ttl_ms bigint, p_wanted_ms bigint,
    p_mark_granted boolean,
    OUT r_granted boolean, OUT r_fence bigint, OUT r_holder text, OUT r_remaining_us bigint,
    OUT r_replayed boolean)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    t timestamptz := clock_timestamp();
    floor_fence bigint := (extract(epoch FROM t) * 1000000)::bigint << 10;
    wanted timestamptz := CASE WHEN p_wanted_ms > 0
                               THEN t + p_wanted_ms * interval '1 millisecond' END;
    mark_granted timestamptz := CASE WHEN p_mark_granted THEN wanted END;
    until timestamptz;
    held_digest bytea;
    held_fence bigint;
BEGIN
    r_replayed := false;
    INSERT INTO locks AS l
        (object, owner, token_digest, fence, acquired_at, expires_at, wanted_until, claimed)
    VALUES (p_object, p_owner, p_digest, floor_fence, t,
            t + p_ttl_ms * interval '1 millisecond', mark_granted, false)
    ON CONFLICT (object) DO UPDATE
        SET owner = excluded.owner,
            token_digest = excluded.token_digest,
            fence = greatest(l.fence + 1, excluded.fence),
            acquired_at = excluded.acquired_at,
            expires_at = excluded.expires_at,
            wanted_until = greatest(l.wanted_until, excluded.wanted_until),
            claimed = false
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
        SELECT l.owner, l.expires_at, l.token_digest, l.fence
          INTO r_holder, until, held_digest, held_fence
          FROM locks l WHERE l.object = p_object;
    ELSE
        UPDATE locks l SET wanted_until = greatest(l.wanted_until, wanted)
         WHERE l.object = p_object
        RETURNING l.owner, l.expires_at, l.token_digest, l.fence
             INTO r_holder, until, held_digest, held_fence;
    END IF;
    r_remaining_us := greatest(0, (extract(epoch FROM until - clock_timestamp()) * 1000000)::bigint);
    IF held_digest = p_digest THEN
        -- A retry of the request this grant was made to: the same grant, now claimed.
        UPDATE locks l SET claimed = true WHERE l.object = p_object;
        r_granted := true;
        r_replayed := true;
        r_fence := held_fence;
        RETURN;
    END IF;
    r_granted := false;
END
$$;

-- Takes back the grant holding `p_digest` unless a retry claimed it, announcing the release to
-- waiters like lockd_release does. r_status: 'took_back', 'claimed' or 'absent'.
CREATE FUNCTION lockd_abandon(p_object text, p_digest bytea, OUT r_status text)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    t timestamptz := clock_timestamp();
    wanted boolean;
BEGIN
    UPDATE locks l SET owner = NULL, token_digest = NULL, expires_at = t
     WHERE l.object = p_object AND l.token_digest = p_digest AND NOT l.claimed
    RETURNING l.wanted_until > t INTO wanted;
    IF FOUND THEN
        IF wanted THEN
            PERFORM pg_notify('lockd_free_' || current_schema(), p_object);
        END IF;
        r_status := 'took_back';
    ELSIF EXISTS (SELECT 1 FROM locks l WHERE l.object = p_object AND l.token_digest = p_digest) THEN
        r_status := 'claimed';
    ELSE
        r_status := 'absent';
    END IF;
END
$$;
