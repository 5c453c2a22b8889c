//! The Lua scripts: one per operation, each run atomically by Redis in one EVALSHA.
//!
//! Conventions: `KEYS[1]` is the object's lock hash, `KEYS[2]` (where used) its fence key.
//! Fences travel as decimal strings and are never turned into Lua numbers: Lua numbers are
//! doubles, exact only up to 2^53, while fences are around 2^60. The acquire script compares
//! them as strings (longer is larger, then lexicographic) and increments with `INCR`, which
//! Redis does in 64-bit integers, reading the exact result back with `GET`.
//!
//! The clock floor is computed from `TIME` as `(seconds * 1e6 + micros) * 2^FENCE_CLOCK_SHIFT`:
//! the microsecond count is below 2^53 and so exact, and multiplying by a power of two is exact
//! in a double, so `%.0f` prints the floor exactly.

use redis::Script;

/// Acquire. KEYS: lock, fence, waiting. ARGV: owner, digest (hex), ttl ms, fence key ttl ms,
/// clock multiplier (2^shift), waiting mark ms (0 for a caller that will not wait).
/// Returns `{1, fence, acquired_at_ms}` on a grant, `{0, holder, pttl}` when held, and
/// `{2, fence, pttl}` when it is held by this very digest: a retry of the request that was
/// granted (only a request id draws the same digest twice), which then marks the grant as
/// claimed so that the first attempt's take-back leaves it alone.
///
/// A blocking caller, refused or granted, marks the object as waited on (extending, never
/// shortening, the mark) so that its release publishes: a refused caller waits for that
/// message, and a granted one may have waiters queued behind it in its process that have not
/// tried Redis yet.
const ACQUIRE: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local mark = tonumber(ARGV[6])
if mark > 0 and redis.call('PTTL', KEYS[3]) < mark then
  redis.call('SET', KEYS[3], '1', 'PX', mark)
end
local held = redis.call('HMGET', KEYS[1], 'owner', 'digest', 'fence')
if held[1] then
  if held[2] == ARGV[2] then
    redis.call('HSET', KEYS[1], 'claimed', '1')
    return {2, held[3], redis.call('PTTL', KEYS[1])}
  end
  return {0, held[1], redis.call('PTTL', KEYS[1])}
end
local function less(a, b)
  if #a ~= #b then return #a < #b end
  return a < b
end
local t = redis.call('TIME')
local micros = tonumber(t[1]) * 1000000 + tonumber(t[2])
local floor = string.format('%.0f', micros * tonumber(ARGV[5]))
local last = redis.call('GET', KEYS[2])
local fence
if last and not string.find(last, '^[1-9]%d*$') then
  return redis.error_reply('ERR lockd: fence key ' .. KEYS[2] .. ' does not hold a fence')
end
if last and not less(last, floor) then
  redis.call('INCR', KEYS[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
  fence = redis.call('GET', KEYS[2])
else
  fence = floor
  redis.call('SET', KEYS[2], fence, 'PX', ARGV[4])
end
local now_ms = string.format('%.0f', math.floor(micros / 1000))
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'digest', ARGV[2], 'fence', fence, 'acquired_at', now_ms)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {1, fence, now_ms}
"#;

/// Release. KEYS: lock, waiting. ARGV: digest, fence, channel, object.
/// Returns 1 when released, 0 when not held, -1 when held by another token. Publishes the
/// object only when someone is waiting for it.
const RELEASE: &str = r#"
local h = redis.call('HMGET', KEYS[1], 'digest', 'fence')
if not h[1] then return 0 end
if h[1] ~= ARGV[1] or h[2] ~= ARGV[2] then return -1 end
redis.call('DEL', KEYS[1])
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('PUBLISH', ARGV[3], ARGV[4])
end
return 1
"#;

/// Abandon: undoes an acquire whose reply was lost. KEYS: lock, waiting. ARGV: digest,
/// channel, object. Deletes the lock only if it holds this digest and no retry claimed it (a
/// token nobody ever received); returns 1 if it did, 2 if a retry claimed it, 0 if the lock
/// does not hold this digest.
const ABANDON: &str = r#"
local h = redis.call('HMGET', KEYS[1], 'digest', 'claimed')
if h[1] ~= ARGV[1] then return 0 end
if h[2] then return 2 end
redis.call('DEL', KEYS[1])
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('PUBLISH', ARGV[2], ARGV[3])
end
return 1
"#;

/// Renew. ARGV: digest, fence, ttl ms, fence key ttl ms.
/// Returns `{1, owner}` when renewed, `{0}` when not held, `{-1}` when held by another token.
const RENEW: &str = r#"
local h = redis.call('HMGET', KEYS[1], 'digest', 'fence', 'owner')
if not h[1] then return {0} end
if h[1] ~= ARGV[1] or h[2] ~= ARGV[2] then return {-1} end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
if redis.call('PEXPIRE', KEYS[2], ARGV[4]) == 0 then
  redis.call('SET', KEYS[2], h[2], 'PX', ARGV[4])
end
return {1, h[3]}
"#;

/// Validate. ARGV: digest, fence.
/// Returns `{1, owner, pttl}` for the holder, `{0}` when not held, `{-1}` for another token.
const VALIDATE: &str = r#"
local h = redis.call('HMGET', KEYS[1], 'digest', 'fence', 'owner')
if not h[1] then return {0} end
if h[1] ~= ARGV[1] or h[2] ~= ARGV[2] then return {-1} end
return {1, h[3], redis.call('PTTL', KEYS[1])}
"#;

/// Inspect and list: for every key in KEYS, `{owner, fence, acquired_at_ms, pttl}` or `{}`
/// when not held, after the server's time in ms: `{now_ms, {..}, {..}, ...}`.
const DESCRIBE: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local out = {string.format('%.0f', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))}
for i, key in ipairs(KEYS) do
  local h = redis.call('HMGET', key, 'owner', 'fence', 'acquired_at')
  if h[1] then
    out[i + 1] = {h[1], h[2], h[3], redis.call('PTTL', key)}
  else
    out[i + 1] = {}
  end
end
return out
"#;

/// The compiled scripts (source plus SHA-1), shared by every operation.
#[derive(Debug, Clone)]
pub(crate) struct Scripts {
    pub(crate) acquire: Script,
    pub(crate) release: Script,
    pub(crate) renew: Script,
    pub(crate) validate: Script,
    pub(crate) describe: Script,
    pub(crate) abandon: Script,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        Self {
            acquire: Script::new(ACQUIRE),
            release: Script::new(RELEASE),
            renew: Script::new(RENEW),
            validate: Script::new(VALIDATE),
            describe: Script::new(DESCRIBE),
            abandon: Script::new(ABANDON),
        }
    }

    pub(crate) fn all(&self) -> [&Script; 6] {
        [
            &self.acquire,
            &self.release,
            &self.renew,
            &self.validate,
            &self.describe,
            &self.abandon,
        ]
    }
}

/// The acquire script's source, for benchmarks that run it through `redis-benchmark`.
pub fn acquire_script_source() -> &'static str {
    ACQUIRE
}

/// The release script's source, for benchmarks that run it through `redis-benchmark`.
pub fn release_script_source() -> &'static str {
    RELEASE
}
