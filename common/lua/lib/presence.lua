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

-- Tell a chatting user's partner something about their room (`partner_away`, `partner_back`).
local function tell_partner(partner_key, room_key, user, event)
  local partner = redis.call('HGET', partner_key, user)
  local room = redis.call('HGET', room_key, user)
  if partner and room then
    emit(event, partner, {room = room})
  end
end
