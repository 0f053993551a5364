-- The whole per-message path in one round trip: de-duplicate the client's id, find the partner,
-- rate-limit (token bucket), number the message in its room, keep it for resume, append it to
-- the history stream, and emit it to the partner (lib/emit.lua). Storing and emitting are one
-- atomic step: no worker can die between them, so a message is never stored but not sent.
-- KEYS: 1 partner, 2 room, 3 room_seq, 4 dedupe:<user>, 5 bucket:<user>, 6 sent:<user>, 7 history
-- ARGV: 1 user, 2 message id, 3 text, 4 rate per s, 5 burst, 6 messages kept for resume,
--       7 seconds the dedupe and resume keys live, 8 history maxlen
-- Returns {status, seq, ts, room}; status is 'ok', 'dup', 'not_chatting' or 'rate_limited'.
-- A 'dup' (the client resent an id, e.g. after a reconnect) carries the first send's seq, ts and
-- room and emits nothing: the first send was emitted.
local partner_key, room_key, room_seq, dedupe, bucket, sent, history = KEYS[1], KEYS[2],
  KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local user, id, text = ARGV[1], ARGV[2], ARGV[3]
local rate, burst, kept, ttl = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]),
  tonumber(ARGV[7])
local history_maxlen = ARGV[8]

local seen = redis.call('HGET', dedupe, id)
if seen then
  local a = string.find(seen, ':', 1, true)
  local b = string.find(seen, ':', a + 1, true)
  local c = string.find(seen, ':', b + 1, true)  -- values written before 2026-12 end in ':<sid>'
  return {'dup', tonumber(string.sub(seen, 1, a - 1)), tonumber(string.sub(seen, a + 1, b - 1)),
          string.sub(seen, b + 1, c and c - 1 or -1)}
end
local partner = redis.call('HGET', partner_key, user)
local room = redis.call('HGET', room_key, user)
if not partner or not room then
  return {'not_chatting', 0, 0, ''}
end
local now = now_ms()
local b = redis.call('HMGET', bucket, 'tokens', 'ts')
local tokens = tonumber(b[1]) or burst
local last = tonumber(b[2]) or now
tokens = math.min(burst, tokens + (now - last) * rate / 1000)
if tokens < 1 then
  redis.call('HSET', bucket, 'tokens', tostring(tokens), 'ts', tostring(now))
  return {'rate_limited', 0, 0, ''}
end
redis.call('HSET', bucket, 'tokens', tostring(tokens - 1), 'ts', tostring(now))
redis.call('PEXPIRE', bucket, math.ceil(burst / rate * 1000) + 1000)
local seq = redis.call('HINCRBY', room_seq, room, 1)
redis.call('HSET', dedupe, id, seq .. ':' .. now .. ':' .. room)
redis.call('EXPIRE', dedupe, ttl)
redis.call('RPUSH', sent, cjson.encode({id = id, seq = seq, text = text, ts = now, room = room}))
redis.call('LTRIM', sent, -kept, -1)
redis.call('EXPIRE', sent, ttl)
redis.call('XADD', history, 'MAXLEN', '~', history_maxlen, '*', 'type', 'message', 'room', room,
  'user', user, 'id', id, 'seq', tostring(seq), 'text', text, 'ts', tostring(now))
emit(EV.message, partner, {id = id, room = room, text = text, ts = now, seq = seq})
return {'ok', seq, now, room}
