-- End a user's chat (Next or Leave) and optionally put them back on the wait list.
-- KEYS: 1 partner, 2 room, 3 last, 4 queue, 5 room_seq, 6 room_info, 7 history, 8 wake
-- ARGV: 1 user, 2 reason ('next' | 'left'), 3 requeue ('1' | '0'), 4 history maxlen
-- Returns {partner, room}, both '' when the user was not chatting. The partner's
-- `partner_left {reason, room}` is published by this script, with the change.
local user = ARGV[1]
local now = now_ms()
local partner = redis.call('HGET', KEYS[1], user)
local room = redis.call('HGET', KEYS[2], user)
if partner then
  redis.call('HDEL', KEYS[1], user, partner)
  redis.call('HDEL', KEYS[2], user, partner)
  redis.call('HSET', KEYS[3], user, partner, partner, user)
  if room then
    redis.call('HDEL', KEYS[5], room)
    redis.call('HDEL', KEYS[6], room)
    redis.call('XADD', KEYS[7], 'MAXLEN', '~', ARGV[4], '*', 'type', 'closed', 'room', room,
      'user', user, 'reason', ARGV[2], 'ts', tostring(now))
  end
  emit(EV.partner_left, partner, {reason = ARGV[2], room = room or ''})
end
if ARGV[3] == '1' then
  redis.call('ZADD', KEYS[4], 'NX', now, user)
  redis.call('LPUSH', KEYS[8], '1')
  redis.call('LTRIM', KEYS[8], 0, 0)
else
  redis.call('ZREM', KEYS[4], user)
end
return {partner or '', room or ''}
