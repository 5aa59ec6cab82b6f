-- `save_delta` / `touch`, in any mode: the record found from the head (following a pointer,
-- or redirecting on a Cluster), then `apply.lua`. `ARGV[5]` = `1` to touch, `ARGV[6]` last
-- seen, `ARGV[7]` idle expiry, `ARGV[8]` = n, `ARGV[9]` the size cap (`''` for none), then
-- n (`d:<name>`, value) pairs, then the `d:<name>` fields to remove: the changes already
-- reduced by the client to the last per name. Only a live record is written; touch never
-- shortens; the version is bumped; TTL and index score follow the nearest expiry.

local rec, idx, _, redirect = resolve()
if redirect then return {'redirect', redirect} end
local f = redis.call('HMGET', rec, F_IDLE, F_ABSOLUTE, F_SEEN, F_VERSION, F_SIZE)
local i, a = tonumber(f[1]), tonumber(f[2])
if not i or not a or now >= math.min(i, a) then return {'missing'} end
local seen, ver, size = f[3], f[4], f[5]
