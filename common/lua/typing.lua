-- Tell the partner that the user is (or stopped) typing, in the chat's shard. The event carries
-- the room, so a partner already in another chat ignores a late one.
-- Returns 1 when sent, 0 when the user is not in this open chat.
-- KEYS (in the room's shard):
local chat = KEYS[1]  -- chat:<room>
-- ARGV:
local user = ARGV[1]
local typing = ARGV[2] == '1'  -- '1' typing, '0' stopped
local room = ARGV[3]

local partner = partner_in(chat, user)
if not partner then
  return 0
end
emit_in_chat(chat, partner, EV.typing, {typing = typing, room = room})
return 1
