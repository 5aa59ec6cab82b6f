-- `create`. `ARGV[5]` kind: `anon` (record at the head), `ptr` (Cluster step 1: claim the head
-- as a pointer to user tag `ARGV[6]`), `user` (standalone: head + record + index in one step;
-- Cluster step 2 in mode `r`: record + index). `ARGV[7]` max sessions (`''` = unlimited),
-- `ARGV[8]` policy (`deny` | `oldest` | `idlest`), `ARGV[9]` nearest expiry, `ARGV[10]`
-- absolute expiry, then field/value pairs. Replies `{'exists', tag}` (`tag`: in mode `h`,
-- the user tag of a pointer in the way, else `''`), `{'limit'}` or
-- `{'created', {evicted...}}`.

local kind, u = ARGV[5], ARGV[6]

-- Whether the head may be written: absent, or holding an expired or unreadable session. A
-- pointer in Cluster mode counts as taken (its record is in another slot) and is returned so
-- that the client can check that record and clear the head if it is dead.
local function head_free(head)
  local h = redis.call('HMGET', head, F_POINTER, F_IDLE, F_ABSOLUTE, F_USER)
  if h[1] then
    if mode ~= 'f' then return false, h[1] end
    local rp, pidx = ukeys(h[1])
    if live(rp .. skey) then return false end
    redis.call('DEL', rp .. skey)
    unindex(pidx, skey)
    redis.call('DEL', head)
    return true
  end
  if redis.call('EXISTS', head) == 0 then return true end
  local i, a = tonumber(h[2]), tonumber(h[3])
  if i and a and now < math.min(i, a) then return false end
  redis.call('DEL', head)
  if h[4] then
    local _, oidx = ukeys(h[4])
    unindex(oidx, skey)
  end
  return true
end

local function write(key)
  redis.call('DEL', key)
  local batch = {}
  for n = 11, #ARGV do
    batch[#batch + 1] = ARGV[n]
    if #batch == CHUNK then
      redis.call('HSET', key, unpack(batch))
      batch = {}
    end
  end
  if #batch > 0 then redis.call('HSET', key, unpack(batch)) end
end

if kind ~= 'user' then
  local head = KEYS[1]
  local free, ptr = head_free(head)
  if not free then return {'exists', ptr or ''} end
  if kind == 'ptr' then
    redis.call('HSET', head, F_POINTER, u)
    redis.call('PEXPIREAT', head, ARGV[10])
  else
    write(head)
    redis.call('PEXPIREAT', head, ARGV[9])
  end
  return {'created', {}}
end

local head, rec, idx
if mode == 'r' then
  rec, idx = KEYS[1], KEYS[2]
else
  head, rec, idx = KEYS[1], KEYS[2], KEYS[3]
end
if head and not head_free(head) then return {'exists'} end
if live(rec) then return {'exists'} end
-- Standalone: the record lives at its head, marked with its user tag.
if head then
  redis.call('DEL', rec)
  rec = head
end

-- Never the whole index (see the doc of index.rs): a bounded batch of
-- expired entries goes, live entries are counted by score, victims are the first members of
-- the order the policy names.
local cidx, lidx = orders(idx)
local more = prune_some(idx, u, PRUNE_BATCH)
local victims = {}
local max = tonumber(ARGV[7])
if max then
  local n = redis.call('ZCOUNT', idx, '(' .. nowarg, '+inf')
  if n >= max then
    if ARGV[8] == 'deny' then return {'limit'} end
    -- The orders hold expired members too: clear them first, a batch per call.
    if more and prune_some(idx, u, PRUNE_CATCH_UP) then return {'again'} end
    -- Entries written before the orders existed: rebuild them once (O(n), once per user).
    local total = redis.call('ZCARD', idx)
    if redis.call('ZCARD', cidx) ~= total or redis.call('ZCARD', lidx) ~= total then
      redis.call('DEL', cidx, lidx)
      for _, m in ipairs(redis.call('ZRANGE', idx, 0, -1)) do
        local f = redis.call('HMGET', rec_of(u, m), F_CREATED, F_SEEN)
        if f[1] and f[2] then
          redis.call('ZADD', cidx, f[1], m)
          redis.call('ZADD', lidx, f[2], m)
        else
          drop_member(idx, u, m)
        end
      end
      n = redis.call('ZCOUNT', idx, '(' .. nowarg, '+inf')
    end
    -- 'oldest' by created_at, 'idlest' by last_seen_at; ties by key (sorted-set order).
    local order = cidx
    if ARGV[8] == 'idlest' then order = lidx end
    -- At most MAX_EVICTIONS per login: a limit lowered far below the count is reached over
    -- several.
    while n >= max and #victims < MAX_EVICTIONS do
      local first = redis.call('ZRANGE', order, 0, 0)[1]
      if not first then break end
      victims[#victims + 1] = first
      drop_member(idx, u, first)
      n = n - 1
    end
  end
end

write(rec)
if head then redis.call('HSET', rec, F_USER, u) end
redis.call('PEXPIREAT', rec, ARGV[9])
redis.call('ZADD', idx, ARGV[9], skey)
-- The record's own fields: created (c) and last seen (s), among the first pairs.
for n = 11, 22, 2 do
  if ARGV[n] == F_CREATED then redis.call('ZADD', cidx, ARGV[n + 1], skey) end
  if ARGV[n] == F_SEEN then redis.call('ZADD', lidx, ARGV[n + 1], skey) end
end
fix_index_ttl(idx)
return {'created', victims}
