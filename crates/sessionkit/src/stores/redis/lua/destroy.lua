-- `destroy`, and the per-record step of `cleanup_expired` when `ARGV[5]` is `sweep` (then a
-- live record is left alone: `{'live'}`). Replies `{'done', existed}` (1 or 0).

local rec, idx, head, redirect = resolve()
if redirect then return {'redirect', redirect} end
if ARGV[5] == 'sweep' and live(rec) then return {'live'} end
local existed = redis.call('DEL', rec)
if idx then
  unindex(idx, skey)
  fix_index_ttl(idx)
end
if head and head ~= rec then redis.call('DEL', head) end
return {'done', existed}
