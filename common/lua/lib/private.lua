-- Private rooms' keys in the home slot: `private:<KEY>` (a hash: host, and once a friend
-- joined, room and guest) and `hosts` (user -> the KEY they made). PRIVATE_PREFIX is defined
-- above this file by common/store.py from common/keys.py (the same slot as `hosts`).

-- Forget the private room `user` made, if any: its key stops working at once (Leave, Next,
-- a random join, a new key, the chat it led to ending, or the host gone past the grace).
local function drop_private(hosts_key, user)
  local key = redis.call('HGET', hosts_key, user)
  if key then
    redis.call('HDEL', hosts_key, user)
    local record = PRIVATE_PREFIX .. key
    if redis.call('HGET', record, 'host') == user then
      redis.call('DEL', record)
    end
  end
end

-- A token bucket in a hash {tokens, ts} (ms): how many tokens it holds now (at most `burst`,
-- refilled at `rate` per second since it was last written).
local function bucket_level(key, rate, burst, now)
  local b = redis.call('HMGET', key, 'tokens', 'ts')
  local tokens = tonumber(b[1]) or burst
  local last = tonumber(b[2]) or now
  return math.min(burst, tokens + (now - last) * rate / 1000)
end

-- Write a bucket's level back; it expires once it would be full again anyway.
local function bucket_store(key, tokens, rate, burst, now)
  redis.call('HSET', key, 'tokens', tostring(tokens), 'ts', tostring(now))
  redis.call('EXPIRE', key, math.ceil((burst - tokens) / rate) + 1)
end
