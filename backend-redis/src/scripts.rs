//! The Lua scripts: one per store primitive, each run atomically by Redis in one EVALSHA,
//! whatever the number of objects it names. They implement the rules of [`lockcore::store`].
//!
//! ## Data
//!
//! Per object (see [`crate::keys`]): a holders hash (`digest hex -> holder record`), a fence
//! key (the last fence, a decimal string) and a queue (a sorted set scored by ticket). One
//! ticket counter per key prefix.
//!
//! * Holder record: `"<mode> <fence> <expires_ms> <acquired_ms> <claimed> <owner>"`, mode `x`
//!   (exclusive) or `s` (shared), times on Redis's clock (`TIME`) in ms, claimed `0` or `1`.
//!   A holder whose `expires_ms` has passed does not exist; scripts that change the hash drop
//!   such records. The hash's own `PEXPIRE` is only ever extended, to the latest holder's
//!   expiry, so it disappears once every holder has expired.
//! * Queue entry: member `"<ticket> <mode> <expires_ms> <owner>"`, score the ticket. Renewing
//!   an entry replaces its member. The set's `PEXPIRE` is extended to the latest entry.
//!
//! ## Rules the scripts share
//!
//! * **Reads before writes.** Every script reads every key it names (so a key of the wrong type,
//!   or a record it cannot parse, fails the script) before it writes anything: a script that
//!   fails changes nothing, which keeps a multi-object step all-or-nothing.
//! * **Fences are strings.** Fences are around 2^60, and Lua numbers are doubles, exact only to
//!   2^53: the scripts compare fences as decimal strings (longer is larger, then
//!   lexicographic), increment them with Redis's 64-bit `INCR` and read the exact result back
//!   with `GET`. The clock floor is `(seconds * 1e6 + micros) * 2^FENCE_CLOCK_SHIFT`: the
//!   microsecond count is below 2^53 and so exact, multiplying by a power of two is exact in a
//!   double, and `%.0f` prints it exactly. Millisecond times (about 2^41) are exact doubles.
//! * **Wake-ups.** A script that removes holders or queue entries of an object, or downgrades a
//!   holder, publishes the object on the release channel when the object's queue still exists
//!   afterwards: every waiter of [`lockcore::Locks`] has a queue entry from its first refusal
//!   on (entered in the same atomic step as the refusal), so a queue that does not exist means
//!   nobody waits. One `PUBLISH` per script call carries every such object, separated by `\n`
//!   (object names contain no control characters).

use redis::Script;

/// Helpers every script starts with.
macro_rules! prelude {
    () => {
        r#"
if redis.replicate_commands then redis.replicate_commands() end
local function fail(why)
  error({err = 'ERR lockd: ' .. why})
end
local function now_ms()
  local t = redis.call('TIME')
  local micros = tonumber(t[1]) * 1000000 + tonumber(t[2])
  return math.floor(micros / 1000), micros
end
local function num(n)
  return string.format('%.0f', n)
end
local function holder(key, record)
  local mode, fence, expires, acquired, claimed, owner =
    string.match(record, '^([xs]) ([1-9]%d*) (%d+) (%d+) ([01]) (.+)$')
  if not mode then fail('holders hash ' .. key .. ' holds a malformed record') end
  return {mode = mode, fence = fence, expires = tonumber(expires), acquired = acquired,
          claimed = claimed, owner = owner}
end
local function record(h)
  return h.mode .. ' ' .. h.fence .. ' ' .. num(h.expires) .. ' ' .. h.acquired .. ' ' ..
    h.claimed .. ' ' .. h.owner
end
local function entry(key, member)
  local ticket, mode, expires, owner = string.match(member, '^(%d+) ([xs]) (%d+) (.+)$')
  if not ticket then fail('queue ' .. key .. ' holds a malformed entry') end
  return {ticket = ticket, mode = mode, expires = tonumber(expires), owner = owner}
end
local function extend(key, ms)
  local left = redis.call('PTTL', key)
  if left == -1 or (left >= 0 and left < ms) then redis.call('PEXPIRE', key, ms) end
end
local function live_holders(key, now)
  local live, dead = {}, {}
  local fields = redis.call('HGETALL', key)
  for j = 1, #fields, 2 do
    local h = holder(key, fields[j + 1])
    h.digest = fields[j]
    if h.expires > now then live[#live + 1] = h else dead[#dead + 1] = fields[j] end
  end
  return live, dead
end
local function remove(command, key, members)
  -- In slices: unpack() of thousands of values overflows Lua's C stack.
  for first = 1, #members, 500 do
    redis.call(command, key, unpack(members, first, math.min(first + 499, #members)))
  end
end
local function publish(channel, woken)
  if #woken > 0 then redis.call('PUBLISH', channel, table.concat(woken, '\n')) end
end
"#
    };
}

/// Acquire (`try_acquire`).
///
/// KEYS: the ticket counter, then per claim: holders, fence, queue.
/// ARGV: owner, ttl ms, fence key ttl ms, clock multiplier (2^shift), queueing (`1`/`0`),
/// ticket (`0` for none), keep-for ms, channel, then per claim: object, mode (`x`/`s`),
/// digest (hex).
///
/// Returns `{1, fence, ttl_ms, replayed, mode, ...}` (four items per claim; a replay answers
/// with the held grant's mode, which a downgrade may have made shared) on a grant, and
/// `{0, ticket, index, owner, retry_ms, ...}` (three items per claim in conflict, index
/// 1-based; ticket 0 when not queueing) on a refusal.
const ACQUIRE: &str = concat!(
    prelude!(),
    r#"
local n = (#KEYS - 1) / 3
local owner, ttl, fence_ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local queueing, ticket, keep = ARGV[5] == '1', ARGV[6], tonumber(ARGV[7])
local now, micros = now_ms()
local function less(a, b)
  if #a ~= #b then return #a < #b end
  return a < b
end
local claims, conflicts = {}, {}
for i = 1, n do
  local c = {hk = KEYS[3 * i - 1], fk = KEYS[3 * i], qk = KEYS[3 * i + 1],
             object = ARGV[6 + 3 * i], mode = ARGV[7 + 3 * i], digest = ARGV[8 + 3 * i]}
  local live
  live, c.dead = live_holders(c.hk, now)
  local who, till
  for _, h in ipairs(live) do
    if h.digest == c.digest then c.replay = h end
    if (c.mode == 'x' or h.mode == 'x') and (not till or h.expires > till) then
      who, till = h.owner, h.expires
    end
  end
  local members
  if ticket ~= '0' then
    members = redis.call('ZRANGEBYSCORE', c.qk, '-inf', '(' .. ticket)
  else
    members = redis.call('ZRANGE', c.qk, 0, -1)
  end
  c.gone = {}
  for _, member in ipairs(members) do
    local e = entry(c.qk, member)
    if e.expires <= now then
      c.gone[#c.gone + 1] = member
    elseif not who and (c.mode == 'x' or e.mode == 'x') then
      who, till = e.owner, e.expires
    end
  end
  if c.replay then
    who = nil
  elseif who then
    conflicts[#conflicts + 1] = i
    conflicts[#conflicts + 1] = who
    conflicts[#conflicts + 1] = till - now
  end
  claims[i] = c
end
local floor = num(micros * tonumber(ARGV[4]))
if #conflicts == 0 then
  for _, c in ipairs(claims) do
    if not c.replay then
      c.last = redis.call('GET', c.fk)
      if c.last and not string.find(c.last, '^[1-9]%d*$') then
        fail('fence key ' .. c.fk .. ' does not hold a fence')
      end
    end
  end
elseif queueing and ticket == '0' then
  ticket = num(redis.call('INCR', KEYS[1]))
end
local woken, out = {}, {1}
for _, c in ipairs(claims) do
  local changed = #c.dead > 0 or #c.gone > 0
  remove('HDEL', c.hk, c.dead)
  remove('ZREM', c.qk, c.gone)
  if #conflicts > 0 then
    if queueing then
      redis.call('ZREMRANGEBYSCORE', c.qk, ticket, ticket)
      redis.call('ZADD', c.qk, ticket,
        ticket .. ' ' .. c.mode .. ' ' .. num(now + keep) .. ' ' .. owner)
      extend(c.qk, keep)
    end
  else
    if ticket ~= '0' and redis.call('ZREMRANGEBYSCORE', c.qk, ticket, ticket) > 0 then
      changed = true
    end
    if c.replay then
      c.replay.claimed = '1'
      redis.call('HSET', c.hk, c.digest, record(c.replay))
      out[#out + 1] = c.replay.fence
      out[#out + 1] = c.replay.expires - now
      out[#out + 1] = 1
      out[#out + 1] = c.replay.mode
    else
      local fence
      if c.last and not less(c.last, floor) then
        redis.call('INCR', c.fk)
        fence = redis.call('GET', c.fk)
      else
        fence = floor
        redis.call('SET', c.fk, fence, 'KEEPTTL')
      end
      extend(c.fk, fence_ttl)
      redis.call('HSET', c.hk, c.digest, record({mode = c.mode, fence = fence,
        expires = now + ttl, acquired = num(now), claimed = '0', owner = owner}))
      extend(c.hk, ttl)
      out[#out + 1] = fence
      out[#out + 1] = ttl
      out[#out + 1] = 0
      out[#out + 1] = c.mode
    end
  end
  if changed and redis.call('EXISTS', c.qk) == 1 then woken[#woken + 1] = c.object end
end
publish(ARGV[8], woken)
if #conflicts > 0 then
  local refused = {0, queueing and tonumber(ticket) or 0}
  for _, v in ipairs(conflicts) do refused[#refused + 1] = v end
  return refused
end
return out
"#
);

/// Leave the queue (`leave_queue`). KEYS: the queue of each object. ARGV: channel, ticket,
/// then the objects. Returns how many entries it removed.
const LEAVE: &str = concat!(
    prelude!(),
    r#"
local ticket = ARGV[2]
local found = {}
for i, key in ipairs(KEYS) do
  found[i] = redis.call('ZCOUNT', key, ticket, ticket)
end
local woken, removed = {}, 0
for i, key in ipairs(KEYS) do
  if found[i] > 0 then
    removed = removed + redis.call('ZREMRANGEBYSCORE', key, ticket, ticket)
    if redis.call('EXISTS', key) == 1 then woken[#woken + 1] = ARGV[2 + i] end
  end
end
publish(ARGV[1], woken)
return removed
"#
);

/// Abandon (`abandon`): takes back the grants of an attempt whose answer was lost.
/// KEYS: per claim: holders, queue. ARGV: channel, then per claim: object, digest.
/// Returns 2 when a retry claimed the grant (nothing removed), 1 when it removed a live
/// holder, 0 when none of the digests holds.
const ABANDON: &str = concat!(
    prelude!(),
    r#"
local n = #KEYS / 2
local now = now_ms()
local found, claimed = {}, false
for i = 1, n do
  local hk = KEYS[2 * i - 1]
  local rec = redis.call('HGET', hk, ARGV[2 * i + 1])
  if rec then
    local h = holder(hk, rec)
    found[i] = h
    if h.claimed == '1' and h.expires > now then claimed = true end
  end
end
if claimed then return 2 end
local woken, took = {}, 0
for i = 1, n do
  local h = found[i]
  if h then
    redis.call('HDEL', KEYS[2 * i - 1], ARGV[2 * i + 1])
    if h.expires > now then took = 1 end
    if redis.call('EXISTS', KEYS[2 * i]) == 1 then woken[#woken + 1] = ARGV[2 * i] end
  end
end
publish(ARGV[1], woken)
return took
"#
);

/// Release (`release`). KEYS: per holder: holders, queue. ARGV: channel, then per holder:
/// object, digest, fence. Returns one status per holder: 1 released, 0 not held, -1 held by
/// others.
const RELEASE: &str = concat!(
    prelude!(),
    r#"
local n = #KEYS / 2
local now = now_ms()
local out = {}
for i = 1, n do
  local hk = KEYS[2 * i - 1]
  local digest, fence = ARGV[3 * i], ARGV[3 * i + 1]
  local live = live_holders(hk, now)
  out[i] = #live > 0 and -1 or 0
  for _, h in ipairs(live) do
    if h.digest == digest and h.fence == fence then out[i] = 1 end
  end
end
local woken = {}
for i = 1, n do
  if out[i] == 1 then
    redis.call('HDEL', KEYS[2 * i - 1], ARGV[3 * i])
    if redis.call('EXISTS', KEYS[2 * i]) == 1 then woken[#woken + 1] = ARGV[3 * i - 1] end
  end
end
publish(ARGV[1], woken)
return out
"#
);

/// Renew (`renew`). KEYS: per holder: holders, fence. ARGV: ttl ms, fence key ttl ms, then
/// per holder: digest, fence. Returns `{status, owner, mode, ...}` (three items per holder;
/// owner and mode empty unless status is 1).
const RENEW: &str = concat!(
    prelude!(),
    r#"
local n = #KEYS / 2
local ttl, fence_ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local now = now_ms()
local found = {}
for i = 1, n do
  local hk, fk = KEYS[2 * i - 1], KEYS[2 * i]
  local digest, fence = ARGV[2 * i + 1], ARGV[2 * i + 2]
  local live = live_holders(hk, now)
  local f = {status = #live > 0 and -1 or 0}
  for _, h in ipairs(live) do
    if h.digest == digest and h.fence == fence then f.status, f.holder = 1, h end
  end
  if f.status == 1 and redis.call('PTTL', fk) == -2 then
    -- The fence key expired: restore it to the highest live fence.
    local top = f.holder.fence
    for _, h in ipairs(live) do
      if #h.fence > #top or (#h.fence == #top and h.fence > top) then top = h.fence end
    end
    f.restore = top
  end
  found[i] = f
end
local out = {}
for i = 1, n do
  local f = found[i]
  if f.status == 1 then
    local hk, fk = KEYS[2 * i - 1], KEYS[2 * i]
    f.holder.expires = now + ttl
    redis.call('HSET', hk, f.holder.digest, record(f.holder))
    extend(hk, ttl)
    if f.restore then
      redis.call('SET', fk, f.restore, 'PX', fence_ttl)
    else
      extend(fk, fence_ttl)
    end
    out[#out + 1] = 1
    out[#out + 1] = f.holder.owner
    out[#out + 1] = f.holder.mode
  else
    out[#out + 1] = f.status
    out[#out + 1] = ''
    out[#out + 1] = ''
  end
end
return out
"#
);

/// Validate (`validate`). KEYS: holders. ARGV: digest, fence.
/// Returns `{1, owner, mode, ttl_ms}`, `{0}` when not held, `{-1}` when held by others.
const VALIDATE: &str = concat!(
    prelude!(),
    r#"
local now = now_ms()
local live = live_holders(KEYS[1], now)
for _, h in ipairs(live) do
  if h.digest == ARGV[1] and h.fence == ARGV[2] then
    return {1, h.owner, h.mode, h.expires - now}
  end
end
if #live > 0 then return {-1} end
return {0}
"#
);

/// Downgrade (`downgrade`). KEYS: holders, queue. ARGV: channel, object, digest, fence.
/// Returns `{1, owner, ttl_ms}`, `{0}` when not held, `{-1}` when held by others. Publishes
/// the object when an exclusive holder became shared and someone waits.
const DOWNGRADE: &str = concat!(
    prelude!(),
    r#"
local now = now_ms()
local live = live_holders(KEYS[1], now)
for _, h in ipairs(live) do
  if h.digest == ARGV[3] and h.fence == ARGV[4] then
    if h.mode == 'x' then
      h.mode = 's'
      redis.call('HSET', KEYS[1], h.digest, record(h))
      if redis.call('EXISTS', KEYS[2]) == 1 then publish(ARGV[1], {ARGV[2]}) end
    end
    return {1, h.owner, h.expires - now}
  end
end
if #live > 0 then return {-1} end
return {0}
"#
);

/// Inspect and list: for every holders hash in KEYS, its live holders. Returns
/// `{now_ms, {owner, mode, fence, acquired_ms, expires_ms, ...}, ...}` (five items per
/// holder; an empty list for an object nobody holds).
const DESCRIBE: &str = concat!(
    prelude!(),
    r#"
local now = now_ms()
local out = {num(now)}
for i, key in ipairs(KEYS) do
  local holders = {}
  for _, h in ipairs(live_holders(key, now)) do
    holders[#holders + 1] = h.owner
    holders[#holders + 1] = h.mode
    holders[#holders + 1] = h.fence
    holders[#holders + 1] = h.acquired
    holders[#holders + 1] = num(h.expires)
  end
  out[i + 1] = holders
end
return out
"#
);

/// The compiled scripts (source plus SHA-1), shared by every operation.
#[derive(Debug, Clone)]
pub(crate) struct Scripts {
    pub(crate) acquire: Script,
    pub(crate) leave: Script,
    pub(crate) abandon: Script,
    pub(crate) release: Script,
    pub(crate) renew: Script,
    pub(crate) validate: Script,
    pub(crate) downgrade: Script,
    pub(crate) describe: Script,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        Self {
            acquire: Script::new(ACQUIRE),
            leave: Script::new(LEAVE),
            abandon: Script::new(ABANDON),
            release: Script::new(RELEASE),
            renew: Script::new(RENEW),
            validate: Script::new(VALIDATE),
            downgrade: Script::new(DOWNGRADE),
            describe: Script::new(DESCRIBE),
        }
    }

    pub(crate) fn all(&self) -> [&Script; 8] {
        [
            &self.acquire,
            &self.leave,
            &self.abandon,
            &self.release,
            &self.renew,
            &self.validate,
            &self.downgrade,
            &self.describe,
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
