-- A connection closed. When it was the user's last live one, the grace period starts: a waiting
-- user leaves the queue (nobody is matched with a closed tab) until they come back, a chatting
-- user's partner is to be told `partner_away` at once; the reaper ends it all after the grace.
-- Returns {'here' (another connection is live) | 'draining' | 'away', room}: room is the chat
-- whose partner the caller tells `partner_away` in its shard (tell.lua), else ''.
-- KEYS (all in the home slot):
local alive = KEYS[1]     -- zset user -> presence deadline (ms)
local away = KEYS[2]      -- zset away user -> presence deadline (ms)
local workers = KEYS[3]   -- zset web worker -> heartbeat deadline (ms)
local where = KEYS[4]     -- where:<user>, hash sid -> worker
local parked = KEYS[5]    -- hash away waiting user -> their place in the queue
local queue = KEYS[6]     -- zset waiting user -> since (ms)
local room_key = KEYS[7]  -- hash user -> room
-- ARGV:
local user = ARGV[1]
local sid = ARGV[2]               -- the connection that closed
local ttl_ms = tonumber(ARGV[3])  -- presence ttl (ms)
-- '1': the worker is draining (its clients are resuming elsewhere now: the partner is not
-- told, but a waiting user is parked)
local draining = ARGV[4] == '1'
local now = now_ms()

redis.call('HDEL', where, sid)
if #live_sids(where, workers, now) > 0 then
  return {'here', ''}
end
if not redis.call('ZSCORE', alive, user) then
  return {'away', ''}  -- reaped already (or never known): nothing to keep
end
redis.call('ZADD', alive, now + ttl_ms, user)
-- nobody is matched with a closed tab, drained or not: out of the queue until they return
local since = redis.call('ZSCORE', queue, user)
if since then
  redis.call('ZREM', queue, user)
  redis.call('HSET', parked, user, since)
end
if draining then
  return {'draining', ''}
end
redis.call('ZADD', away, now + ttl_ms, user)  -- out of the count until then, as in alive
return {'away', redis.call('HGET', room_key, user) or ''}
