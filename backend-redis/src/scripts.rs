//! The Lua scripts: one per store primitive, each run atomically by Redis in one EVALSHA,
//! whatever the number of objects it names. They implement the rules of [`lockcore::store`]:
//! modes, subtree scopes, lock-delay, the queue, and the index that finds what is locked
//! under a subtree without looking at anything else.
//!
//! ## Data
//!
//! Objects appear in the scripts as *members*: the object id escaped as in [`crate::keys`]
//! (`%`, `{`, `}` escaped; `/` kept), so a member's ancestors are its prefixes ending before a
//! `/`, and the members under it are the lex range `[member/, member0)`.
//!
//! Per object (see [`crate::keys`]): a holders hash (`digest hex -> holder record`), a fence
//! key (the last fence, a decimal string) and a queue (a sorted set scored by ticket). Per key
//! prefix: the ticket counter and three sorted sets indexing the objects:
//!
//! * **index** (every score 0, so ordered by member bytes): every object that has a holder
//!   record (live or in its lock-delay) or a queue entry. A subtree claim on `Q` reads the range
//!   under `Q`; `list` reads the range of its prefix. Nothing else is ever scanned.
//! * **deadlines** (score: ms on Redis's clock): for each indexed object, a time after which
//!   every record it has lapsed. Every script that writes a record raises it (`ZADD GT`) to the
//!   record's end (expiry, plus lock-delay for holders). Each acquire sweeps a few objects whose
//!   deadline passed out of the three sets: so an object is indexed whenever it has a live
//!   record, and objects whose locks expired do not stay indexed forever.
//! * **waiting** (every score 0): the objects that have a queue, so that a release can tell
//!   whether anyone may wait for what it frees above or below the object, without publishing
//!   for uncontended locks.
//!
//! Records:
//!
//! * Holder: `"<mode> <scope> <fence> <expires_ms> <acquired_ms> <claimed> <delay_ms> <owner>"`,
//!   mode `x` (exclusive) or `s` (shared), scope `o` (the object) or `t` (its subtree), times on
//!   Redis's clock (`TIME`) in ms, claimed `0` or `1`, delay the lock-delay. A holder whose
//!   `expires_ms` has passed does not exist; until `expires_ms + delay_ms` its record still
//!   blocks conflicting claims (its lock-delay); after that it is dead, and scripts that change
//!   the hash drop it. The hash's own `PEXPIRE` is only ever extended, to the latest record's
//!   end, so it disappears once every record is dead. Records of the layout before scopes
//!   (`"<mode> <fence> <expires_ms> <acquired_ms> <claimed> <owner>"`) read as object scope
//!   without delay.
//! * Queue entry: member `"<ticket> <mode> <scope> <expires_ms> <owner>"`, score the ticket
//!   (older entries without scope read as object scope). Renewing an entry replaces its member.
//!   The set's `PEXPIRE` is extended to the latest entry.
//!
//! ## Rules the scripts share
//!
//! * **What a claim reads.** A claim on `Q` reads `Q`'s holders and queue, the holders and
//!   queues of `Q`'s ancestors (declared as KEYS by the caller; only their subtree records
//!   count), and for a subtree claim the holders and queues of the indexed objects under `Q`
//!   (keys computed in the script from the index: Redis Cluster is not supported anyway).
//! * **Reads before writes.** Every script reads every key it may write (a per-prefix set at
//!   least with `ZCARD`; so a key of the wrong type, or a record it cannot parse, fails the
//!   script) before it writes anything: a script that fails changes nothing, which keeps a
//!   multi-object step all-or-nothing.
//! * **Fences are strings.** Fences are around 2^60, and Lua numbers are doubles, exact only to
//!   2^53: the scripts compare fences as decimal strings (longer is larger, then
//!   lexicographic), increment them with Redis's 64-bit `INCR` and read the exact result back
//!   with `GET`. The clock floor is `(seconds * 1e6 + micros) * 2^FENCE_CLOCK_SHIFT`: the
//!   microsecond count is below 2^53 and so exact, multiplying by a power of two is exact in a
//!   double, and `%.0f` prints it exactly. Millisecond times (about 2^41) are exact doubles.
//! * **Wake-ups.** A script that releases, takes back or downgrades a holder, or removes queue
//!   entries, publishes the object on the release channel when someone may wait for it: the
//!   object has a queue, or (from the waiting set) an ancestor has one, or, for a subtree
//!   holder or entry, an object under it has one. Every waiter of [`lockcore::Locks`] has a
//!   queue entry from its first refusal on (entered in the same atomic step as the refusal), so
//!   nobody waits where there is no queue. One `PUBLISH` per script call carries every such
//!   object as its member, one per line (members contain no control characters), followed by
//!   `/` when what was freed covered its subtree (an object id never ends with `/`): the
//!   listener calls [`lockcore::WaitQueue::wake_subtree`] for those and
//!   [`lockcore::WaitQueue::wake`] for the others. Expiries and the end of a lock-delay
//!   publish nothing: the refusal told each waiter when they end.

use redis::Script;

// The acquire script caps the blockers it reports at 64.
const _: () = assert!(lockcore::store::MAX_BLOCKERS == 64);

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
local function holder(key, rec)
  local mode, scope, fence, expires, acquired, claimed, delay, owner = string.match(rec,
    '^([xs]) ([ot]) ([1-9]%d*) (%d+) (%d+) ([01]) (%d+) (.+)$')
  if not mode then
    -- The layout before scopes and lock-delay: the object alone, no delay.
    mode, fence, expires, acquired, claimed, owner =
      string.match(rec, '^([xs]) ([1-9]%d*) (%d+) (%d+) ([01]) (.+)$')
    scope, delay = 'o', '0'
  end
  if not mode then fail('holders hash ' .. key .. ' holds a malformed record') end
  return {mode = mode, scope = scope, fence = fence, expires = tonumber(expires),
          acquired = acquired, claimed = claimed, delay = tonumber(delay), owner = owner}
end
local function record(h)
  return h.mode .. ' ' .. h.scope .. ' ' .. h.fence .. ' ' .. num(h.expires) .. ' ' ..
    h.acquired .. ' ' .. h.claimed .. ' ' .. num(h.delay) .. ' ' .. h.owner
end
local function entry(key, member)
  local ticket, mode, scope, expires, owner =
    string.match(member, '^(%d+) ([xs]) ([ot]) (%d+) (.+)$')
  if not ticket then
    ticket, mode, expires, owner = string.match(member, '^(%d+) ([xs]) (%d+) (.+)$')
    scope = 'o'
  end
  if not ticket then fail('queue ' .. key .. ' holds a malformed entry') end
  return {ticket = ticket, mode = mode, scope = scope, expires = tonumber(expires),
          owner = owner}
end
local function extend(key, ms)
  local left = redis.call('PTTL', key)
  if left == -1 or (left >= 0 and left < ms) then redis.call('PEXPIRE', key, ms) end
end
-- The records of a holders hash: live holders, expired ones still in their lock-delay, and
-- the fields of dead ones.
local function holders_of(key, now)
  local live, delaying, dead = {}, {}, {}
  local fields = redis.call('HGETALL', key)
  for j = 1, #fields, 2 do
    local h = holder(key, fields[j + 1])
    h.digest = fields[j]
    if h.expires > now then
      live[#live + 1] = h
    elseif h.expires + h.delay > now then
      delaying[#delaying + 1] = h
    else
      dead[#dead + 1] = fields[j]
    end
  end
  return {live = live, delaying = delaying, dead = dead}
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
local function clash(a, b)
  return a == 'x' or b == 'x'
end
-- The ancestors of a member, nearest the root first: its prefixes ending before a '/' that is
-- not its first character.
local function ancestors(m)
  local out, at = {}, 2
  while true do
    local slash = string.find(m, '/', at, true)
    if not slash then return out end
    out[#out + 1] = string.sub(m, 1, slash - 1)
    at = slash + 1
  end
end
local function key_of(prefix, m, kind)
  return prefix .. '{' .. m .. '}:' .. kind
end
-- Whether someone may wait, beyond m itself, for what a record on m in scope frees: a waiter
-- on an ancestor, or for a subtree, one under m. Reads the waiting set only.
local function waited_beyond(waiting, m, scope)
  for _, up in ipairs(ancestors(m)) do
    if redis.call('ZSCORE', waiting, up) then return true end
  end
  return scope == 't' and
    #redis.call('ZRANGEBYLEX', waiting, '[' .. m .. '/', '(' .. m .. '0', 'LIMIT', 0, 1) > 0
end
-- How m is named in a release message: with a trailing '/' when its subtree was freed.
local function freed(m, scope)
  if scope == 't' then return m .. '/' end
  return m
end
-- After a script removed records of m: drops m from the waiting set when its queue is gone
-- (if the set is not empty), and from the other two sets as well when its holders hash is gone
-- too.
local function forget_if_empty(index, deadlines, waiting, someone_waits, m, hk, queued)
  if queued then return end
  if someone_waits then redis.call('ZREM', waiting, m) end
  if redis.call('EXISTS', hk) == 0 then
    redis.call('ZREM', index, m)
    redis.call('ZREM', deadlines, m)
  end
end
-- An object's holders, its lock-delay in force and its live waiters, for inspect and list:
-- {owner, mode, scope, fence, acquired, expires}, {owner, mode, scope, fence, expired, until}
-- or {}, and the count.
local function describe(hk, qk, now)
  local found = holders_of(hk, now)
  local holders = {}
  for _, h in ipairs(found.live) do
    for _, v in ipairs({h.owner, h.mode, h.scope, h.fence, h.acquired, num(h.expires)}) do
      holders[#holders + 1] = v
    end
  end
  local last
  for _, h in ipairs(found.delaying) do
    local ends = h.expires + h.delay
    if not last or ends > last.expires + last.delay or
        (ends == last.expires + last.delay and h.mode == 'x') then
      last = h
    end
  end
  local delay = {}
  if last then
    delay = {last.owner, last.mode, last.scope, last.fence, num(last.expires),
             num(last.expires + last.delay)}
  end
  local waiters = 0
  for _, member in ipairs(redis.call('ZRANGE', qk, 0, -1)) do
    if entry(qk, member).expires > now then waiters = waiters + 1 end
  end
  return holders, delay, waiters
end
"#
    };
}

/// Acquire (`try_acquire`).
///
/// KEYS: the ticket counter, the index, deadlines and waiting sets, then per claim: holders,
/// fence, queue, then holders and queue of each of the claim's ancestors (nearest the root
/// first).
/// ARGV: owner, ttl ms, fence key ttl ms, clock multiplier (2^shift), queueing (`1`/`0`),
/// ticket (`0` for none), keep-for ms, channel, key prefix, lock-delay ms, then per claim:
/// member, mode (`x`/`s`), scope (`o`/`t`), digest (hex), number of ancestors.
///
/// Returns `{1, fence, ttl_ms, replayed, mode, ...}` (four items per claim; a replay answers
/// with the held grant's mode, which a downgrade may have made shared) on a grant, and
/// `{0, ticket, count, index, owner, retry_ms, cause, ..., member, owner, fence, wanted, ...}`
/// on a refusal: `count` conflicts (index 1-based, cause `held`, `queued` or `lock_delay`;
/// ticket 0 when not queueing), then, when the refusal drew the ticket, the live holders in
/// conflict with the claims (at most [`lockcore::store::MAX_BLOCKERS`]).
const ACQUIRE: &str = concat!(
    prelude!(),
    r#"
local owner, ttl, fence_ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local queueing, ticket, keep = ARGV[5] == '1', ARGV[6], tonumber(ARGV[7])
local channel, prefix, delay = ARGV[8], ARGV[9], tonumber(ARGV[10])
local index, deadlines, waiting = KEYS[2], KEYS[3], KEYS[4]
local now, micros = now_ms()
local function less(a, b)
  if #a ~= #b then return #a < #b end
  return a < b
end
local claims, k = {}, 5
for a = 11, #ARGV, 5 do
  local c = {member = ARGV[a], mode = ARGV[a + 1], scope = ARGV[a + 2], digest = ARGV[a + 3],
             hk = KEYS[k], fk = KEYS[k + 1], qk = KEYS[k + 2], above = {}}
  local names = ancestors(c.member)
  if #names ~= tonumber(ARGV[a + 4]) then fail('ancestor keys do not match ' .. c.member) end
  for j, name in ipairs(names) do
    c.above[j] = {member = name, hk = KEYS[k + 1 + 2 * j], qk = KEYS[k + 2 + 2 * j]}
  end
  k = k + 3 + 2 * #names
  claims[#claims + 1] = c
end
if k ~= #KEYS + 1 then fail('keys do not match the claims') end

-- Reads.
redis.call('ZCARD', index)
redis.call('ZCARD', waiting)
-- Objects whose every record lapsed: at most 16 plus two per claim, more than one acquire
-- can index, so the sweep keeps up.
local lapsed = redis.call('ZRANGEBYSCORE', deadlines, '-inf', num(now), 'LIMIT', 0,
  16 + 2 * #claims)
local hcache, qcache = {}, {}
local function holders_at(key)
  local found = hcache[key]
  if not found then
    found = holders_of(key, now)
    hcache[key] = found
  end
  return found
end
-- The live entries of a queue that come before the request (every one, without a ticket),
-- in ticket order, and the expired ones.
local function queue_at(key)
  local found = qcache[key]
  if found then return found end
  local members
  if ticket ~= '0' then
    members = redis.call('ZRANGEBYSCORE', key, '-inf', '(' .. ticket)
  else
    members = redis.call('ZRANGE', key, 0, -1)
  end
  found = {live = {}, gone = {}}
  for _, member in ipairs(members) do
    local e = entry(key, member)
    if e.expires <= now then found.gone[#found.gone + 1] = member
    else found.live[#found.live + 1] = e end
  end
  qcache[key] = found
  return found
end
local blockers, seen = {}, {}
-- A holder (or lock-delay) of member m blocks claim c until till: the claim reports the one
-- that ends last; live holders are remembered as blockers once each.
local function blocked(c, m, h, cause, till)
  if not c.till or till > c.till then c.who, c.till, c.cause = h.owner, till, cause end
  if cause == 'held' then
    local id = m .. ' ' .. h.digest
    local known = seen[id]
    if not known then
      known = {m, h.owner, h.fence, c.mode}
      seen[id] = known
      blockers[#blockers + 1] = known
    elseif c.mode == 'x' then
      known[4] = 'x'
    end
  end
end
local function check_holders(c, m, found, subtree_only)
  for _, h in ipairs(found.live) do
    if (not subtree_only or h.scope == 't') and clash(c.mode, h.mode) then
      blocked(c, m, h, 'held', h.expires)
    end
  end
  for _, h in ipairs(found.delaying) do
    if (not subtree_only or h.scope == 't') and clash(c.mode, h.mode) then
      blocked(c, m, h, 'lock_delay', h.expires + h.delay)
    end
  end
end
-- Without a blocking holder, the earliest conflicting entry of the queue blocks the claim.
local function check_queue(c, found, subtree_only)
  for _, e in ipairs(found.live) do
    if c.who then return end
    if (not subtree_only or e.scope == 't') and clash(c.mode, e.mode) then
      c.who, c.till, c.cause = e.owner, e.expires, 'queued'
    end
  end
end
local conflicts = {}
for i, c in ipairs(claims) do
  c.own = holders_at(c.hk)
  c.queue = queue_at(c.qk)
  for _, h in ipairs(c.own.live) do
    if h.digest == c.digest then c.replay = h end
  end
  if not c.replay then
    check_holders(c, c.member, c.own, false)
    for _, up in ipairs(c.above) do check_holders(c, up.member, holders_at(up.hk), true) end
    local below = {}
    if c.scope == 't' then
      below = redis.call('ZRANGEBYLEX', index, '[' .. c.member .. '/', '(' .. c.member .. '0')
      for _, m in ipairs(below) do
        check_holders(c, m, holders_at(key_of(prefix, m, 'holders')), false)
      end
    end
    check_queue(c, c.queue, false)
    for _, up in ipairs(c.above) do
      if not c.who then check_queue(c, queue_at(up.qk), true) end
    end
    for _, m in ipairs(below) do
      if not c.who then check_queue(c, queue_at(key_of(prefix, m, 'queue')), false) end
    end
    if c.who then
      for _, v in ipairs({i, c.who, c.till - now, c.cause}) do conflicts[#conflicts + 1] = v end
    end
  end
end
local floor = num(micros * tonumber(ARGV[4]))
local refused, drew = #conflicts > 0, false
if not refused then
  for _, c in ipairs(claims) do
    if not c.replay then
      c.last = redis.call('GET', c.fk)
      if c.last and not string.find(c.last, '^[1-9]%d*$') then
        fail('fence key ' .. c.fk .. ' does not hold a fence')
      end
    end
  end
elseif queueing and ticket == '0' then
  -- The first write: a ticket counter of the wrong type fails the script before any other.
  ticket = num(redis.call('INCR', KEYS[1]))
  drew = true
end

-- Writes.
if #lapsed > 0 then
  remove('ZREM', index, lapsed)
  remove('ZREM', deadlines, lapsed)
  remove('ZREM', waiting, lapsed)
end
local woken, out = {}, {1}
for _, c in ipairs(claims) do
  local changed = #c.own.dead > 0 or #c.queue.gone > 0
  remove('HDEL', c.hk, c.own.dead)
  remove('ZREM', c.qk, c.queue.gone)
  if refused then
    if queueing then
      redis.call('ZREMRANGEBYSCORE', c.qk, ticket, ticket)
      redis.call('ZADD', c.qk, ticket, ticket .. ' ' .. c.mode .. ' ' .. c.scope .. ' ' ..
        num(now + keep) .. ' ' .. owner)
      extend(c.qk, keep)
      redis.call('ZADD', index, 0, c.member)
      redis.call('ZADD', waiting, 0, c.member)
      redis.call('ZADD', deadlines, 'GT', num(now + keep), c.member)
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
      redis.call('HSET', c.hk, c.digest, record({mode = c.mode, scope = c.scope, fence = fence,
        expires = now + ttl, acquired = num(now), claimed = '0', delay = delay, owner = owner}))
      extend(c.hk, ttl + delay)
      redis.call('ZADD', index, 0, c.member)
      redis.call('ZADD', deadlines, 'GT', num(now + ttl + delay), c.member)
      out[#out + 1] = fence
      out[#out + 1] = ttl
      out[#out + 1] = 0
      out[#out + 1] = c.mode
    end
  end
  if changed then
    if redis.call('EXISTS', c.qk) == 1 then
      woken[#woken + 1] = c.member
    else
      redis.call('ZREM', waiting, c.member)
    end
  end
end
publish(channel, woken)
if refused then
  local answer = {0, queueing and tonumber(ticket) or 0, #conflicts / 4}
  for _, v in ipairs(conflicts) do answer[#answer + 1] = v end
  if drew then
    for j = 1, math.min(#blockers, 64) do -- MAX_BLOCKERS
      for _, v in ipairs(blockers[j]) do answer[#answer + 1] = v end
    end
  end
  return answer
end
return out
"#
);

/// Leave the queue (`leave_queue`). KEYS: the index, deadlines and waiting sets, then per
/// object: holders, queue. ARGV: channel, ticket, then per object: member. Returns how many
/// entries it removed.
const LEAVE: &str = concat!(
    prelude!(),
    r#"
local ticket = ARGV[2]
local index, deadlines, waiting = KEYS[1], KEYS[2], KEYS[3]
local n = (#KEYS - 3) / 2
redis.call('ZCARD', index)
redis.call('ZCARD', deadlines)
local someone_waits = redis.call('ZCARD', waiting) > 0
local found = {}
for i = 1, n do
  local qk = KEYS[3 + 2 * i]
  local scope
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', qk, ticket, ticket)) do
    local e = entry(qk, member)
    if not scope or e.scope == 't' then scope = e.scope end
  end
  if scope then
    found[i] = {scope = scope,
                beyond = someone_waits and waited_beyond(waiting, ARGV[2 + i], scope)}
  end
end
local woken, removed = {}, 0
for i = 1, n do
  local f = found[i]
  if f then
    local m, hk, qk = ARGV[2 + i], KEYS[2 + 2 * i], KEYS[3 + 2 * i]
    removed = removed + redis.call('ZREMRANGEBYSCORE', qk, ticket, ticket)
    local queued = redis.call('EXISTS', qk) == 1
    if queued or f.beyond then woken[#woken + 1] = freed(m, f.scope) end
    forget_if_empty(index, deadlines, waiting, someone_waits, m, hk, queued)
  end
end
publish(ARGV[1], woken)
return removed
"#
);

/// Abandon (`abandon`): takes back the grants of an attempt whose answer was lost.
/// KEYS: the index, deadlines and waiting sets, then per claim: holders, queue. ARGV: channel,
/// then per claim: member, digest. Returns 2 when a retry claimed the grant (nothing removed),
/// 1 when it removed a live holder, 0 when none of the digests holds.
const ABANDON: &str = concat!(
    prelude!(),
    r#"
local index, deadlines, waiting = KEYS[1], KEYS[2], KEYS[3]
local n = (#KEYS - 3) / 2
local now = now_ms()
redis.call('ZCARD', index)
redis.call('ZCARD', deadlines)
local someone_waits = redis.call('ZCARD', waiting) > 0
local found, claimed = {}, false
for i = 1, n do
  local hk = KEYS[2 + 2 * i]
  local rec = redis.call('HGET', hk, ARGV[2 * i + 1])
  if rec then
    local h = holder(hk, rec)
    found[i] = h
    if h.claimed == '1' and h.expires > now then claimed = true end
  end
end
if claimed then return 2 end
for i = 1, n do
  local h = found[i]
  if h then h.beyond = someone_waits and waited_beyond(waiting, ARGV[2 * i], h.scope) end
end
local woken, took = {}, 0
for i = 1, n do
  local h = found[i]
  if h then
    local m, hk, qk = ARGV[2 * i], KEYS[2 + 2 * i], KEYS[3 + 2 * i]
    redis.call('HDEL', hk, ARGV[2 * i + 1])
    if h.expires > now then took = 1 end
    local queued = redis.call('EXISTS', qk) == 1
    if queued or h.beyond then woken[#woken + 1] = freed(m, h.scope) end
    forget_if_empty(index, deadlines, waiting, someone_waits, m, hk, queued)
  end
end
publish(ARGV[1], woken)
return took
"#
);

/// Release (`release`). KEYS: the index, deadlines and waiting sets, then per holder: holders,
/// queue. ARGV: channel, then per holder: member, digest, fence. Returns one status per
/// holder: 1 released, 0 not held, -1 held by others. A released holder leaves no lock-delay.
const RELEASE: &str = concat!(
    prelude!(),
    r#"
local index, deadlines, waiting = KEYS[1], KEYS[2], KEYS[3]
local n = (#KEYS - 3) / 2
local now = now_ms()
redis.call('ZCARD', index)
redis.call('ZCARD', deadlines)
local someone_waits = redis.call('ZCARD', waiting) > 0
local out, found = {}, {}
for i = 1, n do
  local hk = KEYS[2 + 2 * i]
  local digest, fence = ARGV[3 * i], ARGV[3 * i + 1]
  local live = holders_of(hk, now).live
  out[i] = #live > 0 and -1 or 0
  for _, h in ipairs(live) do
    if h.digest == digest and h.fence == fence then
      out[i] = 1
      found[i] = h
      h.beyond = someone_waits and waited_beyond(waiting, ARGV[3 * i - 1], h.scope)
    end
  end
end
local woken = {}
for i = 1, n do
  local h = found[i]
  if h then
    local m, hk, qk = ARGV[3 * i - 1], KEYS[2 + 2 * i], KEYS[3 + 2 * i]
    redis.call('HDEL', hk, h.digest)
    local queued = redis.call('EXISTS', qk) == 1
    if queued or h.beyond then woken[#woken + 1] = freed(m, h.scope) end
    forget_if_empty(index, deadlines, waiting, someone_waits, m, hk, queued)
  end
end
publish(ARGV[1], woken)
return out
"#
);

/// Renew (`renew`). KEYS: the index and deadlines sets, then per holder: holders, fence.
/// ARGV: ttl ms, fence key ttl ms, then per holder: member, digest, fence. Returns
/// `{status, owner, mode, ...}` (three items per holder; owner and mode empty unless status
/// is 1). The holder keeps the lock-delay it was granted with.
const RENEW: &str = concat!(
    prelude!(),
    r#"
local index, deadlines = KEYS[1], KEYS[2]
local n = (#KEYS - 2) / 2
local ttl, fence_ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local now = now_ms()
redis.call('ZCARD', index)
redis.call('ZCARD', deadlines)
local found = {}
for i = 1, n do
  local hk, fk = KEYS[1 + 2 * i], KEYS[2 + 2 * i]
  local digest, fence = ARGV[3 * i + 1], ARGV[3 * i + 2]
  local live = holders_of(hk, now).live
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
    local hk, fk, m = KEYS[1 + 2 * i], KEYS[2 + 2 * i], ARGV[3 * i]
    local h = f.holder
    h.expires = now + ttl
    redis.call('HSET', hk, h.digest, record(h))
    extend(hk, ttl + h.delay)
    if f.restore then
      redis.call('SET', fk, f.restore, 'PX', fence_ttl)
    else
      extend(fk, fence_ttl)
    end
    redis.call('ZADD', index, 0, m)
    redis.call('ZADD', deadlines, 'GT', num(h.expires + h.delay), m)
    out[#out + 1] = 1
    out[#out + 1] = h.owner
    out[#out + 1] = h.mode
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
local live = holders_of(KEYS[1], now).live
for _, h in ipairs(live) do
  if h.digest == ARGV[1] and h.fence == ARGV[2] then
    return {1, h.owner, h.mode, h.expires - now}
  end
end
if #live > 0 then return {-1} end
return {0}
"#
);

/// Downgrade (`downgrade`). KEYS: the waiting set, holders, queue. ARGV: channel, member,
/// digest, fence. Returns `{1, owner, ttl_ms}`, `{0}` when not held, `{-1}` when held by
/// others. Publishes the object when an exclusive holder became shared and someone may wait.
const DOWNGRADE: &str = concat!(
    prelude!(),
    r#"
local now = now_ms()
local live = holders_of(KEYS[2], now).live
for _, h in ipairs(live) do
  if h.digest == ARGV[3] and h.fence == ARGV[4] then
    if h.mode == 'x' then
      local beyond = redis.call('ZCARD', KEYS[1]) > 0 and waited_beyond(KEYS[1], ARGV[2], h.scope)
      h.mode = 's'
      redis.call('HSET', KEYS[2], h.digest, record(h))
      if beyond or redis.call('EXISTS', KEYS[3]) == 1 then
        publish(ARGV[1], {freed(ARGV[2], h.scope)})
      end
    end
    return {1, h.owner, h.expires - now}
  end
end
if #live > 0 then return {-1} end
return {0}
"#
);

/// Inspect: KEYS: holders, queue. Returns `{now_ms, holders, delay, waiters}`: holders
/// `{owner, mode, scope, fence, acquired_ms, expires_ms, ...}` (six items per live holder),
/// delay `{owner, mode, scope, fence, expired_ms, until_ms}` for the lock-delay in force that
/// ends last (empty without one), waiters the number of live queue entries.
const INSPECT: &str = concat!(
    prelude!(),
    r#"
local now = now_ms()
local holders, delay, waiters = describe(KEYS[1], KEYS[2], now)
return {num(now), holders, delay, waiters}
"#
);

/// List: one page of held objects in the index's (member byte) order.
/// KEYS: the index, deadlines and waiting sets. ARGV: key prefix, low and high `ZRANGEBYLEX`
/// bounds, limit, budget (the most indexed objects the page looks at).
/// Returns `{now_ms, next, {member, holders, delay, waiters}, ...}` as [`INSPECT`] describes
/// each object; `next` is the last member looked at, or empty when the range has no more.
/// Objects it finds without any live record are dropped from the index sets.
const LIST: &str = concat!(
    prelude!(),
    r#"
local prefix, low, high = ARGV[1], ARGV[2], ARGV[3]
local limit, budget = tonumber(ARGV[4]), tonumber(ARGV[5])
local index, deadlines, waiting = KEYS[1], KEYS[2], KEYS[3]
local now = now_ms()
redis.call('ZCARD', deadlines)
redis.call('ZCARD', waiting)
local out, stale, listed, scanned, last, ended = {num(now), ''}, {}, 0, 0, nil, false
while listed < limit and scanned < budget do
  local want = math.min(limit - listed, budget - scanned)
  local batch = redis.call('ZRANGEBYLEX', index, low, high, 'LIMIT', 0, want)
  for _, m in ipairs(batch) do
    scanned = scanned + 1
    last = m
    local holders, delay, waiters =
      describe(key_of(prefix, m, 'holders'), key_of(prefix, m, 'queue'), now)
    if #holders > 0 then
      listed = listed + 1
      out[#out + 1] = {m, holders, delay, waiters}
    elseif #delay == 0 and waiters == 0 then
      stale[#stale + 1] = m
    end
  end
  if #batch < want then
    ended = true
    break
  end
  low = '(' .. last
end
if not ended then
  ended = #redis.call('ZRANGEBYLEX', index, '(' .. last, high, 'LIMIT', 0, 1) == 0
end
if not ended then out[2] = last end
remove('ZREM', index, stale)
remove('ZREM', deadlines, stale)
remove('ZREM', waiting, stale)
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
    pub(crate) inspect: Script,
    pub(crate) list: Script,
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
            inspect: Script::new(INSPECT),
            list: Script::new(LIST),
        }
    }

    pub(crate) fn all(&self) -> [&Script; 9] {
        [
            &self.acquire,
            &self.leave,
            &self.abandon,
            &self.release,
            &self.renew,
            &self.validate,
            &self.downgrade,
            &self.inspect,
            &self.list,
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
