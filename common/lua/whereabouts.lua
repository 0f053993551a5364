-- The first half of a resume, in the home slot: where is the user? A user who is not chatting
-- is told so at once (`resumed {state: waiting | idle}` to the connection); a chatting one's
-- snapshot comes from the chat's shard (snapshot.lua), which the caller runs next.
-- KEYS: 1 partner, 2 room, 3 queue (home slot)
-- ARGV: 1 user, 2 the connection's sid, 3 the worker holding it (the caller)
-- Returns {'chatting', room, partner} or {'waiting' | 'idle'}.
local partner_key, room_key, queue = KEYS[1], KEYS[2], KEYS[3]
local user, sid, worker = ARGV[1], ARGV[2], ARGV[3]

local partner = redis.call('HGET', partner_key, user)
local room = redis.call('HGET', room_key, user)
if partner and room then
  return {'chatting', room, partner}
end
local state = redis.call('ZSCORE', queue, user) and 'waiting' or 'idle'
-- `at`: when, by the home slot's clock (the one `matched {at}` is stamped with)
emit_sid_json(tag_of(partner_key), worker, EV.resumed, sid, '{"state":"' .. state .. '","at":'
  .. now_ms() .. '}')
return {state}
