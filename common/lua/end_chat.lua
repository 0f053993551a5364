-- End a user's chat (Next or Leave) and optionally put them back on the wait list.
-- KEYS: 1 partner, 2 room, 3 last, 4 queue, 5 room_seq, 6 room_info, 7 history, 8 wake
-- ARGV: 1 user, 2 reason ('next' | 'left'), 3 requeue ('1' | '0'), 4 history maxlen
-- Returns {partner, room}, both '' when the user was not chatting. The partner's
-- `partner_left {reason, room}` is published by this script, with the change.
local k = {partner = KEYS[1], room = KEYS[2], last = KEYS[3], queue = KEYS[4],
           room_seq = KEYS[5], room_info = KEYS[6], history = KEYS[7], wake = KEYS[8]}
local user, reason, requeue, history_maxlen = ARGV[1], ARGV[2], ARGV[3] == '1', ARGV[4]
local now = now_ms()

local partner = redis.call('HGET', k.partner, user)
local room = redis.call('HGET', k.room, user)
if partner then
  redis.call('HSET', k.last, user, partner, partner, user)
  close_room(k, user, partner, room, reason, now, history_maxlen)
end
if requeue then
  redis.call('ZADD', k.queue, 'NX', now, user)
  wake_matcher(k.wake)
else
  redis.call('ZREM', k.queue, user)
end
return {partner or '', room or ''}
