-- Tell the partner that the user is (or stopped) typing: partner lookup and emit in one round
-- trip. The event carries the room, so a partner already in another chat ignores a late one.
-- KEYS: 1 partner, 2 room
-- ARGV: 1 user, 2 '1' typing / '0' stopped
-- Returns 1 when sent, 0 when the user is not chatting.
local partner = redis.call('HGET', KEYS[1], ARGV[1])
local room = redis.call('HGET', KEYS[2], ARGV[1])
if not partner or not room then
  return 0
end
emit(EV.typing, partner, {typing = ARGV[2] == '1', room = room})
return 1
