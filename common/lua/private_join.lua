-- Join a private room by its key: the home slot's half of pairing the friend with the host,
-- made as match.lua makes a pair (lib/room.lua pair_users: partner, room pointer and the
-- `opening` intent); the caller opens the room in its shard next (open.lua says `matched`
-- to both), so the chat that follows is the same chat as a random one.
-- Guessing is throttled: every attempt needs a token in both buckets (the user's and their
-- address's), and a key that leads nowhere costs one from each. Unknown, expired, used-up and
-- the user's own keys all answer 'room_not_found', so a guesser learns nothing from the code;
-- a key whose room is open already answers 'room_full' (a third person). The key of a host
-- banned since they made it (lib/moderation.lua) ends: 'room_not_found'.
-- Returns {'ok', room, intent JSON} or {code}: 'already_chatting', 'rate_limited',
-- 'room_not_found', 'room_full'.
-- KEYS (all in the home slot):
local record = KEYS[1]       -- private:<KEY>, hash {host, room, guest}
local hosts = KEYS[2]        -- hash user -> the private room key they made
local partner_key = KEYS[3]  -- hash user -> partner
local room_key = KEYS[4]     -- hash user -> room
local queue = KEYS[5]        -- zset waiting user -> since (ms)
local alive = KEYS[6]        -- zset user -> presence deadline (ms)
local workers = KEYS[7]      -- zset web worker -> heartbeat deadline (ms)
local opening = KEYS[8]      -- hash room -> intent to open it in its shard
local by_user = KEYS[9]      -- guess:u:<user>, the user's guessing bucket
local by_addr = KEYS[10]     -- guess:a:<keyed hash of the address>, the address's bucket
-- ARGV:
local user = ARGV[1]
local room = ARGV[2]               -- a fresh room id
local rate = tonumber(ARGV[3])     -- wrong keys per second refilled (PRIVATE_GUESS_RATE / 60)
local burst = tonumber(ARGV[4])    -- wrong keys allowed at once (PRIVATE_GUESS_BURST)
local chat_ttl = tonumber(ARGV[5]) -- seconds a used key lives at most (its chat's end drops it)
local ttl_ms = tonumber(ARGV[6])   -- presence ttl (ms)

if redis.call('HEXISTS', partner_key, user) == 1 then
  return {'already_chatting'}
end
local now = now_ms()
local mine = bucket_level(by_user, rate, burst, now)
local theirs = bucket_level(by_addr, rate, burst, now)
if mine < 1 or theirs < 1 then
  return {'rate_limited'}
end

local found = redis.call('HMGET', record, 'host', 'room')
local host, used = found[1], found[2]
if host and used then
  return {'room_full'}
end
local deadline = host and tonumber(redis.call('ZSCORE', alive, host))
if host and host ~= user and banned_until(who_of(host), now) > 0 then
  drop_private(hosts, host)  -- banned since they made it (another tab, the address): it ends
  return {'room_not_found'}
end
if not host or host == user or not deadline or deadline <= now
    or redis.call('HEXISTS', partner_key, host) == 1 then
  if host ~= user then  -- a wrong key costs; the host's own key (a reload of the link) not
    bucket_store(by_user, mine - 1, rate, burst, now)
    bucket_store(by_addr, theirs - 1, rate, burst, now)
  end
  return {'room_not_found'}
end

drop_private(hosts, user)  -- a room the friend made meanwhile ends
redis.call('ZREM', queue, user, host)
redis.call('ZADD', alive, now + ttl_ms, user)
local since = tonumber(redis.call('HGET', record, 'created')) or now
local intent = pair_users({partner = partner_key, room = room_key, workers = workers,
  opening = opening}, host, user, room, {}, 'private', since, now, now)
redis.call('HSET', record, 'room', room, 'guest', user)
redis.call('EXPIRE', record, chat_ttl)
return {'ok', room, intent}
