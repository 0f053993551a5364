-- End the chats and waits of users whose presence deadline passed (gone longer than the grace:
-- closed the page, lost the network, or their web worker died without a word), in the home
-- slot. Each ended chat leaves an intent in `closing` that the matcher carries out next in the
-- chat's shard (close.lua tells both users `partner_left`: the partner, and the reaped user in
-- case they come back just now).
-- Returns the number of users reaped.
-- KEYS (all in the home slot):
local alive = KEYS[1]        -- zset user -> presence deadline (ms)
local queue = KEYS[2]        -- zset waiting user -> since (ms)
local prefs = KEYS[3]        -- hash user -> interests (JSON)
local partner_key = KEYS[4]  -- hash user -> partner
local room_key = KEYS[5]     -- hash user -> room
local last_key = KEYS[6]     -- hash user -> last partner
local away = KEYS[7]         -- zset away user -> presence deadline (ms)
local parked = KEYS[8]       -- hash away waiting user -> their place in the queue
local closing = KEYS[9]      -- hash room -> intent to close it in its shard
local hosts = KEYS[10]       -- hash user -> the private room key they made
-- ARGV:
local limit = tonumber(ARGV[1])  -- users reaped per call at most
local now = now_ms()
local home = {partner = partner_key, room = room_key, last = last_key, closing = closing,
  hosts = hosts}

local gone = redis.call('ZRANGEBYSCORE', alive, '-inf', now, 'LIMIT', 0, limit)
for _, u in ipairs(gone) do
  redis.call('ZREM', alive, u)
  redis.call('ZREM', queue, u)
  redis.call('ZREM', away, u)
  drop_private(hosts, u)  -- a host gone for good: the key stops working
  for _, key in ipairs({prefs, last_key, parked}) do
    redis.call('HDEL', key, u)
  end
  local partner = redis.call('HGET', partner_key, u)
  if partner then
    part(home, u, partner, redis.call('HGET', room_key, u), REASON_DISCONNECTED, true, now)
    redis.call('HDEL', last_key, u)  -- gone: nobody to keep apart from
  end
end
return #gone
