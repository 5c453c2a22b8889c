-- lockd: locks as rows. Runs with `search_path` set to lockd's schema, so every name below is
-- created there (and sqlx keeps its `_sqlx_migrations` table there too).
--
-- One row per object that was locked recently. A held lock has `owner` and `token_digest` set
-- and `expires_at` in the future; a released lock keeps its row with `owner` and `token_digest`
-- NULL and `expires_at` set to the release time; an expired lock is simply a row whose
-- `expires_at` has passed. Either way the row keeps its `fence`, so the next grant continues
-- above it. Rows free for longer than lockd's `reap_after` are deleted by a reaper; by then the
-- clock floor of the fence scheme (see `lockd_acquire`) has passed their fence, so deleting them
-- never lets a fence go backwards.
CREATE TABLE locks (
    object       text COLLATE "C" PRIMARY KEY,
    owner        text,
    token_digest bytea,
    fence        bigint      NOT NULL CHECK (fence > 0),
    acquired_at  timestamptz NOT NULL,
    expires_at   timestamptz NOT NULL,
    CHECK ((owner IS NULL) = (token_digest IS NULL))
) WITH (fillfactor = 80);

COMMENT ON TABLE locks IS
    'lockd locks: one row per recently locked object; owner NULL = released at expires_at';

-- Grants `p_object` to `p_owner` if it is free (no row, released, or expired by the database
-- clock), storing the token digest and deciding the fence in the same row update:
--   fence = max(previous fence + 1, clock_floor),  clock_floor = unix_micros(clock) << 10
-- (10 = lockcore::fence::FENCE_CLOCK_SHIFT). Concurrent callers are serialised by the row lock
-- that INSERT .. ON CONFLICT takes. When refused, the conflicting row is still locked by this
-- statement, so the holder and remaining time read after it are exactly what refused us.
CREATE FUNCTION lockd_acquire(
    p_object text, p_owner text, p_digest bytea, p_ttl_ms bigint,
    OUT r_granted boolean, OUT r_fence bigint, OUT r_holder text, OUT r_remaining_us bigint)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    t timestamptz := clock_timestamp();
    floor_fence bigint := (extract(epoch FROM t) * 1000000)::bigint << 10;
    until timestamptz;
BEGIN
    INSERT INTO locks AS l (object, owner, token_digest, fence, acquired_at, expires_at)
    VALUES (p_object, p_owner, p_digest, floor_fence, t, t + p_ttl_ms * interval '1 millisecond')
    ON CONFLICT (object) DO UPDATE
        SET owner = excluded.owner,
            token_digest = excluded.token_digest,
            fence = greatest(l.fence + 1, excluded.fence),
            acquired_at = excluded.acquired_at,
            expires_at = excluded.expires_at
        WHERE l.owner IS NULL OR l.expires_at <= excluded.acquired_at
    RETURNING l.fence INTO r_fence;
    IF FOUND THEN
        r_granted := true;
        r_remaining_us := p_ttl_ms * 1000;
        RETURN;
    END IF;
    SELECT l.owner, l.expires_at INTO r_holder, until FROM locks l WHERE l.object = p_object;
    r_granted := false;
    r_remaining_us := greatest(0, (extract(epoch FROM until - clock_timestamp()) * 1000000)::bigint);
END
$$;

-- Releases `p_object` if `p_digest` and `p_fence` are its current, unexpired holder's, keeps the
-- row (with its fence) as free, and notifies waiting lockd processes on channel
-- 'lockd_free_<schema>' with the object as payload (delivered at commit).
-- r_status: 'released', 'not_held' (nobody holds it now) or 'mismatch' (someone else does).
CREATE FUNCTION lockd_release(
    p_object text, p_digest bytea, p_fence bigint,
    OUT r_status text, OUT r_fence bigint)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    t timestamptz := clock_timestamp();
    who text;
    until timestamptz;
BEGIN
    UPDATE locks l SET owner = NULL, token_digest = NULL, expires_at = t
     WHERE l.object = p_object AND l.token_digest = p_digest AND l.fence = p_fence
       AND l.expires_at > t
    RETURNING l.fence INTO r_fence;
    IF FOUND THEN
        PERFORM pg_notify('lockd_free_' || current_schema(), p_object);
        r_status := 'released';
        RETURN;
    END IF;
    SELECT l.owner, l.expires_at INTO who, until FROM locks l WHERE l.object = p_object;
    r_status := CASE WHEN who IS NOT NULL AND until > t THEN 'mismatch' ELSE 'not_held' END;
END
$$;

-- Extends the current, unexpired holder's lease to `p_ttl_ms` from now, keeping its fence.
-- r_status: 'renewed' (with r_owner and r_fence), 'not_held' or 'mismatch' as for release.
CREATE FUNCTION lockd_renew(
    p_object text, p_digest bytea, p_fence bigint, p_ttl_ms bigint,
    OUT r_status text, OUT r_owner text, OUT r_fence bigint)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    t timestamptz := clock_timestamp();
    who text;
    until timestamptz;
BEGIN
    UPDATE locks l SET expires_at = t + p_ttl_ms * interval '1 millisecond'
     WHERE l.object = p_object AND l.token_digest = p_digest AND l.fence = p_fence
       AND l.expires_at > t
    RETURNING l.owner, l.fence INTO r_owner, r_fence;
    IF FOUND THEN
        r_status := 'renewed';
        RETURN;
    END IF;
    SELECT l.owner, l.expires_at INTO who, until FROM locks l WHERE l.object = p_object;
    r_status := CASE WHEN who IS NOT NULL AND until > t THEN 'mismatch' ELSE 'not_held' END;
END
$$;
