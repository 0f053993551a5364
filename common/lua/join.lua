-- Put a user on the wait list (idempotent), remember their interests, wake the matcher.
-- KEYS: 1 alive, 2 queue, 3 prefs, 4 partner, 5 wake
-- ARGV: 1 user, 2 interests (JSON list) or '' to keep the last ones, 3 presence ttl ms
-- Returns {'chatting'} when the user already has a partner, else {'waiting', online}.
local user = ARGV[1]
if redis.call('HEXISTS', KEYS[4], user) == 1 then
  return {'chatting'}
end
local now = now_ms()
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), user)
if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[3], user, ARGV[2])
end
redis.call('ZADD', KEYS[2], 'NX', now, user)
redis.call('LPUSH', KEYS[5], '1')
redis.call('LTRIM', KEYS[5], 0, 0)
return {'waiting', redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')}
