-- Put a user on the wait list (idempotent), remember their interests, wake the matcher.
-- KEYS: 1 alive, 2 queue, 3 prefs, 4 partner, 5 wake, 6 away
-- ARGV: 1 user, 2 interests (JSON list) or '' to keep the last ones, 3 presence ttl ms
-- Returns {'chatting'} when the user already has a partner, else {'waiting', online}.
local alive, queue, prefs, partner_key, wake, away = KEYS[1], KEYS[2], KEYS[3], KEYS[4],
  KEYS[5], KEYS[6]
local user, interests, ttl_ms = ARGV[1], ARGV[2], tonumber(ARGV[3])

if redis.call('HEXISTS', partner_key, user) == 1 then
  return {'chatting'}
end
local now = now_ms()
redis.call('ZADD', alive, now + ttl_ms, user)
if interests ~= '' then
  redis.call('HSET', prefs, user, interests)
end
redis.call('ZADD', queue, 'NX', now, user)
wake_matcher(wake)
return {'waiting', online_count(alive, away, now)}
