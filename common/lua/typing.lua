-- Tell the partner that the user is (or stopped) typing, in the chat's shard. The event carries
-- the room, so a partner already in another chat ignores a late one.
-- KEYS: 1 chat:<room>
-- ARGV: 1 user, 2 '1' typing / '0' stopped, 3 room
-- Returns 1 when sent, 0 when the user is not in this open chat.
local chat = KEYS[1]
local user, typing, room = ARGV[1], ARGV[2] == '1', ARGV[3]

local partner = other_of(chat, user)
if not partner or redis.call('HEXISTS', chat, 'closed') == 1 then
  return 0
end
emit_route(tag_of(chat), redis.call('HGET', chat, 'route:' .. partner), EV.typing, partner,
  {typing = typing, room = room})
return 1
