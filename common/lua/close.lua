-- Close a chat in its shard from the intent end_chat.lua or reap.lua left (idempotent): mark it
-- closed (no more messages), `closed` in the history, `partner_left {reason, room}` to the
-- partner (and to the user too when the intent says `both`); the chat's keys then live only as
-- long as a late resend may need them.
-- KEYS: 1 chat:<room>, 2 history, 3 sent:<room> (the room's shard)
-- ARGV: 1 room, 2 intent JSON {user, reason, both, at}, 3 history maxlen, 4 seconds kept
-- Returns 1 when this call closed it, 0 when it was closed (or never opened) already.
local chat, history, sent = KEYS[1], KEYS[2], KEYS[3]
local room, intent, history_maxlen, kept = ARGV[1], cjson.decode(ARGV[2]), ARGV[3],
  tonumber(ARGV[4])
local tag = tag_of(chat)

if redis.call('EXISTS', chat) == 0 or redis.call('HEXISTS', chat, 'closed') == 1 then
  return 0
end
local user = intent.user
local partner = other_of(chat, user)
redis.call('HSET', chat, 'closed', tostring(intent.at))
redis.call('XADD', history, 'MAXLEN', '~', history_maxlen, '*', 'type', 'closed', 'room', room,
  'user', user, 'reason', intent.reason, 'ts', tostring(intent.at))
local left = {reason = intent.reason, room = room}
if partner then
  emit_route(tag, redis.call('HGET', chat, 'route:' .. partner), EV.partner_left, partner, left)
end
if intent.both then
  emit_route(tag, redis.call('HGET', chat, 'route:' .. user), EV.partner_left, user, left)
end
redis.call('EXPIRE', chat, kept)
redis.call('EXPIRE', sent, kept)
return 1
