-- A connection of a known user arrives: presence, takeover of older tabs, and "back".
-- Returns {online, replaced connections, room}: room is the user's chat when they were away
-- and are back (the caller tells the partner `partner_back` in the chat's shard, tell.lua).
-- One live tab per user: the user's other live connections are told `error {code: replaced}`
-- and closed, so a copied token takes the chat over visibly instead of reading it in silence.
-- A waiting user who was away returns to the queue with their first waiting time.
-- KEYS (all in the home slot):
local alive = KEYS[1]        -- zset user -> presence deadline (ms)
local away = KEYS[2]         -- zset away user -> presence deadline (ms)
local workers = KEYS[3]      -- zset web worker -> heartbeat deadline (ms)
local where = KEYS[4]        -- where:<user>, hash sid -> worker
local parked = KEYS[5]       -- hash away waiting user -> their place in the queue
local queue = KEYS[6]        -- zset waiting user -> since (ms)
local partner_key = KEYS[7]  -- hash user -> partner
local room_key = KEYS[8]     -- hash user -> room
local wake = KEYS[9]         -- list the matcher blocks on
-- ARGV:
local user = ARGV[1]
local sid = ARGV[2]                  -- the new connection
local worker = ARGV[3]               -- the web worker holding it
local ttl_ms = tonumber(ARGV[4])     -- presence ttl (ms)
local where_ttl = tonumber(ARGV[5])  -- seconds `where` lives
local replaced_json = ARGV[6]        -- the `error {code: replaced}` payload, JSON
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
    wake_matcher(wake, queue)
  end
end
local back_in = was_away and redis.call('HGET', room_key, user) or ''
return {online_count(alive, away, now), #others, back_in}
