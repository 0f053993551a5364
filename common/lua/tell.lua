-- The user's presence changed (their last connection closed, or they are back): remember it in
-- the chat (a later snapshot says `partner_away`) and tell the partner, in the chat's shard.
-- KEYS: 1 chat:<room>
-- ARGV: 1 user, 2 'away' | 'back', 3 room
-- Returns 1 when told, 0 when the user is not in this open chat.
local chat = KEYS[1]
local user, what, room = ARGV[1], ARGV[2], ARGV[3]

local partner = other_of(chat, user)
if not partner or redis.call('HEXISTS', chat, 'closed') == 1 then
  return 0
end
if what == 'away' then
  redis.call('HSET', chat, 'away:' .. user, '1')
else
  redis.call('HDEL', chat, 'away:' .. user)
end
emit_route(tag_of(chat), redis.call('HGET', chat, 'route:' .. partner),
  what == 'away' and EV.partner_away or EV.partner_back, partner, {room = room})
return 1
