-- Who is online: users with a presence deadline in the future, less those whose connections are
-- all gone (the `away` zset, with the same deadline: they keep their chat or their place in the
-- queue for the grace, but nobody is talking to them now). Two counts, no scan.
local function online_count(alive_key, away_key, now)
  return redis.call('ZCOUNT', alive_key, '(' .. now, '+inf')
    - redis.call('ZCOUNT', away_key, '(' .. now, '+inf')
end

-- The sids in a user's `where` hash whose worker is alive (its heartbeat deadline not passed),
-- and sid -> worker of each.
local function live_sids(where_key, workers_key, now)
  local out, owner = {}, {}
  local flat = redis.call('HGETALL', where_key)
  for i = 1, #flat, 2 do
    local deadline = tonumber(redis.call('ZSCORE', workers_key, flat[i + 1]))
    if deadline and deadline > now then
      out[#out + 1] = flat[i]
      owner[flat[i]] = flat[i + 1]
    else
      redis.call('HDEL', where_key, flat[i])  -- a dead worker's connection
    end
  end
  return out, owner
end

-- A user's route: the JSON list of the live web workers holding their connections (the home
-- slot's `where`, copied into a chat when it opens; the chat's shard cannot read it later).
local function route_of(user, workers_key, now)
  local seen, route = {}, {}
  local sids, owner = live_sids(WHERE_PREFIX .. user, workers_key, now)
  for _, sid in ipairs(sids) do
    local worker = owner[sid]
    if not seen[worker] then
      seen[worker] = true
      route[#route + 1] = worker
    end
  end
  return json_list(route)
end
