-- Make a private room: a key that the user's friend joins with (private_join.lua). The user
-- (the host) leaves the random wait list and waits for that friend only; a key they made
-- before stops working. The key's record lives `ttl` seconds unless a friend joins first.
-- Returns {'ok', expires (ms)}, {'taken'} when this key exists already (the caller draws
-- another) or {'chatting'} when the user has a partner.
-- KEYS (all in the home slot):
local record = KEYS[1]       -- private:<KEY>, hash {host, room, guest}
local hosts = KEYS[2]        -- hash user -> the private room key they made
local partner_key = KEYS[3]  -- hash user -> partner
local queue = KEYS[4]        -- zset waiting user -> since (ms)
local alive = KEYS[5]        -- zset user -> presence deadline (ms)
-- ARGV:
local user = ARGV[1]
local key = ARGV[2]                -- the new KEY (common/limits.py PRIVATE_KEY_*)
local ttl = tonumber(ARGV[3])      -- seconds an unused key lives (PRIVATE_ROOM_TTL)
local ttl_ms = tonumber(ARGV[4])   -- presence ttl (ms)

if redis.call('HEXISTS', partner_key, user) == 1 then
  return {'chatting'}
end
if redis.call('EXISTS', record) == 1 then
  return {'taken'}
end
local now = now_ms()
drop_private(hosts, user)
redis.call('ZREM', queue, user)
redis.call('ZADD', alive, now + ttl_ms, user)
redis.call('HSET', record, 'host', user, 'created', tostring(now))
redis.call('EXPIRE', record, ttl)
redis.call('HSET', hosts, user, key)
return {'ok', now + ttl * 1000}
