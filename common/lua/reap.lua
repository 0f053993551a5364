-- End the chats and waits of users whose presence deadline passed (gone longer than the grace:
-- closed the page, lost the network, or their web worker died without a word).
-- KEYS: 1 alive, 2 queue, 3 prefs, 4 partner, 5 room, 6 last, 7 room_seq, 8 room_info,
--       9 away, 10 history, 11 parked
-- ARGV: 1 max users per call, 2 history maxlen
-- Returns the number of users reaped. `partner_left` is published by this script.
local k = {alive = KEYS[1], queue = KEYS[2], prefs = KEYS[3], partner = KEYS[4], room = KEYS[5],
           last = KEYS[6], room_seq = KEYS[7], room_info = KEYS[8], away = KEYS[9],
           history = KEYS[10], parked = KEYS[11]}
local limit, history_maxlen = tonumber(ARGV[1]), ARGV[2]
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
    redis.call('HSET', k.last, partner, u)
    local left = close_room(k, u, partner, redis.call('HGET', k.room, u), REASON_DISCONNECTED, now,
                            history_maxlen)
    emit(EV.partner_left, u, left)  -- the user too, in case they come back just now
  end
end
return #gone
