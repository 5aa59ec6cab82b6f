-- Takes a Flask-Session record: returns {value, pttl} and deletes the key, in one step, so of
-- any number of requests presenting the same Flask cookie exactly one imports it.
-- KEYS[1]: the Flask-Session key (<prefix><sid>).
local v = redis.call('GET', KEYS[1])
if not v then
  return false
end
local ttl = redis.call('PTTL', KEYS[1])
redis.call('DEL', KEYS[1])
return {v, ttl}
