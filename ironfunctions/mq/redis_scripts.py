"""The Lua scripts that make every ``RedisQueue`` operation atomic on the server.

Keys (``KEYS[1..9]``, in this order, all under the queue's prefix):

- ``items``    hash  call_id -> QueueItem JSON
- ``scores``   hash  call_id -> place in order: ``(2 - priority) * 1e15 + seq``, so one
                     sorted set orders by priority first, then by first-push sequence
- ``attempts`` hash  call_id -> deliveries so far
- ``tokens``   hash  call_id -> lease token of the current delivery
- ``ready``    zset  visible items, scored by their place
- ``delayed``  zset  pushed or released with a delay, scored by visible-at (ms)
- ``leased``   zset  reserved items, scored by lease expiry (ms)
- ``seq``      counter of pushes
- ``apps``     hash  call_id -> app name, so a reserve limited to some apps reads no
                     payloads (items pushed before it existed are only handed out to
                     reserves without ``apps``)
- ``app_calls`` hash app name -> items of the app waiting (not under a lease)
- ``app_bytes`` hash app name -> their bytes (the item JSON's length, ``HSTRLEN``)

The two per-app counters (issue 13, SPEC §8) follow every transition between waiting
and leased: PUSH and RELEASE add, RESERVE takes off, ``surface`` adds back an item
whose lease expired, REMOVE takes off a waiting item (a leased one is not counted);
ACK deletes a held item, which is not counted. An item in ``leased`` is never counted,
even once its lease has expired, until ``surface`` moves it: PUSH (with limits) and
USAGE surface first, so what they see is exact. REBUILD recomputes both from the items.

Time is the Redis server's (``TIME``), so every node agrees on lease expiry. Items
whose time has come move from ``delayed``/``leased`` back to ``ready`` with their
stored score: an expired lease puts the call back at its old place. Requires Redis 5+
(scripts that call ``TIME`` and then write replicate by effects).
"""

from __future__ import annotations

KEY_NAMES = ("items", "scores", "attempts", "tokens", "ready", "delayed", "leased", "seq", "apps",
             "app_calls", "app_bytes")

_PRELUDE = """
local items, scores, attempts, tokens = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local ready, delayed, leased, seq = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local owners = KEYS[9]
local app_calls, app_bytes = KEYS[10], KEYS[11]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function fmt(n) return string.format('%.0f', n) end
local function held(id, token)
  if redis.call('HGET', tokens, id) ~= token then return false end
  local expiry = redis.call('ZSCORE', leased, id)
  return expiry ~= false and tonumber(expiry) > now
end
local function forget(id)
  for _, h in ipairs({items, scores, attempts, tokens, owners}) do redis.call('HDEL', h, id) end
  for _, z in ipairs({ready, delayed, leased}) do redis.call('ZREM', z, id) end
end
local function app_of(id)
  local app = redis.call('HGET', owners, id)
  if app then return app end
  local text = redis.call('HGET', items, id)  -- pushed before ``apps`` existed
  if text then return cjson.decode(text)['app_name'] end
  return false
end
-- Add (sign 1) or take off (-1) the item ``id`` to its app's waiting counters.
local function count(id, sign)
  local app = app_of(id)
  if not app then return end
  local calls = redis.call('HINCRBY', app_calls, app, sign)
  local size = redis.call('HSTRLEN', items, id)
  redis.call('HINCRBY', app_bytes, app, sign * size)
  if calls <= 0 then
    redis.call('HDEL', app_calls, app)
    redis.call('HDEL', app_bytes, app)
  end
end
-- Move items whose time has come from ``delayed`` or ``leased`` back to ``ready``
-- (at most 1000 a call); an expired lease's item is waiting again: counted.
local function surface(zset)
  local due = redis.call('ZRANGEBYSCORE', zset, '-inf', fmt(now), 'LIMIT', 0, 1000)
  for _, id in ipairs(due) do
    redis.call('ZREM', zset, id)
    redis.call('HDEL', tokens, id)
    local score = redis.call('HGET', scores, id)
    if score then
      redis.call('ZADD', ready, score, id)
      if zset == leased then count(id, 1) end
    end
  end
end
local function place(id, delay_ms)
  if delay_ms > 0 then
    redis.call('ZADD', delayed, fmt(now + delay_ms), id)
  else
    redis.call('ZADD', ready, redis.call('HGET', scores, id), id)
  end
end
"""

# ARGV: call_id, item JSON, priority, delay ms, wake channel, app name[, max calls,
# max bytes]. Returns 1 if added, 0 if the id is already there; with the limits,
# {-1, 'calls'|'bytes'} (nothing changed) if the app would pass one of them.
PUSH = _PRELUDE + """
local id, app = ARGV[1], ARGV[6]
if redis.call('HEXISTS', items, id) == 1 then return 0 end
if #ARGV >= 8 then
  surface(leased)
  local calls = tonumber(redis.call('HGET', app_calls, app) or '0')
  if calls + 1 > tonumber(ARGV[7]) then return {-1, 'calls'} end
  local bytes = tonumber(redis.call('HGET', app_bytes, app) or '0')
  if bytes + string.len(ARGV[2]) > tonumber(ARGV[8]) then return {-1, 'bytes'} end
end
local n = redis.call('INCR', seq)
redis.call('HSET', items, id, ARGV[2])
redis.call('HSET', scores, id, fmt((2 - tonumber(ARGV[3])) * 1e15 + n))
redis.call('HSET', attempts, id, 0)
redis.call('HSET', owners, id, app)
count(id, 1)
place(id, tonumber(ARGV[4]))
redis.call('PUBLISH', ARGV[5], '1')
return 1
"""

# ARGV: lease ms, token[, scan limit, app name...]. With app names, the first of the
# first <scan limit> visible items that belongs to one of them; others stay untouched.
# Returns {1, call_id, item JSON, attempt} or {0, ms until the next hidden item
# becomes visible, or -1}.
RESERVE = _PRELUDE + """
surface(delayed)
surface(leased)
local top = redis.call('ZRANGE', ready, 0, 0)
if #ARGV > 2 then
  local wanted = {}
  for i = 4, #ARGV do wanted[ARGV[i]] = true end
  local ids = redis.call('ZRANGE', ready, 0, tonumber(ARGV[3]) - 1)
  top = {}
  if #ids > 0 then
    local apps = redis.call('HMGET', owners, unpack(ids))
    for i, id in ipairs(ids) do
      if apps[i] and wanted[apps[i]] then top = {id}; break end
    end
  end
end
if #top == 0 then
  local next_due = -1
  for _, z in ipairs({delayed, leased}) do
    local first = redis.call('ZRANGE', z, 0, 0, 'WITHSCORES')
    if #first > 0 then
      local due = tonumber(first[2]) - now
      if next_due < 0 or due < next_due then next_due = due end
    end
  end
  return {0, fmt(next_due)}
end
local id = top[1]
redis.call('ZREM', ready, id)
count(id, -1)
local attempt = redis.call('HINCRBY', attempts, id, 1)
redis.call('HSET', tokens, id, ARGV[2])
redis.call('ZADD', leased, fmt(now + tonumber(ARGV[1])), id)
return {1, id, redis.call('HGET', items, id), attempt}
"""

# ARGV: call_id, token. Returns 1 if the lease was held (and the item deleted).
ACK = _PRELUDE + """
if not held(ARGV[1], ARGV[2]) then return 0 end
forget(ARGV[1])
return 1
"""

# ARGV: call_id, token, lease ms. Returns 1 if the lease was held (and extended).
RENEW = _PRELUDE + """
if not held(ARGV[1], ARGV[2]) then return 0 end
redis.call('ZADD', leased, fmt(now + tonumber(ARGV[3])), ARGV[1])
return 1
"""

# ARGV: call_id, token, delay ms, wake channel. Returns 1 if the lease was held.
RELEASE = _PRELUDE + """
local id = ARGV[1]
if not held(id, ARGV[2]) then return 0 end
redis.call('HDEL', tokens, id)
redis.call('ZREM', leased, id)
count(id, 1)
place(id, tonumber(ARGV[3]))
redis.call('PUBLISH', ARGV[4], '1')
return 1
"""

# ARGV: call_id. Returns 1 if the item was there. An item still in ``leased`` (live
# or expired, not surfaced) was taken off the counters when reserved.
REMOVE = _PRELUDE + """
if redis.call('HEXISTS', items, ARGV[1]) == 0 then return 0 end
if not redis.call('ZSCORE', leased, ARGV[1]) then count(ARGV[1], -1) end
forget(ARGV[1])
return 1
"""

# No ARGV. Returns the number of items waiting (visible, delayed or with an expired lease).
DEPTH = _PRELUDE + """
return redis.call('ZCARD', ready) + redis.call('ZCARD', delayed)
  + redis.call('ZCOUNT', leased, '-inf', fmt(now))
"""

# ARGV: app name. Returns {calls, bytes} the app has waiting (expired leases surfaced first).
USAGE = _PRELUDE + """
surface(leased)
return {redis.call('HGET', app_calls, ARGV[1]) or '0', redis.call('HGET', app_bytes, ARGV[1]) or '0'}
"""

_REBUILD = """
local function rebuild()
  surface(leased)
  redis.call('DEL', app_calls, app_bytes)
  local ids = redis.call('HKEYS', items)
  for _, id in ipairs(ids) do
    if not redis.call('ZSCORE', leased, id) then count(id, 1) end
  end
  return #ids
end
"""

# No ARGV. Recomputes every app's counters from the items: every item not in
# ``leased`` (after surfacing expired leases) is waiting. O(items): for the reconciler.
REBUILD = _PRELUDE + _REBUILD + "return rebuild()"

# No ARGV. Run by ``start``: items but no counters at all means a queue filled before
# the counters existed (an upgrade), or nothing but leased items (then rebuilding is
# cheap): rebuild. Returns 1 if it did.
INIT = _PRELUDE + _REBUILD + """
if redis.call('EXISTS', app_calls) == 0 and redis.call('HLEN', items) > 0 then
  rebuild()
  return 1
end
return 0
"""

# ARGV: call_id... Returns, for each, 1 if the queue has the item (in any state), else 0.
HOLDS = """
local out = {}
for i, id in ipairs(ARGV) do out[i] = redis.call('HEXISTS', KEYS[1], id) end
return out
"""

# ARGV: lease name, owner, ttl ms. The key is KEYS[1] (items) plus ":lead:" and the
# name. Returns 1 if ``owner`` holds the lease now (taken, or kept and extended).
LEAD = """
local key = KEYS[1] .. ':lead:' .. ARGV[1]
if redis.call('GET', key) == ARGV[2] then
  redis.call('PEXPIRE', key, ARGV[3])
  return 1
end
if redis.call('SET', key, ARGV[2], 'NX', 'PX', ARGV[3]) then return 1 end
return 0
"""
