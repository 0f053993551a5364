-- A connection of a known user arrives: presence, takeover of older tabs, and "back".
-- KEYS: 1 alive, 2 away, 3 workers, 4 where:<user>, 5 parked, 6 queue, 7 partner, 8 room,
--       9 wake (all in the home slot)
-- ARGV: 1 user, 2 sid, 3 worker id, 4 presence ttl ms, 5 where ttl s, 6 `replaced` error JSON
-- Returns {online, replaced connections, room}: room is the user's chat when they were away
-- and are back (the caller tells the partner `partner_back` in the chat's shard, tell.lua).
-- One live tab per user: the user's other live connections are told `error {code: replaced}`
-- and closed, so a copied token takes the chat over visibly instead of reading it in silence.
-- A waiting user who was away returns to the queue with their first waiting time.
local alive, away, workers, where = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local parked, queue, partner_key, room_key, wake = KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local user, sid, worker = ARGV[1], ARGV[2], ARGV[3]
local ttl_ms, where_ttl, replaced_json = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local tag = tag_of(alive)
local now = now_ms()
redis.call('ZADD', workers, now + ttl_ms, worker)  -- before its first heartbeat, too

local others, owner = live_sids(where, workers, now)
for _, old in ipairs(others) do
  if old ~= sid then
    emit_sid_json(tag, owner[old], EV.error, old, replaced_json)
    disconnect_sid(tag, owner[old], old)
    redis.call('HDEL', where, old)
  end
end
redis.call('HSET', where, sid, worker)
redis.call('EXPIRE', where, where_ttl)
redis.call('ZADD', alive, now + ttl_ms, user)

local was_away = redis.call('ZREM', away, user) == 1
local since = redis.call('HGET', parked, user)
if since then  -- parked when their last connection closed (away, or drained)
  redis.call('HDEL', parked, user)
  if redis.call('HEXISTS', partner_key, user) == 0 then
    redis.call('ZADD', queue, 'NX', since, user)
    wake_matcher(wake)
  end
end
local back_in = was_away and redis.call('HGET', room_key, user) or ''
return {online_count(alive, away, now), #others, back_in}
