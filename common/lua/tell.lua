-- The user's presence changed (their last connection closed, or they are back): remember it in
-- the chat (a later snapshot says `partner_away`) and tell the partner, in the chat's shard.
-- Returns 1 when told, 0 when the user is not in this open chat.
-- KEYS (in the room's shard):
local chat = KEYS[1]  -- chat:<room>
-- ARGV:
local user = ARGV[1]
local what = ARGV[2]  -- 'away' | 'back'
local room = ARGV[3]

local partner = partner_in(chat, user)
if not partner then
  return 0
end
if what == 'away' then
  redis.call('HSET', chat, 'away:' .. user, '1')
else
  redis.call('HDEL', chat, 'away:' .. user)
end
emit_in_chat(chat, partner, what == 'away' and EV.partner_away or EV.partner_back,
  {room = room})
return 1
