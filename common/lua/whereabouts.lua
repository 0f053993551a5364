-- The first half of a resume, in the home slot: where is the user? A user who is not chatting
-- is told so at once (`resumed {state: waiting | idle}` to the connection); a chatting one's
-- snapshot comes from the chat's shard (snapshot.lua), which the caller runs next. A user
-- waiting for a friend in the private room they made is `waiting` with `private {key, expires}`.
-- Returns {'chatting', room, partner} or {'waiting' | 'idle'}.
-- KEYS (all in the home slot):
local partner_key = KEYS[1]  -- hash user -> partner
local room_key = KEYS[2]     -- hash user -> room
local queue = KEYS[3]        -- zset waiting user -> since (ms)
local hosts = KEYS[4]        -- hash user -> the private room key they made
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
local now = now_ms()
local private = ''
local key = redis.call('HGET', hosts, user)
if key and redis.call('HGET', PRIVATE_PREFIX .. key, 'host') == user then
  state = 'waiting'
  private = ',"private":{"key":' .. cjson.encode(key) .. ',"expires":'
    .. string.format('%d', now + redis.call('PTTL', PRIVATE_PREFIX .. key)) .. '}'
end
-- `at`: when, by the home slot's clock (the one `matched {at}` is stamped with)
emit_sid_json(tag_of(partner_key), worker, EV.resumed, sid, '{"state":"' .. state .. '","at":'
  .. now .. private .. '}')
return {state}
