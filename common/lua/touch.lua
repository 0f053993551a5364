-- Presence: mark users alive until now + ttl (the heartbeat of the worker holding their
-- connections), keep that worker alive, and count who is online.
-- KEYS: 1 alive (zset user -> deadline ms), 2 away, 3 workers (zset worker -> deadline ms)
-- ARGV: 1 ttl in ms, 2 worker id ('' for a plain count), 3 ttl in s of the users' `where`
--       (their route: it must outlive a connection open for days), 4.. users
-- Returns the number of users online (deadline in the future, not away).
local alive, away, workers = KEYS[1], KEYS[2], KEYS[3]
local ttl_ms, worker, where_ttl = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local FIRST_USER = 4  -- ARGV[4 ..]: the users
local now = now_ms()
local deadline = now + ttl_ms
if worker ~= '' then
  redis.call('ZADD', workers, deadline, worker)
  -- workers gone for an hour are forgotten (every restart brings a new worker id)
  redis.call('ZREMRANGEBYSCORE', workers, '-inf', now - 3600000)
end
for i = FIRST_USER, #ARGV do
  redis.call('ZADD', alive, deadline, ARGV[i])
  redis.call('EXPIRE', WHERE_PREFIX .. ARGV[i], where_ttl)
end
return online_count(alive, away, now)
