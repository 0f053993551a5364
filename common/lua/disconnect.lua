-- A connection closed. When it was the user's last live one, the grace period starts: a waiting
-- user leaves the queue (nobody is matched with a closed tab) until they come back, a chatting
-- user's partner is to be told `partner_away` at once; the reaper ends it all after the grace.
-- KEYS: 1 alive, 2 away, 3 workers, 4 where:<user>, 5 parked, 6 queue, 7 room (home slot)
-- ARGV: 1 user, 2 sid, 3 presence ttl ms, 4 '1' when the worker is draining (its clients are
--       resuming elsewhere now: the partner is not told, but a waiting user is parked)
-- Returns {'here' (another connection is live) | 'draining' | 'away', room}: room is the chat
-- whose partner the caller tells `partner_away` in its shard (tell.lua), else ''.
local alive, away, workers, where = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local parked, queue, room_key = KEYS[5], KEYS[6], KEYS[7]
local user, sid, ttl_ms, draining = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4] == '1'
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
