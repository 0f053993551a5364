-- Open a chat in its shard from the intent match.lua left (idempotent: whoever finds the intent
-- first opens the room, later calls change nothing): the chat hash, `opened` in the history, and
-- `matched` to both users on their routes.
-- Returns 1 when this call opened it, 0 when it was open (or closed) already.
-- A chat ended before this (close.lua's `ended`) is opened and then closed in the same step.
-- KEYS (all in the room's shard):
local chat = KEYS[1]     -- chat:<room>
local history = KEYS[2]  -- the shard's history stream
-- ARGV:
local room = ARGV[1]
-- {a, b, interests, kind, at, sa, sb, ra, rb, wa, wb}, from match.lua or private_join.lua
local intent = cjson.decode(ARGV[2])
local history_maxlen = ARGV[3]        -- each history stream's cap, about
-- seconds the chat lives at most (a safety net: close.lua ends it long before)
local ttl = tonumber(ARGV[4])
local tag = tag_of(chat)

-- A chat whose end came first (close.lua left `ended`, the close intent, and nothing else) is
-- opened and closed here at once; any other chat hash is open or closed already.
local ended = redis.call('HGET', chat, 'ended')
if not ended and redis.call('EXISTS', chat) == 1 then
  return 0
end
local a, b = intent.a, intent.b
local interests = json_list(intent.interests)
local ra, rb = json_list(intent.ra), json_list(intent.rb)
local kind = intent.kind or 'random'  -- an intent left by a matcher of before private rooms
redis.call('HSET', chat, 'a', a, 'b', b, 'seq', 0, 'interests', interests, 'kind', kind,
  'opened', tostring(intent.at), 'route:' .. a, ra, 'route:' .. b, rb)
if not ended then
  redis.call('EXPIRE', chat, ttl)
end
-- who1/who2: each user's keyed hashes (browser|address), which a ban from the admin needs
append_history(history, history_maxlen, 'type', 'opened', 'room', room, 'user1', a, 'user2', b,
  'interests', interests, 'kind', kind, 'ts', tostring(intent.at), 'who1', intent.wa or '|',
  'who2', intent.wb or '|')
-- `at`: the pairing's time in the home slot, which a client compares with a `resumed` that
-- came from there (on a cluster the two may arrive out of order: docs/protocol.md)
local data = '{"room":' .. cjson.encode(room) .. ',"interests":' .. interests .. ',"kind":'
  .. cjson.encode(kind) .. ',"at":' .. string.format('%d', intent.at) .. '}'
emit_route_json(tag, ra, EV.matched, a, data)
emit_route_json(tag, rb, EV.matched, b, data)
if ended then
  redis.call('HDEL', chat, 'ended')  -- its TTL stays close.lua's
  close_chat(chat, history, history_maxlen, room, cjson.decode(ended))
end
return 1
