-- `list_user`: `KEYS[1]` is the index of user tag `ARGV[5]`. Prunes, then replies
-- `{'list', {{member, i, a, v, c, s, m}...}, {dropped...}}`.

local idx, u = KEYS[1], ARGV[5]
local alive, dropped = prune(idx, u, F_VERSION, F_CREATED, F_SEEN, F_META)
local out = {}
for _, e in ipairs(alive) do
  local f = e[2]
  out[#out + 1] = {e[1], f[1], f[2], f[3], f[4], f[5], f[6]}
end
fix_index_ttl(idx)
return {'list', out, dropped}
