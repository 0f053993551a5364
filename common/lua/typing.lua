-- Tell the partner that the user is (or stopped) typing: partner lookup and emit in one round
-- trip. The event carries the room, so a partner already in another chat ignores a late one.
-- KEYS: 1 partner, 2 room
-- ARGV: 1 user, 2 '1' typing / '0' stopped
-- Returns 1 when sent, 0 when the user is not chatting.
local partner_key, room_key = KEYS[1], KEYS[2]
local user, typing = ARGV[1], ARGV[2] == '1'

local partner = redis.call('HGET', partner_key, user)
local room = redis.call('HGET', room_key, user)
if not partner or not room then
  return 0
end
emit(EV.typing, partner, {typing = typing, room = room})
return 1
