-- A chat's end told again, to one connection, in the chat's shard: after a gap in its worker's
-- queue listener, the `partner_left` that close.lua published into the gap reached nobody, and
-- the page still shows the chat. The same event, on the same ordered channel as the chat's
-- other events; only to a user whom close.lua told (the partner of the one who ended it, or
-- both when the end said so): whoever pressed Next or Leave knows. A client ignores a
-- `partner_left` for a chat it no longer shows, so one told twice changes nothing.
-- Returns 1 when told, 0 when the chat is open, gone (its keys expired) or not the user's to hear.
-- KEYS (in the room's shard):
local chat = KEYS[1]  -- chat:<room>
-- ARGV:
local user = ARGV[1]
local sid = ARGV[2]     -- the connection to tell
local worker = ARGV[3]  -- the web worker holding it (the caller)
local room = ARGV[4]

local raw = redis.call('HGET', chat, 'end')
if not raw or not other_of(chat, user) then
  return 0
end
local ended = cjson.decode(raw)
if ended.user == user and not ended.both then
  return 0
end
emit_sid_json(tag_of(chat), worker, EV.partner_left, sid,
  cjson.encode({reason = ended.reason, room = room}))
return 1
