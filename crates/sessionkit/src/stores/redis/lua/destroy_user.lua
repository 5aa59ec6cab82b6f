-- `destroy_user`: `KEYS[1]` is the index of user tag `ARGV[5]`; `ARGV[6]` the storage key to
-- keep (or `''`). Replies `{'done', {destroyed...}, {every member removed from the index...}}`.

local idx, u, except = KEYS[1], ARGV[5], ARGV[6]
local gone, seen = {}, {}
for _, m in ipairs(redis.call('ZRANGE', idx, 0, -1)) do
  if m ~= except then
    if redis.call('DEL', rec_of(u, m)) == 1 then gone[#gone + 1] = m end
    unindex(idx, m)
    drop_head(m, u)
    seen[#seen + 1] = m
  end
end
fix_index_ttl(idx)
return {'done', gone, seen}
