-- The whole per-message path in one round trip: de-duplicate the client's id, find the partner,
-- rate-limit (token bucket), number the message in its room, keep it for resume, append it to
-- the history stream.
-- KEYS: 1 partner, 2 room, 3 room_seq, 4 dedupe:<user>, 5 bucket:<user>, 6 sent:<user>, 7 history,
--       8 published:<user>
-- ARGV: 1 user, 2 message id, 3 text, 4 rate per s, 5 burst, 6 messages kept for resume,
--       7 seconds the dedupe and resume keys live, 8 history maxlen, 9 the sending connection
-- Returns {status, seq, ts, partner, room, text}; status is 'ok', 'dup', 'not_chatting' or
-- 'rate_limited'. A 'dup' carries the first delivery's seq and ts. Its partner is '' (nothing to
-- emit) unless the first send came from another connection, was never marked published (its web
-- worker may have died between this script and the emit) and the chat is still on: then the
-- stored text is emitted again.
local user, id = ARGV[1], ARGV[2]
local seen = redis.call('HGET', KEYS[4], id)
if seen then
  local a = string.find(seen, ':', 1, true)
  local b = string.find(seen, ':', a + 1, true)
  local seq = tonumber(string.sub(seen, 1, a - 1))
  local ts = tonumber(string.sub(seen, a + 1, b - 1))
  local c = string.find(seen, ':', b + 1, true)
  local first_room = string.sub(seen, b + 1, c - 1)
  local first_conn = string.sub(seen, c + 1)
  -- the same connection resending: its worker is alive and emitted it right after storing
  if first_conn ~= ARGV[9] and redis.call('SISMEMBER', KEYS[8], id) == 0
      and redis.call('HGET', KEYS[2], user) == first_room then
    for _, raw in ipairs(redis.call('LRANGE', KEYS[6], 0, -1)) do
      local m = cjson.decode(raw)
      if m.id == id and m.room == first_room then
        return {'dup', seq, ts, redis.call('HGET', KEYS[1], user), first_room, m.text}
      end
    end
  end
  return {'dup', seq, ts, '', first_room, ''}
end
local partner = redis.call('HGET', KEYS[1], user)
local room = redis.call('HGET', KEYS[2], user)
if not partner or not room then
  return {'not_chatting', 0, 0, '', '', ''}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rate, burst = tonumber(ARGV[4]), tonumber(ARGV[5])
local b = redis.call('HMGET', KEYS[5], 'tokens', 'ts')
local tokens = tonumber(b[1]) or burst
local last = tonumber(b[2]) or now
tokens = math.min(burst, tokens + (now - last) * rate / 1000)
if tokens < 1 then
  redis.call('HSET', KEYS[5], 'tokens', tostring(tokens), 'ts', tostring(now))
  return {'rate_limited', 0, 0, '', '', ''}
end
redis.call('HSET', KEYS[5], 'tokens', tostring(tokens - 1), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[5], math.ceil(burst / rate * 1000) + 1000)
local seq = redis.call('HINCRBY', KEYS[3], room, 1)
local ttl = tonumber(ARGV[7])
redis.call('HSET', KEYS[4], id, seq .. ':' .. now .. ':' .. room .. ':' .. ARGV[9])
redis.call('EXPIRE', KEYS[4], ttl)
redis.call('RPUSH', KEYS[6], cjson.encode({id = id, seq = seq, text = ARGV[3], ts = now, room = room}))
redis.call('LTRIM', KEYS[6], -tonumber(ARGV[6]), -1)
redis.call('EXPIRE', KEYS[6], ttl)
redis.call('XADD', KEYS[7], 'MAXLEN', '~', ARGV[8], '*', 'type', 'message', 'room', room,
  'user', user, 'id', id, 'seq', tostring(seq), 'text', ARGV[3], 'ts', tostring(now))
return {'ok', seq, now, partner, room, ARGV[3]}
