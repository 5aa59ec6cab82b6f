-- `load`: the record's fields, `{'rec', field, value, ...}`, or `{'none'}`.

local rec, idx, head, redirect = resolve()
if redirect then return {'redirect', redirect} end
local all = redis.call('HGETALL', rec)
if #all == 0 then return {'none'} end
table.insert(all, 1, 'rec')
return all
