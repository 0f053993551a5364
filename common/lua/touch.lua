-- Presence: mark users alive until now + ttl (the heartbeat of the worker holding their
-- connections), keep that worker alive, and count who is online.
-- KEYS: 1 alive (zset user -> deadline ms), 2 away, 3 workers (zset worker -> deadline ms)
-- ARGV: 1 ttl in ms, 2 worker id ('' for a plain count), 3.. users
-- Returns the number of users online (deadline in the future, not away).
local alive, away, workers = KEYS[1], KEYS[2], KEYS[3]
local now = now_ms()
local deadline = now + tonumber(ARGV[1])
if ARGV[2] ~= '' then
  redis.call('ZADD', workers, deadline, ARGV[2])
  -- workers gone for an hour are forgotten (every restart brings a new worker id)
  redis.call('ZREMRANGEBYSCORE', workers, '-inf', now - 3600000)
end
for i = 3, #ARGV do
  redis.call('ZADD', alive, deadline, ARGV[i])
end
return online_count(alive, away, now)
