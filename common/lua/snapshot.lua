-- The second half of a resume, in the chat's shard: this connection's worker becomes the user's
-- route, and the connection gets `resumed` with the chat's messages after `since`. Published on
-- the shard's channel like every event of the chat, it reaches the client in order with them: a
-- `partner_left` from a change after the snapshot arrives after it, never before.
-- Returns 'chatting' (emitted), 'missing' (the room is not open yet: its intent is in the home
-- slot's `opening`) or 'closed' (it ended meanwhile: ask the home slot again).
-- KEYS (all in the room's shard):
local chat = KEYS[1]  -- chat:<room>
local sent = KEYS[2]  -- sent:<room>, the resume buffer
-- ARGV:
local user = ARGV[1]
local since = tonumber(ARGV[2])  -- the last seq the client has
local sid = ARGV[3]              -- the connection to tell
local worker = ARGV[4]           -- the web worker holding it (the caller)
local room = ARGV[5]

if redis.call('EXISTS', chat) == 0 then
  return 'missing'
end
local partner = partner_in(chat, user)
if not partner then
  return 'closed'
end
redis.call('HSET', chat, 'route:' .. user, cjson.encode({worker}))
local history = {}
for _, raw in ipairs(redis.call('LRANGE', sent, 0, -1)) do
  local m = cjson.decode(raw)
  if m.seq > since then
    history[#history + 1] = cjson.encode({id = m.id, seq = m.seq, text = m.text, ts = m.ts,
                                          mine = m.from == user})
  end
end
local info = redis.call('HMGET', chat, 'interests', 'away:' .. partner, 'kind')
local away = info[2] and 'true' or 'false'
emit_sid_json(tag_of(chat), worker, EV.resumed, sid, '{"state":"chatting","room":'
  .. cjson.encode(room) .. ',"interests":' .. info[1] .. ',"kind":'
  .. cjson.encode(info[3] or 'random') .. ',"partner_away":' .. away
  .. ',"history":[' .. table.concat(history, ',') .. ']}')
return 'chatting'
