-- Pieces of the chat's life that several scripts share.

-- Wake the matcher (it blocks on this list between passes) once someone just joined the wait
-- list and at least two users wait: one alone cannot be paired, and the matcher's tick (interest
-- waits, bans, reaping) comes anyway. One pending wake-up is enough.
local function wake_matcher(wake_key, queue_key)
  if redis.call('ZCARD', queue_key) >= 2 then
    redis.call('LPUSH', wake_key, '1')
    redis.call('LTRIM', wake_key, 0, 0)
  end
end

-- Pair `a` and `b` in `room` in the home slot (match.lua, private_join.lua): each one's partner
-- and room pointer, and the intent to open the room in its shard (open.lua) with each user's
-- route and place in the queue (`sa`, `sb`), and who they are for moderation (`wa`, `wb`: browser
-- and address hashes, lib/moderation.lua). `kind`: 'random' or 'private'. The intent's JSON.
-- k: {partner, room, workers, opening}.
local function pair_users(k, a, b, room, interests, kind, sa, sb, now)
  redis.call('HSET', k.partner, a, b, b, a)
  redis.call('HSET', k.room, a, room, b, room)
  local intent = '{"a":' .. cjson.encode(a) .. ',"b":' .. cjson.encode(b)
    .. ',"interests":' .. json_list(interests) .. ',"kind":' .. cjson.encode(kind)
    .. ',"at":' .. now
    .. ',"sa":' .. string.format('%d', sa) .. ',"sb":' .. string.format('%d', sb)
    .. ',"ra":' .. route_of(a, k.workers, now) .. ',"rb":' .. route_of(b, k.workers, now)
    .. ',"wa":' .. cjson.encode(table.concat(who_of(a), '|'))
    .. ',"wb":' .. cjson.encode(table.concat(who_of(b), '|')) .. '}'
  redis.call('HSET', k.opening, room, intent)
  return intent
end

-- Stop the chat of `user` and `partner` in `room` in the home slot: both lose their pointers,
-- they are each other's last partner, and the room's shard is left an intent to close it
-- (close.lua; `both`: tell the user too); a private room's key ends with it.
-- k: {partner, room, last, closing, hosts}.
local function part(k, user, partner, room, reason, both, now)
  drop_private(k.hosts, user)
  drop_private(k.hosts, partner)
  redis.call('HDEL', k.partner, user, partner)
  redis.call('HDEL', k.room, user, partner)
  redis.call('HSET', k.last, user, partner, partner, user)
  if room then
    redis.call('HSET', k.closing, room,
      cjson.encode({user = user, reason = reason, both = both, at = now}))
  end
end

-- The other user of a chat hash's `a` and `b`, or nil when `user` is neither.
local function other_of(chat, user)
  local ab = redis.call('HMGET', chat, 'a', 'b')
  if ab[1] == user then
    return ab[2]
  elseif ab[2] == user then
    return ab[1]
  end
  return nil
end

-- The partner of `user` in this chat while it is open; nil when `user` is not one of its two
-- users or the chat is closed (a late message, typing or presence change is then dropped).
local function partner_in(chat, user)
  local partner = other_of(chat, user)
  if not partner or redis.call('HEXISTS', chat, 'closed') == 1 then
    return nil
  end
  return partner
end

-- Emit to `user` on their route as this chat holds it (`route:<user>`).
local function emit_in_chat(chat, user, event, payload)
  emit_route(tag_of(chat), redis.call('HGET', chat, 'route:' .. user), event, user, payload)
end

-- Mark a chat closed in its shard and tell it (close.lua, and open.lua for a chat ended before
-- it was opened): `closed` in the history, `partner_left {reason, room}` to the partner of
-- `intent.user`, and to that user too when `intent.both`. intent: {user, reason, both, at}.
-- The end is kept in the chat (`end`: {user, reason, both}) for as long as the chat's keys are,
-- so that a `partner_left` that fell into a listener gap can be told again (ended.lua).
local function close_chat(chat, history, history_maxlen, room, intent)
  local user = intent.user
  local partner = other_of(chat, user)
  redis.call('HSET', chat, 'closed', tostring(intent.at), 'end',
    cjson.encode({user = user, reason = intent.reason, both = intent.both and true or false}))
  append_history(history, history_maxlen, 'type', 'closed', 'room', room, 'user', user,
    'reason', intent.reason, 'ts', tostring(intent.at))
  local left = {reason = intent.reason, room = room}
  if partner then
    emit_in_chat(chat, partner, EV.partner_left, left)
  end
  if intent.both then
    emit_in_chat(chat, user, EV.partner_left, left)
  end
end
