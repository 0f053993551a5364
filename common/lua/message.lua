-- The whole per-message path in one round trip, in the chat's shard: de-duplicate the client's
-- id, check the sender is in this open chat, rate-limit (token bucket), number the message, keep
-- it for resume, append it to the history stream, and emit it to the partner's route
-- (lib/emit.lua). Storing and emitting are one atomic step: no worker can die between them, so
-- a message is never stored but not sent.
-- Returns {status, seq, ts, room, partner, here}; status is 'ok', 'dup', 'not_chatting' or
-- 'rate_limited'; `here` is 1 when the caller is to deliver the message itself (below).
-- A 'dup' (the client resent an id, e.g. after a reconnect) carries the first send's seq, ts and
-- room and emits nothing: the first send was emitted.
-- KEYS (all in the room's shard):
local chat = KEYS[1]     -- chat:<room>
local dedupe = KEYS[2]   -- dedupe:<room>:<user>, hash message id -> 'seq:ts:room'
local sent = KEYS[3]     -- sent:<room>, the resume buffer
local history = KEYS[4]  -- the shard's history stream
-- ARGV:
local user = ARGV[1]
local id = ARGV[2]                 -- the client's message id
local text = ARGV[3]
local rate = tonumber(ARGV[4])     -- messages per second per user
local burst = tonumber(ARGV[5])    -- messages a user may send at once
local kept = tonumber(ARGV[6])     -- messages kept for resume
local ttl = tonumber(ARGV[7])      -- seconds the dedupe and resume keys live
local history_maxlen = ARGV[8]     -- each history stream's cap, about
local room = ARGV[9]
-- Delivery by the caller (web/sockets.py, "the same worker"): when the partner's only route is
-- the calling worker `here`, the caller expected this partner, and that worker has delivered
-- every message this script published to the partner (`pub:<partner>` <= `delivered`), nothing
-- published can still be on its way to them, so the caller emits the message to the partner's
-- connections itself and nothing is published. Storing stays in this step; a caller that dies
-- before its emit takes the partner's connections with it, and they resume from `sent`.
local here = ARGV[10] or ''
local expect = ARGV[11] or ''
local delivered = tonumber(ARGV[12]) or 0

-- What a de-duplicated id remembers: its message's seq, ts and room.
local function seen_as(seq, ts)
  return seq .. ':' .. ts .. ':' .. room
end

local seen = redis.call('HGET', dedupe, id)
if seen then
  local a = string.find(seen, ':', 1, true)
  local b = string.find(seen, ':', a + 1, true)
  return {'dup', tonumber(string.sub(seen, 1, a - 1)), tonumber(string.sub(seen, a + 1, b - 1)),
          string.sub(seen, b + 1), '', 0}
end
local partner = partner_in(chat, user)
if not partner then
  return {'not_chatting', 0, 0, '', '', 0}
end
local now = now_ms()
local b = redis.call('HMGET', chat, 'tokens:' .. user, 'ts:' .. user, 'route:' .. partner,
  'pub:' .. partner)
local tokens = tonumber(b[1]) or burst
local last = tonumber(b[2]) or now
tokens = math.min(burst, tokens + (now - last) * rate / 1000)
if tokens < 1 then
  redis.call('HSET', chat, 'tokens:' .. user, tostring(tokens), 'ts:' .. user, tostring(now))
  return {'rate_limited', 0, 0, '', '', 0}
end
local seq = redis.call('HINCRBY', chat, 'seq', 1)
redis.call('HSET', chat, 'tokens:' .. user, tostring(tokens - 1), 'ts:' .. user, tostring(now))
redis.call('RPUSH', sent, cjson.encode({id = id, seq = seq, text = text, ts = now, from = user}))
redis.call('LTRIM', sent, -kept, -1)
redis.call('EXPIRE', sent, ttl)
redis.call('HSET', dedupe, id, seen_as(seq, now))
if redis.call('HLEN', dedupe) > 2 * kept then
  -- A long chat: keep only the ids still in the resume buffer (a client resends what it has
  -- not seen acked, never older), rebuilt once per `kept` messages.
  redis.call('DEL', dedupe)
  for _, raw in ipairs(redis.call('LRANGE', sent, 0, -1)) do
    local m = cjson.decode(raw)
    if m.from == user then
      redis.call('HSET', dedupe, m.id, seen_as(m.seq, m.ts))
    end
  end
end
redis.call('EXPIRE', dedupe, ttl)
append_history(history, history_maxlen, 'type', 'message', 'room', room, 'user', user, 'id', id,
  'seq', tostring(seq), 'text', text, 'ts', tostring(now))
if here ~= '' and partner == expect and (tonumber(b[4]) or 0) <= delivered and b[3] then
  local route = cjson.decode(b[3])
  if #route == 1 and route[1] == here then
    return {'ok', seq, now, room, partner, 1}
  end
end
emit_route(tag_of(chat), b[3], EV.message, partner,
  {id = id, room = room, text = text, ts = now, seq = seq})
redis.call('HSET', chat, 'pub:' .. partner, seq)
return {'ok', seq, now, room, partner, 0}
