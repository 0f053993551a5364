-- Close a chat in its shard from the intent end_chat.lua or reap.lua left (idempotent): mark it
-- closed (no more messages), `closed` in the history, `partner_left {reason, room}` to the
-- partner (and to the user too when the intent says `both`); the chat's keys then live only as
-- long as a late resend may need them.
-- Returns 1 when this call closed it, 0 when it was closed already or is not open yet.
-- KEYS (all in the room's shard):
local chat = KEYS[1]     -- chat:<room>
local history = KEYS[2]  -- the shard's history stream
local sent = KEYS[3]     -- sent:<room>, the resume buffer
-- ARGV:
local room = ARGV[1]
local intent = cjson.decode(ARGV[2])  -- {user, reason, both, at}, from end_chat.lua or reap.lua
local history_maxlen = ARGV[3]        -- each history stream's cap, about
local kept = tonumber(ARGV[4])        -- seconds the closed chat's keys are kept

if redis.call('EXISTS', chat) == 0 then
  -- Ended before it was opened: a leave or Next between the home slot's pairing and open.lua
  -- (the matcher's or a private join's second half). The end is left here for open.lua, which
  -- opens the chat and closes it at once, so that both users still hear `matched` and then
  -- `partner_left`, in that order; a room never opened expires with it.
  redis.call('HSET', chat, 'closed', tostring(intent.at), 'ended', ARGV[2])
  redis.call('EXPIRE', chat, kept)
  return 0
end
if redis.call('HEXISTS', chat, 'closed') == 1 then
  return 0
end
close_chat(chat, history, history_maxlen, room, intent)
redis.call('EXPIRE', chat, kept)
redis.call('EXPIRE', sent, kept)
return 1
