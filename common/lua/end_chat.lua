-- End a user's chat (Next or Leave) in the home slot and optionally put them back on the wait
-- list. The chat's shard is closed next by the caller (close.lua, which tells the partner
-- `partner_left`); the intent to do so is left in `closing`, so a caller killed in between is
-- replaced by the matcher (common/store.py Store.finish_pending).
-- KEYS: 1 partner, 2 room, 3 last, 4 queue, 5 wake, 6 closing (home slot)
-- ARGV: 1 user, 2 reason ('next' | 'left'), 3 requeue ('1' | '0')
-- Returns {partner, room, closing intent JSON}, all '' when the user was not chatting.
local k = {partner = KEYS[1], room = KEYS[2], last = KEYS[3], queue = KEYS[4], wake = KEYS[5],
           closing = KEYS[6]}
local user, reason, requeue = ARGV[1], ARGV[2], ARGV[3] == '1'
local now = now_ms()

local partner = redis.call('HGET', k.partner, user)
local room = redis.call('HGET', k.room, user)
if partner then
  part(k, user, partner, room, reason, false, now)
end
if requeue then
  redis.call('ZADD', k.queue, 'NX', now, user)
  wake_matcher(k.wake)
else
  redis.call('ZREM', k.queue, user)
end
local intent = room and redis.call('HGET', k.closing, room) or ''
return {partner or '', room or '', intent}
