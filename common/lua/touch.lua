-- Presence: mark users alive until now + ttl, and count who is online.
-- KEYS[1] alive (zset user -> deadline ms)
-- ARGV[1] ttl in ms; ARGV[2..] users
-- Returns the number of users whose deadline is in the future.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local deadline = now + tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], deadline, ARGV[i])
end
return redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
