-- End the chats and waits of users whose presence deadline passed (gone longer than the grace:
-- closed the page, lost the network, or their web worker died without a word), in the home
-- slot. Each ended chat leaves an intent in `closing` that the matcher carries out next in the
-- chat's shard (close.lua tells both users `partner_left`: the partner, and the reaped user in
-- case they come back just now).
-- KEYS: 1 alive, 2 queue, 3 prefs, 4 partner, 5 room, 6 last, 7 away, 8 parked, 9 closing
-- ARGV: 1 max users per call
-- Returns the number of users reaped.
local k = {alive = KEYS[1], queue = KEYS[2], prefs = KEYS[3], partner = KEYS[4], room = KEYS[5],
           last = KEYS[6], away = KEYS[7], parked = KEYS[8], closing = KEYS[9]}
local limit = tonumber(ARGV[1])
local now = now_ms()

local gone = redis.call('ZRANGEBYSCORE', k.alive, '-inf', now, 'LIMIT', 0, limit)
for _, u in ipairs(gone) do
  redis.call('ZREM', k.alive, u)
  redis.call('ZREM', k.queue, u)
  redis.call('ZREM', k.away, u)
  for _, key in ipairs({k.prefs, k.last, k.parked}) do
    redis.call('HDEL', key, u)
  end
  local partner = redis.call('HGET', k.partner, u)
  if partner then
    part(k, u, partner, redis.call('HGET', k.room, u), REASON_DISCONNECTED, true, now)
    redis.call('HDEL', k.last, u)  -- gone: nobody to keep apart from
  end
end
return #gone
