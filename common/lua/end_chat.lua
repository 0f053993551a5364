-- End a user's chat (Next or Leave) in the home slot and optionally put them back on the wait
-- list; a private room they made and nobody joined yet ends too. The chat's shard is closed next by the caller (close.lua, which tells the partner
-- `partner_left`); the intent to do so is left in `closing`, so a caller killed in between is
-- replaced by the matcher (common/store.py Store.finish_pending).
-- Returns {partner, room, closing intent JSON}, all '' when the user was not chatting.
-- KEYS (all in the home slot):
local partner_key = KEYS[1]  -- hash user -> partner
local room_key = KEYS[2]     -- hash user -> room
local last_key = KEYS[3]     -- hash user -> last partner
local queue = KEYS[4]        -- zset waiting user -> since (ms)
local wake = KEYS[5]         -- list the matcher blocks on
local closing = KEYS[6]      -- hash room -> intent to close it in its shard
local hosts = KEYS[7]        -- hash user -> the private room key they made
-- ARGV:
local user = ARGV[1]
local reason = ARGV[2]            -- 'next' | 'left'
local requeue = ARGV[3] == '1'    -- back on the wait list
local now = now_ms()

local partner = redis.call('HGET', partner_key, user)
local room = redis.call('HGET', room_key, user)
drop_private(hosts, user)
if partner then
  part({partner = partner_key, room = room_key, last = last_key, closing = closing,
    hosts = hosts}, user, partner, room, reason, false, now)
end
if requeue then
  redis.call('ZADD', queue, 'NX', now, user)
  wake_matcher(wake, queue)
else
  redis.call('ZREM', queue, user)
end
local intent = room and redis.call('HGET', closing, room) or ''
return {partner or '', room or '', intent}
