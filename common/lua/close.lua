-- Close a chat in its shard from the intent end_chat.lua or reap.lua left (idempotent): mark it
-- closed (no more messages), `closed` in the history, `partner_left {reason, room}` to the
-- partner (and to the user too when the intent says `both`); the chat's keys then live only as
-- long as a late resend may need them.
-- Returns 1 when this call closed it, 0 when it was closed (or never opened) already.
-- KEYS (all in the room's shard):
local chat = KEYS[1]     -- chat:<room>
local history = KEYS[2]  -- the shard's history stream
local sent = KEYS[3]     -- sent:<room>, the resume buffer
-- ARGV:
local room = ARGV[1]
local intent = cjson.decode(ARGV[2])  -- {user, reason, both, at}, from end_chat.lua or reap.lua
local history_maxlen = ARGV[3]        -- each history stream's cap, about
local kept = tonumber(ARGV[4])        -- seconds the closed chat's keys are kept

if redis.call('EXISTS', chat) == 0 or redis.call('HEXISTS', chat, 'closed') == 1 then
  return 0
end
local user = intent.user
local partner = other_of(chat, user)
redis.call('HSET', chat, 'closed', tostring(intent.at))
append_history(history, history_maxlen, 'type', 'closed', 'room', room, 'user', user,
  'reason', intent.reason, 'ts', tostring(intent.at))
local left = {reason = intent.reason, room = room}
if partner then
  emit_in_chat(chat, partner, EV.partner_left, left)
end
if intent.both then
  emit_in_chat(chat, user, EV.partner_left, left)
end
redis.call('EXPIRE', chat, kept)
redis.call('EXPIRE', sent, kept)
return 1
