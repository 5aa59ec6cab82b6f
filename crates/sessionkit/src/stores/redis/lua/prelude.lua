-- The prelude of every script but `save_head.lua` and `apply.lua`: the calling convention's
-- locals and the helpers the operations share.
--
-- Calling convention, common to all scripts:
-- - ARGV[1] is the mode: `f` (standalone: KEYS[1] is a head and pointers are followed inside
--   the script), `h` (Cluster: KEYS[1] is a head; a pointer is answered with
--   {'redirect', tag} and the client calls again in mode `r`), `r` (Cluster, second step:
--   KEYS[1] is a user record, KEYS[2] that user's index).
-- - ARGV[2] is the key prefix, ARGV[3] the storage key (or ''), ARGV[4] now in ms.
-- - Replies are arrays whose first element names the outcome.
--
-- Numbers: timestamps are compared as Lua numbers (exact below 2^53 ms, far beyond any real
-- date) and written back only as the strings the client sent, except expiries handed to
-- PEXPIREAT/ZADD, which are formatted as integers and capped (year 128 000).

local mode, prefix, skey, nowarg = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local now = tonumber(nowarg)

local function at(x)
  if x > CAP then x = CAP end
  return string.format('%d', x)
end

-- Key of user tag u's records (append the storage key) and of its index.
local function ukeys(u)
  local base = prefix .. K_TAG_OPEN .. u .. K_TAG_CLOSE
  return base .. K_SESSION, base .. K_INDEX
end

-- A record is live while now < min(idle, absolute); an unreadable one is not live.
local function live(rec)
  local f = redis.call('HMGET', rec, F_IDLE, F_ABSOLUTE)
  local i, a = tonumber(f[1]), tonumber(f[2])
  return i ~= nil and a ~= nil and now < math.min(i, a)
end

-- The two orders kept next to index idx (`<p>{u:<user>}:i`): by creation (`:c`) and by last
-- sight (`:l`), same members, for the evictions of `evict_oldest` and `evict_idlest`.
local function orders(idx)
  local base = string.sub(idx, 1, -1 - #K_INDEX)
  return base .. K_BY_CREATION, base .. K_BY_SIGHT
end

-- The index (and its orders) live as long as its longest-lived entry.
local function fix_index_ttl(idx)
  local top = redis.call('ZRANGE', idx, -1, -1, 'WITHSCORES')
  if top[2] then
    local t = at(tonumber(top[2]))
    local c, l = orders(idx)
    redis.call('PEXPIREAT', idx, t)
    redis.call('PEXPIREAT', c, t)
    redis.call('PEXPIREAT', l, t)
  end
end

-- Removes member m from index idx and its orders.
local function unindex(idx, m)
  local c, l = orders(idx)
  redis.call('ZREM', idx, m)
  redis.call('ZREM', c, m)
  redis.call('ZREM', l, m)
end

-- Deletes the head of storage key m if it still belongs to user tag u: a pointer to u, or
-- (standalone) a record of u. Standalone only: in Cluster the head lives in another slot and
-- the client deletes it afterwards.
local function drop_head(m, u)
  if mode ~= 'f' then return end
  local h = prefix .. K_SESSION .. m
  local f = redis.call('HMGET', h, F_POINTER, F_USER)
  if f[1] == u or f[2] == u then redis.call('DEL', h) end
end

-- The key of the record of member m of user tag u: on a standalone server the head when it is
-- a record of u, else (Cluster, or a standalone pointer from before the record moved to the
-- head) the record next to the index.
local function rec_of(u, m)
  local rp = ukeys(u)
  if mode ~= 'f' then return rp .. m end
  local h = prefix .. K_SESSION .. m
  if redis.call('HGET', h, F_USER) == u then return h end
  return rp .. m
end

-- Removes member m of user tag u: record, index entry and (standalone) head.
local function drop_member(idx, u, m)
  local rp = ukeys(u)
  redis.call('DEL', rp .. m)
  unindex(idx, m)
  drop_head(m, u)
end

-- Drops at most k of the index's expired entries (lowest scores first) with their records.
-- Returns whether expired entries remain. Bounded work per call: O(k log n).
local function prune_some(idx, u, k)
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', idx, '-inf', nowarg, 'LIMIT', 0, k)) do
    drop_member(idx, u, m)
  end
  return redis.call('ZCOUNT', idx, '-inf', nowarg) > 0
end

-- Prunes the whole index of user tag u at now (list_user only: O(n)): entries whose score (the record's nearest expiry) has
-- passed, and entries whose record is gone, expired or unreadable, go with their records.
-- Returns the live members as {member, HMGET(record, 'i', 'a', ...)} and the dropped members.
local function prune(idx, u, ...)
  local dropped = {}
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', idx, '-inf', nowarg)) do
    drop_member(idx, u, m)
    dropped[#dropped + 1] = m
  end
  local alive = {}
  for _, m in ipairs(redis.call('ZRANGE', idx, 0, -1)) do
    local f = redis.call('HMGET', rec_of(u, m), F_IDLE, F_ABSOLUTE, ...)
    local i, a = tonumber(f[1]), tonumber(f[2])
    if i and a and now < math.min(i, a) then
      alive[#alive + 1] = {m, f}
    else
      drop_member(idx, u, m)
      dropped[#dropped + 1] = m
    end
  end
  return alive, dropped
end

-- Where the record of KEYS[1] lives: record key, index key (false for anonymous records), head
-- key (false in mode r), and the user tag to redirect to when the head is a pointer that this
-- mode may not follow.
local function resolve()
  if mode == 'r' then return KEYS[1], KEYS[2], false, nil end
  local head = KEYS[1]
  local h = redis.call('HMGET', head, F_POINTER, F_USER)
  local u = h[1]
  if not u then
    if h[2] and mode == 'f' then
      local _, idx = ukeys(h[2])
      return head, idx, head, nil
    end
    return head, false, head, nil
  end
  if mode ~= 'f' then return nil, nil, nil, u end
  local rp, idx = ukeys(u)
  return rp .. skey, idx, head, nil
end
