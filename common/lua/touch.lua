-- Presence: mark users alive until now + ttl (the heartbeat of the worker holding their
-- connections), keep that worker alive, and count who is online.
-- Returns the number of users online (deadline in the future, not away).
-- KEYS (all in the home slot):
local alive = KEYS[1]    -- zset user -> presence deadline (ms)
local away = KEYS[2]     -- zset away user -> presence deadline (ms)
local workers = KEYS[3]  -- zset web worker -> heartbeat deadline (ms)
-- ARGV:
local ttl_ms = tonumber(ARGV[1])     -- presence ttl (ms)
local worker = ARGV[2]               -- the heartbeat's web worker; '' for a plain count
-- seconds the users' `where` (their route) lives: it must outlive a connection open for days
local where_ttl = tonumber(ARGV[3])
local FIRST_USER = 4                 -- ARGV[4 ..]: the users
local now = now_ms()
local deadline = now + ttl_ms
if worker ~= '' then
  redis.call('ZADD', workers, deadline, worker)
  -- workers gone for an hour are forgotten (every restart brings a new worker id)
  redis.call('ZREMRANGEBYSCORE', workers, '-inf', now - 3600000)
end
for i = FIRST_USER, #ARGV do
  local user = ARGV[i]
  redis.call('ZADD', alive, deadline, user)
  redis.call('EXPIRE', WHERE_PREFIX .. user, where_ttl)
  redis.call('EXPIRE', WHO_PREFIX .. user, where_ttl)  -- who they are, for blocks and bans
end
return online_count(alive, away, now)
