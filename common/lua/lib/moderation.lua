-- Blocks and bans as the matcher sees them (keys in common/keys.py, hashes made by
-- common/moderation.py; WHO_PREFIX, BLOCK_PREFIX, BAN_PREFIX come from common/store.py).

-- A user's moderation identity from `who:<user>`: {browser hash, address hash} ('' if unknown).
local function who_of(user)
  local raw = redis.call('GET', WHO_PREFIX .. user) or '|'
  local bar = string.find(raw, '|', 1, true) or (#raw + 1)
  return {string.sub(raw, 1, bar - 1), string.sub(raw, bar + 1)}
end

-- The key a user's blocks are kept under: their browser, else their user id (no cookie).
local function block_ident(user, who)
  if who[1] ~= '' then
    return who[1]
  end
  return 'u:' .. user
end

-- When the latest ban on this browser or address ends (ms), 0 when none is in force.
local function banned_until(who, now)
  local keys = {}
  for _, h in ipairs(who) do
    if h ~= '' then keys[#keys + 1] = BAN_PREFIX .. h end
  end
  if #keys == 0 then
    return 0
  end
  local latest = 0
  for _, v in ipairs(redis.call('MGET', unpack(keys))) do
    local t = tonumber(v)
    if t and t > now and t > latest then latest = t end
  end
  return latest
end

-- Did `ident` block the user `other` (their block identity `other_ident`), unexpired at `now`?
local function blocks(ident, other, other_ident, now)
  local key = BLOCK_PREFIX .. ident
  local a = tonumber(redis.call('ZSCORE', key, other_ident))
  if a and a > now then return true end
  local b = tonumber(redis.call('ZSCORE', key, 'u:' .. other))
  return b ~= nil and b > now
end
