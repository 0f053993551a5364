-- Pieces of the chat's life that several scripts share.

-- Wake the matcher (it blocks on this list between passes); one pending wake-up is enough.
local function wake_matcher(wake_key)
  redis.call('LPUSH', wake_key, '1')
  redis.call('LTRIM', wake_key, 0, 0)
end

-- End the chat of `user` and `partner` in `room` (may be false): both lose their partner and
-- room, the room's counters go, the history gets `closed`, and the partner is told
-- `partner_left {reason, room}`. k: {partner, room, room_seq, room_info, history}.
local function close_room(k, user, partner, room, reason, now, history_maxlen)
  redis.call('HDEL', k.partner, user, partner)
  redis.call('HDEL', k.room, user, partner)
  if room then
    redis.call('HDEL', k.room_seq, room)
    redis.call('HDEL', k.room_info, room)
    redis.call('XADD', k.history, 'MAXLEN', '~', history_maxlen, '*', 'type', 'closed',
      'room', room, 'user', user, 'reason', reason, 'ts', tostring(now))
  end
  local left = {reason = reason, room = room or ''}
  emit(EV.partner_left, partner, left)
  return left
end
