-- The end of both save scripts: with `rec` (a live record), `idx` (its user's index or
-- `false`), `i`, `a` (its expiries), `seen`, `ver` and `size` (its last-seen, version and
-- data-size fields), the size cap, one `HDEL`, one `HSET` (chunked for very large deltas),
-- and, when the touch moved the idle expiry, the TTL, the index score and the index's TTL.
-- Needs no prelude.
--
-- The data size is kept in field `z` as `Record::data_size` counts it (per value: name,
-- JSON text and 4 bytes, i.e. `#field + 2 + HSTRLEN` for field `d:<name>`). A delta that
-- changes data costs one `HSTRLEN` per changed field to update it, never a walk of the
-- record; a record without `z` (written before it existed) is measured once, here. A
-- delta that would take `z` over the cap and above its current value is refused
-- (`{'too_large', size}`) before anything is written. Cost, server time of a one-value
-- save under `redis-benchmark` (8 alternating runs on a busy 2-core box): 14.0 µs before,
-- 17.8 µs with the size kept (minimums; medians 17.4 and 21.8); a touch alone pays nothing.

local last = 9 + 2 * tonumber(ARGV[8])
local newsize = nil
if #ARGV > 9 then
  local z = tonumber(size)
  if not z then
    z = 0
    for _, fld in ipairs(redis.call('HKEYS', rec)) do
      if string.sub(fld, 1, #F_DATA) == F_DATA then
        z = z + #fld + 2 + redis.call('HSTRLEN', rec, fld)
      end
    end
  end
  local n = z
  local k = 10
  while k <= #ARGV do
    local old = redis.call('HSTRLEN', rec, ARGV[k])
    if old > 0 then n = n - (#ARGV[k] + 2 + old) end
    if k <= last then
      n = n + #ARGV[k] + 2 + #ARGV[k + 1]
      k = k + 2
    else
      k = k + 1
    end
  end
  local cap = tonumber(ARGV[9])
  if cap and n > cap and n > z then return {'too_large', n} end
  newsize = string.format('%d', n)
end
for k = last + 1, #ARGV, CHUNK do
  redis.call('HDEL', rec, unpack(ARGV, k, math.min(k + CHUNK - 1, #ARGV)))
end
local v = (tonumber(ver) or 0) + 1
local set = {F_VERSION, string.format('%d', v)}
local moved = false
if ARGV[5] == '1' then
  if tonumber(ARGV[6]) > (tonumber(seen) or 0) then
    set[#set + 1] = F_SEEN
    set[#set + 1] = ARGV[6]
    -- The user's order by last sight (`evict_idlest`), next to the index.
    if idx then redis.call('ZADD', string.sub(idx, 1, -1 - #K_INDEX) .. K_BY_SIGHT, 'XX', ARGV[6], ARGV[3]) end
  end
  local idle = tonumber(ARGV[7])
  if idle > i then
    set[#set + 1] = F_IDLE
    set[#set + 1] = ARGV[7]
    i = idle
    moved = true
  end
end
if newsize then
  set[#set + 1] = F_SIZE
  set[#set + 1] = newsize
end
local k = 10
while k <= last and #set < CHUNK do
  set[#set + 1] = ARGV[k]
  k = k + 1
end
redis.call('HSET', rec, unpack(set))
for j = k, last, CHUNK do
  redis.call('HSET', rec, unpack(ARGV, j, math.min(j + CHUNK - 1, last)))
end
if moved then
  local exp = math.min(i, a)
  if exp > CAP then exp = CAP end
  exp = string.format('%d', exp)
  redis.call('PEXPIREAT', rec, exp)
  if idx then
    redis.call('ZADD', idx, exp, ARGV[3])
    local top = redis.call('ZRANGE', idx, -1, -1, 'WITHSCORES')
    local t = tonumber(top[2])
    if t then
      if t > CAP then t = CAP end
      t = string.format('%d', t)
      redis.call('PEXPIREAT', idx, t)
      local base = string.sub(idx, 1, -1 - #K_INDEX)
      redis.call('PEXPIREAT', base .. K_BY_CREATION, t)
      redis.call('PEXPIREAT', base .. K_BY_SIGHT, t)
    end
  end
end
-- Read the record once more: the write above ended the server's tracking of this key for
-- this connection (any write does), and a read tracks it again, so that a cache that keeps
-- what it wrote still hears of the next write by anyone else (see `tracking.rs`).
redis.call('HEXISTS', rec, F_VERSION)
return {'saved', v}
