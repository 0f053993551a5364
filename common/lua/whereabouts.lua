-- The first half of a resume, in the home slot: where is the user? A user who is not chatting
-- is told so at once (`resumed {state: waiting | idle}` to the connection); a chatting one's
-- snapshot comes from the chat's shard (snapshot.lua), which the caller runs next.
-- Returns {'chatting', room, partner} or {'waiting' | 'idle'}.
-- KEYS (all in the home slot):
local partner_key = KEYS[1]  -- hash user -> partner
local room_key = KEYS[2]     -- hash user -> room
local queue = KEYS[3]        -- zset waiting user -> since (ms)
-- ARGV:
local user = ARGV[1]
local sid = ARGV[2]     -- the connection to tell
local worker = ARGV[3]  -- the web worker holding it (the caller)

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
