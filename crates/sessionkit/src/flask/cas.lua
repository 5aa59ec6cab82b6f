-- Replaces a Flask-Session record only if it still holds what the caller read: the
-- compare-and-set under which Rust writers apply per-key changes without losing each other's.
-- KEYS[1]: the record (<prefix><sid>). ARGV[1]: the bytes read; ARGV[2]: the new bytes;
-- ARGV[3]: the new TTL in milliseconds, or 0 to keep the record's TTL.
-- Returns 1 written, 0 changed meanwhile (read again), -1 gone (destroyed or expired).
local cur = redis.call('GET', KEYS[1])
if not cur then
  return -1
end
if cur ~= ARGV[1] then
  return 0
end
if ARGV[3] == '0' then
  redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
else
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
return 1
