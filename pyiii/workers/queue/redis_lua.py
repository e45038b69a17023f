"""Lua scripts of the `redis` queue adapter (spec/workers.md §4.5).

Every step that touches more than one key is one script, so it is atomic across engines: only
one engine moves a due job, a failure acknowledges its entry and schedules the retry or writes
the DLQ entry in one go, and a FIFO group has exactly one token (on the stream, pending with a
consumer, or waiting in ``delayed``) while it holds jobs.

KEYS (same order for every script): stream, jobs, attempts, delayed, dlq, dlq:data, active,
registry. ARGV[1] is the queue's key base (``<prefix>queue:<Q>:``; FIFO lists are
``<base>g:<group>``). Job records are stored once as JSON and never re-encoded here (a Lua
round trip would turn ``[]`` into ``{}`` and round big integers); attempts live in their own
hash. A stream entry is ``id <job id>`` (standard) or ``g <group>`` (a FIFO group token).
"""

from __future__ import annotations

GROUP = "iii"

_COMMON = """
local stream, jobs, attempts, delayed = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local dlq, dlqdata, active, registry = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local base = ARGV[1]
local function gkey(g) return base .. 'g:' .. g end
local function token(g) redis.call('XADD', stream, '*', 'g', g) end
local function owned(entry, consumer)
  local p = redis.pcall('XPENDING', stream, 'iii', entry, entry, 1)
  return type(p) == 'table' and p[1] ~= nil and p[1][2] == consumer
end
local function drop(entry)
  redis.call('XACK', stream, 'iii', entry)
  redis.call('XDEL', stream, entry)
end
local function group_moves_on(g)
  if redis.call('LLEN', gkey(g)) > 0 then token(g) else redis.call('SREM', active, g) end
end
local function leave_group(g, id)
  if redis.call('LINDEX', gkey(g), 0) == id then redis.call('LPOP', gkey(g))
  else redis.call('LREM', gkey(g), 1, id) end
  group_moves_on(g)
end
local function enqueue(id, fifo, g)
  if fifo == '1' then
    redis.call('RPUSH', gkey(g), id)
    if redis.call('SADD', active, g) == 1 then token(g) end
  else
    redis.call('XADD', stream, '*', 'id', id)
  end
end
-- the job an entry stands for: its id, its group (nil for standard) and its record
local function resolve(fields)
  if fields[1] == 'id' then return fields[2], nil, redis.call('HGET', jobs, fields[2]) end
  local g = fields[2]
  local id = redis.call('LINDEX', gkey(g), 0)
  if not id then return nil, g, false end
  return id, g, redis.call('HGET', jobs, id)
end
-- one failed delivery of the entry's job: retry after backoff, or the DLQ
local function fail(entry, id, g, rec, err, now, backoff)
  drop(entry)
  if not rec then
    if g then group_moves_on(g) end
    return 'lost'
  end
  local job = cjson.decode(rec)
  local n = redis.call('HINCRBY', attempts, id, 1)
  local max = tonumber(job['max_attempts']) or 1
  if n >= max then
    redis.call('HDEL', jobs, id)
    redis.call('HDEL', attempts, id)
    redis.call('ZADD', dlq, now, id)
    redis.call('HSET', dlqdata, id, '{"record":' .. rec .. ',"error":' .. cjson.encode(err)
      .. ',"failed_at":' .. now .. ',"attempts":' .. n .. '}')
    if g then leave_group(g, id) end
    return 'dlq'
  end
  local b = tonumber(backoff)
  if not b or b < 0 then b = tonumber(job['backoff_ms']) or 1000 end
  local due = tonumber(now) + b * 2 ^ (n - 1)
  if g then redis.call('ZADD', delayed, due, 'g:' .. g) else redis.call('ZADD', delayed, due, id) end
  return 'retry'
end
-- lease a freshly delivered entry: append entry, record, attempts to `out`, or drop an entry
-- whose job is gone (a FIFO token whose head job vanished lets its group move on)
local function take(out, entry, fields)
  local id, g, rec = resolve(fields)
  if rec then
    table.insert(out, entry)
    table.insert(out, rec)
    table.insert(out, tonumber(redis.call('HGET', attempts, id) or '0'))
  else
    drop(entry)
    if g then
      if id then redis.call('LPOP', gkey(g)) end
      group_moves_on(g)
    end
  end
end
"""

# ARGV: base, id, record, fifo, group, topic, queue, from_dlq -> 1 stored, 0 already there
PUSH = _COMMON + """
local id = ARGV[2]
if ARGV[8] == '1' then
  if redis.call('ZREM', dlq, id) == 0 then return 0 end
  redis.call('HDEL', dlqdata, id)
elseif redis.call('HEXISTS', jobs, id) == 1 or redis.call('ZSCORE', dlq, id) then
  return 0
end
redis.call('HSET', jobs, id, ARGV[3])
redis.call('HDEL', attempts, id)
redis.call('HSET', registry, ARGV[7], ARGV[6])
enqueue(id, ARGV[4], ARGV[5])
return 1
"""

# ARGV: base, consumer, count, now_ms, scan (1: take stale entries back first), min_idle_ms
# -> {next_due or '', entry, record, attempts, entry, record, attempts, ...}
CLAIM = _COMMON + """
local consumer, now = ARGV[2], ARGV[4]
redis.pcall('XGROUP', 'CREATE', stream, 'iii', '0', 'MKSTREAM')
if ARGV[5] == '1' then
  local stale = redis.call('XAUTOCLAIM', stream, 'iii', consumer, ARGV[6], '0-0', 'COUNT', 100)
  for _, e in ipairs(stale[2]) do
    if e[2] then
      local id, g, rec = resolve(e[2])
      fail(e[1], id, g, rec, 'VISIBILITY_TIMEOUT: delivery lost: lease expired', now, '')
    end
  end
end
for _, m in ipairs(redis.call('ZRANGEBYSCORE', delayed, '-inf', now, 'LIMIT', 0, 1000)) do
  redis.call('ZREM', delayed, m)
  if string.sub(m, 1, 2) == 'g:' then token(string.sub(m, 3))
  else redis.call('XADD', stream, '*', 'id', m) end
end
local out = {''}
local got = redis.call('XREADGROUP', 'GROUP', 'iii', consumer, 'COUNT', ARGV[3],
                       'STREAMS', stream, '>')
if got then
  for _, e in ipairs(got[1][2]) do take(out, e[1], e[2]) end
end
local nd = redis.call('ZRANGE', delayed, 0, 0, 'WITHSCORES')
if nd[2] then out[1] = nd[2] end
return out
"""

# Entries a blocking XREADGROUP (outside any script: scripts cannot block) already delivered
# to this consumer, leased exactly as CLAIM leases what it reads. An entry this consumer no
# longer holds is skipped: an ADOPT retried after a failure must not take, or drop, an entry
# another consumer has claimed since.
# ARGV: base, consumer, (entry, field, value)... -> {'', entry, record, attempts, ...}
ADOPT = _COMMON + """
local out = {''}
for i = 3, #ARGV, 3 do
  if owned(ARGV[i], ARGV[2]) then take(out, ARGV[i], {ARGV[i + 1], ARGV[i + 2]}) end
end
return out
"""

# ARGV: base, consumer, entry, id, fifo, group -> 1 acknowledged, 0 lease lost
ACK = _COMMON + """
local entry, id = ARGV[3], ARGV[4]
if not owned(entry, ARGV[2]) then return 0 end
drop(entry)
redis.call('HDEL', jobs, id)
redis.call('HDEL', attempts, id)
if ARGV[5] == '1' then leave_group(ARGV[6], id) end
return 1
"""

# ARGV: base, consumer, entry, id, fifo, group, error, now_ms, backoff_ms -> outcome
FAIL = _COMMON + """
local entry, id = ARGV[3], ARGV[4]
if not owned(entry, ARGV[2]) then return 'lost' end
local g = nil
if ARGV[5] == '1' then g = ARGV[6] end
return fail(entry, id, g, redis.call('HGET', jobs, id), ARGV[7], ARGV[8], ARGV[9])
"""

# ARGV: base, consumer, entry, id, fifo, group -> 1 released
RELEASE = _COMMON + """
local entry = ARGV[3]
if not owned(entry, ARGV[2]) then return 0 end
drop(entry)
if ARGV[5] == '1' then token(ARGV[6]) else redis.call('XADD', stream, '*', 'id', ARGV[4]) end
return 1
"""

# ARGV: base, consumer, entry... -> number renewed (own entries only: never steal one back)
RENEW = _COMMON + """
local n = 0
for i = 3, #ARGV do
  if owned(ARGV[i], ARGV[2]) then
    redis.call('XCLAIM', stream, 'iii', ARGV[2], 0, ARGV[i], 'JUSTID')
    n = n + 1
  end
end
return n
"""

# ARGV: base -> {stored jobs, leased (pending) entries}, read at one instant
COUNTS = _COMMON + """
local p = redis.pcall('XPENDING', stream, 'iii')
local leased = 0
if type(p) == 'table' and type(p[1]) == 'number' then leased = p[1] end
return {redis.call('HLEN', jobs), leased}
"""

# ARGV: base, error, now_ms -> jobs moved (a forgotten destination)
DRAIN = _COMMON + """
local ids = redis.call('HKEYS', jobs)
for _, id in ipairs(ids) do
  local rec = redis.call('HGET', jobs, id)
  local n = tonumber(redis.call('HGET', attempts, id) or '0')
  redis.call('ZADD', dlq, ARGV[3], id)
  redis.call('HSET', dlqdata, id, '{"record":' .. rec .. ',"error":' .. cjson.encode(ARGV[2])
    .. ',"failed_at":' .. ARGV[3] .. ',"attempts":' .. n .. '}')
end
for _, g in ipairs(redis.call('SMEMBERS', active)) do redis.call('DEL', gkey(g)) end
redis.call('DEL', jobs, attempts, delayed, active, stream)
return #ids
"""
