-- Put a user on the wait list (idempotent), remember their interests, wake the matcher (when two
-- or more wait: lib/room.lua). A
-- private room they made and nobody joined yet ends: one way to meet someone at a time.
-- Returns {'chatting'} when the user already has a partner, else {'waiting', online}.
-- KEYS (all in the home slot):
local alive = KEYS[1]        -- zset user -> presence deadline (ms)
local queue = KEYS[2]        -- zset waiting user -> since (ms)
local prefs = KEYS[3]        -- hash user -> interests (JSON)
local partner_key = KEYS[4]  -- hash user -> partner
local wake = KEYS[5]         -- list the matcher blocks on
local away = KEYS[6]         -- zset away user -> presence deadline (ms)
local hosts = KEYS[7]        -- hash user -> the private room key they made
-- ARGV:
local user = ARGV[1]
local interests = ARGV[2]         -- a JSON list, or '' to keep the last ones
local ttl_ms = tonumber(ARGV[3])  -- presence ttl (ms)

if redis.call('HEXISTS', partner_key, user) == 1 then
  return {'chatting'}
end
local now = now_ms()
drop_private(hosts, user)
redis.call('ZADD', alive, now + ttl_ms, user)
if interests ~= '' then
  redis.call('HSET', prefs, user, interests)
end
redis.call('ZADD', queue, 'NX', now, user)
wake_matcher(wake, queue)
return {'waiting', online_count(alive, away, now)}
