-- `save.lua` on a standalone server when the head is the record, the common case, with one
-- read and without the prelude (whose closures cost more server time than the writes). A
-- head that is a pointer (a layout of earlier versions) is answered `{'pointer'}`, and the
-- client runs `save.lua`.

local rec = KEYS[1]
local h = redis.call('HMGET', rec, F_POINTER, F_USER, F_IDLE, F_ABSOLUTE, F_SEEN, F_VERSION, F_SIZE)
if h[1] then return {'pointer'} end
local idx = false
if h[2] then idx = ARGV[2] .. K_TAG_OPEN .. h[2] .. K_TAG_CLOSE .. K_INDEX end
local i, a = tonumber(h[3]), tonumber(h[4])
if not i or not a or tonumber(ARGV[4]) >= math.min(i, a) then return {'missing'} end
local seen, ver, size = h[5], h[6], h[7]
