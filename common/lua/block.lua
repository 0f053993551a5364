-- A report blocks the pair: the reporter's browser (or user id, without a browser cookie) will
-- not be matched with the reported one's browser or user id until `ttl_ms` from now (match.lua
-- checks both directions). Expired entries are dropped on the way; the key expires with its last.
-- Returns the reported user's `who` ('<browser hash>|<address hash>', '|' when unknown), which
-- the report's history entry carries so that the admin can ban them later.
-- KEYS (all in the home slot):
local reporter_who = KEYS[1]  -- who:<reporter>
local reported_who = KEYS[2]  -- who:<reported>
-- ARGV:
local reporter = ARGV[1]
local reported = ARGV[2]
local ttl_ms = tonumber(ARGV[3])
local now = now_ms()

if reporter == reported then
  return redis.call('GET', reported_who) or '|'
end
local mine = block_ident(reporter, who_of(reporter))
local theirs = who_of(reported)
local key = BLOCK_PREFIX .. mine
redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
redis.call('ZADD', key, now + ttl_ms, 'u:' .. reported)
if theirs[1] ~= '' then
  redis.call('ZADD', key, now + ttl_ms, theirs[1])
end
local last = tonumber(redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')[2])
redis.call('PEXPIREAT', key, last)
return theirs[1] .. '|' .. theirs[2]
