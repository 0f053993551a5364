-- End the chats and waits of users whose presence deadline passed (gone longer than the grace:
-- closed the page, lost the network, or their web worker died without a word).
-- KEYS: 1 alive, 2 queue, 3 prefs, 4 partner, 5 room, 6 last, 7 room_seq, 8 room_info,
--       9 away, 10 history, 11 parked
-- ARGV: 1 max users per call, 2 history maxlen
-- Returns the number of users reaped. `partner_left` is published by this script.
local now = now_ms()
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, u in ipairs(gone) do
  redis.call('ZREM', KEYS[1], u)
  redis.call('ZREM', KEYS[2], u)
  redis.call('HDEL', KEYS[3], u)
  redis.call('HDEL', KEYS[6], u)
  redis.call('HDEL', KEYS[9], u)
  redis.call('HDEL', KEYS[11], u)
  local partner = redis.call('HGET', KEYS[4], u)
  local room = redis.call('HGET', KEYS[5], u)
  if partner then
    redis.call('HDEL', KEYS[4], u, partner)
    redis.call('HDEL', KEYS[5], u, partner)
    redis.call('HSET', KEYS[6], partner, u)
    if room then
      redis.call('HDEL', KEYS[7], room)
      redis.call('HDEL', KEYS[8], room)
      redis.call('XADD', KEYS[10], 'MAXLEN', '~', ARGV[2], '*', 'type', 'closed', 'room', room,
        'user', u, 'reason', 'disconnected', 'ts', tostring(now))
    end
    -- the user too, in case they come back just now: their chat is over
    local left = {reason = 'disconnected', room = room or ''}
    emit(EV.partner_left, partner, left)
    emit(EV.partner_left, u, left)
  end
end
return #gone
